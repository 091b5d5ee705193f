"""pytest configuration of the test suite (tests/): the ``slow`` marker's switch.

Long or exhaustive cases (``@pytest.mark.slow``) are skipped unless
FASTRNN_SLOW_TESTS=1 is set or they are asked for with ``-m slow``.
"""
import os

import pytest


def slow_tests_asked(config):
    """FASTRNN_SLOW_TESTS is set (not 0), or the marker expression asks for slow."""
    if os.environ.get("FASTRNN_SLOW_TESTS", "0") not in ("", "0"):
        return True
    markexpr = config.getoption("markexpr", "") or ""
    return "slow" in markexpr and "not slow" not in markexpr


def pytest_collection_modifyitems(config, items):
    if slow_tests_asked(config):
        return
    skip = pytest.mark.skip(reason="slow test: set FASTRNN_SLOW_TESTS=1 to run")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)

"""Shared pytest configuration.

Tests marked ``slow`` (long or exhaustive cases) are skipped unless the
environment variable FASTRNN_SLOW_TESTS=1 is set, or they are selected
explicitly with ``-m slow``.
"""
import os

import pytest


def _slow_enabled(config):
    if os.environ.get("FASTRNN_SLOW_TESTS", "0") not in ("", "0"):
        return True
    # `-m slow` (or any marker expression mentioning slow positively) asks for them.
    markexpr = config.getoption("markexpr", "") or ""
    return "slow" in markexpr and "not slow" not in markexpr


def pytest_collection_modifyitems(config, items):
    if _slow_enabled(config):
        return
    skip_slow = pytest.mark.skip(reason="slow test: set FASTRNN_SLOW_TESTS=1 to run")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip_slow)

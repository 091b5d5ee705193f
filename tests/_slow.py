"""The ``slow`` marker's switch: long or exhaustive cases are skipped unless
FASTRNN_SLOW_TESTS=1 is set or they are asked for with ``-m slow``.

A module with slow cases imports ``skip_slow_unless_asked`` (an autouse
fixture, so importing it is enough).
"""
import os

import pytest


def slow_tests_asked(config):
    """FASTRNN_SLOW_TESTS is set (not 0), or the marker expression asks for slow."""
    if os.environ.get("FASTRNN_SLOW_TESTS", "0") not in ("", "0"):
        return True
    markexpr = config.getoption("markexpr", "") or ""
    return "slow" in markexpr and "not slow" not in markexpr


@pytest.fixture(autouse=True)
def skip_slow_unless_asked(request):
    if request.node.get_closest_marker("slow") is not None and not slow_tests_asked(
            request.config):
        pytest.skip("slow test: set FASTRNN_SLOW_TESTS=1 to run")

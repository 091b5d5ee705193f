"""The switch of the repository's conftest.py: which runs ask for the ``slow`` cases."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from conftest import slow_tests_asked

ROOT = pathlib.Path(__file__).parent.parent


class _Config:
    """The one option slow_tests_asked reads from pytest's config."""

    def __init__(self, markexpr):
        self.markexpr = markexpr

    def getoption(self, name, default=None):
        assert name == "markexpr"
        return self.markexpr


@pytest.mark.parametrize("env, markexpr, asked", [
    (None, "", False),
    ("0", "", False),
    ("", "", False),
    ("1", "", True),
    ("yes", "not slow", True),       # the environment variable wins
    (None, "slow", True),
    (None, "slow and lstm", True),
    (None, "not slow", False),
    (None, None, False),             # no -m at all
])
def test_slow_tests_asked(monkeypatch, env, markexpr, asked):
    if env is None:
        monkeypatch.delenv("FASTRNN_SLOW_TESTS", raising=False)
    else:
        monkeypatch.setenv("FASTRNN_SLOW_TESTS", env)
    assert slow_tests_asked(_Config(markexpr)) is asked


_CASES = """
import pytest


@pytest.mark.slow
def test_long():
    pass


def test_short():
    pass
"""


@pytest.mark.parametrize("env, args, outcome", [
    ("0", [], "1 passed, 1 skipped"),
    ("1", [], "2 passed"),
    ("0", ["-m", "slow"], "1 passed, 1 deselected"),
])
def test_fixture_skips_slow_cases_unless_asked(tmp_path, env, args, outcome):
    """A suite with this conftest.py: its slow case is skipped, with the
    reason, unless the environment variable or -m asks for it."""
    (tmp_path / "test_cases.py").write_text(_CASES)
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    environment = dict(os.environ, FASTRNN_SLOW_TESTS=env)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          "--rootdir", str(tmp_path), str(tmp_path), *args],
                         capture_output=True, text=True, env=environment, cwd=tmp_path)
    assert outcome in run.stdout, run.stdout + run.stderr
    if "skipped" in outcome:
        assert "FASTRNN_SLOW_TESTS=1" in run.stdout

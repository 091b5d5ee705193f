"""The repository's pytest configuration (pyproject.toml) leaves the ``slow``
cases out unless a marker expression (``-m``) asks for them."""
import pathlib
import subprocess
import sys

import pytest

PYPROJECT = pathlib.Path(__file__).parent.parent / "pyproject.toml"

_CASES = """
import pytest


@pytest.mark.slow
def test_long():
    pass


def test_short():
    pass
"""


@pytest.mark.parametrize("args, ran, summary", [
    ([], ["test_short"], "1 passed, 1 deselected"),
    (["-m", "slow"], ["test_long"], "1 passed, 1 deselected"),
    (["-m", "slow or not slow"], ["test_long", "test_short"], "2 passed"),
])
def test_slow_cases_run_only_when_asked(tmp_path, args, ran, summary):
    (tmp_path / "test_cases.py").write_text(_CASES)
    run = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
                          "-c", str(PYPROJECT), "--rootdir", str(tmp_path), str(tmp_path),
                          *args],
                         capture_output=True, text=True, cwd=tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert summary in run.stdout, output
    for name in ("test_long", "test_short"):
        assert (f"test_cases.py::{name} PASSED" in run.stdout) == (name in ran), output

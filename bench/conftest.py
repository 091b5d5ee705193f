"""pytest configuration of the benchmark suite (``pytest bench/ --benchmark-only``).

The benchmark modules are named ``bench_*.py`` so that a plain ``pytest`` run
never mistakes them for tests (the repository's ``testpaths`` is ``tests``
anyway); this hook collects them when ``bench/`` is given explicitly.
"""
import pytest


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None

"""pytest-benchmark suite: ``pytest bench/ --benchmark-only``.

One benchmark per (row, engine, thread count), the rows of ``python -m fastrnn
bench`` (``fastrnn._bench.ROWS``): fastrnn forward (eval mode), training step
(forward + backward, every gradient) and streaming step (B=1, T=1, state
carried; one benchmark call = one step), and the same on PyTorch (module, and
``nn.*Cell`` for streaming) and ONNX Runtime (inference only) when they
import. ``benchmark.group`` is the row and thread count, so pytest-benchmark's
tables put the engines of one row side by side.

Every benchmark first checks that the engine's outputs agree with the others
(fastrnn against torch, or the NumPy reference on small rows when torch is
missing; peers against fastrnn). There are no timing asserts.

Environment variables:
  FASTRNN_BENCH_THREADS  comma-separated thread counts (default "1,2")
  FASTRNN_BENCH_ROWS     comma-separated substrings of row names to run
                         (default all; e.g. "forward LSTM,stream")
Benchmark ids are the rows' slugs, e.g. ``forward-LSTM-T100-B1-I256-H256``,
so ``-k "forward and LSTM and B1"`` also selects.
"""
import os

import pytest

from fastrnn import _bench

THREADS = [int(t) for t in os.environ.get("FASTRNN_BENCH_THREADS", "1,2").split(",") if t]
_patterns = [p for p in os.environ.get("FASTRNN_BENCH_ROWS", "").split(",") if p.strip()]
ROWS = _bench.select_rows(_patterns or None)

# One step per benchmark call for streaming rows (pytest-benchmark calibrates
# how many calls to time together).
STEPS = 1

ENGINES = {
    "fastrnn": _bench.FastrnnEngine(),
    "torch": _bench.TorchEngine(),
    "torch.cell": _bench.TorchCellEngine(),
    "onnxruntime": _bench.OrtEngine(),
}
_IMPORTS = {"torch": ["torch"], "torch.cell": ["torch"], "onnxruntime": ["onnx", "onnxruntime"]}

CASES = [pytest.param(row, name, id=f"{row.slug}-{name}")
         for row in ROWS for name, engine in ENGINES.items() if engine.supports(row)]

_problems = {}
_outputs = {}


def problem(row):
    if row not in _problems:
        _problems[row] = _bench.make_problem(row, steps=STEPS)
    return _problems[row]


def outputs(row, name):
    """An engine's agreement-check outputs for ``row`` (cached; 1 thread)."""
    key = (row, name)
    if key not in _outputs:
        engine = _bench.ReferenceEngine(force=True) if name == "reference" else ENGINES[name]
        with _bench._ThreadSettings(1):
            _outputs[key] = engine.prepare(problem(row), 1).check()
    return _outputs[key]


def _importable(name):
    return all(_bench._import_error(m) is None for m in _IMPORTS.get(name, []))


def expected_for_fastrnn(row):
    """What fastrnn is checked against: torch, else the reference on small rows."""
    if _importable("torch"):
        return "torch", outputs(row, "torch")
    if _bench.ReferenceEngine().supports(row):
        return "reference", outputs(row, "reference")
    return None, None


@pytest.fixture(params=THREADS, ids=lambda n: f"threads{n}")
def n_threads(request):
    """BLAS limited to n threads and torch set to n, for the test's duration."""
    with _bench._ThreadSettings(request.param):
        yield request.param


@pytest.mark.parametrize("row, name", CASES)
def test_engine(benchmark, row, name, n_threads):
    for module in _IMPORTS.get(name, []):
        pytest.importorskip(module)
    engine = ENGINES[name]
    prepared = engine.prepare(problem(row), n_threads)

    got = prepared.check()
    if name == "fastrnn":
        other, expected = expected_for_fastrnn(row)
    else:
        other, expected = "fastrnn", outputs(row, "fastrnn")
    if expected is not None:
        error = _bench.max_error(got, expected)
        assert error < _bench.TOLERANCE, (
            f"{name} disagrees with {other} on {row.name}: max|diff| / max(1, max|ref|) = "
            f"{error:.3g} >= {_bench.TOLERANCE}")
        benchmark.extra_info["agree_with"] = other
        benchmark.extra_info["max_error"] = error

    benchmark.group = f"{row.name} threads={n_threads}"
    benchmark.extra_info["flops_per_call"] = row.flops
    benchmark.extra_info["unit"] = "step" if row.kind == "stream" else row.kind
    _bench.settle()  # let the previous benchmark's worker threads go idle
    benchmark(prepared.run)

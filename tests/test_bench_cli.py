"""The benchmark machinery (fastrnn/_bench.py) and the command line
(``python -m fastrnn {info,bench}``), on tiny rows: structure of the results,
the agreement check (and that a wrong engine is caught), exit statuses."""
import time

import numpy as np
import pytest

from fastrnn import _bench
from fastrnn.__main__ import main

from _subprocess_util import PACKAGE_PARENT, run_python

TINY = _bench.Row("forward", "LSTM", T=3, B=2, I=8, H=8)


class WrongEngine(_bench.FastrnnEngine):
    """fastrnn with its output perturbed: must be reported as disagreeing."""

    name = "wrong"

    def prepare(self, problem, n_threads):
        prepared = super().prepare(problem, n_threads)
        check = prepared.check

        def wrong_check():
            arrays = check()
            arrays["out"] = arrays["out"] + 1e-2
            return arrays
        prepared.check = wrong_check
        return prepared


def test_run_row_structure_and_agreement():
    machine = _bench.Machine(gemm_size=32, torch=False)
    engines = [_bench.FastrnnEngine(), _bench.ReferenceEngine()]
    result = _bench.run_row(TINY, n_threads=1, engines=engines, repeat=2, machine=machine)
    assert set(result.engines) == {"fastrnn", "reference"}
    for engine in result.engines.values():
        assert len(engine.times) == 2
        assert engine.median > 0 and engine.min <= engine.median
    assert result.engines["fastrnn"].agree is None        # the yardstick
    assert result.engines["reference"].agree is True
    assert result.engines["reference"].error < _bench.TOLERANCE
    assert result.agree
    assert result.ratio("fastrnn") == 1.0
    assert result.limit is not None and result.limit["seconds"] > 0
    text = _bench.format_row(result)
    assert "fastrnn" in text and "reference" in text and "physical limit" in text
    assert "| yes |" in _bench.format_markdown([result])
    assert result.to_dict()["engines"]["reference"]["agree"] is True


def test_copy_bandwidth_is_the_best_of_several_buffers(monkeypatch):
    # Whether a buffer the size of L2 fits in it depends on where its pages land:
    # the rate (and so the physical limit) is the best of four buffers, all
    # alive at once so that each has pages of its own, measured once per size.
    machine = _bench.Machine(gemm_size=32, torch=False)
    allocated = []
    ones = np.ones

    def tracked_ones(*args, **kwargs):
        allocated.append(ones(*args, **kwargs))
        return allocated[-1]
    monkeypatch.setattr(_bench.np, "ones", tracked_ones)
    rate = machine.copy_bandwidth(1 << 16)
    assert 0 < rate < float("inf")
    assert len(allocated) == 4
    assert len({buffer.ctypes.data for buffer in allocated}) == 4
    assert all(buffer.nbytes == 1 << 16 for buffer in allocated)
    assert machine.copy_bandwidth(1 << 16) == rate and len(allocated) == 4


def test_cross_core_read_is_measured_for_two_thread_rows():
    from fastrnn import _openmp
    cores = _openmp.cross_core_read(nbytes=1 << 20, rounds=3)
    if not _openmp.openmp_enabled() or _openmp.max_threads() < 2:
        assert cores is None
        return
    assert set(cores) == {"across", "own", "cpus"}
    assert 0 < cores["across"] < float("inf") and 0 < cores["own"] < float("inf")
    assert len(cores["cpus"]) == 2 and all(isinstance(c, int) for c in cores["cpus"])

    machine = _bench.Machine(gemm_size=32, torch=False)
    result = _bench.run_row(TINY, n_threads=2, engines=[_bench.FastrnnEngine()], repeat=2,
                            machine=machine)
    assert result.cores is not None and result.cores["across"] > 0
    assert "cross-core reads:" in _bench.format_row(result)
    assert result.to_dict()["cross_core_read"] == result.cores
    one = _bench.run_row(TINY, n_threads=1, engines=[_bench.FastrnnEngine()], repeat=2,
                         machine=machine)
    assert one.cores is None and "cross-core" not in _bench.format_row(one)


def test_cross_core_read_needs_a_team_of_two():
    proc = run_python(["-c", "from fastrnn import _openmp; print(_openmp.cross_core_read())"],
                      PACKAGE_PARENT, timeout=60, OMP_THREAD_LIMIT="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None"


class CountingEngine(_bench.FastrnnEngine):
    """fastrnn whose timed function counts its calls (and can be made slow)."""

    def __init__(self, name, sleep=0.0):
        self.name = name
        self.sleep = sleep
        self.calls = 0

    def prepare(self, problem, n_threads):
        prepared = super().prepare(problem, n_threads)
        run = prepared.run

        def counted_run():
            self.calls += 1
            if self.sleep:
                time.sleep(self.sleep)
            return run()
        prepared.run = counted_run
        return prepared


def test_short_calls_are_primed_on_one_thread_too():
    # Each timed call of an engine whose calls take under 20 ms follows untimed
    # calls for PRIME_SECONDS; a slower engine gets only its warm-up calls.
    fast, slow = CountingEngine("fastrnn"), CountingEngine("slow", sleep=0.025)
    repeat = 3
    start = time.perf_counter()
    result = _bench.run_row(TINY, n_threads=1, engines=[fast, slow], repeat=repeat)
    assert time.perf_counter() - start >= repeat * _bench.PRIME_SECONDS
    assert len(result.engines["slow"].times) == repeat
    assert slow.calls == 2 + repeat                 # two warm-up calls, then the timed ones
    assert fast.calls >= 2 + repeat * 2             # at least one untimed call before each


def test_wrong_engine_is_reported_as_disagreeing():
    engines = [_bench.FastrnnEngine(), WrongEngine()]
    result = _bench.run_row(TINY, n_threads=1, engines=engines, repeat=2)
    wrong = result.engines["wrong"]
    assert wrong.agree is False and wrong.error >= _bench.TOLERANCE
    assert not result.agree
    assert "NO" in _bench.format_row(result)
    assert "**NO**" in _bench.format_markdown([result])


@pytest.mark.parametrize("spec", ["forward LSTM T=3 B=2 I=5 H=6", "train GRU T=3 B=2 I=5 H=6",
                                  "train LSTM L=2 T=3 B=2 I=5 H=6", "stream LSTM I=5 H=6",
                                  "forward RNN(relu) T=3 B=2 I=5 H=6",
                                  "train LSTM L=2 bi T=3 B=2 I=5 H=6",
                                  "forward GRU bi T=3 B=2 I=5 H=6"])
def test_torch_agrees(spec):
    pytest.importorskip("torch")
    row = _bench.parse_row(spec)
    engines = [_bench.FastrnnEngine(), _bench.TorchEngine(), _bench.TorchCellEngine()]
    result = _bench.run_row(row, 1, engines, repeat=2, steps=3)
    expected = {"fastrnn", "torch"} | ({"torch.cell"} if row.kind == "stream" else set())
    assert set(result.engines) == expected
    assert result.agree, _bench.format_row(result)
    # one line per group: the faster of torch module and cell
    assert [e.group for e in result.best_of_groups()] == ["fastrnn", "torch"]


@pytest.mark.parametrize("spec", ["forward LSTM T=3 B=2 I=5 H=6", "forward GRU T=3 B=2 I=5 H=6",
                                  "forward RNN(tanh) T=3 B=2 I=5 H=6",
                                  "forward RNN(relu) T=3 B=2 I=5 H=6",
                                  "forward LSTM L=2 T=3 B=2 I=5 H=6", "stream GRU I=5 H=6",
                                  "forward LSTM L=2 bi T=3 B=2 I=5 H=6",
                                  "forward GRU bi T=3 B=2 I=5 H=6",
                                  "forward RNN(relu) L=2 bi T=3 B=2 I=5 H=6"])
def test_onnxruntime_agrees(spec):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    row = _bench.parse_row(spec)
    result = _bench.run_row(row, 1, [_bench.FastrnnEngine(), _bench.OrtEngine()], repeat=2,
                            steps=3)
    assert set(result.engines) == {"fastrnn", "onnxruntime"}
    assert result.agree, _bench.format_row(result)


def test_rows_flops_and_parse():
    for row in _bench.ROWS:
        assert _bench.parse_row(row.name) == row
    row = _bench.parse_row("forward LSTM T=100 B=1 I=256 H=256")
    assert row.flops == 2 * 100 * 1 * 4 * 256 * (256 + 256)
    train = _bench.Row("train", "GRU", 50, 32, 256, 256)
    assert train.flops == 3 * 2 * 50 * 32 * 3 * 256 * 512
    # Bidirectional: both directions' FLOPs and weights; layer 2 reads 2*H features.
    bi = _bench.parse_row("forward LSTM L=2 bi T=10 B=4 I=8 H=16")
    assert bi.bidirectional and bi.name == "forward LSTM L=2 bi T=10 B=4 I=8 H=16"
    assert bi.flops == 2 * (2 * 10 * 4 * 4 * 16 * (8 + 16) + 2 * 10 * 4 * 4 * 16 * (32 + 16))
    assert bi.weight_bytes_per_step == 2 * 2 * 4 * 16 * 16 * 4
    with pytest.raises(ValueError, match="unidirectional"):
        _bench.parse_row("stream LSTM bi H=8")
    two = _bench.Row("train", "LSTM", 35, 20, 650, 650, num_layers=2)
    assert two.forward_flops == 2 * (2 * 35 * 20 * 4 * 650 * 1300)
    with pytest.raises(ValueError):
        _bench.parse_row("forward LSTMX H=3")
    assert _bench.select_rows(["stream gru"]) == [r for r in _bench.ROWS
                                                  if r.kind == "stream" and r.mode == "GRU"]


def test_max_error_counts_nan_as_disagreement():
    a = {"out": np.zeros(3), "h_n": np.zeros(2)}
    b = {"out": np.array([0.0, np.nan, 0.0]), "h_n": np.zeros(2)}
    assert _bench.max_error(b, a) == np.inf
    assert _bench.max_error(a, a) == 0.0


def test_cli_bench_runs_and_exit_status(capsys, monkeypatch):
    args = ["bench", "--row", "forward LSTM T=3 B=2 I=8 H=8", "--threads", "1", "--repeat", "2",
            "--gemm-size", "32", "--no-torch", "--no-ort", "--markdown"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "forward LSTM T=3 B=2 I=8 H=8" in out and "all engines agree" in out
    assert "| row | threads | fastrnn |" in out

    real = _bench.default_engines
    monkeypatch.setattr(_bench, "default_engines",
                        lambda **kwargs: real(**kwargs) + [WrongEngine()])
    assert main(args) == 1
    assert "DISAGREEMENT" in capsys.readouterr().out


def test_cli_info():
    proc = run_python(["-m", "fastrnn", "info"], PACKAGE_PARENT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "fastrnn OpenMP" in proc.stdout and "BLAS" in proc.stdout


def test_cli_usage_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert main(["bench", "--rows", "no such row"]) == 2
    assert main(["bench", "--list"]) == 0
    assert "forward LSTM T=100 B=1 I=256 H=256" in capsys.readouterr().out


def test_settle_waits_for_consecutive_quiet_windows():
    from fastrnn._bench import settle
    # An idle process: exactly `quiet` windows of sleep, at least.
    assert settle(max_wait=1.0, window=0.003, quiet=3) >= 0.009
    # Never longer than max_wait (plus one window).
    assert settle(max_wait=0.01, window=0.002, busy=-1.0) < 0.5

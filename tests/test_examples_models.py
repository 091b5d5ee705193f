"""Smoke tests of examples/forecast.py, examples/seq2seq_reverse.py and
examples/classify.py: each main() runs end to end with tiny settings (the full
runs assert their stated targets)."""
import importlib.util
import math
import pathlib

import numpy as np

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_forecast_example_runs():
    forecast = _load("forecast")
    series = forecast.mackey_glass(300, seed=1)
    assert series.shape == (300,) and 0.2 < series.min() < series.max() < 1.6
    results = forecast.main(n_train=300, n_test=120, history=30, horizon=10, n_windows=4,
                            delays=8, narx_hidden=6, narx_steps=15, lstm_hidden=6,
                            lstm_steps=3, lstm_window=25, lstm_batch=4, check=False,
                            plot=False, log=False)
    for key in ("narx_rmse", "lstm_rmse", "naive_rmse"):
        assert math.isfinite(results[key]) and results[key] > 0, key


def test_seq2seq_example_runs():
    example = _load("seq2seq_reverse")
    src, lengths, tgt = example.encode([(1, 2, 3), (4, 5)], 4)
    np.testing.assert_array_equal(src[:, 1], [4 + 3, 5 + 3, 0, 0])
    np.testing.assert_array_equal(tgt[:, 1], [5 + 3, 4 + 3, example.EOS, 0, 0])
    results = example.main(min_len=2, max_len=4, hidden=12, embedding_dim=4, steps=12,
                           batch=8, n_test=16, eval_every=6, check=False, log=False)
    assert 0.0 <= results["test_accuracy"] <= 1.0 and results["steps"] == 12


def test_classify_example_runs():
    example = _load("classify")
    signals, labels = example.make_dataset(10, min_len=5, max_len=9, seed=3)
    assert len(signals) == 10 and labels.shape == (10,)
    assert all(s.shape[1:] == (1,) and 5 <= s.shape[0] <= 9 for s in signals)
    assert set(labels.tolist()) == set(range(len(example.CLASSES)))   # balanced: 2 each
    # the two sawtooths hold the same values in opposite order
    phase = np.linspace(0, 0.99, 20)
    np.testing.assert_allclose(example.waveform(3, phase), -example.waveform(4, phase))
    results = example.main(n_train=60, n_val=20, n_test=20, min_len=5, max_len=12, hidden=6,
                           epochs=2, batch=16, check=False, log=False)
    assert 0.0 <= results["test_accuracy"] <= 1.0 and results["epochs"] == 2
    assert set(results["per_class"]) == set(example.CLASSES)

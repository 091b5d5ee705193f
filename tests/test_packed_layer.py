"""Layers keep packed copies of their weights for float32 inference: a change of
the weights must never be silently ignored (regression guard for stale packs)."""
import numpy as np
import pytest

import fastrnn


def _x():
    return np.random.default_rng(0).standard_normal((6, 3, 4)).astype(np.float32)


@pytest.mark.parametrize("cls", [fastrnn.RNN, fastrnn.LSTM, fastrnn.GRU])
def test_load_state_dict_after_eval_forward_is_used(cls):
    layer = cls(4, 5, num_layers=2, bidirectional=True, seed=0).eval()
    ref = cls(4, 5, num_layers=2, bidirectional=True, seed=1, impl="reference").eval()
    layer(_x())  # packs the seed-0 weights
    layer.load_state_dict(ref.state_dict())
    np.testing.assert_allclose(layer(_x())[0], ref(_x())[0], rtol=1e-4, atol=1e-5)


def test_parameters_are_read_only_while_packed_and_writable_after_train():
    lstm = fastrnn.LSTM(4, 5, seed=0).eval()
    lstm(_x())
    with pytest.raises(ValueError, match="read-only"):
        lstm.weight_hh_l0[0, 0] = 1.0
    lstm.train()
    lstm.weight_hh_l0[0, 0] = 1.0  # writable again; the next eval forward repacks
    lstm.eval()
    ref = fastrnn.LSTM(4, 5, impl="reference").eval()
    ref.load_state_dict(lstm.state_dict())
    np.testing.assert_allclose(lstm(_x())[0], ref(_x())[0], rtol=1e-4, atol=1e-5)


def test_eval_float32_matches_training_forward():
    gru = fastrnn.GRU(4, 70, seed=0)
    train_out, train_h = gru(_x())
    gru.eval()
    eval_out, eval_h = gru(_x())
    np.testing.assert_allclose(eval_out, train_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eval_h, train_h, rtol=1e-5, atol=1e-6)

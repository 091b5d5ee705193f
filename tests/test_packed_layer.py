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


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_kernels_read_strided_weights_correctly(mode):
    """_packed.forward/backward given weight views that are not C-contiguous
    (the kernels pack them) compute what they compute from contiguous copies."""
    from fastrnn import _packed
    from fastrnn.layers import _CELLS
    cell = _CELLS[(mode, "tanh" if mode == "RNN" else None)]
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[mode]
    rng = np.random.default_rng(0)
    T, B, I, H = 4, 3, 6, 20
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    grad_out = rng.standard_normal((T, B, H)).astype(np.float32)
    contiguous = [(rng.standard_normal((G * H, n)) * 0.2).astype(np.float32) for n in (I, H)]
    strided = [np.asfortranarray(w) for w in contiguous]
    bias = [np.zeros(G * H, np.float32), np.zeros(G * H, np.float32)]
    h0 = np.zeros((B, H), np.float32)
    c0 = h0.copy() if mode == "LSTM" else None
    results = []
    for w_ih, w_hh in (contiguous, strided):
        out = np.empty((T, B, H), np.float32)
        _, _, cache = _packed.forward(cell, x, w_ih, w_hh, *bias, h0, c0, None, False, True,
                                      out, 0, 1)
        grads = [np.zeros((T, B, I), np.float32), np.zeros((G * H, I), np.float32),
                 np.zeros((G * H, H), np.float32), np.zeros(G * H, np.float32),
                 np.zeros(G * H, np.float32)]
        _packed.backward(cell, cache, x, w_ih, w_hh, None, False, grad_out, 0, None, None,
                         *grads, 1)
        results.append([out] + grads)
    for got, want in zip(results[1], results[0]):
        np.testing.assert_array_equal(got, want)

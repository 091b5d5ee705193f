"""Variational (recurrent) dropout: one mask per sequence and hidden unit, shared
by all time steps, on the state entering the recurrent product (training only)."""
import numpy as np
import pytest

import fastrnn
from fastrnn import _packed, _recurrent, reference

CELLS = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3}


def _problem(cell, T, B, I, H, dtype, seed=1):
    G = reference.gate_count(cell)
    r = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    arrays = dict(x=r.standard_normal((T, B, I)), weight_ih=r.uniform(-k, k, (G * H, I)),
                  weight_hh=r.uniform(-k, k, (G * H, H)), bias_ih=r.uniform(-k, k, G * H),
                  bias_hh=r.uniform(-k, k, G * H), h0=r.standard_normal((B, H)),
                  c0=r.standard_normal((B, H)) if cell == reference.CELL_LSTM else None,
                  mask=(r.random((B, H)) < 0.7) / 0.7, grad_out=r.standard_normal((T, B, H)),
                  grad_h_n=r.standard_normal((B, H)),
                  grad_c_n=r.standard_normal((B, H)) if cell == reference.CELL_LSTM else None)
    return {k: None if v is None else v.astype(dtype) for k, v in arrays.items()}


def _run(module, cell, p, lengths, reverse, n_threads):
    T, B, _ = p["x"].shape
    H = p["weight_hh"].shape[1]
    out = np.zeros((T, B, H), p["x"].dtype)
    h_n, c_n, cache = module.forward(cell, p["x"], p["weight_ih"], p["weight_hh"], p["bias_ih"],
                                     p["bias_hh"], p["h0"], p["c0"], lengths, reverse, True,
                                     out, 0, n_threads, recurrent_mask=p["mask"])
    grads = [np.zeros_like(p[k]) for k in ("x", "weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    dh0, dc0 = module.backward(cell, cache, p["x"], p["weight_ih"], p["weight_hh"], lengths,
                               reverse, p["grad_out"], 0, p["grad_h_n"], p["grad_c_n"], *grads,
                               n_threads)
    names = ["out", "h_n", "c_n", "grad_h0", "grad_c0", "grad_x", "grad_weight_ih",
             "grad_weight_hh", "grad_bias_ih", "grad_bias_hh"]
    return dict(zip(names, [out, h_n, c_n, dh0, dc0] + grads))


@pytest.mark.parametrize("cell_name", CELLS)
def test_reference_gradients_with_mask_match_finite_differences(cell_name):
    cell = CELLS[cell_name]
    p = _problem(cell, 4, 3, 3, 2, np.float64)
    lengths = np.array([4, 2, 1])
    got = _run(reference, cell, p, lengths, True, 1)

    def loss(q):
        T, B, _ = q["x"].shape
        out = np.zeros((T, B, 2))
        h_n, c_n, _ = reference.forward(cell, q["x"], q["weight_ih"], q["weight_hh"],
                                        q["bias_ih"], q["bias_hh"], q["h0"], q["c0"], lengths,
                                        True, True, out, 0, 1, recurrent_mask=q["mask"])
        total = np.sum(out * q["grad_out"]) + np.sum(h_n * q["grad_h_n"])
        return total + (np.sum(c_n * q["grad_c_n"]) if c_n is not None else 0.0)

    for name, grad in (("x", "grad_x"), ("weight_ih", "grad_weight_ih"),
                       ("weight_hh", "grad_weight_hh"), ("bias_ih", "grad_bias_ih"),
                       ("bias_hh", "grad_bias_hh"), ("h0", "grad_h0"), ("c0", "grad_c0")):
        if p[name] is None:
            continue
        numeric = np.zeros_like(p[name])
        for i in np.ndindex(p[name].shape):
            plus = {k: (v.copy() if v is not None else None) for k, v in p.items()}
            minus = {k: (v.copy() if v is not None else None) for k, v in p.items()}
            plus[name][i] += 1e-6
            minus[name][i] -= 1e-6
            numeric[i] = (loss(plus) - loss(minus)) / 2e-6
        np.testing.assert_allclose(got[grad], numeric, rtol=1e-6, atol=1e-9, err_msg=grad)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape", [(5, 3, 4, 2), (1, 1, 3, 1), (7, 9, 5, 6), (12, 17, 8, 70),
                                   (6, 3, 8, 130)])
@pytest.mark.parametrize("cell_name", CELLS)
def test_kernels_match_reference(cell_name, shape, reverse, n_threads):
    cell = CELLS[cell_name]
    T, B, I, H = shape
    lengths = np.random.default_rng(T * B).integers(1, T + 1, B)
    want = _run(reference, cell, _problem(cell, T, B, I, H, np.float64), lengths, reverse, 1)
    for module, dtype, tol in ((_recurrent, np.float64, 1e-10), (_recurrent, np.float32, 1e-4),
                               (_packed, np.float32, 1e-4)):
        got = _run(module, cell, _problem(cell, T, B, I, H, dtype), lengths, reverse, n_threads)
        for name, expected in want.items():
            if expected is not None:
                np.testing.assert_allclose(got[name], expected, rtol=tol, atol=tol,
                                           err_msg=f"{module.__name__} {dtype.__name__} {name}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cls", [fastrnn.RNN, fastrnn.LSTM, fastrnn.GRU])
def test_layer_recurrent_dropout(cls, dtype):
    x = np.random.default_rng(0).standard_normal((6, 4, 5))
    kwargs = dict(num_layers=2, bidirectional=True, recurrent_dropout=0.4, dtype=dtype)
    fast = cls(5, 7, seed=3, **kwargs)
    ref = cls(5, 7, seed=3, impl="reference", **kwargs)
    plain = cls(5, 7, seed=3, num_layers=2, bidirectional=True, dtype=dtype)
    out, _ = fast(x)
    want, _ = ref(x)
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol)      # same masks, same numbers
    grad = np.ones_like(out)
    dx, _ = fast.backward(grad)
    dx_ref, _ = ref.backward(grad)
    np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol)
    for k in fast.grads:
        np.testing.assert_allclose(fast.grads[k], ref.grads[k], rtol=tol, atol=tol, err_msg=k)
    plain_out, _ = plain(x)
    assert not np.allclose(out, plain_out)                         # the masks do act
    fast.eval()
    plain.eval()
    np.testing.assert_allclose(fast(x)[0], plain(x)[0], rtol=tol, atol=tol)  # off in eval


def test_mask_is_shared_over_time_and_rejected_in_inference():
    p = _problem(reference.CELL_RNN_TANH, 5, 2, 3, 4, np.float64)
    p["weight_ih"][:] = 0
    p["bias_ih"][:] = 0
    p["bias_hh"][:] = 0
    p["mask"][:] = 1.0
    p["mask"][:, 0] = 0.0                     # unit 0 never feeds the recurrence
    out = np.zeros((5, 2, 4))
    reference.forward(0, p["x"], p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"],
                      p["h0"], None, None, False, True, out, 0, 1, recurrent_mask=p["mask"])
    manual = np.zeros_like(out)
    h = p["h0"]
    for t in range(5):
        h = np.tanh((h * p["mask"]) @ p["weight_hh"].T)
        manual[t] = h
    np.testing.assert_allclose(out, manual, rtol=1e-12)
    for module in (reference, _recurrent, _packed):
        q = _problem(reference.CELL_GRU, 3, 2, 3, 4, np.float32)
        with pytest.raises(ValueError, match="training"):
            module.forward(3, q["x"], q["weight_ih"], q["weight_hh"], q["bias_ih"], q["bias_hh"],
                           q["h0"], None, None, False, False, np.zeros((3, 2, 4), np.float32), 0,
                           1, recurrent_mask=q["mask"])
    with pytest.raises(ValueError, match="recurrent_dropout"):
        fastrnn.LSTM(3, 4, recurrent_dropout=1.0)

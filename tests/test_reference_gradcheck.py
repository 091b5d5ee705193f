"""Checks of the NumPy reference (fastrnn.reference) against finite differences
and, when available, against torch.nn.RNN / LSTM / GRU."""

import itertools

import numpy as np
import pytest

from fastrnn import reference as ref

CELLS = [ref.CELL_RNN_TANH, ref.CELL_RNN_RELU, ref.CELL_LSTM, ref.CELL_GRU]
CELL_NAMES = {ref.CELL_RNN_TANH: "rnn_tanh", ref.CELL_RNN_RELU: "rnn_relu",
              ref.CELL_LSTM: "lstm", ref.CELL_GRU: "gru"}

T, B, I, H = 4, 3, 3, 2
LENGTHS = np.array([4, 2, 1], dtype=np.int64)
# out has extra columns on both sides so out_col handling is exercised.
OUT_COL, D_OUT = 1, H + 3


def make_problem(cell, bias, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed + 17 * cell)
    G = ref.gate_count(cell)
    p = {
        "x": rng.standard_normal((T, B, I)),
        "weight_ih": rng.standard_normal((G * H, I)) * 0.6,
        "weight_hh": rng.standard_normal((G * H, H)) * 0.6,
        "h0": rng.standard_normal((B, H)) * 0.5,
        "c0": rng.standard_normal((B, H)) * 0.5 if cell == ref.CELL_LSTM else None,
        "bias_ih": rng.standard_normal(G * H) * 0.3 if bias else None,
        "bias_hh": rng.standard_normal(G * H) * 0.3 if bias else None,
    }
    p = {k: (None if v is None else np.ascontiguousarray(v, dtype=dtype)) for k, v in p.items()}
    # Fixed random "upstream gradients" defining the scalar loss.
    r = {
        "R": rng.standard_normal((T, B, D_OUT)),
        "Rh": rng.standard_normal((B, H)),
        "Rc": rng.standard_normal((B, H)),
    }
    return p, r


def run_forward(cell, p, lengths, reverse, training=False, out=None):
    if out is None:
        out = np.full((T, B, D_OUT), np.nan, dtype=p["x"].dtype)
    h_n, c_n, cache = ref.forward(cell, p["x"], p["weight_ih"], p["weight_hh"],
                                  p["bias_ih"], p["bias_hh"], p["h0"], p["c0"],
                                  lengths, reverse, training, out, OUT_COL, 1)
    return out, h_n, c_n, cache


def loss(cell, p, r, lengths, reverse):
    out, h_n, c_n, _ = run_forward(cell, p, lengths, reverse)
    cols = slice(OUT_COL, OUT_COL + H)
    val = np.sum(out[:, :, cols] * r["R"][:, :, cols]) + np.sum(h_n * r["Rh"])
    if cell == ref.CELL_LSTM:
        val += np.sum(c_n * r["Rc"])
    return val


def zero_grads(p):
    return {k: (None if p[k] is None else np.zeros_like(p[k]))
            for k in ("x", "weight_ih", "weight_hh", "bias_ih", "bias_hh")}


def run_backward(cell, p, r, lengths, reverse, cache, grads):
    grad_c_n = r["Rc"] if cell == ref.CELL_LSTM else None
    return ref.backward(cell, cache, p["x"], p["weight_ih"], p["weight_hh"], lengths,
                        reverse, r["R"], OUT_COL, r["Rh"], grad_c_n, grads["x"],
                        grads["weight_ih"], grads["weight_hh"], grads["bias_ih"],
                        grads["bias_hh"], 1)


def analytic_grads(cell, p, r, lengths, reverse):
    _, _, _, cache = run_forward(cell, p, lengths, reverse, training=True)
    grads = zero_grads(p)
    grads["h0"], grads["c0"] = run_backward(cell, p, r, lengths, reverse, cache, grads)
    return grads


def numeric_grad(cell, p, r, lengths, reverse, name, eps=1e-6):
    arr = p[name]
    g = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        orig = arr[idx]
        arr[idx] = orig + eps
        lp = loss(cell, p, r, lengths, reverse)
        arr[idx] = orig - eps
        lm = loss(cell, p, r, lengths, reverse)
        arr[idx] = orig
        g[idx] = (lp - lm) / (2 * eps)
    return g


CONFIGS = list(itertools.product(CELLS, [False, True], [False, True], [False, True]))


def config_id(c):
    cell, reverse, use_lengths, bias = c
    return "%s-%s-%s-%s" % (CELL_NAMES[cell], "rev" if reverse else "fwd",
                            "len" if use_lengths else "full", "bias" if bias else "nobias")


@pytest.mark.parametrize("cell,reverse,use_lengths,bias", CONFIGS,
                         ids=[config_id(c) for c in CONFIGS])
def test_gradcheck(cell, reverse, use_lengths, bias):
    p, r = make_problem(cell, bias)
    lengths = LENGTHS if use_lengths else None
    ana = analytic_grads(cell, p, r, lengths, reverse)
    names = ["x", "h0", "weight_ih", "weight_hh"]
    if cell == ref.CELL_LSTM:
        names.append("c0")
    else:
        assert ana["c0"] is None
    if bias:
        names += ["bias_ih", "bias_hh"]
    for name in names:
        num = numeric_grad(cell, p, r, lengths, reverse, name)
        assert ana[name].shape == p[name].shape, name
        assert np.abs(num).max() > 0, "degenerate gradient for %s" % name
        np.testing.assert_allclose(ana[name], num, rtol=1e-6, atol=1e-9,
                                   err_msg="gradient mismatch for %s (%s)"
                                   % (name, config_id((cell, reverse, use_lengths, bias))))


def test_gate_count():
    assert [ref.gate_count(c) for c in CELLS] == [1, 1, 4, 3]
    with pytest.raises(ValueError):
        ref.gate_count(7)


@pytest.mark.parametrize("cell", CELLS, ids=[CELL_NAMES[c] for c in CELLS])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_inactive_outputs_zero_and_other_columns_untouched(cell, reverse):
    p, _ = make_problem(cell, bias=True)
    out, _, _, _ = run_forward(cell, p, LENGTHS, reverse)
    cols = slice(OUT_COL, OUT_COL + H)
    # Columns outside out_col:out_col+H keep their NaN sentinel.
    assert np.all(np.isnan(out[:, :, :OUT_COL]))
    assert np.all(np.isnan(out[:, :, OUT_COL + H:]))
    assert not np.any(np.isnan(out[:, :, cols]))
    for b, L in enumerate(LENGTHS):
        assert np.all(out[L:, b, cols] == 0.0)


@pytest.mark.parametrize("cell", CELLS, ids=[CELL_NAMES[c] for c in CELLS])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_lengths_match_individual_sequences(cell, reverse):
    """Each sequence of a padded batch behaves as if run alone on x[:L]."""
    p, _ = make_problem(cell, bias=True)
    out, h_n, c_n, _ = run_forward(cell, p, LENGTHS, reverse)
    cols = slice(OUT_COL, OUT_COL + H)
    for b, L in enumerate(LENGTHS):
        if not reverse:
            np.testing.assert_array_equal(h_n[b], out[L - 1, b, cols])
        x_b = np.ascontiguousarray(p["x"][:L, b:b + 1])
        out_b = np.zeros((L, 1, H))
        h_b, c_b, _ = ref.forward(cell, x_b, p["weight_ih"], p["weight_hh"], p["bias_ih"],
                                  p["bias_hh"], p["h0"][b:b + 1],
                                  None if p["c0"] is None else p["c0"][b:b + 1],
                                  None, reverse, False, out_b, 0, 1)
        np.testing.assert_allclose(h_n[b], h_b[0], rtol=1e-12, atol=1e-14, err_msg="h_n")
        np.testing.assert_allclose(out[:L, b, cols], out_b[:, 0], rtol=1e-12, atol=1e-14,
                                   err_msg="out")
        if cell == ref.CELL_LSTM:
            np.testing.assert_allclose(c_n[b], c_b[0], rtol=1e-12, atol=1e-14, err_msg="c_n")
    if reverse:
        # Reverse direction: out[0] is the final state of every sequence.
        np.testing.assert_array_equal(h_n, out[0, :, cols])


@pytest.mark.parametrize("cell", CELLS, ids=[CELL_NAMES[c] for c in CELLS])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_backward_accumulates_and_ignores_inactive_grad_out(cell, reverse):
    p, r = make_problem(cell, bias=True)
    _, _, _, cache = run_forward(cell, p, LENGTHS, reverse, training=True)
    single = zero_grads(p)
    gh0, gc0 = run_backward(cell, p, r, LENGTHS, reverse, cache, single)

    # Start from non-zero arrays and call backward twice: init + 2 * grad.
    rng = np.random.default_rng(5)
    init = {k: rng.standard_normal(v.shape) for k, v in single.items()}
    acc = {k: v.copy() for k, v in init.items()}
    for _ in range(2):
        gh0_2, gc0_2 = run_backward(cell, p, r, LENGTHS, reverse, cache, acc)
        np.testing.assert_array_equal(gh0_2, gh0, err_msg="grad_h0 changed between calls")
        if cell == ref.CELL_LSTM:
            np.testing.assert_array_equal(gc0_2, gc0, err_msg="grad_c0 changed")
    for k in acc:
        np.testing.assert_allclose(acc[k], init[k] + 2 * single[k], rtol=1e-13, atol=1e-13,
                                   err_msg="accumulation for %s" % k)

    # Garbage in grad_out at inactive positions (and in other columns) is ignored.
    r2 = dict(r, R=r["R"].copy())
    r2["R"][:, :, :OUT_COL] = 1e3
    r2["R"][:, :, OUT_COL + H:] = -1e3
    for b, L in enumerate(LENGTHS):
        r2["R"][L:, b, :] = 1e6
    other = zero_grads(p)
    gh0_3, gc0_3 = run_backward(cell, p, r2, LENGTHS, reverse, cache, other)
    np.testing.assert_array_equal(gh0_3, gh0)
    if cell == ref.CELL_LSTM:
        np.testing.assert_array_equal(gc0_3, gc0)
    for k in other:
        np.testing.assert_array_equal(other[k], single[k], err_msg=k)


@pytest.mark.parametrize("cell", CELLS, ids=[CELL_NAMES[c] for c in CELLS])
def test_float32_in_float32_out(cell):
    p64, r = make_problem(cell, bias=True)
    p32 = {k: (None if v is None else v.astype(np.float32)) for k, v in p64.items()}
    out, h_n, c_n, cache = run_forward(cell, p32, LENGTHS, True, training=True)
    assert out.dtype == np.float32 and h_n.dtype == np.float32
    if cell == ref.CELL_LSTM:
        assert c_n.dtype == np.float32
    out64, h64, _, _ = run_forward(cell, p64, LENGTHS, True)
    np.testing.assert_allclose(h_n, h64, rtol=1e-4, atol=1e-5)

    r32 = {k: v.astype(np.float32) for k, v in r.items()}
    grads = zero_grads(p32)
    gh0, gc0 = run_backward(cell, p32, r32, LENGTHS, True, cache, grads)
    assert gh0.dtype == np.float32
    if cell == ref.CELL_LSTM:
        assert gc0.dtype == np.float32
    for k, v in grads.items():
        assert v.dtype == np.float32, k
    g64 = analytic_grads(cell, p64, r, LENGTHS, True)
    for k in grads:
        np.testing.assert_allclose(grads[k], g64[k], rtol=1e-3, atol=1e-4, err_msg=k)


def test_sigmoid_is_stable():
    a = np.array([-1e4, -800.0, -30.0, 0.0, 30.0, 800.0, 1e4])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        s = ref.sigmoid(a)
        s32 = ref.sigmoid(a.astype(np.float32))
    assert s32.dtype == np.float32
    np.testing.assert_allclose(s, [0, 0, 1 / (1 + np.exp(30)), 0.5, 1 / (1 + np.exp(-30)), 1, 1])


# ---------------------------------------------------------------------------
# Comparison with PyTorch (skipped when torch is not installed)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("cell", CELLS, ids=[CELL_NAMES[c] for c in CELLS])
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "len"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_matches_torch(cell, use_lengths, bias):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    rng = np.random.default_rng(11 + cell)
    G = ref.gate_count(cell)
    kwargs = dict(input_size=I, hidden_size=H, num_layers=1, bias=bias, bidirectional=True)
    if cell == ref.CELL_LSTM:
        mod = torch.nn.LSTM(**kwargs)
    elif cell == ref.CELL_GRU:
        mod = torch.nn.GRU(**kwargs)
    else:
        mod = torch.nn.RNN(nonlinearity="tanh" if cell == ref.CELL_RNN_TANH else "relu",
                           **kwargs)
    mod = mod.double()

    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((2, B, H)) * 0.5
    c0 = rng.standard_normal((2, B, H)) * 0.5
    R = rng.standard_normal((T, B, 2 * H))
    Rh = rng.standard_normal((2, B, H))
    Rc = rng.standard_normal((2, B, H))
    lengths = LENGTHS if use_lengths else None

    # --- torch ---
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True)
    c0t = torch.tensor(c0, requires_grad=True)
    hx = (h0t, c0t) if cell == ref.CELL_LSTM else h0t
    if use_lengths:
        packed = pack_padded_sequence(xt, torch.tensor(LENGTHS), enforce_sorted=False)
        out_p, hn_t = mod(packed, hx)
        out_t, _ = pad_packed_sequence(out_p, total_length=T)
    else:
        out_t, hn_t = mod(xt, hx)
    if cell == ref.CELL_LSTM:
        hn_t, cn_t = hn_t
    loss_t = (out_t * torch.tensor(R)).sum() + (hn_t * torch.tensor(Rh)).sum()
    if cell == ref.CELL_LSTM:
        loss_t = loss_t + (cn_t * torch.tensor(Rc)).sum()
    loss_t.backward()

    # --- reference, both directions writing into one (T, B, 2H) output ---
    out = np.full((T, B, 2 * H), np.nan)
    grad_x = np.zeros_like(x)
    for d, (suffix, reverse) in enumerate([("", False), ("_reverse", True)]):
        get = lambda n: getattr(mod, n + "_l0" + suffix).detach().numpy()  # noqa: E731
        w_ih, w_hh = get("weight_ih"), get("weight_hh")
        b_ih, b_hh = (get("bias_ih"), get("bias_hh")) if bias else (None, None)
        c0_d = c0[d] if cell == ref.CELL_LSTM else None
        h_n, c_n, cache = ref.forward(cell, x, w_ih, w_hh, b_ih, b_hh, h0[d], c0_d,
                                      lengths, reverse, True, out, d * H, 1)
        np.testing.assert_allclose(h_n, hn_t[d].detach().numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg="h_n dir %d" % d)
        if cell == ref.CELL_LSTM:
            np.testing.assert_allclose(c_n, cn_t[d].detach().numpy(), rtol=1e-9,
                                       atol=1e-12, err_msg="c_n dir %d" % d)
        else:
            assert c_n is None

        gw_ih, gw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
        gb_ih, gb_hh = (np.zeros(G * H), np.zeros(G * H)) if bias else (None, None)
        gh0, gc0 = ref.backward(cell, cache, x, w_ih, w_hh, lengths, reverse, R, d * H,
                                Rh[d], Rc[d] if cell == ref.CELL_LSTM else None,
                                grad_x, gw_ih, gw_hh, gb_ih, gb_hh, 1)
        tgrad = lambda n: getattr(mod, n + "_l0" + suffix).grad.numpy()  # noqa: E731
        checks = [("weight_ih", gw_ih), ("weight_hh", gw_hh)]
        if bias:
            checks += [("bias_ih", gb_ih), ("bias_hh", gb_hh)]
        for name, g in checks:
            np.testing.assert_allclose(g, tgrad(name), rtol=1e-9, atol=1e-12,
                                       err_msg="%s dir %d" % (name, d))
        np.testing.assert_allclose(gh0, h0t.grad[d].numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg="h0 dir %d" % d)
        if cell == ref.CELL_LSTM:
            np.testing.assert_allclose(gc0, c0t.grad[d].numpy(), rtol=1e-9, atol=1e-12,
                                       err_msg="c0 dir %d" % d)

    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-9, atol=1e-12,
                               err_msg="out")
    # grad_x accumulated over both directions.
    np.testing.assert_allclose(grad_x, xt.grad.numpy(), rtol=1e-9, atol=1e-12,
                               err_msg="grad_x")

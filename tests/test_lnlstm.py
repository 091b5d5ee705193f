"""LayerNormLSTM / ZoneoutLSTM: the NumPy reference against finite differences,
the compiled kernels (fastrnn._lnlstm) against the reference, the layers against
fastrnn.LSTM and torch, zoneout semantics, and the layer contract.

Kernel-level contract (both fastrnn._lnlstm and fastrnn.lnlstm_reference):

    forward(x, weights, h0, c0, lengths, reverse, training, out, out_col,
            zoneout_h, zoneout_c, mask_h, mask_c, eps, n_threads) -> (h_n, c_n, cache)
    backward(cache, x, weights, lengths, reverse, grad_out, out_col, grad_h_n,
             grad_c_n, grad_x, grads, n_threads) -> (grad_h0, grad_c0)
"""
import numpy as np
import pytest

import fastrnn
from fastrnn import _lnlstm as K
from fastrnn import lnlstm_reference as R
from fastrnn._lnlstm_args import param_shapes

from _gradcheck_util import assert_close_grad

OUT_COL = 1          # out / grad_out have extra columns on both sides
OUT_EXTRA = 2
EPS = 1e-5

# Kernel vs reference: |k - r| <= atol + rtol |r| + atol_norm max|r| per tensor.
# The two differ by rounding only (the kernel: layer-norm moments in double, one
# GEMM over all steps for the weight gradients; the reference: per-step NumPy in
# the array's dtype). The normwise term covers float32 gradients where the
# layer norm over very few units (H = 2: xhat = +-1) amplifies rounding, and
# float32 uses a polynomial exp (about 1 ulp): over 300 random configurations
# the largest excess over rtol/atol was 2.3e-5 max|r|.
TOL = {np.float64: dict(rtol=1e-9, atol=1e-12, atol_norm=1e-13),
       np.float32: dict(rtol=1e-4, atol=1e-5, atol_norm=1e-4)}

# The zoneout settings the tests run: off, Bernoulli masks (training), and the
# rate itself (evaluation's expectation, also differentiable).
ZONEOUT = {"off": (0.0, 0.0, False), "masks": (0.4, 0.3, True), "expect": (0.4, 0.3, False)}


def assert_close(name, got, want, rtol, atol, atol_norm):
    got, want = np.asarray(got, float), np.asarray(want, float)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    bound = atol + rtol * np.abs(want) + atol_norm * (np.abs(want).max() if want.size else 0)
    err = np.abs(got - want)
    assert np.all(err <= bound), (f"{name}: max error {err.max():.3e} "
                                  f"(max excess {(err - bound).max():.3e})")


def make_case(seed, dtype, T, B, I, H, layer_norm=True, bias=True, zoneout="off"):
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in param_shapes(I, H, bias, layer_norm).items():
        value = rng.uniform(-0.6, 0.6, shape)
        if name.startswith("ln_") and name.endswith("weight"):
            value += 1.0
        weights[name] = value.astype(dtype)
    p_h, p_c, use_masks = ZONEOUT[zoneout]
    masks = [(rng.random((T, B, H)) < p).astype(dtype) if use_masks else None
             for p in (p_h, p_c)]
    return dict(
        x=rng.standard_normal((T, B, I)).astype(dtype), weights=weights,
        h0=rng.standard_normal((B, H)).astype(dtype),
        c0=rng.standard_normal((B, H)).astype(dtype), p_h=p_h, p_c=p_c, mask_h=masks[0],
        mask_c=masks[1], grad_out=rng.standard_normal((T, B, OUT_COL + H + OUT_EXTRA)).astype(dtype),
        grad_h=rng.standard_normal((B, H)).astype(dtype),
        grad_c=rng.standard_normal((B, H)).astype(dtype))


def run(module, case, lengths=None, reverse=False, n_threads=1, backward=True):
    """Forward and backward of one direction; every result in one dict."""
    x, w = case["x"], case["weights"]
    T, B, _ = x.shape
    H = case["h0"].shape[1]
    out = np.full((T, B, OUT_COL + H + OUT_EXTRA), 7.0, x.dtype)
    h_n, c_n, cache = module.forward(x, w, case["h0"], case["c0"], lengths, reverse, backward,
                                     out, OUT_COL, case["p_h"], case["p_c"], case["mask_h"],
                                     case["mask_c"], EPS, n_threads)
    result = {"out": out, "h_n": h_n, "c_n": c_n}
    if backward:
        grad_x = np.zeros_like(x)
        grads = {k: np.zeros_like(v) for k, v in w.items()}
        dh0, dc0 = module.backward(cache, x, w, lengths, reverse, case["grad_out"], OUT_COL,
                                   case["grad_h"], case["grad_c"], grad_x, grads, n_threads)
        result.update(grad_x=grad_x, grad_h0=dh0, grad_c0=dc0,
                      **{"grad_" + k: v for k, v in grads.items()})
    return result


# ---------------------------------------------------------------------------
# The reference against central finite differences (float64)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("layer_norm,zoneout,reverse,use_lengths", [
    (True, "off", False, False),
    (True, "masks", True, True),
    (True, "expect", False, True),
    (False, "masks", False, True),
    (False, "expect", True, False),
])
def test_reference_gradients_match_finite_differences(layer_norm, zoneout, reverse,
                                                      use_lengths):
    T, B, I, H = 4, 3, 3, 3
    case = make_case(11, np.float64, T, B, I, H, layer_norm=layer_norm, zoneout=zoneout)
    lengths = np.array([4, 2, 1]) if use_lengths else None
    res = run(R, case, lengths, reverse)
    cols = slice(OUT_COL, OUT_COL + H)

    def loss():
        r = run(R, case, lengths, reverse, backward=False)
        return (np.sum(r["out"][:, :, cols] * case["grad_out"][:, :, cols])
                + np.sum(r["h_n"] * case["grad_h"]) + np.sum(r["c_n"] * case["grad_c"]))

    rng = np.random.default_rng(0)
    for name, array in case["weights"].items():
        assert_close_grad(name, loss, array, res["grad_" + name], rng, max_count=16)
    for name, grad in (("x", "grad_x"), ("h0", "grad_h0"), ("c0", "grad_c0")):
        assert_close_grad(name, loss, case[name], res[grad], rng, max_count=16)


def test_layer_gradients_match_finite_differences():
    """The whole layer (kernels, float64): two bidirectional layers, dropout,
    zoneout masks on h and c, lengths, batch_first, a given hx and grad_hn.
    The generator is reset before each forward so every evaluation draws the
    same masks."""
    layer = fastrnn.LayerNormLSTM(2, 3, num_layers=2, bidirectional=True, batch_first=True,
                                  dropout=0.3, zoneout=0.3, zoneout_cell=0.2, dtype="float64",
                                  seed=0)
    rng = np.random.default_rng(1)
    for _, p in layer.named_parameters():      # move off the 1 / 0 layer-norm defaults
        p += rng.uniform(-0.3, 0.3, p.shape)
    x = rng.standard_normal((3, 4, 2))
    h0, c0 = rng.standard_normal((2, 4, 3, 3))
    lengths = np.array([4, 1, 3])
    g_out = rng.standard_normal((3, 4, 6))
    g_h, g_c = rng.standard_normal((2, 4, 3, 3))

    def forward():
        layer._rng = np.random.default_rng(5)
        return layer(x, (h0, c0), lengths)

    def loss():
        out, (h_n, c_n) = forward()
        return np.sum(out * g_out) + np.sum(h_n * g_h) + np.sum(c_n * g_c)

    forward()
    dx, (dh0, dc0) = layer.backward(g_out, (g_h, g_c))
    grads = {k: v.copy() for k, v in layer.grads.items()}
    check = np.random.default_rng(2)
    for name, p in layer.named_parameters():
        assert_close_grad(name, loss, p, grads[name], check, max_count=6)
    for name, array, grad in (("x", x, dx), ("h0", h0, dh0), ("c0", c0, dc0)):
        assert_close_grad(name, loss, array, grad, check, max_count=12)


# ---------------------------------------------------------------------------
# Kernels against the reference
# ---------------------------------------------------------------------------

# (T, B, I, H, lengths): batch 1, seq 1, hidden 1, everything 1, a batch the two
# threads split unevenly (9 rows: 4 + 5), lengths with 1 and T.
SHAPES = [
    (1, 1, 1, 1, None),
    (3, 1, 2, 1, None),
    (1, 9, 3, 2, None),
    (5, 9, 3, 4, [5, 1, 3, 5, 2, 4, 1, 5, 3]),
    (4, 10, 1, 3, [4, 4, 2, 1, 3, 4, 1, 2, 3, 4]),
    (3, 9, 5, 37, [3, 1, 2, 3, 3, 2, 1, 1, 3]),   # vector loops with tails
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layer_norm", [True, False], ids=["ln", "noln"])
@pytest.mark.parametrize("zoneout", sorted(ZONEOUT))
@pytest.mark.parametrize("shape_index", range(len(SHAPES)))
def test_kernel_matches_reference(dtype, layer_norm, zoneout, shape_index):
    T, B, I, H, lengths = SHAPES[shape_index]
    lengths = None if lengths is None else np.array(lengths)
    reverse = shape_index % 2 == 1
    bias = shape_index != 2
    case = make_case(100 + shape_index, dtype, T, B, I, H, layer_norm, bias, zoneout)
    want = run(R, case, lengths, reverse)
    got = run(K, case, lengths, reverse, n_threads=2)
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == dtype, name
        assert_close(name, got[name], want[name], **TOL[dtype])
    # Columns outside out_col:out_col+H are untouched.
    assert np.all(got["out"][:, :, :OUT_COL] == 7) and np.all(got["out"][:, :, OUT_COL + H:] == 7)
    # Inference gives the training forward's numbers.
    infer = run(K, case, lengths, reverse, n_threads=2, backward=False)
    for name in ("out", "h_n", "c_n"):
        assert_close(name + " (inference)", infer[name], got[name], **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_kernel_thread_counts_agree(dtype):
    """1, 2 and 3 threads: the same numbers within rounding (the batch split
    changes only which thread computes a row; gain/bias sums are column-split)."""
    T, B, I, H = 6, 13, 4, 5
    lengths = np.array([6, 1, 3, 6, 2, 5, 4, 6, 1, 2, 3, 6, 5])
    case = make_case(7, dtype, T, B, I, H, zoneout="masks")
    base = run(K, case, lengths, reverse=True, n_threads=1)
    for n in (2, 3):
        other = run(K, case, lengths, reverse=True, n_threads=n)
        for name in base:
            assert_close(f"{name} ({n} threads)", other[name], base[name], **TOL[dtype])


# ---------------------------------------------------------------------------
# Layers: against fastrnn.LSTM, torch, and zoneout semantics
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_zoneout_lstm_without_zoneout_equals_lstm(dtype):
    lstm = fastrnn.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=dtype, seed=0)
    layer = fastrnn.ZoneoutLSTM(3, 4, num_layers=2, bidirectional=True, dtype=dtype, seed=1)
    assert [n for n, _ in layer.named_parameters()] == [n for n, _ in lstm.named_parameters()]
    layer.load_state_dict(lstm.state_dict())
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 6, 3))
    hx = tuple(rng.standard_normal((2, 4, 6, 4)))
    lengths = np.array([5, 1, 4, 2, 5, 3])
    a_out, (a_h, a_c) = lstm(x, hx, lengths)
    b_out, (b_h, b_c) = layer(x, hx, lengths)
    g = rng.standard_normal(a_out.shape)
    g_hn = tuple(rng.standard_normal((2, 4, 6, 4)))
    a_dx, (a_dh, a_dc) = lstm.backward(g, g_hn)
    b_dx, (b_dh, b_dc) = layer.backward(g, g_hn)
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == "float64" else dict(rtol=1e-4, atol=2e-5)
    for name, got, want in [("out", b_out, a_out), ("h_n", b_h, a_h), ("c_n", b_c, a_c),
                            ("dx", b_dx, a_dx), ("dh0", b_dh, a_dh), ("dc0", b_dc, a_dc)]:
        assert_close(name, got, want, atol_norm=0, **tol)
    for name in lstm.grads:
        assert_close(name, layer.grads[name], lstm.grads[name], atol_norm=1e-6, **tol)


def _torch_ln_lstm(torch, params, x, h0, c0, zoneout, eps):
    """The documented LayerNormLSTM formula in torch (one layer, forward, eval-mode
    zoneout), written independently of fastrnn.lnlstm_reference."""
    F = torch.nn.functional
    H = h0.shape[1]
    h, c, outs = h0, c0, []
    for t in range(x.shape[0]):
        a = (F.layer_norm(x[t] @ params["weight_ih_l0"].T, (4 * H,), params["ln_ih_weight_l0"],
                          params["ln_ih_bias_l0"], eps)
             + F.layer_norm(h @ params["weight_hh_l0"].T, (4 * H,), params["ln_hh_weight_l0"],
                            params["ln_hh_bias_l0"], eps)
             + params["bias_ih_l0"] + params["bias_hh_l0"])
        i, f, g, o = a.chunk(4, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(F.layer_norm(c_new, (H,), params["ln_c_weight_l0"],
                                                           params["ln_c_bias_l0"], eps))
        h = zoneout * h + (1 - zoneout) * h_new
        c = c_new
        outs.append(h)
    return torch.stack(outs), h, c


def test_layer_norm_lstm_matches_torch_formula():
    torch = pytest.importorskip("torch")
    layer = fastrnn.LayerNormLSTM(3, 4, zoneout=0.25, dtype="float64", seed=0)
    rng = np.random.default_rng(4)
    for _, p in layer.named_parameters():
        p += rng.uniform(-0.3, 0.3, p.shape)
    x = rng.standard_normal((5, 2, 3))
    h0, c0 = rng.standard_normal((2, 1, 2, 4))
    g = rng.standard_normal((5, 2, 4))
    params = {k: torch.tensor(v, requires_grad=True) for k, v in layer.state_dict().items()}
    tx = torch.tensor(x, requires_grad=True)
    t_out, t_h, t_c = _torch_ln_lstm(torch, params, tx, torch.tensor(h0[0]),
                                     torch.tensor(c0[0]), 0.25, layer.eps)
    (t_out * torch.tensor(g)).sum().backward()
    # Evaluation (zoneout expectation) forward; the training-mode forward with
    # zoneout "masks" equal to the rate (kernel-level) gives the same numbers
    # and the gradients.
    out, (h_n, c_n) = layer.eval()(x, (h0, c0))
    assert_close("out", out, t_out.detach().numpy(), rtol=1e-10, atol=1e-12, atol_norm=0)
    assert_close("h_n", h_n[0], t_h.detach().numpy(), rtol=1e-10, atol=1e-12, atol_norm=0)
    assert_close("c_n", c_n[0], t_c.detach().numpy(), rtol=1e-10, atol=1e-12, atol_norm=0)
    weights = {k[:-3]: v for k, v in layer.state_dict().items()}
    case = dict(x=x, weights=weights, h0=h0[0], c0=c0[0], p_h=0.25, p_c=0.0, mask_h=None,
                mask_c=None, grad_out=np.concatenate([np.zeros((5, 2, OUT_COL)), g,
                                                      np.zeros((5, 2, OUT_EXTRA))], axis=2),
                grad_h=None, grad_c=None)
    res = run(K, case)
    assert_close("grad_x", res["grad_x"], tx.grad.numpy(), rtol=1e-9, atol=1e-12, atol_norm=0)
    for name, p in params.items():
        assert_close(name, res["grad_" + name[:-3]], p.grad.numpy(), rtol=1e-9, atol=1e-12,
                     atol_norm=0)


@pytest.mark.parametrize("cls", [fastrnn.ZoneoutLSTM, fastrnn.LayerNormLSTM])
def test_zoneout_eval_is_the_expectation(cls):
    """eval: h_t = p h_{t-1} + (1 - p) h~_t, c_t = q c_{t-1} + (1 - q) c~_t,
    checked against a plain NumPy loop of the LSTM cell (ZoneoutLSTM), and as
    the reference's result (LayerNormLSTM)."""
    p, q = 0.3, 0.2
    layer = cls(3, 4, zoneout=p, zoneout_cell=q, dtype="float64", seed=0).eval()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 2, 3))
    out, (h_n, c_n) = layer(x)
    if cls is fastrnn.ZoneoutLSTM:
        w = layer.state_dict()
        sig = lambda a: 1 / (1 + np.exp(-a))   # noqa: E731
        h = c = np.zeros((2, 4))
        for t in range(6):
            a = x[t] @ w["weight_ih_l0"].T + w["bias_ih_l0"] + h @ w["weight_hh_l0"].T \
                + w["bias_hh_l0"]
            i, f, g, o = np.split(a, 4, axis=1)
            c_new = sig(f) * c + sig(i) * np.tanh(g)
            h_new = sig(o) * np.tanh(c_new)
            h, c = p * h + (1 - p) * h_new, q * c + (1 - q) * c_new
            assert_close(f"out[{t}]", out[t], h, rtol=1e-12, atol=1e-14, atol_norm=0)
        assert_close("c_n", c_n[0], c, rtol=1e-12, atol=1e-14, atol_norm=0)
    layer.impl = "reference"
    ref_out, (ref_h, ref_c) = layer(x)
    assert_close("out vs reference", out, ref_out, **TOL[np.float64])
    assert_close("c_n vs reference", c_n, ref_c, **TOL[np.float64])
    # The training forward uses Bernoulli masks instead: different numbers.
    assert not np.allclose(layer.train()(x)[0], out)


def test_zoneout_training_applies_the_drawn_masks():
    """Training: the output is m h_{t-1} + (1 - m) h~ with the masks kept in
    last_zoneout_masks (checked step by step against a rate-0 rerun seeded
    with the previous state); the masks are Bernoulli(rate)."""
    layer = fastrnn.ZoneoutLSTM(2, 50, zoneout=0.3, zoneout_cell=0.1, dtype="float64", seed=0)
    x = np.random.default_rng(6).standard_normal((40, 8, 2))
    out, _ = layer(x)
    (mask_h, mask_c), = layer.last_zoneout_masks[0]
    assert mask_h.shape == mask_c.shape == (40, 8, 50)
    assert set(np.unique(mask_h)) <= {0.0, 1.0}
    assert abs(mask_h.mean() - 0.3) < 0.02 and abs(mask_c.mean() - 0.1) < 0.02
    plain = fastrnn.ZoneoutLSTM(2, 50, dtype="float64").eval()
    plain.load_state_dict(layer.state_dict())
    # Rebuild the states with the masks: step t from (h_{t-1}, c_{t-1}).
    h = c = np.zeros((1, 8, 50))
    for t in range(40):
        h_new_all, (_, c_new) = plain(x[t:t + 1], (h, c))
        h_new = h_new_all[0]
        h = mask_h[t] * h[0] + (1 - mask_h[t]) * h_new
        c = mask_c[t] * c[0] + (1 - mask_c[t]) * c_new[0]
        assert_close(f"out[{t}]", out[t], h, rtol=1e-12, atol=1e-14, atol_norm=0)
        h, c = h[None], c[None]
    # Zoned-out units keep their value exactly (1 * h + 0 * h~).
    keep = mask_h[1:] == 1
    assert np.array_equal(out[1:][keep], out[:-1][keep])


def test_zoneout_masks_reproducible_with_seed():
    def make(seed):
        return fastrnn.LayerNormLSTM(3, 5, num_layers=2, bidirectional=True, zoneout=0.4,
                                     zoneout_cell=0.2, dropout=0.3, dtype="float64", seed=seed)
    x = np.random.default_rng(7).standard_normal((4, 3, 3))
    a, b, c = make(0), make(0), make(1)
    out_a, out_b, out_c = a(x)[0], b(x)[0], c(x)[0]
    assert np.array_equal(out_a, out_b)
    for ma, mb in zip(a.last_zoneout_masks, b.last_zoneout_masks):
        for (ha, ca), (hb, cb) in zip(ma, mb):
            assert np.array_equal(ha, hb) and np.array_equal(ca, cb)
    assert not np.array_equal(a.last_zoneout_masks[0][0][0], c.last_zoneout_masks[0][0][0])
    assert not np.array_equal(out_a, out_c)
    # The next forward draws new masks; the reference draws the same ones.
    first = a.last_zoneout_masks[0][0][0].copy()
    a(x)
    assert not np.array_equal(first, a.last_zoneout_masks[0][0][0])
    d = make(0)
    d.impl = "reference"
    assert_close("reference with the same seed", d(x)[0], out_a, **TOL[np.float64])
    # Without zoneout no masks are drawn.
    layer = fastrnn.LayerNormLSTM(3, 5, dtype="float64", seed=0)
    layer(x)
    assert layer.last_zoneout_masks == [[(None, None)]]


# ---------------------------------------------------------------------------
# Layer contract
# ---------------------------------------------------------------------------

def test_parameter_names_shapes_and_init():
    layer = fastrnn.LayerNormLSTM(3, 4, num_layers=2, bidirectional=True, seed=0)
    names = [n for n, _ in layer.named_parameters()]
    local = ["weight_ih", "weight_hh", "bias_ih", "bias_hh", "ln_ih_weight", "ln_ih_bias",
             "ln_hh_weight", "ln_hh_bias", "ln_c_weight", "ln_c_bias"]
    assert names == [f"{n}_l{k}{s}" for k in range(2) for s in ("", "_reverse") for n in local]
    assert layer.weight_ih_l1.shape == (16, 8)
    assert layer.ln_c_weight_l0_reverse.shape == (4,)
    assert np.all(layer.ln_ih_weight_l0 == 1) and np.all(layer.ln_c_bias_l1 == 0)
    assert np.abs(layer.weight_hh_l0).max() <= 0.5
    assert set(layer.grads) == set(names)
    assert fastrnn.LayerNormLSTM.returns_state and fastrnn.ZoneoutLSTM.returns_state
    no_bias = fastrnn.LayerNormLSTM(3, 4, bias=False)
    assert "bias_ih_l0" not in dict(no_bias.named_parameters())
    assert "ln_ih_bias_l0" in dict(no_bias.named_parameters())
    assert "ZoneoutLSTM(3, 4, zoneout=0.1)" == repr(fastrnn.ZoneoutLSTM(3, 4, zoneout=0.1))


def test_shapes_batch_first_unbatched_and_state_dict():
    layer = fastrnn.LayerNormLSTM(3, 4, num_layers=2, batch_first=True, zoneout=0.2, seed=0)
    x = np.random.default_rng(8).standard_normal((2, 5, 3)).astype(np.float32)
    out, (h_n, c_n) = layer(x, lengths=[5, 3])
    assert out.shape == (2, 5, 4) and h_n.shape == c_n.shape == (2, 2, 4)
    assert out.dtype == np.float32 and np.all(out[1, 3:] == 0)
    dx, (dh0, dc0) = layer.backward(np.ones_like(out))
    assert dx.shape == x.shape and dh0.shape == dc0.shape == (2, 2, 4)
    out_u, (h_u, _) = layer.eval()(x[0])
    assert out_u.shape == (5, 4) and h_u.shape == (2, 4)
    state = layer.state_dict()
    other = fastrnn.LayerNormLSTM(3, 4, num_layers=2, batch_first=True, zoneout=0.2, seed=9)
    other.load_state_dict(state)
    assert np.array_equal(other.eval()(x)[0], layer(x)[0])


def test_grads_accumulate_until_zero_grad():
    layer = fastrnn.LayerNormLSTM(2, 3, dtype="float64", seed=0)
    x = np.random.default_rng(9).standard_normal((3, 2, 2))
    layer(x)
    layer.backward(np.ones((3, 2, 3)))
    once = {k: v.copy() for k, v in layer.grads.items()}
    layer(x)
    layer.backward(np.ones((3, 2, 3)))
    for k in once:
        assert_close(k, layer.grads[k], 2 * once[k], rtol=1e-12, atol=1e-15, atol_norm=0)
    layer.zero_grad()
    assert all(np.all(g == 0) for g in layer.grads.values())


def test_works_inside_sequential():
    model = fastrnn.Sequential(fastrnn.LayerNormLSTM(3, 4, seed=0), fastrnn.Linear(4, 2, seed=0))
    x = np.random.default_rng(10).standard_normal((5, 2, 3)).astype(np.float32)
    y = model(x, lengths=np.array([5, 2]))
    assert y.shape == (5, 2, 2)
    model.backward(np.ones_like(y))
    assert "0.ln_c_weight_l0" in model.grads and np.any(model.grads["0.ln_c_weight_l0"] != 0)


@pytest.mark.parametrize("impl", ["cython", "reference"])
def test_nan_stays_in_its_sequence_and_padding_is_ignored(impl):
    layer = fastrnn.LayerNormLSTM(2, 3, num_layers=2, bidirectional=True, zoneout=0.2,
                                  dtype="float64", seed=0, impl=impl, n_threads=2)
    x = np.random.default_rng(11).standard_normal((4, 9, 2))
    lengths = np.array([4, 2, 4, 4, 4, 4, 4, 4, 4])
    layer._rng = np.random.default_rng(1)
    clean, _ = layer(x, lengths=lengths)
    layer.backward(np.ones_like(clean))
    clean_grads = {k: v.copy() for k, v in layer.grads.items()}
    bad = x.copy()
    bad[1, 0, 0] = np.nan          # sequence 0: a real step
    bad[3, 1, 1] = np.inf          # sequence 1: padding (length 2)
    layer.zero_grad()
    layer._rng = np.random.default_rng(1)
    out, (h_n, _) = layer(bad, lengths=lengths)
    assert np.isnan(out[:, 0]).any() and not np.isnan(out[:, 1:]).any()
    assert np.array_equal(out[:, 1:], clean[:, 1:])
    assert not np.isnan(h_n[:, 1:]).any()
    # Padding alone (sequence 1) changes nothing, gradients included.
    layer._rng = np.random.default_rng(1)
    bad[1, 0, 0] = x[1, 0, 0]
    layer.zero_grad()
    out, _ = layer(bad, lengths=lengths)
    assert np.array_equal(out, clean)
    layer.backward(np.ones_like(out))
    for k in clean_grads:
        assert np.array_equal(layer.grads[k], clean_grads[k]), k


def test_config_round_trip():
    layer = fastrnn.LayerNormLSTM(3, 4, num_layers=2, bidirectional=True, zoneout=0.1,
                                  zoneout_cell=0.05, dropout=0.2, dtype="float64")
    other = fastrnn.LayerNormLSTM.from_config(layer.get_config())
    assert other.get_config() == layer.get_config()
    module_config = getattr(fastrnn.nn, "module_config", None)
    if module_config is not None:
        rebuilt = fastrnn.nn.module_from_config(module_config(fastrnn.ZoneoutLSTM(3, 4)))
        assert type(rebuilt) is fastrnn.ZoneoutLSTM and not rebuilt.layer_norm


def test_bad_input_raises_clear_errors():
    layer = fastrnn.LayerNormLSTM(3, 4, seed=0)
    x = np.zeros((5, 2, 3), np.float32)
    with pytest.raises(ValueError, match="zoneout must be in"):
        fastrnn.LayerNormLSTM(3, 4, zoneout=1.5)
    with pytest.raises(ValueError, match="zoneout_cell must be in"):
        fastrnn.ZoneoutLSTM(3, 4, zoneout_cell=-0.1)
    with pytest.raises(ValueError, match="dropout must be in"):
        fastrnn.LayerNormLSTM(3, 4, dropout=1.0)
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        fastrnn.LayerNormLSTM(3, 0)
    with pytest.raises(ValueError, match="impl must be one of"):
        fastrnn.LayerNormLSTM(3, 4, impl="cuda")
    with pytest.raises(ValueError, match="input_size=3 features"):
        layer(np.zeros((5, 2, 4)))
    with pytest.raises(ValueError, match="x must be 3-D"):
        layer(np.zeros(5))
    with pytest.raises(TypeError, match="real floating-point"):
        layer(np.zeros((5, 2, 3), int))
    with pytest.raises(ValueError, match="lengths must be in 1..5"):
        layer(x, lengths=[6, 1])
    with pytest.raises(ValueError, match="lengths must have shape"):
        layer(x, lengths=[1, 2, 3])
    with pytest.raises(TypeError, match="hx must be a tuple"):
        layer(x, np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match=r"hx\[1\] \(c_0\) must have shape"):
        layer(x, (np.zeros((1, 2, 4)), np.zeros((2, 2, 4))))
    out, _ = layer(x)
    with pytest.raises(ValueError, match="grad_output must have the shape"):
        layer.backward(np.zeros((5, 2, 5)))
    layer(x)
    layer.backward(np.zeros_like(out))
    with pytest.raises(RuntimeError, match="once per forward"):
        layer.backward(np.zeros_like(out))
    layer.eval()(x)
    with pytest.raises(RuntimeError, match="training mode"):
        layer.backward(np.zeros_like(out))


@pytest.mark.parametrize("module", [K, R], ids=["kernel", "reference"])
def test_kernel_level_argument_errors(module):
    case = make_case(0, np.float64, 3, 2, 2, 3)
    x, w = case["x"], case["weights"]
    out = np.zeros((3, 2, 3))
    args = lambda **kw: dict(dict(x=x, weights=w, h0=case["h0"], c0=case["c0"],  # noqa: E731
                                  lengths=None, reverse=False, training=True, out=out,
                                  out_col=0, zoneout_h=0.0, zoneout_c=0.0, mask_h=None,
                                  mask_c=None, eps=EPS, n_threads=1), **kw)
    partial = {k: v for k, v in w.items() if k != "ln_c_bias"}
    with pytest.raises(ValueError, match="all of .* or none"):
        module.forward(**args(weights=partial))
    with pytest.raises(ValueError, match=r"weights\['weight_ih'\] must have shape"):
        module.forward(**args(weights=dict(w, weight_ih=np.zeros((12, 5)))))
    with pytest.raises(TypeError, match="must have dtype float64"):
        module.forward(**args(h0=case["h0"].astype(np.float32)))
    with pytest.raises(ValueError, match="zoneout_h must be in"):
        module.forward(**args(zoneout_h=2.0))
    with pytest.raises(ValueError, match="mask for zoneout_c must have shape"):
        module.forward(**args(zoneout_c=0.5, mask_c=np.zeros((3, 2, 2))))
    with pytest.raises(ValueError, match="out must be"):
        module.forward(**args(out_col=1))
    with pytest.raises(ValueError, match="C-contiguous"):
        module.forward(**args(x=np.asfortranarray(x)))
    _, _, cache = module.forward(**args())
    grads = {k: np.zeros_like(v) for k, v in w.items()}
    back = dict(cache=cache, x=x, weights=w, lengths=None, reverse=False, grad_out=out,
                out_col=0, grad_h_n=None, grad_c_n=None, grad_x=np.zeros_like(x), grads=grads,
                n_threads=1)
    with pytest.raises(ValueError, match="other direction"):
        module.backward(**dict(back, reverse=True))
    with pytest.raises(ValueError, match="grads must have the same keys"):
        module.backward(**dict(back, grads={k: v for k, v in grads.items()
                                            if not k.startswith("ln_")}))
    module.backward(**back)
    with pytest.raises(RuntimeError, match="use it once"):
        module.backward(**back)

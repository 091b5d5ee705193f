"""Gradients of the full layers (stacked, bidirectional, with lengths).

1. impl="reference" in float64 against central finite differences of a scalar
   loss, for every parameter, x and the initial states.
2. impl="cython" against impl="reference" with the same weights: outputs and
   all gradients, float32 and float64, with inter-layer dropout (both draw
   the masks from the layer's seeded rng, so they must agree).
3. n_threads=1 against n_threads=2.
4. Edge shapes: batch 1, seq_len 1, hidden 1, hidden != input, seq_len 500.
"""
import itertools

import numpy as np
import pytest

import fastrnn


CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def layer_class_kwargs(cell):
    if cell.startswith("rnn"):
        return fastrnn.RNN, {"nonlinearity": cell.split("_")[1]}
    return {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[cell], {}


def build(cell, input_size, hidden, *, num_layers=2, bidirectional=True, bias=True,
          batch_first=False, dropout=0.0, dtype="float64", impl="reference", seed=0,
          n_threads=1, state=None):
    """A layer; one thread unless asked (the thread count is tested separately,
    and 2-thread parallel regions on tiny problems crawl on a loaded machine)."""
    cls, kwargs = layer_class_kwargs(cell)
    layer = cls(input_size, hidden, num_layers=num_layers, bias=bias, batch_first=batch_first,
                dropout=dropout, bidirectional=bidirectional, dtype=dtype, seed=seed,
                impl=impl, n_threads=n_threads, **kwargs)
    if state is not None:
        layer.load_state_dict(state)
    return layer


def make_problem(cell, seq_len, batch, input_size, hidden, num_layers=2, bidirectional=True,
                 batch_first=False, seed=0, unbatched=False):
    """Random x, initial states, and coefficients of the linear loss."""
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    if unbatched:
        x_shape, h_shape = (seq_len, input_size), (num_layers * D, hidden)
    else:
        x_shape = (batch, seq_len, input_size) if batch_first else (seq_len, batch, input_size)
        h_shape = (num_layers * D, batch, hidden)
    out_shape = x_shape[:-1] + (D * hidden,)
    p = {"x": rng.standard_normal(x_shape),
         "h0": 0.5 * rng.standard_normal(h_shape),
         "c0": 0.5 * rng.standard_normal(h_shape) if cell == "lstm" else None}
    r = {"out": rng.standard_normal(out_shape),
         "h_n": rng.standard_normal(h_shape),
         "c_n": rng.standard_normal(h_shape) if cell == "lstm" else None}
    return p, r


def hx_of(cell, p, given):
    if not given:
        return None
    return (p["h0"], p["c0"]) if cell == "lstm" else p["h0"]


def forward_backward(layer, cell, p, r, lengths, given):
    """Outputs and every gradient of L = sum(out*R) + sum(h_n*Rh) (+ sum(c_n*Rc))."""
    layer.zero_grad()
    out, hn = layer(p["x"], hx_of(cell, p, given), lengths)
    h_n, c_n = hn if cell == "lstm" else (hn, None)
    dx, dhx = layer.backward(r["out"], (r["h_n"], r["c_n"]) if cell == "lstm" else r["h_n"])
    dh0, dc0 = dhx if cell == "lstm" else (dhx, None)
    res = {"out": out, "h_n": h_n, "c_n": c_n, "x": dx, "h0": dh0, "c0": dc0}
    res.update({"grad " + n: g.copy() for n, g in layer.grads.items()})
    return res


def scalar_loss(out, hn, cell, r):
    h_n, c_n = hn if cell == "lstm" else (hn, None)
    val = np.sum(out * r["out"]) + np.sum(h_n * r["h_n"])
    if cell == "lstm":
        val += np.sum(c_n * r["c_n"])
    return val


def relative_error(a, b):
    """||a - b||_inf / max(||a||_inf, ||b||_inf)."""
    scale = max(np.abs(a).max(), np.abs(b).max())
    return np.abs(a - b).max() / scale if scale > 0 else 0.0


def finite_difference_check(cell, layer_kwargs, p, r, lengths, given, eps=1e-6):
    """Central differences of the loss w.r.t. every parameter, x, h0 (and c0)
    against layer.backward; each layer evaluation is a freshly built layer with
    the same seed, so dropout masks are the same in every evaluation."""
    state = build(cell, **layer_kwargs).state_dict()
    inputs = {k: (v.copy() if v is not None else None) for k, v in p.items()}
    if not given:  # the loss of hx=None is the loss of zero states
        inputs["h0"] = np.zeros_like(p["h0"])
        if cell == "lstm":
            inputs["c0"] = np.zeros_like(p["c0"])

    def loss():
        layer = build(cell, state=state, **layer_kwargs)
        out, hn = layer(inputs["x"], hx_of(cell, inputs, True), lengths)
        return scalar_loss(out, hn, cell, r)

    analytic = forward_backward(build(cell, state=state, **layer_kwargs), cell, p, r,
                                lengths, given)
    targets = [(n, state) for n in state] + [(n, inputs) for n in ("x", "h0", "c0")
                                             if inputs[n] is not None]
    checked = 0
    zero = []
    for name, holder in targets:
        array = holder[name]
        numeric = np.zeros_like(array)
        for idx in np.ndindex(array.shape):
            orig = array[idx]
            array[idx] = orig + eps
            lp = loss()
            array[idx] = orig - eps
            lm = loss()
            array[idx] = orig
            numeric[idx] = (lp - lm) / (2 * eps)
        ana = analytic[name if holder is inputs else "grad " + name]
        assert ana.shape == array.shape, name
        if not np.any(numeric):
            zero.append(name)
        err = relative_error(ana, numeric)
        assert err < 1e-6, f"{name}: relative error {err:.2e} vs finite differences"
        np.testing.assert_allclose(ana, numeric, rtol=1e-5, atol=1e-8, err_msg=name)
        checked += 1
    assert checked == len(state) + 2 + (cell == "lstm")
    # A zero gradient makes its check vacuous; only ReLU units can be dead.
    if cell == "rnn_relu":
        assert len(zero) < checked / 2, f"degenerate case: zero gradients {zero}"
    else:
        assert not zero, f"degenerate case: zero gradients {zero}"


# --------------------------------------------------------------------------
# 1. reference layer vs finite differences
# --------------------------------------------------------------------------

T, B, I, H = 4, 3, 3, 2
LENGTHS = np.array([4, 1, 3], dtype=np.int64)

FD_CASES = list(itertools.product(CELLS, [True, False], ["len-hx", "full-nohx"]))


@pytest.mark.parametrize("cell,bias,variant", FD_CASES)
def test_reference_layer_matches_finite_differences(cell, bias, variant):
    lengths, given = (LENGTHS, True) if variant == "len-hx" else (None, False)
    kwargs = dict(input_size=I, hidden=H, bias=bias, seed=FD_CASES.index((cell, bias, variant)))
    p, r = make_problem(cell, T, B, I, H, seed=kwargs["seed"])
    finite_difference_check(cell, kwargs, p, r, lengths, given)


@pytest.mark.parametrize("cell", CELLS)
def test_reference_layer_with_dropout_matches_finite_differences(cell):
    """Training-mode dropout between layers: the gradient goes through the mask."""
    kwargs = dict(input_size=I, hidden=H, num_layers=2, dropout=0.4, batch_first=True,
                  seed=40 + CELLS.index(cell))
    p, r = make_problem(cell, T, B, I, H, num_layers=2, batch_first=True, seed=kwargs["seed"])
    # the masks really drop something in this case
    a = build(cell, **kwargs)(p["x"])[0]
    b = build(cell, **dict(kwargs, dropout=0.0), state=build(cell, **kwargs).state_dict())(
        p["x"])[0]
    assert not np.allclose(a, b)
    finite_difference_check(cell, kwargs, p, r, LENGTHS, True)


@pytest.mark.parametrize("cell", CELLS)
def test_reference_layer_unbatched_matches_finite_differences(cell):
    kwargs = dict(input_size=I, hidden=H, seed=50)
    p, r = make_problem(cell, T, B, I, H, seed=50, unbatched=True)
    finite_difference_check(cell, kwargs, p, r, None, True)


# --------------------------------------------------------------------------
# 2. cython vs reference
# --------------------------------------------------------------------------

TOL = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=1e-4, atol=1e-5)}


def assert_same_results(a, b, dtype, context, tol=None):
    tol = tol or TOL[dtype]
    assert a.keys() == b.keys()
    for key in a:
        if b[key] is None:
            assert a[key] is None, f"{key} ({context})"
            continue
        assert a[key].dtype == np.dtype(dtype), f"{key} dtype ({context})"
        assert a[key].shape == b[key].shape, f"{key} shape ({context})"
        np.testing.assert_allclose(a[key], b[key], **tol, err_msg=f"{key} ({context})")


def compare_impls(cell, dtype, seq_len, batch, input_size, hidden, lengths, given,
                  seed=0, **layer_kwargs):
    cy = build(cell, input_size, hidden, dtype=dtype, impl="cython", seed=seed, **layer_kwargs)
    ref = build(cell, input_size, hidden, dtype=dtype, impl="reference", seed=seed,
                state=cy.state_dict(), **layer_kwargs)
    p, r = make_problem(cell, seq_len, batch, input_size, hidden,
                        num_layers=layer_kwargs.get("num_layers", 2),
                        bidirectional=layer_kwargs.get("bidirectional", True),
                        batch_first=layer_kwargs.get("batch_first", False), seed=seed + 1)
    p = {k: (None if v is None else v.astype(dtype)) for k, v in p.items()}
    r = {k: (None if v is None else v.astype(dtype)) for k, v in r.items()}
    a = forward_backward(cy, cell, p, r, lengths, given)
    b = forward_backward(ref, cell, p, r, lengths, given)
    nonzero = [k for k in b if b[k] is not None and np.any(b[k])]
    assert len(nonzero) > len(b) // 2, "degenerate comparison: most results are zero"
    assert_same_results(a, b, dtype, f"{cell} {dtype}")
    return a, cy, p


IMPL_CASES = list(itertools.product(CELLS, ["float64", "float32"], [True, False],
                                    [0.0, 0.5]))


@pytest.mark.parametrize("cell,dtype,bias,dropout", IMPL_CASES)
def test_cython_matches_reference(cell, dtype, bias, dropout):
    seq_len, batch = 6, 10
    lengths = np.array([6, 1, 3, 6, 2, 5, 4, 6, 1, 3])
    a, cy, p = compare_impls(cell, dtype, seq_len, batch, 4, 5, lengths, True,
                             seed=IMPL_CASES.index((cell, dtype, bias, dropout)),
                             num_layers=3, bias=bias, dropout=dropout, batch_first=True)
    if dropout:
        # The masks are really applied: the result differs from no dropout.
        no_dropout = build(cell, 4, 5, num_layers=3, bias=bias, batch_first=True,
                           dtype=dtype, impl="cython", state=cy.state_dict())
        out0, _ = no_dropout(p["x"], hx_of(cell, p, True), lengths)
        assert not np.allclose(out0, a["out"])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", CELLS)
def test_cython_matches_reference_zero_states_no_lengths(cell, dtype):
    compare_impls(cell, dtype, 5, 3, 3, 4, None, False, seed=7)


EVAL_SHAPES = [(70, 3, 1), (9, 50, 1), (9, 50, 2), (1, 1, 2), (130, 1, 1)]


@pytest.mark.parametrize("seq_len,batch,n_threads", EVAL_SHAPES)
@pytest.mark.parametrize("cell", CELLS)
def test_cython_matches_reference_eval_mode(cell, seq_len, batch, n_threads):
    """Inference (no cache) takes another path in the kernels: the input
    projection in chunks of 128 // batch steps, from the end in reverse. It
    must give the reference's results and the training-mode results."""
    rng = np.random.default_rng(8)
    lengths = rng.integers(1, seq_len + 1, batch)
    lengths[0] = seq_len
    cy = build(cell, 3, 4, impl="cython", seed=8, dropout=0.5, n_threads=n_threads)
    ref = build(cell, 3, 4, impl="reference", seed=8, dropout=0.5, state=cy.state_dict())
    p, _ = make_problem(cell, seq_len, batch, 3, 4, seed=8)
    results = []
    for layer in (cy, ref):
        layer.eval()
        results.append(layer(p["x"], hx_of(cell, p, True), lengths))
    (out_c, hn_c), (out_r, hn_r) = results
    np.testing.assert_allclose(out_c, out_r, **TOL["float64"])
    for s_c, s_r in zip(hn_c if cell == "lstm" else [hn_c], hn_r if cell == "lstm" else [hn_r]):
        np.testing.assert_allclose(s_c, s_r, **TOL["float64"])
    # eval output == training-mode output without dropout
    cy.train()
    cy.dropout = 0.0
    out_t, hn_t = cy(p["x"], hx_of(cell, p, True), lengths)
    np.testing.assert_allclose(out_c, out_t, **TOL["float64"])
    for s_c, s_t in zip(hn_c if cell == "lstm" else [hn_c], hn_t if cell == "lstm" else [hn_t]):
        np.testing.assert_allclose(s_c, s_t, **TOL["float64"])


# --------------------------------------------------------------------------
# 3. thread counts
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", CELLS)
def test_one_and_two_threads_agree(cell, dtype):
    """Batch >= 8 and T*B >= 32 rows so that the kernels do split the work."""
    seq_len, batch, input_size, hidden = 8, 12, 5, 9
    lengths = np.array([8, 1, 5, 8, 3, 7, 2, 8, 6, 4, 8, 1])
    p, r = make_problem(cell, seq_len, batch, input_size, hidden, seed=61)
    p = {k: (None if v is None else v.astype(dtype)) for k, v in p.items()}
    r = {k: (None if v is None else v.astype(dtype)) for k, v in r.items()}
    results = []
    for impl, n_threads in (("cython", 1), ("cython", 2), ("reference", 1)):
        layer = build(cell, input_size, hidden, dtype=dtype, impl=impl, seed=60,
                      dropout=0.3, n_threads=n_threads)
        results.append(forward_backward(layer, cell, p, r, lengths, True))
    one, two, ref = results
    tol = {"float64": dict(rtol=1e-12, atol=1e-13), "float32": dict(rtol=1e-5, atol=1e-6)}
    assert_same_results(two, one, dtype, f"threads {cell}", tol=tol[dtype])
    assert_same_results(two, ref, dtype, f"2 threads vs reference {cell}")


# --------------------------------------------------------------------------
# 4. edge shapes (cython vs reference; finite differences where tiny)
# --------------------------------------------------------------------------

EDGE_SHAPES = {
    # name: (seq_len, batch, input_size, hidden, lengths)
    "batch1": (5, 1, 3, 4, np.array([3])),
    "seq1": (1, 4, 3, 4, np.array([1, 1, 1, 1])),
    "hidden1": (5, 3, 3, 1, np.array([5, 1, 2])),
    "hidden_gt_input": (4, 3, 1, 6, np.array([2, 4, 1])),
    "input_gt_hidden": (4, 3, 9, 2, np.array([4, 3, 1])),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", list(EDGE_SHAPES))
@pytest.mark.parametrize("cell", CELLS)
def test_edge_shapes_cython_matches_reference(cell, shape, dtype):
    seq_len, batch, input_size, hidden, lengths = EDGE_SHAPES[shape]
    for lens in (None, lengths):
        a, _, _ = compare_impls(cell, dtype, seq_len, batch, input_size, hidden, lens,
                                True, seed=9)
        assert a["out"].shape == (seq_len, batch, 2 * hidden)
        assert a["x"].shape == (seq_len, batch, input_size)


FD_EDGE_SHAPES = {
    "batch1": (4, 1, 3, 2, np.array([3])),
    "seq1": (1, 3, 3, 2, np.array([1, 1, 1])),
    "hidden1": (4, 2, 2, 1, np.array([4, 2])),
}


@pytest.mark.parametrize("shape", list(FD_EDGE_SHAPES))
@pytest.mark.parametrize("cell", CELLS)
def test_edge_shapes_reference_matches_finite_differences(cell, shape):
    seq_len, batch, input_size, hidden, lengths = FD_EDGE_SHAPES[shape]
    kwargs = dict(input_size=input_size, hidden=hidden, seed=12)
    p, r = make_problem(cell, seq_len, batch, input_size, hidden, seed=12)
    finite_difference_check(cell, kwargs, p, r, lengths, True)


LONG_CASES = [pytest.param(c, marks=[] if c == "lstm" else pytest.mark.slow) for c in CELLS]


@pytest.mark.parametrize("cell", LONG_CASES)
def test_long_sequence_cython_matches_reference(cell):
    """seq_len 500 (lengths 500, 1 and in between) in float64 and float32."""
    lengths = np.array([500, 1, 377])
    for dtype in ("float64", "float32"):
        tol = TOL[dtype] if dtype == "float64" else dict(rtol=1e-3, atol=1e-4)
        cy = build(cell, 3, 5, num_layers=2, dtype=dtype, impl="cython", seed=13)
        ref = build(cell, 3, 5, num_layers=2, dtype=dtype, impl="reference", seed=13,
                    state=cy.state_dict())
        p, r = make_problem(cell, 500, 3, 3, 5, seed=13)
        p = {k: (None if v is None else v.astype(dtype)) for k, v in p.items()}
        r = {k: (None if v is None else v.astype(dtype)) for k, v in r.items()}
        a = forward_backward(cy, cell, p, r, lengths, True)
        b = forward_backward(ref, cell, p, r, lengths, True)
        assert all(np.all(np.isfinite(v)) for v in a.values() if v is not None)
        assert_same_results(a, b, dtype, f"seq_len 500 {cell}", tol=tol)

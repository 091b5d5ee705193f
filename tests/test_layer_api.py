"""The layer API: modes, backward's contract, gradient accumulation, state dicts,
input validation and conversion, memory layouts, NaN isolation, threads."""
import re

import numpy as np
import pytest

import fastrnn

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
IMPLS = ["cython", "reference"]
T, B, I, H = 5, 3, 3, 4


def make(cell, input_size=I, hidden=H, **kwargs):
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("n_threads", 1)
    if cell.startswith("rnn"):
        return fastrnn.RNN(input_size, hidden, nonlinearity=cell.split("_")[1], **kwargs)
    return {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[cell](input_size, hidden, **kwargs)


def states(cell, shape, rng, dtype=np.float64):
    h = rng.standard_normal(shape).astype(dtype)
    if cell == "lstm":
        return (h, rng.standard_normal(shape).astype(dtype))
    return h


def as_list(state):
    """h_n / dh0 (or the LSTM pair) as a list of arrays."""
    return list(state) if isinstance(state, tuple) else [state]


def run(layer, x, hx=None, lengths=None, grad_out=None, grad_hn=None):
    """Forward and backward; everything as a flat dict of arrays."""
    out, hn = layer(x, hx, lengths)
    res = {"out": out}
    res.update({f"hn{i}": s for i, s in enumerate(as_list(hn))})
    if grad_out is not None:
        dx, dhx = layer.backward(grad_out, grad_hn)
        res["dx"] = dx
        res.update({f"dh{i}": s for i, s in enumerate(as_list(dhx))})
        res.update({"grad " + k: g.copy() for k, g in layer.grads.items()})
    return res


def assert_results_equal(a, b, **tol):
    assert a.keys() == b.keys()
    for k in a:
        if tol:
            np.testing.assert_allclose(a[k], b[k], err_msg=k, **tol)
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def shape_text(shape):
    return re.escape(str(tuple(shape)))


# --------------------------------------------------------------------------
# train / eval / backward errors
# --------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
def test_modes_and_backward_errors(cell, impl):
    layer = make(cell, impl=impl)
    assert layer.training, "layers train by default"
    x = np.random.default_rng(0).standard_normal((T, B, I))
    g = np.ones((T, B, H))

    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(g)  # no forward yet

    assert layer.eval() is layer and not layer.training
    layer(x)
    with pytest.raises(RuntimeError, match="train"):
        layer.backward(g)  # eval forward keeps no cache

    assert layer.train() is layer and layer.training
    layer(x)
    layer.eval()  # switching to eval drops the cache of the last forward
    with pytest.raises(RuntimeError):
        layer.backward(g)

    layer.train()
    layer(x)
    layer.backward(g)
    with pytest.raises(RuntimeError, match="once"):
        layer.backward(g)  # twice for one forward

    # a train forward followed by an eval forward: nothing to backpropagate
    layer(x)
    layer.eval()(x)
    layer.train()
    with pytest.raises(RuntimeError):
        layer.backward(g)


@pytest.mark.parametrize("cell", CELLS)
def test_train_false_is_eval(cell):
    layer = make(cell)
    layer.train(False)
    assert not layer.training
    layer(np.zeros((T, B, I)))
    with pytest.raises(RuntimeError):
        layer.backward(np.zeros((T, B, H)))


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_wrong_grad_output_shape(cell, batch_first):
    layer = make(cell, bidirectional=True, batch_first=batch_first)
    x_shape = (B, T, I) if batch_first else (T, B, I)
    out, _ = layer(np.ones(x_shape))
    expected = (B, T, 2 * H) if batch_first else (T, B, 2 * H)
    assert out.shape == expected
    for bad in [(T, B, H), expected[:2], expected + (1,), (expected[1], expected[0], 2 * H)]:
        with pytest.raises(ValueError, match=r"grad_output.*" + shape_text(expected)):
            layer.backward(np.ones(bad))


@pytest.mark.parametrize("cell", CELLS)
def test_wrong_grad_hn_shape(cell):
    layer = make(cell, num_layers=2)
    out, _ = layer(np.ones((T, B, I)))
    expected = (2, B, H)
    bad = np.ones((1, B, H))
    if cell == "lstm":
        for grad_hn in [(bad, None), (None, bad), (np.ones(expected), bad)]:
            with pytest.raises(ValueError, match=r"grad_hn.*" + shape_text(expected)):
                layer.backward(np.ones_like(out), grad_hn)
        with pytest.raises(TypeError, match=r"grad_hn.*tuple"):
            layer.backward(np.ones_like(out), np.ones(expected))
    else:
        with pytest.raises(ValueError, match=r"grad_hn.*" + shape_text(expected)):
            layer.backward(np.ones_like(out), bad)


@pytest.mark.parametrize("cell", CELLS)
def test_backward_rejects_integer_gradients(cell):
    layer = make(cell)
    out, _ = layer(np.ones((T, B, I)))
    with pytest.raises(TypeError, match="grad_output"):
        layer.backward(np.ones(out.shape, dtype=np.int64))


def test_lstm_grad_hn_parts_may_be_none():
    rng = np.random.default_rng(1)
    layer = make("lstm", dtype="float64")
    x = rng.standard_normal((T, B, I))
    g = rng.standard_normal((T, B, H))
    dh = rng.standard_normal((1, B, H))
    dc = rng.standard_normal((1, B, H))
    zeros = np.zeros((1, B, H))
    pairs = [(None, (zeros, zeros)), ((None, None), (zeros, zeros)),
             ((dh, None), (dh, zeros)), ((None, dc), (zeros, dc))]
    for given, explicit in pairs:
        layer.zero_grad()
        a = run(layer, x, grad_out=g, grad_hn=given)
        layer.zero_grad()
        b = run(layer, x, grad_out=g, grad_hn=explicit)
        assert_results_equal(a, b)


# --------------------------------------------------------------------------
# gradient accumulation
# --------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
def test_grads_accumulate_and_zero_grad_resets(cell, impl):
    rng = np.random.default_rng(2)
    layer = make(cell, num_layers=2, bidirectional=True, dtype="float64", impl=impl)
    xa, xb = rng.standard_normal((2, T, B, I))
    ga, gb = rng.standard_normal((2, T, B, 2 * H))
    assert all(not g.any() for g in layer.grads.values()), "grads start at zero"
    assert list(layer.grads) == list(layer.state_dict())

    a = run(layer, xa, grad_out=ga)
    layer.zero_grad()
    assert all(not g.any() for g in layer.grads.values()), "zero_grad resets"
    b = run(layer, xb, grad_out=gb)
    layer.zero_grad()

    run(layer, xa, grad_out=ga)
    both = run(layer, xb, grad_out=gb)
    for name in layer.grads:
        assert np.any(a["grad " + name])
        np.testing.assert_allclose(both["grad " + name], a["grad " + name] + b["grad " + name],
                                   rtol=1e-12, atol=1e-14, err_msg=name)
    # dx and dhx are not accumulated: they are the gradients of this call only
    np.testing.assert_allclose(both["dx"], b["dx"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(both["dh0"], b["dh0"], rtol=1e-12, atol=1e-14)
    layer.zero_grad()
    assert all(not g.any() for g in layer.grads.values())


# --------------------------------------------------------------------------
# state dicts
# --------------------------------------------------------------------------

@pytest.mark.parametrize("cell", CELLS)
def test_state_dict_round_trip(cell):
    rng = np.random.default_rng(3)
    src = make(cell, num_layers=2, bidirectional=True, dtype="float64", seed=1)
    dst = make(cell, num_layers=2, bidirectional=True, dtype="float64", seed=2)
    x = rng.standard_normal((T, B, I))
    assert not np.allclose(src(x)[0], dst(x)[0])
    sd = src.state_dict()
    dst.load_state_dict(sd)
    for name, value in dst.state_dict().items():
        np.testing.assert_array_equal(value, sd[name])
    np.testing.assert_array_equal(src(x)[0], dst(x)[0])
    # state_dict returns copies and load_state_dict copies its input
    before = dst(x)[0]
    sd[next(iter(sd))] += 1.0
    for value in dst.state_dict().values():
        value += 1.0
    np.testing.assert_array_equal(dst(x)[0], before)
    # another dtype: cast on load
    d32 = make(cell, num_layers=2, bidirectional=True, dtype="float32", seed=5)
    d32.load_state_dict(src.state_dict())
    for name, value in d32.state_dict().items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, src.state_dict()[name].astype(np.float32))


def _changed(sd):
    return {k: v + 0.5 for k, v in sd.items()}


@pytest.mark.parametrize("cell", CELLS)
def test_load_state_dict_errors_change_nothing(cell):
    layer = make(cell, num_layers=2, bidirectional=True, dtype="float64")
    original = layer.state_dict()
    names = list(original)
    x = np.random.default_rng(4).standard_normal((T, B, I))
    out_before = layer(x)[0]

    def unchanged():
        now = layer.state_dict()
        assert list(now) == names
        for k in names:
            np.testing.assert_array_equal(now[k], original[k], err_msg=k)
        np.testing.assert_array_equal(layer(x)[0], out_before)

    missing = _changed(original)
    del missing[names[-1]]
    with pytest.raises(KeyError, match=names[-1]):
        layer.load_state_dict(missing)
    unchanged()

    extra = _changed(original)
    extra["weight_ih_l7"] = np.zeros((4 * H, I))
    with pytest.raises(KeyError, match="weight_ih_l7"):
        layer.load_state_dict(extra)
    unchanged()

    wrong_shape = _changed(original)
    last = names[-1]
    wrong_shape[last] = np.zeros(original[last].shape + (1,))
    with pytest.raises(ValueError, match=re.escape(last) + ".*" + shape_text(original[last].shape)):
        layer.load_state_dict(wrong_shape)
    unchanged()

    transposed = _changed(original)
    transposed["weight_ih_l1"] = transposed["weight_ih_l1"].T.copy()
    with pytest.raises(ValueError, match="weight_ih_l1"):
        layer.load_state_dict(transposed)
    unchanged()

    for bad_dtype in (np.int64, np.int32, bool, np.complex128):
        bad = _changed(original)
        bad[last] = np.ones(original[last].shape, dtype=bad_dtype)
        with pytest.raises(TypeError, match=re.escape(last)):
            layer.load_state_dict(bad)
        unchanged()

    # a dict for another configuration (no bias) is rejected too
    no_bias = make(cell, num_layers=2, bidirectional=True, bias=False).state_dict()
    with pytest.raises(KeyError):
        layer.load_state_dict(no_bias)
    unchanged()


# --------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------

@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_wrong_x_rank_and_features(cell, batch_first):
    layer = make(cell, batch_first=batch_first)
    for bad in [np.ones(I), np.ones((T, B, I, 1)), np.ones(())]:
        with pytest.raises(ValueError, match=r"\bx\b.*" + shape_text(bad.shape)):
            layer(bad)
    bad = np.ones((B, T, I + 1) if batch_first else (T, B, I + 1))
    with pytest.raises(ValueError, match=rf"\bx\b.*input_size={I}.*" + shape_text(bad.shape)):
        layer(bad)


@pytest.mark.parametrize("cell", CELLS)
def test_wrong_feature_size_unbatched_message_shows_the_given_shape(cell):
    """Bug: for 2-D x the message reports the internal (seq_len, 1, features)
    shape instead of the shape the user passed."""
    layer = make(cell)
    bad = np.ones((T, I + 1))
    with pytest.raises(ValueError, match=rf"\bx\b.*input_size={I}") as info:
        layer(bad)
    assert str((T, I + 1)) in str(info.value), str(info.value)


@pytest.mark.parametrize("cell", CELLS)
def test_empty_sequence_or_batch_rejected(cell):
    layer = make(cell)
    for bad in [np.ones((0, B, I)), np.ones((T, 0, I)), np.ones((0, I))]:
        with pytest.raises(ValueError, match=r"\bx\b"):
            layer(bad)


@pytest.mark.parametrize("cell", CELLS)
def test_wrong_hx_shape(cell):
    layer = make(cell, num_layers=2, bidirectional=True)
    expected = (4, B, H)
    x = np.ones((T, B, I))
    for bad_shape in [(2, B, H), (4, B + 1, H), (4, B, H + 1), (4, H), (B, H)]:
        bad = np.ones(bad_shape)
        if cell == "lstm":
            for hx in [(bad, np.ones(expected)), (np.ones(expected), bad)]:
                with pytest.raises(ValueError, match=r"hx.*" + shape_text(expected)):
                    layer(x, hx)
        else:
            with pytest.raises(ValueError, match=r"hx.*" + shape_text(expected)):
                layer(x, bad)
    # unbatched x needs unbatched states
    with pytest.raises(ValueError, match=r"hx.*" + shape_text((4, H))):
        layer(np.ones((T, I)), states(cell, expected, np.random.default_rng(0)))


def test_lstm_hx_must_be_a_pair():
    layer = make("lstm")
    x = np.ones((T, B, I))
    h = np.zeros((1, B, H))
    for bad in [h, (h,), (h, h, h), [h], np.zeros((2, 1, B, H))]:
        with pytest.raises(TypeError, match=r"hx.*tuple"):
            layer(x, bad)
    # a list pair is accepted like a tuple
    out_list, _ = layer(x, [h, h])
    out_tuple, _ = layer(x, (h, h))
    np.testing.assert_array_equal(out_list, out_tuple)


@pytest.mark.parametrize("cell", CELLS)
def test_lengths_validation(cell):
    layer = make(cell, batch_first=True)
    x = np.ones((B, T, I))
    for bad in [[0, 1, 2], [T + 1, 1, 1], [-1, 2, 3], [1, 2, 3, 4], [1, 2], [[1, 2, 3]], 3]:
        with pytest.raises(ValueError, match="lengths"):
            layer(x, lengths=bad)
    for bad in [[1.0, 2.0, 3.0], np.array([1.5, 2, 3]), [True, True, True], ["1", "2", "3"]]:
        with pytest.raises(TypeError, match="lengths"):
            layer(x, lengths=bad)
    with pytest.raises(ValueError, match="lengths"):
        layer(np.ones((T, I)), lengths=[T])  # unbatched input has no lengths
    # valid forms: list, any integer dtype, read-only, non-contiguous
    ref = layer(x, lengths=np.array([5, 1, 3]))[0]
    lengths_ro = np.array([5, 1, 3], dtype=np.int32)
    lengths_ro.setflags(write=False)
    for good in [[5, 1, 3], np.array([5, 1, 3], dtype=np.uint8), lengths_ro,
                 np.array([5, 9, 1, 9, 3, 9])[::2]]:
        np.testing.assert_array_equal(layer(x, lengths=good)[0], ref)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
def test_lengths_refilled_before_backward_do_not_change_the_gradients(cell, impl):
    # A data loader may refill its lengths array for the next batch before
    # backward: the training forward keeps its own copy.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I))
    grad = rng.standard_normal((T, B, H))
    results = []
    for refill in (False, True):
        layer = make(cell, impl=impl)
        lengths = np.array([5, 1, 3])
        layer(x, lengths=lengths)
        if refill:
            lengths[:] = T
        dx, _ = layer.backward(grad)
        results.append((dx, layer.grads["weight_hh_l0"].copy()))
    for got, want in zip(results[1], results[0]):
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------
# dtype conversion
# --------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
def test_float16_input_is_converted(cell, impl):
    rng = np.random.default_rng(5)
    layer = make(cell, impl=impl)  # float32
    x16 = rng.standard_normal((T, B, I)).astype(np.float16)
    hx16 = states(cell, (1, B, H), rng, np.float16)
    g16 = rng.standard_normal((T, B, H)).astype(np.float16)
    a = run(layer, x16, hx16, grad_out=g16)
    layer.zero_grad()
    hx32 = tuple(s.astype(np.float32) for s in as_list(hx16))
    b = run(layer, x16.astype(np.float32), hx32 if cell == "lstm" else hx32[0],
            grad_out=g16.astype(np.float32))
    for k, v in a.items():
        assert v.dtype == np.float32, k
    assert_results_equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_other_float_dtypes_are_converted(cell):
    rng = np.random.default_rng(6)
    layer = make(cell, dtype="float64")
    x = rng.standard_normal((T, B, I))
    ref = layer(x)[0]
    for variant in [x.astype(np.float32).astype(np.longdouble), x.astype(">f8")]:
        out = layer(variant)[0]
        assert out.dtype == np.float64
        np.testing.assert_array_equal(out, layer(np.asarray(variant, dtype=np.float64))[0])
    np.testing.assert_array_equal(layer(x.astype(">f8"))[0], ref)


@pytest.mark.parametrize("cell", CELLS)
def test_non_float_inputs_rejected(cell):
    layer = make(cell)
    good_h = np.zeros((1, B, H))
    for dtype in (np.int64, np.int32, np.uint8, bool, np.complex64, object):
        bad = np.ones((T, B, I), dtype=dtype)
        with pytest.raises(TypeError, match=r"\bx\b"):
            layer(bad)
        bad_h = np.zeros((1, B, H), dtype=dtype)
        with pytest.raises(TypeError, match="hx"):
            layer(np.ones((T, B, I)), (bad_h, good_h) if cell == "lstm" else bad_h)
    with pytest.raises(TypeError, match=r"\bx\b"):
        layer(np.full((T, B, I), "a"))


# --------------------------------------------------------------------------
# memory layouts
# --------------------------------------------------------------------------

def _strided(a):
    """Same values, every other element of a twice wider array."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


def _every_other_step(a):
    """Same values, a[::2] of a twice longer array."""
    big = np.zeros((2 * a.shape[0],) + a.shape[1:], a.dtype)
    big[::2] = a
    return big[::2]


def _swapped(a):
    """Same values, a transposed view (first two axes) of a C-ordered array."""
    return np.ascontiguousarray(a.swapaxes(0, 1)).swapaxes(0, 1)


def _fortran(a):
    """Same values, Fortran order (every axis transposed in memory)."""
    return np.asfortranarray(a)


def _read_only(a):
    a = a.copy()
    a.setflags(write=False)
    return a


LAYOUTS = {"strided": _strided, "every_other_step": _every_other_step, "swapped": _swapped,
           "fortran": _fortran, "read_only": _read_only}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("argument", ["x", "hx", "grad_output", "grad_hn"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_non_contiguous_and_read_only_inputs(cell, batch_first, impl, argument, layout):
    """Each array argument of forward/backward in another memory layout gives
    the results of the C-contiguous array, and is not modified."""
    rng = np.random.default_rng(7)
    layer = make(cell, num_layers=2, bidirectional=True, batch_first=batch_first,
                 dtype="float32", impl=impl)
    x_shape = (B, T, I) if batch_first else (T, B, I)
    args = {"x": rng.standard_normal(x_shape).astype(np.float32),
            "hx": states(cell, (4, B, H), rng, np.float32),
            "grad_output": rng.standard_normal(x_shape[:2] + (2 * H,)).astype(np.float32),
            "grad_hn": states(cell, (4, B, H), rng, np.float32)}
    lengths = np.array([T, 1, 3])
    expected = run(layer, args["x"], args["hx"], lengths, args["grad_output"], args["grad_hn"])
    layer.zero_grad()

    convert = LAYOUTS[layout]
    value = args[argument]
    args[argument] = tuple(map(convert, value)) if isinstance(value, tuple) else convert(value)
    for a in as_list(args[argument]):
        assert not a.flags.c_contiguous or not a.flags.writeable
    copies = {k: [s.copy() for s in as_list(v)] for k, v in args.items()}
    result = run(layer, args["x"], args["hx"], lengths, args["grad_output"], args["grad_hn"])
    assert_results_equal(result, expected)
    for k, v in args.items():  # inputs are not modified
        for s, c in zip(as_list(v), copies[k]):
            np.testing.assert_array_equal(s, c, err_msg=k)


@pytest.mark.parametrize("cell", CELLS)
def test_x_transposed_view_for_batch_first(cell):
    """A (seq_len, batch, input) array viewed as (batch, seq_len, input)."""
    rng = np.random.default_rng(8)
    x_tbi = rng.standard_normal((T, B, I))
    tf = make(cell, dtype="float64", seed=3)
    bf = make(cell, dtype="float64", seed=3, batch_first=True)
    g_tbh = rng.standard_normal((T, B, H))
    a = run(tf, x_tbi, grad_out=g_tbh)
    b = run(bf, x_tbi.transpose(1, 0, 2), grad_out=g_tbh.transpose(1, 0, 2))
    np.testing.assert_allclose(b["out"], a["out"].transpose(1, 0, 2), rtol=1e-13)
    np.testing.assert_allclose(b["dx"], a["dx"].transpose(1, 0, 2), rtol=1e-13)
    np.testing.assert_allclose(b["hn0"], a["hn0"], rtol=1e-13)
    for k in a:
        if k.startswith("grad "):
            np.testing.assert_allclose(b[k], a[k], rtol=1e-12, atol=1e-14, err_msg=k)


# --------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------

@pytest.mark.parametrize("cell", CELLS)
def test_batch_first_shapes(cell):
    layer = make(cell, num_layers=3, bidirectional=True, batch_first=True)
    x = np.ones((B, T, I))
    res = run(layer, x, grad_out=np.ones((B, T, 2 * H)))
    assert res["out"].shape == (B, T, 2 * H)
    assert res["dx"].shape == (B, T, I)
    for k in ("hn0", "dh0") + (("hn1", "dh1") if cell == "lstm" else ()):
        assert res[k].shape == (6, B, H), k  # states are never batch-first (as in torch)
    hx = states(cell, (6, B, H), np.random.default_rng(0))
    assert layer(x, hx)[0].shape == (B, T, 2 * H)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_unbatched_shapes_and_values(cell, batch_first):
    rng = np.random.default_rng(9)
    layer = make(cell, num_layers=2, bidirectional=True, batch_first=batch_first,
                 dtype="float64")
    x = rng.standard_normal((T, I))
    hx = states(cell, (4, H), rng)
    g = rng.standard_normal((T, 2 * H))
    ghn = states(cell, (4, H), rng)
    res = run(layer, x, hx, grad_out=g, grad_hn=ghn)
    assert res["out"].shape == (T, 2 * H)
    assert res["dx"].shape == (T, I)
    for k in ("hn0", "dh0") + (("hn1", "dh1") if cell == "lstm" else ()):
        assert res[k].shape == (4, H), k
    # same as a batch of one (batch_first does not apply to 2-D input)
    layer.zero_grad()
    b1 = lambda a: a[:, None]  # noqa: E731
    if batch_first:
        xb, gb = x[None], g[None]
    else:
        xb, gb = x[:, None], g[:, None]
    conv = lambda s: tuple(b1(v) for v in s) if isinstance(s, tuple) else b1(s)  # noqa: E731
    batched = run(layer, xb, conv(hx), grad_out=gb, grad_hn=conv(ghn))
    np.testing.assert_allclose(res["out"], batched["out"].reshape(T, 2 * H), rtol=1e-13)
    np.testing.assert_allclose(res["dx"], batched["dx"].reshape(T, I), rtol=1e-13)
    for k in res:
        if k.startswith(("hn", "dh")):
            np.testing.assert_allclose(res[k], batched[k][:, 0], rtol=1e-13, err_msg=k)
        if k.startswith("grad "):
            np.testing.assert_allclose(res[k], batched[k], rtol=1e-12, atol=1e-14, err_msg=k)
    # backward of an unbatched forward wants an unbatched gradient
    layer(x)
    with pytest.raises(ValueError, match=shape_text((T, 2 * H))):
        layer.backward(g[:, None])


# --------------------------------------------------------------------------
# constructor validation
# --------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [fastrnn.RNN, fastrnn.LSTM, fastrnn.GRU])
def test_constructor_validation(cls):
    bad_values = [
        (dict(hidden_size=0), ValueError, "hidden_size"),
        (dict(hidden_size=-2), ValueError, "hidden_size"),
        (dict(hidden_size=2.5), ValueError, "hidden_size"),
        (dict(hidden_size=True), ValueError, "hidden_size"),
        (dict(input_size=0), ValueError, "input_size"),
        (dict(num_layers=0), ValueError, "num_layers"),
        (dict(dropout=1.5), ValueError, "dropout"),
        (dict(dropout=1.0), ValueError, "dropout"),
        (dict(dropout=-0.1), ValueError, "dropout"),
        (dict(dtype="int32"), TypeError, "dtype"),
        (dict(dtype="float16"), TypeError, "dtype"),
        (dict(dtype="complex128"), TypeError, "dtype"),
        (dict(impl="foo"), ValueError, "impl"),
    ]
    for override, error, word in bad_values:
        kwargs = dict(input_size=3, hidden_size=4)
        kwargs.update(override)
        with pytest.raises(error, match=word):
            cls(**kwargs)
    layer = cls(3, 4, dtype=np.float64, impl="reference")
    assert layer.dtype == np.float64 and layer.impl == "reference"
    with pytest.raises(ValueError, match="impl"):
        layer.impl = "foo"
    assert layer.impl == "reference"


def test_nonlinearity_validation():
    with pytest.raises(ValueError, match="nonlinearity"):
        fastrnn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="nonlinearity"):
        fastrnn.RNN(3, 4, nonlinearity=None)
    for cls in (fastrnn.LSTM, fastrnn.GRU):
        with pytest.raises(TypeError):
            cls(3, 4, nonlinearity="tanh")
    x = np.random.default_rng(0).standard_normal((T, B, 3))
    tanh = fastrnn.RNN(3, 4, nonlinearity="tanh", seed=0)
    relu = fastrnn.RNN(3, 4, nonlinearity="relu", seed=0)
    assert np.all(np.abs(tanh(x)[0]) < 1)
    assert np.all(relu(x)[0] >= 0) and not np.allclose(tanh(x)[0], relu(x)[0])


@pytest.mark.parametrize("cell", CELLS)
def test_switching_impl_gives_the_same_results(cell):
    rng = np.random.default_rng(10)
    layer = make(cell, num_layers=2, bidirectional=True, dtype="float64")
    x = rng.standard_normal((T, B, I))
    g = rng.standard_normal((T, B, 2 * H))
    a = run(layer, x, grad_out=g)
    layer.zero_grad()
    layer.impl = "reference"
    b = run(layer, x, grad_out=g)
    assert_results_equal(a, b, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------
# NaN isolation
# --------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_nan_in_one_sequence_stays_there(cell, n_threads, impl):
    """NaN/inf in one sequence: the other sequences' outputs, final states and
    input/state gradients are those of a batch without it."""
    rng = np.random.default_rng(11)
    batch = 9  # large enough for the kernels to split the batch across threads
    layer = make(cell, num_layers=2, bidirectional=True, dtype="float64", impl=impl,
                 n_threads=n_threads)
    x = rng.standard_normal((T, batch, I))
    hx = states(cell, (4, batch, H), rng)
    g = rng.standard_normal((T, batch, 2 * H))
    lengths = np.array([5, 2, 4, 1, 5, 3, 5, 2, 4])
    clean = run(layer, x, hx, lengths, g)
    poisoned_x = x.copy()
    poisoned_x[1, 4, 0] = np.nan
    poisoned_x[2, 6, 1] = np.inf
    with np.errstate(invalid="ignore", over="ignore"):
        dirty = run(layer, poisoned_x, hx, lengths, g)
    others = [0, 1, 2, 3, 5, 7, 8]
    assert np.isnan(dirty["out"][:, 4]).any(), "the NaN does reach its own sequence"
    for k in clean:
        if k.startswith("grad "):
            continue  # parameters are shared: their gradients see every sequence
        # out, dx: (seq_len, batch, .); h_n, c_n, dh0, dc0: (layers*dirs, batch, H)
        np.testing.assert_array_equal(dirty[k][:, others], clean[k][:, others], err_msg=k)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
def test_nan_in_padding_is_ignored(cell, impl):
    """Positions past a sequence's length are padding (pack_padded_sequence
    never reads them): NaN/inf there must not change any result, including
    the parameter gradients.

    Currently fails: weight_ih_l0 gradients become NaN (0 * NaN in
    dgates.T @ x, the padded steps' gate gradients are zero but x is not)."""
    rng = np.random.default_rng(12)
    layer = make(cell, num_layers=2, bidirectional=True, dtype="float64", impl=impl)
    x = rng.standard_normal((T, B, I))
    g = rng.standard_normal((T, B, 2 * H))
    lengths = np.array([5, 2, 3])
    clean = run(layer, x, None, lengths, g)
    padded = x.copy()
    padded[2:, 1] = np.nan
    padded[3:, 2] = np.inf
    layer.zero_grad()
    with np.errstate(invalid="ignore", over="ignore"):
        dirty = run(layer, padded, None, lengths, g)
    bad = [k for k in clean if not np.array_equal(dirty[k], clean[k])]
    assert not bad, f"NaN/inf in padding changed {bad}"


# --------------------------------------------------------------------------
# threads and configuration
# --------------------------------------------------------------------------

@pytest.fixture
def restore_num_threads():
    yield
    fastrnn.set_num_threads(None)


def test_set_and_get_num_threads(restore_num_threads):
    default = fastrnn.get_num_threads()
    assert isinstance(default, int) and default >= 1
    for bad in (0, 1.5, "2", True):
        with pytest.raises(ValueError, match="n_threads"):
            fastrnn.set_num_threads(bad)
        assert fastrnn.get_num_threads() == default, "a failed set changes nothing"
    fastrnn.set_num_threads(1)
    assert fastrnn.get_num_threads() == 1
    fastrnn.set_num_threads(3)
    assert fastrnn.get_num_threads() == 3
    fastrnn.set_num_threads(-1)
    assert fastrnn.get_num_threads() == default  # -1: all available
    fastrnn.set_num_threads(-1000)
    assert fastrnn.get_num_threads() == 1
    fastrnn.set_num_threads(None)
    assert fastrnn.get_num_threads() == default


def test_global_thread_count_is_used_by_layers(restore_num_threads):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((T, 8, I))
    g = rng.standard_normal((T, 8, H))
    results = []
    for n in (1, 2):
        fastrnn.set_num_threads(n)
        layer = fastrnn.GRU(I, H, dtype="float64", seed=0)  # n_threads=None
        results.append(run(layer, x, grad_out=g))
    assert_results_equal(results[0], results[1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cell", CELLS)
def test_invalid_layer_n_threads_rejected(cell):
    for bad in (0, 1.5, "2"):
        with pytest.raises(ValueError, match="n_threads"):
            layer = make(cell, n_threads=bad)
            layer(np.ones((T, B, I)))


def test_show_config(capsys):
    fastrnn.show_config()
    text = capsys.readouterr().out
    assert "OpenMP" in text
    assert re.search(r"threads: \d+", text)
    assert "float32" in text and "float64" in text

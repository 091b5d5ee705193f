"""TimeDelay (TDNN): compiled kernel vs the NumPy reference, finite differences,
torch.nn.Conv1d parity, stacking, lengths, thread determinism and bad input."""
import numpy as np
import pytest

import fastrnn
from fastrnn import _timedelay, nn
from fastrnn.timedelay import TimeDelay, reference_backward, reference_forward

from _gradcheck_util import check_model

TOL = {"float32": dict(rtol=1e-4, atol=1e-5), "float64": dict(rtol=1e-9, atol=1e-12)}


def linear_loss(coef):
    return lambda out: (float(np.sum(coef * out)), coef)


def _case(rng, T, B, I, dtype, with_lengths):
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = rng.integers(1, T + 1, size=B) if with_lengths else None
    if with_lengths:
        lengths[0] = T          # one full-length sequence
    return x, lengths


# -- kernel vs reference ------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ["tanh", "relu", "identity"])
@pytest.mark.parametrize("T, B, I, O, K, d", [
    (1, 1, 1, 1, 0, 1),        # minimal: one step, kernel size 1
    (6, 3, 4, 5, 2, 1),        # plain causal convolution
    (7, 2, 3, 4, 2, 3),        # dilation; K * d = 6 < T
    (4, 2, 3, 2, 3, 2),        # receptive field (7) longer than the sequence
    (70, 5, 6, 40, 3, 2),      # N = 350 rows > one row tile; O > one channel tile
])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_kernel_matches_reference(dtype, activation, T, B, I, O, K, d, with_lengths):
    rng = np.random.default_rng(T * 100 + O)
    x, lengths = _case(rng, T, B, I, dtype, with_lengths)
    layer = TimeDelay(I, O, K, dilation=d, activation=activation, dtype=dtype, seed=1)
    out = layer(x, lengths=lengths)
    ref = reference_forward(x, layer.weight, layer.bias, d, activation, lengths)
    np.testing.assert_allclose(out, ref, **TOL[dtype], err_msg="out")
    g = rng.standard_normal(out.shape).astype(dtype)
    gx = layer.backward(g)
    rgx, rgw, rgb = reference_backward(x, layer.weight, d, activation, lengths, ref, g)
    np.testing.assert_allclose(gx, rgx, **TOL[dtype], err_msg="grad_x")
    np.testing.assert_allclose(layer.grads["weight"], rgw, **TOL[dtype], err_msg="grad_weight")
    np.testing.assert_allclose(layer.grads["bias"], rgb, **TOL[dtype], err_msg="grad_bias")
    assert out.dtype == gx.dtype == np.dtype(dtype)


def test_reference_impl_and_no_bias():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 2, 3))
    a = TimeDelay(3, 4, 2, dilation=2, bias=False, dtype="float64", seed=0)
    b = TimeDelay(3, 4, 2, dilation=2, bias=False, dtype="float64", seed=0, impl="reference")
    assert [n for n, _ in a.named_parameters()] == ["weight"]
    np.testing.assert_allclose(a(x), b(x), rtol=1e-12)
    g = rng.standard_normal((9, 2, 4))
    np.testing.assert_allclose(a.backward(g), b.backward(g), rtol=1e-12)
    np.testing.assert_allclose(a.grads["weight"], b.grads["weight"], rtol=1e-12)


def test_threads_give_identical_results():
    """Fixed-size tiles: 1 and 2 threads make the same BLAS calls (bitwise equal)."""
    rng = np.random.default_rng(0)
    x, lengths = _case(rng, 90, 8, 16, "float32", True)    # 720 rows: three row tiles
    g = rng.standard_normal((90, 8, 70)).astype(np.float32)
    results = []
    for n_threads in (1, 2):
        layer = TimeDelay(16, 70, 3, dilation=2, seed=0, n_threads=n_threads)
        out = layer(x, lengths=lengths)
        gx = layer.backward(g)
        results.append((out, gx, layer.grads["weight"].copy(), layer.grads["bias"].copy()))
    for name, a, b in zip(["out", "grad_x", "grad_weight", "grad_bias"], *results):
        assert np.array_equal(a, b), name


# -- finite differences (float64) ------------------------------------------------------

@pytest.mark.parametrize("impl", ["cython", "reference"])
@pytest.mark.parametrize("activation, K, d", [("tanh", 2, 1), ("tanh", 2, 3), ("identity", 1, 2)])
def test_gradcheck(impl, activation, K, d):
    rng = np.random.default_rng(K * 10 + d)
    x = rng.standard_normal((8, 3, 3))
    lengths = np.array([8, 5, 2])
    layer = TimeDelay(3, 4, K, dilation=d, activation=activation, dtype="float64", seed=2,
                      impl=impl)
    coef = rng.standard_normal((8, 3, 4))
    check_model(layer, linear_loss(coef), None, lambda: layer(x, lengths=lengths),
                layer.backward, rng, check_inputs={"x": (x, lambda dx: dx)})


def test_gradcheck_relu_away_from_kink():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 2, 3))
    layer = TimeDelay(3, 5, 2, dilation=2, activation="relu", dtype="float64", seed=3)
    out = layer(x)
    assert np.min(np.abs(reference_forward(x, layer.weight, layer.bias, 2, "identity"))) > 1e-4
    assert (out > 0).any() and (out == 0).any()
    coef = rng.standard_normal(out.shape)
    check_model(layer, linear_loss(coef), None, lambda: layer(x), layer.backward, rng,
                check_inputs={"x": (x, lambda dx: dx)})


@pytest.mark.parametrize("batch_first", [False, True])
def test_gradcheck_stacked_in_sequential(batch_first):
    """TDNN -> dilated TDNN -> Linear, with lengths passed on by Sequential."""
    rng = np.random.default_rng(7)
    T, B = 9, 3
    model = nn.Sequential(
        TimeDelay(2, 4, 2, dilation=1, batch_first=batch_first, dtype="float64", seed=0),
        TimeDelay(4, 3, 2, dilation=2, batch_first=batch_first, dtype="float64", seed=1),
        nn.Linear(3, 2, dtype="float64", seed=2))
    shape = (B, T, 2) if batch_first else (T, B, 2)
    x = rng.standard_normal(shape)
    lengths = np.array([9, 4, 6])
    coef = rng.standard_normal(shape[:2] + (2,))
    # The Linear maps the zeroed padding to its bias: leave those steps out of the loss.
    valid = nn.sequence_mask(lengths, T, batch_first=batch_first)[..., None]
    coef = coef * valid
    check_model(model, linear_loss(coef), None, lambda: model(x, lengths=lengths),
                model.backward, rng, check_inputs={"x": (x, lambda dx: dx)})


# -- torch parity ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ["tanh", "relu", "identity"])
def test_matches_torch_causal_conv1d(dtype, activation):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    T, B, I, O, K, d = 12, 3, 4, 5, 3, 2
    layer = TimeDelay(I, O, K, dilation=d, activation=activation, dtype=dtype, seed=0)
    conv = torch.nn.Conv1d(I, O, kernel_size=K + 1, dilation=d, padding=K * d,
                           dtype=getattr(torch, dtype))
    # Same names, shapes and tap order: the state dict goes across without flipping.
    conv.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    act = {"tanh": torch.tanh, "relu": torch.relu, "identity": lambda v: v}[activation]
    x = rng.standard_normal((T, B, I)).astype(dtype)
    g = rng.standard_normal((T, B, O)).astype(dtype)
    tx = torch.tensor(x.transpose(1, 2, 0), requires_grad=True)        # (B, I, T)
    ty = act(conv(tx)[..., :T])                                        # causal: first T steps
    ty.backward(torch.from_numpy(g.transpose(1, 2, 0).copy()))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    out = layer(x)
    np.testing.assert_allclose(out, ty.detach().numpy().transpose(2, 0, 1), **tol)
    np.testing.assert_allclose(layer.backward(g), tx.grad.numpy().transpose(2, 0, 1), **tol)
    np.testing.assert_allclose(layer.grads["weight"], conv.weight.grad.numpy(), **tol)
    np.testing.assert_allclose(layer.grads["bias"], conv.bias.grad.numpy(), **tol)
    # lag order: W_j multiplies x_{t - j d}
    np.testing.assert_array_equal(layer.lag_weights()[0], layer.weight[:, :, K])


# -- semantics -----------------------------------------------------------------------

def test_causal_receptive_field():
    rng = np.random.default_rng(1)
    layer = TimeDelay(2, 3, 2, dilation=3, dtype="float64", seed=0).eval()
    assert layer.receptive_field == 7
    x = rng.standard_normal((15, 1, 2))
    base = layer(x)
    x2 = x.copy()
    x2[5] += 1.0
    changed = np.abs(layer(x2) - base).max(axis=(1, 2)) > 0
    # x_5 reaches exactly the outputs at 5, 5 + 3 and 5 + 6
    assert np.flatnonzero(changed).tolist() == [5, 8, 11]


def test_lengths_and_padding():
    rng = np.random.default_rng(2)
    layer = TimeDelay(3, 4, 2, dilation=2, dtype="float64", seed=0)
    x = rng.standard_normal((8, 2, 3))
    x[5:, 1] = np.nan                      # padding of the second sequence
    lengths = np.array([8, 5])
    out = layer(x, lengths=lengths)
    assert np.all(out[5:, 1] == 0) and np.isfinite(out).all()
    np.testing.assert_allclose(out[:5, 1], layer.eval()(x[:5, 1]), rtol=1e-12)
    layer.train()
    out = layer(x, lengths=lengths)
    gx = layer.backward(np.ones_like(out))
    assert np.isfinite(layer.grads["weight"]).all() and np.isfinite(gx).all()
    assert np.all(gx[5:, 1] == 0)


@pytest.mark.parametrize("unbatched", [False, True])
def test_editing_the_output_in_place_does_not_change_gradients(unbatched):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 2, 3))
    x = x[:, 0] if unbatched else x
    g = rng.standard_normal((6, 4) if unbatched else (6, 2, 4))
    grads = []
    for edit in (False, True):
        layer = TimeDelay(3, 4, 2, dtype="float64", seed=0)
        out = layer(x)
        if edit:
            out[...] = 5.0
        grads.append((layer.backward(g), layer.grads["weight"].copy()))
    np.testing.assert_array_equal(grads[0][0], grads[1][0])
    np.testing.assert_array_equal(grads[0][1], grads[1][1])


def test_kernel_scratch_buffer():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 2, 3))
    taps = rng.standard_normal((2, 4, 3))
    out = np.empty((5, 2, 4))
    _timedelay.forward(x, taps, None, 1, 1, None, out, 1)
    g = rng.standard_normal(out.shape)
    results = []
    for scratch in (None, np.full(100, np.nan)):
        gx, gw = np.empty_like(x), np.zeros_like(taps)
        _timedelay.backward(x, taps, 1, 1, None, out, g, gx, gw, None, 1, scratch=scratch)
        results.append((gx, gw))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    with pytest.raises(ValueError, match="scratch"):
        _timedelay.backward(x, taps, 1, 1, None, out, g, np.empty_like(x), np.zeros_like(taps),
                            None, 1, scratch=np.empty(39))


def test_layouts_agree():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 2, 3)).astype(np.float32)
    tm = TimeDelay(3, 4, 1, seed=0)
    bf = TimeDelay(3, 4, 1, seed=0, batch_first=True)
    out = tm(x)
    np.testing.assert_allclose(bf(x.transpose(1, 0, 2)), out.transpose(1, 0, 2), rtol=1e-6)
    np.testing.assert_allclose(tm(x[:, 1]), out[:, 1], rtol=1e-6)          # unbatched
    g = rng.standard_normal((6, 4)).astype(np.float32)
    assert tm.backward(g).shape == (6, 3)


def test_module_contract():
    layer = TimeDelay(3, 4, 2, dilation=2, seed=0)
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    assert layer.weight.shape == (4, 3, 3) and layer.bias.shape == (4,)
    bound = 1 / np.sqrt(3 * 3)
    assert np.abs(layer.weight).max() <= bound
    np.testing.assert_array_equal(layer.weight, TimeDelay(3, 4, 2, seed=0).weight)
    other = TimeDelay(3, 4, 2, seed=1)
    other.load_state_dict(layer.state_dict())
    np.testing.assert_array_equal(other.weight, layer.weight)
    layer.eval()
    layer(np.zeros((4, 1, 3), np.float32))
    with pytest.raises(RuntimeError, match="training mode"):
        layer.backward(np.zeros((4, 1, 4), np.float32))
    assert "TimeDelay(3, 4, delays=2, dilation=2" in repr(layer)
    assert fastrnn.TimeDelay is TimeDelay


def test_bad_inputs():
    layer = TimeDelay(3, 4, 2)
    with pytest.raises(ValueError, match="input_size=3"):
        layer(np.zeros((5, 2, 4)))
    with pytest.raises(ValueError, match="3-D"):
        layer(np.zeros(5))
    with pytest.raises(TypeError, match="floating"):
        layer(np.zeros((5, 2, 3), np.int64))
    with pytest.raises(ValueError, match="lengths must be in"):
        layer(np.zeros((5, 2, 3)), lengths=[6, 1])
    with pytest.raises(ValueError, match="seq_len >= 1"):
        layer(np.zeros((0, 2, 3)))
    with pytest.raises(ValueError, match="activation"):
        TimeDelay(3, 4, 2, activation="sigmoid")
    with pytest.raises(ValueError, match="delays"):
        TimeDelay(3, 4, -1)
    with pytest.raises(ValueError, match="dilation"):
        TimeDelay(3, 4, 1, dilation=0)
    out = layer(np.zeros((5, 2, 3)))
    with pytest.raises(ValueError, match="shape of the output"):
        layer.backward(np.zeros((5, 2, 3)))
    assert out.shape == (5, 2, 4)


def test_kernel_validates_its_arguments():
    x = np.zeros((4, 2, 3))
    taps = np.zeros((2, 5, 3))
    out = np.empty((4, 2, 5))
    with pytest.raises(TypeError, match="dtype"):
        _timedelay.forward(x, taps.astype(np.float32), None, 1, 1, None, out, 1)
    with pytest.raises(ValueError, match="shape"):
        _timedelay.forward(x, np.zeros((2, 5, 4)), None, 1, 1, None, out, 1)
    with pytest.raises(ValueError, match="out"):
        _timedelay.forward(x, taps, None, 1, 1, None, np.empty((4, 2, 4)), 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        _timedelay.forward(np.zeros((3, 2, 4)).transpose(2, 1, 0), taps, None, 1, 1, None,
                           out, 1)
    with pytest.raises(ValueError, match="lengths"):
        _timedelay.forward(x, taps, None, 1, 1, np.array([5, 1]), out, 1)
    with pytest.raises(ValueError, match="activation"):
        _timedelay.forward(x, taps, None, 1, 7, None, out, 1)

"""layer.step(): one time step for streaming inference, the same numbers as forward."""
import numpy as np
import pytest

import fastrnn

CLASSES = {"rnn": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}


def _layer(name, num_layers=2, **kwargs):
    return CLASSES[name](5, 70, num_layers=num_layers, seed=0, **kwargs)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("batch", [None, 1, 3, 9])
@pytest.mark.parametrize("name", CLASSES)
def test_steps_equal_forward(name, batch, n_threads):
    layer = _layer(name, n_threads=n_threads).eval()
    T = 6
    shape = (T, 5) if batch is None else (T, batch, 5)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    out, final = layer(x)
    state = None
    for t in range(T):
        step_out, state = layer.step(x[t], state)
        np.testing.assert_allclose(step_out, out[t], rtol=1e-5, atol=1e-6,
                                   err_msg=f"output at step {t}")
    for got, want in zip(state if name == "lstm" else [state],
                         final if name == "lstm" else [final]):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("setup", ["eval", "train", "float64", "reference"])
def test_step_fallbacks_match_forward(setup, batch_first):
    # A step is a length-1 sequence in the layer's layout; batch-first, the
    # fallbacks once ran x (batch, input_size) as a sequence of batch 1.
    kwargs = {"float64": {"dtype": "float64"}, "reference": {"impl": "reference"}}.get(setup, {})
    layer = _layer("lstm", batch_first=batch_first, **kwargs)
    if setup != "train":
        layer.eval()
    x = np.random.default_rng(2).standard_normal((2, 5))
    hx = (np.zeros((2, 2, 70)), np.ones((2, 2, 70)))
    out, (h, c) = layer.step(x, hx)
    assert out.shape == (2, 70) and h.shape == c.shape == (2, 2, 70)
    want, (wh, wc) = layer(x[:, None] if batch_first else x[None], hx)
    want = want[:, :1].transpose(1, 0, 2) if batch_first else want
    np.testing.assert_allclose(out, want[0], rtol=1e-6)
    np.testing.assert_allclose(h, wh, rtol=1e-6)
    np.testing.assert_allclose(c, wc, rtol=1e-6)


def test_step_rejects_bad_input():
    with pytest.raises(ValueError, match="unidirectional"):
        _layer("gru", bidirectional=True).eval().step(np.zeros(5, np.float32))
    layer = _layer("lstm").eval()
    with pytest.raises(ValueError, match=r"\(batch, 5\)"):
        layer.step(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="hx"):
        layer.step(np.zeros((2, 5), np.float32), (np.zeros((2, 3, 70)), np.zeros((2, 3, 70))))
    with pytest.raises(TypeError):
        layer.step(np.zeros((2, 5), np.int64))


def test_step_sees_new_weights():
    """Regression guard: the prepared steppers must not keep stale weights."""
    layer = _layer("gru").eval()
    x = np.ones((1, 5), np.float32)
    before, _ = layer.step(x)
    layer.load_state_dict(_layer("gru", ).state_dict() | {
        "weight_ih_l0": np.zeros((210, 5), np.float32)})
    after, _ = layer.step(x)
    want, _ = layer(x[None])
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, want[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("batch", [None, 1, 4])
def test_step_state_layouts_give_the_same_step(name, batch):
    """A state as a previous step returns it (checked and run at C level), as a
    list, in float64, or non-contiguous (converted first): the same step."""
    layer = _layer(name).eval()
    rng = np.random.default_rng(3)
    x_shape = (5,) if batch is None else (batch, 5)
    state_shape = (2, 70) if batch is None else (2, batch, 70)
    x = rng.standard_normal(x_shape).astype(np.float32)
    parts = [rng.standard_normal(state_shape).astype(np.float32)
             for _ in range(2 if name == "lstm" else 1)]
    as_state = tuple if name == "lstm" else (lambda p: p[0])
    want_out, want_state = layer.step(x, as_state(parts))
    variants = {
        "list": list(parts) if name == "lstm" else None,
        "float64": as_state([p.astype(np.float64) for p in parts]),
        "strided": as_state([np.asfortranarray(p) for p in parts]),
        "x float64": None,
    }
    for label, state in variants.items():
        if state is None and label == "list":
            continue
        x_in = x.astype(np.float64) if label == "x float64" else x
        out, new_state = layer.step(x_in, as_state(parts) if state is None else state)
        np.testing.assert_array_equal(out, want_out, err_msg=label)
        for got, want in zip(new_state if name == "lstm" else [new_state],
                             want_state if name == "lstm" else [want_state]):
            np.testing.assert_array_equal(got, want, err_msg=label)


@pytest.mark.parametrize("name", CLASSES)
def test_warm_step_path_batch_threads_and_fresh_results(name):
    """Once Steppers exist (the C-level path), a new batch size or thread count
    gets Steppers of its own, a bad x still gets the clear error, and every
    result is a fresh array: editing one changes neither the next step nor the
    state it returned."""
    layer = _layer(name).eval()
    rng = np.random.default_rng(4)
    xs = {b: rng.standard_normal((3, b, 5)).astype(np.float32) for b in (2, 3)}
    want = {b: layer(xs[b])[0] for b in (2, 3)}
    states = {}
    for t in range(3):
        for b, n_threads in ((2, 1), (3, 1), (2, 2)):
            layer.n_threads = n_threads
            key = (b, n_threads)
            out, state = layer.step(xs[b][t], states.get(key))
            states[key] = state
            np.testing.assert_allclose(out, want[b][t], rtol=1e-5, atol=1e-6,
                                       err_msg=f"batch {b}, {n_threads} threads, step {t}")
            h = state[0] if name == "lstm" else state
            np.testing.assert_array_equal(out, h[-1])
            assert not np.shares_memory(out, h)
            out[...] = np.nan  # the caller's array: must not leak into the state
            assert not np.isnan(h).any()
    with pytest.raises(ValueError, match=r"\(batch, 5\)"):
        layer.step(np.zeros((2, 4), np.float32), states[(2, 1)])

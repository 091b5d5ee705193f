"""NARX: lagged features, finite differences (open loop), closed-loop forecast
consistency, torch parity of the feed-forward net, contract and bad input."""
import numpy as np
import pytest

import fastrnn
from fastrnn.narx import NARX, lagged_features

from _gradcheck_util import check_model


def linear_loss(coef):
    return lambda out: (float(np.sum(coef * out)), coef)


def test_lagged_features_layout():
    T, B = 5, 2
    x = np.arange(T * B * 2, dtype=float).reshape(T, B, 2) + 1
    y = -np.arange(T * B, dtype=float).reshape(T, B, 1) - 1
    f = lagged_features(x, y, 1, 2)
    assert f.shape == (T, B, 2 * 2 + 2 * 1)
    t, b = 3, 1
    np.testing.assert_array_equal(f[t, b], np.concatenate([x[t, b], x[t - 1, b], y[t - 1, b],
                                                           y[t - 2, b]]))
    np.testing.assert_array_equal(f[0, :, 2:], 0)        # before the start: zeros
    np.testing.assert_array_equal(f[1, :, 5], 0)          # y_{-1}


@pytest.mark.parametrize("input_size, Kx, Ky, hidden", [
    (2, 2, 3, 5),           # NARX
    (0, 0, 4, (4, 3)),      # pure autoregression, two hidden layers
    (3, 1, 0, 6),           # no feedback: a feed-forward net on a window of x
])
def test_gradcheck_open_loop(input_size, Kx, Ky, hidden):
    rng = np.random.default_rng(input_size * 10 + Ky)
    T, B, O = 7, 3, 2
    model = NARX(input_size, O, input_delays=Kx, output_delays=Ky, hidden_size=hidden,
                 dtype="float64", seed=0)
    x = rng.standard_normal((T, B, input_size)) if input_size else None
    y = rng.standard_normal((T, B, O))
    lengths = np.array([7, 4, 1])
    coef = rng.standard_normal((T, B, O))
    check_inputs = {"y": (y, lambda back: back[1])} if Ky else {}
    if input_size:
        check_inputs["x"] = (x, lambda back: back[0])
    _, back = check_model(model, linear_loss(coef), None,
                          lambda: model(x, y, lengths=lengths), model.backward, rng,
                          check_inputs=check_inputs)
    assert (back[0] is None) == (input_size == 0)
    assert (back[1] is None) == (Ky == 0)


def test_open_loop_uses_only_the_past():
    rng = np.random.default_rng(1)
    model = NARX(1, 1, input_delays=1, output_delays=2, dtype="float64", seed=0).eval()
    x, y = rng.standard_normal((10, 1, 1)), rng.standard_normal((10, 1, 1))
    base = model(x, y)
    y2 = y.copy()
    y2[4] += 1
    changed = np.flatnonzero(np.abs(model(x, y2) - base).ravel() > 0).tolist()
    assert changed == [5, 6]                  # y_4 feeds the predictions of y_5 and y_6
    x2 = x.copy()
    x2[4] += 1
    changed = np.flatnonzero(np.abs(model(x2, y) - base).ravel() > 0).tolist()
    assert changed == [4, 5]                  # x_4 and x_{4-1}


@pytest.mark.parametrize("input_size", [0, 2])
def test_forecast_is_the_open_loop_model_fed_its_own_predictions(input_size):
    rng = np.random.default_rng(2)
    T_h, H, B = 6, 5, 3
    model = NARX(input_size, 2, input_delays=2, output_delays=3, hidden_size=8,
                 dtype="float64", seed=0)
    x = rng.standard_normal((T_h + H, B, input_size)) if input_size else None
    y_hist = rng.standard_normal((T_h, B, 2))
    # A pending training-mode forward must survive the forecast.
    pred = model(None if x is None else x[:T_h], y_hist)
    fc = model.forecast(y_hist, H if x is None else None, x=x)
    assert fc.shape == (H, B, 2)
    ys = np.concatenate([y_hist, np.zeros((H, B, 2))])
    for t in range(T_h, T_h + H):
        step = model.eval()(None if x is None else x[:t + 1], ys[:t + 1])
        ys[t] = step[t]
    np.testing.assert_allclose(fc, ys[T_h:], rtol=1e-12, atol=1e-14)
    model.train()
    # The cache of the training forward is still there (eval() dropped it: redo).
    pred = model(None if x is None else x[:T_h], y_hist)
    model.forecast(y_hist, H if x is None else None, x=x)
    model.backward(np.ones_like(pred))
    # Unbatched and batch_first layouts
    np.testing.assert_allclose(model.forecast(y_hist[:, 0], H if x is None else None,
                                              x=None if x is None else x[:, 0]),
                               fc[:, 0], rtol=1e-12)


def test_net_matches_torch_sequential():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    model = NARX(2, 1, input_delays=1, output_delays=2, hidden_size=6, dtype="float64",
                 seed=0)
    ref = torch.nn.Sequential(torch.nn.Linear(model.num_features, 6), torch.nn.Tanh(),
                              torch.nn.Linear(6, 1)).double()
    state = {k[len("net."):]: torch.from_numpy(v) for k, v in model.state_dict().items()}
    ref.load_state_dict(state)
    x, y = rng.standard_normal((8, 2, 2)), rng.standard_normal((8, 2, 1))
    feats = lagged_features(x, y, 1, 2)
    np.testing.assert_allclose(model(x, y), ref(torch.from_numpy(feats)).detach().numpy(),
                               rtol=1e-12)


def test_contract_and_layouts():
    model = NARX(2, 3, input_delays=1, output_delays=2, hidden_size=4, seed=0)
    assert model.num_features == 2 * 2 + 2 * 3
    assert [n for n, _ in model.named_parameters()] == ["net.0.weight", "net.0.bias",
                                                        "net.2.weight", "net.2.bias"]
    assert set(model.grads) == set(model.state_dict())
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 2, 2)).astype(np.float32)
    y = rng.standard_normal((5, 2, 3)).astype(np.float32)
    out = model(x, y)
    bf = NARX(2, 3, input_delays=1, output_delays=2, hidden_size=4, seed=0, batch_first=True)
    np.testing.assert_allclose(bf(x.transpose(1, 0, 2), y.transpose(1, 0, 2)),
                               out.transpose(1, 0, 2), rtol=1e-6)
    np.testing.assert_allclose(model(x[:, 0], y[:, 0]), out[:, 0], rtol=1e-6)
    gx, gy = model.backward(np.ones((5, 3), np.float32))
    assert gx.shape == (5, 2) and gy.shape == (5, 3)
    model.eval()
    model(x, y)
    with pytest.raises(RuntimeError, match="training mode"):
        model.backward(np.ones_like(out))
    assert fastrnn.NARX is NARX


def test_bad_inputs():
    model = NARX(2, 1, seed=0)
    y = np.zeros((5, 2, 1))
    with pytest.raises(ValueError, match="x .*required"):
        model(None, y)
    with pytest.raises(ValueError, match="same seq_len and batch"):
        model(np.zeros((4, 2, 2)), y)
    with pytest.raises(ValueError, match="2 features"):
        model(np.zeros((5, 2, 3)), y)
    with pytest.raises(TypeError, match="floating"):
        model(np.zeros((5, 2, 2), int), y)
    with pytest.raises(ValueError, match="cover the history and the horizon"):
        model.forecast(y, horizon=3, x=np.zeros((6, 2, 2)))
    with pytest.raises(ValueError, match="no exogenous input"):
        NARX(0, 1, seed=0)(np.zeros((5, 2, 1)), y)
    with pytest.raises(ValueError, match="horizon is required"):
        NARX(0, 1, seed=0).forecast(y)
    with pytest.raises(ValueError, match="regressors"):
        NARX(0, 1, output_delays=0)
    with pytest.raises(ValueError, match="activation"):
        NARX(1, 1, activation="sigmoid")

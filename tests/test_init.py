"""fastrnn.init: formulas (gains, fans, bounds) against torch.nn.init, orthogonality
per gate block, the LSTM forget bias helper, seeding and read-only errors."""
import math

import numpy as np
import pytest

import fastrnn
from fastrnn import init, nn


def test_calculate_gain_and_fans_match_torch():
    torch = pytest.importorskip("torch")
    for nl, param in [("linear", None), ("sigmoid", None), ("tanh", None), ("relu", None),
                      ("leaky_relu", None), ("leaky_relu", 0.2), ("selu", None)]:
        assert init.calculate_gain(nl, param) == pytest.approx(
            torch.nn.init.calculate_gain(nl, param), rel=1e-15)
    for shape in [(3, 4), (5, 2, 3), (2, 3, 4, 5)]:
        assert init._fans(np.zeros(shape)) == \
            torch.nn.init._calculate_fan_in_and_fan_out(torch.zeros(shape))
    with pytest.raises(ValueError):
        init.xavier_uniform_(np.zeros(3))


def test_uniform_bounds_and_normal_stds():
    a = np.zeros((400, 300))
    bound = math.sqrt(6 / 700)
    init.xavier_uniform_(a, rng=0)
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.99 * bound
    init.xavier_uniform_(a, gain=2.0, rng=0)
    assert np.abs(a).max() <= 2 * bound and np.abs(a).max() > 1.98 * bound
    init.kaiming_uniform_(a, rng=0)                 # relu gain, fan_in = 300
    kb = math.sqrt(2) * math.sqrt(3 / 300)
    assert np.abs(a).max() <= kb and np.abs(a).max() > 0.99 * kb
    init.kaiming_uniform_(a, mode="fan_out", nonlinearity="relu", rng=0)
    assert np.abs(a).max() <= math.sqrt(6 / 400)
    init.xavier_normal_(a, rng=1)
    assert a.std() == pytest.approx(math.sqrt(2 / 700), rel=0.02)
    init.kaiming_normal_(a, rng=1)
    assert a.std() == pytest.approx(math.sqrt(2 / 300), rel=0.02)
    init.normal_(a, 3.0, 0.5, rng=2)
    assert a.mean() == pytest.approx(3.0, abs=0.01) and a.std() == pytest.approx(0.5, rel=0.02)
    init.constant_(a, 0.25)
    assert np.all(a == 0.25)
    assert init.zeros_(a) is a and not a.any()
    assert np.all(init.ones_(a) == 1)
    with pytest.raises(ValueError, match="mode"):
        init.kaiming_normal_(a, mode="fan")


def test_seeded_and_dtype_preserving():
    a, b = np.zeros((5, 4), np.float32), np.zeros((5, 4), np.float32)
    init.xavier_uniform_(a, rng=3)
    init.xavier_uniform_(b, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32
    with pytest.raises(TypeError):
        init.uniform_(np.zeros(3, dtype=int))


@pytest.mark.parametrize("shape", [(6, 6), (4, 9), (9, 4), (3, 2, 2)])
def test_orthogonal(shape):
    a = np.zeros(shape)
    init.orthogonal_(a, gain=2.0, rng=0)
    m = a.reshape(shape[0], -1) / 2.0
    rows, cols = m.shape
    if rows <= cols:
        np.testing.assert_allclose(m @ m.T, np.eye(rows), atol=1e-12)
    else:
        np.testing.assert_allclose(m.T @ m, np.eye(cols), atol=1e-12)


def test_orthogonal_per_gate_block():
    H = 5
    w = np.zeros((4 * H, H))
    init.orthogonal_(w, rng=1, blocks=4)
    for g in range(4):
        block = w[g * H:(g + 1) * H]
        np.testing.assert_allclose(block @ block.T, np.eye(H), atol=1e-12)
    assert not np.allclose(w[:H], w[H:2 * H])
    with pytest.raises(ValueError, match="blocks"):
        init.orthogonal_(w, blocks=3)


def test_lstm_forget_bias_on_layer_and_model():
    lstm = fastrnn.LSTM(3, 4, num_layers=2, bidirectional=True, dtype="float64", seed=0)
    assert init.lstm_forget_bias_(lstm, 1.0) == 1
    for name, p in lstm.named_parameters():
        if name.startswith("bias_ih"):
            assert np.all(p[4:8] == 1.0)
        if name.startswith("bias_hh"):
            assert np.all(p[4:8] == 0.0)
    model = nn.SequenceClassifier.build(2, 4, input_size=3, cell="lstm", seed=0)
    assert init.lstm_forget_bias_(model, 2.0) == 1
    b = model.rnn.bias_ih_l0 + model.rnn.bias_hh_l0
    np.testing.assert_allclose(b[4:8], 2.0)
    gru_model = nn.SequenceClassifier.build(2, 4, input_size=3, cell="gru", seed=0)
    assert init.lstm_forget_bias_(gru_model) == 0


def test_init_recurrent_and_read_only_error():
    for cls, G in ((fastrnn.LSTM, 4), (fastrnn.GRU, 3), (fastrnn.RNN, 1)):
        layer = cls(3, 5, num_layers=2, seed=0)
        init.init_recurrent_(layer, rng=0)
        for name, p in layer.named_parameters():
            if name.startswith("weight_hh"):
                for g in range(G):
                    block = p[g * 5:(g + 1) * 5].astype(np.float64)
                    np.testing.assert_allclose(block @ block.T, np.eye(5), atol=1e-6)
            elif name.startswith("bias_ih") and cls is fastrnn.LSTM:
                np.testing.assert_array_equal(p[5:10], 1.0)
                assert not p[:5].any()
            elif name.startswith("bias"):
                assert not p.any()
    model = nn.SequenceClassifier.build(2, 4, vocab_size=5, seed=0)   # float32: packed eval
    model.eval()
    model(np.zeros((2, 1), dtype=int))
    with pytest.raises(RuntimeError, match=r"train\(\)"):
        init.init_recurrent_(model.rnn)
    with pytest.raises(RuntimeError, match=r"train\(\)"):
        init.orthogonal_(model.rnn.weight_hh_l0)
    model.train()
    init.init_recurrent_(model.rnn, rng=1)

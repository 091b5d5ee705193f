"""Gradients of fastrnn.nn (layers, Sequential, models) against central finite
differences in float64: every parameter (sampled entries of the larger ones),
float inputs and initial states; models end to end through the real recurrent
layers with impl="reference" and impl="cython", with lengths."""
import numpy as np
import pytest

import fastrnn
from fastrnn import nn
from fastrnn.losses import CrossEntropyLoss, MSELoss

from _gradcheck_util import assert_close_grad, check_model

F64 = "float64"
IMPLS = ["reference", "cython"]


def linear_loss(coef):
    """L = sum(coef * out): dL/dout = coef."""
    return lambda out: (float(np.sum(coef * out)), coef)


def ce_loss(targets, mask=None, **kwargs):
    ce = CrossEntropyLoss(**kwargs)

    def f(logits):
        loss = ce(logits, targets, mask=mask)
        return loss, ce.backward()
    return f


# -- single layers ---------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 3, 5)])
def test_linear(shape, bias):
    rng = np.random.default_rng(0)
    layer = nn.Linear(5, 4, bias=bias, dtype=F64, seed=1)
    x = rng.standard_normal(shape)
    coef = rng.standard_normal(shape[:-1] + (4,))
    check_model(layer, linear_loss(coef), None, lambda: layer(x), layer.backward, rng,
                check_inputs={"x": (x, lambda dx: dx)})


def test_embedding_padding_and_repeats():
    rng = np.random.default_rng(1)
    emb = nn.Embedding(7, 3, padding_idx=2, dtype=F64, seed=0)
    assert np.all(emb.weight[2] == 0)
    idx = np.array([[0, 2, 5], [5, 5, 2], [1, 0, 6]])   # repeats and padding
    coef = rng.standard_normal(idx.shape + (3,))
    grads, back = check_model(emb, linear_loss(coef), None, lambda: emb(idx), emb.backward, rng,
                              exclude={"weight": (2,)}, max_count=30)
    assert back is None
    assert np.all(grads["weight"][2] == 0)                       # padding row: no gradient
    assert np.all(grads["weight"][[3, 4]] == 0)                  # unused rows
    np.testing.assert_allclose(grads["weight"][5], coef[0, 2] + coef[1, 0] + coef[1, 1])


def test_dropout_gradient_is_the_mask():
    rng = np.random.default_rng(2)
    drop = nn.Dropout(0.4, seed=3)
    x = rng.standard_normal((50, 40))
    y = drop(x)
    mask = drop._cache["mask"]
    kept = y != 0
    assert 0.5 < kept.mean() < 0.7
    np.testing.assert_allclose(y[kept], x[kept] / 0.6)
    g = rng.standard_normal(x.shape)
    np.testing.assert_array_equal(drop.backward(g), g * mask)
    # Finite differences with the mask held fixed (same seed on every forward).
    x2 = rng.standard_normal((4, 3))
    coef = rng.standard_normal((4, 3))

    def forward():
        drop._rng = np.random.default_rng(7)
        return drop(x2)
    check_model(drop, linear_loss(coef), None, forward, drop.backward, rng,
                check_inputs={"x": (x2, lambda dx: dx)})


@pytest.mark.parametrize("cls", [nn.ReLU, nn.Tanh])
def test_activations(cls):
    rng = np.random.default_rng(3)
    act = cls()
    x = rng.standard_normal((3, 4)) + 0.05   # away from the ReLU kink at 0 (eps is 1e-6)
    x[np.abs(x) < 1e-3] = 0.5
    coef = rng.standard_normal((3, 4))
    check_model(act, linear_loss(coef), None, lambda: act(x), act.backward, rng,
                check_inputs={"x": (x, lambda dx: dx)})


@pytest.mark.parametrize("cls", [nn.LastStep, nn.MeanPool])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_poolings(cls, batch_first, with_lengths):
    rng = np.random.default_rng(4)
    pool = cls(batch_first=batch_first)
    T, B, Fdim = 5, 3, 2
    x = rng.standard_normal((B, T, Fdim) if batch_first else (T, B, Fdim))
    lengths = np.array([5, 2, 1]) if with_lengths else None
    coef = rng.standard_normal((B, Fdim))
    _, dx = check_model(pool, linear_loss(coef), None, lambda: pool(x, lengths), pool.backward,
                        rng, check_inputs={"x": (x, lambda dx: dx)})
    xt = x.transpose(1, 0, 2) if batch_first else x
    lens = lengths if with_lengths else np.full(B, T)
    out = pool(x, lengths)
    for b in range(B):
        expected = (xt[lens[b] - 1, b] if cls is nn.LastStep
                    else xt[:lens[b], b].mean(axis=0))
        np.testing.assert_allclose(out[b], expected, rtol=1e-14)
    # padded positions get no gradient
    dxt = dx.transpose(1, 0, 2) if batch_first else dx
    for b in range(B):
        assert np.all(dxt[lens[b]:, b] == 0)


def test_pooling_unbatched():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3))
    for cls in (nn.LastStep, nn.MeanPool):
        pool = cls()
        coef = rng.standard_normal(3)
        check_model(pool, linear_loss(coef), None, lambda: pool(x), pool.backward, rng,
                    check_inputs={"x": (x, lambda dx: dx)})


# -- Sequential --------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
def test_sequential_linear_lstm_pool_head(impl):
    rng = np.random.default_rng(6)
    T, B = 4, 3
    model = nn.Sequential(
        nn.Linear(3, 4, dtype=F64, seed=0),
        nn.Tanh(),
        fastrnn.LSTM(4, 5, num_layers=2, bidirectional=True, dtype=F64, seed=1, impl=impl,
                     n_threads=1),
        nn.LastStep(),
        nn.Linear(10, 3, dtype=F64, seed=2),
    )
    names = [n for n, _ in model.named_parameters()]
    assert names[:2] == ["0.weight", "0.bias"] and names[2] == "2.weight_ih_l0"
    assert names[-2:] == ["4.weight", "4.bias"]
    x = rng.standard_normal((T, B, 3))
    lengths = np.array([4, 1, 3])
    h0 = rng.standard_normal((4, B, 5))
    c0 = rng.standard_normal((4, B, 5))
    targets = np.array([0, 2, 1])
    grads, dx = check_model(
        model, ce_loss(targets), None, lambda: model(x, lengths=lengths, hx=(h0, c0)),
        model.backward, rng,
        check_inputs={"x": (x, lambda dx: dx),
                      "h0": (h0, lambda _: model.grad_hx["2"][0]),
                      "c0": (c0, lambda _: model.grad_hx["2"][1])})
    assert set(model.states) == {"2"}
    assert model.final_state[0].shape == (4, B, 5)


@pytest.mark.parametrize("impl", IMPLS)
def test_sequential_embedding_gru_tagger_with_state_gradient(impl):
    """Per-step head, named children, and a loss on the final state too."""
    from collections import OrderedDict
    rng = np.random.default_rng(7)
    T, B = 5, 2
    model = nn.Sequential(OrderedDict([
        ("embed", nn.Embedding(6, 3, padding_idx=0, dtype=F64, seed=0)),
        ("rnn", fastrnn.GRU(3, 4, dtype=F64, seed=1, impl=impl, n_threads=1)),
        ("drop", nn.Dropout(0.0)),
        ("head", nn.Linear(4, 3, dtype=F64, seed=2)),
    ]))
    assert [n for n, _ in model.named_parameters()][0] == "embed.weight"
    tokens = rng.integers(1, 6, (T, B))
    lengths = np.array([5, 3])
    tokens[3:, 1] = 0
    targets = rng.integers(0, 3, (T, B))
    targets[3:, 1] = -100
    coef_h = rng.standard_normal((1, B, 4))
    ce = CrossEntropyLoss()

    def loss_of_output(logits):
        loss = ce(logits, targets) + float(np.sum(coef_h * model.final_state))
        return loss, ce.backward()

    check_model(model, loss_of_output, None, lambda: model(tokens, lengths=lengths),
                lambda g: model.backward(g, grad_states={"rnn": coef_h}), rng,
                exclude={"embed.weight": (0,)})


# -- models ------------------------------------------------------------------------

CLASSIFIER_CASES = [
    # cell, pool, bidirectional, num_layers, tokens, batch_first
    ("lstm", "last", False, 1, True, False),
    ("lstm", "mean", True, 2, False, False),
    ("lstm", "state", True, 1, True, True),
    ("gru", "last", True, 1, False, True),
    ("gru", "state", False, 2, True, False),
    ("rnn_tanh", "mean", False, 1, True, True),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell,pool,bidirectional,num_layers,tokens,batch_first",
                         CLASSIFIER_CASES)
def test_sequence_classifier(impl, cell, pool, bidirectional, num_layers, tokens, batch_first):
    rng = np.random.default_rng(8)
    T, B, C = 4, 3, 3
    kwargs = dict(vocab_size=7, embedding_dim=3, padding_idx=0) if tokens else \
        dict(input_size=3, embedding_dim=4 if cell == "gru" else None)
    model = nn.SequenceClassifier.build(
        C, 4, cell=cell, num_layers=num_layers, bidirectional=bidirectional, pool=pool,
        batch_first=batch_first, dtype=F64, seed=3, impl=impl, n_threads=1, **kwargs)
    lengths = np.array([4, 2, 1])
    shape = (B, T) if batch_first else (T, B)
    if tokens:
        x = rng.integers(1, 7, shape)
        for b, n in enumerate(lengths):
            if batch_first:
                x[b, n:] = 0
            else:
                x[n:, b] = 0
    else:
        x = rng.standard_normal(shape + (3,))
    targets = np.array([2, 0, 1])
    D = 2 if bidirectional else 1
    state_shape = (num_layers * D, B, 4)
    h0 = rng.standard_normal(state_shape)
    hx = (h0, rng.standard_normal(state_shape)) if cell == "lstm" else h0
    checks = {"h0": (h0, lambda _: model.grad_hx[0] if cell == "lstm" else model.grad_hx)}
    if not tokens:
        checks["x"] = (x, lambda dx: dx)
    grads, back = check_model(model, ce_loss(targets), None,
                              lambda: model(x, lengths=lengths, hx=hx), model.backward, rng,
                              check_inputs=checks,
                              exclude={"embed.weight": (0,)} if tokens else None)
    if tokens:
        assert back is None
        assert np.all(grads["embed.weight"][0] == 0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell,bidirectional,num_layers,batch_first", [
    ("lstm", False, 2, False), ("gru", True, 1, True), ("rnn_relu", False, 1, False)])
def test_sequence_tagger_with_masked_loss(impl, cell, bidirectional, num_layers, batch_first):
    rng = np.random.default_rng(9)
    T, B, C = 5, 3, 4
    model = nn.SequenceTagger.build(
        C, 4, cell=cell, input_size=3, num_layers=num_layers, bidirectional=bidirectional,
        batch_first=batch_first, dtype=F64, seed=4, impl=impl, n_threads=1)
    lengths = np.array([2, 5, 3])
    shape = (B, T) if batch_first else (T, B)
    x = rng.standard_normal(shape + (3,))
    targets = rng.integers(0, C, shape)
    mask = nn.sequence_mask(lengths, T, batch_first=batch_first)
    logits = model(x, lengths=lengths)
    assert logits.shape == shape + (C,)
    check_model(model, ce_loss(targets, mask=mask), None, lambda: model(x, lengths=lengths),
                model.backward, rng, check_inputs={"x": (x, lambda dx: dx)})


@pytest.mark.parametrize("impl", IMPLS)
def test_language_model_tokens(impl):
    rng = np.random.default_rng(10)
    model = nn.LanguageModel.build(6, 5, embedding_dim=3, cell="lstm", dtype=F64, seed=5,
                                   impl=impl, n_threads=1)
    tokens = rng.integers(0, 6, (5, 2))
    inputs, targets = tokens[:-1], tokens[1:]
    grads, back = check_model(model, ce_loss(targets, reduction="sum"), None,
                              lambda: model(inputs), model.backward, rng)
    assert back is None


def test_unbatched_models():
    rng = np.random.default_rng(11)
    for pool in ("last", "mean", "state"):
        model = nn.SequenceClassifier.build(3, 4, cell="lstm", input_size=2, pool=pool,
                                            bidirectional=True, dtype=F64, seed=6,
                                            impl="reference")
        x = rng.standard_normal((4, 2))
        logits = model(x)
        assert logits.shape == (3,)
        check_model(model, ce_loss(np.array(1)), None, lambda: model(x), model.backward, rng,
                    check_inputs={"x": (x, lambda dx: dx)}, max_count=10)
    tagger = nn.SequenceTagger.build(3, 4, cell="gru", input_size=2, dtype=F64, seed=6,
                                     impl="reference")
    x = rng.standard_normal((4, 2))
    assert tagger(x).shape == (4, 3)
    check_model(tagger, ce_loss(np.array([0, 1, 2, 1])), None, lambda: tagger(x),
                tagger.backward, rng, check_inputs={"x": (x, lambda dx: dx)}, max_count=10)


def test_model_with_mse_regression_head():
    """A many-to-one regressor: classifier structure, MSE loss, masked-mean pool."""
    rng = np.random.default_rng(12)
    model = nn.SequenceClassifier.build(2, 4, cell="gru", input_size=3, pool="mean",
                                        dtype=F64, seed=7, impl="cython", n_threads=1)
    x = rng.standard_normal((6, 4, 3))
    lengths = np.array([6, 3, 1, 5])
    target = rng.standard_normal((4, 2))
    mse = MSELoss()

    def loss_of_output(out):
        return mse(out, target), mse.backward()
    check_model(model, loss_of_output, None, lambda: model(x, lengths=lengths), model.backward,
                rng, check_inputs={"x": (x, lambda dx: dx)})


def test_classifier_dropout_gradient_with_fixed_mask():
    rng = np.random.default_rng(13)
    model = nn.SequenceClassifier.build(3, 4, cell="lstm", input_size=2, dropout=0.5,
                                        dtype=F64, seed=8, impl="reference")
    x = rng.standard_normal((3, 5, 2))
    targets = rng.integers(0, 3, 5)

    def forward():
        model.dropout._rng = np.random.default_rng(99)
        return model(x)
    check_model(model, ce_loss(targets), None, forward, model.backward, rng,
                check_inputs={"x": (x, lambda dx: dx)})


def test_cython_matches_reference_model_gradients():
    """Same model, both impls: identical logits and gradients to ~1e-12."""
    rng = np.random.default_rng(14)
    results = []
    for impl in IMPLS:
        model = nn.SequenceClassifier.build(3, 5, cell="lstm", vocab_size=9, embedding_dim=4,
                                            bidirectional=True, num_layers=2, pool="mean",
                                            dtype=F64, seed=9, impl=impl, n_threads=1)
        tokens = np.random.default_rng(0).integers(0, 9, (6, 4))
        lengths = np.array([6, 2, 4, 1])
        logits = model(tokens, lengths=lengths)
        ce = CrossEntropyLoss()
        ce(logits, np.array([0, 1, 2, 0]))
        model.backward(ce.backward())
        results.append((logits, model.grads))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-12, atol=1e-13)
    for name in results[0][1]:
        np.testing.assert_allclose(results[0][1][name], results[1][1][name], rtol=1e-10,
                                   atol=1e-12, err_msg=name)
    del rng

"""fastrnn.nn: API contract (names, modes, state dicts, errors) and parity with torch.nn."""
from collections import OrderedDict

import numpy as np
import pytest

import fastrnn
from fastrnn import nn
from fastrnn.losses import CrossEntropyLoss


def _torch():
    return pytest.importorskip("torch")


# -- initialisation ----------------------------------------------------------------

def test_linear_init_is_torch_default_and_seeded():
    a = nn.Linear(50, 40, seed=0)
    b = nn.Linear(50, 40, seed=0)
    np.testing.assert_array_equal(a.weight, b.weight)
    assert a.weight.dtype == np.float32 and a.weight.shape == (40, 50) and a.bias.shape == (40,)
    bound = 1 / np.sqrt(50)
    for p in (a.weight, a.bias):
        assert np.abs(p).max() <= bound
        assert np.abs(p).max() > 0.9 * bound
    assert abs(a.weight.std() - bound / np.sqrt(3)) < 0.01   # uniform std
    assert not np.array_equal(a.weight, nn.Linear(50, 40, seed=1).weight)
    assert "bias" not in dict(nn.Linear(3, 2, bias=False).named_parameters())


def test_embedding_init():
    e = nn.Embedding(200, 50, padding_idx=-1, seed=0)
    assert e.padding_idx == 199
    assert np.all(e.weight[199] == 0)
    assert abs(e.weight[:199].std() - 1) < 0.02 and abs(e.weight[:199].mean()) < 0.02


# -- torch parity ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_linear_matches_torch(dtype):
    torch = _torch()
    rng = np.random.default_rng(0)
    ours = nn.Linear(6, 4, dtype=dtype, seed=0)
    ref = torch.nn.Linear(6, 4, dtype=getattr(torch, dtype))
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    x = rng.standard_normal((3, 2, 6)).astype(dtype)
    g = rng.standard_normal((3, 2, 4)).astype(dtype)
    tx = torch.tensor(x, requires_grad=True)
    out = ref(tx)
    out.backward(torch.from_numpy(g))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ours(x), out.detach().numpy(), **tol)
    np.testing.assert_allclose(ours.backward(g), tx.grad.numpy(), **tol)
    np.testing.assert_allclose(ours.grads["weight"], ref.weight.grad.numpy(), **tol)
    np.testing.assert_allclose(ours.grads["bias"], ref.bias.grad.numpy(), **tol)


def test_embedding_matches_torch():
    torch = _torch()
    rng = np.random.default_rng(1)
    ours = nn.Embedding(8, 3, padding_idx=1, dtype="float64", seed=0)
    ref = torch.nn.Embedding(8, 3, padding_idx=1, dtype=torch.float64)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    idx = rng.integers(0, 8, (5, 4))
    idx[0, 0] = 1
    g = rng.standard_normal((5, 4, 3))
    out = ref(torch.from_numpy(idx))
    out.backward(torch.from_numpy(g))
    np.testing.assert_array_equal(ours(idx), out.detach().numpy())
    assert ours.backward(g) is None
    np.testing.assert_allclose(ours.grads["weight"], ref.weight.grad.numpy(), rtol=1e-13,
                               atol=1e-14)


class _TorchClassifier:
    """torch twin of SequenceClassifier (embed -> LSTM -> pool -> head)."""

    def __init__(self, torch, vocab, emb, hidden, classes, bidirectional, pool):
        self.torch = torch
        self.module = torch.nn.Module()
        self.module.embed = torch.nn.Embedding(vocab, emb, padding_idx=0, dtype=torch.float64)
        self.module.rnn = torch.nn.LSTM(emb, hidden, bidirectional=bidirectional,
                                        dtype=torch.float64)
        D = 2 if bidirectional else 1
        self.module.head = torch.nn.Linear(D * hidden, classes, dtype=torch.float64)
        self.pool = pool

    def __call__(self, tokens, lengths):
        torch = self.torch
        m = self.module
        emb = m.embed(torch.from_numpy(tokens))
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            emb, torch.from_numpy(lengths), enforce_sorted=False)
        out, (h_n, _) = m.rnn(packed)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=tokens.shape[0])
        B = tokens.shape[1]
        lens = torch.from_numpy(lengths)
        if self.pool == "last":
            feats = out[lens - 1, torch.arange(B)]
        elif self.pool == "mean":
            feats = out.sum(0) / lens[:, None].to(out.dtype)
        else:
            D = 2 if m.rnn.bidirectional else 1
            feats = h_n[-D:].transpose(0, 1).reshape(B, -1)
        return m.head(feats)


@pytest.mark.parametrize("pool,bidirectional", [("last", False), ("mean", True),
                                                ("state", True), ("last", True)])
def test_classifier_matches_torch_model(pool, bidirectional):
    torch = _torch()
    rng = np.random.default_rng(2)
    ours = nn.SequenceClassifier.build(3, 5, cell="lstm", vocab_size=10, embedding_dim=4,
                                       padding_idx=0, bidirectional=bidirectional, pool=pool,
                                       dtype="float64", seed=0, n_threads=1)
    twin = _TorchClassifier(torch, 10, 4, 5, 3, bidirectional, pool)
    assert list(twin.module.state_dict()) == list(ours.state_dict())
    twin.module.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    T, B = 6, 4
    lengths = np.array([6, 2, 4, 1])
    tokens = rng.integers(1, 10, (T, B))
    for b, n in enumerate(lengths):
        tokens[n:, b] = 0
    targets = np.array([0, 2, 1, 1])
    logits = ours(tokens, lengths=lengths)
    ce = CrossEntropyLoss()
    loss = ce(logits, targets)
    ours.backward(ce.backward())
    t_logits = twin(tokens, lengths)
    t_loss = torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(targets))
    t_loss.backward()
    np.testing.assert_allclose(logits, t_logits.detach().numpy(), rtol=1e-12, atol=1e-13)
    assert abs(loss - t_loss.item()) < 1e-12
    for name, p in twin.module.named_parameters():
        np.testing.assert_allclose(ours.grads[name], p.grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=name)


def test_tagger_matches_torch_sequential():
    """SequenceTagger == torch Linear -> GRU -> Linear on every step (batch_first)."""
    torch = _torch()
    rng = np.random.default_rng(3)
    ours = nn.SequenceTagger.build(4, 5, cell="gru", input_size=3, embedding_dim=6,
                                   num_layers=2, batch_first=True, dtype="float64", seed=1,
                                   n_threads=1)
    m = torch.nn.Module()
    m.embed = torch.nn.Linear(3, 6, dtype=torch.float64)
    m.rnn = torch.nn.GRU(6, 5, num_layers=2, batch_first=True, dtype=torch.float64)
    m.head = torch.nn.Linear(5, 4, dtype=torch.float64)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    x = rng.standard_normal((2, 7, 3))
    targets = rng.integers(0, 4, (2, 7))
    logits = ours(x)
    ce = CrossEntropyLoss()
    ce(logits, targets)
    dx = ours.backward(ce.backward())
    tx = torch.tensor(x, requires_grad=True)
    t_logits = m.head(m.rnn(m.embed(tx))[0])
    torch.nn.functional.cross_entropy(t_logits.reshape(-1, 4),
                                      torch.from_numpy(targets).reshape(-1)).backward()
    np.testing.assert_allclose(logits, t_logits.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-13)
    for name, p in m.named_parameters():
        np.testing.assert_allclose(ours.grads[name], p.grad.numpy(), rtol=1e-10, atol=1e-13,
                                   err_msg=name)


def test_sequential_state_dict_names_match_torch():
    torch = _torch()
    ours = nn.Sequential(nn.Linear(3, 4), fastrnn.LSTM(4, 5, num_layers=2),
                         nn.Dropout(0.1), nn.Linear(5, 2))
    ref = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LSTM(4, 5, num_layers=2),
                              torch.nn.Dropout(0.1), torch.nn.Linear(5, 2))
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    np.testing.assert_array_equal(ours[0].weight, ref[0].weight.detach().numpy())


# -- contract --------------------------------------------------------------------

def test_grads_accumulate_until_zero_grad():
    layer = nn.Linear(3, 2, dtype="float64", seed=0)
    x = np.ones((4, 3))
    layer(x)
    layer.backward(np.ones((4, 2)))
    first = layer.grads["weight"].copy()
    layer(x)
    layer.backward(np.ones((4, 2)))
    np.testing.assert_allclose(layer.grads["weight"], 2 * first)
    layer.zero_grad()
    assert not layer.grads["weight"].any() and not layer.grads["bias"].any()


def test_container_grads_are_live_arrays():
    model = nn.SequenceClassifier.build(2, 3, input_size=2, seed=0)
    for name, g in model.grads.items():
        g += 1
    assert all(g.all() for g in model.rnn.grads.values())
    assert model.head.grads["weight"].all()
    model.zero_grad()
    assert not any(g.any() for g in model.grads.values())
    assert list(model.grads) == [n for n, _ in model.named_parameters()]
    assert len(model.parameters()) == 6


def test_backward_once_per_training_forward():
    layer = nn.Linear(3, 2)
    with pytest.raises(RuntimeError, match="training mode"):
        layer.backward(np.ones((1, 2)))
    layer(np.ones((1, 3)))
    layer.backward(np.ones((1, 2)))
    with pytest.raises(RuntimeError):
        layer.backward(np.ones((1, 2)))
    layer.eval()
    layer(np.ones((1, 3)))
    with pytest.raises(RuntimeError):
        layer.backward(np.ones((1, 2)))


def test_train_eval_recursive_and_dropout_identity_in_eval():
    model = nn.SequenceTagger.build(3, 4, input_size=2, dropout=0.5, seed=0)
    assert model.eval() is model
    assert not model.training and not model.rnn.training and not model.head.training
    assert not model.dropout.training
    x = np.random.default_rng(0).standard_normal((5, 2, 2)).astype(np.float32)
    a, b = model(x), model(x)
    np.testing.assert_array_equal(a, b)                       # no dropout in eval
    with pytest.raises(RuntimeError):
        model.backward(np.ones_like(a))
    model.train()
    assert model.training and model.rnn.training and model.dropout.training
    c = model(x)
    assert not np.allclose(a, c)                              # dropout is on


def test_dropout_modes_and_seed():
    x = np.ones((100, 10))
    a = nn.Dropout(0.3, seed=5)(x)
    b = nn.Dropout(0.3, seed=5)(x)
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) <= {0.0, 1 / 0.7}
    assert np.all(nn.Dropout(1.0)(x) == 0)
    d = nn.Dropout(0.0)
    assert d(x) is x or np.array_equal(d(x), x)
    d = nn.Dropout(0.5).eval()
    assert d(x) is x
    with pytest.raises(ValueError):
        nn.Dropout(1.5)


def test_load_state_dict_copies_in_place_and_checks_first():
    model = nn.SequenceClassifier.build(2, 3, vocab_size=5, seed=0, dtype="float64")
    head_weight = model.head.weight
    state = model.state_dict()
    state["head.weight"] = state["head.weight"] + 1
    model.load_state_dict(state)
    assert model.head.weight is head_weight                    # same array, new values
    np.testing.assert_array_equal(model.head.weight, state["head.weight"])
    before = model.state_dict()
    bad = dict(state, **{"rnn.weight_hh_l0": np.zeros((5, 5))})
    with pytest.raises(ValueError, match="shape"):
        model.load_state_dict(bad)
    for k, v in model.state_dict().items():                    # nothing changed
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(KeyError, match="missing"):
        model.load_state_dict({k: v for k, v in state.items() if k != "head.bias"})
    with pytest.raises(KeyError, match="unexpected"):
        model.load_state_dict(dict(state, extra=np.zeros(1)))
    with pytest.raises(TypeError):
        model.load_state_dict(dict(state, **{"head.bias": np.zeros(2, dtype=int)}))
    partial = {"head.bias": np.array([5.0, 6.0])}
    model.load_state_dict(partial, strict=False)
    np.testing.assert_array_equal(model.head.bias, [5.0, 6.0])
    # float32 model accepts float64 arrays (cast)
    m32 = nn.Linear(2, 2)
    m32.load_state_dict({"weight": np.eye(2), "bias": np.zeros(2)})
    assert m32.weight.dtype == np.float32


def test_state_dict_round_trip_gives_same_outputs():
    rng = np.random.default_rng(0)
    a = nn.SequenceClassifier.build(3, 4, vocab_size=6, bidirectional=True, seed=1)
    b = nn.SequenceClassifier.build(3, 4, vocab_size=6, bidirectional=True, seed=2)
    tokens = rng.integers(0, 6, (5, 3))
    assert not np.allclose(a(tokens), b(tokens))
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a(tokens), b(tokens))


def test_sequential_hx_rules_and_states():
    rng = np.random.default_rng(1)
    lstm = fastrnn.LSTM(2, 3, dtype="float64", seed=0)
    gru = fastrnn.GRU(3, 3, dtype="float64", seed=1)
    x = rng.standard_normal((4, 2, 2))
    one = nn.Sequential(lstm, nn.Linear(3, 2, dtype="float64"))
    h0 = (rng.standard_normal((1, 2, 3)), rng.standard_normal((1, 2, 3)))
    out_bare = one(x, hx=h0)
    np.testing.assert_array_equal(out_bare, one(x, hx={0: h0}))
    np.testing.assert_array_equal(out_bare, one(x, hx={"0": h0}))
    assert not np.allclose(out_bare, one(x))
    two = nn.Sequential(lstm, gru)
    with pytest.raises(TypeError, match="dict"):
        two(x, hx=h0)
    with pytest.raises(KeyError, match="not a recurrent"):
        one(x, hx={1: h0})
    out = two(x, hx={1: rng.standard_normal((1, 2, 3))})
    assert set(two.states) == {"0", "1"}
    assert two.final_state is two.states["1"]
    dx = two.backward(np.ones_like(out))
    assert dx.shape == x.shape and set(two.grad_hx) == {"0", "1"}
    assert len(two) == 2 and two[0] is lstm and two["1"] is gru and list(two) == [lstm, gru]


def test_sequential_embedding_not_first_fails_clearly():
    model = nn.Sequential(nn.Linear(2, 2), nn.Embedding(4, 2))
    with pytest.raises(TypeError):
        model(np.ones((2, 2)))            # float indices rejected by the Embedding
    with pytest.raises(TypeError):
        nn.Sequential(nn.Linear(2, 2), "not a module")


def test_input_validation():
    with pytest.raises(TypeError, match="floating"):
        nn.Linear(3, 2)(np.ones((2, 3), dtype=int))
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(3, 2)(np.ones((2, 4)))
    with pytest.raises(TypeError, match="integer"):
        nn.Embedding(4, 2)(np.ones(3))
    with pytest.raises(IndexError):
        nn.Embedding(4, 2)(np.array([0, 4]))
    with pytest.raises(ValueError, match="padding_idx"):
        nn.Embedding(4, 2, padding_idx=4)
    with pytest.raises(ValueError, match="lengths"):
        nn.LastStep()(np.ones((3, 2, 1)), lengths=np.array([0, 3]))
    with pytest.raises(ValueError, match="pool"):
        nn.SequenceClassifier.build(2, 3, input_size=2, pool="max")
    with pytest.raises(ValueError, match="cell"):
        nn.make_recurrent("lstmx", 2, 3)
    with pytest.raises(ValueError, match="vocab_size"):
        nn.SequenceTagger.build(2, 3)
    layer = nn.Linear(3, 2)
    layer(np.ones((2, 3)))
    with pytest.raises(ValueError, match="shape of the output"):
        layer.backward(np.ones((2, 3)))


def test_make_recurrent_and_sequence_mask():
    assert isinstance(nn.make_recurrent("LSTM", 2, 3), fastrnn.LSTM)
    assert isinstance(nn.make_recurrent("gru", 2, 3), fastrnn.GRU)
    relu = nn.make_recurrent("rnn_relu", 2, 3, num_layers=2)
    assert relu.nonlinearity == "relu" and relu.num_layers == 2
    mask = nn.sequence_mask(np.array([3, 1]), 4)
    np.testing.assert_array_equal(mask, [[1, 1], [1, 0], [1, 0], [0, 0]])
    np.testing.assert_array_equal(nn.sequence_mask(np.array([3, 1]), 4, batch_first=True),
                                  mask.T)
    assert nn.sequence_mask(None, 4) is None


def test_build_seed_reproducible_and_dtype():
    a = nn.LanguageModel.build(11, 8, seed=3)
    b = nn.LanguageModel.build(11, 8, seed=3)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        np.testing.assert_array_equal(pa, pb)
        assert pa.dtype == np.float32
    assert [n for n, _ in a.named_parameters()][0] == "embed.weight"
    assert a.head.out_features == 11
    m64 = nn.SequenceClassifier.build(2, 3, input_size=2, dtype="float64")
    assert all(p.dtype == np.float64 for p in m64.parameters())
    assert "embed.weight" not in dict(m64.named_parameters())


def test_float32_models_run_in_eval_on_packed_path():
    """Eval mode (float32 cython: packed weights) gives the training-mode logits."""
    rng = np.random.default_rng(4)
    model = nn.SequenceClassifier.build(3, 8, vocab_size=7, bidirectional=True, seed=0)
    tokens = rng.integers(0, 7, (6, 3))
    lengths = np.array([6, 3, 1])
    train_logits = model(tokens, lengths=lengths)
    model.eval()
    np.testing.assert_allclose(model(tokens, lengths=lengths), train_logits, rtol=1e-5,
                               atol=1e-6)
    model.train()


def test_repr():
    text = repr(nn.SequenceClassifier.build(2, 3, vocab_size=5, dropout=0.1))
    assert "Embedding(5, 3)" in text and "LSTM(3, 3)" in text and "Dropout(p=0.1)" in text
    assert "Linear(in_features=3, out_features=2, bias=True)" in text

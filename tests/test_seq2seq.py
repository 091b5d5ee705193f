"""Seq2Seq: end-to-end finite differences through decoder, state hand-over and
encoder; teacher forcing; greedy decoding; lengths; layouts; torch parity."""
import numpy as np
import pytest

import fastrnn
from fastrnn import nn
from fastrnn.losses import CrossEntropyLoss
from fastrnn.seq2seq import Seq2Seq

from _gradcheck_util import check_model

PAD, BOS, EOS = 0, 1, 2


def _data(rng, T_src=5, T_tgt=4, B=3, vocab=7):
    src = rng.integers(3, vocab, size=(T_src, B))
    tgt = rng.integers(3, vocab, size=(T_tgt, B))
    lengths = rng.integers(1, T_src + 1, size=B)
    lengths[0] = T_src
    for b, n in enumerate(lengths):
        src[n:, b] = PAD
    tgt[-1, 1:] = PAD           # padded targets, ignored by the loss
    return src, lengths, tgt


def ce_loss(tgt):
    ce = CrossEntropyLoss(ignore_index=PAD)
    return lambda logits: (ce(logits, tgt), ce.backward())


@pytest.mark.parametrize("cell, num_layers", [("gru", 1), ("lstm", 2), ("rnn", 1)])
def test_gradcheck_end_to_end(cell, num_layers):
    rng = np.random.default_rng(num_layers)
    model = Seq2Seq.build(7, 6, 4, embedding_dim=3, cell=cell, num_layers=num_layers,
                          bos_idx=BOS, eos_idx=EOS, pad_idx=PAD, dtype="float64", seed=0)
    # Larger weights than the default init: the gradients reaching the encoder
    # stay well above the finite differences' rounding noise (~1e-10).
    for name, p in model.named_parameters():
        if ".weight_" in name or name == "head.weight":
            p *= 3.0
    src, lengths, tgt = _data(rng, vocab=6)
    grads, _ = check_model(model, ce_loss(tgt), None,
                           lambda: model(src, tgt, src_lengths=lengths), model.backward, rng,
                           max_count=16,
                           exclude={"encoder_embed.weight": (PAD,),
                                    "decoder_embed.weight": (PAD,)})
    # The gradient reached the encoder through the decoder's initial state.
    assert np.abs(grads["encoder.weight_ih_l0"]).max() > 0
    assert np.abs(grads["encoder_embed.weight"]).max() > 0


def test_teacher_forcing_inputs_and_causality():
    rng = np.random.default_rng(1)
    model = Seq2Seq.build(7, 7, 5, bos_idx=BOS, eos_idx=EOS, pad_idx=PAD, dtype="float64",
                          seed=0)
    tgt = np.array([[3, 4], [5, 6], [2, 2]])
    np.testing.assert_array_equal(model.decoder_inputs(tgt), [[1, 1], [3, 4], [5, 6]])
    src, lengths, _ = _data(rng, B=2)
    model.eval()
    base = model(src, tgt, src_lengths=lengths)
    tgt2 = tgt.copy()
    tgt2[1] = 6
    changed = model(src, tgt2, src_lengths=lengths)
    np.testing.assert_array_equal(changed[:2], base[:2])        # tgt[1] only feeds step 2
    assert np.abs(changed[2] - base[2]).max() > 0


def test_source_padding_is_never_read():
    rng = np.random.default_rng(2)
    model = Seq2Seq.build(7, 7, 5, bos_idx=BOS, eos_idx=EOS, pad_idx=PAD, dtype="float64",
                          seed=0).eval()
    src, lengths, tgt = _data(rng)
    junk = src.copy()
    for b, n in enumerate(lengths):
        junk[n:, b] = 6
    np.testing.assert_array_equal(model(src, tgt, src_lengths=lengths),
                                  model(junk, tgt, src_lengths=lengths))
    b = 1
    np.testing.assert_allclose(model(src[:lengths[b], b], tgt[:, b]),
                               model(src, tgt, src_lengths=lengths)[:, b], rtol=1e-12)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_greedy_decode_matches_teacher_forcing_on_its_own_output(cell):
    """Feeding the greedy output back as the target, the teacher-forced arg-max
    reproduces it: the stepwise decoder equals the full-sequence one."""
    rng = np.random.default_rng(3)
    model = Seq2Seq.build(9, 9, 6, cell=cell, bos_idx=BOS, eos_idx=None, pad_idx=PAD,
                          dtype="float64", seed=4)
    src, lengths, _ = _data(rng, vocab=9)
    pred = model.greedy_decode(src, src_lengths=lengths, max_len=6)
    assert pred.shape == (6, 3) and pred.dtype == np.int64
    assert model.training                                    # mode restored
    model.encoder.weight_ih_l0[0, 0] += 0.0                  # parameters writable again
    logits = model.eval()(src, pred, src_lengths=lengths)
    np.testing.assert_array_equal(np.argmax(logits, -1), pred)


def test_greedy_decode_stops_at_eos_and_pads():
    model = Seq2Seq.build(5, 5, 4, bos_idx=BOS, eos_idx=EOS, pad_idx=PAD, seed=0)
    # Make <eos> the arg-max at every step for every input.
    model.head.bias[...] = 0
    model.head.weight[...] = 0
    model.head.bias[EOS] = 10
    src = np.array([[3, 4], [4, 3]])
    pred = model.greedy_decode(src, max_len=5)
    np.testing.assert_array_equal(pred, [[EOS, EOS]])
    model.head.bias[EOS] = 0
    model.head.bias[3] = 10
    pred = model.greedy_decode(src, max_len=4)
    np.testing.assert_array_equal(pred, np.full((4, 2), 3))
    np.testing.assert_array_equal(model.greedy_decode(src[:, 0], max_len=2), [3, 3])


def test_batch_first_layout():
    rng = np.random.default_rng(5)
    tm = Seq2Seq.build(7, 7, 5, bos_idx=BOS, eos_idx=EOS, pad_idx=PAD, dtype="float64",
                       seed=0)
    bf = Seq2Seq.build(7, 7, 5, bos_idx=BOS, eos_idx=EOS, pad_idx=PAD, dtype="float64",
                       seed=0, batch_first=True)
    src, lengths, tgt = _data(rng)
    out = tm(src, tgt, src_lengths=lengths)
    np.testing.assert_allclose(bf(src.T, tgt.T, src_lengths=lengths), out.transpose(1, 0, 2),
                               rtol=1e-12)
    tm.backward(np.ones_like(out))
    bf.backward(np.ones_like(out.transpose(1, 0, 2)))
    for name, g in tm.grads.items():
        np.testing.assert_allclose(bf.grads[name], g, rtol=1e-10, atol=1e-12, err_msg=name)
    np.testing.assert_array_equal(bf.greedy_decode(src.T, lengths, max_len=4),
                                  tm.greedy_decode(src, lengths, max_len=4).T)


def test_matches_torch_lstm_encoder_decoder():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    V, E, H = 7, 3, 5
    model = Seq2Seq.build(V, V, H, embedding_dim=E, cell="lstm", bos_idx=BOS, eos_idx=EOS,
                          pad_idx=PAD, dtype="float64", seed=0)

    class Ref(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder_embed = torch.nn.Embedding(V, E, padding_idx=PAD)
            self.encoder = torch.nn.LSTM(E, H)
            self.decoder_embed = torch.nn.Embedding(V, E, padding_idx=PAD)
            self.decoder = torch.nn.LSTM(E, H)
            self.head = torch.nn.Linear(H, V)

    ref = Ref().double()
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    src = rng.integers(3, V, size=(5, 2))
    tgt = rng.integers(3, V, size=(4, 2))
    _, state = ref.encoder(ref.encoder_embed(torch.from_numpy(src)))
    dec_in = torch.from_numpy(model.decoder_inputs(tgt))
    out, _ = ref.decoder(ref.decoder_embed(dec_in), state)
    logits = ref.head(out)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V),
                                             torch.from_numpy(tgt).reshape(-1))
    loss.backward()
    ce = CrossEntropyLoss()
    ours = model(src, tgt)
    assert abs(ce(ours, tgt) - loss.item()) < 1e-12
    np.testing.assert_allclose(ours, logits.detach().numpy(), rtol=1e-10)
    model.backward(ce.backward())
    grads = dict(ref.named_parameters())
    for name, g in model.grads.items():
        np.testing.assert_allclose(g, grads[name].grad.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=name)


def test_contract_and_errors():
    model = Seq2Seq.build(7, 6, 4, bos_idx=BOS, eos_idx=EOS, pad_idx=PAD, seed=0)
    names = [n for n, _ in model.named_parameters()]
    assert names[0] == "encoder_embed.weight" and names[-1] == "head.bias"
    assert "decoder.weight_hh_l0" in names
    assert fastrnn.Seq2Seq is Seq2Seq
    with pytest.raises(RuntimeError, match="training mode"):
        model.backward(np.zeros((2, 1, 6)))
    with pytest.raises(TypeError, match="integer"):
        model(np.zeros((3, 2)), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="same batch size"):
        model(np.zeros((3, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="bos_idx"):
        Seq2Seq.build(7, 6, 4, bos_idx=6)
    with pytest.raises(ValueError, match="max_len"):
        model.greedy_decode(np.zeros((3, 2), int), max_len=0)
    emb = nn.Embedding(5, 3)
    with pytest.raises(ValueError, match="same hidden_size"):
        Seq2Seq(emb, fastrnn.GRU(3, 4), nn.Embedding(5, 3), fastrnn.GRU(3, 5),
                nn.Linear(5, 5), bos_idx=1)
    with pytest.raises(ValueError, match="both be LSTMs"):
        Seq2Seq(emb, fastrnn.LSTM(3, 4), nn.Embedding(5, 3), fastrnn.GRU(3, 4),
                nn.Linear(4, 5), bos_idx=1)
    with pytest.raises(ValueError, match="unidirectional"):
        Seq2Seq(emb, fastrnn.GRU(3, 4, bidirectional=True), nn.Embedding(5, 3),
                fastrnn.GRU(3, 4), nn.Linear(4, 5), bos_idx=1)

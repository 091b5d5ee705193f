"""Tiny end-to-end trainings (seconds): the building blocks fit together, learn,
and a fixed seed gives bit-identical losses."""
import numpy as np
import pytest

from fastrnn import init, losses, nn, optim

VOCAB = 8
MARKER = VOCAB - 1


def marker_batch(rng, n, T=8):
    """Label 1 iff the marker token appears in the (variable-length, 0-padded) sequence."""
    lengths = rng.integers(3, T + 1, n)
    tokens = rng.integers(1, MARKER, (T, n))
    labels = rng.integers(0, 2, n)
    for b in range(n):
        if labels[b]:
            tokens[rng.integers(0, lengths[b]), b] = MARKER
        tokens[lengths[b]:, b] = 0
    return tokens, lengths, labels


def train_classifier(seed=0, steps=20, cell="lstm", pool="last", make_opt=None, clip=None,
                     make_scheduler=None):
    rng = np.random.default_rng(seed)
    model = nn.SequenceClassifier.build(2, 16, cell=cell, vocab_size=VOCAB, embedding_dim=8,
                                        padding_idx=0, pool=pool, seed=seed, n_threads=1)
    opt = make_opt(model) if make_opt else optim.Adam(model, lr=0.05)
    scheduler = make_scheduler(opt) if make_scheduler else None
    ce = losses.CrossEntropyLoss()
    history = []
    for _ in range(steps):
        tokens, lengths, labels = marker_batch(rng, 32)
        opt.zero_grad()
        history.append(ce(model(tokens, lengths=lengths), labels))
        model.backward(ce.backward())
        if clip:
            optim.clip_grad_norm_(model, clip)
        opt.step()
        if scheduler is not None:
            scheduler.step()
    model.eval()
    tokens, lengths, labels = marker_batch(rng, 256)
    accuracy = float(np.mean(model(tokens, lengths=lengths).argmax(axis=1) == labels))
    return history, accuracy, model


def test_lstm_classifier_learns_and_is_bit_reproducible():
    losses_a, accuracy, _ = train_classifier(seed=0)
    losses_b, _, _ = train_classifier(seed=0)
    assert losses_a == losses_b                     # bit-identical
    start, end = losses_a[0], np.mean(losses_a[-3:])
    assert end < 0.5 * start, losses_a
    assert accuracy > 0.9
    losses_c, _, _ = train_classifier(seed=1)
    assert losses_c != losses_a


def test_gru_mean_pool_sgd_with_scheduler_and_clipping():
    schedulers = []

    def make_scheduler(opt):
        schedulers.append(optim.StepLR(opt, step_size=10, gamma=0.5))
        return schedulers[-1]
    history, accuracy, _ = train_classifier(
        seed=2, steps=30, cell="gru", pool="mean", clip=1.0, make_scheduler=make_scheduler,
        make_opt=lambda model: optim.SGD(model, lr=0.5, momentum=0.9, nesterov=True))
    assert schedulers[0].get_last_lr() == [0.5 * 0.5 ** 3]
    assert np.mean(history[-3:]) < 0.5 * history[0], history


def test_language_model_learns_a_cycle_with_state_carry():
    """Truncated BPTT: carry final_state across chunks as hx."""
    rng = np.random.default_rng(3)
    V = 5
    model = nn.LanguageModel.build(V, 12, embedding_dim=6, cell="lstm", seed=3, n_threads=1)
    init.lstm_forget_bias_(model, 1.0)
    opt = optim.AdamW(model, lr=0.05, weight_decay=0.0)
    ce = losses.CrossEntropyLoss()
    B, T = 4, 6
    stream = (np.arange(B * T * 12 + 1)[None, :] + rng.integers(0, V, (B, 1))) % V   # (B, N)
    stream = stream.T                                                                  # (N, B)
    state, history = None, []
    for chunk in range(12):
        piece = stream[chunk * T:(chunk + 1) * T + 1]
        opt.zero_grad()
        logits = model(piece[:-1], hx=state)
        history.append(ce(logits, piece[1:]))
        model.backward(ce.backward())
        opt.step()
        state = model.final_state
    assert np.mean(history[-3:]) < 0.5 * history[0], history


@pytest.mark.parametrize("impl", ["reference", "cython"])
def test_float64_tagger_step_decreases_loss(impl):
    """One small Adam step along the gradient lowers the loss (sanity of signs)."""
    rng = np.random.default_rng(4)
    model = nn.SequenceTagger.build(3, 6, input_size=2, dtype="float64", seed=4, impl=impl,
                                    n_threads=1)
    x = rng.standard_normal((5, 3, 2))
    targets = rng.integers(0, 3, (5, 3))
    ce = losses.CrossEntropyLoss()
    opt = optim.SGD(model, lr=1e-2)
    before = ce(model(x), targets)
    model.backward(ce.backward())
    opt.step()
    after = ce(model(x), targets)
    assert after < before

"""fastrnn.Trainer: convergence to a stated accuracy, bit-reproducibility,
truncated BPTT (state values carried, gradient stopped), metrics, early
stopping, checkpoints, progress fallback without tqdm."""
import sys

import numpy as np
import pytest

from fastrnn import io, losses, nn, optim
from fastrnn import trainer as trainer_module
from fastrnn.data import Batch, StreamBatcher
from fastrnn.trainer import Trainer

VOCAB = 8
MARKER = VOCAB - 1


def marker_data(rng, n, T=12):
    """Variable-length token sequences (a list of 4..T tokens) with 0-3 markers;
    the label is the parity of the marker count."""
    xs, labels = [], []
    for _ in range(n):
        seq = rng.integers(1, MARKER, rng.integers(4, T + 1))
        where = rng.choice(len(seq), size=rng.integers(0, 4), replace=False)
        seq[where] = MARKER
        xs.append(seq)
        labels.append(len(where) % 2)
    return xs, np.array(labels)


def make_classifier(seed=0, lr=0.01):
    model = nn.SequenceClassifier.build(2, 24, vocab_size=VOCAB, embedding_dim=8,
                                        padding_idx=0, seed=seed, n_threads=1)
    return model, optim.Adam(model, lr=lr)


def test_classifier_converges_to_97_percent_accuracy():
    """Stated accuracy: the parity of the marker count in variable-length
    sequences reaches >= 97% held-out accuracy after 8 epochs of 512 sequences
    (chance: 50%; padding and lengths handled by the trainer)."""
    rng = np.random.default_rng(0)
    train, val = marker_data(rng, 512), marker_data(rng, 256)
    model, opt = make_classifier()
    trainer = Trainer(model, losses.CrossEntropyLoss(), opt, clip_grad_norm=1.0, seed=0,
                      progress=False)
    history = trainer.fit(train, epochs=8, val_data=val, batch_size=32)
    assert set(history) >= {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "time",
                            "throughput"}
    assert "perplexity" not in history                  # per-sequence targets
    assert len(history["loss"]) == 8
    assert history["val_accuracy"][0] < 0.8             # not trivial
    assert history["val_accuracy"][-1] >= 0.97, history["val_accuracy"]
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert trainer.evaluate(val)["accuracy"] == history["val_accuracy"][-1]


def test_same_seed_same_run_bit_identical():
    def run(seed, shuffle_seed):
        rng = np.random.default_rng(seed)
        train = marker_data(rng, 96)
        model, opt = make_classifier(seed)
        trainer = Trainer(model, "cross_entropy", opt, seed=shuffle_seed, progress=False)
        history = trainer.fit(train, epochs=2, batch_size=16)
        return trainer.step_losses, history["loss"]
    steps_a, epochs_a = run(1, 5)
    steps_b, epochs_b = run(1, 5)
    assert steps_a == steps_b and epochs_a == epochs_b          # bit-identical
    assert len(steps_a) == 2 * 6
    steps_c, _ = run(1, 6)                                      # another shuffle order
    assert steps_c != steps_a


def _tagger(dtype="float64", seed=0):
    return nn.SequenceTagger.build(3, 6, input_size=2, dtype=dtype, seed=seed, n_threads=1)


def test_truncated_bptt_carries_the_state_of_each_sequence():
    """With lr=0 the weights do not move, so the state carried through chunks of
    3 steps must equal an eval-mode forward over the whole sequences (each
    sequence's state at its own last step, also when it ended chunks earlier)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 11, 2))                          # (N, T, F)
    y = rng.integers(0, 3, (4, 11))
    lengths = np.array([11, 2, 7, 5])
    model = _tagger()
    trainer = Trainer(model, losses.CrossEntropyLoss(), optim.SGD(model, lr=0.0),
                      progress=False)
    trainer.fit((x, y, lengths), epochs=1, batch_size=4, shuffle=False, bptt=3)
    assert len(trainer.step_losses) == 4                         # ceil(11 / 3) chunks
    model.eval()
    _, state = model.rnn(np.swapaxes(x, 0, 1), None, lengths)
    np.testing.assert_allclose(trainer.state, state, rtol=1e-12, atol=1e-12)


def test_truncated_bptt_stops_the_gradient_at_chunk_boundaries():
    """The trainer's chunked steps equal a hand-written loop that feeds each
    chunk the previous chunk's final state as plain values (no gradient into
    the previous chunk), and differ from full BPTT."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((12, 3, 2))                          # time-major (T, B, F)
    y = rng.integers(0, 3, (12, 3))

    trained = _tagger(seed=1)
    trainer = Trainer(trained, losses.CrossEntropyLoss(), optim.SGD(trained, lr=0.5),
                      progress=False)
    trainer.fit([Batch(x, y)], epochs=1, bptt=4)

    manual = _tagger(seed=1)
    opt, ce, state, manual_losses = optim.SGD(manual, lr=0.5), losses.CrossEntropyLoss(), None, []
    for start in range(0, 12, 4):
        opt.zero_grad()
        logits = manual(x[start:start + 4], hx=state)
        manual_losses.append(ce(logits, y[start:start + 4]))
        manual.backward(ce.backward())                   # grad w.r.t. hx is dropped
        opt.step()
        state = tuple(s.copy() for s in manual.final_state)
    assert trainer.step_losses == manual_losses
    for (name, a), (_, b) in zip(trained.named_parameters(), manual.named_parameters()):
        np.testing.assert_array_equal(a, b, err_msg=name)

    full = _tagger(seed=1)
    Trainer(full, losses.CrossEntropyLoss(), optim.SGD(full, lr=0.5),
            progress=False).fit([Batch(x, y)], epochs=1)
    assert not np.allclose(full.rnn.weight_hh_l0, trained.rnn.weight_hh_l0)


def test_language_model_streams_carry_state_across_batches():
    """StreamBatcher chunks are marked carry=True: with lr=0 the final state is
    the eval forward's over each whole stream; the LM learns a cyclic stream."""
    tokens = np.arange(4 * 31) % 5
    model = nn.LanguageModel.build(5, 8, embedding_dim=4, dtype="float64", seed=0, n_threads=1)
    trainer = Trainer(model, losses.CrossEntropyLoss(), optim.SGD(model, lr=0.0),
                      progress=False)
    batches = StreamBatcher(tokens, 4, bptt=7)
    history = trainer.fit(batches, epochs=1)
    assert "perplexity" in history
    assert np.isclose(history["perplexity"][0], np.exp(history["loss"][0]))
    model.eval()
    model(batches.data[:-1])
    for got, want in zip(trainer.state, model.final_state):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)

    model.train()
    learner = Trainer(model, losses.CrossEntropyLoss(), optim.Adam(model, lr=0.05),
                      clip_grad_value=1.0, progress=False)
    history = learner.fit(batches, epochs=15, val_data=batches)
    assert history["val_accuracy"][-1] == 1.0 and history["val_perplexity"][-1] < 1.3


def test_early_stopping_checkpoint_and_restore_best(tmp_path):
    rng = np.random.default_rng(4)
    train = marker_data(rng, 64)
    model, opt = make_classifier(seed=2)
    scheduler = optim.StepLR(opt, step_size=1, gamma=0.5)
    path = tmp_path / "ckpt-{epoch}.npz"
    seen = []
    trainer = Trainer(model, losses.CrossEntropyLoss(), opt, scheduler=scheduler,
                      progress=False)
    # min_delta so large that only the first epoch counts as an improvement
    history = trainer.fit(train, epochs=10, val_data=train, early_stopping_patience=2,
                          min_delta=1e9, restore_best=True, checkpoint_path=str(path),
                          callbacks=[lambda t, epoch, logs: seen.append(epoch)])
    assert trainer.stopped_epoch == 3 and len(history["loss"]) == 3 and seen == [1, 2, 3]
    assert history["lr"] == [0.01, 0.005, 0.0025]                 # the scheduler stepped
    assert trainer.best_epoch == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-1.npz"]   # best only
    ckpt = io.load(tmp_path / "ckpt-1.npz")
    assert ckpt.extra["trainer"]["epoch"] == 1
    assert ckpt.scheduler_state["last_epoch"] == 1
    for (name, a), (_, b) in zip(model.named_parameters(), ckpt.model.named_parameters()):
        np.testing.assert_array_equal(a, b, err_msg=name)          # restored best weights


def test_callback_stops_and_custom_metric_and_mse():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((32, 6, 2))
    y = x.sum(axis=(1, 2))[:, None]
    model = nn.SequenceClassifier.build(1, 8, input_size=2, seed=0, n_threads=1)

    def mae(out, targets, mask):
        return float(np.mean(np.abs(out - targets)))
    trainer = Trainer(model, losses.MSELoss(), optim.Adam(model, lr=0.01), metrics=[mae],
                      progress=False)
    history = trainer.fit((x, y), epochs=5, batch_size=8,
                          callbacks=[lambda t, epoch, logs: epoch == 2])
    assert len(history["loss"]) == 2 and "mae" in history and "accuracy" not in history
    with pytest.raises(ValueError, match="cross-entropy"):
        Trainer(model, losses.MSELoss(), optim.SGD(model), metrics=["accuracy"])
    with pytest.raises(ValueError, match="per-step targets"):
        trainer.fit((x, y), epochs=1, bptt=2)


def test_one_shot_iterator_is_refused_for_a_second_epoch():
    model = _tagger()
    rng = np.random.default_rng(6)
    gen = (Batch(rng.standard_normal((4, 2, 2)), rng.integers(0, 3, (4, 2))) for _ in range(2))
    trainer = Trainer(model, losses.CrossEntropyLoss(), optim.SGD(model, lr=0.1),
                      progress=False)
    with pytest.raises(ValueError, match="one-shot iterator"):
        trainer.fit(gen, epochs=2)
    fresh = Trainer(model, losses.CrossEntropyLoss(), optim.SGD(model, lr=0.1), progress=False)
    batches = [Batch(rng.standard_normal((4, 2, 2)), rng.integers(0, 3, (4, 2)))]
    assert len(fresh.fit(lambda: iter(batches), epochs=2)["loss"]) == 2


def test_progress_without_tqdm_prints_one_note(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    monkeypatch.setattr(trainer_module, "_TQDM_NOTE_SHOWN", False)
    model = _tagger()
    rng = np.random.default_rng(7)
    data = (rng.standard_normal((8, 5, 2)), rng.integers(0, 3, (8, 5)))
    trainer = Trainer(model, losses.CrossEntropyLoss(), optim.SGD(model, lr=0.1), seed=0)
    trainer.fit(data, epochs=2, batch_size=4)
    captured = capsys.readouterr()
    assert captured.err.count("tqdm is not installed") == 1
    assert "epoch 1/2" in captured.out and "epoch 2/2" in captured.out
    quiet = Trainer(model, losses.CrossEntropyLoss(), optim.SGD(model, lr=0.1), progress=False)
    quiet.fit(data, epochs=1, batch_size=4)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_bar_reports_loss_and_throughput(monkeypatch):
    postfixes, updates = [], []

    class FakeBar:
        def __init__(self, total=None, desc=None, **kwargs):
            self.total, self.desc = total, desc

        def set_postfix_str(self, text, refresh=True):
            postfixes.append(text)

        def update(self, n=1):
            updates.append(n)

        def close(self):
            pass
    monkeypatch.setattr(trainer_module, "_get_tqdm", lambda: FakeBar)
    model = _tagger()
    rng = np.random.default_rng(8)
    data = (rng.standard_normal((8, 5, 2)), rng.integers(0, 3, (8, 5)))
    Trainer(model, losses.CrossEntropyLoss(), optim.SGD(model, lr=0.1),
            verbose=False).fit(data, epochs=1, batch_size=4)
    assert len(updates) == 2 and all("loss" in p and "tok/s" in p for p in postfixes)


def test_real_tqdm_bar(capsys):
    pytest.importorskip("tqdm")
    model = _tagger()
    rng = np.random.default_rng(8)
    data = (rng.standard_normal((8, 5, 2)), rng.integers(0, 3, (8, 5)))
    Trainer(model, losses.CrossEntropyLoss(), optim.SGD(model, lr=0.1),
            verbose=False).fit(data, epochs=1, batch_size=4)
    assert "epoch 1/1" in capsys.readouterr().err

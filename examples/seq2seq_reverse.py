"""Sequence to sequence: learn to reverse digit strings with an encoder-decoder GRU.

The source is a string of 3 to 10 digits ("40172"), the target the same digits
reversed followed by <eos> ("27104<eos>"). A GRU encoder reads the source (with
`src_lengths`, so padding is never read); its final state starts a GRU decoder
trained with teacher forcing (one full-sequence call per batch). Evaluation is
greedy decoding, one token at a time, on held-out strings that never appear in
training; the metric is exact-match accuracy (every digit and the <eos> right),
and the script asserts that it reaches 90%.

    python examples/seq2seq_reverse.py        # about 15 s on 2 idle cores
"""
import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

import fastrnn
from fastrnn.losses import CrossEntropyLoss
from fastrnn.optim import Adam, CosineAnnealingLR, clip_grad_norm_

TARGET_ACCURACY = 0.90   # exact-match accuracy the script must reach on held-out strings
PAD, BOS, EOS = 0, 1, 2
DIGIT0 = 3               # token of digit d is DIGIT0 + d
VOCAB = DIGIT0 + 10


def make_batch(rng, batch, min_len, max_len, exclude=None):
    """Random digit strings: (src (max_len, batch), src_lengths, tgt (max_len + 1, batch)),
    time-major, padded with PAD; strings in `exclude` (a set of tuples) are redrawn."""
    lengths = rng.integers(min_len, max_len + 1, size=batch)
    strings = []
    for n in lengths:
        while True:
            s = tuple(rng.integers(0, 10, size=n).tolist())
            if exclude is None or s not in exclude:
                break
        strings.append(s)
    return encode(strings, max_len)


def encode(strings, max_len):
    batch = len(strings)
    src = np.full((max_len, batch), PAD, np.int64)
    tgt = np.full((max_len + 1, batch), PAD, np.int64)
    lengths = np.array([len(s) for s in strings], np.int64)
    for b, s in enumerate(strings):
        digits = np.array(s, np.int64) + DIGIT0
        src[:len(s), b] = digits
        tgt[:len(s), b] = digits[::-1]
        tgt[len(s), b] = EOS
    return src, lengths, tgt


def exact_match(model, src, lengths, tgt):
    """Fraction of sequences whose greedy decoding equals the target (digits, <eos>
    and nothing after it)."""
    pred = model.greedy_decode(src, src_lengths=lengths, max_len=tgt.shape[0])
    padded = np.full(tgt.shape, PAD, np.int64)
    padded[:pred.shape[0]] = pred
    return float(np.mean(np.all(padded == tgt, axis=0)))


def main(min_len=3, max_len=10, hidden=128, embedding_dim=32, cell="gru", steps=6000, batch=64,
         lr=3e-3, n_test=1000, eval_every=250, seed=0, check=True, log=True):
    """Train, evaluate on held-out strings, report (and with `check`, assert) the
    exact-match accuracy. Returns a dict of metrics."""
    # NumPy's own matrix products (embeddings, the output Linear) are small: one
    # BLAS thread is faster, and much faster on busy cores (fastrnn's kernels run
    # their own threads and keep BLAS single-threaded).
    with threadpool_limits(limits=1, user_api="blas"):
        return _run(min_len, max_len, hidden, embedding_dim, cell, steps, batch, lr, n_test,
                    eval_every, seed, check, log)


def _run(min_len, max_len, hidden, embedding_dim, cell, steps, batch, lr, n_test, eval_every,
         seed, check, log):
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    # Held-out strings: a test set and a validation set (for early stopping), both
    # excluded from training.
    test = make_batch(rng, n_test, min_len, max_len)
    val = make_batch(rng, min(n_test, 500), min_len, max_len)
    held_out = {tuple((col[:n] - DIGIT0).tolist()) for data in (test, val)
                for col, n in zip(data[0].T, data[1])}

    model = fastrnn.Seq2Seq.build(VOCAB, VOCAB, hidden, embedding_dim=embedding_dim, cell=cell,
                                  bos_idx=BOS, eos_idx=EOS, pad_idx=PAD, seed=seed)
    opt = Adam(model, lr=lr)
    sched = CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.05)
    ce = CrossEntropyLoss(ignore_index=PAD)
    if log:
        print(f"reverse {min_len}-{max_len} digit strings: {cell.upper()} encoder-decoder, "
              f"hidden {hidden}, batch {batch}, {fastrnn.get_num_threads()} threads")
    val_acc, step, running = 0.0, 0, None
    for step in range(1, steps + 1):
        src, lengths, tgt = make_batch(rng, batch, min_len, max_len, exclude=held_out)
        opt.zero_grad()
        logits = model(src, tgt, src_lengths=lengths)
        loss = ce(logits, tgt)
        model.backward(ce.backward())
        clip_grad_norm_(model, 1.0)
        opt.step()
        sched.step()
        running = loss if running is None else 0.95 * running + 0.05 * loss
        if step % eval_every == 0 or step == steps:
            val_acc = exact_match(model, *val)
            if log:
                print(f"  step {step:5d}  loss {running:.4f}  validation exact match "
                      f"{val_acc:.3f}  ({time.perf_counter() - t0:.1f} s)")
            if val_acc >= 0.98:   # early stop: comfortably above the target
                break
    train_time = time.perf_counter() - t0
    test_acc = exact_match(model, *test)
    results = {"test_accuracy": test_acc, "val_accuracy": val_acc, "steps": step,
               "train_s": train_time, "total_s": time.perf_counter() - t0}
    if log:
        src, lengths, tgt = test
        pred = model.greedy_decode(src[:, :3], src_lengths=lengths[:3], max_len=max_len + 1)
        for b in range(3):
            show = "".join(str(t - DIGIT0) if t >= DIGIT0 else "<eos>" if t == EOS else ""
                           for t in pred[:, b])
            print(f"  {''.join(str(t - DIGIT0) for t in src[:lengths[b], b])} -> {show}")
        print(f"held-out exact match: {test_acc:.3f} on {n_test} strings "
              f"(trained {step} steps in {train_time:.1f} s)")
    if check:
        assert test_acc >= TARGET_ACCURACY, results
        print(f"OK: exact-match accuracy {test_acc:.3f} >= {TARGET_ACCURACY}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="gru", choices=["rnn", "lstm", "gru"])
    parser.add_argument("--steps", type=int, default=6000)
    args = parser.parse_args()
    main(cell=args.cell, steps=args.steps)

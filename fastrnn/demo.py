"""``fastrnn demo``: train a character-level language model and sample from it.

By default it trains an LSTM on the opening ~200 KB of Shakespeare shipped in
the package (``fastrnn/data/shakespeare.txt``, public domain), reports the
validation loss and perplexity after every epoch, and prints text sampled from
the trained model. ``--text FILE`` trains on your own text instead.

The pieces are public API: ``load_text()``, ``build_parser()`` / ``main()``,
and ``generate(model, vocab, prime, length, temperature, seed)``, which steps a
trained ``LanguageModel`` one character at a time carrying its state.
"""
import argparse
import os
import sys
import time

import numpy as np

__all__ = ["generate", "load_text", "default_text_path", "build_parser", "add_arguments",
           "main"]

DEFAULT_TEXT = "shakespeare.txt"


def default_text_path():
    """Path of the text shipped with the package."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", DEFAULT_TEXT)


def load_text(path=None):
    """The demo text: ``path`` (UTF-8), or the packaged Shakespeare."""
    if path is None:
        try:
            from importlib import resources
            return (resources.files("fastrnn") / "data" / DEFAULT_TEXT).read_text(
                encoding="utf-8")
        except (ImportError, AttributeError, FileNotFoundError):   # pragma: no cover
            path = default_text_path()
    with open(path, encoding="utf-8") as f:
        return f.read()


def _softmax(logits, temperature):
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max()
    p = np.exp(z)
    return p / p.sum()


def generate(model, vocab, prime="\n", length=300, temperature=0.8, seed=None):
    """Sample ``length`` characters from a trained character language model.

    ``prime`` (non-empty, characters of ``vocab``) is fed through the model
    first; then each sampled character is fed back in with the carried
    recurrent state (eval mode, one step per call). ``temperature`` > 0 scales
    the logits (lower: more conservative); 0 picks the most likely character.
    ``seed`` makes the sample reproducible. Returns the generated text (without
    the prime). The model's train/eval mode is restored afterwards.
    """
    if not prime:
        raise ValueError("prime must be a non-empty string")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    rng = np.random.default_rng(seed)
    batch_first = bool(getattr(model, "batch_first", False))
    was_training = bool(getattr(model, "training", True))
    model.eval()
    ids = vocab.encode(prime)

    def step(tokens, state):
        x = tokens[None, :] if batch_first else tokens[:, None]
        logits = model(x, hx=state) if state is not None else model(x)
        last = logits[0, -1] if batch_first else logits[-1, 0]
        return last, model.final_state

    out = []
    try:
        logits, state = step(ids, None)
        for _ in range(int(length)):
            if temperature == 0:
                token = int(np.argmax(logits))
            else:
                token = int(rng.choice(len(logits), p=_softmax(logits, temperature)))
            out.append(token)
            logits, state = step(np.array([token], dtype=np.int64), state)
    finally:
        model.train(was_training)
    return vocab.decode(out)


def add_arguments(parser):
    """The demo's command-line options (for ``fastrnn demo``)."""
    parser.add_argument("--epochs", type=int, default=7, help="training epochs (default 7)")
    parser.add_argument("--hidden-size", type=int, default=512,
                        help="recurrent hidden size (default 512)")
    parser.add_argument("--cell", choices=["lstm", "gru", "rnn"], default="lstm",
                        help="recurrent cell (default lstm)")
    parser.add_argument("--num-layers", type=int, default=1, help="recurrent layers (default 1)")
    parser.add_argument("--embedding-dim", type=int, default=48,
                        help="character embedding size (default 48)")
    parser.add_argument("--threads", type=int, default=None,
                        help="kernel threads (default: all CPUs this process may use)")
    parser.add_argument("--text", metavar="FILE", default=None,
                        help="train on this UTF-8 text file instead of the packaged "
                             "Shakespeare")
    parser.add_argument("--max-chars", type=int, default=None,
                        help="use only the first N characters of the text")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="parallel streams per batch (default 32)")
    parser.add_argument("--bptt", type=int, default=64,
                        help="truncated-BPTT length in characters (default 64)")
    parser.add_argument("--lr", type=float, default=4e-3, help="Adam learning rate "
                        "(default 4e-3, cosine-annealed to a tenth over the epochs)")
    parser.add_argument("--clip", type=float, default=5.0,
                        help="gradient clipping: max global norm (default 5)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="fraction of the text (its end) held out for validation")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--length", type=int, default=400,
                        help="characters to generate (default 400)")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="sampling temperature (default 0.8; 0 = most likely)")
    parser.add_argument("--prime", default=None,
                        help="text to start the sample with (default: the first line of "
                             "the text)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (the per-epoch lines are still printed)")
    parser.add_argument("--save", metavar="PATH", default=None,
                        help="save the trained model, optimiser and vocabulary to PATH "
                             "(fastrnn.io format; load with fastrnn.io.load)")
    return parser


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastrnn demo",
        description="Train a character-level language model (LSTM by default) on a small "
                    "public-domain Shakespeare text shipped with fastrnn, report the "
                    "validation loss and perplexity per epoch, and print text sampled from "
                    "the trained model.")
    return add_arguments(parser)


def _check_args(args):
    for name in ("epochs", "hidden_size", "num_layers", "embedding_dim", "batch_size", "bptt"):
        value = getattr(args, name)
        if value < (0 if name == "epochs" else 1):
            raise SystemExit(f"fastrnn demo: --{name.replace('_', '-')} must be "
                             f"{'>= 0' if name == 'epochs' else 'positive'}, got {value}")
    if not 0.0 < args.val_fraction < 1.0:
        raise SystemExit("fastrnn demo: --val-fraction must be in (0, 1)")


def main(args=None):
    """Run the demo; ``args`` is an argparse namespace or a list of strings."""
    if args is None or isinstance(args, (list, tuple)):
        args = build_parser().parse_args(args)
    _check_args(args)
    from . import losses, nn, optim
    from ._threads import get_num_threads, set_num_threads
    from .data import CharVocab, StreamBatcher, train_val_split
    from .trainer import Trainer

    if args.threads is not None:
        set_num_threads(args.threads)
    try:
        text = load_text(args.text)
    except OSError as exc:
        raise SystemExit(f"fastrnn demo: cannot read {args.text}: {exc}")
    if args.max_chars is not None:
        text = text[:args.max_chars]
    source = args.text or "Shakespeare (packaged, public domain)"
    vocab = CharVocab.from_text(text)
    ids = vocab.encode(text)
    train, val = train_val_split(ids, args.val_fraction)
    eval_batch = max(1, min(args.batch_size, len(val) // (args.bptt + 1)))
    try:
        train_batches = StreamBatcher(train, args.batch_size, args.bptt)
        val_batches = StreamBatcher(val, eval_batch, args.bptt)
    except ValueError as exc:
        raise SystemExit(f"fastrnn demo: the text is too short ({len(text)} characters) for "
                         f"--batch-size {args.batch_size} and --bptt {args.bptt}: {exc}")

    cell = {"rnn": "rnn_tanh"}.get(args.cell, args.cell)
    model = nn.LanguageModel.build(len(vocab), args.hidden_size, cell=cell,
                                   embedding_dim=args.embedding_dim,
                                   num_layers=args.num_layers, seed=args.seed)
    optimizer = optim.Adam(model, lr=args.lr)
    scheduler = (optim.CosineAnnealingLR(optimizer, T_max=args.epochs, eta_min=args.lr / 10)
                 if args.epochs > 0 else None)
    trainer = Trainer(model, losses.CrossEntropyLoss(), optimizer, clip_grad_norm=args.clip,
                      scheduler=scheduler, progress=not args.no_progress, verbose=True,
                      seed=args.seed, vocab=vocab)
    n_params = sum(p.size for p in model.parameters())
    print(f"fastrnn demo: character-level {args.cell.upper()} language model", flush=True)
    print(f"  text: {source}, {len(text):,} characters, {len(vocab)} distinct; "
          f"{len(train):,} for training, {len(val):,} for validation", flush=True)
    print(f"  model: embedding {args.embedding_dim}, {args.num_layers} x {args.cell.upper()} "
          f"{args.hidden_size}, {n_params:,} parameters; Adam lr {args.lr:g} (cosine), clip "
          f"{args.clip:g}; {args.batch_size} streams x {args.bptt} steps (truncated BPTT); "
          f"{get_num_threads()} threads", flush=True)

    start = time.perf_counter()
    before = trainer.evaluate(val_batches, prefix="val_")
    print(f"epoch 0/{args.epochs}  (untrained) | val_loss {before['val_loss']:.4f}  "
          f"val_ppl {before['val_perplexity']:.2f}", flush=True)
    history = trainer.fit(train_batches, epochs=args.epochs, val_data=val_batches)
    elapsed = time.perf_counter() - start
    final_ppl = (history["val_perplexity"] or [before["val_perplexity"]])[-1] \
        if history else before["val_perplexity"]
    final_loss = (history["val_loss"] or [before["val_loss"]])[-1] \
        if history else before["val_loss"]
    print(f"validation perplexity {before['val_perplexity']:.2f} -> {final_ppl:.2f} (loss "
          f"{before['val_loss']:.3f} -> {final_loss:.3f} nats/char) in {elapsed:.1f} s",
          flush=True)

    prime = args.prime
    if prime is None:
        prime = text.split("\n", 1)[0] + "\n" if "\n" in text[:200] else text[:1]
    try:
        sample = generate(model, vocab, prime=prime, length=args.length,
                          temperature=args.temperature, seed=args.seed)
    except KeyError as exc:
        raise SystemExit(f"fastrnn demo: --prime has characters not in the text: {exc}")
    print(f"\n--- sample (temperature {args.temperature:g}, seed {args.seed}) ---", flush=True)
    print(prime + sample, flush=True)
    print("--- end of sample ---", flush=True)
    if args.save:
        trainer.save(args.save, epoch=len(history.get("loss", [])))
        print(f"saved the model, optimiser and vocabulary to {args.save} "
              f"(load with fastrnn.io.load)", flush=True)
    return 0


if __name__ == "__main__":   # pragma: no cover
    sys.exit(main())

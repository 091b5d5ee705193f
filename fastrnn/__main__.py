"""Command line: ``python -m fastrnn {demo,info,bench}`` (console script ``fastrnn``).

- ``fastrnn demo``: train a character-level LSTM language model on the
  public-domain Shakespeare text shipped in the package (about a minute),
  showing progress and the validation perplexity per epoch, then print text
  sampled from it (``fastrnn demo --help``; ``fastrnn/demo.py``).
- ``fastrnn info``: build and runtime configuration (``fastrnn.show_config()``).
- ``fastrnn bench``: time fastrnn against its NumPy reference, PyTorch and ONNX
  Runtime on the same weights and inputs, and check that they agree
  (``fastrnn bench --help``; see ``bench/README.md``).
"""
import argparse
import sys


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastrnn", description="fastrnn: fast CPU RNN/LSTM/GRU for NumPy.")
    sub = parser.add_subparsers(dest="command", metavar="{demo,info,bench}")
    sub.required = True
    from . import demo
    demo.add_arguments(sub.add_parser(
        "demo", help="train a character-level LSTM language model on Shakespeare and "
                     "sample text from it (about a minute)",
        description="Train a character-level language model (LSTM by default) on a small "
                    "public-domain Shakespeare text shipped with fastrnn (or --text FILE), "
                    "report the validation loss and perplexity per epoch, and print text "
                    "sampled from the trained model."))
    sub.add_parser("info", help="print the build and runtime configuration",
                   description="Print whether OpenMP is on, the thread count and the BLAS "
                               "(fastrnn.show_config()).")
    from ._bench import add_arguments
    bench = sub.add_parser(
        "bench", help="benchmark fastrnn against PyTorch, ONNX Runtime and the reference",
        description="Time fastrnn, its NumPy reference, PyTorch and ONNX Runtime on the "
                    "same weights and inputs (interleaved repetitions, median and min), "
                    "and check that their outputs agree. Exit status 1 if any engine "
                    "disagrees with fastrnn or fails.")
    add_arguments(bench)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from . import demo
        return demo.main(args)
    if args.command == "info":
        import fastrnn
        fastrnn.show_config()
        return 0
    from . import _bench
    return _bench.main(args)


if __name__ == "__main__":
    sys.exit(main())

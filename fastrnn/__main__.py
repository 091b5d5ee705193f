"""Command line: ``python -m fastrnn {info,bench}`` (console script ``fastrnn``).

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
    sub = parser.add_subparsers(dest="command", metavar="{info,bench}")
    sub.required = True
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
    if args.command == "info":
        import fastrnn
        fastrnn.show_config()
        return 0
    from . import _bench
    return _bench.main(args)


if __name__ == "__main__":
    sys.exit(main())

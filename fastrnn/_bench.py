"""The benchmark behind ``python -m fastrnn bench`` (see ``bench/README.md``).

Every engine runs on the same weights and inputs:

- ``fastrnn``: the compiled kernels (float32; ``eval()`` for forward and
  streaming rows, so the packed inference kernels run; training rows call
  ``forward`` then ``backward`` in training mode).
- ``reference``: fastrnn's NumPy oracle (``impl="reference"``), on small rows
  only unless asked for.
- ``torch``: ``torch.nn.LSTM/GRU/RNN`` (``torch.no_grad()`` for inference;
  autograd ``out.backward(grad_out)`` for training). Streaming rows also time
  ``nn.LSTMCell/GRUCell/RNNCell`` and report the faster of module and cell.
- ``onnxruntime``: a graph of the ONNX ``LSTM``/``GRU``/``RNN`` operators built
  with ``onnx.helper`` from the same weights (inference and streaming only).

Repetitions are interleaved round-robin across engines (the starting engine
rotates each round) after a warm-up, and every engine's outputs (and, for
training, ``dx`` and all parameter gradients) are compared with fastrnn's.

torch, onnx and onnxruntime are optional: an engine whose package does not
import is skipped with a note. Nothing here is imported by ``import fastrnn``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

#: Outputs agree when max|a - b| / max(1, max|b|) is below this (float32).
TOLERANCE = 1e-4

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
KINDS = ("forward", "train", "stream")


# ---------------------------------------------------------------------------
# Rows


@dataclasses.dataclass(frozen=True)
class Row:
    """One benchmark case. ``kind``: "forward" (inference over a sequence),
    "train" (forward + backward, every gradient) or "stream" (one time step at
    a time, B=1, the state carried from step to step)."""

    kind: str
    mode: str                 # "LSTM", "GRU" or "RNN"
    T: int
    B: int
    I: int
    H: int
    num_layers: int = 1
    nonlinearity: str = "tanh"  # RNN only
    bidirectional: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.mode not in GATES:
            raise ValueError(f"mode must be one of {sorted(GATES)}, got {self.mode!r}")
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be tanh or relu, got {self.nonlinearity!r}")
        if self.kind == "stream" and (self.T != 1 or self.B != 1):
            raise ValueError("stream rows have T=1 and B=1")
        if self.kind == "stream" and self.bidirectional:
            raise ValueError("stream rows are unidirectional (a reverse direction needs "
                             "the whole sequence)")
        for name in ("T", "B", "I", "H", "num_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")

    @property
    def cell(self):
        return f"RNN({self.nonlinearity})" if self.mode == "RNN" else self.mode

    @property
    def slug(self):
        """The name as one identifier-like token (pytest ids, ``-k``)."""
        return re.sub(r"[^A-Za-z0-9]+", "-", self.name.replace("=", "")).strip("-")

    @property
    def directions(self):
        return 2 if self.bidirectional else 1

    @property
    def name(self):
        layers = (f" L={self.num_layers}" if self.num_layers != 1 else "") + (
            " bi" if self.bidirectional else "")
        if self.kind == "stream":
            return f"stream {self.cell}{layers} B=1 I={self.I} H={self.H}"
        return f"{self.kind} {self.cell}{layers} T={self.T} B={self.B} I={self.I} H={self.H}"

    @property
    def gates(self):
        return GATES[self.mode]

    def layer_input_size(self, layer):
        return self.I if layer == 0 else self.directions * self.H

    @property
    def forward_flops(self):
        """2*T*B*G*H*(I+H) per layer and direction (one call; for stream rows one step)."""
        return sum(2 * self.T * self.B * self.gates * self.H * (self.layer_input_size(l) + self.H)
                   for l in range(self.num_layers)) * self.directions

    @property
    def flops(self):
        """FLOPs of one timed unit: a forward, a training step (3x forward) or a step."""
        return 3 * self.forward_flops if self.kind == "train" else self.forward_flops

    @property
    def weight_bytes_per_step(self):
        """Bytes of weights read at every time step: W_hh of every layer (streaming
        rows also W_ih: with T=1 the input projection cannot be batched over time)."""
        total = 0
        for l in range(self.num_layers):
            cols = self.H + (self.layer_input_size(l) if self.kind == "stream" else 0)
            total += self.gates * self.H * cols * 4
        return total * self.directions

    @property
    def steps_streamed(self):
        """Times the per-step weights are read in one timed unit (training: the
        forward and the backward each read W_hh once per step)."""
        return 2 * self.T if self.kind == "train" else self.T


def parse_row(text):
    """Inverse of ``Row.name``: e.g. "forward LSTM T=3 B=2 I=8 H=8",
    "train LSTM L=2 T=35 B=20 I=650 H=650", "stream GRU B=1 I=64 H=64",
    "forward RNN(relu) T=10 B=4 I=16 H=16", "forward GRU bi T=50 B=8 H=128"
    (bidirectional). I defaults to H, L to 1."""
    parts = text.split()
    if len(parts) < 2:
        raise ValueError(f"cannot parse row {text!r}: expected 'KIND CELL K=V ...'")
    kind = parts[0].lower()
    match = re.fullmatch(r"(LSTM|GRU|RNN)(?:\((tanh|relu)\))?", parts[1], re.IGNORECASE)
    if match is None:
        raise ValueError(f"cannot parse row {text!r}: cell must be LSTM, GRU, RNN, "
                         f"RNN(tanh) or RNN(relu), got {parts[1]!r}")
    mode = match.group(1).upper()
    nonlinearity = (match.group(2) or "tanh").lower()
    values = {}
    bidirectional = False
    for part in parts[2:]:
        if part.lower() == "bi":
            bidirectional = True
            continue
        key, sep, value = part.partition("=")
        if not sep or key.upper() not in ("T", "B", "I", "H", "L") or not value.isdigit():
            raise ValueError(f"cannot parse row {text!r}: bad field {part!r} "
                             f"(expected bi, or T=, B=, I=, H=, L= with integers)")
        values[key.upper()] = int(value)
    if "H" not in values:
        raise ValueError(f"cannot parse row {text!r}: H= is required")
    default_t = 1 if kind == "stream" else None
    T = values.get("T", default_t)
    B = values.get("B", 1 if kind == "stream" else None)
    if T is None or B is None:
        raise ValueError(f"cannot parse row {text!r}: T= and B= are required")
    return Row(kind, mode, T, B, values.get("I", values["H"]), values["H"],
               values.get("L", 1), nonlinearity, bidirectional)


def _suite():
    rows = []
    for mode in ("LSTM", "GRU", "RNN"):
        for T, B, H in ((100, 1, 256), (50, 8, 128), (100, 64, 512)):
            rows.append(Row("forward", mode, T, B, H, H))
    for mode in ("LSTM", "GRU", "RNN"):
        for T, B, H in ((50, 32, 256), (100, 8, 128)):
            rows.append(Row("train", mode, T, B, H, H))
    rows.append(Row("train", "LSTM", 35, 20, 650, 650, num_layers=2))  # PyTorch word LM
    for mode in ("LSTM", "GRU"):
        for H in (64, 256):
            rows.append(Row("stream", mode, 1, 1, H, H))
    return rows


#: The benchmark rows of the performance issue.
ROWS = _suite()


def select_rows(patterns=None, rows=None):
    """Rows whose name (or slug) contains any of the case-insensitive substrings."""
    rows = ROWS if rows is None else rows
    if not patterns:
        return list(rows)
    patterns = [p.strip().lower() for p in patterns if p.strip()]
    return [r for r in rows
            if any(p in r.name.lower() or p in r.slug.lower() for p in patterns)]


# ---------------------------------------------------------------------------
# Problems: the shared weights and inputs of one row


@dataclasses.dataclass
class Problem:
    row: Row
    weights: Dict[str, np.ndarray]   # PyTorch names, float32
    x: np.ndarray                    # (T, B, I); stream rows: unused (see xs)
    grad_out: Optional[np.ndarray]   # (T, B, directions * H) for train rows
    xs: Optional[np.ndarray]         # stream rows: (n, 1, 1, I), one input per step
    steps: int                       # stream rows: steps per timed unit
    check_steps: int                 # stream rows: steps of the agreement check


def make_layer(row, impl="cython", seed=0, n_threads=None):
    import fastrnn
    cls = getattr(fastrnn, row.mode)
    kwargs = dict(num_layers=row.num_layers, bidirectional=row.bidirectional,
                  dtype="float32", seed=seed, impl=impl, n_threads=n_threads)
    if row.mode == "RNN":
        kwargs["nonlinearity"] = row.nonlinearity
    return cls(row.I, row.H, **kwargs)


def make_problem(row, seed=0, steps=100, check_steps=20):
    """Weights (fastrnn's default initialisation, seeded) and standard normal
    inputs. Stream rows: ``steps`` steps per timed unit, ``check_steps`` in the
    agreement check."""
    rng = np.random.default_rng(seed)
    weights = make_layer(row, "reference", seed=seed).state_dict()
    if row.kind == "stream":
        steps, check_steps = max(1, int(steps)), max(1, int(check_steps))
        xs = rng.standard_normal((max(steps, check_steps), 1, 1, row.I)).astype(np.float32)
        return Problem(row, weights, xs[0], None, xs, steps, check_steps)
    x = rng.standard_normal((row.T, row.B, row.I)).astype(np.float32)
    grad_out = (rng.standard_normal((row.T, row.B, row.directions * row.H)).astype(np.float32)
                if row.kind == "train" else None)
    return Problem(row, weights, x, grad_out, None, 1, 0)


# ---------------------------------------------------------------------------
# Engines


@dataclasses.dataclass
class Prepared:
    """An engine ready to run one problem. ``run()`` is the timed unit (one
    forward, one training step, or ``problem.steps`` streaming steps);
    ``check()`` computes afresh and returns named float32 arrays ("out", "h_n",
    "c_n", training also "dx" and "grad:<param>") to compare across engines."""

    run: Callable[[], object]
    check: Callable[[], Dict[str, np.ndarray]]
    label: Optional[str] = None


class Engine:
    """Base class: ``name`` (unique), ``group`` (engines of one group are
    alternatives; the table shows the fastest of them)."""

    name = "engine"
    group = None

    def unavailable(self):
        """None if usable, else the reason it is skipped."""
        return None

    def supports(self, row):
        return True

    def prepare(self, problem, n_threads):
        raise NotImplementedError

    @property
    def group_name(self):
        return self.group or self.name


def _zeros_state(row):
    return np.zeros((row.num_layers, 1, row.H), np.float32)


class FastrnnEngine(Engine):
    name = "fastrnn"
    impl = "cython"

    def prepare(self, problem, n_threads):
        row = problem.row
        layer = make_layer(row, self.impl, n_threads=n_threads)
        layer.load_state_dict(problem.weights)
        is_lstm = row.mode == "LSTM"

        def split(result):
            out, state = result
            return (out,) + (tuple(state) if is_lstm else (state,))

        def named(out, h, c=None):
            arrays = {"out": out, "h_n": h}
            if c is not None:
                arrays["c_n"] = c
            return {k: np.array(v, np.float32) for k, v in arrays.items()}

        if row.kind == "forward":
            layer.eval()
            x = problem.x

            def run():
                return layer(x)

            def check():
                return named(*split(layer(x)))
            return Prepared(run, check)

        if row.kind == "train":
            layer.train()
            x, grad_out = problem.x, problem.grad_out

            def run():
                layer.zero_grad()
                layer(x)
                return layer.backward(grad_out)

            def check():
                layer.zero_grad()
                arrays = named(*split(layer(x)))
                dx, _ = layer.backward(grad_out)
                arrays["dx"] = np.array(dx)
                arrays.update({"grad:" + k: g.copy() for k, g in layer.grads.items()})
                return arrays
            return Prepared(run, check)

        layer.eval()
        xs = problem.xs
        zero = (_zeros_state(row), _zeros_state(row)) if is_lstm else _zeros_state(row)
        state = [zero]

        # layer.step: the streaming API (one step, state carried); xs[t] is (1, 1, I).
        def run():
            hx = state[0]
            for t in range(problem.steps):
                _, hx = layer.step(xs[t][0], hx)
            state[0] = hx

        def check():
            hx, outs = zero, []
            for t in range(problem.check_steps):
                out, hx = layer.step(xs[t][0], hx)
                outs.append(out[None])
            return named(np.concatenate(outs), *(hx if is_lstm else (hx,)))
        return Prepared(run, check)


class ReferenceEngine(FastrnnEngine):
    """fastrnn's NumPy reference: slow; by default only on small rows."""

    name = "reference"
    impl = "reference"
    #: Rows with more FLOPs per timed unit are skipped unless ``force``.
    max_flops = 1e9

    def __init__(self, force=False):
        self.force = force

    def supports(self, row):
        return self.force or row.flops <= self.max_flops


def _import_error(*modules):
    for module in modules:
        try:
            __import__(module)
        except Exception as exc:  # ImportError, or a broken install
            return f"{module} does not import ({type(exc).__name__}: {exc})"
    return None


class TorchEngine(Engine):
    """torch.nn.LSTM/GRU/RNN (the module over the whole sequence)."""

    name = "torch"
    group = "torch"

    def unavailable(self):
        return _import_error("torch")

    def _module(self, problem):
        import torch
        row = problem.row
        kwargs = dict(num_layers=row.num_layers, bidirectional=row.bidirectional)
        if row.mode == "RNN":
            kwargs["nonlinearity"] = row.nonlinearity
        module = getattr(torch.nn, row.mode)(row.I, row.H, **kwargs).float()
        module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in problem.weights.items()})
        return module

    def prepare(self, problem, n_threads):
        import torch
        torch.set_num_threads(n_threads)
        row = problem.row
        module = self._module(problem)
        is_lstm = row.mode == "LSTM"

        def named(out, state):
            hc = state if is_lstm else (state,)
            arrays = {"out": out, "h_n": hc[0]}
            if is_lstm:
                arrays["c_n"] = hc[1]
            return {k: v.detach().numpy().copy() for k, v in arrays.items()}

        if row.kind == "forward":
            module.eval()
            x = torch.from_numpy(problem.x)

            def run():
                with torch.no_grad():
                    return module(x)

            def check():
                return named(*run())
            return Prepared(run, check)

        if row.kind == "train":
            module.train()
            # fastrnn's backward always returns dx: make torch compute it too.
            x = torch.from_numpy(problem.x.copy()).requires_grad_(True)
            grad_out = torch.from_numpy(problem.grad_out)

            def run():
                module.zero_grad(set_to_none=True)
                x.grad = None
                out, _ = module(x)
                out.backward(grad_out)

            def check():
                module.zero_grad(set_to_none=True)
                x.grad = None
                out, state = module(x)
                out.backward(grad_out)
                arrays = named(out, state)
                arrays["dx"] = x.grad.numpy().copy()
                arrays.update({"grad:" + k: p.grad.numpy().copy()
                               for k, p in module.named_parameters()})
                return arrays
            return Prepared(run, check)

        module.eval()
        xs = [torch.from_numpy(x) for x in problem.xs]
        zero = _zeros_state(row)
        zero = ((torch.from_numpy(zero), torch.from_numpy(zero.copy())) if is_lstm
                else torch.from_numpy(zero))
        state = [zero]

        def run():
            with torch.no_grad():
                hx = state[0]
                for t in range(problem.steps):
                    _, hx = module(xs[t], hx)
                state[0] = hx

        def check():
            with torch.no_grad():
                hx, outs = zero, []
                for t in range(problem.check_steps):
                    out, hx = module(xs[t], hx)
                    outs.append(out)
                return named(torch.cat(outs), hx)
        return Prepared(run, check, label="module")


class TorchCellEngine(TorchEngine):
    """torch.nn.LSTMCell/GRUCell/RNNCell stepping (streaming rows, one layer)."""

    name = "torch.cell"
    group = "torch"

    def supports(self, row):
        return row.kind == "stream" and row.num_layers == 1

    def prepare(self, problem, n_threads):
        import torch
        torch.set_num_threads(n_threads)
        row = problem.row
        kwargs = {"nonlinearity": row.nonlinearity} if row.mode == "RNN" else {}
        cell = getattr(torch.nn, row.mode + "Cell")(row.I, row.H, **kwargs).float().eval()
        cell.load_state_dict({k[:-3]: torch.from_numpy(v.copy())
                              for k, v in problem.weights.items()})  # weight_ih_l0 -> weight_ih
        is_lstm = row.mode == "LSTM"
        xs = [torch.from_numpy(x[0]) for x in problem.xs]  # (1, I) each
        zero = torch.zeros(1, row.H)
        zero = (zero, zero.clone()) if is_lstm else zero
        state = [zero]

        def run():
            with torch.no_grad():
                hx = state[0]
                for t in range(problem.steps):
                    hx = cell(xs[t], hx)
                state[0] = hx

        def check():
            with torch.no_grad():
                hx, outs = zero, []
                for t in range(problem.check_steps):
                    hx = cell(xs[t], hx)
                    outs.append((hx[0] if is_lstm else hx)[None])
                hc = hx if is_lstm else (hx,)
                arrays = {"out": torch.cat(outs), "h_n": hc[0][None]}
                if is_lstm:
                    arrays["c_n"] = hc[1][None]
                return {k: v.numpy().copy() for k, v in arrays.items()}
        return Prepared(run, check, label="cell")


# ONNX gate orders from PyTorch's: LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h.
_ONNX_GATE_ORDER = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "RNN": [0]}
ONNX_OPSET = 17


def _onnx_gates(array, mode, hidden):
    order = _ONNX_GATE_ORDER[mode]
    blocks = array.reshape((len(order), hidden) + array.shape[1:])
    return np.ascontiguousarray(blocks[order].reshape(array.shape))


def onnx_model(row, weights):
    """An ONNX model of ``row``'s layer: inputs "x" (T, B, I) and per layer
    "h0_l{k}" (and "c0_l{k}") of shape (D, B, H) (D = 2 directions for a
    bidirectional row, else 1); outputs "out" (T, B, D*H), "h_n" (L*D, B, H)
    and for LSTM "c_n". Built with ``onnx.helper`` from the ONNX LSTM/GRU/RNN
    operators (GRU with linear_before_reset=1, PyTorch's)."""
    from onnx import TensorProto, checker, helper, numpy_helper

    mode, H, T, B, D = row.mode, row.H, row.T, row.B, row.directions
    suffixes = ["", "_reverse"][:D]
    is_lstm = mode == "LSTM"
    inits, nodes, inputs = [], [], [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, B, row.I])]
    layer_input = "x"
    finals = {"h": [], "c": []}
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "squeeze_axes"))
    inits.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), "out_shape"))
    for l in range(row.num_layers):
        W = np.stack([_onnx_gates(weights[f"weight_ih_l{l}{d}"], mode, H) for d in suffixes])
        R = np.stack([_onnx_gates(weights[f"weight_hh_l{l}{d}"], mode, H) for d in suffixes])
        Bias = np.stack([np.concatenate([_onnx_gates(weights[f"bias_ih_l{l}{d}"], mode, H),
                                         _onnx_gates(weights[f"bias_hh_l{l}{d}"], mode, H)])
                         for d in suffixes])
        for name, value in (("W", W), ("R", R), ("B", Bias)):
            inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_l{l}"))
        states = ["h"] + (["c"] if is_lstm else [])
        for s in states:
            inputs.append(helper.make_tensor_value_info(f"{s}0_l{l}", TensorProto.FLOAT,
                                                        [D, B, H]))
        node_inputs = [layer_input, f"W_l{l}", f"R_l{l}", f"B_l{l}", "", f"h0_l{l}"]
        if is_lstm:
            node_inputs.append(f"c0_l{l}")
        node_outputs = [f"Y_l{l}"] + [f"Y{s}_l{l}" for s in states]
        attrs = {"hidden_size": H, "direction": "bidirectional" if D == 2 else "forward"}
        if mode == "GRU":
            attrs["linear_before_reset"] = 1
        if mode == "RNN":
            attrs["activations"] = ["Tanh" if row.nonlinearity == "tanh" else "Relu"] * D
        nodes.append(helper.make_node(mode, node_inputs, node_outputs, name=f"{mode}_l{l}",
                                      **attrs))
        layer_out = "out" if l == row.num_layers - 1 else f"seq_l{l}"
        if D == 1:
            # Y is (T, num_directions=1, B, H): drop the direction axis.
            nodes.append(helper.make_node("Squeeze", [f"Y_l{l}", "squeeze_axes"], [layer_out]))
        else:
            # Y is (T, 2, B, H): to (T, B, 2, H), then (T, B, 2*H) as PyTorch's out.
            nodes.append(helper.make_node("Transpose", [f"Y_l{l}"], [f"Yt_l{l}"],
                                          perm=[0, 2, 1, 3]))
            nodes.append(helper.make_node("Reshape", [f"Yt_l{l}", "out_shape"], [layer_out]))
        layer_input = layer_out
        for s in states:
            finals[s].append(f"Y{s}_l{l}")
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [T, B, D * H])]
    for s in ["h"] + (["c"] if is_lstm else []):
        if len(finals[s]) == 1:
            nodes.append(helper.make_node("Identity", finals[s], [f"{s}_n"]))
        else:
            nodes.append(helper.make_node("Concat", finals[s], [f"{s}_n"], axis=0))
        outputs.append(helper.make_tensor_value_info(f"{s}_n", TensorProto.FLOAT,
                                                     [row.num_layers * D, B, H]))
    graph = helper.make_graph(nodes, f"fastrnn_bench_{mode}", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="fastrnn-bench")
    model.ir_version = 8
    checker.check_model(model)
    return model


class OrtEngine(Engine):
    """ONNX Runtime (CPU provider) on a graph of ONNX LSTM/GRU/RNN operators.
    Session: intra_op_num_threads = the thread count, inter_op 1, sequential."""

    name = "onnxruntime"

    def unavailable(self):
        return _import_error("onnx", "onnxruntime")

    def supports(self, row):
        return row.kind in ("forward", "stream")

    def session(self, row, weights, n_threads):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = n_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        return ort.InferenceSession(onnx_model(row, weights).SerializeToString(),
                                    sess_options=options, providers=["CPUExecutionProvider"])

    def prepare(self, problem, n_threads):
        row = problem.row
        sess = self.session(row, problem.weights, n_threads)
        is_lstm = row.mode == "LSTM"
        states = ["h"] + (["c"] if is_lstm else [])
        output_names = ["out"] + [f"{s}_n" for s in states]

        D = row.directions

        def feeds(x, state_arrays):
            fed = {"x": x}
            for s, array in zip(states, state_arrays):
                for l in range(row.num_layers):
                    fed[f"{s}0_l{l}"] = array[l * D:(l + 1) * D]
            return fed

        def named(results):
            return {k: np.array(v, np.float32) for k, v in zip(output_names, results)}

        zeros = [np.zeros((row.num_layers * D, row.B, row.H), np.float32) for _ in states]
        if row.kind == "forward":
            fed = feeds(problem.x, zeros)

            def run():
                return sess.run(output_names, fed)

            def check():
                return named(run())
            return Prepared(run, check)

        xs = problem.xs
        state = [zeros]

        def run():
            hx = state[0]
            for t in range(problem.steps):
                hx = sess.run(output_names, feeds(xs[t], hx))[1:]
            state[0] = hx

        def check():
            hx, outs = zeros, []
            for t in range(problem.check_steps):
                results = sess.run(output_names, feeds(xs[t], hx))
                outs.append(results[0])
                hx = results[1:]
            return named([np.concatenate(outs)] + list(hx))
        return Prepared(run, check)


def default_engines(torch=True, ort=True, reference=None):
    """fastrnn, reference (None: small rows only; True: all; False: none),
    torch (module and, for streaming, cell) and onnxruntime."""
    engines = [FastrnnEngine()]
    if reference is not False:
        engines.append(ReferenceEngine(force=bool(reference)))
    if torch:
        engines += [TorchEngine(), TorchCellEngine()]
    if ort:
        engines.append(OrtEngine())
    return engines


# ---------------------------------------------------------------------------
# Agreement


def max_error(actual, expected):
    """max over the arrays both have of max|a - e| / max(1, max|e|); NaN, inf
    and a shape mismatch count as disagreements (inf error). Raises if "out" or
    "h_n" is missing."""
    common = [k for k in expected if k in actual]
    for key in ("out", "h_n"):
        if key not in common:
            raise KeyError(f"agreement check: {key!r} missing from an engine's outputs")
    worst = 0.0
    for key in common:
        a = np.asarray(actual[key], np.float64)
        e = np.asarray(expected[key], np.float64)
        if a.shape != e.shape:
            return math.inf
        diff = np.abs(a - e)
        if not np.all(np.isfinite(diff)):
            return math.inf
        scale = max(1.0, float(np.max(np.abs(e))) if e.size else 1.0)
        worst = max(worst, float(np.max(diff)) / scale if diff.size else 0.0)
    return worst


# ---------------------------------------------------------------------------
# Machine: GEMM peak and copy bandwidth, measured in the same run


class Machine:
    """Measures (and caches) the float32 GEMM peak for a thread count and the
    copy bandwidth of a buffer size. ``gemm_size`` = 0 skips the GEMM peaks."""

    def __init__(self, gemm_size=2048, gemm_repeat=3, torch=True):
        self.gemm_size = int(gemm_size)
        self.torch = bool(torch)
        self.gemm_repeat = max(1, int(gemm_repeat))
        self._peaks = {}
        self._bandwidth = {}

    def gemm_peaks(self, n_threads):
        """{"scipy.sgemm": flop/s, "torch.mm": flop/s, "torch.mkldnn": flop/s}
        (None where unavailable). torch.mm calls MKL; torch.mkldnn is oneDNN's
        inner product, which JITs AVX-512 code on CPUs (e.g. AMD) where MKL and
        OpenBLAS run AVX2 kernels, and is then twice as fast."""
        if n_threads not in self._peaks:
            self._peaks[n_threads] = {"scipy.sgemm": self._sgemm(n_threads),
                                      "torch.mm": self._torch_mm(n_threads),
                                      "torch.mkldnn": self._torch_mm(n_threads, mkldnn=True)}
        return self._peaks[n_threads]

    def best_peak(self, n_threads):
        """(flop/s, source) of the faster GEMM, or (None, None)."""
        peaks = {k: v for k, v in self.gemm_peaks(n_threads).items() if v}
        if not peaks:
            return None, None
        source = max(peaks, key=peaks.get)
        return peaks[source], source

    def _best_time(self, fn, min_seconds=0.3, max_calls=50):
        """Best of at least ``gemm_repeat`` calls and ``min_seconds`` of calls."""
        settle()
        fn()
        best, calls, began = math.inf, 0, time.perf_counter()
        while calls < self.gemm_repeat or (time.perf_counter() - began < min_seconds
                                           and calls < max_calls):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
            calls += 1
        return best

    def _sgemm(self, n_threads):
        n = self.gemm_size
        if n <= 0:
            return None
        from scipy.linalg.blas import sgemm
        from threadpoolctl import threadpool_limits
        rng = np.random.default_rng(0)
        a = np.asfortranarray(rng.standard_normal((n, n), dtype=np.float32))
        b = np.asfortranarray(rng.standard_normal((n, n), dtype=np.float32))
        c = np.zeros((n, n), np.float32, order="F")
        with threadpool_limits(limits=n_threads, user_api="blas"):
            seconds = self._best_time(lambda: sgemm(1.0, a, b, c=c, overwrite_c=1))
        return 2.0 * n ** 3 / seconds

    def _torch_mm(self, n_threads, mkldnn=False):
        n = self.gemm_size
        if n <= 0 or not self.torch or _import_error("torch"):
            return None
        import torch
        old = torch.get_num_threads()
        torch.set_num_threads(n_threads)
        try:
            gen = torch.Generator().manual_seed(0)
            a = torch.randn(n, n, generator=gen)
            b = torch.randn(n, n, generator=gen)
            if mkldnn:
                if not torch.backends.mkldnn.is_available():
                    return None
                a, b = a.to_mkldnn(), b.to_mkldnn()
                linear = torch._C._nn.mkldnn_linear   # a @ b.T
                fn = lambda: linear(a, b)  # noqa: E731
            else:
                c = torch.empty(n, n)
                fn = lambda: torch.mm(a, b, out=c)  # noqa: E731
            seconds = self._best_time(fn)
        except Exception:   # private oneDNN entry point: best effort
            if not mkldnn:
                raise
            return None
        finally:
            torch.set_num_threads(old)
        return 2.0 * n ** 3 / seconds

    @staticmethod
    def cross_core():
        """{"across": bytes/s, "own": bytes/s, "cpus": ...} of
        fastrnn._openmp.cross_core_read (a 4 MB buffer), or None. Measured now:
        on a virtual machine it changes from minute to minute."""
        from fastrnn import _openmp
        return _openmp.cross_core_read()

    def copy_bandwidth(self, nbytes):
        """Bytes/s moved (read + written) copying one half of an ``nbytes``
        buffer onto the other, single-threaded: the working set is ``nbytes``,
        so it is the rate at which a buffer that size can be streamed."""
        nbytes = max(64, int(nbytes) // 64 * 64)
        if nbytes not in self._bandwidth:
            inner = min(2000, max(1, int(2e6 // nbytes)))   # ~2 MB per timed chunk
            # Best of many short rounds (noise on a shared machine), and best of
            # several buffers: whether a buffer the size of L2 fits in it depends
            # on where its pages land (1 MiB here: 68 GB/s in one process of six,
            # 159-187 in the others), and a lower bound takes the luckiest. The
            # buffers stay alive so that each one gets pages of its own.
            buffers, best = [], math.inf
            for _ in range(4):
                buf = np.ones(nbytes // 4, np.float32)
                buffers.append(buf)
                half = buf.size // 2
                src, dst = buf[:half], buf[half:2 * half]
                np.copyto(dst, src)
                for _ in range(30):
                    start = time.perf_counter()
                    for _ in range(inner):
                        np.copyto(dst, src)
                    best = min(best, (time.perf_counter() - start) / inner)
            self._bandwidth[nbytes] = 2 * half * 4 / best
        return self._bandwidth[nbytes]


def physical_limit(row, n_threads, machine):
    """Lower-bound estimate of one timed unit: max(FLOPs / best GEMM peak,
    per-step weight bytes (per thread) x steps / copy bandwidth of a buffer that
    size). Returns a dict, or None without a GEMM peak."""
    peak, source = machine.best_peak(n_threads)
    if not peak:
        return None
    compute = row.flops / peak
    per_thread = row.weight_bytes_per_step / n_threads
    bandwidth = machine.copy_bandwidth(per_thread)
    memory = row.steps_streamed * per_thread / bandwidth
    return {"seconds": max(compute, memory), "compute_seconds": compute,
            "memory_seconds": memory, "peak_flops": peak, "peak_source": source,
            "bytes_per_step_per_thread": per_thread, "bandwidth": bandwidth,
            "bound": "compute" if compute >= memory else "memory"}


# ---------------------------------------------------------------------------
# Running


@dataclasses.dataclass
class EngineResult:
    name: str
    group: str
    label: Optional[str]
    times: List[float]           # seconds per timed unit (stream rows: per step)
    error: Optional[float]       # max_error against fastrnn (fastrnn: None)
    agree: Optional[bool]

    @property
    def median(self):
        return statistics.median(self.times)

    @property
    def min(self):
        return min(self.times)


@dataclasses.dataclass
class RowResult:
    row: Row
    n_threads: int
    repeat: int
    engines: Dict[str, EngineResult]
    notes: List[str]
    limit: Optional[dict] = None
    peaks: Optional[dict] = None
    steps: int = 1               # stream rows: steps per timed round
    cores: Optional[dict] = None  # threads > 1: Machine.cross_core() after the row

    @property
    def agree(self):
        """False if any engine disagrees with fastrnn or failed."""
        return (all(e.agree is not False for e in self.engines.values())
                and not any(n.startswith("ERROR") for n in self.notes))

    def best_of_groups(self):
        """One engine per group (the fastest by median), fastrnn first."""
        best = {}
        for e in self.engines.values():
            if e.group not in best or e.median < best[e.group].median:
                best[e.group] = e
        return sorted(best.values(), key=lambda e: (e.name != "fastrnn", _order(e.group)))

    def ratio(self, engine):
        """engine's median / fastrnn's (>1: fastrnn faster)."""
        return self.engines[engine].median / self.engines["fastrnn"].median

    def to_dict(self):
        engines = {}
        for e in self.engines.values():
            engines[e.name] = {"group": e.group, "label": e.label, "median_s": e.median,
                               "min_s": e.min, "times_s": e.times, "error": e.error,
                               "agree": e.agree}
        return {"row": self.row.name, "kind": self.row.kind, "n_threads": self.n_threads,
                "repeat": self.repeat, "flops": self.row.flops, "engines": engines,
                "notes": self.notes, "limit": self.limit, "gemm_peaks": self.peaks,
                "cross_core_read": self.cores, "agree": self.agree}


def _order(group):
    order = ["fastrnn", "torch", "onnxruntime", "reference"]
    return order.index(group) if group in order else len(order)


class _ThreadSettings:
    """BLAS limited to n threads (threadpoolctl), torch set to n (restored)."""

    def __init__(self, n_threads):
        self.n = n_threads

    def __enter__(self):
        from threadpoolctl import threadpool_limits
        self._limits = threadpool_limits(limits=self.n, user_api="blas")
        torch = sys.modules.get("torch")
        self._torch_old = torch.get_num_threads() if torch is not None else None
        if torch is not None:
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        self._limits.restore_original_limits()
        torch = sys.modules.get("torch")
        if torch is not None and self._torch_old is not None:
            torch.set_num_threads(self._torch_old)
        return False


def choose_repeat(round_seconds, budget=2.0, low=5, high=20):
    """Repetitions so that the interleaved rounds take about ``budget`` seconds."""
    if round_seconds <= 0:
        return high
    return int(min(high, max(low, math.ceil(budget / round_seconds))))


def settle(max_wait=0.2, window=0.002, busy=0.25, quiet=4):
    """Sleep until this process's worker threads stop spinning: until ``quiet``
    windows in a row of ``window`` seconds of sleep each cost less than
    ``busy`` x window of process CPU time (at most ``max_wait`` seconds).
    OpenMP (libgomp), ONNX Runtime and OpenBLAS thread pools busy-wait after a
    call (here: ~10 ms for libgomp, ~40 ms for ONNX Runtime, whose threads
    spin in bursts, so a single quiet window is not enough), which would slow
    down the next engine. Returns the seconds waited."""
    start = time.perf_counter()
    quiet_windows = 0
    while time.perf_counter() - start < max_wait:
        cpu = time.process_time()
        time.sleep(window)
        if time.process_time() - cpu < busy * window:
            quiet_windows += 1
            if quiet_windows >= quiet:
                break
        else:
            quiet_windows = 0
    return time.perf_counter() - start


# Untimed calls before a timed one (calls under 20 ms).
PRIME_SECONDS = 0.02


def _prime(run, seconds=PRIME_SECONDS):
    """Untimed calls of ``run`` for ``seconds`` (at least one), so the timed
    call runs as in a loop of calls. After the idle wait of ``settle``, a few
    calls are not enough for the second core to be back at speed here: a
    2-thread LSTM at batch 8 took 0.43 ms after one call, 0.32-0.42 ms after
    5 ms of calls and 0.25 ms after 20 ms (as in a loop of calls, and as after
    100 ms); ONNX Runtime's, 0.57 ms after 5 ms, 0.41 ms after 20 ms. On one
    thread, right after the other engines' turns the first call finds its data
    out of the caches: GRU at batch 8 0.36 ms against 0.34 ms primed, ONNX
    Runtime 0.51 against 0.48 (two runs minutes apart)."""
    end = time.perf_counter() + seconds
    run()
    while time.perf_counter() < end:
        run()


def run_row(row, n_threads=1, engines=None, repeat=None, machine=None, steps=100, seed=0,
            budget=2.0, pause=0.0, settle_threads=None, warmup=None, problem=None):
    """Benchmark one row on ``n_threads``; returns a RowResult.

    The fastrnn engine is required (the others are compared with it). Engines
    that are unavailable, do not support the row, or fail are skipped with a
    note (a failure is an "ERROR" note and makes ``agree`` False). ``repeat``
    None picks 5..20 rounds to fit ``budget`` seconds.

    Each engine's turn in a round is: with ``settle_threads`` (default: when
    ``n_threads`` > 1), wait until the process's worker threads are idle
    (``settle``: thread pools of libgomp, ONNX Runtime and OpenBLAS busy-wait
    for 10-30 ms after a call, which slows down whichever engine runs next);
    when its calls are short (< 20 ms), untimed calls of the engine for
    PRIME_SECONDS (they wake its pool and the second core, and bring its
    weights and buffers back into the caches after the other engines' turns,
    as in a loop of calls); then the timed call. ``pause`` seconds of sleep
    follow every call.
    """
    engines = default_engines() if engines is None else list(engines)
    if not any(e.name == "fastrnn" for e in engines):
        raise ValueError("run_row needs the 'fastrnn' engine (the others are compared to it)")
    problem = make_problem(row, seed=seed, steps=steps) if problem is None else problem
    do_settle = n_threads > 1 if settle_threads is None else bool(settle_threads)

    def rest():
        waited = settle() if do_settle else 0.0
        if pause:
            time.sleep(pause)
        return waited + pause

    notes = []
    prepared = {}
    with _ThreadSettings(n_threads):
        for engine in engines:
            reason = engine.unavailable()
            if reason:
                notes.append(f"{engine.name} skipped: {reason}")
                continue
            if not engine.supports(row):
                continue
            try:
                prepared[engine.name] = (engine, engine.prepare(problem, n_threads))
            except Exception as exc:
                if engine.name == "fastrnn":
                    raise
                notes.append(f"ERROR {engine.name} failed to prepare: {type(exc).__name__}: {exc}")

        # Agreement, on a fresh computation (this is also the first warm-up call).
        outputs = {}
        for name, (engine, prep) in list(prepared.items()):
            try:
                outputs[name] = prep.check()
            except Exception as exc:
                if name == "fastrnn":
                    raise
                notes.append(f"ERROR {name} failed: {type(exc).__name__}: {exc}")
                del prepared[name]
        errors = {name: (None if name == "fastrnn" else max_error(out, outputs["fastrnn"]))
                  for name, out in outputs.items()}

        # Warm-up (after the check call), timed to choose the repetitions.
        call = {}      # seconds of one call
        overhead = {}  # seconds of settling, pausing and priming around one call
        for name, (engine, prep) in prepared.items():
            rest()
            count = 2 if warmup is None else warmup
            for i in range(count):
                start = time.perf_counter()
                prep.run()
                call[name] = time.perf_counter() - start
                overhead[name] = rest()
                if warmup is None and call[name] > 0.2:
                    break                       # a big row: one warm-up call is enough
        prime = {name: call.get(name, 0.0) < 0.02 for name in prepared}
        if repeat is None:
            round_seconds = sum(call[n] + (max(call[n], PRIME_SECONDS) if prime[n] else 0)
                                + overhead[n] for n in call)
            repeat = choose_repeat(round_seconds, budget)
        repeat = max(1, int(repeat))

        # Interleaved repetitions: each round runs every engine once, starting
        # from a different engine each round.
        names = list(prepared)
        times = {name: [] for name in names}
        perf = time.perf_counter
        for r in range(repeat):
            for i in range(len(names)):
                name = names[(r + i) % len(names)]
                run = prepared[name][1].run
                if prime[name]:
                    _prime(run)
                start = perf()
                run()
                times[name].append(perf() - start)
                rest()

    per_unit = problem.steps if row.kind == "stream" else 1
    results = {}
    for name in names:
        engine, prep = prepared[name]
        err = errors[name]
        results[name] = EngineResult(
            name, engine.group_name, prep.label, [t / per_unit for t in times[name]], err,
            None if err is None else bool(err < TOLERANCE))
    result = RowResult(row, n_threads, repeat, results, notes, steps=problem.steps)
    if machine is not None:
        result.peaks = machine.gemm_peaks(n_threads)
        result.limit = physical_limit(row, n_threads, machine)
        if n_threads > 1:
            result.cores = machine.cross_core()
    return result


# ---------------------------------------------------------------------------
# Reporting


def _unit(row):
    return ("us", 1e6) if row.kind == "stream" else ("ms", 1e3)


def _fmt_time(seconds, row):
    unit, scale = _unit(row)
    value = seconds * scale
    digits = 3 if value < 10 else 2 if value < 100 else 1
    return f"{value:.{digits}f} {unit}"


def _engine_label(e):
    return f"{e.group} ({e.label})" if e.label else e.name


def _gflops(row, seconds):
    return row.flops / seconds / 1e9


def format_row(result):
    """The text table of one row and thread count."""
    row = result.row
    what = "per step" if row.kind == "stream" else "per call"
    lines = [f"{row.name} | threads={result.n_threads} | {_fmt_flops(row.flops)} {what} | "
             f"{result.repeat} rounds"
             + (f" x {result.steps} steps" if row.kind == "stream" else "")]
    peak = result.limit["peak_flops"] if result.limit else None
    header = f"  {'engine':<20} {'median':>11} {'min':>11} {'GFLOP/s':>8} {'%peak':>6} " \
             f"{'x fastrnn':>9}  agree"
    lines.append(header)
    for e in result.best_of_groups():
        gflops = _gflops(row, e.median)
        pct = f"{100 * gflops * 1e9 / peak:5.1f}%" if peak else "     -"
        if e.name == "fastrnn":
            agree = "(base)"
        elif e.agree:
            agree = f"yes ({e.error:.1e})"
        else:
            agree = f"NO ({e.error:.1e})"
        lines.append(f"  {_engine_label(e):<20} {_fmt_time(e.median, row):>11} "
                     f"{_fmt_time(e.min, row):>11} {gflops:8.2f} {pct:>6} "
                     f"{result.ratio(e.name):9.2f}  {agree}")
    limit = result.limit
    if limit:
        fast = result.engines["fastrnn"].median
        steps = "1 step" if row.kind == "stream" else f"{row.steps_streamed} steps"
        lines.append(
            f"  physical limit {_fmt_time(limit['seconds'], row)} ({limit['bound']}-bound) = "
            f"max(compute {_fmt_time(limit['compute_seconds'], row)} at "
            f"{limit['peak_flops'] / 1e9:.1f} GFLOP/s [{limit['peak_source']}], weights "
            f"{_fmt_time(limit['memory_seconds'], row)}: {steps} x "
            f"{_fmt_bytes(limit['bytes_per_step_per_thread'])}/thread at "
            f"{limit['bandwidth'] / 1e9:.0f} GB/s); fastrnn at "
            f"{100 * limit['seconds'] / fast:.0f}% of it")
    if result.cores:
        lines.append(f"  {_fmt_cores(result.cores)} (after the row)")
    for note in result.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def _fmt_cores(cores):
    """One line of Machine.cross_core()."""
    return (f"cross-core reads: {cores['across'] / 1e9:.0f} GB/s, "
            f"{100 * cores['across'] / cores['own']:.0f}% of a CPU's own writes "
            f"({cores['own'] / 1e9:.0f} GB/s)")


def _fmt_flops(n):
    for unit, scale in (("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if n >= scale:
            return f"{n / scale:.{2 if unit == 'GFLOP' else 1}f} {unit}"
    return f"{n:.0f} FLOP"


def _fmt_bytes(n):
    for unit, scale in (("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def format_markdown(results, machine=None):
    """One Markdown table: a line per row and thread count."""
    groups = []
    for r in results:
        for e in r.best_of_groups():
            if e.group != "fastrnn" and e.group not in groups:
                groups.append(e.group)
    groups.sort(key=_order)
    head = (["row", "threads", "fastrnn"] + groups
            + ["fastrnn GFLOP/s", "% GEMM peak", "% of limit", "agree"])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in results:
        best = {e.group: e for e in r.best_of_groups()}
        fast = best["fastrnn"]
        cells = [f"`{r.row.name}`", str(r.n_threads), _fmt_time(fast.median, r.row)]
        for g in groups:
            e = best.get(g)
            if e is None:
                cells.append("-")
                continue
            variant = f" {e.label}" if e.label else ""
            cells.append(f"{_fmt_time(e.median, r.row)} ({r.ratio(e.name):.2f}x){variant}")
        gflops = _gflops(r.row, fast.median)
        cells.append(f"{gflops:.1f}")
        peak = r.limit["peak_flops"] if r.limit else None
        cells.append(f"{100 * gflops * 1e9 / peak:.0f}%" if peak else "-")
        cells.append(f"{100 * r.limit['seconds'] / fast.median:.0f}%" if r.limit else "-")
        cells.append("yes" if r.agree else "**NO**")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment_lines(threads, machine=None, engines=()):
    import fastrnn
    lines = [f"fastrnn {fastrnn.__version__}"]
    try:
        from fastrnn import _config, _packed
        cfg = _config.config()
        lines[0] += (f" (OpenMP {'on' if cfg['openmp'] else 'off'}, packed kernels: "
                     f"{_packed.get_isa()}; {cfg['blas']})")
    except Exception:  # pragma: no cover - informational only
        pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = " | load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    lines.append(f"CPU: {cpu}, {os.cpu_count()} logical CPUs{load} | Python "
                 f"{platform.python_version()}, NumPy {np.__version__}")
    versions = []
    for module, engine in (("torch", "torch"), ("onnxruntime", "onnxruntime")):
        if any(e.group_name == engine for e in engines):
            mod = sys.modules.get(module)
            if mod is not None:
                versions.append(f"{module} {mod.__version__}")
    if versions:
        lines.append("peers: " + ", ".join(versions))
    if machine is not None and max(threads) > 1:
        cores = machine.cross_core()
        if cores:
            lines.append(f"{_fmt_cores(cores)}, 4 MB written by one thread of two, then "
                         f"read by the other, CPUs {cores['cpus'][0]} and {cores['cpus'][1]}")
    if machine is not None and machine.gemm_size > 0:
        for n in threads:
            peaks = machine.gemm_peaks(n)
            text = ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items() if v)
            lines.append(f"GEMM peak ({machine.gemm_size}^3 float32, {n} thread"
                         f"{'s' if n != 1 else ''}): {text}")
    return lines


# ---------------------------------------------------------------------------
# Command line


def add_arguments(parser):
    parser.add_argument("--rows", default=None,
                        help="comma-separated substrings: run the rows whose name contains "
                             "any (case-insensitive), e.g. 'forward LSTM,stream'")
    parser.add_argument("--row", action="append", default=[], metavar="SPEC",
                        help="an extra row, e.g. 'forward LSTM T=3 B=2 I=8 H=8' or "
                             "'stream GRU H=64' or 'train LSTM L=2 T=35 B=20 H=650' or "
                             "'forward GRU bi T=50 B=8 H=128' (bi: bidirectional; "
                             "repeatable; with --row only these rows run unless --rows)")
    parser.add_argument("--list", action="store_true",
                        help="list the rows (those selected by --rows/--row) and exit")
    parser.add_argument("--threads", default="1,2",
                        help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="interleaved rounds per row (default: 5..20 to fit --budget)")
    parser.add_argument("--budget", type=float, default=1.5,
                        help="seconds of timed rounds per row and thread count when "
                             "--repeat is not given (default 1.5)")
    parser.add_argument("--steps", type=int, default=100,
                        help="streaming rows: steps per timed round (default 100)")
    parser.add_argument("--pause", type=float, default=0.0,
                        help="extra seconds to sleep after each timed call (default 0)")
    settle_group = parser.add_mutually_exclusive_group()
    settle_group.add_argument(
        "--settle", dest="settle", action="store_true", default=None,
        help="before each timed call wait until the worker threads of the previous engine "
             "stop spinning (default: on with more than 1 thread)")
    settle_group.add_argument("--no-settle", dest="settle", action="store_false",
                              help="never wait for worker threads to go idle")
    parser.set_defaults(settle=None)
    parser.add_argument("--gemm-size", type=int, default=2048,
                        help="N of the NxNxN float32 GEMM timed for the peak "
                             "(default 2048; 0 skips the peak and physical limit)")
    parser.add_argument("--markdown", action="store_true",
                        help="also print one Markdown table of all rows (for bench/README.md)")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="write all results, with every timing, to a JSON file")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime")
    ref = parser.add_mutually_exclusive_group()
    ref.add_argument("--reference", action="store_true",
                     help="time the NumPy reference on every row (slow)")
    ref.add_argument("--no-reference", action="store_true",
                     help="never time the NumPy reference (default: small rows only)")
    parser.add_argument("--seed", type=int, default=0, help="weights and inputs seed")
    return parser


def _load_warning(n_threads):
    """A warning if other processes keep the CPUs busy (1-minute load average)."""
    if not hasattr(os, "getloadavg"):
        return None
    load = os.getloadavg()[0]
    if load >= 0.75:
        return (f"WARNING: load average {load:.2f} on {os.cpu_count()} CPUs before the start: "
                f"other processes may be running; timings (above all multi-threaded "
                f"ones) are then unreliable")
    return None


def _parse_threads(text):
    try:
        threads = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        threads = []
    if not threads or any(t < 1 for t in threads):
        raise SystemExit(f"fastrnn bench: --threads must be positive integers like 1,2, "
                         f"got {text!r}")
    return threads


def main(args, out=None):
    """Run the benchmark for parsed ``args``; returns the exit status (1 if an
    engine disagrees with fastrnn or fails)."""
    out = sys.stdout if out is None else out

    def say(text=""):
        print(text, file=out, flush=True)

    try:
        extra = [parse_row(spec) for spec in args.row]
    except ValueError as exc:
        say(f"fastrnn bench: {exc}")
        return 2
    patterns = args.rows.split(",") if args.rows else None
    rows = select_rows(patterns) if patterns or not extra else []
    rows += extra
    if not rows:
        say(f"fastrnn bench: no row matches --rows {args.rows!r} (see --list)")
        return 2
    if args.list:
        for row in rows:
            say(row.name)
        return 0
    threads = _parse_threads(args.threads)
    reference = True if args.reference else False if args.no_reference else None
    engines = default_engines(torch=not args.no_torch, ort=not args.no_ort, reference=reference)
    machine = Machine(args.gemm_size, torch=not args.no_torch)
    # (unavailable() imports the optional packages, so their versions print below)
    skipped = sorted({f"{e.group_name} skipped: {e.unavailable()}" for e in engines
                      if e.unavailable()})
    busy = _load_warning(max(threads))     # before our own GEMMs raise the load
    environment = environment_lines(threads, machine, engines)
    for line in environment:
        say(line)
    for line in skipped:
        say(f"note: {line}")
    if busy:
        say(busy)
    say()

    results = []
    for row in rows:
        for n in threads:
            result = run_row(row, n, engines, repeat=args.repeat, machine=machine,
                             steps=args.steps, seed=args.seed, budget=args.budget,
                             pause=args.pause, settle_threads=args.settle)
            result.notes = [n_ for n_ in result.notes if " skipped: " not in n_]
            results.append(result)
            say(format_row(result))
            say()
    bad = [r for r in results if not r.agree]
    if args.markdown:
        say(format_markdown(results, machine))
        say()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment,
                       "results": [r.to_dict() for r in results]}, f, indent=1)
        say(f"results written to {args.json}")
    if bad:
        say("DISAGREEMENT: " + "; ".join(f"{r.row.name} threads={r.n_threads}" for r in bad))
        return 1
    compared = "out, h_n, c_n"
    if any(r.row.kind == "train" for r in results):
        compared += " (training: also dx and every parameter gradient)"
    say(f"all engines agree with fastrnn: max|diff| / max(1, max|fastrnn|) < {TOLERANCE:g} "
        f"on {compared}")
    return 0

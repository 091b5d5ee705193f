"""Recurrent layers with the names, shapes and parameters of torch.nn.RNN/LSTM/GRU.

A layer stacks ``num_layers`` x ``num_directions`` calls of one-layer,
one-direction kernels (``fastrnn._recurrent``, or ``fastrnn.reference`` with
``impl="reference"``), which share one contract.

Conventions a user can rely on:
- Inputs of any real floating dtype are converted to the layer's dtype
  (float32 or float64); integer, boolean, complex and object inputs are rejected
  with a TypeError. Non-contiguous and read-only inputs are accepted.
- NaN and inf are not checked for: they propagate through the arithmetic as
  they do in PyTorch (a NaN in one sequence never touches the others).
- With ``lengths``, outputs past a sequence's length are zero, ``h_n``/``c_n``
  hold each sequence's state at its own last step and the reverse direction
  starts there: PyTorch's ``pack_padded_sequence(..., enforce_sorted=False)``.
"""
import contextlib
import threading

import numpy as np

from . import _packed, _recurrent, reference
from ._aligned import aligned_empty
from ._threads import _check_n_threads, resolve_n_threads, single_threaded_blas

_IMPLS = {"cython": _recurrent, "reference": reference}
_CELLS = {
    ("RNN", "tanh"): reference.CELL_RNN_TANH,
    ("RNN", "relu"): reference.CELL_RNN_RELU,
    ("LSTM", None): reference.CELL_LSTM,
    ("GRU", None): reference.CELL_GRU,
}


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _as_float_array(name, value, dtype):
    """Convert to the layer's dtype; reject what is not real floating point."""
    array = np.asarray(value)
    if array.dtype.kind != "f":
        raise TypeError(f"{name} must be a real floating-point array (float16/32/64 are "
                        f"converted to {np.dtype(dtype).name}), got dtype {array.dtype}")
    return array.astype(dtype, copy=False)


# -- sequence layouts and checks, shared with the other sequence layers ---------

def _input_layout(batch_first):
    return "(batch, seq_len, input_size)" if batch_first else "(seq_len, batch, input_size)"


def _time_major(x, input_size, batch_first):
    """Check a (floating) input of a sequence layer and view it time-major.

    x: (seq_len, batch, input_size), (batch, seq_len, input_size) with
    batch_first, or unbatched (seq_len, input_size). Returns ``(x, unbatched)``
    with x (seq_len, batch, input_size), a view.
    """
    if x.ndim not in (2, 3):
        raise ValueError(f"x must be 3-D {_input_layout(batch_first)} or 2-D "
                         f"(seq_len, input_size), got shape {x.shape}")
    user_shape = x.shape
    unbatched = x.ndim == 2
    if unbatched:
        x = x[:, None, :]
    elif batch_first:
        x = x.transpose(1, 0, 2)
    seq_len, batch, features = x.shape
    if features != input_size:
        raise ValueError(f"x must have input_size={input_size} features in its last "
                         f"axis {_input_layout(batch_first)}, got shape {user_shape}")
    if seq_len < 1 or batch < 1:
        raise ValueError(f"x must have seq_len >= 1 and batch >= 1, got shape {user_shape}")
    return x, unbatched


def _kernel_input(x, lengths, training):
    """The time-major input as the kernels read it: C-contiguous. In training a
    private copy (the backward reads x again: an in-place edit of the caller's
    array must not change the gradients), with the padding past ``lengths``
    zeroed so that NaN or inf there cannot reach the weight gradients (0 * NaN
    is NaN)."""
    if not training:
        return np.ascontiguousarray(x)
    x = np.array(x, order="C")
    if lengths is not None:
        x[np.arange(x.shape[0])[:, None] >= lengths[None, :]] = 0
    return x


def _checked_lengths(lengths, seq_len, batch):
    """``lengths`` as an integer array of shape (batch,) with values in 1..seq_len."""
    array = np.asarray(lengths)
    if array.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers, got dtype {array.dtype}")
    if array.shape != (batch,):
        raise ValueError(f"lengths must have shape ({batch},) (one per sequence), "
                         f"got {array.shape}")
    if batch and (array.min() < 1 or array.max() > seq_len):
        raise ValueError(f"lengths must be in 1..{seq_len} (seq_len), got values in "
                         f"{array.min()}..{array.max()}")
    return array


def _time_major_grad(grad, shape, unbatched, batch_first):
    """Check dL/d(out) (a floating array, in the output's layout) against the
    time-major output shape (seq_len, batch, width); returns it time-major and
    C-contiguous."""
    seq_len, batch, width = shape
    if unbatched:
        expected = (seq_len, width)
    elif batch_first:
        expected = (batch, seq_len, width)
    else:
        expected = (seq_len, batch, width)
    if grad.shape != expected:
        raise ValueError(f"grad_output must have the shape of the output {expected}, "
                         f"got {grad.shape}")
    if unbatched:
        grad = grad[:, None, :]
    elif batch_first:
        grad = grad.transpose(1, 0, 2)
    return np.ascontiguousarray(grad)


def _user_layout(array, unbatched, batch_first):
    """A time-major (seq_len, batch, features) result in the caller's layout."""
    if unbatched:
        return array[:, 0]
    if batch_first:
        return np.ascontiguousarray(array.transpose(1, 0, 2))
    return array


def _checked_state(state_dict, shapes, strict, list_expected=True):
    """The entries of a ``load_state_dict`` argument for the parameters
    ``shapes`` ({name: shape}), each checked: a floating-point array of its
    parameter's shape. With ``strict`` a missing or unexpected key raises a
    KeyError (listing the expected names if ``list_expected``)."""
    missing = [k for k in shapes if k not in state_dict]
    unexpected = [k for k in state_dict if k not in shapes]
    if strict and (missing or unexpected):
        raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys "
                       f"{unexpected}" + (f" (expected {list(shapes)})" if list_expected else ""))
    checked = {}
    for name, shape in shapes.items():
        if name not in state_dict:
            continue
        value = np.asarray(state_dict[name])
        if not np.issubdtype(value.dtype, np.floating):
            raise TypeError(f"load_state_dict: {name} must be a floating-point array, "
                            f"got dtype {value.dtype}")
        if value.shape != tuple(shape):
            raise ValueError(f"load_state_dict: {name} must have shape {tuple(shape)}, "
                             f"got {value.shape}")
        checked[name] = value
    return checked


class _RecurrentBase:
    """What every recurrent layer shares: RNN, LSTM and GRU here, LayerNormLSTM
    and ZoneoutLSTM in ``fastrnn.lnlstm``.

    Sizes and their checks; parameters under PyTorch's names (a local name per
    layer and direction plus ``_l{k}``, ``_reverse``), their initialisation,
    state dicts; modes and gradients; the checks and layouts of inputs,
    states, lengths and gradients; the loops over layers and directions of
    forward and backward, with dropout between layers. A subclass sets
    ``_mode`` ("RNN", "LSTM" or "GRU": the kind of state) and ``_impls``
    (``impl`` name -> kernel module) and runs one layer direction in
    ``_forward_direction`` / ``_backward_direction``; it may change the
    parameters (``_local_shapes``, ``_initial_value``).
    """

    _mode = None
    _impls = _IMPLS
    # Rates shown by repr() when not 0, in this order.
    _repr_rates = ("dropout",)
    # Whether the kernels need C-contiguous initial states (given ones are copied).
    _contiguous_states = False

    def _init_sizes(self, input_size, hidden_size, num_layers, bias, batch_first,
                    bidirectional):
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_layers = _positive_int("num_layers", num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)

    def _init_rest(self, dtype, seed, nonlinearity, impl, n_threads):
        """The rest of the constructor, after the sizes and rates: dtype, cell,
        kernels, threads, generator, parameters and their gradients."""
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
        self.dtype = np.dtype(dtype)
        if (self._mode, nonlinearity) not in _CELLS:
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self._cell = _CELLS[(self._mode, nonlinearity)]
        self.impl = impl
        self.n_threads = n_threads
        self.training = True
        self._rng = np.random.default_rng(seed)
        self._cache = None
        self._name_cache = {}
        self._params = {}
        self.reset_parameters()
        self.grads = {name: np.zeros_like(p) for name, p in self._params.items()}

    # -- structure -------------------------------------------------------

    @property
    def impl(self):
        return self._impl

    @impl.setter
    def impl(self, value):
        if value not in self._impls:
            raise ValueError(f"impl must be one of {sorted(self._impls)}, got {value!r}")
        self._impl = value
        # Inference and step() on the packed float32 kernels (see _kernels).
        self._compiled_float32 = value == "cython" and self.dtype == np.float32

    @property
    def n_threads(self):
        return self._n_threads

    @n_threads.setter
    def n_threads(self, value):
        self._n_threads = None if value is None else _check_n_threads(value)

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def gate_count(self):
        return reference.gate_count(self._cell)

    def _layer_input_size(self, layer):
        return self.input_size if layer == 0 else self.hidden_size * self.num_directions

    def _local_shapes(self, layer):
        """{local name: shape} of one direction of ``layer``, in parameter order."""
        rows = self.gate_count * self.hidden_size
        shapes = {"weight_ih": (rows, self._layer_input_size(layer)),
                  "weight_hh": (rows, self.hidden_size)}
        if self.bias:
            shapes.update(bias_ih=(rows,), bias_hh=(rows,))
        return shapes

    def _names(self, layer, direction):
        """The parameter names of one layer and direction, in order."""
        key = (layer, direction)
        names = self._name_cache.get(key)
        if names is None:
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            names = [local + suffix for local in self._local_shapes(layer)]
            self._name_cache[key] = names
        return names

    def _param_shapes(self):
        return {name: shape
                for layer in range(self.num_layers) for direction in range(self.num_directions)
                for name, shape in zip(self._names(layer, direction),
                                       self._local_shapes(layer).values())}

    def _initial_value(self, name, shape, bound):
        return self._rng.uniform(-bound, bound, shape)

    def reset_parameters(self):
        """PyTorch's default: every parameter uniform in +-1/sqrt(hidden_size)."""
        bound = 1.0 / np.sqrt(self.hidden_size)
        self._unpack()
        for name, shape in self._param_shapes().items():
            values = self._initial_value(name, shape, bound)
            if name in self._params:
                np.copyto(self._params[name], values, casting="unsafe")
            else:
                self._params[name] = values.astype(self.dtype)

    def __getattr__(self, name):
        params = self.__dict__.get("_params", {})
        if name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def named_parameters(self):
        """(name, array) pairs in PyTorch's order; the arrays are the live parameters."""
        return list(self._params.items())

    def parameters(self):
        return list(self._params.values())

    def __repr__(self):
        extra = ""
        if self.num_layers != 1:
            extra += f", num_layers={self.num_layers}"
        if self.nonlinearity not in (None, "tanh"):
            extra += f", nonlinearity={self.nonlinearity!r}"
        for flag, default in (("bias", True), ("batch_first", False), ("bidirectional", False)):
            if getattr(self, flag) != default:
                extra += f", {flag}={getattr(self, flag)}"
        for name in self._repr_rates:
            if getattr(self, name):
                extra += f", {name}={getattr(self, name)}"
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size}{extra})"

    # -- modes, gradients, state ------------------------------------------

    def train(self, mode=True):
        self.training = bool(mode)
        if self.training:
            self._unpack()
        else:
            self._cache = None
        return self

    def _unpack(self):
        """Drop what is derived from the parameters before they change (nothing
        here; _RNNBase's packed inference weights)."""

    def __getstate__(self):
        # Copies (copy.deepcopy) and pickles carry the parameters, gradients and
        # settings; a training cache (what backward() needs, holding the kernel
        # module) does not travel: a copy's backward needs its own forward.
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for grad in self.grads.values():
            grad.fill(0)

    def state_dict(self):
        """Copies of the parameters under PyTorch's names, in PyTorch's order."""
        return {name: p.copy() for name, p in self._params.items()}

    def load_state_dict(self, state_dict, strict=True):
        """Load parameters by PyTorch's names (e.g. from ``torch_module.state_dict()``
        converted with ``.numpy()``). Floating arrays are cast to the layer's
        dtype. Everything is checked before anything is changed."""
        loaded = _checked_state(state_dict, self._param_shapes(), strict)
        # Copy into the existing arrays, as torch does: whoever holds them (an
        # optimiser, user code) sees the new values.
        self._unpack()
        for name, value in loaded.items():
            np.copyto(self._params[name], value, casting="unsafe")

    # -- forward / backward --------------------------------------------------

    def __call__(self, x, hx=None, lengths=None):
        return self.forward(x, hx, lengths)

    def _check_states(self, hx, batch, unbatched):
        """Initial states as (num_layers * num_directions, batch, hidden) arrays."""
        count = self.num_layers * self.num_directions
        shape = (count, self.hidden_size) if unbatched else (count, batch, self.hidden_size)
        names = ["hx[0] (h_0)", "hx[1] (c_0)"] if self._mode == "LSTM" else ["hx"]
        if hx is None:
            states = [None] * len(names)
        elif self._mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"hx must be a tuple (h_0, c_0) of arrays of shape {shape}")
            states = list(hx)
        else:
            states = [hx]
        result = []
        for name, state in zip(names, states):
            if state is None:
                result.append(np.zeros((count, batch, self.hidden_size), self.dtype))
                continue
            state = _as_float_array(name, state, self.dtype)
            if state.shape != shape:
                raise ValueError(f"{name} must have shape {shape} (num_layers * num_directions"
                                 f"{'' if unbatched else ', batch'}, hidden_size), "
                                 f"got {state.shape}")
            state = state.reshape(count, batch, self.hidden_size)
            result.append(np.ascontiguousarray(state) if self._contiguous_states else state)
        return result

    def _check_lengths(self, lengths, seq_len, batch, unbatched):
        if lengths is None:
            return None
        if unbatched:
            raise ValueError("lengths needs a batched input (seq_len, batch, input_size)")
        # A copy: the training cache keeps it for backward, and the caller may
        # refill its array (the next batch's lengths) before calling backward.
        return np.array(_checked_lengths(lengths, seq_len, batch), dtype=np.int64)

    def forward(self, x, hx=None, lengths=None):
        """Run the layer. Returns ``(out, h_n)`` (LSTM: ``(out, (h_n, c_n))``).

        x: (seq_len, batch, input_size), (batch, seq_len, input_size) with
        batch_first, or unbatched (seq_len, input_size). hx: initial state(s) of
        shape (num_layers * num_directions, batch, hidden_size), zeros if None.
        lengths: one int per sequence in 1..seq_len, or None.
        """
        x, unbatched = _time_major(_as_float_array("x", x, self.dtype), self.input_size,
                                   self.batch_first)
        seq_len, batch, _ = x.shape
        lengths = self._check_lengths(lengths, seq_len, batch, unbatched)
        x = _kernel_input(x, lengths, self.training)
        states = self._check_states(hx, batch, unbatched)
        out, final_states, cache = self._run_forward(x, states, lengths)
        self._cache = cache
        if cache is not None:
            cache["out_shape"] = (seq_len, batch, out.shape[2])
            cache["unbatched"] = unbatched
        out = _user_layout(out, unbatched, self.batch_first)
        if unbatched:
            final_states = [s[:, 0] for s in final_states]
        return out, (tuple(final_states) if self._mode == "LSTM" else final_states[0])

    def _kernels(self):
        """The kernel module of this forward."""
        return self._impls[self._impl]

    def _blas_limit(self, kernels):
        """Where the kernels run: BLAS limited to one thread (they parallelise
        themselves)."""
        return single_threaded_blas()

    def _run_forward(self, x, states, lengths):
        kernels = self._kernels()
        n_threads = resolve_n_threads(self.n_threads)
        seq_len, batch, _ = x.shape
        H, D = self.hidden_size, self.num_directions
        is_lstm = self._mode == "LSTM"
        h0 = states[0]
        c0 = states[1] if is_lstm else None
        h_n = np.empty_like(h0)
        c_n = np.empty_like(c0) if is_lstm else None
        training = self.training
        layers = []
        layer_input = x
        with self._blas_limit(kernels):
            for layer in range(self.num_layers):
                out = aligned_empty((seq_len, batch, D * H), self.dtype)
                direction_caches = []
                results = self._forward_layer(kernels, layer, layer_input, h0, c0, lengths,
                                              training, out, n_threads)
                for direction, (h, c, cache) in enumerate(results):
                    index = layer * D + direction
                    h_n[index] = h
                    if is_lstm:
                        c_n[index] = c
                    direction_caches.append(cache)
                layers.append({"input": layer_input, "caches": direction_caches, "mask": None})
                if layer < self.num_layers - 1 and training and self.dropout > 0:
                    # Inter-layer dropout (PyTorch's `dropout` argument), inverted scaling.
                    keep = 1.0 - self.dropout
                    mask = (self._rng.random(out.shape) < keep).astype(self.dtype) / keep
                    out = out * mask
                    layers[-1]["mask"] = mask
                layer_input = out
        finals = [h_n, c_n] if is_lstm else [h_n]
        cache = None
        if training:
            cache = {"layers": layers, "lengths": lengths, "n_threads": n_threads,
                     "kernels": kernels}
        return layer_input, finals, cache

    def _forward_layer(self, kernels, layer, x, h0, c0, lengths, training, out, n_threads):
        """Every direction of layer ``layer``: a list of ``(h_n, c_n or None,
        cache)``, one per direction (see _forward_direction)."""
        results = []
        for direction in range(self.num_directions):
            index = layer * self.num_directions + direction
            results.append(self._forward_direction(
                kernels, layer, direction, index, x, h0[index],
                c0[index] if c0 is not None else None, lengths, training, out, n_threads))
        return results

    def _forward_direction(self, kernels, layer, direction, index, x, h0, c0, lengths,
                           training, out, n_threads):
        """One kernel call: layer ``layer``, ``direction`` (index ``index`` of the
        states) on the time-major x, writing out[:, :, direction * H:][:H].
        Returns ``(h_n, c_n or None, cache)``."""
        raise NotImplementedError

    def backward(self, grad_output, grad_hn=None):
        """Backpropagate through the last training-mode forward.

        grad_output: dL/d(out), the shape of ``out``. grad_hn: dL/d(h_n) (LSTM:
        a tuple (dL/dh_n, dL/dc_n), either may be None), or None for zero.
        Returns ``(dx, dhx)``, shaped like ``x`` and ``hx`` (LSTM: dhx is
        (dh_0, dc_0)). Parameter gradients are added to ``self.grads``.
        Gradients at positions past a sequence's length are ignored (the
        output there is a constant zero).
        """
        cache = self._cache
        if cache is None:
            raise RuntimeError("backward() needs a forward() in training mode (call train() "
                               "first) and can be called once per forward")
        batch = cache["out_shape"][1]
        unbatched = cache["unbatched"]
        grad = _time_major_grad(_as_float_array("grad_output", grad_output, self.dtype),
                                cache["out_shape"], unbatched, self.batch_first)
        grad_states = self._check_grad_hn(grad_hn, batch, unbatched)
        self._cache = None  # one backward per forward, even if this one fails
        grad_x, grad_h0 = self._run_backward(cache, grad, grad_states)
        grad_x = _user_layout(grad_x, unbatched, self.batch_first)
        if unbatched:
            grad_h0 = [g[:, 0] for g in grad_h0]
        return grad_x, (tuple(grad_h0) if self._mode == "LSTM" else grad_h0[0])

    def _check_grad_hn(self, grad_hn, batch, unbatched):
        count = self.num_layers * self.num_directions
        shape = (count, self.hidden_size) if unbatched else (count, batch, self.hidden_size)
        if self._mode == "LSTM":
            if grad_hn is None:
                grad_hn = (None, None)
            if not isinstance(grad_hn, (tuple, list)) or len(grad_hn) != 2:
                raise TypeError(f"grad_hn must be None or a tuple (dh_n, dc_n) of arrays of "
                                f"shape {shape} (or None)")
            names = ["grad_hn[0] (dh_n)", "grad_hn[1] (dc_n)"]
        else:
            grad_hn = [grad_hn]
            names = ["grad_hn"]
        result = []
        for name, g in zip(names, grad_hn):
            if g is None:
                result.append(None)
                continue
            g = _as_float_array(name, g, self.dtype)
            if g.shape != shape:
                raise ValueError(f"{name} must have the shape of h_n {shape}, got {g.shape}")
            result.append(g.reshape(count, batch, self.hidden_size))
        return result

    def _run_backward(self, cache, grad, grad_states):
        kernels = cache["kernels"]
        n_threads = cache["n_threads"]
        lengths = cache["lengths"]
        H, D = self.hidden_size, self.num_directions
        is_lstm = self._mode == "LSTM"
        count = self.num_layers * D
        batch = grad.shape[1]
        grad_h0 = np.zeros((count, batch, H), self.dtype)
        grad_c0 = np.zeros((count, batch, H), self.dtype) if is_lstm else None
        grad_layer_out = grad
        with self._blas_limit(kernels):
            for layer in reversed(range(self.num_layers)):
                entry = cache["layers"][layer]
                layer_input = entry["input"]
                grad_input = np.zeros_like(layer_input)
                results = self._backward_layer(kernels, layer, entry["caches"], layer_input,
                                               lengths, grad_layer_out, grad_states,
                                               grad_input, n_threads)
                for direction, (dh, dc) in enumerate(results):
                    index = layer * D + direction
                    grad_h0[index] = dh
                    if is_lstm:
                        grad_c0[index] = dc
                if layer > 0 and cache["layers"][layer - 1]["mask"] is not None:
                    grad_input *= cache["layers"][layer - 1]["mask"]
                grad_layer_out = grad_input
        return grad_layer_out, ([grad_h0, grad_c0] if is_lstm else [grad_h0])

    @staticmethod
    def _grad_state(grad_states, which, index):
        """dL/dh_n (which 0) or dL/dc_n (which 1) of state ``index``, or None."""
        if which >= len(grad_states) or grad_states[which] is None:
            return None
        return grad_states[which][index]

    def _backward_layer(self, kernels, layer, caches, x, lengths, grad_out, grad_states,
                        grad_x, n_threads):
        """Every direction's backward of layer ``layer`` (``caches``: their
        forward caches), adding to grad_x: a list of ``(dh_0, dc_0 or None)``."""
        results = []
        for direction in range(self.num_directions):
            index = layer * self.num_directions + direction
            results.append(self._backward_direction(
                kernels, layer, direction, index, caches[direction], x, lengths, grad_out,
                self._grad_state(grad_states, 0, index), self._grad_state(grad_states, 1, index),
                grad_x, n_threads))
        return results

    def _backward_direction(self, kernels, layer, direction, index, cache, x, lengths,
                            grad_out, grad_h_n, grad_c_n, grad_x, n_threads):
        """The backward kernel call of ``_forward_direction`` (``cache`` is its
        cache): adds to grad_x and to the parameters' grads; returns
        ``(dh_0, dc_0 or None)``."""
        raise NotImplementedError


class _RNNBase(_RecurrentBase):
    """Common machinery of RNN, LSTM and GRU (see the subclasses)."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype="float32", seed=None,
                 nonlinearity=None, impl="cython", n_threads=None, recurrent_dropout=0.0):
        self._init_sizes(input_size, hidden_size, num_layers, bias, batch_first, bidirectional)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        if not 0.0 <= float(recurrent_dropout) < 1.0:
            raise ValueError(f"recurrent_dropout must be in [0, 1), got {recurrent_dropout!r}")
        self.recurrent_dropout = float(recurrent_dropout)
        self._packed = {}
        self._steppers = {}
        self._runners = {}
        self._workspaces = {}
        self._init_call_guard()
        self._init_rest(dtype, seed, nonlinearity, impl, n_threads)

    # -- calls from several threads; copies -------------------------------

    def _init_call_guard(self):
        self._busy = threading.RLock()
        self._private = threading.local()

    # The buffers and prepared jobs a layer keeps (_workspaces, _runners,
    # _steppers) hold one call's data at a time: a call uses them holding _busy
    # (but for step's fast path, whose Steppers guard themselves: see
    # _packed._step_through). An inference call made while another thread is in
    # a call of this layer runs on fresh ones instead (_beside), so calls from
    # several threads run at the same time, each with its own results; training
    # calls (which share the cache and the gradients) wait their turn. _busy is
    # re-entrant: a call inside a call in the same thread (step() in training
    # runs forward) keeps the buffers. (Inline in forward and step, not a context
    # manager, which would add a microsecond to every call, nor a helper taking
    # the call: +0.15-0.25 us on a 1.2 us streaming step.)

    def _beside(self, call, *args):
        """``call(False, *args)`` on fresh buffers (see above)."""
        self._private.on = True
        try:
            return call(False, *args)
        finally:
            self._private.on = False

    def __getstate__(self):
        # Packed weights, prepared jobs (which hold raw pointers), buffers and the
        # guard of calls from several threads are made again by the first call.
        state = super().__getstate__()
        state.update(_packed={}, _steppers={}, _runners={}, _workspaces={})
        del state["_busy"], state["_private"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_call_guard()
        # Packing makes the parameters read-only for a while (see
        # _packed_weights), which needs arrays that own their memory; a pickle
        # gives arrays over its bytes (read-only ones, if they were): copies.
        for name, p in self._params.items():
            if not (p.flags.owndata and p.flags.writeable):
                self._params[name] = p.copy()

    # -- packed float32 inference weights --------------------------------

    def _packed_weights(self, index, names):
        """Inference weights in the packed kernels' layout, packed once.

        While packed copies exist the parameters are read-only, so an in-place
        edit raises instead of being silently ignored; train() or
        load_state_dict() drop the copies and make them writable again.
        """
        if index not in self._packed:
            params = [self._params[n] for n in names]
            self._packed[index] = _packed.pack_weights(
                self._cell, *params[:2], *(params[2:] if self.bias else (None, None)))
            for p in params:
                p.flags.writeable = False
        return self._packed[index]

    def _workspace(self, index, kind):
        """Buffers the packed kernels reuse between calls, per layer direction and
        kind of call (inference, training forward, backward); fresh ones for a
        call that runs beside another (see _beside)."""
        if getattr(self._private, "on", False):
            return {}
        return self._workspaces.setdefault((index, kind), {})

    def _unpack(self):
        self._packed = {}
        self._steppers = {}
        self._runners = {}
        for p in self._params.values():
            p.flags.writeable = True

    def forward(self, x, hx=None, lengths=None):
        # Inference of float32 layers on the compiled kernels: arrays as the
        # kernels read them (x in either layout, lengths an int64 array) run on
        # jobs prepared once per batch size (_packed.SequenceRunner): about 3 us
        # per call of a tiny layer against 10-16 on the general path, and no copy
        # of the input. Anything else, and every error, takes the general path.
        if self._busy.acquire(self.training):
            try:
                return self._forward(True, x, hx, lengths)
            finally:
                self._busy.release()
        return self._beside(self._forward, x, hx, lengths)

    forward.__doc__ = _RecurrentBase.forward.__doc__

    def _forward(self, kept, x, hx, lengths):
        """forward, on the kept buffers or (kept False) on fresh ones."""
        if not self.training and self._compiled_float32:
            n_threads = resolve_n_threads(self._n_threads)
            runners = self._runners if kept else {}
            if (type(x) is np.ndarray and 2 <= x.ndim <= 3
                    and x.shape[-1] == self.input_size):
                batch = (1 if x.ndim == 2 else x.shape[0] if self.batch_first
                         else x.shape[1])
                if batch >= 1:
                    self._sequence_runners(runners, batch, n_threads)
            result = _packed.forward_cached(runners, x, hx, n_threads, self.num_directions,
                                            lengths, self.batch_first)
            if result is not None:
                self._cache = None
                out, h_n, c_n = result
                return out, ((h_n, c_n) if self._mode == "LSTM" else h_n)
        return super().forward(x, hx, lengths)

    def backward(self, grad_output, grad_hn=None):
        with self._busy:
            return super().backward(grad_output, grad_hn)

    backward.__doc__ = _RecurrentBase.backward.__doc__

    #: Batch sizes whose SequenceRunners are kept (each holds buffers of up to
    #: 128 rows of gates per layer); the oldest go first.
    _RUNNER_BATCH_SIZES = 4

    def _sequence_runners(self, runners_by_key, batch, n_threads):
        """The SequenceRunners of every layer direction (layer-major) for this
        batch size and thread count, made into runners_by_key if not there."""
        key = (batch, n_threads)
        runners = runners_by_key.get(key)
        if runners is None:
            while len(runners_by_key) >= self._RUNNER_BATCH_SIZES:
                del runners_by_key[next(iter(runners_by_key))]
            D = self.num_directions
            runners = runners_by_key[key] = [
                _packed.SequenceRunner(
                    self._packed_weights(index, self._names(index // D, index % D)),
                    batch, n_threads, reverse=bool(index % D))
                for index in range(self.num_layers * D)]
        return runners

    # -- streaming ---------------------------------------------------------

    def step(self, x, hx=None):
        """One time step, for streaming inference.

        x: (batch, input_size), or (input_size,) unbatched; hx: the state, shaped
        as for forward (zeros if None). Returns ``(out, hx)``: out is
        (batch, hidden_size) (the last layer's new h), hx the new state (LSTM:
        (h, c)). The same numbers as ``forward(x[None], hx)``; unidirectional
        layers only. In eval mode with float32 compiled kernels a step runs on a
        job prepared once per batch size, so it costs little beyond its arithmetic.
        """
        if not self.training and self._compiled_float32:
            # The common case (float32 arrays, the state a previous step returned,
            # Steppers made by an earlier step) checked and run at C level, without
            # _busy: the Steppers guard themselves (see _packed._step_through).
            # Anything else, or Steppers another thread is using, goes the long way
            # below. Taken before the lock and the long way's frame: streaming
            # steps in separate processes, us, LSTM H=64 2.10 -> 1.76, GRU H=64
            # 1.74 -> 1.43, LSTM H=256 on one thread 18.2 -> 17.6.
            result = _packed.step_cached(self._steppers, x, hx,
                                         resolve_n_threads(self._n_threads))
            if result is not None:
                return result
        if self.bidirectional:
            raise ValueError("step() needs a unidirectional layer: the reverse direction "
                             "needs the whole sequence")
        if not self.training and self._compiled_float32:
            if self._busy.acquire(False):
                try:
                    return self._step(True, x, hx)
                finally:
                    self._busy.release()
            return self._beside(self._step, x, hx)
        # Through forward, which looks after the buffers itself.
        return self._step(None, x, hx)

    def _step(self, kept, x, hx):
        """step, on the kept Steppers, fresh ones (kept False) or, kept None,
        through forward."""
        fast = kept is not None
        steppers_by_key = self._steppers if kept else {}
        if type(x) is not np.ndarray or x.dtype != self.dtype:
            x = _as_float_array("x", x, self.dtype)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"x must be (batch, {self.input_size}) or ({self.input_size},), "
                             f"got shape {x.shape}")
        unbatched = x.ndim == 1
        x2 = x.reshape(1, -1) if unbatched else x
        if not fast:
            # A length-1 sequence: (1, input_size) unbatched, (1, batch, input_size),
            # or (batch, 1, input_size) batch-first.
            if self.batch_first and not unbatched:
                out, state = self.forward(x[:, None], hx)
                return out[:, 0], state
            out, state = self.forward(x[None], hx)
            return out[0], state
        batch = x2.shape[0]
        states = self._step_states(hx, batch, unbatched)
        key = (batch, resolve_n_threads(self.n_threads))
        steppers = steppers_by_key.get(key)
        if steppers is None:
            steppers = steppers_by_key[key] = self._new_steppers(key)
        is_lstm = self._mode == "LSTM"
        args = (np.ascontiguousarray(x2), states[0], states[1] if is_lstm else None)
        result = _packed.step_layers(steppers, *args)
        if result is None:
            # Another thread's step is on the kept Steppers: fresh ones.
            result = _packed.step_layers(self._new_steppers(key), *args)
        out, h_n, c_n = result
        if unbatched:
            out, h_n = out[0], h_n[:, 0]
            c_n = c_n[:, 0] if is_lstm else None
        return out, ((h_n, c_n) if is_lstm else h_n)

    def _new_steppers(self, key):
        """A Stepper per layer for key (batch, n_threads)."""
        return [_packed.Stepper(self._packed_weights(layer, self._names(layer, 0)), *key)
                for layer in range(self.num_layers)]

    def _step_states(self, hx, batch, unbatched):
        """The states for step(): as forward's, but the common case (the arrays a
        previous step returned) passes without any conversion."""
        shape = ((self.num_layers, self.hidden_size) if unbatched
                 else (self.num_layers, batch, self.hidden_size))
        parts = hx if self._mode == "LSTM" and isinstance(hx, tuple) else (hx,)
        for p in parts:
            if not (type(p) is np.ndarray and p.dtype == self.dtype and p.shape == shape
                    and p.flags.c_contiguous):
                return [np.ascontiguousarray(s)
                        for s in self._check_states(hx, batch, unbatched)]
        if unbatched:
            return [p.reshape(self.num_layers, batch, self.hidden_size) for p in parts]
        return list(parts)

    # -- kernel calls --------------------------------------------------------

    def _kernels(self):
        # float32 runs on the packed kernels (their own SIMD GEMM); float64 on the
        # BLAS-based kernels; impl="reference" on NumPy.
        if self._compiled_float32:
            return _packed
        return self._impls[self._impl]

    def _blas_limit(self, kernels):
        # The packed kernels call no BLAS: only the BLAS path needs the limit.
        return contextlib.nullcontext() if kernels is _packed else single_threaded_blas()

    def _direction_args(self, kernels, layer, direction, index, h0, c0, training):
        """A direction's arguments of a kernel forward, as keywords (forward and
        forward_bidirectional take them under the same names)."""
        names = self._names(layer, direction)
        params = self._params
        args = dict(weight_ih=params[names[0]], weight_hh=params[names[1]],
                    bias_ih=params[names[2]] if self.bias else None,
                    bias_hh=params[names[3]] if self.bias else None,
                    h0=h0, c0=c0, out_col=direction * self.hidden_size, recurrent_mask=None)
        # Variational (recurrent) dropout: one mask per sequence and hidden unit,
        # shared by every time step, on the state entering the recurrent product.
        if training and self.recurrent_dropout > 0:
            keep = 1.0 - self.recurrent_dropout
            args["recurrent_mask"] = ((self._rng.random(h0.shape) < keep) / keep).astype(
                self.dtype)
        if kernels is _packed:
            # Inference reuses weights packed once; training packs per call (the
            # weights change between steps).
            args["packed"] = None if training else self._packed_weights(index, names)
            args["workspace"] = self._workspace(index, training)
        return args

    def _forward_direction(self, kernels, layer, direction, index, x, h0, c0, lengths,
                           training, out, n_threads):
        args = self._direction_args(kernels, layer, direction, index, h0, c0, training)
        return kernels.forward(self._cell, x, lengths=lengths, reverse=bool(direction),
                               training=training, out=out, n_threads=n_threads, **args)

    def _forward_layer(self, kernels, layer, x, h0, c0, lengths, training, out, n_threads):
        # On two or more threads the packed kernels run a bidirectional layer's
        # directions at the same time (see _packed.forward_bidirectional).
        if not (kernels is _packed and self.num_directions == 2 and n_threads > 1):
            return super()._forward_layer(kernels, layer, x, h0, c0, lengths, training, out,
                                          n_threads)
        directions = [
            self._direction_args(kernels, layer, direction, 2 * layer + direction,
                                 h0[2 * layer + direction],
                                 c0[2 * layer + direction] if c0 is not None else None,
                                 training)
            for direction in range(2)]
        return kernels.forward_bidirectional(self._cell, x, directions, lengths, training, out,
                                             n_threads)

    def _backward_args(self, kernels, layer, direction, index, cache, grad_h_n, grad_c_n):
        """A direction's arguments of a kernel backward, as keywords (backward and
        backward_bidirectional take them under the same names)."""
        names = self._names(layer, direction)
        grads = self.grads
        args = dict(cache=cache, weight_ih=self._params[names[0]],
                    weight_hh=self._params[names[1]], out_col=direction * self.hidden_size,
                    grad_h_n=grad_h_n, grad_c_n=grad_c_n, grad_weight_ih=grads[names[0]],
                    grad_weight_hh=grads[names[1]],
                    grad_bias_ih=grads[names[2]] if self.bias else None,
                    grad_bias_hh=grads[names[3]] if self.bias else None)
        if kernels is _packed:
            args["workspace"] = self._workspace(index, "backward")
        return args

    def _backward_layer(self, kernels, layer, caches, x, lengths, grad_out, grad_states,
                        grad_x, n_threads):
        # As in _forward_layer: the directions' BPTTs at the same time.
        if not (kernels is _packed and self.num_directions == 2 and n_threads > 1):
            return super()._backward_layer(kernels, layer, caches, x, lengths, grad_out,
                                           grad_states, grad_x, n_threads)
        directions = [
            self._backward_args(kernels, layer, direction, 2 * layer + direction,
                                caches[direction],
                                self._grad_state(grad_states, 0, 2 * layer + direction),
                                self._grad_state(grad_states, 1, 2 * layer + direction))
            for direction in range(2)]
        return kernels.backward_bidirectional(self._cell, x, directions, lengths, grad_out,
                                              grad_x, n_threads)

    def _backward_direction(self, kernels, layer, direction, index, cache, x, lengths,
                            grad_out, grad_h_n, grad_c_n, grad_x, n_threads):
        args = self._backward_args(kernels, layer, direction, index, cache, grad_h_n, grad_c_n)
        return kernels.backward(self._cell, x=x, lengths=lengths, reverse=bool(direction),
                                grad_out=grad_out, grad_x=grad_x, n_threads=n_threads, **args)


_COMMON_ARGS = """
    Parameters follow torch.nn: input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0 (between layers, training only),
    bidirectional=False. Also: dtype ("float32" or "float64"), seed (for the
    initialisation and dropout), impl ("cython" kernels or the NumPy
    "reference"), n_threads (None: the global default, see
    fastrnn.set_num_threads), recurrent_dropout=0.0 (variational dropout on the
    recurrent connection, training only: each sequence draws one mask per layer,
    direction and hidden unit, shared by all its time steps, applied to h_{t-1}
    where it enters h_{t-1} W_hh^T; inverted scaling).
"""


class RNN(_RNNBase):
    __doc__ = """Elman RNN: h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh),
    act = tanh or relu (``nonlinearity``). ``out, h_n = rnn(x, hx, lengths)``.
    """ + _COMMON_ARGS
    _mode = "RNN"

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, dtype="float32",
                 seed=None, impl="cython", n_threads=None, recurrent_dropout=0.0):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, seed, nonlinearity, impl, n_threads,
                         recurrent_dropout)


class LSTM(_RNNBase):
    __doc__ = """LSTM with PyTorch's gate order i, f, g, o and two biases.
    ``out, (h_n, c_n) = lstm(x, (h_0, c_0), lengths)``.
    """ + _COMMON_ARGS
    _mode = "LSTM"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype="float32", seed=None, impl="cython",
                 n_threads=None, recurrent_dropout=0.0):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, seed, None, impl, n_threads, recurrent_dropout)


class GRU(_RNNBase):
    __doc__ = """GRU with PyTorch's gate order r, z, n and
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)). ``out, h_n = gru(x, h_0, lengths)``.
    """ + _COMMON_ARGS
    _mode = "GRU"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype="float32", seed=None, impl="cython",
                 n_threads=None, recurrent_dropout=0.0):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, seed, None, impl, n_threads, recurrent_dropout)

"""Layer-normalised LSTM and zoneout (as Haste has them on GPU), on CPU kernels.

``LayerNormLSTM``
    Haste's ``LayerNormLSTM`` cell (github.com/lmnt-com/haste, issue #1 and
    ``lib/layer_norm_lstm_forward_gpu.cu.cc``), with PyTorch's gate order
    i, f, g, o and parameter names::

        a   = LN(x_t W_ih^T ; ln_ih_weight, ln_ih_bias)
            + LN(h_{t-1} W_hh^T ; ln_hh_weight, ln_hh_bias) + bias_ih + bias_hh
        i, f, g, o = sigmoid(a_i), sigmoid(a_f), tanh(a_g), sigmoid(a_o)
        c~  = f * c_{t-1} + i * g
        h~  = o * tanh(LN(c~ ; ln_c_weight, ln_c_bias))
        LN(v ; w, b) = (v - mean(v)) / sqrt(var(v) + eps) * w + b

    Each LN normalises over its last axis: the 4H gate pre-activations jointly
    (input and recurrent parts separately) and the H cell units; ``var`` is
    the biased variance and ``eps = 1e-5``, as in Haste. Haste's cell is the
    special case ``ln_ih_bias = ln_hh_bias = 0`` (Haste has gains only there)
    and ``bias_ih + bias_hh = b`` (Haste's one bias); its ``gamma[0]``,
    ``gamma[1]``, ``gamma_h``, ``beta_h`` are our ``ln_ih_weight``,
    ``ln_hh_weight``, ``ln_c_weight``, ``ln_c_bias`` (after reordering Haste's
    i, g, f, o gate blocks to i, f, g, o). The four additive gate biases are
    redundant (they receive the same gradient); they are kept so that the LSTM
    weights load unchanged and every layer norm has PyTorch's (weight, bias).

``ZoneoutLSTM``
    The same kernels with layer norm off: PyTorch's LSTM cell
    (``h~ = o * tanh(c~)``) plus zoneout; with zoneout 0 it computes
    ``fastrnn.LSTM``, with the same parameter names.

Zoneout (Krueger et al. 2016, "Zoneout: regularizing RNNs by randomly
preserving hidden activations"), on both classes::

    h_t = m_h * h_{t-1} + (1 - m_h) * h~        c_t = m_c * c_{t-1} + (1 - m_c) * c~

- ``zoneout`` is the rate of h, ``zoneout_cell`` the rate of c (default 0:
  like Haste, which zones out h only). In training each unit of each step and
  sequence draws ``m ~ Bernoulli(rate)`` (1 = keep the previous value) from
  the layer's generator (``seed``); in ``eval()`` ``m`` is the rate itself
  (the expectation). ``h~`` is computed from the un-zoned ``c~``, as in
  Krueger et al.; the output of step t is ``h_t`` (after zoneout), as in
  Haste. Backward goes through the masks: ``dh_{t-1} += m_h dh_t``,
  ``dh~ = (1 - m_h) dh_t`` (the same for c).
- Masks come from the layer's generator in a fixed order: for each layer,
  for each direction, the h mask then the c mask (each (seq_len, batch,
  hidden_size), indexed by time step in both directions; not drawn when the
  rate is 0), then that layer's inter-layer dropout mask. The same seed gives
  the same masks. ``last_zoneout_masks`` keeps the masks of the last training
  forward: per layer a list of ``(mask_h, mask_c)`` per direction (None where
  off).
- ``dropout`` is PyTorch's dropout between layers (Haste's ``dropout`` is
  DropConnect on the recurrent weights, which is not implemented here).

Layer contract (that of ``fastrnn.LSTM``):
``out, (h_n, c_n) = layer(x, hx=None, lengths=None)``;
``dx, (dh0, dc0) = layer.backward(grad_out, grad_hn=None)``; parameter
gradients are added to ``layer.grads`` until ``zero_grad()``; ``named_parameters``,
``state_dict``, ``load_state_dict`` (copies into the live arrays), ``train``,
``eval``; ``returns_state = True`` (so ``fastrnn.nn.Sequential`` passes
``hx``/``lengths``). Shapes, ``batch_first``, unbatched input, ``lengths``
(inactive steps keep the state and output zero; the reverse direction starts
at each sequence's last step), ``dropout`` between layers, ``bidirectional``,
dtypes (float32/float64) and ``impl`` ("cython" or "reference") are as in
``fastrnn.LSTM``.

Parameters of layer k (``_reverse`` appended for the reverse direction), in
this order:

====================  ==============  =======================================
name                  shape           initial value
====================  ==============  =======================================
``weight_ih_lk``      (4H, I_k)       U(-1/sqrt(H), 1/sqrt(H))  (torch's LSTM)
``weight_hh_lk``      (4H, H)         U(-1/sqrt(H), 1/sqrt(H))
``bias_ih_lk``        (4H,)           U(-1/sqrt(H), 1/sqrt(H))  (bias=True)
``bias_hh_lk``        (4H,)           U(-1/sqrt(H), 1/sqrt(H))  (bias=True)
``ln_ih_weight_lk``   (4H,)           1   (LayerNormLSTM only, from here on)
``ln_ih_bias_lk``     (4H,)           0
``ln_hh_weight_lk``   (4H,)           1
``ln_hh_bias_lk``     (4H,)           0
``ln_c_weight_lk``    (H,)            1
``ln_c_bias_lk``      (H,)            0
====================  ==============  =======================================

``I_0 = input_size``, ``I_k = H * num_directions`` for k > 0.
"""
import numpy as np

from . import _lnlstm, lnlstm_reference
from ._lnlstm_args import DEFAULT_EPS, param_shapes
from ._threads import _check_n_threads, resolve_n_threads, single_threaded_blas

__all__ = ["LayerNormLSTM", "ZoneoutLSTM"]

_IMPLS = {"cython": _lnlstm, "reference": lnlstm_reference}


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _rate(name, value, upper_inclusive):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a float, got {value!r}") from None
    ok = 0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0
    if not ok:
        raise ValueError(f"{name} must be in [0, 1{']' if upper_inclusive else ')'}, "
                         f"got {value!r}")
    return value


def _as_float_array(name, value, dtype):
    """Convert to the layer's dtype; reject what is not real floating point."""
    array = np.asarray(value)
    if array.dtype.kind != "f":
        raise TypeError(f"{name} must be a real floating-point array (float16/32/64 are "
                        f"converted to {np.dtype(dtype).name}), got dtype {array.dtype}")
    return array.astype(dtype, copy=False)


class _ZoneoutLSTMBase:
    """Shared machinery of LayerNormLSTM and ZoneoutLSTM (see the module docstring)."""

    returns_state = True
    takes_lengths = True
    _layer_norm = True

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, zoneout=0.0, zoneout_cell=0.0,
                 eps=DEFAULT_EPS, dtype="float32", seed=None, impl="cython", n_threads=None):
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_layers = _positive_int("num_layers", num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.dropout = _rate("dropout", dropout, upper_inclusive=False)
        self.zoneout = _rate("zoneout", zoneout, upper_inclusive=True)
        self.zoneout_cell = _rate("zoneout_cell", zoneout_cell, upper_inclusive=True)
        eps = float(eps)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.eps = eps
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
        self.dtype = np.dtype(dtype)
        self.impl = impl
        self.n_threads = n_threads
        self.training = True
        self._rng = np.random.default_rng(seed)
        self._cache = None
        self.last_zoneout_masks = None
        self._params = {}
        self.reset_parameters()
        self.grads = {name: np.zeros_like(p) for name, p in self._params.items()}

    # -- structure -----------------------------------------------------------

    @property
    def layer_norm(self):
        return self._layer_norm

    @property
    def impl(self):
        return self._impl

    @impl.setter
    def impl(self, value):
        if value not in _IMPLS:
            raise ValueError(f"impl must be one of {sorted(_IMPLS)}, got {value!r}")
        self._impl = value

    @property
    def n_threads(self):
        return self._n_threads

    @n_threads.setter
    def n_threads(self, value):
        self._n_threads = None if value is None else _check_n_threads(value)

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    def _layer_input_size(self, layer):
        return self.input_size if layer == 0 else self.hidden_size * self.num_directions

    @staticmethod
    def _suffix(layer, direction):
        return f"_l{layer}" + ("_reverse" if direction else "")

    def _local_shapes(self, layer):
        return param_shapes(self._layer_input_size(layer), self.hidden_size, self.bias,
                            self._layer_norm)

    def _param_shapes(self):
        return {local + self._suffix(layer, direction): shape
                for layer in range(self.num_layers) for direction in range(self.num_directions)
                for local, shape in self._local_shapes(layer).items()}

    def _local(self, source, layer, direction):
        """{local name: array} of one layer and direction, from _params or grads."""
        suffix = self._suffix(layer, direction)
        return {local: source[local + suffix] for local in self._local_shapes(layer)}

    def reset_parameters(self):
        """Weights and biases uniform in +-1/sqrt(hidden_size) (PyTorch's LSTM);
        layer-norm gains 1 and biases 0. In place when the arrays exist."""
        bound = 1.0 / np.sqrt(self.hidden_size)
        for name, shape in self._param_shapes().items():
            if name.startswith("ln_"):
                values = np.full(shape, 1.0 if "_weight_" in name else 0.0)
            else:
                values = self._rng.uniform(-bound, bound, shape)
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
        """(name, array) pairs in the documented order; the arrays are live."""
        return list(self._params.items())

    def parameters(self):
        return list(self._params.values())

    def __repr__(self):
        extra = ""
        if self.num_layers != 1:
            extra += f", num_layers={self.num_layers}"
        for flag, default in (("bias", True), ("batch_first", False), ("bidirectional", False)):
            if getattr(self, flag) != default:
                extra += f", {flag}={getattr(self, flag)}"
        for name in ("dropout", "zoneout", "zoneout_cell"):
            if getattr(self, name):
                extra += f", {name}={getattr(self, name)}"
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size}{extra})"

    def get_config(self):
        """The constructor arguments (JSON-able) that rebuild this architecture
        (``fastrnn.nn.module_config`` / ``fastrnn.io``); weights are not included."""
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "bias": self.bias,
                "batch_first": self.batch_first, "dropout": self.dropout,
                "bidirectional": self.bidirectional, "zoneout": self.zoneout,
                "zoneout_cell": self.zoneout_cell, "eps": self.eps, "dtype": self.dtype.name,
                "impl": self.impl}

    @classmethod
    def from_config(cls, config):
        """Rebuild from ``get_config()`` (fresh, randomly initialised weights)."""
        return cls(**config)

    # -- modes, gradients, state ---------------------------------------------

    def train(self, mode=True):
        self.training = bool(mode)
        if not self.training:
            self._cache = None
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for grad in self.grads.values():
            grad.fill(0)

    def state_dict(self):
        """Copies of the parameters under their names, in order."""
        return {name: p.copy() for name, p in self._params.items()}

    def load_state_dict(self, state_dict, strict=True):
        """Load parameters by name (floating arrays are cast to the layer's
        dtype). Everything is checked before anything is changed; values are
        copied into the existing arrays."""
        shapes = self._param_shapes()
        missing = [k for k in shapes if k not in state_dict]
        unexpected = [k for k in state_dict if k not in shapes]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys "
                           f"{unexpected} (expected {list(shapes)})")
        loaded = {}
        for name, shape in shapes.items():
            if name not in state_dict:
                continue
            value = np.asarray(state_dict[name])
            if not np.issubdtype(value.dtype, np.floating):
                raise TypeError(f"load_state_dict: {name} must be a floating-point array, "
                                f"got dtype {value.dtype}")
            if value.shape != shape:
                raise ValueError(f"load_state_dict: {name} must have shape {shape}, "
                                 f"got {value.shape}")
            loaded[name] = value
        for name, value in loaded.items():
            np.copyto(self._params[name], value, casting="unsafe")

    # -- forward / backward --------------------------------------------------

    def __call__(self, x, hx=None, lengths=None):
        return self.forward(x, hx, lengths)

    def _input_layout(self):
        return ("(batch, seq_len, input_size)" if self.batch_first
                else "(seq_len, batch, input_size)")

    def _check_states(self, hx, batch, unbatched):
        count = self.num_layers * self.num_directions
        shape = (count, self.hidden_size) if unbatched else (count, batch, self.hidden_size)
        if hx is None:
            states = [None, None]
        elif not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"hx must be a tuple (h_0, c_0) of arrays of shape {shape}")
        else:
            states = list(hx)
        result = []
        for name, state in zip(("hx[0] (h_0)", "hx[1] (c_0)"), states):
            if state is None:
                result.append(np.zeros((count, batch, self.hidden_size), self.dtype))
                continue
            state = _as_float_array(name, state, self.dtype)
            if state.shape != shape:
                raise ValueError(f"{name} must have shape {shape} (num_layers * num_directions"
                                 f"{'' if unbatched else ', batch'}, hidden_size), "
                                 f"got {state.shape}")
            result.append(np.ascontiguousarray(state.reshape(count, batch, self.hidden_size)))
        return result

    @staticmethod
    def _check_lengths(lengths, seq_len, batch, unbatched):
        if lengths is None:
            return None
        if unbatched:
            raise ValueError("lengths needs a batched input (seq_len, batch, input_size)")
        array = np.asarray(lengths)
        if array.dtype.kind not in "iu":
            raise TypeError(f"lengths must be integers, got dtype {array.dtype}")
        if array.shape != (batch,):
            raise ValueError(f"lengths must have shape ({batch},) (one per sequence), "
                             f"got {array.shape}")
        if array.min() < 1 or array.max() > seq_len:
            raise ValueError(f"lengths must be in 1..{seq_len} (seq_len), got values in "
                             f"{array.min()}..{array.max()}")
        return np.ascontiguousarray(array, dtype=np.int64)

    def _to_user_layout(self, array, unbatched):
        if unbatched:
            return array[:, 0]
        if self.batch_first:
            return np.ascontiguousarray(array.transpose(1, 0, 2))
        return array

    def forward(self, x, hx=None, lengths=None):
        """Run the layer: ``(out, (h_n, c_n))``.

        x: (seq_len, batch, input_size), (batch, seq_len, input_size) with
        batch_first, or unbatched (seq_len, input_size). hx: (h_0, c_0), each
        (num_layers * num_directions, batch, hidden_size), zeros if None.
        lengths: one int per sequence in 1..seq_len, or None.
        """
        x = _as_float_array("x", x, self.dtype)
        if x.ndim not in (2, 3):
            raise ValueError(f"x must be 3-D {self._input_layout()} or 2-D "
                             f"(seq_len, input_size), got shape {x.shape}")
        user_shape = x.shape
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        seq_len, batch, features = x.shape
        if features != self.input_size:
            raise ValueError(f"x must have input_size={self.input_size} features in its last "
                             f"axis {self._input_layout()}, got shape {user_shape}")
        if seq_len < 1 or batch < 1:
            raise ValueError(f"x must have seq_len >= 1 and batch >= 1, got shape {user_shape}")
        lengths = self._check_lengths(lengths, seq_len, batch, unbatched)
        if self.training:
            # A private copy (an in-place edit of the caller's array must not
            # change the gradients), with padding zeroed so that NaN or inf
            # there cannot reach the weight gradients.
            x = np.array(x, order="C")
            if lengths is not None:
                x[np.arange(seq_len)[:, None] >= lengths[None, :]] = 0
        else:
            x = np.ascontiguousarray(x)
        h0, c0 = self._check_states(hx, batch, unbatched)
        out, h_n, c_n, cache = self._run_forward(x, h0, c0, lengths)
        self._cache = cache
        if cache is not None:
            cache["out_shape"] = out.shape
            cache["unbatched"] = unbatched
        out = self._to_user_layout(out, unbatched)
        if unbatched:
            h_n, c_n = h_n[:, 0], c_n[:, 0]
        return out, (h_n, c_n)

    def _masks(self, shape):
        """Zoneout masks of one layer direction (training), or (None, None)."""
        if not self.training:
            return None, None
        masks = []
        for rate in (self.zoneout, self.zoneout_cell):
            masks.append((self._rng.random(shape) < rate).astype(self.dtype) if rate > 0
                         else None)
        return tuple(masks)

    def _run_forward(self, x, h0, c0, lengths):
        kernels = _IMPLS[self._impl]
        n_threads = resolve_n_threads(self.n_threads)
        seq_len, batch, _ = x.shape
        H, D = self.hidden_size, self.num_directions
        training = self.training
        h_n = np.empty_like(h0)
        c_n = np.empty_like(c0)
        layers, all_masks = [], []
        layer_input = x
        with single_threaded_blas():
            for layer in range(self.num_layers):
                out = np.empty((seq_len, batch, D * H), self.dtype)
                caches, layer_masks = [], []
                for direction in range(D):
                    index = layer * D + direction
                    mask_h, mask_c = self._masks((seq_len, batch, H))
                    layer_masks.append((mask_h, mask_c))
                    h, c, cache = kernels.forward(
                        layer_input, self._local(self._params, layer, direction), h0[index],
                        c0[index], lengths, bool(direction), training, out, direction * H,
                        self.zoneout, self.zoneout_cell, mask_h, mask_c, self.eps, n_threads)
                    h_n[index] = h
                    c_n[index] = c
                    caches.append(cache)
                entry = {"input": layer_input, "caches": caches, "mask": None}
                if layer < self.num_layers - 1 and training and self.dropout > 0:
                    # Inter-layer dropout (PyTorch's `dropout`), inverted scaling.
                    keep = 1.0 - self.dropout
                    mask = (self._rng.random(out.shape) < keep).astype(self.dtype) / keep
                    out = out * mask
                    entry["mask"] = mask
                layers.append(entry)
                all_masks.append(layer_masks)
                layer_input = out
        cache = None
        if training:
            self.last_zoneout_masks = all_masks
            cache = {"layers": layers, "lengths": lengths, "n_threads": n_threads,
                     "kernels": kernels}
        return layer_input, h_n, c_n, cache

    def backward(self, grad_output, grad_hn=None):
        """Backpropagate through the last training-mode forward.

        grad_output: dL/d(out), shaped like ``out``. grad_hn: None or a tuple
        (dL/dh_n, dL/dc_n), either of which may be None. Returns
        ``(dx, (dh_0, dc_0))`` shaped like ``x`` and the states. Parameter
        gradients are added to ``self.grads``. Gradients at positions past a
        sequence's length are ignored (the output there is a constant zero).
        """
        cache = self._cache
        if cache is None:
            raise RuntimeError("backward() needs a forward() in training mode (call train() "
                               "first) and can be called once per forward")
        seq_len, batch, width = cache["out_shape"]
        unbatched = cache["unbatched"]
        if unbatched:
            expected = (seq_len, width)
        elif self.batch_first:
            expected = (batch, seq_len, width)
        else:
            expected = (seq_len, batch, width)
        grad = _as_float_array("grad_output", grad_output, self.dtype)
        if grad.shape != expected:
            raise ValueError(f"grad_output must have the shape of the output {expected}, "
                             f"got {grad.shape}")
        if unbatched:
            grad = grad[:, None, :]
        elif self.batch_first:
            grad = grad.transpose(1, 0, 2)
        grad = np.ascontiguousarray(grad)
        grad_states = self._check_grad_hn(grad_hn, batch, unbatched)
        self._cache = None  # one backward per forward, even if this one fails
        grad_x, grad_h0, grad_c0 = self._run_backward(cache, grad, grad_states)
        grad_x = self._to_user_layout(grad_x, unbatched)
        if unbatched:
            grad_h0, grad_c0 = grad_h0[:, 0], grad_c0[:, 0]
        return grad_x, (grad_h0, grad_c0)

    def _check_grad_hn(self, grad_hn, batch, unbatched):
        count = self.num_layers * self.num_directions
        shape = (count, self.hidden_size) if unbatched else (count, batch, self.hidden_size)
        if grad_hn is None:
            grad_hn = (None, None)
        if not isinstance(grad_hn, (tuple, list)) or len(grad_hn) != 2:
            raise TypeError(f"grad_hn must be None or a tuple (dh_n, dc_n) of arrays of shape "
                            f"{shape} (or None)")
        result = []
        for name, g in zip(("grad_hn[0] (dh_n)", "grad_hn[1] (dc_n)"), grad_hn):
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
        count = self.num_layers * D
        batch = grad.shape[1]
        grad_h0 = np.zeros((count, batch, H), self.dtype)
        grad_c0 = np.zeros((count, batch, H), self.dtype)
        grad_layer_out = grad
        with single_threaded_blas():
            for layer in reversed(range(self.num_layers)):
                entry = cache["layers"][layer]
                layer_input = entry["input"]
                grad_input = np.zeros_like(layer_input)
                for direction in range(D):
                    index = layer * D + direction
                    dh, dc = kernels.backward(
                        entry["caches"][direction], layer_input,
                        self._local(self._params, layer, direction), lengths, bool(direction),
                        grad_layer_out, direction * H,
                        None if grad_states[0] is None else grad_states[0][index],
                        None if grad_states[1] is None else grad_states[1][index],
                        grad_input, self._local(self.grads, layer, direction), n_threads)
                    grad_h0[index] = dh
                    grad_c0[index] = dc
                if layer > 0 and cache["layers"][layer - 1]["mask"] is not None:
                    grad_input *= cache["layers"][layer - 1]["mask"]
                grad_layer_out = grad_input
        return grad_layer_out, grad_h0, grad_c0


_ARGS = """
    Arguments: input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0 (between layers, training only), bidirectional=False (as
    torch.nn.LSTM); zoneout=0.0 (rate of h), zoneout_cell=0.0 (rate of c);
    eps=1e-5 (layer norm); dtype ("float32" or "float64"); seed (initialisation,
    zoneout and dropout masks); impl ("cython" kernels or the NumPy
    "reference"); n_threads (None: the global default, see
    fastrnn.set_num_threads). See fastrnn.lnlstm for the formulas and names.
"""


class LayerNormLSTM(_ZoneoutLSTMBase):
    __doc__ = """Layer-normalised LSTM (Haste's formulation) with optional zoneout.
    ``out, (h_n, c_n) = layer(x, (h_0, c_0), lengths)``.
    """ + _ARGS
    _layer_norm = True


class ZoneoutLSTM(_ZoneoutLSTMBase):
    __doc__ = """LSTM (torch.nn.LSTM's cell and parameter names) with zoneout.
    ``out, (h_n, c_n) = layer(x, (h_0, c_0), lengths)``; with zoneout=0 it equals
    fastrnn.LSTM with the same weights. ``eps`` is accepted and unused.
    """ + _ARGS
    _layer_norm = False

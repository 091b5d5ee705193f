"""Time-delay neural network (TDNN) layer: a causal, optionally dilated 1-D
convolution over time followed by an activation.

    h_t = f(W [x_t, x_{t-d}, ..., x_{t-K d}] + b),    f in {tanh, relu, identity},

where ``d`` is the dilation and steps before 0 are zero padding. The output at
step t sees only the last K*d + 1 steps (no recurrence), so every tap is one
GEMM over all steps in the compiled kernel (``fastrnn._timedelay``); the NumPy
oracle is ``reference_forward`` / ``reference_backward`` here.

Parameters have torch.nn.Conv1d's names, shapes and TAP ORDER: ``weight`` is
``(output_size, input_size, K + 1)`` and ``weight[:, :, k]`` multiplies
``x_{t - (K - k) d}``, i.e. the LAST tap ``weight[:, :, K]`` multiplies the
current input ``x_t`` and ``weight[:, :, 0]`` the oldest one. (In the lag order
of the formula above, ``W_j = weight[:, :, K - j]``; ``TimeDelay.lag_weights()``
returns that view.) With this order a
``torch.nn.Conv1d(input_size, output_size, kernel_size=K + 1, dilation=d,
padding=K * d)`` holding the same ``weight`` and ``bias`` gives the same
pre-activations on the first T output steps (its output trimmed to
``[..., :T]``): its state dict loads without any flipping.
"""
import numpy as np

from . import _timedelay
from ._threads import _check_n_threads, resolve_n_threads, single_threaded_blas
from .layers import _kernel_input, _time_major, _time_major_grad, _user_layout
from .nn import Module, _as_float_array, _check_lengths, _float_dtype, _no_cache_error, _rng

__all__ = ["TimeDelay", "reference_forward", "reference_backward", "ACTIVATIONS"]

# Activation name -> kernel code (src/_timedelay.pyx uses the same values).
ACTIVATIONS = {"identity": 0, "tanh": 1, "relu": 2}
_IMPLS = ("cython", "reference")


def _activation_name(activation):
    name = "identity" if activation is None else str(activation).lower()
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)} (or None for "
                         f"identity), got {activation!r}")
    return name


def _valid_mask(lengths, seq_len, batch):
    if lengths is None:
        return None
    return np.arange(seq_len)[:, None] < np.asarray(lengths)[None, :]


# -- NumPy reference (the oracle of the kernel) --------------------------------------

def reference_forward(x, weight, bias, dilation=1, activation="tanh", lengths=None):
    """NumPy TDNN forward, written as torch's Conv1d: pad ``K * dilation`` zero steps
    in front, cross-correlate, keep the first T steps, apply the activation, zero
    the steps past each length.

    x: (T, B, I) time-major; weight: (O, I, K + 1) (torch's Conv1d layout and tap
    order); bias: (O,) or None; lengths: (B,) ints in 1..T or None.
    Returns out (T, B, O).
    """
    x = np.asarray(x)
    T, B, _ = x.shape
    O, _, taps = weight.shape
    K = taps - 1
    padded = np.concatenate([np.zeros((K * dilation,) + x.shape[1:], x.dtype), x])
    pre = np.zeros((T, B, O), np.result_type(x, weight))
    if bias is not None:
        pre += bias
    for k in range(taps):
        # torch tap k reads padded[t + k * dilation] = x[t - (K - k) * dilation]
        pre += padded[k * dilation:k * dilation + T] @ weight[:, :, k].T
    out = _apply(activation, pre)
    mask = _valid_mask(lengths, T, B)
    if mask is not None:
        out[~mask] = 0
    return out


def _apply(activation, pre):
    name = _activation_name(activation)
    if name == "tanh":
        return np.tanh(pre)
    if name == "relu":
        return np.where(pre > 0, pre, np.where(np.isnan(pre), pre, 0)).astype(pre.dtype)
    return pre.copy()


def reference_backward(x, weight, dilation, activation, lengths, out, grad_out, has_bias=True):
    """Backward of ``reference_forward`` from its output ``out``.

    Returns ``(grad_x (T, B, I), grad_weight (O, I, K + 1), grad_bias (O,) or None)``.
    Gradients at steps past a sequence's length are ignored.
    """
    x = np.asarray(x)
    T, B, _ = x.shape
    O, _, taps = weight.shape
    K = taps - 1
    name = _activation_name(activation)
    if name == "tanh":
        g = grad_out * (1 - out * out)
    elif name == "relu":
        g = grad_out * (out > 0)
    else:
        g = np.array(grad_out, copy=True)
    mask = _valid_mask(lengths, T, B)
    if mask is not None:
        g[~mask] = 0
    padded = np.concatenate([np.zeros((K * dilation,) + x.shape[1:], x.dtype), x])
    grad_padded = np.zeros_like(padded)
    grad_weight = np.zeros_like(weight)
    gf = g.reshape(-1, O)
    for k in range(taps):
        window = padded[k * dilation:k * dilation + T]
        grad_weight[:, :, k] = gf.T @ window.reshape(-1, window.shape[2])
        grad_padded[k * dilation:k * dilation + T] += g @ weight[:, :, k]
    grad_bias = gf.sum(axis=0) if has_bias else None
    return grad_padded[K * dilation:], grad_weight, grad_bias


# -- the layer -------------------------------------------------------------------------

class TimeDelay(Module):
    """Time-delay layer (TDNN): ``h_t = f(W [x_t, x_{t-d}, ..., x_{t-K d}] + b)``.

    ``TimeDelay(input_size, output_size, delays, dilation=1, activation="tanh",
    bias=True, batch_first=False, dtype="float32", seed=None, impl="cython",
    n_threads=None)``:

    - ``delays`` is K, the number of past taps: the output at step t sees
      ``x_t, x_{t-d}, ..., x_{t-K d}`` (``kernel_size = K + 1``, receptive field
      ``K d + 1`` steps); steps before 0 are zeros (causal).
    - ``activation``: "tanh", "relu" or "identity" (None).
    - Parameters ``weight`` ``(output_size, input_size, K + 1)`` and ``bias``
      ``(output_size,)`` in torch.nn.Conv1d's layout and tap order (the last tap
      multiplies x_t; see the module docstring), initialised like Conv1d: uniform
      in ±1/sqrt(input_size * (K + 1)), reproducible with ``seed``.
    - ``forward(x, lengths=None)``: x ``(seq_len, batch, input_size)``,
      ``(batch, seq_len, input_size)`` with ``batch_first``, or unbatched
      ``(seq_len, input_size)`` -> the same layout with ``output_size`` features.
      With ``lengths`` the outputs past a sequence's length are zero (the steps
      before are unaffected by padding: the layer is causal). ``takes_lengths``
      is set, so ``Sequential`` passes its ``lengths`` on, and layers stack.
    - ``backward(grad_out)`` -> dL/dx; parameter gradients are added to ``grads``.
    - ``impl="reference"`` runs the NumPy reference; ``n_threads`` as the
      recurrent layers.
    """

    takes_lengths = True

    def __init__(self, input_size, output_size, delays, dilation=1, activation="tanh",
                 bias=True, batch_first=False, dtype="float32", seed=None, impl="cython",
                 n_threads=None):
        super().__init__()
        self.input_size = _int_at_least("input_size", input_size, 1)
        self.output_size = _int_at_least("output_size", output_size, 1)
        self.delays = _int_at_least("delays", delays, 0)
        self.dilation = _int_at_least("dilation", dilation, 1)
        self.activation = _activation_name(activation)
        self.has_bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dtype = _float_dtype(dtype)
        if impl not in _IMPLS:
            raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
        self.impl = impl
        self.n_threads = None if n_threads is None else _check_n_threads(n_threads)
        self._rng = _rng(seed)
        self._scratch = None    # backward's work buffer, reused between calls
        self._add_parameter("weight", np.zeros((self.output_size, self.input_size,
                                                self.kernel_size), self.dtype))
        if self.has_bias:
            self._add_parameter("bias", np.zeros(self.output_size, self.dtype))
        self.reset_parameters()

    @property
    def kernel_size(self):
        return self.delays + 1

    @property
    def receptive_field(self):
        """Number of steps the output at t depends on: ``delays * dilation + 1``."""
        return self.delays * self.dilation + 1

    def reset_parameters(self):
        """torch.nn.Conv1d's default: uniform in ±1/sqrt(input_size * kernel_size)."""
        bound = 1.0 / np.sqrt(self.input_size * self.kernel_size)
        self.weight[...] = self._rng.uniform(-bound, bound, self.weight.shape)
        if self.has_bias:
            self.bias[...] = self._rng.uniform(-bound, bound, self.bias.shape)

    def lag_weights(self):
        """The weights in lag order, ``(K + 1, output_size, input_size)``: entry j
        multiplies ``x_{t - j * dilation}`` (a copy)."""
        return np.ascontiguousarray(self.weight[:, :, ::-1].transpose(2, 0, 1))

    # -- forward / backward --

    def forward(self, x, lengths=None):
        x, unbatched = _time_major(_as_float_array("x", x, self.dtype), self.input_size,
                                   self.batch_first)
        seq_len, batch, _ = x.shape
        if lengths is not None:
            if unbatched:
                raise ValueError("lengths needs a batched input (seq_len, batch, input_size)")
            lengths = _check_lengths(lengths, seq_len, batch)
        x = _kernel_input(x, lengths, self.training)
        bias = self.bias if self.has_bias else None
        if self.impl == "reference":
            out = reference_forward(x, self.weight, bias, self.dilation, self.activation,
                                    lengths).astype(self.dtype, copy=False)
            taps = None
        else:
            taps = self.lag_weights()
            out = np.empty((seq_len, batch, self.output_size), self.dtype)
            n_threads = resolve_n_threads(self.n_threads)
            with single_threaded_blas():
                _timedelay.forward(x, taps, bias, self.dilation,
                                   ACTIVATIONS[self.activation], lengths, out, n_threads)
        self._cache = ({"x": x, "out": out, "taps": taps, "lengths": lengths,
                        "unbatched": unbatched} if self.training else None)
        if self.batch_first and not unbatched:
            return np.ascontiguousarray(out.transpose(1, 0, 2))
        if self.training:
            # backward reads out: an in-place edit of the returned array must not
            # change the gradients.
            out = out.copy()
        return out[:, 0] if unbatched else out

    def backward(self, grad_output):
        """dL/d(out) in the output's layout -> dL/dx in the input's layout."""
        cache = self._cache
        if cache is None:
            raise _no_cache_error()
        out = cache["out"]
        grad = _time_major_grad(_as_float_array("grad_output", grad_output, self.dtype),
                                out.shape, cache["unbatched"], self.batch_first)
        self._cache = None
        x = cache["x"]
        if self.impl == "reference":
            grad_x, grad_w, grad_b = reference_backward(
                x, self.weight, self.dilation, self.activation, cache["lengths"], out, grad,
                self.has_bias)
            self._grads["weight"] += grad_w
            if self.has_bias:
                self._grads["bias"] += grad_b
        else:
            taps = cache["taps"]
            grad_x = np.empty_like(x)
            grad_taps = np.zeros_like(taps)
            if (self._scratch is None or self._scratch.dtype != self.dtype
                    or self._scratch.size < out.size):
                self._scratch = np.empty(out.size, self.dtype)
            n_threads = resolve_n_threads(self.n_threads)
            with single_threaded_blas():
                _timedelay.backward(x, taps, self.dilation, ACTIVATIONS[self.activation],
                                    cache["lengths"], out, grad, grad_x, grad_taps,
                                    self._grads["bias"] if self.has_bias else None, n_threads,
                                    scratch=self._scratch)
            # lag order (K + 1, O, I) -> torch order (O, I, K + 1)
            self._grads["weight"] += grad_taps.transpose(1, 2, 0)[:, :, ::-1]
        return _user_layout(grad_x, cache["unbatched"], self.batch_first)

    def get_config(self):
        """Constructor arguments rebuilding this layer (``fastrnn.io.save``); the
        weights are in ``state_dict()``; ``seed`` and ``n_threads`` are not kept."""
        return {"input_size": self.input_size, "output_size": self.output_size,
                "delays": self.delays, "dilation": self.dilation,
                "activation": self.activation, "bias": self.has_bias,
                "batch_first": self.batch_first, "dtype": self.dtype.name, "impl": self.impl}

    def extra_repr(self):
        text = f"{self.input_size}, {self.output_size}, delays={self.delays}"
        if self.dilation != 1:
            text += f", dilation={self.dilation}"
        text += f", activation={self.activation!r}"
        if not self.has_bias:
            text += ", bias=False"
        if self.batch_first:
            text += ", batch_first=True"
        return text


def _int_at_least(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


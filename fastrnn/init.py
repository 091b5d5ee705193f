"""Parameter initialisers, in place on NumPy arrays (torch.nn.init's formulas).

Every random initialiser takes ``rng``: None (fresh entropy), an int seed or a
``numpy.random.Generator``; values are drawn in float64 and stored in the
array's dtype. The functions return the array. Arrays must be writable: the
recurrent layers lock their parameters in eval mode, so call ``train()``
first (a RuntimeError says so).

- ``calculate_gain(nonlinearity, param=None)``
- ``uniform_``, ``normal_``, ``constant_``, ``zeros_``, ``ones_``
- ``xavier_uniform_`` / ``xavier_normal_`` (Glorot), ``kaiming_uniform_`` /
  ``kaiming_normal_`` (He; the default ``nonlinearity="leaky_relu", a=0`` is
  the ReLU gain sqrt(2))
- ``orthogonal_(array, gain=1, rng=None, blocks=1)``: ``blocks`` > 1 makes each
  of ``blocks`` equal row blocks orthogonal on its own: the gate blocks of a
  recurrent ``weight_hh`` (``blocks = 4`` for LSTM, 3 for GRU).
- ``init_recurrent_(layer, ...)``: a whole RNN/LSTM/GRU layer (orthogonal
  recurrent weights per gate, Xavier input weights, zero biases, LSTM forget
  bias).
- ``lstm_forget_bias_(module, value=1.0)``: the forget-gate bias of every LSTM in
  a module (or of one LSTM).
"""
import math

import numpy as np

__all__ = ["calculate_gain", "uniform_", "normal_", "constant_", "zeros_", "ones_",
           "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
           "orthogonal_", "lstm_forget_bias_", "init_recurrent_"]


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _writable(array):
    if not isinstance(array, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(array).__name__}")
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"expected a floating-point array, got dtype {array.dtype}")
    if not array.flags.writeable:
        raise RuntimeError("the array is read-only: the recurrent layers lock their parameters "
                           "in eval mode (packed inference weights are cached); call train() "
                           "before initialising in place")
    return array


def calculate_gain(nonlinearity, param=None):
    """torch.nn.init.calculate_gain: the recommended gain of a nonlinearity."""
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d", "sigmoid")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity}")


def _fans(array):
    """torch's fan_in / fan_out: dims 1 and 0 times the receptive field size."""
    if array.ndim < 2:
        raise ValueError("fan in and fan out can not be computed for an array with fewer "
                         "than 2 dimensions")
    receptive = int(np.prod(array.shape[2:])) if array.ndim > 2 else 1
    return array.shape[1] * receptive, array.shape[0] * receptive


def uniform_(array, a=0.0, b=1.0, rng=None):
    """Fill with U(a, b)."""
    _writable(array)[...] = _rng(rng).uniform(a, b, array.shape)
    return array


def normal_(array, mean=0.0, std=1.0, rng=None):
    """Fill with N(mean, std^2)."""
    _writable(array)[...] = _rng(rng).normal(mean, std, array.shape)
    return array


def constant_(array, value):
    _writable(array)[...] = value
    return array


def zeros_(array):
    return constant_(array, 0.0)


def ones_(array):
    return constant_(array, 1.0)


def xavier_uniform_(array, gain=1.0, rng=None):
    """U(±gain * sqrt(6 / (fan_in + fan_out)))."""
    fan_in, fan_out = _fans(array)
    bound = gain * math.sqrt(6.0 / float(fan_in + fan_out))
    return uniform_(array, -bound, bound, rng)


def xavier_normal_(array, gain=1.0, rng=None):
    """N(0, (gain * sqrt(2 / (fan_in + fan_out)))^2)."""
    fan_in, fan_out = _fans(array)
    return normal_(array, 0.0, gain * math.sqrt(2.0 / float(fan_in + fan_out)), rng)


def _kaiming_std(array, a, mode, nonlinearity):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _fans(array)
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(array, a=0.0, mode="fan_in", nonlinearity="leaky_relu", rng=None):
    """He uniform: U(±gain * sqrt(3 / fan)), gain from ``nonlinearity`` (and slope ``a``)."""
    bound = math.sqrt(3.0) * _kaiming_std(array, a, mode, nonlinearity)
    return uniform_(array, -bound, bound, rng)


def kaiming_normal_(array, a=0.0, mode="fan_in", nonlinearity="leaky_relu", rng=None):
    """He normal: N(0, (gain / sqrt(fan))^2)."""
    return normal_(array, 0.0, _kaiming_std(array, a, mode, nonlinearity), rng)


def _orthogonal(rows, cols, rng):
    flat = rng.standard_normal((rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))
    return q.T if rows < cols else q


def orthogonal_(array, gain=1.0, rng=None, blocks=1):
    """(Semi-)orthogonal matrix (torch.nn.init.orthogonal_: QR of a Gaussian matrix,
    signs fixed by diag(R)), times ``gain``. The array is viewed as
    ``(shape[0], prod(shape[1:]))``. With ``blocks`` > 1 the rows are split into
    that many equal blocks, each orthogonal on its own (recurrent gate blocks)."""
    _writable(array)
    if array.ndim < 2:
        raise ValueError("only arrays with 2 or more dimensions are supported")
    rows, cols = array.shape[0], int(np.prod(array.shape[1:]))
    blocks = int(blocks)
    if blocks < 1 or rows % blocks:
        raise ValueError(f"blocks={blocks} must divide the number of rows {rows}")
    gen = _rng(rng)
    size = rows // blocks
    matrix = np.concatenate([_orthogonal(size, cols, gen) for _ in range(blocks)], axis=0)
    array[...] = (gain * matrix).reshape(array.shape)
    return array


def _lstms(module):
    from .layers import LSTM
    if isinstance(module, LSTM):
        return [module]
    if callable(getattr(module, "modules", None)):
        return [m for m in module.modules() if isinstance(m, LSTM)]
    return []


def _check_train_mode(layer):
    for name, p in layer.named_parameters():
        if not p.flags.writeable:
            raise RuntimeError(f"{type(layer).__name__} parameter {name!r} is read-only: the "
                               f"recurrent layers lock their parameters in eval mode; call "
                               f"train() first")


def lstm_forget_bias_(module, value=1.0):
    """Set the forget-gate bias (gate order i, f, g, o: rows hidden..2*hidden) of
    every LSTM in ``module`` (an LSTM, or any module with ``modules()``) so that
    ``b_ih + b_hh`` is ``value``: ``bias_ih`` gets ``value``, ``bias_hh`` zero.
    Returns the number of LSTM layers changed (0 if there is none or they have
    no bias)."""
    count = 0
    for lstm in _lstms(module):
        if not lstm.bias:
            continue
        _check_train_mode(lstm)
        H = lstm.hidden_size
        for name, p in lstm.named_parameters():
            if name.startswith("bias_ih"):
                p[H:2 * H] = value
            elif name.startswith("bias_hh"):
                p[H:2 * H] = 0
        count += 1
    return count


def init_recurrent_(layer, rng=None, weight_ih="xavier_uniform", weight_hh="orthogonal",
                    bias=0.0, forget_bias=1.0):
    """Re-initialise an RNN/LSTM/GRU layer in place, per gate block:
    ``weight_ih`` "xavier_uniform" | "xavier_normal" | "kaiming_uniform" | None (keep),
    ``weight_hh`` "orthogonal" | "xavier_uniform" | None, biases set to ``bias``
    (None: keep), and for an LSTM the forget-gate bias (``forget_bias``, see
    ``lstm_forget_bias_``; None: leave). Returns the layer."""
    _check_train_mode(layer)
    gen = _rng(rng)
    G = layer.gate_count
    H = layer.hidden_size
    input_inits = {"xavier_uniform": xavier_uniform_, "xavier_normal": xavier_normal_,
                   "kaiming_uniform": kaiming_uniform_}
    hidden_inits = {"orthogonal": orthogonal_, "xavier_uniform": xavier_uniform_}
    if weight_ih is not None and weight_ih not in input_inits:
        raise ValueError(f"weight_ih must be one of {sorted(input_inits)} or None")
    if weight_hh is not None and weight_hh not in hidden_inits:
        raise ValueError(f"weight_hh must be one of {sorted(hidden_inits)} or None")
    for name, p in layer.named_parameters():
        if name.startswith("weight_ih") and weight_ih is not None:
            for g in range(G):
                input_inits[weight_ih](p[g * H:(g + 1) * H], rng=gen)
        elif name.startswith("weight_hh") and weight_hh is not None:
            if weight_hh == "orthogonal":
                orthogonal_(p, rng=gen, blocks=G)
            else:
                for g in range(G):
                    xavier_uniform_(p[g * H:(g + 1) * H], rng=gen)
        elif name.startswith("bias") and bias is not None:
            p[...] = bias
    if forget_bias is not None:
        lstm_forget_bias_(layer, forget_bias)
    return layer

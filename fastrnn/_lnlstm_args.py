"""Argument checks shared by ``fastrnn._lnlstm`` (compiled) and
``fastrnn.lnlstm_reference`` (NumPy): one layer, one direction of the
layer-normalised / zoneout LSTM.

The layer gives users friendly messages; these checks make sure that no call,
however made, lets the kernel read or write out of bounds.
"""
import numpy as np

from ._kernel_args import (check_array, check_backward_input, check_input, check_lengths,
                           check_n_threads, check_out_array, check_writable, state_grad)

# Local parameter names of one layer and direction (the layer appends the
# suffix ``_l{k}`` / ``_l{k}_reverse``), in the order of named_parameters().
LSTM_NAMES = ("weight_ih", "weight_hh")
BIAS_NAMES = ("bias_ih", "bias_hh")
LN_NAMES = ("ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias",
            "ln_c_weight", "ln_c_bias")

#: Layer-norm epsilon (Haste's value): rstd = 1 / sqrt(var + eps).
DEFAULT_EPS = 1e-5


def param_shapes(input_size, hidden_size, bias, layer_norm):
    """Local name -> shape of one layer and direction, in parameter order."""
    G = 4 * hidden_size
    shapes = {"weight_ih": (G, input_size), "weight_hh": (G, hidden_size)}
    if bias:
        shapes.update(bias_ih=(G,), bias_hh=(G,))
    if layer_norm:
        shapes.update(ln_ih_weight=(G,), ln_ih_bias=(G,), ln_hh_weight=(G,), ln_hh_bias=(G,),
                      ln_c_weight=(hidden_size,), ln_c_bias=(hidden_size,))
    return shapes


def uses_layer_norm(weights):
    """True when ``weights`` holds the six layer-norm parameters, False when it
    holds none of them; anything else raises."""
    present = [n for n in LN_NAMES if weights.get(n) is not None]
    if present and len(present) != len(LN_NAMES):
        missing = [n for n in LN_NAMES if n not in present]
        raise ValueError(f"weights must hold all of {LN_NAMES} (layer norm) or none of them; "
                         f"missing {missing}")
    return bool(present)


def has_bias(weights):
    present = [weights.get(n) is not None for n in BIAS_NAMES]
    if present[0] != present[1]:
        raise ValueError("weights must hold both bias_ih and bias_hh, or neither")
    return present[0]


def check_weights(weights, input_size, hidden_size, dtype, what="weights"):
    """Validate a weights (or grads) dict; returns (has_bias, layer_norm)."""
    if not isinstance(weights, dict):
        raise TypeError(f"{what} must be a dict of arrays, got {type(weights).__name__}")
    bias, layer_norm = has_bias(weights), uses_layer_norm(weights)
    shapes = param_shapes(input_size, hidden_size, bias, layer_norm)
    unknown = [n for n, v in weights.items() if n not in shapes and v is not None]
    if unknown:
        raise ValueError(f"{what} has unknown keys {unknown} (expected {list(shapes)})")
    for name, shape in shapes.items():
        check_array(f"{what}[{name!r}]", weights.get(name), shape, dtype)
    return bias, layer_norm


def check_zoneout(name, p, mask, shape, dtype):
    """p in [0, 1]; mask None or an array of ``shape`` (values 0/1, not checked)."""
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p!r}")
    if mask is not None:
        check_array(f"mask for {name}", mask, shape, dtype)
        if not mask.flags.c_contiguous:
            raise ValueError(f"mask for {name} must be C-contiguous")
    return p


def check_forward_args(x, weights, h0, c0, lengths, out, out_col, zoneout_h, zoneout_c,
                       mask_h, mask_c, eps, n_threads):
    """Validate a forward call. Returns (T, B, I, H, has_bias, layer_norm,
    lengths, zoneout_h, zoneout_c, eps)."""
    check_input(x, need_features=True)
    T, B, I = x.shape
    dtype = x.dtype
    w_hh = weights.get("weight_hh") if isinstance(weights, dict) else None
    if not isinstance(w_hh, np.ndarray) or w_hh.ndim != 2 or w_hh.shape[1] < 1:
        raise ValueError("weights['weight_hh'] must be a 2-D array (4 * hidden_size, "
                         "hidden_size)")
    H = w_hh.shape[1]
    bias, layer_norm = check_weights(weights, I, H, dtype)
    for name in param_shapes(I, H, bias, layer_norm):
        if not weights[name].flags.c_contiguous:
            raise ValueError(f"weights[{name!r}] must be C-contiguous")
    check_array("h0", h0, (B, H), dtype)
    check_array("c0", c0, (B, H), dtype)
    check_out_array("out", out, T, B, H, out_col, dtype, writable=True)
    zoneout_h = check_zoneout("zoneout_h", zoneout_h, mask_h, (T, B, H), dtype)
    zoneout_c = check_zoneout("zoneout_c", zoneout_c, mask_c, (T, B, H), dtype)
    eps = float(eps)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    check_n_threads(n_threads)
    return (T, B, I, H, bias, layer_norm, check_lengths(lengths, B, T), zoneout_h, zoneout_c,
            eps)


def check_backward_args(T, B, H, dtype, layer_norm, x, weights, lengths, grad_out, out_col,
                        grad_h_n, grad_c_n, grad_x, grads, n_threads):
    """Validate a backward call against the forward's sizes (from its cache).

    Returns (I, has_bias, lengths, dh, dc): dh/dc are fresh C-contiguous
    copies of grad_h_n/grad_c_n (zeros when None).
    """
    I = check_backward_input(x, T, B, dtype)
    bias, ln = check_weights(weights, I, H, dtype)
    if ln != layer_norm:
        raise ValueError("weights must have the layer-norm parameters iff the forward had them")
    grad_bias, grad_ln = check_weights(grads, I, H, dtype, what="grads")
    if grad_bias != bias or grad_ln != ln:
        raise ValueError("grads must have the same keys as weights")
    for name, g in grads.items():
        if not (g.flags.c_contiguous and g.flags.writeable):
            raise ValueError(f"grads[{name!r}] must be a C-contiguous, writable array")
    check_out_array("grad_out", grad_out, T, B, H, out_col, dtype, writable=False)
    check_writable("grad_x", grad_x, (T, B, I), dtype)
    check_n_threads(n_threads)
    lengths = check_lengths(lengths, B, T)
    dh = state_grad("grad_h_n", grad_h_n, B, H, dtype)
    dc = state_grad("grad_c_n", grad_c_n, B, H, dtype)
    return I, bias, lengths, dh, dc

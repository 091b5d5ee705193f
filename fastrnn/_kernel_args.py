"""Argument checks shared by the compiled kernels' Python entry points.

The layers give users friendly messages; these checks make sure that no
call, however made, lets a kernel read or write out of bounds.
"""
import numpy as np

CELL_RNN_TANH, CELL_RNN_RELU, CELL_LSTM, CELL_GRU = 0, 1, 2, 3


def gate_count(cell):
    """Number of gate blocks of hidden_size rows in weight_ih / weight_hh."""
    counts = {CELL_RNN_TANH: 1, CELL_RNN_RELU: 1, CELL_LSTM: 4, CELL_GRU: 3}
    if cell not in counts:
        raise ValueError(f"unknown cell {cell!r}")
    return counts[cell]


def check_array(name, a, shape, dtype):
    if a is None:
        raise ValueError(f"{name} is required: an array of shape {shape}")
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")


def check_lengths(lengths, batch, seq_len):
    """None, or an int64 C-contiguous (batch,) array with values in 1..seq_len."""
    if lengths is None:
        return None
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape ({batch},), got {lengths.shape}")
    if lengths.min() < 1 or lengths.max() > seq_len:
        raise ValueError(f"lengths must be in 1..{seq_len}, got values in "
                         f"{lengths.min()}..{lengths.max()}")
    return lengths


def check_writable(name, a, shape, dtype):
    """check_array, and a C-contiguous, writable array (a kernel writes into it)."""
    check_array(name, a, shape, dtype)
    if not (a.flags.c_contiguous and a.flags.writeable):
        raise ValueError(f"{name} must be a C-contiguous, writable array")


def check_n_threads(n_threads):
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")


def check_input(x, need_features=False):
    """A forward's x: a C-contiguous float32/float64 (seq_len, batch, input_size)
    array with seq_len, batch (and with need_features, input_size) >= 1."""
    if not isinstance(x, np.ndarray) or x.ndim != 3:
        raise ValueError(f"x must be a 3-D array (seq_len, batch, input_size), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    T, B, I = x.shape
    if need_features and (T < 1 or B < 1 or I < 1):
        raise ValueError(f"x must have seq_len, batch, input_size >= 1, got shape {x.shape}")
    if T < 1 or B < 1:
        raise ValueError(f"x must have seq_len >= 1 and batch >= 1, got shape {x.shape}")
    dtype = x.dtype
    if dtype != np.float32 and dtype != np.float64:
        raise TypeError(f"x must be float32 or float64, got {dtype}")
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous (use np.ascontiguousarray)")


def check_out_array(name, a, seq_len, batch, hidden_size, out_col, dtype, writable):
    """out (forward, writable) or grad_out (backward): a C-contiguous (seq_len,
    batch, >= out_col + hidden_size) array of the dtype, of which one direction
    uses the columns out_col:out_col + hidden_size."""
    T, B, H = seq_len, batch, hidden_size
    if (not isinstance(a, np.ndarray) or a.ndim != 3 or a.shape[:2] != (T, B)
            or not 0 <= out_col <= a.shape[2] - H):
        raise ValueError(f"{name} must be ({T}, {B}, >= out_col + {H}), got "
                         f"{getattr(a, 'shape', None)} with out_col={out_col}")
    check_array(name, a, a.shape, dtype)
    if writable:
        if not (a.flags.c_contiguous and a.flags.writeable):
            raise ValueError(f"{name} must be a C-contiguous, writable array")
    elif not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray)")


def check_backward_input(x, seq_len, batch, dtype):
    """A backward's x: the forward's input (seq_len, batch, input_size), C-contiguous.
    Returns input_size."""
    T, B = seq_len, batch
    if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[:2] != (T, B):
        raise ValueError(f"x must be the forward's input, shape ({T}, {B}, input_size), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    I = x.shape[2]
    check_array("x", x, (T, B, I), dtype)
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous (use np.ascontiguousarray)")
    return I


def state_grad(name, grad, batch, hidden_size, dtype):
    """A fresh (batch, hidden_size) array of the dtype: zeros, or a copy of grad
    (dL/dh_n or dL/dc_n, of any dtype), which the kernels overwrite."""
    result = np.zeros((batch, hidden_size), dtype)
    if grad is not None:
        grad = np.asarray(grad)
        check_array(name, grad, (batch, hidden_size), grad.dtype)
        result[...] = grad
    return result


def check_forward_args(cell, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, lengths,
                       out, out_col, n_threads):
    """Validate a forward call; returns (seq_len, batch, input_size, hidden_size, lengths)."""
    G = gate_count(cell)
    check_input(x)
    T, B, I = x.shape
    dtype = x.dtype
    if not isinstance(weight_hh, np.ndarray) or weight_hh.ndim != 2:
        raise ValueError("weight_hh must be a 2-D array (gates * hidden_size, hidden_size)")
    H = weight_hh.shape[1]
    check_array("weight_ih", weight_ih, (G * H, I), dtype)
    check_array("weight_hh", weight_hh, (G * H, H), dtype)
    if (bias_ih is None) != (bias_hh is None):
        raise ValueError("bias_ih and bias_hh must both be arrays or both None")
    if bias_ih is not None:
        check_array("bias_ih", bias_ih, (G * H,), dtype)
        check_array("bias_hh", bias_hh, (G * H,), dtype)
    check_array("h0", h0, (B, H), dtype)
    if cell == CELL_LSTM:
        check_array("c0", c0, (B, H), dtype)
    check_out_array("out", out, T, B, H, out_col, dtype, writable=True)
    check_n_threads(n_threads)
    return T, B, I, H, check_lengths(lengths, B, T)


def check_recurrent_mask(recurrent_mask, training, batch, hidden_size, dtype):
    """None, or the variational (recurrent) dropout mask as a C-contiguous
    (batch, hidden_size) array of the dtype; training only."""
    if recurrent_mask is None:
        return None
    if not training:
        raise ValueError("recurrent_mask is for training (dropout is off in inference)")
    recurrent_mask = np.ascontiguousarray(recurrent_mask, dtype=dtype)
    if recurrent_mask.shape != (batch, hidden_size):
        raise ValueError(f"recurrent_mask must have shape ({batch}, {hidden_size}), got "
                         f"{recurrent_mask.shape}")
    return recurrent_mask


def check_backward_args(cell, seq_len, batch, hidden_size, dtype, x, weight_ih, weight_hh,
                        lengths, grad_out, out_col, grad_h_n, grad_c_n, grad_x, grad_weight_ih,
                        grad_weight_hh, grad_bias_ih, grad_bias_hh, n_threads):
    """Validate a backward call against the forward's sizes (from its cache).

    Returns (input_size, lengths, dh, dc): dh/dc are fresh C-contiguous copies
    of grad_h_n/grad_c_n (zeros when None; dc None unless LSTM), which the
    kernels overwrite with dL/dh0, dL/dc0.
    """
    T, B, H, G = seq_len, batch, hidden_size, gate_count(cell)
    I = check_backward_input(x, T, B, dtype)
    check_array("weight_ih", weight_ih, (G * H, I), dtype)
    check_array("weight_hh", weight_hh, (G * H, H), dtype)
    check_out_array("grad_out", grad_out, T, B, H, out_col, dtype, writable=False)
    for name, array, shape in (("grad_x", grad_x, (T, B, I)),
                               ("grad_weight_ih", grad_weight_ih, (G * H, I)),
                               ("grad_weight_hh", grad_weight_hh, (G * H, H))):
        check_writable(name, array, shape, dtype)
    if (grad_bias_ih is None) != (grad_bias_hh is None):
        raise ValueError("grad_bias_ih and grad_bias_hh must both be arrays or both None")
    if grad_bias_ih is not None:
        check_writable("grad_bias_ih", grad_bias_ih, (G * H,), dtype)
        check_writable("grad_bias_hh", grad_bias_hh, (G * H,), dtype)
    check_n_threads(n_threads)
    lengths = check_lengths(lengths, B, T)
    dh = state_grad("grad_h_n", grad_h_n, B, H, dtype)
    dc = state_grad("grad_c_n", grad_c_n, B, H, dtype) if cell == CELL_LSTM else None
    return I, lengths, dh, dc


def fused_biases(cell, bias_ih, bias_hh, hidden_size, dtype):
    """The biases as the fused elementwise pass adds them: b_ih + b_hh, except
    GRU's n gate, where b_hn sits inside r * (W_hn h + b_hn). Returns (bias,
    bias_hn) with bias_hn None unless GRU; zeros when there is no bias."""
    H = hidden_size
    bias = np.zeros(gate_count(cell) * H, dtype)
    bias_hn = np.zeros(H, dtype) if cell == CELL_GRU else None
    if bias_ih is not None:
        bias = (bias_ih + bias_hh).astype(dtype)
        if cell == CELL_GRU:
            bias[2 * H:] = bias_ih[2 * H:]
            bias_hn[:] = bias_hh[2 * H:]
    return bias, bias_hn

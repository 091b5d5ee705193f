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


def check_forward_args(cell, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, lengths,
                       out, out_col, n_threads):
    """Validate a forward call; returns (seq_len, batch, input_size, hidden_size, lengths)."""
    G = gate_count(cell)
    if not isinstance(x, np.ndarray) or x.ndim != 3:
        raise ValueError(f"x must be a 3-D array (seq_len, batch, input_size), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    T, B, I = x.shape
    if T < 1 or B < 1:
        raise ValueError(f"x must have seq_len >= 1 and batch >= 1, got shape {x.shape}")
    dtype = x.dtype
    if dtype != np.float32 and dtype != np.float64:
        raise TypeError(f"x must be float32 or float64, got {dtype}")
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous (use np.ascontiguousarray)")
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
    if (not isinstance(out, np.ndarray) or out.ndim != 3 or out.shape[:2] != (T, B)
            or not 0 <= out_col <= out.shape[2] - H):
        raise ValueError(f"out must be ({T}, {B}, >= out_col + {H}), got "
                         f"{getattr(out, 'shape', None)} with out_col={out_col}")
    check_array("out", out, out.shape, dtype)
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError("out must be a C-contiguous, writable array")
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    return T, B, I, H, check_lengths(lengths, B, T)


def check_backward_args(cell, seq_len, batch, hidden_size, dtype, x, weight_ih, weight_hh,
                        lengths, grad_out, out_col, grad_h_n, grad_c_n, grad_x, grad_weight_ih,
                        grad_weight_hh, grad_bias_ih, grad_bias_hh, n_threads):
    """Validate a backward call against the forward's sizes (from its cache).

    Returns (input_size, lengths, dh, dc): dh/dc are fresh C-contiguous copies
    of grad_h_n/grad_c_n (zeros when None; dc None unless LSTM), which the
    kernels overwrite with dL/dh0, dL/dc0.
    """
    T, B, H, G = seq_len, batch, hidden_size, gate_count(cell)
    if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[:2] != (T, B):
        raise ValueError(f"x must be the forward's input, shape ({T}, {B}, input_size), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    I = x.shape[2]
    check_array("x", x, (T, B, I), dtype)
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous (use np.ascontiguousarray)")
    check_array("weight_ih", weight_ih, (G * H, I), dtype)
    check_array("weight_hh", weight_hh, (G * H, H), dtype)
    if (not isinstance(grad_out, np.ndarray) or grad_out.ndim != 3
            or grad_out.shape[:2] != (T, B) or not 0 <= out_col <= grad_out.shape[2] - H):
        raise ValueError(f"grad_out must be ({T}, {B}, >= out_col + {H}), got "
                         f"{getattr(grad_out, 'shape', None)} with out_col={out_col}")
    check_array("grad_out", grad_out, grad_out.shape, dtype)
    if not grad_out.flags.c_contiguous:
        raise ValueError("grad_out must be C-contiguous (use np.ascontiguousarray)")
    for name, array, shape in (("grad_x", grad_x, (T, B, I)),
                               ("grad_weight_ih", grad_weight_ih, (G * H, I)),
                               ("grad_weight_hh", grad_weight_hh, (G * H, H))):
        check_array(name, array, shape, dtype)
        if not (array.flags.c_contiguous and array.flags.writeable):
            raise ValueError(f"{name} must be a C-contiguous, writable array")
    if (grad_bias_ih is None) != (grad_bias_hh is None):
        raise ValueError("grad_bias_ih and grad_bias_hh must both be arrays or both None")
    if grad_bias_ih is not None:
        check_array("grad_bias_ih", grad_bias_ih, (G * H,), dtype)
        check_array("grad_bias_hh", grad_bias_hh, (G * H,), dtype)
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    lengths = check_lengths(lengths, B, T)
    dh = np.zeros((B, H), dtype)
    if grad_h_n is not None:
        check_array("grad_h_n", np.asarray(grad_h_n), (B, H), np.asarray(grad_h_n).dtype)
        dh[...] = grad_h_n
    dc = None
    if cell == CELL_LSTM:
        dc = np.zeros((B, H), dtype)
        if grad_c_n is not None:
            check_array("grad_c_n", np.asarray(grad_c_n), (B, H), np.asarray(grad_c_n).dtype)
            dc[...] = grad_c_n
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

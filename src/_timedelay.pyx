# cython: language_level=3
"""Forward and backward of the time-delay (TDNN) layer: a causal, dilated 1-D
convolution over time followed by an activation.

    out[t] = act(bias + sum_j x[t - j * dilation] @ w[j].T),  j = 0..K,

with ``x[s] = 0`` for ``s < 0``, on time-major ``x`` (T, B, I) and ``w``
given as (K + 1, O, I) in LAG order (``w[j]`` multiplies the input j *
dilation steps back; the layer converts torch's Conv1d layout to this). The
NumPy oracle is ``fastrnn.timedelay.reference_forward/backward``.

Design:
- Rows are (t, b) pairs, so shifting by j * dilation steps is an offset of
  j * dilation * B rows: every tap is ONE GEMM over all valid rows
  (``out[s:] += x[:N - s] @ w[j].T``), never a loop over steps.
- Forward and the input gradient cut the N = T * B rows into fixed-size
  tiles shared among OpenMP threads (each tile runs every tap: no
  reduction). Weight gradients are (tap, tile of output channels) items, one
  GEMM over all rows each; the bias gradient splits channels and sums rows in
  order. Tiles do not depend on the thread count, so every BLAS call and every
  sum is the same with 1 or N threads: bitwise deterministic.
- BLAS runs single-threaded inside (the caller limits it).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.string cimport memset

from _blas cimport gemm
from _parallel cimport block_start, sum_columns

import numpy as np

from fastrnn._kernel_args import check_array, check_input, check_lengths, check_n_threads

# Vectorised elementwise work (activation codes: fastrnn.timedelay.ACTIVATIONS).
cdef extern from "_timedelay_math.h" nogil:
    int ACT_IDENTITY "TD_IDENTITY"
    int ACT_TANH "TD_TANH"
    int ACT_RELU "TD_RELU"
    void td_activate_f32(Py_ssize_t n, int act, float *v)
    void td_activate_f64(Py_ssize_t n, int act, double *v)
    void td_act_grad_f32(Py_ssize_t n, int act, const float *y, const float *grad, float *g)
    void td_act_grad_f64(Py_ssize_t n, int act, const double *y, const double *grad,
                         double *g)

# Below this many multiply-adds a parallel region costs more than it saves.
DEF MIN_PARALLEL_WORK = 65536
# Work is cut into tiles of a FIXED size (rows of (step, sequence) pairs;
# output channels for the weight gradient), whatever the thread count: every
# BLAS call has the same shape with 1 or N threads, so results are identical.
DEF ROW_TILE = 256
DEF OUT_TILE = 128


cdef inline bint _valid(const int64_t *lengths, Py_ssize_t r, Py_ssize_t B) noexcept nogil:
    """Row r = t * B + b is inside its sequence."""
    return lengths == NULL or r // B < lengths[r % B]


# --------------------------------------------------------------------------
# Row-block workers (each called by one thread on rows [r0, r1)).
# --------------------------------------------------------------------------

cdef void _forward_rows(Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t N, Py_ssize_t B,
                        Py_ssize_t I, Py_ssize_t O, Py_ssize_t taps, Py_ssize_t dilation,
                        int act, const floating *x, const floating *w, const floating *bias,
                        const int64_t *lengths, floating *out) noexcept nogil:
    cdef Py_ssize_t r, o, j, shift, lo
    # out[r0:r1] = bias
    for r in range(r0, r1):
        for o in range(O):
            out[r * O + o] = bias[o] if bias != NULL else 0
    for j in range(taps):
        shift = j * dilation * B
        lo = max(r0, shift)
        if lo >= r1:
            continue
        # out[lo:r1] += x[lo - shift:r1 - shift] @ w[j].T
        gemm(False, True, r1 - lo, O, I, 1, x + (lo - shift) * I, I, w + j * O * I, I,
             1, out + lo * O, O)
    if floating is float:
        td_activate_f32((r1 - r0) * O, act, out + r0 * O)
    else:
        td_activate_f64((r1 - r0) * O, act, out + r0 * O)
    if lengths != NULL:
        for r in range(r0, r1):
            if not _valid(lengths, r, B):
                memset(out + r * O, 0, O * sizeof(floating))


cdef void _grad_pre_rows(Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t B, Py_ssize_t O, int act,
                         const floating *out, const floating *grad_out,
                         const int64_t *lengths, floating *g) noexcept nogil:
    """g = grad_out * act'(pre) (from the output), zero past each sequence's length."""
    cdef Py_ssize_t r
    if floating is float:
        td_act_grad_f32((r1 - r0) * O, act, out + r0 * O, grad_out + r0 * O, g + r0 * O)
    else:
        td_act_grad_f64((r1 - r0) * O, act, out + r0 * O, grad_out + r0 * O, g + r0 * O)
    if lengths != NULL:
        for r in range(r0, r1):
            if not _valid(lengths, r, B):
                memset(g + r * O, 0, O * sizeof(floating))


cdef void _grad_x_rows(Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t N, Py_ssize_t B,
                       Py_ssize_t I, Py_ssize_t O, Py_ssize_t taps, Py_ssize_t dilation,
                       const floating *g, const floating *w, floating *grad_x) noexcept nogil:
    cdef Py_ssize_t r, c, j, shift, hi
    for r in range(r0 * I, r1 * I):
        grad_x[r] = 0
    for j in range(taps):
        shift = j * dilation * B
        hi = min(r1, N - shift)
        if hi <= r0:
            continue
        # grad_x[r0:hi] += g[r0 + shift:hi + shift] @ w[j]
        gemm(False, False, hi - r0, I, O, 1, g + (r0 + shift) * O, O, w + j * O * I, I,
             1, grad_x + r0 * I, I)


# --------------------------------------------------------------------------
# Typed drivers.
# --------------------------------------------------------------------------

cdef inline int _threads_for(Py_ssize_t items, Py_ssize_t work, int n_threads) noexcept nogil:
    """Threads worth using on `items` work items of `work` multiply-adds in total."""
    if work < MIN_PARALLEL_WORK:
        return 1
    return <int>max(1, min(<Py_ssize_t>n_threads, items))


cdef void _forward_impl(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t O,
                        Py_ssize_t taps, Py_ssize_t dilation, int act, const floating *x,
                        const floating *w, const floating *bias, const int64_t *lengths,
                        floating *out, int n_threads) noexcept nogil:
    cdef Py_ssize_t N = T * B, tile, r0, r1
    cdef Py_ssize_t tiles = (N + ROW_TILE - 1) // ROW_TILE
    cdef int threads = _threads_for(tiles, N * O * I * taps, n_threads)
    for tile in prange(tiles, num_threads=threads, schedule="static"):
        r0 = tile * ROW_TILE
        r1 = min(N, r0 + ROW_TILE)
        _forward_rows(r0, r1, N, B, I, O, taps, dilation, act, x, w, bias, lengths, out)


cdef void _backward_impl(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t O,
                         Py_ssize_t taps, Py_ssize_t dilation, int act, const floating *x,
                         const floating *w, const int64_t *lengths, const floating *out,
                         const floating *grad_out, floating *g, floating *grad_x,
                         floating *grad_w, floating *grad_bias, floating *bias_sums,
                         int n_threads) noexcept nogil:
    cdef Py_ssize_t N = T * B, tile, r0, r1, item, j, shift, o0, o1, c0, c1, c, part
    cdef Py_ssize_t tiles = (N + ROW_TILE - 1) // ROW_TILE
    cdef Py_ssize_t o_tiles = (O + OUT_TILE - 1) // OUT_TILE
    cdef Py_ssize_t items = taps * o_tiles
    cdef int threads = _threads_for(tiles, N * O * I * taps, n_threads)
    cdef int w_threads = _threads_for(items, N * O * I * taps, n_threads)
    cdef int b_threads = _threads_for(O, N * O * 64, n_threads)
    # 1. g = grad_out * act'(pre), zero past the lengths.
    for tile in prange(tiles, num_threads=threads, schedule="static"):
        r0 = tile * ROW_TILE
        r1 = min(N, r0 + ROW_TILE)
        _grad_pre_rows(r0, r1, B, O, act, out, grad_out, lengths, g)
    # 2. grad_x: row tiles across threads, every tap per tile.
    if grad_x != NULL:
        for tile in prange(tiles, num_threads=threads, schedule="static"):
            r0 = tile * ROW_TILE
            r1 = min(N, r0 + ROW_TILE)
            _grad_x_rows(r0, r1, N, B, I, O, taps, dilation, g, w, grad_x)
    # 3. grad_w[j] += g[shift:].T @ x[:N - shift]: items are (tap, tile of output
    #    channels); the sum over all rows is one GEMM per item.
    # (dynamic: the taps' GEMMs differ in size; an item's result does not depend
    # on which thread runs it)
    for item in prange(items, num_threads=w_threads, schedule="dynamic"):
        j = item // o_tiles
        o0 = (item % o_tiles) * OUT_TILE
        o1 = min(O, o0 + OUT_TILE)
        shift = j * dilation * B
        if shift < N:
            gemm(True, False, o1 - o0, I, N - shift, 1, g + shift * O + o0, O, x, I,
                 1, grad_w + j * O * I + o0 * I, I)
    # 4. grad_bias += g.sum(0): channels split, rows summed in order.
    if grad_bias != NULL:
        for part in prange(b_threads, num_threads=b_threads, schedule="static"):
            c0 = block_start(O, b_threads, part)
            c1 = block_start(O, b_threads, part + 1)
            sum_columns(N, c0, c1, g, O, bias_sums)
            for c in range(c0, c1):
                grad_bias[c] += bias_sums[c]


# --------------------------------------------------------------------------
# Python entry points.
# --------------------------------------------------------------------------

def _check_common(x, weight_taps, dilation, act, lengths, n_threads):
    check_input(x, need_features=True)
    T, B, I = x.shape
    dtype = x.dtype
    if not isinstance(weight_taps, np.ndarray) or weight_taps.ndim != 3:
        raise ValueError("weight_taps must be a 3-D array (taps, out_channels, in_channels)")
    taps, O = weight_taps.shape[:2]
    if taps < 1 or O < 1:
        raise ValueError(f"weight_taps must have taps and out_channels >= 1, got "
                         f"{weight_taps.shape}")
    check_array("weight_taps", weight_taps, (taps, O, I), dtype)
    if not weight_taps.flags.c_contiguous:
        raise ValueError("weight_taps must be C-contiguous")
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    if act not in (ACT_IDENTITY, ACT_TANH, ACT_RELU):
        raise ValueError(f"unknown activation code {act}")
    check_n_threads(n_threads)
    return T, B, I, O, taps, dtype, check_lengths(lengths, B, T)


def _check_out(name, a, shape, dtype):
    check_array(name, a, shape, dtype)
    if not a.flags.c_contiguous or not a.flags.writeable:
        raise ValueError(f"{name} must be C-contiguous and writeable")


def forward(x, weight_taps, bias, Py_ssize_t dilation, int act, lengths, out, int n_threads):
    """out[t] = act(bias + sum_j x[t - j * dilation] @ weight_taps[j].T), zero for
    t >= lengths[b]. x (T, B, I), weight_taps (taps, O, I), bias (O,) or None,
    lengths (B,) ints or None, out (T, B, O) written. Same dtype everywhere."""
    T, B, I, O, taps, dtype, lengths = _check_common(x, weight_taps, dilation, act, lengths,
                                                     n_threads)
    if bias is not None:
        check_array("bias", bias, (O,), dtype)
        bias = np.ascontiguousarray(bias)
    _check_out("out", out, (T, B, O), dtype)
    if dtype == np.float32:
        _forward_typed[float](x.reshape(-1), weight_taps.reshape(-1), bias, lengths,
                              out.reshape(-1), T, B, I, O, taps, dilation, act, n_threads)
    else:
        _forward_typed[double](x.reshape(-1), weight_taps.reshape(-1), bias, lengths,
                               out.reshape(-1), T, B, I, O, taps, dilation, act, n_threads)


cdef _forward_typed(const floating[::1] x, const floating[::1] w, const floating[::1] bias,
                    const int64_t[::1] lengths, floating[::1] out, Py_ssize_t T, Py_ssize_t B,
                    Py_ssize_t I, Py_ssize_t O, Py_ssize_t taps, Py_ssize_t dilation, int act,
                    int n_threads):
    cdef const floating *bias_ptr = &bias[0] if bias is not None else NULL
    cdef const int64_t *len_ptr = &lengths[0] if lengths is not None else NULL
    with nogil:
        _forward_impl(T, B, I, O, taps, dilation, act, &x[0], &w[0], bias_ptr, len_ptr,
                      &out[0], n_threads)


def backward(x, weight_taps, Py_ssize_t dilation, int act, lengths, out, grad_out, grad_x,
             grad_weight_taps, grad_bias, int n_threads, scratch=None):
    """Backward of ``forward`` given its output ``out``: writes dL/dx into grad_x
    (T, B, I) (or skips it if None), ADDS dL/dw into grad_weight_taps (taps, O, I)
    and dL/dbias into grad_bias (O,) (None: no bias). Gradients at steps past a
    sequence's length are ignored (the output there is a constant zero).
    ``scratch``: optional 1-D C-contiguous array of the dtype with at least
    T * B * O entries, used for the pre-activation gradients (a caller reusing
    it between calls saves the page faults of a fresh buffer)."""
    T, B, I, O, taps, dtype, lengths = _check_common(x, weight_taps, dilation, act, lengths,
                                                     n_threads)
    check_array("out", out, (T, B, O), dtype)
    check_array("grad_out", grad_out, (T, B, O), dtype)
    out = np.ascontiguousarray(out)
    grad_out = np.ascontiguousarray(grad_out)
    if grad_x is not None:
        _check_out("grad_x", grad_x, (T, B, I), dtype)
        grad_x = grad_x.reshape(-1)
    _check_out("grad_weight_taps", grad_weight_taps, (taps, O, I), dtype)
    if grad_bias is not None:
        _check_out("grad_bias", grad_bias, (O,), dtype)
    if scratch is None:
        g = np.empty(T * B * O, dtype)
    else:
        if (not isinstance(scratch, np.ndarray) or scratch.dtype != dtype or scratch.ndim != 1
                or scratch.shape[0] < T * B * O or not scratch.flags.c_contiguous
                or not scratch.flags.writeable):
            raise ValueError(f"scratch must be a writeable C-contiguous 1-D {dtype} array of "
                             f"at least {T * B * O} entries")
        g = scratch[:T * B * O]
    bias_sums = np.empty(O, dtype)
    x, weight_taps = x.reshape(-1), weight_taps.reshape(-1)
    out, grad_out = out.reshape(-1), grad_out.reshape(-1)
    grad_weight_taps = grad_weight_taps.reshape(-1)
    if dtype == np.float32:
        _backward_typed[float](x, weight_taps, lengths, out, grad_out, g, grad_x,
                               grad_weight_taps, grad_bias, bias_sums, T, B, I, O, taps,
                               dilation, act, n_threads)
    else:
        _backward_typed[double](x, weight_taps, lengths, out, grad_out, g, grad_x,
                                grad_weight_taps, grad_bias, bias_sums, T, B, I, O, taps,
                                dilation, act, n_threads)


cdef _backward_typed(const floating[::1] x, const floating[::1] w, const int64_t[::1] lengths,
                     const floating[::1] out, const floating[::1] grad_out, floating[::1] g,
                     floating[::1] grad_x, floating[::1] grad_w, floating[::1] grad_bias,
                     floating[::1] bias_sums, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                     Py_ssize_t O, Py_ssize_t taps, Py_ssize_t dilation, int act,
                     int n_threads):
    cdef const int64_t *len_ptr = &lengths[0] if lengths is not None else NULL
    cdef floating *gx_ptr = &grad_x[0] if grad_x is not None else NULL
    cdef floating *gb_ptr = &grad_bias[0] if grad_bias is not None else NULL
    with nogil:
        _backward_impl(T, B, I, O, taps, dilation, act, &x[0], &w[0], len_ptr, &out[0],
                       &grad_out[0], &g[0], gx_ptr, &grad_w[0], gb_ptr, &bias_sums[0],
                       n_threads)

# cython: language_level=3
"""float32 inference on weights packed once per layer (see _packed_gemm.h).

Same call shape as ``fastrnn.reference.forward`` (with ``training=False``),
plus an optional ``packed`` argument: the result of ``pack_weights``, which a
layer keeps between calls so that packing is paid once.

Threads: for larger batches each thread runs the whole sequence for its own
rows (no barrier); for small batches the hidden units are split, so each
thread keeps its slice of W_hh in its own cache across steps, with one
barrier per step. The input projection of a chunk of steps is hoisted out of
the time loop; each thread projects the columns (or rows) it owns, so the
projection needs no barrier either.
"""
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset
from cython.parallel cimport parallel
cimport numpy as cnp

from _cells cimport GRU, LSTM, RNN_RELU

import numpy as np

cnp.import_array()

from fastrnn._kernel_args import check_forward_args, fused_biases, gate_count

cdef extern from "_packed_gemm.h" nogil:
    int fr_select_isa(int isa)
    int fr_isa_supported(int isa)
    int fr_current_isa()
    void fr_gemm_packed(Py_ssize_t rows, Py_ssize_t K, const float *A, Py_ssize_t lda,
                        const float *P, Py_ssize_t block_cols, Py_ssize_t n_blocks,
                        float *C, Py_ssize_t ldc, int accumulate)
    void fr_omp_barrier()
    int fr_omp_num_threads()
    int fr_omp_thread_num()

cdef extern from "_cell_math.h" nogil:
    void lstm_forward_row_f32(Py_ssize_t n, Py_ssize_t stride, float *gates, const float *bias,
                              const float *c_prev, float *c_new, float *h_new, float *out)
    void gru_forward_row_f32(Py_ssize_t n, Py_ssize_t stride, float *gates, float *gates_h,
                             const float *bias, const float *bias_hn, const float *h_prev,
                             float *h_new, float *out)
    void rnn_forward_row_f32(Py_ssize_t n, int relu, const float *gates, const float *bias,
                             float *h_new, float *out)

ISAS = {"generic": 0, "avx2": 1, "avx512": 2}
_ISA_NAMES = {v: k for k, v in ISAS.items()}
fr_select_isa(-1)

# Rows of the hoisted input projection per chunk of steps (as in _recurrent).
DEF PROJECTION_ROWS = 128
# Split the batch across threads when each gets at least this many rows;
# below, split the hidden units.
DEF MIN_ROWS_PER_THREAD = 4


def supported_isas():
    """The SIMD variants of the packed kernels this CPU can run."""
    return [name for name, isa in ISAS.items() if fr_isa_supported(isa)]


def get_isa():
    """The SIMD variant in use: "avx512", "avx2" or "generic"."""
    return _ISA_NAMES[fr_current_isa()]


def set_isa(name=None):
    """Use a SIMD variant ("avx512", "avx2", "generic"), or the best one (None)."""
    if name is not None and name not in ISAS:
        raise ValueError(f"isa must be one of {sorted(ISAS)} or None, got {name!r}")
    if fr_select_isa(-1 if name is None else ISAS[name]) < 0:
        raise ValueError(f"this CPU does not support the {name!r} kernels "
                         f"(supported: {supported_isas()})")


def units_per_block(int cell):
    """Hidden units per packed block: the block (gates x units) is 64 or 192 columns."""
    return 16 if cell == LSTM else 64


cdef class PackedWeights:
    """A layer direction's weights in the packed layout of _packed_gemm.h.

    Its arrays are built here (C-contiguous float32 of the shapes the kernels
    read) and cannot be replaced from Python.
    """
    cdef readonly int cell
    cdef readonly Py_ssize_t input_size, hidden_size, units, n_blocks, block_cols
    cdef readonly object weight_ih, weight_hh, bias, bias_hn

    def __init__(self, int cell, weight_ih, weight_hh, bias_ih, bias_hh):
        G = gate_count(cell)
        H = weight_hh.shape[1]
        U = units_per_block(cell)
        self.cell = cell
        self.input_size = weight_ih.shape[1]
        self.hidden_size = H
        self.units = U
        self.n_blocks = -(-H // U)
        self.block_cols = G * U
        self.weight_ih = self._pack(weight_ih, G, H, U)
        self.weight_hh = self._pack(weight_hh, G, H, U)
        bias, bias_hn = fused_biases(cell, bias_ih, bias_hh, H, np.float32)
        self.bias = self._pack(bias[:, None], G, H, U).reshape(-1)
        self.bias_hn = None
        if bias_hn is not None:
            self.bias_hn = np.zeros(self.n_blocks * U, np.float32)
            self.bias_hn[:H] = bias_hn

    def _pack(self, weight, G, H, U):
        """(G*H, K) -> (n_blocks, K, G*U): P[b, k, g*U + j] = W[g*H + b*U + j, k]."""
        K = weight.shape[1]
        padded = np.zeros((G, self.n_blocks * U, K), np.float32)
        padded[:, :H] = weight.reshape(G, H, K)
        blocks = padded.reshape(G, self.n_blocks, U, K).transpose(1, 3, 0, 2)
        return np.ascontiguousarray(blocks).reshape(self.n_blocks, K, G * U)


def pack_weights(cell, weight_ih, weight_hh, bias_ih, bias_hh):
    """Pack one layer direction's float32 weights for ``forward(..., packed=...)``."""
    return PackedWeights(cell, weight_ih, weight_hh, bias_ih, bias_hh)


cdef struct Job:
    int cell
    bint reverse, split_hidden
    Py_ssize_t seq_len, batch, input_size, hidden_size, U, block_cols, n_blocks, total_cols
    Py_ssize_t chunk, out_ld, out_col
    const float *x
    const float *weight_ih
    const float *weight_hh
    const float *bias
    const float *bias_hn
    float *gates
    float *gates_h
    float *h
    float *c
    float *out
    const int64_t *lengths


cdef inline Py_ssize_t _block_start(Py_ssize_t n, Py_ssize_t parts, Py_ssize_t k) noexcept nogil:
    return n * k // parts


cdef void _elementwise(const Job *job, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t k0,
                       Py_ssize_t k1, Py_ssize_t t, float *step_gates, const float *h_prev,
                       float *h_new, const float *c_prev, float *c_new) noexcept nogil:
    """The fused elementwise pass for rows [r0, r1) and blocks [k0, k1)."""
    cdef Py_ssize_t b, blk, u0, n, H = job.hidden_size, U = job.U, bc = job.block_cols
    cdef float *g
    cdef float *out_row
    for b in range(r0, r1):
        out_row = job.out + (t * job.batch + b) * job.out_ld + job.out_col
        for blk in range(k0, k1):
            u0 = blk * U
            n = min(U, H - u0)
            if job.lengths != NULL and t >= job.lengths[b]:
                # Inactive: the state passes through, the output is zero.
                memcpy(h_new + b * H + u0, h_prev + b * H + u0, n * sizeof(float))
                if job.cell == LSTM:
                    memcpy(c_new + b * H + u0, c_prev + b * H + u0, n * sizeof(float))
                memset(out_row + u0, 0, n * sizeof(float))
                continue
            g = step_gates + b * job.total_cols + blk * bc
            if job.cell == LSTM:
                lstm_forward_row_f32(n, U, g, job.bias + blk * bc, c_prev + b * H + u0,
                                     c_new + b * H + u0, h_new + b * H + u0, out_row + u0)
            elif job.cell == GRU:
                gru_forward_row_f32(n, U, g, job.gates_h + b * job.total_cols + blk * bc,
                                    job.bias + blk * bc, job.bias_hn + u0, h_prev + b * H + u0,
                                    h_new + b * H + u0, out_row + u0)
            else:
                rnn_forward_row_f32(n, job.cell == RNN_RELU, g, job.bias + blk * bc,
                                    h_new + b * H + u0, out_row + u0)


cdef void _run_thread(const Job *job, int tid, int n_threads) noexcept nogil:
    """Everything one thread does: its rows x blocks for every step."""
    cdef Py_ssize_t r0, r1, k0, k1, ci, n_chunks, t_lo, t_hi, s, t, step, parity
    cdef Py_ssize_t B = job.batch, H = job.hidden_size, I = job.input_size, bc = job.block_cols, tc = job.total_cols
    cdef float *step_gates
    cdef float *h_prev
    cdef float *h_new
    cdef float *c_prev = NULL
    cdef float *c_new = NULL
    cdef bint busy
    if job.split_hidden:
        r0, r1 = 0, B
        k0 = _block_start(job.n_blocks, n_threads, tid)
        k1 = _block_start(job.n_blocks, n_threads, tid + 1)
    else:
        r0 = _block_start(B, n_threads, tid)
        r1 = _block_start(B, n_threads, tid + 1)
        k0, k1 = 0, job.n_blocks
    busy = r1 > r0 and k1 > k0
    n_chunks = (job.seq_len + job.chunk - 1) // job.chunk
    step = 0
    for ci in range(n_chunks):
        # Chunks follow the processing order: from the end when reversed.
        if job.reverse:
            t_hi = job.seq_len - ci * job.chunk
            t_lo = max(0, t_hi - job.chunk)
        else:
            t_lo = ci * job.chunk
            t_hi = min(job.seq_len, t_lo + job.chunk)
        if busy:
            if r0 == 0 and r1 == B:
                # gates[:, :, own blocks] = x[t_lo:t_hi] @ weight_ih[own units].T
                fr_gemm_packed((t_hi - t_lo) * B, I, job.x + t_lo * B * I, I,
                               job.weight_ih + k0 * I * bc, bc, k1 - k0,
                               job.gates + k0 * bc, tc, 0)
            else:
                for t in range(t_lo, t_hi):
                    # gates[t, own rows] = x[t, own rows] @ weight_ih.T
                    fr_gemm_packed(r1 - r0, I, job.x + (t * B + r0) * I, I, job.weight_ih,
                                   bc, job.n_blocks, job.gates + ((t - t_lo) * B + r0) * tc,
                                   tc, 0)
        for s in range(t_hi - t_lo):
            t = t_hi - 1 - s if job.reverse else t_lo + s
            # The state is double-buffered: before the k-th step it is at k % 2.
            parity = step % 2
            step += 1
            h_prev = job.h + parity * B * H
            h_new = job.h + (1 - parity) * B * H
            if job.cell == LSTM:
                c_prev = job.c + parity * B * H
                c_new = job.c + (1 - parity) * B * H
            step_gates = job.gates + (t - t_lo) * B * tc
            if busy:
                if job.cell == GRU:
                    # gates_h[own rows, own blocks] = h_prev[own rows] @ weight_hh[own units].T
                    fr_gemm_packed(r1 - r0, H, h_prev + r0 * H, H, job.weight_hh + k0 * H * bc,
                                   bc, k1 - k0, job.gates_h + r0 * tc + k0 * bc, tc, 0)
                else:
                    # gates[t, own rows, own blocks] += h_prev[own rows] @ weight_hh[own units].T
                    fr_gemm_packed(r1 - r0, H, h_prev + r0 * H, H, job.weight_hh + k0 * H * bc,
                                   bc, k1 - k0, step_gates + r0 * tc + k0 * bc, tc, 1)
                _elementwise(job, r0, r1, k0, k1, t, step_gates, h_prev, h_new, c_prev, c_new)
            if job.split_hidden and n_threads > 1:
                # Every thread reads all of h_new in the next step.
                fr_omp_barrier()


def forward(int cell, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, lengths,
            bint reverse, bint training, out, Py_ssize_t out_col, int n_threads, packed=None):
    """One layer, one direction, float32 inference; see fastrnn.reference.forward."""
    cdef Py_ssize_t T, B, I, H
    cdef Job job
    cdef int threads
    if training:
        raise ValueError("the packed kernels are for inference: use fastrnn._recurrent "
                         "for a training forward")
    T, B, I, H, lengths = check_forward_args(cell, x, weight_ih, weight_hh, bias_ih, bias_hh,
                                             h0, c0, lengths, out, out_col, n_threads)
    if x.dtype != np.float32:
        raise TypeError(f"the packed kernels are float32 only, got {x.dtype}")
    if packed is None:
        packed = pack_weights(cell, weight_ih, weight_hh, bias_ih, bias_hh)
    elif (packed.cell, packed.input_size, packed.hidden_size) != (cell, I, H):
        raise ValueError("packed weights belong to another cell or shape")
    total_cols = packed.n_blocks * packed.block_cols
    chunk = min(T, max(1, PROJECTION_ROWS // B))
    # Workspace; every array below is C-contiguous float32 (made here, or checked
    # by check_forward_args / built by PackedWeights), so raw pointers are safe.
    gates = np.empty((chunk, B, total_cols), np.float32)
    gates_h = np.empty((B, total_cols), np.float32) if cell == GRU else None
    # The state is double-buffered (see _run_thread); the final one is at T % 2.
    h = np.empty((2, B, H), np.float32)
    h[0] = h0
    c = None
    if cell == LSTM:
        c = np.empty((2, B, H), np.float32)
        c[0] = c0

    job.cell = cell
    job.reverse = reverse
    job.seq_len, job.batch, job.input_size, job.hidden_size = T, B, I, H
    job.U, job.block_cols, job.n_blocks = packed.units, packed.block_cols, packed.n_blocks
    job.total_cols, job.chunk = total_cols, chunk
    job.out_ld, job.out_col = out.shape[2], out_col
    job.x = <const float *>cnp.PyArray_DATA(x)
    job.weight_ih = <const float *>cnp.PyArray_DATA(packed.weight_ih)
    job.weight_hh = <const float *>cnp.PyArray_DATA(packed.weight_hh)
    job.bias = <const float *>cnp.PyArray_DATA(packed.bias)
    job.bias_hn = (<const float *>cnp.PyArray_DATA(packed.bias_hn)
                   if packed.bias_hn is not None else NULL)
    job.gates = <float *>cnp.PyArray_DATA(gates)
    job.gates_h = <float *>cnp.PyArray_DATA(gates_h) if gates_h is not None else NULL
    job.h = <float *>cnp.PyArray_DATA(h)
    job.c = <float *>cnp.PyArray_DATA(c) if c is not None else NULL
    job.out = <float *>cnp.PyArray_DATA(out)
    job.lengths = <const int64_t *>cnp.PyArray_DATA(lengths) if lengths is not None else NULL
    job.split_hidden = B < MIN_ROWS_PER_THREAD * n_threads
    if job.split_hidden:
        threads = min(n_threads, <int>packed.n_blocks)
    else:
        threads = min(n_threads, B // MIN_ROWS_PER_THREAD)
    if threads <= 1:
        job.split_hidden = False
        _run_thread(&job, 0, 1)
    else:
        with nogil, parallel(num_threads=threads):
            _run_thread(&job, fr_omp_thread_num(), fr_omp_num_threads())
    final = T % 2
    return h[final].copy(), (c[final].copy() if c is not None else None), None

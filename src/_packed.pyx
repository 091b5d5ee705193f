# cython: language_level=3
"""float32 forward, BPTT backward and streaming steps on weights packed for the
SIMD GEMM of _packed_gemm.h.

``forward``/``backward`` have the call shape of ``fastrnn.reference``, plus
optional ``packed`` (the result of ``pack_weights``, which a layer keeps between
inference calls so that packing is paid once) and ``workspace`` (buffers reused
between calls). ``Stepper``/``step_layers``/``step_cached`` run single streaming steps.

Threads: for larger batches each thread runs the whole sequence for its own
rows (no barrier); for small batches the hidden units are split, so each
thread keeps its slice of W_hh in its own cache across steps, with one
barrier per step. The input projection of a chunk of steps is hoisted out of
the time loop; each thread projects the columns (or rows) it owns, so the
projection needs no barrier either.
"""
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset
from cython.parallel cimport parallel, prange
cimport numpy as cnp

from _parallel cimport block_start

from _cells cimport (FR_LSTM_BLOCK_UNITS, GRU, LSTM, RNN_RELU, gru_backward_row_f32,
                    gru_forward_row_f32, lstm_backward_blocks_f32, lstm_backward_row_f32,
                    lstm_forward_blocks_f32, lstm_forward_row_f32, rnn_backward_row_f32,
                    rnn_forward_row_f32)

import functools
import os

import numpy as np

cnp.import_array()

from fastrnn._aligned import aligned_empty
from fastrnn._kernel_args import (check_backward_args, check_forward_args,
                                 check_recurrent_mask, gate_count)

cdef extern from "_packed_gemm.h" nogil:
    int fr_select_isa(int isa)
    int fr_isa_supported(int isa)
    int fr_current_isa()
    ctypedef struct fr_gemm_args:
        Py_ssize_t rows, K
        const float *A
        Py_ssize_t lda, a_block_k, a_block_stride
        const float *P
        Py_ssize_t block_cols, n_blocks
        float *C
        Py_ssize_t ldc, c_block_stride, n_cols
        int accumulate, reverse_blocks
        Py_ssize_t partial_blocks, partial_cols
        Py_ssize_t groups, a_group_stride, c_group_stride
    void fr_gemm_general(const fr_gemm_args *args)
    void fr_transpose(Py_ssize_t rows, Py_ssize_t cols, const float *src, Py_ssize_t ld_src,
                      float *dst, Py_ssize_t ld_dst)
    void fr_transpose_add_rows(Py_ssize_t K, Py_ssize_t c0, Py_ssize_t c1, const float *src,
                               Py_ssize_t ld_src, const int64_t *dst_rows, float *dst,
                               Py_ssize_t ld_dst)
    int fr_flush_denormals
    unsigned int fr_ftz_enter()
    void fr_ftz_leave(unsigned int old)
    int fr_omp_num_threads()
    void fr_prefetch(const void *p, size_t nbytes)
    void fr_stream_block64(float *dst, const float *src, Py_ssize_t n)
    void fr_store_fence()
    int fr_omp_thread_num()

cdef extern from "_barrier.h" nogil:
    ctypedef struct fr_barrier:
        pass
    int FR_FLAG_THREADS
    int fr_barrier_flag_threads
    void fr_barrier_init(fr_barrier *b)
    void fr_barrier_wait(fr_barrier *b, int n_threads, int tid, unsigned int *passed)
    void fr_barrier_finish(fr_barrier *b, int n_threads, int tid)
    void fr_team_enter(int n_threads)
    void fr_team_leave(int n_threads)
    int fr_team_threads_now()

ISAS = {"generic": 0, "avx2": 1, "avx512": 2}
_ISA_NAMES = {v: k for k, v in ISAS.items()}

# Rows of the hoisted input projection per chunk of steps (as in _recurrent).
DEF PROJECTION_ROWS = 128


cdef inline Py_ssize_t _max_chunk(Py_ssize_t batch) noexcept nogil:
    """Steps of an inference chunk (their gates in the chunk buffer) at this batch."""
    return max(1, PROJECTION_ROWS // batch)


# Split the batch across threads when each gets at least this many rows;
# below, split the hidden units (a barrier per step). Forward and BPTT both
# split the batch from 4 rows a thread (from 2, the hidden split stayed ahead:
# B=4 0.155 against 0.183 ms, B=6 0.220 against 0.248 ms).
# At B=8 a batch split has no per-step barrier nor exchange of h between the
# cores. LSTM forward B=8 H=128 T=50 on 2 threads, split 4 + 4 rows against
# split by hidden units: 0.276 against 0.297 ms interleaved (GRU 0.197 against
# 0.216) when this VM's cores were close, 0.33 against 0.52 ms when they were
# not; training step LSTM B=8 H=128 T=100: 1.80 -> 1.73 ms. Its threads meet
# once, at the end, in fr_barrier_finish, which yields early: with libgomp's
# end-of-region barrier alone, runs of the bench after ONNX Runtime at times
# took a 4 ms scheduler tick in every call (see _barrier.h).
DEF MIN_ROWS_PER_THREAD = 4
# ...and the hidden units also with more rows when W_hh is larger than a core's
# L2: each thread of a batch split reads all of W_hh every step, and all of
# W_ih too (it projects its rows a step at a time), from L3; split by units,
# each reads half, and projects a chunk of steps per pass over its half of W_ih.
# That wins when the threads have at most HIDDEN_SPLIT_MAX_ROWS rows each, or
# whatever the batch from HIDDEN_SPLIT_ALWAYS_BYTES. Forward on 2 threads, T=50,
# ms, batch split against unit split (separate processes, each a loop of calls):
# LSTM B=16 H=384 4.20/3.90, H=512 7.4/6.9, H=650 11.8/11.3, H=1024 38.6/32.9,
# B=8 H=512 3.9-4.5/3.6, B=32 H=768 32.4/31.6, B=64 H=1024 131.5/115.4; GRU
# B=16 H=512 5.52/5.17, H=1024 24.7/22.3, B=64 H=1024 92.0/84.1; RNN B=16
# H=1024 7.2/6.7. Kept on the batch split: LSTM B=20 H=650 14.2/14.5, B=64
# H=512 27.5/27.5; GRU B=20 H=650 11.4/12.2, B=32 H=768 22.7/22.9, B=64 H=512
# 20.5/20.7; RNN B=64 H=1024 27.0/27.2. (GRU B=16 H=650: 9.33/9.60, split by
# units all the same.)
DEF HIDDEN_SPLIT_MIN_BYTES = 1048576
DEF HIDDEN_SPLIT_MAX_ROWS = 8
DEF HIDDEN_SPLIT_ALWAYS_BYTES = 8388608
# forward_bidirectional: below this size of a direction's packed W_hh (or from
# MIN_ROWS_PER_THREAD rows), the two directions run at the same time.
DEF TOGETHER_MAX_WEIGHT_BYTES = 1048576
# A training batch split runs its threads' rows as parts of their own (see
# _run_part) when a row of the products is at most this long (input_size +
# hidden_size): there the gates, which the other core would read, are large
# against the work on them. 2 threads, interleaved in one process, ms, shared
# layout against parts, in this VM's slow state / otherwise: LSTM B=8 H=128
# T=100 2.22 / 1.93, 1.54 / 1.52; RNN B=8 0.90 / 0.79, 0.47 / 0.46; at H=256
# (rows of 512) LSTM B=32 T=50 13.8 / 14.1, 11.9-12.5 / 12.4-13.3; GRU B=32
# 10.9 / 10.3, 9.4-11.1 / 9.5-10.9.
DEF PARTS_MAX_ROW = 384
# Multiply-adds below which a call runs on one thread (waking a thread and a
# barrier per step cost more than they save).
DEF MIN_PARALLEL_WORK = 65536


def set_flush_denormals(bint flush):
    """Flush denormals to zero inside the float32 kernels (their own threads,
    for the length of a call; the caller's floating-point state is kept).
    Off by default; FASTRNN_FLUSH_DENORMALS=1 turns it on at import."""
    global fr_flush_denormals
    fr_flush_denormals = flush


def get_flush_denormals():
    return bool(fr_flush_denormals)


set_flush_denormals(os.environ.get("FASTRNN_FLUSH_DENORMALS", "0") not in ("", "0"))


def _set_barrier_flag_threads(int n):
    """For tests: teams of up to n threads (0..8) use the per-thread flags of
    _barrier.h, larger ones the counter. Returns the previous value."""
    global fr_barrier_flag_threads
    if not 0 <= n <= FR_FLAG_THREADS:
        raise ValueError(f"n must be in 0..{FR_FLAG_THREADS}, got {n}")
    previous = fr_barrier_flag_threads
    fr_barrier_flag_threads = n
    return previous


def _team_threads():
    """Threads now in the parallel regions that wait at fr_barrier (see
    _barrier.h: more than the CPUs shortens the spinning); 0 between calls."""
    return fr_team_threads_now()


def _fp_control_word():
    """The calling thread's floating-point control word (x86 MXCSR; 0 elsewhere):
    tests check that a kernel call leaves it as it was."""
    cdef unsigned int state = fr_ftz_enter()
    fr_ftz_leave(state)
    return state


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


# Columns of a tile of the packed GEMM (P[tile][k][TILE], see _packed_gemm.h).
DEF TILE = 64
DEF GRAD_BLOCK = 64   # columns per block of the weights packed for the backward (fr_stream_block64)
# Where buffers start (fastrnn._aligned): the threads of a batch split keep
# theirs in pages of their own (see _run_rows).
DEF CACHE_LINE_BYTES = 64
DEF PAGE_BYTES = 4096


# The best variant this CPU supports, unless FASTRNN_ISA names another.
set_isa(os.environ.get("FASTRNN_ISA") or None)


def units_per_block(int cell):
    """Hidden units per packed block: the block (gates x units) is one tile
    (LSTM 4 x 16, RNN 64) or one tile per gate (GRU 3 x 64)."""
    return FR_LSTM_BLOCK_UNITS if cell == LSTM else 64


cdef class PackedWeights:
    """A layer direction's weights in the packed layout of _packed_gemm.h.

    Its arrays are built here (C-contiguous float32 of the shapes the kernels
    read) and cannot be replaced from Python. With a ``workspace`` (see
    _buffer) the packed weights reuse its arrays: training packs on every
    forward, and fresh multi-megabyte arrays each time cost page faults (on
    this machine about as much as the packing).
    """
    cdef readonly int cell
    cdef readonly Py_ssize_t input_size, hidden_size, units, n_blocks, block_cols
    cdef readonly object weight_ih, weight_hh, bias, bias_hn
    # With for_backward (training): the weights also in the layout of the
    # backward's products (see _pack_block), else None.
    cdef readonly object weight_ih_t, weight_hh_t

    def __init__(self, int cell, weight_ih, weight_hh, bias_ih, bias_hh, int n_threads=1,
                 workspace=None, bint for_backward=False):
        G = gate_count(cell)
        H = weight_hh.shape[1] if getattr(weight_hh, "ndim", 0) == 2 else -1
        I = weight_ih.shape[1] if getattr(weight_ih, "ndim", 0) == 2 else -1
        if (H < 1 or I < 1 or weight_hh.shape[0] != G * H or weight_ih.shape[0] != G * H
                or (bias_ih is None) != (bias_hh is None)
                or (bias_ih is not None
                    and (np.shape(bias_ih) != (G * H,) or np.shape(bias_hh) != (G * H,)))):
            raise ValueError(f"weights must be weight_ih ({G} * hidden_size, input_size), "
                             f"weight_hh ({G} * hidden_size, hidden_size) and two biases "
                             f"({G} * hidden_size,) or None")
        U = units_per_block(cell)
        self.cell = cell
        self.input_size = I
        self.hidden_size = H
        self.units = U
        self.n_blocks = -(-H // U)
        self.block_cols = G * U
        self.weight_ih, self.weight_ih_t = self._pack(weight_ih, G, H, U, n_threads, workspace,
                                                      "packed_ih", for_backward)
        self.weight_hh, self.weight_hh_t = self._pack(weight_hh, G, H, U, n_threads, workspace,
                                                      "packed_hh", for_backward)
        self.bias, self.bias_hn = _packed_biases(cell, bias_ih, bias_hh, H, U,
                                                 self.n_blocks * self.block_cols, workspace)

    def _pack(self, weight, int G, Py_ssize_t H, Py_ssize_t U, int n_threads, workspace,
              name, bint for_backward):
        """(G*H, K) -> (n_blocks * G*U/TILE, K, TILE): the columns c = g*U + j of
        unit block b (W's row g*H + b*U + j) cut into tiles of TILE columns,
        each stored k-major, so a tile's weights are contiguous. With
        for_backward also, in the same pass over W (a second one cost 2% of a
        2-layer H=650 training step), the rows in packed column order cut into
        blocks of GRAD_BLOCK columns (see _pack_block); returns both (or the
        first and None)."""
        weight = np.ascontiguousarray(weight, dtype=np.float32)
        cdef Py_ssize_t K = weight.shape[1], b, n_blocks = self.n_blocks
        cdef Py_ssize_t total_cols = n_blocks * G * U
        packed = _buffer(workspace, name, (total_cols // TILE, K, TILE))
        transposed = None
        if for_backward:
            transposed = _buffer(workspace, name + "_t",
                                 ((K + GRAD_BLOCK - 1) // GRAD_BLOCK, total_cols, GRAD_BLOCK))
        cdef const float *w = <const float *>cnp.PyArray_DATA(weight)
        cdef float *p = <float *>cnp.PyArray_DATA(packed)
        cdef float *p_t = _ptr(transposed) if transposed is not None else NULL
        cdef int threads = max(1, min(n_threads, n_blocks))
        if n_blocks * G * U * K < MIN_PARALLEL_WORK:
            threads = 1
        with nogil:
            for b in prange(n_blocks, num_threads=threads, schedule="static"):
                _pack_block(w, K, G, H, U, b, p, p_t, total_cols)
        return packed, transposed


cdef tuple _packed_biases(int cell, bias_ih, bias_hh, Py_ssize_t H, Py_ssize_t U,
                          Py_ssize_t total_cols, workspace):
    """(bias, bias_hn): the biases as the fused elementwise pass adds them
    (see _kernel_args.fused_biases), in packed column order: b_ih + b_hh (for
    GRU's n gate b_ih alone, and its b_hn in bias_hn, by unit), zeros for
    padding and without biases. A loop over the cached column order: the NumPy
    way cost 2-3 us of a training forward's call."""
    cdef Py_ssize_t i, rows = gate_count(cell) * H, fused = 2 * H if cell == GRU else rows
    bias = _buffer(workspace, "packed_bias", (total_cols,), zero=True)
    bias_hn = None
    if cell == GRU:
        bias_hn = _buffer(workspace, "packed_bias_hn", (total_cols // 3,), zero=True)
    if bias_ih is None:
        return bias, bias_hn
    bias_ih = np.ascontiguousarray(bias_ih, dtype=np.float32)
    bias_hh = np.ascontiguousarray(bias_hh, dtype=np.float32)
    order, _ = _column_order(cell, H, U)
    cdef const int64_t *column = <const int64_t *>cnp.PyArray_DATA(order)
    cdef const float *b_ih = _ptr(bias_ih)
    cdef const float *b_hh = _ptr(bias_hh)
    cdef float *packed = _ptr(bias)
    for i in range(rows):
        packed[column[i]] = b_ih[i] + b_hh[i] if i < fused else b_ih[i]
    if bias_hn is not None:
        memcpy(_ptr(bias_hn), b_hh + 2 * H, H * sizeof(float))
    return bias, bias_hn


cdef void _pack_block(const float *weight, Py_ssize_t K, int G, Py_ssize_t H, Py_ssize_t U,
                      Py_ssize_t b, float *packed, float *transposed,
                      Py_ssize_t total_cols) noexcept nogil:
    """Block b of PackedWeights._pack: the block's U rows of each gate are
    transposed into their TILE-wide tile at column (g*U) % TILE; units past H
    are zeros. With `transposed` (not NULL), the same rows also go, while in
    cache, to the backward's layout (ceil(K / GRAD_BLOCK), total_cols,
    GRAD_BLOCK): transposed[kb, c, j] = W[row of packed column c, kb *
    GRAD_BLOCK + j], zero past K and for padding units (dh = dgates @ W_hh
    reads it with the gate columns as the inner dimension)."""
    cdef Py_ssize_t g, j, k, kb, n, column, rows = min(U, H - b * U)
    cdef Py_ssize_t tiles_per_block = G * U // TILE, k_blocks = (K + GRAD_BLOCK - 1) // GRAD_BLOCK
    cdef const float *row
    cdef float *dst
    for g in range(G):
        dst = packed + (b * tiles_per_block + g * U // TILE) * K * TILE + g * U % TILE
        fr_transpose(rows, K, weight + (g * H + b * U) * K, K, dst, TILE)
        if rows < U:
            for k in range(K):
                memset(dst + k * TILE + rows, 0, (U - rows) * sizeof(float))
        if transposed == NULL:
            continue
        for j in range(U):
            column = b * G * U + g * U + j
            row = weight + (g * H + b * U + j) * K
            for kb in range(k_blocks):
                n = min(GRAD_BLOCK, K - kb * GRAD_BLOCK) if j < rows else 0
                fr_stream_block64(transposed + (kb * total_cols + column) * GRAD_BLOCK,
                                  row + kb * GRAD_BLOCK, n)
    if transposed != NULL:
        fr_store_fence()


cdef inline float *_ptr(a):
    return <float *>cnp.PyArray_DATA(a)


def _buffer(workspace, name, shape, zero=False, alignment=CACHE_LINE_BYTES):
    """A float32 array of `shape`: reused from `workspace` (a dict a caller keeps
    between calls) when one of that shape is there. Reuse avoids the page faults
    of fresh multi-megabyte allocations, which cost as much as the arithmetic.
    New arrays start on a cache line, or on a multiple of `alignment` bytes
    (see fastrnn._aligned)."""
    array = None if workspace is None else workspace.get(name)
    if array is None or array.shape != shape:
        array = aligned_empty(shape, alignment=alignment)
        if workspace is not None:
            workspace[name] = array
    if zero:
        array.fill(0)
    return array


def pack_weights(cell, weight_ih, weight_hh, bias_ih, bias_hh, n_threads=1, workspace=None,
                 for_backward=False):
    """Pack one layer direction's float32 weights for ``forward(..., packed=...)``
    (for a training forward with ``for_backward``)."""
    return PackedWeights(cell, weight_ih, weight_hh, bias_ih, bias_hh, n_threads, workspace,
                         for_backward)


cdef struct Job:
    int cell
    bint reverse, split_hidden, training
    # Streaming (Stepper, one step per call): the two products go to separate
    # buffers (gates, gates_h) and are added in a fixed order, so their order is
    # free: odd calls (stream_phase) run the recurrent product first and both
    # products' blocks backwards, so each call starts on the weights the previous
    # one read last, still in cache (see fr_gemm_args).
    bint stream, stream_phase
    # The per-step barrier of a hidden-unit split, the last one of a batch split
    # (see _barrier.h).
    fr_barrier barrier
    Py_ssize_t seq_len, batch, input_size, hidden_size, U, block_cols, n_blocks, total_cols
    # Output of step t, batch row b: out + t * out_step + b * out_ld + out_col
    # (time-major: out_step = batch * out_ld; batch-first: out_ld = seq_len * out_step).
    Py_ssize_t chunk, out_step, out_ld, out_col
    # Input of step t, batch row b: x + t * x_step + b * x_ld (time-major: x_step =
    # batch * input_size, x_ld = input_size; batch-first: x_ld = seq_len * x_step).
    Py_ssize_t x_step, x_ld
    # The last unit block holds partial_units units (U when whole); partial_tiles:
    # its tiles whose padding columns the products leave out (see _partial_tiles
    # and fr_gemm_args), 0 for none.
    Py_ssize_t partial_tiles, partial_units
    # Gate (row r, unit block b) starts at gates + b * gates_block_stride + r * gates_ld,
    # and its tiles are gates_tile_stride apart: inference keeps a row-major chunk
    # (ld = total_cols, tiles TILE apart), training the whole sequence tile-major
    # (ld = TILE, tiles T*B*TILE apart), the layout the backward's products read.
    # gate_stride: between the gates of one unit in a row (U within a tile,
    # the tile stride when each gate is a tile).
    Py_ssize_t gates_ld, gates_block_stride, gates_tile_stride, tiles, gate_stride
    const float *x
    const float *weight_ih
    const float *weight_hh
    const float *bias
    const float *bias_hn
    float *gates
    float *gates_h
    float *hn_cache
    float *h
    float *c
    float *out
    const int64_t *lengths
    # Variational (recurrent) dropout, training only (else NULL): the recurrent
    # product reads hm = h * recurrent_mask, kept like h (T+1, B, H).
    float *hm
    const float *recurrent_mask
    # Inference split by batch rows: each thread runs its rows as a job of their
    # own on buffers in pages of its own (see _run_rows), carved from
    # thread_space (thread_space_floats long; NULL: the threads share the job's
    # buffers, as in training, whose cache is laid out for the backward).
    float *thread_space
    Py_ssize_t thread_space_floats
    # Training split by batch rows: `parts` sub-batches (one a thread), each laid
    # out on its own in the cache (see _run_part); 1: the rows share the layout.
    Py_ssize_t parts
    # GRU's hn cache: unit block b at hn_cache + b * hn_block_stride.
    Py_ssize_t hn_block_stride


cdef inline void _gemm(Py_ssize_t rows, Py_ssize_t K, const float *A, Py_ssize_t lda,
                       Py_ssize_t a_block_k, Py_ssize_t a_block_stride, const float *P,
                       Py_ssize_t block_cols, Py_ssize_t n_blocks, float *C, Py_ssize_t ldc,
                       Py_ssize_t c_block_stride, Py_ssize_t n_cols, int accumulate,
                       int reverse_blocks=0, Py_ssize_t partial_blocks=0,
                       Py_ssize_t partial_cols=0, Py_ssize_t groups=1,
                       Py_ssize_t a_group_stride=0, Py_ssize_t c_group_stride=0) noexcept nogil:
    """fr_gemm_general with its arguments spelled out (see _packed_gemm.h)."""
    cdef fr_gemm_args g
    if rows <= 0 or n_blocks <= 0 or n_cols <= 0 or groups <= 0:
        return
    g.rows, g.K, g.A, g.lda = rows, K, A, lda
    g.a_block_k, g.a_block_stride = a_block_k, a_block_stride
    g.P, g.block_cols, g.n_blocks = P, block_cols, n_blocks
    g.C, g.ldc, g.c_block_stride, g.n_cols = C, ldc, c_block_stride, n_cols
    g.accumulate = accumulate
    g.reverse_blocks = reverse_blocks
    g.partial_blocks, g.partial_cols = partial_blocks, partial_cols
    g.groups, g.a_group_stride, g.c_group_stride = groups, a_group_stride, c_group_stride
    fr_gemm_general(&g)


cdef void _elementwise(const Job *job, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t k0,
                       Py_ssize_t k1, Py_ssize_t t, Py_ssize_t row0, const float *h_prev,
                       float *h_new, const float *c_prev, float *c_new) noexcept nogil:
    """The fused elementwise pass for batch rows [r0, r1) and blocks [k0, k1) of
    step t, whose gate rows start at row0 (t - chunk start) * batch."""
    cdef Py_ssize_t b, blk, u0, n, H = job.hidden_size, U = job.U, bc = job.block_cols
    cdef Py_ssize_t gbs = job.gates_block_stride, whole
    cdef float *g
    cdef float *gh
    cdef float *out_row
    for b in range(r0, r1):
        out_row = job.out + t * job.out_step + b * job.out_ld + job.out_col
        g = job.gates + (row0 + b) * job.gates_ld
        if job.lengths != NULL and t >= job.lengths[b]:
            # Inactive: the state passes through, the output is zero.
            u0 = k0 * U
            n = min(k1 * U, H) - u0
            memcpy(h_new + b * H + u0, h_prev + b * H + u0, n * sizeof(float))
            if job.cell == LSTM:
                memcpy(c_new + b * H + u0, c_prev + b * H + u0, n * sizeof(float))
            memset(out_row + u0, 0, n * sizeof(float))
            continue
        if job.cell == LSTM:
            # Whole blocks in one call; a last block cut short by hidden_size alone.
            whole = min(k1, H // U)
            if whole > k0:
                lstm_forward_blocks_f32(whole - k0, gbs, g + k0 * gbs, job.bias + k0 * bc,
                                        c_prev + b * H + k0 * U, c_new + b * H + k0 * U,
                                        h_new + b * H + k0 * U, out_row + k0 * U)
            for blk in range(max(k0, whole), k1):
                u0 = blk * U
                lstm_forward_row_f32(H - u0, job.gate_stride, U, g + blk * gbs,
                                     job.bias + blk * bc, c_prev + b * H + u0,
                                     c_new + b * H + u0, h_new + b * H + u0, out_row + u0)
            continue
        for blk in range(k0, k1):
            u0 = blk * U
            n = min(U, H - u0)
            if job.cell == GRU:
                gh = job.gates_h + b * job.total_cols + blk * bc
                gru_forward_row_f32(n, job.gate_stride, U, g + blk * gbs, gh,
                                    job.bias + blk * bc, job.bias_hn + u0, h_prev + b * H + u0,
                                    h_new + b * H + u0, out_row + u0)
                if job.hn_cache != NULL:
                    # Backward needs hn = W_hn h + b_hn (block-major, like the gates).
                    memcpy(job.hn_cache + blk * job.hn_block_stride + (t * job.batch + b) * U,
                           gh + 2 * U, n * sizeof(float))
            else:
                rnn_forward_row_f32(n, job.cell == RNN_RELU, g + blk * gbs, job.bias + blk * bc,
                                    h_new + b * H + u0, out_row + u0)


cdef void _mask_state(const Job *job, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t k0,
                      Py_ssize_t k1, const float *h_new, float *hm_new) noexcept nogil:
    """hm_new = h_new * recurrent_mask on rows [r0, r1), units of blocks [k0, k1)."""
    cdef Py_ssize_t b, j, H = job.hidden_size
    cdef Py_ssize_t u0 = k0 * job.U, u1 = min(H, k1 * job.U)
    for b in range(r0, r1):
        for j in range(u0, u1):
            hm_new[b * H + j] = h_new[b * H + j] * job.recurrent_mask[b * H + j]


cdef void _project(const Job *job, Py_ssize_t t_lo, Py_ssize_t t_hi, Py_ssize_t first_t,
                   Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t k0, Py_ssize_t k1, int accumulate,
                   int backwards) noexcept nogil:
    """The input projection of steps [t_lo, t_hi) for one thread's rows [r0, r1)
    and blocks [k0, k1) (all rows, or all blocks)."""
    cdef Py_ssize_t B = job.batch, I = job.input_size, bc = job.block_cols
    cdef Py_ssize_t gld = job.gates_ld, nt = job.tiles
    cdef Py_ssize_t rows, groups, lda, ldc, a_group_stride, c_group_stride
    cdef Py_ssize_t pt = job.partial_tiles if k1 == job.n_blocks else 0
    cdef Py_ssize_t pu = job.partial_units
    cdef const float *weight = job.weight_ih + k0 * I * bc
    cdef float *gates = job.gates + k0 * job.gates_block_stride
    if r0 == 0 and r1 == B and job.x_step == B * job.x_ld:
        # A time-major x, the chunk's rows in one product:
        # gates[t_lo:t_hi, :, own blocks] (+)= x[t_lo:t_hi] @ weight_ih[own units].T
        _gemm((t_hi - t_lo) * B, I, job.x + t_lo * job.x_step, job.x_ld, 0, 0, weight, TILE,
              (k1 - k0) * nt, gates + (t_lo - first_t) * B * gld, gld, job.gates_tile_stride,
              (k1 - k0) * bc, accumulate, backwards, pt, pu)
    else:
        # Otherwise (a batch-first x, or a batch split's own rows) one product
        # over groups of rows, which streams the weights once: each group a
        # row's steps when the rows are fewer than the steps, else a step's rows.
        # gates[t_lo:t_hi, r0:r1, own blocks] (+)= x[t_lo:t_hi, r0:r1] @ weight_ih[own units].T
        if r1 - r0 < t_hi - t_lo:
            rows, groups = t_hi - t_lo, r1 - r0
            lda, a_group_stride, ldc, c_group_stride = job.x_step, job.x_ld, B * gld, gld
        else:
            rows, groups = r1 - r0, t_hi - t_lo
            lda, a_group_stride, ldc, c_group_stride = job.x_ld, job.x_step, gld, B * gld
        _gemm(rows, I, job.x + t_lo * job.x_step + r0 * job.x_ld, lda, 0, 0, weight, TILE,
              (k1 - k0) * nt, gates + ((t_lo - first_t) * B + r0) * gld, ldc,
              job.gates_tile_stride, (k1 - k0) * bc, accumulate, backwards, pt, pu, groups,
              a_group_stride, c_group_stride)


cdef void _add_recurrent(const Job *job, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t col0,
                         Py_ssize_t col1) noexcept nogil:
    """gates[row, col0:col1] += gates_h[row, col0:col1] for rows [r0, r1) of a
    streaming step (one step: gates is (batch, total_cols) like gates_h)."""
    cdef Py_ssize_t b, j, tc = job.total_cols
    for b in range(r0, r1):
        for j in range(col0, col1):
            job.gates[b * tc + j] += job.gates_h[b * tc + j]


cdef void _run_thread(const Job *job, int tid, int n_threads) noexcept nogil:
    """Everything one thread does in a forward: its rows x blocks for every step."""
    cdef unsigned int fp_state = fr_ftz_enter()
    cdef Py_ssize_t stride = 0, part
    if n_threads > 1 and not job.split_hidden and job.thread_space != NULL:
        stride = _thread_stride(job, job.chunk, n_threads)
    if job.parts > 1:
        # A team smaller than launched (OMP_THREAD_LIMIT): one thread runs every
        # part, which are independent.
        if n_threads == job.parts:
            _run_part(job, tid)
        elif tid == 0:
            for part in range(job.parts):
                _run_part(job, part)
    # A team smaller than launched may not fit the thread space either: it
    # shares the job's buffers.
    elif stride > 0 and n_threads * stride <= job.thread_space_floats:
        _run_rows(job, tid, n_threads, job.thread_space + tid * stride)
    else:
        _run_steps(job, tid, n_threads)
    fr_ftz_leave(fp_state)
    if n_threads > 1 and not job.split_hidden:
        # A batch split's threads meet only here (see fr_barrier_finish).
        fr_barrier_finish(<fr_barrier *>&job.barrier, n_threads, tid)


cdef void _run_rows(const Job *job, int tid, int n_threads, float *space) noexcept nogil:
    """One thread of an inference batch split: its rows as a job of their own,
    on its own buffers (in `space`, its part of Job.thread_space), the state
    copied in and out.
    Sharing the job's buffers, each thread wrote its rows of the state and the
    gates next to the other's, in the same pages, which cost 10-20% whenever
    this VM's two cores were far apart (a state that comes and goes for minutes):
    2 threads, T=50 H=128 B=8, separate processes, ms: LSTM 0.298 -> 0.256, GRU
    0.231 -> 0.212 (0.247 -> 0.243 and 0.185 -> 0.181 with the cores close; with
    only the gates apart, LSTM 0.276). Its projection also multiplies a row's
    steps of a chunk at a time rather than its rows of one step."""
    cdef Job rows = job[0]
    cdef Py_ssize_t H = job.hidden_size, B = job.batch
    cdef Py_ssize_t r0 = block_start(B, n_threads, tid), r1 = block_start(B, n_threads, tid + 1)
    cdef Py_ssize_t n = r1 - r0, last = job.seq_len % 2
    if n <= 0:
        return
    rows.batch = n
    rows.x = job.x + r0 * job.x_ld
    rows.out = job.out + r0 * job.out_ld
    if job.lengths != NULL:
        rows.lengths = job.lengths + r0
    rows.thread_space = NULL
    _thread_buffers(job.cell, job.chunk, n, H, job.total_cols, space, &rows)
    # Inference keeps two states: the initial one in the first.
    memcpy(rows.h, job.h + r0 * H, n * H * sizeof(float))
    if job.c != NULL:
        memcpy(rows.c, job.c + r0 * H, n * H * sizeof(float))
    _run_steps(&rows, 0, 1)
    memcpy(job.h + (last * B + r0) * H, rows.h + last * n * H, n * H * sizeof(float))
    if job.c != NULL:
        memcpy(job.c + (last * B + r0) * H, rows.c + last * n * H, n * H * sizeof(float))


cdef void _run_part(const Job *job, Py_ssize_t part) noexcept nogil:
    """Sub-batch `part` of a training batch split (Job.parts): its rows as a
    job of their own, whose cache is a contiguous piece of every gate tile
    and state array: with the part's rows r0..r1 (n of them), step t's row
    r0 + b is row r0 * T + t * n + b of each tile (and of GRU's hn), and its
    states start at row r0 * (T + 1) of h, c and hm.
    With the rows of both threads interleaved in every step (one part), every
    line of the cache holds both threads' rows, and the threads pass them back
    and forth: in the minutes when this VM's two cores are far apart (a
    cache-line round trip of 400 ns, not 100), LSTM B=8 H=128 T=100 training
    took 2.15 ms on 2 threads (its forward 0.72) against 1.52-1.60 for two
    independent 1-thread layers of 4 rows (1.50-1.52 both otherwise). In parts
    (when, see PARTS_MAX_ROW): 1.93 and 1.52."""
    cdef Job rows = job[0]
    cdef Py_ssize_t T = job.seq_len, H = job.hidden_size, B = job.batch
    cdef Py_ssize_t r0 = block_start(B, job.parts, part), r1 = block_start(B, job.parts, part + 1)
    if r1 <= r0:
        return
    rows.batch = r1 - r0
    rows.parts = 1
    rows.split_hidden = False
    rows.x = job.x + r0 * job.x_ld
    rows.out = job.out + r0 * job.out_ld
    if job.lengths != NULL:
        rows.lengths = job.lengths + r0
    rows.gates = job.gates + r0 * T * job.gates_ld
    if job.gates_h != NULL:
        rows.gates_h = job.gates_h + r0 * job.total_cols
    if job.hn_cache != NULL:
        rows.hn_cache = job.hn_cache + r0 * T * job.U
    rows.h = job.h + r0 * (T + 1) * H
    if job.c != NULL:
        rows.c = job.c + r0 * (T + 1) * H
    if job.hm != NULL:
        rows.hm = job.hm + r0 * (T + 1) * H
        rows.recurrent_mask = job.recurrent_mask + r0 * H
    _run_steps(&rows, 0, 1)


cdef void _run_steps(const Job *job, int tid, int n_threads) noexcept nogil:
    cdef Py_ssize_t r0, r1, k0, k1, ci, n_chunks, t_lo, t_hi, s, t, step, parity, first_t
    cdef Py_ssize_t B = job.batch, H = job.hidden_size, I = job.input_size
    cdef Py_ssize_t bc = job.block_cols, tc = job.total_cols
    cdef Py_ssize_t gld = job.gates_ld, gbs = job.gates_block_stride
    cdef Py_ssize_t gts = job.gates_tile_stride, nt = job.tiles
    cdef float *h_prev
    cdef float *h_new
    cdef float *h_rec
    cdef float *rec_new
    cdef float *c_prev = NULL
    cdef float *c_new = NULL
    cdef Py_ssize_t partial_tiles
    cdef bint busy, backwards
    cdef unsigned int barriers_passed = 0
    if job.split_hidden:
        r0, r1 = 0, B
        k0 = block_start(job.n_blocks, n_threads, tid)
        k1 = block_start(job.n_blocks, n_threads, tid + 1)
    else:
        r0 = block_start(B, n_threads, tid)
        r1 = block_start(B, n_threads, tid + 1)
        k0, k1 = 0, job.n_blocks
    busy = r1 > r0 and k1 > k0
    partial_tiles = job.partial_tiles if k1 == job.n_blocks else 0
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
        # Gate rows of step t: (t - t_lo) * B in the inference chunk buffer,
        # t * B in the training cache (which holds every step). Training projects
        # chunk by chunk too, so a chunk's gates are still in cache for its steps.
        first_t = 0 if job.training else t_lo
        if busy and not job.stream_phase:
            _project(job, t_lo, t_hi, first_t, r0, r1, k0, k1, 0, 0)
        for s in range(t_hi - t_lo):
            t = t_hi - 1 - s if job.reverse else t_lo + s
            if job.training:
                # Every state is kept: before step t it is at t (forward) or t + 1 (reverse).
                h_prev = job.h + (t + 1 if job.reverse else t) * B * H
                h_new = job.h + (t if job.reverse else t + 1) * B * H
                if job.cell == LSTM:
                    c_prev = job.c + (t + 1 if job.reverse else t) * B * H
                    c_new = job.c + (t if job.reverse else t + 1) * B * H
            else:
                # Double buffer: before the k-th step the state is at k % 2.
                parity = step % 2
                h_prev = job.h + parity * B * H
                h_new = job.h + (1 - parity) * B * H
                if job.cell == LSTM:
                    c_prev = job.c + parity * B * H
                    c_new = job.c + (1 - parity) * B * H
            # What the next step's product reads: h_new, or h_new * mask under
            # recurrent dropout (kept like h, training only).
            rec_new = h_new if job.hm == NULL else job.hm + (t if job.reverse else t + 1) * B * H
            if busy:
                # The recurrent product's input: h, or h * mask under recurrent dropout.
                h_rec = h_prev
                if job.hm != NULL:
                    h_rec = job.hm + (t + 1 if job.reverse else t) * B * H
                # Odd steps (odd streaming calls) run the blocks backwards.
                backwards = job.stream_phase if job.stream else step % 2
                if job.cell == GRU or job.stream:
                    # gates_h[own rows, own blocks] = h_rec[own rows] @ weight_hh[own units].T
                    _gemm(r1 - r0, H, h_rec + r0 * H, H, 0, 0, job.weight_hh + k0 * H * bc, TILE,
                          (k1 - k0) * nt, job.gates_h + r0 * tc + k0 * bc, tc, TILE,
                          (k1 - k0) * bc, 0, backwards, partial_tiles, job.partial_units)
                else:
                    # gates[t, own rows, own blocks] += h_rec[own rows] @ weight_hh[own units].T
                    _gemm(r1 - r0, H, h_rec + r0 * H, H, 0, 0, job.weight_hh + k0 * H * bc, TILE,
                          (k1 - k0) * nt, job.gates + k0 * gbs + ((t - first_t) * B + r0) * gld,
                          gld, gts, (k1 - k0) * bc, 1, backwards, partial_tiles,
                          job.partial_units)
                if job.stream_phase:
                    _project(job, t, t + 1, first_t, r0, r1, k0, k1, 0, 1)
                if job.stream and job.cell != GRU:
                    _add_recurrent(job, r0, r1, k0 * bc, k1 * bc)
                _elementwise(job, r0, r1, k0, k1, t, (t - first_t) * B, h_prev, h_new, c_prev,
                             c_new)
                if job.hm != NULL:
                    _mask_state(job, r0, r1, k0, k1, h_new, rec_new)
            step += 1
            if job.split_hidden and n_threads > 1 and step < job.seq_len:
                # Every thread reads all of h_new in the next step (after the last
                # one, the end of the parallel region is the barrier).
                fr_barrier_wait(<fr_barrier *>&job.barrier, n_threads, tid, &barriers_passed)
                # The other threads' units of it are in their caches: ask for all
                # of its lines at once, not one by one as the product reaches them.
                fr_prefetch(rec_new, B * H * sizeof(float))


cdef inline bint _large_weights(Py_ssize_t hidden_size, Py_ssize_t total_cols,
                                Py_ssize_t batch, int n_threads) noexcept nogil:
    """Whether W_hh is large enough for a split by hidden units to beat a batch
    split at this batch (see HIDDEN_SPLIT_MIN_BYTES): forward and BPTT."""
    cdef Py_ssize_t weight_bytes = hidden_size * total_cols * sizeof(float)
    return weight_bytes > HIDDEN_SPLIT_MIN_BYTES and (
        batch <= HIDDEN_SPLIT_MAX_ROWS * n_threads or weight_bytes >= HIDDEN_SPLIT_ALWAYS_BYTES)


cdef inline bint _splits_hidden(const Job *job, int n_threads) noexcept nogil:
    """Whether a job on n_threads threads splits the hidden units rather than the
    batch: too few rows for each thread, or W_hh too large (see _team)."""
    return (job.batch < MIN_ROWS_PER_THREAD * n_threads
            or _large_weights(job.hidden_size, job.total_cols, job.batch, n_threads))


cdef inline Py_ssize_t _line_floats(Py_ssize_t n) noexcept nogil:
    """n floats rounded up to whole cache lines."""
    cdef Py_ssize_t line = CACHE_LINE_BYTES // sizeof(float)
    return (n + line - 1) // line * line


cdef Py_ssize_t _thread_buffers(int cell, Py_ssize_t chunk, Py_ssize_t rows,
                                Py_ssize_t hidden_size, Py_ssize_t total_cols,
                                float *space, Job *job) noexcept nogil:
    """One thread's space in a batch split (see Job.thread_space) for `rows`
    rows and inference chunks of `chunk` steps: its gates chunk, a GRU's
    gates_h, and the two states of h (and an LSTM's c), each from a cache line.
    Points job's buffers into `space` (unless job is NULL) and returns the
    floats it takes, in whole pages, so that no two threads write one page."""
    cdef Py_ssize_t gates = _line_floats(chunk * rows * total_cols)
    cdef Py_ssize_t gates_h = _line_floats(rows * total_cols) if cell == GRU else 0
    cdef Py_ssize_t state = _line_floats(2 * rows * hidden_size)
    cdef Py_ssize_t total = gates + gates_h + (2 if cell == LSTM else 1) * state
    cdef Py_ssize_t page = PAGE_BYTES // sizeof(float)
    if job != NULL:
        job.gates = space
        job.gates_h = space + gates if cell == GRU else NULL
        job.h = space + gates + gates_h
        job.c = space + gates + gates_h + state if cell == LSTM else NULL
    return (total + page - 1) // page * page


cdef inline Py_ssize_t _thread_stride(const Job *job, Py_ssize_t chunk,
                                      int threads) noexcept nogil:
    """Floats between the threads' spaces in a batch split on `threads` threads."""
    return _thread_buffers(job.cell, chunk, (job.batch + threads - 1) // threads,
                           job.hidden_size, job.total_cols, NULL, NULL)


cdef object _thread_space(Job *job, int n_threads, workspace):
    """The space for `job`'s batch splits when launched on n_threads threads
    (by _launch, or by _launch_pair: half of them), for its longest chunks, from
    `workspace` (see _buffer) when given; None, and none used, when no batch
    split can happen. Inference only."""
    cdef int threads
    cdef Py_ssize_t size = 0
    for threads in (n_threads, n_threads // 2, n_threads - n_threads // 2):
        if threads >= 2 and not _splits_hidden(job, threads):
            size = max(size, threads * _thread_stride(job, _max_chunk(job.batch), threads))
    job.thread_space = NULL
    if size == 0:
        return None
    space = _buffer(workspace, "thread_space", (size,), alignment=PAGE_BYTES)
    job.thread_space = _ptr(space)
    job.thread_space_floats = size
    return space


cdef int _team_size(const Job *job, int n_threads, bint *split_hidden) noexcept nogil:
    """The threads a forward job runs on (at most n_threads) and its split: the
    batch across threads when each gets enough rows and W_hh is small enough,
    otherwise the hidden units (one barrier per step)."""
    cdef int threads
    if (job.seq_len * job.batch * job.total_cols * (job.input_size + job.hidden_size)
            < MIN_PARALLEL_WORK):
        # Too little work to pay for waking a second thread.
        n_threads = 1
    split_hidden[0] = _splits_hidden(job, n_threads)
    if split_hidden[0]:
        threads = min(n_threads, <int>job.n_blocks)
    else:
        threads = min(n_threads, <int>(job.batch // MIN_ROWS_PER_THREAD))
    if threads <= 1:
        split_hidden[0] = False
        return 1
    return threads


cdef int _team(Job *job, int n_threads) noexcept nogil:
    """_team_size, set in the job; a training job split into parts runs one
    thread a part (or one thread for all of them)."""
    cdef int threads
    if job.parts > 1:
        job.split_hidden = False
        threads = <int>job.parts if n_threads >= job.parts else 1
    else:
        threads = _team_size(job, n_threads, &job.split_hidden)
    if threads > 1:
        fr_barrier_init(&job.barrier)
    return threads


cdef void _launch(Job *job, int n_threads) noexcept nogil:
    """Run a forward job on up to n_threads threads (see _team)."""
    cdef int threads = _team(job, n_threads)
    if threads <= 1:
        _run_thread(job, 0, 1)
    else:
        fr_team_enter(threads)
        with parallel(num_threads=threads):
            _run_thread(job, fr_omp_thread_num(), fr_omp_num_threads())
        fr_team_leave(threads)


cdef void _launch_pair(Job *first, Job *second, int n_threads) noexcept nogil:
    """Run the two directions of a bidirectional layer at the same time, each
    on its share of the threads (one each on two), rather than one after the
    other on all of them: no barrier per step nor exchange of the state between
    the cores at small batch, and one start of the threads instead of two."""
    cdef int threads_first = _team(first, n_threads // 2)
    cdef int threads_second = _team(second, n_threads - n_threads // 2)
    fr_team_enter(threads_first + threads_second)
    with parallel(num_threads=threads_first + threads_second):
        _run_pair_thread(first, second, threads_first, threads_second)
    fr_team_leave(threads_first + threads_second)


cdef void _run_pair_thread(Job *first, Job *second, int threads_first,
                           int threads_second) noexcept nogil:
    """One thread of _launch_pair: its share of the first or the second job."""
    cdef int tid = fr_omp_thread_num()
    if fr_omp_num_threads() == threads_first + threads_second:
        if tid < threads_first:
            _run_thread(first, tid, threads_first)
        else:
            _run_thread(second, tid - threads_first, threads_second)
    elif tid == 0:
        # A smaller team than asked for (OMP_THREAD_LIMIT, nesting): one thread
        # runs both (a job's split covers all of it on a team of one).
        _run_thread(first, 0, 1)
        _run_thread(second, 0, 1)


cdef bint _together(Py_ssize_t batch, Py_ssize_t hidden_size, Py_ssize_t total_cols,
                    Py_ssize_t work, int n_threads) noexcept nogil:
    """Whether a bidirectional layer's directions run at the same time (each on
    its share of n_threads) rather than in turn (each on all of them); ``work``:
    one direction's multiply-adds (below MIN_PARALLEL_WORK one thread is best).
    At batch 1-3, a direction whose W_hh fills the L2 of one core (1 MB here)
    runs faster on all the threads, each keeping its share of W_hh in its own
    cache, than on one: so there the directions take turns. 2 threads,
    directions together against in turn (ms): LSTM H=256 (1 MB) B=1 0.86 /
    0.76, B=2 1.20 / 1.10, B=4 1.82 / 1.82; LSTM H=512 B=1 2.12 / 2.02, B=8
    7.09 / 7.65; LSTM H=224 (784 KB) B=1 0.58 / 0.66; GRU H=256 (768 KB) B=1
    0.55 / 0.65; RNN H=256 B=1 0.22 / 0.25; LSTM H=128 B=8 0.49 / 0.51. The
    BPTTs of a training step, LSTM H=128 T=100: B=1 0.43 / 0.48, B=4 1.04 /
    1.14, B=16 4.68 / 4.93; GRU H=256 B=1 1.61 / 1.83. From
    HIDDEN_SPLIT_ALWAYS_BYTES of W_hh a direction on all the threads splits its
    units and reads its share of the weights, and in turn wins at any batch:
    LSTM H=1024 B=32 T=20 53.5-57.2 / 48.2-48.5, GRU H=1024 B=16 20.2-20.6 /
    17.9-18.1 (H=512, B=4-16: within 1%)."""
    cdef Py_ssize_t weight_bytes = hidden_size * total_cols * sizeof(float)
    return n_threads > 1 and work >= MIN_PARALLEL_WORK and (
        weight_bytes < TOGETHER_MAX_WEIGHT_BYTES
        or (batch >= MIN_ROWS_PER_THREAD and weight_bytes < HIDDEN_SPLIT_ALWAYS_BYTES))


cdef class _ForwardSetup:
    """A forward direction's arrays, as _setup_forward made or checked them:
    they stay referenced here while the job points into them, for
    _place_parts and _finish_forward. first / last: the states before the
    first step and after the last one."""
    cdef int cell
    cdef bint reverse, training
    cdef Py_ssize_t first, last
    cdef object packed, gates, gates_h, hn_cache, h, c, hm, recurrent_mask, lengths
    cdef object thread_space, h0, c0


cdef _ForwardSetup _setup_forward(Job *job, int cell, x, weight_ih, weight_hh, bias_ih,
                                  bias_hh, h0, c0, lengths, bint reverse, bint training, out,
                                  Py_ssize_t out_col, int n_threads, packed, workspace,
                                  recurrent_mask):
    """Check one direction's arguments and fill its job (but for the parts and
    the initial state: _place_parts)."""
    cdef Py_ssize_t T, B, I, H, TB
    T, B, I, H, lengths = check_forward_args(cell, x, weight_ih, weight_hh, bias_ih, bias_hh,
                                             h0, c0, lengths, out, out_col, n_threads)
    if x.dtype != np.float32:
        raise TypeError(f"the packed kernels are float32 only, got {x.dtype}")
    if packed is None:
        packed = pack_weights(cell, weight_ih, weight_hh, bias_ih, bias_hh, n_threads,
                              workspace, training)
    elif (packed.cell, packed.input_size, packed.hidden_size) != (cell, I, H):
        raise ValueError("packed weights belong to another cell or shape")
    elif training and packed.weight_hh_t is None:
        raise ValueError("packed weights for training need pack_weights(..., for_backward=True)")
    TB = T * B
    U, bc, n_blocks = packed.units, packed.block_cols, packed.n_blocks
    total_cols = n_blocks * bc
    # Workspace; every array below is C-contiguous float32 (made here, or checked
    # by check_forward_args / built by PackedWeights), so raw pointers are safe.
    hn_cache = None
    chunk = min(T, _max_chunk(B))
    if training:
        gates = _buffer(workspace, "gates", (n_blocks * (bc // TILE), TB, TILE))
        states = T + 1
        first = T if reverse else 0
        last = 0 if reverse else T
        if cell == GRU:
            hn_cache = _buffer(workspace, "hn", (n_blocks, TB, U), zero=True)
    else:
        gates = _buffer(workspace, "gates", (chunk, B, total_cols))
        states = 2
        first, last = 0, T % 2
    gates_h = _buffer(workspace, "gates_h", (B, total_cols)) if cell == GRU else None
    h = _buffer(workspace, "h", (states, B, H))
    hm = None
    recurrent_mask = check_recurrent_mask(recurrent_mask, training, B, H, np.float32)
    if recurrent_mask is not None:
        # Variational dropout: h * mask feeds the recurrent product (see Job).
        hm = _buffer(workspace, "hm", (states, B, H))
    c = _buffer(workspace, "c", (states, B, H)) if cell == LSTM else None

    _base_job(job, packed, B, gates, gates_h, h, c)
    thread_space = None
    if training:
        # The whole sequence's gates, tile-major (the layout backward reads).
        job.gates_ld, job.gates_block_stride, job.gates_tile_stride = TILE, TB * bc, TB * TILE
        job.gate_stride = U if job.tiles == 1 else job.gates_tile_stride
        job.hn_block_stride = TB * U
    else:
        thread_space = _thread_space(job, n_threads, workspace)
    job.reverse = reverse
    job.training = training
    job.seq_len, job.chunk = T, chunk
    job.out_ld, job.out_col = out.shape[2], out_col
    job.out_step = B * job.out_ld
    job.x = <const float *>cnp.PyArray_DATA(x)
    job.x_step, job.x_ld = B * I, I
    job.out = <float *>cnp.PyArray_DATA(out)
    job.hn_cache = _ptr(hn_cache) if hn_cache is not None else NULL
    job.lengths = <const int64_t *>cnp.PyArray_DATA(lengths) if lengths is not None else NULL
    job.hm = _ptr(hm) if hm is not None else NULL
    job.recurrent_mask = _ptr(recurrent_mask) if hm is not None else NULL
    cdef _ForwardSetup setup = _ForwardSetup()
    setup.cell, setup.reverse, setup.training, setup.first, setup.last = (
        cell, reverse, training, first, last)
    setup.packed, setup.gates, setup.gates_h, setup.hn_cache = packed, gates, gates_h, hn_cache
    setup.h, setup.c, setup.hm, setup.recurrent_mask = h, c, hm, recurrent_mask
    setup.lengths, setup.thread_space, setup.h0, setup.c0 = lengths, thread_space, h0, c0
    return setup


def _state_parts(states, Py_ssize_t parts):
    """States (steps, B, H) in the layout of Job.parts: for each part, its rows
    r0..r1 and the (steps, r1 - r0, H) array of them (one part: all of it)."""
    steps, B, H = states.shape
    if parts == 1:
        return [(0, B, states)]
    flat = states.reshape(-1)
    result = []
    for part in range(parts):
        r0, r1 = block_start(B, parts, part), block_start(B, parts, part + 1)
        result.append((r0, r1, flat[r0 * steps * H:r1 * steps * H].reshape(steps, r1 - r0, H)))
    return result


cdef void _place_parts(Job *job, _ForwardSetup setup, int n_threads) except *:
    """A job's layout, once the threads it runs on are known (n_threads: its
    share when it runs beside another): in training, split into parts when its
    team splits the batch (see Job.parts); and its initial state put in place."""
    cdef bint split_hidden
    cdef int threads
    cdef Py_ssize_t first = setup.first
    if setup.training and job.input_size + job.hidden_size <= PARTS_MAX_ROW:
        threads = _team_size(job, n_threads, &split_hidden)
        if threads > 1 and not split_hidden:
            job.parts = threads
    for r0, r1, h_part in _state_parts(setup.h, job.parts):
        h_part[first] = setup.h0[r0:r1]
    if setup.c is not None:
        for r0, r1, c_part in _state_parts(setup.c, job.parts):
            c_part[first] = setup.c0[r0:r1]
    if setup.hm is not None:
        for r0, r1, hm_part in _state_parts(setup.hm, job.parts):
            hm_part[first] = setup.h0[r0:r1] * setup.recurrent_mask[r0:r1]


def _final_state(states, Py_ssize_t parts, Py_ssize_t last):
    """Every row's state `last` (B, H) of states (steps, B, H) laid out in parts."""
    if parts == 1:
        return states[last].copy()
    result = np.empty(states.shape[1:], np.float32)
    for r0, r1, part in _state_parts(states, parts):
        result[r0:r1] = part[last]
    return result


cdef tuple _finish_forward(const Job *job, _ForwardSetup setup):
    """(h_n, c_n, cache) of a job that has run (see forward)."""
    h_n = _final_state(setup.h, job.parts, setup.last)
    c_n = _final_state(setup.c, job.parts, setup.last) if setup.c is not None else None
    if not setup.training:
        return h_n, c_n, None
    return h_n, c_n, {"cell": setup.cell, "reverse": setup.reverse, "packed": setup.packed,
                      "gates": setup.gates, "hn": setup.hn_cache, "h_seq": setup.h,
                      "c_seq": setup.c, "hm_seq": setup.hm,
                      "recurrent_mask": setup.recurrent_mask, "parts": job.parts,
                      "consumed": False}


def forward(int cell, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, lengths,
            bint reverse, bint training, out, Py_ssize_t out_col, int n_threads, packed=None,
            workspace=None, recurrent_mask=None):
    """One layer, one direction, float32; see fastrnn.reference.forward.

    The training cache holds the gate activations block-major, which is the
    layout ``backward`` reads. ``workspace``: a dict kept by the caller to
    reuse buffers between calls (a training cache then lives until the next
    forward with the same workspace).
    """
    cdef Job job
    setup = _setup_forward(&job, cell, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0,
                           lengths, reverse, training, out, out_col, n_threads, packed,
                           workspace, recurrent_mask)
    _place_parts(&job, setup, n_threads)
    with nogil:
        _launch(&job, n_threads)
    return _finish_forward(&job, setup)


def forward_bidirectional(int cell, x, directions, lengths, bint training, out,
                          int n_threads):
    """Both directions of one layer, at the same time where that is faster (see
    _together, _launch_pair), each writing its columns of ``out``.
    ``directions``: for the forward and the reverse direction, a dict of
    ``forward``'s per-direction arguments (weight_ih, weight_hh, bias_ih,
    bias_hh, h0, c0, out_col, and optionally packed, workspace, recurrent_mask).
    Returns ``forward``'s result for each. The workspaces must be distinct (each
    direction's buffers are its own)."""
    cdef Job jobs[2]
    if len(directions) != 2:
        raise ValueError("directions must hold the forward and the reverse direction")
    first, second = directions
    if (first.get("workspace") is not None
            and first.get("workspace") is second.get("workspace")):
        raise ValueError("the two directions need separate workspaces")
    setups = []
    for index, d in enumerate((first, second)):
        setups.append(_setup_forward(
            &jobs[index], cell, x, d["weight_ih"], d["weight_hh"], d["bias_ih"],
            d["bias_hh"], d["h0"], d["c0"], lengths, index == 1, training, out, d["out_col"],
            n_threads, d.get("packed"), d.get("workspace"), d.get("recurrent_mask")))
    if (jobs[0].out_col < jobs[1].out_col + jobs[1].hidden_size
            and jobs[1].out_col < jobs[0].out_col + jobs[0].hidden_size):
        raise ValueError("the two directions must write separate columns of out, got "
                         f"out_col {jobs[0].out_col} and {jobs[1].out_col} for hidden sizes "
                         f"{jobs[0].hidden_size} and {jobs[1].hidden_size}")
    cdef bint together = _directions_together(&jobs[0], n_threads)
    _place_parts(&jobs[0], setups[0], n_threads // 2 if together else n_threads)
    _place_parts(&jobs[1], setups[1], n_threads - n_threads // 2 if together else n_threads)
    _launch_directions(&jobs[0], &jobs[1], n_threads, together)
    return [_finish_forward(&jobs[0], setups[0]), _finish_forward(&jobs[1], setups[1])]


cdef inline bint _directions_together(const Job *first, int n_threads) noexcept nogil:
    """Whether a bidirectional layer's directions run at the same time (_together)."""
    return _together(first.batch, first.hidden_size, first.total_cols,
                     first.seq_len * first.batch * first.total_cols
                     * (first.input_size + first.hidden_size), n_threads)


cdef void _launch_directions(Job *first, Job *second, int n_threads, bint together) noexcept:
    """Run a bidirectional layer's two jobs, together or in turn."""
    with nogil:
        if together:
            _launch_pair(first, second, n_threads)
        else:
            _launch(first, n_threads)
            _launch(second, n_threads)


cdef inline Py_ssize_t _partial_tiles(int cell, Py_ssize_t U, Py_ssize_t partial_units,
                                      Py_ssize_t block_cols) noexcept nogil:
    """Job.partial_tiles: the tiles of the last unit block when the products may
    leave out their padding columns: a GRU's or RNN's (one gate per tile; an
    LSTM tile mixes its gates' units), when at most three quarters of each tile
    are valid: beyond, the edge tile computes as many vectors as a whole one, and
    its copy through a buffer made things slower (a GRU at H=100, 36 units of 64,
    3-6% slower with the edge tile's 4 vectors; with 3, 3-8% faster). At H=200 (8
    units of 64) -11%."""
    if cell == LSTM or partial_units >= U or 4 * partial_units > 3 * TILE:
        return 0
    return block_cols // TILE


cdef void _base_job(Job *job, PackedWeights packed, Py_ssize_t batch, gates, gates_h, h,
                    c) except *:
    """The fields every forward job sets alike: the packed weights and sizes, the
    buffers (gates, gates_h for a GRU's recurrent part or a Stepper's, the state h
    and, for the LSTM, c), the inference layout of the gates (row-major, `batch`
    rows a step), a forward direction, no lengths, no dropout, no streaming.
    Callers set the rest (sequence length, input, output) and what differs."""
    cdef Py_ssize_t bc = packed.block_cols, tc = packed.n_blocks * packed.block_cols
    job.cell = packed.cell
    job.reverse = job.training = False
    job.stream = job.stream_phase = False
    job.batch, job.input_size, job.hidden_size = batch, packed.input_size, packed.hidden_size
    job.U, job.block_cols, job.n_blocks, job.total_cols = packed.units, bc, packed.n_blocks, tc
    job.partial_units = packed.hidden_size - (packed.n_blocks - 1) * packed.units
    job.partial_tiles = _partial_tiles(job.cell, packed.units, job.partial_units, bc)
    job.gates_ld, job.gates_block_stride, job.gates_tile_stride = tc, bc, TILE
    job.tiles = bc // TILE
    job.gate_stride = packed.units if job.tiles == 1 else TILE
    job.out_col = 0
    job.weight_ih = <const float *>cnp.PyArray_DATA(packed.weight_ih)
    job.weight_hh = <const float *>cnp.PyArray_DATA(packed.weight_hh)
    job.bias = <const float *>cnp.PyArray_DATA(packed.bias)
    job.bias_hn = (<const float *>cnp.PyArray_DATA(packed.bias_hn)
                   if packed.bias_hn is not None else NULL)
    job.gates = _ptr(gates)
    job.gates_h = _ptr(gates_h) if gates_h is not None else NULL
    job.hn_cache = NULL
    job.h = _ptr(h)
    job.c = _ptr(c) if c is not None else NULL
    job.lengths = NULL
    job.hm = NULL
    job.recurrent_mask = NULL
    job.thread_space = NULL
    job.parts = 1
    job.hn_block_stride = 0


cdef class Stepper:
    """One time step of one layer direction for streaming inference, with the
    job and its buffers set up once, so a step costs little more than its
    arithmetic: ``step(x, h, c, h_out, c_out)`` reads x (batch, input_size) and
    the state, and writes the new state (the step's output is h_out)."""
    cdef Job job
    cdef readonly PackedWeights packed
    cdef readonly Py_ssize_t batch
    cdef readonly int n_threads
    cdef object gates, gates_h, h, c
    # Set while _step_through runs a stack whose first Stepper this is (see there).
    cdef bint in_use

    def __init__(self, PackedWeights packed, Py_ssize_t batch, int n_threads):
        cdef Py_ssize_t H, bc, n_blocks
        cdef Job *job
        if batch < 1 or n_threads < 1:
            raise ValueError(f"batch and n_threads must be >= 1, got {batch}, {n_threads}")
        H, bc, n_blocks = packed.hidden_size, packed.block_cols, packed.n_blocks
        self.packed, self.batch, self.n_threads = packed, batch, n_threads
        self.gates = aligned_empty((1, batch, n_blocks * bc))
        self.gates_h = aligned_empty((batch, n_blocks * bc))
        self.h = aligned_empty((2, batch, H))
        self.c = aligned_empty((2, batch, H)) if packed.cell == LSTM else None
        job = &self.job
        _base_job(job, packed, batch, self.gates, self.gates_h, self.h, self.c)
        # One step a call; the two products into separate buffers (see Job).
        job.stream = True
        job.seq_len, job.chunk = 1, 1
        # The step's output is the new state, written straight into h[1].
        job.out_step = job.out_ld = H
        job.x_step = job.x_ld = packed.input_size
        job.out = job.h + batch * H

    def step(self, cnp.ndarray x, cnp.ndarray h, c, cnp.ndarray h_out, c_out):
        """x (batch, input_size), h/h_out (batch, hidden), c/c_out likewise for
        LSTM (None otherwise); all float32 and C-contiguous (checked)."""
        cdef Py_ssize_t B = self.batch, I = self.job.input_size, H = self.job.hidden_size
        _check_step_array("x", x, B, I)
        _check_step_array("h", h, B, H)
        _check_step_array("h_out", h_out, B, H)
        if self.c is not None:
            _check_step_array("c", c, B, H)
            _check_step_array("c_out", c_out, B, H)
        self._run(<const float *>cnp.PyArray_DATA(x), <const float *>cnp.PyArray_DATA(h),
                  <const float *>cnp.PyArray_DATA(c) if self.c is not None else NULL,
                  <float *>cnp.PyArray_DATA(h_out),
                  <float *>cnp.PyArray_DATA(c_out) if self.c is not None else NULL)

    cdef void _run(self, const float *x, const float *h, const float *c, float *h_out,
                   float *c_out) noexcept:
        cdef Py_ssize_t size = self.batch * self.job.hidden_size
        self.job.x = x
        memcpy(self.job.h, h, size * sizeof(float))
        if c != NULL:
            memcpy(self.job.c, c, size * sizeof(float))
        with nogil:
            _launch(&self.job, self.n_threads)
        self.job.stream_phase = not self.job.stream_phase
        memcpy(h_out, self.job.h + size, size * sizeof(float))
        if c_out != NULL:
            memcpy(c_out, self.job.c + size, size * sizeof(float))


cdef class SequenceRunner:
    """One layer direction's inference forward over whole sequences, with the
    job and its buffers set up once per batch size (as Stepper for single
    steps): a call sets the sequence length, the input, the output and the
    state, and runs; what ``forward`` spends checking and preparing its
    arguments (several microseconds, as much as a short sequence's arithmetic)
    is not paid again. The same job as ``forward``'s inference: the same results."""
    cdef Job job
    cdef readonly PackedWeights packed
    cdef readonly Py_ssize_t batch
    cdef readonly int n_threads
    cdef object gates, gates_h, h, c, thread_space

    def __init__(self, PackedWeights packed, Py_ssize_t batch, int n_threads,
                 bint reverse=False):
        cdef Py_ssize_t H, bc, n_blocks, tc
        cdef Job *job = &self.job
        if batch < 1 or n_threads < 1:
            raise ValueError(f"batch and n_threads must be >= 1, got {batch}, {n_threads}")
        H, bc, n_blocks = packed.hidden_size, packed.block_cols, packed.n_blocks
        tc = n_blocks * bc
        self.packed, self.batch, self.n_threads = packed, batch, n_threads
        self.gates = aligned_empty((_max_chunk(batch), batch, tc))
        self.gates_h = aligned_empty((batch, tc)) if packed.cell == GRU else None
        self.h = aligned_empty((2, batch, H))
        self.c = aligned_empty((2, batch, H)) if packed.cell == LSTM else None
        _base_job(job, packed, batch, self.gates, self.gates_h, self.h, self.c)
        self.thread_space = _thread_space(job, n_threads, None)
        job.reverse = reverse

    cdef void _start(self, const float *x, Py_ssize_t x_step, Py_ssize_t x_ld,
                     Py_ssize_t seq_len, const float *h0, const float *c0,
                     const int64_t *lengths, float *out, Py_ssize_t out_step,
                     Py_ssize_t out_ld, Py_ssize_t out_col) noexcept:
        """Set up a call: x (step t, row b at x + t * x_step + b * x_ld) -> columns
        out_col .. out_col + hidden of out (at out + t * out_step + b * out_ld);
        h0/c0 the initial state (NULL: zeros; c0: LSTM); lengths one per row in
        1..seq_len, checked (NULL: all seq_len). Then run the job (_launch or
        _launch_pair) and _finish."""
        cdef Job *job = &self.job
        cdef Py_ssize_t size = self.batch * job.hidden_size
        job.seq_len = seq_len
        job.chunk = min(seq_len, _max_chunk(self.batch))
        job.x, job.x_step, job.x_ld, job.lengths = x, x_step, x_ld, lengths
        job.out, job.out_step, job.out_ld, job.out_col = out, out_step, out_ld, out_col
        if h0 != NULL:
            memcpy(job.h, h0, size * sizeof(float))
        else:
            memset(job.h, 0, size * sizeof(float))
        if job.c != NULL:
            if c0 != NULL:
                memcpy(job.c, c0, size * sizeof(float))
            else:
                memset(job.c, 0, size * sizeof(float))

    cdef void _finish(self, float *h_n, float *c_n) noexcept:
        """Copy the final state out (c_n: LSTM)."""
        cdef Job *job = &self.job
        cdef Py_ssize_t size = self.batch * job.hidden_size, last = job.seq_len % 2
        memcpy(h_n, job.h + last * size, size * sizeof(float))
        if job.c != NULL:
            memcpy(c_n, job.c + last * size, size * sizeof(float))


def forward_cached(dict runners_by_key, x, hx, int n_threads, int directions=1,
                   lengths=None, bint batch_first=False):
    """Layer.forward's fast path in inference: stacked layers of ``directions``
    directions whose SequenceRunners (layer-major, then direction) are in
    ``runners_by_key[(batch, n_threads)]``, x a float32 C-contiguous (seq_len,
    batch, input_size) array ((batch, seq_len, input_size) with batch_first),
    or unbatched (seq_len, input_size), hx None (zeros) or forward's state
    arrays, float32 C-contiguous, lengths None or an int64 array (batch,) in
    1..seq_len. Returns (out, h_n, c_n) in the layout of x and hx, or None
    when there are no runners for this batch or an argument needs converting
    or checking (the caller then takes the long way, which also gives the
    errors)."""
    cdef cnp.ndarray xa, la
    cdef SequenceRunner first, runner, reverse
    cdef Py_ssize_t T, B, I, L, H, D = directions, l, index, width, b
    cdef Py_ssize_t x_step, x_ld, out_step, out_ld
    cdef bint lstm, unbatched
    cdef cnp.npy_intp shape[3]
    cdef const float *layer_input
    cdef float *out_ptr
    cdef const int64_t *lengths_ptr = NULL
    if type(x) is not np.ndarray:
        return None
    xa = x
    if (not _is_f32(xa) or not cnp.PyArray_IS_C_CONTIGUOUS(xa)
            or not 2 <= cnp.PyArray_NDIM(xa) <= 3):
        return None
    # Unbatched: x (seq_len, input_size) in either layout, run as a batch of 1;
    # the states and the output without the batch axis.
    unbatched = cnp.PyArray_NDIM(xa) == 2
    if unbatched:
        if lengths is not None:
            return None
        T, B, I = xa.shape[0], 1, xa.shape[1]
        batch_first = False
    else:
        T, B, I = xa.shape[0], xa.shape[1], xa.shape[2]
        if batch_first:
            T, B = B, T
    runners = runners_by_key.get((B, n_threads))
    if runners is None or T < 1 or D < 1 or D > 2 or len(runners) % D != 0:
        return None
    first = runners[0]
    if I != first.job.input_size:
        return None
    L, H, lstm = len(runners) // D, first.job.hidden_size, first.c is not None
    h = c = None
    if hx is not None:
        if lstm:
            if type(hx) is not tuple or len(<tuple>hx) != 2:
                return None
            h, c = hx
            if not (_is_state(h, L * D, B, H, unbatched)
                    and _is_state(c, L * D, B, H, unbatched)):
                return None
        else:
            h = hx
            if not _is_state(h, L * D, B, H, unbatched):
                return None
    if lengths is not None:
        if type(lengths) is not np.ndarray:
            return None
        la = lengths
        if (cnp.PyArray_TYPE(la) != cnp.NPY_INT64 or not cnp.PyArray_ISNOTSWAPPED(la)
                or cnp.PyArray_NDIM(la) != 1
                or not cnp.PyArray_IS_C_CONTIGUOUS(la) or la.shape[0] != B):
            return None
        lengths_ptr = <const int64_t *>cnp.PyArray_DATA(la)
        for b in range(B):
            if not 1 <= lengths_ptr[b] <= T:
                return None
    shape[0], shape[1], shape[2] = L * D, B, H
    if unbatched:
        shape[1] = H
    h_n = _empty_f32(3 - unbatched, shape)
    c_n = _empty_f32(3 - unbatched, shape) if lstm else None
    # Each layer's output on a cache line of its own (the threads of a batch
    # split write their rows of it), the last one returned in the layout of x.
    width = D * H
    if unbatched:
        out = aligned_empty((T, width))
    else:
        out = aligned_empty((B, T, width) if batch_first else (T, B, width))
    between = aligned_empty((T, B, width)) if L > 1 else None
    # The first layer reads x in its layout, the others the previous layer's
    # output (time-major); the last writes `out` in the layout of x.
    layer_input = <const float *>cnp.PyArray_DATA(xa)
    x_step, x_ld = (I, T * I) if batch_first else (B * I, I)
    for l in range(L):
        # Layers alternate between the two buffers so that the last writes `out`.
        out_ptr = _ptr(out) if (L - 1 - l) % 2 == 0 else _ptr(between)
        out_step, out_ld = B * width, width
        if batch_first and l == L - 1:
            out_step, out_ld = width, T * width
        for index in range(l * D, (l + 1) * D):
            runner = runners[index]
            runner._start(layer_input, x_step, x_ld, T,
                          _ptr(h) + index * B * H if h is not None else NULL,
                          _ptr(c) + index * B * H if c is not None else NULL, lengths_ptr,
                          out_ptr, out_step, out_ld, (index - l * D) * H)
        runner = runners[l * D]
        if D == 1:
            with nogil:
                _launch(&runner.job, n_threads)
        else:
            reverse = runners[l * D + 1]
            _launch_directions(&runner.job, &reverse.job, n_threads,
                               _directions_together(&runner.job, n_threads))
        for index in range(l * D, (l + 1) * D):
            runner = runners[index]
            runner._finish(_ptr(h_n) + index * B * H,
                           _ptr(c_n) + index * B * H if lstm else NULL)
        layer_input = out_ptr
        x_step, x_ld = B * width, width
    return out, h_n, c_n


cdef inline bint _is_f32(cnp.ndarray a):
    """a holds float32 in this machine's byte order (the type number alone
    does not tell a big-endian '>f4' array from a native one)."""
    return cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32 and cnp.PyArray_ISNOTSWAPPED(a)


cdef inline cnp.ndarray _empty_f32(int ndim, cnp.npy_intp *shape):
    """A new C-contiguous float32 array, made at C level (np.empty's Python call
    costs more than the whole step of a small layer)."""
    return cnp.PyArray_EMPTY(ndim, shape, cnp.NPY_FLOAT32, 0)


cdef bint _step_through(list steppers, const float *x, float *h, float *c, float *h_n,
                        float *c_n) except -1:
    """One step through stacked layers: x (batch, input_size); h, c the state
    (layers, batch, hidden); h_n, c_n the new state (c, c_n NULL unless LSTM).
    The steppers must share batch and sizes (checked).
    Steppers hold one step's buffers: returns False, having run nothing, while
    another thread steps the same stack (its first Stepper in use), so that a
    layer's step needs no lock of its own (the lock and the frame around it
    cost 0.3 us of a 1.6 us GRU H=64 step). The test and the set below run
    holding the GIL, with no Python code between."""
    cdef Stepper first = steppers[0], stepper
    cdef Py_ssize_t layers = len(steppers), B = first.batch, H = first.job.hidden_size, l
    cdef const float *layer_input = x
    if first.in_use:
        return False
    first.in_use = True
    try:
        for l in range(layers):
            stepper = steppers[l]
            if stepper.batch != B or stepper.job.hidden_size != H or (
                    l > 0 and stepper.job.input_size != H):
                raise ValueError("steppers of one stack must share batch and sizes")
            stepper._run(layer_input, h + l * B * H, c + l * B * H if c != NULL else NULL,
                         h_n + l * B * H, c_n + l * B * H if c_n != NULL else NULL)
            layer_input = h_n + l * B * H
    finally:
        first.in_use = False
    return True


def _hold_steppers(list steppers, bint hold):
    """For tests: mark a stack of Steppers in use, as another thread's step
    would (hold=True), or free it again."""
    (<Stepper>steppers[0]).in_use = hold


def step_layers(list steppers, x, h, c):
    """One step through stacked layers (a Stepper each, same batch): x (batch,
    input_size); h, c (layers, batch, hidden) float32 (c None unless LSTM).
    Returns (out, h_n, c_n) with out (batch, hidden) the last layer's new h, or
    None while another thread is stepping these Steppers."""
    cdef Stepper first
    cdef Py_ssize_t layers = len(steppers), B, H
    cdef cnp.npy_intp shape[3]
    if layers == 0:
        raise ValueError("no layers")
    first = steppers[0]
    B, H = first.batch, first.job.hidden_size
    _check_step_array("x", x, B, first.job.input_size)
    _check_state_array("h", h, layers, B, H)
    lstm = first.c is not None
    if lstm:
        _check_state_array("c", c, layers, B, H)
    shape[0], shape[1], shape[2] = layers, B, H
    h_n = _empty_f32(3, shape)
    c_n = _empty_f32(3, shape) if lstm else None
    if not _step_through(steppers, _ptr(x), _ptr(h), _ptr(c) if lstm else NULL, _ptr(h_n),
                         _ptr(c_n) if lstm else NULL):
        return None
    return h_n[layers - 1].copy(), h_n, c_n


cdef inline bint _state_layout(cnp.ndarray arr, Py_ssize_t layers, Py_ssize_t rows,
                               Py_ssize_t cols, bint unbatched):
    """arr is C-contiguous float32 of shape (layers, rows, cols), or (layers,
    cols) when unbatched (rows is then 1)."""
    if not _is_f32(arr) or not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        return False
    if unbatched:
        return cnp.PyArray_NDIM(arr) == 2 and arr.shape[0] == layers and arr.shape[1] == cols
    return (cnp.PyArray_NDIM(arr) == 3 and arr.shape[0] == layers and arr.shape[1] == rows
            and arr.shape[2] == cols)


cdef inline bint _is_state(a, Py_ssize_t layers, Py_ssize_t rows, Py_ssize_t cols,
                           bint unbatched):
    """a is an ndarray (not a subclass) in the layout of _state_layout."""
    return type(a) is np.ndarray and _state_layout(a, layers, rows, cols, unbatched)


def step_cached(dict steppers_by_key, x, hx, int n_threads):
    """Layer.step's fast path: one step through stacked layers whose Steppers
    are in ``steppers_by_key[(batch, n_threads)]``, with x and the state in the
    layouts a step returns (x (batch, input_size) or (input_size,) float32
    C-contiguous; hx as forward's, None for zeros). Returns (out, hx) like
    Layer.step, or None when there are no Steppers for this batch yet, another
    thread is stepping them, or an argument needs converting or checking (the
    caller then takes the long way).

    Everything here is C-level: a step of a layer whose weights fill the cache
    evicts the interpreter's data, so every Python-level operation between steps
    costs a round of cache misses (at H=256 the calls around the step took
    3.5 us when they went through Python, against a 16 us step)."""
    cdef cnp.ndarray xa
    cdef Py_ssize_t B, L, H
    cdef bint lstm, unbatched
    cdef cnp.npy_intp shape[3]
    cdef float *c_ptr = NULL
    cdef float *c_n_ptr = NULL
    if type(x) is not np.ndarray:
        return None
    xa = x
    if not _is_f32(xa) or not cnp.PyArray_IS_C_CONTIGUOUS(xa):
        return None
    unbatched = cnp.PyArray_NDIM(xa) == 1
    if unbatched:
        B = 1
    elif cnp.PyArray_NDIM(xa) == 2:
        B = xa.shape[0]
    else:
        return None
    steppers = steppers_by_key.get((B, n_threads))
    if steppers is None:
        return None
    cdef Stepper first = steppers[0]
    if xa.shape[cnp.PyArray_NDIM(xa) - 1] != first.job.input_size:
        return None
    L, H, lstm = len(steppers), first.job.hidden_size, first.c is not None
    if hx is None:
        h = np.zeros((L, B, H), np.float32)
        c = np.zeros((L, B, H), np.float32) if lstm else None
    elif lstm:
        if type(hx) is not tuple or len(<tuple>hx) != 2:
            return None
        h, c = hx
        if not (_is_state(h, L, B, H, unbatched) and _is_state(c, L, B, H, unbatched)):
            return None
    else:
        h, c = hx, None
        if not _is_state(h, L, B, H, unbatched):
            return None
    # The new state and the output, in the caller's layout: (L, H) and (H,)
    # unbatched, (L, B, H) and (B, H) batched (B = 1 has the same memory).
    if unbatched:
        shape[0], shape[1] = L, H
    else:
        shape[0], shape[1], shape[2] = L, B, H
    h_n = _empty_f32(3 - unbatched, shape)
    if lstm:
        c_n = _empty_f32(3 - unbatched, shape)
        c_ptr, c_n_ptr = _ptr(c), _ptr(c_n)
    else:
        c_n = None
    if not _step_through(steppers, _ptr(xa), _ptr(h), c_ptr, _ptr(h_n), c_n_ptr):
        return None
    out = _empty_f32(2 - unbatched, shape + 1)
    memcpy(_ptr(out), _ptr(h_n) + (L - 1) * B * H, B * H * sizeof(float))
    return out, ((h_n, c_n) if lstm else h_n)


cdef inline _check_state_array(str name, a, Py_ssize_t layers, Py_ssize_t rows,
                               Py_ssize_t cols):
    if isinstance(a, np.ndarray) and _state_layout(a, layers, rows, cols, False):
        return
    raise ValueError(f"{name} must be a C-contiguous float32 array of shape "
                     f"{(layers, rows, cols)}")


cdef inline _check_step_array(str name, cnp.ndarray a, Py_ssize_t rows, Py_ssize_t cols):
    if (not _is_f32(a) or cnp.PyArray_NDIM(a) != 2
            or a.shape[0] != rows or a.shape[1] != cols or not cnp.PyArray_IS_C_CONTIGUOUS(a)):
        raise ValueError(f"{name} must be a C-contiguous float32 array of shape "
                         f"({rows}, {cols}), got {(<object>a).dtype} {(<object>a).shape}")
    if name.endswith("_out") and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{name} must be writable")


# --------------------------------------------------------------------------
# Backward (BPTT) on the block-major training cache.
# --------------------------------------------------------------------------


cdef struct BackJob:
    int cell
    bint reverse
    Py_ssize_t seq_len, batch, hidden_size, U, block_cols, n_blocks, total_cols, out_ld, out_col
    float *gates          # (n_blocks, T*B, block_cols): activations -> input-side gradients
    float *grad_h_side    # GRU: (n_blocks, T*B, block_cols) recurrent-side gradients; else = gates
    float *hn_cache       # GRU: (n_blocks, T*B, U)
    const float *h
    const float *c
    const float *grad_out
    const float *weight_hh_t   # weight_hh rows in packed order, packed by GRAD_BLOCK columns
    float *dh
    float *dh_other
    float *dc
    const int64_t *lengths
    const float *recurrent_mask   # (B, H) or NULL
    float *dh_rec                 # (B, H) scratch when recurrent_mask is set
    # How the BPTT runs (_bptt_team): BPTT_ONE thread, or split by BPTT_ROWS or
    # BPTT_UNITS across `team` threads; unit_groups: GRAD_BLOCK-unit groups.
    int split, team
    Py_ssize_t unit_groups
    # Per step when the hidden units are split; at the end of a batch split.
    fr_barrier barrier
    # The forward's sub-batches (Job.parts; 1: the rows share the layout), the
    # rows of the whole cache (T * B: tiles are cache_rows * TILE apart), and
    # grad_out's step stride (row b of step t at t * grad_out_step + b * out_ld).
    Py_ssize_t parts, cache_rows, grad_out_step


cdef void _backprop_rows(const BackJob *job, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t j0,
                         Py_ssize_t j1, int split, int tid) noexcept nogil:
    """BPTT for batch rows [r0, r1) and hidden units [j0, j1) * GRAD_BLOCK: on
    entry dh/dc hold dL/dh_n, dL/dc_n; on return dh holds dL/dh0 and dc dL/dc0
    for these rows and units. With split > 1, the other threads of the parallel
    region (split in all; this one is number tid) own the other units (same
    rows): one barrier per step."""
    cdef unsigned int fp_state = fr_ftz_enter()
    _backprop_steps(job, r0, r1, j0, j1, split, tid)
    fr_ftz_leave(fp_state)


cdef enum:
    BPTT_ONE = 0
    BPTT_ROWS = 1
    BPTT_UNITS = 2


cdef int _bptt_team(BackJob *job, int n_threads) noexcept nogil:
    """Choose how the BPTT runs on up to n_threads threads; returns the team size.
    Rows split across threads (each runs every step) when each gets enough rows;
    else the hidden units, in groups of GRAD_BLOCK, with a barrier per step (as
    the forward), when each thread gets at least one whole group (H=65 split
    64 + 1 was slower than one thread), and also with more rows when the weights
    are large (_large_weights). Training on 2 threads, BPTT ms, rows against
    units: LSTM B=16 H=512 T=50 15.95/15.49, H=1024 T=20 31.3/29.4, B=64 H=1024
    T=10 53.2/51.2; GRU B=16 H=1024 T=20 23.5/21.8; LSTM B=32 H=768 T=20 28.3/28.3
    (and on rows: B=64 H=512 T=20 23.9/24.1, 2-layer B=20 H=650 45.9/45.9)."""
    cdef Py_ssize_t H = job.hidden_size
    job.unit_groups = (H + GRAD_BLOCK - 1) // GRAD_BLOCK
    job.split, job.team = BPTT_ONE, 1
    if job.parts > 1:
        # The forward's parts: one thread each, or one for all.
        if n_threads >= job.parts:
            job.split, job.team = BPTT_ROWS, <int>job.parts
    elif (n_threads > 1 and job.batch // MIN_ROWS_PER_THREAD > 1
            and not (H >= 2 * GRAD_BLOCK
                     and _large_weights(H, job.total_cols, job.batch, n_threads))):
        job.split = BPTT_ROWS
        job.team = min(n_threads, <int>(job.batch // MIN_ROWS_PER_THREAD))
    elif (n_threads > 1 and H >= 2 * GRAD_BLOCK
            and job.seq_len * job.batch * job.total_cols * H >= MIN_PARALLEL_WORK):
        job.split = BPTT_UNITS
        job.team = min(n_threads, <int>job.unit_groups)
    if job.team > 1:
        fr_barrier_init(&job.barrier)
    return job.team


cdef void _bptt_thread(const BackJob *job, int tid) noexcept nogil:
    """Thread tid's share of the BPTT (of a team of job.team, see _bptt_team)."""
    cdef int team = job.team
    if job.split == BPTT_ROWS:
        if job.parts > 1:
            _backprop_part(job, tid)
        else:
            _backprop_rows(job, block_start(job.batch, team, tid),
                           block_start(job.batch, team, tid + 1), 0, job.unit_groups, 0, tid)
        # The threads of a batch split meet only here (see fr_barrier_finish).
        fr_barrier_finish(<fr_barrier *>&job.barrier, team, tid)
    elif job.split == BPTT_UNITS:
        _backprop_rows(job, 0, job.batch, block_start(job.unit_groups, team, tid),
                       block_start(job.unit_groups, team, tid + 1), team, tid)
    else:
        _bptt_alone(job)


cdef void _bptt_alone(const BackJob *job) noexcept nogil:
    """The whole BPTT on the calling thread."""
    cdef Py_ssize_t part
    if job.parts > 1:
        for part in range(job.parts):
            _backprop_part(job, part)
    else:
        _backprop_rows(job, 0, job.batch, 0, job.unit_groups, 0, 0)


cdef void _backprop_part(const BackJob *job, Py_ssize_t part) noexcept nogil:
    """The BPTT of sub-batch `part` (see _run_part) as a job of its own."""
    cdef BackJob rows = job[0]
    cdef Py_ssize_t T = job.seq_len, H = job.hidden_size, B = job.batch
    cdef Py_ssize_t r0 = block_start(B, job.parts, part), r1 = block_start(B, job.parts, part + 1)
    if r1 <= r0:
        return
    rows.batch = r1 - r0
    rows.parts = 1
    rows.gates = job.gates + r0 * T * TILE
    rows.grad_h_side = job.grad_h_side + r0 * T * TILE
    if job.hn_cache != NULL:
        rows.hn_cache = job.hn_cache + r0 * T * job.U
    rows.h = job.h + r0 * (T + 1) * H
    if job.c != NULL:
        rows.c = job.c + r0 * (T + 1) * H
    rows.grad_out = job.grad_out + r0 * job.out_ld
    rows.dh = job.dh + r0 * H
    rows.dh_other = job.dh_other + r0 * H
    if job.dc != NULL:
        rows.dc = job.dc + r0 * H
    if job.lengths != NULL:
        rows.lengths = job.lengths + r0
    if job.recurrent_mask != NULL:
        rows.recurrent_mask = job.recurrent_mask + r0 * H
        rows.dh_rec = job.dh_rec + r0 * H
    _backprop_rows(&rows, 0, rows.batch, 0, job.unit_groups, 0, 0)


cdef void _bptt(BackJob *job, int n_threads) noexcept nogil:
    """Run the BPTT of one direction on up to n_threads threads."""
    if _bptt_team(job, n_threads) <= 1:
        _bptt_alone(job)
        return
    fr_team_enter(job.team)
    with parallel(num_threads=job.team):
        if fr_omp_num_threads() == job.team:
            _bptt_thread(job, fr_omp_thread_num())
        elif fr_omp_thread_num() == 0:
            # A smaller team than asked for (OMP_THREAD_LIMIT, nesting).
            _bptt_alone(job)
    fr_team_leave(job.team)


cdef void _bptt_pair(BackJob *first, BackJob *second, int n_threads) noexcept nogil:
    """The BPTTs of a bidirectional layer's two directions at the same time, each
    on its share of the threads (as _launch_pair for the forward)."""
    cdef int team_first = _bptt_team(first, n_threads // 2)
    cdef int team_second = _bptt_team(second, n_threads - n_threads // 2)
    fr_team_enter(team_first + team_second)
    with parallel(num_threads=team_first + team_second):
        _bptt_pair_thread(first, second, team_first, team_second)
    fr_team_leave(team_first + team_second)


cdef void _bptt_pair_thread(BackJob *first, BackJob *second, int team_first,
                            int team_second) noexcept nogil:
    cdef int tid = fr_omp_thread_num()
    if fr_omp_num_threads() == team_first + team_second:
        if tid < team_first:
            _bptt_thread(first, tid)
        else:
            _bptt_thread(second, tid - team_first)
    elif tid == 0:
        # A smaller team than asked for: one thread runs both.
        _bptt_alone(first)
        _bptt_alone(second)


cdef void _backprop_steps(const BackJob *job, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t j0,
                          Py_ssize_t j1, int split, int tid) noexcept nogil:
    cdef Py_ssize_t T = job.seq_len, B = job.batch, H = job.hidden_size, U = job.U
    cdef Py_ssize_t bc = job.block_cols, TB = job.cache_rows, gbs = job.cache_rows * bc
    # Tile-major cache: row `row` of unit block blk at blk * gbs + row * TILE; the
    # gates of a unit gs apart (U within one tile, T*B*TILE when a gate is a tile).
    cdef Py_ssize_t gs = U if bc == TILE else TB * TILE
    cdef Py_ssize_t s, t, b, blk, u0, n, gate, i_prev, i_new, row
    cdef float *dh = job.dh
    cdef float *dh_other = job.dh_other
    cdef float *tmp
    cdef float *g
    cdef float *hn = NULL
    cdef float *dgh
    cdef const float *go
    cdef int gate_count = bc // U
    cdef unsigned int barriers_passed = 0
    # Own units: [u_lo, u_hi), the unit blocks [k0, k1) (GRAD_BLOCK is a multiple
    # of U), and the same columns of dh_prev in the recurrent product.
    cdef Py_ssize_t u_lo = j0 * GRAD_BLOCK, u_hi = min(H, j1 * GRAD_BLOCK)
    cdef Py_ssize_t k0 = u_lo // U, k1 = min(job.n_blocks, (u_hi + U - 1) // U)
    if r1 <= r0 or u_hi <= u_lo:
        return
    for s in range(T):
        t = s if job.reverse else T - 1 - s
        i_prev = t + 1 if job.reverse else t
        i_new = t if job.reverse else t + 1
        for b in range(r0, r1):
            row = t * B + b
            go = job.grad_out + t * job.grad_out_step + b * job.out_ld + job.out_col
            blk = k0
            if job.cell == LSTM and (job.lengths == NULL or t < job.lengths[b]):
                # Whole blocks in one call (see lstm_forward_blocks); the loop below
                # takes a last block cut short by hidden_size.
                blk = max(k0, min(k1, H // U))
                u0 = k0 * U
                if blk > k0:
                    lstm_backward_blocks_f32(blk - k0, gbs, job.gates + k0 * gbs + row * TILE,
                                             job.c + i_prev * B * H + b * H + u0,
                                             job.c + i_new * B * H + b * H + u0, go + u0,
                                             dh + b * H + u0, dh_other + b * H + u0,
                                             job.dc + b * H + u0)
            for blk in range(blk, k1):
                u0 = blk * U
                n = min(U, H - u0)
                g = job.gates + blk * gbs + row * TILE
                if job.lengths != NULL and t >= job.lengths[b]:
                    # Inactive: no gate gradient; dh and dc pass through.
                    for gate in range(gate_count):
                        memset(g + gate * gs, 0, U * sizeof(float))
                        if job.cell == GRU:
                            memset(job.grad_h_side + blk * gbs + row * TILE + gate * gs, 0,
                                   U * sizeof(float))
                    memcpy(dh_other + b * H + u0, dh + b * H + u0, n * sizeof(float))
                    continue
                if job.cell == LSTM:
                    lstm_backward_row_f32(n, gs, g, job.c + i_prev * B * H + b * H + u0,
                                          job.c + i_new * B * H + b * H + u0, go + u0,
                                          dh + b * H + u0, dh_other + b * H + u0,
                                          job.dc + b * H + u0)
                elif job.cell == GRU:
                    hn = job.hn_cache + blk * TB * U + row * U
                    gru_backward_row_f32(n, gs, g, hn, job.h + i_prev * B * H + b * H + u0,
                                         go + u0, dh + b * H + u0, dh_other + b * H + u0)
                else:
                    rnn_backward_row_f32(n, job.cell == RNN_RELU, g,
                                         job.h + i_new * B * H + b * H + u0, go + u0,
                                         dh + b * H + u0, dh_other + b * H + u0)
                if n < U:
                    # Padding units of the last block: exact zeros, whatever the
                    # forward left there (e.g. 0 * inf), so the products below see 0.
                    for gate in range(gate_count):
                        memset(g + gate * gs + n, 0, (U - n) * sizeof(float))
                if job.cell == GRU:
                    # The recurrent side differs in the n gate: d(W_hn h) = dn * r.
                    dgh = job.grad_h_side + blk * gbs + row * TILE
                    memcpy(dgh, g, U * sizeof(float))
                    memcpy(dgh + gs, g + gs, U * sizeof(float))
                    memcpy(dgh + 2 * gs, hn, n * sizeof(float))
                    memset(dgh + 2 * gs + n, 0, (U - n) * sizeof(float))
        if split > 1:
            # The product reads every unit's gate gradients of step t.
            fr_barrier_wait(<fr_barrier *>&job.barrier, split, tid, &barriers_passed)
        if job.recurrent_mask == NULL:
            # dh_prev[r0:r1, own units] += dgates_h[t, r0:r1] @ weight_hh[:, own units]
            # (gate rows in packed order)
            _gemm(r1 - r0, job.total_cols, job.grad_h_side + (t * B + r0) * TILE, TILE, TILE,
                  TB * TILE, job.weight_hh_t + j0 * job.total_cols * GRAD_BLOCK, GRAD_BLOCK,
                  j1 - j0, dh_other + r0 * H + u_lo, H, GRAD_BLOCK, u_hi - u_lo, 1)
        else:
            # dh_prev[r0:r1, own] += (dgates_h[t, r0:r1] @ weight_hh[:, own]) * mask[r0:r1, own]
            _gemm(r1 - r0, job.total_cols, job.grad_h_side + (t * B + r0) * TILE, TILE, TILE,
                  TB * TILE, job.weight_hh_t + j0 * job.total_cols * GRAD_BLOCK, GRAD_BLOCK,
                  j1 - j0, job.dh_rec + r0 * H + u_lo, H, GRAD_BLOCK, u_hi - u_lo, 0)
            for b in range(r0, r1):
                for row in range(b * H + u_lo, b * H + u_hi):
                    dh_other[row] += job.dh_rec[row] * job.recurrent_mask[row]
        tmp = dh
        dh = dh_other
        dh_other = tmp
    if T % 2 == 1:
        # An odd number of swaps left the result in the scratch buffer.
        for b in range(r0, r1):
            memcpy(job.dh + b * H + u_lo, dh + b * H + u_lo, (u_hi - u_lo) * sizeof(float))


@functools.lru_cache(maxsize=32)
def _column_order(int cell, Py_ssize_t hidden_size, Py_ssize_t units):
    """(order, source_rows), read-only int64 arrays, kept for the next call of
    the same shape (they cost 5 us a backward, a tenth of a tiny layer's step).
    order: for each row g*H + u of a PyTorch weight, its column in the packed
    gate order (b*G*U + g*U + j for unit u = b*U + j). source_rows, its inverse:
    for each packed gate column (G*U of each of the ceil(H/U) unit blocks), its
    PyTorch weight row (-1 for padding)."""
    G = gate_count(cell)
    gate, unit = np.divmod(np.arange(G * hidden_size), hidden_size)
    block, j = np.divmod(unit, units)
    order = block * G * units + gate * units + j
    source_rows = np.full((hidden_size + units - 1) // units * G * units, -1, np.int64)
    source_rows[order] = np.arange(order.shape[0])
    order.flags.writeable = False
    source_rows.flags.writeable = False
    return order, source_rows


cdef void _transpose(Py_ssize_t rows, Py_ssize_t cols, const float *src, Py_ssize_t ld_src,
                     float *dst, Py_ssize_t ld_dst, int n_threads) noexcept nogil:
    """dst[c, r] = src[r, c] (fr_transpose), the rows split across threads in
    pieces of 16 (so no two threads write one cache line of dst)."""
    cdef Py_ssize_t pieces = (rows + 15) // 16, part, parts, r0, r1
    parts = max(1, min(n_threads, pieces))
    if rows * cols < MIN_PARALLEL_WORK:
        parts = 1
    for part in prange(parts, num_threads=parts, schedule="static"):
        r0 = min(rows, 16 * block_start(pieces, parts, part))
        r1 = min(rows, 16 * block_start(pieces, parts, part + 1))
        fr_transpose(r1 - r0, cols, src + r0 * ld_src, ld_src, dst + r0, ld_dst)


cdef void _transpose_add_rows(Py_ssize_t K, Py_ssize_t cols, const float *src,
                              const int64_t *dst_rows, float *dst,
                              int n_threads) noexcept nogil:
    """dst[dst_rows[c], :] += src[:, c] for the columns c of src (K, cols) with
    dst_rows[c] >= 0 (fr_transpose_add_rows), the columns split across threads
    in pieces of 16 (the width it adds at a time)."""
    cdef Py_ssize_t pieces = (cols + 15) // 16, part, parts
    parts = max(1, min(n_threads, pieces))
    if K * cols < MIN_PARALLEL_WORK:
        parts = 1
    for part in prange(parts, num_threads=parts, schedule="static"):
        fr_transpose_add_rows(K, min(cols, 16 * block_start(pieces, parts, part)),
                              min(cols, 16 * block_start(pieces, parts, part + 1)),
                              src, cols, dst_rows, dst, K)


cdef void _add_bias_grads(const float *d_bias, Py_ssize_t total_cols, const int64_t *order,
                          Py_ssize_t rows, int bias_sums, float *grad_bias_ih,
                          float *grad_bias_hh) noexcept nogil:
    """grad_bias_ih[i] += d_bias[0, order[i]] and grad_bias_hh[i] +=
    d_bias[bias_sums - 1, order[i]]: the column sums (2, total_cols), in packed
    column order, added in PyTorch's (order: each PyTorch row's column)."""
    cdef Py_ssize_t i
    cdef const float *recurrent = d_bias + (bias_sums - 1) * total_cols
    for i in range(rows):
        grad_bias_ih[i] += d_bias[order[i]]
        grad_bias_hh[i] += recurrent[order[i]]


cdef struct PartProducts:
    # The arguments of _part_products: sizes, and the arrays of _Backward.products.
    Py_ssize_t seq_len, batch, parts, input_size, hidden_size, total_cols, x_blocks
    bint reverse
    const float *x
    float *x_rows
    float *x_t
    const float *h_seq
    float *h_t
    const float *gates
    const float *weight_ih_t
    float *grad_x


cdef void _part_products(const PartProducts *a, Py_ssize_t part) noexcept nogil:
    """What sub-batch `part` (see _run_part) does on its thread before the
    weight products: its columns of x.T and h_before.T (in the order of its gate
    rows, which are the rows r0 * T.. of every tile), and its rows of grad_x."""
    cdef Py_ssize_t T = a.seq_len, B = a.batch, I = a.input_size, H = a.hidden_size
    cdef Py_ssize_t TB = T * B, t, j
    cdef Py_ssize_t r0 = block_start(B, a.parts, part), r1 = block_start(B, a.parts, part + 1)
    cdef Py_ssize_t n = r1 - r0, K = T * n, first = r0 * T
    cdef float *dx_rows = a.x_rows + first * I
    cdef float *dx
    if n <= 0:
        return
    # x.T[:, first:first + K] = x[:, r0:r1].reshape(K, I).T: a step at a time when the
    # part's rows are whole 8 x 8 blocks of the transpose, else gathered first
    if n % 8 == 0:
        for t in range(T):
            fr_transpose(n, I, a.x + (t * B + r0) * I, I, a.x_t + first + t * n, TB)
    else:
        for t in range(T):
            memcpy(a.x_rows + (first + t * n) * I, a.x + (t * B + r0) * I,
                   n * I * sizeof(float))
        fr_transpose(K, I, a.x_rows + first * I, I, a.x_t + first, TB)
    # h_before.T[:, first:first + K]: the part's states before each step
    fr_transpose(K, H, a.h_seq + r0 * (T + 1) * H + (n * H if a.reverse else 0), H,
                 a.h_t + first, TB)
    # dx_rows = dgates[part] @ weight_ih (gate rows in packed order), in x_rows (free
    # again), all K rows in one product; then grad_x[t, r0:r1] += dx_rows[t]
    _gemm(K, a.total_cols, a.gates + first * TILE, TILE, TILE, TB * TILE, a.weight_ih_t,
          GRAD_BLOCK, a.x_blocks, dx_rows, I, GRAD_BLOCK, I, 0)
    for t in range(T):
        dx = a.grad_x + (t * B + r0) * I
        for j in range(n * I):
            dx[j] += dx_rows[t * n * I + j]


cdef class _Backward:
    """One layer direction's backward in three parts: __init__ checks the
    arguments, takes the weights the forward packed for it and fills the BPTT job;
    the BPTT runs on the job (_bptt, or _bptt_pair for both directions of a
    layer, without the GIL); products() then computes the gradients of x, the
    weights and the biases from the gate gradients. The arrays the job points
    into are attributes, so they live as long as it."""
    cdef BackJob job
    cdef int n_threads
    cdef Py_ssize_t input_size
    cdef object cache, x, gates, grad_h_side, h_seq, dh, dc, dh_other, dh_rec, grad_out
    cdef object lengths, weight_hh_t, weight_ih_t, order, source_rows, grad_x
    cdef object grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh, workspace

    def __init__(self, int cell, cache, x, weight_ih, weight_hh, lengths, bint reverse,
                 grad_out, Py_ssize_t out_col, grad_h_n, grad_c_n, grad_x, grad_weight_ih,
                 grad_weight_hh, grad_bias_ih, grad_bias_hh, int n_threads, workspace=None):
        cdef Py_ssize_t T, B, I, H, U, bc, n_blocks, tc
        cdef BackJob *job = &self.job
        if not isinstance(cache, dict) or cache.get("consumed", True) or "packed" not in cache:
            raise RuntimeError("backward needs the cache of a training-mode forward of these "
                               "kernels, and can use it once")
        if cache["cell"] != cell or cache["reverse"] != reverse:
            raise ValueError("cache comes from a forward of another cell or direction")
        packed = cache["packed"]
        h_seq = cache["h_seq"]
        T, B, H = h_seq.shape[0] - 1, h_seq.shape[1], h_seq.shape[2]
        I, lengths, dh, dc = check_backward_args(
            cell, T, B, H, np.float32, x, weight_ih, weight_hh, lengths, grad_out, out_col,
            grad_h_n, grad_c_n, grad_x, grad_weight_ih, grad_weight_hh, grad_bias_ih,
            grad_bias_hh, n_threads)
        if (packed.input_size, packed.hidden_size) != (I, H):
            raise ValueError("cache comes from a forward of another shape")
        cache["consumed"] = True
        U, bc, n_blocks = packed.units, packed.block_cols, packed.n_blocks
        tc = n_blocks * bc
        gates = cache["gates"]
        grad_h_side = _buffer(workspace, "grad_h_side", gates.shape) if cell == GRU else gates
        order, source_rows = _column_order(cell, H, U)
        # The weights the forward ran with (as autograd, whatever the arrays hold
        # now), packed by it for the products below (see _pack_block).
        weight_hh_t, weight_ih_t = packed.weight_hh_t, packed.weight_ih_t
        if weight_hh_t is None or weight_ih_t is None:
            raise ValueError("cache comes from a forward without the backward's weights")
        dh_other = np.empty_like(dh)

        job.cell = cell
        job.reverse = reverse
        job.seq_len, job.batch, job.hidden_size = T, B, H
        job.U, job.block_cols, job.n_blocks, job.total_cols = U, bc, n_blocks, tc
        job.out_ld, job.out_col = grad_out.shape[2], out_col
        if not 1 <= cache.get("parts", 0) <= B:
            raise ValueError("cache comes from a forward of another shape")
        job.parts, job.cache_rows, job.grad_out_step = cache["parts"], T * B, B * job.out_ld
        job.gates = _ptr(gates)
        job.grad_h_side = _ptr(grad_h_side)
        job.hn_cache = _ptr(cache["hn"]) if cell == GRU else NULL
        job.h = _ptr(h_seq)
        job.c = _ptr(cache["c_seq"]) if cell == LSTM else NULL
        job.grad_out = _ptr(grad_out)
        job.weight_hh_t = _ptr(weight_hh_t)
        job.dh = _ptr(dh)
        job.dh_other = _ptr(dh_other)
        job.dc = _ptr(dc) if dc is not None else NULL
        job.lengths = (<const int64_t *>cnp.PyArray_DATA(lengths) if lengths is not None
                       else NULL)
        recurrent_mask = cache["recurrent_mask"]
        dh_rec = None
        job.recurrent_mask = NULL
        job.dh_rec = NULL
        if recurrent_mask is not None:
            dh_rec = np.empty_like(dh)
            job.recurrent_mask = <const float *>cnp.PyArray_DATA(recurrent_mask)
            job.dh_rec = _ptr(dh_rec)

        self.n_threads, self.input_size = n_threads, I
        self.cache, self.x, self.gates, self.grad_h_side, self.h_seq = (
            cache, x, gates, grad_h_side, h_seq)
        self.dh, self.dc, self.dh_other, self.dh_rec = dh, dc, dh_other, dh_rec
        self.grad_out, self.lengths = grad_out, lengths
        self.weight_hh_t, self.weight_ih_t = weight_hh_t, weight_ih_t
        self.order, self.source_rows = order, source_rows
        self.grad_x, self.grad_weight_ih, self.grad_weight_hh = (
            grad_x, grad_weight_ih, grad_weight_hh)
        self.grad_bias_ih, self.grad_bias_hh = grad_bias_ih, grad_bias_hh
        self.workspace = workspace

    def products(self):
        """The gradients of x, the weights and the biases (added to the given
        arrays) once the BPTT has run; returns (dL/dh0, dL/dc0 or None)."""
        cdef Py_ssize_t T = self.job.seq_len, B = self.job.batch, H = self.job.hidden_size
        cdef Py_ssize_t I = self.input_size, TB = T * B
        cdef Py_ssize_t bc = self.job.block_cols, n_blocks = self.job.n_blocks
        cdef Py_ssize_t tc = self.job.total_cols, nt = bc // TILE
        cdef Py_ssize_t part, parts, r0, r1, k0, k1, x_blocks, pt
        cdef Py_ssize_t partial_units = H - (n_blocks - 1) * self.job.U
        cdef Py_ssize_t partial_tiles = _partial_tiles(self.job.cell, self.job.U,
                                                       partial_units, bc)
        cdef Py_ssize_t batch_parts = self.job.parts
        cdef unsigned int fp_state
        cdef int cell = self.job.cell, n_threads = self.n_threads
        cdef bint reverse = self.job.reverse
        cdef PartProducts args
        cache, x, gates, grad_h_side = self.cache, self.x, self.gates, self.grad_h_side
        h_seq, workspace, dh, dc = self.h_seq, self.workspace, self.dh, self.dc
        grad_x, weight_ih_t, order = self.grad_x, self.weight_ih_t, self.order
        source_rows, grad_weight_ih, grad_weight_hh = (
            self.source_rows, self.grad_weight_ih, self.grad_weight_hh)
        grad_bias_ih, grad_bias_hh = self.grad_bias_ih, self.grad_bias_hh
        # The products over all steps. Operands that must be row-major with the
        # steps as the inner dimension are transposed copies (x.T, h_before.T),
        # their columns in the order of the gate rows.
        x_t = _buffer(workspace, "x_t", (I, TB))
        h_t = _buffer(workspace, "h_t", (H, TB))
        d_weight_ih_t = _buffer(workspace, "d_weight_ih_t", (I, tc))
        d_weight_hh_t = _buffer(workspace, "d_weight_hh_t", (H, tc))
        # Bias gradients: the column sums of the gate gradients, once for the input
        # side and, for the GRU only, once more for the recurrent side (elsewhere the
        # two sides are the same array, and grad_bias_hh gets the same sums).
        cdef int bias_sums = 0 if grad_bias_ih is None else (2 if cell == GRU else 1)
        d_bias = _buffer(workspace, "d_bias", (2, tc))
        ones = _buffer(workspace, "ones", (1, TB))
        ones.fill(1)
        cdef float *p_gates = _ptr(gates)
        cdef float *p_gh = _ptr(grad_h_side)
        cdef float *p_xt = _ptr(x_t)
        cdef float *p_ht = _ptr(h_t)
        cdef float *p_dwi = _ptr(d_weight_ih_t)
        cdef float *p_dwh = _ptr(d_weight_hh_t)
        cdef float *p_db = _ptr(d_bias)
        cdef float *p_ones = _ptr(ones)
        cdef float *p_dx = _ptr(grad_x)
        cdef const float *p_wit = _ptr(weight_ih_t)
        x_blocks = (I + GRAD_BLOCK - 1) // GRAD_BLOCK
        # The state before each step, (T*B, H): h_seq[:T] forward, h_seq[1:] reversed
        # (of each part). Under recurrent dropout the product read h * mask: its
        # weight gradient too.
        rec_seq = h_seq if cache["hm_seq"] is None else cache["hm_seq"]
        cdef const float *p_x = _ptr(x)
        cdef const float *p_rec = _ptr(rec_seq)
        if batch_parts > 1:
            # Each part's own rows first, on its thread: with the batch in parts
            # (see _run_part), its gates stay in its core for grad_x.
            x_rows = _buffer(workspace, "x_rows", (TB, I))
            args.seq_len, args.batch, args.parts = T, B, batch_parts
            args.input_size, args.hidden_size, args.total_cols = I, H, tc
            args.x_blocks, args.reverse = x_blocks, reverse
            args.x, args.x_rows, args.x_t = p_x, _ptr(x_rows), p_xt
            args.h_seq, args.h_t = p_rec, p_ht
            args.gates, args.weight_ih_t, args.grad_x = p_gates, p_wit, p_dx
            with nogil:
                for part in prange(batch_parts, num_threads=batch_parts
                                   if n_threads >= batch_parts else 1, schedule="static"):
                    fp_state = fr_ftz_enter()
                    _part_products(&args, part)
                    fr_ftz_leave(fp_state)
        else:
            with nogil:
                # x.T and h_before.T: row-major with the steps as the inner dimension.
                _transpose(TB, I, p_x, I, p_xt, TB, n_threads)
                _transpose(TB, H, p_rec + (B * H if reverse else 0), H, p_ht, TB, n_threads)
        parts = max(1, min(n_threads, n_blocks))
        with nogil:
            for part in prange(parts, num_threads=parts, schedule="static"):
                fp_state = fr_ftz_enter()
                k0 = block_start(n_blocks, parts, part)
                k1 = block_start(n_blocks, parts, part + 1)
                # The padding columns of a GRU's or RNN's last block are left out
                # (see Job.partial_tiles): nothing reads them.
                pt = partial_tiles if k1 == n_blocks else 0
                # d_weight_ih.T[:, own blocks] = x.T @ dgates[own blocks]
                _gemm(I, TB, p_xt, TB, 0, 0, p_gates + k0 * TB * bc, TILE, (k1 - k0) * nt,
                      p_dwi + k0 * bc, tc, TILE, (k1 - k0) * bc, 0, 0, pt, partial_units)
                # d_weight_hh.T[:, own blocks] = h_before.T @ dgates_h[own blocks]
                _gemm(H, TB, p_ht, TB, 0, 0, p_gh + k0 * TB * bc, TILE, (k1 - k0) * nt,
                      p_dwh + k0 * bc, tc, TILE, (k1 - k0) * bc, 0, 0, pt, partial_units)
                if bias_sums > 0:
                    # d_bias[0, own] = dgates.sum(0)
                    _gemm(1, TB, p_ones, TB, 0, 0, p_gates + k0 * TB * bc, TILE, (k1 - k0) * nt,
                          p_db + k0 * bc, tc, TILE, (k1 - k0) * bc, 0, 0, pt, partial_units)
                if bias_sums > 1:
                    # d_bias[1, own] = dgates_h.sum(0)
                    _gemm(1, TB, p_ones, TB, 0, 0, p_gh + k0 * TB * bc, TILE, (k1 - k0) * nt,
                          p_db + tc + k0 * bc, tc, TILE, (k1 - k0) * bc, 0, 0, pt,
                          partial_units)
                fr_ftz_leave(fp_state)
        if batch_parts == 1:
            parts = max(1, min(n_threads, TB // 16))
            with nogil:
                for part in prange(parts, num_threads=parts, schedule="static"):
                    fp_state = fr_ftz_enter()
                    r0 = block_start(TB, parts, part)
                    r1 = block_start(TB, parts, part + 1)
                    # grad_x[r0:r1] += dgates[r0:r1] @ weight_ih (gate rows in packed order)
                    _gemm(r1 - r0, tc, p_gates + r0 * TILE, TILE, TILE, TB * TILE, p_wit,
                          GRAD_BLOCK, x_blocks, p_dx + r0 * I, I, GRAD_BLOCK, I, 1)
                    fr_ftz_leave(fp_state)

        # Back to PyTorch's layout, added to the gradients:
        # grad_weight[source_rows[c]] += d_weight.T[:, c] for every packed column c.
        cdef const int64_t *p_rows = <const int64_t *>cnp.PyArray_DATA(source_rows)
        cdef float *p_gwi = _ptr(grad_weight_ih)
        cdef float *p_gwh = _ptr(grad_weight_hh)
        with nogil:
            _transpose_add_rows(I, tc, p_dwi, p_rows, p_gwi, n_threads)
            _transpose_add_rows(H, tc, p_dwh, p_rows, p_gwh, n_threads)
        if grad_bias_ih is not None:
            _add_bias_grads(p_db, tc, <const int64_t *>cnp.PyArray_DATA(order), order.shape[0],
                            bias_sums, _ptr(grad_bias_ih), _ptr(grad_bias_hh))
        return dh, dc


def backward(int cell, cache, x, weight_ih, weight_hh, lengths, bint reverse, grad_out,
             Py_ssize_t out_col, grad_h_n, grad_c_n, grad_x, grad_weight_ih, grad_weight_hh,
             grad_bias_ih, grad_bias_hh, int n_threads, workspace=None):
    """One layer, one direction, float32; see fastrnn.reference.backward.

    The cache is consumed: its gate activations are overwritten by gradients.
    The products use the weights as the forward packed them (weight_ih and
    weight_hh are checked against the cache's shapes).
    ``workspace``: as in forward (a different dict from the forward's).
    """
    cdef _Backward call = _Backward(
        cell, cache, x, weight_ih, weight_hh, lengths, reverse, grad_out, out_col, grad_h_n,
        grad_c_n, grad_x, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh,
        n_threads, workspace)
    with nogil:
        _bptt(&call.job, n_threads)
    return call.products()


def backward_bidirectional(int cell, x, directions, lengths, grad_out, grad_x, int n_threads):
    """``backward`` for both directions of one layer, their BPTTs at the same
    time where that is faster (as in forward_bidirectional). ``directions``:
    for the forward and the reverse direction, a dict of ``backward``'s
    per-direction arguments (cache, weight_ih, weight_hh, out_col, grad_h_n,
    grad_c_n, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh and
    optionally workspace). Both add to grad_x, in direction order. Returns
    ``backward``'s result for each direction."""
    cdef _Backward first, second
    if len(directions) != 2:
        raise ValueError("directions must hold the forward and the reverse direction")
    if (directions[0].get("workspace") is not None
            and directions[0].get("workspace") is directions[1].get("workspace")):
        raise ValueError("the two directions need separate workspaces")
    first, second = [
        _Backward(cell, d["cache"], x, d["weight_ih"], d["weight_hh"], lengths, index == 1,
                  grad_out, d["out_col"], d["grad_h_n"], d["grad_c_n"], grad_x,
                  d["grad_weight_ih"], d["grad_weight_hh"], d["grad_bias_ih"],
                  d["grad_bias_hh"], n_threads, d.get("workspace"))
        for index, d in enumerate(directions)]
    cdef bint together = _together(first.job.batch, first.job.hidden_size,
                                   first.job.total_cols,
                                   first.job.seq_len * first.job.batch * first.job.total_cols
                                   * first.job.hidden_size, n_threads)
    with nogil:
        if together:
            _bptt_pair(&first.job, &second.job, n_threads)
        else:
            _bptt(&first.job, n_threads)
            _bptt(&second.job, n_threads)
    return [first.products(), second.products()]

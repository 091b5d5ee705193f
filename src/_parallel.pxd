# Inline nogil helpers shared by the BLAS-based kernels (_recurrent, _lnlstm,
# _timedelay): contiguous blocks of work for OpenMP threads, column sums in a
# fixed order, the sequence-length mask. Their row-split GEMM, which must not be
# inline, is in _gemm_split.pxi.
from cython cimport floating
from libc.stdint cimport int64_t

cdef enum:
    # Below this many multiply-adds a parallel region costs more than it saves
    # (_recurrent and _lnlstm; _timedelay and _packed have their own threshold).
    MIN_PARALLEL_WORK = 32768


cdef inline Py_ssize_t block_start(Py_ssize_t n, Py_ssize_t parts, Py_ssize_t k) noexcept nogil:
    """Start of block k when n items are split into `parts` near-equal contiguous
    blocks (block k is [block_start(k), block_start(k + 1)))."""
    return n * k // parts


cdef inline bint step_active(const int64_t *lengths, Py_ssize_t b, Py_ssize_t t) noexcept nogil:
    """Step t of sequence b is inside the sequence (lengths NULL: every step)."""
    return lengths == NULL or t < lengths[b]


cdef inline void sum_columns(Py_ssize_t rows, Py_ssize_t c0, Py_ssize_t c1,
                             const floating *a, Py_ssize_t lda,
                             floating *sums) noexcept nogil:
    """sums[c] = a[:, c].sum(0) for the columns c0 <= c < c1 of a (rows, .) with
    row stride lda, rows summed in order: one thread's block of columns (the
    result does not depend on how the columns are split)."""
    cdef Py_ssize_t r, c
    for c in range(c0, c1):
        sums[c] = 0
    for r in range(rows):
        for c in range(c0, c1):
            sums[c] += a[r * lda + c]

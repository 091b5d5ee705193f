# The row-split GEMM of the BLAS-based kernels, included (`include "_gemm_split.pxi"`)
# by _recurrent.pyx and _lnlstm.pyx, so that each module has its own plain (not
# inline) copy. A function in a .pxd must be inline, and GCC inlining this one into
# its callers changes the code it generates for the rest of the module (other
# inlining decisions, and with them float64 rounding in _lnlstm's row functions).
from cython cimport floating
from cython.parallel cimport prange

from _blas cimport gemm
from _parallel cimport MIN_PARALLEL_WORK, block_start


cdef void _gemm_split_rows(int n_threads, bint trans_a, bint trans_b,
                           Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating *a,
                           Py_ssize_t lda, const floating *b, Py_ssize_t ldb,
                           floating beta, floating *c, Py_ssize_t ldc) noexcept nogil:
    """Row-major c = op(a) @ op(b) + beta * c with the m output rows split across
    threads (each calls single-threaded BLAS on its block)."""
    cdef Py_ssize_t part, r0, r1
    cdef int parts = n_threads
    if m < 16 * parts or m * n * k < MIN_PARALLEL_WORK:
        parts = 1
    for part in prange(parts, num_threads=parts, schedule="static"):
        r0 = block_start(m, parts, part)
        r1 = block_start(m, parts, part + 1)
        if r1 > r0:
            # Row block r0:r1 of op(a): rows of a, or columns of a when transposed.
            gemm(trans_a, trans_b, r1 - r0, n, k, 1, a + (r0 if trans_a else r0 * lda),
                 lda, b, ldb, beta, c + r0 * ldc, ldc)

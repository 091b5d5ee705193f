# The one place that picks the single- or double-precision BLAS routine.
#
# Arrays in fastrnn are row-major (C order); BLAS is column-major. A row-major
# matrix M (rows x cols, leading dimension ld) is the column-major matrix M.T
# with the same ld, so the row-major product C = op(A) @ op(B) is computed as
# the column-major product C.T = op(B).T @ op(A).T: swap the operands and m/n.
cimport scipy.linalg.cython_blas as cython_blas
from cython cimport floating

# SciPy declares BLAS integers as C int; keep our own name so a 64-bit BLAS
# interface (SciPy's blas_int) needs a change in one line only.
ctypedef int blas_int


cdef inline void gemm(bint trans_a, bint trans_b, blas_int m, blas_int n, blas_int k,
                      floating alpha, const floating *a, blas_int lda,
                      const floating *b, blas_int ldb,
                      floating beta, floating *c, blas_int ldc) noexcept nogil:
    """Row-major C[m, n] = alpha * op(A) @ op(B) + beta * C, op(X) = X.T if trans_x.

    lda, ldb, ldc are the stored row lengths of A, B and C. With m == 1 the
    product is a matrix-vector product, and gemv is used: OpenBLAS's gemm packs
    both operands on every call and is several times slower for a single row.
    """
    cdef char *ta = b"T" if trans_a else b"N"
    cdef char *tb = b"T" if trans_b else b"N"
    cdef blas_int inc_a, one = 1
    if m == 0 or n == 0:
        return
    if m == 1:
        # c[n] = alpha * op(B).T @ a + beta * c, a being the single row of op(A).
        inc_a = lda if trans_a else 1
        # cython_blas is not const-correct (SciPy issue 14262): cast const away.
        if trans_b:
            # B stored (n, k): column-major it is the (k, n) matrix B.T; B @ a = (B.T).T @ a
            _gemv(b"T", k, n, alpha, <floating *>b, ldb, <floating *>a, inc_a, beta, c, one)
        else:
            # B stored (k, n): column-major it is the (n, k) matrix B.T; B.T @ a
            _gemv(b"N", n, k, alpha, <floating *>b, ldb, <floating *>a, inc_a, beta, c, one)
        return
    # cython_blas is not const-correct (SciPy issue 14262): cast const away.
    if floating is float:
        cython_blas.sgemm(tb, ta, &n, &m, &k, &alpha, <float *>b, &ldb,
                          <float *>a, &lda, &beta, c, &ldc)
    else:
        cython_blas.dgemm(tb, ta, &n, &m, &k, &alpha, <double *>b, &ldb,
                          <double *>a, &lda, &beta, c, &ldc)


cdef inline void _gemv(char *trans, blas_int m, blas_int n, floating alpha,
                       floating *a, blas_int lda, floating *x, blas_int incx,
                       floating beta, floating *y, blas_int incy) noexcept nogil:
    """Column-major y = alpha * op(A) @ x + beta * y (BLAS's own convention)."""
    if floating is float:
        cython_blas.sgemv(trans, &m, &n, &alpha, a, &lda, x, &incx, &beta, y, &incy)
    else:
        cython_blas.dgemv(trans, &m, &n, &alpha, a, &lda, x, &incx, &beta, y, &incy)

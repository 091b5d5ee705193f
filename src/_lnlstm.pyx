# cython: language_level=3
"""Forward and BPTT backward of one layer, one direction of the layer-normalised
LSTM with zoneout (``fastrnn.LayerNormLSTM``; with layer norm off,
``fastrnn.ZoneoutLSTM``).

The formulas and the contract (argument order, shapes, accumulation) are those
of ``fastrnn.lnlstm_reference``, the oracle these kernels are tested against.

Design (as ``_recurrent``):
- Forward: the input projection ``x @ weight_ih.T`` of all steps is one GEMM
  (rows split across threads). The batch is split across OpenMP threads; each
  thread runs the whole sequence for its rows: per step one recurrent GEMM on
  its rows and one fused pass per row (the two gate layer norms, activations,
  cell update, the cell layer norm, output, zoneout). No barrier per step.
- Training keeps the normalised projections (``x_hat`` of both gate layer
  norms), the gate activations, the normalised cell (or the un-normalised one
  without layer norm), the reciprocal standard deviations and the states.
- Backward: per step and row the elementwise gradients and the layer-norm
  backward of the recurrent part and of the cell; ``dh_{t-1}`` needs one GEMM
  per step. Then, over all steps at once: the input layer-norm backward (rows
  split), the gain/bias gradients as column sums (columns split, rows summed in
  order: the same result for any thread count), and the weight and input
  gradients as large GEMMs split by output rows.
- BLAS runs single-threaded inside these kernels (the caller limits it).
- The per-row elementwise work is C (``_lnlstm_math.h``, ``_lnlstm_rows.h``)
  that GCC vectorises: float32 uses a polynomial exp (about 1 ulp, clamped so
  no denormal is produced: the recurrence never slows down on denormals),
  float64 libm; layer-norm moments are accumulated in double. FTZ/DAZ flags
  are not changed.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset

from _blas cimport gemm
from _parallel cimport MIN_PARALLEL_WORK, block_start, step_active

import numpy as np

from fastrnn._lnlstm_args import check_backward_args, check_forward_args

# --------------------------------------------------------------------------
# Row functions (_lnlstm_math.h / _lnlstm_rows.h: vectorised C, see there).
# --------------------------------------------------------------------------

cdef extern from "_lnlstm_math.h" nogil:
    void lnl_forward_row_f32(Py_ssize_t H, int ln, double eps, float *xr, float *hr,
                             float *act, const float *wx, const float *wh, const float *bias,
                             const float *wc, const float *bc, const float *h_prev,
                             const float *c_prev, float *h_new, float *c_new, float *cr,
                             float *out, const float *mask_h, const float *mask_c, float p_h,
                             float p_c, float *rstd)
    void lnl_forward_row_f64(Py_ssize_t H, int ln, double eps, double *xr, double *hr,
                             double *act, const double *wx, const double *wh,
                             const double *bias, const double *wc, const double *bc,
                             const double *h_prev, const double *c_prev, double *h_new,
                             double *c_new, double *cr, double *out, const double *mask_h,
                             const double *mask_c, double p_h, double p_c, double *rstd)
    void lnl_backward_row_f32(Py_ssize_t H, int ln, float *act, const float *gh, float *dgh,
                              float rstd_h, float rstd_c, const float *cr, float *dyc,
                              const float *wh, const float *wc, const float *bc,
                              const float *mask_h, const float *mask_c, float p_h, float p_c,
                              const float *c_prev, const float *grad_out, const float *dh,
                              float *dh_prev, const float *dc, float *dc_prev)
    void lnl_backward_row_f64(Py_ssize_t H, int ln, double *act, const double *gh,
                              double *dgh, double rstd_h, double rstd_c, const double *cr,
                              double *dyc, const double *wh, const double *wc,
                              const double *bc, const double *mask_h, const double *mask_c,
                              double p_h, double p_c, const double *c_prev,
                              const double *grad_out, const double *dh, double *dh_prev,
                              const double *dc, double *dc_prev)
    void lnl_norm_backward_rows_f32(Py_ssize_t rows, Py_ssize_t n, const float *dy,
                                    const float *gain, float *xd, const float *rstd)
    void lnl_norm_backward_rows_f64(Py_ssize_t rows, Py_ssize_t n, const double *dy,
                                    const double *gain, double *xd, const double *rstd)
    void lnl_column_sums_f32(Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t c0, Py_ssize_t c1,
                             const float *a, const float *b, float *sums)
    void lnl_column_sums_f64(Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t c0, Py_ssize_t c1,
                             const double *a, const double *b, double *sums)


# --------------------------------------------------------------------------
# One step, rows [b0, b1).
# --------------------------------------------------------------------------

cdef void _step_forward(Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t t, Py_ssize_t H, bint ln,
                        bint training, double eps, floating *gx, floating *gh, floating *act,
                        const floating *bias, const floating *wx, const floating *wh,
                        const floating *wc, const floating *bc, floating *rstd_x,
                        floating *rstd_h, floating *rstd_c, floating *cnorm,
                        const floating *mask_h, const floating *mask_c, floating p_h,
                        floating p_c, const floating *h_prev, floating *h_new,
                        const floating *c_prev, floating *c_new, floating *out,
                        Py_ssize_t out_ld, const int64_t *lengths) noexcept nogil:
    """Step t for rows [b0, b1) (lnl_forward_row per active row).

    Per-step (B, 4H) rows: gx is the input projection (without layer norm it
    already holds the recurrent product too, and act is gx), gh the recurrent
    product (layer norm only); both are normalised in place. act receives
    i, f, g, o; cnorm (B, H) the normalised cell (c~ without layer norm);
    rstd_* (B,) the layer norms' 1/std. mask_* point at this step's (B, H)
    mask or are NULL (then the rate p_* is the zoneout weight; 0: none).
    """
    cdef Py_ssize_t b, G = 4 * H
    cdef floating rs[3]
    cdef floating *xr
    cdef floating *hr
    cdef floating *ar
    cdef floating *cr
    for b in range(b0, b1):
        xr = gx + b * G if ln else NULL
        hr = gh + b * G if ln else NULL
        ar = act + b * G
        cr = cnorm + b * H
        if not step_active(lengths, b, t):
            # The state passes through unchanged; the output is zero.
            memcpy(h_new + b * H, h_prev + b * H, H * sizeof(floating))
            memcpy(c_new + b * H, c_prev + b * H, H * sizeof(floating))
            memset(out + b * out_ld, 0, H * sizeof(floating))
            if training:
                memset(ar, 0, G * sizeof(floating))
                memset(cr, 0, H * sizeof(floating))
                if ln:
                    memset(xr, 0, G * sizeof(floating))
                    memset(hr, 0, G * sizeof(floating))
                    rstd_x[b] = 0
                    rstd_h[b] = 0
                    rstd_c[b] = 0
            continue
        if floating is float:
            lnl_forward_row_f32(H, ln, eps, xr, hr, ar, wx, wh, bias, wc, bc, h_prev + b * H,
                                c_prev + b * H, h_new + b * H, c_new + b * H, cr,
                                out + b * out_ld, mask_h + b * H if mask_h != NULL else NULL,
                                mask_c + b * H if mask_c != NULL else NULL, p_h, p_c, rs)
        else:
            lnl_forward_row_f64(H, ln, eps, xr, hr, ar, wx, wh, bias, wc, bc, h_prev + b * H,
                                c_prev + b * H, h_new + b * H, c_new + b * H, cr,
                                out + b * out_ld, mask_h + b * H if mask_h != NULL else NULL,
                                mask_c + b * H if mask_c != NULL else NULL, p_h, p_c, rs)
        if ln:
            rstd_x[b] = rs[0]
            rstd_h[b] = rs[1]
            rstd_c[b] = rs[2]


cdef void _step_backward(Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t t, Py_ssize_t H, bint ln,
                         floating *act, const floating *gh, floating *dgh,
                         const floating *rstd_h, const floating *rstd_c,
                         const floating *cnorm, floating *dyc, const floating *wh,
                         const floating *wc, const floating *bc, const floating *mask_h,
                         const floating *mask_c, floating p_h, floating p_c,
                         const floating *c_prev, const floating *grad_out, Py_ssize_t out_ld,
                         const floating *dh, floating *dh_prev, const floating *dc,
                         floating *dc_prev, const int64_t *lengths) noexcept nogil:
    """Gradients through the elementwise part of step t, rows [b0, b1)
    (lnl_backward_row per active row).

    Overwrites act (i, f, g, o) with the gate pre-activation gradients da; with
    layer norm writes the recurrent part's gradient (before W_hh) into dgh and
    dL/dy of the cell norm into dyc. Writes into dh_prev the part of
    dL/dh_{t-1} that does not go through W_hh (zoneout's m * dh) and into
    dc_prev dL/dc_{t-1}. Inactive rows pass dh and dc through, with zero
    gate gradients.
    """
    cdef Py_ssize_t b, G = 4 * H
    for b in range(b0, b1):
        if not step_active(lengths, b, t):
            memset(act + b * G, 0, G * sizeof(floating))
            if ln:
                memset(dgh + b * G, 0, G * sizeof(floating))
                memset(dyc + b * H, 0, H * sizeof(floating))
            memcpy(dh_prev + b * H, dh + b * H, H * sizeof(floating))
            memcpy(dc_prev + b * H, dc + b * H, H * sizeof(floating))
            continue
        if floating is float:
            lnl_backward_row_f32(H, ln, act + b * G, gh + b * G if ln else NULL,
                                 dgh + b * G if ln else NULL, rstd_h[b] if ln else 0,
                                 rstd_c[b] if ln else 0, cnorm + b * H,
                                 dyc + b * H if ln else NULL, wh, wc, bc,
                                 mask_h + b * H if mask_h != NULL else NULL,
                                 mask_c + b * H if mask_c != NULL else NULL, p_h, p_c,
                                 c_prev + b * H, grad_out + b * out_ld, dh + b * H,
                                 dh_prev + b * H, dc + b * H, dc_prev + b * H)
        else:
            lnl_backward_row_f64(H, ln, act + b * G, gh + b * G if ln else NULL,
                                 dgh + b * G if ln else NULL, rstd_h[b] if ln else 0,
                                 rstd_c[b] if ln else 0, cnorm + b * H,
                                 dyc + b * H if ln else NULL, wh, wc, bc,
                                 mask_h + b * H if mask_h != NULL else NULL,
                                 mask_c + b * H if mask_c != NULL else NULL, p_h, p_c,
                                 c_prev + b * H, grad_out + b * out_ld, dh + b * H,
                                 dh_prev + b * H, dc + b * H, dc_prev + b * H)


# --------------------------------------------------------------------------
# Per-thread drivers: a contiguous block of batch rows over all steps.
# --------------------------------------------------------------------------

cdef void _recur_rows(Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t T, Py_ssize_t B, Py_ssize_t H,
                      bint reverse, bint training, bint ln, double eps,
                      const floating *w_hh, floating *gx, floating *gh, floating *act,
                      const floating *bias, const floating *wx, const floating *wh,
                      const floating *wc, const floating *bc, floating *rstd,
                      floating *cnorm, const floating *mask_h, const floating *mask_c,
                      floating p_h, floating p_c, floating *h_seq, floating *c_seq,
                      floating *out, Py_ssize_t out_ld, const int64_t *lengths) noexcept nogil:
    """All steps for rows [b0, b1). h_seq/c_seq are (T+1, B, H): the state
    before step t at index t (forward) or t+1 (reverse). Training: gh, act,
    cnorm are (T, B, .) and kept; inference: gh, act (B, 4H) and cnorm (B, H)
    are scratch. Without layer norm gh and act are unused: the activations
    overwrite gx. out points at this direction's first column; rstd is
    (3, T, B) for x, h and c."""
    cdef Py_ssize_t s, t, i_prev, i_new, nb = b1 - b0, G = 4 * H, TB = T * B
    cdef floating *gx_t
    cdef floating *gh_t = NULL
    cdef floating *act_t
    cdef floating *cn_t
    cdef floating *h_prev
    if nb <= 0:
        return
    for s in range(T):
        t = T - 1 - s if reverse else s
        i_prev = t + 1 if reverse else t
        i_new = t if reverse else t + 1
        h_prev = h_seq + i_prev * B * H
        gx_t = gx + t * B * G
        if ln:
            gh_t = gh + t * B * G if training else gh
            act_t = act + t * B * G if training else act
            # gh[t, b0:b1] = h_prev[b0:b1] @ weight_hh.T
            gemm(False, True, nb, G, H, 1, h_prev + b0 * H, H, w_hh, H, 0, gh_t + b0 * G, G)
        else:
            act_t = gx_t
            # gx[t, b0:b1] += h_prev[b0:b1] @ weight_hh.T
            gemm(False, True, nb, G, H, 1, h_prev + b0 * H, H, w_hh, H, 1, gx_t + b0 * G, G)
        cn_t = cnorm + t * B * H if training else cnorm
        _step_forward(b0, b1, t, H, ln, training, eps, gx_t, gh_t, act_t, bias, wx, wh, wc, bc,
                      rstd + t * B, rstd + TB + t * B, rstd + 2 * TB + t * B, cn_t,
                      mask_h + t * B * H if mask_h != NULL else NULL,
                      mask_c + t * B * H if mask_c != NULL else NULL, p_h, p_c,
                      h_prev, h_seq + i_new * B * H, c_seq + i_prev * B * H,
                      c_seq + i_new * B * H, out + t * B * out_ld, out_ld, lengths)


cdef void _backprop_rows(Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t T, Py_ssize_t B,
                         Py_ssize_t H, bint reverse, bint ln, const floating *w_hh,
                         floating *act, const floating *gh, floating *dgh,
                         const floating *rstd, const floating *cnorm, floating *dyc,
                         const floating *wh, const floating *wc, const floating *bc,
                         const floating *mask_h, const floating *mask_c, floating p_h,
                         floating p_c, const floating *c_seq, const floating *grad_out,
                         Py_ssize_t out_ld, floating *dh, floating *dh_other, floating *dc,
                         floating *dc_other, const int64_t *lengths) noexcept nogil:
    """BPTT for rows [b0, b1), steps in the opposite of processing order.

    On entry dh/dc hold dL/dh_n, dL/dc_n; on return dL/dh0, dL/dc0 (the
    *_other buffers are scratch of the same shape). grad_out points at this
    direction's first column.
    """
    cdef Py_ssize_t s, t, nb = b1 - b0, G = 4 * H, TB = T * B
    cdef floating *tmp
    cdef floating *src
    if nb <= 0:
        return
    for s in range(T):
        t = s if reverse else T - 1 - s
        _step_backward(b0, b1, t, H, ln, act + t * B * G,
                       gh + t * B * G if ln else NULL, dgh + t * B * G if ln else NULL,
                       rstd + TB + t * B, rstd + 2 * TB + t * B, cnorm + t * B * H,
                       dyc + t * B * H if ln else NULL, wh, wc, bc,
                       mask_h + t * B * H if mask_h != NULL else NULL,
                       mask_c + t * B * H if mask_c != NULL else NULL, p_h, p_c,
                       c_seq + (t + 1 if reverse else t) * B * H, grad_out + t * B * out_ld,
                       out_ld, dh, dh_other, dc, dc_other, lengths)
        src = dgh + t * B * G if ln else act + t * B * G
        # dh_prev[b0:b1] += d(h_{t-1} W_hh^T)[t, b0:b1] @ weight_hh
        gemm(False, False, nb, H, G, 1, src + b0 * G, G, w_hh, H, 1, dh_other + b0 * H, H)
        tmp = dh
        dh = dh_other
        dh_other = tmp
        tmp = dc
        dc = dc_other
        dc_other = tmp
    if T % 2 == 1:
        # Swapped an odd number of times: the results are in the callers'
        # *_other buffers; give them back in dh, dc.
        memcpy(dh_other + b0 * H, dh + b0 * H, nb * H * sizeof(floating))
        memcpy(dc_other + b0 * H, dc + b0 * H, nb * H * sizeof(floating))


# --------------------------------------------------------------------------
# Whole-sequence helpers (deterministic for any thread count).
# --------------------------------------------------------------------------

cdef void _column_sums(Py_ssize_t rows, Py_ssize_t cols, const floating *a, const floating *b,
                       floating *sums, int n_threads) noexcept nogil:
    """sums[c] = sum_r a[r, c] * b[r, c] (b NULL: sum_r a[r, c]) for row-major
    (rows, cols) arrays: columns split across threads, rows summed in order."""
    cdef Py_ssize_t k, c0, c1
    if rows * cols < MIN_PARALLEL_WORK or cols < 16 * n_threads:
        n_threads = 1
    for k in prange(n_threads, num_threads=n_threads, schedule="static"):
        c0 = block_start(cols, n_threads, k)
        c1 = block_start(cols, n_threads, k + 1)
        if floating is float:
            lnl_column_sums_f32(rows, cols, c0, c1, a, b, sums)
        else:
            lnl_column_sums_f64(rows, cols, c0, c1, a, b, sums)


include "_gemm_split.pxi"


cdef void _ln_backward_rows(Py_ssize_t rows, Py_ssize_t n, const floating *dy,
                            const floating *gain, floating *xhat, const floating *rstd,
                            int n_threads) noexcept nogil:
    """xhat[r] <- the layer-norm backward of dy[r] for every row (rows split)."""
    cdef Py_ssize_t part, r0, r1
    cdef int parts = n_threads
    if rows * n < MIN_PARALLEL_WORK or rows < 4 * parts:
        parts = 1
    for part in prange(parts, num_threads=parts, schedule="static"):
        r0 = block_start(rows, parts, part)
        r1 = block_start(rows, parts, part + 1)
        if r1 > r0:
            if floating is float:
                lnl_norm_backward_rows_f32(r1 - r0, n, dy + r0 * n, gain, xhat + r0 * n,
                                           rstd + r0)
            else:
                lnl_norm_backward_rows_f64(r1 - r0, n, dy + r0 * n, gain, xhat + r0 * n,
                                           rstd + r0)


# --------------------------------------------------------------------------
# Typed entry points.
# --------------------------------------------------------------------------

cdef _forward_impl(const floating[:, :, ::1] x, const floating[:, ::1] w_ih,
                   const floating[:, ::1] w_hh, const floating[::1] bias,
                   const floating[::1] wx, const floating[::1] wh, const floating[::1] wc,
                   const floating[::1] bc, const floating[:, :, ::1] mask_h,
                   const floating[:, :, ::1] mask_c, floating p_h, floating p_c, double eps,
                   floating[:, :, ::1] gx, floating[:, :, ::1] gh, floating[:, :, ::1] act,
                   floating[:, ::1] rstd, floating[:, :, ::1] cnorm,
                   floating[:, :, ::1] h_seq, floating[:, :, ::1] c_seq,
                   const int64_t[::1] lengths, bint reverse, bint training,
                   floating[:, :, ::1] out, Py_ssize_t out_col, int n_threads):
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2]
    cdef Py_ssize_t H = w_hh.shape[1], G = w_hh.shape[0], rows = T * B
    cdef Py_ssize_t out_ld = out.shape[2], part, r0, r1, b0, b1
    cdef bint ln = wx is not None
    cdef const int64_t *len_ptr = &lengths[0] if lengths is not None else NULL
    cdef const floating *wx_ptr = &wx[0] if ln else NULL
    cdef const floating *wh_ptr = &wh[0] if ln else NULL
    cdef const floating *wc_ptr = &wc[0] if ln else NULL
    cdef const floating *bc_ptr = &bc[0] if ln else NULL
    cdef const floating *mh_ptr = &mask_h[0, 0, 0] if mask_h is not None else NULL
    cdef const floating *mc_ptr = &mask_c[0, 0, 0] if mask_c is not None else NULL
    cdef floating *gh_ptr = &gh[0, 0, 0] if gh is not None else NULL
    cdef floating *act_ptr = &act[0, 0, 0] if act is not None else NULL
    cdef int proj_threads = max(1, min(n_threads, rows // 16))
    # Split the batch only when each thread gets a few rows: below that the
    # recurrent GEMM is too small to share.
    cdef int batch_threads = max(1, min(n_threads, B // 4))
    if rows * G * I < MIN_PARALLEL_WORK:
        proj_threads = 1
    with nogil:
        for part in prange(proj_threads, num_threads=proj_threads, schedule="static"):
            r0 = block_start(rows, proj_threads, part)
            r1 = block_start(rows, proj_threads, part + 1)
            # gx[r0:r1] = x.reshape(-1, I)[r0:r1] @ weight_ih.T
            gemm(False, True, r1 - r0, G, I, 1, &x[0, 0, 0] + r0 * I, I, &w_ih[0, 0], I,
                 0, &gx[0, 0, 0] + r0 * G, G)
        for part in prange(batch_threads, num_threads=batch_threads, schedule="static"):
            b0 = block_start(B, batch_threads, part)
            b1 = block_start(B, batch_threads, part + 1)
            _recur_rows(b0, b1, T, B, H, reverse, training, ln, eps, &w_hh[0, 0],
                        &gx[0, 0, 0], gh_ptr, act_ptr, &bias[0], wx_ptr, wh_ptr, wc_ptr,
                        bc_ptr, &rstd[0, 0], &cnorm[0, 0, 0], mh_ptr, mc_ptr, p_h, p_c,
                        &h_seq[0, 0, 0], &c_seq[0, 0, 0], &out[0, 0, 0] + out_col, out_ld,
                        len_ptr)


cdef _backward_impl(const floating[:, :, ::1] x, const floating[:, ::1] w_ih,
                    const floating[:, ::1] w_hh, const floating[::1] wx,
                    const floating[::1] wh, const floating[::1] wc, const floating[::1] bc,
                    const floating[:, :, ::1] mask_h, const floating[:, :, ::1] mask_c,
                    floating p_h, floating p_c, floating[:, :, ::1] act,
                    floating[:, :, ::1] gx, const floating[:, :, ::1] gh,
                    floating[:, :, ::1] dgh, const floating[:, ::1] rstd,
                    const floating[:, :, ::1] cnorm, floating[:, :, ::1] dyc,
                    const floating[:, :, ::1] h_seq, const floating[:, :, ::1] c_seq,
                    const int64_t[::1] lengths, bint reverse,
                    const floating[:, :, ::1] grad_out, Py_ssize_t out_col,
                    floating[:, ::1] dh, floating[:, ::1] dh_other, floating[:, ::1] dc,
                    floating[:, ::1] dc_other, floating[:, :, ::1] grad_x,
                    floating[:, ::1] grad_w_ih, floating[:, ::1] grad_w_hh,
                    floating[:, ::1] sums, int n_threads):
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2]
    cdef Py_ssize_t H = w_hh.shape[1], G = w_hh.shape[0], TB = T * B
    cdef Py_ssize_t out_ld = grad_out.shape[2], part, b0, b1
    cdef bint ln = wx is not None
    cdef int batch_threads = max(1, min(n_threads, B // 4))
    cdef const int64_t *len_ptr = &lengths[0] if lengths is not None else NULL
    cdef const floating *wx_ptr = &wx[0] if ln else NULL
    cdef const floating *wh_ptr = &wh[0] if ln else NULL
    cdef const floating *wc_ptr = &wc[0] if ln else NULL
    cdef const floating *bc_ptr = &bc[0] if ln else NULL
    cdef const floating *mh_ptr = &mask_h[0, 0, 0] if mask_h is not None else NULL
    cdef const floating *mc_ptr = &mask_c[0, 0, 0] if mask_c is not None else NULL
    cdef const floating *gh_ptr = &gh[0, 0, 0] if ln else NULL
    cdef floating *dgh_ptr = &dgh[0, 0, 0] if ln else NULL
    cdef floating *dyc_ptr = &dyc[0, 0, 0] if ln else NULL
    cdef floating *da = &act[0, 0, 0]
    # The state before each step, (T, B, H): h_seq[:T] forward, h_seq[1:] reversed.
    cdef const floating *h_before = &h_seq[0, 0, 0] + (B * H if reverse else 0)
    # The gradients w.r.t. the two projections (before their layer norms).
    cdef const floating *d_gx = &gx[0, 0, 0] if ln else da
    cdef const floating *d_gh = dgh_ptr if ln else da
    with nogil:
        for part in prange(batch_threads, num_threads=batch_threads, schedule="static"):
            b0 = block_start(B, batch_threads, part)
            b1 = block_start(B, batch_threads, part + 1)
            _backprop_rows(b0, b1, T, B, H, reverse, ln, &w_hh[0, 0], da, gh_ptr, dgh_ptr,
                           &rstd[0, 0], &cnorm[0, 0, 0], dyc_ptr, wh_ptr, wc_ptr, bc_ptr,
                           mh_ptr, mc_ptr, p_h, p_c, &c_seq[0, 0, 0],
                           &grad_out[0, 0, 0] + out_col, out_ld, &dh[0, 0], &dh_other[0, 0],
                           &dc[0, 0], &dc_other[0, 0], len_ptr)
        # act now holds da (T*B, 4H), the gradient w.r.t. the gate pre-activations.
        # sums[0] = da.sum(0): the bias gradients (and the gate norms' betas)
        _column_sums(TB, G, da, NULL, &sums[0, 0], n_threads)
        if ln:
            # sums[1] = (da * x_hat_x).sum(0); sums[2] = (da * x_hat_h).sum(0)
            _column_sums(TB, G, da, &gx[0, 0, 0], &sums[1, 0], n_threads)
            _column_sums(TB, G, da, gh_ptr, &sums[2, 0], n_threads)
            # sums[3, :H] = (dy_c * c_hat).sum(0); sums[4, :H] = dy_c.sum(0)
            _column_sums(TB, H, dyc_ptr, &cnorm[0, 0, 0], &sums[3, 0], n_threads)
            _column_sums(TB, H, dyc_ptr, NULL, &sums[4, 0], n_threads)
            # gx <- d(x W_ih^T): the input layer norm's backward, all rows at once
            _ln_backward_rows(TB, G, da, wx_ptr, &gx[0, 0, 0], &rstd[0, 0], n_threads)
        # grad_x += d_gx @ weight_ih
        _gemm_split_rows(n_threads, False, False, TB, I, G, d_gx, G, &w_ih[0, 0], I, 1,
                         &grad_x[0, 0, 0], I)
        # grad_weight_ih += d_gx.T @ x
        _gemm_split_rows(n_threads, True, False, G, I, TB, d_gx, G, &x[0, 0, 0], I, 1,
                         &grad_w_ih[0, 0], I)
        # grad_weight_hh += d_gh.T @ h_before
        _gemm_split_rows(n_threads, True, False, G, H, TB, d_gh, G, h_before, H, 1,
                         &grad_w_hh[0, 0], H)


# --------------------------------------------------------------------------
# Python entry points (the contract of fastrnn.lnlstm_reference).
# --------------------------------------------------------------------------

def forward(x, weights, h0, c0, lengths, bint reverse, bint training, out, Py_ssize_t out_col,
            zoneout_h, zoneout_c, mask_h, mask_c, eps, int n_threads):
    """One layer, one direction; see fastrnn.lnlstm_reference.forward."""
    cdef Py_ssize_t T, B, I, H, G
    T, B, I, H, bias, ln, lengths, p_h, p_c, eps = check_forward_args(
        x, weights, h0, c0, lengths, out, out_col, zoneout_h, zoneout_c, mask_h, mask_c,
        eps, n_threads)
    G = 4 * H
    dtype = x.dtype
    w = weights
    # Everything added after the gate norms: b_ih + b_hh (+ both norms' betas).
    fused = np.zeros(G, dtype)
    if bias:
        fused += w["bias_ih"] + w["bias_hh"]
    if ln:
        fused += w["ln_ih_bias"] + w["ln_hh_bias"]
    first = T if reverse else 0
    last = 0 if reverse else T
    h_seq = np.empty((T + 1, B, H), dtype)
    c_seq = np.empty((T + 1, B, H), dtype)
    h_seq[first] = h0
    c_seq[first] = c0
    gx = np.empty((T, B, G), dtype)
    gh = act = None
    if ln:
        gh = np.empty((T if training else 1, B, G), dtype)
        act = np.empty((T if training else 1, B, G), dtype)
    rstd = np.zeros((3, T * B), dtype)
    cnorm = np.empty((T if training else 1, B, H), dtype)
    ln_args = ((w["ln_ih_weight"], w["ln_hh_weight"], w["ln_c_weight"], w["ln_c_bias"])
               if ln else (None, None, None, None))
    args = (x, w["weight_ih"], w["weight_hh"], fused, *ln_args, mask_h, mask_c, p_h, p_c,
            eps, gx, gh, act, rstd, cnorm, h_seq, c_seq, lengths, reverse, training, out,
            out_col, n_threads)
    if dtype == np.float32:
        _forward_impl[float](*args)
    else:
        _forward_impl[double](*args)
    h_n = h_seq[last].copy()
    c_n = c_seq[last].copy()
    if not training:
        return h_n, c_n, None
    return h_n, c_n, {"kernel": "_lnlstm", "T": T, "B": B, "H": H, "dtype": dtype,
                      "layer_norm": ln, "reverse": bool(reverse), "gx": gx, "gh": gh,
                      "act": act if ln else gx, "rstd": rstd, "cnorm": cnorm, "h_seq": h_seq,
                      "c_seq": c_seq, "mask_h": mask_h, "mask_c": mask_c, "zoneout_h": p_h,
                      "zoneout_c": p_c, "consumed": False}


def backward(cache, x, weights, lengths, bint reverse, grad_out, Py_ssize_t out_col, grad_h_n,
             grad_c_n, grad_x, grads, int n_threads):
    """One layer, one direction; see fastrnn.lnlstm_reference.backward.

    The cache is consumed: its buffers are overwritten by gradients.
    """
    cdef Py_ssize_t T, B, H, G
    if (not isinstance(cache, dict) or cache.get("kernel") != "_lnlstm"
            or cache.get("consumed", True)):
        raise RuntimeError("backward needs the cache of a training-mode forward of this "
                           "kernel, and can use it once")
    if cache["reverse"] != reverse:
        raise ValueError("cache comes from a forward in the other direction")
    T, B, H, ln = cache["T"], cache["B"], cache["H"], cache["layer_norm"]
    G = 4 * H
    dtype = cache["dtype"]
    I, bias, lengths, dh, dc = check_backward_args(
        T, B, H, dtype, ln, x, weights, lengths, grad_out, out_col, grad_h_n, grad_c_n,
        grad_x, grads, n_threads)
    w = weights
    dgh = np.empty((T, B, G), dtype) if ln else None
    dyc = np.empty((T, B, H), dtype) if ln else None
    sums = np.zeros((5, G), dtype)
    dh_other = np.empty_like(dh)
    dc_other = np.empty_like(dc)
    ln_args = ((w["ln_ih_weight"], w["ln_hh_weight"], w["ln_c_weight"], w["ln_c_bias"])
               if ln else (None, None, None, None))
    cache["consumed"] = True
    args = (x, w["weight_ih"], w["weight_hh"], *ln_args, cache["mask_h"], cache["mask_c"],
            cache["zoneout_h"], cache["zoneout_c"], cache["act"], cache["gx"], cache["gh"],
            dgh, cache["rstd"], cache["cnorm"], dyc, cache["h_seq"], cache["c_seq"], lengths,
            reverse, grad_out, out_col, dh, dh_other, dc, dc_other, grad_x,
            grads["weight_ih"], grads["weight_hh"], sums, n_threads)
    if dtype == np.float32:
        _backward_impl[float](*args)
    else:
        _backward_impl[double](*args)
    if bias:
        grads["bias_ih"] += sums[0]
        grads["bias_hh"] += sums[0]
    if ln:
        grads["ln_ih_bias"] += sums[0]
        grads["ln_hh_bias"] += sums[0]
        grads["ln_ih_weight"] += sums[1]
        grads["ln_hh_weight"] += sums[2]
        grads["ln_c_weight"] += sums[3, :H]
        grads["ln_c_bias"] += sums[4, :H]
    return dh, dc

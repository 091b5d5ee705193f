# cython: language_level=3
"""Forward and BPTT backward of one layer, one direction of RNN, LSTM and GRU.

Shared recurrent driver with per-cell step functions. The contract (argument
order, shapes, accumulation) is the one of ``fastrnn.reference``, which is the
oracle these kernels are tested against.

Design:
- The input projection ``x @ weight_ih.T`` of many steps is one GEMM (in
  inference, chunks of steps, so the workspace stays O(batch x gates x hidden)).
- Each step is one recurrent product for all gates and one fused elementwise
  pass. The batch is split across OpenMP threads; each thread runs the whole
  sequence for its rows, so there is no barrier per step.
- Backward: only ``dh_{t-1}`` is sequential; weight gradients and the input
  gradient are a few large GEMMs over all steps, split across threads by
  output rows so the result does not depend on the thread count.
- BLAS runs single-threaded inside these kernels (the caller limits it): the
  only parallel level is ours.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset

from _blas cimport gemm
from _parallel cimport MIN_PARALLEL_WORK, block_start, step_active, sum_columns
from _cells cimport (GRU, LSTM, RNN_RELU, RNN_TANH, gru_backward_row_f32, gru_backward_row_f64,
                    gru_forward_row_f32, gru_forward_row_f64, lstm_backward_row_f32,
                    lstm_backward_row_f64, lstm_forward_row_f32, lstm_forward_row_f64,
                    rnn_backward_row_f32, rnn_backward_row_f64, rnn_forward_row_f32,
                    rnn_forward_row_f64)

import numpy as np

from fastrnn._kernel_args import (check_backward_args, check_forward_args,
                                 check_recurrent_mask, fused_biases, gate_count)

# Rows of the chunked input projection in inference: enough for an efficient
# GEMM, small enough that the workspace is a constant times batch x gates x hidden.
DEF PROJECTION_ROWS = 128


# --------------------------------------------------------------------------
# Elementwise step functions: rows [b0, b1) of one time step.
# --------------------------------------------------------------------------

cdef inline Py_ssize_t _gate_rows(int cell, Py_ssize_t H) noexcept nogil:
    return H * (4 if cell == LSTM else 3 if cell == GRU else 1)


cdef void _step_forward(int cell, Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t t, Py_ssize_t H,
                        floating *gates, floating *gates_h, floating *hn_cache,
                        const floating *bias, const floating *bias_hn,
                        const floating *h_prev, floating *h_new,
                        const floating *c_prev, floating *c_new,
                        floating *out, Py_ssize_t out_ld,
                        const int64_t *lengths) noexcept nogil:
    """One fused elementwise pass over rows [b0, b1) (the row functions of
    _cell_math.h). gates (B, G*H) holds this step's pre-activations without
    biases (for GRU the input part; the recurrent part is gates_h (B, 3H)) and
    is overwritten with the activations. out points at column 0 of this
    direction's slice of out[t]. hn_cache (GRU training) receives W_hn h + b_hn.
    """
    cdef Py_ssize_t b, GH = _gate_rows(cell, H)
    cdef int relu = cell == RNN_RELU
    for b in range(b0, b1):
        if not step_active(lengths, b, t):
            # The state passes through unchanged; the output is zero.
            memcpy(h_new + b * H, h_prev + b * H, H * sizeof(floating))
            if cell == LSTM:
                memcpy(c_new + b * H, c_prev + b * H, H * sizeof(floating))
            memset(out + b * out_ld, 0, H * sizeof(floating))
            continue
        if cell == LSTM:
            if floating is float:
                lstm_forward_row_f32(H, H, H, gates + b * GH, bias, c_prev + b * H, c_new + b * H,
                                     h_new + b * H, out + b * out_ld)
            else:
                lstm_forward_row_f64(H, H, H, gates + b * GH, bias, c_prev + b * H, c_new + b * H,
                                     h_new + b * H, out + b * out_ld)
        elif cell == GRU:
            if floating is float:
                gru_forward_row_f32(H, H, H, gates + b * GH, gates_h + b * GH, bias, bias_hn,
                                    h_prev + b * H, h_new + b * H, out + b * out_ld)
            else:
                gru_forward_row_f64(H, H, H, gates + b * GH, gates_h + b * GH, bias, bias_hn,
                                    h_prev + b * H, h_new + b * H, out + b * out_ld)
            if hn_cache != NULL:
                memcpy(hn_cache + b * H, gates_h + b * GH + 2 * H, H * sizeof(floating))
        else:
            if floating is float:
                rnn_forward_row_f32(H, relu, gates + b * GH, bias, h_new + b * H, out + b * out_ld)
            else:
                rnn_forward_row_f64(H, relu, gates + b * GH, bias, h_new + b * H, out + b * out_ld)


cdef void _step_backward(int cell, Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t t, Py_ssize_t H,
                         floating *gates, floating *hn_cache,
                         const floating *h_prev, const floating *h_new,
                         const floating *c_prev, const floating *c_new,
                         const floating *grad_out, Py_ssize_t out_ld,
                         const floating *dh, floating *dh_prev, floating *dc,
                         const int64_t *lengths) noexcept nogil:
    """Gradients through the elementwise part of one step, rows [b0, b1).

    Overwrites gates (activations) with the pre-activation gradients, which
    are the input-side gradients; for GRU hn_cache (W_hn h + b_hn) becomes
    the gradient of the recurrent n part, dn_pre * r. Writes into dh_prev the
    part of dL/dh_{t-1} that does not go through weight_hh, and updates dc to
    dL/dc_{t-1} in place. Inactive rows get zero gate gradients and pass
    dh and dc through.
    """
    cdef Py_ssize_t b, GH = _gate_rows(cell, H)
    cdef int relu = cell == RNN_RELU
    for b in range(b0, b1):
        if not step_active(lengths, b, t):
            memset(gates + b * GH, 0, GH * sizeof(floating))
            if cell == GRU:
                memset(hn_cache + b * H, 0, H * sizeof(floating))
            memcpy(dh_prev + b * H, dh + b * H, H * sizeof(floating))
            continue
        if cell == LSTM:
            if floating is float:
                lstm_backward_row_f32(H, H, gates + b * GH, c_prev + b * H, c_new + b * H,
                                      grad_out + b * out_ld, dh + b * H, dh_prev + b * H,
                                      dc + b * H)
            else:
                lstm_backward_row_f64(H, H, gates + b * GH, c_prev + b * H, c_new + b * H,
                                      grad_out + b * out_ld, dh + b * H, dh_prev + b * H,
                                      dc + b * H)
        elif cell == GRU:
            if floating is float:
                gru_backward_row_f32(H, H, gates + b * GH, hn_cache + b * H, h_prev + b * H,
                                     grad_out + b * out_ld, dh + b * H, dh_prev + b * H)
            else:
                gru_backward_row_f64(H, H, gates + b * GH, hn_cache + b * H, h_prev + b * H,
                                     grad_out + b * out_ld, dh + b * H, dh_prev + b * H)
        else:
            if floating is float:
                rnn_backward_row_f32(H, relu, gates + b * GH, h_new + b * H,
                                     grad_out + b * out_ld, dh + b * H, dh_prev + b * H)
            else:
                rnn_backward_row_f64(H, relu, gates + b * GH, h_new + b * H,
                                     grad_out + b * out_ld, dh + b * H, dh_prev + b * H)


# --------------------------------------------------------------------------
# Per-thread drivers: a contiguous block of batch rows over many steps.
# --------------------------------------------------------------------------

cdef void _recur_rows(int cell, Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t t_lo, Py_ssize_t t_hi,
                      bint reverse, bint training, Py_ssize_t T, Py_ssize_t B, Py_ssize_t H,
                      const floating *weight_hh, floating *gates_x, floating *gates_h,
                      floating *hn_cache, const floating *bias, const floating *bias_hn,
                      floating *h_seq, floating *c_seq, floating *out, Py_ssize_t out_ld,
                      Py_ssize_t out_col, const int64_t *lengths, floating *hm_seq,
                      const floating *recurrent_mask) noexcept nogil:
    """Steps t_lo..t_hi-1 (in processing order) for rows [b0, b1).

    Recurrent dropout (training; else NULL): the recurrent product reads
    hm_seq (T+1, B, H) = h_seq * recurrent_mask, written here after each step.

    gates_x holds the projected inputs of steps t_lo..t_hi-1, (t - t_lo, B, G*H).
    Training: h_seq/c_seq are (T+1, B, H) and the state before step t is at
    index t (forward) or t+1 (reverse); hn_cache is (T, B, H) for GRU.
    Inference: h_seq/c_seq are (2, B, H), a double buffer: the state before
    the k-th processed step is at index k % 2.
    """
    cdef Py_ssize_t s, t, k, nb = b1 - b0, GH
    cdef floating *step_gates
    cdef floating *hn_t = NULL
    cdef floating *h_prev
    cdef floating *h_new
    cdef floating *h_rec
    cdef floating *c_prev = NULL
    cdef floating *c_new = NULL
    cdef Py_ssize_t i
    GH = _gate_rows(cell, H)
    if nb <= 0:
        return
    for s in range(t_hi - t_lo):
        t = t_hi - 1 - s if reverse else t_lo + s
        step_gates = gates_x + (t - t_lo) * B * GH
        if training:
            h_prev = h_seq + (t + 1 if reverse else t) * B * H
            h_new = h_seq + (t if reverse else t + 1) * B * H
            if cell == LSTM:
                c_prev = c_seq + (t + 1 if reverse else t) * B * H
                c_new = c_seq + (t if reverse else t + 1) * B * H
            if cell == GRU:
                hn_t = hn_cache + t * B * H
        else:
            k = (T - 1 - t if reverse else t) % 2
            h_prev = h_seq + k * B * H
            h_new = h_seq + (1 - k) * B * H
            if cell == LSTM:
                c_prev = c_seq + k * B * H
                c_new = c_seq + (1 - k) * B * H
        # The recurrent product's input: h, or h * mask under recurrent dropout.
        h_rec = h_prev if hm_seq == NULL else hm_seq + (t + 1 if reverse else t) * B * H
        if cell == GRU:
            # gates_h[b0:b1] = h_rec[b0:b1] @ weight_hh.T
            gemm(False, True, nb, GH, H, 1, h_rec + b0 * H, H, weight_hh, H,
                 0, gates_h + b0 * GH, GH)
        else:
            # gates[t, b0:b1] += h_rec[b0:b1] @ weight_hh.T
            gemm(False, True, nb, GH, H, 1, h_rec + b0 * H, H, weight_hh, H,
                 1, step_gates + b0 * GH, GH)
        _step_forward(cell, b0, b1, t, H, step_gates, gates_h, hn_t, bias, bias_hn,
                      h_prev, h_new, c_prev, c_new, out + t * B * out_ld + out_col, out_ld,
                      lengths)
        if hm_seq != NULL:
            h_rec = hm_seq + (t if reverse else t + 1) * B * H
            for i in range(b0 * H, b1 * H):
                h_rec[i] = h_new[i] * recurrent_mask[i]


cdef void _backprop_rows(int cell, Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t T,
                         bint reverse, Py_ssize_t B, Py_ssize_t H,
                         const floating *weight_hh, floating *gates, floating *hn_cache,
                         const floating *h_seq, const floating *c_seq,
                         const floating *grad_out, Py_ssize_t out_ld, Py_ssize_t out_col,
                         floating *dh, floating *dh_other, floating *dc,
                         const int64_t *lengths, const floating *recurrent_mask,
                         floating *dh_rec) noexcept nogil:
    """BPTT for rows [b0, b1): steps in the opposite of processing order.

    With recurrent dropout (recurrent_mask not NULL) the part of dh_prev that
    comes through weight_hh is computed in dh_rec and multiplied by the mask.

    On entry dh/dc hold dL/dh_n, dL/dc_n; on return dh holds dL/dh0 and dc
    dL/dc0 (dh_other is scratch of the same shape).
    """
    cdef Py_ssize_t s, t, nb = b1 - b0, GH, i_prev, i_new, i
    cdef floating *tmp
    cdef floating *acc
    cdef floating *step_gates
    cdef floating *hn_t = NULL
    cdef const floating *c_prev = NULL
    cdef const floating *c_new = NULL
    GH = _gate_rows(cell, H)
    if nb <= 0:
        return
    for s in range(T):
        t = s if reverse else T - 1 - s
        i_prev = t + 1 if reverse else t
        i_new = t if reverse else t + 1
        step_gates = gates + t * B * GH
        if cell == LSTM:
            c_prev = c_seq + i_prev * B * H
            c_new = c_seq + i_new * B * H
        if cell == GRU:
            hn_t = hn_cache + t * B * H
        _step_backward(cell, b0, b1, t, H, step_gates, hn_t,
                       h_seq + i_prev * B * H, h_seq + i_new * B * H, c_prev, c_new,
                       grad_out + t * B * out_ld + out_col, out_ld, dh, dh_other, dc, lengths)
        # The recurrent part accumulates straight into dh_prev, or into dh_rec
        # to be masked first.
        acc = dh_other if recurrent_mask == NULL else dh_rec
        if cell == GRU:
            # acc[b0:b1] (+)= d(r, z)[t, b0:b1] @ weight_hh[:2H]
            gemm(False, False, nb, H, 2 * H, 1, step_gates + b0 * GH, GH, weight_hh, H,
                 1 if recurrent_mask == NULL else 0, acc + b0 * H, H)
            # acc[b0:b1] += d(hn)[t, b0:b1] @ weight_hh[2H:]
            gemm(False, False, nb, H, H, 1, hn_t + b0 * H, H, weight_hh + 2 * H * H, H,
                 1, acc + b0 * H, H)
        else:
            # acc[b0:b1] (+)= dgates[t, b0:b1] @ weight_hh
            gemm(False, False, nb, H, GH, 1, step_gates + b0 * GH, GH, weight_hh, H,
                 1 if recurrent_mask == NULL else 0, acc + b0 * H, H)
        if recurrent_mask != NULL:
            # dh_prev[b0:b1] += dh_rec[b0:b1] * recurrent_mask[b0:b1]
            for i in range(b0 * H, b1 * H):
                dh_other[i] += dh_rec[i] * recurrent_mask[i]
        tmp = dh
        dh = dh_other
        dh_other = tmp
    if T % 2 == 1:
        # The pointers were swapped an odd number of times: the result is in
        # the caller's dh_other; give it back in dh.
        memcpy(dh_other + b0 * H, dh + b0 * H, nb * H * sizeof(floating))


cdef void _column_sums(Py_ssize_t rows, Py_ssize_t cols, const floating *a, Py_ssize_t lda,
                       floating *sums, int n_threads) noexcept nogil:
    """sums[c] = a[:, c].sum(0) for a (rows, cols) with row stride lda; columns
    split across threads, rows summed in order (deterministic)."""
    cdef Py_ssize_t k, c0, c1
    if rows * cols < MIN_PARALLEL_WORK:
        n_threads = 1
    for k in prange(n_threads, num_threads=n_threads, schedule="static"):
        c0 = block_start(cols, n_threads, k)
        c1 = block_start(cols, n_threads, k + 1)
        sum_columns(rows, c0, c1, a, lda, sums)


include "_gemm_split.pxi"


# --------------------------------------------------------------------------
# Typed entry points.
# --------------------------------------------------------------------------

cdef _forward_impl(int cell, const floating[:, :, ::1] x, const floating[:, ::1] weight_ih,
                   const floating[:, ::1] weight_hh, const floating[::1] bias,
                   const floating[::1] bias_hn, floating[:, :, ::1] h_seq,
                   floating[:, :, ::1] c_seq, floating[:, :, ::1] gates,
                   floating[:, ::1] gates_h, floating[:, :, ::1] hn_cache,
                   const int64_t[::1] lengths, bint reverse, bint training,
                   floating[:, :, ::1] out, Py_ssize_t out_col, int n_threads,
                   floating[:, :, ::1] hm_seq, const floating[:, ::1] recurrent_mask):
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2]
    cdef Py_ssize_t H = weight_hh.shape[1], GH = weight_hh.shape[0]
    cdef Py_ssize_t out_ld = out.shape[2]
    cdef Py_ssize_t chunk = gates.shape[0], n_chunks, ci, t_lo, t_hi, rows, part, r0, r1, b0, b1
    cdef int proj_threads, batch_threads
    cdef const int64_t *len_ptr = &lengths[0] if lengths is not None else NULL
    cdef const floating *bias_ptr = &bias[0]
    cdef const floating *bias_hn_ptr = &bias_hn[0] if bias_hn is not None else NULL
    cdef floating *gates_h_ptr = &gates_h[0, 0] if gates_h is not None else NULL
    cdef floating *hn_ptr = &hn_cache[0, 0, 0] if hn_cache is not None else NULL
    cdef floating *c_ptr = &c_seq[0, 0, 0] if c_seq is not None else NULL
    cdef floating *hm_ptr = &hm_seq[0, 0, 0] if hm_seq is not None else NULL
    cdef const floating *mask_ptr = (&recurrent_mask[0, 0] if recurrent_mask is not None
                                     else NULL)
    n_chunks = (T + chunk - 1) // chunk
    # Split the batch only when each thread gets a few rows: below that the
    # recurrent GEMM is too small to share.
    batch_threads = max(1, min(n_threads, B // 4))
    with nogil:
        for ci in range(n_chunks):
            # Chunks follow the processing order: from the end when reversed.
            if reverse:
                t_hi = T - ci * chunk
                t_lo = max(0, t_hi - chunk)
            else:
                t_lo = ci * chunk
                t_hi = min(T, t_lo + chunk)
            rows = (t_hi - t_lo) * B
            proj_threads = max(1, min(n_threads, rows // 16))
            for part in prange(proj_threads, num_threads=proj_threads, schedule="static"):
                r0 = block_start(rows, proj_threads, part)
                r1 = block_start(rows, proj_threads, part + 1)
                # gates[r0:r1] = x[t_lo:t_hi].reshape(-1, I)[r0:r1] @ weight_ih.T
                gemm(False, True, r1 - r0, GH, I, 1, &x[0, 0, 0] + (t_lo * B + r0) * I, I,
                     &weight_ih[0, 0], I, 0, &gates[0, 0, 0] + r0 * GH, GH)
            for part in prange(batch_threads, num_threads=batch_threads, schedule="static"):
                b0 = block_start(B, batch_threads, part)
                b1 = block_start(B, batch_threads, part + 1)
                _recur_rows(cell, b0, b1, t_lo, t_hi, reverse, training, T, B, H,
                            &weight_hh[0, 0], &gates[0, 0, 0], gates_h_ptr, hn_ptr,
                            bias_ptr, bias_hn_ptr, &h_seq[0, 0, 0], c_ptr, &out[0, 0, 0], out_ld,
                            out_col, len_ptr, hm_ptr, mask_ptr)


cdef _backward_impl(int cell, const floating[:, :, ::1] x, const floating[:, ::1] weight_ih,
                    const floating[:, ::1] weight_hh, floating[:, :, ::1] gates,
                    floating[:, :, ::1] hn_cache, const floating[:, :, ::1] h_seq,
                    const floating[:, :, ::1] c_seq, const int64_t[::1] lengths, bint reverse,
                    const floating[:, :, ::1] grad_out, Py_ssize_t out_col,
                    floating[:, ::1] dh, floating[:, ::1] dh_scratch, floating[:, ::1] dc,
                    floating[:, :, ::1] grad_x, floating[:, ::1] grad_weight_ih,
                    floating[:, ::1] grad_weight_hh, floating[::1] grad_bias_ih,
                    floating[::1] grad_bias_hh, floating[::1] bias_sums, int n_threads,
                    const floating[:, :, ::1] hm_seq, const floating[:, ::1] recurrent_mask,
                    floating[:, ::1] dh_rec):
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2]
    cdef Py_ssize_t H = weight_hh.shape[1], GH = weight_hh.shape[0]
    cdef Py_ssize_t TB = T * B, out_ld = grad_out.shape[2], part, b0, b1, k
    cdef int batch_threads = max(1, min(n_threads, B // 4))
    cdef const int64_t *len_ptr = &lengths[0] if lengths is not None else NULL
    cdef floating *hn_ptr = &hn_cache[0, 0, 0] if hn_cache is not None else NULL
    cdef const floating *c_ptr = &c_seq[0, 0, 0] if c_seq is not None else NULL
    cdef floating *dc_ptr = &dc[0, 0] if dc is not None else NULL
    # The recurrent product's input before each step, (T, B, H): h_seq[:T] forward,
    # h_seq[1:] reversed (hm_seq = h_seq * mask under recurrent dropout).
    cdef const floating *h_before = (&h_seq[0, 0, 0] if hm_seq is None else &hm_seq[0, 0, 0]) \
        + (B * H if reverse else 0)
    cdef const floating *mask_ptr = (&recurrent_mask[0, 0] if recurrent_mask is not None
                                     else NULL)
    cdef floating *dh_rec_ptr = &dh_rec[0, 0] if dh_rec is not None else NULL
    cdef bint has_bias = grad_bias_ih is not None
    with nogil:
        for part in prange(batch_threads, num_threads=batch_threads, schedule="static"):
            b0 = block_start(B, batch_threads, part)
            b1 = block_start(B, batch_threads, part + 1)
            _backprop_rows(cell, b0, b1, T, reverse, B, H, &weight_hh[0, 0], &gates[0, 0, 0],
                           hn_ptr, &h_seq[0, 0, 0], c_ptr, &grad_out[0, 0, 0], out_ld, out_col,
                           &dh[0, 0], &dh_scratch[0, 0], dc_ptr, len_ptr, mask_ptr, dh_rec_ptr)
        # gates now holds the input-side pre-activation gradients dgates (T*B, G*H).
        # grad_x += dgates @ weight_ih
        _gemm_split_rows(n_threads, False, False, TB, I, GH, &gates[0, 0, 0], GH,
                         &weight_ih[0, 0], I, 1, &grad_x[0, 0, 0], I)
        # grad_weight_ih += dgates.T @ x
        _gemm_split_rows(n_threads, True, False, GH, I, TB, &gates[0, 0, 0], GH,
                         &x[0, 0, 0], I, 1, &grad_weight_ih[0, 0], I)
        if cell == GRU:
            # grad_weight_hh[:2H] += d(r, z).T @ h_before
            _gemm_split_rows(n_threads, True, False, 2 * H, H, TB, &gates[0, 0, 0], GH,
                             h_before, H, 1, &grad_weight_hh[0, 0], H)
            # grad_weight_hh[2H:] += d(hn).T @ h_before
            _gemm_split_rows(n_threads, True, False, H, H, TB, hn_ptr, H,
                             h_before, H, 1, &grad_weight_hh[2 * H, 0], H)
        else:
            # grad_weight_hh += dgates.T @ h_before
            _gemm_split_rows(n_threads, True, False, GH, H, TB, &gates[0, 0, 0], GH,
                             h_before, H, 1, &grad_weight_hh[0, 0], H)
        if has_bias:
            # grad_bias_ih += dgates.sum(0); grad_bias_hh too, but for GRU's n part
            _column_sums(TB, GH, &gates[0, 0, 0], GH, &bias_sums[0], n_threads)
            for k in range(GH):
                grad_bias_ih[k] += bias_sums[k]
                if cell != GRU or k < 2 * H:
                    grad_bias_hh[k] += bias_sums[k]
            if cell == GRU:
                # grad_bias_hh[2H:] += d(hn).sum(0)
                _column_sums(TB, H, hn_ptr, H, &bias_sums[0], n_threads)
                for k in range(H):
                    grad_bias_hh[2 * H + k] += bias_sums[k]


# --------------------------------------------------------------------------
# Python entry points (same contract as fastrnn.reference).
# --------------------------------------------------------------------------

def forward(int cell, x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, lengths,
            bint reverse, bint training, out, Py_ssize_t out_col, int n_threads,
            recurrent_mask=None):
    """One layer, one direction; see fastrnn.reference.forward for the contract
    (``recurrent_mask``: variational recurrent dropout, training only)."""
    cdef Py_ssize_t G = gate_count(cell), T, B, I, H
    T, B, I, H, lengths = check_forward_args(cell, x, weight_ih, weight_hh, bias_ih, bias_hh,
                                             h0, c0, lengths, out, out_col, n_threads)
    dtype = x.dtype
    bias, bias_hn = fused_biases(cell, bias_ih, bias_hh, H, dtype)

    # The hidden (and LSTM cell) states: training keeps every step, (T+1, B, H),
    # with h0 at index 0 (forward) or T (reverse); inference double-buffers
    # (2, B, H) and the final state is at index T % 2.
    first = (T if reverse else 0) if training else 0
    last = (0 if reverse else T) if training else T % 2
    h_seq = np.empty((T + 1 if training else 2, B, H), dtype)
    h_seq[first] = h0
    c_seq = hn_cache = gates_h = None
    if cell == LSTM:
        c_seq = np.empty_like(h_seq)
        c_seq[first] = c0
    if cell == GRU:
        gates_h = np.empty((B, G * H), dtype)
        if training:
            hn_cache = np.empty((T, B, H), dtype)
    chunk = T if training else min(T, max(1, PROJECTION_ROWS // B))
    gates = np.empty((chunk, B, G * H), dtype)
    hm_seq = None
    recurrent_mask = check_recurrent_mask(recurrent_mask, training, B, H, dtype)
    if recurrent_mask is not None:
        hm_seq = np.empty_like(h_seq)
        hm_seq[first] = h_seq[first] * recurrent_mask

    if dtype == np.float32:
        _forward_impl[float](cell, x, weight_ih, weight_hh, bias, bias_hn, h_seq, c_seq, gates,
                             gates_h, hn_cache, lengths, reverse, training, out, out_col,
                             n_threads, hm_seq, recurrent_mask)
    else:
        _forward_impl[double](cell, x, weight_ih, weight_hh, bias, bias_hn, h_seq, c_seq, gates,
                              gates_h, hn_cache, lengths, reverse, training, out, out_col,
                              n_threads, hm_seq, recurrent_mask)
    h_n = h_seq[last].copy()
    c_n = c_seq[last].copy() if cell == LSTM else None
    if not training:
        return h_n, c_n, None
    return h_n, c_n, {"cell": cell, "gates": gates, "h_seq": h_seq, "c_seq": c_seq,
                      "hn": hn_cache, "reverse": reverse, "hm_seq": hm_seq,
                      "recurrent_mask": recurrent_mask, "consumed": False}


def backward(int cell, cache, x, weight_ih, weight_hh, lengths, bint reverse, grad_out,
             Py_ssize_t out_col, grad_h_n, grad_c_n, grad_x, grad_weight_ih, grad_weight_hh,
             grad_bias_ih, grad_bias_hh, int n_threads):
    """One layer, one direction; see fastrnn.reference.backward for the contract.

    The cache is consumed: its gate activations are overwritten by gradients.
    """
    cdef Py_ssize_t G = gate_count(cell), T, B, I, H
    if cache is None or cache.get("consumed", True):
        raise RuntimeError("backward needs the cache of a training-mode forward, "
                           "and can use it once")
    if cache["cell"] != cell or cache["reverse"] != reverse:
        raise ValueError("cache comes from a forward of another cell or direction")
    gates = cache["gates"]
    T, B = gates.shape[:2]
    H = cache["h_seq"].shape[2]
    dtype = gates.dtype
    I, lengths, dh, dc = check_backward_args(
        cell, T, B, H, dtype, x, weight_ih, weight_hh, lengths, grad_out, out_col, grad_h_n,
        grad_c_n, grad_x, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh,
        n_threads)
    dh_scratch = np.empty((B, H), dtype)
    bias_sums = np.empty(G * H, dtype) if grad_bias_ih is not None else None
    dh_rec = np.empty((B, H), dtype) if cache["recurrent_mask"] is not None else None
    cache["consumed"] = True
    if dtype == np.float32:
        _backward_impl[float](cell, x, weight_ih, weight_hh, gates, cache["hn"],
                              cache["h_seq"], cache["c_seq"], lengths, reverse, grad_out,
                              out_col, dh, dh_scratch, dc, grad_x, grad_weight_ih,
                              grad_weight_hh, grad_bias_ih, grad_bias_hh, bias_sums, n_threads,
                              cache["hm_seq"], cache["recurrent_mask"], dh_rec)
    else:
        _backward_impl[double](cell, x, weight_ih, weight_hh, gates, cache["hn"],
                               cache["h_seq"], cache["c_seq"], lengths, reverse, grad_out,
                               out_col, dh, dh_scratch, dc, grad_x, grad_weight_ih,
                               grad_weight_hh, grad_bias_ih, grad_bias_hh, bias_sums, n_threads,
                               cache["hm_seq"], cache["recurrent_mask"], dh_rec)
    return dh, dc

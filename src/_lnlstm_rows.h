/* Row functions of the layer-normalised / zoneout LSTM, included by
 * _lnlstm_math.h once per REAL type (REAL, SFX, SIGMOID, TANH defined there).
 * See fastrnn/lnlstm_reference.py for the formulas these implement. */

/* sum_k a[k] (b NULL) or sum_k a[k] * b[k], in double, four partial sums. */
static inline double SFX(lnl_dot)(ptrdiff_t n, const REAL *restrict a, const REAL *restrict b)
{
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    ptrdiff_t k = 0;
    if (b == NULL) {
        for (; k + 4 <= n; k += 4) {
            s0 += a[k];
            s1 += a[k + 1];
            s2 += a[k + 2];
            s3 += a[k + 3];
        }
        for (; k < n; k++)
            s0 += a[k];
    } else {
        for (; k + 4 <= n; k += 4) {
            s0 += (double)a[k] * b[k];
            s1 += (double)a[k + 1] * b[k + 1];
            s2 += (double)a[k + 2] * b[k + 2];
            s3 += (double)a[k + 3] * b[k + 3];
        }
        for (; k < n; k++)
            s0 += (double)a[k] * b[k];
    }
    return (s0 + s1) + (s2 + s3);
}

/* In place v <- (v - mean) * rstd, rstd = 1 / sqrt(var + eps) (biased
 * variance, moments in double); returns rstd. */
static inline REAL SFX(lnl_norm)(ptrdiff_t n, REAL *restrict v, double eps)
{
    double mean = SFX(lnl_dot)(n, v, NULL) / n;
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0, d0, d1, d2, d3, rstd;
    ptrdiff_t k = 0;
    for (; k + 4 <= n; k += 4) {
        d0 = v[k] - mean;
        d1 = v[k + 1] - mean;
        d2 = v[k + 2] - mean;
        d3 = v[k + 3] - mean;
        s0 += d0 * d0;
        s1 += d1 * d1;
        s2 += d2 * d2;
        s3 += d3 * d3;
    }
    for (; k < n; k++) {
        d0 = v[k] - mean;
        s0 += d0 * d0;
    }
    rstd = 1.0 / sqrt(((s0 + s1) + (s2 + s3)) / n + eps);
    for (k = 0; k < n; k++)
        v[k] = (REAL)((v[k] - mean) * rstd);
    return (REAL)rstd;
}

/* In place xd <- rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gain,
 * xhat the value of xd on entry: the gradient through y = xhat * gain + beta. */
static inline void SFX(lnl_norm_backward)(ptrdiff_t n, const REAL *restrict dy,
                                          const REAL *restrict gain, REAL *restrict xd,
                                          REAL rstd)
{
    double m1 = 0, m2 = 0, g;
    double s0 = 0, s1 = 0, t0 = 0, t1 = 0;
    ptrdiff_t k = 0;
    for (; k + 2 <= n; k += 2) {
        g = (double)dy[k] * gain[k];
        s0 += g;
        t0 += g * xd[k];
        g = (double)dy[k + 1] * gain[k + 1];
        s1 += g;
        t1 += g * xd[k + 1];
    }
    for (; k < n; k++) {
        g = (double)dy[k] * gain[k];
        s0 += g;
        t0 += g * xd[k];
    }
    m1 = (s0 + s1) / n;
    m2 = (t0 + t1) / n;
    for (k = 0; k < n; k++)
        xd[k] = (REAL)(rstd * ((double)dy[k] * gain[k] - m1 - xd[k] * m2));
}

/* The layer-norm backward of many rows (rows of n values), in place in xd. */
static FASTRNN_CLONES void SFX(lnl_norm_backward_rows)(ptrdiff_t rows, ptrdiff_t n,
                                                  const REAL *restrict dy,
                                                  const REAL *restrict gain,
                                                  REAL *restrict xd, const REAL *restrict rstd)
{
    for (ptrdiff_t r = 0; r < rows; r++)
        SFX(lnl_norm_backward)(n, dy + r * n, gain, xd + r * n, rstd[r]);
}

/* sums[c] = sum_r a[r, c] (b NULL) or sum_r a[r, c] * b[r, c] for the columns
 * c0 <= c < c1 of row-major (rows, cols) arrays; rows summed in order (the
 * result does not depend on how the columns are split across threads). */
static FASTRNN_CLONES void SFX(lnl_column_sums)(ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t c0,
                                           ptrdiff_t c1, const REAL *restrict a,
                                           const REAL *restrict b, REAL *restrict sums)
{
    ptrdiff_t r, c;
    for (c = c0; c < c1; c++)
        sums[c] = 0;
    if (b == NULL) {
        for (r = 0; r < rows; r++)
            for (c = c0; c < c1; c++)
                sums[c] += a[r * cols + c];
    } else {
        for (r = 0; r < rows; r++)
            for (c = c0; c < c1; c++)
                sums[c] += a[r * cols + c] * b[r * cols + c];
    }
}

/* h = m * h_prev + (1 - m) * h with m = mask[j], or the rate p when mask is
 * NULL (nothing when p == 0). */
static inline void SFX(lnl_zoneout)(ptrdiff_t n, const REAL *restrict mask, REAL p,
                                    const REAL *restrict prev, REAL *restrict v)
{
    ptrdiff_t j;
    if (mask != NULL) {
        for (j = 0; j < n; j++)
            v[j] = mask[j] * prev[j] + (1 - mask[j]) * v[j];
    } else if (p > 0) {
        for (j = 0; j < n; j++)
            v[j] = p * prev[j] + (1 - p) * v[j];
    }
}

/* One step of one active row.
 *
 * ln: xr, hr are the (4H) input / recurrent projections, normalised in place;
 * act (4H) receives i, f, g, o. Without ln: act holds the pre-activations
 * x W_ih^T + h W_hh^T on entry (xr, hr unused, may be NULL).
 * cr (H) receives the normalised cell (ln) or c~; rstd[0..2] the 1/std of the
 * x, h and c norms (ln only). h_new, c_new, out get the new state and output.
 */
static FASTRNN_CLONES void SFX(lnl_forward_row)(
    ptrdiff_t H, int ln, double eps, REAL *restrict xr, REAL *restrict hr,
    REAL *restrict act, const REAL *restrict wx, const REAL *restrict wh,
    const REAL *restrict bias, const REAL *restrict wc, const REAL *restrict bc,
    const REAL *restrict h_prev, const REAL *restrict c_prev, REAL *restrict h_new,
    REAL *restrict c_new, REAL *restrict cr, REAL *restrict out,
    const REAL *restrict mask_h, const REAL *restrict mask_c, REAL p_h, REAL p_c,
    REAL *restrict rstd)
{
    const ptrdiff_t G = 4 * H;
    ptrdiff_t k, j;
    if (ln) {
        rstd[0] = SFX(lnl_norm)(G, xr, eps);
        rstd[1] = SFX(lnl_norm)(G, hr, eps);
        for (k = 0; k < G; k++)
            act[k] = xr[k] * wx[k] + hr[k] * wh[k] + bias[k];
    } else {
        for (k = 0; k < G; k++)
            act[k] += bias[k];
    }
    for (k = 0; k < 2 * H; k++)
        act[k] = SIGMOID(act[k]);
    for (k = 2 * H; k < 3 * H; k++)
        act[k] = TANH(act[k]);
    for (k = 3 * H; k < G; k++)
        act[k] = SIGMOID(act[k]);
    for (j = 0; j < H; j++) {
        REAL cn = act[H + j] * c_prev[j] + act[j] * act[2 * H + j];
        c_new[j] = cn;
        cr[j] = cn;
    }
    if (ln) {
        rstd[2] = SFX(lnl_norm)(H, cr, eps);
        for (j = 0; j < H; j++)
            h_new[j] = act[3 * H + j] * TANH(cr[j] * wc[j] + bc[j]);
    } else {
        for (j = 0; j < H; j++)
            h_new[j] = act[3 * H + j] * TANH(cr[j]);
    }
    SFX(lnl_zoneout)(H, mask_h, p_h, h_prev, h_new);
    SFX(lnl_zoneout)(H, mask_c, p_c, c_prev, c_new);
    memcpy(out, h_new, H * sizeof(REAL));
}

/* Gradients through one step of one active row.
 *
 * act: i, f, g, o on entry, the gate pre-activation gradients da on return.
 * ln: gh (4H) is the normalised recurrent projection; dgh (4H) receives the
 * gradient w.r.t. h_{t-1} W_hh^T; dyc (H) dL/dy of the cell norm. cr is as
 * the forward left it. dh, dc: dL/dh_t, dL/dc_t carried from step t+1;
 * grad_out: dL/dout_t. On return dh_prev holds the part of dL/dh_{t-1} that
 * does not go through W_hh (zoneout's m dh_t), dc_prev dL/dc_{t-1}.
 */
static FASTRNN_CLONES void SFX(lnl_backward_row)(
    ptrdiff_t H, int ln, REAL *restrict act, const REAL *restrict gh, REAL *restrict dgh,
    REAL rstd_h, REAL rstd_c, const REAL *restrict cr, REAL *restrict dyc,
    const REAL *restrict wh, const REAL *restrict wc, const REAL *restrict bc,
    const REAL *restrict mask_h, const REAL *restrict mask_c, REAL p_h, REAL p_c,
    const REAL *restrict c_prev, const REAL *restrict grad_out, const REAL *restrict dh,
    REAL *restrict dh_prev, const REAL *restrict dc, REAL *restrict dc_prev)
{
    const ptrdiff_t G = 4 * H;
    ptrdiff_t j;
    double m1, m2;
    /* dL/dh_t -> dh_prev (scratch). */
    for (j = 0; j < H; j++)
        dh_prev[j] = dh[j] + grad_out[j];
    /* h_t = m h_{t-1} + (1 - m) h~: dL/dh~ -> dc_prev (scratch), m dh_t -> dh_prev. */
    if (mask_h != NULL) {
        for (j = 0; j < H; j++) {
            dc_prev[j] = (1 - mask_h[j]) * dh_prev[j];
            dh_prev[j] = mask_h[j] * dh_prev[j];
        }
    } else if (p_h > 0) {
        for (j = 0; j < H; j++) {
            dc_prev[j] = (1 - p_h) * dh_prev[j];
            dh_prev[j] = p_h * dh_prev[j];
        }
    } else {
        memcpy(dc_prev, dh_prev, H * sizeof(REAL));
        memset(dh_prev, 0, H * sizeof(REAL));
    }
    /* h~ = o tanh(y): da_o into act, and dL/dy -> dc_prev. */
    for (j = 0; j < H; j++) {
        REAL ty = ln ? TANH(cr[j] * wc[j] + bc[j]) : TANH(cr[j]);
        REAL o = act[3 * H + j], dhn = dc_prev[j];
        act[3 * H + j] = dhn * ty * o * (1 - o);
        dc_prev[j] = dhn * o * (1 - ty * ty);
    }
    if (ln) {
        /* y = c_hat * wc + bc, c_hat = LN(c~): dL/dc~ -> dc_prev. */
        memcpy(dyc, dc_prev, H * sizeof(REAL));
        m1 = SFX(lnl_dot)(H, dyc, wc) / H;
        m2 = 0;
        for (j = 0; j < H; j++)
            m2 += (double)dyc[j] * wc[j] * cr[j];
        m2 /= H;
        for (j = 0; j < H; j++)
            dc_prev[j] = (REAL)(rstd_c * ((double)dyc[j] * wc[j] - m1 - cr[j] * m2));
    }
    /* c_t = m c_{t-1} + (1 - m) c~: dL/dc~ += (1 - m) dc_t. */
    if (mask_c != NULL) {
        for (j = 0; j < H; j++)
            dc_prev[j] += (1 - mask_c[j]) * dc[j];
    } else if (p_c > 0) {
        for (j = 0; j < H; j++)
            dc_prev[j] += (1 - p_c) * dc[j];
    } else {
        for (j = 0; j < H; j++)
            dc_prev[j] += dc[j];
    }
    /* c~ = f c_{t-1} + i g. */
    for (j = 0; j < H; j++) {
        REAL i = act[j], f = act[H + j], g = act[2 * H + j], dcn = dc_prev[j];
        act[j] = dcn * g * i * (1 - i);
        act[H + j] = dcn * c_prev[j] * f * (1 - f);
        act[2 * H + j] = dcn * i * (1 - g * g);
        dc_prev[j] = dcn * f;
    }
    if (mask_c != NULL) {
        for (j = 0; j < H; j++)
            dc_prev[j] += mask_c[j] * dc[j];
    } else if (p_c > 0) {
        for (j = 0; j < H; j++)
            dc_prev[j] += p_c * dc[j];
    }
    if (ln) {
        /* a = LN(h W_hh^T) * wh + ...: dgh = LN backward of da. */
        memcpy(dgh, gh, G * sizeof(REAL));
        SFX(lnl_norm_backward)(G, act, wh, dgh, rstd_h);
    }
}

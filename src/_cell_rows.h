/* Row functions of the cells, included by _cell_math.h once per REAL type.
 * Every pointer is restrict: callers never pass overlapping rows (inference
 * double-buffers the state). See _cell_math.h for the layout. */

/* LSTM unit j: gates i, f, g, o -> activations; c_new = f*c_prev + i*g;
 * h = o*tanh(c_new). The gates are `stride` apart, the biases `bstride` apart. */
static inline __attribute__((always_inline)) void SFX(lstm_forward_unit)(
    ptrdiff_t j, ptrdiff_t stride, ptrdiff_t bstride, REAL *restrict gates,
    const REAL *restrict bias, const REAL *restrict c_prev, REAL *restrict c_new,
    REAL *restrict h_new, REAL *restrict out)
{
    REAL *restrict gi = gates, *restrict gf = gates + stride;
    REAL *restrict gg = gates + 2 * stride, *restrict go = gates + 3 * stride;
    REAL i = SIGMOID(gi[j] + bias[j]);
    REAL f = SIGMOID(gf[j] + bias[bstride + j]);
    REAL g = TANH(gg[j] + bias[2 * bstride + j]);
    REAL o = SIGMOID(go[j] + bias[3 * bstride + j]);
    REAL c = f * c_prev[j] + i * g;
    REAL h = o * TANH(c);
    gi[j] = i;
    gf[j] = f;
    gg[j] = g;
    go[j] = o;
    c_new[j] = c;
    h_new[j] = h;
    out[j] = h;
}

/* The LSTM step for units 0..n-1 (see lstm_forward_unit). */
static FASTRNN_CLONES void SFX(lstm_forward_row)(
    ptrdiff_t n, ptrdiff_t stride, ptrdiff_t bstride, REAL *restrict gates,
    const REAL *restrict bias, const REAL *restrict c_prev, REAL *restrict c_new,
    REAL *restrict h_new, REAL *restrict out)
{
    for (ptrdiff_t j = 0; j < n; j++)
        SFX(lstm_forward_unit)(j, stride, bstride, gates, bias, c_prev, c_new, h_new, out);
}

/* The LSTM step for n_blocks whole blocks of FR_LSTM_BLOCK_UNITS units in the
 * packed layout (_packed_gemm.h): block b's gates (i, f, g, o, each a run of
 * the block's units) at gates + b * block_stride, its biases at
 * bias + 4 * b * FR_LSTM_BLOCK_UNITS, its state and output units from
 * b * FR_LSTM_BLOCK_UNITS on. The fixed width makes each block whole vectors,
 * without a call, a remainder loop or the constants' setup per block (a call
 * of lstm_forward_row per block of 16 units measured 1.49 ns a unit, against
 * 1.14 for whole rows of 128). */
static FASTRNN_CLONES void SFX(lstm_forward_blocks)(
    ptrdiff_t n_blocks, ptrdiff_t block_stride, REAL *restrict gates,
    const REAL *restrict bias, const REAL *restrict c_prev, REAL *restrict c_new,
    REAL *restrict h_new, REAL *restrict out)
{
    enum { U = FR_LSTM_BLOCK_UNITS };
    for (ptrdiff_t b = 0; b < n_blocks; b++)
        for (ptrdiff_t j = 0; j < U; j++)
            SFX(lstm_forward_unit)(j, U, U, gates + b * block_stride, bias + 4 * b * U,
                                   c_prev + b * U, c_new + b * U, h_new + b * U,
                                   out + b * U);
}

/* GRU: gates (input part, `stride` apart) r, z, n and gates_h (recurrent part,
 * `bstride` apart, like the biases) -> activations
 * r, z, n in gates; gates_h's n block becomes hn = W_hn h + b_hn (needed by
 * backward); h_new = (1 - z) * n + z * h_prev in PyTorch's form. */
static FASTRNN_CLONES void SFX(gru_forward_row)(
    ptrdiff_t n, ptrdiff_t stride, ptrdiff_t bstride, REAL *restrict gates,
    REAL *restrict gates_h, const REAL *restrict bias, const REAL *restrict bias_hn,
    const REAL *restrict h_prev, REAL *restrict h_new, REAL *restrict out)
{
    REAL *restrict gr = gates, *restrict gz = gates + stride, *restrict gn = gates + 2 * stride;
    const REAL *restrict hr = gates_h, *restrict hz = gates_h + bstride;
    REAL *restrict hn_out = gates_h + 2 * bstride;
    for (ptrdiff_t j = 0; j < n; j++) {
        REAL r = SIGMOID(gr[j] + hr[j] + bias[j]);
        REAL z = SIGMOID(gz[j] + hz[j] + bias[bstride + j]);
        REAL hn = hn_out[j] + bias_hn[j];
        REAL nn = TANH(gn[j] + bias[2 * bstride + j] + r * hn);
        REAL h = nn + z * (h_prev[j] - nn);
        gr[j] = r;
        gz[j] = z;
        gn[j] = nn;
        hn_out[j] = hn;
        h_new[j] = h;
        out[j] = h;
    }
}

/* Elman RNN: h = act(gates + bias). */
static FASTRNN_CLONES void SFX(rnn_forward_row)(
    ptrdiff_t n, int relu, const REAL *restrict gates, const REAL *restrict bias,
    REAL *restrict h_new, REAL *restrict out)
{
    if (relu) {
        for (ptrdiff_t j = 0; j < n; j++) {
            REAL a = gates[j] + bias[j];
            REAL h = FR_RELU(a);
            h_new[j] = h;
            out[j] = h;
        }
    } else {
        for (ptrdiff_t j = 0; j < n; j++) {
            REAL h = TANH(gates[j] + bias[j]);
            h_new[j] = h;
            out[j] = h;
        }
    }
}

/* LSTM backward through the elementwise part, unit j. dh_total = dh + grad_out;
 * gates (activations) become pre-activation gradients; dc (in: dL/dc_t) becomes
 * dL/dc_{t-1}; dh_prev gets 0 (the rest of dL/dh_{t-1} goes through W_hh). */
static inline __attribute__((always_inline)) void SFX(lstm_backward_unit)(
    ptrdiff_t j, ptrdiff_t stride, REAL *restrict gates, const REAL *restrict c_prev,
    const REAL *restrict c_new, const REAL *restrict grad_out, const REAL *restrict dh,
    REAL *restrict dh_prev, REAL *restrict dc)
{
    REAL *restrict gi = gates, *restrict gf = gates + stride;
    REAL *restrict gg = gates + 2 * stride, *restrict go = gates + 3 * stride;
    REAL i = gi[j], f = gf[j], g = gg[j], o = go[j];
    REAL dh_t = dh[j] + grad_out[j];
    REAL tc = TANH(c_new[j]);
    REAL dc_t = dc[j] + dh_t * o * (1 - tc * tc);
    gi[j] = dc_t * g * (i * (1 - i));
    gf[j] = dc_t * c_prev[j] * (f * (1 - f));
    gg[j] = dc_t * i * (1 - g * g);
    go[j] = dh_t * tc * (o * (1 - o));
    dc[j] = dc_t * f;
    dh_prev[j] = 0;
}

/* The LSTM backward for units 0..n-1 (see lstm_backward_unit). */
static FASTRNN_CLONES void SFX(lstm_backward_row)(
    ptrdiff_t n, ptrdiff_t stride, REAL *restrict gates, const REAL *restrict c_prev,
    const REAL *restrict c_new, const REAL *restrict grad_out, const REAL *restrict dh,
    REAL *restrict dh_prev, REAL *restrict dc)
{
    for (ptrdiff_t j = 0; j < n; j++)
        SFX(lstm_backward_unit)(j, stride, gates, c_prev, c_new, grad_out, dh, dh_prev, dc);
}

/* The LSTM backward for n_blocks whole blocks of the packed layout, laid out as
 * in lstm_forward_blocks: gates block_stride apart, the rest contiguous. */
static FASTRNN_CLONES void SFX(lstm_backward_blocks)(
    ptrdiff_t n_blocks, ptrdiff_t block_stride, REAL *restrict gates,
    const REAL *restrict c_prev, const REAL *restrict c_new, const REAL *restrict grad_out,
    const REAL *restrict dh, REAL *restrict dh_prev, REAL *restrict dc)
{
    enum { U = FR_LSTM_BLOCK_UNITS };
    for (ptrdiff_t b = 0; b < n_blocks; b++)
        for (ptrdiff_t j = 0; j < U; j++)
            SFX(lstm_backward_unit)(j, U, gates + b * block_stride, c_prev + b * U,
                                    c_new + b * U, grad_out + b * U, dh + b * U,
                                    dh_prev + b * U, dc + b * U);
}

/* GRU backward. gates r, z, n -> input-side gradients (dr, dz, dn); hn (in:
 * W_hn h + b_hn) becomes the recurrent n-part gradient dn * r; dh_prev gets the
 * direct term dh * z. */
static FASTRNN_CLONES void SFX(gru_backward_row)(
    ptrdiff_t n, ptrdiff_t stride, REAL *restrict gates, REAL *restrict hn,
    const REAL *restrict h_prev, const REAL *restrict grad_out, const REAL *restrict dh,
    REAL *restrict dh_prev)
{
    REAL *restrict gr = gates, *restrict gz = gates + stride, *restrict gn = gates + 2 * stride;
    for (ptrdiff_t j = 0; j < n; j++) {
        REAL r = gr[j], z = gz[j], nn = gn[j];
        REAL dh_t = dh[j] + grad_out[j];
        REAL dn = dh_t * (1 - z) * (1 - nn * nn);
        gr[j] = dn * hn[j] * (r * (1 - r));
        gz[j] = dh_t * (h_prev[j] - nn) * (z * (1 - z));
        gn[j] = dn;
        hn[j] = dn * r;
        dh_prev[j] = dh_t * z;
    }
}

/* Elman RNN backward: gates <- (dh + grad_out) * act'(h). */
static FASTRNN_CLONES void SFX(rnn_backward_row)(
    ptrdiff_t n, int relu, REAL *restrict gates, const REAL *restrict h_new,
    const REAL *restrict grad_out, const REAL *restrict dh, REAL *restrict dh_prev)
{
    if (relu) {
        for (ptrdiff_t j = 0; j < n; j++) {
            gates[j] = h_new[j] > 0 ? dh[j] + grad_out[j] : 0;
            dh_prev[j] = 0;
        }
    } else {
        for (ptrdiff_t j = 0; j < n; j++) {
            gates[j] = (dh[j] + grad_out[j]) * (1 - h_new[j] * h_new[j]);
            dh_prev[j] = 0;
        }
    }
}

/* Elementwise work of the time-delay layer, written so that GCC vectorises the
 * loops (restrict pointers, one activation per loop). Uses the activations of
 * _cell_math.h: a vectorisable Cephes-style tanh for float32, libm for float64
 * (exact parity with the reference), compiled for AVX-512 / AVX2 / baseline
 * x86-64 and chosen when the module loads (FASTRNN_CLONES). */
#ifndef FASTRNN_TIMEDELAY_MATH_H
#define FASTRNN_TIMEDELAY_MATH_H

#include "_cell_math.h"

/* Activation codes: the same values as src/_timedelay.pyx and fastrnn.timedelay. */
#define TD_IDENTITY 0
#define TD_TANH 1
#define TD_RELU 2

#define TD_DEFINE(REAL, SFX, TANH)                                                         \
/* v[i] = act(v[i]) for n values, in place. */                                          \
static FASTRNN_CLONES void td_activate_##SFX(ptrdiff_t n, int act, REAL *restrict v)    \
{                                                                                        \
    if (act == TD_TANH) {                                                                \
        for (ptrdiff_t i = 0; i < n; i++)                                                \
            v[i] = TANH(v[i]);                                                           \
    } else if (act == TD_RELU) {                                                         \
        for (ptrdiff_t i = 0; i < n; i++)                                                \
            v[i] = FR_RELU(v[i]);                                                        \
    }                                                                                    \
}                                                                                        \
/* g[i] = grad[i] * act'(pre[i]), from the activation's output y. */                    \
static FASTRNN_CLONES void td_act_grad_##SFX(ptrdiff_t n, int act, const REAL *restrict y, \
                                             const REAL *restrict grad, REAL *restrict g) \
{                                                                                        \
    if (act == TD_TANH) {                                                                \
        for (ptrdiff_t i = 0; i < n; i++)                                                \
            g[i] = grad[i] * (1 - y[i] * y[i]);                                          \
    } else if (act == TD_RELU) {                                                         \
        for (ptrdiff_t i = 0; i < n; i++)                                                \
            g[i] = y[i] > 0 ? grad[i] : 0;                                               \
    } else {                                                                             \
        for (ptrdiff_t i = 0; i < n; i++)                                                \
            g[i] = grad[i];                                                              \
    }                                                                                    \
}

TD_DEFINE(float, f32, fr_tanhf)
TD_DEFINE(double, f64, fr_tanh)

#undef TD_DEFINE

#endif

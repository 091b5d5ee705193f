/* Per-row elementwise work of the layer-normalised / zoneout LSTM (_lnlstm.pyx).
 *
 * Written so that GCC vectorises the loops: restrict pointers, one simple loop
 * per operation, branch-free activations. float32 uses a Cephes-style exp
 * (range reduction by ln 2 and a degree-6 polynomial, about 1 ulp, arguments
 * clamped so the result is never denormal) that vectorises; float64 calls libm,
 * which does not vectorise without -ffast-math but keeps parity with the
 * reference at 1e-9. The row functions are compiled for AVX-512, AVX2+FMA and
 * baseline x86-64, chosen once at load time (GCC target_clones), so the build
 * stays portable. Layer-norm moments are accumulated in double with four
 * independent partial sums (a fixed order: the result does not depend on the
 * thread count).
 *
 * Row layout: the 4H gate values of one row are the blocks i, f, g, o.
 */
#ifndef FASTRNN_LNLSTM_MATH_H
#define FASTRNN_LNLSTM_MATH_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FASTRNN_NO_CLONES)
#define LNL_CLONES __attribute__((unused, target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LNL_CLONES __attribute__((unused))
#endif

static inline float lnl_expf(float x)
{
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    const float round_magic = 12582912.0f; /* 1.5 * 2^23 */
    float n, r, p, scale;
    int32_t bits;
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.3f ? 88.3f : x;
    n = (x * log2e + round_magic) - round_magic;
    r = x - n * ln2_hi;
    r = r - n * ln2_lo;
    p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    bits = ((int32_t)n + 127) << 23;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float lnl_sigmoidf(float x) { return 1.0f / (1.0f + lnl_expf(-x)); }

/* tanh: an odd polynomial near 0 (where 1 - 2/(e^2x + 1) would cancel), the
 * exp form elsewhere. */
static inline float lnl_tanhf(float x)
{
    float z = x * x;
    float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z
                    + 1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
    float large = 1.0f - 2.0f / (lnl_expf(2.0f * x) + 1.0f);
    return (x > -0.625f && x < 0.625f) ? small : large;
}

static inline double lnl_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
static inline double lnl_tanh(double x) { return tanh(x); }

#define REAL float
#define SFX(name) name##_f32
#define SIGMOID lnl_sigmoidf
#define TANH lnl_tanhf
#include "_lnlstm_rows.h"
#undef REAL
#undef SFX
#undef SIGMOID
#undef TANH

#define REAL double
#define SFX(name) name##_f64
#define SIGMOID lnl_sigmoid
#define TANH lnl_tanh
#include "_lnlstm_rows.h"
#undef REAL
#undef SFX
#undef SIGMOID
#undef TANH

#endif

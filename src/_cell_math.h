/* Per-row elementwise work of the recurrent cells, written so that GCC
 * vectorises the loops (restrict pointers, branch-free activations).
 *
 * float32 uses a Cephes-style exp (range reduction by ln 2 and a degree-6
 * polynomial, about 1 ulp) that vectorises; float64 calls libm, which does not
 * vectorise without -ffast-math but keeps exact parity with the reference.
 * Each function is compiled for AVX-512, AVX2+FMA and baseline x86-64, chosen
 * once when the module loads (GCC target_clones), so the wheel stays portable.
 *
 * Layout: a row's gate pre-activations are `gate_count` blocks of `n` values,
 * `stride` apart (stride = hidden_size in PyTorch's layout). Biases use the
 * same layout. Forward functions overwrite the gates with the activations,
 * which is what backward needs.
 */
#ifndef FASTRNN_CELL_MATH_H
#define FASTRNN_CELL_MATH_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FASTRNN_NO_CLONES)
#define FASTRNN_CLONES __attribute__((unused, target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTRNN_CLONES __attribute__((unused))
#endif

/* The argument range of fr_expf, [-87.3, 88.3]. A variable, not a literal, on
 * purpose: with literal bounds GCC knows the result of every clamped lane and
 * splits the vectorised sigmoid into masked halves, each with its own division
 * (measured: 8 divisions for an LSTM unit's 5 activations instead of 5, and the
 * pass 20% slower). Never written. */
__attribute__((visibility("hidden"))) float fr_expf_range[2] = {-87.3f, 88.3f};

/* exp for float32, vectorisable. Arguments are clamped to fr_expf_range so the
 * result stays a normal float (a denormal would slow the recurrence and the
 * activations below do not need it); NaN propagates. */
static inline float fr_expf(float x)
{
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    const float round_magic = 12582912.0f; /* 1.5 * 2^23: adds and subtracts to round */
    float n, r, p;
    int32_t bits;
    float scale;
    const float lo = fr_expf_range[0], hi = fr_expf_range[1];
    x = x < lo ? lo : x;
    x = x > hi ? hi : x;
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

static inline float fr_sigmoidf(float x) { return 1.0f / (1.0f + fr_expf(-x)); }

/* tanh for float32: Cephes' odd polynomial near 0 (where 1 - 2/(e^2x + 1)
 * would cancel), the exp form elsewhere. */
static inline float fr_tanhf(float x)
{
    float z = x * x;
    float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z
                    + 1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
    float large = 1.0f - 2.0f / (fr_expf(2.0f * x) + 1.0f);
    return (x > -0.625f && x < 0.625f) ? small : large;
}

static inline double fr_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
static inline double fr_tanh(double x) { return tanh(x); }

/* Units per block of the packed LSTM layout (fastrnn._packed.units_per_block):
 * one 64-column tile holds the 4 gates of 16 units. */
#define FR_LSTM_BLOCK_UNITS 16

/* relu that keeps NaN (x > 0 is false for NaN). */
#define FR_RELU(x) (((x) > 0 || (x) != (x)) ? (x) : 0)

/* Instantiate the row functions for float (suffix f32) and double (f64). */
#define FR_ROWS_FILE "_cell_rows.h"
#include "_instantiate_rows.h"

#endif

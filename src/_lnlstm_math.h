/* Per-row elementwise work of the layer-normalised / zoneout LSTM (_lnlstm.pyx).
 *
 * Written so that GCC vectorises the loops: restrict pointers, one simple loop
 * per operation, branch-free activations. The activations are those of
 * _cell_math.h: float32 uses a Cephes-style exp (range reduction by ln 2 and a
 * degree-6 polynomial, about 1 ulp, arguments clamped so the result is never
 * denormal) that vectorises; float64 calls libm, which does not vectorise
 * without -ffast-math but keeps parity with the reference at 1e-9. The row
 * functions are compiled for AVX-512, AVX2+FMA and baseline x86-64, chosen once
 * at load time (FASTRNN_CLONES: GCC target_clones), so the build stays
 * portable. Layer-norm moments are accumulated in double with four independent
 * partial sums (a fixed order: the result does not depend on the thread
 * count).
 *
 * Row layout: the 4H gate values of one row are the blocks i, f, g, o.
 */
#ifndef FASTRNN_LNLSTM_MATH_H
#define FASTRNN_LNLSTM_MATH_H

#include "_cell_math.h"

#define REAL float
#define SFX(name) name##_f32
#define SIGMOID fr_sigmoidf
#define TANH fr_tanhf
#include "_lnlstm_rows.h"
#undef REAL
#undef SFX
#undef SIGMOID
#undef TANH

#define REAL double
#define SFX(name) name##_f64
#define SIGMOID fr_sigmoid
#define TANH fr_tanh
#include "_lnlstm_rows.h"
#undef REAL
#undef SFX
#undef SIGMOID
#undef TANH

#endif

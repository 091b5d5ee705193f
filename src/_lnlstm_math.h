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

#define FR_ROWS_FILE "_lnlstm_rows.h"
#include "_instantiate_rows.h"

#endif

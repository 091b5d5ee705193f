/* One variant of the packed GEMM, included by _packed_gemm.h with:
 * FR_TARGET (function attribute), FR_V (vector type), FR_W (floats per vector),
 * FR_NV (vectors per tile row), FR_MR (rows per tile), FR_SFX (name suffix). */

typedef FR_V FR_SFX(fr_vec);

/* acc[r][v] (+)= sum_k A[r, k] * P[k, v*W : (v+1)*W] for r < mr (a compile-time
 * constant after inlining, so the accumulators live in registers). */
static inline __attribute__((always_inline)) FR_TARGET void FR_SFX(fr_tile)(
    const int mr, ptrdiff_t K, const float *restrict A, ptrdiff_t lda,
    const float *restrict P, ptrdiff_t ldp, float *restrict C, ptrdiff_t ldc, int accumulate)
{
    FR_SFX(fr_vec) acc[FR_MR][FR_NV];
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 8
        for (int v = 0; v < FR_NV; v++) {
            if (accumulate)
                memcpy(&acc[r][v], C + r * ldc + v * FR_W, sizeof(FR_SFX(fr_vec)));
            else
                acc[r][v] = (FR_SFX(fr_vec)){0};
        }
    for (ptrdiff_t k = 0; k < K; k++) {
        FR_SFX(fr_vec) b[FR_NV];
#pragma GCC unroll 8
        for (int v = 0; v < FR_NV; v++)
            memcpy(&b[v], P + k * ldp + v * FR_W, sizeof(FR_SFX(fr_vec)));
#pragma GCC unroll 8
        for (int r = 0; r < mr; r++) {
            FR_SFX(fr_vec) a = (FR_SFX(fr_vec)){0} + A[r * lda + k];
#pragma GCC unroll 8
            for (int v = 0; v < FR_NV; v++)
                acc[r][v] += a * b[v];
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 8
        for (int v = 0; v < FR_NV; v++)
            memcpy(C + r * ldc + v * FR_W, &acc[r][v], sizeof(FR_SFX(fr_vec)));
}

static FR_TARGET void FR_SFX(fr_gemm)(ptrdiff_t rows, ptrdiff_t K, const float *A, ptrdiff_t lda,
                                      const float *P, ptrdiff_t block_cols, ptrdiff_t n_blocks,
                                      float *C, ptrdiff_t ldc, int accumulate)
{
    /* A slice of the packed weights (k_chunk x tile columns) stays in L1
     * (about 32 KB) while every row tile of A passes over it. */
    const ptrdiff_t tile_cols = FR_NV * FR_W;
    const ptrdiff_t k_chunk = 8192 / tile_cols;
    for (ptrdiff_t blk = 0; blk < n_blocks; blk++) {
        const float *Pb = P + blk * K * block_cols;
        float *Cb = C + blk * block_cols;
        for (ptrdiff_t c0 = 0; c0 < block_cols; c0 += tile_cols) {
            for (ptrdiff_t k0 = 0; k0 < K; k0 += k_chunk) {
                ptrdiff_t kc = K - k0 < k_chunk ? K - k0 : k_chunk;
                int acc = accumulate || k0 > 0;
                const float *Pt = Pb + k0 * block_cols + c0;
                ptrdiff_t r0 = 0;
                for (; r0 + FR_MR <= rows; r0 += FR_MR)
                    FR_SFX(fr_tile)(FR_MR, kc, A + r0 * lda + k0, lda, Pt, block_cols,
                                    Cb + r0 * ldc + c0, ldc, acc);
                switch (rows - r0) {
#if FR_MR > 5
                case 5: FR_SFX(fr_tile)(5, kc, A + r0 * lda + k0, lda, Pt, block_cols, Cb + r0 * ldc + c0, ldc, acc); break;
#endif
#if FR_MR > 4
                case 4: FR_SFX(fr_tile)(4, kc, A + r0 * lda + k0, lda, Pt, block_cols, Cb + r0 * ldc + c0, ldc, acc); break;
#endif
                case 3: FR_SFX(fr_tile)(3, kc, A + r0 * lda + k0, lda, Pt, block_cols, Cb + r0 * ldc + c0, ldc, acc); break;
                case 2: FR_SFX(fr_tile)(2, kc, A + r0 * lda + k0, lda, Pt, block_cols, Cb + r0 * ldc + c0, ldc, acc); break;
                case 1: FR_SFX(fr_tile)(1, kc, A + r0 * lda + k0, lda, Pt, block_cols, Cb + r0 * ldc + c0, ldc, acc); break;
                default: break;
                }
            }
        }
    }
}

#undef FR_TARGET
#undef FR_V
#undef FR_W
#undef FR_NV
#undef FR_MR
#undef FR_SFX

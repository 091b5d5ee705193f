/* One variant of the packed GEMM, included by _packed_gemm.h with:
 * FR_TARGET (function attribute), FR_V (vector type), FR_W (floats per vector),
 * FR_NV (vectors per tile row), FR_MR (rows per tile), FR_SFX (name suffix). */

typedef FR_V FR_SFX(fr_vec);

/* acc[r][v] (+)= sum_k A[r, k] * P[k, v*W : (v+1)*W] for r < mr and v < nv
 * (compile-time constants after inlining, so the accumulators live in
 * registers; nv < FR_NV only at a right edge, see fr_tile_edge). A's k runs
 * in segments of seg_k columns, seg_stride apart (one segment when seg_k >= K):
 * a k-blocked A is summed over several of its blocks without storing C. */
static inline __attribute__((always_inline)) FR_TARGET void FR_SFX(fr_tile)(
    const int mr, const int nv, ptrdiff_t K, const float *restrict A, ptrdiff_t lda,
    ptrdiff_t seg_k, ptrdiff_t seg_stride, const float *restrict P, ptrdiff_t ldp,
    float *restrict C, ptrdiff_t ldc, int accumulate)
{
    FR_SFX(fr_vec) acc[FR_MR][FR_NV];
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++) {
            if (accumulate)
                memcpy(&acc[r][v], C + r * ldc + v * FR_W, sizeof(FR_SFX(fr_vec)));
            else
                acc[r][v] = (FR_SFX(fr_vec)){0};
        }
    for (ptrdiff_t k0 = 0; k0 < K; k0 += seg_k, A += seg_stride, P += seg_k * ldp) {
        const ptrdiff_t kn = K - k0 < seg_k ? K - k0 : seg_k;
        for (ptrdiff_t k = 0; k < kn; k++) {
            FR_SFX(fr_vec) b[FR_NV];
#pragma GCC unroll 8
            for (int v = 0; v < nv; v++)
                memcpy(&b[v], P + k * ldp + v * FR_W, sizeof(FR_SFX(fr_vec)));
#pragma GCC unroll 8
            for (int r = 0; r < mr; r++) {
                /* x - 0 is x for every x (x + 0 is not, for -0), so GCC
                 * folds it and broadcasts straight from memory. */
                FR_SFX(fr_vec) a = A[r * lda + k] - (FR_SFX(fr_vec)){0};
#pragma GCC unroll 8
                for (int v = 0; v < nv; v++)
                    acc[r][v] += a * b[v];
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++)
            memcpy(C + r * ldc + v * FR_W, &acc[r][v], sizeof(FR_SFX(fr_vec)));
}

/* A row tile whose column tile runs past the valid columns: computed in a
 * local buffer, and only the valid columns are read from and written to C;
 * only as many vectors of columns as hold the valid ones are computed (an
 * edge of 10 columns, as for hidden_size 650, costs a quarter of a tile).
 * Out of line: it is the rare edge, and keeping it apart keeps the hot tile
 * loop small. */
static __attribute__((noinline)) FR_TARGET void FR_SFX(fr_tile_edge)(
    int mr, ptrdiff_t kc, const float *A, ptrdiff_t lda, ptrdiff_t seg_k, ptrdiff_t seg_stride,
    const float *Pt, ptrdiff_t ldp, float *C, ptrdiff_t ldc, ptrdiff_t valid, int acc)
{
    enum { TILE = FR_NV * FR_W };
    float tmp[FR_MR * TILE];
    /* Vectors of columns to compute: 1, 2, 3 or all FR_NV (a constant per case
     * below, so the accumulators stay in registers). */
    const int nv = valid <= FR_W ? 1 : valid <= 2 * FR_W ? 2
                   : (FR_NV > 3 && valid <= 3 * FR_W) ? 3 : FR_NV;
    for (int r = 0; r < mr; r++)
        for (ptrdiff_t c = 0; c < TILE; c++)
            tmp[r * TILE + c] = (acc && c < valid) ? C[r * ldc + c] : 0.0f;
#define FR_EDGE_ROWS(MR_)                                                                   \
    do {                                                                                   \
        if (nv == 1)                                                                       \
            FR_SFX(fr_tile)(MR_, 1, kc, A, lda, seg_k, seg_stride, Pt, ldp, tmp, TILE, 1); \
        else if (nv == 2)                                                                  \
            FR_SFX(fr_tile)(MR_, 2, kc, A, lda, seg_k, seg_stride, Pt, ldp, tmp, TILE, 1); \
        else if (FR_NV > 3 && nv == 3)                                                     \
            FR_SFX(fr_tile)(MR_, 3, kc, A, lda, seg_k, seg_stride, Pt, ldp, tmp, TILE, 1); \
        else                                                                               \
            FR_SFX(fr_tile)(MR_, FR_NV, kc, A, lda, seg_k, seg_stride, Pt, ldp, tmp, TILE, \
                            1);                                                            \
    } while (0)
    switch (mr) {
#if FR_MR > 5
    case 6: FR_EDGE_ROWS(6); break;
#endif
#if FR_MR > 4
    case 5: FR_EDGE_ROWS(5); break;
#endif
    case 4: FR_EDGE_ROWS(4); break;
    case 3: FR_EDGE_ROWS(3); break;
    case 2: FR_EDGE_ROWS(2); break;
    default: FR_EDGE_ROWS(1); break;
    }
#undef FR_EDGE_ROWS
    for (int r = 0; r < mr; r++)
        for (ptrdiff_t c = 0; c < valid; c++)
            C[r * ldc + c] = tmp[r * TILE + c];
}

#define FR_TILE_ANY(MR_, ...)                                                     \
    do {                                                                          \
        if (valid >= FR_NV * FR_W) FR_SFX(fr_tile)(MR_, FR_NV, __VA_ARGS__, acc); \
        else FR_SFX(fr_tile_edge)(MR_, __VA_ARGS__, valid, acc);                   \
    } while (0)

static FR_TARGET void FR_SFX(fr_gemm)(const fr_gemm_args *g)
{
    /* Locals, so the compiler need not reload them after each store to C. */
    const ptrdiff_t rows = g->rows, K = g->K, lda = g->lda, ldc = g->ldc;
    const ptrdiff_t a_block_k = g->a_block_k, a_block_stride = g->a_block_stride;
    const ptrdiff_t bc = g->block_cols, n_blocks = g->n_blocks, n_cols = g->n_cols;
    const ptrdiff_t c_block_stride = g->c_block_stride;
    const ptrdiff_t groups = g->groups, a_group_stride = g->a_group_stride;
    const ptrdiff_t c_group_stride = g->c_group_stride;
    const float *A = g->A, *P = g->P;
    float *C = g->C;
    const int accumulate = g->accumulate;
    /* A slice of the packed weights (k_chunk x tile columns) stays in L1
     * (about 32 KB) while every row tile of A passes over it. A k-blocked A
     * gets chunks of whole blocks, which the tile walks as segments. */
    const ptrdiff_t tile_cols = FR_NV * FR_W;
    ptrdiff_t k_chunk = 8192 / tile_cols, seg_k = k_chunk, seg_stride = 0;
    if (a_block_k > 0) {
        seg_k = a_block_k;
        seg_stride = a_block_stride;
        k_chunk = k_chunk > a_block_k ? k_chunk / a_block_k * a_block_k : a_block_k;
    }
    for (ptrdiff_t bi = 0; bi < n_blocks; bi++) {
        const ptrdiff_t blk = g->reverse_blocks ? n_blocks - 1 - bi : bi;
        const float *Pb = P + blk * K * bc;
        float *Cb = C + blk * c_block_stride;
        for (ptrdiff_t c0 = 0; c0 < bc; c0 += tile_cols) {
            ptrdiff_t valid = n_cols - (blk * bc + c0);
            if (valid <= 0)
                break;
            if (blk >= n_blocks - g->partial_blocks && valid > g->partial_cols - c0)
                valid = g->partial_cols - c0;
            if (valid <= 0)
                break;
            for (ptrdiff_t k0 = 0; k0 < K; k0 += k_chunk) {
                const ptrdiff_t kc = K - k0 < k_chunk ? K - k0 : k_chunk;
                const int acc = accumulate || k0 > 0;
                const float *Pt = Pb + k0 * bc + c0;
                const float *Ak = a_block_k > 0 ? A + (k0 / a_block_k) * a_block_stride : A + k0;
                /* Full row tiles, but the last two share the remainder (8 rows:
                 * 4 + 4, not 6 + 2): a short tile does as many loads as a full one
                 * for fewer FMAs. */
                ptrdiff_t mr;
                for (ptrdiff_t gi = 0; gi < groups; gi++)
                for (ptrdiff_t r0 = 0; r0 < rows; r0 += mr) {
                    const ptrdiff_t left = rows - r0;
                    mr = (left >= 2 * FR_MR || left <= FR_MR) ? (left < FR_MR ? left : FR_MR)
                                                               : (left + 1) / 2;
                    const float *Ar = Ak + gi * a_group_stride + r0 * lda;
                    float *Cr = Cb + gi * c_group_stride + r0 * ldc + c0;
                    switch (mr) {
#if FR_MR > 5
                    case 6: FR_TILE_ANY(6, kc, Ar, lda, seg_k, seg_stride, Pt, bc, Cr, ldc); break;
#endif
#if FR_MR > 4
                    case 5: FR_TILE_ANY(5, kc, Ar, lda, seg_k, seg_stride, Pt, bc, Cr, ldc); break;
#endif
                    case 4: FR_TILE_ANY(4, kc, Ar, lda, seg_k, seg_stride, Pt, bc, Cr, ldc); break;
                    case 3: FR_TILE_ANY(3, kc, Ar, lda, seg_k, seg_stride, Pt, bc, Cr, ldc); break;
                    case 2: FR_TILE_ANY(2, kc, Ar, lda, seg_k, seg_stride, Pt, bc, Cr, ldc); break;
                    case 1: FR_TILE_ANY(1, kc, Ar, lda, seg_k, seg_stride, Pt, bc, Cr, ldc); break;
                    default: break;
                    }
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
#undef FR_TILE_ANY

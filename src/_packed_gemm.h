/* Register-tiled float32 GEMM on weights packed once per layer.
 *
 * Why not BLAS here: SciPy's OpenBLAS packs both operands on every call, which
 * dominates the per-step recurrent product at small batch, and it may be
 * restricted to an older kernel (OPENBLAS_CORETYPE). These kernels read the
 * weights in the packed layout below, so a thread keeps its slice of W_hh in
 * its own cache across steps, and the gates of one hidden unit land next to
 * each other for the fused elementwise pass.
 *
 * Packed layout: hidden units are grouped in blocks of `units` (U); a block
 * holds the G gates of its units, gate-major (columns g*U + j), so it is
 * G*U = `block_cols` columns wide (a multiple of 64). Block b stores its
 * weights k-major: P[b][k][c] = W[g*H + b*U + j][k] for c = g*U + j (zero for
 * units past hidden_size). The product C[r, b*block_cols + c] (+)= sum_k
 * A[r, k] * P[b][k][c] is the row-major `A @ W.T` restricted to those blocks,
 * in the packed column order.
 *
 * Three variants: AVX-512, AVX2+FMA and baseline x86-64 (SSE2), written once
 * with GCC vector extensions (_packed_tile.h) and compiled per target; one is
 * chosen when the module loads (fr_select_isa), and tests can force each.
 */
#ifndef FASTRNN_PACKED_GEMM_H
#define FASTRNN_PACKED_GEMM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* C[r, b*block_cols + c] (+)= sum_k A[r, k] * P[b][k][c] for rows r < rows
 * (of each of `groups` groups of rows: group g's A at A + g*a_group_stride and
 * C at C + g*c_group_stride; a slice of P stays in L1 across all of them: the
 * input projection of a chunk of steps for one thread's batch rows, which are
 * `rows` rows of each step, streams W_ih once, not once a step),
 * blocks b < n_blocks, and only the first n_cols columns in total (the rest
 * of the last block is padding and is not stored).
 * A is row-major (row r at A + r*lda), or, when a_block_k > 0, k-blocked:
 * its columns j*a_block_k .. (j+1)*a_block_k-1 are at A + j*a_block_stride
 * (rows lda apart). Block b's columns of C start at C + b*c_block_stride
 * (rows ldc apart): block_cols for a row-major C. With reverse_blocks the
 * blocks run from the last to the first: a recurrence that alternates the order
 * from step to step starts each step on the weights the previous step read last,
 * which are still in cache when the weights are larger than it.
 * The last partial_blocks blocks have only their first partial_cols columns
 * computed and stored (0: none so cut): the tiles of a GRU's or an RNN's last
 * unit block, which hold hidden_size % 64 units each (64 is the unit block),
 * need not pay for their padding (at hidden_size 200 a quarter of the product). */
typedef struct {
    ptrdiff_t rows, K;
    const float *A;
    ptrdiff_t lda, a_block_k, a_block_stride;
    const float *P;
    ptrdiff_t block_cols, n_blocks;
    float *C;
    ptrdiff_t ldc, c_block_stride, n_cols;
    int accumulate, reverse_blocks;
    ptrdiff_t partial_blocks, partial_cols;
    ptrdiff_t groups, a_group_stride, c_group_stride;
} fr_gemm_args;

typedef void (*fr_gemm_fn)(const fr_gemm_args *args);

#define FR_ISA_GENERIC 0
#define FR_ISA_AVX2 1
#define FR_ISA_AVX512 2

#if defined(__GNUC__) && defined(__x86_64__)

/* AVX-512: 6 rows x 64 columns of accumulators (24 zmm registers). */
#define FR_TARGET __attribute__((target("avx512f,avx512vl,avx2,fma")))
#define FR_V float __attribute__((vector_size(64)))
#define FR_W 16
#define FR_NV 4
#define FR_MR 6
#define FR_SFX(name) name##_avx512
#include "_packed_tile.h"

/* AVX2+FMA: 6 rows x 16 columns (12 ymm registers), the classic Haswell tile. */
#define FR_TARGET __attribute__((target("avx2,fma")))
#define FR_V float __attribute__((vector_size(32)))
#define FR_W 8
#define FR_NV 2
#define FR_MR 6
#define FR_SFX(name) name##_avx2
#include "_packed_tile.h"

#endif

/* Baseline: 4 rows x 8 columns of SSE2 (or whatever the compiler targets). */
#define FR_TARGET
#define FR_V float __attribute__((vector_size(16)))
#define FR_W 4
#define FR_NV 2
#define FR_MR 4
#define FR_SFX(name) name##_generic
#include "_packed_tile.h"

static fr_gemm_fn fr_packed_gemm = fr_gemm_generic;
static int fr_isa = FR_ISA_GENERIC;

static int fr_isa_supported(int isa)
{
#if defined(__GNUC__) && defined(__x86_64__)
    __builtin_cpu_init();
    if (isa == FR_ISA_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
               && __builtin_cpu_supports("fma");
    if (isa == FR_ISA_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return isa == FR_ISA_GENERIC;
}

/* Select a variant; -1 picks the best the CPU supports. Returns the variant
 * in use, or -1 if the requested one is not supported (nothing changes). */
static int fr_select_isa(int isa)
{
    if (isa < 0) {
        isa = fr_isa_supported(FR_ISA_AVX512) ? FR_ISA_AVX512
              : fr_isa_supported(FR_ISA_AVX2) ? FR_ISA_AVX2 : FR_ISA_GENERIC;
    }
    if (!fr_isa_supported(isa))
        return -1;
#if defined(__GNUC__) && defined(__x86_64__)
    if (isa == FR_ISA_AVX512)
        fr_packed_gemm = fr_gemm_avx512;
    else if (isa == FR_ISA_AVX2)
        fr_packed_gemm = fr_gemm_avx2;
    else
#endif
        fr_packed_gemm = fr_gemm_generic;
    fr_isa = isa;
    return isa;
}

static int fr_current_isa(void) { return fr_isa; }

static void fr_gemm_general(const fr_gemm_args *args) { fr_packed_gemm(args); }

/* dst[c, r] = src[r, c] for a rows x cols block, in 16 x 16 tiles so both
 * sides are read and written a cache line at a time (NumPy's strided copy of a
 * transpose is several times slower). */
static void fr_transpose_scalar(ptrdiff_t rows, ptrdiff_t cols, const float *src,
                                ptrdiff_t ld_src, float *dst, ptrdiff_t ld_dst)
{
    for (ptrdiff_t r0 = 0; r0 < rows; r0 += 16)
        for (ptrdiff_t c0 = 0; c0 < cols; c0 += 16) {
            ptrdiff_t r1 = r0 + 16 < rows ? r0 + 16 : rows;
            ptrdiff_t c1 = c0 + 16 < cols ? c0 + 16 : cols;
            for (ptrdiff_t c = c0; c < c1; c++)
                for (ptrdiff_t r = r0; r < r1; r++)
                    dst[c * ld_dst + r] = src[r * ld_src + c];
        }
}

#if defined(__GNUC__) && defined(__x86_64__) && (__GNUC__ >= 12 || defined(__clang__))
#define FR_HAVE_TRANSPOSE8 1
typedef float fr_v8 __attribute__((vector_size(32)));

/* An 8 x 8 block in registers: three rounds of shuffles (pairs of rows, pairs
 * of pairs, halves), eight 32-byte loads and stores. The loops are unrolled
 * by pragma: left to GCC, the rows went through the stack, each 32-byte row
 * stored as two 16-byte halves and loaded whole (a failed store forwarding),
 * and the transposes ran 1.5-2.5x slower (a C test packing W (2600 x 650):
 * 312-510 -> 205 us). */
static inline __attribute__((always_inline, target("avx2,fma"))) void fr_transpose8x8(
    const float *src, ptrdiff_t ld_src, float *dst, ptrdiff_t ld_dst)
{
    fr_v8 r[8], t[8], u[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        memcpy(&r[i], src + i * ld_src, sizeof(fr_v8));
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        const fr_v8 a = r[2 * i], b = r[2 * i + 1];
        t[2 * i] = __builtin_shufflevector(a, b, 0, 8, 1, 9, 4, 12, 5, 13);
        t[2 * i + 1] = __builtin_shufflevector(a, b, 2, 10, 3, 11, 6, 14, 7, 15);
    }
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) {
        const fr_v8 a = t[4 * i], b = t[4 * i + 1], c = t[4 * i + 2], d = t[4 * i + 3];
        u[4 * i] = __builtin_shufflevector(a, c, 0, 1, 8, 9, 4, 5, 12, 13);
        u[4 * i + 1] = __builtin_shufflevector(a, c, 2, 3, 10, 11, 6, 7, 14, 15);
        u[4 * i + 2] = __builtin_shufflevector(b, d, 0, 1, 8, 9, 4, 5, 12, 13);
        u[4 * i + 3] = __builtin_shufflevector(b, d, 2, 3, 10, 11, 6, 7, 14, 15);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        fr_v8 lo = __builtin_shufflevector(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        fr_v8 hi = __builtin_shufflevector(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
        memcpy(dst + i * ld_dst, &lo, sizeof(fr_v8));
        memcpy(dst + (i + 4) * ld_dst, &hi, sizeof(fr_v8));
    }
}

/* fr_transpose_scalar with AVX2 8 x 8 blocks (2-3x faster on this code's shapes),
 * walked in 32 x 32 tiles; the edges that are not whole blocks stay scalar. */
static __attribute__((target("avx2,fma"))) void fr_transpose_avx2(
    ptrdiff_t rows, ptrdiff_t cols, const float *src, ptrdiff_t ld_src, float *dst,
    ptrdiff_t ld_dst)
{
    const ptrdiff_t rows8 = rows & ~(ptrdiff_t)7, cols8 = cols & ~(ptrdiff_t)7;
    for (ptrdiff_t r0 = 0; r0 < rows8; r0 += 32)
        for (ptrdiff_t c0 = 0; c0 < cols8; c0 += 32)
            for (ptrdiff_t r = r0; r < r0 + 32 && r < rows8; r += 8)
                for (ptrdiff_t c = c0; c < c0 + 32 && c < cols8; c += 8)
                    fr_transpose8x8(src + r * ld_src + c, ld_src, dst + c * ld_dst + r, ld_dst);
    if (cols8 < cols)
        fr_transpose_scalar(rows8, cols - cols8, src + cols8, ld_src, dst + cols8 * ld_dst,
                            ld_dst);
    if (rows8 < rows)
        fr_transpose_scalar(rows - rows8, cols, src + rows8 * ld_src, ld_src, dst + rows8,
                            ld_dst);
}
#endif

static void fr_transpose(ptrdiff_t rows, ptrdiff_t cols, const float *src, ptrdiff_t ld_src,
                         float *dst, ptrdiff_t ld_dst)
{
#ifdef FR_HAVE_TRANSPOSE8
    if (fr_isa >= FR_ISA_AVX2) {
        fr_transpose_avx2(rows, cols, src, ld_src, dst, ld_dst);
        return;
    }
#endif
    fr_transpose_scalar(rows, cols, src, ld_src, dst, ld_dst);
}

/* dst[dst_rows[c], k] += src[k, c] for k < K and columns c in [c0, c1) whose
 * dst_rows[c] >= 0 (padding columns are skipped): a weight gradient computed
 * as (K, packed columns) added to the (rows, K) gradient in PyTorch's row
 * order, in one pass (a transpose into a temporary and a gather-add moved the
 * data three times). */
static void fr_transpose_add_rows_scalar(ptrdiff_t K, ptrdiff_t c0, ptrdiff_t c1,
                                         const float *src, ptrdiff_t ld_src,
                                         const int64_t *dst_rows, float *dst, ptrdiff_t ld_dst)
{
    for (ptrdiff_t c = c0; c < c1; c++) {
        if (dst_rows[c] < 0)
            continue;
        float *d = dst + dst_rows[c] * ld_dst;
        for (ptrdiff_t k = 0; k < K; k++)
            d[k] += src[k * ld_src + c];
    }
}

#ifdef FR_HAVE_TRANSPOSE8
/* Sixteen columns (destination rows) at a time, each destination row written
 * in order along k. Measured on 650 x 2624: 1.9 ms against 4.1 ms for the
 * transpose and the gather-add; 32 x 32 tiles of 8 x 8 blocks were slower.
 * Sixteen use each cache line of src whole in one visit; eight left its other
 * half to the next visit, by when the line had gone when src's rows are 2 or
 * 4 KB apart (they fall in one L1 set). In a C test, 8 -> 16 columns:
 * 128 x 512 10.0-10.2 -> 6.1 us, 256 x 1024 56-100 -> 32-60, 650 x 2624
 * 189-243 -> 166-202. The columns past the last whole sixteen go the scalar
 * way. */
static __attribute__((target("avx2,fma"))) void fr_transpose_add_rows_avx2(
    ptrdiff_t K, ptrdiff_t c0, ptrdiff_t c1, const float *src, ptrdiff_t ld_src,
    const int64_t *dst_rows, float *dst, ptrdiff_t ld_dst)
{
    const ptrdiff_t K8 = K & ~(ptrdiff_t)7;
    ptrdiff_t c = c0;
    for (; c + 16 <= c1; c += 16) {
        float *d[16];
        for (int i = 0; i < 16; i++)
            d[i] = dst_rows[c + i] >= 0 ? dst + dst_rows[c + i] * ld_dst : NULL;
        for (ptrdiff_t k = 0; k < K8; k += 8) {
            float block[16 * 8];
            fr_transpose8x8(src + k * ld_src + c, ld_src, block, 8);
            fr_transpose8x8(src + k * ld_src + c + 8, ld_src, block + 64, 8);
            for (int i = 0; i < 16; i++) {
                if (d[i] == NULL)
                    continue;
                fr_v8 acc, add;
                memcpy(&acc, d[i] + k, sizeof acc);
                memcpy(&add, block + 8 * i, sizeof add);
                acc += add;
                memcpy(d[i] + k, &acc, sizeof acc);
            }
        }
        for (int i = 0; i < 16; i++)
            if (d[i] != NULL)
                for (ptrdiff_t k = K8; k < K; k++)
                    d[i][k] += src[k * ld_src + c + i];
    }
    fr_transpose_add_rows_scalar(K, c, c1, src, ld_src, dst_rows, dst, ld_dst);
}
#endif

static void fr_transpose_add_rows(ptrdiff_t K, ptrdiff_t c0, ptrdiff_t c1, const float *src,
                                  ptrdiff_t ld_src, const int64_t *dst_rows, float *dst,
                                  ptrdiff_t ld_dst)
{
#ifdef FR_HAVE_TRANSPOSE8
    if (fr_isa >= FR_ISA_AVX2) {
        fr_transpose_add_rows_avx2(K, c0, c1, src, ld_src, dst_rows, dst, ld_dst);
        return;
    }
#endif
    fr_transpose_add_rows_scalar(K, c0, c1, src, ld_src, dst_rows, dst, ld_dst);
}

/* Flush-to-zero and denormals-are-zero for the calling thread, for the length of
 * a kernel, when fr_flush_denormals is set (fastrnn.set_flush_denormals): a
 * recurrence decaying through denormal values runs 10x or more slower on CPUs
 * that handle them with microcode assists. Each kernel thread saves and
 * restores its own MXCSR, so the caller's floating-point state is unchanged.
 * Off by default: on the AMD Zen 5 we measure on, denormals cost 4% while
 * setting MXCSR in every call halved the speed of the 2-thread small-batch
 * kernels (one barrier per step). */
static int fr_flush_denormals = 0;

#if defined(__x86_64__) || defined(__SSE__)
#include <xmmintrin.h>
static inline unsigned int fr_ftz_enter(void)
{
    unsigned int old = _mm_getcsr();
    if (fr_flush_denormals)
        _mm_setcsr(old | 0x8040u); /* FTZ (bit 15) | DAZ (bit 6) */
    return old;
}
static inline void fr_ftz_leave(unsigned int old)
{
    if (fr_flush_denormals)
        _mm_setcsr(old);
}
#else
static inline unsigned int fr_ftz_enter(void) { return 0; }
static inline void fr_ftz_leave(unsigned int old) { (void)old; }
#endif

/* dst[0:n] = src[0:n] and dst[n:64] = 0 (0 <= n <= 64), dst 64-byte aligned,
 * with non-temporal stores: a block of the weights packed for the backward,
 * which reads it only after the whole forward, by when it would have left the
 * caches anyway; plain stores would first read every line they write (the
 * packing of a 2-layer H=650 model moves 81 MB a training step). Masked loads
 * never read past src + n. Call fr_store_fence before other threads read dst. */
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
static __attribute__((target("avx512f"))) void fr_stream_block64_avx512(
    float *dst, const float *src, ptrdiff_t n)
{
    for (int v = 0; v < 4; v++) {
        const ptrdiff_t left = n - 16 * v;
        const __mmask16 mask = left >= 16 ? 0xFFFF : left <= 0 ? 0 : (1u << left) - 1;
        _mm512_stream_ps(dst + 16 * v, _mm512_maskz_loadu_ps(mask, src + 16 * v));
    }
}

static __attribute__((target("avx2"))) void fr_stream_block64_avx2(float *dst, const float *src,
                                                                   ptrdiff_t n)
{
    for (int v = 0; v < 8; v++) {
        const ptrdiff_t left = n - 8 * v;
        __m256 x = _mm256_setzero_ps();
        if (left >= 8) {
            x = _mm256_loadu_ps(src + 8 * v);
        } else if (left > 0) {
            const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            x = _mm256_maskload_ps(src + 8 * v,
                                   _mm256_cmpgt_epi32(_mm256_set1_epi32((int)left), lanes));
        }
        _mm256_stream_ps(dst + 8 * v, x);
    }
}
#endif

static void fr_stream_block64(float *dst, const float *src, ptrdiff_t n)
{
#if defined(__GNUC__) && defined(__x86_64__)
    if (fr_isa == FR_ISA_AVX512) {
        fr_stream_block64_avx512(dst, src, n);
        return;
    }
    if (fr_isa == FR_ISA_AVX2) {
        fr_stream_block64_avx2(dst, src, n);
        return;
    }
#endif
    if (n > 0)
        memcpy(dst, src, (size_t)n * sizeof(float));
    if (n < 64)
        memset(dst + n, 0, (size_t)(64 - n) * sizeof(float));
}

/* Orders this thread's non-temporal stores before what follows. */
static inline void fr_store_fence(void)
{
#if defined(__x86_64__) || defined(__SSE__)
    _mm_sfence();
#endif
}

/* Prefetch nbytes from p into this core's caches, a line at a time: a state
 * another core just wrote arrives in parallel rather than miss by miss. */
static inline void fr_prefetch(const void *p, size_t nbytes)
{
    for (size_t off = 0; off < nbytes; off += 64)
        __builtin_prefetch((const char *)p + off, 0, 3);
}

static int fr_omp_num_threads(void)
{
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

static int fr_omp_thread_num(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

#endif

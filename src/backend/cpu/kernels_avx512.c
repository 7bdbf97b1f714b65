/* AVX-512 kernels (avx512f/bw/vl). F16 weights are widened with vcvtph2ps
 * and BF16 weights by a 16-bit shift, both in registers, so a weight matrix is
 * streamed from memory once in its stored dtype whatever the batch. */
#include <immintrin.h>

#include "backend/cpu/cpu_kernels.h"

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define AI static inline __attribute__((always_inline)) TGT

enum { TILE_ROWS = 4, TILE_TOKS = 6 };

/* 16 weights starting at element idx, widened to fp32. */
AI __m512 load_w(cv_dtype wt, const void *w, int64_t idx)
{
    if (wt == CV_DTYPE_F32)
        return _mm512_loadu_ps((const float *)w + idx);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + idx));
    if (wt == CV_DTYPE_F16)
        return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

AI __m512 load_w_mask(cv_dtype wt, const void *w, int64_t idx, __mmask16 m)
{
    if (wt == CV_DTYPE_F32)
        return _mm512_maskz_loadu_ps(m, (const float *)w + idx);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w + idx);
    if (wt == CV_DTYPE_F16)
        return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* An R x T tile: rows row0.. of w against tokens x[0..T). The accumulators
 * stay in registers (R * T <= 24 of the 32 zmm) and each weight vector loaded
 * is used T times. */
AI void tile(cv_dtype wt, int R, int T, const void *w, int64_t row0, int in, const float *x,
             int xs, float *y, int ys, bool accumulate)
{
    __m512 acc[TILE_ROWS][TILE_TOKS];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 6
        for (int t = 0; t < T; t++)
            acc[r][t] = _mm512_setzero_ps();
    const int nfull = in & ~15;
    for (int i = 0; i < nfull; i += 16) {
        __m512 wv[TILE_ROWS];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
            wv[r] = load_w(wt, w, (row0 + r) * in + i);
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) {
            __m512 xv = _mm512_loadu_ps(x + (int64_t)t * xs + i);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
    if (nfull < in) {
        __mmask16 m = (__mmask16)((1u << (in - nfull)) - 1u);
        __m512 wv[TILE_ROWS];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
            wv[r] = load_w_mask(wt, w, (row0 + r) * in + nfull, m);
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + (int64_t)t * xs + nfull);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
#pragma GCC unroll 6
    for (int t = 0; t < T; t++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            float v = _mm512_reduce_add_ps(acc[r][t]);
            float *dst = y + (int64_t)t * ys + row0 + r;
            *dst = accumulate ? *dst + v : v;
        }
}

/* R rows against n_tok tokens, in tiles of TILE_TOKS and one tail tile. */
AI void rows(cv_dtype wt, int R, const void *w, int64_t row0, int in, const float *x, int xs,
             int n_tok, float *y, int ys, bool accumulate)
{
    int t = 0;
    for (; t + TILE_TOKS <= n_tok; t += TILE_TOKS)
        tile(wt, R, TILE_TOKS, w, row0, in, x + (int64_t)t * xs, xs, y + (int64_t)t * ys, ys,
             accumulate);
    const float *xt = x + (int64_t)t * xs;
    float *yt = y + (int64_t)t * ys;
    switch (n_tok - t) {
    case 5: tile(wt, R, 5, w, row0, in, xt, xs, yt, ys, accumulate); break;
    case 4: tile(wt, R, 4, w, row0, in, xt, xs, yt, ys, accumulate); break;
    case 3: tile(wt, R, 3, w, row0, in, xt, xs, yt, ys, accumulate); break;
    case 2: tile(wt, R, 2, w, row0, in, xt, xs, yt, ys, accumulate); break;
    case 1: tile(wt, R, 1, w, row0, in, xt, xs, yt, ys, accumulate); break;
    default: break;
    }
}

/* Tokens are processed in chunks whose activations fit in L2 (~192 KiB),
 * so a weight tile read once from memory is reused from L1 by every token of
 * the chunk. */
AI void matmul_dtype(cv_dtype wt, const void *w, int in, const float *x, int xs, int n_tok,
                     float *y, int ys, int o0, int o1, bool accumulate)
{
    int chunk = (192 * 1024) / (in * (int)sizeof(float));
    chunk = chunk < TILE_TOKS ? TILE_TOKS : chunk / TILE_TOKS * TILE_TOKS;
    for (int t0 = 0; t0 < n_tok; t0 += chunk) {
        int tn = n_tok - t0 < chunk ? n_tok - t0 : chunk;
        const float *xc = x + (int64_t)t0 * xs;
        float *yc = y + (int64_t)t0 * ys;
        int o = o0;
        /* One token (decode): rows one after another, so the weights are a
         * single sequential stream for the hardware prefetcher; the tile
         * gains nothing when each weight is used once. */
        if (tn > 1)
            for (; o + TILE_ROWS <= o1; o += TILE_ROWS)
                rows(wt, TILE_ROWS, w, o, in, xc, xs, tn, yc, ys, accumulate);
        for (; o < o1; o++)
            rows(wt, 1, w, o, in, xc, xs, tn, yc, ys, accumulate);
    }
}

static TGT void matmul_f32(const void *w, int in, const float *x, int xs, int n_tok, float *y,
                           int ys, int o0, int o1, bool accumulate)
{
    matmul_dtype(CV_DTYPE_F32, w, in, x, xs, n_tok, y, ys, o0, o1, accumulate);
}

static TGT void matmul_f16(const void *w, int in, const float *x, int xs, int n_tok, float *y,
                           int ys, int o0, int o1, bool accumulate)
{
    matmul_dtype(CV_DTYPE_F16, w, in, x, xs, n_tok, y, ys, o0, o1, accumulate);
}

static TGT void matmul_bf16(const void *w, int in, const float *x, int xs, int n_tok, float *y,
                            int ys, int o0, int o1, bool accumulate)
{
    matmul_dtype(CV_DTYPE_BF16, w, in, x, xs, n_tok, y, ys, o0, o1, accumulate);
}

static TGT void avx512_matmul(cv_dtype wtype, const void *w, int in, const float *x, int xs,
                              int n_tok, float *y, int ys, int o0, int o1, bool accumulate)
{
    switch (wtype) {
    case CV_DTYPE_F32: matmul_f32(w, in, x, xs, n_tok, y, ys, o0, o1, accumulate); break;
    case CV_DTYPE_F16: matmul_f16(w, in, x, xs, n_tok, y, ys, o0, o1, accumulate); break;
    case CV_DTYPE_BF16: matmul_bf16(w, in, x, xs, n_tok, y, ys, o0, o1, accumulate); break;
    }
}

static TGT float avx512_dot(const float *a, const float *b, int n)
{
    __m512 acc = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i),
                              acc);
    }
    return _mm512_reduce_add_ps(acc);
}

static TGT void avx512_scale_axpy(float *y, float scale, float a, const float *x, int n)
{
    __m512 s = _mm512_set1_ps(scale), av = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 yv = _mm512_mul_ps(_mm512_loadu_ps(y + i), s);
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i), yv));
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        __m512 yv = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, y + i), s);
        _mm512_mask_storeu_ps(y + i, m,
                              _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + i), yv));
    }
}

const cpu_kernels cpu_kernels_avx512 = {
    .level = CPU_SIMD_AVX512,
    .name = "avx512",
    .matmul = avx512_matmul,
    .dot = avx512_dot,
    .scale_axpy = avx512_scale_axpy,
};

/* AVX2 + FMA + F16C kernels: the same tiling as the AVX-512 file with 8-wide
 * vectors and 16 registers (4 rows x 2 tokens of accumulators). Elements
 * past the last multiple of 8 are summed in scalar code. */
#include <immintrin.h>

#include "backend/cpu/cpu_kernels.h"

#define TGT __attribute__((target("avx2,fma,f16c")))
#define AI static inline __attribute__((always_inline)) TGT

enum { TILE_ROWS = 4, TILE_TOKS = 2 };

AI __m256 load_w(cv_dtype wt, const void *w, int64_t idx)
{
    if (wt == CV_DTYPE_F32)
        return _mm256_loadu_ps((const float *)w + idx);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + idx));
    if (wt == CV_DTYPE_F16)
        return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AI float load_w1(cv_dtype wt, const void *w, int64_t idx)
{
    if (wt == CV_DTYPE_F32)
        return ((const float *)w)[idx];
    uint16_t h = ((const uint16_t *)w)[idx];
    if (wt == CV_DTYPE_F16)
        return cpu_f16_to_f32(h);
    return _mm_cvtss_f32(_mm_castsi128_ps(_mm_cvtsi32_si128((int)((uint32_t)h << 16))));
}

AI float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AI void tile(cv_dtype wt, int R, int T, const void *w, int64_t row0, int in, const float *x,
             int xs, float *y, int ys, bool accumulate)
{
    __m256 acc[TILE_ROWS][TILE_TOKS];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int t = 0; t < T; t++)
            acc[r][t] = _mm256_setzero_ps();
    const int nfull = in & ~7;
    for (int i = 0; i < nfull; i += 8) {
        __m256 wv[TILE_ROWS];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
            wv[r] = load_w(wt, w, (row0 + r) * in + i);
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) {
            __m256 xv = _mm256_loadu_ps(x + (int64_t)t * xs + i);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
#pragma GCC unroll 2
    for (int t = 0; t < T; t++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            float v = hsum(acc[r][t]);
            for (int i = nfull; i < in; i++)
                v += load_w1(wt, w, (row0 + r) * in + i) * x[(int64_t)t * xs + i];
            float *dst = y + (int64_t)t * ys + row0 + r;
            *dst = accumulate ? *dst + v : v;
        }
}

AI void rows(cv_dtype wt, int R, const void *w, int64_t row0, int in, const float *x, int xs,
             int n_tok, float *y, int ys, bool accumulate)
{
    int t = 0;
    for (; t + TILE_TOKS <= n_tok; t += TILE_TOKS)
        tile(wt, R, TILE_TOKS, w, row0, in, x + (int64_t)t * xs, xs, y + (int64_t)t * ys, ys,
             accumulate);
    if (t < n_tok)
        tile(wt, R, 1, w, row0, in, x + (int64_t)t * xs, xs, y + (int64_t)t * ys, ys,
             accumulate);
}

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

static TGT void avx2_matmul(cv_dtype wtype, const void *w, int in, const float *x, int xs,
                            int n_tok, float *y, int ys, int o0, int o1, bool accumulate)
{
    switch (wtype) {
    case CV_DTYPE_F32: matmul_f32(w, in, x, xs, n_tok, y, ys, o0, o1, accumulate); break;
    case CV_DTYPE_F16: matmul_f16(w, in, x, xs, n_tok, y, ys, o0, o1, accumulate); break;
    case CV_DTYPE_BF16: matmul_bf16(w, in, x, xs, n_tok, y, ys, o0, o1, accumulate); break;
    }
}

static TGT float avx2_dot(const float *a, const float *b, int n)
{
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float s = hsum(acc);
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static TGT void avx2_scale_axpy(float *y, float scale, float a, const float *x, int n)
{
    __m256 s = _mm256_set1_ps(scale), av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 yv = _mm256_mul_ps(_mm256_loadu_ps(y + i), s);
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), yv));
    }
    for (; i < n; i++)
        y[i] = y[i] * scale + a * x[i];
}

const cpu_kernels cpu_kernels_avx2 = {
    .level = CPU_SIMD_AVX2,
    .name = "avx2",
    .matmul = avx2_matmul,
    .dot = avx2_dot,
    .scale_axpy = avx2_scale_axpy,
};

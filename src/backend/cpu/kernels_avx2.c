/* AVX2 + FMA + F16C kernels: the AVX-512 file's panel products with 8-wide
 * vectors and 16 registers (16 panel rows x 6 tokens of accumulators). */
#include <immintrin.h>
#include <math.h>

#include "backend/cpu/cpu_kernels.h"

#define TGT __attribute__((target("avx2,fma,f16c")))
#define AI static inline __attribute__((always_inline)) TGT

enum { TILE_TOKS = 6, SLICE_VECS = 2, SLICE_ROWS = 8 * SLICE_VECS };

/* 8 weights starting at element idx, widened to fp32. */
AI __m256 load_w(cv_dtype wt, const void *w, int64_t idx)
{
    if (wt == CV_DTYPE_F32) return _mm256_loadu_ps((const float *)w + idx);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + idx));
    if (wt == CV_DTYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AI float load_w1(cv_dtype wt, const void *w, int64_t idx)
{
    if (wt == CV_DTYPE_F32) return ((const float *)w)[idx];
    uint16_t h = ((const uint16_t *)w)[idx];
    if (wt == CV_DTYPE_F16) return cpu_f16_to_f32(h);
    return _mm_cvtss_f32(_mm_castsi128_ps(_mm_cvtsi32_si128((int)((uint32_t)h << 16))));
}

AI float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* acc into rows [lo, hi) of the 8 at y (0 <= lo, hi <= 8): y = acc or y + acc. */
AI void store_rows(float *y, int lo, int hi, __m256 acc, bool accumulate)
{
    if (lo == 0 && hi == 8) {
        if (accumulate) acc = _mm256_add_ps(_mm256_loadu_ps(y), acc);
        _mm256_storeu_ps(y, acc);
        return;
    }
    float v[8];
    _mm256_storeu_ps(v, acc);
    for (int j = lo; j < hi; j++)
        y[j] = accumulate ? y[j] + v[j] : v[j];
}

AI int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* A slice of 16 panel rows (two vectors, rows r0.. of the panel) against T
 * tokens: 2 T accumulators, 2 + T loads per input element. [lo, hi): the
 * panel rows to store. */
AI void slice_tile(cv_dtype wt, int T, const void *w, int64_t panel, int r0, int in, const float *x,
                   int xs, float *y, int ys, int lo, int hi, bool accumulate)
{
    __m256 acc[TILE_TOKS][SLICE_VECS];
#pragma GCC unroll 6
    for (int t = 0; t < T; t++)
#pragma GCC unroll 4
        for (int v = 0; v < SLICE_VECS; v++)
            acc[t][v] = _mm256_setzero_ps();
    for (int i = 0; i < in; i++) {
        const int64_t at = panel + (int64_t)i * CPU_PANEL + r0;
        __m256 wv[SLICE_VECS];
#pragma GCC unroll 4
        for (int v = 0; v < SLICE_VECS; v++)
            wv[v] = load_w(wt, w, at + 8 * v);
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) {
            const __m256 xb = _mm256_broadcast_ss(x + (int64_t)t * xs + i);
#pragma GCC unroll 4
            for (int v = 0; v < SLICE_VECS; v++)
                acc[t][v] = _mm256_fmadd_ps(wv[v], xb, acc[t][v]);
        }
    }
#pragma GCC unroll 6
    for (int t = 0; t < T; t++)
        for (int v = 0; v < SLICE_VECS; v++) {
            const int first = r0 + 8 * v;
            store_rows(y + (int64_t)t * ys + first, clampi(lo - first, 0, 8),
                       clampi(hi - first, 0, 8), acc[t][v], accumulate);
        }
}

/* One token against a whole panel: eight independent FMA chains (the same
 * arithmetic per row as slice_tile). */
AI void panel_vec(cv_dtype wt, const void *w, int64_t panel, int in, const float *x, float *y,
                  int lo, int hi, bool accumulate)
{
    __m256 acc[CPU_PANEL / 8];
#pragma GCC unroll 8
    for (int v = 0; v < CPU_PANEL / 8; v++)
        acc[v] = _mm256_setzero_ps();
    for (int i = 0; i < in; i++) {
        const __m256 xb = _mm256_broadcast_ss(x + i);
#pragma GCC unroll 8
        for (int v = 0; v < CPU_PANEL / 8; v++)
            acc[v] =
                _mm256_fmadd_ps(load_w(wt, w, panel + (int64_t)i * CPU_PANEL + 8 * v), xb, acc[v]);
    }
#pragma GCC unroll 8
    for (int v = 0; v < CPU_PANEL / 8; v++)
        store_rows(y + 8 * v, clampi(lo - 8 * v, 0, 8), clampi(hi - 8 * v, 0, 8), acc[v],
                   accumulate);
}

AI void slice_tokens(cv_dtype wt, const void *w, int64_t panel, int r0, int in, const float *x,
                     int xs, int n_tok, float *y, int ys, int lo, int hi, bool accumulate)
{
    int t = 0;
    for (; t + TILE_TOKS <= n_tok; t += TILE_TOKS)
        slice_tile(wt, TILE_TOKS, w, panel, r0, in, x + (int64_t)t * xs, xs, y + (int64_t)t * ys,
                   ys, lo, hi, accumulate);
    const float *xt = x + (int64_t)t * xs;
    float *yt = y + (int64_t)t * ys;
    /* The tail tile with its height a constant in each unrolled copy. */
#pragma GCC unroll 8
    for (int tail = TILE_TOKS - 1; tail >= 1; tail--)
        if (n_tok - t == tail)
            slice_tile(wt, tail, w, panel, r0, in, xt, xs, yt, ys, lo, hi, accumulate);
}

/* Panel after panel; within a panel, slices of 16 rows that hold the tile's
 * accumulators in 12 of the 16 registers. */
AI void matmul_dtype(cv_dtype wt, const void *w, int in, const float *x, int xs, int n_tok,
                     float *y, int ys, int o0, int o1, bool accumulate)
{
    for (int p = o0 / CPU_PANEL; p * CPU_PANEL < o1; p++) {
        const int row0 = p * CPU_PANEL;
        const int lo = clampi(o0 - row0, 0, CPU_PANEL), hi = clampi(o1 - row0, 0, CPU_PANEL);
        const int64_t panel = (int64_t)p * in * CPU_PANEL;
        if (n_tok == 1) {
            panel_vec(wt, w, panel, in, x, y + row0, lo, hi, accumulate);
            continue;
        }
        for (int r0 = lo / SLICE_ROWS * SLICE_ROWS; r0 < hi; r0 += SLICE_ROWS)
            slice_tokens(wt, w, panel, r0, in, x, xs, n_tok, y + row0, ys, lo, hi, accumulate);
    }
}

/* The weight dtype a constant in each inlined copy of the kernel. */
static TGT void avx2_matmul(cv_dtype wtype, const void *w, int in, const float *x, int xs,
                            int n_tok, float *y, int ys, int o0, int o1, bool accumulate)
{
    switch (wtype) {
    case CV_DTYPE_F32:
        matmul_dtype(CV_DTYPE_F32, w, in, x, xs, n_tok, y, ys, o0, o1, accumulate);
        break;
    case CV_DTYPE_F16:
        matmul_dtype(CV_DTYPE_F16, w, in, x, xs, n_tok, y, ys, o0, o1, accumulate);
        break;
    case CV_DTYPE_BF16:
        matmul_dtype(CV_DTYPE_BF16, w, in, x, xs, n_tok, y, ys, o0, o1, accumulate);
        break;
    }
}

/* e^x as in the AVX-512 file, with 2^n built in the exponent bits. */
AI __m256 exp256(__m256 x)
{
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

AI void attn_block(cv_dtype dt, const float *q, const void *k, const void *v, int n, int head_dim,
                   float scale, float *m, float *l, float *out, float *scores)
{
    const int dfull = head_dim & ~7;
    float m_new = *m;
    for (int j = 0; j < n; j++) {
        const int64_t row = (int64_t)j * head_dim;
        __m256 acc = _mm256_setzero_ps();
        for (int d = 0; d < dfull; d += 8)
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load_w(dt, k, row + d), acc);
        float s = hsum(acc);
        for (int d = dfull; d < head_dim; d++)
            s += q[d] * load_w1(dt, k, row + d);
        scores[j] = s * scale;
        m_new = scores[j] > m_new ? scores[j] : m_new;
    }
    const float corr = expf(*m - m_new); /* 0 on the first block (*m = -inf) */
    float lsum = 0.0f;
    for (int j = 0; j < n; j++) {
        scores[j] = expf(scores[j] - m_new);
        lsum += scores[j];
    }
    *l = *l * corr + lsum;
    *m = m_new;
    const __m256 c = _mm256_set1_ps(corr);
    for (int d = 0; d < dfull; d += 8) {
        __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(out + d), c);
        for (int j = 0; j < n; j++)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(scores[j]),
                                  load_w(dt, v, (int64_t)j * head_dim + d), acc);
        _mm256_storeu_ps(out + d, acc);
    }
    for (int d = dfull; d < head_dim; d++) {
        float acc = out[d] * corr;
        for (int j = 0; j < n; j++)
            acc += scores[j] * load_w1(dt, v, (int64_t)j * head_dim + d);
        out[d] = acc;
    }
}

/* Head after head (the AVX-512 file shares each V row load among heads). */
static TGT void avx2_attn_block(cv_dtype kv_dtype, const float *q, int n_q, const void *k,
                                const void *v, int n, int head_dim, float scale, float *m, float *l,
                                float *out, float *scores)
{
    for (int h = 0; h < n_q; h++) {
        const float *qh = q + h * head_dim;
        float *oh = out + h * head_dim;
        switch (kv_dtype) {
        case CV_DTYPE_F32:
            attn_block(CV_DTYPE_F32, qh, k, v, n, head_dim, scale, &m[h], &l[h], oh, scores);
            break;
        case CV_DTYPE_F16:
            attn_block(CV_DTYPE_F16, qh, k, v, n, head_dim, scale, &m[h], &l[h], oh, scores);
            break;
        case CV_DTYPE_BF16:
            attn_block(CV_DTYPE_BF16, qh, k, v, n, head_dim, scale, &m[h], &l[h], oh, scores);
            break;
        }
    }
}

static TGT void avx2_gated_act(cv_activation act, float *gate, const float *up, int n)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    const float kz = 2.0f * 0.7978845608028654f; /* 2 sqrt(2 / pi) */
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 z = g;
        if (act == CV_ACT_GELU_TANH) {
            __m256 g3 = _mm256_mul_ps(_mm256_mul_ps(g, g), g);
            z = _mm256_mul_ps(_mm256_set1_ps(kz),
                              _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), g3, g));
        }
        __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), z));
        __m256 a = _mm256_div_ps(g, _mm256_add_ps(one, e));
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(a, _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++) {
        float g = gate[i];
        float z = act == CV_ACT_GELU_TANH ? kz * (g + 0.044715f * g * g * g) : g;
        gate[i] = g / (1.0f + expf(-z)) * up[i];
    }
}

/* F16 with vcvtps2ph; BF16 in scalar code. */
static TGT void avx2_narrow(cv_dtype dtype, const float *src, uint16_t *dst, int n)
{
    int i = 0;
    if (dtype == CV_DTYPE_F16)
        for (; i + 8 <= n; i += 8)
            _mm_storeu_si128((__m128i *)(dst + i),
                             _mm256_cvtps_ph(_mm256_loadu_ps(src + i),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++)
        dst[i] = dtype == CV_DTYPE_F16 ? cpu_f32_to_f16(src[i]) : cpu_f32_to_bf16(src[i]);
}

const cpu_kernels cpu_kernels_avx2 = {
    .level = CPU_SIMD_AVX2,
    .name = "avx2",
    .matmul = avx2_matmul,
    .attn_block = avx2_attn_block,
    .narrow = avx2_narrow,
    .gated_act = avx2_gated_act,
};

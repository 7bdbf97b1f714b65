/* AVX-512 kernels (avx512f/bw/vl). F16 weights are widened with vcvtph2ps
 * and BF16 weights by a 16-bit shift, both in registers, so a weight matrix is
 * streamed from memory once in its stored dtype whatever the batch. */
#include <immintrin.h>
#include <math.h>

#include "backend/cpu/cpu_kernels.h"

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define AI static inline __attribute__((always_inline)) TGT

enum { TILE_TOKS = 6, PANEL_VECS = CPU_PANEL / 16 };

/* 16 weights starting at element idx, widened to fp32. */
AI __m512 load_w(cv_dtype wt, const void *w, int64_t idx)
{
    if (wt == CV_DTYPE_F32) return _mm512_loadu_ps((const float *)w + idx);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + idx));
    if (wt == CV_DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

AI __m512 load_w_mask(cv_dtype wt, const void *w, int64_t idx, __mmask16 m)
{
    if (wt == CV_DTYPE_F32) return _mm512_maskz_loadu_ps(m, (const float *)w + idx);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w + idx);
    if (wt == CV_DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* acc into the rows of y the mask keeps: y = acc, or y + acc. */
AI void store_rows(float *y, __mmask16 m, __m512 acc, bool accumulate)
{
    if (accumulate) acc = _mm512_add_ps(_mm512_maskz_loadu_ps(m, y), acc);
    _mm512_mask_storeu_ps(y, m, acc);
}

/* One panel (CPU_PANEL rows, packed) against T tokens: T x 4 accumulators of
 * 16 rows each. Per input element the panel's 64 weights are loaded once and
 * used by every token, and each token's element is broadcast once and used
 * by the 4 vectors: 4 + T loads for 4 * T multiply-adds, and no horizontal
 * sums. m: the rows of each vector to store. */
AI void panel_tile(cv_dtype wt, int T, const void *w, int64_t panel, int in, const float *x, int xs,
                   float *y, int ys, const __mmask16 m[PANEL_VECS], bool accumulate)
{
    __m512 acc[TILE_TOKS][PANEL_VECS];
#pragma GCC unroll 6
    for (int t = 0; t < T; t++)
#pragma GCC unroll 4
        for (int v = 0; v < PANEL_VECS; v++)
            acc[t][v] = _mm512_setzero_ps();
    for (int i = 0; i < in; i++) {
        __m512 wv[PANEL_VECS];
#pragma GCC unroll 4
        for (int v = 0; v < PANEL_VECS; v++)
            wv[v] = load_w(wt, w, panel + (int64_t)i * CPU_PANEL + 16 * v);
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) {
            const __m512 xb = _mm512_set1_ps(x[(int64_t)t * xs + i]);
#pragma GCC unroll 4
            for (int v = 0; v < PANEL_VECS; v++)
                acc[t][v] = _mm512_fmadd_ps(wv[v], xb, acc[t][v]);
        }
    }
#pragma GCC unroll 6
    for (int t = 0; t < T; t++)
#pragma GCC unroll 4
        for (int v = 0; v < PANEL_VECS; v++)
            store_rows(y + (int64_t)t * ys + 16 * v, m[v], acc[t][v], accumulate);
}

/* One token against two panels at once: eight independent FMA chains
 * instead of four cover the FMA latency while the weights stream in (the
 * same arithmetic per row as panel_tile). */
AI void panel_pair(cv_dtype wt, const void *w, int64_t panel, int in, const float *x, float *y,
                   const __mmask16 m[2 * PANEL_VECS], bool accumulate)
{
    const int64_t next = (int64_t)in * CPU_PANEL;
    __m512 acc[2 * PANEL_VECS];
#pragma GCC unroll 8
    for (int v = 0; v < 2 * PANEL_VECS; v++)
        acc[v] = _mm512_setzero_ps();
    for (int i = 0; i < in; i++) {
        const __m512 xb = _mm512_set1_ps(x[i]);
        const int64_t at = panel + (int64_t)i * CPU_PANEL;
#pragma GCC unroll 4
        for (int v = 0; v < PANEL_VECS; v++) {
            acc[v] = _mm512_fmadd_ps(load_w(wt, w, at + 16 * v), xb, acc[v]);
            acc[PANEL_VECS + v] =
                _mm512_fmadd_ps(load_w(wt, w, at + next + 16 * v), xb, acc[PANEL_VECS + v]);
        }
    }
#pragma GCC unroll 8
    for (int v = 0; v < 2 * PANEL_VECS; v++)
        store_rows(y + 16 * v, m[v], acc[v], accumulate);
}

/* The lanes of panel row0's 16-row vectors that fall in [o0, o1). */
AI void panel_masks(int row0, int o0, int o1, __mmask16 *m)
{
#pragma GCC unroll 4
    for (int v = 0; v < PANEL_VECS; v++) {
        const int first = row0 + 16 * v;
        uint32_t keep = 0xffffu;
        if (o0 > first) keep &= o0 - first >= 16 ? 0u : 0xffffu << (o0 - first);
        if (o1 < first + 16) keep &= o1 <= first ? 0u : 0xffffu >> (first + 16 - o1);
        m[v] = (__mmask16)keep;
    }
}

/* One panel against n_tok tokens: tiles of TILE_TOKS and one tail tile. */
AI void panel_tokens(cv_dtype wt, const void *w, int64_t panel, int in, const float *x, int xs,
                     int n_tok, float *y, int ys, const __mmask16 *m, bool accumulate)
{
    int t = 0;
    for (; t + TILE_TOKS <= n_tok; t += TILE_TOKS)
        panel_tile(wt, TILE_TOKS, w, panel, in, x + (int64_t)t * xs, xs, y + (int64_t)t * ys, ys, m,
                   accumulate);
    const float *xt = x + (int64_t)t * xs;
    float *yt = y + (int64_t)t * ys;
    /* The tail tile with its height a constant in each unrolled copy. */
#pragma GCC unroll 8
    for (int tail = TILE_TOKS - 1; tail >= 1; tail--)
        if (n_tok - t == tail) panel_tile(wt, tail, w, panel, in, xt, xs, yt, ys, m, accumulate);
}

/* Panel after panel: a panel (144 KiB for in 576 in f32) stays in L2 while
 * every token tile reuses it; a lone token takes two panels at a time. */
AI void matmul_dtype(cv_dtype wt, const void *w, int in, const float *x, int xs, int n_tok,
                     float *y, int ys, int o0, int o1, bool accumulate)
{
    const int64_t panel_elems = (int64_t)in * CPU_PANEL;
    for (int p = o0 / CPU_PANEL; p * CPU_PANEL < o1; p++) {
        const int row0 = p * CPU_PANEL;
        __mmask16 m[2 * PANEL_VECS];
        panel_masks(row0, o0, o1, m);
        if (n_tok == 1 && row0 + CPU_PANEL < o1) {
            panel_masks(row0 + CPU_PANEL, o0, o1, m + PANEL_VECS);
            panel_pair(wt, w, p * panel_elems, in, x, y + row0, m, accumulate);
            p++;
            continue;
        }
        panel_tokens(wt, w, p * panel_elems, in, x, xs, n_tok, y + row0, ys, m, accumulate);
    }
}

/* The weight dtype a constant in each inlined copy of the kernel. */
static TGT void avx512_matmul(cv_dtype wtype, const void *w, int in, const float *x, int xs,
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

/* e^x, Cephes-style: x = n ln2 + r with |r| <= ln2 / 2, a degree-7 Taylor
 * polynomial for e^r (relative error ~1e-7), times 2^n by vscalefps.
 * Inputs are clamped to [-87, 88] (results stay normal floats). */
AI __m512 exp512(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

AI __mmask16 lanes(int n) /* the first n (0..16) lanes */
{
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

/* Lane i of the result = the sum of a[i]'s 16 lanes: pairwise unpacks
 * and 128-bit shuffles (45 instructions for 16 sums). */
AI __m512 reduce16(const __m512 a[16])
{
    __m512 x[8], y[4];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        x[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                             _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(x[2 * i]), _mm512_castps_pd(x[2 * i + 1]));
        __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(x[2 * i]), _mm512_castps_pd(x[2 * i + 1]));
        y[i] = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
    }
    __m512 z0 = _mm512_add_ps(_mm512_shuffle_f32x4(y[0], y[1], 0x88),
                              _mm512_shuffle_f32x4(y[0], y[1], 0xdd));
    __m512 z1 = _mm512_add_ps(_mm512_shuffle_f32x4(y[2], y[3], 0x88),
                              _mm512_shuffle_f32x4(y[2], y[3], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(z0, z1, 0x88), _mm512_shuffle_f32x4(z0, z1, 0xdd));
}

/* One head's scores against n keys into scores[0, n) (scaled), the
 * probabilities e^(s - m') in place, and its running max and sum updated;
 * returns the factor e^(m - m') by which its earlier output must shrink. */
AI float head_scores(cv_dtype dt, const float *q, const void *k, int n, int head_dim, float scale,
                     float *m, float *l, float *scores)
{
    float m_new = *m;
    /* Scores 16 keys at a time: one accumulator per key, then one transpose
     * reduction instead of 16 horizontal sums. */
    for (int j0 = 0; j0 < n; j0 += 16) {
        const int nj = n - j0 < 16 ? n - j0 : 16;
        __m512 acc[16];
#pragma GCC unroll 16
        for (int jj = 0; jj < 16; jj++)
            acc[jj] = _mm512_setzero_ps();
        for (int d = 0; d < head_dim; d += 16) {
            const __mmask16 mk = lanes(head_dim - d);
            const __m512 qv = _mm512_maskz_loadu_ps(mk, q + d);
#pragma GCC unroll 16
            for (int jj = 0; jj < 16; jj++)
                if (jj < nj)
                    acc[jj] = _mm512_fmadd_ps(
                        qv, load_w_mask(dt, k, (int64_t)(j0 + jj) * head_dim + d, mk), acc[jj]);
        }
        const __mmask16 valid = lanes(nj);
        __m512 sv = _mm512_mul_ps(reduce16(acc), _mm512_set1_ps(scale));
        _mm512_mask_storeu_ps(scores + j0, valid, sv);
        float mx = _mm512_mask_reduce_max_ps(valid, sv);
        m_new = mx > m_new ? mx : m_new;
    }
    const __m512 mv = _mm512_set1_ps(m_new);
    __m512 lsum = _mm512_setzero_ps();
    for (int j = 0; j < n; j += 16) {
        __mmask16 mk = lanes(n - j);
        __m512 s = _mm512_maskz_loadu_ps(mk, scores + j);
        __m512 p = _mm512_maskz_mov_ps(mk, exp512(_mm512_sub_ps(s, mv)));
        _mm512_mask_storeu_ps(scores + j, mk, p);
        lsum = _mm512_add_ps(lsum, p);
    }
    /* 0 on the first block (*m = -inf); exactly 1 while the max holds. */
    const float corr = m_new == *m ? 1.0f : expf(*m - m_new);
    *l = *l * corr + _mm512_reduce_add_ps(lsum);
    *m = m_new;
    return corr;
}

enum { ATTN_HEADS = 4 }; /* heads whose output accumulators share V loads */

/* H (<= ATTN_HEADS) heads of one kv head: each head's scores, then out_h +=
 * sum_j p_hj v_j with each V row loaded once for all H heads, 64 output
 * floats at a time: H x 4 accumulators, H x 4 independent FMA chains. */
AI void attn_heads(cv_dtype dt, int H, const float *q, const void *k, const void *v, int n,
                   int head_dim, float scale, float *m, float *l, float *out, float *scores)
{
    float corr[ATTN_HEADS];
#pragma GCC unroll 4
    for (int h = 0; h < H; h++)
        corr[h] =
            head_scores(dt, q + h * head_dim, k, n, head_dim, scale, &m[h], &l[h], scores + h * n);
    for (int d0 = 0; d0 < head_dim; d0 += 64) {
        __mmask16 mk[4];
        __m512 acc[ATTN_HEADS][4];
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++) {
            mk[u] = lanes(head_dim - d0 - 16 * u);
#pragma GCC unroll 4
            for (int h = 0; h < H; h++)
                acc[h][u] =
                    _mm512_mul_ps(_mm512_maskz_loadu_ps(mk[u], out + h * head_dim + d0 + 16 * u),
                                  _mm512_set1_ps(corr[h]));
        }
        for (int j = 0; j < n; j++) {
            const int64_t row = (int64_t)j * head_dim + d0;
            __m512 vv[4];
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++)
                vv[u] = load_w_mask(dt, v, row + 16 * u, mk[u]);
#pragma GCC unroll 4
            for (int h = 0; h < H; h++) {
                const __m512 p = _mm512_set1_ps(scores[h * n + j]);
#pragma GCC unroll 4
                for (int u = 0; u < 4; u++)
                    acc[h][u] = _mm512_fmadd_ps(p, vv[u], acc[h][u]);
            }
        }
#pragma GCC unroll 4
        for (int h = 0; h < H; h++)
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++)
                _mm512_mask_storeu_ps(out + h * head_dim + d0 + 16 * u, mk[u], acc[h][u]);
    }
}

AI void attn_block(cv_dtype dt, const float *q, int n_q, const void *k, const void *v, int n,
                   int head_dim, float scale, float *m, float *l, float *out, float *scores)
{
    for (int h = 0; h < n_q; h += ATTN_HEADS) {
        const float *qh = q + h * head_dim;
        float *oh = out + h * head_dim;
        switch (n_q - h < ATTN_HEADS ? n_q - h : ATTN_HEADS) {
        case 4:
            attn_heads(dt, 4, qh, k, v, n, head_dim, scale, m + h, l + h, oh, scores);
            break;
        case 3:
            attn_heads(dt, 3, qh, k, v, n, head_dim, scale, m + h, l + h, oh, scores);
            break;
        case 2:
            attn_heads(dt, 2, qh, k, v, n, head_dim, scale, m + h, l + h, oh, scores);
            break;
        default:
            attn_heads(dt, 1, qh, k, v, n, head_dim, scale, m + h, l + h, oh, scores);
            break;
        }
    }
}

static TGT void avx512_attn_block(cv_dtype kv_dtype, const float *q, int n_q, const void *k,
                                  const void *v, int n, int head_dim, float scale, float *m,
                                  float *l, float *out, float *scores)
{
    switch (kv_dtype) {
    case CV_DTYPE_F32:
        attn_block(CV_DTYPE_F32, q, n_q, k, v, n, head_dim, scale, m, l, out, scores);
        break;
    case CV_DTYPE_F16:
        attn_block(CV_DTYPE_F16, q, n_q, k, v, n, head_dim, scale, m, l, out, scores);
        break;
    case CV_DTYPE_BF16:
        attn_block(CV_DTYPE_BF16, q, n_q, k, v, n, head_dim, scale, m, l, out, scores);
        break;
    }
}

/* SiLU: g / (1 + e^-g). GELU-tanh: 0.5 g (1 + tanh(z)) = g / (1 + e^(-2z)). */
static TGT void avx512_gated_act(cv_activation act, float *gate, const float *up, int n)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int i = 0; i < n; i += 16) {
        __mmask16 mk = lanes(n - i);
        __m512 g = _mm512_maskz_loadu_ps(mk, gate + i);
        __m512 z = g;
        if (act == CV_ACT_GELU_TANH) {
            __m512 g3 = _mm512_mul_ps(_mm512_mul_ps(g, g), g);
            z = _mm512_mul_ps(_mm512_set1_ps(2.0f * 0.7978845608028654f),
                              _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), g3, g));
        }
        __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), z));
        __m512 a = _mm512_div_ps(g, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(gate + i, mk, _mm512_mul_ps(a, _mm512_maskz_loadu_ps(mk, up + i)));
    }
}

/* F16 with vcvtps2ph; BF16 as cpu_f32_to_bf16 does it, in integer lanes:
 * add 0x7fff plus the kept part's lowest bit, keep the top half; NaNs are
 * kept quiet instead. */
static TGT void avx512_narrow(cv_dtype dtype, const float *src, uint16_t *dst, int n)
{
    for (int i = 0; i < n; i += 16) {
        const __mmask16 mk = lanes(n - i);
        const __m512 v = _mm512_maskz_loadu_ps(mk, src + i);
        __m256i h;
        if (dtype == CV_DTYPE_F16) {
            h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        } else {
            const __m512i x = _mm512_castps_si512(v);
            const __m512i top = _mm512_srli_epi32(x, 16);
            __m512i r = _mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)),
                                         _mm512_and_si512(top, _mm512_set1_epi32(1)));
            r = _mm512_srli_epi32(r, 16);
            r = _mm512_mask_or_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), top,
                                     _mm512_set1_epi32(0x40));
            h = _mm512_cvtepi32_epi16(r);
        }
        _mm256_mask_storeu_epi16(dst + i, mk, h);
    }
}

const cpu_kernels cpu_kernels_avx512 = {
    .level = CPU_SIMD_AVX512,
    .name = "avx512",
    .matmul = avx512_matmul,
    .attn_block = avx512_attn_block,
    .narrow = avx512_narrow,
    .gated_act = avx512_gated_act,
};

/* CPU backend kernels against naive references: every SIMD table this CPU
 * has (forced one by one) on matmuls with F32/F16/BF16 weights over awkward
 * shapes, bit-identical across tables and batch sizes, the packed weight
 * layout, the half-float conversion over all 65536 values, attention blocks
 * (online softmax), the gated activations, RMSNorm, and RoPE inverse
 * frequencies for the default, linear and llama3 types as HF computes them. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <immintrin.h>

#include "backend/cpu/cpu_internal.h"

static uint32_t rng_state = 12345u;

static float frand(void) /* uniform in [-1, 1) */
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)(rng_state >> 8) / (float)(1u << 23) - 1.0f;
}

static uint16_t f32_to_bf16_bits(float f) /* truncation: any bf16 value will do */
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (uint16_t)(u >> 16);
}

__attribute__((target("f16c"))) static uint16_t f32_to_f16_bits(float f)
{
    return (uint16_t)_cvtss_sh(f, 0);
}

__attribute__((target("f16c"))) static float f16_hw(uint16_t h)
{
    return _cvtsh_ss(h);
}

/* Random (out, in) weights in dtype and their exact fp32 values. */
static void *make_weights(cv_dtype dt, int out, int in, float *exact)
{
    size_t n = (size_t)out * in;
    void *w = malloc(n * (dt == CV_DTYPE_F32 ? 4 : 2));
    assert_non_null(w);
    for (size_t i = 0; i < n; i++) {
        float v = frand();
        if (dt == CV_DTYPE_F32) {
            ((float *)w)[i] = v;
        } else if (dt == CV_DTYPE_F16) {
            ((uint16_t *)w)[i] = f32_to_f16_bits(v);
        } else {
            ((uint16_t *)w)[i] = f32_to_bf16_bits(v);
        }
    }
    cpu_to_f32(dt, w, exact, (int64_t)n);
    return w;
}

static void check_matmul(const cpu_kernels *k, cv_dtype dt, int out, int in, int n_tok)
{
    const int xs = in + 3, ys = out + 5; /* strides wider than rows, as in the backend */
    float *exact = malloc((size_t)out * in * sizeof(float));
    float *x = malloc((size_t)n_tok * xs * sizeof(float));
    float *y = malloc((size_t)n_tok * ys * sizeof(float));
    assert_true(exact && x && y);
    void *rows = make_weights(dt, out, in, exact);
    void *w = malloc((size_t)cpu_packed_elems(out, in) * cv_dtype_size(dt));
    assert_non_null(w);
    cpu_pack(w, dt, rows, dt, out, in);
    free(rows);
    for (int i = 0; i < n_tok * xs; i++)
        x[i] = frand();
    for (int accumulate = 0; accumulate < 2; accumulate++) {
        for (int i = 0; i < n_tok * ys; i++)
            y[i] = 0.5f;
        /* Rows [o0, o1) only: the others must stay untouched. */
        const int o0 = out > 2 ? 1 : 0, o1 = out;
        k->matmul(dt, w, in, x, xs, n_tok, y, ys, o0, o1, accumulate);
        for (int t = 0; t < n_tok; t++) {
            for (int o = 0; o < ys; o++) {
                float got = y[(size_t)t * ys + o];
                if (o < o0 || o >= o1) {
                    assert_true(got == 0.5f);
                    continue;
                }
                double ref = accumulate ? 0.5 : 0.0, mag = 0.5;
                for (int i = 0; i < in; i++) {
                    double p = (double)exact[(size_t)o * in + i] * x[(size_t)t * xs + i];
                    ref += p;
                    mag += fabs(p);
                }
                if (fabs(got - ref) > 1e-5 * mag)
                    fail_msg("%s dtype %d out %d in %d n_tok %d: y[%d][%d] = %.9g, ref %.9g",
                             k->name, (int)dt, out, in, n_tok, t, o, got, ref);
            }
        }
    }
    free(w);
    free(exact);
    free(x);
    free(y);
}

static void test_matmul_all_levels(void **state)
{
    (void)state;
    static const int outs[] = {1, 3, 4, 9, 37};
    static const int ins[] = {1, 7, 16, 33, 100, 576};
    int tested = 0;
    for (int l = 0; l < CPU_SIMD_COUNT; l++) {
        const cpu_kernels *k = cpu_kernels_get((cpu_simd_level)l);
        if (!k) continue;
        tested++;
        for (int dt = 0; dt < 3; dt++)
            for (size_t a = 0; a < sizeof outs / sizeof *outs; a++)
                for (size_t b = 0; b < sizeof ins / sizeof *ins; b++)
                    for (int n_tok = 1; n_tok <= 14; n_tok += (n_tok < 8 ? 1 : 6))
                        check_matmul(k, (cv_dtype)dt, outs[a], ins[b], n_tok);
    }
    assert_true(tested >= 1);
}

/* A batch large enough to span several L2 token chunks (in 1536 gives
 * chunks of 30 tokens with AVX-512). */
static void test_matmul_many_tokens(void **state)
{
    (void)state;
    const cpu_kernels *k = cpu_kernels_best();
    check_matmul(k, CV_DTYPE_F32, 9, 1536, 67);
    check_matmul(k, CV_DTYPE_BF16, 5, 1536, 67);
}

/* cpu_pack's layout: element (o, i) at ((o / 64) * in + i) * 64 + o % 64,
 * the rows past out zero, and F32 -> BF16 conversion on the way. */
static void test_pack_layout(void **state)
{
    (void)state;
    enum { OUT = 70, IN = 3 };
    float src[OUT * IN];
    for (int i = 0; i < OUT * IN; i++)
        src[i] = (float)i;
    assert_int_equal(cpu_packed_elems(OUT, IN), 128 * IN);
    float packed[128 * IN];
    uint16_t packed16[128 * IN];
    cpu_pack(packed, CV_DTYPE_F32, src, CV_DTYPE_F32, OUT, IN);
    cpu_pack(packed16, CV_DTYPE_BF16, src, CV_DTYPE_F32, OUT, IN);
    for (int o = 0; o < 128; o++)
        for (int i = 0; i < IN; i++) {
            const int at = ((o / 64) * IN + i) * 64 + o % 64;
            const float want = o < OUT ? (float)(o * IN + i) : 0.0f;
            assert_true(packed[at] == want);
            assert_int_equal(packed16[at], cpu_f32_to_bf16(want));
        }
}

/* Every table's matmul computes the same FMA chains: bit-identical outputs
 * for any batch size, and each token's row equal to that token alone. */
static void test_matmul_tables_agree(void **state)
{
    (void)state;
    enum { OUT = 133, IN = 97, NTOK = 13 };
    for (int dt = 0; dt < 3; dt++) {
        float *exact = malloc((size_t)OUT * IN * sizeof(float));
        float x[NTOK * IN], ref[NTOK * OUT], y[NTOK * OUT];
        assert_non_null(exact);
        void *rows = make_weights((cv_dtype)dt, OUT, IN, exact);
        void *w = malloc((size_t)cpu_packed_elems(OUT, IN) * 4);
        assert_non_null(w);
        cpu_pack(w, (cv_dtype)dt, rows, (cv_dtype)dt, OUT, IN);
        for (int i = 0; i < NTOK * IN; i++)
            x[i] = frand();
        const cpu_kernels *portable = cpu_kernels_get(CPU_SIMD_PORTABLE);
        portable->matmul((cv_dtype)dt, w, IN, x, IN, NTOK, ref, OUT, 0, OUT, false);
        for (int l = 0; l < CPU_SIMD_COUNT; l++) {
            const cpu_kernels *k = cpu_kernels_get((cpu_simd_level)l);
            if (!k) continue;
            k->matmul((cv_dtype)dt, w, IN, x, IN, NTOK, y, OUT, 0, OUT, false);
            assert_memory_equal(y, ref, sizeof y);
            for (int t = 0; t < NTOK; t++) {
                k->matmul((cv_dtype)dt, w, IN, x + t * IN, IN, 1, y, OUT, 0, OUT, false);
                assert_memory_equal(y, ref + t * OUT, OUT * sizeof(float));
            }
        }
        free(w);
        free(rows);
        free(exact);
    }
}

/* Every table's narrow() rounds like cpu_f32_to_f16 / cpu_f32_to_bf16, on
 * edge values and random bit patterns, with a length that leaves a tail. */
static void test_narrow_all_levels(void **state)
{
    (void)state;
    enum { N = 1037 };
    static float src[N];
    static uint16_t got[N + 1];
    const float edge[] = {0.0f,  -0.0f,   1.0f,        65504.0f, 65520.0f,  6.1e-5f, 5.96e-8f,
                          1e-8f, 3.0e38f, 1.00390625f, INFINITY, -INFINITY, NAN};
    /* Just below, at and just above the halfway points, with even and odd
     * kept parts: BF16 drops 16 bits, F16 (near 1.0) 13. */
    const uint32_t ties[] = {0x3f807fffu, 0x3f808000u, 0x3f808001u, 0x3f817fffu,
                             0x3f818000u, 0x3f818001u, 0x3f800fffu, 0x3f801000u,
                             0x3f801001u, 0x3f802fffu, 0x3f803000u, 0x3f803001u};
    const int n_edge = (int)(sizeof edge / sizeof *edge), n_ties = (int)(sizeof ties / 4);
    uint32_t r = 7;
    for (int i = 0; i < N; i++) {
        r = r * 1664525u + 1013904223u;
        uint32_t bits = (r & 0x807fffffu) | ((((r >> 23) & 0xffu) % 80 + 80) << 23);
        if (i < n_edge)
            src[i] = edge[i];
        else
            memcpy(&src[i], i < n_edge + n_ties ? &ties[i - n_edge] : &bits, sizeof bits);
    }
    for (int l = 0; l < CPU_SIMD_COUNT; l++) {
        const cpu_kernels *k = cpu_kernels_get((cpu_simd_level)l);
        if (!k) continue;
        for (int dt = CV_DTYPE_F16; dt <= CV_DTYPE_BF16; dt++) {
            got[N] = 0xbeef; /* past the end: must stay */
            k->narrow((cv_dtype)dt, src, got, N);
            assert_int_equal(got[N], 0xbeef);
            for (int i = 0; i < N; i++) {
                const uint16_t want =
                    dt == CV_DTYPE_F16 ? cpu_f32_to_f16(src[i]) : cpu_f32_to_bf16(src[i]);
                if (isnan(src[i])) {
                    const bool nan16 = dt == CV_DTYPE_F16
                                           ? (got[i] & 0x7c00u) == 0x7c00u && (got[i] & 0x3ffu)
                                           : (got[i] & 0x7f80u) == 0x7f80u && (got[i] & 0x7fu);
                    assert_true(nan16);
                } else if (got[i] != want) {
                    fail_msg("%s dtype %d: %a -> 0x%04x, want 0x%04x", k->name, dt, (double)src[i],
                             got[i], want);
                }
            }
        }
    }
}

/* Every half-float bit pattern (normals, subnormals, zeros, inf, nan)
 * against the F16C instruction. */
static void test_f16_conversion(void **state)
{
    (void)state;
    if (!__builtin_cpu_supports("f16c")) skip();
    for (uint32_t h = 0; h < 65536; h++) {
        float sw = cpu_f16_to_f32((uint16_t)h), hw = f16_hw((uint16_t)h);
        uint32_t a, b;
        memcpy(&a, &sw, 4);
        memcpy(&b, &hw, 4);
        if (isnan(hw))
            assert_true(isnan(sw));
        else if (a != b)
            fail_msg("half 0x%04x: %.9g, F16C %.9g", h, sw, hw);
    }
}

/* Attention of one head over 41 keys fed in blocks of 1..16 keys, with K
 * and V stored in each KV dtype, must equal a plain softmax(q K^T * scale) V
 * computed in double over the stored values. */
/* Query heads sharing one kv head (1, 3 and 5 of them: one call covers
 * more heads than the AVX-512 kernel shares V loads among), fed block by
 * block, against softmax(q K^T scale) V in double. */
static void test_attn_block(void **state)
{
    (void)state;
    enum { N = 41, MAXD = 80, MAXQ = 5 };
    static const int dims[] = {8, 13, 16, 64, 80};
    static const int blocks[] = {1, 5, 16};
    static const int heads[] = {1, 3, 5};
    float q[MAXQ * MAXD], k[N * MAXD], v[N * MAXD], out[MAXQ * MAXD], scores[MAXQ * 16];
    static uint8_t kst[N * MAXD * 4], vst[N * MAXD * 4];
    for (int l = 0; l < CPU_SIMD_COUNT; l++) {
        const cpu_kernels *kern = cpu_kernels_get((cpu_simd_level)l);
        if (!kern) continue;
        for (int dt = 0; dt < 3; dt++) {
            for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
                const int hd = dims[di];
                for (int i = 0; i < MAXQ * hd; i++)
                    q[i] = 2.0f * frand();
                for (int i = 0; i < N * hd; i++) {
                    float kv[2] = {2.0f * frand(), frand()};
                    uint8_t *dst[2] = {kst, vst};
                    for (int w = 0; w < 2; w++) {
                        if (dt == CV_DTYPE_F32)
                            memcpy(dst[w] + 4 * i, &kv[w], 4);
                        else if (dt == CV_DTYPE_F16)
                            ((uint16_t *)dst[w])[i] = cpu_f32_to_f16(kv[w]);
                        else
                            ((uint16_t *)dst[w])[i] = cpu_f32_to_bf16(kv[w]);
                    }
                }
                cpu_to_f32((cv_dtype)dt, kst, k, N * hd);
                cpu_to_f32((cv_dtype)dt, vst, v, N * hd);
                const float scale = 1.0f / sqrtf((float)hd);
                double mx[MAXQ], sum[MAXQ], want[MAXQ][MAXD] = {{0}};
                for (int h = 0; h < MAXQ; h++) {
                    double s[N];
                    mx[h] = -1e30;
                    sum[h] = 0.0;
                    for (int j = 0; j < N; j++) {
                        s[j] = 0.0;
                        for (int d = 0; d < hd; d++)
                            s[j] += (double)q[h * hd + d] * k[j * hd + d];
                        s[j] *= scale;
                        mx[h] = s[j] > mx[h] ? s[j] : mx[h];
                    }
                    for (int j = 0; j < N; j++) {
                        double p = exp(s[j] - mx[h]);
                        sum[h] += p;
                        for (int d = 0; d < hd; d++)
                            want[h][d] += p * v[j * hd + d];
                    }
                }
                const size_t esz = dt == CV_DTYPE_F32 ? 4 : 2;
                for (size_t hi = 0; hi < sizeof heads / sizeof *heads; hi++) {
                    const int nq = heads[hi];
                    for (size_t bi = 0; bi < sizeof blocks / sizeof *blocks; bi++) {
                        float m[MAXQ], lsum[MAXQ];
                        for (int h = 0; h < nq; h++) {
                            m[h] = -INFINITY;
                            lsum[h] = 0.0f;
                        }
                        memset(out, 0, sizeof out);
                        for (int j0 = 0; j0 < N; j0 += blocks[bi]) {
                            int n = N - j0 < blocks[bi] ? N - j0 : blocks[bi];
                            kern->attn_block((cv_dtype)dt, q, nq, kst + j0 * hd * esz,
                                             vst + j0 * hd * esz, n, hd, scale, m, lsum, out,
                                             scores);
                        }
                        for (int h = 0; h < nq; h++) {
                            assert_float_equal(m[h], mx[h], 1e-5);
                            for (int d = 0; d < hd; d++) {
                                const double got = out[h * hd + d] / lsum[h];
                                if (fabs(got - want[h][d] / sum[h]) > 2e-6)
                                    fail_msg("%s kv dtype %d head_dim %d heads %d block %d: "
                                             "out[%d][%d] = %.8g, ref %.8g",
                                             kern->name, dt, hd, nq, blocks[bi], h, d, got,
                                             want[h][d] / sum[h]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/* KV stores: f32 -> f16 against the F16C instruction (round to nearest
 * even) on edge cases and random bit patterns; f32 -> bf16 against the
 * rounding done in double. */
static void test_f32_narrowing(void **state)
{
    (void)state;
    if (!__builtin_cpu_supports("f16c")) skip();
    const float edge[] = {0.0f,     -0.0f,    1.0f,     65504.0f, 65519.99f,        65520.0f,
                          1e-8f,    2.98e-8f, 5.96e-8f, 6.1e-5f,  6.103515625e-05f, -3.0f / 7.0f,
                          INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof edge / sizeof *edge; i++)
        assert_int_equal(cpu_f32_to_f16(edge[i]), f32_to_f16_bits(edge[i]));
    uint32_t r = 99;
    for (int i = 0; i < 1000000; i++) {
        r = r * 1664525u + 1013904223u;
        /* Exponents 2^-37 .. 2^22: zero, subnormal, normal and overflowing halves. */
        uint32_t bits = (r & 0x807fffffu) | ((((r >> 23) & 0xffu) % 60 + 90) << 23);
        float f;
        memcpy(&f, &bits, 4);
        if (cpu_f32_to_f16(f) != f32_to_f16_bits(f))
            fail_msg("f16 of %a: 0x%04x, F16C 0x%04x", f, cpu_f32_to_f16(f), f32_to_f16_bits(f));
        uint16_t b = cpu_f32_to_bf16(f);
        float lo, hi;
        uint32_t lb = (bits & 0xffff0000u), hb = lb + 0x10000u;
        memcpy(&lo, &lb, 4);
        memcpy(&hi, &hb, 4);
        double dl = fabs((double)f - lo), dh = fabs((double)hi - f);
        uint16_t want =
            (uint16_t)((dl < dh || (dl == dh && !((lb >> 16) & 1))) ? lb >> 16 : hb >> 16);
        assert_int_equal(b, want);
    }
    assert_true(isnan(cpu_f16_to_f32(cpu_f32_to_f16(NAN))));
}

static void test_gated_act(void **state)
{
    (void)state;
    float g[37], u[37], got[37];
    for (int i = 0; i < 37; i++) {
        g[i] = 12.0f * frand(); /* covers saturation on both sides */
        u[i] = frand();
    }
    for (int l = 0; l < CPU_SIMD_COUNT; l++) {
        const cpu_kernels *kern = cpu_kernels_get((cpu_simd_level)l);
        if (!kern) continue;
        for (int act = 0; act < 2; act++) {
            memcpy(got, g, sizeof got);
            kern->gated_act((cv_activation)act, got, u, 37);
            for (int i = 0; i < 37; i++) {
                double x = g[i], a;
                if (act == CV_ACT_SILU)
                    a = x / (1.0 + exp(-x));
                else
                    a = 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
                assert_float_equal(got[i], a * u[i], 1e-6 * (1.0 + fabs(a * u[i])));
            }
        }
    }
}

static void test_rmsnorm(void **state)
{
    (void)state;
    float x[50], w[50], out[50];
    double ss = 0.0;
    for (int i = 0; i < 50; i++) {
        x[i] = 3.0f * frand();
        w[i] = 1.0f + frand();
        ss += (double)x[i] * x[i];
    }
    double inv = 1.0 / sqrt(ss / 50 + 1e-5);
    cpu_rmsnorm(x, w, 50, 1e-5f, out);
    for (int i = 0; i < 50; i++)
        assert_float_equal(out[i], w[i] * x[i] * inv, 1e-5);
    cpu_rmsnorm(x, w, 50, 1e-5f, x); /* in place */
    assert_memory_equal(x, out, sizeof out);
}

/* LayerNorm against the double-precision formula, with a large common
 * offset (the mean must be subtracted before squaring), and in place. */
static void test_layernorm(void **state)
{
    (void)state;
    enum { N = 77 };
    float x[N], w[N], b[N], out[N];
    double sum = 0.0;
    for (int i = 0; i < N; i++) {
        x[i] = 100.0f + 3.0f * frand();
        w[i] = 1.0f + frand();
        b[i] = frand();
        sum += x[i];
    }
    const double mean = sum / N;
    double var = 0.0;
    for (int i = 0; i < N; i++)
        var += (x[i] - mean) * (x[i] - mean) / N;
    const double inv = 1.0 / sqrt(var + 1e-5);
    cpu_layernorm(x, w, b, N, 1e-5f, out);
    for (int i = 0; i < N; i++) {
        const double want = (x[i] - mean) * inv * w[i] + b[i];
        assert_float_equal(out[i], want, 1e-5 * (1.0 + fabs(want)));
    }
    cpu_layernorm(x, w, b, N, 1e-5f, x);
    assert_memory_equal(x, out, sizeof out);
    /* A constant row: variance 0, the output is the bias. */
    for (int i = 0; i < N; i++)
        x[i] = 2.5f;
    cpu_layernorm(x, w, b, N, 1e-5f, out);
    assert_memory_equal(out, b, sizeof out);
}

/* The plain MLP's activations against double precision: relu exactly,
 * gelu_new (the tanh approximation) to 1e-6 relative. */
static void test_plain_act(void **state)
{
    (void)state;
    enum { N = 41 };
    float x[N], got[N];
    for (int i = 0; i < N; i++)
        x[i] = 12.0f * frand();
    x[0] = 0.0f;
    x[1] = -0.0f;
    memcpy(got, x, sizeof got);
    cpu_act(CV_ACT_RELU, got, N);
    for (int i = 0; i < N; i++)
        assert_true(got[i] == (x[i] > 0.0f ? x[i] : 0.0f));
    memcpy(got, x, sizeof got);
    cpu_act(CV_ACT_GELU_TANH, got, N);
    for (int i = 0; i < N; i++) {
        const double v = x[i];
        const double want = 0.5 * v * (1.0 + tanh(sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
        assert_float_equal(got[i], want, 1e-6 * (1.0 + fabs(want)));
    }
    memcpy(got, x, sizeof got);
    cpu_act(CV_ACT_SILU, got, N);
    for (int i = 0; i < N; i++) {
        const double want = x[i] / (1.0 + exp(-(double)x[i]));
        assert_float_equal(got[i], want, 1e-6 * (1.0 + fabs(want)));
    }
}

static cv_model_config rope_config(cv_rope_type type)
{
    cv_model_config c;
    memset(&c, 0, sizeof c);
    c.head_dim = 16;
    c.rope_theta = 10000.0f;
    c.rope_type = type;
    c.rope_factor = type == CV_ROPE_LINEAR ? 2.0f : 8.0f;
    c.rope_low_freq_factor = 1.0f;
    c.rope_high_freq_factor = 4.0f;
    c.rope_original_max_position = 32;
    return c;
}

static void test_rope_inv_freq(void **state)
{
    (void)state;
    float def[8], lin[8], l3[8];
    cv_model_config c = rope_config(CV_ROPE_DEFAULT);
    cv_rope_inv_freq(&c, def);
    c = rope_config(CV_ROPE_LINEAR);
    cv_rope_inv_freq(&c, lin);
    c = rope_config(CV_ROPE_LLAMA3);
    cv_rope_inv_freq(&c, l3);
    for (int i = 0; i < 8; i++) {
        assert_float_equal(def[i], 1.0 / pow(10000.0, 2.0 * i / 16.0), 1e-7 * def[i] + 1e-12);
        assert_true(lin[i] == def[i] / 2.0f);
    }
    /* The fixtures' README: HF's llama3 inv_freq / default for this
     * config is [1, 0.3031, 0.125 x 6] (high, medium and low bands). */
    assert_float_equal(l3[0] / def[0], 1.0, 1e-6);
    assert_float_equal(l3[1] / def[1], 0.3031, 1e-4);
    for (int i = 2; i < 8; i++)
        assert_float_equal(l3[i] / def[i], 0.125, 1e-6);
}

static void test_rope_apply(void **state)
{
    (void)state;
    float head[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    const float cs[4] = {1.0f, 0.0f, 0.6f, -1.0f}, sn[4] = {0.0f, 1.0f, 0.8f, 0.0f};
    cpu_rope_apply(head, cs, sn, 8);
    /* HF rotate_half: out[i] = x[i] cos - x[i+4] sin, out[i+4] = x[i+4] cos + x[i] sin. */
    const float want[8] = {1, -6, 3 * 0.6f - 7 * 0.8f, -4, 5, 2, 7 * 0.6f + 3 * 0.8f, -8};
    for (int i = 0; i < 8; i++)
        assert_float_equal(head[i], want[i], 1e-6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul_all_levels),
        cmocka_unit_test(test_matmul_many_tokens),
        cmocka_unit_test(test_f16_conversion),
        cmocka_unit_test(test_attn_block),
        cmocka_unit_test(test_f32_narrowing),
        cmocka_unit_test(test_gated_act),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_plain_act),
        cmocka_unit_test(test_rope_inv_freq),
        cmocka_unit_test(test_rope_apply),
        cmocka_unit_test(test_pack_layout),
        cmocka_unit_test(test_matmul_tables_agree),
        cmocka_unit_test(test_narrow_all_levels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

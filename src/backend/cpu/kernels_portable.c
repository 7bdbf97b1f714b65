/* Portable kernels (plain C, any CPU) and the run-time choice of table. */
#include <math.h>
#include <string.h>

#include "backend/cpu/cpu_kernels.h"

float cpu_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1fu) {
        bits = sign | 0x7f800000u | (mant << 13); /* inf / nan */
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else {
        /* Subnormal half: normalize into a normal float. */
        int e = -1;
        do {
            e++;
            mant <<= 1;
        } while ((mant & 0x400u) == 0);
        bits = sign | ((uint32_t)(112 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t cpu_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* inf, nan (kept quiet) */
        return sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u);
    if (absx >= 0x477ff000u) /* rounds past 65504 */
        return sign | 0x7c00u;
    if (absx < 0x38800000u) { /* below the smallest normal half: subnormal */
        if (absx < 0x33000000u) return sign;
        uint32_t mant = (absx & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(absx >> 23); /* 14 .. 24 */
        uint32_t half = mant >> shift, rem = mant & ((1u << shift) - 1u), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1u))) half++;
        return sign | (uint16_t)half;
    }
    uint32_t h = ((absx >> 13) - (112u << 10)), rem = absx & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
        h++; /* a carry into the exponent is the right answer */
    return sign | (uint16_t)h;
}

uint16_t cpu_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet nan */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

static inline float bf16_to_f32(uint16_t b)
{
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

void cpu_to_f32(cv_dtype dtype, const void *src, float *dst, int64_t n)
{
    switch (dtype) {
    case CV_DTYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case CV_DTYPE_F16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = cpu_f16_to_f32(((const uint16_t *)src)[i]);
        break;
    case CV_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = bf16_to_f32(((const uint16_t *)src)[i]);
        break;
    }
}

void cpu_pack(void *dst, cv_dtype to, const void *src, cv_dtype from, int64_t out, int64_t in)
{
    const int64_t rows = cpu_packed_elems(out, in) / (in > 0 ? in : 1);
    const size_t esz = cv_dtype_size(to);
    for (int64_t o = 0; o < rows; o++) {
        const int64_t base = (o / CPU_PANEL) * in * CPU_PANEL + o % CPU_PANEL;
        for (int64_t i = 0; i < in; i++) {
            const int64_t at = base + i * CPU_PANEL;
            if (o >= out)
                memset((char *)dst + at * esz, 0, esz);
            else if (to == from)
                memcpy((char *)dst + at * esz, (const char *)src + (o * in + i) * esz, esz);
            else
                cv_dtype_store(dst, at, to, cv_dtype_load(src, o * in + i, from));
        }
    }
}

static inline float weight(cv_dtype wtype, const void *w, int64_t idx)
{
    if (wtype == CV_DTYPE_F32) return ((const float *)w)[idx];
    uint16_t h = ((const uint16_t *)w)[idx];
    return wtype == CV_DTYPE_F16 ? cpu_f16_to_f32(h) : bf16_to_f32(h);
}

/* Panel by panel, token by token: the panel's rows accumulate side by side
 * while the input elements go by in order, the chain every table computes. */
static void portable_matmul(cv_dtype wtype, const void *w, int in, const float *x, int x_stride,
                            int n_tok, float *y, int y_stride, int o0, int o1, bool accumulate)
{
    for (int p = o0 / CPU_PANEL; p * CPU_PANEL < o1; p++) {
        const int r0 = p * CPU_PANEL;
        const int lo = o0 > r0 ? o0 - r0 : 0, hi = o1 - r0 < CPU_PANEL ? o1 - r0 : CPU_PANEL;
        const int64_t panel = (int64_t)p * in * CPU_PANEL;
        for (int t = 0; t < n_tok; t++) {
            const float *xt = x + (int64_t)t * x_stride;
            float acc[CPU_PANEL] = {0};
            for (int i = 0; i < in; i++)
                for (int j = lo; j < hi; j++)
                    acc[j] =
                        fmaf(weight(wtype, w, panel + (int64_t)i * CPU_PANEL + j), xt[i], acc[j]);
            float *dst = y + (int64_t)t * y_stride + r0;
            for (int j = lo; j < hi; j++)
                dst[j] = accumulate ? dst[j] + acc[j] : acc[j];
        }
    }
}

static inline float kv_elem(cv_dtype dt, const void *p, size_t i)
{
    if (dt == CV_DTYPE_F32) return ((const float *)p)[i];
    uint16_t h = ((const uint16_t *)p)[i];
    return dt == CV_DTYPE_F16 ? cpu_f16_to_f32(h) : bf16_to_f32(h);
}

static void head_attn(cv_dtype kv_dtype, const float *q, const void *k, const void *v, int n,
                      int head_dim, float scale, float *m, float *l, float *out, float *scores)
{
    float m_new = *m;
    for (int j = 0; j < n; j++) {
        float s = 0.0f;
        for (int d = 0; d < head_dim; d++)
            s += q[d] * kv_elem(kv_dtype, k, (size_t)j * head_dim + d);
        scores[j] = s * scale;
        m_new = scores[j] > m_new ? scores[j] : m_new;
    }
    float corr = expf(*m - m_new);
    *l *= corr;
    for (int d = 0; d < head_dim; d++)
        out[d] *= corr;
    for (int j = 0; j < n; j++) {
        float p = expf(scores[j] - m_new);
        *l += p;
        for (int d = 0; d < head_dim; d++)
            out[d] += p * kv_elem(kv_dtype, v, (size_t)j * head_dim + d);
    }
    *m = m_new;
}

static void portable_attn_block(cv_dtype kv_dtype, const float *q, int n_q, const void *k,
                                const void *v, int n, int head_dim, float scale, float *m, float *l,
                                float *out, float *scores)
{
    for (int h = 0; h < n_q; h++)
        head_attn(kv_dtype, q + h * head_dim, k, v, n, head_dim, scale, &m[h], &l[h],
                  out + h * head_dim, scores);
}

static void portable_gated_act(cv_activation act, float *gate, const float *up, int n)
{
    for (int i = 0; i < n; i++) {
        float g = gate[i];
        if (act == CV_ACT_SILU) {
            g = g / (1.0f + expf(-g));
        } else {
            const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
            g = 0.5f * g * (1.0f + tanhf(k * (g + 0.044715f * g * g * g)));
        }
        gate[i] = g * up[i];
    }
}

static void portable_narrow(cv_dtype dtype, const float *src, uint16_t *dst, int n)
{
    for (int i = 0; i < n; i++)
        dst[i] = dtype == CV_DTYPE_F16 ? cpu_f32_to_f16(src[i]) : cpu_f32_to_bf16(src[i]);
}

const cpu_kernels cpu_kernels_portable = {
    .level = CPU_SIMD_PORTABLE,
    .name = "portable",
    .matmul = portable_matmul,
    .attn_block = portable_attn_block,
    .narrow = portable_narrow,
    .gated_act = portable_gated_act,
};

const cpu_kernels *cpu_kernels_get(cpu_simd_level level)
{
    __builtin_cpu_init();
    switch (level) {
    case CPU_SIMD_PORTABLE:
        return &cpu_kernels_portable;
    case CPU_SIMD_AVX2:
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
            __builtin_cpu_supports("f16c"))
            return &cpu_kernels_avx2;
        return NULL;
    case CPU_SIMD_AVX512:
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl"))
            return &cpu_kernels_avx512;
        return NULL;
    default:
        return NULL;
    }
}

const cpu_kernels *cpu_kernels_best(void)
{
    for (int l = CPU_SIMD_COUNT - 1; l > CPU_SIMD_PORTABLE; l--) {
        const cpu_kernels *k = cpu_kernels_get((cpu_simd_level)l);
        if (k) return k;
    }
    return &cpu_kernels_portable;
}

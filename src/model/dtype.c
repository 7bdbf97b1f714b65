/* Weight dtypes: sizes, names and the F32 <-> F16/BF16 conversions that
 * writers (the dummy-model tool, tests) and readers share. */
#include <string.h>

#include "model/model.h"

size_t cv_dtype_size(cv_dtype dtype)
{
    return dtype == CV_DTYPE_F32 ? 4 : 2;
}

const char *cv_dtype_name(cv_dtype dtype)
{
    switch (dtype) {
    case CV_DTYPE_F32:
        return "F32";
    case CV_DTYPE_F16:
        return "F16";
    case CV_DTYPE_BF16:
        return "BF16";
    }
    return "?";
}

int64_t cv_tensor_numel(const cv_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->n_dims; i++)
        n *= t->shape[i];
    return n;
}

static uint32_t f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* Drops the low SHIFT bits of M, rounding to nearest, ties to even. */
static uint32_t round_shift(uint32_t m, int shift)
{
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    return q + (rem > half || (rem == half && (q & 1)));
}

uint16_t cv_f32_to_f16(float x)
{
    uint32_t u = f32_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffff;
    if (a > 0x7f800000) return sign | 0x7e00;  /* NaN */
    if (a >= 0x477ff000) return sign | 0x7c00; /* >= 65520 rounds to infinity */
    if (a >= 0x38800000)                       /* normal: rebias 127 -> 15 */
        return sign | (uint16_t)round_shift(a - 0x38000000, 13);
    if (a < 0x33000000) return sign; /* below half the smallest subnormal */
    /* Subnormal: the value in units of 2^-24 is mant * 2^(E - 126). */
    int e = (int)(a >> 23);
    return sign | (uint16_t)round_shift((a & 0x7fffff) | 0x800000, 126 - e);
}

float cv_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0) return bits_f32(sign | f32_bits((float)m * 0x1p-24f));
    if (e == 31) return bits_f32(sign | 0x7f800000 | m << 13);
    return bits_f32(sign | (e + 112) << 23 | m << 13);
}

uint16_t cv_f32_to_bf16(float x)
{
    uint32_t u = f32_bits(x);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)(u >> 16 | 0x40); /* quiet NaN */
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

float cv_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

float cv_dtype_load(const void *array, size_t i, cv_dtype dtype)
{
    switch (dtype) {
    case CV_DTYPE_F16:
        return cv_f16_to_f32(((const uint16_t *)array)[i]);
    case CV_DTYPE_BF16:
        return cv_bf16_to_f32(((const uint16_t *)array)[i]);
    default:
        return ((const float *)array)[i];
    }
}

void cv_dtype_store(void *array, size_t i, cv_dtype dtype, float x)
{
    switch (dtype) {
    case CV_DTYPE_F16:
        ((uint16_t *)array)[i] = cv_f32_to_f16(x);
        break;
    case CV_DTYPE_BF16:
        ((uint16_t *)array)[i] = cv_f32_to_bf16(x);
        break;
    default:
        ((float *)array)[i] = x;
        break;
    }
}

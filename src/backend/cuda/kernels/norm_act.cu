/* Norms and elementwise kernels between the GEMMs of the CUDA backend
 * (contract in norm_act.h): RMSNorm and the gated MLP activation of the
 * Llama family; LayerNorm with a bias (also the plain copy of rows into a
 * GEMM operand that post-norm layers and a missing final norm need), bias
 * adds after GEMMs and the non-gated MLP's act(x + b) of the OPT / GPT-2
 * structure; and the sum of the two halves of a split-activation GEMM.
 * Matrix products are cuBLAS (cuda_forward.c) or kernels/gemv.cu.
 *
 * Everything accumulates in fp32; 16-bit values are widened on load and
 * rounded to nearest even on store. Math follows HF transformers' eager
 * Llama/Qwen code so that f32 models match it within 1e-4, and for
 * LayerNorm and the plain MLP the CPU backend (src/backend/cpu/forward.c),
 * the reference for the OPT / GPT-2 structure. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

#include "backend/cuda/kernels/kernel_util.cuh"
#include "backend/cuda/kernels/norm_act.h"

namespace
{

/* Grid-stride launches: enough 256-thread blocks for N elements, capped. */
int blocks_for(size_t n)
{
    const size_t b = (n + 255) / 256;
    return (int)(b < 1 ? 1 : b < 65536 ? b : 65536);
}

/* ---- RMSNorm -------------------------------------------------------------- */

/* One block per row. VEC4: n % 4 == 0 and x, w 16-byte aligned, read as
 * float4 (the scalar form runs at about half the copy bandwidth). */
template <typename OUT, bool VEC4>
__global__ void rmsnorm_kernel(const float *x, const int32_t *rows, const float *w, int n,
                               float eps, OUT *out, int ld_out, size_t lo_off)
{
    __shared__ float partial[33]; /* block_sum's */
    const int r = blockIdx.x;
    const float *xr = x + (size_t)(rows ? rows[r] : r) * n;
    OUT *o = out + (size_t)r * ld_out;
    const float4 *x4 = (const float4 *)xr, *w4 = (const float4 *)w;
    float ss = 0.0f;
    if (VEC4) {
        for (int i = threadIdx.x; i < n / 4; i += blockDim.x) {
            const float4 v = x4[i];
            ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
    } else {
        for (int i = threadIdx.x; i < n; i += blockDim.x)
            ss += xr[i] * xr[i];
    }
    /* HF: x * torch.rsqrt(variance + eps), then weight * that. */
    const float inv = 1.0f / sqrtf(block_sum(ss, partial) / (float)n + eps);
    if (VEC4) {
        for (int i = threadIdx.x; i < n / 4; i += blockDim.x) {
            const float4 v = x4[i], g = w4[i];
            store_act(o, 4 * i, lo_off, g.x * (v.x * inv));
            store_act(o, 4 * i + 1, lo_off, g.y * (v.y * inv));
            store_act(o, 4 * i + 2, lo_off, g.z * (v.z * inv));
            store_act(o, 4 * i + 3, lo_off, g.w * (v.w * inv));
        }
    } else {
        for (int i = threadIdx.x; i < n; i += blockDim.x)
            store_act(o, i, lo_off, w[i] * (xr[i] * inv));
    }
}

/* ---- LayerNorm ------------------------------------------------------------ */

/* One block per row. Two passes over the row (mean, then the variance of
 * x - mean), as the CPU's cpu_layernorm; in place is safe (each thread
 * writes only the elements it read, after both sums). */
template <typename OUT>
__global__ void layernorm_kernel(const float *x, const int32_t *rows, const float *w,
                                 const float *bias, int n, float eps, OUT *out, int ld_out,
                                 size_t lo_off)
{
    __shared__ float sh[33];
    const int r = blockIdx.x;
    const float *xr = x + (size_t)(rows ? rows[r] : r) * n;
    const size_t o = (size_t)r * ld_out;
    if (!w) { /* uniform over the block: the rows as they are */
        for (int i = threadIdx.x; i < n; i += blockDim.x)
            store_act(out, o + i, lo_off, xr[i]);
        return;
    }
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        s += xr[i];
    const float mean = block_sum(s, sh) / (float)n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float d = xr[i] - mean;
        ss += d * d;
    }
    const float inv = 1.0f / sqrtf(block_sum(ss, sh) / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = (xr[i] - mean) * inv * w[i] + (bias ? bias[i] : 0.0f);
        store_act(out, o + i, lo_off, v);
    }
}

/* ---- gated MLP activation ------------------------------------------------- */

/* One token row per blockIdx.y, so no thread divides to find its row.
 * The vector form (f % 8 == 0, no split rows) reads eight gate and eight up
 * values with 16-byte loads; the scalar one takes any shape. */
template <typename IN, typename OUT>
__global__ void gated_act_vec8_kernel(cv_activation act, const IN *gu, int f, OUT *out)
{
    const int c = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (c >= f) return;
    const size_t t = blockIdx.y;
    float g[8], u[8];
    load8(gu + t * 2 * f + c, g);
    load8(gu + t * 2 * f + f + c, u);
#pragma unroll
    for (int i = 0; i < 8; i++)
        g[i] = activate(act, g[i]) * u[i];
    store8(out + t * f + c, g);
}

template <typename IN, typename OUT>
__global__ void gated_act_kernel(cv_activation act, const IN *gu, int f, OUT *out, size_t lo_off)
{
    const size_t t = blockIdx.y;
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < f; c += gridDim.x * blockDim.x)
        store_act(out, t * f + c, lo_off,
                  activate(act, to_f(gu[t * 2 * f + c])) * to_f(gu[t * 2 * f + f + c]));
}

/* ---- bias and the non-gated MLP -------------------------------------------- */

__global__ void add_bias_kernel(float *y, const float *bias, int n_rows, int n)
{
    const size_t total = (size_t)n_rows * n;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += bias[i % n];
}

template <typename OUT>
__global__ void bias_act_kernel(cv_activation act, const float *in, const float *bias, int n_rows,
                                int n, OUT *out, size_t lo_off)
{
    const size_t total = (size_t)n_rows * n;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const float v = in[i] + (bias ? bias[i % n] : 0.0f);
        store_act(out, i, lo_off, activate(act, v));
    }
}

/* ---- split activations ---------------------------------------------------- */

/* y (+)= y2[:n] + y2[n:]: the two halves of a split-activation GEMM. */
__global__ void sum_halves_kernel(const float *y2, size_t n, float *y, int accumulate)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float v = y2[i] + y2[n + i];
        y[i] = accumulate ? y[i] + v : v;
    }
}

} /* namespace */

/* ---- launchers ------------------------------------------------------------ */

extern "C" int cuda_rmsnorm(const float *x, const int32_t *rows, int n_rows, const float *w, int n,
                            float eps, cv_dtype out_dtype, void *out, int ld_out, size_t lo_off,
                            cudaStream_t stream)
{
    if (n_rows <= 0) return 0;
    return with_type(out_dtype, [&](auto v) {
        using T = decltype(v);
        if (n % 4 == 0 && ((uintptr_t)x | (uintptr_t)w) % 16 == 0)
            rmsnorm_kernel<T, true>
                <<<n_rows, 256, 0, stream>>>(x, rows, w, n, eps, (T *)out, ld_out, lo_off);
        else
            rmsnorm_kernel<T, false>
                <<<n_rows, 256, 0, stream>>>(x, rows, w, n, eps, (T *)out, ld_out, lo_off);
    });
}

extern "C" int cuda_layernorm(const float *x, const int32_t *rows, int n_rows, const float *w,
                              const float *bias, int n, float eps, cv_dtype out_dtype, void *out,
                              int ld_out, size_t lo_off, cudaStream_t stream)
{
    if (n_rows <= 0) return 0;
    return with_type(out_dtype, [&](auto v) {
        using T = decltype(v);
        layernorm_kernel<T>
            <<<n_rows, 256, 0, stream>>>(x, rows, w, bias, n, eps, (T *)out, ld_out, lo_off);
    });
}

extern "C" int cuda_gated_act(cv_activation act, cv_dtype gu_dtype, const void *gu, int n_tok,
                              int f, cv_dtype out_dtype, void *out, size_t lo_off,
                              cudaStream_t stream)
{
    if (n_tok <= 0) return 0;
    int rc_in = 0;
    const int rc = with_type(out_dtype, [&](auto o) {
        using OUT = decltype(o);
        rc_in = with_type(gu_dtype, [&](auto i) {
            using IN = decltype(i);
            /* Rows in launches of at most 65535 (gridDim.y's limit). */
            for (int t0 = 0; t0 < n_tok; t0 += 65535) {
                const int rows = n_tok - t0 < 65535 ? n_tok - t0 : 65535;
                const IN *g = (const IN *)gu + (size_t)t0 * 2 * f;
                OUT *y = (OUT *)out + (size_t)t0 * f;
                if (f % 8 == 0 && !lo_off) {
                    const dim3 grid((f / 8 + 255) / 256, rows);
                    gated_act_vec8_kernel<IN, OUT><<<grid, 256, 0, stream>>>(act, g, f, y);
                } else {
                    const dim3 grid((f + 255) / 256 < 64 ? (f + 255) / 256 : 64, rows);
                    gated_act_kernel<IN, OUT><<<grid, 256, 0, stream>>>(act, g, f, y, lo_off);
                }
            }
        });
    });
    return rc_in ? rc_in : rc;
}

extern "C" int cuda_add_bias(float *y, const float *bias, int n_rows, int n, cudaStream_t stream)
{
    if (n_rows <= 0) return 0;
    add_bias_kernel<<<blocks_for((size_t)n_rows * n), 256, 0, stream>>>(y, bias, n_rows, n);
    return (int)cudaGetLastError();
}

extern "C" int cuda_bias_act(cv_activation act, const float *in, const float *bias, int n_rows,
                             int n, cv_dtype out_dtype, void *out, size_t lo_off,
                             cudaStream_t stream)
{
    if (n_rows <= 0) return 0;
    return with_type(out_dtype, [&](auto v) {
        using T = decltype(v);
        bias_act_kernel<T><<<blocks_for((size_t)n_rows * n), 256, 0, stream>>>(
            act, in, bias, n_rows, n, (T *)out, lo_off);
    });
}

extern "C" int cuda_sum_halves(const float *y2, size_t n, float *y, int accumulate,
                               cudaStream_t stream)
{
    const int blocks = (int)((n + 255) / 256 < 4096 ? (n + 255) / 256 : 4096);
    sum_halves_kernel<<<blocks, 256, 0, stream>>>(y2, n, y, accumulate);
    return (int)cudaGetLastError();
}

/* Kernels of the OPT / GPT-2 structure on the GPU: LayerNorm with a bias
 * (also the plain copy of rows into a GEMM operand that post-norm layers and
 * a missing final norm need), bias adds after GEMMs, the non-gated MLP's
 * act(x + b), learned position embeddings, and the embedding gather that
 * feeds OPT's project_in. The Llama family never launches them.
 *
 * Math follows the CPU backend (src/backend/cpu/forward.c), the reference
 * for these architectures: fp32 throughout, 16-bit values widened on load
 * and rounded to nearest even on store. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/kernels/kernel_util.cuh"

namespace
{

/* Grid-stride launches: enough 256-thread blocks for N elements, capped. */
int blocks_for(size_t n)
{
    const size_t b = (n + 255) / 256;
    return (int)(b < 1 ? 1 : b < 65536 ? b : 65536);
}

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

__global__ void add_positions_kernel(float *x, const float *pos_embed, const int32_t *positions,
                                     int offset, int hidden)
{
    const int t = blockIdx.x;
    const float *row = pos_embed + (size_t)(positions[t] + offset) * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
        x[(size_t)t * hidden + i] += row[i];
}

template <typename IN, typename OUT>
__global__ void gather_act_kernel(const IN *embed, const int32_t *ids, int width, OUT *out,
                                  size_t lo_off)
{
    const int t = blockIdx.x;
    const IN *row = embed + (size_t)ids[t] * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x)
        store_act(out, (size_t)t * width + i, lo_off, to_f(row[i]));
}

} /* namespace */

/* ---- launchers ------------------------------------------------------------ */

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

extern "C" int cuda_add_positions(float *x, const float *pos_embed, const int32_t *positions,
                                  int offset, int n_tok, int hidden, cudaStream_t stream)
{
    if (n_tok <= 0) return 0;
    add_positions_kernel<<<n_tok, 256, 0, stream>>>(x, pos_embed, positions, offset, hidden);
    return (int)cudaGetLastError();
}

extern "C" int cuda_gather_act(cv_dtype embed_dtype, const void *embed, const int32_t *ids,
                               int n_tok, int width, cv_dtype out_dtype, void *out, size_t lo_off,
                               cudaStream_t stream)
{
    if (n_tok <= 0) return 0;
    int rc = 0;
    const int rc_out = with_type(out_dtype, [&](auto o) {
        using OUT = decltype(o);
        rc = with_type(embed_dtype, [&](auto e) {
            using IN = decltype(e);
            gather_act_kernel<IN, OUT>
                <<<n_tok, 256, 0, stream>>>((const IN *)embed, ids, width, (OUT *)out, lo_off);
        });
    });
    return rc ? rc : rc_out;
}

/* Rows of the embedding tables on the GPU (contract in embed.h): the
 * token embeddings gathered into the fp32 residual stream, or as a GEMM
 * operand (OPT's project_in reads them), and the learned position
 * embeddings (OPT, GPT-2) added to the stream. Exact copies: 16-bit values
 * are widened to fp32 on load and, for a 16-bit operand, rounded to nearest
 * even on store (with the split-activation lo rows when asked). */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

#include "backend/cuda/kernels/embed.h"
#include "backend/cuda/kernels/kernel_util.cuh"

namespace
{

template <typename IN, typename OUT>
__global__ void gather_act_kernel(const IN *embed, const int32_t *ids, int width, OUT *out,
                                  size_t lo_off)
{
    const int t = blockIdx.x;
    const IN *row = embed + (size_t)ids[t] * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x)
        store_act(out, (size_t)t * width + i, lo_off, to_f(row[i]));
}

__global__ void add_positions_kernel(float *x, const float *pos_embed, const int32_t *positions,
                                     int offset, int hidden)
{
    const int t = blockIdx.x;
    const float *row = pos_embed + (size_t)(positions[t] + offset) * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
        x[(size_t)t * hidden + i] += row[i];
}

} /* namespace */

/* ---- launchers ------------------------------------------------------------ */

/* The token embeddings into the residual stream: the gather of a GEMM
 * operand with an fp32 output and no split rows, where store_act writes
 * the widened value as it is. */
extern "C" int cuda_embed(cv_dtype dtype, const void *embed, const int32_t *ids, int n_tok,
                          int hidden, float *x, cudaStream_t stream)
{
    return cuda_gather_act(dtype, embed, ids, n_tok, hidden, CV_DTYPE_F32, x, 0, stream);
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

extern "C" int cuda_add_positions(float *x, const float *pos_embed, const int32_t *positions,
                                  int offset, int n_tok, int hidden, cudaStream_t stream)
{
    if (n_tok <= 0) return 0;
    add_positions_kernel<<<n_tok, 256, 0, stream>>>(x, pos_embed, positions, offset, hidden);
    return (int)cudaGetLastError();
}

/* The per-token q/k/v epilogue of the CUDA backend (kernels/rope_kv.cu):
 * what runs between the QKV GEMM and attention. The KV pool it writes has
 * the layout of cuda_internal.h (and attn/attn.h), which the attention
 * kernels read.
 *
 * The launcher enqueues on STREAM and returns the cudaError_t of the launch
 * (cudaGetLastError) as an int, 0 on success; all pointers are device
 * memory the caller owns. */
#ifndef CV_BACKEND_CUDA_KERNELS_ROPE_KV_H
#define CV_BACKEND_CUDA_KERNELS_ROPE_KV_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Per token: biases, per-head RMSNorm (Qwen3), RoPE on q and k (q in place
 * in qkv, rounded to its type), and k, v written into the KV pool at the
 * token's slot. fp32 arithmetic whatever qkv's type. head_dim at most
 * CUDA_MAX_HEAD_DIM (attn/attn.h), checked at create. */
typedef struct cuda_qkv_args {
    int n_tokens, n_heads, n_kv_heads, head_dim, block_size;
    void *qkv; /* (n_tokens, (n_heads + 2 * n_kv_heads) * head_dim): q | k | v, in qkv_dtype */
    cv_dtype qkv_dtype;           /* F32, or the 16-bit type of vLLM's numerics */
    const float *bq, *bk, *bv;    /* optional biases, NULL when absent */
    const float *q_norm, *k_norm; /* (head_dim) optional */
    float eps;
    const float *inv_freq;       /* (head_dim / 2) */
    const int32_t *positions;    /* (n_tokens) */
    const int64_t *slot_mapping; /* (n_tokens) */
    void *kv;                    /* the pool */
    cv_dtype kv_dtype;
    size_t block_elems; /* elements per block (all layers) */
    size_t layer_off;   /* element offset of this layer's K in a block */
} cuda_qkv_args;
int cuda_qkv_post(const cuda_qkv_args *a, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif

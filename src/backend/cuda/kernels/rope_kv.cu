/* The per-token q/k/v epilogue after the QKV GEMM (contract in rope_kv.h):
 * biases, the per-head RMSNorm of q and k (Qwen3), RoPE on q and k, q
 * written back in place and k, v stored into the paged KV pool at the
 * token's slot. Small steps of 16-bit models without q/k norms run the same
 * arithmetic op for op in the decode-size GEMV's epilogue (gemv.cu).
 *
 * Everything accumulates in fp32; 16-bit values are widened on load and
 * rounded to nearest even on store. Math follows HF transformers' eager
 * Llama/Qwen code (rotate_half RoPE with fp32 cos / sin of inv_freq *
 * position, RMSNorm as w * (x * rsqrt(mean(x^2) + eps))) so that f32 models
 * match it within 1e-4. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

#include "backend/cuda/attn/attn.h"
#include "backend/cuda/kernels/kernel_util.cuh"
#include "backend/cuda/kernels/rope_kv.h"

namespace
{

/* One block per token, one warp per head. A lane holds element pairs (e,
 * e + half) for e = lane + 32 i, the two halves RoPE rotates together. The
 * token's cos / sin depend on e alone: computed once into shared memory
 * for all its heads (cosf / sinf per head and element were most of the
 * kernel's time). QKV: the GEMM output's type (fp32, or 16-bit with
 * vLLM's numerics; q is written back rounded to it). */
template <typename QKV, typename KV> __global__ void qkv_post_kernel(cuda_qkv_args a)
{
    enum { MAX_PAIRS = CUDA_MAX_HEAD_DIM / 2 / 32 };
    __shared__ float cos_e[CUDA_MAX_HEAD_DIM / 2], sin_e[CUDA_MAX_HEAD_DIM / 2];
    const int t = blockIdx.x, lane = threadIdx.x & 31;
    const int hd = a.head_dim, half = hd / 2, nkv = a.n_kv_heads;
    const int n_items = a.n_heads + 2 * nkv;
    const int pos = a.positions[t];
    const int64_t slot = a.slot_mapping[t];
    KV *kv = (KV *)a.kv;
    const size_t slot_base = (size_t)(slot / a.block_size) * a.block_elems + a.layer_off +
                             (size_t)(slot % a.block_size) * hd;
    for (int e = threadIdx.x; e < half; e += blockDim.x) {
        /* HF: freqs = inv_freq * position in fp32, then cos / sin. */
        const float angle = a.inv_freq[e] * (float)pos;
        cos_e[e] = cosf(angle);
        sin_e[e] = sinf(angle);
    }
    __syncthreads();
    for (int item = threadIdx.x >> 5; item < n_items; item += blockDim.x >> 5) {
        QKV *head = (QKV *)a.qkv + (size_t)t * n_items * hd + (size_t)item * hd;
        const bool is_q = item < a.n_heads, is_k = !is_q && item < a.n_heads + nkv;
        const int idx = is_q ? item : is_k ? item - a.n_heads : item - a.n_heads - nkv;
        const float *bias = is_q ? a.bq : is_k ? a.bk : a.bv;
        const float *norm = is_q ? a.q_norm : is_k ? a.k_norm : NULL;
        float lo[MAX_PAIRS], hi[MAX_PAIRS];
        float ss = 0.0f;
#pragma unroll
        for (int p = 0; p < MAX_PAIRS; p++) {
            const int e = lane + 32 * p;
            lo[p] = hi[p] = 0.0f;
            if (e < half) {
                lo[p] = to_f(head[e]);
                hi[p] = to_f(head[e + half]);
                if (bias) {
                    lo[p] += bias[idx * hd + e];
                    hi[p] += bias[idx * hd + e + half];
                }
                ss += lo[p] * lo[p] + hi[p] * hi[p];
            }
        }
        if (norm) { /* warp-uniform: same for every lane */
            const float inv = 1.0f / sqrtf(warp_sum(ss) / (float)hd + a.eps);
#pragma unroll
            for (int p = 0; p < MAX_PAIRS; p++) {
                const int e = lane + 32 * p;
                if (e < half) {
                    lo[p] = norm[e] * (lo[p] * inv);
                    hi[p] = norm[e + half] * (hi[p] * inv);
                }
            }
        }
#pragma unroll
        for (int p = 0; p < MAX_PAIRS; p++) {
            const int e = lane + 32 * p;
            if (e >= half) continue;
            float x0 = lo[p], x1 = hi[p];
            if (item < a.n_heads + nkv) {
                const float c = cos_e[e], s = sin_e[e];
                x0 = lo[p] * c - hi[p] * s;
                x1 = hi[p] * c + lo[p] * s;
            }
            if (is_q) {
                head[e] = from_f<QKV>(x0);
                head[e + half] = from_f<QKV>(x1);
            } else {
                const int sel = is_k ? 0 : 1;
                KV *dst = kv + slot_base + (size_t)(sel * nkv + idx) * a.block_size * hd;
                dst[e] = from_f<KV>(x0);
                dst[e + half] = from_f<KV>(x1);
            }
        }
    }
}

} /* namespace */

/* ---- launcher ------------------------------------------------------------- */

extern "C" int cuda_qkv_post(const cuda_qkv_args *a, cudaStream_t stream)
{
    if (a->n_tokens <= 0) return 0;
    int rc_kv = 0;
    const int rc = with_type(a->qkv_dtype, [&](auto q) {
        using QKV = decltype(q);
        rc_kv = with_type(a->kv_dtype, [&](auto v) {
            using KV = decltype(v);
            qkv_post_kernel<QKV, KV><<<a->n_tokens, 256, 0, stream>>>(*a);
        });
    });
    return rc_kv ? rc_kv : rc;
}

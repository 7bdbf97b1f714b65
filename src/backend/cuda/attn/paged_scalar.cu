/* The scalar paged attention (contract in attn.h, cuda_attention): the
 * kernel of the fp32 KV pool and of shapes the tensor-core kernels
 * (flash_prefill.cu, paged_decode.cu) do not take. Every token of the step
 * against its sequence's cached context on CUDA cores, GQA (a block reads a
 * kv head's keys once for its group of query heads) with an online softmax;
 * long contexts are cut into n_splits ranges merged by a second kernel
 * (flash-decoding).
 *
 * Everything accumulates in fp32; 16-bit K/V are widened on load and the
 * output rounded to nearest even on store. Math follows HF transformers'
 * eager attention, softmax(q k^T * scale) v, so that f32 models match it
 * within 1e-4: scaling q before the products, the online softmax and the
 * split merge only change where fp32 rounds. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

#include "backend/cuda/attn/attn.h"
#include "backend/cuda/kernels/kernel_util.cuh"

namespace
{

enum { ATTN_THREADS = 128, ATTN_TILE = 64, ATTN_LANES_PER_KEY = 8 };

/* Block (token t, kv head g, split sp): the group of query heads sharing kv
 * head g against keys [k0, k1) of t's causal context, tile by tile with an
 * online softmax. Scores: 8 lanes per key (16 keys at a time); softmax: one
 * warp per head; P.V: one thread per output element d (and d + 128). */
template <typename KV, typename OUT>
__global__ void __launch_bounds__(ATTN_THREADS) attn_kernel(cuda_attn_args a)
{
    enum {
        KEY_REGS = CUDA_MAX_HEAD_DIM / ATTN_LANES_PER_KEY,
        D_PER_THREAD = CUDA_MAX_HEAD_DIM / ATTN_THREADS,
        KEYS_PER_PASS = ATTN_THREADS / ATTN_LANES_PER_KEY,
    };
    __shared__ float qs[CUDA_MAX_GROUP * CUDA_MAX_HEAD_DIM];
    __shared__ float sc[CUDA_MAX_GROUP][ATTN_TILE];
    __shared__ size_t row_off[ATTN_TILE];
    __shared__ float m_s[CUDA_MAX_GROUP], l_s[CUDA_MAX_GROUP], alpha_s[CUDA_MAX_GROUP];

    const int t = blockIdx.x, g = blockIdx.y, sp = blockIdx.z, tid = threadIdx.x;
    const int hd = a.head_dim, G = a.n_heads / a.n_kv_heads, bs = a.block_size;
    const int s = a.tok_seq[t];
    const int q0 = a.query_start[s], qlen = a.query_start[s + 1] - q0;
    const int ctx = a.seq_lens[s] - qlen + (t - q0) + 1;
    const int chunk = (ctx + a.n_splits - 1) / a.n_splits;
    const int k0 = sp * chunk, k1 = min(ctx, k0 + chunk);
    const int32_t *table = a.block_tables + (size_t)s * a.max_blocks_per_seq;
    const KV *kbase = (const KV *)a.kv + a.layer_off + (size_t)g * bs * hd;
    const size_t v_off = (size_t)a.n_kv_heads * bs * hd;

    for (int i = tid; i < G * hd; i += ATTN_THREADS)
        qs[i] = a.qkv[(size_t)t * a.ld_qkv + (size_t)g * G * hd + i] * a.scale;
    if (tid < G) {
        m_s[tid] = -INFINITY;
        l_s[tid] = 0.0f;
    }
    __syncthreads(); /* an empty split reads m_s, l_s without entering the loop */
    float acc[CUDA_MAX_GROUP][D_PER_THREAD];
#pragma unroll
    for (int h = 0; h < CUDA_MAX_GROUP; h++)
#pragma unroll
        for (int r = 0; r < D_PER_THREAD; r++)
            acc[h][r] = 0.0f;
    const int grp = tid / ATTN_LANES_PER_KEY, lk = tid % ATTN_LANES_PER_KEY;
    const int warp = tid >> 5, lane = tid & 31;

    for (int tile0 = k0; tile0 < k1; tile0 += ATTN_TILE) {
        const int n = min(ATTN_TILE, k1 - tile0);
        if (tid < n) {
            const int j = tile0 + tid;
            row_off[tid] = (size_t)table[j / bs] * a.block_elems + (size_t)(j % bs) * hd;
        }
        __syncthreads();
        /* Scores s[h][kk] = (q_h * scale) . k_j. */
        for (int kb = 0; kb < n; kb += KEYS_PER_PASS) {
            const int kk = kb + grp;
            const bool valid = kk < n;
            float kr[KEY_REGS];
#pragma unroll
            for (int i = 0; i < KEY_REGS; i++) {
                const int d = lk + ATTN_LANES_PER_KEY * i;
                kr[i] = valid && d < hd ? to_f(kbase[row_off[kk < n ? kk : 0] + d]) : 0.0f;
            }
            for (int h = 0; h < G; h++) {
                float dot = 0.0f;
#pragma unroll
                for (int i = 0; i < KEY_REGS; i++) {
                    const int d = lk + ATTN_LANES_PER_KEY * i;
                    if (d < hd) dot += qs[h * hd + d] * kr[i];
                }
                dot += __shfl_xor_sync(0xffffffffu, dot, 1);
                dot += __shfl_xor_sync(0xffffffffu, dot, 2);
                dot += __shfl_xor_sync(0xffffffffu, dot, 4);
                if (valid && lk == 0) sc[h][kk] = dot;
            }
        }
        __syncthreads();
        /* Online softmax update, one warp per head. */
        for (int h = warp; h < G; h += ATTN_THREADS / 32) {
            const float v0 = lane < n ? sc[h][lane] : -INFINITY;
            const float v1 = lane + 32 < n ? sc[h][lane + 32] : -INFINITY;
            const float m_old = m_s[h];
            const float m_new = fmaxf(m_old, warp_max(fmaxf(v0, v1)));
            const float p0 = lane < n ? expf(v0 - m_new) : 0.0f;
            const float p1 = lane + 32 < n ? expf(v1 - m_new) : 0.0f;
            if (lane < n) sc[h][lane] = p0;
            if (lane + 32 < n) sc[h][lane + 32] = p1;
            const float sum = warp_sum(p0 + p1);
            __syncwarp(); /* every lane has read m_s[h] before lane 0 rewrites it */
            if (lane == 0) {
                const float alpha = expf(m_old - m_new);
                alpha_s[h] = alpha;
                l_s[h] = l_s[h] * alpha + sum;
                m_s[h] = m_new;
            }
        }
        __syncthreads();
        /* acc = acc * alpha + P V. */
#pragma unroll
        for (int r = 0; r < D_PER_THREAD; r++) {
            const int d = tid + ATTN_THREADS * r;
            if (d >= hd) continue;
#pragma unroll
            for (int h = 0; h < CUDA_MAX_GROUP; h++)
                if (h < G) acc[h][r] *= alpha_s[h];
#pragma unroll 8
            for (int kk = 0; kk < n; kk++) {
                const float v = to_f(kbase[row_off[kk] + v_off + d]);
#pragma unroll
                for (int h = 0; h < CUDA_MAX_GROUP; h++)
                    if (h < G) acc[h][r] += sc[h][kk] * v;
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int r = 0; r < D_PER_THREAD; r++) {
        const int d = tid + ATTN_THREADS * r;
        if (d >= hd) continue;
#pragma unroll
        for (int h = 0; h < CUDA_MAX_GROUP; h++) {
            if (h >= G) continue;
            const int head = g * G + h;
            if (a.n_splits == 1) {
                OUT *o = (OUT *)a.out + (size_t)t * a.n_heads * hd + (size_t)head * hd;
                store_act(o, d, a.out_lo_off, acc[h][r] / l_s[h]);
            } else {
                float *p =
                    a.partial + (((size_t)t * a.n_heads + head) * a.n_splits + sp) * (hd + 2);
                p[d] = acc[h][r];
                if (d == 0) {
                    p[hd] = m_s[h];
                    p[hd + 1] = l_s[h];
                }
            }
        }
    }
}

/* Merges the splits of (token, head): out = sum_s e^(m_s - M) acc_s / sum_s
 * e^(m_s - M) l_s. Empty splits carry m = -inf, l = 0. */
template <typename OUT> __global__ void attn_combine_kernel(cuda_attn_args a)
{
    const int t = blockIdx.x, head = blockIdx.y, hd = a.head_dim;
    const float *p = a.partial + ((size_t)t * a.n_heads + head) * a.n_splits * (hd + 2);
    float M = -INFINITY;
    for (int sp = 0; sp < a.n_splits; sp++)
        M = fmaxf(M, p[sp * (hd + 2) + hd]);
    float L = 0.0f;
    for (int sp = 0; sp < a.n_splits; sp++)
        L += p[sp * (hd + 2) + hd + 1] * expf(p[sp * (hd + 2) + hd] - M);
    OUT *o = (OUT *)a.out + (size_t)t * a.n_heads * hd + (size_t)head * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float v = 0.0f;
        for (int sp = 0; sp < a.n_splits; sp++)
            v += p[sp * (hd + 2) + d] * expf(p[sp * (hd + 2) + hd] - M);
        store_act(o, d, a.out_lo_off, v / L);
    }
}

} /* namespace */

/* ---- launcher ------------------------------------------------------------- */

extern "C" int cuda_attention(const cuda_attn_args *a, cudaStream_t stream)
{
    int rc = 0;
    int rc_out = with_type(a->out_dtype, [&](auto o) {
        using OUT = decltype(o);
        rc = with_type(a->kv_dtype, [&](auto k) {
            using KV = decltype(k);
            dim3 grid(a->n_tokens, a->n_kv_heads, a->n_splits);
            attn_kernel<KV, OUT><<<grid, ATTN_THREADS, 0, stream>>>(*a);
        });
        if (rc == 0 && a->n_splits > 1)
            attn_combine_kernel<OUT><<<dim3(a->n_tokens, a->n_heads), 128, 0, stream>>>(*a);
    });
    return rc ? rc : rc_out;
}

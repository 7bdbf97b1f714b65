/* The CUDA backend's own kernels: embedding gather, RMSNorm, the per-token
 * q/k/v epilogue (bias, q/k norm, RoPE, KV store), paged attention and the
 * gated MLP activation. Matrix products are cuBLAS (cuda_backend.c).
 *
 * Everything accumulates in fp32; 16-bit values are widened on load and
 * rounded to nearest even on store. Math follows HF transformers' eager
 * Llama/Qwen code so that f32 models match it within 1e-4. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/kernels/kernel_util.cuh"

namespace
{

/* ---- embedding ------------------------------------------------------------ */

template <typename T>
__global__ void embed_kernel(const T *embed, const int32_t *ids, int hidden, float *x)
{
    const int t = blockIdx.x;
    const T *row = embed + (size_t)ids[t] * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
        x[(size_t)t * hidden + i] = to_f(row[i]);
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

/* ---- q/k/v epilogue ------------------------------------------------------- */

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

/* ---- paged attention ------------------------------------------------------ */

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

extern "C" int cuda_embed(cv_dtype dtype, const void *embed, const int32_t *ids, int n_tok,
                          int hidden, float *x, cudaStream_t stream)
{
    return with_type(dtype, [&](auto v) {
        using T = decltype(v);
        embed_kernel<T><<<n_tok, 256, 0, stream>>>((const T *)embed, ids, hidden, x);
    });
}

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

extern "C" int cuda_sum_halves(const float *y2, size_t n, float *y, int accumulate,
                               cudaStream_t stream)
{
    const int blocks = (int)((n + 255) / 256 < 4096 ? (n + 255) / 256 : 4096);
    sum_halves_kernel<<<blocks, 256, 0, stream>>>(y2, n, y, accumulate);
    return (int)cudaGetLastError();
}

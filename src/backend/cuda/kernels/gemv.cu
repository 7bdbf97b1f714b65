/* Decode-size products y = x W^T (1..8 tokens, 16-bit W) and the RMSNorm
 * of a few rows: the two kernel families a batch-1 decode step is made of.
 *
 * Why not cuBLAS: at 1..8 tokens a GEMM is a stream over W (16 GB per step
 * for an 8B model) and its speed is the fraction of the memory bandwidth it
 * reaches; cublasGemmEx reached ~78% of the copy bandwidth there (issue 10's
 * profile), and each GEMM is a separate launch with its ramp-up and tail.
 *
 * Design of the product (gemv_kernel):
 * - The 8 tokens are the N of one mma.sync.m16n8k16 (bf16/f16 in, fp32
 *   accumulate): a CTA owns 16 rows of W (the M), its warps split the K
 *   range. Tensor cores make the multiply free at any token count (8 tokens
 *   on CUDA-core FMAs would be ~60% of the card's fp32 rate at full
 *   bandwidth); the instruction count per weight byte is a few loads and
 *   two mmas per 1 KB of W.
 * - Loads straight from global to registers, 16 bytes per lane, no shared
 *   memory staging: lane (g, q) of a warp loads 8 consecutive k of W rows g
 *   and g + 8 and of x row (token) g at k offset 8q. Which k sits in which
 *   slot of the mma fragment does not change a dot product as long as A and
 *   B agree, and with this assignment the fragments are exactly those
 *   16-byte words: registers {w.x, w8.x, w.y, w8.y} x {x.x, x.y} hold k
 *   offsets 0..3 of the lane's 8, {.z, .w} offsets 4..7.
 * - Each lane has 4 steps (8 x 16 bytes of W) in flight and loads the next 4
 *   before it multiplies the current ones (double buffer): with 8 warps of
 *   4 KB each per CTA and 2 CTAs per SM that is ~64 KB in flight per SM,
 *   above the ~25 KB a 4.8 TB/s card needs to cover the DRAM latency.
 *   W loads bypass L1 (ld.global.nc.L1::no_allocate) so x stays in it.
 *   x is read with coherent loads, not ld.global.nc: under PDL the kernel
 *   is alive while the previous one still writes x, and .nc is only
 *   defined for data that no one writes during the kernel's lifetime.
 * - Small products (fewer than 1024 row groups: out <= 16K) use 8 warps
 *   per CTA so that ~256 CTAs still fill every SM; larger ones 4 warps.
 * - The warps' partial 16x8 tiles are summed through shared memory in warp
 *   order (deterministic), and warp 0 applies the epilogue: store,
 *   accumulate (the residual add of o_proj and down_proj, the GEMM's
 *   beta = 1 before), the gated activation (the CTA's 16 rows are then 8
 *   gate rows and the 8 matching up rows, so act(gate) * up needs no second
 *   kernel and the fp32 gate|up buffer is never written) or RoPE + KV store
 *   for the q|k|v projection (the 16 rows are 8 pairs (e, e + head_dim / 2)
 *   of heads, the pairs RoPE rotates together, so the rotation and the
 *   KV-pool store need no second kernel either).
 * - Split activations (hi + lo rows) run two mmas per step into the same
 *   accumulator, as cuBLAS ran the 2 n_tok columns before the halves were
 *   summed.
 * - Programmatic dependent launch (gemv.h): the first 4 steps of W are
 *   loaded before griddepcontrol.wait, so the stream of W starts while the
 *   previous kernel finishes. Both kernels let their dependents launch as
 *   soon as they start (griddepcontrol.launch_dependents first): that is
 *   always correct, since a dependent's wait is for this grid's completion
 *   and memory flush, and a GEMV behind a norm behind a GEMV then starts
 *   streaming its weights during the first GEMV's tail. The dependent's
 *   CTAs only take the SM slots this grid leaves (it is issued once all of
 *   this grid's CTAs have started), so nothing waits on them.
 * Numerics: products of 16-bit values are exact in fp32; the sums are fp32
 * (tensor-core accumulation, as cuBLAS's), in a different order than
 * cuBLAS's: results agree to fp32 rounding over in terms.
 *
 * The RMSNorm (rmsnorm_rows_kernel): one CTA of up to 1024 threads per row,
 * each thread holds its 4..16 values of x in registers from one to four
 * 16-byte loads (the block-per-row kernel of norm_act.cu reads x twice),
 * one block reduction; the norm weight is loaded before
 * the PDL wait. No residual add is fused into it: the backend's residual
 * adds are already the epilogues of o_proj's and down_proj's products
 * (CUDA_GEMV_ACCUMULATE here, beta = 1 with cuBLAS), so the norm is the
 * only kernel between two products and PDL hides its launch. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "backend/cuda/kernels/gemv.h"
#include "backend/cuda/kernels/kernel_util.cuh"

namespace
{

constexpr int TILE_ROWS = 16;     /* rows of W per CTA: the mma's M */
constexpr int STEP_K = 32;        /* k per warp step: 4 lanes x 8 elements */
constexpr int UNROLL = 4;         /* steps a lane loads at once */
constexpr int MAX_WARPS = 8;      /* per CTA */
constexpr int MANY_GROUPS = 1024; /* from this many CTAs on, 4 warps each */

__device__ __forceinline__ void pdl_wait()
{
    asm volatile("griddepcontrol.wait;" ::: "memory");
}

__device__ __forceinline__ void pdl_launch_dependents()
{
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

/* 16 bytes of W, not kept in L1 (read once per step). Volatile: issued in
 * program order, so the prefetch stays ahead of griddepcontrol.wait. */
__device__ __forceinline__ uint4 load_w(const void *p)
{
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

/* c (16x8 fp32) += A (16x16, registers a0..a3) B (16x8, b0, b1). */
template <typename T>
__device__ __forceinline__ void mma(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                    uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma<__nv_bfloat16>(float c[4], uint32_t a0, uint32_t a1,
                                                   uint32_t a2, uint32_t a3, uint32_t b0,
                                                   uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma<__half>(float c[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                            uint32_t a3, uint32_t b0, uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* One step's two mmas: W rows g (wa) and g + 8 (wb) against x (xv). */
template <typename T>
__device__ __forceinline__ void mma_step(float c[4], uint4 wa, uint4 wb, uint4 xv)
{
    mma<T>(c, wa.x, wb.x, wa.y, wb.y, xv.x, xv.y);
    mma<T>(c, wa.z, wb.z, wa.w, wb.w, xv.z, xv.w);
}

/* As cuda_gated_act: act(g) * u, fp32. */
__device__ __forceinline__ float gated(cv_activation act, float g, float u)
{
    return activate(act, g) * u;
}

/* Stores v at kv[i] in the pool's dtype. */
__device__ __forceinline__ void store_kv(void *kv, cv_dtype t, size_t i, float v)
{
    if (t == CV_DTYPE_BF16)
        ((__nv_bfloat16 *)kv)[i] = __float2bfloat16_rn(v);
    else if (t == CV_DTYPE_F16)
        ((__half *)kv)[i] = __float2half_rn(v);
    else
        ((float *)kv)[i] = v;
}

/* The RoPE / KV epilogue of token t: lo, hi are its values of rows e and
 * e + head_dim / 2 of head item; cuda_qkv_post's arithmetic, op for op. */
__device__ __forceinline__ void rope_kv(const cuda_gemv_args &a, int t, int item, int e, float lo,
                                        float hi)
{
    const cuda_gemv_rope &r = a.rope;
    const int hd = r.head_dim, half = hd / 2, nq = r.n_heads, nkv = r.n_kv_heads;
    const bool is_q = item < nq, is_k = !is_q && item < nq + nkv;
    const int idx = is_q ? item : is_k ? item - nq : item - nq - nkv;
    const float *bias = is_q ? r.bq : is_k ? r.bk : r.bv;
    if (bias) {
        lo += bias[idx * hd + e];
        hi += bias[idx * hd + e + half];
    }
    float x0 = lo, x1 = hi;
    if (item < nq + nkv) {
        /* HF: freqs = inv_freq * position in fp32, then cos / sin. */
        const float angle = r.inv_freq[e] * (float)r.positions[t];
        const float c = cosf(angle), s = sinf(angle);
        x0 = lo * c - hi * s;
        x1 = hi * c + lo * s;
    }
    if (is_q) {
        float *head = a.y + (size_t)t * a.out + (size_t)item * hd;
        head[e] = x0;
        head[e + half] = x1;
        return;
    }
    const int64_t slot = r.slot_mapping[t];
    const size_t base = (size_t)(slot / r.block_size) * r.block_elems + r.layer_off +
                        (size_t)(slot % r.block_size) * hd +
                        (size_t)((is_k ? 0 : 1) * nkv + idx) * r.block_size * hd;
    store_kv(r.kv, r.kv_dtype, base + e, x0);
    store_kv(r.kv, r.kv_dtype, base + e + half, x1);
}

enum { MODE_PLAIN, MODE_GATED, MODE_ROPE };

/* CTA b: rows [16 b, 16 b + 16) of W (MODE_GATED: gate rows [8 b, 8 b + 8)
 * and the matching up rows; MODE_ROPE: the RoPE pairs [8 b, 8 b + 8)),
 * every token, its warps splitting K. */
template <typename T, int MODE, bool SPLIT>
__global__ void __launch_bounds__(MAX_WARPS * 32, 2) gemv_kernel(const cuda_gemv_args a)
{
    __shared__ float4 part[MAX_WARPS][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    const int g = lane >> 2, q = lane & 3;
    const int half = a.out / 2;
    /* This lane's two W rows, clamped into the matrix (the tile past the
     * last row computes what is never stored). */
    int ra, rb;
    if (MODE == MODE_GATED) {
        ra = min((int)blockIdx.x * 8 + g, half - 1);
        rb = half + ra;
    } else if (MODE == MODE_ROPE) {
        /* Pair p: rows e and e + head_dim / 2 of head p / (head_dim / 2). */
        const int p = min((int)blockIdx.x * 8 + g, half - 1), hh = a.rope.head_dim / 2;
        ra = p / hh * a.rope.head_dim + p % hh;
        rb = ra + hh;
    } else {
        ra = min((int)blockIdx.x * TILE_ROWS + g, a.out - 1);
        rb = min((int)blockIdx.x * TILE_ROWS + g + 8, a.out - 1);
    }
    const T *wa_row = (const T *)a.w + (size_t)ra * a.in + q * 8;
    const T *wb_row = (const T *)a.w + (size_t)rb * a.in + q * 8;
    const bool has_tok = g < a.n_tok;
    const T *x_row = (const T *)a.x + (size_t)(has_tok ? g : 0) * a.in + q * 8;
    /* This warp's contiguous range of steps. */
    const int n_steps = (a.in + STEP_K - 1) / STEP_K;
    const int per_warp = (n_steps + n_warps - 1) / n_warps;
    const int s_begin = warp * per_warp, s_end = min(s_begin + per_warp, n_steps);

    uint4 wa[UNROLL], wb[UNROLL], na[UNROLL], nb[UNROLL];
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    /* k = step * 32 + 8 q; in is a multiple of 8, so k < in covers all 8. */
    const auto fetch = [&](uint4 *da, uint4 *db, int s0) {
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const int k = (s0 + u) * STEP_K;
            const bool ok = s0 + u < s_end && k + q * 8 < a.in;
            da[u] = ok ? load_w(wa_row + k) : zero;
            db[u] = ok ? load_w(wb_row + k) : zero;
        }
    };
    pdl_launch_dependents();
    fetch(wa, wb, s_begin);
    pdl_wait(); /* x (and y, when accumulating) come from earlier kernels */

    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int s0 = s_begin; s0 < s_end; s0 += UNROLL) {
        fetch(na, nb, s0 + UNROLL);
        /* Every x load of the steps first, then the mmas: the loads' L1 /
         * L2 latencies overlap instead of adding up. */
        uint4 xv[UNROLL], xl[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const int k = (s0 + u) * STEP_K;
            const bool ok = s0 + u < s_end && has_tok && k + q * 8 < a.in;
            xv[u] = ok ? *(const uint4 *)(x_row + k) : zero;
            xl[u] = SPLIT && ok ? *(const uint4 *)(x_row + a.x_lo_off + k) : zero;
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            if (s0 + u >= s_end) break; /* warp-uniform: the mma needs every lane */
            mma_step<T>(c, wa[u], wb[u], xv[u]);
            if (SPLIT) mma_step<T>(c, wa[u], wb[u], xl[u]);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            wa[u] = na[u];
            wb[u] = nb[u];
        }
    }

    part[warp][lane] = make_float4(c[0], c[1], c[2], c[3]);
    __syncthreads();
    if (warp != 0) return;
    float4 s = part[0][lane];
    for (int w = 1; w < n_warps; w++) {
        const float4 p = part[w][lane];
        s.x += p.x;
        s.y += p.y;
        s.z += p.z;
        s.w += p.w;
    }
    /* Lane (g, q) holds C[g][2q], C[g][2q + 1], C[g + 8][2q], C[g + 8][2q + 1]:
     * rows g, g + 8 of the tile, tokens 2q, 2q + 1. */
    const int t0 = 2 * q, t1 = 2 * q + 1;
    if (MODE == MODE_ROPE) {
        const int p = blockIdx.x * 8 + g, hh = a.rope.head_dim / 2;
        if (p >= half) return;
        if (t0 < a.n_tok) rope_kv(a, t0, p / hh, p % hh, s.x, s.z);
        if (t1 < a.n_tok) rope_kv(a, t1, p / hh, p % hh, s.y, s.w);
    } else if (MODE == MODE_GATED) {
        const int j = blockIdx.x * 8 + g;
        if (j >= half) return;
        T *o = (T *)a.act_out;
        if (t0 < a.n_tok) store_act(o, (size_t)t0 * half + j, a.act_lo_off, gated(a.act, s.x, s.z));
        if (t1 < a.n_tok) store_act(o, (size_t)t1 * half + j, a.act_lo_off, gated(a.act, s.y, s.w));
    } else {
        const bool acc = a.epilogue == CUDA_GEMV_ACCUMULATE;
        const int r0 = blockIdx.x * TILE_ROWS + g, r1 = r0 + 8;
        const float v[4] = {s.x, s.y, s.z, s.w};
        const int rr[4] = {r0, r0, r1, r1}, tt[4] = {t0, t1, t0, t1};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            if (rr[i] >= a.out || tt[i] >= a.n_tok) continue;
            float *p = a.y + (size_t)tt[i] * a.out + rr[i];
            *p = acc ? *p + v[i] : v[i];
        }
    }
}

/* CTA r normalizes row rows[r] (or r); thread i holds float4s i,
 * i + blockDim, ... (V of them) of the row. */
template <typename OUT, int V>
__global__ void __launch_bounds__(1024)
    rmsnorm_rows_kernel(const float *x, const int32_t *rows, const float *w, int n, float eps,
                        OUT *out, int ld_out, size_t lo_off)
{
    __shared__ float partial[33]; /* block_sum's */
    const int n4 = n >> 2;
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float4 wv[V], xv[V];
    pdl_launch_dependents();
#pragma unroll
    for (int j = 0; j < V; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        wv[j] = i < n4 ? ((const float4 *)w)[i] : zero;
    }
    pdl_wait(); /* x and rows come from earlier work on the stream */
    const int r = blockIdx.x;
    const float4 *xr = (const float4 *)(x + (size_t)(rows ? rows[r] : r) * n);
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < V; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        xv[j] = i < n4 ? xr[i] : zero;
        ss += xv[j].x * xv[j].x + xv[j].y * xv[j].y + xv[j].z * xv[j].z + xv[j].w * xv[j].w;
    }
    /* HF: x * torch.rsqrt(variance + eps), then weight * that. */
    const float inv = 1.0f / sqrtf(block_sum(ss, partial) / (float)n + eps);
#pragma unroll
    for (int j = 0; j < V; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i >= n4) continue;
        const size_t o = (size_t)r * ld_out + (size_t)i * 4;
        store_act(out, o, lo_off, wv[j].x * (xv[j].x * inv));
        store_act(out, o + 1, lo_off, wv[j].y * (xv[j].y * inv));
        store_act(out, o + 2, lo_off, wv[j].z * (xv[j].z * inv));
        store_act(out, o + 3, lo_off, wv[j].w * (xv[j].w * inv));
    }
}

/* Launches KERNEL with ARGS, with the PDL attribute when pdl. */
template <typename... K, typename... A>
int launch(void (*kernel)(K...), dim3 grid, dim3 block, int pdl, cudaStream_t stream, A... args)
{
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = 0;
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    return (int)cudaLaunchKernelEx(&cfg, kernel, args...);
}

template <typename T> int gemv_typed(const cuda_gemv_args *a, cudaStream_t stream)
{
    const bool split = a->x_lo_off != 0;
    const int mode = a->epilogue == CUDA_GEMV_GATED     ? MODE_GATED
                     : a->epilogue == CUDA_GEMV_ROPE_KV ? MODE_ROPE
                                                        : MODE_PLAIN;
    /* Pair modes: 8 pairs (16 rows) per CTA. */
    const int groups =
        mode != MODE_PLAIN ? (a->out / 2 + 7) / 8 : (a->out + TILE_ROWS - 1) / TILE_ROWS;
    const dim3 grid(groups), block(32 * (groups < MANY_GROUPS ? MAX_WARPS : 4));
    const int pdl = a->pdl;
    switch (mode * 2 + split) {
    case MODE_GATED * 2:
        return launch(gemv_kernel<T, MODE_GATED, false>, grid, block, pdl, stream, *a);
    case MODE_GATED * 2 + 1:
        return launch(gemv_kernel<T, MODE_GATED, true>, grid, block, pdl, stream, *a);
    case MODE_ROPE * 2:
        return launch(gemv_kernel<T, MODE_ROPE, false>, grid, block, pdl, stream, *a);
    case MODE_ROPE * 2 + 1:
        return launch(gemv_kernel<T, MODE_ROPE, true>, grid, block, pdl, stream, *a);
    case MODE_PLAIN * 2 + 1:
        return launch(gemv_kernel<T, MODE_PLAIN, true>, grid, block, pdl, stream, *a);
    default:
        return launch(gemv_kernel<T, MODE_PLAIN, false>, grid, block, pdl, stream, *a);
    }
}

template <typename OUT>
int rmsnorm_typed(const float *x, const int32_t *rows, int n_rows, const float *w, int n, float eps,
                  OUT *out, int ld_out, size_t lo_off, int pdl, cudaStream_t stream)
{
    const int n4 = n / 4, v = (n4 + 1023) / 1024;
    const int per = v <= 1 ? 1 : v <= 2 ? 2 : 4;
    const dim3 grid(n_rows), block(((n4 + per - 1) / per + 31) / 32 * 32);
    if (per == 1)
        return launch(rmsnorm_rows_kernel<OUT, 1>, grid, block, pdl, stream, x, rows, w, n, eps,
                      out, ld_out, lo_off);
    if (per == 2)
        return launch(rmsnorm_rows_kernel<OUT, 2>, grid, block, pdl, stream, x, rows, w, n, eps,
                      out, ld_out, lo_off);
    return launch(rmsnorm_rows_kernel<OUT, 4>, grid, block, pdl, stream, x, rows, w, n, eps, out,
                  ld_out, lo_off);
}

bool aligned16(const void *p)
{
    return ((uintptr_t)p & 15u) == 0;
}

} /* namespace */

extern "C" int cuda_gemv_supported(cv_dtype dtype, int n_tok, int in, const void *w, const void *x,
                                   size_t x_lo_off)
{
    return (dtype == CV_DTYPE_BF16 || dtype == CV_DTYPE_F16) && n_tok >= 1 &&
           n_tok <= CUDA_GEMV_MAX_TOKENS && in > 0 && in % 8 == 0 && x_lo_off % 8 == 0 &&
           aligned16(w) && aligned16(x);
}

extern "C" int cuda_gemv(const cuda_gemv_args *a, cudaStream_t stream)
{
    if (!cuda_gemv_supported(a->dtype, a->n_tok, a->in, a->w, a->x, a->x_lo_off) || a->out <= 0)
        return (int)cudaErrorInvalidValue;
    if (a->epilogue == CUDA_GEMV_GATED) {
        if (!a->act_out || a->out % 2 != 0 || (a->act != CV_ACT_SILU && a->act != CV_ACT_GELU_TANH))
            return (int)cudaErrorInvalidValue;
    } else if (!a->y) {
        return (int)cudaErrorInvalidValue;
    }
    if (a->epilogue == CUDA_GEMV_ROPE_KV) {
        const cuda_gemv_rope *r = &a->rope;
        if (r->head_dim <= 0 || r->head_dim % 2 != 0 || r->n_heads <= 0 || r->n_kv_heads <= 0 ||
            r->block_size <= 0 || a->out != (r->n_heads + 2 * r->n_kv_heads) * r->head_dim ||
            !r->inv_freq || !r->positions || !r->slot_mapping || !r->kv ||
            (r->kv_dtype != CV_DTYPE_F32 && r->kv_dtype != CV_DTYPE_F16 &&
             r->kv_dtype != CV_DTYPE_BF16))
            return (int)cudaErrorInvalidValue;
    }
    return a->dtype == CV_DTYPE_BF16 ? gemv_typed<__nv_bfloat16>(a, stream)
                                     : gemv_typed<__half>(a, stream);
}

extern "C" int cuda_rmsnorm_rows_supported(int n_rows, int n, const float *x)
{
    return n_rows >= 1 && n_rows <= CUDA_GEMV_MAX_TOKENS && n > 0 && n % 4 == 0 && n <= 16384 &&
           aligned16(x);
}

extern "C" int cuda_rmsnorm_rows(const float *x, const int32_t *rows, int n_rows, const float *w,
                                 int n, float eps, cv_dtype out_dtype, void *out, int ld_out,
                                 size_t lo_off, int pdl, cudaStream_t stream)
{
    if (!cuda_rmsnorm_rows_supported(n_rows, n, x) || !aligned16(w))
        return (int)cudaErrorInvalidValue;
    switch (out_dtype) {
    case CV_DTYPE_BF16:
        return rmsnorm_typed(x, rows, n_rows, w, n, eps, (__nv_bfloat16 *)out, ld_out, lo_off, pdl,
                             stream);
    case CV_DTYPE_F16:
        return rmsnorm_typed(x, rows, n_rows, w, n, eps, (__half *)out, ld_out, lo_off, pdl,
                             stream);
    case CV_DTYPE_F32:
        return rmsnorm_typed(x, rows, n_rows, w, n, eps, (float *)out, ld_out, (size_t)0, pdl,
                             stream);
    default:
        return (int)cudaErrorInvalidValue;
    }
}

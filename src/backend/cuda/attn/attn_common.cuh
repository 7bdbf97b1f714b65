/* Device helpers shared by flash_prefill.cu and paged_decode.cu: the
 * m16n8k16 mma, ldmatrix, cp.async wrappers, the 8-element Q loads and
 * output stores with a run-time dtype, and the one online-softmax step both
 * kernels run on a warp's 16 rows.
 *
 * Fragment layout of mma.sync.m16n8k16 (PTX ISA, "Matrix Fragments for
 * mma.m16n8k16"), lane = 4 * gid + tig:
 *   A (16x16, row): a0 (row gid, cols 2tig..+1), a1 (row gid+8, same cols),
 *                   a2 (row gid, cols 2tig+8..+9), a3 (row gid+8, cols +8)
 *   B (16x8, col):  b0 (k rows 2tig..+1, col gid), b1 (k rows 2tig+8..+9)
 *   C (16x8 f32):   c0, c1 (row gid, cols 2tig..+1), c2, c3 (row gid+8)
 * ldmatrix.x4 lane l gives the row address of matrix l / 8; every lane gets
 * of matrix i the pair (row lane / 4, cols 2 (lane % 4)..+1), or with .trans
 * the pair (rows 2 (lane % 4)..+1, col lane / 4). */
#ifndef CV_BACKEND_CUDA_ATTN_COMMON_CUH
#define CV_BACKEND_CUDA_ATTN_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include <atomic>
#include <type_traits>

#include "backend/cuda/attn/attn.h"

namespace cv_attn
{

/* Rows of a shared-memory tile are padded by 8 elements (16 bytes): the 8
 * row addresses of an ldmatrix then fall in 8 different 16-byte bank
 * groups, so loads and cp.async stores are conflict-free without a swizzle. */
constexpr int PAD = 8;

__device__ __forceinline__ uint32_t smem_addr(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p))
                 : "memory");
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t r[4], const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p))
                 : "memory");
}

/* 16 bytes global -> shared, bypassing L1; with valid false the 16 bytes
 * are zero-filled and nothing is read (src must still be a mapped address). */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
}

__device__ __forceinline__ void cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* c += a * b for T = __nv_bfloat16 or __half, fp32 accumulators. */
template <typename T>
__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    if constexpr (std::is_same_v<T, __half>) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                     "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                     "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

/* Two floats as a T pair in one register, lo in the low half (the lower
 * column of an A fragment). */
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi)
{
    uint32_t r;
    if constexpr (std::is_same_v<T, __half>) {
        const __half2 h = __floats2half2_rn(lo, hi);
        r = *reinterpret_cast<const uint32_t *>(&h);
    } else {
        const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        r = *reinterpret_cast<const uint32_t *>(&h);
    }
    return r;
}

/* Eight consecutive elements of a Q row (dtype QT, 16-byte aligned) as T in
 * one uint4. */
template <typename T> __device__ __forceinline__ uint4 load_q8(const void *src, cv_dtype qt)
{
    if (qt == CV_DTYPE_F32) {
        const float4 a = reinterpret_cast<const float4 *>(src)[0];
        const float4 b = reinterpret_cast<const float4 *>(src)[1];
        return make_uint4(pack2<T>(a.x, a.y), pack2<T>(a.z, a.w), pack2<T>(b.x, b.y),
                          pack2<T>(b.z, b.w));
    }
    const uint4 raw = *reinterpret_cast<const uint4 *>(src);
    if ((qt == CV_DTYPE_F16) == std::is_same_v<T, __half>) return raw;
    /* The other 16-bit type: widen and round again. */
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
    uint32_t o[4];
    for (int i = 0; i < 4; i++) {
        float lo, hi;
        if (qt == CV_DTYPE_F16) {
            const __half2 h = *reinterpret_cast<const __half2 *>(&w[i]);
            lo = __low2float(h);
            hi = __high2float(h);
        } else {
            const __nv_bfloat162 h = *reinterpret_cast<const __nv_bfloat162 *>(&w[i]);
            lo = __low2float(h);
            hi = __high2float(h);
        }
        o[i] = pack2<T>(lo, hi);
    }
    return make_uint4(o[0], o[1], o[2], o[3]);
}

/* Stores out[0], out[1] = v0, v1 in dtype OT (and the rounding remainders
 * lo_off elements further for split activations, 16-bit OT only). */
__device__ __forceinline__ void store2(void *out, size_t i, cv_dtype ot, size_t lo_off, float v0,
                                       float v1)
{
    if (ot == CV_DTYPE_F32) {
        *reinterpret_cast<float2 *>(static_cast<float *>(out) + i) = make_float2(v0, v1);
    } else if (ot == CV_DTYPE_BF16) {
        __nv_bfloat16 *o = static_cast<__nv_bfloat16 *>(out);
        const __nv_bfloat162 h = __floats2bfloat162_rn(v0, v1);
        *reinterpret_cast<__nv_bfloat162 *>(o + i) = h;
        if (lo_off)
            *reinterpret_cast<__nv_bfloat162 *>(o + i + lo_off) =
                __floats2bfloat162_rn(v0 - __low2float(h), v1 - __high2float(h));
    } else {
        __half *o = static_cast<__half *>(out);
        const __half2 h = __floats2half2_rn(v0, v1);
        *reinterpret_cast<__half2 *>(o + i) = h;
        if (lo_off)
            *reinterpret_cast<__half2 *>(o + i + lo_off) =
                __floats2half2_rn(v0 - __low2float(h), v1 - __high2float(h));
    }
}

/* One online-softmax step on a warp's 16 rows against NT8 key columns of 8.
 * s: the raw scores (C fragments; masked entries -inf), replaced by
 * p = 2^(s * scale_log2 - m_new). m (log2 domain), l (this lane's part of
 * the row sum; the 4 lanes of a row are summed at the end) and o are
 * rescaled by 2^(m_old - m_new). Row r of the pair is gid (r = 0) or gid + 8. */
template <int NT8, int NO8>
__device__ __forceinline__ void softmax_step(float (&s)[NT8][4], float (&o)[NO8][4], float m[2],
                                             float l[2], float scale_log2)
{
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < NT8; j++)
            mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[r], mx * scale_log2);
        /* A row with every key masked so far keeps m = -inf: subtract 0
         * instead so that p = 0 and alpha = 0, never inf - inf. */
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;
        const float alpha = exp2f(m[r] - m_use);
        m[r] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < NT8; j++) {
            const float p0 = exp2f(fmaf(s[j][2 * r], scale_log2, -m_use));
            const float p1 = exp2f(fmaf(s[j][2 * r + 1], scale_log2, -m_use));
            s[j][2 * r] = p0;
            s[j][2 * r + 1] = p1;
            sum += p0 + p1;
        }
        l[r] = l[r] * alpha + sum;
#pragma unroll
        for (int d = 0; d < NO8; d++) {
            o[d][2 * r] *= alpha;
            o[d][2 * r + 1] *= alpha;
        }
    }
}

/* Enqueues cp.async loads of keys [n0, n0 + BN) of one kv head into dst
 * (BN rows of HD + PAD elements) by THREADS threads: kv_layer is the pool
 * at this layer's K, head_off selects K or V of the kv head within a block
 * ((kv * n_kv_heads + g) * block_size * HD). table[i - blk0] is the pool
 * block of the sequence's block i (blk0 > 0 when the caller copied a
 * window of the block table to shared memory). Keys >= kv_end are
 * zero-filled, so masked scores meet finite values in P.V. */
/* POW2: bs is a power of two, so a key's block and offset are a shift
 * and a mask instead of a division (which costs ~20 instructions per 16
 * bytes and made the decode kernel issue-bound). */
template <typename T, int HD, int BN, int THREADS, bool POW2 = false>
__device__ __forceinline__ void load_kv_tile(T *dst, const T *kv_layer, const int32_t *table,
                                             int blk0, int bs, size_t block_elems, size_t head_off,
                                             int n0, int kv_end, int tid)
{
    constexpr int CH = HD / 8, LD = HD + PAD, ROWS_PER_PASS = THREADS / CH;
    static_assert(THREADS % CH == 0 && BN % ROWS_PER_PASS == 0, "tile not covered evenly");
    const int col = (tid % CH) * 8;
    const int shift = POW2 ? __ffs(bs) - 1 : 0;
    const T *base = kv_layer + head_off + col;
#pragma unroll
    for (int i = 0; i < BN / ROWS_PER_PASS; i++) {
        const int r = tid / CH + i * ROWS_PER_PASS;
        const int j = n0 + r;
        const bool valid = j < kv_end;
        const T *src = kv_layer;
        if (valid) {
            const int blk = POW2 ? j >> shift : j / bs;
            const int off = POW2 ? j & (bs - 1) : j % bs;
            src = base + (size_t)table[blk - blk0] * block_elems + off * HD;
        }
        cp_async16(dst + r * LD + col, src, valid);
    }
}

/* Lets KERNEL use SMEM bytes of dynamic shared memory (over the 48 KiB
 * default), once per device: the attribute belongs to a device's context.
 * done holds a bit per device already set (devices >= 32 set it on every
 * call); setting it twice from racing threads is harmless. */
template <typename K> int allow_smem(K kernel, size_t smem, std::atomic<unsigned> &done)
{
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return (int)e;
    const unsigned bit = dev < 32 ? 1u << dev : 0u;
    if (bit && (done.load() & bit)) return 0;
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return (int)e;
    done.fetch_or(bit);
    return 0;
}

/* Opts every prefill kernel into its shared memory on the current device
 * (flash_prefill.cu; cuda_attn_prepare calls it). */
int prefill_prepare();

/* Row-sum of a lane's l over the 4 lanes sharing the row. */
__device__ __forceinline__ float quad_sum(float v)
{
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    return v;
}

} /* namespace cv_attn */

#endif

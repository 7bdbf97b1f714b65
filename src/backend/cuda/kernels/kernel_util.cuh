/* Device helpers every CUDA kernel file of the backend shares: widening
 * 16-bit values to fp32 and rounding back (nearest even), the split
 * activation store, warp and block sums, the MLP activations, and the
 * dtype -> C++ type dispatch of the launchers. All inline (or templates),
 * so every .cu file that includes it may. */
#ifndef CV_CUDA_KERNEL_UTIL_CUH
#define CV_CUDA_KERNEL_UTIL_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

#include "model/model.h"

__device__ __forceinline__ float to_f(float x)
{
    return x;
}
__device__ __forceinline__ float to_f(__nv_bfloat16 x)
{
    return __bfloat162float(x);
}
__device__ __forceinline__ float to_f(__half x)
{
    return __half2float(x);
}

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x)
{
    return x;
}
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half from_f<__half>(float x)
{
    return __float2half_rn(x);
}

/* Stores activation v as the GEMM operand type. With lo_off != 0 (split
 * activations, 16-bit types only) it also stores the rounding remainder
 * lo_off elements further: hi + lo carries v to about 2^-16 relative, so
 * one GEMM over both halves is as accurate as an fp32 operand. */
template <typename T>
__device__ __forceinline__ void store_act(T *out, size_t i, size_t lo_off, float v)
{
    const T hi = from_f<T>(v);
    out[i] = hi;
    if (lo_off) out[i + lo_off] = from_f<T>(v - to_f(hi));
}

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* The sum of v over the block, returned to every thread. sh: 33 floats.
 * The last barrier lets the caller reuse sh for the next sum. */
__device__ __forceinline__ float block_sum(float v, float *sh)
{
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        float s = threadIdx.x < (blockDim.x >> 5) ? sh[threadIdx.x] : 0.0f;
        s = warp_sum(s);
        if (threadIdx.x == 0) sh[32] = s;
    }
    __syncthreads();
    const float total = sh[32];
    __syncthreads();
    return total;
}

/* The MLP activations as HF computes them in fp32: ReLU, GELU with the tanh
 * approximation (gelu_new / gelu_pytorch_tanh), else SiLU. */
__device__ __forceinline__ float activate(cv_activation act, float v)
{
    if (act == CV_ACT_RELU) return v > 0.0f ? v : 0.0f;
    if (act == CV_ACT_GELU_TANH) {
        const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
        return 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
    }
    return v / (1.0f + expf(-v));
}

/* Eight consecutive values widened to fp32, read with 16-byte loads (p
 * 16-byte aligned): elementwise kernels stream near the copy bandwidth only
 * with vector loads. */
__device__ __forceinline__ void load8(const float *p, float v[8])
{
    const float4 a = ((const float4 *)p)[0], b = ((const float4 *)p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
    v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
template <typename T16> __device__ __forceinline__ void load8(const T16 *p, float v[8])
{
    const uint4 u = *(const uint4 *)p;
    const T16 *h = (const T16 *)&u;
#pragma unroll
    for (int i = 0; i < 8; i++)
        v[i] = to_f(h[i]);
}

/* Eight values rounded to T and written with 16-byte stores (p aligned as
 * for load8). */
__device__ __forceinline__ void store8(float *p, const float v[8])
{
    ((float4 *)p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    ((float4 *)p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
template <typename T16> __device__ __forceinline__ void store8(T16 *p, const float v[8])
{
    uint4 u;
    T16 *h = (T16 *)&u;
#pragma unroll
    for (int i = 0; i < 8; i++)
        h[i] = from_f<T16>(v[i]);
    *(uint4 *)p = u;
}

/* Calls F with a value of the C++ type of DTYPE (for template dispatch). */
template <typename F> int with_type(cv_dtype dtype, F f)
{
    switch (dtype) {
    case CV_DTYPE_F32:
        f(float());
        break;
    case CV_DTYPE_F16:
        f(__half());
        break;
    case CV_DTYPE_BF16:
        f(__nv_bfloat16());
        break;
    default:
        return (int)cudaErrorInvalidValue;
    }
    return (int)cudaGetLastError();
}

#endif

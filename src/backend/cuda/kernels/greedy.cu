/* Greedy sampling on the device: for each row of logits its argmax (the
 * first index of the maximum, torch.argmax's and the CPU sampler's tie
 * rule), that token's log-probability under the raw softmax and its rank
 * (how many tokens are at least as likely: the ties of the maximum). Only
 * these 12 bytes per row cross to the host instead of a vocab-wide row of
 * fp32 logits (513 KB for a 128K vocabulary), which at 256 sequences was
 * 131 MB per decode step over PCIe. */
#include <math.h>

#include "backend/cuda/kernels/greedy.h"

namespace
{

constexpr int GREEDY_THREADS = 1024;

struct arg_max {
    float v;
    int i;
};

/* The larger value; on a tie the lower index. NaN never wins (the CPU
 * sampler's row_argmax compares with ==, so a NaN row yields index 0 there
 * too). */
__device__ arg_max better(arg_max a, arg_max b)
{
    if (b.v > a.v || (b.v == a.v && b.i < a.i)) return b;
    return a;
}

__device__ arg_max warp_argmax(arg_max a)
{
    for (int off = 16; off > 0; off /= 2) {
        arg_max o = {__shfl_xor_sync(0xffffffffu, a.v, off),
                     __shfl_xor_sync(0xffffffffu, a.i, off)};
        a = better(a, o);
    }
    return a;
}

__device__ float warp_sum(float s)
{
    for (int off = 16; off > 0; off /= 2)
        s += __shfl_xor_sync(0xffffffffu, s, off);
    return s;
}

__global__ void __launch_bounds__(GREEDY_THREADS)
    greedy_kernel(const float *logits, int vocab, cuda_greedy_out *out)
{
    __shared__ arg_max warp_best[GREEDY_THREADS / 32];
    __shared__ float warp_part[GREEDY_THREADS / 32];
    __shared__ float warp_ties[GREEDY_THREADS / 32];
    __shared__ arg_max best_all;
    const float *x = logits + (size_t)blockIdx.x * vocab;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;

    arg_max a = {-INFINITY, vocab};
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
        a = better(a, arg_max{x[i], i});
    a = warp_argmax(a);
    if (lane == 0) warp_best[warp] = a;
    __syncthreads();
    if (warp == 0) {
        a = lane < GREEDY_THREADS / 32 ? warp_best[lane] : arg_max{-INFINITY, vocab};
        a = warp_argmax(a);
        if (lane == 0) best_all = a.i < vocab ? a : arg_max{x[0], 0};
    }
    __syncthreads();
    const float mx = best_all.v;
    float sum = 0.0f, ties = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        sum += __expf(x[i] - mx);
        ties += x[i] >= mx ? 1.0f : 0.0f;
    }
    sum = warp_sum(sum);
    ties = warp_sum(ties);
    if (lane == 0) {
        warp_part[warp] = sum;
        warp_ties[warp] = ties;
    }
    __syncthreads();
    if (warp == 0) {
        sum = lane < GREEDY_THREADS / 32 ? warp_part[lane] : 0.0f;
        ties = lane < GREEDY_THREADS / 32 ? warp_ties[lane] : 0.0f;
        sum = warp_sum(sum);
        ties = warp_sum(ties);
        if (lane == 0) {
            cuda_greedy_out o;
            o.token = best_all.i;
            o.logprob = -logf(sum); /* x[best] - (mx + log(sum)) with x[best] == mx */
            o.rank = (int32_t)ties;
            out[blockIdx.x] = o;
        }
    }
}

} // namespace

extern "C" int cuda_greedy(const float *logits, int n_rows, int vocab, cuda_greedy_out *out,
                           cudaStream_t stream)
{
    if (n_rows <= 0) return 0;
    greedy_kernel<<<n_rows, GREEDY_THREADS, 0, stream>>>(logits, vocab, out);
    return (int)cudaGetLastError();
}

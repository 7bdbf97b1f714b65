/* The LoRA gather kernels (cuda_lora.h): shrink u = x A^T and expand
 * y += u B over segments of tokens that share an adapter slot.
 *
 * One kernel family for decode and prefill, where Punica has two (BGMV for
 * decode tokens, SGMV for prefill segments): the host sorts the step's
 * tokens by slot and cuts them into segments of at most 8 (a prefill
 * sequence gives ceil(len / 8) segments, the decode tokens of the k
 * sequences sharing an adapter ceil(k / 8)). A block works on one segment,
 * so an adapter's rows are read once per 8 tokens instead of once per token
 * (BGMV's cost), and a decode step with 16 adapters among 64 sequences
 * reads each adapter's weights about 4 times less than per-token gathers
 * would. Prefill reads them once per 8 tokens too: a few percent of the
 * base GEMM's traffic at rank 16, so no tiled tensor-core SGMV is worth its
 * complexity here.
 *
 * Shrink: block (segment, 4 rows of A, 2048-wide chunk of the input); a
 * thread takes 8 consecutive inputs of the chunk (one 16-byte load per row
 * of A and per token: every load of the block is in flight at once; the
 * first version strode the chunk one element at a time and its dependent
 * load rounds made each launch ~27 us on an H100 whatever its grid), keeps
 * 4 x 8 fp32 sums (row, token), reduced by warp shuffles and then over the
 * 8 warps in a fixed order into the chunk's partial u (input widths are
 * multiples of 8: cuda_lora_init refuses others). Cutting the input into chunks
 * gives a decode step enough blocks to fill the GPU.
 * Expand: block (segment, 256 output columns); the segment's u (its
 * chunks' partials summed in chunk order) goes to shared memory; a thread
 * owns a column, reads its R values of B^T 16 at a time (coalesced across
 * the block: B is stored transposed) and adds its 8 sums to y: fp32 y in
 * fp32, a 16-bit y (the product as the forward without adapters leaves it)
 * widened, summed in fp32 and rounded once.
 *
 * Batch invariance: a token's sums run in an order fixed by `in`, R and
 * the thread layout alone (the chunks are cut by `in` alone), whatever else
 * is in its segment or the step, so a sequence gets the same bits alone or
 * in any batch. */
#include "backend/cuda/kernels/kernel_util.cuh"
#include "backend/cuda/lora/cuda_lora.h"

enum {
    SEG = CUDA_LORA_SEG_TOKENS,
    THREADS = 256,
    WARPS = THREADS / 32,
    ROWS = 4,
    CHUNK = CUDA_LORA_CHUNK
};

/* Partial u of chunk blockIdx.z: u[z][tok][row0 + r] for the segment's
 * tokens and 4 rows of A. */
template <typename T, typename W>
__global__ void __launch_bounds__(THREADS)
    lora_shrink(const cuda_lora_seg *segs, const int32_t *tok, const T *x, size_t x_lo_off, int in,
                const W *a, size_t slot_elems, int n_rows, float *u, int ld_u, size_t chunk_stride)
{
    __shared__ float red[WARPS][ROWS][SEG];
    const cuda_lora_seg s = segs[blockIdx.x];
    if (s.count == 0) return; /* padding (cuda_lora_prepare): the whole block */
    const int row0 = blockIdx.y * ROWS, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int i0 = blockIdx.z * CHUNK, i1 = min(in, i0 + CHUNK);
    const W *ar = a + (size_t)s.slot * slot_elems + (size_t)row0 * in;
    const T *xr[SEG];
#pragma unroll
    for (int j = 0; j < SEG; j++)
        xr[j] = x + (size_t)tok[s.start + (j < s.count ? j : 0)] * in;
    float acc[ROWS][SEG];
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int j = 0; j < SEG; j++)
            acc[r][j] = 0.0f;
    /* in % 8 == 0 (cuda_lora_init checks): 16-byte aligned rows. */
    for (int i = i0 + 8 * threadIdx.x; i < i1; i += 8 * THREADS) {
        float w[ROWS][8];
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            if (row0 + r < n_rows) {
                load8(ar + (size_t)r * in + i, w[r]);
            } else {
#pragma unroll
                for (int e = 0; e < 8; e++)
                    w[r][e] = 0.0f;
            }
        }
#pragma unroll
        for (int j = 0; j < SEG; j++) {
            if (j < s.count) {
                float v[8];
                load8(xr[j] + i, v);
                if (x_lo_off) {
                    float lo[8];
                    load8(xr[j] + i + x_lo_off, lo);
#pragma unroll
                    for (int e = 0; e < 8; e++)
                        v[e] += lo[e];
                }
#pragma unroll
                for (int r = 0; r < ROWS; r++)
#pragma unroll
                    for (int e = 0; e < 8; e++)
                        acc[r][j] = fmaf(w[r][e], v[e], acc[r][j]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++)
#pragma unroll
        for (int j = 0; j < SEG; j++) {
            const float v = warp_sum(acc[r][j]);
            if (lane == 0) red[warp][r][j] = v;
        }
    __syncthreads();
    if (threadIdx.x < ROWS * SEG) {
        const int r = threadIdx.x / SEG, j = threadIdx.x % SEG;
        if (j < s.count && row0 + r < n_rows) {
            float v = 0.0f;
            for (int w = 0; w < WARPS; w++)
                v += red[w][r][j];
            u[blockIdx.z * chunk_stride + (size_t)tok[s.start + j] * ld_u + row0 + r] = v;
        }
    }
}

/* y[tok][col] += sum_k B^T[k][col] u[tok][part(col) * rank + k] for the
 * segment's tokens and 256 columns. A 16-bit Y is read, the delta added in
 * fp32 and the sum rounded once to nearest even (Punica's expand with
 * add_inputs into vLLM's 16-bit product). */
template <typename W, typename Y>
__global__ void __launch_bounds__(THREADS)
    lora_expand(const cuda_lora_seg *segs, const int32_t *tok, const float *u, int ld_u,
                int n_chunks, size_t chunk_stride, const W *bt, size_t slot_elems, int rank,
                int n_parts, int end0, int end1, Y *y, int ld_y)
{
    extern __shared__ float us[]; /* (count, n_parts * rank) */
    const cuda_lora_seg s = segs[blockIdx.x];
    if (s.count == 0) return; /* padding (cuda_lora_prepare): the whole block */
    const int kr = n_parts * rank;
    const int col = blockIdx.y * THREADS + threadIdx.x;
    const bool live = col < ld_y;
    const W *bc = bt + (size_t)s.slot * slot_elems + col;
    /* The column's first 16 values of B^T and its y values are loaded
     * before u's sums and the barrier, not after: they do not depend on u,
     * and the three rounds of loads (u, B, y) would otherwise each wait
     * for the one before. */
    float w[16];
#pragma unroll
    for (int kk = 0; kk < 16; kk++)
        w[kk] = live && kk < rank ? to_f(bc[(size_t)kk * ld_y]) : 0.0f;
    Y *yp[SEG];
    float yv[SEG];
#pragma unroll
    for (int j = 0; j < SEG; j++) {
        yp[j] = y + (size_t)tok[s.start + (j < s.count ? j : 0)] * ld_y + col;
        yv[j] = live && j < s.count ? to_f(*yp[j]) : 0.0f;
    }
    for (int e = threadIdx.x; e < s.count * kr; e += THREADS) {
        const float *ue = u + (size_t)tok[s.start + e / kr] * ld_u + e % kr;
        float v = 0.0f;
#pragma unroll 8
        for (int c = 0; c < n_chunks; c++)
            v += ue[c * chunk_stride];
        us[e] = v;
    }
    __syncthreads();
    if (!live) return;
    const int part = col < end0 ? 0 : col < end1 ? 1 : 2;
    const float *up = us + part * rank;
    float acc[SEG];
#pragma unroll
    for (int j = 0; j < SEG; j++)
        acc[j] = 0.0f;
    for (int k0 = 0; k0 < rank; k0 += 16) {
        if (k0) { /* 16 loads in flight, then their sums in k order */
#pragma unroll
            for (int kk = 0; kk < 16; kk++)
                w[kk] = k0 + kk < rank ? to_f(bc[(size_t)(k0 + kk) * ld_y]) : 0.0f;
        }
#pragma unroll
        for (int kk = 0; kk < 16; kk++) {
            if (k0 + kk >= rank) break;
#pragma unroll
            for (int j = 0; j < SEG; j++)
                if (j < s.count) acc[j] = fmaf(w[kk], up[j * kr + k0 + kk], acc[j]);
        }
    }
#pragma unroll
    for (int j = 0; j < SEG; j++) {
        if (j >= s.count) break;
        *yp[j] = from_f<Y>(yv[j] + acc[j]);
    }
}

extern "C" int cuda_lora_shrink(const cuda_lora_launch *p, cudaStream_t stream)
{
    if (p->n_segs == 0) return 0;
    const int n_rows = p->n_parts * p->rank, n_chunks = (p->in + CHUNK - 1) / CHUNK;
    const dim3 grid(p->n_segs, (n_rows + ROWS - 1) / ROWS, n_chunks);
    int rc_x = 0;
    const int rc = with_type(p->w_dtype, [&](auto w) {
        using W = decltype(w);
        rc_x = with_type(p->dtype, [&](auto t) {
            using T = decltype(t);
            lora_shrink<T, W><<<grid, THREADS, 0, stream>>>(
                p->segs, p->tok, (const T *)p->x, p->x_lo_off, p->in, (const W *)p->a,
                p->slot_elems, n_rows, p->u, p->ld_u, p->u_chunk_stride);
        });
    });
    return rc_x ? rc_x : rc;
}

extern "C" int cuda_lora_expand(const cuda_lora_launch *p, cudaStream_t stream)
{
    if (p->n_segs == 0) return 0;
    const int n_rows = p->n_parts * p->rank, n_chunks = (p->in + CHUNK - 1) / CHUNK;
    const dim3 grid(p->n_segs, (p->ld_y + THREADS - 1) / THREADS);
    const size_t smem = (size_t)SEG * n_rows * sizeof(float);
    const int end0 = p->part_end[0], end1 = p->n_parts > 1 ? p->part_end[1] : p->ld_y;
    int rc_y = 0;
    const int rc = with_type(p->w_dtype, [&](auto w) {
        using W = decltype(w);
        rc_y = with_type(p->y_dtype, [&](auto yv) {
            using Y = decltype(yv);
            lora_expand<W, Y><<<grid, THREADS, smem, stream>>>(
                p->segs, p->tok, p->u, p->ld_u, n_chunks, p->u_chunk_stride, (const W *)p->bt,
                p->slot_elems, p->rank, p->n_parts, end0, end1, (Y *)p->y, p->ld_y);
        });
    });
    return rc_y ? rc_y : rc;
}

/* FlashDecoding over the paged KV cache (contract in attn.h): one new token
 * per sequence. A CTA of 4 warps takes work items (a partition of one
 * sequence's keys, attn.h) for one kv head, and reads that kv head's K/V
 * once for all G query heads of the group: the G query rows, padded with zeros to 16, are one m16 A
 * tile, so S = Q K^T and O += P V are the same mma.sync m16n8k16 as the prefill kernel (G = 4
 * leaves 12 of 16 rows idle, but the tensor cores then need under a tenth of their rate to keep up
 * with HBM, which CUDA-core FMAs on bf16 would not at G = 8).
 *
 * Streaming: tiles of 64 keys (K and V, 16-byte cp.async, keys past the end
 * zero-filled) go through a 3-stage ring, so two tiles are in flight while
 * one is consumed; each warp takes 16 keys of a tile with its own running
 * max, sum and output, and the 4 warps are merged through shared memory at
 * the end. A sequence of one item gets the normalized output; with several,
 * each item writes (output, max, sum) per query head to the workspace and
 * decode_reduce_kernel merges them: out = sum_p 2^(m_p - M) o_p /
 * sum_p 2^(m_p - M) l_p. Build checks: see tests/gpu/test_gpu_attention.cu. */
#include "backend/cuda/attn/attn_common.cuh"

namespace cv_attn
{
namespace
{

constexpr int DC_BN = 64, DC_WARPS = 4, DC_THREADS = DC_WARPS * 32, DC_STAGES = 3;
constexpr int DC_ROWS = 16; /* query heads of a group, padded */
constexpr int DC_MAX_PARTITION = CUDA_ATTN_MAX_PARTITION;

/* Entries of the block-table window a partition of `partition` keys spans
 * (it may start and end inside a block), rounded up to 16 bytes. */
__host__ __device__ constexpr int decode_table_entries(int partition, int block_size)
{
    return ((partition + block_size - 1) / block_size + 1 + 3) / 4 * 4;
}

template <int HD> __host__ __device__ constexpr size_t decode_smem_bytes()
{
    /* Q rows, then the stages of K and V tiles; the warps' merge reuses the
     * stages (4 warps x 16 rows x HD floats + m, l). */
    constexpr size_t tiles = (size_t)(DC_ROWS + 2 * DC_STAGES * DC_BN) * (HD + PAD) * 2;
    constexpr size_t merge =
        (size_t)DC_ROWS * (HD + PAD) * 2 + (size_t)DC_WARPS * DC_ROWS * (HD + 2) * sizeof(float);
    return tiles > merge ? tiles : merge;
}

/* The block-table window follows the tiles / merge area. */
template <int HD> size_t decode_launch_smem(int partition, int block_size)
{
    return decode_smem_bytes<HD>() +
           (size_t)decode_table_entries(partition, block_size) * sizeof(int32_t);
}

/* One item: keys [k_begin, k_end) of sequence s for kv head g. direct: the
 * sequence's only item, its output normalized into a.out; else (output,
 * max, sum) per query head into WS_ITEM (n_heads x (HD + 2) floats). The
 * caller synchronizes the CTA between items (shared memory is reused). */
template <typename T, int HD, bool POW2>
__device__ __forceinline__ void decode_item(const cuda_attn_paged &a, int s, int g, int k_begin,
                                            int k_end, int table_stride, bool direct,
                                            float *ws_item, unsigned char *smem_raw)
{
    constexpr int LD = HD + PAD, CH = HD / 8, NK16 = HD / 16, NO8 = HD / 8;
    constexpr int STAGE = 2 * DC_BN * LD; /* K tile then V tile */
    T *qs = reinterpret_cast<T *>(smem_raw);
    T *stages = qs + DC_ROWS * LD;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int q0 = a.query_start[s];
    const int n_tiles = (k_end - k_begin + DC_BN - 1) / DC_BN;
    const int G = a.n_heads / a.n_kv_heads;
    /* The partition's window of the block table, copied once: a tile's
     * cp.async addresses then wait on shared memory, not on a global load
     * each time a stage is refilled. */
    int32_t *table = reinterpret_cast<int32_t *>(smem_raw + decode_smem_bytes<HD>());
    const int blk0 = k_begin / a.block_size;
    {
        const int32_t *row = a.block_tables + (size_t)s * table_stride;
        const int n_blk = (k_end - 1) / a.block_size - blk0 + 1;
        for (int i = tid; i < n_blk; i += DC_THREADS)
            table[i] = row[blk0 + i];
        __syncthreads();
    }
    const T *kv_layer = static_cast<const T *>(a.kv) + a.layer_off;
    const size_t k_off = (size_t)g * a.block_size * HD;
    const size_t v_off = (size_t)(a.n_kv_heads + g) * a.block_size * HD;

    const auto load_stage = [&](int t) {
        T *dst = stages + (t % DC_STAGES) * STAGE;
        const int n0 = k_begin + t * DC_BN;
        load_kv_tile<T, HD, DC_BN, DC_THREADS, POW2>(dst, kv_layer, table, blk0, a.block_size,
                                                     a.block_elems, k_off, n0, k_end, tid);
        load_kv_tile<T, HD, DC_BN, DC_THREADS, POW2>(dst + DC_BN * LD, kv_layer, table, blk0,
                                                     a.block_size, a.block_elems, v_off, n0, k_end,
                                                     tid);
    };
    /* Groups: one per tile (K and V together), empty past the last tile so
     * that wait_group<STAGES - 2> always means "tile it has landed". */
#pragma unroll
    for (int t = 0; t < DC_STAGES - 1; t++) {
        if (t < n_tiles) load_stage(t);
        cp_async_commit();
    }

    const size_t qe = a.q_dtype == CV_DTYPE_F32 ? 4 : 2;
    for (int c = tid; c < DC_ROWS * CH; c += DC_THREADS) {
        const int r = c / CH, col = (c % CH) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < G) {
            const char *src = static_cast<const char *>(a.q) +
                              ((size_t)q0 * a.ld_q + (size_t)(g * G + r) * HD + col) * qe;
            v = load_q8<T>(src, a.q_dtype);
        }
        *reinterpret_cast<uint4 *>(qs + r * LD + col) = v;
    }
    __syncthreads();
    uint32_t qf[NK16][4];
#pragma unroll
    for (int kk = 0; kk < NK16; kk++)
        ldsm_x4(qf[kk], qs + (lane & 15) * LD + kk * 16 + (lane >> 4) * 8);

    const float scale_log2 = a.scale * 1.4426950408889634f;
    float o[NO8][4];
#pragma unroll
    for (int d = 0; d < NO8; d++)
        o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    for (int it = 0; it < n_tiles; it++) {
        cp_async_wait<DC_STAGES - 2>();
        /* Also: every warp finished tile it - 1, whose stage the next load
         * overwrites. */
        __syncthreads();
        if (it + DC_STAGES - 1 < n_tiles) load_stage(it + DC_STAGES - 1);
        cp_async_commit();

        const T *kb = stages + (it % DC_STAGES) * STAGE + warp * 16 * LD;
        const T *vb = kb + DC_BN * LD;
        float sc[2][4];
#pragma unroll
        for (int j = 0; j < 2; j++)
            sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < NK16; kk++) {
            uint32_t b[4];
            ldsm_x4(b,
                    kb + ((lane & 7) + ((lane >> 4) << 3)) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
            mma16816<T>(sc[0], qf[kk], b[0], b[1]);
            mma16816<T>(sc[1], qf[kk], b[2], b[3]);
        }
        const int key0 = k_begin + it * DC_BN + warp * 16;
        if (key0 + 16 > k_end) {
#pragma unroll
            for (int j = 0; j < 2; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    if (key0 + j * 8 + 2 * (lane & 3) + (e & 1) >= k_end) sc[j][e] = -INFINITY;
        }
        softmax_step<2, NO8>(sc, o, m, l, scale_log2);
        const uint32_t pa[4] = {pack2<T>(sc[0][0], sc[0][1]), pack2<T>(sc[0][2], sc[0][3]),
                                pack2<T>(sc[1][0], sc[1][1]), pack2<T>(sc[1][2], sc[1][3])};
#pragma unroll
        for (int dn = 0; dn < HD / 16; dn++) {
            uint32_t b[4];
            ldsm_x4_trans(b, vb + ((lane & 7) + ((lane >> 3) & 1) * 8) * LD + dn * 16 +
                                 (lane >> 4) * 8);
            mma16816<T>(o[2 * dn], pa, b[0], b[1]);
            mma16816<T>(o[2 * dn + 1], pa, b[2], b[3]);
        }
    }
    cp_async_wait<0>();
    __syncthreads(); /* the stages become the merge buffers */

    float *red_o = reinterpret_cast<float *>(stages); /* (warp, row, HD + 2): o, then m, l */
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = (lane >> 2) + r * 8;
        const float lsum = quad_sum(l[r]);
        if (row >= G) continue;
        float *dst = red_o + (size_t)(warp * DC_ROWS + row) * (HD + 2);
#pragma unroll
        for (int d = 0; d < NO8; d++) {
            dst[d * 8 + 2 * (lane & 3)] = o[d][2 * r];
            dst[d * 8 + 2 * (lane & 3) + 1] = o[d][2 * r + 1];
        }
        if ((lane & 3) == 0) {
            dst[HD] = m[r];
            dst[HD + 1] = lsum;
        }
    }
    __syncthreads();
    /* Warp 0's first 16 keys include k_begin < k_end, so M is finite; a
     * warp that saw only masked keys has m = -inf, l = 0, o = 0. */
    for (int i = tid; i < G * HD / 2; i += DC_THREADS) {
        const int row = i / (HD / 2), col = (i % (HD / 2)) * 2;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < DC_WARPS; w++)
            M = fmaxf(M, red_o[(w * DC_ROWS + row) * (HD + 2) + HD]);
        float L = 0.0f, v0 = 0.0f, v1 = 0.0f;
#pragma unroll
        for (int w = 0; w < DC_WARPS; w++) {
            const float *src = red_o + (w * DC_ROWS + row) * (HD + 2);
            const float f = exp2f(src[HD] - M);
            L += src[HD + 1] * f;
            v0 += src[col] * f;
            v1 += src[col + 1] * f;
        }
        const int head = g * G + row;
        if (direct) {
            store2(a.out, (size_t)q0 * a.ld_out + (size_t)head * HD + col, a.out_dtype,
                   a.out_lo_off, v0 / L, v1 / L);
        } else {
            float *p = ws_item + (size_t)head * (HD + 2);
            p[col] = v0;
            p[col + 1] = v1;
            if (col == 0) {
                p[HD] = M;
                p[HD + 1] = L;
            }
        }
    }
}

/* CTA (x, g) takes items x, x + gridDim.x, ... of the work list for kv
 * head g. */
template <typename T, int HD, bool POW2>
__global__ void __launch_bounds__(DC_THREADS) decode_kernel(cuda_attn_paged a, float *ws)
{
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int32_t *work = a.decode_work;
    const int partition = work[0], n_items = work[1], table_stride = work[2];
    const int32_t *item_start = work + CUDA_ATTN_WORK_HEAD;
    const int32_t *items = item_start + a.n_seqs + 1;
    const int g = blockIdx.y;
    for (int i = blockIdx.x; i < n_items; i += gridDim.x) {
        const int s = (int)((uint32_t)items[i] >> 16), part = items[i] & 0xffff;
        const int k_begin = part * partition;
        const int k_end = min(a.seq_lens[s], k_begin + partition);
        const bool direct = item_start[s + 1] - item_start[s] == 1;
        if (i != (int)blockIdx.x) __syncthreads(); /* the last item's merge read the smem */
        decode_item<T, HD, POW2>(a, s, g, k_begin, k_end, table_stride, direct,
                                 direct ? nullptr : ws + (size_t)i * a.n_heads * (HD + 2),
                                 smem_raw);
    }
}

/* Merges the items of (query head, sequence) when there are several (a
 * sequence of one item was written directly). */
template <int HD> __global__ void decode_reduce_kernel(cuda_attn_paged a, const float *ws)
{
    const int head = blockIdx.x, s = blockIdx.y;
    const int32_t *item_start = a.decode_work + CUDA_ATTN_WORK_HEAD;
    const int first = item_start[s], np = item_start[s + 1] - first;
    if (np <= 1) return;
    const int q0 = a.query_start[s];
    const float *p = ws + ((size_t)first * a.n_heads + head) * (HD + 2);
    const size_t stride = (size_t)a.n_heads * (HD + 2); /* item to item */
    float M = -INFINITY;
    for (int i = 0; i < np; i++)
        M = fmaxf(M, p[i * stride + HD]);
    float L = 0.0f;
    for (int i = 0; i < np; i++)
        L += p[i * stride + HD + 1] * exp2f(p[i * stride + HD] - M);
    const float inv = 1.0f / L;
    for (int col = 2 * threadIdx.x; col < HD; col += 2 * blockDim.x) {
        float v0 = 0.0f, v1 = 0.0f;
        for (int i = 0; i < np; i++) {
            const float f = exp2f(p[i * stride + HD] - M);
            v0 += p[i * stride + col] * f;
            v1 += p[i * stride + col + 1] * f;
        }
        store2(a.out, (size_t)q0 * a.ld_out + (size_t)head * HD + col, a.out_dtype, a.out_lo_off,
               v0 * inv, v1 * inv);
    }
}

/* The shared-memory opt-in of one instantiation (once per device), for
 * the largest table window: the longest partition over 1-token blocks. */
template <typename T, int HD> int decode_allow()
{
    static std::atomic<unsigned> pow2_set{0}, any_set{0};
    const size_t smem = decode_launch_smem<HD>(DC_MAX_PARTITION, 1);
    const int rc = allow_smem(decode_kernel<T, HD, true>, smem, pow2_set);
    return rc ? rc : allow_smem(decode_kernel<T, HD, false>, smem, any_set);
}

/* The table window is sized for the longest partition: the partition is
 * in device memory, and may change from one replay of a graph to the next. */
template <typename T, int HD>
int launch_decode(const cuda_attn_paged *a, const cuda_attn_plan *plan, float *ws,
                  cudaStream_t stream)
{
    const int rc = decode_allow<T, HD>();
    if (rc) return rc;
    const dim3 grid(plan->grid_x, a->n_kv_heads);
    const size_t smem = decode_launch_smem<HD>(DC_MAX_PARTITION, a->block_size);
    if ((a->block_size & (a->block_size - 1)) == 0)
        decode_kernel<T, HD, true><<<grid, DC_THREADS, smem, stream>>>(*a, ws);
    else
        decode_kernel<T, HD, false><<<grid, DC_THREADS, smem, stream>>>(*a, ws);
    if (plan->reduce)
        decode_reduce_kernel<HD><<<dim3(a->n_heads, a->n_seqs), HD / 2, 0, stream>>>(*a, ws);
    return (int)cudaGetLastError();
}

template <typename T>
int decode_for(const cuda_attn_paged *a, const cuda_attn_plan *plan, float *ws, cudaStream_t stream)
{
    switch (a->head_dim) {
    case 16:
        return launch_decode<T, 16>(a, plan, ws, stream);
    case 32:
        return launch_decode<T, 32>(a, plan, ws, stream);
    case 64:
        return launch_decode<T, 64>(a, plan, ws, stream);
    default:
        return launch_decode<T, 128>(a, plan, ws, stream);
    }
}

template <typename T> int decode_prepare_type()
{
    int rc = decode_allow<T, 16>();
    rc = rc ? rc : decode_allow<T, 32>();
    rc = rc ? rc : decode_allow<T, 64>();
    return rc ? rc : decode_allow<T, 128>();
}

} /* namespace */
} /* namespace cv_attn */

extern "C" int cuda_attn_prepare(void)
{
    using namespace cv_attn;
    int rc = prefill_prepare();
    rc = rc ? rc : decode_prepare_type<__half>();
    return rc ? rc : decode_prepare_type<__nv_bfloat16>();
}

extern "C" int cuda_attn_decode(const cuda_attn_paged *a, const cuda_attn_plan *plan,
                                float *workspace, cudaStream_t stream)
{
    using namespace cv_attn;
    /* Items pack the sequence and the partition index in 16 bits each. */
    if (!cuda_attn_supported(a->n_heads, a->n_kv_heads, a->head_dim, a->kv_dtype, a->q_dtype,
                             a->out_dtype) ||
        a->ld_q % 8 != 0 || a->ld_out % 2 != 0 || a->out_lo_off % 2 != 0 || a->n_seqs <= 0 ||
        a->n_seqs > 0xffff || a->block_size <= 0 || !a->decode_work || plan->grid_x <= 0 ||
        plan->partition < DC_BN || plan->partition % DC_BN != 0 ||
        plan->partition > DC_MAX_PARTITION || plan->max_seq_len / plan->partition >= 0xffff ||
        a->n_heads / a->n_kv_heads > DC_ROWS || (plan->reduce && !workspace))
        return (int)cudaErrorInvalidValue;
    return a->kv_dtype == CV_DTYPE_F16 ? decode_for<__half>(a, plan, workspace, stream)
                                       : decode_for<__nv_bfloat16>(a, plan, workspace, stream);
}

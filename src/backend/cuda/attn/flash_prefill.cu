/* FlashAttention-2-style prefill over the paged KV cache (contract in
 * attn.h): one CTA of 4 warps per (query tile of BM = 64 or 128 rows of a
 * sequence, query head); each warp owns BM / 4 rows as one or two m16 row
 * tiles. Q is staged once in shared memory (and held as A fragments when
 * they fit the registers); K and V tiles of BN keys stream through
 * double-buffered shared memory with cp.async (K of tile i+1 is in flight
 * during the softmax and P.V of tile i, V of tile i+1 during S of tile
 * i+1); S = Q K^T and O += P V are mma.sync m16n8k16 with fp32
 * accumulators, P stays in registers (the C fragment of S is the A fragment
 * of P.V); the online softmax works in the log2 domain (exp2f with scale *
 * log2 e folded in). The causal mask is applied only to tiles that cross
 * the diagonal (which includes the last, partial tile: keys past the end
 * are zero-filled, never read), and warps wholly above the diagonal skip
 * their mmas.
 *
 * GQA: a CTA handles one query head and reads its kv head's tiles; the G
 * CTAs of a group are adjacent in the grid and read the same K/V, mostly
 * from L2 (prefill is compute bound).
 *
 * Work list without a device-side plan: grid row y (counted from the end)
 * takes the tile of sequence s with base(s) = query_start[s] / BM + s <= y
 * < base(s + 1); base is increasing and base(s + 1) - base(s) >=
 * ceil(qlen_s / BM), so y < n_tokens / BM + n_seqs covers every tile and at
 * most one row per sequence finds nothing to do.
 *
 * Build checks (registers, spills, mma in the PTX): in the file header of
 * tests/gpu/test_gpu_attention.cu.
 */
#include "backend/cuda/attn/attn_common.cuh"

namespace cv_attn
{
namespace
{

constexpr int PF_WARPS = 4, PF_THREADS = PF_WARPS * 32;

/* Tile shapes: WM m16 row tiles per warp (BM = 64 WM query rows per CTA),
 * BN keys per K/V tile. Two row tiles per warp halve the shared-memory
 * reads of K and V per mma (each B fragment feeds two mmas); with head_dim
 * 128 the Q fragments are then re-read from shared memory per k-step
 * instead of held (registers: O 128 + S 64 per lane). */
template <int HD, int WM, int BN> constexpr size_t prefill_smem_bytes()
{
    /* Q tile, then K[2], then V[2]; 16-bit elements. */
    return (size_t)(64 * WM + 4 * BN) * (HD + PAD) * 2;
}

/* S += Q K^T for a warp's WM row tiles against a K tile of BN keys (kb):
 * each K fragment pair feeds WM mmas. Q comes from qf, or with !Q_IN_REGS
 * from shared memory at q_lane (this lane's ldmatrix row address). */
template <typename T, int HD, int WM, int BN, bool Q_IN_REGS, int QW, int QK>
__device__ __forceinline__ void tile_scores(float (&sc)[WM][BN / 8][4],
                                            const uint32_t (&qf)[QW][QK][4], const T *q_lane,
                                            const T *kb, int lane)
{
    constexpr int LD = HD + PAD;
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
        uint32_t qa[WM][4];
#pragma unroll
        for (int w = 0; w < WM; w++) {
            if constexpr (Q_IN_REGS) {
#pragma unroll
                for (int i = 0; i < 4; i++)
                    qa[w][i] = qf[w][kk][i];
            } else {
                ldsm_x4(qa[w], q_lane + w * 16 * LD + kk * 16);
            }
        }
#pragma unroll
        for (int nn = 0; nn < BN / 16; nn++) {
            uint32_t b[4];
            ldsm_x4(b, kb + (nn * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + kk * 16 +
                           ((lane >> 3) & 1) * 8);
#pragma unroll
            for (int w = 0; w < WM; w++) {
                mma16816<T>(sc[w][2 * nn], qa[w], b[0], b[1]);
                mma16816<T>(sc[w][2 * nn + 1], qa[w], b[2], b[3]);
            }
        }
    }
}

/* O += P V: P (the softmaxed C fragments of S, rounded to T) is the A
 * operand as it stands; V fragments (ldmatrix.trans of the V tile vb) feed
 * WM mmas each. */
template <typename T, int HD, int WM, int BN>
__device__ __forceinline__ void tile_pv(float (&o)[WM][HD / 8][4], const float (&sc)[WM][BN / 8][4],
                                        const T *vb, int lane)
{
    constexpr int LD = HD + PAD;
#pragma unroll
    for (int kc = 0; kc < BN / 16; kc++) {
        uint32_t pa[WM][4];
#pragma unroll
        for (int w = 0; w < WM; w++) {
            pa[w][0] = pack2<T>(sc[w][2 * kc][0], sc[w][2 * kc][1]);
            pa[w][1] = pack2<T>(sc[w][2 * kc][2], sc[w][2 * kc][3]);
            pa[w][2] = pack2<T>(sc[w][2 * kc + 1][0], sc[w][2 * kc + 1][1]);
            pa[w][3] = pack2<T>(sc[w][2 * kc + 1][2], sc[w][2 * kc + 1][3]);
        }
#pragma unroll
        for (int dn = 0; dn < HD / 16; dn++) {
            uint32_t b[4];
            ldsm_x4_trans(b, vb + (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dn * 16 +
                                 (lane >> 4) * 8);
#pragma unroll
            for (int w = 0; w < WM; w++) {
                mma16816<T>(o[w][2 * dn], pa[w], b[0], b[1]);
                mma16816<T>(o[w][2 * dn + 1], pa[w], b[2], b[3]);
            }
        }
    }
}

template <typename T, int HD, int WM, int BN>
__global__ void __launch_bounds__(PF_THREADS) prefill_kernel(cuda_attn_paged a, int skip_single)
{
    constexpr int BM = 16 * WM * PF_WARPS;
    constexpr int LD = HD + PAD, CH = HD / 8;
    constexpr int NK16 = HD / 16; /* k-steps of S = Q K^T */
    constexpr int NS8 = BN / 8, NO8 = HD / 8;
    constexpr bool Q_IN_REGS = WM * HD <= 128;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *qs = reinterpret_cast<T *>(smem_raw);
    T *ks = qs + BM * LD;
    T *vs = ks + 2 * BN * LD;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    /* Query heads vary fastest, so the CTAs of a GQA group run together
     * and share their K/V tiles in L2; the last tiles (most keys) first. */
    const int tile = gridDim.y - 1 - blockIdx.y;
    const int h = blockIdx.x, g = h / (a.n_heads / a.n_kv_heads);

    int lo = 0, hi = a.n_seqs - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (a.query_start[mid] / BM + mid <= tile)
            lo = mid;
        else
            hi = mid - 1;
    }
    const int s = lo;
    const int q0 = a.query_start[s], qlen = a.query_start[s + 1] - q0;
    const int row0 = (tile - (q0 / BM + s)) * BM;
    if (row0 >= qlen || (skip_single && qlen == 1)) return;
    const int n_rows = min(BM, qlen - row0);
    const int first_pos = a.seq_lens[s] - qlen + row0; /* position of row 0 */
    const int kv_end = first_pos + n_rows;             /* keys [0, kv_end) */
    const int32_t *table = a.block_tables + (size_t)s * a.max_blocks_per_seq;
    const T *kv_layer = static_cast<const T *>(a.kv) + a.layer_off;
    const size_t k_off = (size_t)g * a.block_size * HD;
    const size_t v_off = (size_t)(a.n_kv_heads + g) * a.block_size * HD;
    const int n_tiles = (kv_end + BN - 1) / BN;

    load_kv_tile<T, HD, BN, PF_THREADS>(ks, kv_layer, table, 0, a.block_size, a.block_elems, k_off,
                                        0, kv_end, tid);
    cp_async_commit();
    load_kv_tile<T, HD, BN, PF_THREADS>(vs, kv_layer, table, 0, a.block_size, a.block_elems, v_off,
                                        0, kv_end, tid);
    cp_async_commit();

    /* Q tile (rows past the chunk zeroed) into shared memory. */
    const size_t qe = a.q_dtype == CV_DTYPE_F32 ? 4 : 2;
    for (int c = tid; c < BM * CH; c += PF_THREADS) {
        const int r = c / CH, col = (c % CH) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < n_rows) {
            const char *src = static_cast<const char *>(a.q) +
                              ((size_t)(q0 + row0 + r) * a.ld_q + (size_t)h * HD + col) * qe;
            v = load_q8<T>(src, a.q_dtype);
        }
        *reinterpret_cast<uint4 *>(qs + r * LD + col) = v;
    }
    __syncthreads();
    /* This warp's rows: BM / 4 consecutive rows from wrow0; row tile w of
     * the warp starts at wrow0 + 16 w. */
    const int wrow0 = warp * 16 * WM;
    const T *q_lane = qs + (wrow0 + (lane & 15)) * LD + (lane >> 4) * 8;
    uint32_t qf[Q_IN_REGS ? WM : 1][Q_IN_REGS ? NK16 : 1][4];
    if constexpr (Q_IN_REGS) {
#pragma unroll
        for (int w = 0; w < WM; w++)
#pragma unroll
            for (int kk = 0; kk < NK16; kk++)
                ldsm_x4(qf[w][kk], q_lane + w * 16 * LD + kk * 16);
    }

    const float scale_log2 = a.scale * 1.4426950408889634f;
    float o[WM][NO8][4];
    float m[WM][2], l[WM][2];
#pragma unroll
    for (int w = 0; w < WM; w++) {
#pragma unroll
        for (int d = 0; d < NO8; d++)
            o[w][d][0] = o[w][d][1] = o[w][d][2] = o[w][d][3] = 0.0f;
        m[w][0] = m[w][1] = -INFINITY;
        l[w][0] = l[w][1] = 0.0f;
    }
    /* Position of this lane's first row (gid of the warp's first row tile). */
    const int pos_lane = first_pos + wrow0 + (lane >> 2);

    for (int it = 0; it < n_tiles; it++) {
        const int buf = it & 1, n0 = it * BN;
        const T *kb = ks + buf * BN * LD;
        const T *vb = vs + buf * BN * LD;
        cp_async_wait<1>(); /* K[it] landed (V[it] may be in flight) */
        __syncthreads();

        /* A warp whose rows all precede this tile's first key (the
         * diagonal's upper side) or lie past the chunk adds nothing: it only
         * takes part in the loads and barriers. */
        const bool active = wrow0 < n_rows && n0 <= first_pos + wrow0 + 16 * WM - 1;
        float sc[WM][NS8][4];
#pragma unroll
        for (int w = 0; w < WM; w++)
#pragma unroll
            for (int j = 0; j < NS8; j++)
                sc[w][j][0] = sc[w][j][1] = sc[w][j][2] = sc[w][j][3] = 0.0f;
        if (active) tile_scores<T, HD, WM, BN, Q_IN_REGS>(sc, qf, q_lane, kb, lane);
        /* K[it + 1] into the buffer S(it - 1) read: every warp passed this
         * tile's barrier, so S(it - 1) is done. An empty group keeps the
         * wait counts uniform on the last tile. */
        if (it + 1 < n_tiles)
            load_kv_tile<T, HD, BN, PF_THREADS>(ks + (buf ^ 1) * BN * LD, kv_layer, table, 0,
                                                a.block_size, a.block_elems, k_off, n0 + BN, kv_end,
                                                tid);
        cp_async_commit();

        /* Key n0 + c is visible to the row at position p iff n0 + c <= p.
         * Only tiles reaching past the first row's position need it; keys
         * >= kv_end exceed every real row's position. */
        if (active) {
            if (n0 + BN - 1 > first_pos) {
#pragma unroll
                for (int w = 0; w < WM; w++)
#pragma unroll
                    for (int j = 0; j < NS8; j++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const int key = n0 + j * 8 + 2 * (lane & 3) + (e & 1);
                            if (key > pos_lane + w * 16 + (e >> 1) * 8) sc[w][j][e] = -INFINITY;
                        }
            }
#pragma unroll
            for (int w = 0; w < WM; w++)
                softmax_step<NS8, NO8>(sc[w], o[w], m[w], l[w], scale_log2);
        }

        cp_async_wait<1>(); /* V[it] landed (K[it + 1] may be in flight) */
        __syncthreads();
        if (active) tile_pv<T, HD, WM, BN>(o, sc, vb, lane);
        /* V[it + 1] into the buffer P.V(it - 1) read (done before this
         * tile's first barrier). */
        if (it + 1 < n_tiles)
            load_kv_tile<T, HD, BN, PF_THREADS>(vs + (buf ^ 1) * BN * LD, kv_layer, table, 0,
                                                a.block_size, a.block_elems, v_off, n0 + BN, kv_end,
                                                tid);
        cp_async_commit();
    }
    cp_async_wait<0>();

#pragma unroll
    for (int w = 0; w < WM; w++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int row = wrow0 + w * 16 + (lane >> 2) + r * 8;
            const float inv = 1.0f / quad_sum(l[w][r]);
            if (row >= n_rows) continue;
            const size_t base =
                (size_t)(q0 + row0 + row) * a.ld_out + (size_t)h * HD + 2 * (lane & 3);
#pragma unroll
            for (int d = 0; d < NO8; d++)
                store2(a.out, base + d * 8, a.out_dtype, a.out_lo_off, o[w][d][2 * r] * inv,
                       o[w][d][2 * r + 1] * inv);
        }
}

/* A kernel instantiation as a value, for the dispatch below. */
template <typename T, int HD, int WM, int BN> struct prefill_shape {
};

/* The shared-memory opt-in of one instantiation (once per device). */
template <typename T, int HD, int WM, int BN> int prefill_allow(prefill_shape<T, HD, WM, BN>)
{
    static std::atomic<unsigned> smem_set{0};
    return allow_smem(prefill_kernel<T, HD, WM, BN>, prefill_smem_bytes<HD, WM, BN>(), smem_set);
}

template <typename T, int HD, int WM, int BN>
int launch_prefill(prefill_shape<T, HD, WM, BN> sh, const cuda_attn_paged *a, int skip_single,
                   cudaStream_t stream)
{
    const int rc = prefill_allow(sh);
    if (rc) return rc;
    const dim3 grid(a->n_heads, a->n_tokens / (64 * WM) + a->n_seqs);
    prefill_kernel<T, HD, WM, BN>
        <<<grid, PF_THREADS, prefill_smem_bytes<HD, WM, BN>(), stream>>>(*a, skip_single);
    return (int)cudaGetLastError();
}

/* Calls f with the instantiation for (head_dim, 128-row tiles or not):
 * 128-row tiles use 32-key tiles at head_dim 128 (S beside O's 128
 * registers a lane), 64-key tiles below. */
template <typename T, typename F> int with_prefill_shape(int head_dim, bool big, F f)
{
    switch (head_dim) {
    case 16:
        return big ? f(prefill_shape<T, 16, 2, 64>()) : f(prefill_shape<T, 16, 1, 64>());
    case 32:
        return big ? f(prefill_shape<T, 32, 2, 64>()) : f(prefill_shape<T, 32, 1, 64>());
    case 64:
        return big ? f(prefill_shape<T, 64, 2, 64>()) : f(prefill_shape<T, 64, 1, 64>());
    default:
        return big ? f(prefill_shape<T, 128, 2, 32>()) : f(prefill_shape<T, 128, 1, 64>());
    }
}

template <typename T> int prefill_prepare_type()
{
    for (int hd = 16; hd <= 128; hd *= 2)
        for (int big = 0; big < 2; big++) {
            const int rc =
                with_prefill_shape<T>(hd, big, [](auto sh) { return prefill_allow(sh); });
            if (rc) return rc;
        }
    return 0;
}

} /* namespace */

int prefill_prepare()
{
    const int rc = prefill_prepare_type<__half>();
    return rc ? rc : prefill_prepare_type<__nv_bfloat16>();
}

} /* namespace cv_attn */

extern "C" int cuda_attn_supported(int n_heads, int n_kv_heads, int head_dim, cv_dtype kv_dtype,
                                   cv_dtype q_dtype, cv_dtype out_dtype)
{
    const auto dtype_ok = [](cv_dtype t) {
        return t == CV_DTYPE_F32 || t == CV_DTYPE_F16 || t == CV_DTYPE_BF16;
    };
    return n_kv_heads > 0 && n_heads % n_kv_heads == 0 && n_heads / n_kv_heads <= 16 &&
           (head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128) &&
           (kv_dtype == CV_DTYPE_F16 || kv_dtype == CV_DTYPE_BF16) && dtype_ok(q_dtype) &&
           dtype_ok(out_dtype);
}

extern "C" int cuda_attn_prefill(const cuda_attn_paged *a, int skip_single, int tile_rows,
                                 cudaStream_t stream)
{
    using namespace cv_attn;
    if (!cuda_attn_supported(a->n_heads, a->n_kv_heads, a->head_dim, a->kv_dtype, a->q_dtype,
                             a->out_dtype) ||
        a->ld_q % 8 != 0 || a->ld_out % 2 != 0 || a->out_lo_off % 2 != 0 || a->n_seqs <= 0 ||
        a->block_size <= 0 || (tile_rows != 64 && tile_rows != 128))
        return (int)cudaErrorInvalidValue;
    const bool big = tile_rows == 128;
    const auto launch = [&](auto sh) { return launch_prefill(sh, a, skip_single, stream); };
    return a->kv_dtype == CV_DTYPE_F16
               ? with_prefill_shape<__half>(a->head_dim, big, launch)
               : with_prefill_shape<__nv_bfloat16>(a->head_dim, big, launch);
}

/* Correctness and timing of the tensor-core attention kernels
 * (src/backend/cuda/attn): cuda_attn_prefill (FlashAttention-2 over the
 * paged cache, chunked prefill with prefix hits) and cuda_attn_decode
 * (FlashDecoding, GQA-packed).
 *
 *   test_gpu_attention            correctness; exit 0 pass, 1 fail, 77 no GPU
 *   test_gpu_attention --bench    also timing: prefill TFLOP/s, decode GB/s
 *                                 against the card's measured copy bandwidth
 *   test_gpu_attention SUBSTRING  only the cases whose names contain it
 *
 * Correctness: random Q (F32, BF16 or F16) and K/V (BF16 or F16, never
 * zero) in a pool of shuffled blocks whose unused slots hold NaN (a kernel
 * reading a wrong block or a slot past a sequence's end turns its output
 * NaN); the output is poisoned with NaN first, so every element the kernels
 * must write is checked. Each case compares against an fp64 CPU reference
 * of softmax(scale q k^T) v over the causal context:
 * ||out - ref|| / ||ref|| < 1e-2 for BF16 inputs, 2e-3 for F16.
 * Shapes: batches mixing fresh prompts, prefix hits and chunks that start
 * mid-block, single-token decodes, contexts 1 .. 4k, GQA groups 1/2/4/8,
 * head_dim 16/32/64/128, block sizes 8/12/16/32, split (hi + lo) outputs.
 *
 * Mixed batches run through cuda_attn_plan_make + cuda_attn_run, as the
 * backend does. Every case is also captured in a CUDA graph and replayed:
 * the output must match the eager run byte for byte.
 *
 * Timing: medians of cudaEvent pairs over 30 launches, the KV pool holds
 * several layers and each launch reads the next one (rotating inputs, so
 * L2 does not serve repeats).
 *
 * Build check record (nvcc 13.0.88, -arch sm_90, -Xptxas -v), registers
 * per thread (128-thread CTAs): prefill_kernel<T, head_dim, row tiles per
 * warp, keys per tile> <128,1,64> 168, <128,2,32> 230, <64,1,64> 128,
 * <64,2,64> 229, <32,1,64> 96, <32,2,64> 167, <16,1,64> 80, <16,2,64> 128;
 * decode_kernel <128> 156, <64> 92, <32> 56, <16> 47; decode_reduce 32; 0
 * bytes stack frame and 0 bytes spill stores / loads in every kernel, for
 * bf16 and f16. The PTX holds mma.sync.m16n8k16, ldmatrix (.trans for V)
 * and cp.async.cg, no .local. SASS (HMMA.16816, LDSM, LDGSTS) is to be read
 * with cuobjdump -sass on a machine that has it (the build machine's CUDA
 * install has no cuobjdump).
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "backend/cuda/attn/attn.h"

#define CK(call)                                                                                   \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

namespace
{

uint64_t rng_state = 0x9E3779B97F4A7C15ull;

uint32_t rng_u32()
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

/* Uniform in [-r, r], never exactly zero. */
float rng_val(float r)
{
    float v;
    do
        v = ((float)rng_u32() / 4294967296.0f * 2.0f - 1.0f) * r;
    while (v == 0.0f);
    return v;
}

size_t dtype_bytes(cv_dtype t)
{
    return t == CV_DTYPE_F32 ? 4 : 2;
}

/* Stores v rounded to dtype t at element i of buf; returns the stored value. */
float put(void *buf, size_t i, cv_dtype t, float v)
{
    if (t == CV_DTYPE_F32) {
        ((float *)buf)[i] = v;
        return v;
    }
    if (t == CV_DTYPE_BF16) {
        const __nv_bfloat16 b = __float2bfloat16_rn(v);
        ((__nv_bfloat16 *)buf)[i] = b;
        return __bfloat162float(b);
    }
    const __half h = __float2half_rn(v);
    ((__half *)buf)[i] = h;
    return __half2float(h);
}

float get(const void *buf, size_t i, cv_dtype t)
{
    if (t == CV_DTYPE_F32) return ((const float *)buf)[i];
    if (t == CV_DTYPE_BF16) return __bfloat162float(((const __nv_bfloat16 *)buf)[i]);
    return __half2float(((const __half *)buf)[i]);
}

void put_nan(void *buf, size_t i, cv_dtype t)
{
    ((uint16_t *)buf)[i] = t == CV_DTYPE_BF16 ? 0x7FC0 : 0x7E00;
}

/* Pool values in [-1, 1) from a hash of the index (timing runs). */
__global__ void fill_pool_kernel(uint16_t *pool, size_t n, cv_dtype t)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ (uint32_t)(i >> 32);
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        const float v = (float)(h >> 8) / 8388608.0f - 1.0f;
        const __nv_bfloat16 b = __float2bfloat16_rn(v);
        const __half f = __float2half_rn(v);
        pool[i] = t == CV_DTYPE_BF16 ? *(const uint16_t *)&b : *(const uint16_t *)&f;
    }
}

struct seq_shape {
    int cached, fresh; /* tokens already in the cache, query tokens this step */
};

enum run_mode { MODE_PREFILL, MODE_DECODE, MODE_MIXED };

struct attn_case {
    const char *name;
    int head_dim, n_heads, n_kv_heads, block_size;
    cv_dtype kv, q, out;
    run_mode mode;
    int partition; /* decode keys per CTA; 0: the plan's choice */
    bool split_out;
    std::vector<seq_shape> seqs;
    float q_range = 2.0f; /* Q uniform in [-q_range, q_range]: larger is a sharper softmax */
    int tile_rows = 0;    /* prefill query rows per CTA: 64, 128, 0 for the launcher's pick */
};

/* A batch on the host and the device: pool, tables, Q, output. */
struct problem {
    int n_layers, layer, n_seqs, n_tokens, max_blocks, max_seq_len, n_blocks;
    size_t block_elems;
    std::vector<int32_t> query_start, seq_lens, tables;
    std::vector<uint16_t> pool; /* host copy (F16/BF16 bits), correctness runs only */
    std::vector<float> poolf;   /* the same widened, for the reference */
    std::vector<unsigned char> q;
    int32_t *d_qs = nullptr, *d_lens = nullptr, *d_tables = nullptr, *d_work = nullptr;
    void *d_pool = nullptr, *d_q = nullptr, *d_out = nullptr;
    float *d_ws = nullptr;
    cuda_attn_plan plan;
    size_t out_elems = 0;
    cuda_attn_paged args;
};

size_t pool_index(const attn_case &c, const problem &p, int layer, int block, int kv, int g, int j)
{
    return (size_t)block * p.block_elems +
           (size_t)layer * 2 * c.n_kv_heads * c.block_size * c.head_dim +
           ((size_t)(kv * c.n_kv_heads + g) * c.block_size + j) * c.head_dim;
}

/* Builds the batch: shuffled block ids, K/V for every cached and new
 * position of every layer, NaN in every slot no sequence owns. */
void problem_make(const attn_case &c, int n_layers, bool host_ref, problem &p)
{
    p.n_layers = n_layers;
    p.layer = n_layers - 1;
    p.n_seqs = (int)c.seqs.size();
    p.query_start.assign(1, 0);
    p.seq_lens.clear();
    p.max_blocks = 1;
    p.max_seq_len = 1;
    int total_blocks = 0;
    for (const seq_shape &s : c.seqs) {
        p.query_start.push_back(p.query_start.back() + s.fresh);
        p.seq_lens.push_back(s.cached + s.fresh);
        const int nb = (s.cached + s.fresh + c.block_size - 1) / c.block_size;
        p.max_blocks = std::max(p.max_blocks, nb);
        p.max_seq_len = std::max(p.max_seq_len, s.cached + s.fresh);
        total_blocks += nb;
    }
    p.n_tokens = p.query_start.back();
    p.n_blocks = total_blocks + 5; /* a few blocks nobody owns */
    std::vector<int32_t> ids(p.n_blocks);
    for (int i = 0; i < p.n_blocks; i++)
        ids[i] = i;
    for (int i = p.n_blocks - 1; i > 0; i--)
        std::swap(ids[i], ids[rng_u32() % (uint32_t)(i + 1)]);
    p.tables.assign((size_t)p.n_seqs * p.max_blocks, -1);
    int next = 0;
    for (int s = 0; s < p.n_seqs; s++)
        for (int b = 0; b < (p.seq_lens[s] + c.block_size - 1) / c.block_size; b++)
            p.tables[(size_t)s * p.max_blocks + b] = ids[next++];
    p.block_elems = (size_t)n_layers * 2 * c.n_kv_heads * c.block_size * c.head_dim;
    const size_t pool_elems = (size_t)p.n_blocks * p.block_elems;
    CK(cudaMalloc(&p.d_pool, pool_elems * 2));
    if (!host_ref) { /* timing only: random values made on the device */
        fill_pool_kernel<<<4096, 256>>>((uint16_t *)p.d_pool, pool_elems, c.kv);
        CK(cudaGetLastError());
    } else {
        p.pool.resize(pool_elems);
        for (size_t i = 0; i < p.pool.size(); i++)
            put_nan(p.pool.data(), i, c.kv);
        for (int s = 0; s < p.n_seqs; s++)
            for (int j = 0; j < p.seq_lens[s]; j++) {
                const int blk = p.tables[(size_t)s * p.max_blocks + j / c.block_size];
                for (int l = 0; l < n_layers; l++)
                    for (int kv = 0; kv < 2; kv++)
                        for (int g = 0; g < c.n_kv_heads; g++) {
                            const size_t at = pool_index(c, p, l, blk, kv, g, j % c.block_size);
                            for (int d = 0; d < c.head_dim; d++)
                                put(p.pool.data(), at + d, c.kv, rng_val(1.0f));
                        }
            }
        p.poolf.resize(pool_elems);
        for (size_t i = 0; i < pool_elems; i++)
            p.poolf[i] = get(p.pool.data(), i, c.kv);
        CK(cudaMemcpy(p.d_pool, p.pool.data(), pool_elems * 2, cudaMemcpyHostToDevice));
    }
    /* Q as in the qkv buffer: row stride of q | k | v. */
    const int ld_q = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim;
    p.q.resize((size_t)p.n_tokens * ld_q * dtype_bytes(c.q));
    for (size_t i = 0; i < (size_t)p.n_tokens * ld_q; i++)
        put(p.q.data(), i, c.q, rng_val(c.q_range));
    const int ld_out = c.n_heads * c.head_dim;
    p.out_elems = (size_t)p.n_tokens * ld_out * (c.split_out ? 2 : 1);

    CK(cudaMalloc(&p.d_qs, p.query_start.size() * 4));
    CK(cudaMalloc(&p.d_lens, p.seq_lens.size() * 4));
    CK(cudaMalloc(&p.d_tables, p.tables.size() * 4));
    CK(cudaMalloc(&p.d_q, p.q.size()));
    CK(cudaMalloc(&p.d_out, p.out_elems * dtype_bytes(c.out)));
    CK(cudaMemcpy(p.d_qs, p.query_start.data(), p.query_start.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(p.d_lens, p.seq_lens.data(), p.seq_lens.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(p.d_tables, p.tables.data(), p.tables.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(p.d_q, p.q.data(), p.q.size(), cudaMemcpyHostToDevice));

    cuda_attn_paged &a = p.args;
    memset(&a, 0, sizeof a);
    a.n_tokens = p.n_tokens;
    a.n_seqs = p.n_seqs;
    a.n_heads = c.n_heads;
    a.n_kv_heads = c.n_kv_heads;
    a.head_dim = c.head_dim;
    a.block_size = c.block_size;
    a.max_blocks_per_seq = p.max_blocks;
    a.query_start = p.d_qs;
    a.seq_lens = p.d_lens;
    a.block_tables = p.d_tables;
    a.q = p.d_q;
    a.q_dtype = c.q;
    a.ld_q = ld_q;
    a.kv = p.d_pool;
    a.kv_dtype = c.kv;
    a.block_elems = p.block_elems;
    a.layer_off = (size_t)p.layer * 2 * c.n_kv_heads * c.block_size * c.head_dim;
    a.scale = 1.0f / sqrtf((float)c.head_dim);
    a.out = p.d_out;
    a.out_dtype = c.out;
    a.ld_out = ld_out;
    a.out_lo_off = c.split_out ? (size_t)p.n_tokens * ld_out : 0;
}

void problem_free(problem &p)
{
    cudaFree(p.d_qs);
    cudaFree(p.d_lens);
    cudaFree(p.d_tables);
    cudaFree(p.d_work);
    cudaFree(p.d_pool);
    cudaFree(p.d_q);
    cudaFree(p.d_out);
    cudaFree(p.d_ws);
}

/* Uploads the work array of PLAN (the problem's, or a graph's plan of the
 * same batch) and sizes the workspace for it, merging or not. */
void problem_work(const attn_case &c, problem &p, const cuda_attn_plan &plan)
{
    std::vector<int32_t> work(cuda_attn_work_ints(p.n_seqs, plan.n_items));
    cuda_attn_work_fill(&plan, p.query_start.data(), p.seq_lens.data(), p.n_seqs, p.max_blocks,
                        work.data());
    cudaFree(p.d_work);
    cudaFree(p.d_ws);
    CK(cudaMalloc(&p.d_work, work.size() * 4));
    CK(cudaMemcpy(p.d_work, work.data(), work.size() * 4, cudaMemcpyHostToDevice));
    p.args.decode_work = p.d_work;
    const size_t ws = (size_t)std::max(plan.n_items, 1) * c.n_heads * (c.head_dim + 2);
    CK(cudaMalloc(&p.d_ws, ws * sizeof(float)));
}

/* Plans the step as the backend would (cuda_attn_plan_make, the case's
 * partition and tile height when it forces them) and uploads its work. */
void problem_plan(const attn_case &c, problem &p)
{
    int dev = 0, n_sms = 0;
    CK(cudaGetDevice(&dev));
    CK(cudaDeviceGetAttribute(&n_sms, cudaDevAttrMultiProcessorCount, dev));
    cuda_attn_plan_make(&p.plan, p.query_start.data(), p.seq_lens.data(), p.n_seqs, c.n_heads,
                        c.n_kv_heads, c.head_dim, n_sms, c.partition, 0);
    if (c.tile_rows) p.plan.tile_rows = c.tile_rows;
    problem_work(c, p, p.plan);
}

/* Launches the kernels the mode calls for: the prefill kernel on every
 * sequence, the decode kernel on every one-token sequence, or the plan. */
int problem_run(const attn_case &c, problem &p, const cuda_attn_plan &plan, cudaStream_t st)
{
    if (c.mode == MODE_PREFILL) return cuda_attn_prefill(&p.args, 0, plan.tile_rows, st);
    if (c.mode == MODE_DECODE) return cuda_attn_decode(&p.args, &plan, p.d_ws, st);
    return cuda_attn_run(&p.args, &plan, p.d_ws, st);
}

/* fp64 reference of token t (chunk index i of sequence s), head h. */
void reference(const attn_case &c, const problem &p, int s, int i, int h, double *out)
{
    const int hd = c.head_dim, g = h / (c.n_heads / c.n_kv_heads);
    const int t = p.query_start[s] + i;
    const int qlen = p.query_start[s + 1] - p.query_start[s];
    const int pos = p.seq_lens[s] - qlen + i;
    const int ld_q = (c.n_heads + 2 * c.n_kv_heads) * hd;
    std::vector<double> q(hd), sc(pos + 1);
    for (int d = 0; d < hd; d++)
        q[d] = get(p.q.data(), (size_t)t * ld_q + (size_t)h * hd + d, c.q);
    double mx = -INFINITY;
    for (int j = 0; j <= pos; j++) {
        const int blk = p.tables[(size_t)s * p.max_blocks + j / c.block_size];
        const size_t at = pool_index(c, p, p.layer, blk, 0, g, j % c.block_size);
        double dot = 0.0;
        for (int d = 0; d < hd; d++)
            dot += q[d] * p.poolf[at + d];
        sc[j] = dot / sqrt((double)hd);
        mx = std::max(mx, sc[j]);
    }
    double sum = 0.0;
    for (int d = 0; d < hd; d++)
        out[d] = 0.0;
    for (int j = 0; j <= pos; j++) {
        const double w = exp(sc[j] - mx);
        sum += w;
        const int blk = p.tables[(size_t)s * p.max_blocks + j / c.block_size];
        const size_t at = pool_index(c, p, p.layer, blk, 1, g, j % c.block_size);
        for (int d = 0; d < hd; d++)
            out[d] += w * p.poolf[at + d];
    }
    for (int d = 0; d < hd; d++)
        out[d] /= sum;
}

/* The same launches captured in a CUDA graph (as cuda_forward.c does) and
 * replayed into a re-poisoned output give the same bytes as the eager run
 * (the kernels are deterministic: no atomics). The graph's plan is a fixed
 * grid's, as the backend's graphs, narrowed to 3 CTAs per kv head so that
 * each walks several items of the work list. */
bool graph_replay_matches(const attn_case &c, problem &p, const std::vector<unsigned char> &eager)
{
    cuda_attn_plan fixed = p.plan;
    fixed.grid_x = std::min(fixed.grid_x, 3);
    fixed.reduce = 1;
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    CK(cudaMemsetAsync(p.d_out, 0xFF, eager.size(), st)); /* ordered before the replay on st */
    cudaGraph_t graph = nullptr;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    const int rc = problem_run(c, p, fixed, st);
    CK(cudaStreamEndCapture(st, &graph));
    if (rc != 0) {
        printf("     launch inside a graph capture: %s\n", cudaGetErrorString((cudaError_t)rc));
        cudaGraphDestroy(graph);
        cudaStreamDestroy(st);
        return false;
    }
    cudaGraphExec_t exec = nullptr;
    CK(cudaGraphInstantiate(&exec, graph, 0));
    CK(cudaGraphLaunch(exec, st));
    CK(cudaStreamSynchronize(st));
    std::vector<unsigned char> replay(eager.size());
    CK(cudaMemcpy(replay.data(), p.d_out, replay.size(), cudaMemcpyDeviceToHost));
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(st);
    return memcmp(replay.data(), eager.data(), eager.size()) == 0;
}

/* Runs one case; returns 0 when it passes. */
int check_case(const attn_case &c)
{
    problem p;
    problem_make(c, 2, true, p);
    problem_plan(c, p);
    CK(cudaMemset(p.d_out, 0xFF, p.out_elems * dtype_bytes(c.out))); /* NaN in every dtype */
    const int rc = problem_run(c, p, p.plan, 0);
    if (rc != 0) {
        printf("FAIL %-34s launch: %s\n", c.name, cudaGetErrorString((cudaError_t)rc));
        problem_free(p);
        return 1;
    }
    CK(cudaDeviceSynchronize());
    std::vector<unsigned char> out(p.out_elems * dtype_bytes(c.out));
    CK(cudaMemcpy(out.data(), p.d_out, out.size(), cudaMemcpyDeviceToHost));
    const int hd = c.head_dim, ld_out = c.n_heads * hd;
    double err2 = 0.0, ref2 = 0.0;
    long unwritten = 0;
    std::vector<double> ref(hd);
    for (int s = 0; s < p.n_seqs; s++)
        for (int i = 0; i < p.query_start[s + 1] - p.query_start[s]; i++)
            for (int h = 0; h < c.n_heads; h++) {
                reference(c, p, s, i, h, ref.data());
                const size_t base = (size_t)(p.query_start[s] + i) * ld_out + (size_t)h * hd;
                for (int d = 0; d < hd; d++) {
                    double v = get(out.data(), base + d, c.out);
                    if (c.split_out) v += get(out.data(), base + d + p.args.out_lo_off, c.out);
                    if (!isfinite(v)) {
                        unwritten++;
                        continue;
                    }
                    err2 += (v - ref[d]) * (v - ref[d]);
                    ref2 += ref[d] * ref[d];
                }
            }
    const double rel = sqrt(err2 / ref2);
    const double tol = c.kv == CV_DTYPE_BF16 || c.q == CV_DTYPE_BF16 ? 1e-2 : 2e-3;
    const bool graph_ok = graph_replay_matches(c, p, out);
    const bool ok = unwritten == 0 && rel < tol && graph_ok;
    printf("%s %-34s tokens %5d seqs %3d max ctx %5d part %4d  rel err %.3e (tol %.0e)%s%s\n",
           ok ? "ok  " : "FAIL", c.name, p.n_tokens, p.n_seqs, p.max_seq_len, p.plan.partition, rel,
           tol, unwritten ? "  NON-FINITE OUTPUTS" : "", graph_ok ? "" : "  GRAPH REPLAY DIFFERS");
    if (unwritten) printf("     %ld output elements not written or not finite\n", unwritten);
    problem_free(p);
    return ok ? 0 : 1;
}

std::vector<attn_case> correctness_cases()
{
    /* Fresh prompts, prefix hits, chunks starting mid-block, a one-token
     * chunk, a 4k context. */
    const std::vector<seq_shape> prefill = {{0, 100},   {37, 64}, {200, 1}, {1000, 129}, {0, 1},
                                            {3900, 40}, {15, 17}, {64, 64}, {5, 200}};
    std::vector<seq_shape> decode;
    for (int ctx : {1, 2, 15, 16, 17, 63, 64, 65, 127, 511, 512, 513, 1100, 2047, 4096})
        decode.push_back({ctx - 1, 1});
    std::vector<seq_shape> mixed = prefill;
    for (int ctx : {3, 700, 2500})
        mixed.push_back({ctx - 1, 1});
    const cv_dtype F32 = CV_DTYPE_F32, BF = CV_DTYPE_BF16, F16 = CV_DTYPE_F16;
    return {
        {"prefill hd128 G4 bf16 q32", 128, 8, 2, 16, BF, F32, BF, MODE_PREFILL, 0, false, prefill},
        {"prefill hd128 G8 f16 q32", 128, 8, 1, 16, F16, F32, F16, MODE_PREFILL, 0, false, prefill},
        {"prefill hd64 G1 bf16 bs8", 64, 4, 4, 8, BF, F32, BF, MODE_PREFILL, 0, false, prefill},
        {"prefill hd64 G8 bf16 qbf out32", 64, 16, 2, 32, BF, BF, F32, MODE_PREFILL, 0, false,
         prefill},
        {"prefill hd128 G1 f16 split", 128, 2, 2, 16, F16, F16, F16, MODE_PREFILL, 0, true,
         prefill},
        {"decode hd128 G4 bf16", 128, 8, 2, 16, BF, F32, BF, MODE_DECODE, 0, false, decode},
        {"decode hd128 G4 bf16 part64", 128, 8, 2, 16, BF, F32, BF, MODE_DECODE, 64, false, decode},
        {"decode hd128 G8 f16 part512", 128, 16, 2, 16, F16, F32, F16, MODE_DECODE, 512, false,
         decode},
        {"decode hd64 G1 bf16 bs32", 64, 4, 4, 32, BF, BF, BF, MODE_DECODE, 128, false, decode},
        {"decode hd64 G8 f16 bs8 split", 64, 8, 1, 8, F16, F32, F16, MODE_DECODE, 0, true, decode},
        /* Partitions starting inside a block (the table window's first
         * entry), and the longest partition over 1-token blocks. */
        {"decode hd128 G4 bf16 bs48 part64", 128, 8, 2, 48, BF, F32, BF, MODE_DECODE, 64, false,
         decode},
        {"decode hd64 G4 f16 bs1 part2048", 64, 8, 2, 1, F16, F32, F16, MODE_DECODE, 2048, false,
         decode},
        {"prefill hd128 G4 bf16 sharp", 128, 8, 2, 16, BF, BF, BF, MODE_PREFILL, 0, false, prefill,
         16.0f},
        {"prefill128 hd128 G4 bf16 q32", 128, 8, 2, 16, BF, F32, BF, MODE_PREFILL, 0, false,
         prefill, 2.0f, 128},
        {"prefill128 hd128 G8 f16 sharp", 128, 8, 1, 16, F16, F16, F16, MODE_PREFILL, 0, false,
         prefill, 16.0f, 128},
        {"prefill128 hd64 G1 bf16 bs8", 64, 4, 4, 8, BF, F32, BF, MODE_PREFILL, 0, false, prefill,
         2.0f, 128},
        {"prefill128 hd64 G8 f16 split", 64, 16, 2, 32, F16, F32, F16, MODE_PREFILL, 0, true,
         prefill, 2.0f, 128},
        {"decode hd128 G4 f16 sharp", 128, 8, 2, 16, F16, F16, F16, MODE_DECODE, 64, false, decode,
         16.0f},
        {"mixed hd128 G4 bf16", 128, 8, 2, 16, BF, F32, BF, MODE_MIXED, 0, false, mixed},
        {"mixed hd64 G8 f16 out32", 64, 8, 1, 16, F16, F16, F32, MODE_MIXED, 64, false, mixed},
        {"mixed hd64 G4 f16 qbf (q converted)", 64, 8, 2, 16, F16, BF, F16, MODE_MIXED, 0, false,
         mixed},
        {"mixed hd64 G4 bf16 bs12", 64, 8, 2, 12, BF, F32, BF, MODE_MIXED, 128, false, mixed},
        {"prefill hd16 G2 bf16", 16, 4, 2, 16, BF, F32, BF, MODE_PREFILL, 0, false, prefill},
        {"prefill128 hd32 G2 f16", 32, 4, 2, 16, F16, F32, F16, MODE_PREFILL, 0, false, prefill,
         2.0f, 128},
        {"decode hd32 G2 bf16 part64", 32, 4, 2, 16, BF, F32, BF, MODE_DECODE, 64, false, decode},
        {"decode hd16 G2 f16", 16, 4, 2, 16, F16, F32, F16, MODE_DECODE, 0, false, decode},
        {"mixed hd16 G2 bf16", 16, 4, 2, 16, BF, F32, BF, MODE_MIXED, 0, false, mixed},
        {"mixed hd32 G2 f16 split", 32, 4, 2, 16, F16, F32, F16, MODE_MIXED, 0, true, mixed},
        {"mixed128 hd128 G4 bf16", 128, 8, 2, 16, BF, F32, BF, MODE_MIXED, 0, false, mixed, 2.0f,
         128},
    };
}

/* Bad shapes are refused, not run. */
int check_refusals()
{
    cuda_attn_paged a;
    memset(&a, 0, sizeof a);
    a.n_seqs = 1;
    a.n_heads = 8;
    a.n_kv_heads = 2;
    a.head_dim = 96;
    a.block_size = 16;
    a.kv_dtype = CV_DTYPE_BF16;
    a.q_dtype = a.out_dtype = CV_DTYPE_F32;
    a.ld_q = a.ld_out = 768;
    int bad = 0;
    bad += cuda_attn_prefill(&a, 0, 64, 0) != (int)cudaErrorInvalidValue;
    a.head_dim = 128;
    bad += cuda_attn_prefill(&a, 0, 96, 0) != (int)cudaErrorInvalidValue;
    const int32_t work[CUDA_ATTN_WORK_HEAD + 3] = {64, 1, 1, 0, 1, 0};
    int32_t *d_work = nullptr;
    CK(cudaMalloc(&d_work, sizeof work));
    CK(cudaMemcpy(d_work, work, sizeof work, cudaMemcpyHostToDevice));
    cuda_attn_plan plan;
    memset(&plan, 0, sizeof plan);
    plan.has_decode = plan.n_items = plan.grid_x = 1;
    plan.max_seq_len = 100;
    plan.partition = 64;
    bad += cuda_attn_decode(&a, &plan, nullptr, 0) != (int)cudaErrorInvalidValue; /* no work */
    a.decode_work = d_work;
    a.kv_dtype = CV_DTYPE_F32;
    bad += cuda_attn_decode(&a, &plan, nullptr, 0) != (int)cudaErrorInvalidValue;
    a.kv_dtype = CV_DTYPE_BF16;
    plan.partition = 96;
    bad += cuda_attn_decode(&a, &plan, nullptr, 0) != (int)cudaErrorInvalidValue;
    plan.partition = 64;
    plan.reduce = 1;
    bad += cuda_attn_decode(&a, &plan, nullptr, 0) != (int)cudaErrorInvalidValue;
    cudaFree(d_work);
    printf("%s refusals of head_dim 96, tile_rows 96, no work array, F32 KV, partition 96, "
           "missing workspace\n",
           bad ? "FAIL" : "ok  ");
    return bad ? 1 : 0;
}

/* ---- timing ------------------------------------------------------------- */

float median(std::vector<float> v)
{
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

/* Median ms of launch(layer) over reps launches (after 3 warm-ups), each
 * on the next layer of an n_layers pool. */
template <typename F> float time_launches(int n_layers, int reps, F launch)
{
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::vector<float> ms;
    for (int r = -3; r < reps; r++) {
        CK(cudaEventRecord(e0));
        const int rc = launch((r + 3) % n_layers);
        CK(cudaEventRecord(e1));
        if (rc) {
            printf("launch failed: %s\n", cudaGetErrorString((cudaError_t)rc));
            exit(1);
        }
        CK(cudaEventSynchronize(e1));
        float t = 0.0f;
        CK(cudaEventElapsedTime(&t, e0, e1));
        if (r >= 0) ms.push_back(t);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return median(ms);
}

/* The scalar kernel the backend runs today (cuda_attention), on the same
 * batch, with the split count cuda_forward.c would choose: the baseline. */
float time_scalar(const attn_case &c, problem &p, int reps)
{
    int dev = 0, n_sms = 0;
    CK(cudaGetDevice(&dev));
    CK(cudaDeviceGetAttribute(&n_sms, cudaDevAttrMultiProcessorCount, dev));
    int splits = 1;
    const int work = p.n_tokens * c.n_kv_heads, want = 8 * n_sms;
    if (work < want) {
        const int by_len = (p.max_seq_len + 31) / 32, by_work = (want + work - 1) / work;
        while (splits < by_len && splits < 32)
            splits *= 2;
        splits = std::min(splits, by_work);
    }
    std::vector<int32_t> tok_seq(p.n_tokens);
    for (int s = 0; s < p.n_seqs; s++)
        for (int t = p.query_start[s]; t < p.query_start[s + 1]; t++)
            tok_seq[t] = s;
    int32_t *d_tok_seq = nullptr;
    float *partial = nullptr;
    CK(cudaMalloc(&d_tok_seq, tok_seq.size() * 4));
    CK(cudaMemcpy(d_tok_seq, tok_seq.data(), tok_seq.size() * 4, cudaMemcpyHostToDevice));
    if (splits > 1)
        CK(cudaMalloc(&partial, (size_t)p.n_tokens * c.n_heads * splits * (c.head_dim + 2) * 4));
    cuda_attn_args o;
    memset(&o, 0, sizeof o);
    o.n_tokens = p.n_tokens;
    o.n_heads = c.n_heads;
    o.n_kv_heads = c.n_kv_heads;
    o.head_dim = c.head_dim;
    o.block_size = c.block_size;
    o.max_blocks_per_seq = p.max_blocks;
    o.tok_seq = d_tok_seq;
    o.query_start = p.d_qs;
    o.seq_lens = p.d_lens;
    o.block_tables = p.d_tables;
    o.qkv = (const float *)p.d_q;
    o.ld_qkv = p.args.ld_q;
    o.kv = p.d_pool;
    o.kv_dtype = c.kv;
    o.block_elems = p.block_elems;
    o.scale = p.args.scale;
    o.out = p.d_out;
    o.out_dtype = c.out;
    o.n_splits = splits;
    o.partial = partial;
    const float ms = time_launches(p.n_layers, reps, [&](int layer) {
        o.layer_off = (size_t)layer * 2 * c.n_kv_heads * c.block_size * c.head_dim;
        return cuda_attention(&o, 0);
    });
    cudaFree(d_tok_seq);
    cudaFree(partial);
    return ms;
}

/* Device-to-device copy bandwidth (read + write bytes / s) of 1 GiB. */
double copy_gbs()
{
    const size_t n = (size_t)1 << 30;
    void *a = nullptr, *b = nullptr;
    CK(cudaMalloc(&a, n));
    CK(cudaMalloc(&b, n));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::vector<float> ms;
    for (int r = 0; r < 12; r++) {
        CK(cudaEventRecord(e0));
        CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice));
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float t = 0.0f;
        CK(cudaEventElapsedTime(&t, e0, e1));
        if (r >= 2) ms.push_back(t);
    }
    cudaFree(a);
    cudaFree(b);
    return 2.0 * n / (median(ms) * 1e-3) / 1e9;
}

void bench()
{
    const double copy = copy_gbs();
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("\n== timing on %s (%d SMs); copy bandwidth %.0f GB/s (read + write)\n", prop.name,
           prop.multiProcessorCount, copy);
    const cv_dtype F32 = CV_DTYPE_F32, BF = CV_DTYPE_BF16;
    const auto seqs = [](int n, int cached, int fresh) {
        return std::vector<seq_shape>(n, seq_shape{cached, fresh});
    };
    const auto mk = [&](const char *name, run_mode mode, int hd, int nh, int nkv, int tile_rows,
                        std::vector<seq_shape> v) {
        return attn_case{name, hd, nh, nkv, 16, BF, F32, BF, mode, 0, false, v, 2.0f, tile_rows};
    };
    std::vector<seq_shape> mixed = seqs(255, 1099, 1), mixed_g1 = seqs(254, 1099, 1);
    mixed.push_back({0, 512});
    mixed_g1.push_back({0, 1024});
    mixed_g1.push_back({0, 1024});
    const std::vector<attn_case> cases = {
        mk("prefill 1 x 4096 hd128 32/8 t64", MODE_PREFILL, 128, 32, 8, 64, seqs(1, 0, 4096)),
        mk("prefill 1 x 4096 hd128 32/8 t128", MODE_PREFILL, 128, 32, 8, 128, seqs(1, 0, 4096)),
        mk("prefill 8 x 1024 hd128 32/8 auto", MODE_PREFILL, 128, 32, 8, 0, seqs(8, 0, 1024)),
        mk("prefill 16 x 512 hd128 32/8 auto", MODE_PREFILL, 128, 32, 8, 0, seqs(16, 0, 512)),
        mk("chunk 4 x (3072+1024) hd128 auto", MODE_PREFILL, 128, 32, 8, 0, seqs(4, 3072, 1024)),
        mk("chunk 64 x (1024+64) hd128 auto", MODE_PREFILL, 128, 32, 8, 0, seqs(64, 1024, 64)),
        mk("prefill 4 x 2048 hd64 32/8 t64", MODE_PREFILL, 64, 32, 8, 64, seqs(4, 0, 2048)),
        mk("prefill 4 x 2048 hd64 32/8 t128", MODE_PREFILL, 64, 32, 8, 128, seqs(4, 0, 2048)),
        mk("decode 256 x 1100 hd128 32/8", MODE_DECODE, 128, 32, 8, 0, seqs(256, 1099, 1)),
        mk("decode 64 x 1100 hd128 32/8", MODE_DECODE, 128, 32, 8, 0, seqs(64, 1099, 1)),
        mk("decode 16 x 4096 hd128 32/8", MODE_DECODE, 128, 32, 8, 0, seqs(16, 4095, 1)),
        mk("decode 1 x 4096 hd128 32/8", MODE_DECODE, 128, 32, 8, 0, seqs(1, 4095, 1)),
        mk("decode 256 x 1100 hd64 32/32", MODE_DECODE, 64, 32, 32, 0, seqs(256, 1099, 1)),
        mk("mixed 255 x 1100 decode + 512 prompt", MODE_MIXED, 128, 32, 8, 0, mixed),
        mk("mixed 254 x 1100 decode + 2 x 1024", MODE_MIXED, 128, 32, 8, 0, mixed_g1),
    };
    for (const attn_case &c : cases) {
        double pairs = 0.0, kv_tokens = 0.0; /* (query, key) products, keys read */
        for (const seq_shape &q : c.seqs) {
            kv_tokens += q.cached + q.fresh;
            for (int i = 0; i < q.fresh; i++)
                pairs += q.cached + i + 1;
        }
        /* Enough layers that the pool is > 2x a 50 MB L2 and repeats rotate. */
        const double layer_bytes = kv_tokens * c.n_kv_heads * c.head_dim * 2 * 2;
        const int n_layers = std::min(8, std::max(2, (int)ceil(200e6 / layer_bytes)));
        problem p;
        problem_make(c, n_layers, false, p);
        problem_plan(c, p);
        const auto time_plan = [&](const cuda_attn_plan &plan) {
            return time_launches(p.n_layers, 30, [&](int layer) {
                p.args.layer_off = (size_t)layer * 2 * c.n_kv_heads * c.block_size * c.head_dim;
                return problem_run(c, p, plan, 0);
            });
        };
        const float ms = time_plan(p.plan);
        /* The plan of the same step in a graph (the backend's fixed grid). */
        cuda_attn_plan fixed;
        cuda_attn_plan_make(&fixed, p.query_start.data(), p.seq_lens.data(), p.n_seqs, c.n_heads,
                            c.n_kv_heads, c.head_dim, prop.multiProcessorCount, c.partition, 1);
        float graph_ms = 0.0f;
        if (c.mode == MODE_DECODE) {
            problem_work(c, p, fixed);
            graph_ms = time_plan(fixed);
        }
        /* The scalar kernel is slow on long prefills: fewer repeats. */
        const float old_ms = time_scalar(c, p, c.mode == MODE_PREFILL ? 5 : 30);
        const double flops = 4.0 * pairs * c.head_dim * c.n_heads;
        const double bytes = layer_bytes + (double)p.n_tokens * c.n_heads * c.head_dim * 6;
        if (c.mode == MODE_PREFILL)
            printf("%-38s %8.3f ms %6.1f TFLOP/s (tile %d)  scalar %8.3f ms (%.1fx)\n", c.name, ms,
                   flops / (ms * 1e-3) / 1e12, p.plan.tile_rows, old_ms, old_ms / ms);
        else
            printf("%-38s %8.3f ms %6.0f GB/s = %.0f%% of copy (partition %d)  scalar %8.3f ms "
                   "(%.1fx)%s",
                   c.name, ms, bytes / (ms * 1e-3) / 1e9, 100.0 * bytes / (ms * 1e-3) / 1e9 / copy,
                   p.plan.partition, old_ms, old_ms / ms, graph_ms > 0.0f ? "" : "\n");
        if (graph_ms > 0.0f)
            printf("  graph plan (%d CTAs / kv head, partition %d) %8.3f ms (%.2fx eager)\n",
                   fixed.grid_x, fixed.partition, graph_ms, graph_ms / ms);
        problem_free(p);
    }
}

} /* namespace */

/* test_gpu_attention [--bench] [SUBSTRING]: SUBSTRING picks the
 * correctness cases whose names contain it (e.g. for compute-sanitizer). */
int main(int argc, char **argv)
{
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("test_gpu_attention: no CUDA device; skipped\n");
        return 77;
    }
    bool timing = false;
    const char *filter = nullptr;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--bench") == 0)
            timing = true;
        else
            filter = argv[i];
    }
    const int prep = cuda_attn_prepare();
    if (prep) printf("FAIL cuda_attn_prepare: %s\n", cudaGetErrorString((cudaError_t)prep));
    int fails = (prep != 0) + check_refusals();
    for (const attn_case &c : correctness_cases())
        if (!filter || strstr(c.name, filter)) fails += check_case(c);
    printf("%s: %d failing case(s)\n", fails ? "FAIL" : "PASS", fails);
    if (timing) bench();
    return fails ? 1 : 0;
}

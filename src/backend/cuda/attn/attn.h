/* Attention over the paged KV cache. On tensor cores (issue 10): a
 * FlashAttention-2-style kernel for prefill and chunked prefill
 * (flash_prefill.cu) and a FlashDecoding kernel for one new token per
 * sequence (paged_decode.cu); on CUDA cores, the scalar kernel of the fp32
 * pool and of the shapes the others do not take (paged_scalar.cu,
 * cuda_attention at the end of this header). All read the pool in the
 * layout of cuda_internal.h: block b, layer l, k (0) or v (1), kv head g,
 * token j at element
 *   b * block_elems + layer_off(l) + ((kv * n_kv_heads + g) * block_size + j) * head_dim
 * i.e. per layer [block][k|v][kv_head][token][head_dim]: one kv head's rows of
 * a block are contiguous, which is what 16-byte cp.async loads want, so the
 * KV write (qkv_post_kernel, kernels/rope_kv.cu) stays as it is.
 *
 * Why hand-written mma.sync and not CUTLASS/CuTe or flashinfer: neither is a
 * Debian package and the project copies no third-party source; m16n8k16
 * mma.sync with ldmatrix and cp.async reaches most of the FA2 throughput on
 * sm_80..sm_90 in a few hundred lines a reader can check.
 *
 * Supported: K/V in F16 or BF16 (the fp32 KV pool keeps the scalar
 * cuda_attention kernel), head_dim 16, 32, 64 or 128 (16 and 32 for the
 * small test models, so the fixture tests run these kernels too), any GQA group (the decode
 * kernel packs up to 16 query heads of a kv head into one m16 tile), any
 * block_size. Q may be F32 or 16-bit (the qkv buffer holds either, see
 * cuda_forward.c); it is rounded to the KV dtype for the products. Accumulation and the softmax are
 * fp32. Out is F32, F16 or BF16, with the split-activation lo rows when
 * out_lo_off != 0 (see store_act in kernels/kernel_util.cuh).
 *
 * Use from cuda_forward.c, for an F16 or BF16 pool when
 * cuda_attn_supported holds (the F32 pool keeps cuda_attention):
 *  - at create, after cudaSetDevice: cuda_attn_prepare();
 *  - per step, on the host batch: cuda_attn_plan_make(&plan,
 *    bt->query_start, bt->seq_lens, bt->n_seqs, n_heads, n_kv_heads,
 *    head_dim, b->n_sms, 0, graph); cuda_attn_work_fill into the step's
 *    upload; grow b->partial to plan.ws_floats floats; a graph entry is
 *    keyed on the plan's grid fields (decode: grid_x and reduce only);
 *  - per layer: cuda_attn_run on a cuda_attn_paged with q = b->qkv (its
 *    dtype, ld_q = qkv_dim), the device query_start / seq_lens / tables /
 *    work, kv = b->kv, layer_off, out = b->attn (wdtype, ld_out = n_heads *
 *    head_dim, out_lo_off = the split rows' offset or 0), workspace
 *    b->partial.
 *
 * Every launcher enqueues on STREAM and returns a cudaError_t as int, 0 on
 * success, cudaErrorInvalidValue for a shape or dtype it does not support
 * (check cuda_attn_supported first). All pointers are device memory the
 * caller owns. Grids depend only on the host ints of the arguments and the
 * plan, so the launches can be captured in CUDA graphs keyed on them. */
#ifndef CV_BACKEND_CUDA_ATTN_H
#define CV_BACKEND_CUDA_ATTN_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One step's attention problem. Sequence s owns query tokens
 * [query_start[s], query_start[s+1]); after this step it has seq_lens[s]
 * tokens of context, so its query token i (0-based in the chunk) sits at
 * position seq_lens[s] - qlen + i and attends keys 0 .. that position: the
 * prefix-cache hits and earlier chunks, then the chunk itself, causally. */
typedef struct cuda_attn_paged {
    int n_tokens, n_seqs;
    int n_heads, n_kv_heads, head_dim, block_size, max_blocks_per_seq;
    const int32_t *query_start;  /* (n_seqs + 1) device */
    const int32_t *seq_lens;     /* (n_seqs) device */
    const int32_t *block_tables; /* (n_seqs, max_blocks_per_seq) device */
    const int32_t *decode_work;  /* the decode work array (below), device; decode only */
    const void *q;               /* token t, head h at q + t * ld_q + h * head_dim */
    cv_dtype q_dtype;            /* F32, F16 or BF16 */
    int ld_q;                    /* elements, a multiple of 8 */
    const void *kv;              /* the pool */
    cv_dtype kv_dtype;           /* F16 or BF16 */
    size_t block_elems;          /* elements per block (all layers) */
    size_t layer_off;            /* element offset of this layer's K in a block */
    float scale;                 /* softmax scale, 1 / sqrt(head_dim) */
    void *out;                   /* token t, head h at out + t * ld_out + h * head_dim */
    cv_dtype out_dtype;          /* F32, F16 or BF16 */
    int ld_out;                  /* elements, usually n_heads * head_dim */
    size_t out_lo_off;           /* split activations: offset of the lo rows, else 0 */
} cuda_attn_paged;

/* Sets up every kernel on the current device (their dynamic shared-memory
 * limits). Call once per device before capturing a CUDA graph that
 * launches them: the launchers otherwise do it on their first call, and
 * that call may not be allowed inside a capture. */
int cuda_attn_prepare(void);

/* 1 when the kernels handle this shape and these dtypes, else 0. */
int cuda_attn_supported(int n_heads, int n_kv_heads, int head_dim, cv_dtype kv_dtype,
                        cv_dtype q_dtype, cv_dtype out_dtype);

/* Prefill / chunked prefill: every query token of every sequence. With
 * skip_single != 0, sequences of exactly one query token are left alone
 * (a mixed step runs them through cuda_attn_decode instead). One CTA per
 * (query tile of tile_rows rows of a sequence, query head); tile_rows 64,
 * or 128 (two m16 row tiles per warp: half the K/V shared-memory reads per
 * mma, for chunks that fill them; at head_dim 128 with 32-key tiles to stay
 * within the registers). cuda_attn_plan_make picks it. */
int cuda_attn_prefill(const cuda_attn_paged *a, int skip_single, int tile_rows,
                      cudaStream_t stream);

/* ---- decode: FlashDecoding over a work list ----
 *
 * A decode step's work is a list of items, (sequence, partition of
 * `partition` keys), built on the host by cuda_attn_work_fill and read by
 * the kernels from device memory (cuda_attn_paged.decode_work), as vLLM's
 * attention metadata: the grid depends only on the batch size, so a CUDA
 * graph captured for a batch size replays any step of that size whatever
 * its contexts (graphs are captured at start, not per context length).
 * The work array, int32:
 *   [0] partition (a multiple of 64, at most 2048)  [1] n_items
 *   [2] block-table row stride (entries)
 *   [3 .. 3 + n_seqs]  item_start: sequence s owns items
 *                      item_start[s] .. item_start[s + 1] - 1
 *   [4 + n_seqs ..]    items, s << 16 | partition index, in order. */
enum { CUDA_ATTN_WORK_HEAD = 3 };

/* Longest decode partition: one CTA then streams up to 2048 keys (32
 * tiles), so its prologue (table window, first tiles in flight) and its
 * merge are a few percent of its time. */
enum { CUDA_ATTN_MAX_PARTITION = 2048 };

/* What one step's attention launches, from the host copies of the batch
 * arrays (attn_plan.c). */
typedef struct cuda_attn_plan {
    int has_prefill;  /* some sequence has more than one query token */
    int has_decode;   /* some sequence has exactly one */
    int tile_rows;    /* prefill rows per CTA, 64 or 128 (callers may override) */
    int max_seq_len;  /* longest context among the decode sequences */
    int partition;    /* decode keys per item */
    int n_items;      /* decode items */
    int grid_x;       /* decode CTAs per kv head; CTA x takes items x, x + grid_x, ... */
    int reduce;       /* the merge kernel runs: a sequence has several items, or fixed_grid */
    size_t ws_floats; /* decode workspace: n_items * n_heads * (head_dim + 2) when reduce */
} cuda_attn_plan;

/* Fills plan for a batch of n_seqs sequences (query_start (n_seqs + 1),
 * seq_lens (n_seqs), host memory). The partition starts at 2048 keys and
 * is halved (down to 64) until the items give ~4 CTAs per SM of a GPU of
 * n_sms SMs; partition > 0 forces it. fixed_grid != 0 (a step a CUDA graph
 * runs): grid_x and reduce depend on nothing but n_sms and n_kv_heads. */
void cuda_attn_plan_make(cuda_attn_plan *plan, const int32_t *query_start, const int32_t *seq_lens,
                         int n_seqs, int n_heads, int n_kv_heads, int head_dim, int n_sms,
                         int partition, int fixed_grid);

/* Most decode items cuda_attn_plan_make gives a step of up to max_seqs
 * sequences whose contexts sum to at most total_tokens, eager or for a
 * graph (what a buffer sized once for every step must hold). */
int cuda_attn_max_items(int max_seqs, long total_tokens, int n_kv_heads, int n_sms);

/* Ints of the work array of n_seqs sequences and n_items items. */
size_t cuda_attn_work_ints(int n_seqs, int n_items);

/* Writes the plan's work array (cuda_attn_work_ints(n_seqs, plan->n_items)
 * ints) for block tables of table_stride entries a row. */
void cuda_attn_work_fill(const cuda_attn_plan *plan, const int32_t *query_start,
                         const int32_t *seq_lens, int n_seqs, int table_stride, int32_t *work);

/* Decode: for every sequence with exactly one query token, that token
 * attends keys 0 .. seq_lens[s] - 1. grid_x x n_kv_heads CTAs walk the
 * items of a->decode_work; an item reads its kv head's keys once for all
 * the group's query heads. A sequence of one item gets its output
 * directly; with several, each writes (output, max, sum) to WORKSPACE
 * (plan->ws_floats floats) and a second kernel merges them (when
 * plan->reduce). */
int cuda_attn_decode(const cuda_attn_paged *a, const cuda_attn_plan *plan, float *workspace,
                     cudaStream_t stream);

/* Enqueues the plan: the prefill kernel for the multi-token sequences
 * (skipping the single-token ones when there are any), the decode kernel
 * for the single-token ones. workspace holds plan->ws_floats floats. */
int cuda_attn_run(const cuda_attn_paged *a, const cuda_attn_plan *plan, float *workspace,
                  cudaStream_t stream);

/* ---- the scalar kernel (paged_scalar.cu) ---- */

/* Limits of the scalar attention kernel (and of cuda_qkv_post's head_dim,
 * kernels/rope_kv.h), checked at create. */
enum { CUDA_MAX_GROUP = 8, CUDA_MAX_HEAD_DIM = 256 };

/* Paged causal attention of every token over its sequence's cached context
 * (GQA, online softmax). With n_splits > 1 each token's context is cut into
 * n_splits ranges computed by separate blocks into partial (unnormalized
 * output, max, sum) and merged by a second kernel (flash-decoding). */
typedef struct cuda_attn_args {
    int n_tokens, n_heads, n_kv_heads, head_dim, block_size, max_blocks_per_seq;
    const int32_t *tok_seq;      /* (n_tokens) sequence of each token */
    const int32_t *query_start;  /* (n_seqs + 1) */
    const int32_t *seq_lens;     /* (n_seqs) */
    const int32_t *block_tables; /* (n_seqs, max_blocks_per_seq) */
    const float *qkv;            /* q at column 0, row stride ld_qkv */
    int ld_qkv;
    const void *kv;
    cv_dtype kv_dtype;
    size_t block_elems, layer_off;
    float scale; /* 1 / sqrt(head_dim) */
    void *out;   /* (n_tokens, n_heads * head_dim) in out_dtype */
    cv_dtype out_dtype;
    size_t out_lo_off; /* split activations: offset of the lo rows, else 0 */
    int n_splits;
    float *partial; /* (n_tokens, n_heads, n_splits, head_dim + 2) when n_splits > 1 */
} cuda_attn_args;
int cuda_attention(const cuda_attn_args *a, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif

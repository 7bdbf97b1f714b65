/* Internals of the CUDA backend: the kernel launchers (cuda_kernels.cu,
 * callable from C) and the KV layout they share with cuda_backend.c.
 *
 * KV pool layout (as the CPU backend's): block b, layer l, k (0) or v (1),
 * kv head g, token j of the block starts at element
 *   b * block_elems + ((l * 2 + kv) * n_kv_heads + g) * block_size * head_dim
 *   + j * head_dim,
 * so one kv head's keys of a block are contiguous rows of head_dim.
 *
 * Every launcher enqueues on STREAM and returns the cudaError_t of the launch
 * (cudaGetLastError) as an int, 0 on success. */
#ifndef CV_BACKEND_CUDA_INTERNAL_H
#define CV_BACKEND_CUDA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "backend/cuda/cuda_backend.h"
#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Limits of the attention kernel, checked at create. */
enum { CUDA_MAX_GROUP = 8, CUDA_MAX_HEAD_DIM = 256 };

/* x (n_tok, hidden) fp32 = embed[ids[t]] widened. */
int cuda_embed(cv_dtype dtype, const void *embed /* (vocab, hidden) */, const int32_t *ids,
               int n_tok, int hidden, float *x, cudaStream_t stream);

/* Activations that feed a GEMM are written in the weight dtype. With a
 * nonzero lo_off (split activations, 16-bit dtypes) each value v is written
 * as hi = round(v) at its place and lo = round(v - hi) lo_off elements
 * further, i.e. as a second block of rows below the first. */

/* out row r (dtype out_dtype, row stride ld_out elements) = RMSNorm of x row
 * rows[r] (or r when rows is NULL) with weight w: w * (x * rsqrt(mean(x^2) +
 * eps)), fp32 inside. */
int cuda_rmsnorm(const float *x /* (*, n) */, const int32_t *rows, int n_rows, const float *w,
                 int n, float eps, cv_dtype out_dtype, void *out, int ld_out, size_t lo_off,
                 cudaStream_t stream);

/* Per token: biases, per-head RMSNorm (Qwen3), RoPE on q and k (q in place
 * in qkv, rounded to its type), and k, v written into the KV pool at the
 * token's slot. fp32 arithmetic whatever qkv's type. */
typedef struct cuda_qkv_args {
    int n_tokens, n_heads, n_kv_heads, head_dim, block_size;
    void *qkv; /* (n_tokens, (n_heads + 2 * n_kv_heads) * head_dim): q | k | v, in qkv_dtype */
    cv_dtype qkv_dtype;           /* F32, or the 16-bit type of vLLM's numerics */
    const float *bq, *bk, *bv;    /* optional biases, NULL when absent */
    const float *q_norm, *k_norm; /* (head_dim) optional */
    float eps;
    const float *inv_freq;       /* (head_dim / 2) */
    const int32_t *positions;    /* (n_tokens) */
    const int64_t *slot_mapping; /* (n_tokens) */
    void *kv;                    /* the pool */
    cv_dtype kv_dtype;
    size_t block_elems; /* elements per block (all layers) */
    size_t layer_off;   /* element offset of this layer's K in a block */
} cuda_qkv_args;
int cuda_qkv_post(const cuda_qkv_args *a, cudaStream_t stream);

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

/* out (n_tok, f) in out_dtype = act(gu[:, :f]) * gu[:, f:] for gu (n_tok, 2f)
 * in gu_dtype (fp32, or the 16-bit GEMM output of vLLM's numerics), fp32
 * inside. */
int cuda_gated_act(cv_activation act, cv_dtype gu_dtype, const void *gu, int n_tok, int f,
                   cv_dtype out_dtype, void *out, size_t lo_off, cudaStream_t stream);

/* Greedy choice of a row of logits (kernels/greedy.cu). */
typedef struct cuda_greedy_out {
    int32_t token; /* first index of the row's maximum */
    float logprob; /* its log-softmax value */
    int32_t rank;  /* tokens at least as likely, itself included */
} cuda_greedy_out;

/* out[r] = the greedy choice of row r of logits (n_rows, vocab). */
int cuda_greedy(const float *logits, int n_rows, int vocab, cuda_greedy_out *out,
                cudaStream_t stream);

/* y (n) = y2[:n] + y2[n:] (+ y when accumulate): the result of a GEMM over
 * split activations. */
int cuda_sum_halves(const float *y2 /* (2 n) */, size_t n, float *y, int accumulate,
                    cudaStream_t stream);

/* ---- OPT / GPT-2 structure (kernels/norm_act.cu) ---- */

/* out row r (out_dtype, row stride ld_out; fp32 out may be x itself, in
 * place) = LayerNorm of x row rows[r] (or r when rows is NULL):
 * (x - mean) / sqrt(var + eps) * w + bias (bias NULL: 0). With w NULL the
 * row as it is (the input of a post-norm sublayer, a model without final
 * norm). lo_off as above. */
int cuda_layernorm(const float *x /* (*, n) */, const int32_t *rows, int n_rows, const float *w,
                   const float *bias, int n, float eps, cv_dtype out_dtype, void *out, int ld_out,
                   size_t lo_off, cudaStream_t stream);

/* y (n_rows, n) += bias (n) on every row. */
int cuda_add_bias(float *y, const float *bias, int n_rows, int n, cudaStream_t stream);

/* out (n_rows, n) in out_dtype = act(in + bias) (bias NULL: 0): the
 * non-gated MLP's first half. */
int cuda_bias_act(cv_activation act, const float *in, const float *bias, int n_rows, int n,
                  cv_dtype out_dtype, void *out, size_t lo_off, cudaStream_t stream);

/* x (n_tok, hidden) += pos_embed[positions[t] + offset] (learned positions;
 * pos_embed fp32). */
int cuda_add_positions(float *x, const float *pos_embed, const int32_t *positions, int offset,
                       int n_tok, int hidden, cudaStream_t stream);

/* out (n_tok, width) in out_dtype = embed[ids[t]] (embed_dtype): embedding
 * rows as a GEMM operand (OPT's project_in). */
int cuda_gather_act(cv_dtype embed_dtype, const void *embed, const int32_t *ids, int n_tok,
                    int width, cv_dtype out_dtype, void *out, size_t lo_off, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

/* ---- the backend object (cuda_backend.c, cuda_forward.c; C only) ---------- */
#ifndef __CUDACC__
#include <stdbool.h>

#include <cublas_v2.h>

#include "backend/cuda/attn/attn.h"
#include "backend/cuda/lora/cuda_lora.h"
#include "base/error.h"

/* How a step's attention runs: the tensor-core kernels (attn/) with their
 * plan for 16-bit KV pools they support, else the fp32 kernel with its
 * split count. All of it is part of a captured graph's key. */
typedef struct step_attn {
    bool tensor_cores;
    cuda_attn_plan plan; /* tensor_cores */
    int n_splits;        /* !tensor_cores */
} step_attn;

typedef struct cuda_layer {
    void *wqkv;             /* (n_heads * hd + 2 * n_kv_heads * hd, hidden): wq | wk | wv rows */
    void *wo;               /* (hidden, n_heads * hd) */
    void *wgu;              /* (2 * intermediate, hidden): w_gate | w_up rows */
    void *wdown;            /* (hidden, intermediate) */
    float *attn_norm;       /* (hidden) */
    float *ffn_norm;        /* (hidden) */
    float *bq, *bk, *bv;    /* optional biases */
    float *q_norm, *k_norm; /* (head_dim) optional */
    /* OPT / GPT-2 only (NULL otherwise): LayerNorm biases, the output and
     * MLP biases. With plain_mlp, wgu holds w_up alone (intermediate rows). */
    float *attn_norm_b, *ffn_norm_b, *bo, *b_up, *b_down;
} cuda_layer;

/* One captured step: replayable while the batch has this shape and the
 * buffers it reads have not moved. */
typedef struct cuda_graph_entry {
    int n_tokens, n_seqs, n_logits, max_blocks;
    step_attn attn; /* the step's attention launches */
    const void *act_mem, *stage_dev, *partial, *kv;
    cuda_lora_graph_key lora; /* zero in a step without adapters */
    cudaGraphExec_t exec;     /* NULL: slot empty */
} cuda_graph_entry;

/* Decode steps are padded to a ladder of batch sizes (1, 2, 4, then
 * multiples of 8 up to CUDA_GRAPH_MAX_TOKENS) and their block tables to a
 * power-of-two width, so that a few dozen graphs serve every step. */
enum { CUDA_GRAPH_SLOTS = 64, CUDA_GRAPH_MAX_TOKENS = 256 };

struct cv_cuda_backend {
    cv_model_config cfg;
    int device;
    int n_sms;
    cudaStream_t stream;
    cublasHandle_t blas;
    cv_dtype wdtype;      /* every matrix's dtype; also the GEMM activation dtype */
    bool split_act;       /* CV_CUDA_ACT_SPLIT on a 16-bit model */
    void *blas_workspace; /* fixed cuBLAS workspace (graph capture must not allocate) */
    cv_dtype embed_dtype;
    void *embed;        /* (vocab, embed_dim) (cv_config_embed_dim) */
    void *lm_head;      /* (vocab, embed_dim); == embed when tied and the same bytes */
    float *final_norm;  /* (hidden); NULL without a final norm (no_final_norm) */
    float *inv_freq;    /* (head_dim / 2) RoPE inverse frequencies, scaling applied */
    cuda_layer *layers; /* (n_layers) */
    int qkv_dim;        /* (n_heads + 2 * n_kv_heads) * head_dim */

    /* OPT / GPT-2 (NULL otherwise). With learned positions inv_freq holds
     * zeros: qkv_post's rotation is then the identity (cos 0 = 1, sin 0 = 0
     * exactly). */
    float *final_norm_b; /* (hidden) LayerNorm bias */
    float *pos_embed;    /* (max_position + pos_offset, hidden) learned positions */
    void *project_in;    /* (hidden, proj_dim) when proj_dim */
    void *project_out;   /* (proj_dim, hidden) when proj_dim */

    cv_dtype kv_dtype;
    void *kv; /* the pool, layout in cuda_internal.h */
    int n_blocks, block_size;
    size_t block_elems;

    /* A decode step padded for its graph (host arrays, grown on demand):
     * the padding sequences write their K/V into the pool's last block,
     * which the caller never sees (n_blocks excludes it). */
    int32_t *pad_ids, *pad_positions, *pad_query_start, *pad_seq_lens, *pad_tables, *pad_rows;
    int64_t *pad_slots;
    size_t pad_table_cap;

    /* Per-step batch arrays: pinned host staging and its device copy. */
    void *stage_host, *stage_dev;
    size_t stage_cap_bytes;

    /* Activations for cap_tokens tokens and cap_logits rows (one allocation). */
    int cap_tokens, cap_logits;
    void *act_mem;
    float *x;      /* (tokens, hidden) residual stream */
    void *xn;      /* (tokens, max(hidden, proj_dim)) normalized input of a
                    * sublayer (or the embedding rows project_in reads), wdtype */
    float *qkv;    /* (tokens, qkv_dim) */
    void *attn;    /* (tokens, n_heads * hd) attention output, wdtype */
    float *gu;     /* (tokens, 2 * intermediate) gate | up */
    void *mlp;     /* (tokens, intermediate) act(gate) * up, wdtype */
    void *xl;      /* (logits, max(hidden, proj_dim)) final-normed rows (then
                    * project_out's), wdtype */
    float *y2;     /* split activations: (2 rows, out) GEMM result before the halves are summed */
    float *logits; /* (logits, vocab) */
    float *xp;     /* (logits, proj_dim) project_out's result, when proj_dim */
    cuda_greedy_out *greedy_dev;  /* (logits) each row's greedy choice */
    cuda_greedy_out *greedy_host; /* (cap_logits) pinned: their download */
    struct cuda_sampler *sampler; /* device sampling's buffers (cuda_sample.c); NULL until used */
    float *partial;               /* split-attention partials */
    /* Fewest keys per attention split (32; tests lower it to exercise the
     * split path on tiny contexts). */
    int min_split_keys;
    size_t partial_cap_floats;

    /* CUDA graphs of small steps, replaced round-robin. */
    bool use_graphs;
    bool graphs_broken; /* a capture failed once: run eagerly from then on */
    cuda_graph_entry graphs[CUDA_GRAPH_SLOTS];
    int graph_next;

    /* LoRA (lora/cuda_lora.h): the slot pool, NULL until lora_init. A step
     * with an adapter (lora_step) runs the products as without one and
     * adds the deltas into their outputs (16-bit or fp32); only the GEMV
     * epilogues that consume a product (RoPE / KV store, act(gate) * up)
     * are split off into their own kernels. */
    struct cuda_lora *lora;
    bool lora_step;

    /* Profiling (cv_cuda_backend_profile). */
    bool prof;
    int n_events, max_events;
    cudaEvent_t *events;
    int *event_phase;
    double prof_ms[CV_CUDA_N_PHASES];
};

#define CU(call, what)                                                                             \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess)                                                                     \
            return cv_errorf(err, "cuda backend: %s: %s", what, cudaGetErrorString(e_));           \
    } while (0)

#define CB(call, what)                                                                             \
    do {                                                                                           \
        cublasStatus_t s_ = (call);                                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                           \
            return cv_errorf(err, "cuda backend: %s: %s", what, cublasGetStatusString(s_));        \
    } while (0)

/* Kernel launchers return a cudaError_t as int. */
#define KL(call, what) CU((cudaError_t)(call), what)

/* Device views of the batch arrays after the upload. */
typedef struct step_arrays {
    const int32_t *ids, *positions, *tok_seq, *query_start, *seq_lens, *tables, *logits_rows;
    const int64_t *slots;
} step_arrays;

/* Enqueues everything of a step between the batch upload and the logits
 * download (cuda_forward.c): what a graph captures. */
int cuda_enqueue_step(cv_cuda_backend *b, const cv_batch *bt, const step_arrays *d,
                      const step_attn *sa, cv_error *err);

/* ---- CUDA graphs of decode steps (cuda_graph.c) ---- */

/* Drops every captured graph (buffers moved or the mode changed). */
void cuda_graphs_clear(cv_cuda_backend *b);

/* Is bt a decode step (one token and one logits row per sequence, rows in
 * order) that a graph of the ladder can run, graphs being on? */
bool cuda_graph_step(const cv_cuda_backend *b, const cv_batch *bt);

/* bt padded to its ladder size with one-token sequences on the scratch
 * block, its block tables widened to a power of two: *pad is the step a
 * graph replays (arrays owned by b, valid until the next call). The real
 * sequences keep their places, so rows 0..n_logits-1 are theirs. */
int cuda_graph_pad_step(cv_cuda_backend *b, const cv_batch *bt, cv_batch *pad, cv_error *err);

/* Runs a padded step as a graph: replays the one captured for its shape,
 * plan and buffers, else captures it; a capture that fails turns graphs
 * off and the step runs eagerly. */
int cuda_graph_run(cv_cuda_backend *b, const cv_batch *bt, const step_arrays *d,
                   const step_attn *sa, cv_error *err);

/* Device sampling of a step's CV_ROW_SAMPLE rows (cuda_sample.c, over
 * kernels/sample.h). cuda_sample_enqueue queues on b->stream, after the
 * step's kernels, one upload of the rows' parameters and edit ids, the
 * sampler, and the download of its results; after the stream synchronized,
 * cuda_sample_collect writes them into rows' arrays. cuda_sample_free
 * releases the buffers (at destroy). */
int cuda_sample_enqueue(cv_cuda_backend *b, int n_logits, const cv_greedy_rows *rows,
                        cv_error *err);
void cuda_sample_collect(cv_cuda_backend *b, int n_logits, const cv_greedy_rows *rows);
void cuda_sample_free(cv_cuda_backend *b);

/* Runs one batch (cuda_forward.c); greedy as cv_cuda_backend_forward. */
int cuda_forward_run(cv_cuda_backend *b, const cv_batch *batch, float *logits,
                     const cv_greedy_rows *greedy, cv_error *err);
#endif

#endif

/* Internals of the CUDA backend: the backend object that cuda_backend.c,
 * cuda_forward.c, cuda_graph.c, cuda_sample.c and lora/ share, and the KV
 * layout they agree on with the kernels. The kernels' launchers are
 * declared by their families' headers: kernels/{embed,norm_act,rope_kv,
 * gemv,greedy,sample}.h and attn/attn.h.
 *
 * KV pool layout (as the CPU backend's): block b, layer l, k (0) or v (1),
 * kv head g, token j of the block starts at element
 *   b * block_elems + ((l * 2 + kv) * n_kv_heads + g) * block_size * head_dim
 *   + j * head_dim,
 * so one kv head's keys of a block are contiguous rows of head_dim. */
#ifndef CV_BACKEND_CUDA_INTERNAL_H
#define CV_BACKEND_CUDA_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "backend/cuda/attn/attn.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/kernels/greedy.h"
#include "backend/cuda/lora/cuda_lora.h"
#include "base/error.h"
#include "model/model.h"

/* How a step's attention runs: the tensor-core kernels (attn/) with their
 * plan for 16-bit KV pools they support, else the fp32 kernel with its
 * split count. What of it decides the launches' grids is part of a
 * captured graph's key. */
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
 * multiples of 8 up to CUDA_GRAPH_MAX_TOKENS). With the tensor-core
 * attention a graph serves every context length (its decode work list is
 * data, attn.h), so the ladder's 35 graphs are captured once at start;
 * the fp32 pool's scalar kernel bakes the split count and the table width
 * (padded to a power of two) into its graphs, captured on first use. */
enum { CUDA_GRAPH_SLOTS = 64, CUDA_GRAPH_MAX_TOKENS = 256 };

/* Longest context a step may have: the decode work list packs a
 * partition index (of >= 64 keys) in 16 bits. */
enum { CUDA_MAX_CONTEXT = 1 << 22 };

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

    /* Per-step batch arrays: pinned host staging and its device copy, laid
     * out by stage_layout (cuda_forward.c) with room for work_items_cap
     * decode work items. */
    void *stage_host, *stage_dev;
    size_t stage_cap_bytes;
    int work_items_cap;

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

    /* CUDA graphs of small steps, replaced round-robin. graph_max_seqs and
     * graph_max_len (cv_cuda_backend_set_graph_limits): the ladder that
     * kv_alloc captures, 0: none at start. */
    bool use_graphs;
    int graph_max_seqs, graph_max_len;
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

    /* A forward's span on the GPU (cv_cuda_backend_last_step_device_s):
     * events recorded before its upload and after its downloads. */
    cudaEvent_t span_ev[2];
    double last_span_s;

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
    const int32_t *work; /* the decode work array (attn.h) */
    const int64_t *slots;
} step_arrays;

/* Does the step's attention run on the tensor-core kernels (attn/), a
 * 16-bit pool of a shape they take? Else the scalar kernel. */
bool cuda_tensor_core_attention(const cv_cuda_backend *b);

/* Plans, uploads and enqueues a step (bt already padded when graph):
 * replays or captures its graph, or enqueues it eagerly. The logits and
 * greedy choices are then on the device. */
int cuda_forward_enqueue(cv_cuda_backend *b, const cv_batch *bt, bool graph, cv_error *err);

/* Grow the staging buffers to bytes / the attention workspace to floats
 * (no-ops when large enough; growing drops the captured graphs). */
int cuda_stage_reserve(cv_cuda_backend *b, size_t bytes, cv_error *err);
int cuda_partial_reserve(cv_cuda_backend *b, size_t floats, cv_error *err);

/* Staging bytes of a step of these counts and table width. */
size_t cuda_stage_bytes(const cv_cuda_backend *b, int n_tokens, int n_seqs, int n_logits,
                        int width);

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
 * block (its block tables widened to a power of two for the scalar
 * attention): *pad is the step a graph replays (arrays owned by b, valid
 * until the next call). The real sequences keep their places, so rows
 * 0..n_logits-1 are theirs. */
int cuda_graph_pad_step(cv_cuda_backend *b, const cv_batch *bt, cv_batch *pad, cv_error *err);

/* Runs a padded step as a graph: replays the one captured for its shape,
 * plan and buffers, else captures it; a capture that fails turns graphs
 * off and the step runs eagerly. */
int cuda_graph_run(cv_cuda_backend *b, const cv_batch *bt, const step_arrays *d,
                   const step_attn *sa, cv_error *err);

/* Captures the ladder's graphs up to b->graph_max_seqs sequences (kv_alloc
 * calls it): the staging buffers and the attention workspace sized first
 * for the largest step and context, so that no later step moves them. */
int cuda_graphs_capture_ladder(cv_cuda_backend *b, cv_error *err);

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

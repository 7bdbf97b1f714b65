/* LoRA on the CUDA backend: a slot pool on the GPU holding max_loras
 * adapters, and the per-step gather kernels that add each token's adapter
 * delta, scale * B (A x), to the output of a base projection (the
 * lora_init / lora_load operations and cv_batch.lora_slots of backend.h).
 *
 * Slot pool. lora_init reserves n_slots slots of rank R = max_rank; a slot
 * holds, for every layer, the adapter's A and B of the four products the
 * backend runs (cuda_backend.c fuses q|k|v into wqkv and gate|up into wgu):
 *   A_qkv (3R, hidden)   rows q | k | v, R each
 *   A_o   (R, n_heads * head_dim)
 *   A_gu  (2R, hidden)   rows gate | up
 *   A_down(R, intermediate)
 *   B_qkv (R, qkv_dim)   transposed (column c of the product is row c of B):
 *                        columns of q, then k, then v, as wqkv's rows
 *   B_o   (R, hidden), B_gu (R, 2 * intermediate) gate | up, B_down (R, hidden)
 * in the model's matrix dtype (fp32 for fp32 models, and when the exact
 * split-activation mode is on at lora_init), the scale
 * (lora_alpha / r, or / sqrt(r) with rsLoRA) folded into B. A rank below R
 * and targets the adapter lacks are zero rows: they add exactly 0.
 * lora_load copies a host adapter (lora/lora.h) into a slot, NULL empties
 * it; the host adapter is not kept.
 *
 * A step. cuda_lora_prepare groups the step's tokens by slot: tokens of
 * one slot (a prefill sequence's range, or the decode tokens of every
 * sequence with that adapter) form segments of at most CUDA_LORA_SEG_TOKENS
 * tokens, uploaded once. Two kernels run over the segments for each base
 * product:
 *   shrink: u (token, KR) fp32 = x A^T      (KR = 3R, R, 2R or R rows;
 *           partial sums over chunks of x's columns, summed by expand)
 *   expand: y (token, out) += u B            (the u part a column belongs to)
 * A step with an adapter (lora_step) runs the base products as a step
 * without one: into the same dtype (on a 16-bit model the weight's dtype
 * for gate|up, and for q|k|v where the tensor-core attention reads it,
 * wherever cuBLAS runs them; fp32 for the residual adds of o and down, for
 * GEMV outputs, for fp32 models and in the exact split mode) with the same
 * kernels (cuBLAS GEMM or GEMV). The expand adds the delta into that output
 * in place: a 16-bit y is widened, summed in fp32 and rounded once to
 * nearest even, as vLLM's Punica expand (add_inputs) adds into its 16-bit
 * base output; the delta costs one more rounding (2^-8 relative in bf16).
 * (u stays fp32, where vLLM's expand rounds it to the weight dtype for its
 * tensor-core dot.) Only where a step of GEMV size fuses an epilogue that
 * consumes the product (q|k|v's RoPE / KV store, gate|up's act(gate) * up)
 * does a LoRA step split it off: the GEMV stores fp32, the expand adds,
 * then cuda_qkv_post / cuda_gated_act run, so the delta lands before
 * anything reads the product.
 * The shrink needs only the product's input, so it runs beside the
 * product: cuda_lora_begin forks it onto a second stream (a parallel
 * branch of a captured graph), cuda_lora_apply joins it back before the
 * expand. A shrink is a small latency-bound launch (a few hundred blocks
 * with one 16-byte load round each) that otherwise sits between two
 * kernels on the critical path, 4 times a layer; beside the product it
 * hides behind a kernel that streams the layer's weights. It is safe: the
 * shrink reads only x, which the backend's stream writes again only after
 * the expand, and writes only u, which only the expand reads; the next
 * begin forks after this expand was enqueued, so u is never written while
 * read.
 * The segment list is padded with empty segments to a power of two and
 * lives at fixed device addresses, so a decode step with adapters replays
 * a CUDA graph keyed on cuda_lora_graph_key like any other.
 *
 * Thread safety: as the backend (one host thread). Ownership: the pool is
 * the backend's, freed by cuda_lora_free (called from destroy). */
#ifndef CV_BACKEND_CUDA_LORA_CUDA_LORA_H
#define CV_BACKEND_CUDA_LORA_CUDA_LORA_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "backend/cuda/cuda_backend.h"
#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Tokens of one segment: each kernel block reads its adapter's rows once
 * for this many tokens. The shrink cuts the input dimension into chunks of
 * CUDA_LORA_CHUNK, each with its partial u. */
enum { CUDA_LORA_SEG_TOKENS = 8, CUDA_LORA_MAX_RANK = 512, CUDA_LORA_CHUNK = 2048 };

/* The products a delta is added to. */
typedef enum {
    CUDA_LORA_QKV = 0, /* wqkv: input the attention norm's output */
    CUDA_LORA_O,       /* wo: input the attention output; y the residual */
    CUDA_LORA_GU,      /* wgu: input the MLP norm's output */
    CUDA_LORA_DOWN,    /* wdown: input act(gate) * up; y the residual */
    CUDA_LORA_N_MODULES
} cuda_lora_module;

/* Up to CUDA_LORA_SEG_TOKENS tokens sharing one slot. */
typedef struct cuda_lora_seg {
    int32_t slot;  /* pool slot */
    int32_t start; /* first entry in the token list */
    int32_t count; /* 1..CUDA_LORA_SEG_TOKENS entries */
} cuda_lora_seg;

/* One module's delta over a step's segments (both kernels). */
typedef struct cuda_lora_launch {
    cv_dtype dtype;   /* of x */
    cv_dtype w_dtype; /* of A and B */
    int n_segs;
    const cuda_lora_seg *segs; /* (n_segs) device */
    const int32_t *tok;        /* device: token (row of x, u, y) of each segment entry */
    const void *x;             /* (tokens, in) the product's input */
    size_t x_lo_off;           /* split activations: the lo rows' offset, else 0 */
    int in;
    const void *a;         /* slot 0's A (n_rows, in); slot s at a + s * slot_elems */
    const void *bt;        /* slot 0's B^T (R, ld_y), scale folded in */
    size_t slot_elems;     /* elements between two slots' matrices */
    int rank;              /* R */
    int n_parts;           /* 1, 2 (gate | up) or 3 (q | k | v): n_rows = n_parts * R */
    int part_end[3];       /* columns [part_end[p-1], part_end[p]) use u's part p */
    float *u;              /* (ceil(in / CUDA_LORA_CHUNK), tokens, ld_u) scratch: partials */
    int ld_u;              /* >= n_parts * R */
    size_t u_chunk_stride; /* elements between two chunks' partials (>= tokens * ld_u) */
    void *y;               /* (tokens, ld_y) the product's output, in place */
    cv_dtype y_dtype;      /* fp32, or a 16-bit dtype: the sum rounded once */
    int ld_y;              /* = part_end[n_parts - 1], the product's width */
} cuda_lora_launch;

/* Enqueue the shrink (reads x, a; writes u) and the expand (reads u, bt;
 * adds into y) on STREAM; the expand must run after the shrink. Each
 * returns a cudaError_t as int. */
int cuda_lora_shrink(const cuda_lora_launch *p, cudaStream_t stream);
int cuda_lora_expand(const cuda_lora_launch *p, cudaStream_t stream);

/* ---- The backend's side (cuda_lora.c) --------------------------------------- */

/* The lora_init / lora_load operations (backend.h). lora_init refuses a
 * model whose MLP is not gated (OPT, GPT-2: adapters target the Llama
 * family's projections), n_slots < 1, or max_rank outside
 * 1..CUDA_LORA_MAX_RANK; lora_load an adapter of higher rank or another
 * layer count than the pool's. */
int cv_cuda_backend_lora_init(cv_cuda_backend *b, int n_slots, int max_rank, cv_error *err);
int cv_cuda_backend_lora_load(cv_cuda_backend *b, int slot, const struct cv_lora_adapter *adapter,
                              cv_error *err);

/* Checks batch->lora_slots (each -1 or a loaded slot) and, when any token
 * has an adapter, uploads the step's segments and sets b->lora_step. */
int cuda_lora_prepare(cv_cuda_backend *b, const cv_batch *batch, cv_error *err);

/* The step's deltas of module m of layer l, in two calls around the base
 * product. cuda_lora_begin, after x's producer and before the product is
 * enqueued: x is the product's input (wdtype, n_tokens rows, then as many
 * lo rows with split activations); it forks the shrink onto the pool's
 * side stream. cuda_lora_apply, right after the product: joins the side
 * stream and adds the deltas into y, the product's output in y_dtype
 * (fp32, or wdtype where the forward keeps the product in 16 bits); an
 * apply without the matching begin is refused. Both do nothing in a step
 * without an adapter. */
int cuda_lora_begin(cv_cuda_backend *b, int l, cuda_lora_module m, const void *x, int n_tokens,
                    cv_error *err);
int cuda_lora_apply(cv_cuda_backend *b, int l, cuda_lora_module m, void *y, cv_dtype y_dtype,
                    cv_error *err);

/* What a CUDA graph of this step depends on besides the batch's shape: the
 * (padded) segment count, 0 in a step without adapters, and the device
 * buffers the kernels read. */
typedef struct cuda_lora_graph_key {
    int n_segs;
    const void *stage, *u;
} cuda_lora_graph_key;
cuda_lora_graph_key cuda_lora_graph_key_of(const cv_cuda_backend *b);

void cuda_lora_free(cv_cuda_backend *b);

#ifdef __cplusplus
}
#endif

#endif

/* The backend contract: forward(batch) -> logits over a paged KV cache.
 *
 * The engine flattens one scheduler step into a cv_batch the way vLLM does:
 * every sequence contributes a contiguous range of tokens (a prefill chunk or
 * one decode token), each token carries its position and the KV slot it
 * writes, and each sequence carries its block table. A backend only sees
 * batches; it knows nothing of requests or sampling.
 *
 * KV layout is the backend's business. The engine only asks how many bytes a
 * block costs, allocates a number of blocks once, and refers to blocks by
 * index (0 .. n_blocks-1). Slot s is token (s % block_size) of block
 * (s / block_size).
 *
 * Thread safety: one thread drives a backend at a time (the engine thread).
 * Ownership: the backend borrows the model; the model must outlive it. */
#ifndef CV_BACKEND_BACKEND_H
#define CV_BACKEND_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "model/model.h"

typedef struct cv_batch {
    int n_tokens;                /* tokens in this step, all sequences */
    const int32_t *token_ids;    /* (n_tokens) */
    const int32_t *positions;    /* (n_tokens) position of each token in its sequence */
    const int64_t *slot_mapping; /* (n_tokens) KV slot each token's K/V is written to */
    int n_seqs;
    const int32_t
        *query_start;        /* (n_seqs + 1) seq i owns tokens [query_start[i], query_start[i+1]) */
    const int32_t *seq_lens; /* (n_seqs) context length after this step (cached + new) */
    const int32_t *block_tables; /* (n_seqs, max_blocks_per_seq) block indices, row-major */
    int max_blocks_per_seq;
    int n_logits; /* rows of logits wanted */
    const int32_t
        *logits_indices; /* (n_logits) flat token indices (0..n_tokens-1) to return logits for */
    /* (n_seqs) the LoRA slot whose adapter applies to each sequence's
     * tokens, -1 for none; NULL: no adapter in this step. Slots are filled
     * beforehand with the lora_load operation. */
    const int32_t *lora_slots;
} cv_batch;

struct cv_lora_adapter; /* lora/lora.h */

/* What a backend that reduces rows itself returns for a logits row instead
 * of the row (cv_greedy_rows.want). */
enum {
    CV_ROW_LOGITS = 0, /* the row itself */
    CV_ROW_GREEDY = 1, /* its greedy choice: temperature 0, no penalty, mask or logprobs list */
    CV_ROW_SAMPLE = 2, /* the token cv_sample_row asks for, with logprobs */
};

/* The longest logprobs list a sampled row returns (the engine's
 * CV_MAX_LOGPROBS). */
enum { CV_SAMPLE_MAX_TOP = 20 };

/* A row the backend samples itself, with vLLM V1's semantics as the
 * engine's CPU sampler defines them (src/engine/sampler.h): the raw row's
 * logprobs; masked ids to -inf; repetition, frequency and presence
 * penalties; greedy below temperature 1e-5, else temperature, min_p, top_k,
 * top_p and a draw from the stream sampler_uniform(seed, draw). Pointers
 * are borrowed for the forward call. */
typedef struct cv_sample_row {
    float temperature, top_p, min_p;
    int32_t top_k; /* <= 0: off */
    float repetition_penalty, frequency_penalty, presence_penalty;
    uint64_t seed;         /* the sequence's random stream */
    uint64_t draw;         /* its counter: the output position */
    const int32_t *tokens; /* (n_tokens) prompt then output: what the penalties count */
    int n_prompt, n_tokens;
    const int32_t *masked; /* (n_masked) ids held at -inf (stop ids below min_tokens) */
    int n_masked;
    int n_top; /* logprobs list wanted, 0..CV_SAMPLE_MAX_TOP */
} cv_sample_row;

/* Rows of a step a backend may reduce itself: a GPU then sends 12 bytes
 * (greedy) or the token and its logprobs (sampled) per row instead of
 * vocab_size floats. A backend that reduces rows does both kinds. */
typedef struct cv_greedy_rows {
    const uint8_t *want; /* (n_logits) CV_ROW_*: GREEDY and SAMPLE rows are returned below and
                            their logits rows left unwritten */
    int32_t *token;      /* (n_logits) out: greedy: first index of the row's maximum */
    float *logprob;      /* (n_logits) out: its log-softmax value (of the raw row) */
    int32_t *rank;       /* (n_logits) out: tokens at least as likely, itself included */
    const cv_sample_row *sample; /* (n_logits) the SAMPLE rows' requests; NULL: none */
    int32_t *top_ids;    /* (n_logits, CV_SAMPLE_MAX_TOP) out: SAMPLE rows' min(n_top, vocab)
                            most likely raw ids, ties by lower id */
    float *top_logprobs; /* (n_logits, CV_SAMPLE_MAX_TOP) out: their raw logprobs */
} cv_greedy_rows;

typedef struct cv_backend cv_backend;

/* CPU backend: OpenMP threads (n_threads <= 0: OpenMP's default), SIMD
 * kernels picked at run time (AVX-512, AVX2, portable). It copies the
 * model's weight matrices once, into memory advised for huge pages (faster
 * to stream than 4 KiB file pages), so it holds about the weights' size in
 * RAM besides the model's mapping; it still reads the embedding from the
 * model. */
cv_backend *cv_backend_cpu_create(const cv_model *model, int n_threads, cv_error *err);

/* The same, with the weight matrices converted once to matrix_dtype while
 * they are copied (vLLM's dtype argument: e.g. F16 or BF16 weights from an
 * F32 checkpoint halve the bytes each decode step streams). Norms and
 * biases stay fp32; arithmetic stays fp32. */
cv_backend *cv_backend_cpu_create_as(const cv_model *model, int n_threads, cv_dtype matrix_dtype,
                                     cv_error *err);

/* Element type of the CPU backend's KV cache (vLLM's kv_cache_dtype); call
 * before cv_backend_kv_alloc. Default: F16 for F16 models, else F32 (fp32
 * KV keeps F32 and BF16 models within 1e-5 of HF's fp32 compute). F16 or
 * BF16 halves the bytes a decode step reads per cached token. */
int cv_backend_cpu_set_kv_dtype(cv_backend *backend, cv_dtype dtype, cv_error *err);

/* Bytes of KV memory one block of block_size tokens costs (all layers). */
size_t cv_backend_kv_block_bytes(const cv_backend *backend, int block_size);

/* Allocates the KV pool once: n_blocks blocks of block_size tokens. */
int cv_backend_kv_alloc(cv_backend *backend, int n_blocks, int block_size, cv_error *err);

/* Copies whole KV blocks src[i] -> dst[i] (copy-on-write for n > 1). */
int cv_backend_kv_copy(cv_backend *backend, const int32_t *src, const int32_t *dst, int n,
                       cv_error *err);

/* Runs the model over batch: writes K/V of every token into its slot, attends
 * over each sequence's context through its block table and writes
 * logits (n_logits, vocab_size) in fp32, row i for token logits_indices[i]. */
int cv_backend_forward(cv_backend *backend, const cv_batch *batch, float *logits, cv_error *err);

void cv_backend_destroy(cv_backend *backend);

/* The CPU backend's LoRA slots (the lora_init / lora_load operations
 * below): adapters are applied from host memory in place. */
int cv_backend_lora_init(cv_backend *backend, int n_slots, int max_rank, cv_error *err);
int cv_backend_lora_load(cv_backend *backend, int slot, const struct cv_lora_adapter *adapter,
                         cv_error *err);

/* ---- The function table every backend fills ---------------------------------
 * What the engine's device layer (backend/device) calls, so that it drives
 * any backend the same way and names none of them past create (as SQLite's
 * sqlite3_io_methods or ggml's backend interface). impl is the backend
 * object the table belongs to. */
typedef struct cv_backend_ops {
    /* Bytes of KV memory one block of block_size tokens costs (all layers). */
    size_t (*kv_block_bytes)(const void *impl, int block_size);
    /* Free and total bytes of the backend's own memory (a GPU's); NULL where
     * the KV budget is a setting (the CPU's). */
    int (*memory)(const void *impl, size_t *free_bytes, size_t *total_bytes, cv_error *err);
    int (*kv_alloc)(void *impl, int n_blocks, int block_size, cv_error *err);
    int (*kv_copy)(void *impl, const int32_t *src, const int32_t *dst, int n, cv_error *err);
    /* One step as cv_backend_forward. greedy: the rows the caller needs only
     * the greedy choice or a sampled token of; a backend that reduces rows
     * itself fills greedy and returns 1, one that does not ignores it and
     * returns 0 (every row in logits); -1 on error. */
    int (*forward)(void *impl, const cv_batch *batch, float *logits, const cv_greedy_rows *greedy,
                   cv_error *err);
    /* Seconds the device itself spent on the last forward, from its first
     * command to its last (a GPU's events): what the host added around it
     * is the caller's wall time less this. NULL where the forward's wall
     * time is all the device's (the CPU's). */
    double (*last_step_device_s)(const void *impl);
    void (*destroy)(void *impl);
    /* LoRA (lora/lora.h); both NULL in a backend that does not apply
     * adapters. lora_init reserves n_slots adapter slots (max_loras) of rank
     * up to max_rank, once, before any lora_load. lora_load puts adapter
     * into slot (NULL empties it) for the steps after; the adapter stays
     * the caller's and must outlive the slot's use: a backend may read it in
     * place (the CPU's) or copy it to its own memory (a GPU's slot pool). */
    int (*lora_init)(void *impl, int n_slots, int max_rank, cv_error *err);
    int (*lora_load)(void *impl, int slot, const struct cv_lora_adapter *adapter, cv_error *err);
} cv_backend_ops;

/* The CPU backend's table (backend/cpu/cpu_ops.c): it returns every row. */
extern const cv_backend_ops cv_cpu_backend_ops;

#endif

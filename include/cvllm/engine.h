/* cvllm engine: continuous batching over a paged KV cache with vLLM's
 * sampling semantics. This is the public API the server, cvllm-generate and
 * the benchmarks use; nothing above it touches the scheduler or KV blocks.
 *
 * Threads: cv_engine_create starts one engine thread that schedules, runs the
 * backend, samples and emits outputs. Every function here is safe to call
 * from any thread. Outputs are delivered as cv_request_output deltas through
 * a cv_output_queue that the caller owns; its fd becomes readable when
 * outputs are pending, so an event loop can wait on it.
 *
 * Ownership: strings and arrays passed in are copied; every
 * cv_request_output popped from a queue belongs to the caller, who frees it
 * with cv_request_output_free. */
#ifndef CVLLM_ENGINE_H
#define CVLLM_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "base/error.h"

/* ---- Engine arguments (the model.json keys that apply) ------------------ */

typedef struct cv_engine_args {
    char model[4096];              /* HF model directory */
    char tokenizer[4096];          /* "" = same as model */
    char dtype[16];                /* weight dtype: "auto" (the checkpoint's), "float32",
                                      "float16", "bfloat16" ("float", "half"); matrices are
                                      converted once at load, arithmetic stays fp32 */
    int max_model_len;             /* 0 = the model's max_position_embeddings */
    int block_size;                /* tokens per KV block (16) */
    int max_num_seqs;              /* running sequences per step (256) */
    int max_num_batched_tokens;    /* token budget per step (0 = max(2048, max_model_len)) */
    bool enable_prefix_caching;    /* vLLM V1 default: true */
    uint64_t seed;                 /* engine-wide seed for unseeded requests (0) */
    char device[16];               /* "auto" (GPU 0 when a CUDA device is visible, else the
                                      CPU), "cpu", "cuda" (vLLM's device argument) */
    double gpu_memory_utilization; /* GPU: share of its memory for weights, activations
                                      and the KV cache (0.9) */
    size_t kv_cache_bytes;         /* KV pool budget (0 = 1 GiB on the CPU; on a GPU, what
                                      gpu_memory_utilization leaves) */
    int n_threads;                 /* CPU backend threads and sampling threads (0 = all cores) */
    int kv_blocks;                 /* > 0: exact KV pool size in blocks, overrides kv_cache_bytes */
    int max_queued_requests;       /* requests accepted and unfinished at once; beyond it
                                      cv_engine_add_request refuses with CV_ERR_UNAVAILABLE
                                      (0 = max(4096, 16 * max_num_seqs)) */
    char kv_cache_dtype[16];       /* vLLM's kv_cache_dtype: "auto" (the CPU backend's
                                      default; on a GPU the model's 16-bit dtype, as vLLM),
                                      "bfloat16", "float16", "float32" */
    bool fp32_activations;         /* GPU, 16-bit models: feed GEMMs fp32-exact activations
                                      (two 16-bit halves, twice the GEMM work) instead of
                                      vLLM's 16-bit ones; with kv_cache_dtype "float32" the
                                      logits stay within ~1e-5 of fp32 compute */
    bool enforce_eager;            /* vLLM's: no CUDA graphs */
    bool async_scheduling;         /* vLLM's: schedule step N+1 while step N runs (a worker
                                      thread runs the steps; default true) */
    /* LoRA (vLLM's enable_lora, max_loras, max_lora_rank, max_cpu_loras):
     * adapter lora_names[i] is read from the PEFT directory lora_paths[i]
     * on its first request. The arrays are read by cv_engine_create only
     * (copied there). max_loras: distinct adapters in one step (the
     * backend's slots); max_cpu_loras: adapters kept in host memory. */
    bool enable_lora;
    int max_loras;     /* 1 */
    int max_lora_rank; /* 16 */
    int max_cpu_loras; /* 0 = max_loras */
    int n_lora_modules;
    const char *const *lora_names; /* (n_lora_modules) */
    const char *const *lora_paths; /* (n_lora_modules) */
} cv_engine_args;

void cv_engine_args_default(cv_engine_args *args);

/* True when `device` is a device name the engine takes. */
static inline bool cv_engine_device_name_valid(const char *device)
{
    return !strcmp(device, "auto") || !strcmp(device, "cpu") || !strcmp(device, "cuda");
}

/* ---- Sampling parameters (vLLM SamplingParams) -------------------------- */

/* vLLM's structured_outputs kinds (src/structured compiles them). */
typedef enum {
    CV_STRUCTURED_NONE = 0,
    CV_STRUCTURED_CHOICE,      /* text: JSON list of strings */
    CV_STRUCTURED_REGEX,       /* text: the regex */
    CV_STRUCTURED_JSON_OBJECT, /* any JSON value; text "" */
    CV_STRUCTURED_JSON,        /* text: the JSON schema as JSON text */
    CV_STRUCTURED_GRAMMAR,     /* text: a GBNF grammar (without recursion) */
} cv_structured_kind;

typedef struct cv_sampling_params {
    int n;             /* 1 */
    int best_of;       /* 0 = n; > n: the n of highest cumulative logprob
                          are returned (not with stream) */
    float temperature; /* 1.0; 0 = greedy */
    float top_p;       /* 1.0 */
    int top_k;         /* 0 or -1 = off (vLLM: -1) */
    float min_p;       /* 0 */
    bool has_seed;
    uint64_t seed;            /* parallel sample k draws with seed + k (vLLM) */
    float presence_penalty;   /* 0 */
    float frequency_penalty;  /* 0 */
    float repetition_penalty; /* 1.0 */
    int max_tokens;           /* 16; -1 = up to max_model_len */
    int min_tokens;           /* 0 */
    char **stop;              /* n_stop strings (owned) */
    int n_stop;
    int32_t *stop_token_ids; /* owned */
    int n_stop_token_ids;
    bool include_stop_str_in_output;
    bool ignore_eos;
    int logprobs;                       /* -1 = none; k >= 0: chosen token + top k */
    int prompt_logprobs;                /* -1 = none */
    bool skip_special_tokens;           /* true */
    bool spaces_between_special_tokens; /* true; accepted, but tok_decode has no such
                                           switch: special tokens join as HF's default */
    char lora_name[256];                /* "" = none; else an adapter of the engine's
                                           lora_names, checked by cv_engine_add_request */
    cv_structured_kind structured_kind; /* structured_outputs (or guided_*): NONE = free text */
    char *structured_text;              /* owned; see cv_structured_kind (NULL when NONE) */
} cv_sampling_params;

/* vLLM's max_logprobs: the most top logprobs a request may ask for. */
enum { CV_MAX_LOGPROBS = 20 };

void cv_sampling_params_default(cv_sampling_params *p);
/* Applies the fields of a JSON object text (vLLM names; numbers and bools may
 * arrive as strings, e.g. "0.1", "true"). Unknown fields and wrong types are
 * errors naming the field. Does not validate ranges: see _validate. */
int cv_sampling_params_from_json(cv_sampling_params *p, const char *json, size_t len,
                                 cv_error *err);
/* vLLM's range checks, with vLLM-style messages naming the field. */
int cv_sampling_params_validate(const cv_sampling_params *p, cv_error *err);
int cv_sampling_params_copy(cv_sampling_params *dst, const cv_sampling_params *src);
void cv_sampling_params_free(cv_sampling_params *p);

/* ---- Outputs ------------------------------------------------------------ */

typedef enum {
    CV_FINISH_NONE = 0, /* still running */
    CV_FINISH_STOP,     /* EOS, stop string or stop token */
    CV_FINISH_LENGTH,   /* max_tokens or max_model_len */
    CV_FINISH_ABORT,    /* aborted or engine shut down */
} cv_finish_reason;

const char *cv_finish_reason_name(cv_finish_reason r); /* "None","stop","length","abort" */

typedef struct cv_top_logprob {
    int32_t token_id;
    float logprob;
    int rank;            /* tokens at least as likely, itself included (1 = top) */
    char *decoded_token; /* owned */
} cv_top_logprob;

typedef struct cv_token_logprobs {
    int n;                   /* the sampled token first, then the top k without repeating it */
    cv_top_logprob *entries; /* owned */
} cv_token_logprobs;

typedef struct cv_seq_output {
    int index;          /* 0..n-1 */
    int32_t *token_ids; /* new tokens in this delta (owned) */
    int n_tokens;
    char *text; /* new text in this delta, NUL-terminated (owned) */
    size_t text_len;
    cv_token_logprobs *logprobs; /* (n_tokens) or NULL when not asked (owned) */
    double cumulative_logprob;   /* over all tokens so far */
    cv_finish_reason finish_reason;
    int n_output_tokens_total; /* tokens generated so far */
} cv_seq_output;

typedef struct cv_request_output {
    uint64_t request_id; /* as returned by cv_engine_add_request */
    void *user_data;     /* as given in cv_request_desc */
    int n_prompt_tokens;
    int n_seqs;
    cv_seq_output *seqs;                /* (n_seqs) owned */
    cv_token_logprobs *prompt_logprobs; /* (n_prompt_tokens) first entry empty; NULL unless asked */
    bool finished;                      /* the last output of this request */
    char *error;                        /* non-NULL: the request failed with this message */
} cv_request_output;

void cv_request_output_free(cv_request_output *out);

typedef struct cv_output_queue cv_output_queue;

cv_output_queue *cv_output_queue_create(void);
void cv_output_queue_destroy(cv_output_queue *q); /* frees pending outputs */
/* An eventfd readable exactly while outputs are pending: the pop that empties
 * the queue drains it, so the caller need not read it. */
int cv_output_queue_fd(const cv_output_queue *q);
cv_request_output *cv_output_queue_pop(cv_output_queue *q);                  /* NULL when empty */
cv_request_output *cv_output_queue_wait(cv_output_queue *q, int timeout_ms); /* -1 = forever */

/* ---- Engine ------------------------------------------------------------- */

typedef struct cv_engine cv_engine;

cv_engine *cv_engine_create(const cv_engine_args *args, cv_error *err);
/* Finishes (drain=true) or aborts every in-flight request, delivering final
 * outputs, stops the thread and frees the engine. */
void cv_engine_shutdown(cv_engine *engine, bool drain);

typedef struct cv_request_desc {
    const char *prompt; /* UTF-8 text, or NULL when prompt_ids given */
    size_t prompt_len;
    const int32_t *prompt_ids; /* used when prompt == NULL */
    size_t n_prompt_ids;
    const cv_sampling_params *params;
    bool stream;           /* true: a delta each step that adds tokens or text (text
                              that could still become a stop string is held back);
                              false: one final output */
    cv_output_queue *sink; /* where outputs go; must outlive the request */
    void *user_data;       /* echoed in every output */
} cv_request_desc;

/* Tokenizes and queues a request. Returns its id (> 0), or 0 on error with
 * err set: class CV_ERR_INVALID for invalid params, a prompt longer than
 * max_model_len or bad UTF-8; CV_ERR_UNAVAILABLE when max_queued_requests
 * are already in flight or the engine is shutting down (back pressure:
 * retry later). */
uint64_t cv_engine_add_request(cv_engine *engine, const cv_request_desc *req, cv_error *err);
/* Aborts a request; its final output (finish_reason abort) still arrives and
 * its KV blocks are freed at the next step. Unknown ids are ignored. */
void cv_engine_abort(cv_engine *engine, uint64_t request_id);

/* ---- Metrics ------------------------------------------------------------ */

enum { CV_HIST_MAX_BUCKETS = 32 };

typedef struct cv_histogram {
    int n_bounds;
    double bounds[CV_HIST_MAX_BUCKETS];       /* upper bounds, ascending (+Inf implicit) */
    uint64_t counts[CV_HIST_MAX_BUCKETS + 1]; /* non-cumulative; last = above all bounds */
    double sum;
    uint64_t count;
} cv_histogram;

typedef struct cv_engine_stats {
    uint64_t prompt_tokens_total; /* prompt tokens of finished+running requests */
    uint64_t generation_tokens_total;
    uint64_t prompt_tokens_computed; /* prompt tokens actually run (prefix hits excluded) */
    uint64_t prefix_cache_queries;   /* prompt tokens looked up in the prefix cache */
    uint64_t prefix_cache_hits;      /* of which found */
    uint64_t preemptions_total;
    uint64_t requests_finished[4]; /* by cv_finish_reason */
    int n_running, n_waiting, n_swapped;
    int kv_blocks_total, kv_blocks_free;
    double kv_usage;        /* 0..1 */
    uint64_t steps_total;   /* engine steps that ran the model */
    uint64_t steps_ahead;   /* of which scheduled and submitted while the one before ran
                               (async_scheduling) */
    double forward_s_total; /* steps on the device: the backend's forward and the runner's
                               sampling after it */
    double device_s_total;  /* of it, the device's own span where the backend times it (a
                               GPU's events; 0 on the CPU): the rest is the host preparing,
                               launching and collecting steps while the device waits */
    double step_s_total;    /* the engine thread's work on steps: scheduling, the batch, taking
                               the tokens, detokenizing (with async_scheduling it overlaps
                               forward_s_total, else it adds to it) */
    cv_histogram time_to_first_token_s;
    cv_histogram time_per_output_token_s;
    cv_histogram e2e_request_latency_s;
    cv_histogram queue_time_s;
    cv_histogram request_prompt_tokens;
    cv_histogram request_generation_tokens;
    cv_histogram request_params_n;
    /* vllm:lora_requests_info: the adapters of running and of waiting
     * requests, comma-separated names ("" when none), and max_loras. */
    char running_lora_adapters[1024];
    char waiting_lora_adapters[1024];
    int max_lora;
} cv_engine_stats;

void cv_engine_get_stats(cv_engine *engine, cv_engine_stats *stats);

/* False once a step has failed (backend error or out of memory; every
 * request in flight then got an error output): what ENABLE_VLLM_HEALTH_CHECK
 * reports. New requests are still accepted and run. */
bool cv_engine_is_healthy(cv_engine *engine);

/* Blocks until no request is waiting or running (tests and benchmarks). */
void cv_engine_wait_idle(cv_engine *engine);

int cv_engine_vocab_size(const cv_engine *engine);
/* The LoRA adapters the engine serves (lora_names of its args), for
 * listings (OpenAI /v1/models); NULL past the last. */
const char *cv_engine_lora_name(const cv_engine *engine, int i);
int cv_engine_max_model_len(const cv_engine *engine);

/* The engine's tokenizer (src/tokenizer/tokenizer.h), owned by the engine
 * and valid until cv_engine_shutdown; safe to use from any thread. The
 * OpenAI frontend uses it for echo, /tokenize and chat templates. */
typedef struct cv_tokenizer cv_tokenizer;
const cv_tokenizer *cv_engine_tokenizer(const cv_engine *engine);

#endif

/* The engine's private state, shared by engine.c (API and thread),
 * engine_step.c (one scheduler step) and engine_output.c (deltas). */
#ifndef CV_ENGINE_ENGINE_STATE_H
#define CV_ENGINE_ENGINE_STATE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "block_manager.h"
#include "cvllm/engine.h"
#include "lora/lora.h"
#include "model/model.h"
#include "runner/runner.h"
#include "scheduler.h"
#include "sequence.h"
#include "structured/structured.h"
#include "tokenizer/tokenizer.h"

/* Output side of one sequence: text, logprobs, what was delivered. */
typedef struct seq_state {
    cv_seq *seq;       /* NULL for a child not forked yet */
    uint64_t rng_seed; /* the sampler's stream for this sequence */
    cv_tok_stream detok;
    char *text; /* (text_len) all output text so far, NUL-terminated */
    size_t text_len, text_cap;
    size_t text_sent;       /* bytes already delivered (streaming) */
    int tokens_sent;        /* output tokens already delivered */
    cv_token_logprobs *lps; /* (n_lps) one per output token when logprobs >= 0 */
    int n_lps, cap_lps;
    double cum_logprob;
    cv_finish_reason finish;
    so_state so; /* structured output: the constraint's state after the output so far */
} seq_state;

typedef struct request {
    uint64_t id;
    cv_sampling_params params;
    cv_output_queue *sink;
    void *user_data;
    bool stream;
    int32_t *prompt; /* (n_prompt) */
    int n_prompt;
    int max_tokens;  /* effective: params or what max_model_len leaves */
    int n_seqs;      /* best_of, else n */
    int n_return;    /* n */
    seq_state *seqs; /* (n_seqs) */
    bool forked;     /* children exist (or n_seqs == 1) */
    int n_finished;
    int32_t *stop_ids; /* (n_stop_ids) EOS ids (unless ignore_eos) and stop_token_ids */
    int n_stop_ids;
    int32_t *mask_ids; /* (n_mask_ids) EOS and stop_token_ids: masked below min_tokens */
    int n_mask_ids;
    int holdback_chars;            /* stop-string hold-back of the stream */
    so_grammar *grammar;           /* structured output constraint, NULL = none (a reference
                                      from the engine's so_cache; request_free releases it) */
    cv_token_logprobs *prompt_lps; /* (n_prompt) entry 0 empty; NULL unless asked */
    int prompt_lps_done;           /* prompt positions filled (1..n_prompt) */
    bool prompt_lps_sent;
    uint64_t t_arrival_ns, t_scheduled_ns, t_first_token_ns, t_last_token_ns;
    int lora_id;          /* LoRA adapter of the engine's registry, 0 = none */
    bool touched;         /* has something to deliver after this step */
    int n_in_steps;       /* entries of its sequences in submitted, unprocessed steps */
    bool retire_deferred; /* finished while n_in_steps > 0: retire when it drops to 0 */
    struct request *next; /* inbox or active list */
} request;

/* A scheduled sequence's part in a step, as it was when submitted. */
typedef struct step_entry {
    cv_seq *seq;
    int start, n_new;      /* tokens [start, start + n_new) */
    int first_row, n_rows; /* its logits rows */
    uint32_t epoch;        /* seq->epoch then: a preemption since voids the entry */
    bool prompt_rows;      /* a row per token, for prompt logprobs */
    bool samples;          /* the chunk ends the sequence's known tokens: its last row
                              samples the next */
} step_entry;

/* One step's arrays, from building the batch to handing out its tokens.
 * The engine has two, so that it builds step N+1 in one while step N runs
 * from the other (async_scheduling). */
typedef struct step_buf {
    cv_step step;
    step_entry *entries; /* (n_entries) */
    int n_entries;
    int32_t *tokens, *positions, *query_start, *seq_lens, *block_tables, *logits_idx;
    int64_t *slots;
    int32_t *lora_slots;          /* (n_entries) each entry's LoRA slot, -1 none */
    int32_t **fill_at, *fill_row; /* (2 n_entries) placeholders (runner.h) */
    int32_t *hist; /* (cap_hist) penalized SAMPLE rows' token lists, the pending token last */
    int cap_hist;
    /* (rows) what the step needs of each logits row (CV_ROW_*), the SAMPLE
     * rows' requests, and the tokens chosen (top_*: CV_MAX_LOGPROBS a row). */
    uint8_t *want;
    cv_sample_row *sample;
    int32_t *token, *rank, *top_ids;
    float *logprob, *top_lps;
    float *logits; /* (cap_logits_rows, vocab) */
    int cap_tokens, cap_seqs, cap_tables, cap_logits_rows;
    int *lora_drop; /* (n_lora_drop) adapters whose slot was reloaded while this step ran:
                       their host references go once it is handed out (a backend may
                       read an adapter in place) */
    int n_lora_drop, cap_lora_drop;
    int64_t prompt_computed;                     /* prompt tokens the step computes (metrics) */
    uint64_t t_start_ns, t_submit_ns, t_wait_ns; /* its engine step began; it was submitted;
                                                    the engine began waiting for it */
} step_buf;

struct cv_engine {
    cv_engine_args args;
    cv_model *model;
    cv_tokenizer *tok;
    cv_runner *runner;
    block_manager *bm;
    scheduler sched;
    int vocab, max_model_len, block_size, n_blocks;
    int32_t eos_ids[CV_MAX_EOS_IDS + 1];
    int n_eos;

    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;  /* guards the fields down to n_active */
    pthread_cond_t wake; /* the engine thread waits here for work */
    pthread_cond_t idle; /* cv_engine_wait_idle waits here */
    request *inbox_head, *inbox_tail;
    uint64_t *aborts; /* (n_aborts) request ids to abort */
    int n_aborts, cap_aborts;
    bool shutdown, drain;
    bool unhealthy;      /* a step failed */
    int64_t n_steps_run; /* fault injection (test builds) counts steps */
    cv_error step_err;   /* engine thread: why the last step failed ("" = out of memory) */
    int n_active;        /* requests accepted and not finished (inbox included) */
    int max_active;      /* bound on n_active (max_queued_requests) */
    uint64_t next_request_id;
    so_vocab *so_vocab;       /* structured outputs: made with the first constrained request */
    so_cache *so_cache;       /* compiled constraints by text; owns every request's grammar */
    so_prefetch *so_prefetch; /* masks computed during the forward; made on first need */
    cv_lora_registry *lora;   /* NULL unless enable_lora (locks itself: any thread) */

    /* Engine thread only. */
    request *active; /* admitted requests */
    uint64_t next_seq_id;
    step_buf steps[2];
    step_buf *building;       /* the one the next step is built in */
    step_buf *in_flight;      /* submitted, its outputs not handed out yet; NULL: none */
    bool in_flight_blocks;    /* a token of in_flight must be taken before the next step */
    cv_lora_slots lora_slots; /* which adapter each backend slot holds (each holds a
                                 registry reference) */
    int *lora_step_ids, *lora_slot_of, *lora_load; /* (max_loras) scratch of a step */
    int *lora_slot_held; /* (max_loras) adapter whose registry reference slot k holds */
    int *lora_holds;     /* (max_loras) adapters the step being built holds a reference on */
    int n_lora_holds;
    void **lora_fail_reqs; /* (cap_lora_fail) scratch: requests failed with their adapter */
    int cap_lora_fail;
    /* Where step time went since t0_ns (verbose log every 10 s, log_step). */
    struct {
        uint64_t t0_ns;
        int64_t steps, tokens;
        /* What the steps held: one-token rows (decodes), longer chunks
         * (prefill) and their tokens, steps with any chunk. */
        int64_t decode_rows, chunks, chunk_tokens, mixed_steps;
        double before_s, wait_s, after_s, outputs_s; /* engine thread; outputs_s: in after_s */
        double forward_s; /* the runner's forwards, host work around the device's included */
        double device_s;  /* of it, the device's own span (0 where not timed apart) */
    } step_log;
    struct sample_job *jobs; /* (n_jobs) sequences to sample this step */
    int n_jobs, cap_jobs;
    cv_runner_draw *draws; /* (n_jobs) the jobs the engine samples on the host */
    int cap_draws;

    pthread_mutex_t stats_mu;
    cv_engine_stats stats;
};

/* engine_step.c: one schedule + forward + sample + emit. With
 * async_scheduling the forward runs while the step before it hands out its
 * outputs, and the step's own outputs go out in the next call (or
 * engine_finish_in_flight). Returns -1 when the backend, the tokenizer or
 * memory failed, with e->step_err set (empty for out of memory); the
 * caller then fails every request in flight. */
int engine_step(cv_engine *e);
/* Waits for the step in flight, if any, and hands out its outputs: before
 * anything that frees requests or sequences outside a step (aborts,
 * shutdown, failing everything). */
int engine_finish_in_flight(cv_engine *e);
/* Frees the arrays of both step buffers. */
void engine_steps_free(cv_engine *e);
/* Copies running/waiting counts and KV usage into the stats. */
void engine_update_gauges(cv_engine *e);

/* engine_lora.c */
/* The registry and slots of the enable_lora arguments (nothing when off), the
 * backend's slot pool included: called before the KV pool is sized. */
int engine_lora_init(cv_engine *e, const cv_engine_args *a, cv_error *err);
void engine_lora_free(cv_engine *e);
/* A request's lora_name: *id 0 for "", else its adapter, read and checked;
 * vLLM's messages for LoRA off and for an unknown name. */
int engine_lora_resolve(cv_engine *e, const char *name, int *id, cv_error *err);
/* Before the batch is built: a host reference on every adapter of the
 * step's entries, each read again from its directory if the LRU dropped
 * it. An adapter that no longer reads (its files changed since its requests
 * were accepted) fails the requests of this step that use it, with the
 * reason, and their entries leave so; the rest of the step runs. -1 only
 * when memory runs out. engine_lora_release_step drops the references once
 * the slots hold theirs. */
int engine_lora_hold(cv_engine *e, sched_output *so);
void engine_lora_release_step(cv_engine *e);
/* Puts the adapters of the step's entries into backend slots (loading the
 * ones not resident) and fills slots (n_entries) with each entry's, -1 for
 * none; *any: an entry has one. The scheduler admits at most max_loras
 * distinct adapters, so they fit. */
int engine_lora_assign(cv_engine *e, const sched_output *so, int32_t *slots, bool *any);
/* The distinct adapters of list's sequences, comma-separated, into buf. */
void engine_lora_names(const cv_engine *e, const seq_list *list, char *buf, size_t size);
/* Drops the host references of adapters whose slots were reloaded while sb
 * ran (step_buf.lora_drop). */
void engine_lora_drop_after(cv_engine *e, step_buf *sb);

/* engine_output.c */
/* Sends what req has not delivered yet (streaming deltas, or everything
 * once finished when not streaming); finished = its last output. */
void engine_emit(cv_engine *e, request *req, bool finished);
/* Sends a final output carrying only an error message. */
void engine_emit_error(request *req, const char *msg);
/* Appends the decoded token's entry list for one output position. */
int engine_make_logprobs(cv_engine *e, const sample_logprobs *lp, cv_token_logprobs *out);
void request_free(request *req);

/* engine.c */
/* Marks sequence k of req finished with reason and frees its blocks. */
void engine_finish_seq(cv_engine *e, request *req, int k, cv_finish_reason reason);
/* Records a finished request's metrics (finish reason, e2e latency, sizes):
 * called just before its final output is emitted. */
void engine_count_finished(cv_engine *e, request *req);
/* Takes a request whose last output went out off the active list and frees
 * it. */
void engine_retire(cv_engine *e, request *req);

#endif

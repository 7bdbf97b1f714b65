/* One sequence: the unit the scheduler and the block manager work on. A
 * request with n (or best_of) > 1 owns several sequences that share its
 * prompt. The token array holds the prompt followed by the output; KV is in
 * the cache for the first n_computed tokens. A sequence is scheduled for
 * tokens [n_computed, n_tokens) whatever its history (first prefill, a
 * chunk of it, a decode step, or recompute after preemption), as vLLM V1
 * does: when the step computes up to n_tokens, the last row of logits
 * samples the next token. n_computed advances when a step is submitted. */
#ifndef CV_ENGINE_SEQUENCE_H
#define CV_ENGINE_SEQUENCE_H

#include <stdbool.h>
#include <stdint.h>

typedef enum { SEQ_WAITING = 0, SEQ_RUNNING, SEQ_FINISHED } seq_status;

typedef struct cv_seq {
    uint64_t id; /* engine-unique */
    void *owner; /* the engine's request record; opaque below engine.c */
    int index;   /* 0..n_seqs-1 inside its request */
    seq_status status;
    int32_t *tokens; /* (n_tokens) prompt, then output */
    int n_tokens, cap_tokens;
    int n_prompt;
    int n_computed;       /* tokens whose K/V are in the cache */
    int32_t *block_table; /* (n_blocks) KV block ids */
    int n_blocks, cap_blocks;
    int n_hashed_blocks;    /* leading full blocks already offered to the prefix cache */
    uint64_t last_hash;     /* chained hash of block n_hashed_blocks-1 */
    bool skip_prefix_cache; /* prompt_logprobs: every prompt token must run */
    int max_chunk;          /* > 0: at most this many tokens per step (bounds the
                               logits rows a prompt_logprobs prefill needs) */
    int lora_id;            /* LoRA adapter (1..), 0 = none: part of its prefix-cache
                               keys, and of the scheduler's max_loras bound */
    /* async_scheduling: a token the step in flight samples for the sequence
     * and that is not appended yet (n_pending 0 or 1), from that step's
     * logits row pending_row. run_ahead: the next step may decode it before
     * it is known (the runner fills it in); else the sequence sits out
     * until the token is appended. */
    int n_pending;
    int pending_row;
    bool run_ahead;
    uint32_t epoch; /* counts preemptions: a step's entry made before one is void */
} cv_seq;

cv_seq *seq_create(uint64_t id, const int32_t *prompt, int n_prompt);
void seq_free(cv_seq *seq);
int seq_append_token(cv_seq *seq, int32_t token);
/* A copy of parent's tokens and progress, without blocks. */
cv_seq *seq_clone(const cv_seq *parent, uint64_t id);

#endif

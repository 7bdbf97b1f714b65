/* Scheduler: which sequences run in the next step and for how many tokens,
 * as vLLM V1 decides it. Every step has a budget of max_num_batched_tokens.
 * Running sequences go first, in admission order, each asking for its
 * remaining tokens (one for a decode, a chunk of a long prefill); when the
 * KV pool runs dry the most recently admitted running sequence is preempted
 * (its blocks freed, to be recomputed later; it goes back to the front of
 * the waiting queue). Then, unless something was preempted, waiting
 * sequences are admitted first come first served while the budget, the
 * pool and max_num_seqs allow, after attaching their cached prefix. With
 * max_loras set, a waiting sequence whose LoRA adapter would make more than
 * max_loras distinct adapters run is passed over for later ones, as vLLM's
 * scheduler does. */
#ifndef CV_ENGINE_SCHEDULER_H
#define CV_ENGINE_SCHEDULER_H

#include <stdint.h>

#include "block_manager.h"
#include "sequence.h"

typedef struct seq_list {
    cv_seq **items;
    int n, cap;
} seq_list;

typedef struct sched_entry {
    cv_seq *seq;
    int n_new; /* tokens [seq->n_computed, seq->n_computed + n_new) run this step */
} sched_entry;

typedef struct sched_output {
    sched_entry *entries; /* (n_entries) owned by the scheduler, valid until the next call */
    int n_entries;
    int n_tokens;                 /* sum of n_new */
    int n_preempted;              /* sequences preempted in this step */
    int64_t cache_queried_tokens; /* prompt tokens looked up for admitted sequences */
    int64_t cache_hit_tokens;     /* of which found in the prefix cache */
} sched_output;

typedef struct scheduler {
    block_manager *bm; /* borrowed */
    int max_num_seqs;
    int max_num_batched_tokens;
    int max_loras; /* distinct adapters running at once; 0: LoRA off */
    seq_list waiting, running;
    sched_entry *entries; /* (running.cap) scratch for sched_output */
    int cap_entries;
} scheduler;

int sched_init(scheduler *s, block_manager *bm, int max_num_seqs, int max_num_batched_tokens);
void sched_fini(scheduler *s);

/* Queues seq at the back of the waiting queue (front = true: at the front). */
int sched_add(scheduler *s, cv_seq *seq, bool front);
/* Adds an already computed seq (a forked child holding blocks) to running. */
int sched_add_running(scheduler *s, cv_seq *seq);
/* Takes seq out of whichever queue holds it and frees its blocks. */
void sched_remove(scheduler *s, cv_seq *seq);

int sched_schedule(scheduler *s, sched_output *out);

#endif

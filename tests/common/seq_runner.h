/* A minimal stand-in for the engine's executor, for backend tests: it
 * builds cv_batch steps out of sequences advancing by chunks through a paged
 * KV cache whose block tables are deliberately out of order, and runs them
 * on any backend through runner_ops (runner_cpu_ops for the CPU backend;
 * the GPU test brings the CUDA backend's). Also the greedy and mixed-step
 * checks the CPU and GPU fixture tests share (cmocka assertions). */
#ifndef CV_TESTS_COMMON_SEQ_RUNNER_H
#define CV_TESTS_COMMON_SEQ_RUNNER_H

#include <stdint.h>

#include <jansson.h>

#include "backend/backend.h"

enum { RUNNER_MAX_SEQS = 8, RUNNER_MAX_BLOCKS = 128 };

/* A backend as the runner drives it: bk is the backend object. */
typedef struct runner_ops {
    int (*kv_alloc)(void *bk, int n_blocks, int block_size, cv_error *err);
    int (*forward)(void *bk, const cv_batch *batch, float *logits, cv_error *err);
} runner_ops;

/* bk: a cv_backend (the CPU backend). */
extern const runner_ops runner_cpu_ops;

typedef struct runner_seq {
    const int32_t *ids; /* (n_ids) every token the sequence will feed */
    int n_ids;
    int n_done;                       /* tokens already in the KV cache */
    int32_t table[RUNNER_MAX_BLOCKS]; /* block table */
} runner_seq;

typedef struct runner {
    const runner_ops *ops;
    void *bk;
    int block_size;
    int n_blocks;
    int n_seqs;
    runner_seq seqs[RUNNER_MAX_SEQS];
} runner;

/* Allocates the KV pool and gives sequence i blocks counted down from the
 * end of the pool, so block index never equals logical block. */
int runner_init(runner *r, const runner_ops *ops, void *bk, int block_size, int n_seqs,
                cv_error *err);

/* One step: sequence i feeds its next chunk[i] tokens (0: skips the step).
 * Logits of every fed token are written to logits rows in feed order
 * (sequence by sequence); returns the number of rows, or -1. */
int runner_step(runner *r, const int *chunk, float *logits, cv_error *err);

/* Feeds the two sequences of a runner in the same steps, chunks and single
 * tokens mixed, to their ends; got[p] receives sequence p's logits rows
 * (n_ids x vocab). */
void runner_feed_mixed(runner *r, int vocab, float *const got[2]);

/* Greedy decoding one token per step from input_ids on bk, as long as it
 * reproduces expected: returns how many leading tokens of expected it
 * reproduced (all of them, or the index of the first difference). At a
 * difference, *gap (when not NULL) is how far expected's token lies below
 * the chosen one in bk's logits row, relative to the row's largest |logit|
 * (a near-tie that another rounding order may break the other way). */
int runner_greedy_agreement(const runner_ops *ops, void *bk, int block_size,
                            const json_t *input_ids, const json_t *expected, int vocab, float *gap);

/* Greedy decoding one token per step from input_ids on bk; must reproduce
 * expected exactly (HF stops after EOS, which expected then ends with). */
void runner_check_greedy(const runner_ops *ops, void *bk, int block_size, const json_t *input_ids,
                         const json_t *expected, int vocab);

#endif

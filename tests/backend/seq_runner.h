/* A minimal stand-in for the engine's executor, for backend tests: it
 * builds cv_batch steps out of sequences advancing by chunks through a paged
 * KV cache whose block tables are deliberately out of order. */
#ifndef CV_TESTS_BACKEND_SEQ_RUNNER_H
#define CV_TESTS_BACKEND_SEQ_RUNNER_H

#include <stdint.h>

#include "backend/backend.h"

enum { RUNNER_MAX_SEQS = 8, RUNNER_MAX_BLOCKS = 64 };

typedef struct runner_seq {
    const int32_t *ids; /* (n_ids) every token the sequence will feed */
    int n_ids;
    int n_done;                       /* tokens already in the KV cache */
    int32_t table[RUNNER_MAX_BLOCKS]; /* block table */
} runner_seq;

typedef struct runner {
    cv_backend *bk;
    int block_size;
    int n_blocks;
    int n_seqs;
    runner_seq seqs[RUNNER_MAX_SEQS];
} runner;

/* Allocates the KV pool and gives sequence i blocks counted down from the
 * end of the pool, so block index never equals logical block. */
int runner_init(runner *r, cv_backend *bk, int block_size, int n_seqs, cv_error *err);

/* One step: sequence i feeds its next chunk[i] tokens (0: skips the step).
 * Logits of every fed token are written to logits rows in feed order
 * (sequence by sequence); returns the number of rows, or -1. */
int runner_step(runner *r, const int *chunk, float *logits, cv_error *err);

#endif

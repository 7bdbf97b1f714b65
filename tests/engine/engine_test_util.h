/* Helpers for the engine tests: paths to shared data, running requests
 * through an engine and gathering their outputs, and a reference path that
 * runs the backend directly (no engine) for expected logits. */
#ifndef CV_TESTS_ENGINE_TEST_UTIL_H
#define CV_TESTS_ENGINE_TEST_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "cvllm/engine.h"
#include "model/model.h"

/* $CVLLM_SHARED/rel (default ../shared/rel) and $CVLLM_SOURCE_DIR/rel. */
void shared_path(char *buf, size_t size, const char *rel);
void source_path(char *buf, size_t size, const char *rel);

/* Default args for tests: the model, one backend thread, a small pool. */
void test_args(cv_engine_args *a, const char *model_dir);
cv_engine *test_engine(const cv_engine_args *a);

enum { RESULT_MAX_SEQS = 8 };

typedef struct seq_result {
    int32_t *ids; /* (n_ids) all output tokens */
    int n_ids;
    char *text; /* concatenated text, NUL-terminated */
    size_t text_len;
    cv_finish_reason finish;
    double cum_logprob;
    cv_token_logprobs *lps; /* (n_lps) gathered from the deltas */
    int n_lps;
    int index;
} seq_result;

typedef struct req_result {
    uint64_t id;
    int n_seqs;
    seq_result seqs[RESULT_MAX_SEQS];
    int n_outputs; /* outputs received */
    int n_finals;  /* outputs with finished set (must end at 1) */
    bool output_after_final;
    char *error;
    cv_token_logprobs *prompt_lps; /* (n_prompt) */
    int n_prompt;
} req_result;

/* Adds one request whose outputs go to q tagged with result slot `slot`. */
uint64_t submit(cv_engine *e, cv_output_queue *q, const cv_sampling_params *p, const int32_t *ids,
                int n_ids, const char *text, bool stream, int slot);
/* Merges o into res[o->user_data] and frees it; true when final. */
bool merge_output(cv_request_output *o, req_result *res);
/* Pops one output (waiting up to 60 s) and merges it; true when final. */
bool collect_next(cv_output_queue *q, req_result *res);
/* Pops from q until `n_final` final outputs arrived, merging into res[]. */
void collect(cv_output_queue *q, req_result *res, int n_final);
void result_free(req_result *r);

/* Runs one request alone on e and returns its result. */
void run_one(cv_engine *e, const cv_sampling_params *p, const int32_t *ids, int n_ids, bool stream,
             req_result *out);

/* Reference: the backend alone, a fresh prefill per call. */
typedef struct ref_model {
    cv_model *model;
    cv_backend *backend;
    int vocab;
} ref_model;

void ref_open(ref_model *r, const char *dir);
void ref_close(ref_model *r);
/* logits (n, vocab) of every position of ids. */
void ref_logits(ref_model *r, const int32_t *ids, int n, float *logits);
/* Greedy continuation of n_out tokens; stop ids in mask[] (n_mask) are
 * never chosen before min_tokens outputs. */
void ref_greedy(ref_model *r, const int32_t *prompt, int n_prompt, int n_out, const int32_t *mask,
                int n_mask, int min_tokens, int32_t *out);

/* Fixture stories260K_greedy.json case i: input ids, output ids, text. */
typedef struct greedy_case {
    int32_t input[64];
    int n_input;
    int32_t output[512];
    int n_output;
    char text[4096];
} greedy_case;
void load_stories_case(int i, greedy_case *c);
/* Runs case i of stories260K_greedy.json greedily on e, streamed or not,
 * and asserts HF's ids and text, one final output, finish "length". */
void expect_stories_case(cv_engine *e, int i, bool stream);

#endif

/* Reads tests/fixtures/sample_model_greedy.json: HF transformers' greedy
 * continuations of three prompts for the shipped model
 * samples/models/cvllm-kjv-4m (made by tools/train_tiny/train.py). */
#ifndef CV_TESTS_SAMPLE_FIXTURE_H
#define CV_TESTS_SAMPLE_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

typedef struct sample_case {
    char *prompt;       /* UTF-8, NUL-terminated */
    int32_t *input_ids; /* (n_input) HF encode(prompt), BOS first */
    size_t n_input;
    int32_t *output_ids; /* (n_output) HF greedy tokens */
    size_t n_output;
    int max_new_tokens;
    char *text;             /* HF decode(output_ids, skip_special_tokens) */
    char *text_incremental; /* decode(input+output) minus decode(input) */
} sample_case;

typedef struct sample_fixture {
    sample_case *cases; /* (n_cases) */
    size_t n_cases;
} sample_fixture;

/* The shipped model's directory and the fixture's path, under
 * $CVLLM_SOURCE_DIR (ctest sets it; "." otherwise). */
void sample_model_dir(char *buf, size_t size);
/* Loads the fixture; on failure returns -1 with err naming file and key.
 * The caller frees with sample_fixture_free. */
int sample_fixture_load(sample_fixture *fx, cv_error *err);
void sample_fixture_free(sample_fixture *fx);

#endif

/* The HF reference fixtures of tests/fixtures/models (format in its
 * README.md), shared by the CPU and GPU backend tests: loading a fixture,
 * reading its ids, and comparing logits with its reference rows. Failures
 * end the running cmocka test. */
#ifndef CV_TESTS_COMMON_HF_FIXTURE_H
#define CV_TESTS_COMMON_HF_FIXTURE_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "model/model.h"

/* Every fixture directory, for a test list: X(name) each. */
#define HF_FIXTURES(X)                                                                             \
    X("llama_f32")                                                                                 \
    X("llama_bf16")                                                                                \
    X("llama_sharded")                                                                             \
    X("llama3_rope_f32")                                                                           \
    X("llama3_rope_bf16")                                                                          \
    X("llama_linear_rope_f32")                                                                     \
    X("llama_linear_rope_bf16")                                                                    \
    X("mistral_f32")                                                                               \
    X("mistral_bf16")                                                                              \
    X("qwen2_f32")                                                                                 \
    X("qwen2_bf16")                                                                                \
    X("qwen3_f32")                                                                                 \
    X("qwen3_bf16")                                                                                \
    X("opt_f32")                                                                                   \
    X("opt_bf16")                                                                                  \
    X("opt_postnorm_f32")                                                                          \
    X("gpt2_f32")                                                                                  \
    X("gpt2_bf16")

typedef struct hf_fixture {
    cv_model *model;
    json_t *ref; /* reference.json */
    const cv_model_config *cfg;
    bool bf16; /* weights stored in bfloat16 */
} hf_fixture;

/* Loads tests/fixtures/models/NAME under $CVLLM_SOURCE_DIR (default "."). */
void hf_fixture_load(hf_fixture *f, const char *name);
/* $CVLLM_SHARED/models/stories260K (default ../shared) with
 * tests/fixtures/stories260K_greedy.json as its reference. */
void hf_fixture_load_stories(hf_fixture *f);
void hf_fixture_free(hf_fixture *f);

/* The ids of a JSON array into ids (at most max_ids); returns the count. */
int hf_ids_from_json(const json_t *arr, int32_t *ids, int max_ids);

/* max |ours - ref| / max |ref| of rows [row0, row0 + n_rows) of the JSON
 * logits rows against ours (n_rows, vocab); NaN when ours holds a NaN, so
 * that no tolerance check passes it. */
double hf_rel_err(const float *ours, const json_t *rows, int row0, int n_rows, int vocab);

int hf_argmax(const float *row, int n);

#endif

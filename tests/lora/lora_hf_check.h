/* The LoRA fixtures of tests/fixtures/lora (made by make_lora_fixtures.py on
 * the GPU machine: three PEFT adapters per model, HF's logits on the merged
 * weights W + scale B A) checked on any backend through its function table
 * (backend.h), so that the CPU test (test_lora_hf) and the GPU test
 * (tests/gpu/test_gpu_lora) read them with the same code:
 *  - every prompt of every adapter, one prefill alone, within tol of HF at
 *    every position (max |ours - HF| / max |HF|), and the base model's
 *    first prompt too;
 *  - one prefill batch of all of them, adapters interleaved with each
 *    other and the base sequence, gives each sequence its rows alone:
 *    bitwise (mixed_tol 0) or within mixed_tol;
 *  - through the engine on `device`, every adapter's and the base model's
 *    greedy continuation, all four requested at once from an engine of
 *    engine_max_loras slots, is HF's (needs ../shared's stories260K
 *    tokenizer; fewer slots than adapters makes them wait, evict and
 *    reload).
 * A checkout without the fixtures skips. Failures end the cmocka test and
 * name the model, adapter, prompt and the first mismatching value. */
#ifndef CV_TESTS_LORA_LORA_HF_CHECK_H
#define CV_TESTS_LORA_LORA_HF_CHECK_H

#include "backend/backend.h"
#include "model/model.h"

typedef struct lora_hf_target {
    const char *device; /* the engine's device argument: "cpu" or "cuda" */
    /* A backend for model (kv_alloc and lora_init not yet called); NULL
     * with err on failure. Destroyed through ops->destroy. */
    void *(*create)(const cv_model *model, cv_error *err);
    const cv_backend_ops *ops;
    double tol;       /* against HF */
    double mixed_tol; /* mixed batch against alone; 0: bitwise */
    int engine_max_loras;
} lora_hf_target;

void lora_hf_check(const char *model_name, const lora_hf_target *t);

#endif

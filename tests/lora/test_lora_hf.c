/* cvllm's CPU backend with LoRA adapters against HF transformers: the
 * fixtures tests/fixtures/lora/<model>/ checked by lora_hf_check.h: every
 * position of every prompt within 1e-4 (fp32) for each adapter alone, one
 * batch mixing the three adapters with a base sequence bitwise equal to
 * each alone, and through the engine every adapter's greedy continuation,
 * requested together with the others and the base model, is HF's, with 3
 * slots and with 1. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "../common/shared_data.h"
#include "backend/backend.h"
#include "lora_hf_check.h"

static void *cpu_create(const cv_model *model, cv_error *err)
{
    return cv_backend_cpu_create(model, 2, err);
}

static const lora_hf_target cpu = {
    .device = "cpu",
    .create = cpu_create,
    .ops = &cv_cpu_backend_ops,
    .tol = 1e-4,
    .mixed_tol = 0.0,
    .engine_max_loras = 3,
};

static void test_llama(void **state)
{
    (void)state;
    lora_hf_check("llama_f32", &cpu);
}

static void test_qwen2(void **state)
{
    (void)state;
    lora_hf_check("qwen2_f32", &cpu);
}

/* More adapters in flight than slots: each waits for a slot. */
static void test_llama_one_slot(void **state)
{
    (void)state;
    lora_hf_target one = cpu;
    one.engine_max_loras = 1;
    lora_hf_check("llama_f32", &one);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama),
        cmocka_unit_test(test_qwen2),
        cmocka_unit_test(test_llama_one_slot),
    };
    return cv_test_exit(cmocka_run_group_tests(tests, NULL, NULL));
}

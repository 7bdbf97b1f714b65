/* Loads the checkpoints HF transformers 5.17 itself wrote
 * (tests/fixtures/models, see its README) and checks what each one
 * exercises: rope types, biases, q/k norms, head_dim, ties, shards. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "model/model.h"

static cv_model *load_fixture(const char *name)
{
    const char *src = getenv("CVLLM_SOURCE_DIR");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/%s", src ? src : ".", name);
    cv_error err = {.msg = ""};
    cv_model *m = cv_model_load(dir, &err);
    if (!m) fail_msg("%s", err.msg);
    const cv_model_config *c = cv_model_get_config(m);
    /* Common to every fixture (README): vocab 256, hidden 64, 2 layers,
     * 4 heads, 2 KV heads, intermediate 128, eps 1e-6, bos 1, eos 2. */
    assert_int_equal(c->vocab_size, 256);
    assert_int_equal(c->hidden_size, 64);
    assert_int_equal(c->n_layers, 2);
    assert_int_equal(c->n_heads, 4);
    assert_int_equal(c->n_kv_heads, 2);
    assert_int_equal(c->intermediate_size, 128);
    assert_int_equal(c->max_position_embeddings, 128);
    assert_true(c->rms_norm_eps == 1e-6f);
    assert_int_equal(c->bos_token_id, 1);
    assert_int_equal(c->n_eos_token_ids, 1);
    assert_int_equal(c->eos_token_ids[0], 2);
    assert_int_equal(c->dtype, strstr(name, "bf16") ? CV_DTYPE_BF16 : CV_DTYPE_F32);
    return m;
}

static void test_llama(void **state)
{
    const char *names[] = {"llama_f32", "llama_bf16"};
    for (int i = 0; i < 2; i++) {
        cv_model *m = load_fixture(names[i]);
        const cv_model_config *c = cv_model_get_config(m);
        assert_string_equal(c->architecture, "LlamaForCausalLM");
        assert_int_equal(c->rope_type, CV_ROPE_DEFAULT);
        assert_true(c->rope_theta == 10000.0f);
        assert_true(c->tie_word_embeddings);
        const cv_model_weights *w = cv_model_get_weights(m);
        assert_ptr_equal(w->lm_head.data, w->embed.data);
        cv_model_free(m);
    }
}

static void test_llama3_and_linear_rope(void **state)
{
    const char *llama3[] = {"llama3_rope_f32", "llama3_rope_bf16"};
    const char *linear[] = {"llama_linear_rope_f32", "llama_linear_rope_bf16"};
    for (int i = 0; i < 2; i++) {
        cv_model *m = load_fixture(llama3[i]);
        const cv_model_config *c = cv_model_get_config(m);
        assert_int_equal(c->rope_type, CV_ROPE_LLAMA3);
        assert_true(c->rope_factor == 8.0f);
        assert_true(c->rope_low_freq_factor == 1.0f);
        assert_true(c->rope_high_freq_factor == 4.0f);
        assert_int_equal(c->rope_original_max_position, 32);
        assert_false(c->tie_word_embeddings);
        const cv_model_weights *w = cv_model_get_weights(m);
        assert_non_null(w->lm_head.data);
        assert_ptr_not_equal(w->lm_head.data, w->embed.data);
        cv_model_free(m);

        m = load_fixture(linear[i]);
        assert_int_equal(cv_model_get_config(m)->rope_type, CV_ROPE_LINEAR);
        assert_true(cv_model_get_config(m)->rope_factor == 2.0f);
        cv_model_free(m);
    }
}

static void test_sharded_equals_single(void **state)
{
    cv_model *one = load_fixture("llama_f32"), *sharded = load_fixture("llama_sharded");
    const cv_model_weights *a = cv_model_get_weights(one), *b = cv_model_get_weights(sharded);
    assert_memory_equal(a->embed.data, b->embed.data, 256 * 64 * 4);
    assert_memory_equal(a->final_norm.data, b->final_norm.data, 64 * 4);
    for (int l = 0; l < 2; l++) {
        assert_memory_equal(a->layers[l].wq.data, b->layers[l].wq.data, 64 * 64 * 4);
        assert_memory_equal(a->layers[l].w_down.data, b->layers[l].w_down.data, 64 * 128 * 4);
    }
    cv_model_free(one);
    cv_model_free(sharded);
}

static void test_mistral_qwen(void **state)
{
    const char *dtypes[] = {"f32", "bf16"};
    for (int i = 0; i < 2; i++) {
        char name[64];
        snprintf(name, sizeof name, "mistral_%s", dtypes[i]);
        cv_model *m = load_fixture(name);
        assert_int_equal(cv_model_get_config(m)->sliding_window, 0); /* null in config.json */
        assert_true(cv_model_get_config(m)->rope_theta == 1e6f);
        cv_model_free(m);

        snprintf(name, sizeof name, "qwen2_%s", dtypes[i]);
        m = load_fixture(name);
        const cv_model_config *c = cv_model_get_config(m);
        assert_int_equal(c->head_dim, 16); /* no head_dim key: hidden / heads */
        const cv_model_weights *w = cv_model_get_weights(m);
        assert_int_equal(w->layers[1].bq.shape[0], 64);
        assert_int_equal(w->layers[1].bk.shape[0], 32);
        assert_int_equal(w->layers[1].bv.shape[0], 32);
        assert_null(w->layers[1].q_norm.data);
        cv_model_free(m);

        snprintf(name, sizeof name, "qwen3_%s", dtypes[i]);
        m = load_fixture(name);
        c = cv_model_get_config(m);
        assert_int_equal(c->head_dim, 32);
        assert_true(c->tie_word_embeddings);
        w = cv_model_get_weights(m);
        assert_int_equal(w->layers[0].wq.shape[0], 128);
        assert_int_equal(w->layers[0].wq.shape[1], 64);
        assert_int_equal(w->layers[0].q_norm.shape[0], 32);
        assert_int_equal(w->layers[0].k_norm.shape[0], 32);
        assert_null(w->layers[0].bq.data);
        cv_model_free(m);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama),
        cmocka_unit_test(test_llama3_and_linear_rope),
        cmocka_unit_test(test_sharded_equals_single),
        cmocka_unit_test(test_mistral_qwen),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

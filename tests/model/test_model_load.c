/* Successful loads of models the test builds: every architecture row, F16
 * and BF16 weights read as stored, sharded checkpoints, transformers 4.x and
 * 5.x config spellings, and the F16/BF16 conversions the writers use. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include <cmocka.h>

#include "model_fixture.h"

static cv_model *load_ok(const char *dir)
{
    cv_error err = {.msg = ""};
    cv_model *m = cv_model_load(dir, &err);
    if (!m) fail_msg("%s", err.msg);
    return m;
}

/* Element I of T as a float, whatever its stored dtype. */
static float elem(const cv_tensor *t, size_t i)
{
    switch (t->dtype) {
    case CV_DTYPE_F32:
        return ((const float *)t->data)[i];
    case CV_DTYPE_F16:
        return cv_f16_to_f32(((const uint16_t *)t->data)[i]);
    case CV_DTYPE_BF16:
        return cv_bf16_to_f32(((const uint16_t *)t->data)[i]);
    }
    return NAN;
}

static void assert_tensor(const cv_tensor *t, cv_dtype dtype, int64_t d0, int64_t d1)
{
    assert_non_null(t->data);
    assert_int_equal(t->dtype, dtype);
    assert_int_equal(t->n_dims, d1 ? 2 : 1);
    assert_int_equal(t->shape[0], d0);
    if (d1) assert_int_equal(t->shape[1], d1);
}

/* Tensor numbers in cv_model_tensor_list order for fx_config's 2-layer Llama
 * (untied): 0 embed, 1 norm, 2 lm_head, then 9 per layer starting at 3. */
enum { T_EMBED = 0, T_NORM = 1, T_LM_HEAD = 2, T_LAYER0 = 3 };

static void test_llama_f32(void **state)
{
    cv_model_config cfg = fx_config("LlamaForCausalLM");
    fx_write_model(*state, &cfg, CV_DTYPE_F32, 1);
    cv_model *m = load_ok(*state);
    const cv_model_config *c = cv_model_get_config(m);
    assert_string_equal(c->architecture, "LlamaForCausalLM");
    assert_int_equal(c->hidden_size, 16);
    assert_int_equal(c->head_dim, 4);
    assert_int_equal(c->n_kv_heads, 2);
    assert_int_equal(c->max_position_embeddings, 64);
    assert_true(c->rms_norm_eps == 1e-5f);
    assert_false(c->tie_word_embeddings);
    assert_int_equal(c->dtype, CV_DTYPE_F32);
    const cv_model_weights *w = cv_model_get_weights(m);
    assert_tensor(&w->embed, CV_DTYPE_F32, 32, 16);
    assert_tensor(&w->lm_head, CV_DTYPE_F32, 32, 16);
    assert_ptr_not_equal(w->lm_head.data, w->embed.data);
    assert_true(elem(&w->lm_head, 5) == fx_value(T_LM_HEAD, 5));
    assert_true(elem(&w->final_norm, 15) == fx_value(T_NORM, 15));
    /* Layer 1's q_proj is tensor T_LAYER0 + 9 + 1. */
    assert_tensor(&w->layers[1].wq, CV_DTYPE_F32, 16, 16);
    assert_true(elem(&w->layers[1].wq, 200) == fx_value(T_LAYER0 + 9 + 1, 200));
    assert_tensor(&w->layers[1].w_down, CV_DTYPE_F32, 16, 32);
    assert_null(w->layers[0].bq.data);
    cv_model_free(m);
}

static void test_llama_f16_tied(void **state)
{
    cv_model_config cfg = fx_config("LlamaForCausalLM");
    cfg.tie_word_embeddings = true;
    fx_write_model(*state, &cfg, CV_DTYPE_F16, 1);
    cv_model *m = load_ok(*state);
    assert_int_equal(cv_model_get_config(m)->dtype, CV_DTYPE_F16);
    const cv_model_weights *w = cv_model_get_weights(m);
    assert_tensor(&w->embed, CV_DTYPE_F16, 32, 16);
    assert_ptr_equal(w->lm_head.data, w->embed.data);
    /* Tied: no lm_head tensor, so layer 0 starts at tensor 2. */
    for (size_t i = 0; i < 32 * 16; i++)
        assert_true(elem(&w->embed, i) == fx_value(0, i));
    assert_true(elem(&w->layers[0].w_up, 77) == fx_value(2 + 7, 77));
    cv_model_free(m);
}

static void test_qwen2_bf16_bias(void **state)
{
    cv_model_config cfg = fx_config("Qwen2ForCausalLM");
    fx_write_model(*state, &cfg, CV_DTYPE_BF16, 1);
    cv_model *m = load_ok(*state);
    const cv_model_weights *w = cv_model_get_weights(m);
    assert_int_equal(cv_model_get_config(m)->dtype, CV_DTYPE_BF16);
    /* Qwen2 layer: norm, q, k, v, bq, bk, bv, o, ffn_norm, gate, up, down. */
    assert_tensor(&w->layers[0].bq, CV_DTYPE_BF16, 16, 0);
    assert_tensor(&w->layers[0].bk, CV_DTYPE_BF16, 8, 0);
    assert_tensor(&w->layers[1].bv, CV_DTYPE_BF16, 8, 0);
    assert_true(elem(&w->layers[1].bv, 3) == fx_value(T_LAYER0 + 12 + 6, 3));
    assert_null(w->layers[0].q_norm.data);
    cv_model_free(m);
}

static void test_qwen3_qk_norm_head_dim(void **state)
{
    /* head_dim 8 while hidden / heads is 4, as Qwen3 checkpoints do. */
    cv_model_config cfg = fx_config("Qwen3ForCausalLM");
    cfg.head_dim = 8;
    fx_write_model(*state, &cfg, CV_DTYPE_F32, 1);
    cv_model *m = load_ok(*state);
    assert_int_equal(cv_model_get_config(m)->head_dim, 8);
    const cv_model_weights *w = cv_model_get_weights(m);
    assert_tensor(&w->layers[0].wq, CV_DTYPE_F32, 32, 16);
    assert_tensor(&w->layers[0].wk, CV_DTYPE_F32, 16, 16);
    assert_tensor(&w->layers[0].wo, CV_DTYPE_F32, 16, 32);
    assert_tensor(&w->layers[1].q_norm, CV_DTYPE_F32, 8, 0);
    assert_tensor(&w->layers[1].k_norm, CV_DTYPE_F32, 8, 0);
    assert_null(w->layers[0].bq.data);
    cv_model_free(m);
}

static void test_sharded(void **state)
{
    cv_model_config cfg = fx_config("MistralForCausalLM");
    fx_write_model(*state, &cfg, CV_DTYPE_BF16, 3);
    cv_model *m = load_ok(*state);
    const cv_model_weights *w = cv_model_get_weights(m);
    /* Tensors 0, 1, 2 went to shards 1, 2, 3. */
    assert_true(elem(&w->embed, 100) == fx_value(T_EMBED, 100));
    assert_true(elem(&w->final_norm, 7) == fx_value(T_NORM, 7));
    assert_true(elem(&w->lm_head, 511) == fx_value(T_LM_HEAD, 511));
    assert_true(elem(&w->layers[1].w_down, 300) == fx_value(T_LAYER0 + 9 + 8, 300));
    assert_int_equal(cv_model_get_config(m)->sliding_window, 0); /* written as null */
    cv_model_free(m);
}

/* transformers 5 writes "dtype" and puts rope_theta and the llama3 scaling
 * into rope_parameters; generation_config's eos list wins. */
static void test_transformers5_config(void **state)
{
    cv_model_config cfg = fx_config("LlamaForCausalLM");
    fx_write_model(*state, &cfg, CV_DTYPE_F32, 1);
    const char *dir = *state;
    fx_json_set(dir, "config.json", "torch_dtype", NULL);
    fx_json_set(dir, "config.json", "dtype", json_string("float32"));
    fx_json_set(dir, "config.json", "rope_theta", NULL);
    fx_json_set(dir, "config.json", "head_dim", NULL);
    fx_json_set(dir, "config.json", "rope_parameters",
                json_pack("{s:s,s:f,s:f,s:f,s:f,s:i}", "rope_type", "llama3", "rope_theta",
                          500000.0, "factor", 8.0, "low_freq_factor", 1.0, "high_freq_factor", 4.0,
                          "original_max_position_embeddings", 8192));
    fx_json_set(dir, "generation_config.json", "eos_token_id", json_pack("[i,i,i]", 7, 8, 9));
    cv_model *m = load_ok(dir);
    const cv_model_config *c = cv_model_get_config(m);
    assert_true(c->rope_theta == 500000.0f);
    assert_int_equal(c->rope_type, CV_ROPE_LLAMA3);
    assert_true(c->rope_factor == 8.0f);
    assert_true(c->rope_low_freq_factor == 1.0f);
    assert_true(c->rope_high_freq_factor == 4.0f);
    assert_int_equal(c->rope_original_max_position, 8192);
    assert_int_equal(c->head_dim, 4);
    assert_int_equal(c->n_eos_token_ids, 3);
    assert_int_equal(c->eos_token_ids[0], 7);
    assert_int_equal(c->eos_token_ids[2], 9);
    cv_model_free(m);
}

/* transformers 4.x: rope_scaling with "type"; keys left to the HF config
 * class defaults. */
static void test_transformers4_config(void **state)
{
    cv_model_config cfg = fx_config("MistralForCausalLM");
    fx_write_model(*state, &cfg, CV_DTYPE_F32, 1);
    const char *dir = *state;
    fx_json_set(dir, "config.json", "rope_scaling",
                json_pack("{s:s,s:f}", "type", "linear", "factor", 2.0));
    fx_json_set(dir, "config.json", "sliding_window", NULL);
    fx_json_set(dir, "config.json", "hidden_act", json_string("gelu_pytorch_tanh"));
    fx_json_set(dir, "config.json", "tie_word_embeddings", NULL);
    fx_json_set(dir, "config.json", "rms_norm_eps", NULL);
    cv_model *m = load_ok(dir);
    const cv_model_config *c = cv_model_get_config(m);
    assert_int_equal(c->rope_type, CV_ROPE_LINEAR);
    assert_true(c->rope_factor == 2.0f);
    assert_int_equal(c->sliding_window, 4096); /* MistralConfig's default */
    assert_int_equal(c->hidden_act, CV_ACT_GELU_TANH);
    assert_false(c->tie_word_embeddings);  /* MistralConfig's default */
    assert_true(c->rms_norm_eps == 1e-6f); /* MistralConfig's default */
    cv_model_free(m);
}

/* Qwen2 configs carry sliding_window but switch it off. */
static void test_qwen2_sliding_off(void **state)
{
    cv_model_config cfg = fx_config("Qwen2ForCausalLM");
    fx_write_model(*state, &cfg, CV_DTYPE_F32, 1);
    fx_json_set(*state, "config.json", "use_sliding_window", json_false());
    fx_json_set(*state, "config.json", "sliding_window", json_integer(32768));
    cv_model *m = load_ok(*state);
    assert_int_equal(cv_model_get_config(m)->sliding_window, 0);
    cv_model_free(m);
}

/* A header length that leaves the data region misaligned (old writers did
 * not pad): tensors still load, as aligned copies with the same values. */
static void test_misaligned_header(void **state)
{
    cv_model_config cfg = fx_config("LlamaForCausalLM");
    fx_write_model(*state, &cfg, CV_DTYPE_F32, 1);
    fx_patch_header(*state, "model.safetensors", "{", "{ ", 1);
    cv_model *m = load_ok(*state);
    const cv_model_weights *w = cv_model_get_weights(m);
    assert_int_equal((uintptr_t)w->embed.data % 4, 0);
    assert_int_equal((uintptr_t)w->layers[1].w_gate.data % 4, 0);
    assert_true(elem(&w->layers[1].w_gate, 31) == fx_value(T_LAYER0 + 9 + 6, 31));
    cv_model_free(m);
}

static void test_half_conversions(void **state)
{
    assert_int_equal(cv_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(cv_f32_to_f16(-2.0f), 0xc000);
    assert_int_equal(cv_f32_to_f16(0.1f), 0x2e66);
    assert_int_equal(cv_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(cv_f32_to_f16(65519.0f), 0x7bff);
    assert_int_equal(cv_f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(cv_f32_to_f16(0x1p-24f), 0x0001);   /* smallest subnormal */
    assert_int_equal(cv_f32_to_f16(0x1p-25f), 0x0000);   /* tie to even: zero */
    assert_int_equal(cv_f32_to_f16(0x1.8p-24f), 0x0002); /* tie to even: two */
    assert_int_equal(cv_f32_to_f16(0x1p-14f), 0x0400);   /* smallest normal */
    assert_int_equal(cv_f32_to_f16(INFINITY), 0x7c00);
    assert_int_equal(cv_f32_to_f16(NAN) & 0x7e00, 0x7e00);
    assert_true(cv_f16_to_f32(0x3555) == 0x1.554p-2f);
    assert_true(cv_f16_to_f32(0x0001) == 0x1p-24f);
    assert_true(cv_f16_to_f32(0xfc00) == -INFINITY);
    assert_int_equal(cv_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(cv_f32_to_bf16(0.1f), 0x3dcd);
    assert_int_equal(cv_f32_to_bf16(-3.0f), 0xc040);
    assert_int_equal(cv_f32_to_bf16(0x1.018p0f), 0x3f81); /* above half: up */
    assert_int_equal(cv_f32_to_bf16(0x1.01p0f), 0x3f80);  /* tie, even: down */
    assert_int_equal(cv_f32_to_bf16(0x1.03p0f), 0x3f82);  /* tie, odd: up */
    assert_true(isnan(cv_bf16_to_f32(cv_f32_to_bf16(NAN))));
    assert_true(cv_bf16_to_f32(0x4049) == 3.140625f);
    for (uint32_t h = 0; h < 0x7c00; h++) /* every finite F16 round-trips */
        assert_int_equal(cv_f32_to_f16(cv_f16_to_f32((uint16_t)h)), h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_llama_f32, fx_setup_tmpdir, fx_teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_llama_f16_tied, fx_setup_tmpdir, fx_teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_qwen2_bf16_bias, fx_setup_tmpdir, fx_teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_qwen3_qk_norm_head_dim, fx_setup_tmpdir,
                                        fx_teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_sharded, fx_setup_tmpdir, fx_teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_transformers5_config, fx_setup_tmpdir,
                                        fx_teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_transformers4_config, fx_setup_tmpdir,
                                        fx_teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_qwen2_sliding_off, fx_setup_tmpdir,
                                        fx_teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_misaligned_header, fx_setup_tmpdir,
                                        fx_teardown_tmpdir),
        cmocka_unit_test(test_half_conversions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

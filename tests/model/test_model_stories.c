/* Loads the real stories260K checkpoint from ../shared and checks the
 * config values and a few weights against the bytes of model.safetensors
 * (values read once with Python's struct module). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "model/model.h"
#include "../common/shared_data.h"

static uint32_t f32_bits(const cv_tensor *t, size_t i)
{
    uint32_t bits;
    memcpy(&bits, (const float *)t->data + i, sizeof bits);
    return bits;
}

static void assert_shape2(const cv_tensor *t, int64_t a, int64_t b)
{
    assert_non_null(t->data);
    assert_int_equal(t->dtype, CV_DTYPE_F32);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->shape[0], a);
    assert_int_equal(t->shape[1], b);
}

static void test_stories260k(void **state)
{
    const char *shared = getenv("CVLLM_SHARED");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/models/stories260K", shared ? shared : "../shared");
    cv_error err = {.msg = ""};
    cv_model *m = cv_model_load(dir, &err);
    if (!m) fail_msg("%s", err.msg);

    const cv_model_config *c = cv_model_get_config(m);
    assert_string_equal(c->architecture, "LlamaForCausalLM");
    assert_int_equal(c->hidden_size, 64);
    assert_int_equal(c->intermediate_size, 172);
    assert_int_equal(c->n_layers, 5);
    assert_int_equal(c->n_heads, 8);
    assert_int_equal(c->n_kv_heads, 4);
    assert_int_equal(c->head_dim, 8);
    assert_int_equal(c->vocab_size, 512);
    assert_int_equal(c->max_position_embeddings, 512);
    assert_true(c->rms_norm_eps == 1e-5f);
    assert_true(c->rope_theta == 10000.0f);
    assert_int_equal(c->rope_type, CV_ROPE_DEFAULT);
    assert_true(c->tie_word_embeddings);
    assert_int_equal(c->bos_token_id, 1);
    assert_int_equal(c->n_eos_token_ids, 1);
    assert_int_equal(c->eos_token_ids[0], 2);
    assert_int_equal(c->dtype, CV_DTYPE_F32);
    assert_int_equal(c->hidden_act, CV_ACT_SILU);
    assert_int_equal(c->sliding_window, 0);

    const cv_model_weights *w = cv_model_get_weights(m);
    assert_shape2(&w->embed, 512, 64);
    assert_ptr_equal(w->lm_head.data, w->embed.data); /* tied */
    assert_int_equal(w->final_norm.n_dims, 1);
    assert_int_equal(w->final_norm.shape[0], 64);
    for (int l = 0; l < 5; l++) {
        const cv_layer_weights *L = &w->layers[l];
        assert_shape2(&L->wq, 64, 64);
        assert_shape2(&L->wk, 32, 64);
        assert_shape2(&L->wv, 32, 64);
        assert_shape2(&L->wo, 64, 64);
        assert_shape2(&L->w_gate, 172, 64);
        assert_shape2(&L->w_up, 172, 64);
        assert_shape2(&L->w_down, 64, 172);
        assert_non_null(L->attn_norm.data);
        assert_non_null(L->ffn_norm.data);
        assert_null(L->bq.data);
        assert_null(L->bk.data);
        assert_null(L->bv.data);
        assert_null(L->q_norm.data);
        assert_null(L->k_norm.data);
    }
    assert_int_equal(f32_bits(&w->embed, 0), 0xbe96e950u);
    assert_int_equal(f32_bits(&w->embed, 511 * 64 + 63), 0xbed91acdu);
    assert_int_equal(f32_bits(&w->layers[4].w_down, 100), 0xbd7e61f8u);
    assert_int_equal(f32_bits(&w->final_norm, 5), 0x408d9a5fu);
    assert_int_equal(f32_bits(&w->layers[0].wk, 31 * 64 + 1), 0xbf30ec1du);
    cv_model_free(m);
}

int main(void)
{
    cv_test_need_shared("models/stories260K");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories260k),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

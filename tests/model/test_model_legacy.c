/* OPTForCausalLM and GPT2LMHeadModel in the loader: their config keys
 * (OPTConfig, GPT2Config) with the classes' defaults, the structure flags
 * they set, the tensors they bind (GPT-2's Conv1D matrices transposed and
 * c_attn split once, at load), checkpoints of the base model whose names
 * lack "model." / "transformer.", and every bad key with its exact
 * message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "model_fixture.h"

/* fx_config reshaped to what the loader reads back for ARCH: full MHA (4
 * heads of 4), the family's structure. */
static cv_model_config legacy_config(const char *arch)
{
    cv_model_config c = fx_config(arch);
    c.n_kv_heads = c.n_heads;
    c.norm_type = CV_NORM_LAYER;
    c.pos_type = CV_POS_LEARNED;
    c.plain_mlp = true;
    c.linear_bias = true;
    c.tie_word_embeddings = true;
    if (strcmp(arch, "OPTForCausalLM") == 0) {
        c.pos_offset = 2;
        c.hidden_act = CV_ACT_RELU;
    } else {
        c.hidden_act = CV_ACT_GELU_TANH;
    }
    return c;
}

static cv_model *load_ok(const char *dir)
{
    cv_error err = {.msg = ""};
    cv_model *m = cv_model_load(dir, &err);
    if (!m) fail_msg("%s", err.msg);
    return m;
}

static void assert_shape(const cv_tensor *t, int64_t d0, int64_t d1)
{
    assert_non_null(t->data);
    assert_int_equal(t->n_dims, d1 ? 2 : 1);
    assert_int_equal(t->shape[0], d0);
    if (d1) assert_int_equal(t->shape[1], d1);
}

/* Index of tensor NAME in cv_model_tensor_list order for CFG (the t of
 * fx_value). */
static size_t tensor_index(const cv_model_config *cfg, const char *name)
{
    cv_safetensors_entry *e;
    size_t n;
    cv_error err = {.msg = ""};
    if (cv_model_tensor_list(cfg, CV_DTYPE_F32, &e, &n, &err)) fail_msg("%s", err.msg);
    size_t at = n;
    for (size_t i = 0; i < n; i++)
        if (strcmp(e[i].name, name) == 0) at = i;
    cv_model_free_tensor_list(e, n);
    if (at == n) fail_msg("no tensor %s", name);
    return at;
}

static void test_opt_pre_norm(void **state)
{
    cv_model_config cfg = legacy_config("OPTForCausalLM");
    fx_write_model(*state, &cfg, CV_DTYPE_F32, 1);
    cv_model *m = load_ok(*state);
    const cv_model_config *c = cv_model_get_config(m);
    assert_string_equal(c->architecture, "OPTForCausalLM");
    assert_int_equal(c->hidden_size, 16);
    assert_int_equal(c->intermediate_size, 32);
    assert_int_equal(c->n_heads, 4);
    assert_int_equal(c->n_kv_heads, 4);
    assert_int_equal(c->head_dim, 4);
    assert_int_equal(c->norm_type, CV_NORM_LAYER);
    assert_int_equal(c->pos_type, CV_POS_LEARNED);
    assert_int_equal(c->pos_offset, 2);
    assert_true(c->plain_mlp && c->linear_bias && !c->post_norm && !c->no_final_norm);
    assert_int_equal(c->proj_dim, 0);
    assert_int_equal(c->hidden_act, CV_ACT_RELU);
    assert_true(c->rms_norm_eps == 1e-5f);
    assert_true(c->tie_word_embeddings);
    const cv_model_weights *w = cv_model_get_weights(m);
    assert_shape(&w->embed, 32, 16);
    assert_shape(&w->pos_embed, 64 + 2, 16);
    assert_ptr_equal(w->lm_head.data, w->embed.data);
    assert_shape(&w->final_norm, 16, 0);
    assert_shape(&w->final_norm_b, 16, 0);
    assert_null(w->project_in.data);
    assert_null(w->project_out.data);
    const cv_layer_weights *L = &w->layers[1];
    assert_shape(&L->attn_norm_b, 16, 0);
    assert_shape(&L->bq, 16, 0);
    assert_shape(&L->bo, 16, 0);
    assert_shape(&L->w_up, 32, 16);
    assert_shape(&L->b_up, 32, 0);
    assert_shape(&L->w_down, 16, 32);
    assert_shape(&L->b_down, 16, 0);
    assert_null(L->w_gate.data);
    size_t t = tensor_index(c, "model.decoder.layers.1.fc2.bias");
    for (size_t i = 0; i < 16; i++)
        assert_true(((const float *)L->b_down.data)[i] == fx_value(t, i));
    cv_model_free(m);
}

/* opt-350m's shape: post-norm, no final LayerNorm, word_embed_proj_dim 8
 * != hidden 16 (project_in / project_out, embedding rows 8 wide). */
static void test_opt_post_norm_projected(void **state)
{
    cv_model_config cfg = legacy_config("OPTForCausalLM");
    cfg.post_norm = true;
    cfg.no_final_norm = true;
    cfg.proj_dim = 8;
    cfg.tie_word_embeddings = false;
    fx_write_model(*state, &cfg, CV_DTYPE_BF16, 1);
    cv_model *m = load_ok(*state);
    const cv_model_config *c = cv_model_get_config(m);
    assert_true(c->post_norm && c->no_final_norm);
    assert_int_equal(c->proj_dim, 8);
    assert_int_equal(c->dtype, CV_DTYPE_BF16);
    const cv_model_weights *w = cv_model_get_weights(m);
    assert_shape(&w->embed, 32, 8);
    assert_shape(&w->lm_head, 32, 8);
    assert_true(w->lm_head.data != w->embed.data);
    assert_shape(&w->project_in, 16, 8);
    assert_shape(&w->project_out, 8, 16);
    assert_null(w->final_norm.data);
    assert_null(w->final_norm_b.data);
    cv_model_free(m);
}

/* enable_bias false: no projection biases are read (the LayerNorms keep
 * theirs, as in HF). */
static void test_opt_no_bias(void **state)
{
    cv_model_config cfg = legacy_config("OPTForCausalLM");
    cfg.linear_bias = false;
    fx_write_model(*state, &cfg, CV_DTYPE_F16, 1);
    cv_model *m = load_ok(*state);
    const cv_layer_weights *L = &cv_model_get_weights(m)->layers[0];
    assert_null(L->bq.data);
    assert_null(L->bo.data);
    assert_null(L->b_up.data);
    assert_null(L->b_down.data);
    assert_shape(&L->attn_norm_b, 16, 0);
    cv_model_free(m);
}

/* GPT-2: n_inner null is 4 * n_embd; c_attn (16, 48) in Conv1D layout
 * becomes wq, wk, wv (16, 16), each element (o, i) the stored (i, part * 16
 * + o); c_fc (16, 32) becomes w_up (32, 16); the bias of c_attn is split
 * likewise. */
static void test_gpt2_conv1d(void **state)
{
    cv_model_config cfg = legacy_config("GPT2LMHeadModel");
    cfg.intermediate_size = 4 * 16;
    fx_write_model(*state, &cfg, CV_DTYPE_F32, 1);
    fx_json_set(*state, "config.json", "n_inner", json_null());
    cv_model *m = load_ok(*state);
    const cv_model_config *c = cv_model_get_config(m);
    assert_string_equal(c->architecture, "GPT2LMHeadModel");
    assert_int_equal(c->intermediate_size, 4 * 16); /* n_inner null */
    assert_int_equal(c->pos_offset, 0);
    assert_int_equal(c->hidden_act, CV_ACT_GELU_TANH);
    assert_int_equal(c->max_position_embeddings, 64);
    cv_model_free(m);

    cfg.intermediate_size = 32;
    fx_write_model(*state, &cfg, CV_DTYPE_F32, 1);
    m = load_ok(*state);
    c = cv_model_get_config(m);
    const cv_model_weights *w = cv_model_get_weights(m);
    assert_shape(&w->pos_embed, 64, 16);
    const cv_layer_weights *L = &w->layers[1];
    const cv_tensor *qkv[3] = {&L->wq, &L->wk, &L->wv}, *bias[3] = {&L->bq, &L->bk, &L->bv};
    size_t tw = tensor_index(c, "transformer.h.1.attn.c_attn.weight");
    size_t tb = tensor_index(c, "transformer.h.1.attn.c_attn.bias");
    for (int p = 0; p < 3; p++) {
        assert_shape(qkv[p], 16, 16);
        assert_shape(bias[p], 16, 0);
        for (size_t o = 0; o < 16; o++) {
            assert_true(((const float *)bias[p]->data)[o] == fx_value(tb, (size_t)p * 16 + o));
            for (size_t i = 0; i < 16; i++)
                assert_true(((const float *)qkv[p]->data)[o * 16 + i] ==
                            fx_value(tw, i * 48 + (size_t)p * 16 + o));
        }
    }
    size_t tf = tensor_index(c, "transformer.h.1.mlp.c_fc.weight");
    assert_shape(&L->w_up, 32, 16);
    for (size_t o = 0; o < 32; o++)
        for (size_t i = 0; i < 16; i++)
            assert_true(((const float *)L->w_up.data)[o * 16 + i] == fx_value(tf, i * 32 + o));
    assert_shape(&L->w_down, 16, 32);
    assert_shape(&L->wo, 16, 16);
    cv_model_free(m);
}

/* Rewrites DIR/model.safetensors with the names of CFG's tensors less
 * PREFIX, as a checkpoint saved from the base model (OPTModel, GPT2Model)
 * names them. */
static void write_base_model_names(const char *dir, const cv_model_config *cfg, const char *prefix)
{
    cv_safetensors_entry *e;
    size_t n;
    cv_error err = {.msg = ""};
    if (cv_model_tensor_list(cfg, CV_DTYPE_F32, &e, &n, &err)) fail_msg("%s", err.msg);
    float *zeros = calloc(64 * 64, sizeof *zeros);
    assert_non_null(zeros);
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(prefix);
        if (strncmp(e[i].name, prefix, len) == 0)
            memmove((char *)e[i].name, e[i].name + len, strlen(e[i].name) - len + 1);
        assert_true(cv_tensor_numel(&e[i].tensor) <= 64 * 64);
        e[i].tensor.data = zeros;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (cv_safetensors_write(path, e, n, NULL, NULL, &err)) fail_msg("%s", err.msg);
    cv_model_free_tensor_list(e, n);
    free(zeros);
}

static void test_base_model_names(void **state)
{
    cv_model_config opt = legacy_config("OPTForCausalLM");
    fx_write_model(*state, &opt, CV_DTYPE_F32, 1);
    write_base_model_names(*state, &opt, "model.");
    cv_model *m = load_ok(*state);
    assert_shape(&cv_model_get_weights(m)->layers[1].w_down, 16, 32);
    cv_model_free(m);

    cv_model_config gpt2 = legacy_config("GPT2LMHeadModel");
    fx_write_model(*state, &gpt2, CV_DTYPE_F32, 1);
    write_base_model_names(*state, &gpt2, "transformer.");
    m = load_ok(*state);
    assert_shape(&cv_model_get_weights(m)->layers[1].wv, 16, 16);
    cv_model_free(m);
}

/* The writer and the reader agree on every structure flag and default. */
static void test_config_round_trip(void **state)
{
    const char *archs[] = {"OPTForCausalLM", "GPT2LMHeadModel"};
    for (int a = 0; a < 2; a++) {
        cv_model_config cfg = legacy_config(archs[a]);
        cfg.dtype = CV_DTYPE_F32;
        if (a == 1) cfg.rms_norm_eps = 1e-6f;
        fx_write_model(*state, &cfg, CV_DTYPE_F32, 1);
        cv_model *m = load_ok(*state);
        assert_memory_equal(cv_model_get_config(m), &cfg, sizeof cfg);
        cv_model_free(m);
    }
}

/* ---- bad config keys -------------------------------------------------- */

static void opt_dir(const char *dir)
{
    cv_model_config cfg = legacy_config("OPTForCausalLM");
    fx_write_model(dir, &cfg, CV_DTYPE_F32, 1);
}

static void gpt2_dir(const char *dir)
{
    cv_model_config cfg = legacy_config("GPT2LMHeadModel");
    fx_write_model(dir, &cfg, CV_DTYPE_F32, 1);
}

static void test_opt_bad_keys(void **state)
{
    const char *d = *state;
    opt_dir(d);
    fx_json_set(d, "config.json", "ffn_dim", NULL);
    fx_assert_load_error(d, "%s/config.json: missing key 'ffn_dim'", d);
    opt_dir(d);
    fx_json_set(d, "config.json", "num_attention_heads", json_integer(3));
    fx_assert_load_error(
        d, "%s/config.json: hidden_size 16 is not a multiple of num_attention_heads 3", d);
    opt_dir(d);
    fx_json_set(d, "config.json", "activation_function", json_string("gelu"));
    fx_assert_load_error(d,
                         "%s/config.json: unsupported activation_function 'gelu' (supported: "
                         "relu, gelu_new, gelu_pytorch_tanh)",
                         d);
    opt_dir(d);
    fx_json_set(d, "config.json", "activation_function", json_integer(1));
    fx_assert_load_error(d,
                         "%s/config.json: unsupported activation_function (not a string) "
                         "(supported: relu, gelu_new, gelu_pytorch_tanh)",
                         d);
    opt_dir(d);
    fx_json_set(d, "config.json", "layer_norm_elementwise_affine", json_false());
    fx_assert_load_error(d,
                         "%s/config.json: layer_norm_elementwise_affine false (LayerNorm without "
                         "weight and bias) is not supported",
                         d);
    opt_dir(d);
    fx_json_set(d, "config.json", "do_layer_norm_before", json_string("yes"));
    fx_assert_load_error(d, "%s/config.json: key 'do_layer_norm_before' must be true or false", d);
    opt_dir(d);
    fx_json_set(d, "config.json", "word_embed_proj_dim", json_integer(0));
    fx_assert_load_error(d, "%s/config.json: key 'word_embed_proj_dim' is 0, must be at least 1",
                         d);
    /* A post-norm config against a pre-norm checkpoint: no final
     * LayerNorm is read, but a projection that is not there is. */
    opt_dir(d);
    fx_json_set(d, "config.json", "word_embed_proj_dim", json_integer(8));
    fx_assert_load_error(d,
                         "%s/model.safetensors: tensor 'model.decoder.embed_tokens.weight' has "
                         "shape [32, 16], config.json implies [32, 8]",
                         d);
    opt_dir(d);
    fx_json_set(d, "config.json", "enable_bias", json_false());
    cv_model_free(load_ok(d)); /* the biases in the file are not read */
    opt_dir(d);
    cv_model_config cfg = legacy_config("OPTForCausalLM");
    cfg.linear_bias = false;
    fx_write_model(d, &cfg, CV_DTYPE_F32, 1);
    fx_json_set(d, "config.json", "enable_bias", json_true());
    fx_assert_load_error(
        d, "%s/model.safetensors: tensor 'model.decoder.layers.0.self_attn.q_proj.bias' missing",
        d);
}

static void test_gpt2_bad_keys(void **state)
{
    const char *d = *state;
    gpt2_dir(d);
    fx_json_set(d, "config.json", "n_embd", NULL);
    fx_assert_load_error(d, "%s/config.json: missing key 'n_embd'", d);
    gpt2_dir(d);
    fx_json_set(d, "config.json", "n_head", json_integer(5));
    fx_assert_load_error(d, "%s/config.json: n_embd 16 is not a multiple of n_head 5", d);
    gpt2_dir(d);
    fx_json_set(d, "config.json", "n_inner", json_string("64"));
    fx_assert_load_error(d, "%s/config.json: key 'n_inner' must be an integer", d);
    gpt2_dir(d);
    fx_json_set(d, "config.json", "layer_norm_epsilon", json_real(0.0));
    fx_assert_load_error(d, "%s/config.json: layer_norm_epsilon must be positive", d);
    gpt2_dir(d);
    fx_json_set(d, "config.json", "scale_attn_weights", json_false());
    fx_assert_load_error(
        d, "%s/config.json: scale_attn_weights false (unscaled attention) is not supported", d);
    gpt2_dir(d);
    fx_json_set(d, "config.json", "scale_attn_by_inverse_layer_idx", json_true());
    fx_assert_load_error(d, "%s/config.json: scale_attn_by_inverse_layer_idx true is not supported",
                         d);
    gpt2_dir(d);
    fx_json_set(d, "config.json", "n_positions", json_integer(32));
    fx_assert_load_error(d,
                         "%s/model.safetensors: tensor 'transformer.wpe.weight' has shape [64, "
                         "16], config.json implies [32, 16]",
                         d);
    gpt2_dir(d);
    fx_json_set(d, "config.json", "n_inner", json_integer(48));
    fx_assert_load_error(d,
                         "%s/model.safetensors: tensor 'transformer.h.0.mlp.c_fc.weight' has "
                         "shape [16, 32], config.json implies [16, 48]",
                         d);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, fx_setup_tmpdir, fx_teardown_tmpdir)
    const struct CMUnitTest tests[] = {
        T(test_opt_pre_norm), T(test_opt_post_norm_projected), T(test_opt_no_bias),
        T(test_gpt2_conv1d),  T(test_base_model_names),        T(test_config_round_trip),
        T(test_opt_bad_keys), T(test_gpt2_bad_keys),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}

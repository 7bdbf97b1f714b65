/* cv_model_write_config: the inverse of config.c, for tools and tests that
 * create model directories (the dummy-model tool, the loader's tests). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"

/* A float as the shortest decimal that reads back as the same float, so
 * 1e-5f is written "1e-05" and not "9.99999975e-06". */
static json_t *json_float(float x)
{
    char buf[32];
    for (int digits = 6; digits <= 9; digits++) {
        snprintf(buf, sizeof buf, "%.*g", digits, (double)x);
        if (strtof(buf, NULL) == x) break;
    }
    return json_real(strtod(buf, NULL));
}

static json_t *json_eos(const cv_model_config *cfg)
{
    if (cfg->n_eos_token_ids == 0) return json_null();
    if (cfg->n_eos_token_ids == 1) return json_integer(cfg->eos_token_ids[0]);
    json_t *list = json_array();
    for (int i = 0; list && i < cfg->n_eos_token_ids; i++)
        if (json_array_append_new(list, json_integer(cfg->eos_token_ids[i]))) {
            json_decref(list);
            return NULL;
        }
    return list;
}

static json_t *json_bos(const cv_model_config *cfg)
{
    return cfg->bos_token_id >= 0 ? json_integer(cfg->bos_token_id) : json_null();
}

static const char *const dtype_names[] = {"float32", "float16", "bfloat16"};

/* activation_function of OPTConfig and GPT2Config. */
static const char *legacy_act_name(cv_activation act)
{
    return act == CV_ACT_RELU ? "relu" : "gelu_new";
}

/* OPTConfig keys (config_legacy.c reads them back). */
static json_t *opt_config_json(const cv_model_config *cfg)
{
    return json_pack("{s:[s],s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:b,s:b,s:b,s:s,s:b,s:o,s:o,s:s}",
                     "architectures", cfg->architecture, "model_type", "opt", "hidden_size",
                     cfg->hidden_size, "ffn_dim", cfg->intermediate_size, "num_hidden_layers",
                     cfg->n_layers, "num_attention_heads", cfg->n_heads, "vocab_size",
                     cfg->vocab_size, "max_position_embeddings", cfg->max_position_embeddings,
                     "word_embed_proj_dim", cv_config_embed_dim(cfg), "do_layer_norm_before",
                     !cfg->post_norm, "_remove_final_layer_norm",
                     !cfg->post_norm && cfg->no_final_norm, "enable_bias", cfg->linear_bias,
                     "activation_function", legacy_act_name(cfg->hidden_act), "tie_word_embeddings",
                     cfg->tie_word_embeddings, "bos_token_id", json_bos(cfg), "eos_token_id",
                     json_eos(cfg), "torch_dtype", dtype_names[cfg->dtype]);
}

/* GPT2Config keys. */
static json_t *gpt2_config_json(const cv_model_config *cfg)
{
    return json_pack("{s:[s],s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:o,s:s,s:b,s:o,s:o,s:s}", "architectures",
                     cfg->architecture, "model_type", "gpt2", "n_embd", cfg->hidden_size, "n_layer",
                     cfg->n_layers, "n_head", cfg->n_heads, "n_inner", cfg->intermediate_size,
                     "vocab_size", cfg->vocab_size, "n_positions", cfg->max_position_embeddings,
                     "layer_norm_epsilon", json_float(cfg->rms_norm_eps), "activation_function",
                     legacy_act_name(cfg->hidden_act), "tie_word_embeddings",
                     cfg->tie_word_embeddings, "bos_token_id", json_bos(cfg), "eos_token_id",
                     json_eos(cfg), "torch_dtype", dtype_names[cfg->dtype]);
}

static json_t *config_json(const cv_model_config *cfg, const cv_arch *arch)
{
    if (arch->family == CV_FAMILY_OPT) return opt_config_json(cfg);
    if (arch->family == CV_FAMILY_GPT2) return gpt2_config_json(cfg);
    json_t *root = json_pack(
        "{s:[s],s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:o,s:o,s:s,s:b,s:o,s:o,s:s}", "architectures",
        cfg->architecture, "model_type", arch->model_type, "hidden_size", cfg->hidden_size,
        "intermediate_size", cfg->intermediate_size, "num_hidden_layers", cfg->n_layers,
        "num_attention_heads", cfg->n_heads, "num_key_value_heads", cfg->n_kv_heads, "head_dim",
        cfg->head_dim, "vocab_size", cfg->vocab_size, "max_position_embeddings",
        cfg->max_position_embeddings, "rms_norm_eps", json_float(cfg->rms_norm_eps), "rope_theta",
        json_float(cfg->rope_theta), "hidden_act",
        cfg->hidden_act == CV_ACT_SILU ? "silu" : "gelu_pytorch_tanh", "tie_word_embeddings",
        cfg->tie_word_embeddings, "bos_token_id", json_bos(cfg), "eos_token_id", json_eos(cfg),
        "torch_dtype", dtype_names[cfg->dtype]);
    if (!root) return NULL;
    int rc = 0;
    if (cfg->rope_type == CV_ROPE_LINEAR)
        rc = json_object_set_new(
            root, "rope_scaling",
            json_pack("{s:s,s:o}", "rope_type", "linear", "factor", json_float(cfg->rope_factor)));
    else if (cfg->rope_type == CV_ROPE_LLAMA3)
        rc = json_object_set_new(
            root, "rope_scaling",
            json_pack("{s:s,s:o,s:o,s:o,s:i}", "rope_type", "llama3", "factor",
                      json_float(cfg->rope_factor), "low_freq_factor",
                      json_float(cfg->rope_low_freq_factor), "high_freq_factor",
                      json_float(cfg->rope_high_freq_factor), "original_max_position_embeddings",
                      cfg->rope_original_max_position));
    /* null, not absent: a missing key means MistralConfig's 4096. */
    if (rc == 0 && cfg->sliding_window > 0)
        rc = json_object_set_new(root, "use_sliding_window", json_true()) ||
             json_object_set_new(root, "sliding_window", json_integer(cfg->sliding_window));
    else if (rc == 0)
        rc = json_object_set_new(root, "sliding_window", json_null());
    if (rc) {
        json_decref(root);
        return NULL;
    }
    return root;
}

static int write_json(const char *dir, const char *file, json_t *root, cv_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    if (!root) return cv_errorf(err, "%s: out of memory", path);
    FILE *fp = fopen(path, "w");
    if (!fp) {
        json_decref(root);
        return cv_errorf(err, "%s: cannot create: %s", path, strerror(errno));
    }
    int rc = json_dumpf(root, fp, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
    rc |= fputc('\n', fp) == EOF;
    rc |= fclose(fp);
    json_decref(root);
    if (rc) return cv_errorf(err, "%s: write failed: %s", path, strerror(errno));
    return 0;
}

int cv_model_write_config(const char *dir, const cv_model_config *cfg, cv_error *err)
{
    const cv_arch *arch = cv_arch_find(cfg->architecture);
    if (!arch) return cv_errorf(err, "%s: unknown architecture '%s'", dir, cfg->architecture);
    if (write_json(dir, "config.json", config_json(cfg, arch), err)) return -1;
    json_t *gen =
        json_pack("{s:o,s:o}", "bos_token_id", json_bos(cfg), "eos_token_id", json_eos(cfg));
    return write_json(dir, "generation_config.json", gen, err);
}

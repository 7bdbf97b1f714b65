/* config.json and generation_config.json into cv_model_config. Both the
 * transformers 4.x spellings (torch_dtype, rope_scaling with "type") and the
 * 5.x ones (dtype, rope_parameters with "rope_type" and rope_theta inside)
 * are accepted. Keys a config may omit take the defaults of the HF config
 * class of the architecture (see arch.c). OPTConfig and GPT2Config name
 * their keys differently: config_legacy.c reads those. */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "model/model_internal.h"

/* Integer KEY of OBJ into *out (model_internal.h); values must be >= MIN. */
int cv_cfg_int(json_t *obj, const char *key, bool required, int min, int *out, const char *path,
               cv_error *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required) return cv_errorf(err, "%s: missing key '%s'", path, key);
        return 0;
    }
    if (!json_is_integer(v)) return cv_errorf(err, "%s: key '%s' must be an integer", path, key);
    json_int_t x = json_integer_value(v);
    if (x < min || x > INT_MAX)
        return cv_errorf(err, "%s: key '%s' is %lld, must be at least %d", path, key, (long long)x,
                         min);
    *out = (int)x;
    return 0;
}

/* Number KEY of OBJ (integer or real) into *out; like cv_cfg_int. */
int cv_cfg_num(json_t *obj, const char *key, bool required, float *out, const char *path,
               cv_error *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required) return cv_errorf(err, "%s: missing key '%s'", path, key);
        return 0;
    }
    if (!json_is_number(v)) return cv_errorf(err, "%s: key '%s' must be a number", path, key);
    *out = (float)json_number_value(v);
    return 0;
}

int cv_cfg_eos(json_t *obj, cv_model_config *cfg, const char *path, cv_error *err)
{
    json_t *v = json_object_get(obj, "eos_token_id");
    if (!v) return 0;
    if (json_is_null(v)) {
        cfg->n_eos_token_ids = 0;
        return 0;
    }
    if (json_is_integer(v))
        v = json_pack("[O]", v);
    else if (json_is_array(v))
        json_incref(v);
    else
        return cv_errorf(err, "%s: eos_token_id must be an integer or a list of integers", path);
    if (!v) return cv_errorf(err, "%s: out of memory", path);
    int rc = 0;
    size_t n = json_array_size(v);
    if (n > CV_MAX_EOS_IDS)
        rc = cv_errorf(err, "%s: eos_token_id lists %zu ids, at most %d supported", path, n,
                       CV_MAX_EOS_IDS);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        json_t *id = json_array_get(v, i);
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) > INT_MAX)
            rc = cv_errorf(err, "%s: eos_token_id[%zu] is not a token id", path, i);
        else
            cfg->eos_token_ids[i] = (int)json_integer_value(id);
    }
    if (rc == 0) cfg->n_eos_token_ids = (int)n;
    json_decref(v);
    return rc;
}

/* rope_theta at top level (4.x) or inside rope_parameters (5.x); scaling in
 * rope_scaling (4.x) or rope_parameters (5.x), typed by "rope_type" or the
 * older "type". */
static int cfg_rope(json_t *root, cv_model_config *cfg, const char *path, cv_error *err)
{
    json_t *params = json_object_get(root, "rope_parameters");
    if (params && !json_is_null(params) && !json_is_object(params))
        return cv_errorf(err, "%s: rope_parameters must be an object", path);
    if (cv_cfg_num(root, "rope_theta", false, &cfg->rope_theta, path, err)) return -1;
    if (json_is_object(params) &&
        cv_cfg_num(params, "rope_theta", false, &cfg->rope_theta, path, err))
        return -1;
    if (!(cfg->rope_theta > 0)) return cv_errorf(err, "%s: rope_theta must be positive", path);

    json_t *scaling = json_object_get(root, "rope_scaling");
    if (!scaling || json_is_null(scaling)) scaling = json_is_object(params) ? params : NULL;
    if (!scaling) return 0;
    if (!json_is_object(scaling)) return cv_errorf(err, "%s: rope_scaling must be an object", path);
    json_t *type = json_object_get(scaling, "rope_type");
    if (!type) type = json_object_get(scaling, "type");
    if (!type) return 0;
    const char *name = json_string_value(type);
    if (!name) return cv_errorf(err, "%s: rope type must be a string", path);
    if (strcmp(name, "default") == 0) return 0;
    if (cv_cfg_num(scaling, "factor", true, &cfg->rope_factor, path, err)) return -1;
    if (!(cfg->rope_factor > 0)) return cv_errorf(err, "%s: rope factor must be positive", path);
    if (strcmp(name, "linear") == 0) {
        cfg->rope_type = CV_ROPE_LINEAR;
        return 0;
    }
    if (strcmp(name, "llama3") == 0) {
        cfg->rope_type = CV_ROPE_LLAMA3;
        if (cv_cfg_num(scaling, "low_freq_factor", true, &cfg->rope_low_freq_factor, path, err) ||
            cv_cfg_num(scaling, "high_freq_factor", true, &cfg->rope_high_freq_factor, path, err) ||
            cv_cfg_int(scaling, "original_max_position_embeddings", true, 1,
                       &cfg->rope_original_max_position, path, err))
            return -1;
        if (!(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor))
            return cv_errorf(err, "%s: llama3 rope needs high_freq_factor > low_freq_factor", path);
        return 0;
    }
    return cv_errorf(err, "%s: unsupported rope type '%s' (supported: default, linear, llama3)",
                     path, name);
}

static int cfg_act(json_t *root, cv_model_config *cfg, const char *path, cv_error *err)
{
    json_t *v = json_object_get(root, "hidden_act");
    if (!v) return 0; /* silu, every supported config class's default */
    const char *act = json_string_value(v);
    if (act && (strcmp(act, "silu") == 0 || strcmp(act, "swish") == 0))
        cfg->hidden_act = CV_ACT_SILU;
    else if (act && strcmp(act, "gelu_pytorch_tanh") == 0)
        cfg->hidden_act = CV_ACT_GELU_TANH;
    else
        return cv_errorf(err,
                         "%s: unsupported hidden_act %s%s%s (supported: silu, "
                         "gelu_pytorch_tanh)",
                         path, act ? "'" : "", act ? act : "(not a string)", act ? "'" : "");
    return 0;
}

int cv_cfg_bool(json_t *root, const char *key, bool *out, const char *path, cv_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return cv_errorf(err, "%s: key '%s' must be true or false", path, key);
    *out = json_is_true(v);
    return 0;
}

/* Shapes: head_dim, GQA grouping and the flags the tensor table cannot
 * express (biases the backend has no slot for). */
static int cfg_shapes(json_t *root, const cv_arch *arch, cv_model_config *cfg, const char *path,
                      cv_error *err)
{
    cfg->n_kv_heads = cfg->n_heads;
    if (cv_cfg_int(root, "num_key_value_heads", false, 1, &cfg->n_kv_heads, path, err)) return -1;
    if (cfg->n_heads % cfg->n_kv_heads != 0)
        return cv_errorf(err,
                         "%s: num_attention_heads %d is not a multiple of "
                         "num_key_value_heads %d",
                         path, cfg->n_heads, cfg->n_kv_heads);
    cfg->head_dim = 0;
    if (cv_cfg_int(root, "head_dim", false, 1, &cfg->head_dim, path, err)) return -1;
    if (cfg->head_dim == 0) {
        if (cfg->hidden_size % cfg->n_heads != 0)
            return cv_errorf(err,
                             "%s: hidden_size %d is not a multiple of num_attention_heads "
                             "%d and head_dim is not given",
                             path, cfg->hidden_size, cfg->n_heads);
        cfg->head_dim = cfg->hidden_size / cfg->n_heads;
    }
    if (cfg->head_dim % 2 != 0)
        return cv_errorf(err, "%s: head_dim %d must be even for rotary embeddings", path,
                         cfg->head_dim);
    bool attention_bias = false, mlp_bias = false, use_sliding = true;
    if (cv_cfg_bool(root, "attention_bias", &attention_bias, path, err) ||
        cv_cfg_bool(root, "mlp_bias", &mlp_bias, path, err) ||
        cv_cfg_bool(root, "use_sliding_window", &use_sliding, path, err))
        return -1;
    if (attention_bias)
        return cv_errorf(err, "%s: attention_bias true (an o_proj bias) is not supported", path);
    if (mlp_bias) return cv_errorf(err, "%s: mlp_bias true is not supported", path);
    /* A missing sliding_window takes the class default (MistralConfig's
     * 4096); null or use_sliding_window false means full attention. */
    cfg->sliding_window = arch->default_sliding_window;
    json_t *window = json_object_get(root, "sliding_window");
    if (!use_sliding || (window && json_is_null(window)))
        cfg->sliding_window = 0;
    else if (cv_cfg_int(root, "sliding_window", false, 1, &cfg->sliding_window, path, err))
        return -1;
    return 0;
}

static int cfg_parse(json_t *root, const cv_arch *arch, cv_model_config *cfg, const char *path,
                     cv_error *err)
{
    cfg->tie_word_embeddings = arch->default_tie;
    cfg->max_position_embeddings = arch->default_max_position;
    cfg->rms_norm_eps = arch->default_rms_norm_eps;
    cfg->rope_theta = arch->default_rope_theta;
    cfg->bos_token_id = arch->default_bos;
    cfg->n_eos_token_ids = arch->default_eos >= 0 ? 1 : 0;
    cfg->eos_token_ids[0] = arch->default_eos;
    if (arch->family == CV_FAMILY_OPT) return cv_config_parse_opt(root, cfg, path, err);
    if (arch->family == CV_FAMILY_GPT2) return cv_config_parse_gpt2(root, cfg, path, err);
    if (cv_cfg_int(root, "hidden_size", true, 1, &cfg->hidden_size, path, err) ||
        cv_cfg_int(root, "intermediate_size", true, 1, &cfg->intermediate_size, path, err) ||
        cv_cfg_int(root, "num_hidden_layers", true, 1, &cfg->n_layers, path, err) ||
        cv_cfg_int(root, "num_attention_heads", true, 1, &cfg->n_heads, path, err) ||
        cv_cfg_int(root, "vocab_size", true, 1, &cfg->vocab_size, path, err) ||
        cv_cfg_int(root, "max_position_embeddings", false, 1, &cfg->max_position_embeddings, path,
                   err) ||
        cv_cfg_num(root, "rms_norm_eps", false, &cfg->rms_norm_eps, path, err) ||
        cv_cfg_bool(root, "tie_word_embeddings", &cfg->tie_word_embeddings, path, err) ||
        cv_cfg_int(root, "bos_token_id", false, 0, &cfg->bos_token_id, path, err) ||
        cv_cfg_eos(root, cfg, path, err) || cfg_shapes(root, arch, cfg, path, err) ||
        cfg_rope(root, cfg, path, err) || cfg_act(root, cfg, path, err))
        return -1;
    if (!(cfg->rms_norm_eps > 0)) return cv_errorf(err, "%s: rms_norm_eps must be positive", path);
    return 0;
}

/* generation_config.json is optional; its token ids win over config.json's
 * because that is what HF generate() uses. */
static int cfg_generation(const char *dir, cv_model_config *cfg, cv_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    FILE *fp = fopen(path, "rb");
    if (!fp) return 0;
    fclose(fp);
    json_t *root = cv_json_load(path, err);
    if (!root) return -1;
    int rc = 0;
    if (!json_is_object(root))
        rc = cv_errorf(err, "%s: not a JSON object", path);
    else if (cv_cfg_int(root, "bos_token_id", false, 0, &cfg->bos_token_id, path, err) ||
             cv_cfg_eos(root, cfg, path, err))
        rc = -1;
    json_decref(root);
    return rc;
}

int cv_config_load(const char *dir, cv_model_config *cfg, const cv_arch **arch, cv_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    memset(cfg, 0, sizeof *cfg);
    json_t *root = cv_json_load(path, err);
    if (!root) return -1;
    int rc = -1;
    json_t *archs = json_object_get(root, "architectures");
    const char *name = json_string_value(json_array_get(archs, 0));
    if (!json_is_object(root)) {
        cv_errorf(err, "%s: not a JSON object", path);
    } else if (!name) {
        cv_errorf(err, "%s: missing key 'architectures' (a list naming the model class)", path);
    } else if (!(*arch = cv_arch_find(name))) {
        char names[256];
        cv_arch_names(names, sizeof names);
        cv_errorf(err, "%s: unknown architecture '%s' (supported: %s)", path, name, names);
    } else {
        snprintf(cfg->architecture, sizeof cfg->architecture, "%s", name);
        rc = cfg_parse(root, *arch, cfg, path, err);
    }
    json_decref(root);
    if (rc == 0) rc = cfg_generation(dir, cfg, err);
    return rc;
}

/* config.json of the two oldest families vLLM serves, whose HF config
 * classes predate the Llama key names: OPTConfig (ffn_dim,
 * word_embed_proj_dim, do_layer_norm_before, ...) and GPT2Config (n_embd,
 * n_layer, n_head, n_inner, n_positions, layer_norm_epsilon). Both describe
 * LayerNorm models with learned positions, a non-gated MLP and biases on
 * every projection; keys a config may omit take the HF class's defaults. */
#include <limits.h>
#include <string.h>

#include "model/model_internal.h"

/* activation_function: the names HF's ACT2FN maps to a function cvllm has. */
static int legacy_act(json_t *root, cv_model_config *cfg, const char *path, cv_error *err)
{
    json_t *v = json_object_get(root, "activation_function");
    if (!v || json_is_null(v)) return 0; /* the class default, set by the caller */
    const char *act = json_string_value(v);
    if (act && strcmp(act, "relu") == 0)
        cfg->hidden_act = CV_ACT_RELU;
    else if (act && (strcmp(act, "gelu_new") == 0 || strcmp(act, "gelu_pytorch_tanh") == 0))
        cfg->hidden_act = CV_ACT_GELU_TANH;
    else
        return cv_errorf(err,
                         "%s: unsupported activation_function %s%s%s (supported: relu, gelu_new, "
                         "gelu_pytorch_tanh)",
                         path, act ? "'" : "", act ? act : "(not a string)", act ? "'" : "");
    return 0;
}

/* Full multi-head attention with head_dim = hidden / heads, as both
 * classes compute it. */
static int legacy_heads(cv_model_config *cfg, const char *hidden_key, const char *heads_key,
                        const char *path, cv_error *err)
{
    if (cfg->hidden_size % cfg->n_heads != 0)
        return cv_errorf(err, "%s: %s %d is not a multiple of %s %d", path, hidden_key,
                         cfg->hidden_size, heads_key, cfg->n_heads);
    cfg->n_kv_heads = cfg->n_heads;
    cfg->head_dim = cfg->hidden_size / cfg->n_heads;
    return 0;
}

/* The structure OPT and GPT-2 share. */
static void legacy_structure(cv_model_config *cfg)
{
    cfg->norm_type = CV_NORM_LAYER;
    cfg->pos_type = CV_POS_LEARNED;
    cfg->plain_mlp = true;
    cfg->linear_bias = true;
}

int cv_config_parse_opt(json_t *root, cv_model_config *cfg, const char *path, cv_error *err)
{
    legacy_structure(cfg);
    cfg->pos_offset = 2; /* OPTLearnedPositionalEmbedding's offset */
    cfg->hidden_act = CV_ACT_RELU;
    bool pre_norm = true, remove_final = false, affine = true;
    int proj = 0;
    if (cv_cfg_int(root, "hidden_size", true, 1, &cfg->hidden_size, path, err) ||
        cv_cfg_int(root, "ffn_dim", true, 1, &cfg->intermediate_size, path, err) ||
        cv_cfg_int(root, "num_hidden_layers", true, 1, &cfg->n_layers, path, err) ||
        cv_cfg_int(root, "num_attention_heads", true, 1, &cfg->n_heads, path, err) ||
        cv_cfg_int(root, "vocab_size", true, 1, &cfg->vocab_size, path, err) ||
        cv_cfg_int(root, "max_position_embeddings", false, 1, &cfg->max_position_embeddings, path,
                   err) ||
        cv_cfg_int(root, "word_embed_proj_dim", false, 1, &proj, path, err) ||
        cv_cfg_bool(root, "do_layer_norm_before", &pre_norm, path, err) ||
        cv_cfg_bool(root, "_remove_final_layer_norm", &remove_final, path, err) ||
        cv_cfg_bool(root, "enable_bias", &cfg->linear_bias, path, err) ||
        cv_cfg_bool(root, "layer_norm_elementwise_affine", &affine, path, err) ||
        cv_cfg_bool(root, "tie_word_embeddings", &cfg->tie_word_embeddings, path, err) ||
        cv_cfg_int(root, "bos_token_id", false, 0, &cfg->bos_token_id, path, err) ||
        cv_cfg_eos(root, cfg, path, err) || legacy_act(root, cfg, path, err) ||
        legacy_heads(cfg, "hidden_size", "num_attention_heads", path, err))
        return -1;
    if (!affine)
        return cv_errorf(err,
                         "%s: layer_norm_elementwise_affine false (LayerNorm without weight and "
                         "bias) is not supported",
                         path);
    /* OPTDecoder: project_in / project_out exist when the widths differ,
     * the final LayerNorm only for pre-norm models. */
    cfg->proj_dim = proj != 0 && proj != cfg->hidden_size ? proj : 0;
    cfg->post_norm = !pre_norm;
    cfg->no_final_norm = !pre_norm || remove_final;
    return 0;
}

int cv_config_parse_gpt2(json_t *root, cv_model_config *cfg, const char *path, cv_error *err)
{
    legacy_structure(cfg);
    cfg->hidden_act = CV_ACT_GELU_TANH; /* gelu_new */
    int inner = 0;
    bool scale = true, scale_by_layer = false;
    if (cv_cfg_int(root, "n_embd", true, 1, &cfg->hidden_size, path, err) ||
        cv_cfg_int(root, "n_layer", true, 1, &cfg->n_layers, path, err) ||
        cv_cfg_int(root, "n_head", true, 1, &cfg->n_heads, path, err) ||
        cv_cfg_int(root, "vocab_size", true, 1, &cfg->vocab_size, path, err) ||
        cv_cfg_int(root, "n_positions", false, 1, &cfg->max_position_embeddings, path, err) ||
        cv_cfg_int(root, "n_inner", false, 1, &inner, path, err) ||
        cv_cfg_num(root, "layer_norm_epsilon", false, &cfg->rms_norm_eps, path, err) ||
        cv_cfg_bool(root, "scale_attn_weights", &scale, path, err) ||
        cv_cfg_bool(root, "scale_attn_by_inverse_layer_idx", &scale_by_layer, path, err) ||
        cv_cfg_bool(root, "tie_word_embeddings", &cfg->tie_word_embeddings, path, err) ||
        cv_cfg_int(root, "bos_token_id", false, 0, &cfg->bos_token_id, path, err) ||
        cv_cfg_eos(root, cfg, path, err) || legacy_act(root, cfg, path, err) ||
        legacy_heads(cfg, "n_embd", "n_head", path, err))
        return -1;
    if (!scale)
        return cv_errorf(err, "%s: scale_attn_weights false (unscaled attention) is not supported",
                         path);
    if (scale_by_layer)
        return cv_errorf(err, "%s: scale_attn_by_inverse_layer_idx true is not supported", path);
    if (!(cfg->rms_norm_eps > 0))
        return cv_errorf(err, "%s: layer_norm_epsilon must be positive", path);
    /* GPT2MLP: n_inner null means 4 * n_embd. */
    if (!inner && cfg->hidden_size > INT_MAX / 4)
        return cv_errorf(err, "%s: n_embd %d is too large", path, cfg->hidden_size);
    cfg->intermediate_size = inner ? inner : 4 * cfg->hidden_size;
    return 0;
}

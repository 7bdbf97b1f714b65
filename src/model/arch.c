/* Architectures as data. Each row of cv_archs says how a HuggingFace
 * architecture stores its weights (tensor names and which optional tensors
 * exist) and which config defaults its HF config class has. Adding an
 * architecture whose layers are Llama-shaped is one new row; one with other
 * tensor names adds a tensor table next to llama_layer_tensors (as OPT and
 * GPT-2 do). */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "model/model_internal.h"

#define G(field) offsetof(cv_model_weights, field)
#define L(field) offsetof(cv_layer_weights, field)

/* Tensors outside the layers, shared by every Llama-family model. */
static const cv_tensor_spec llama_global_tensors[] = {
    {.offset = G(embed),
     .pattern = "model.embed_tokens.weight",
     .need = CV_NEED_ALWAYS,
     .n_dims = 2,
     .dims = {CV_DIM_VOCAB, CV_DIM_HIDDEN}},
    {.offset = G(final_norm),
     .pattern = "model.norm.weight",
     .need = CV_NEED_ALWAYS,
     .n_dims = 1,
     .dims = {CV_DIM_HIDDEN}},
    {.offset = G(lm_head),
     .pattern = "lm_head.weight",
     .need = CV_NEED_UNTIED,
     .n_dims = 2,
     .dims = {CV_DIM_VOCAB, CV_DIM_HIDDEN}},
};

/* Per-layer tensors of LlamaDecoderLayer and its descendants (Mistral,
 * Qwen2, Qwen3): the optional rows appear only where the arch says so. */
static const cv_tensor_spec llama_layer_tensors[] = {
    {.offset = L(attn_norm),
     .pattern = "model.layers.%d.input_layernorm.weight",
     .need = CV_NEED_ALWAYS,
     .n_dims = 1,
     .dims = {CV_DIM_HIDDEN}},
    {.offset = L(wq),
     .pattern = "model.layers.%d.self_attn.q_proj.weight",
     .need = CV_NEED_ALWAYS,
     .n_dims = 2,
     .dims = {CV_DIM_Q, CV_DIM_HIDDEN}},
    {.offset = L(wk),
     .pattern = "model.layers.%d.self_attn.k_proj.weight",
     .need = CV_NEED_ALWAYS,
     .n_dims = 2,
     .dims = {CV_DIM_KV, CV_DIM_HIDDEN}},
    {.offset = L(wv),
     .pattern = "model.layers.%d.self_attn.v_proj.weight",
     .need = CV_NEED_ALWAYS,
     .n_dims = 2,
     .dims = {CV_DIM_KV, CV_DIM_HIDDEN}},
    {.offset = L(bq),
     .pattern = "model.layers.%d.self_attn.q_proj.bias",
     .need = CV_NEED_QKV_BIAS,
     .n_dims = 1,
     .dims = {CV_DIM_Q}},
    {.offset = L(bk),
     .pattern = "model.layers.%d.self_attn.k_proj.bias",
     .need = CV_NEED_QKV_BIAS,
     .n_dims = 1,
     .dims = {CV_DIM_KV}},
    {.offset = L(bv),
     .pattern = "model.layers.%d.self_attn.v_proj.bias",
     .need = CV_NEED_QKV_BIAS,
     .n_dims = 1,
     .dims = {CV_DIM_KV}},
    {.offset = L(q_norm),
     .pattern = "model.layers.%d.self_attn.q_norm.weight",
     .need = CV_NEED_QK_NORM,
     .n_dims = 1,
     .dims = {CV_DIM_HEAD}},
    {.offset = L(k_norm),
     .pattern = "model.layers.%d.self_attn.k_norm.weight",
     .need = CV_NEED_QK_NORM,
     .n_dims = 1,
     .dims = {CV_DIM_HEAD}},
    {.offset = L(wo),
     .pattern = "model.layers.%d.self_attn.o_proj.weight",
     .need = CV_NEED_ALWAYS,
     .n_dims = 2,
     .dims = {CV_DIM_HIDDEN, CV_DIM_Q}},
    {.offset = L(ffn_norm),
     .pattern = "model.layers.%d.post_attention_layernorm.weight",
     .need = CV_NEED_ALWAYS,
     .n_dims = 1,
     .dims = {CV_DIM_HIDDEN}},
    {.offset = L(w_gate),
     .pattern = "model.layers.%d.mlp.gate_proj.weight",
     .need = CV_NEED_ALWAYS,
     .n_dims = 2,
     .dims = {CV_DIM_INTER, CV_DIM_HIDDEN}},
    {.offset = L(w_up),
     .pattern = "model.layers.%d.mlp.up_proj.weight",
     .need = CV_NEED_ALWAYS,
     .n_dims = 2,
     .dims = {CV_DIM_INTER, CV_DIM_HIDDEN}},
    {.offset = L(w_down),
     .pattern = "model.layers.%d.mlp.down_proj.weight",
     .need = CV_NEED_ALWAYS,
     .n_dims = 2,
     .dims = {CV_DIM_HIDDEN, CV_DIM_INTER}},
};

/* OPTForCausalLM (transformers' modeling_opt): LayerNorms with biases,
 * learned positions, fc1/fc2 MLP, biases per enable_bias; opt-350m adds
 * project_in/out and, being post-norm, has no final LayerNorm. */
static const cv_tensor_spec opt_global_tensors[] = {
    {.offset = G(embed),
     .pattern = "model.decoder.embed_tokens.weight",
     .need = CV_NEED_ALWAYS,
     .n_dims = 2,
     .dims = {CV_DIM_VOCAB, CV_DIM_EMBED}},
    {.offset = G(pos_embed),
     .pattern = "model.decoder.embed_positions.weight",
     .need = CV_NEED_ALWAYS,
     .n_dims = 2,
     .dims = {CV_DIM_POS, CV_DIM_HIDDEN}},
    {.offset = G(project_in),
     .pattern = "model.decoder.project_in.weight",
     .need = CV_NEED_PROJ,
     .n_dims = 2,
     .dims = {CV_DIM_HIDDEN, CV_DIM_PROJ}},
    {.offset = G(final_norm),
     .pattern = "model.decoder.final_layer_norm.weight",
     .need = CV_NEED_FINAL_NORM,
     .n_dims = 1,
     .dims = {CV_DIM_HIDDEN}},
    {.offset = G(final_norm_b),
     .pattern = "model.decoder.final_layer_norm.bias",
     .need = CV_NEED_FINAL_NORM,
     .n_dims = 1,
     .dims = {CV_DIM_HIDDEN}},
    {.offset = G(project_out),
     .pattern = "model.decoder.project_out.weight",
     .need = CV_NEED_PROJ,
     .n_dims = 2,
     .dims = {CV_DIM_PROJ, CV_DIM_HIDDEN}},
    {.offset = G(lm_head),
     .pattern = "lm_head.weight",
     .need = CV_NEED_UNTIED,
     .n_dims = 2,
     .dims = {CV_DIM_VOCAB, CV_DIM_EMBED}},
};

/* A layer tensor: field F, name suffix NAME, need ND, stored shape (D0, D1)
 * of N dims. */
/* clang-format off */
#define OPT_LAYER(f, name, nd, n, d0, d1)                                                          \
    {.offset = L(f), .pattern = "model.decoder.layers.%d." name, .need = nd, .n_dims = n,          \
     .dims = {d0, d1}}
/* clang-format on */
static const cv_tensor_spec opt_layer_tensors[] = {
    OPT_LAYER(attn_norm, "self_attn_layer_norm.weight", CV_NEED_ALWAYS, 1, CV_DIM_HIDDEN, 0),
    OPT_LAYER(attn_norm_b, "self_attn_layer_norm.bias", CV_NEED_ALWAYS, 1, CV_DIM_HIDDEN, 0),
    OPT_LAYER(wq, "self_attn.q_proj.weight", CV_NEED_ALWAYS, 2, CV_DIM_Q, CV_DIM_HIDDEN),
    OPT_LAYER(bq, "self_attn.q_proj.bias", CV_NEED_BIAS, 1, CV_DIM_Q, 0),
    OPT_LAYER(wk, "self_attn.k_proj.weight", CV_NEED_ALWAYS, 2, CV_DIM_KV, CV_DIM_HIDDEN),
    OPT_LAYER(bk, "self_attn.k_proj.bias", CV_NEED_BIAS, 1, CV_DIM_KV, 0),
    OPT_LAYER(wv, "self_attn.v_proj.weight", CV_NEED_ALWAYS, 2, CV_DIM_KV, CV_DIM_HIDDEN),
    OPT_LAYER(bv, "self_attn.v_proj.bias", CV_NEED_BIAS, 1, CV_DIM_KV, 0),
    OPT_LAYER(wo, "self_attn.out_proj.weight", CV_NEED_ALWAYS, 2, CV_DIM_HIDDEN, CV_DIM_Q),
    OPT_LAYER(bo, "self_attn.out_proj.bias", CV_NEED_BIAS, 1, CV_DIM_HIDDEN, 0),
    OPT_LAYER(ffn_norm, "final_layer_norm.weight", CV_NEED_ALWAYS, 1, CV_DIM_HIDDEN, 0),
    OPT_LAYER(ffn_norm_b, "final_layer_norm.bias", CV_NEED_ALWAYS, 1, CV_DIM_HIDDEN, 0),
    OPT_LAYER(w_up, "fc1.weight", CV_NEED_ALWAYS, 2, CV_DIM_INTER, CV_DIM_HIDDEN),
    OPT_LAYER(b_up, "fc1.bias", CV_NEED_BIAS, 1, CV_DIM_INTER, 0),
    OPT_LAYER(w_down, "fc2.weight", CV_NEED_ALWAYS, 2, CV_DIM_HIDDEN, CV_DIM_INTER),
    OPT_LAYER(b_down, "fc2.bias", CV_NEED_BIAS, 1, CV_DIM_HIDDEN, 0),
};
#undef OPT_LAYER

/* GPT2LMHeadModel (modeling_gpt2): Conv1D projections stored (in, out),
 * q, k and v fused in c_attn, all with biases. */
static const cv_tensor_spec gpt2_global_tensors[] = {
    {.offset = G(embed),
     .pattern = "transformer.wte.weight",
     .need = CV_NEED_ALWAYS,
     .n_dims = 2,
     .dims = {CV_DIM_VOCAB, CV_DIM_HIDDEN}},
    {.offset = G(pos_embed),
     .pattern = "transformer.wpe.weight",
     .need = CV_NEED_ALWAYS,
     .n_dims = 2,
     .dims = {CV_DIM_POS, CV_DIM_HIDDEN}},
    {.offset = G(final_norm),
     .pattern = "transformer.ln_f.weight",
     .need = CV_NEED_ALWAYS,
     .n_dims = 1,
     .dims = {CV_DIM_HIDDEN}},
    {.offset = G(final_norm_b),
     .pattern = "transformer.ln_f.bias",
     .need = CV_NEED_ALWAYS,
     .n_dims = 1,
     .dims = {CV_DIM_HIDDEN}},
    {.offset = G(lm_head),
     .pattern = "lm_head.weight",
     .need = CV_NEED_UNTIED,
     .n_dims = 2,
     .dims = {CV_DIM_VOCAB, CV_DIM_HIDDEN}},
};

/* Stored shape (D0, D1) of N dims; C1D: Conv1D layout; part P of NP. */
#define GPT2_LAYER(f, name, n, d0, d1, c1d, p, np)                                                 \
    {                                                                                              \
        .offset = L(f), .pattern = "transformer.h.%d." name, .need = CV_NEED_ALWAYS, .n_dims = n,  \
        .dims = {d0, d1}, .conv1d = c1d, .part = p, .n_parts = np                                  \
    }
static const cv_tensor_spec gpt2_layer_tensors[] = {
    GPT2_LAYER(attn_norm, "ln_1.weight", 1, CV_DIM_HIDDEN, 0, false, 0, 0),
    GPT2_LAYER(attn_norm_b, "ln_1.bias", 1, CV_DIM_HIDDEN, 0, false, 0, 0),
    GPT2_LAYER(wq, "attn.c_attn.weight", 2, CV_DIM_HIDDEN, CV_DIM_QKV, true, 0, 3),
    GPT2_LAYER(wk, "attn.c_attn.weight", 2, CV_DIM_HIDDEN, CV_DIM_QKV, true, 1, 3),
    GPT2_LAYER(wv, "attn.c_attn.weight", 2, CV_DIM_HIDDEN, CV_DIM_QKV, true, 2, 3),
    GPT2_LAYER(bq, "attn.c_attn.bias", 1, CV_DIM_QKV, 0, false, 0, 3),
    GPT2_LAYER(bk, "attn.c_attn.bias", 1, CV_DIM_QKV, 0, false, 1, 3),
    GPT2_LAYER(bv, "attn.c_attn.bias", 1, CV_DIM_QKV, 0, false, 2, 3),
    GPT2_LAYER(wo, "attn.c_proj.weight", 2, CV_DIM_Q, CV_DIM_HIDDEN, true, 0, 0),
    GPT2_LAYER(bo, "attn.c_proj.bias", 1, CV_DIM_HIDDEN, 0, false, 0, 0),
    GPT2_LAYER(ffn_norm, "ln_2.weight", 1, CV_DIM_HIDDEN, 0, false, 0, 0),
    GPT2_LAYER(ffn_norm_b, "ln_2.bias", 1, CV_DIM_HIDDEN, 0, false, 0, 0),
    GPT2_LAYER(w_up, "mlp.c_fc.weight", 2, CV_DIM_HIDDEN, CV_DIM_INTER, true, 0, 0),
    GPT2_LAYER(b_up, "mlp.c_fc.bias", 1, CV_DIM_INTER, 0, false, 0, 0),
    GPT2_LAYER(w_down, "mlp.c_proj.weight", 2, CV_DIM_INTER, CV_DIM_HIDDEN, true, 0, 0),
    GPT2_LAYER(b_down, "mlp.c_proj.bias", 1, CV_DIM_HIDDEN, 0, false, 0, 0),
};
#undef GPT2_LAYER

#define TENSORS(prefix)                                                                            \
    prefix##_global_tensors, sizeof prefix##_global_tensors / sizeof prefix##_global_tensors[0],   \
        prefix##_layer_tensors, sizeof prefix##_layer_tensors / sizeof prefix##_layer_tensors[0]

/* Defaults are those of transformers' LlamaConfig, MistralConfig,
 * Qwen2Config and Qwen3Config (tie_word_embeddings is false in all four;
 * Qwen checkpoints that tie say so in config.json). */
static const cv_arch cv_archs[] = {
    /* name, model_type, tensors, qkv_bias, qk_norm, then defaults: tie,
     * max_position, rms_norm_eps, rope_theta, bos, eos, sliding_window;
     * family and base_prefix (none for the Llama family). Checked against transformers 5.17
     * (tools/dummy_model/hf_check.py). */
    {"LlamaForCausalLM", "llama", TENSORS(llama), false, false, false, 2048, 1e-6f, 10000.0f, 1, 2,
     0, CV_FAMILY_LLAMA, NULL},
    {"MistralForCausalLM", "mistral", TENSORS(llama), false, false, false, 4096 * 32, 1e-6f,
     10000.0f, 1, 2, 4096, CV_FAMILY_LLAMA, NULL},
    {"Qwen2ForCausalLM", "qwen2", TENSORS(llama), true, false, false, 32768, 1e-6f, 10000.0f, -1,
     -1, 0, CV_FAMILY_LLAMA, NULL},
    {"Qwen3ForCausalLM", "qwen3", TENSORS(llama), false, true, false, 32768, 1e-6f, 10000.0f, -1,
     -1, 0, CV_FAMILY_LLAMA, NULL},
    /* OPTConfig and GPT2Config: tied, nn.LayerNorm's eps 1e-5 (OPT has no
     * key for it), bos = eos; rope_theta unused. */
    {"OPTForCausalLM", "opt", TENSORS(opt), false, false, true, 2048, 1e-5f, 10000.0f, 2, 2, 0,
     CV_FAMILY_OPT, "model."},
    {"GPT2LMHeadModel", "gpt2", TENSORS(gpt2), false, false, true, 1024, 1e-5f, 10000.0f, 50256,
     50256, 0, CV_FAMILY_GPT2, "transformer."},
};
enum { CV_N_ARCHS = sizeof cv_archs / sizeof cv_archs[0] };

const cv_arch *cv_arch_find(const char *name)
{
    for (int i = 0; i < CV_N_ARCHS; i++)
        if (strcmp(cv_archs[i].name, name) == 0) return &cv_archs[i];
    return NULL;
}

void cv_arch_names(char *buf, size_t n)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < CV_N_ARCHS && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%s", i ? ", " : "", cv_archs[i].name);
}

bool cv_arch_needs(const cv_arch *arch, const cv_tensor_spec *s, const cv_model_config *c)
{
    switch (s->need) {
    case CV_NEED_ALWAYS:
        return true;
    case CV_NEED_QKV_BIAS:
        return arch->qkv_bias;
    case CV_NEED_QK_NORM:
        return arch->qk_norm;
    case CV_NEED_UNTIED:
        return !c->tie_word_embeddings;
    case CV_NEED_BIAS:
        return c->linear_bias;
    case CV_NEED_FINAL_NORM:
        return !c->no_final_norm;
    case CV_NEED_PROJ:
        return c->proj_dim > 0;
    }
    return false;
}

int64_t cv_arch_dim(const cv_model_config *c, cv_dim d)
{
    switch (d) {
    case CV_DIM_HIDDEN:
        return c->hidden_size;
    case CV_DIM_INTER:
        return c->intermediate_size;
    case CV_DIM_VOCAB:
        return c->vocab_size;
    case CV_DIM_Q:
        return (int64_t)c->n_heads * c->head_dim;
    case CV_DIM_KV:
        return (int64_t)c->n_kv_heads * c->head_dim;
    case CV_DIM_HEAD:
        return c->head_dim;
    case CV_DIM_EMBED:
        return cv_config_embed_dim(c);
    case CV_DIM_PROJ:
        return c->proj_dim;
    case CV_DIM_POS:
        return (int64_t)c->max_position_embeddings + c->pos_offset;
    case CV_DIM_QKV:
        return 3 * (int64_t)c->n_heads * c->head_dim;
    }
    return -1;
}

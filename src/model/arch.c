/* Architectures as data. Each row of cv_archs says how a HuggingFace
 * architecture stores its weights (tensor names and which optional tensors
 * exist) and which config defaults its HF config class has. Adding an
 * architecture whose layers are Llama-shaped is one new row; one with other
 * tensor names adds a tensor table next to llama_layer_tensors. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "model/model_internal.h"

#define G(field) offsetof(cv_model_weights, field)
#define L(field) offsetof(cv_layer_weights, field)

/* Tensors outside the layers, shared by every Llama-family model. */
static const cv_tensor_spec llama_global_tensors[] = {
    {G(embed), "model.embed_tokens.weight", CV_NEED_ALWAYS, 2, {CV_DIM_VOCAB, CV_DIM_HIDDEN}},
    {G(final_norm), "model.norm.weight", CV_NEED_ALWAYS, 1, {CV_DIM_HIDDEN}},
    {G(lm_head), "lm_head.weight", CV_NEED_UNTIED, 2, {CV_DIM_VOCAB, CV_DIM_HIDDEN}},
};

/* Per-layer tensors of LlamaDecoderLayer and its descendants (Mistral,
 * Qwen2, Qwen3): the optional rows appear only where the arch says so. */
static const cv_tensor_spec llama_layer_tensors[] = {
    {L(attn_norm), "model.layers.%d.input_layernorm.weight", CV_NEED_ALWAYS, 1, {CV_DIM_HIDDEN}},
    {L(wq),
     "model.layers.%d.self_attn.q_proj.weight",
     CV_NEED_ALWAYS,
     2,
     {CV_DIM_Q, CV_DIM_HIDDEN}},
    {L(wk),
     "model.layers.%d.self_attn.k_proj.weight",
     CV_NEED_ALWAYS,
     2,
     {CV_DIM_KV, CV_DIM_HIDDEN}},
    {L(wv),
     "model.layers.%d.self_attn.v_proj.weight",
     CV_NEED_ALWAYS,
     2,
     {CV_DIM_KV, CV_DIM_HIDDEN}},
    {L(bq), "model.layers.%d.self_attn.q_proj.bias", CV_NEED_QKV_BIAS, 1, {CV_DIM_Q}},
    {L(bk), "model.layers.%d.self_attn.k_proj.bias", CV_NEED_QKV_BIAS, 1, {CV_DIM_KV}},
    {L(bv), "model.layers.%d.self_attn.v_proj.bias", CV_NEED_QKV_BIAS, 1, {CV_DIM_KV}},
    {L(q_norm), "model.layers.%d.self_attn.q_norm.weight", CV_NEED_QK_NORM, 1, {CV_DIM_HEAD}},
    {L(k_norm), "model.layers.%d.self_attn.k_norm.weight", CV_NEED_QK_NORM, 1, {CV_DIM_HEAD}},
    {L(wo),
     "model.layers.%d.self_attn.o_proj.weight",
     CV_NEED_ALWAYS,
     2,
     {CV_DIM_HIDDEN, CV_DIM_Q}},
    {L(ffn_norm),
     "model.layers.%d.post_attention_layernorm.weight",
     CV_NEED_ALWAYS,
     1,
     {CV_DIM_HIDDEN}},
    {L(w_gate),
     "model.layers.%d.mlp.gate_proj.weight",
     CV_NEED_ALWAYS,
     2,
     {CV_DIM_INTER, CV_DIM_HIDDEN}},
    {L(w_up),
     "model.layers.%d.mlp.up_proj.weight",
     CV_NEED_ALWAYS,
     2,
     {CV_DIM_INTER, CV_DIM_HIDDEN}},
    {L(w_down),
     "model.layers.%d.mlp.down_proj.weight",
     CV_NEED_ALWAYS,
     2,
     {CV_DIM_HIDDEN, CV_DIM_INTER}},
};

#define LLAMA_TENSORS                                                                              \
    llama_global_tensors, sizeof llama_global_tensors / sizeof llama_global_tensors[0],            \
        llama_layer_tensors, sizeof llama_layer_tensors / sizeof llama_layer_tensors[0]

/* Defaults are those of transformers' LlamaConfig, MistralConfig,
 * Qwen2Config and Qwen3Config (tie_word_embeddings is false in all four;
 * Qwen checkpoints that tie say so in config.json). */
static const cv_arch cv_archs[] = {
    /* name, model_type, tensors, qkv_bias, qk_norm, then defaults: tie,
     * max_position, rms_norm_eps, rope_theta, bos, eos, sliding_window.
     * Checked against transformers 5.17 (tools/dummy_model/hf_check.py). */
    {"LlamaForCausalLM", "llama", LLAMA_TENSORS, false, false, false, 2048, 1e-6f, 10000.0f, 1, 2,
     0},
    {"MistralForCausalLM", "mistral", LLAMA_TENSORS, false, false, false, 4096 * 32, 1e-6f,
     10000.0f, 1, 2, 4096},
    {"Qwen2ForCausalLM", "qwen2", LLAMA_TENSORS, true, false, false, 32768, 1e-6f, 10000.0f, -1, -1,
     0},
    {"Qwen3ForCausalLM", "qwen3", LLAMA_TENSORS, false, true, false, 32768, 1e-6f, 10000.0f, -1, -1,
     0},
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
    }
    return -1;
}

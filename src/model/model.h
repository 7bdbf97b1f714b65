/* Model loading: a HuggingFace model directory (config.json,
 * generation_config.json, *.safetensors with optional
 * model.safetensors.index.json, or else pytorch_model.bin with optional
 * pytorch_model.bin.index.json) becomes a cv_model: the configuration and
 * the weight tensors, memory-mapped where possible. A pytorch_model.bin is
 * read without running its pickle: only tensors are rebuilt, and a
 * checkpoint that references any other Python global is refused.
 *
 * Architectures (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
 * Qwen3ForCausalLM, OPTForCausalLM, GPT2LMHeadModel) are described as data in
 * arch.c: tensor names, which biases and norms exist, the activation. The
 * backends read cv_model (the structure flags of cv_model_config and which
 * optional tensors are present) and never look at architecture names.
 *
 * Ownership: cv_model_load returns a model the caller frees with
 * cv_model_free; every pointer inside stays valid until then. */
#ifndef CV_MODEL_MODEL_H
#define CV_MODEL_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

typedef enum { CV_DTYPE_F32 = 0, CV_DTYPE_F16, CV_DTYPE_BF16 } cv_dtype;

size_t cv_dtype_size(cv_dtype dtype);
const char *cv_dtype_name(cv_dtype dtype);

enum { CV_MAX_EOS_IDS = 8 };

/* GELU_TANH is HF's gelu_pytorch_tanh and gelu_new (the same function). */
typedef enum { CV_ACT_SILU = 0, CV_ACT_GELU_TANH, CV_ACT_RELU } cv_activation;

/* RMSNorm (weight) or LayerNorm (weight and bias, mean subtracted). */
typedef enum { CV_NORM_RMS = 0, CV_NORM_LAYER } cv_norm_type;

/* Rotary embeddings, or learned absolute position embeddings added to the
 * token embeddings (OPT, GPT-2). */
typedef enum { CV_POS_ROPE = 0, CV_POS_LEARNED } cv_pos_type;

typedef enum { CV_ROPE_DEFAULT = 0, CV_ROPE_LINEAR, CV_ROPE_LLAMA3 } cv_rope_type;

typedef struct cv_model_config {
    char architecture[64]; /* e.g. "LlamaForCausalLM" */
    int hidden_size;       /* d_model */
    int intermediate_size; /* MLP width */
    int n_layers;          /* num_hidden_layers */
    int n_heads;           /* num_attention_heads */
    int n_kv_heads;        /* num_key_value_heads (GQA) */
    int head_dim;          /* hidden_size / n_heads unless config says */
    int vocab_size;
    int max_position_embeddings; /* the model's context limit */
    float rms_norm_eps;          /* epsilon of every norm, RMSNorm or LayerNorm */
    float rope_theta;
    cv_rope_type rope_type;         /* rope_scaling.type / rope_type */
    float rope_factor;              /* linear and llama3 */
    float rope_low_freq_factor;     /* llama3 */
    float rope_high_freq_factor;    /* llama3 */
    int rope_original_max_position; /* llama3 */
    bool tie_word_embeddings;
    int bos_token_id;    /* -1 when none */
    int n_eos_token_ids; /* from generation_config.json, else config.json */
    int eos_token_ids[CV_MAX_EOS_IDS];
    cv_dtype dtype;           /* dtype of the stored weights (the embedding's);
                               * config.json's dtype/torch_dtype only says what
                               * HF would cast to, the backends read as stored */
    cv_activation hidden_act; /* MLP activation (gated: act(gate) * up) */
    int sliding_window;       /* attention window in tokens; 0 = full attention */
    /* Structure. Zero values are the Llama family's: pre-norm RMSNorm,
     * rotary positions, gated MLP, no projections. */
    cv_norm_type norm_type;
    bool post_norm; /* the norm follows each residual add (OPT with
                     * do_layer_norm_before false) instead of preceding
                     * the sublayer */
    cv_pos_type pos_type;
    int pos_offset;     /* learned positions: position p reads row p + pos_offset
                         * of pos_embed (OPT: 2) */
    bool plain_mlp;     /* down(act(up x + b)) + b, no gate (OPT, GPT-2) */
    bool linear_bias;   /* every projection has a bias (OPT enable_bias, GPT-2) */
    bool no_final_norm; /* no norm before lm_head (post-norm OPT) */
    int proj_dim;       /* OPT word_embed_proj_dim when it differs from
                         * hidden_size: embedding rows and lm_head inputs are
                         * this wide, with project_in / project_out; 0: none */
} cv_model_config;

/* Width of an embedding row and of the lm_head input. */
static inline int cv_config_embed_dim(const cv_model_config *c)
{
    return c->proj_dim > 0 ? c->proj_dim : c->hidden_size;
}

/* One weight tensor inside the mapped files. data == NULL: absent (an
 * optional bias or norm this architecture does not have). Shapes are in
 * PyTorch order: a Linear weight is (out_features, in_features). */
typedef struct cv_tensor {
    cv_dtype dtype;
    int n_dims;
    int64_t shape[4];
    const void *data;
} cv_tensor;

typedef struct cv_layer_weights {
    cv_tensor attn_norm;   /* (hidden) norm weight before attention (after it
                            * when post_norm) */
    cv_tensor attn_norm_b; /* (hidden) LayerNorm bias */
    cv_tensor wq;          /* (n_heads * head_dim, hidden) */
    cv_tensor wk;          /* (n_kv_heads * head_dim, hidden) */
    cv_tensor wv;          /* (n_kv_heads * head_dim, hidden) */
    cv_tensor bq;          /* (n_heads * head_dim) optional (Qwen2) */
    cv_tensor bk;          /* (n_kv_heads * head_dim) optional */
    cv_tensor bv;          /* (n_kv_heads * head_dim) optional */
    cv_tensor q_norm;      /* (head_dim) optional per-head RMSNorm (Qwen3) */
    cv_tensor k_norm;      /* (head_dim) optional */
    cv_tensor wo;          /* (hidden, n_heads * head_dim) */
    cv_tensor bo;          /* (hidden) optional (linear_bias) */
    cv_tensor ffn_norm;    /* (hidden) */
    cv_tensor ffn_norm_b;  /* (hidden) LayerNorm bias */
    cv_tensor w_gate;      /* (intermediate, hidden); absent when plain_mlp */
    cv_tensor w_up;        /* (intermediate, hidden) (OPT fc1, GPT-2 c_fc) */
    cv_tensor b_up;        /* (intermediate) optional (linear_bias) */
    cv_tensor w_down;      /* (hidden, intermediate) */
    cv_tensor b_down;      /* (hidden) optional (linear_bias) */
} cv_layer_weights;

/* GPT-2 stores its projections in Conv1D layout, (in, out), and q, k, v as
 * one c_attn matrix: the loader transposes and splits them once, so every
 * matrix here is (out, in) whatever the checkpoint's layout. */
typedef struct cv_model_weights {
    cv_tensor embed;          /* (vocab, embed_dim) */
    cv_tensor pos_embed;      /* (max_position + pos_offset, hidden) learned positions */
    cv_tensor project_in;     /* (hidden, proj_dim) when proj_dim */
    cv_layer_weights *layers; /* (n_layers) */
    cv_tensor final_norm;     /* (hidden); absent for post-norm OPT */
    cv_tensor final_norm_b;   /* (hidden) LayerNorm bias */
    cv_tensor project_out;    /* (proj_dim, hidden) when proj_dim */
    cv_tensor lm_head;        /* (vocab, embed_dim); same data as embed when tied */
} cv_model_weights;

typedef struct cv_model cv_model;

/* Loads DIR: config.json (transformers 4.x or 5.x keys), the optional
 * generation_config.json (its bos/eos ids win), and model.safetensors or the
 * shards model.safetensors.index.json lists; without either, the same for
 * pytorch_model.bin (torch.save's zip format, entries stored; contiguous
 * tensors of F32, F16, BF16). Tensors are mapped read-only and
 * kept in their stored dtype; every data pointer is aligned to its element
 * size (a misaligned tensor is copied) and every shape has been checked
 * against the config. On failure returns NULL and err names the file and
 * what was wrong (missing or malformed config.json, unknown architecture,
 * truncated safetensors, header past end of file, missing tensor or shard,
 * shape mismatch, unsupported dtype, a pytorch_model.bin that references a
 * global other than the tensor-rebuilding ones, compressed zip entries,
 * ...). */
cv_model *cv_model_load(const char *dir, cv_error *err);
void cv_model_free(cv_model *model);
const cv_model_config *cv_model_get_config(const cv_model *model);
const cv_model_weights *cv_model_get_weights(const cv_model *model);

/* RoPE inverse frequencies (head_dim / 2 of them) for cfg's rope_theta and
 * rope type (default, linear, llama3), in fp32 exactly as HF computes them. */
void cv_rope_inv_freq(const cv_model_config *cfg, float *inv_freq /* (head_dim / 2) */);

/* Writes a safetensors file at PATH holding N_ENTRIES tensors in the given
 * order, 8-byte aligned, with {"__metadata__": {"format": "pt"}}. An entry
 * whose tensor.data is NULL gets its bytes from FILL, called for that entry
 * with consecutive chunks (offset_elems grows from 0 to the element count;
 * dst holds n_elems elements of the entry's dtype), so tensors larger than
 * memory can be generated while writing; FILL returns 0, or -1 with err set.
 * Returns 0, or -1 with err naming PATH. */
typedef struct cv_safetensors_entry {
    const char *name; /* HF tensor name */
    cv_tensor tensor; /* dtype, n_dims, shape; data or NULL */
} cv_safetensors_entry;

typedef int (*cv_safetensors_fill_fn)(void *ctx, size_t index, void *dst, size_t offset_elems,
                                      size_t n_elems, cv_error *err);

int cv_safetensors_write(const char *path, const cv_safetensors_entry *entries, size_t n_entries,
                         cv_safetensors_fill_fn fill, void *ctx, cv_error *err);

/* A tensor file read on its own (a LoRA adapter's weights): safetensors, or
 * a torch.save zip archive when PATH ends in ".bin". Tensors stay in the
 * file's read-only mapping until close. */
typedef struct cv_tensor_file cv_tensor_file;
cv_tensor_file *cv_tensor_file_open(const char *path, cv_error *err);
size_t cv_tensor_file_count(const cv_tensor_file *tf);
const char *cv_tensor_file_name(const cv_tensor_file *tf, size_t i);
/* Tensor i, or NULL with err naming the file, the tensor and why it cannot
 * be used (dtype other than F32/F16/BF16, not contiguous ...). */
const cv_tensor *cv_tensor_file_get(const cv_tensor_file *tf, size_t i, cv_error *err);
void cv_tensor_file_close(cv_tensor_file *tf);

/* Number of elements of T (the product of its shape). */
int64_t cv_tensor_numel(const cv_tensor *t);

/* Half-precision conversions. To F16/BF16: round to nearest even, overflow
 * to infinity, NaN stays NaN. From F16/BF16: exact. */
uint16_t cv_f32_to_f16(float x);
uint16_t cv_f32_to_bf16(float x);
float cv_f16_to_f32(uint16_t h);
float cv_bf16_to_f32(uint16_t h);

/* Element i of an F32/F16/BF16 array, as fp32; and the reverse (rounding to
 * nearest even). */
float cv_dtype_load(const void *array, size_t i, cv_dtype dtype);
void cv_dtype_store(void *array, size_t i, cv_dtype dtype, float x);

/* Writes DIR/config.json and DIR/generation_config.json (HF layout, as
 * transformers 4.x names the keys, which 5.x also reads; OPTConfig's and
 * GPT2Config's own keys for those architectures) describing CFG;
 * cfg->dtype becomes torch_dtype. DIR must exist. */
int cv_model_write_config(const char *dir, const cv_model_config *cfg, cv_error *err);

/* The tensors cv_model_load expects for CFG (architecture, shapes as stored:
 * GPT-2's Conv1D matrices (in, out) and c_attn fused, optional biases and
 * norms, lm_head when untied), in load order, each with dtype
 * DTYPE and data NULL: what a writer of a model for CFG must store. On
 * success *entries (n_entries) is owned by the caller, who frees it with
 * cv_model_free_tensor_list. */
int cv_model_tensor_list(const cv_model_config *cfg, cv_dtype dtype, cv_safetensors_entry **entries,
                         size_t *n_entries, cv_error *err);
void cv_model_free_tensor_list(cv_safetensors_entry *entries, size_t n_entries);

#endif

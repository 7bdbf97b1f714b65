/* Internals of the model module shared by its files: the safetensors reader
 * (safetensors.c), the pytorch_model.bin reader (torch_bin.c), config.json
 * parsing (config.c) and the architecture table (arch.c). Nothing here
 * crosses the module boundary. */
#ifndef CV_MODEL_MODEL_INTERNAL_H
#define CV_MODEL_MODEL_INTERNAL_H

#include <jansson.h>

#include "model/model.h"

/* ---- safetensors reader ---------------------------------------------- */

typedef struct cv_st_tensor {
    char *name;
    char dtype_name[16]; /* as stored ("F32", "I8", ...), for messages */
    bool supported;      /* dtype is F32, F16 or BF16 and tensor is usable */
    char why[256];       /* when not supported for another reason than the
                          * dtype: what is wrong ("is not contiguous ..."),
                          * for the message if the tensor is needed */
    cv_tensor tensor;    /* data points into the mapping, or an aligned copy */
} cv_st_tensor;

typedef struct cv_st_file {
    char *path;
    void *map; /* whole file, read-only */
    size_t map_bytes;
    cv_st_tensor *tensors; /* (n_tensors) in header order */
    size_t n_tensors;
    void **copies; /* aligned copies of misaligned tensors, owned */
    size_t n_copies;
} cv_st_file;

/* Maps PATH and validates its header: length against the file size, JSON,
 * every entry's dtype, shape, data_offsets (inside the data region, size equal
 * to shape * dtype size). On failure f is left closed and err names PATH. */
int cv_st_open(cv_st_file *f, const char *path, cv_error *err);
void cv_st_close(cv_st_file *f);
const cv_st_tensor *cv_st_find(const cv_st_file *f, const char *name);

/* Maps PATH read-only into f (path, map, map_bytes; an empty file gets no
 * mapping). On failure f is left closed and err names PATH. */
int cv_st_map(cv_st_file *f, const char *path, cv_error *err);
/* Replaces t's data by an aligned heap copy (owned by f) when the mapping
 * leaves it misaligned for its dtype. */
int cv_st_align(cv_st_file *f, cv_st_tensor *t, size_t bytes, cv_error *err);

/* ---- pytorch_model.bin reader ------------------------------------------ */

/* Maps PATH, a torch.save zip archive of a state dict, and fills f with its
 * tensors as cv_st_open does for safetensors: each tensor points into its
 * storage's entry in the mapping (or an aligned copy). Tensors that cannot
 * be used (dtype, more than 4 dimensions, not contiguous) are kept with
 * supported false. On failure f is left closed and err names PATH. */
int cv_torch_open(cv_st_file *f, const char *path, cv_error *err);
/* The same over f->map[0..f->map_bytes), already set (f->path too); on
 * failure the tensors read so far stay in f for cv_st_close. */
int cv_torch_parse(cv_st_file *f, cv_error *err);

/* ---- JSON files -------------------------------------------------------- */

/* Reads and parses PATH; NULL with err naming PATH on a missing file or
 * malformed JSON. The caller json_decref()s the result. */
json_t *cv_json_load(const char *path, cv_error *err);

/* ---- architectures ----------------------------------------------------- */

/* Symbolic tensor dimensions, resolved against the config. */
typedef enum {
    CV_DIM_HIDDEN = 0,
    CV_DIM_INTER,
    CV_DIM_VOCAB,
    CV_DIM_Q,     /* n_heads * head_dim */
    CV_DIM_KV,    /* n_kv_heads * head_dim */
    CV_DIM_HEAD,  /* head_dim */
    CV_DIM_EMBED, /* cv_config_embed_dim: embedding row width */
    CV_DIM_PROJ,  /* proj_dim (OPT word_embed_proj_dim) */
    CV_DIM_POS,   /* max_position_embeddings + pos_offset: learned positions */
    CV_DIM_QKV,   /* 3 * n_heads * head_dim: GPT-2's fused q, k, v */
} cv_dim;

/* When a tensor must be present. */
typedef enum {
    CV_NEED_ALWAYS = 0,
    CV_NEED_QKV_BIAS,   /* architectures with q/k/v projection biases */
    CV_NEED_QK_NORM,    /* architectures with per-head q/k RMSNorm */
    CV_NEED_UNTIED,     /* only when tie_word_embeddings is false */
    CV_NEED_BIAS,       /* only when linear_bias (OPT enable_bias) */
    CV_NEED_FINAL_NORM, /* only when no_final_norm is false */
    CV_NEED_PROJ,       /* only when proj_dim is set */
} cv_need;

typedef struct cv_tensor_spec {
    size_t offset;       /* offsetof the cv_tensor in cv_layer_weights (layer
                          * tensors) or cv_model_weights (global tensors) */
    const char *pattern; /* HF name; "%d" is the layer index */
    cv_need need;
    int n_dims;
    cv_dim dims[2]; /* the stored shape */
    /* Conv1D layout (GPT-2): stored (in, out), bound transposed to (out, in). */
    bool conv1d;
    /* When n_parts > 1 the bound tensor is part PART of N_PARTS equal slices
     * of the (transposed) stored tensor's first dimension: GPT-2's c_attn
     * holds q, k and v. */
    int part, n_parts;
} cv_tensor_spec;

/* Which config.json keys an architecture's HF config class uses. */
typedef enum {
    CV_FAMILY_LLAMA = 0, /* LlamaConfig and its descendants */
    CV_FAMILY_OPT,       /* OPTConfig */
    CV_FAMILY_GPT2,      /* GPT2Config (n_embd, n_layer, ...) */
} cv_family;

typedef struct cv_arch {
    const char *name;       /* config.json "architectures"[0] */
    const char *model_type; /* config.json "model_type" */
    const cv_tensor_spec *global_tensors;
    size_t n_global_tensors;
    const cv_tensor_spec *layer_tensors;
    size_t n_layer_tensors;
    bool qkv_bias;
    bool qk_norm;
    /* Defaults of the HF config class for keys config.json may omit. */
    bool default_tie;
    int default_max_position;
    float default_rms_norm_eps;
    float default_rope_theta;
    int default_bos;            /* -1: none */
    int default_eos;            /* -1: none */
    int default_sliding_window; /* tokens; 0: full attention */
    cv_family family;
    /* Checkpoints saved from the base model (facebook/opt-125m's
     * "decoder.layers.0...", gpt2's "h.0...") lack this prefix of the
     * tensor names; the loader then looks the names up without it, as HF's
     * from_pretrained and vLLM do. NULL: none. */
    const char *base_prefix;
} cv_arch;

const cv_arch *cv_arch_find(const char *name);
/* Whether tensor spec S exists for ARCH under config C. */
bool cv_arch_needs(const cv_arch *arch, const cv_tensor_spec *s, const cv_model_config *c);
/* The size of symbolic dimension D under config C. */
int64_t cv_arch_dim(const cv_model_config *c, cv_dim d);
/* Writes the comma-separated names of all architectures (for error messages)
 * into BUF of N bytes, truncating if needed. */
void cv_arch_names(char *buf, size_t n);

/* Fills cfg from DIR/config.json and DIR/generation_config.json and returns
 * the architecture it names (config.c; OPT and GPT-2 keys in
 * config_legacy.c). */
int cv_config_load(const char *dir, cv_model_config *cfg, const cv_arch **arch, cv_error *err);

/* Readers of one config.json key shared by config.c and config_legacy.c:
 * a missing or null key is an error when REQUIRED, else leaves *out (the
 * default); errors name PATH and the key. */
int cv_cfg_int(json_t *obj, const char *key, bool required, int min, int *out, const char *path,
               cv_error *err);
int cv_cfg_num(json_t *obj, const char *key, bool required, float *out, const char *path,
               cv_error *err);
int cv_cfg_bool(json_t *root, const char *key, bool *out, const char *path, cv_error *err);
/* eos_token_id: an integer, a list of integers, or null. */
int cv_cfg_eos(json_t *obj, cv_model_config *cfg, const char *path, cv_error *err);

/* The OPTConfig and GPT2Config keys (config_legacy.c); cfg holds the
 * architecture's defaults already. */
int cv_config_parse_opt(json_t *root, cv_model_config *cfg, const char *path, cv_error *err);
int cv_config_parse_gpt2(json_t *root, cv_model_config *cfg, const char *path, cv_error *err);

#endif

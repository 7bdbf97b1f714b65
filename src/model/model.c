/* cv_model_load: config, then the weight files (model.safetensors, or the
 * shards a model.safetensors.index.json lists; else the same for
 * pytorch_model.bin), then every tensor the architecture table names,
 * resolved by name and checked against the config's shapes; Conv1D (GPT-2)
 * matrices are transposed and fused ones split here, once. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model/model_internal.h"

struct cv_model {
    cv_model_config config;
    cv_model_weights weights;
    cv_st_file *files; /* (n_files) mapped safetensors or pytorch_model.bin files */
    size_t n_files;
    json_t *weight_map;      /* index.json "weight_map" (name -> shard); NULL when unsharded */
    const char *base_prefix; /* transformers' base_model_prefix with its dot ("model.") */
    char index_path[4096];
    void **owned; /* (n_owned) transposed copies of Conv1D matrices */
    size_t n_owned;
};

const cv_model_config *cv_model_get_config(const cv_model *model)
{
    return &model->config;
}

const cv_model_weights *cv_model_get_weights(const cv_model *model)
{
    return &model->weights;
}

void cv_model_free(cv_model *model)
{
    if (!model) return;
    for (size_t i = 0; i < model->n_files; i++)
        cv_st_close(&model->files[i]);
    free(model->files);
    for (size_t i = 0; i < model->n_owned; i++)
        free(model->owned[i]);
    free(model->owned);
    free(model->weights.layers);
    json_decref(model->weight_map);
    free(model);
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static int model_open_file(cv_model *m, const char *path, cv_error *err)
{
    for (size_t i = 0; i < m->n_files; i++)
        if (strcmp(m->files[i].path, path) == 0) return 0;
    cv_st_file *files = realloc(m->files, (m->n_files + 1) * sizeof *files);
    if (!files) return cv_errorf(err, "%s: out of memory", path);
    m->files = files;
    size_t len = strlen(path);
    bool torch = len >= 4 && strcmp(path + len - 4, ".bin") == 0;
    if ((torch ? cv_torch_open : cv_st_open)(&m->files[m->n_files], path, err)) return -1;
    m->n_files++;
    return 0;
}

/* Shard names come from a file we did not write: they must be plain file
 * names inside the model directory. */
static int shard_path(char *out, size_t n, const char *dir, const char *index, const char *name,
                      const char *shard, cv_error *err)
{
    if (!shard || !*shard || strchr(shard, '/') || strcmp(shard, "..") == 0)
        return cv_errorf(err, "%s: weight_map entry for '%s' is not a file name", index, name);
    if ((size_t)snprintf(out, n, "%s/%s", dir, shard) >= n)
        return cv_errorf(err, "%s: path of shard '%s' too long", index, shard);
    return 0;
}

/* DIR/FILE (one file) or DIR/INDEX (the shards it lists); 1 when neither
 * exists. */
static int model_open_format(cv_model *m, const char *dir, const char *file, const char *index,
                             cv_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    if (file_exists(path)) return model_open_file(m, path, err);
    snprintf(m->index_path, sizeof m->index_path, "%s/%s", dir, index);
    if (!file_exists(m->index_path)) return 1;
    json_t *idx = cv_json_load(m->index_path, err);
    if (!idx) return -1;
    json_t *map = json_object_get(idx, "weight_map");
    if (!json_is_object(map)) {
        json_decref(idx);
        return cv_errorf(err, "%s: missing object 'weight_map'", m->index_path);
    }
    m->weight_map = json_incref(map);
    json_decref(idx);
    const char *name;
    json_t *shard;
    json_object_foreach(m->weight_map, name, shard)
    {
        if (shard_path(path, sizeof path, dir, m->index_path, name, json_string_value(shard),
                       err) ||
            model_open_file(m, path, err))
            return -1;
    }
    return 0;
}

static int model_open_weights(cv_model *m, const char *dir, cv_error *err)
{
    /* The single file before its index (HF's from_pretrained order), and
     * safetensors before pytorch_model.bin even when both exist, as vLLM
     * does: it is the format that cannot hold code and maps as is. */
    int rc = model_open_format(m, dir, "model.safetensors", "model.safetensors.index.json", err);
    if (rc == 1)
        rc = model_open_format(m, dir, "pytorch_model.bin", "pytorch_model.bin.index.json", err);
    if (rc == 1)
        return cv_errorf(err,
                         "%s: no model.safetensors, model.safetensors.index.json, "
                         "pytorch_model.bin or pytorch_model.bin.index.json",
                         dir);
    return rc;
}

/* Tensor NAME in the one file, or in the shard the weight_map names; NULL
 * when absent. *file: where it was looked for (NULL: not in weight_map). */
static const cv_st_tensor *model_lookup(cv_model *m, const char *dir, const char *name,
                                        const cv_st_file **file)
{
    *file = &m->files[0];
    if (m->weight_map) {
        const char *shard = json_string_value(json_object_get(m->weight_map, name));
        if (!shard) {
            *file = NULL;
            return NULL;
        }
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, shard);
        for (size_t i = 0; i < m->n_files; i++)
            if (strcmp(m->files[i].path, path) == 0) *file = &m->files[i];
    }
    return cv_st_find(*file, name);
}

/* Finds tensor NAME, or else NAME without (or with) the base_model_prefix:
 * a checkpoint saved from the base model, as the hub's OPT and GPT-2
 * pytorch_model.bin files are, names "decoder.layers.0..." where the
 * causal-LM model has "model.decoder.layers.0...", and transformers strips
 * or adds the prefix when loading. NULL with err set when absent. */
static const cv_st_tensor *model_find(cv_model *m, const char *dir, const char *name,
                                      const cv_st_file **file, cv_error *err)
{
    const cv_st_tensor *t = model_lookup(m, dir, name, file);
    if (t) return t;
    char alt[512];
    size_t pl = strlen(m->base_prefix);
    if (strncmp(name, m->base_prefix, pl) == 0)
        snprintf(alt, sizeof alt, "%s", name + pl);
    else
        snprintf(alt, sizeof alt, "%s%s", m->base_prefix, name);
    const cv_st_file *alt_file;
    if ((t = model_lookup(m, dir, alt, &alt_file))) {
        *file = alt_file;
        return t;
    }
    if (!*file)
        cv_errorf(err, "%s: tensor '%s' missing from weight_map", m->index_path, name);
    else
        cv_errorf(err, "%s: tensor '%s' missing", (*file)->path, name);
    return NULL;
}

static void shape_str(char *buf, size_t n, int n_dims, const int64_t *shape)
{
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < n_dims && used < n; i++)
        used +=
            (size_t)snprintf(buf + used, n - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (used < n) snprintf(buf + used, n - used, "]");
}

/* The bound form of stored tensor T under spec S: transposed when Conv1D,
 * then part S->part of S->n_parts slices of its first dimension. A
 * transposed copy is owned by m. */
static int model_transform(cv_model *m, const cv_tensor_spec *s, const char *name, cv_tensor *t,
                           cv_error *err)
{
    const size_t esz = cv_dtype_size(t->dtype);
    const int parts = s->n_parts > 1 ? s->n_parts : 1;
    const int64_t rows = (s->conv1d ? t->shape[1] : t->shape[0]) / parts;
    const int64_t row0 = rows * (s->n_parts > 1 ? s->part : 0);
    if (!s->conv1d) {
        t->shape[0] = rows;
        t->data = (const char *)t->data + (size_t)row0 * (t->n_dims == 2 ? t->shape[1] : 1) * esz;
        return 0;
    }
    /* Stored (in, out): element (i, o) at i * out + o. */
    const int64_t in = t->shape[0], out = t->shape[1];
    void **owned = realloc(m->owned, (m->n_owned + 1) * sizeof *owned);
    if (!owned) return cv_errorf(err, "tensor '%s': out of memory", name);
    m->owned = owned;
    char *dst = malloc((size_t)(rows * in) * esz);
    if (!dst) return cv_errorf(err, "tensor '%s': out of memory for its transpose", name);
    m->owned[m->n_owned++] = dst;
    const char *src = t->data;
    for (int64_t o = 0; o < rows; o++)
        for (int64_t i = 0; i < in; i++)
            memcpy(dst + (size_t)(o * in + i) * esz, src + (size_t)(i * out + row0 + o) * esz, esz);
    t->shape[0] = rows;
    t->shape[1] = in;
    t->data = dst;
    return 0;
}

/* Resolves spec S (layer LAYER, or -1 for a global tensor) into *out. */
static int model_bind(cv_model *m, const char *dir, const cv_arch *arch, const cv_tensor_spec *s,
                      int layer, cv_tensor *out, cv_error *err)
{
    char name[256];
    snprintf(name, sizeof name, s->pattern, layer);
    const cv_st_file *file;
    const cv_st_tensor *t = model_find(m, dir, name, &file, err);
    if (!t) return -1;
    if (!t->supported && t->why[0])
        return cv_errorf(err, "%s: tensor '%s' %s", file->path, name, t->why);
    if (!t->supported)
        return cv_errorf(err, "%s: tensor '%s' has dtype %s; supported dtypes are F32, F16, BF16",
                         file->path, name, t->dtype_name);
    int64_t want[2];
    bool ok = t->tensor.n_dims == s->n_dims;
    for (int i = 0; i < s->n_dims; i++) {
        want[i] = cv_arch_dim(&m->config, s->dims[i]);
        ok = ok && t->tensor.shape[i] == want[i];
    }
    if (!ok) {
        char got_s[96], want_s[96];
        shape_str(got_s, sizeof got_s, t->tensor.n_dims, t->tensor.shape);
        shape_str(want_s, sizeof want_s, s->n_dims, want);
        return cv_errorf(err, "%s: tensor '%s' has shape %s, config.json implies %s", file->path,
                         name, got_s, want_s);
    }
    *out = t->tensor;
    if (s->conv1d || s->n_parts > 1) return model_transform(m, s, name, out, err);
    return 0;
}

static int model_bind_all(cv_model *m, const char *dir, const cv_arch *arch, cv_error *err)
{
    cv_model_config *c = &m->config;
    m->weights.layers = calloc((size_t)c->n_layers, sizeof *m->weights.layers);
    if (!m->weights.layers)
        return cv_errorf(err, "%s: out of memory for %d layers", dir, c->n_layers);
    for (size_t i = 0; i < arch->n_global_tensors; i++) {
        const cv_tensor_spec *s = &arch->global_tensors[i];
        cv_tensor *out = (cv_tensor *)((char *)&m->weights + s->offset);
        if (cv_arch_needs(arch, s, c) && model_bind(m, dir, arch, s, -1, out, err)) return -1;
    }
    for (int l = 0; l < c->n_layers; l++) {
        for (size_t i = 0; i < arch->n_layer_tensors; i++) {
            const cv_tensor_spec *s = &arch->layer_tensors[i];
            cv_tensor *out = (cv_tensor *)((char *)&m->weights.layers[l] + s->offset);
            if (cv_arch_needs(arch, s, c) && model_bind(m, dir, arch, s, l, out, err)) return -1;
        }
    }
    /* Tied: HF ties lm_head to the embedding even when the file also stores
     * an lm_head.weight, so the embedding is what it computes with. */
    if (c->tie_word_embeddings) m->weights.lm_head = m->weights.embed;
    c->dtype = m->weights.embed.dtype;
    return 0;
}

cv_model *cv_model_load(const char *dir, cv_error *err)
{
    cv_model *m = calloc(1, sizeof *m);
    if (!m) {
        cv_errorf(err, "%s: out of memory", dir);
        return NULL;
    }
    const cv_arch *arch = NULL;
    if (cv_config_load(dir, &m->config, &arch, err) || model_open_weights(m, dir, err)) {
        cv_model_free(m);
        return NULL;
    }
    /* The Llama family's base_model_prefix is "model" too (LlamaPreTrainedModel). */
    m->base_prefix = arch->base_prefix ? arch->base_prefix : "model.";
    if (model_bind_all(m, dir, arch, err)) {
        cv_model_free(m);
        return NULL;
    }
    return m;
}

void cv_model_free_tensor_list(cv_safetensors_entry *entries, size_t n_entries)
{
    for (size_t i = 0; entries && i < n_entries; i++)
        free((char *)entries[i].name);
    free(entries);
}

/* Adds the stored tensor of spec S; the parts of a fused tensor after the
 * first are the same stored tensor and add nothing. */
static int list_add(cv_safetensors_entry *list, size_t *n, const cv_model_config *cfg,
                    const cv_tensor_spec *s, int layer, cv_dtype dtype, cv_error *err)
{
    if (s->n_parts > 1 && s->part > 0) return 0;
    char name[256];
    snprintf(name, sizeof name, s->pattern, layer);
    cv_safetensors_entry *e = &list[*n];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    if (!e->name) return cv_errorf(err, "out of memory listing tensors");
    e->tensor.dtype = dtype;
    e->tensor.n_dims = s->n_dims;
    for (int d = 0; d < s->n_dims; d++)
        e->tensor.shape[d] = cv_arch_dim(cfg, s->dims[d]);
    (*n)++;
    return 0;
}

int cv_model_tensor_list(const cv_model_config *cfg, cv_dtype dtype, cv_safetensors_entry **entries,
                         size_t *n_entries, cv_error *err)
{
    const cv_arch *arch = cv_arch_find(cfg->architecture);
    if (!arch) return cv_errorf(err, "unknown architecture '%s'", cfg->architecture);
    size_t cap = arch->n_global_tensors + (size_t)cfg->n_layers * arch->n_layer_tensors;
    cv_safetensors_entry *list = calloc(cap, sizeof *list);
    if (!list) return cv_errorf(err, "out of memory listing %zu tensors", cap);
    size_t n = 0;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < arch->n_global_tensors; i++)
        if (cv_arch_needs(arch, &arch->global_tensors[i], cfg))
            rc = list_add(list, &n, cfg, &arch->global_tensors[i], -1, dtype, err);
    for (int l = 0; rc == 0 && l < cfg->n_layers; l++)
        for (size_t i = 0; rc == 0 && i < arch->n_layer_tensors; i++)
            if (cv_arch_needs(arch, &arch->layer_tensors[i], cfg))
                rc = list_add(list, &n, cfg, &arch->layer_tensors[i], l, dtype, err);
    if (rc) {
        cv_model_free_tensor_list(list, n);
        return -1;
    }
    *entries = list;
    *n_entries = n;
    return 0;
}

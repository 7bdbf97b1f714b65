/* Reading a PEFT LoRA adapter directory (adapter_config.json and
 * adapter_model.safetensors / .bin) into fp32 A and B matrices. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lora/lora.h"

static const char *const target_names[CV_LORA_N_TARGETS] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

void cv_lora_target_dims(const cv_model_config *c, cv_lora_target target, int *in, int *out)
{
    const int h = c->hidden_size, q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
    const int f = c->intermediate_size;
    static const int8_t kind_in[CV_LORA_N_TARGETS] = {0, 0, 0, 1, 0, 0, 2};
    static const int8_t kind_out[CV_LORA_N_TARGETS] = {1, 3, 3, 0, 2, 2, 0};
    const int dims[4] = {h, q, f, kv};
    *in = dims[kind_in[target]];
    *out = dims[kind_out[target]];
}

static int target_of(const char *name)
{
    for (int k = 0; k < CV_LORA_N_TARGETS; k++)
        if (!strcmp(name, target_names[k])) return k;
    return -1;
}

/* A target_modules entry: PEFT matches a name by its last components, so
 * "self_attn.q_proj" and "q_proj" name the same module. */
static int check_target_module(const char *dir, const char *entry, cv_error *err)
{
    const char *dot = strrchr(entry, '.');
    const char *last = dot ? dot + 1 : entry;
    if (target_of(last) >= 0) return 0;
    if (!strcmp(last, "embed_tokens") || !strcmp(last, "lm_head"))
        return cv_errorf(err,
                         "%s/adapter_config.json: target_modules: '%s': embedding and lm_head "
                         "adapters are not supported",
                         dir, entry);
    return cv_errorf(err,
                     "%s/adapter_config.json: target_modules: '%s' is not a module cvllm "
                     "applies LoRA to (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
                     "down_proj)",
                     dir, entry);
}

/* A key that must be absent, null, false or empty: what cvllm cannot apply. */
static bool is_set(const json_t *v)
{
    if (!v || json_is_null(v) || json_is_false(v)) return false;
    if (json_is_array(v)) return json_array_size(v) > 0;
    if (json_is_object(v)) return json_object_size(v) > 0;
    return true;
}

typedef struct adapter_config {
    int r;
    double alpha;
    bool rslora;
} adapter_config;

static int read_config(const char *dir, int max_rank, adapter_config *ac, cv_error *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) return cv_errorf(err, "%s: %s", path, je.text);
    int rc = -1;
    const json_t *v;
    static const struct {
        const char *key, *what;
    } refused[] = {
        {"use_dora", "DoRA adapters are not supported"},
        {"modules_to_save", "adapters that save whole modules are not supported"},
        {"rank_pattern", "per-module ranks are not supported"},
        {"alpha_pattern", "per-module alphas are not supported"},
        {"layers_to_transform", "adapters of some layers only are not supported"},
    };
    if (!json_is_object(root)) {
        cv_errorf(err, "%s: expected a JSON object", path);
        goto out;
    }
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        if (is_set(json_object_get(root, refused[i].key))) {
            cv_errorf(err, "%s: %s: %s", path, refused[i].key, refused[i].what);
            goto out;
        }
    v = json_object_get(root, "peft_type");
    if (v && (!json_is_string(v) || strcmp(json_string_value(v), "LORA"))) {
        cv_errorf(err, "%s: peft_type: only LORA adapters are supported", path);
        goto out;
    }
    v = json_object_get(root, "bias");
    if (v && !json_is_null(v) && (!json_is_string(v) || strcmp(json_string_value(v), "none"))) {
        cv_errorf(err, "%s: bias: only \"none\" is supported", path);
        goto out;
    }
    v = json_object_get(root, "r");
    if (!json_is_integer(v) || json_integer_value(v) < 1) {
        cv_errorf(err, "%s: r: expected a positive integer", path);
        goto out;
    }
    ac->r = (int)json_integer_value(v);
    if (ac->r > max_rank) {
        cv_errorf(err, "%s: LoRA rank %d is greater than max_lora_rank %d.", path, ac->r, max_rank);
        goto out;
    }
    v = json_object_get(root, "lora_alpha");
    if (v && !json_is_number(v)) {
        cv_errorf(err, "%s: lora_alpha: expected a number", path);
        goto out;
    }
    ac->alpha = v ? json_number_value(v) : 8.0; /* PEFT's default */
    v = json_object_get(root, "use_rslora");
    if (v && !json_is_boolean(v)) {
        cv_errorf(err, "%s: use_rslora: expected true or false", path);
        goto out;
    }
    ac->rslora = v && json_is_true(v);
    /* fan_in_fan_out only says the base weight is stored transposed (GPT-2's
     * Conv1D); lora_A / lora_B keep nn.Linear's shapes either way, and PEFT
     * resets it to false for the Linear projections targeted here. */
    v = json_object_get(root, "fan_in_fan_out");
    if (v && !json_is_boolean(v)) {
        cv_errorf(err, "%s: fan_in_fan_out: expected true or false", path);
        goto out;
    }
    v = json_object_get(root, "target_modules");
    if (json_is_string(v)) {
        if (strcmp(json_string_value(v), "all-linear")) {
            cv_errorf(err,
                      "%s: target_modules: a regular expression ('%s') is not supported; give a "
                      "list of module names or \"all-linear\"",
                      path, json_string_value(v));
            goto out;
        }
    } else if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++) {
            const json_t *e = json_array_get(v, i);
            if (!json_is_string(e)) {
                cv_errorf(err, "%s: target_modules: expected a list of strings", path);
                goto out;
            }
            if (check_target_module(dir, json_string_value(e), err) < 0) goto out;
        }
    } else {
        cv_errorf(err, "%s: target_modules: expected a list of module names", path);
        goto out;
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

/* "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight" ->
 * layer 3, CV_LORA_Q, is_b false. -1 with err for any other tensor. */
static int parse_name(const char *file, const char *name, const cv_model_config *cfg, int *layer,
                      int *target, bool *is_b, cv_error *err)
{
    if (strstr(name, "lora_embedding_") || strstr(name, "embed_tokens") || strstr(name, "lm_head"))
        return cv_errorf(err, "%s: tensor '%s': embedding and lm_head adapters are not supported",
                         file, name);
    const char *p = strstr(name, "layers.");
    const char *ab = strstr(name, ".lora_A.weight");
    *is_b = false;
    if (!ab) {
        ab = strstr(name, ".lora_B.weight");
        *is_b = true;
    }
    if (!p || !ab || ab[14] != '\0')
        return cv_errorf(err,
                         "%s: tensor '%s' is not a LoRA weight of a layer's projection "
                         "(...layers.N.<module>.lora_A.weight / lora_B.weight)",
                         file, name);
    char *end;
    long l = strtol(p + 7, &end, 10);
    if (end == p + 7 || *end != '.' || l < 0 || l >= cfg->n_layers)
        return cv_errorf(err, "%s: tensor '%s': layer index out of range (the model has %d)", file,
                         name, cfg->n_layers);
    const char *m = ab;
    while (m > end && m[-1] != '.')
        m--;
    char module[32];
    snprintf(module, sizeof module, "%.*s", (int)(ab - m), m);
    *target = target_of(module);
    if (*target < 0)
        return cv_errorf(err,
                         "%s: tensor '%s': module '%s' is not one cvllm applies LoRA to "
                         "(q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)",
                         file, name, module);
    *layer = (int)l;
    return 0;
}

static int weights_path(const char *dir, char *path, size_t size, cv_error *err)
{
    struct stat st;
    snprintf(path, size, "%s/adapter_model.safetensors", dir);
    if (stat(path, &st) == 0) return 0;
    snprintf(path, size, "%s/adapter_model.bin", dir);
    if (stat(path, &st) == 0) return 0;
    return cv_errorf(err, "%s: no adapter_model.safetensors or adapter_model.bin", dir);
}

/* Reads the weights file in two passes: the names first (which layers and
 * projections the adapter has, both halves each), so that memory is taken
 * only for those, then shapes and values. */
static int read_weights(const char *dir, const cv_model_config *cfg, cv_lora_adapter *a,
                        cv_error *err)
{
    char path[4200];
    if (weights_path(dir, path, sizeof path, err) < 0) return -1;
    cv_tensor_file *tf = cv_tensor_file_open(path, err);
    if (!tf) return -1;
    const int N = CV_LORA_N_TARGETS, r = a->rank, n_mods = cfg->n_layers * N;
    uint8_t *has = calloc((size_t)n_mods, 1); /* bit 0: lora_A seen, bit 1: lora_B */
    int rc = -1;
    if (!has) {
        cv_errorf(err, "%s: out of memory", path);
        goto out;
    }
    for (size_t i = 0; i < cv_tensor_file_count(tf); i++) {
        int layer = 0, target = 0;
        bool is_b = false;
        if (parse_name(path, cv_tensor_file_name(tf, i), cfg, &layer, &target, &is_b, err) < 0)
            goto out;
        has[layer * N + target] |= (uint8_t)(is_b ? 2 : 1);
    }
    size_t total = 0; /* floats of every A and B present */
    for (int m = 0; m < n_mods; m++) {
        const int l = m / N, k = m % N;
        if (has[m] == 1 || has[m] == 2) {
            cv_errorf(err, "%s: layer %d %s has lora_%s but no lora_%s", path, l, target_names[k],
                      has[m] == 1 ? "A" : "B", has[m] == 1 ? "B" : "A");
            goto out;
        }
        if (has[m]) total += (size_t)r * (size_t)(a->in[k] + a->out[k]);
    }
    a->data = malloc((total ? total : 1) * sizeof(float));
    if (!a->data) {
        cv_errorf(err, "%s: out of memory for %zu floats", path, total);
        goto out;
    }
    size_t off = 0;
    for (int m = 0; m < n_mods; m++) {
        if (!has[m]) continue;
        a->w[m].a = a->data + off;
        off += (size_t)r * a->in[m % N];
        a->w[m].b = a->data + off;
        off += (size_t)r * a->out[m % N];
    }
    for (size_t i = 0; i < cv_tensor_file_count(tf); i++) {
        const char *name = cv_tensor_file_name(tf, i);
        int layer = 0, target = 0;
        bool is_b = false;
        if (parse_name(path, name, cfg, &layer, &target, &is_b, err) < 0) goto out;
        const cv_tensor *t = cv_tensor_file_get(tf, i, err);
        if (!t) goto out;
        const int64_t want0 = is_b ? a->out[target] : r, want1 = is_b ? r : a->in[target];
        if (t->n_dims != 2 || t->shape[0] != want0 || t->shape[1] != want1) {
            if (t->n_dims == 2)
                cv_errorf(err,
                          "%s: tensor '%s' has shape [%lld, %lld]; expected [%lld, %lld] (r %d)",
                          path, name, (long long)t->shape[0], (long long)t->shape[1],
                          (long long)want0, (long long)want1, r);
            else
                cv_errorf(err, "%s: tensor '%s' has %d dimensions; expected [%lld, %lld] (r %d)",
                          path, name, t->n_dims, (long long)want0, (long long)want1, r);
            goto out;
        }
        const cv_lora_weights *w = &a->w[layer * N + target];
        float *dst = (float *)(is_b ? w->b : w->a);
        for (int64_t j = 0; j < want0 * want1; j++)
            dst[j] = cv_dtype_load(t->data, (size_t)j, t->dtype);
    }
    rc = 0;
out:
    free(has);
    cv_tensor_file_close(tf);
    return rc;
}

int cv_lora_adapter_load(const char *dir, const cv_model_config *cfg, int max_rank,
                         cv_lora_adapter **out, cv_error *err)
{
    *out = NULL;
    if (cfg->plain_mlp || cfg->proj_dim > 0)
        return cv_errorf(err,
                         "%s: LoRA adapters need a model with q/k/v/o and gate/up/down "
                         "projections (Llama, Mistral, Qwen2, Qwen3); %s has none",
                         dir, cfg->architecture);
    adapter_config ac;
    if (read_config(dir, max_rank, &ac, err) < 0) return -1;
    cv_lora_adapter *a = calloc(1, sizeof *a);
    if (!a) return cv_errorf(err, "%s: out of memory", dir);
    a->rank = ac.r;
    a->scale = (float)(ac.rslora ? ac.alpha / sqrt((double)ac.r) : ac.alpha / ac.r);
    a->n_layers = cfg->n_layers;
    for (int k = 0; k < CV_LORA_N_TARGETS; k++)
        cv_lora_target_dims(cfg, (cv_lora_target)k, &a->in[k], &a->out[k]);
    a->w = calloc((size_t)cfg->n_layers * CV_LORA_N_TARGETS, sizeof *a->w);
    if (!a->w) {
        cv_lora_adapter_free(a);
        return cv_errorf(err, "%s: out of memory", dir);
    }
    if (read_weights(dir, cfg, a, err) < 0) {
        cv_lora_adapter_free(a);
        return -1;
    }
    *out = a;
    return 0;
}

void cv_lora_adapter_free(cv_lora_adapter *a)
{
    if (!a) return;
    free(a->w);
    free(a->data);
    free(a);
}

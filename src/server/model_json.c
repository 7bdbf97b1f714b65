/* model.json -> engine arguments; hub ids through src/hub. */
#include "server/model_json.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "base/file.h"
#include "hub/hub.h"

static bool is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* ---- typed key readers -------------------------------------------------- */

typedef struct jctx {
    const char *path;
    cv_error *err;
} jctx;

static int key_err(const jctx *c, const char *key, const char *why)
{
    return cv_errorf(c->err, "%s: key '%s': %s", c->path, key, why);
}

/* Values may come as strings, as the upstream vLLM backend tests write
 * them ("enable_lora": "true", numbers as vLLM's argument parser reads
 * them): "true"/"false" in any case, and decimal numbers. */
static bool str_bool(json_t *v, bool *out)
{
    const char *s = json_string_value(v);
    if (!s) return false;
    if (!strcasecmp(s, "true") || !strcasecmp(s, "false")) {
        *out = (s[0] | 0x20) == 't';
        return true;
    }
    return false;
}

static bool str_number(json_t *v, double *out)
{
    const char *s = json_string_value(v);
    if (!s || !*s || isspace((unsigned char)*s)) return false;
    char *end;
    errno = 0;
    double d = strtod(s, &end);
    if (errno || *end || !isfinite(d)) return false;
    *out = d;
    return true;
}

static bool is_bool(json_t *v)
{
    bool b;
    return json_is_boolean(v) || str_bool(v, &b);
}

static bool is_number(json_t *v, double *out)
{
    if (json_is_number(v)) {
        *out = json_number_value(v);
        return true;
    }
    return str_number(v, out);
}

static bool is_integer(json_t *v, double *out)
{
    if (json_is_integer(v)) {
        *out = (double)json_integer_value(v);
        return true;
    }
    return is_number(v, out) && floor(*out) == *out;
}

static int get_bool(const jctx *c, const char *key, json_t *v, bool *out)
{
    if (json_is_boolean(v))
        *out = json_is_true(v);
    else if (!str_bool(v, out))
        return key_err(c, key, "expected true or false");
    return 0;
}

static int get_int(const jctx *c, const char *key, json_t *v, long long lo, long long hi,
                   long long *out)
{
    double d;
    if (!is_integer(v, &d)) return key_err(c, key, "expected an integer");
    if (d < (double)lo || d > (double)hi) {
        char m[128];
        snprintf(m, sizeof m, "value %.0f out of range [%lld, %lld]", d, lo, hi);
        return key_err(c, key, m);
    }
    *out = (long long)d;
    return 0;
}

static int get_str(const jctx *c, const char *key, json_t *v, const char **out)
{
    if (!json_is_string(v)) return key_err(c, key, "expected a string");
    *out = json_string_value(v);
    return 0;
}

/* A model or tokenizer location -> an existing directory: an absolute path,
 * a path relative to the working directory or to version_dir, else a hub
 * id resolved (and downloaded when missing) by src/hub. */
static int resolve_model_path(const jctx *c, const char *key, const char *val,
                              const char *version_dir, const cv_hub_opts *hub, char *out,
                              size_t cap)
{
    char p[8400];
    if (val[0] == '/' || is_dir(val)) {
        snprintf(p, sizeof p, "%s", val);
    } else {
        snprintf(p, sizeof p, "%s/%s", version_dir, val);
        if (!is_dir(p)) {
            cv_error e;
            if (!cv_hub_is_repo_id(val)) {
                snprintf(p, sizeof p,
                         "'%.4000s' is not a local directory nor a hub id of the form org/name",
                         val);
                return key_err(c, key, p);
            }
            if (cv_hub_resolve(val, hub, p, sizeof p, &e) < 0) return key_err(c, key, e.msg);
        }
    }
    if (!is_dir(p)) {
        char m[4400];
        snprintf(m, sizeof m, "'%.4000s' is not a directory", p);
        return key_err(c, key, m);
    }
    if (strlen(p) >= cap) return key_err(c, key, "path too long");
    memcpy(out, p, strlen(p) + 1);
    return 0;
}

/* "model" and "tokenizer" with the keys that say where and which revision
 * (vLLM: the tokenizer defaults to the model, tokenizer_revision to
 * revision; download_dir is the cache the model is downloaded into). */
typedef struct model_keys {
    const char *model, *tokenizer, *revision, *tokenizer_revision, *download_dir;
} model_keys;

static int resolve_models(const jctx *c, const model_keys *k, const char *version_dir,
                          cv_engine_args *args)
{
    cv_hub_opts hub = {.revision = k->revision, .cache_dir = k->download_dir, .want = CV_HUB_MODEL};
    if (resolve_model_path(c, "model", k->model, version_dir, &hub, args->model,
                           sizeof args->model) < 0)
        return -1;
    const char *tok_rev = k->tokenizer_revision ? k->tokenizer_revision : k->revision;
    const char *tok = k->tokenizer;
    bool same_rev = !tok_rev || (k->revision && !strcmp(tok_rev, k->revision));
    /* A tokenizer_revision of its own makes the model id's tokenizer files
     * a lookup of their own. */
    if (!tok && !same_rev && cv_hub_is_repo_id(k->model)) tok = k->model;
    if (!tok || (!strcmp(tok, k->model) && same_rev)) return 0;
    cv_hub_opts tok_hub = {.revision = tok_rev, .want = CV_HUB_TOKENIZER};
    return resolve_model_path(c, "tokenizer", tok, version_dir, &tok_hub, args->tokenizer,
                              sizeof args->tokenizer);
}

/* Keys vLLM accepts that have no meaning for cvllm's engine; checked for
 * type and otherwise ignored so Triton model.json files load unchanged. */
typedef enum { T_BOOL, T_INT, T_NUM, T_STR, T_ANY } jtype;
static const struct {
    const char *key;
    jtype type;
} ignored_keys[] = {
    {"disable_log_requests", T_BOOL},
    {"trust_remote_code", T_BOOL},
    {"swap_space", T_NUM},
    {"cpu_offload_gb", T_NUM},
    {"max_seq_len_to_capture", T_INT},
    {"disable_custom_all_reduce", T_BOOL},
    {"tokenizer_mode", T_STR},
    {"max_logprobs", T_INT},
    {"distributed_executor_backend", T_ANY},
    {"quantization", T_ANY},
    {"served_model_name", T_ANY},
    {"enable_chunked_prefill", T_BOOL},
    {"disable_sliding_window", T_BOOL},
    {"worker_use_ray", T_BOOL},
    {"engine_use_ray", T_BOOL},
};

static int check_ignored(const jctx *c, const char *key, json_t *v, bool *known)
{
    double d;
    *known = false;
    for (size_t i = 0; i < sizeof ignored_keys / sizeof *ignored_keys; i++) {
        if (strcmp(key, ignored_keys[i].key)) continue;
        *known = true;
        switch (ignored_keys[i].type) {
        case T_BOOL:
            return is_bool(v) ? 0 : key_err(c, key, "expected true or false");
        case T_INT:
            return is_integer(v, &d) ? 0 : key_err(c, key, "expected an integer");
        case T_NUM:
            return is_number(v, &d) ? 0 : key_err(c, key, "expected a number");
        case T_STR:
            return json_is_string(v) ? 0 : key_err(c, key, "expected a string");
        case T_ANY:
            return 0;
        }
    }
    return 0;
}

/* multi_lora.json: adapter names and their PEFT directories (relative:
 * to the working directory when there, else to the version directory).
 * args' lora arrays point into extra, which cv_engine_create reads. */
static int read_loras(const char *version_dir, cv_engine_args *args, cv_model_json_extra *extra,
                      cv_error *err)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/multi_lora.json", version_dir);
    FILE *fp = fopen(path, "r");
    if (!fp) return 0;
    fclose(fp);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) return cv_errorf(err, "%s:%d: %s", path, je.line, je.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return cv_errorf(err, "%s: expected an object {\"lora_name\": \"/path\", ...}", path);
    }
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v)
    {
        if (!json_is_string(v) || extra->n_loras == CV_MAX_LORAS || strlen(k) >= 128) {
            json_decref(root);
            return cv_errorf(err, "%s: key '%s': expected a path string (at most %d adapters)",
                             path, k, CV_MAX_LORAS);
        }
        const char *p = json_string_value(v);
        char *dst = extra->lora_paths[extra->n_loras];
        struct stat st;
        if (p[0] == '/' || stat(p, &st) == 0 || !version_dir)
            snprintf(dst, sizeof extra->lora_paths[0], "%s", p);
        else
            snprintf(dst, sizeof extra->lora_paths[0], "%s/%s", version_dir, p);
        snprintf(extra->lora_names[extra->n_loras], 128, "%s", k);
        extra->lora_name_ptrs[extra->n_loras] = extra->lora_names[extra->n_loras];
        extra->lora_path_ptrs[extra->n_loras] = dst;
        extra->n_loras++;
    }
    json_decref(root);
    args->n_lora_modules = extra->n_loras;
    args->lora_names = extra->lora_name_ptrs;
    args->lora_paths = extra->lora_path_ptrs;
    return 0;
}

int cv_model_json_parse(const char *text, size_t len, const char *path, const char *version_dir,
                        cv_engine_args *args, cv_model_json_extra *extra, cv_error *err)
{
    memset(extra, 0, sizeof *extra);
    extra->tensor_parallel_size = 1;
    extra->pipeline_parallel_size = 1;
    jctx c = {path, err};
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    if (!root) return cv_errorf(err, "%s:%d: invalid JSON: %s", path, je.line, je.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return cv_errorf(err, "%s: expected a JSON object of engine arguments", path);
    }
    model_keys mk = {0};
    int rc = 0;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        long long n;
        const char *s = "";
        bool known;
        const char **slot = !strcmp(key, "model")                ? &mk.model
                            : !strcmp(key, "tokenizer")          ? &mk.tokenizer
                            : !strcmp(key, "revision")           ? &mk.revision
                            : !strcmp(key, "tokenizer_revision") ? &mk.tokenizer_revision
                            : !strcmp(key, "download_dir")       ? &mk.download_dir
                                                                 : NULL;
        if (slot) {
            /* null = vLLM's default, except for the model itself */
            if (slot != &mk.model && json_is_null(v)) continue;
            rc = get_str(&c, key, v, slot);
        } else if (!strcmp(key, "dtype")) {
            rc = get_str(&c, key, v, &s);
            static const char *const from[] = {"auto",    "float32", "float",
                                               "float16", "half",    "bfloat16"};
            static const char *const to[] = {"auto",    "float32", "float32",
                                             "float16", "float16", "bfloat16"};
            bool ok = false;
            for (size_t i = 0; rc == 0 && i < 6; i++) {
                if (!strcmp(s, from[i])) {
                    snprintf(args->dtype, sizeof args->dtype, "%s", to[i]);
                    ok = true;
                }
            }
            if (rc == 0 && !ok)
                rc = key_err(&c, key,
                             "expected one of auto, float32, float, float16, half, "
                             "bfloat16");
        } else if (!strcmp(key, "device")) {
            rc = get_str(&c, key, v, &s);
            if (rc == 0 && !cv_engine_device_name_valid(s))
                rc = key_err(&c, key, "expected one of auto, cpu, cuda");
            if (rc == 0) snprintf(args->device, sizeof args->device, "%s", s);
        } else if (!strcmp(key, "gpu_memory_utilization")) {
            double d;
            if (!is_number(v, &d))
                rc = key_err(&c, key, "expected a number");
            else if (d <= 0 || d > 1)
                rc = key_err(&c, key, "must be in (0, 1]");
            else
                args->gpu_memory_utilization = d;
        } else if (!strcmp(key, "max_model_len")) {
            if ((rc = get_int(&c, key, v, 1, 1 << 24, &n)) == 0) args->max_model_len = (int)n;
        } else if (!strcmp(key, "block_size")) {
            if ((rc = get_int(&c, key, v, 1, 1024, &n)) == 0) args->block_size = (int)n;
        } else if (!strcmp(key, "max_num_seqs")) {
            if ((rc = get_int(&c, key, v, 1, 1 << 20, &n)) == 0) args->max_num_seqs = (int)n;
        } else if (!strcmp(key, "max_num_batched_tokens")) {
            if ((rc = get_int(&c, key, v, 1, 1 << 26, &n)) == 0)
                args->max_num_batched_tokens = (int)n;
        } else if (!strcmp(key, "kv_cache_dtype")) {
            rc = get_str(&c, key, v, &s);
            if (rc == 0 && strcmp(s, "auto") && strcmp(s, "bfloat16") && strcmp(s, "float16") &&
                strcmp(s, "float32"))
                rc = key_err(&c, key,
                             "expected one of auto, bfloat16, float16, float32 (cvllm has no fp8 "
                             "KV cache)");
            if (rc == 0) snprintf(args->kv_cache_dtype, sizeof args->kv_cache_dtype, "%s", s);
        } else if (!strcmp(key, "fp32_activations")) {
            rc = get_bool(&c, key, v, &args->fp32_activations);
        } else if (!strcmp(key, "enforce_eager")) {
            rc = get_bool(&c, key, v, &args->enforce_eager);
        } else if (!strcmp(key, "async_scheduling")) {
            rc = get_bool(&c, key, v, &args->async_scheduling);
        } else if (!strcmp(key, "enable_prefix_caching")) {
            rc = get_bool(&c, key, v, &args->enable_prefix_caching);
        } else if (!strcmp(key, "seed")) {
            if ((rc = get_int(&c, key, v, 0, INT64_MAX, &n)) == 0) args->seed = (uint64_t)n;
        } else if (!strcmp(key, "kv_cache_memory_bytes")) {
            if ((rc = get_int(&c, key, v, 1, INT64_MAX, &n)) == 0) args->kv_cache_bytes = (size_t)n;
        } else if (!strcmp(key, "tensor_parallel_size")) {
            if ((rc = get_int(&c, key, v, 1, 1024, &n)) == 0) extra->tensor_parallel_size = (int)n;
        } else if (!strcmp(key, "pipeline_parallel_size")) {
            if ((rc = get_int(&c, key, v, 1, 1024, &n)) == 0)
                extra->pipeline_parallel_size = (int)n;
        } else if (!strcmp(key, "enable_lora")) {
            rc = get_bool(&c, key, v, &extra->enable_lora);
            args->enable_lora = extra->enable_lora;
        } else if (!strcmp(key, "max_loras")) {
            if ((rc = get_int(&c, key, v, 1, 64, &n)) == 0) args->max_loras = (int)n;
        } else if (!strcmp(key, "max_lora_rank")) {
            if ((rc = get_int(&c, key, v, 1, 1024, &n)) == 0) args->max_lora_rank = (int)n;
        } else if (!strcmp(key, "max_cpu_loras")) {
            if ((rc = get_int(&c, key, v, 1, 1 << 20, &n)) == 0) args->max_cpu_loras = (int)n;
        } else if (!strcmp(key, "disable_log_stats")) {
            rc = get_bool(&c, key, v, &extra->disable_log_stats);
        } else if (!strcmp(key, "chat_template")) {
            /* vLLM's --chat-template: a file (relative: to the version
             * directory) or, holding a brace or newline, the text itself */
            rc = get_str(&c, key, v, &s);
            bool literal = rc == 0 && strpbrk(s, "{}\n");
            if (rc == 0 &&
                snprintf(extra->chat_template, sizeof extra->chat_template, "%s%s%s",
                         literal || s[0] == '/' ? ""
                         : version_dir          ? version_dir
                                                : ".",
                         literal || s[0] == '/' ? "" : "/", s) >= (int)sizeof extra->chat_template)
                rc = key_err(&c, key, "too long");
        } else if (!strcmp(key, "tool_call_parser")) {
            rc = get_str(&c, key, v, &s);
            if (rc == 0 && strcmp(s, "hermes") && strcmp(s, "llama3_json"))
                rc = key_err(&c, key, "cvllm parses \"hermes\" or \"llama3_json\" tool calls");
            if (rc == 0) snprintf(extra->tool_call_parser, sizeof extra->tool_call_parser, "%s", s);
        } else if (!strcmp(key, "load_format")) {
            rc = get_str(&c, key, v, &s);
            if (rc == 0 && strcmp(s, "auto") && strcmp(s, "safetensors"))
                rc = key_err(&c, key, "cvllm loads \"auto\" or \"safetensors\"");
        } else {
            rc = check_ignored(&c, key, v, &known);
            if (rc == 0 && !known) rc = key_err(&c, key, "unknown engine argument");
        }
        if (rc < 0) break;
    }
    if (rc == 0 && !mk.model)
        rc = key_err(&c, "model", "missing (the HuggingFace model directory or hub id)");
    if (rc == 0) rc = resolve_models(&c, &mk, version_dir, args);
    json_decref(root);
    if (rc == 0 && extra->enable_lora) rc = read_loras(version_dir, args, extra, err);
    return rc;
}

int cv_model_json_load(const char *model_dir, const char *version, cv_engine_args *args,
                       cv_model_json_extra *extra, cv_error *err)
{
    char vdir[4200], path[4300];
    snprintf(vdir, sizeof vdir, "%s/%s", model_dir, version);
    snprintf(path, sizeof path, "%s/model.json", vdir);
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return cv_errorf(err, "'model.json' containing vllm engine args must be provided in '%s'",
                         vdir);
    size_t len = 0;
    char *buf = cv_read_stream(fp, &len);
    fclose(fp);
    if (!buf) return cv_errorf(err, "%s: cannot read: %s", path, strerror(errno));
    int rc = cv_model_json_parse(buf, len, path, vdir, args, extra, err);
    free(buf);
    return rc;
}

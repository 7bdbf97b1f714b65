/* config.pbtxt -> cv_model_config, vLLM auto-completion, Triton JSON. */
#include "server/model_config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/file.h"
#include "server/pbtxt.h"

static const char *const type_names[] = {
    "TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32",
    "TYPE_UINT64",  "TYPE_INT8", "TYPE_INT16", "TYPE_INT32",  "TYPE_INT64",
    "TYPE_FP16",    "TYPE_FP32", "TYPE_FP64",  "TYPE_STRING", "TYPE_BF16",
};
static const char *const kserve_names[] = {
    "INVALID", "BOOL",  "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
    "INT32",   "INT64", "FP16",  "FP32",   "FP64",   "BYTES",  "BF16",
};
static const char *const kind_names[] = {"KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"};

const char *cv_data_type_name(cv_data_type t)
{
    return (unsigned)t <= CV_TYPE_BF16 ? type_names[t] : "TYPE_INVALID";
}

const char *cv_data_type_kserve(cv_data_type t)
{
    return (unsigned)t <= CV_TYPE_BF16 ? kserve_names[t] : "INVALID";
}

const char *cv_instance_kind_name(cv_instance_kind k)
{
    return (unsigned)k <= CV_KIND_MODEL ? kind_names[k] : "KIND_AUTO";
}

/* ---- typed readers over pbtxt fields ------------------------------------ */

typedef struct ctx {
    const char *file;
    cv_error *err;
} ctx;

static int field_err(const ctx *c, const cv_pbtxt_field *f, const char *what)
{
    return cv_errorf(c->err, "%s:%d: field '%s': %s", c->file, f->line, f->name, what);
}

static int want_scalar(const ctx *c, const cv_pbtxt_field *f)
{
    return f->msg ? field_err(c, f, "expected a value, found a message") : 0;
}

static int want_msg(const ctx *c, const cv_pbtxt_field *f)
{
    return f->msg ? 0 : field_err(c, f, "expected a message { ... }");
}

static int read_string(const ctx *c, const cv_pbtxt_field *f, char *dst, size_t cap)
{
    if (want_scalar(c, f) < 0) return -1;
    if (!f->quoted) return field_err(c, f, "expected a quoted string");
    if (f->value_len >= cap || strlen(f->value) != f->value_len)
        return field_err(c, f, "string too long or holds a NUL byte");
    memcpy(dst, f->value, f->value_len + 1);
    return 0;
}

static int read_int(const ctx *c, const cv_pbtxt_field *f, int64_t lo, int64_t hi, int64_t *out)
{
    if (want_scalar(c, f) < 0) return -1;
    if (f->quoted) return field_err(c, f, "expected an integer, found a string");
    errno = 0;
    char *end;
    long long v = strtoll(f->value, &end, 0);
    if (errno || *end || end == f->value || v < lo || v > hi) {
        char m[160];
        snprintf(m, sizeof m, "invalid integer '%s'", f->value);
        return field_err(c, f, m);
    }
    *out = v;
    return 0;
}

static int read_bool(const ctx *c, const cv_pbtxt_field *f, bool *out)
{
    if (want_scalar(c, f) < 0) return -1;
    if (!f->quoted && (!strcmp(f->value, "true") || !strcmp(f->value, "True") ||
                       !strcmp(f->value, "t") || !strcmp(f->value, "1"))) {
        *out = true;
        return 0;
    }
    if (!f->quoted && (!strcmp(f->value, "false") || !strcmp(f->value, "False") ||
                       !strcmp(f->value, "f") || !strcmp(f->value, "0"))) {
        *out = false;
        return 0;
    }
    char m[160];
    snprintf(m, sizeof m, "invalid bool '%s'", f->value);
    return field_err(c, f, m);
}

/* An enum given by name or number, names[0..n). */
static int read_enum(const ctx *c, const cv_pbtxt_field *f, const char *const *names, int n,
                     int *out)
{
    if (want_scalar(c, f) < 0) return -1;
    for (int i = 0; i < n; i++) {
        if (!f->quoted && !strcmp(f->value, names[i])) {
            *out = i;
            return 0;
        }
    }
    int64_t v;
    cv_error ignored;
    ctx quiet = {c->file, &ignored};
    if (!f->quoted && read_int(&quiet, f, 0, n - 1, &v) == 0) {
        *out = (int)v;
        return 0;
    }
    char m[160];
    snprintf(m, sizeof m, "unknown enum value '%s'", f->value);
    return field_err(c, f, m);
}

static int unknown(const ctx *c, const cv_pbtxt_field *f)
{
    return cv_errorf(c->err, "%s:%d: unknown field '%s'", c->file, f->line, f->name);
}

/* ---- messages ----------------------------------------------------------- */

static int parse_tensor(const ctx *c, const cv_pbtxt_field *tf, bool is_input, cv_tensor_config *t)
{
    if (want_msg(c, tf) < 0) return -1;
    memset(t, 0, sizeof *t);
    for (int i = 0; i < tf->msg->n_fields; i++) {
        const cv_pbtxt_field *f = &tf->msg->fields[i];
        int64_t v;
        int e;
        if (!strcmp(f->name, "name")) {
            if (read_string(c, f, t->name, sizeof t->name) < 0) return -1;
        } else if (!strcmp(f->name, "data_type")) {
            if (read_enum(c, f, type_names, CV_TYPE_BF16 + 1, &e) < 0) return -1;
            t->data_type = (cv_data_type)e;
        } else if (!strcmp(f->name, "dims")) {
            if (t->n_dims == CV_MAX_DIMS) return field_err(c, f, "too many dimensions");
            if (read_int(c, f, -1, INT64_MAX, &v) < 0) return -1;
            t->dims[t->n_dims++] = v;
        } else if (is_input && !strcmp(f->name, "optional")) {
            if (read_bool(c, f, &t->optional) < 0) return -1;
        } else if (!strcmp(f->name, "format") || !strcmp(f->name, "is_shape_tensor") ||
                   !strcmp(f->name, "allow_ragged_batch") || !strcmp(f->name, "label_filename")) {
            /* Meaningful for image and TensorRT models only; accepted so
             * configs written for Triton load unchanged. */
            if (want_scalar(c, f) < 0) return -1;
        } else {
            return unknown(c, f);
        }
    }
    if (!t->name[0]) return field_err(c, tf, "missing 'name'");
    return 0;
}

static int parse_group(const ctx *c, const cv_pbtxt_field *gf, cv_instance_group *g)
{
    if (want_msg(c, gf) < 0) return -1;
    memset(g, 0, sizeof *g);
    g->count = 1;
    for (int i = 0; i < gf->msg->n_fields; i++) {
        const cv_pbtxt_field *f = &gf->msg->fields[i];
        int64_t v;
        int e;
        if (!strcmp(f->name, "name")) {
            if (read_string(c, f, g->name, sizeof g->name) < 0) return -1;
        } else if (!strcmp(f->name, "kind")) {
            if (read_enum(c, f, kind_names, 4, &e) < 0) return -1;
            g->kind = (cv_instance_kind)e;
        } else if (!strcmp(f->name, "count")) {
            if (read_int(c, f, 1, 1024, &v) < 0) return -1;
            g->count = (int)v;
        } else if (!strcmp(f->name, "gpus")) {
            if (g->n_gpus == 16) return field_err(c, f, "too many gpus");
            if (read_int(c, f, 0, 1024, &v) < 0) return -1;
            g->gpus[g->n_gpus++] = (int)v;
        } else if (!strcmp(f->name, "host_policy") || !strcmp(f->name, "passive") ||
                   !strcmp(f->name, "profile")) {
            if (want_scalar(c, f) < 0) return -1;
        } else {
            return unknown(c, f);
        }
    }
    return 0;
}

static int parse_param(const ctx *c, const cv_pbtxt_field *pf, cv_model_config *cfg)
{
    if (want_msg(c, pf) < 0) return -1;
    if (cfg->n_params == CV_MAX_PARAMS) return field_err(c, pf, "too many parameters");
    cv_model_param *p = &cfg->params[cfg->n_params];
    memset(p, 0, sizeof *p);
    bool has_key = false;
    for (int i = 0; i < pf->msg->n_fields; i++) {
        const cv_pbtxt_field *f = &pf->msg->fields[i];
        if (!strcmp(f->name, "key")) {
            if (read_string(c, f, p->key, sizeof p->key) < 0) return -1;
            has_key = true;
        } else if (!strcmp(f->name, "value")) {
            if (want_msg(c, f) < 0) return -1;
            for (int j = 0; j < f->msg->n_fields; j++) {
                const cv_pbtxt_field *vf = &f->msg->fields[j];
                if (strcmp(vf->name, "string_value")) return unknown(c, vf);
                if (read_string(c, vf, p->value, sizeof p->value) < 0) return -1;
            }
        } else {
            return unknown(c, f);
        }
    }
    if (!has_key) return field_err(c, pf, "missing 'key'");
    cfg->n_params++;
    return 0;
}

static int parse_version_policy(const ctx *c, const cv_pbtxt_field *vf, cv_model_config *cfg)
{
    if (want_msg(c, vf) < 0) return -1;
    for (int i = 0; i < vf->msg->n_fields; i++) {
        const cv_pbtxt_field *f = &vf->msg->fields[i];
        if (want_msg(c, f) < 0) return -1;
        int64_t v;
        if (!strcmp(f->name, "latest")) {
            cfg->version_policy = CV_VERSIONS_LATEST;
            for (int j = 0; j < f->msg->n_fields; j++) {
                const cv_pbtxt_field *g = &f->msg->fields[j];
                if (strcmp(g->name, "num_versions")) return unknown(c, g);
                if (read_int(c, g, 1, CV_MAX_VERSIONS, &v) < 0) return -1;
                cfg->latest_num_versions = (int)v;
            }
        } else if (!strcmp(f->name, "all")) {
            cfg->version_policy = CV_VERSIONS_ALL;
        } else if (!strcmp(f->name, "specific")) {
            cfg->version_policy = CV_VERSIONS_SPECIFIC;
            for (int j = 0; j < f->msg->n_fields; j++) {
                const cv_pbtxt_field *g = &f->msg->fields[j];
                if (strcmp(g->name, "versions")) return unknown(c, g);
                if (cfg->n_specific == CV_MAX_VERSIONS) return field_err(c, g, "too many versions");
                if (read_int(c, g, 0, INT64_MAX, &v) < 0) return -1;
                cfg->specific[cfg->n_specific++] = v;
            }
        } else {
            return unknown(c, f);
        }
    }
    return 0;
}

/* Models cvllm does not serve, recognised before the vllm schema is
 * applied to them (their configs have fields it does not know). */
static int check_served(const ctx *c, const cv_pbtxt_msg *root)
{
    const char *backend = NULL, *platform = NULL;
    bool ensemble = false;
    for (int i = 0; i < root->n_fields; i++) {
        const cv_pbtxt_field *f = &root->fields[i];
        if (!strcmp(f->name, "backend") && f->value) backend = f->value;
        if (!strcmp(f->name, "platform") && f->value) platform = f->value;
        ensemble |= !strcmp(f->name, "ensemble_scheduling");
    }
    char what[300] = "";
    if (ensemble || (platform && !strcmp(platform, "ensemble")))
        snprintf(what, sizeof what, "the ensemble (platform \"ensemble\")");
    else if (backend && strcmp(backend, "vllm"))
        snprintf(what, sizeof what, "backend \"%.200s\"", backend);
    else if (!backend && platform && platform[0])
        snprintf(what, sizeof what, "platform \"%.200s\"", platform);
    if (!what[0]) return 0;
    return cv_errorf_class(c->err, CV_ERR_UNSUPPORTED,
                           "%s: %s is not served: cvllm serves models of the vllm backend only",
                           c->file, what);
}

int cv_model_config_parse(cv_model_config *cfg, const char *text, size_t len, const char *file,
                          cv_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->latest_num_versions = 1;
    cv_pbtxt_msg *root = cv_pbtxt_parse(text, len, file, err);
    if (!root) return -1;
    ctx c = {file, err};
    int rc = check_served(&c, root);
    for (int i = 0; i < root->n_fields && rc == 0; i++) {
        const cv_pbtxt_field *f = &root->fields[i];
        int64_t v;
        if (!strcmp(f->name, "name")) {
            rc = read_string(&c, f, cfg->name, sizeof cfg->name);
        } else if (!strcmp(f->name, "platform")) {
            rc = read_string(&c, f, cfg->platform, sizeof cfg->platform);
        } else if (!strcmp(f->name, "backend")) {
            rc = read_string(&c, f, cfg->backend, sizeof cfg->backend);
        } else if (!strcmp(f->name, "max_batch_size")) {
            rc = read_int(&c, f, 0, INT32_MAX, &v);
            cfg->max_batch_size = (int)v;
            cfg->has_max_batch_size = true;
        } else if (!strcmp(f->name, "input") || !strcmp(f->name, "output")) {
            bool in = f->name[0] == 'i';
            int *n = in ? &cfg->n_inputs : &cfg->n_outputs;
            if (*n == CV_MAX_TENSORS)
                rc = field_err(&c, f, "too many tensors");
            else
                rc = parse_tensor(&c, f, in, in ? &cfg->inputs[(*n)++] : &cfg->outputs[(*n)++]);
        } else if (!strcmp(f->name, "instance_group")) {
            if (cfg->n_groups == CV_MAX_GROUPS)
                rc = field_err(&c, f, "too many instance groups");
            else
                rc = parse_group(&c, f, &cfg->groups[cfg->n_groups++]);
        } else if (!strcmp(f->name, "parameters")) {
            rc = parse_param(&c, f, cfg);
        } else if (!strcmp(f->name, "version_policy")) {
            rc = parse_version_policy(&c, f, cfg);
        } else if (!strcmp(f->name, "model_transaction_policy")) {
            rc = want_msg(&c, f);
            for (int j = 0; rc == 0 && j < f->msg->n_fields; j++) {
                const cv_pbtxt_field *g = &f->msg->fields[j];
                if (strcmp(g->name, "decoupled"))
                    rc = unknown(&c, g);
                else
                    rc = read_bool(&c, g, &cfg->decoupled);
            }
            cfg->has_decoupled = true;
        } else {
            rc = unknown(&c, f);
        }
    }
    cv_pbtxt_free(root);
    return rc;
}

int cv_model_config_load(cv_model_config *cfg, const char *model_dir, const char *model_name,
                         cv_error *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/config.pbtxt", model_dir);
    FILE *fp = fopen(path, "rb");
    if (!fp) return cv_errorf(err, "%s: cannot open: %s", path, strerror(errno));
    size_t len = 0;
    char *buf = cv_read_stream(fp, &len);
    fclose(fp);
    if (!buf) return cv_errorf(err, "%s: cannot read: %s", path, strerror(errno));
    int rc = cv_model_config_parse(cfg, buf, len, path, err);
    free(buf);
    if (rc < 0) return -1;
    if (!cfg->name[0])
        snprintf(cfg->name, sizeof cfg->name, "%s", model_name);
    else if (strcmp(cfg->name, model_name))
        return cv_errorf(err, "%s: model name '%s' does not match the directory name '%s'", path,
                         cfg->name, model_name);
    return 0;
}

/* ---- vLLM auto-completion ----------------------------------------------- */

typedef struct tensor_default {
    const char *name;
    cv_data_type type;
    int64_t dim;
    bool optional;
} tensor_default;

static const tensor_default vllm_inputs[] = {
    {"text_input", CV_TYPE_STRING, 1, false},
    {"stream", CV_TYPE_BOOL, 1, true},
    {"sampling_parameters", CV_TYPE_STRING, 1, true},
    {"exclude_input_in_output", CV_TYPE_BOOL, 1, true},
    {"return_finish_reason", CV_TYPE_BOOL, 1, true},
    {"return_cumulative_logprob", CV_TYPE_BOOL, 1, true},
    {"return_logprobs", CV_TYPE_BOOL, 1, true},
    {"return_num_input_tokens", CV_TYPE_BOOL, 1, true},
    {"return_num_output_tokens", CV_TYPE_BOOL, 1, true},
};

static const tensor_default vllm_outputs[] = {
    {"text_output", CV_TYPE_STRING, -1, false},
    {"finish_reason", CV_TYPE_STRING, -1, false},
    {"cumulative_logprob", CV_TYPE_FP32, -1, false},
    {"logprobs", CV_TYPE_STRING, -1, false},
    {"num_input_tokens", CV_TYPE_UINT32, 1, false},
    {"num_output_tokens", CV_TYPE_UINT32, -1, false},
};

static void add_missing(cv_tensor_config *list, int *n, const tensor_default *defs, size_t n_defs)
{
    for (size_t i = 0; i < n_defs; i++) {
        bool have = false;
        for (int j = 0; j < *n; j++)
            have |= !strcmp(list[j].name, defs[i].name);
        if (have || *n == CV_MAX_TENSORS) continue;
        cv_tensor_config *t = &list[(*n)++];
        memset(t, 0, sizeof *t);
        snprintf(t->name, sizeof t->name, "%s", defs[i].name);
        t->data_type = defs[i].type;
        t->n_dims = 1;
        t->dims[0] = defs[i].dim;
        t->optional = defs[i].optional;
    }
}

int cv_model_config_autocomplete_vllm(cv_model_config *cfg, cv_error *err)
{
    if (cfg->has_decoupled && !cfg->decoupled)
        return cv_errorf(err, "vLLM Triton backend must be configured to use decoupled model "
                              "transaction policy");
    cfg->has_decoupled = true;
    cfg->decoupled = true;
    if (cfg->has_max_batch_size && cfg->max_batch_size != 0)
        return cv_errorf(err,
                         "model '%s': max_batch_size must be 0 for the vLLM backend "
                         "(the engine batches continuously), got %d",
                         cfg->name, cfg->max_batch_size);
    cfg->has_max_batch_size = true;
    cfg->max_batch_size = 0;
    add_missing(cfg->inputs, &cfg->n_inputs, vllm_inputs, sizeof vllm_inputs / sizeof *vllm_inputs);
    add_missing(cfg->outputs, &cfg->n_outputs, vllm_outputs,
                sizeof vllm_outputs / sizeof *vllm_outputs);
    if (cfg->n_groups == 0) {
        cfg->n_groups = 1;
        memset(&cfg->groups[0], 0, sizeof cfg->groups[0]);
        cfg->groups[0].kind = CV_KIND_MODEL;
        cfg->groups[0].count = 1;
    }
    for (int i = 0; i < cfg->n_groups; i++) {
        if (!cfg->groups[i].name[0])
            snprintf(cfg->groups[i].name, sizeof cfg->groups[i].name, "%.100s_%d", cfg->name, i);
    }
    return 0;
}

/* ---- lookups and JSON --------------------------------------------------- */

const char *cv_model_config_param(const cv_model_config *cfg, const char *key)
{
    for (int i = 0; i < cfg->n_params; i++)
        if (!strcmp(cfg->params[i].key, key)) return cfg->params[i].value;
    return NULL;
}

bool cv_model_config_param_true(const cv_model_config *cfg, const char *key)
{
    const char *v = cv_model_config_param(cfg, key);
    return v && !strcasecmp(v, "true");
}

const cv_tensor_config *cv_model_config_input(const cv_model_config *cfg, const char *name)
{
    for (int i = 0; i < cfg->n_inputs; i++)
        if (!strcmp(cfg->inputs[i].name, name)) return &cfg->inputs[i];
    return NULL;
}

static json_t *tensor_json(const cv_tensor_config *t, bool is_input)
{
    json_t *dims = json_array();
    for (int i = 0; i < t->n_dims; i++)
        json_array_append_new(dims, json_integer(t->dims[i]));
    json_t *o = json_pack("{s:s, s:s, s:o}", "name", t->name, "data_type",
                          cv_data_type_name(t->data_type), "dims", dims);
    if (!o) return NULL;
    if (is_input) {
        json_object_set_new(o, "format", json_string("FORMAT_NONE"));
        json_object_set_new(o, "is_shape_tensor", json_false());
        json_object_set_new(o, "allow_ragged_batch", json_false());
        json_object_set_new(o, "optional", json_boolean(t->optional));
    } else {
        json_object_set_new(o, "label_filename", json_string(""));
        json_object_set_new(o, "is_shape_tensor", json_false());
    }
    return o;
}

json_t *cv_model_config_to_json(const cv_model_config *cfg)
{
    json_t *o = json_object();
    if (!o) return NULL;
    json_object_set_new(o, "name", json_string(cfg->name));
    json_object_set_new(o, "platform", json_string(cfg->platform));
    json_object_set_new(o, "backend", json_string(cfg->backend));
    json_t *vp;
    if (cfg->version_policy == CV_VERSIONS_ALL) {
        vp = json_pack("{s:{}}", "all");
    } else if (cfg->version_policy == CV_VERSIONS_SPECIFIC) {
        json_t *vs = json_array();
        for (int i = 0; i < cfg->n_specific; i++)
            json_array_append_new(vs, json_integer(cfg->specific[i]));
        vp = json_pack("{s:{s:o}}", "specific", "versions", vs);
    } else {
        vp = json_pack("{s:{s:i}}", "latest", "num_versions", cfg->latest_num_versions);
    }
    json_object_set_new(o, "version_policy", vp);
    json_object_set_new(o, "max_batch_size", json_integer(cfg->max_batch_size));
    json_t *in = json_array(), *out = json_array(), *groups = json_array(), *params = json_object();
    for (int i = 0; i < cfg->n_inputs; i++)
        json_array_append_new(in, tensor_json(&cfg->inputs[i], true));
    for (int i = 0; i < cfg->n_outputs; i++)
        json_array_append_new(out, tensor_json(&cfg->outputs[i], false));
    for (int i = 0; i < cfg->n_groups; i++) {
        const cv_instance_group *g = &cfg->groups[i];
        json_t *gpus = json_array();
        for (int j = 0; j < g->n_gpus; j++)
            json_array_append_new(gpus, json_integer(g->gpus[j]));
        json_array_append_new(groups, json_pack("{s:s, s:s, s:i, s:o}", "name", g->name, "kind",
                                                cv_instance_kind_name(g->kind), "count", g->count,
                                                "gpus", gpus));
    }
    for (int i = 0; i < cfg->n_params; i++)
        json_object_set_new(params, cfg->params[i].key,
                            json_pack("{s:s}", "string_value", cfg->params[i].value));
    json_object_set_new(o, "input", in);
    json_object_set_new(o, "output", out);
    json_object_set_new(o, "instance_group", groups);
    json_object_set_new(o, "parameters", params);
    json_object_set_new(o, "model_transaction_policy",
                        json_pack("{s:b}", "decoupled", cfg->decoupled));
    return o;
}

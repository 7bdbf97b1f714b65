/* SamplingParams: vLLM's defaults, JSON parsing (Triton's sampling_parameters
 * tensor, where numbers and bools may arrive as strings) and vLLM's range
 * checks with vLLM's wording, so clients that match on messages keep
 * working. */
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cvllm/engine.h"
#include "engine_internal.h"

void cv_sampling_params_default(cv_sampling_params *p)
{
    memset(p, 0, sizeof(*p));
    p->n = 1;
    p->best_of = 0;
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->top_k = 0;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
    p->max_tokens = 16;
    p->logprobs = -1;
    p->prompt_logprobs = -1;
    p->skip_special_tokens = true;
    p->spaces_between_special_tokens = true;
}

void cv_sampling_params_free(cv_sampling_params *p)
{
    for (int i = 0; i < p->n_stop; i++)
        free(p->stop[i]);
    free(p->stop);
    free(p->stop_token_ids);
    p->stop = NULL;
    p->n_stop = 0;
    p->stop_token_ids = NULL;
    p->n_stop_token_ids = 0;
}

int cv_sampling_params_copy(cv_sampling_params *dst, const cv_sampling_params *src)
{
    *dst = *src;
    dst->stop = NULL;
    dst->n_stop = 0;
    dst->stop_token_ids = NULL;
    dst->n_stop_token_ids = 0;
    if (src->n_stop > 0) {
        dst->stop = calloc((size_t)src->n_stop, sizeof(char *));
        if (!dst->stop) return -1;
        for (int i = 0; i < src->n_stop; i++) {
            dst->stop[i] = strdup(src->stop[i]);
            if (!dst->stop[i]) {
                cv_sampling_params_free(dst);
                return -1;
            }
            dst->n_stop = i + 1;
        }
    }
    if (src->n_stop_token_ids > 0) {
        dst->stop_token_ids = malloc((size_t)src->n_stop_token_ids * sizeof(int32_t));
        if (!dst->stop_token_ids) {
            cv_sampling_params_free(dst);
            return -1;
        }
        memcpy(dst->stop_token_ids, src->stop_token_ids,
               (size_t)src->n_stop_token_ids * sizeof(int32_t));
        dst->n_stop_token_ids = src->n_stop_token_ids;
    }
    return 0;
}

/* ---- Python-style float formatting for messages ------------------------ */

/* Writes v as Python's repr(float) would for the float32 value: the
 * shortest digits that read back to the same float, ".0" on integers,
 * exponent form only outside [1e-4, 1e16). */
void fmt_pyfloat(char *buf, size_t size, float v)
{
    if (isnan(v)) {
        snprintf(buf, size, "nan");
        return;
    }
    if (isinf(v)) {
        snprintf(buf, size, v < 0 ? "-inf" : "inf");
        return;
    }
    int prec = 1;
    for (; prec < 9; prec++) {
        snprintf(buf, size, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v) break;
    }
    snprintf(buf, size, "%.*e", prec - 1, (double)v);
    int exp10 = atoi(strchr(buf, 'e') + 1);
    if (exp10 >= -4 && exp10 < 16) {
        int decimals = prec - 1 - exp10;
        snprintf(buf, size, "%.*f", decimals > 0 ? decimals : 0, (double)v);
        if (!strchr(buf, '.')) strncat(buf, ".0", size - strlen(buf) - 1);
    } else {
        snprintf(buf, size, "%.*g", prec, (double)v);
    }
}

/* ---- JSON fields ------------------------------------------------------- */

static const char *skip_ws(const char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    return s;
}

static int json_desc(const json_t *v, char *buf, size_t size)
{
    char *dump = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    if (!dump) return snprintf(buf, size, "?");
    int n = snprintf(buf, size, "%.200s", dump);
    free(dump);
    return n;
}

static int bad_type(const char *field, const char *want, const json_t *v, cv_error *err)
{
    char got[256];
    json_desc(v, got, sizeof(got));
    return cv_errorf(err, "sampling parameter '%s' must be %s, got %s", field, want, got);
}

static int get_int(const json_t *v, const char *field, long long *out, cv_error *err)
{
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d == floor(d) && fabs(d) < 9e18) {
            *out = (long long)d;
            return 0;
        }
    }
    if (json_is_string(v)) {
        const char *s = skip_ws(json_string_value(v));
        char *end;
        errno = 0;
        long long x = strtoll(s, &end, 10);
        if (end != s && errno == 0 && *skip_ws(end) == '\0') {
            *out = x;
            return 0;
        }
    }
    return bad_type(field, "an integer", v, err);
}

static int get_float(const json_t *v, const char *field, float *out, cv_error *err)
{
    if (json_is_number(v)) {
        *out = (float)json_number_value(v);
        return 0;
    }
    if (json_is_string(v)) {
        const char *s = skip_ws(json_string_value(v));
        char *end;
        double x = strtod(s, &end);
        if (end != s && *skip_ws(end) == '\0') {
            *out = (float)x;
            return 0;
        }
    }
    return bad_type(field, "a number", v, err);
}

static int get_bool(const json_t *v, const char *field, bool *out, cv_error *err)
{
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
        return 0;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (!strcasecmp(s, "true")) {
            *out = true;
            return 0;
        }
        if (!strcasecmp(s, "false")) {
            *out = false;
            return 0;
        }
    }
    return bad_type(field, "a boolean", v, err);
}

static int int_in_range(long long x, const char *field, int *out, cv_error *err)
{
    if (x < -2147483647LL || x > 2147483647LL)
        return cv_errorf(err, "sampling parameter '%s' is out of range, got %lld", field, x);
    *out = (int)x;
    return 0;
}

static int set_stop(cv_sampling_params *p, const json_t *v, cv_error *err)
{
    size_t n = json_is_string(v) ? 1 : json_is_array(v) ? json_array_size(v) : 0;
    if (!json_is_string(v) && !json_is_array(v))
        return bad_type("stop", "a string or a list of strings", v, err);
    char **list = calloc(n ? n : 1, sizeof(char *));
    if (!list) return cv_errorf(err, "out of memory parsing 'stop'");
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_is_string(v) ? v : json_array_get(v, i);
        if (!json_is_string(e)) {
            for (size_t j = 0; j < i; j++)
                free(list[j]);
            free(list);
            return bad_type("stop", "a string or a list of strings", v, err);
        }
        list[i] = strdup(json_string_value(e));
        if (!list[i]) {
            for (size_t j = 0; j < i; j++)
                free(list[j]);
            free(list);
            return cv_errorf(err, "out of memory parsing 'stop'");
        }
    }
    for (int i = 0; i < p->n_stop; i++)
        free(p->stop[i]);
    free(p->stop);
    p->stop = list;
    p->n_stop = (int)n;
    return 0;
}

static int set_stop_token_ids(cv_sampling_params *p, const json_t *v, cv_error *err)
{
    if (!json_is_array(v)) return bad_type("stop_token_ids", "a list of integers", v, err);
    size_t n = json_array_size(v);
    int32_t *ids = malloc((n ? n : 1) * sizeof(int32_t));
    if (!ids) return cv_errorf(err, "out of memory parsing 'stop_token_ids'");
    for (size_t i = 0; i < n; i++) {
        long long x = 0;
        int xi = 0;
        if (get_int(json_array_get(v, i), "stop_token_ids", &x, err) < 0 ||
            int_in_range(x, "stop_token_ids", &xi, err) < 0) {
            free(ids);
            return -1;
        }
        ids[i] = xi;
    }
    free(p->stop_token_ids);
    p->stop_token_ids = ids;
    p->n_stop_token_ids = (int)n;
    return 0;
}

typedef enum { F_INT, F_FLOAT, F_BOOL, F_SPECIAL } field_kind;

typedef struct field_desc {
    const char *name;
    field_kind kind;
    size_t offset;
    int null_value; /* F_INT: the value JSON null stands for */
} field_desc;

#define FIELD(name, kind, null_value)                                                              \
    {                                                                                              \
#name, kind, offsetof(cv_sampling_params, name), null_value                                \
    }

static const field_desc fields[] = {
    FIELD(n, F_INT, 1),
    FIELD(best_of, F_INT, 0),
    FIELD(temperature, F_FLOAT, 0),
    FIELD(top_p, F_FLOAT, 0),
    FIELD(top_k, F_INT, 0),
    FIELD(min_p, F_FLOAT, 0),
    FIELD(presence_penalty, F_FLOAT, 0),
    FIELD(frequency_penalty, F_FLOAT, 0),
    FIELD(repetition_penalty, F_FLOAT, 0),
    FIELD(max_tokens, F_INT, -1),
    FIELD(min_tokens, F_INT, 0),
    FIELD(logprobs, F_INT, -1),
    FIELD(prompt_logprobs, F_INT, -1),
    FIELD(include_stop_str_in_output, F_BOOL, 0),
    FIELD(ignore_eos, F_BOOL, 0),
    FIELD(skip_special_tokens, F_BOOL, 0),
    FIELD(spaces_between_special_tokens, F_BOOL, 0),
    {"seed", F_SPECIAL, 0, 0},
    {"stop", F_SPECIAL, 0, 0},
    {"stop_token_ids", F_SPECIAL, 0, 0},
    {"lora_name", F_SPECIAL, 0, 0},
};

static int apply_special(cv_sampling_params *p, const char *key, const json_t *v, cv_error *err)
{
    if (!strcmp(key, "seed")) {
        long long x;
        if (json_is_null(v)) {
            p->has_seed = false;
            return 0;
        }
        if (get_int(v, "seed", &x, err) < 0) return -1;
        /* vLLM: seed -1 means no seed. */
        p->has_seed = x != -1;
        p->seed = (uint64_t)x;
        return 0;
    }
    if (!strcmp(key, "stop")) {
        if (json_is_null(v)) {
            json_t *empty = json_array();
            int rc = empty ? set_stop(p, empty, err) : cv_errorf(err, "out of memory");
            json_decref(empty);
            return rc;
        }
        return set_stop(p, v, err);
    }
    if (!strcmp(key, "stop_token_ids")) {
        if (json_is_null(v)) {
            free(p->stop_token_ids);
            p->stop_token_ids = NULL;
            p->n_stop_token_ids = 0;
            return 0;
        }
        return set_stop_token_ids(p, v, err);
    }
    /* lora_name */
    if (json_is_null(v)) {
        p->lora_name[0] = '\0';
        return 0;
    }
    if (!json_is_string(v)) return bad_type("lora_name", "a string", v, err);
    if (strlen(json_string_value(v)) >= sizeof(p->lora_name))
        return cv_errorf(err, "sampling parameter 'lora_name' is longer than %zu bytes",
                         sizeof(p->lora_name) - 1);
    snprintf(p->lora_name, sizeof(p->lora_name), "%s", json_string_value(v));
    return 0;
}

static int apply_field(cv_sampling_params *p, const field_desc *f, const json_t *v, cv_error *err)
{
    void *dst = (char *)p + f->offset;
    if (f->kind == F_SPECIAL) return apply_special(p, f->name, v, err);
    if (json_is_null(v)) {
        /* null = "not given": keep the default, as vLLM's Optional fields do. */
        if (f->kind == F_INT) *(int *)dst = f->null_value;
        return 0;
    }
    if (f->kind == F_INT) {
        long long x;
        if (!strcmp(f->name, "logprobs") && json_is_boolean(v)) {
            /* vLLM: logprobs=True means 1. */
            *(int *)dst = json_is_true(v) ? 1 : -1;
            return 0;
        }
        if (get_int(v, f->name, &x, err) < 0) return -1;
        /* -1 stands for null inside cvllm (up to max_model_len); a client
         * that sends it gets vLLM's refusal, as any value below 1. */
        if (!strcmp(f->name, "max_tokens") && x < 1)
            return cv_errorf(err, "max_tokens must be at least 1, got %lld.", x);
        return int_in_range(x, f->name, (int *)dst, err);
    }
    if (f->kind == F_FLOAT) return get_float(v, f->name, (float *)dst, err);
    return get_bool(v, f->name, (bool *)dst, err);
}

int cv_sampling_params_from_json(cv_sampling_params *p, const char *json, size_t len, cv_error *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_DECODE_ANY, &jerr);
    if (!root)
        return cv_errorf(err, "sampling parameters are not valid JSON: %s (line %d, column %d)",
                         jerr.text, jerr.line, jerr.column);
    if (!json_is_object(root)) {
        json_decref(root);
        return cv_errorf(err, "sampling parameters must be a JSON object");
    }
    const char *key;
    json_t *v;
    int rc = 0;
    json_object_foreach(root, key, v)
    {
        const field_desc *f = NULL;
        for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
            if (!strcmp(fields[i].name, key)) f = &fields[i];
        if (!f) {
            rc = cv_errorf(err, "unknown sampling parameter '%s'", key);
            break;
        }
        if (apply_field(p, f, v, err) < 0) {
            rc = -1;
            break;
        }
    }
    json_decref(root);
    return rc;
}

/* ---- Validation (vLLM SamplingParams._verify_args wording) -------------
 * Our -1 for logprobs/prompt_logprobs means "not asked" (vLLM: None). */

int cv_sampling_params_validate(const cv_sampling_params *p, cv_error *err)
{
    char a[48];
    if (p->n < 1) return cv_errorf(err, "n must be at least 1, got %d.", p->n);
    if (p->best_of != 0 && p->best_of < p->n)
        return cv_errorf(err,
                         "best_of must be greater than or equal to n, got n=%d and best_of=%d.",
                         p->n, p->best_of);
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f)) {
        fmt_pyfloat(a, sizeof(a), p->presence_penalty);
        return cv_errorf(err, "presence_penalty must be in [-2, 2], got %s.", a);
    }
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f)) {
        fmt_pyfloat(a, sizeof(a), p->frequency_penalty);
        return cv_errorf(err, "frequency_penalty must be in [-2, 2], got %s.", a);
    }
    if (!isfinite(p->repetition_penalty)) {
        fmt_pyfloat(a, sizeof(a), p->repetition_penalty);
        return cv_errorf(err, "repetition_penalty must be a finite number, got %s.", a);
    }
    if (!(p->repetition_penalty > 0.0f)) {
        fmt_pyfloat(a, sizeof(a), p->repetition_penalty);
        return cv_errorf(err, "repetition_penalty must be greater than zero, got %s.", a);
    }
    if (!isfinite(p->temperature)) {
        fmt_pyfloat(a, sizeof(a), p->temperature);
        return cv_errorf(err, "temperature must be a finite number, got %s.", a);
    }
    if (p->temperature < 0.0f) {
        fmt_pyfloat(a, sizeof(a), p->temperature);
        return cv_errorf(err, "temperature must be non-negative, got %s.", a);
    }
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f)) {
        fmt_pyfloat(a, sizeof(a), p->top_p);
        return cv_errorf(err, "top_p must be in (0, 1], got %s.", a);
    }
    if (p->top_k < -1)
        return cv_errorf(err, "top_k must be 0 (disable), or at least 1, got %d.", p->top_k);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f)) {
        fmt_pyfloat(a, sizeof(a), p->min_p);
        return cv_errorf(err, "min_p must be in [0, 1], got %s.", a);
    }
    if (p->max_tokens != -1 && p->max_tokens < 1)
        return cv_errorf(err, "max_tokens must be at least 1, got %d.", p->max_tokens);
    if (p->min_tokens < 0)
        return cv_errorf(err, "min_tokens must be greater than or equal to 0, got %d.",
                         p->min_tokens);
    if (p->max_tokens != -1 && p->min_tokens > p->max_tokens)
        return cv_errorf(err, "min_tokens must be less than or equal to max_tokens=%d, got %d.",
                         p->max_tokens, p->min_tokens);
    if (p->logprobs < -1)
        return cv_errorf(err, "logprobs must be non-negative or -1, got %d.", p->logprobs);
    if (p->prompt_logprobs < -1)
        return cv_errorf(err, "prompt_logprobs must be non-negative or -1, got %d.",
                         p->prompt_logprobs);
    if (p->logprobs > CV_MAX_LOGPROBS)
        return cv_errorf(err,
                         "Requested sample logprobs of %d, which is greater than max allowed: %d",
                         p->logprobs, CV_MAX_LOGPROBS);
    if (p->prompt_logprobs > CV_MAX_LOGPROBS)
        return cv_errorf(err,
                         "Requested prompt logprobs of %d, which is greater than max allowed: %d",
                         p->prompt_logprobs, CV_MAX_LOGPROBS);
    for (int i = 0; i < p->n_stop; i++)
        if (p->stop[i][0] == '\0') return cv_errorf(err, "stop cannot contain an empty string.");
    int n_seqs = p->best_of > 0 ? p->best_of : p->n;
    if (p->temperature < CV_SAMPLING_EPS && n_seqs > 1)
        return cv_errorf(err, "n must be 1 when using greedy sampling, got %d.", n_seqs);
    return 0;
}

/* OpenAI completions <-> engine requests and outputs (see openai.h). */
#include "server/openai.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- requests ----------------------------------------------------------- */

static int set_prompt(cv_openai_request *r, json_t *v, cv_error *err)
{
    if (json_is_array(v) && json_array_size(v) == 1 && json_is_string(json_array_get(v, 0)))
        v = json_array_get(v, 0);
    if (json_is_string(v)) {
        r->prompt_len = json_string_length(v);
        r->prompt = malloc(r->prompt_len + 1);
        if (!r->prompt) return cv_errorf(err, "out of memory");
        memcpy(r->prompt, json_string_value(v), r->prompt_len + 1);
        return 0;
    }
    size_t n = json_array_size(v);
    if (!json_is_array(v) || n == 0)
        return cv_errorf(err, "'prompt': expected a string, a list of one string or a list of "
                              "token ids");
    if (json_is_string(json_array_get(v, 0)))
        return cv_errorf(err,
                         "'prompt': a list of %zu prompts is not supported; send one "
                         "request per prompt",
                         n);
    r->prompt_ids = malloc(n * sizeof *r->prompt_ids);
    if (!r->prompt_ids) return cv_errorf(err, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *id = json_array_get(v, i);
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) > INT32_MAX)
            return cv_errorf(err, "'prompt'[%zu]: expected a token id", i);
        r->prompt_ids[i] = (int32_t)json_integer_value(id);
    }
    r->n_prompt_ids = n;
    return 0;
}

static int set_stream_options(cv_openai_request *r, json_t *v, cv_error *err)
{
    if (json_is_null(v)) return 0;
    if (!json_is_object(v)) return cv_errorf(err, "'stream_options': expected an object");
    const char *k;
    json_t *o;
    json_object_foreach(v, k, o)
    {
        if (strcmp(k, "include_usage") && strcmp(k, "continuous_usage_stats"))
            return cv_errorf(err, "'stream_options': unknown field '%s'", k);
        if (!json_is_boolean(o) && !json_is_null(o))
            return cv_errorf(err, "'stream_options.%s': expected true or false", k);
        if (!strcmp(k, "include_usage")) r->include_usage = json_is_true(o);
    }
    return 0;
}

/* The request fields that are not sampling parameters. Returns 1 when key
 * is one of them (handled), 0 when it is not, -1 on a bad value. */
static int request_field(cv_openai_request *r, const char *k, json_t *v, cv_error *err)
{
    if (!strcmp(k, "model")) {
        if (!json_is_string(v) || json_string_length(v) >= sizeof r->model)
            return cv_errorf(err, "'model': expected the name of a served model");
        snprintf(r->model, sizeof r->model, "%s", json_string_value(v));
    } else if (!strcmp(k, "prompt")) {
        if (set_prompt(r, v, err) < 0) return -1;
    } else if (!strcmp(k, "stream")) {
        if (!json_is_boolean(v) && !json_is_null(v))
            return cv_errorf(err, "'stream': expected true or false");
        r->stream = json_is_true(v);
    } else if (!strcmp(k, "stream_options")) {
        if (set_stream_options(r, v, err) < 0) return -1;
    } else if (!strcmp(k, "echo")) {
        if (json_is_true(v)) return cv_errorf(err, "'echo': true is not supported");
    } else if (!strcmp(k, "suffix") || !strcmp(k, "logit_bias")) {
        if (!json_is_null(v)) return cv_errorf(err, "'%s' is not supported", k);
    } else if (!strcmp(k, "user")) {
        if (!json_is_string(v) && !json_is_null(v))
            return cv_errorf(err, "'user': expected a string");
    } else {
        return 0;
    }
    return 1;
}

int cv_openai_parse(const char *body, size_t len, uint64_t serial, cv_openai_request *r,
                    cv_error *err)
{
    memset(r, 0, sizeof *r);
    cv_sampling_params_default(&r->sp);
    json_error_t je;
    json_t *root = json_loadb(body, len, 0, &je);
    if (!root) return cv_errorf(err, "failed to parse the request JSON: %s", je.text);
    json_t *sampling = json_object();
    int rc = json_is_object(root) && sampling
                 ? 0
                 : cv_errorf(err, "the request body must be a JSON object");
    const char *k;
    json_t *v;
    if (rc == 0) {
        json_object_foreach(root, k, v)
        {
            /* null is the default, as OpenAI's clients send unset fields */
            int handled = request_field(r, k, v, err);
            if (handled == 0 && json_is_null(v)) continue;
            if (handled < 0 || (!handled && json_object_set(sampling, k, v) < 0)) {
                rc = handled < 0 ? -1 : cv_errorf(err, "out of memory");
                break;
            }
        }
    }
    json_decref(root);
    if (rc == 0 && !r->model[0]) rc = cv_errorf(err, "'model' is required");
    if (rc == 0 && !r->prompt && !r->prompt_ids) rc = cv_errorf(err, "'prompt' is required");
    char *text = rc == 0 ? json_dumps(sampling, JSON_COMPACT) : NULL;
    json_decref(sampling);
    if (rc == 0 && !text) rc = cv_errorf(err, "out of memory");
    if (rc == 0 && (cv_sampling_params_from_json(&r->sp, text, strlen(text), err) < 0 ||
                    cv_sampling_params_validate(&r->sp, err) < 0))
        rc = -1;
    free(text);
    if (rc < 0) {
        cv_openai_request_free(r);
        return -1;
    }
    snprintf(r->id, sizeof r->id, "cmpl-%016" PRIx64, (uint64_t)(serial * 0x9e3779b97f4a7c15ull));
    r->created = (int64_t)time(NULL);
    return 0;
}

int cv_openai_begin(cv_openai_request *r)
{
    r->n_seqs = r->sp.n;
    r->text = calloc((size_t)r->n_seqs, sizeof *r->text);
    r->text_len = calloc((size_t)r->n_seqs, sizeof *r->text_len);
    r->finish = calloc((size_t)r->n_seqs, sizeof *r->finish);
    r->logprobs = calloc((size_t)r->n_seqs, sizeof *r->logprobs);
    return r->text && r->text_len && r->finish && r->logprobs ? 0 : -1;
}

void cv_openai_request_free(cv_openai_request *r)
{
    for (int i = 0; r->text && i < r->n_seqs; i++)
        free(r->text[i]);
    for (int i = 0; r->logprobs && i < r->n_seqs; i++)
        json_decref(r->logprobs[i]);
    free(r->logprobs);
    free(r->text);
    free(r->text_len);
    free(r->finish);
    free(r->prompt);
    free(r->prompt_ids);
    cv_sampling_params_free(&r->sp);
    memset(r, 0, sizeof *r);
}

/* ---- responses ---------------------------------------------------------- */

/* OpenAI's completion logprobs of a sequence's new tokens: tokens,
 * token_logprobs, top_logprobs ({decoded: logprob} of the sampled token and
 * the top k) and text_offset, offsets counted from *offset. */
static json_t *logprobs_json(const cv_seq_output *s, size_t *offset)
{
    json_t *tokens = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    for (int i = 0; i < s->n_tokens; i++) {
        const cv_token_logprobs *t = &s->logprobs[i];
        json_t *top = json_object();
        for (int e = 0; e < t->n; e++)
            json_object_set_new(top, t->entries[e].decoded_token, json_real(t->entries[e].logprob));
        const char *tok = t->n ? t->entries[0].decoded_token : "";
        json_array_append_new(tokens, json_string(tok));
        json_array_append_new(lps, json_real(t->n ? t->entries[0].logprob : 0.0));
        json_array_append_new(tops, top);
        json_array_append_new(offs, json_integer((json_int_t)*offset));
        *offset += strlen(tok);
    }
    return json_pack("{s:o, s:o, s:o, s:o}", "text_offset", offs, "token_logprobs", lps, "tokens",
                     tokens, "top_logprobs", tops);
}

static json_t *finish_json(cv_finish_reason f)
{
    return f == CV_FINISH_NONE ? json_null() : json_string(cv_finish_reason_name(f));
}

static json_t *choice(int index, const char *text, size_t len, json_t *logprobs, cv_finish_reason f)
{
    return json_pack("{s:i, s:s%, s:o, s:o, s:n}", "index", index, "text", text ? text : "", len,
                     "logprobs", logprobs ? logprobs : json_null(), "finish_reason", finish_json(f),
                     "stop_reason");
}

static json_t *completion(const cv_openai_request *r, json_t *choices, json_t *usage)
{
    return json_pack("{s:s, s:s, s:I, s:s, s:o, s:o}", "id", r->id, "object", "text_completion",
                     "created", (json_int_t)r->created, "model", r->model, "choices", choices,
                     "usage", usage ? usage : json_null());
}

static json_t *usage_json(const cv_openai_request *r)
{
    return json_pack("{s:i, s:i, s:i}", "prompt_tokens", r->prompt_tokens, "total_tokens",
                     r->prompt_tokens + r->completion_tokens, "completion_tokens",
                     r->completion_tokens);
}

json_t *cv_openai_chunk(cv_openai_request *r, const cv_request_output *out)
{
    r->prompt_tokens = out->n_prompt_tokens;
    json_t *choices = json_array();
    for (int i = 0; i < out->n_seqs; i++) {
        const cv_seq_output *s = &out->seqs[i];
        r->completion_tokens += s->n_tokens;
        if (s->text_len == 0 && s->finish_reason == CV_FINISH_NONE) continue;
        size_t *offset = s->index < r->n_seqs ? &r->text_len[s->index] : NULL;
        json_t *lp = s->logprobs && offset ? logprobs_json(s, offset) : NULL;
        if (!lp && offset) *offset += s->text_len;
        json_array_append_new(choices,
                              choice(s->index, s->text, s->text_len, lp, s->finish_reason));
    }
    if (json_array_size(choices) == 0) {
        json_decref(choices);
        return NULL;
    }
    return completion(r, choices, NULL);
}

json_t *cv_openai_usage_chunk(const cv_openai_request *r)
{
    return completion(r, json_array(), usage_json(r));
}

int cv_openai_accumulate(cv_openai_request *r, const cv_request_output *out)
{
    r->prompt_tokens = out->n_prompt_tokens;
    for (int i = 0; i < out->n_seqs; i++) {
        const cv_seq_output *s = &out->seqs[i];
        if (s->index < 0 || s->index >= r->n_seqs) continue;
        r->completion_tokens += s->n_tokens;
        if (s->logprobs) {
            size_t offset = r->text_len[s->index];
            json_t *more = logprobs_json(s, &offset), **all = &r->logprobs[s->index];
            if (!more) return -1;
            if (!*all) {
                *all = more;
            } else {
                const char *key;
                json_t *arr;
                json_object_foreach(more, key, arr)
                    json_array_extend(json_object_get(*all, key), arr);
                json_decref(more);
            }
        }
        char *t = realloc(r->text[s->index], r->text_len[s->index] + s->text_len + 1);
        if (!t) return -1;
        memcpy(t + r->text_len[s->index], s->text, s->text_len);
        r->text_len[s->index] += s->text_len;
        t[r->text_len[s->index]] = '\0';
        r->text[s->index] = t;
        if (s->finish_reason != CV_FINISH_NONE) r->finish[s->index] = s->finish_reason;
    }
    return 0;
}

json_t *cv_openai_response(const cv_openai_request *r)
{
    json_t *choices = json_array();
    for (int i = 0; i < r->n_seqs; i++)
        json_array_append_new(choices, choice(i, r->text[i], r->text_len[i],
                                              json_incref(r->logprobs[i]), r->finish[i]));
    return completion(r, choices, usage_json(r));
}

json_t *cv_openai_error(const char *message, int code)
{
    const char *type = code == 404   ? "NotFoundError"
                       : code == 503 ? "ServiceUnavailableError"
                                     : "BadRequestError";
    return json_pack("{s:s, s:s, s:s, s:n, s:i}", "object", "error", "message", message, "type",
                     type, "param", "code", code);
}

json_t *cv_openai_model_list(const char *const *names, int n, int64_t created)
{
    json_t *data = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(data,
                              json_pack("{s:s, s:s, s:I, s:s}", "id", names[i], "object", "model",
                                        "created", (json_int_t)created, "owned_by", "cvllm"));
    return json_pack("{s:s, s:o}", "object", "list", "data", data);
}

/* OpenAI completions <-> engine requests and outputs (see openai.h). */
#include "server/openai.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenizer/tokenizer.h"

/* ---- requests ----------------------------------------------------------- */

/* One prompt: a string or a list of token ids. */
static int add_prompt(cv_openai_request *r, json_t *v, size_t at, cv_error *err)
{
    cv_openai_prompt *p = &r->prompts[at];
    if (json_is_string(v)) {
        p->len = json_string_length(v);
        p->text = malloc(p->len + 1);
        if (!p->text) return cv_errorf(err, "out of memory");
        memcpy(p->text, json_string_value(v), p->len + 1);
        return 0;
    }
    size_t n = json_array_size(v);
    if (!json_is_array(v) || n == 0)
        return cv_errorf(err, "'prompt': expected a string, a list of strings, a list of token "
                              "ids or a list of lists of token ids");
    p->ids = malloc(n * sizeof *p->ids);
    if (!p->ids) return cv_errorf(err, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *id = json_array_get(v, i);
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) > INT32_MAX)
            return cv_errorf(err, "'prompt'[%zu]: expected a token id", i);
        p->ids[i] = (int32_t)json_integer_value(id);
    }
    p->n_ids = n;
    return 0;
}

/* vLLM's prompt: a string, a list of strings, a list of token ids, or a
 * list of token-id lists; a list of several is a batch. */
static int set_prompts(cv_openai_request *r, json_t *v, cv_error *err)
{
    json_t *first = json_array_get(v, 0);
    bool batch = json_is_array(v) && (json_is_string(first) || json_is_array(first));
    size_t n = batch ? json_array_size(v) : 1;
    if (r->prompts) return cv_errorf(err, "'prompt' given twice");
    r->prompts = calloc(n, sizeof *r->prompts);
    if (!r->prompts) return cv_errorf(err, "out of memory");
    r->n_prompts = (int)n;
    for (size_t i = 0; i < n; i++) {
        json_t *e = batch ? json_array_get(v, i) : v;
        if (batch && !json_is_string(e) && !json_is_array(e))
            return cv_errorf(err, "'prompt'[%zu]: expected a string or a list of token ids", i);
        if (add_prompt(r, e, i, err) < 0) return -1;
    }
    return 0;
}

int cv_openai_stream_options(cv_openai_request *r, json_t *v, cv_error *err)
{
    if (json_is_null(v)) return 0;
    if (!json_is_object(v)) return cv_errorf(err, "'stream_options': expected an object");
    r->stream_options = true;
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
        if (set_prompts(r, v, err) < 0) return -1;
    } else if (!strcmp(k, "stream")) {
        if (!json_is_boolean(v) && !json_is_null(v))
            return cv_errorf(err, "'stream': expected true or false");
        r->stream = json_is_true(v);
    } else if (!strcmp(k, "stream_options")) {
        if (cv_openai_stream_options(r, v, err) < 0) return -1;
    } else if (!strcmp(k, "echo")) {
        if (!json_is_boolean(v) && !json_is_null(v))
            return cv_errorf(err, "'echo': expected true or false");
        r->echo = json_is_true(v);
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

int cv_openai_sampling(cv_openai_request *r, json_t *sampling, cv_error *err)
{
    char *text = json_dumps(sampling, JSON_COMPACT);
    if (!text) return cv_errorf(err, "out of memory");
    int rc = cv_sampling_params_from_json(&r->sp, text, strlen(text), err) < 0 ||
                     cv_sampling_params_validate(&r->sp, err) < 0
                 ? -1
                 : 0;
    free(text);
    return rc;
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
    if (rc == 0 && !r->prompts) rc = cv_errorf(err, "'prompt' is required");
    if (rc == 0 && r->stream_options && !r->stream)
        rc = cv_errorf(err, CV_OPENAI_STREAM_OPTIONS_MSG);
    /* vLLM: echo with max_tokens 0 returns the prompt alone (one token is
     * generated and dropped), the way clients score a text's logprobs */
    json_t *mt = json_object_get(sampling, "max_tokens");
    if (rc == 0 && r->echo && json_is_integer(mt) && json_integer_value(mt) == 0) {
        r->echo_only = true;
        if (json_object_set_new(sampling, "max_tokens", json_integer(1)) < 0)
            rc = cv_errorf(err, "out of memory");
    }
    if (rc == 0) rc = cv_openai_sampling(r, sampling, err);
    /* vLLM: echo with logprobs returns the prompt's logprobs too */
    if (rc == 0 && r->echo && r->sp.logprobs >= 0 && r->sp.prompt_logprobs < 0)
        r->sp.prompt_logprobs = r->sp.logprobs;
    json_decref(sampling);
    if (rc < 0) {
        cv_openai_request_free(r);
        return -1;
    }
    snprintf(r->id, sizeof r->id, "cmpl-%016" PRIx64, (uint64_t)(serial * 0x9e3779b97f4a7c15ull));
    r->created = (int64_t)time(NULL);
    return 0;
}

int cv_openai_alloc_choices(cv_openai_request *r)
{
    size_t n = (size_t)r->n_seqs;
    r->text = calloc(n, sizeof *r->text);
    r->text_len = calloc(n, sizeof *r->text_len);
    r->lp_offset = calloc(n, sizeof *r->lp_offset);
    r->started = calloc(n, sizeof *r->started);
    r->finish = calloc(n, sizeof *r->finish);
    r->logprobs = calloc(n, sizeof *r->logprobs);
    return r->text && r->text_len && r->lp_offset && r->started && r->finish && r->logprobs ? 0
                                                                                            : -1;
}

/* The text echo prepends, and the first token's string for the logprobs. */
static int set_echo(cv_openai_prompt *p, const cv_tokenizer *tok, bool logprobs, cv_error *err)
{
    int32_t *ids = p->ids, *own = NULL;
    size_t n = p->n_ids;
    if (p->text) {
        p->echo_len = p->len;
        p->echo = malloc(p->len + 1);
        if (!p->echo) return cv_errorf(err, "out of memory");
        memcpy(p->echo, p->text, p->len + 1);
        if (logprobs && tok_encode(tok, p->text, p->len, true, &own, &n, err) < 0) return -1;
        ids = own;
    } else if (tok_decode(tok, p->ids, p->n_ids, false, &p->echo, &p->echo_len, err) < 0) {
        return -1;
    }
    int rc = 0;
    if (logprobs && n > 0) {
        size_t tl;
        rc = tok_decode(tok, ids, 1, false, &p->first_token, &tl, err);
    }
    free(own);
    return rc;
}

int cv_openai_begin(cv_openai_request *r, const cv_tokenizer *tok, cv_error *err)
{
    r->n_seqs = r->n_prompts * r->sp.n;
    if (cv_openai_alloc_choices(r) < 0) return cv_errorf(err, "out of memory");
    for (int i = 0; r->echo && !r->chat && i < r->n_prompts; i++) /* chat: openai_chat.c */
        if (set_echo(&r->prompts[i], tok, r->sp.logprobs >= 0, err) < 0) return -1;
    return 0;
}

void cv_openai_request_free(cv_openai_request *r)
{
    for (int i = 0; r->text && i < r->n_seqs; i++)
        free(r->text[i]);
    for (int i = 0; r->logprobs && i < r->n_seqs; i++)
        json_decref(r->logprobs[i]);
    for (int i = 0; r->prompts && i < r->n_prompts; i++) {
        cv_openai_prompt *p = &r->prompts[i];
        free(p->text);
        free(p->ids);
        free(p->echo);
        free(p->first_token);
        json_decref(p->echo_lp);
    }
    if (r->chat_state_free) r->chat_state_free(r->chat_state);
    free(r->prompts);
    free(r->logprobs);
    free(r->text);
    free(r->text_len);
    free(r->lp_offset);
    free(r->started);
    free(r->finish);
    cv_sampling_params_free(&r->sp);
    memset(r, 0, sizeof *r);
}

int cv_openai_prompt_of(const cv_openai_request *r, uint64_t request_id)
{
    for (int i = 0; i < r->n_prompts; i++)
        if (r->prompts[i].engine_id == request_id) return i;
    return -1;
}

/* ---- responses ---------------------------------------------------------- */

json_t *cv_openai_logprob_json(float lp)
{
    return json_real(lp < -9999.0f ? -9999.0 : (double)lp);
}

static json_t *top_json(const cv_token_logprobs *t)
{
    json_t *top = json_object();
    for (int e = 0; e < t->n; e++)
        json_object_set_new(top, t->entries[e].decoded_token,
                            cv_openai_logprob_json(t->entries[e].logprob));
    return top;
}

static json_t *empty_logprobs(void)
{
    return json_pack("{s:[], s:[], s:[], s:[]}", "text_offset", "token_logprobs", "tokens",
                     "top_logprobs");
}

/* Appends one token to OpenAI completion logprobs lp at *offset. */
static void logprobs_add(json_t *lp, const char *tok, json_t *logprob, json_t *top, size_t *offset)
{
    json_array_append_new(json_object_get(lp, "tokens"), json_string(tok));
    json_array_append_new(json_object_get(lp, "token_logprobs"), logprob);
    json_array_append_new(json_object_get(lp, "top_logprobs"), top);
    json_array_append_new(json_object_get(lp, "text_offset"), json_integer((json_int_t)*offset));
    *offset += strlen(tok);
}

/* OpenAI's completion logprobs of a sequence's new tokens: tokens,
 * token_logprobs, top_logprobs ({decoded: logprob} of the sampled token and
 * the top k) and text_offset, offsets counted from *offset. */
static json_t *logprobs_json(const cv_seq_output *s, size_t *offset)
{
    json_t *lp = empty_logprobs();
    for (int i = 0; lp && i < s->n_tokens; i++) {
        const cv_token_logprobs *t = &s->logprobs[i];
        logprobs_add(lp, t->n ? t->entries[0].decoded_token : "",
                     cv_openai_logprob_json(t->n ? t->entries[0].logprob : 0.0f), top_json(t),
                     offset);
    }
    return lp;
}

/* Echo with logprobs: the prompt's tokens first, the first one with null
 * logprob and top_logprobs (nothing predicts it), offsets from 0. */
static json_t *prompt_logprobs_json(const cv_openai_prompt *p, const cv_request_output *out)
{
    json_t *lp = empty_logprobs();
    size_t offset = 0;
    for (int i = 0; lp && i < out->n_prompt_tokens; i++) {
        const cv_token_logprobs *t = &out->prompt_logprobs[i];
        if (i == 0 || t->n == 0)
            logprobs_add(lp, i == 0 && p->first_token ? p->first_token : "", json_null(),
                         json_null(), &offset);
        else
            logprobs_add(lp, t->entries[0].decoded_token,
                         cv_openai_logprob_json(t->entries[0].logprob), top_json(t), &offset);
    }
    return lp;
}

/* The summed lengths of the token strings of logprobs lp. */
static size_t lp_tokens_len(const json_t *lp)
{
    size_t n = 0, i;
    json_t *t;
    json_array_foreach(json_object_get(lp, "tokens"), i, t) n += json_string_length(t);
    return n;
}

/* Appends logprobs `more` (stolen) to *all. */
static void logprobs_extend(json_t **all, json_t *more)
{
    if (!more) return;
    if (!*all) {
        *all = more;
        return;
    }
    const char *key;
    json_t *arr;
    json_object_foreach(more, key, arr) json_array_extend(json_object_get(*all, key), arr);
    json_decref(more);
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

int cv_openai_prompt_tokens(const cv_openai_request *r)
{
    int n = 0;
    for (int i = 0; i < r->n_prompts; i++)
        n += r->prompts[i].n_tokens;
    return n;
}

json_t *cv_openai_usage_json(const cv_openai_request *r)
{
    int prompt = cv_openai_prompt_tokens(r);
    return json_pack("{s:i, s:i, s:i}", "prompt_tokens", prompt, "total_tokens",
                     prompt + r->completion_tokens, "completion_tokens", r->completion_tokens);
}

int cv_openai_append_text(cv_openai_request *r, int i, const char *s, size_t len)
{
    char *t = realloc(r->text[i], r->text_len[i] + len + 1);
    if (!t) return -1;
    memcpy(t + r->text_len[i], s, len);
    r->text_len[i] += len;
    t[r->text_len[i]] = '\0';
    r->text[i] = t;
    return 0;
}

/* Echo with logprobs: the prompt logprobs arrive once, in one output. */
static void take_prompt_logprobs(cv_openai_request *r, int p, const cv_request_output *out)
{
    cv_openai_prompt *pr = &r->prompts[p];
    pr->n_tokens = out->n_prompt_tokens;
    if (r->echo && out->prompt_logprobs && !pr->echo_lp)
        pr->echo_lp = prompt_logprobs_json(pr, out);
}

json_t *cv_openai_chunk(cv_openai_request *r, int p, const cv_request_output *out)
{
    take_prompt_logprobs(r, p, out);
    const cv_openai_prompt *pr = &r->prompts[p];
    json_t *choices = json_array();
    for (int i = 0; i < out->n_seqs; i++) {
        const cv_seq_output *s = &out->seqs[i];
        r->completion_tokens += s->n_tokens;
        if (s->index < 0 || s->index >= r->sp.n) continue;
        int c = p * r->sp.n + s->index;
        bool echo = r->echo && !r->started[c];
        /* echo with max_tokens 0: the prompt alone, its token discarded */
        size_t gen = r->echo_only ? 0 : s->text_len;
        if (gen == 0 && s->finish_reason == CV_FINISH_NONE && !echo) continue;
        /* vLLM streams the echo with the choice's first chunk */
        size_t lead = echo ? pr->echo_len : 0, offset = r->text_len[c];
        char *text = malloc(lead + gen + 1);
        if (!text) continue;
        memcpy(text, echo ? pr->echo : "", lead);
        memcpy(text + lead, s->text, gen);
        text[lead + gen] = '\0';
        json_t *lp = NULL;
        if (s->logprobs) {
            /* vLLM: offsets from the text streamed so far, counting the
             * token strings of the chunk (the prompt's first when echoed) */
            size_t at = offset + lead;
            if (echo && pr->echo_lp) {
                lp = json_deep_copy(pr->echo_lp);
                at = offset + lp_tokens_len(lp);
            }
            if (!r->echo_only) logprobs_extend(&lp, logprobs_json(s, &at));
        }
        r->started[c] = true;
        r->text_len[c] += lead + gen;
        json_array_append_new(choices, choice(c, text, lead + gen, lp, s->finish_reason));
        free(text);
    }
    if (json_array_size(choices) == 0) {
        json_decref(choices);
        return NULL;
    }
    return completion(r, choices, NULL);
}

json_t *cv_openai_usage_chunk(const cv_openai_request *r)
{
    return completion(r, json_array(), cv_openai_usage_json(r));
}

int cv_openai_accumulate(cv_openai_request *r, int p, const cv_request_output *out)
{
    take_prompt_logprobs(r, p, out);
    cv_openai_prompt *pr = &r->prompts[p];
    for (int i = 0; i < out->n_seqs; i++) {
        const cv_seq_output *s = &out->seqs[i];
        if (s->index < 0 || s->index >= r->sp.n) continue;
        int c = p * r->sp.n + s->index;
        r->completion_tokens += s->n_tokens;
        if (r->echo && !r->started[c]) {
            if (cv_openai_append_text(r, c, pr->echo, pr->echo_len) < 0) return -1;
            if (pr->echo_lp) {
                r->lp_offset[c] += lp_tokens_len(pr->echo_lp);
                logprobs_extend(&r->logprobs[c], json_deep_copy(pr->echo_lp));
            }
        }
        r->started[c] = true;
        if (s->finish_reason != CV_FINISH_NONE) r->finish[c] = s->finish_reason;
        if (r->echo_only) continue; /* echo with max_tokens 0 */
        if (s->logprobs) {
            json_t *more = logprobs_json(s, &r->lp_offset[c]);
            if (!more) return -1;
            logprobs_extend(&r->logprobs[c], more);
        }
        if (cv_openai_append_text(r, c, s->text, s->text_len) < 0) return -1;
    }
    return 0;
}

json_t *cv_openai_response(const cv_openai_request *r)
{
    json_t *choices = json_array();
    for (int i = 0; i < r->n_seqs; i++)
        json_array_append_new(choices, choice(i, r->text[i], r->text_len[i],
                                              json_incref(r->logprobs[i]), r->finish[i]));
    return completion(r, choices, cv_openai_usage_json(r));
}

json_t *cv_openai_error(const char *message, int code)
{
    const char *type = code == 404   ? "NotFoundError"
                       : code == 500 ? "InternalServerError"
                       : code == 501 ? "NotImplementedError"
                       : code == 503 ? "ServiceUnavailableError"
                                     : "BadRequestError";
    return json_pack("{s:{s:s, s:s, s:n, s:i}}", "error", "message", message, "type", type, "param",
                     "code", code);
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

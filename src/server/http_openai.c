/* vLLM's OpenAI API on the HTTP port: /v1/completions and
 * /v1/chat/completions requests through the request lifecycle of http.c
 * (openai.c and openai_chat.c translate bodies and outputs), GET
 * /v1/models, and vLLM's /tokenize and /detokenize. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>

#include "base/clock.h"
#include "server/http_internal.h"
#include "server/openai_chat.h"

static void reply_openai_error(struct evhttp_request *req, int code, const char *msg)
{
    http_reply_json(req, code, cv_openai_error(msg, code));
}

void http_openai_abort(http_req *hr)
{
    cv_openai_request *r = hr->oai;
    for (int i = 0; i < r->n_prompts; i++)
        if (r->prompts[i].engine_id && !r->prompts[i].finished)
            cv_engine_abort(hr->model->engine, r->prompts[i].engine_id);
}

/* A reply that ends the request for the client while its engine requests
 * still finish (their outputs then write nothing). */
static void reply_early(http_req *hr, int code, const char *msg)
{
    http_detach_conn(hr);
    reply_openai_error(hr->req, code, msg);
    hr->req = NULL;
}

/* The outputs of every prompt of a /v1 request: a chunk per output when
 * streaming (then the usage chunk if asked, then [DONE]), else one
 * response once every prompt's final output arrived; an engine error (a
 * failed step, out of memory: the server's fault, as vLLM's 500
 * InternalServerError) is an OpenAI error object (streamed: one error
 * event). */
void http_openai_output(http_req *hr, const cv_request_output *out)
{
    cv_openai_request *r = hr->oai;
    int p = cv_openai_prompt_of(r, out->request_id);
    bool writable = hr->req && !hr->gone && p >= 0 && r->text;
    if (out->error) {
        if (writable && hr->kind == KIND_STREAM && !r->failed)
            http_sse_send_json(hr, cv_openai_error(out->error, 500));
        else if (writable && hr->kind != KIND_STREAM)
            reply_early(hr, 500, out->error);
        r->failed = true;
    } else if (writable && hr->kind == KIND_STREAM) {
        json_t *chunk = r->chat ? cv_chat_chunk(r, p, out) : cv_openai_chunk(r, p, out);
        if (chunk) http_sse_send_json(hr, chunk);
    } else if (writable &&
               (r->chat ? cv_chat_accumulate(r, p, out) : cv_openai_accumulate(r, p, out)) < 0) {
        reply_early(hr, 500, "out of memory");
        r->failed = true;
    }
    if (!out->finished) return;
    if (p >= 0) r->prompts[p].finished = true;
    if (++r->n_finished < r->n_submitted) return;
    if (hr->req && !hr->gone && hr->kind == KIND_STREAM) {
        if (r->include_usage)
            http_sse_send_json(hr, r->chat ? cv_chat_usage_chunk(r) : cv_openai_usage_chunk(r));
        http_sse_send(hr, "[DONE]");
    }
    json_t *whole = NULL;
    if (hr->req && !hr->gone && hr->kind != KIND_STREAM)
        whole = r->chat ? cv_chat_response(r) : cv_openai_response(r);
    http_reply_final(hr, whole);
    http_request_done(hr, out, !r->failed);
}

/* The model a /v1 request names, with a reference; NULL after replying
 * vLLM's error when it is not served. */
static cv_model *acquire_model(cv_http *h, struct evhttp_request *req, const char *name)
{
    cv_error err = {.msg = ""};
    cv_model *m = cv_server_acquire(h->s, name, "", &err);
    if (!m) {
        char msg[512];
        snprintf(msg, sizeof msg, "The model `%s` does not exist.", name);
        /* 404 unknown; otherwise the core's status and reason (a model
         * without a ready version: 503) */
        bool unknown = err.cls == CV_ERR_NOT_FOUND;
        reply_openai_error(req, cv_error_status(err.cls).http, unknown ? msg : err.msg);
    }
    return m;
}

/* A LoRA adapter of a ready model (multi_lora.json), found by name. */
typedef struct adapter_find {
    const char *name;
    char parent[256]; /* the model serving it; "" when none does */
} adapter_find;

static void find_adapter(cv_model *m, void *arg)
{
    adapter_find *f = arg;
    for (int i = 0; m->extra.enable_lora && i < m->extra.n_loras; i++)
        if (!strcmp(m->extra.lora_names[i], f->name))
            snprintf(f->parent, sizeof f->parent, "%s", m->name);
}

/* r's model, or as vLLM, the model serving the adapter r names as its
 * model (the request then runs with that adapter and answers its name). */
static cv_model *acquire_request_model(cv_http *h, struct evhttp_request *req, cv_openai_request *r)
{
    adapter_find f = {.name = r->model};
    cv_repository_foreach_ready(h->s->repo, find_adapter, &f);
    if (!f.parent[0]) return acquire_model(h, req, r->model);
    if (!r->sp.lora_name[0]) snprintf(r->sp.lora_name, sizeof r->sp.lora_name, "%s", r->model);
    return acquire_model(h, req, f.parent);
}

/* Queues every prompt of r (owned from here on) in m's engine (m's
 * reference too) and tracks the request; replies the error itself when
 * that fails. A refusal after some prompts were queued aborts those: the
 * request stays tracked until their final outputs arrive. */
static void submit(cv_http *h, struct evhttp_request *req, cv_openai_request *r, cv_model *m)
{
    http_req *hr = calloc(1, sizeof *hr);
    if (!hr) {
        cv_openai_request_free(r);
        free(r);
        cv_model_release(m);
        reply_openai_error(req, 500, "out of memory");
        return;
    }
    hr->h = h;
    hr->oai = r;
    hr->model = m;
    hr->kind = r->stream ? KIND_STREAM : KIND_GENERATE;
    hr->start_ns = cv_now_ns();
    cv_infer_request_init(&hr->ir);
    cv_error err = {.msg = ""};
    int rc = cv_server_admit(h->s, &err);
    if (rc == 0 && !cv_model_healthy(m))
        rc = cv_errorf_class(&err, CV_ERR_UNAVAILABLE, CV_MODEL_UNHEALTHY_MSG);
    for (int i = 0; rc == 0 && i < r->n_prompts; i++) {
        cv_openai_prompt *p = &r->prompts[i];
        cv_request_desc d = {
            .prompt = p->text,
            .prompt_len = p->len,
            .prompt_ids = p->ids,
            .n_prompt_ids = p->n_ids,
            .params = &r->sp,
            .stream = r->stream,
            .sink = h->q,
            .user_data = hr,
        };
        if (!(p->engine_id = cv_engine_add_request(m->engine, &d, &err)))
            rc = -1;
        else
            r->n_submitted++;
    }
    if (rc == 0 && cv_openai_begin(r, cv_engine_tokenizer(m->engine), &err) < 0) {
        /* the engine accepted every prompt, so failing to set up their
         * outputs (memory, re-tokenizing an echo) is the server's fault */
        err.cls = CV_ERR_INTERNAL;
        rc = -1;
    }
    const int code = cv_error_status(err.cls).http;
    if (rc < 0 && r->n_submitted == 0) {
        reply_openai_error(req, code, err.msg);
        cv_server_account(m, false, hr->start_ns);
        http_req_free_unsubmitted(hr);
        return;
    }
    hr->engine_id = r->prompts[0].engine_id;
    atomic_fetch_add(&m->counters.pending, 1);
    http_track_request(h, hr, req);
    if (rc == 0 && r->chat && hr->kind == KIND_STREAM) {
        size_t i;
        json_t *chunk, *start = cv_chat_start_chunks(r);
        json_array_foreach(start, i, chunk) http_sse_send_json(hr, json_incref(chunk));
        json_decref(start);
    }
    if (rc < 0) {
        /* Their outputs are not handled yet (this loop thread handles
         * them), so the aborts' final outputs find the request here. */
        r->failed = true;
        http_openai_abort(hr);
        if (hr->kind == KIND_STREAM) {
            http_sse_send_json(hr, cv_openai_error(err.msg, code));
        } else {
            reply_early(hr, code, err.msg);
        }
    }
}

static const char *body_of(struct evhttp_request *req, size_t *len)
{
    struct evbuffer *b = evhttp_request_get_input_buffer(req);
    *len = evbuffer_get_length(b);
    return *len ? (const char *)evbuffer_pullup(b, -1) : "";
}

static void do_completions(cv_http *h, struct evhttp_request *req)
{
    size_t len;
    const char *body = body_of(req, &len);
    cv_openai_request *r = calloc(1, sizeof *r);
    if (!r) {
        reply_openai_error(req, 500, "out of memory");
        return;
    }
    cv_error err = {.msg = ""};
    if (cv_openai_parse(body, len, ++h->n_completions, r, &err) < 0) {
        free(r);
        reply_openai_error(req, 400, err.msg);
        return;
    }
    cv_model *m = acquire_request_model(h, req, r);
    if (!m) {
        cv_openai_request_free(r);
        free(r);
        return;
    }
    submit(h, req, r, m);
}

/* What the chat code needs of model m. */
static cv_chat_model chat_model(const cv_http *h, const cv_model *m)
{
    return (cv_chat_model){
        .tokenizer_dir = m->args.tokenizer[0] ? m->args.tokenizer : m->args.model,
        .chat_template =
            m->extra.chat_template[0] ? m->extra.chat_template : h->s->opts.chat_template,
        .tool_call_parser = m->extra.tool_call_parser,
        .tok = cv_engine_tokenizer(m->engine),
        .max_model_len = cv_engine_max_model_len(m->engine),
    };
}

static void do_chat(cv_http *h, struct evhttp_request *req)
{
    size_t len;
    const char *body = body_of(req, &len);
    cv_openai_request *r = calloc(1, sizeof *r);
    if (!r) {
        reply_openai_error(req, 500, "out of memory");
        return;
    }
    cv_error err = {.msg = ""};
    cv_model *m = NULL;
    if (cv_chat_parse(body, len, ++h->n_completions, r, &err) < 0) {
        free(r);
        reply_openai_error(req, 400, err.msg);
        return;
    }
    if (!(m = acquire_request_model(h, req, r))) {
        cv_openai_request_free(r);
        free(r);
        return;
    }
    cv_chat_model cm = chat_model(h, m);
    const uint64_t start_ns = cv_now_ns();
    if (cv_chat_prepare(r, &cm, &err) < 0) {
        reply_openai_error(req, 400, err.msg);
        cv_server_account(m, false, start_ns); /* a failed request of the model */
        cv_openai_request_free(r);
        free(r);
        cv_model_release(m);
        return;
    }
    submit(h, req, r, m);
}

static void add_model_name(cv_model *m, void *arg);

/* vLLM's /tokenize and /detokenize on the model the body names, or the
 * only one served. */
static void do_tokens(cv_http *h, struct evhttp_request *req, bool tokenize)
{
    size_t len;
    const char *text = body_of(req, &len);
    json_error_t je;
    json_t *body = json_loadb(text, len, 0, &je), *names = json_array();
    cv_error err = {.msg = ""};
    char msg[CV_ERROR_MSG_BYTES];
    const char *name = json_string_value(json_object_get(body, "model"));
    if (body && !name && json_is_object(body)) {
        cv_repository_foreach_ready(h->s->repo, add_model_name, names);
        name = json_array_size(names) == 1 ? json_string_value(json_array_get(names, 0)) : NULL;
    }
    json_t *out = NULL;
    cv_model *m = NULL;
    if (!body) {
        snprintf(msg, sizeof msg, "failed to parse the request JSON: %s",
                 text[0] ? je.text : "empty body");
        reply_openai_error(req, 400, msg);
    } else if (!json_is_object(body)) {
        reply_openai_error(req, 400, "the request body must be a JSON object");
    } else if (!name) {
        reply_openai_error(req, 400, "'model' is required when the server serves several models");
    } else if ((m = acquire_model(h, req, name))) {
        cv_chat_model cm = chat_model(h, m);
        out =
            tokenize ? cv_openai_tokenize(&cm, body, &err) : cv_openai_detokenize(&cm, body, &err);
        if (out)
            http_reply_json(req, 200, out);
        else
            reply_openai_error(req, 400, err.msg);
        cv_model_release(m);
    }
    json_decref(names);
    json_decref(body);
}

static void add_model_name(cv_model *m, void *arg)
{
    json_t *names = arg;
    for (size_t i = 0; i < json_array_size(names); i++)
        if (!strcmp(json_string_value(json_array_get(names, i)), m->name)) return;
    json_array_append_new(names, json_string(m->name));
}

/* vLLM's listing of a LoRA adapter: the base model as its parent. */
static void add_adapters(cv_model *m, void *arg)
{
    json_t *data = arg;
    for (int i = 0; m->extra.enable_lora && i < m->extra.n_loras; i++) {
        bool listed = false; /* a model ready in several versions lists its adapters once */
        for (size_t j = 0; j < json_array_size(data) && !listed; j++)
            listed = !strcmp(json_string_value(json_object_get(json_array_get(data, j), "id")),
                             m->extra.lora_names[i]);
        if (listed) continue;
        json_array_append_new(data, json_pack("{s:s, s:s, s:I, s:s, s:s, s:s}", "id",
                                              m->extra.lora_names[i], "object", "model", "created",
                                              (json_int_t)time(NULL), "owned_by", "cvllm", "root",
                                              m->extra.lora_paths[i], "parent", m->name));
    }
}

/* GET /v1/models: every ready model, once whatever its versions, then
 * the LoRA adapters they serve. */
static void reply_models(cv_http *h, struct evhttp_request *req)
{
    json_t *names = json_array();
    cv_repository_foreach_ready(h->s->repo, add_model_name, names);
    const size_t n = json_array_size(names);
    const char **list = calloc(n ? n : 1, sizeof *list);
    for (size_t i = 0; list && i < n; i++)
        list[i] = json_string_value(json_array_get(names, i));
    json_t *body = list ? cv_openai_model_list(list, (int)n, (int64_t)time(NULL)) : NULL;
    free(list);
    json_decref(names);
    if (body) cv_repository_foreach_ready(h->s->repo, add_adapters, json_object_get(body, "data"));
    http_reply_json(req, 200, body);
}

void http_route_openai(cv_http *h, struct evhttp_request *req, enum evhttp_cmd_type cmd, char **seg,
                       int n)
{
    if (n == 1 && cmd == EVHTTP_REQ_POST && strcmp(seg[0], "v1"))
        do_tokens(h, req, !strcmp(seg[0], "tokenize"));
    else if (n == 3 && !strcmp(seg[1], "chat") && !strcmp(seg[2], "completions") &&
             cmd == EVHTTP_REQ_POST)
        do_chat(h, req);
    else if (n == 2 && !strcmp(seg[1], "models") && cmd == EVHTTP_REQ_GET)
        reply_models(h, req);
    else if (n == 2 && !strcmp(seg[1], "completions") && cmd == EVHTTP_REQ_POST)
        do_completions(h, req);
    else
        reply_openai_error(req, 404, "Not Found");
}

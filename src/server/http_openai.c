/* vLLM's OpenAI API on the HTTP port: /v1/completions requests through the
 * request lifecycle of http.c, with openai.c translating bodies and
 * outputs, and GET /v1/models. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>

#include "base/clock.h"
#include "server/http_internal.h"

static void reply_openai_error(struct evhttp_request *req, int code, const char *msg)
{
    http_reply_json(req, code, cv_openai_error(msg, code));
}

/* /v1/completions: a chunk per output when streaming (then the usage chunk
 * if asked, then [DONE]), else one response at the end; an engine error
 * is an OpenAI error object. */
void http_openai_output(http_req *hr, const cv_request_output *out)
{
    cv_openai_request *r = hr->oai;
    bool writable = hr->req && !hr->gone;
    if (out->error && writable) {
        if (hr->kind == KIND_STREAM) {
            http_sse_send_json(hr, cv_openai_error(out->error, 400));
        } else {
            http_detach_conn(hr);
            http_reply_json(hr->req, 400, cv_openai_error(out->error, 400));
            hr->req = NULL;
        }
    } else if (writable && hr->kind == KIND_STREAM) {
        json_t *chunk = cv_openai_chunk(r, out);
        if (chunk) http_sse_send_json(hr, chunk);
    } else if (writable && cv_openai_accumulate(r, out) < 0) {
        http_detach_conn(hr);
        http_reply_json(hr->req, 500, cv_openai_error("out of memory", 500));
        hr->req = NULL;
    }
    if (!out->finished) return;
    if (hr->req && !hr->gone && hr->kind == KIND_STREAM) {
        if (r->include_usage) http_sse_send_json(hr, cv_openai_usage_chunk(r));
        http_sse_send(hr, "[DONE]");
    }
    http_reply_final(hr, hr->req && hr->kind != KIND_STREAM ? cv_openai_response(r) : NULL);
    http_request_done(hr, out, !out->error);
}

static void do_completions(cv_http *h, struct evhttp_request *req)
{
    struct evbuffer *b = evhttp_request_get_input_buffer(req);
    const size_t len = evbuffer_get_length(b);
    const char *body = len ? (const char *)evbuffer_pullup(b, -1) : "";
    http_req *hr = calloc(1, sizeof *hr);
    cv_openai_request *r = calloc(1, sizeof *r);
    if (!hr || !r) {
        free(hr);
        free(r);
        reply_openai_error(req, 500, "out of memory");
        return;
    }
    cv_error err = {.msg = ""};
    if (cv_openai_parse(body, len, ++h->n_completions, r, &err) < 0) {
        free(hr);
        free(r);
        reply_openai_error(req, 400, err.msg);
        return;
    }
    hr->h = h;
    hr->oai = r;
    hr->kind = r->stream ? KIND_STREAM : KIND_GENERATE;
    hr->start_ns = cv_now_ns();
    cv_infer_request_init(&hr->ir);
    hr->model = cv_server_acquire(h->s, r->model, "", &err);
    if (!hr->model) {
        char msg[512];
        snprintf(msg, sizeof msg, "The model `%s` does not exist.", r->model);
        /* 404 unknown; otherwise the core's status and reason (a model
         * without a ready version: 503) */
        bool unknown = err.cls == CV_ERR_NOT_FOUND;
        reply_openai_error(req, cv_error_status(err.cls).http, unknown ? msg : err.msg);
        http_req_free_unsubmitted(hr);
        return;
    }
    int rc = cv_server_admit(h->s, &err);
    if (rc == 0 && !cv_model_healthy(hr->model))
        rc = cv_errorf_class(&err, CV_ERR_UNAVAILABLE, CV_MODEL_UNHEALTHY_MSG);
    cv_request_desc d = {
        .prompt = r->prompt,
        .prompt_len = r->prompt_len,
        .prompt_ids = r->prompt_ids,
        .n_prompt_ids = r->n_prompt_ids,
        .params = &r->sp,
        .stream = r->stream,
        .sink = h->q,
        .user_data = hr,
    };
    if (rc == 0 && !(hr->engine_id = cv_engine_add_request(hr->model->engine, &d, &err))) rc = -1;
    if (rc == 0 && cv_openai_begin(r) < 0) {
        /* Its outputs are not handled yet (this loop thread handles them),
         * so the abort's final output finds the request still here. */
        cv_engine_abort(hr->model->engine, hr->engine_id);
        atomic_fetch_add(&hr->model->counters.pending, 1);
        http_track_request(h, hr, req);
        http_detach_conn(hr);
        reply_openai_error(req, 500, "out of memory");
        hr->req = NULL;
        return;
    }
    if (rc < 0) {
        reply_openai_error(req, cv_error_status(err.cls).http, err.msg);
        cv_server_account(hr->model, false, hr->start_ns);
        cv_model_release(hr->model);
        hr->model = NULL;
        http_req_free_unsubmitted(hr);
        return;
    }
    atomic_fetch_add(&hr->model->counters.pending, 1);
    http_track_request(h, hr, req);
}

static void add_model_name(cv_model *m, void *arg)
{
    json_t *names = arg;
    for (size_t i = 0; i < json_array_size(names); i++)
        if (!strcmp(json_string_value(json_array_get(names, i)), m->name)) return;
    json_array_append_new(names, json_string(m->name));
}

/* GET /v1/models: every ready model, once whatever its versions. */
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
    http_reply_json(req, 200, body);
}

void http_route_openai(cv_http *h, struct evhttp_request *req, enum evhttp_cmd_type cmd, char **seg,
                       int n)
{
    if (n == 2 && !strcmp(seg[1], "models") && cmd == EVHTTP_REQ_GET)
        reply_models(h, req);
    else if (n == 2 && !strcmp(seg[1], "completions") && cmd == EVHTTP_REQ_POST)
        do_completions(h, req);
    else
        reply_openai_error(req, 404, "Not Found");
}

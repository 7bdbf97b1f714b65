/* HTTP/REST frontend on libevent's evhttp: KServe v2 health, metadata,
 * config and repository endpoints, Triton's /generate and SSE
 * /generate_stream, and vLLM's OpenAI API (openai.h): /v1, /health and
 * /version.
 * Engine outputs of HTTP requests arrive on one
 * cv_output_queue whose eventfd is an event of this loop, so every HTTP
 * object is touched by the loop thread only. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>

#include "base/clock.h"
#include "base/log.h"
#include "base/utf8.h"
#include "base/workpool.h"
#include "server/http_internal.h"
#include "server/listen.h"

/* ---- replies ------------------------------------------------------------ */

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 431:
        return "Request Header Fields Too Large";
    case 405:
        return "Method Not Allowed";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    default:
        return "Internal Server Error";
    }
}

/* Replies handed to evhttp but not yet written out. A drain waits for
 * them, since freeing the server drops unwritten output. evhttp reports a
 * written reply through the request's on_complete callback and a failed
 * one only through the connection's close callback, so both end the
 * count. Only the loop thread touches it. */
static int n_unsent;

static void unsent_done(struct evhttp_connection *conn)
{
    http_conn_set_closecb(conn, NULL, NULL);
    n_unsent--;
}

static void on_sent(struct evhttp_request *req, void *arg)
{
    unsent_done(evhttp_request_get_connection(req));
}

static void on_unsent_close(struct evhttp_connection *conn, void *arg)
{
    unsent_done(conn);
}

/* Call right before handing the final reply of req to evhttp. */
static void track_unsent(struct evhttp_request *req)
{
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    if (!conn) return; /* detached: evhttp frees it without writing */
    n_unsent++;
    evhttp_request_set_on_complete_cb(req, on_sent, NULL);
    http_conn_set_closecb(conn, on_unsent_close, NULL);
}

static void reply_text(struct evhttp_request *req, int status, const char *type, const char *body,
                       size_t len)
{
    track_unsent(req);
    struct evbuffer *b = evbuffer_new();
    if (b && len) evbuffer_add(b, body, len);
    if (type) evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", type);
    evhttp_send_reply(req, status, reason_phrase(status), b);
    if (b) evbuffer_free(b);
}

void http_reply_json(struct evhttp_request *req, int status, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!text) {
        static const char oom[] = "{\"error\":\"out of memory\"}";
        reply_text(req, 500, "application/json", oom, sizeof oom - 1);
        return;
    }
    reply_text(req, status, "application/json", text, strlen(text));
    free(text);
}

void http_reply_error(struct evhttp_request *req, int status, const char *msg)
{
    http_reply_json(req, status, json_pack("{s:s}", "error", msg));
}

/* An error of the server core, its status from its class. */
void http_reply_core_error(struct evhttp_request *req, const cv_error *err)
{
    http_reply_error(req, cv_error_status(err->cls).http, err->msg);
}

/* The backend's error response as the only response of a request: Triton
 * (http_server.cc, GenerateRequestClass) takes the status from the first
 * response's error class and, on /generate_stream, frames its error JSON
 * as a server-sent event. */
static void reply_backend_error(struct evhttp_request *req, req_kind kind, const cv_error *err)
{
    int status = cv_error_status(err->cls).http;
    if (kind != KIND_STREAM) {
        http_reply_error(req, status, err->msg);
        return;
    }
    json_t *e = json_pack("{s:s}", "error", err->msg);
    char *text = e ? json_dumps(e, JSON_COMPACT) : NULL;
    json_decref(e);
    size_t len = text ? strlen(text) : 0;
    char *event = text ? malloc(len + 9) : NULL;
    if (!event) {
        free(text);
        http_reply_error(req, 500, "out of memory");
        return;
    }
    memcpy(event, "data: ", 6);
    memcpy(event + 6, text, len);
    memcpy(event + 6 + len, "\n\n", 3);
    reply_text(req, status, "text/event-stream; charset=utf-8", event, len + 8);
    free(event);
    free(text);
}

void http_reply_empty(struct evhttp_request *req, int status)
{
    reply_text(req, status, NULL, NULL, 0);
}

/* ---- request lifetime --------------------------------------------------- */

static void on_conn_close(struct evhttp_connection *conn, void *arg);

/* Stops watching the connection for a client that leaves: called before
 * the request's final reply, whose own tracking takes the callback over. */
void http_detach_conn(http_req *hr)
{
    if (hr->conn) http_conn_set_closecb(hr->conn, NULL, NULL);
    hr->conn = NULL;
    if (hr->hangup) event_free(hr->hangup);
    hr->hangup = NULL;
}

static void req_finish(http_req *hr)
{
    cv_http *h = hr->h;
    http_detach_conn(hr);
    if (hr->prev)
        hr->prev->next = hr->next;
    else
        h->active = hr->next;
    if (hr->next) hr->next->prev = hr->prev;
    h->n_active--;
    free(hr->deferred);
    json_decref(hr->pending);
    if (hr->oai) cv_openai_request_free(hr->oai);
    free(hr->oai);
    cv_infer_request_free(&hr->ir);
    cv_model_release(hr->model);
    free(hr);
}

/* A request that never reached the engine (nor the active list). */
void http_req_free_unsubmitted(http_req *hr)
{
    if (hr->oai) cv_openai_request_free(hr->oai);
    free(hr->oai);
    cv_infer_request_free(&hr->ir);
    if (hr->model) cv_model_release(hr->model);
    free(hr);
}

static void req_cancel(http_req *hr)
{
    if (hr->cancelled) return;
    hr->cancelled = true;
    cv_log_info("[vllm] Cancelling the request");
    if (hr->oai)
        http_openai_abort(hr); /* one engine request per prompt */
    else
        cv_engine_abort(hr->model->engine, hr->engine_id);
}

/* The client closed the connection. evhttp detaches a request whose reply
 * is unfinished instead of freeing it (evhttp_send_reply_end frees it once
 * the final output arrives), so keep it, stop writing and abort the engine
 * request. */
static void on_conn_close(struct evhttp_connection *conn, void *arg)
{
    http_req *hr = arg;
    hr->gone = true;
    hr->conn = NULL;
    http_conn_set_closecb(conn, NULL, NULL);
    if (hr->hangup) event_free(hr->hangup);
    hr->hangup = NULL;
    req_cancel(hr);
}

/* The socket of a non-streaming request in flight became readable or its
 * peer hung up. evhttp reads nothing while a request is being answered
 * and writes nothing before the final reply, so without this a client that
 * left was only noticed when the whole generation was done. On a hang-up
 * (or EOF) the engine request is aborted; its final reply then goes to the
 * dead socket, where evhttp's write error frees the connection. Bytes of a
 * pipelined next request end the watch (they stay for evhttp). */
static void on_hangup(evutil_socket_t fd, short what, void *arg)
{
    http_req *hr = arg;
    char c;
    ssize_t n = (what & EV_CLOSED) ? 0 : recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    event_free(hr->hangup);
    hr->hangup = NULL;
    if (n <= 0) req_cancel(hr);
}

static void watch_hangup(cv_http *h, http_req *hr)
{
    struct bufferevent *bev = evhttp_connection_get_bufferevent(hr->conn);
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd < 0) return;
    bool early_close = event_base_get_features(h->s->base) & EV_FEATURE_EARLY_CLOSE;
    hr->hangup =
        event_new(h->s->base, fd, EV_PERSIST | (early_close ? EV_CLOSED : EV_READ), on_hangup, hr);
    if (hr->hangup && event_add(hr->hangup, NULL) < 0) {
        event_free(hr->hangup);
        hr->hangup = NULL;
    }
}

void http_sse_send(http_req *hr, const char *json_text)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) return;
    evbuffer_add_printf(b, "data: %s\n\n", json_text);
    evhttp_send_reply_chunk(hr->req, b);
    evbuffer_free(b);
}

static void sse_error(http_req *hr, const char *msg)
{
    json_t *e = json_pack("{s:s}", "error", msg);
    char *text = e ? json_dumps(e, JSON_COMPACT) : NULL;
    json_decref(e);
    if (text) http_sse_send(hr, text);
    free(text);
}

void http_sse_send_json(http_req *hr, json_t *j)
{
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (text) http_sse_send(hr, text);
    free(text);
}

/* Starts a stream's SSE reply with status (once). Triton (http_server.cc,
 * GenerateRequestClass::InferResponseComplete) takes a stream's status
 * from its first response, so /generate_stream starts with its first
 * output: a first response that is an engine error is a 500; an error
 * after it can only be an event. The hang-up watch ends here: from now on
 * evhttp itself notices a client that leaves. */
static void sse_start(http_req *hr, int status)
{
    if (hr->sse_started) return;
    hr->sse_started = true;
    if (hr->hangup) event_free(hr->hangup);
    hr->hangup = NULL;
    struct evkeyvalq *hd = evhttp_request_get_output_headers(hr->req);
    evhttp_add_header(hd, "Content-Type", "text/event-stream; charset=utf-8");
    evhttp_add_header(hd, "Cache-Control", "no-cache");
    evhttp_send_reply_start(hr->req, status, reason_phrase(status));
}

/* The reply of a request that ended: the stream's end, or the held
 * /generate response; nothing when the client left (evhttp frees it). */
void http_reply_final(http_req *hr, json_t *whole)
{
    if (hr->req && hr->gone) {
        evhttp_send_reply_end(hr->req); /* frees the detached request */
    } else if (hr->req) {
        if (hr->kind == KIND_STREAM) sse_start(hr, 200);
        http_detach_conn(hr);
        if (hr->kind == KIND_STREAM) {
            track_unsent(hr->req);
            evhttp_send_reply_end(hr->req);
        } else {
            http_reply_json(hr->req, 200, whole);
            whole = NULL;
        }
    }
    json_decref(whole);
    hr->req = NULL;
}

void http_request_done(http_req *hr, const cv_request_output *out, bool ok)
{
    if (hr->cancelled && hr->gone) cv_log_info("[vllm] Successfully cancelled the request");
    bool aborted = out->n_seqs > 0 && out->seqs[0].finish_reason == CV_FINISH_ABORT;
    atomic_fetch_sub(&hr->model->counters.pending, 1);
    cv_server_account(hr->model, ok && !aborted, hr->start_ns);
    req_finish(hr);
}

static void handle_output(http_req *hr, const cv_request_output *out)
{
    if (hr->oai) {
        http_openai_output(hr, out);
        return;
    }
    /* Every error after submission is the server's (a failed engine step,
     * out of memory): Triton's INTERNAL, 500. Invalid input was refused
     * before (reply_backend_error, with its class). */
    bool ok = !out->error;
    char msg[CV_ERROR_MSG_BYTES] = "";
    if (hr->req && hr->gone) {
        /* nothing to write: the client left */
    } else if (hr->req && !out->error) {
        cv_infer_response resp;
        cv_error err = {.msg = ""};
        if (cv_infer_response_build(&hr->ir, out, &resp, &err) < 0) {
            snprintf(msg, sizeof msg, "%s", err.msg);
            ok = false;
        } else {
            json_t *j = cv_infer_response_json(&resp, hr->model->name, hr->model->version_str);
            cv_infer_response_free(&resp);
            hr->n_responses++;
            if (hr->kind == KIND_STREAM) {
                sse_start(hr, 200);
                char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
                if (text) http_sse_send(hr, text);
                free(text);
                json_decref(j);
            } else if (hr->n_responses > 1) {
                json_decref(j);
                http_detach_conn(hr);
                http_reply_error(hr->req, 400,
                                 "generate expects model to produce exactly 1 response, "
                                 "use generate stream for model that generates various "
                                 "number of responses");
                hr->req = NULL;
                req_cancel(hr);
                ok = false;
            } else {
                hr->pending = j;
            }
        }
    } else if (out->error) {
        snprintf(msg, sizeof msg, "%s", out->error);
    }
    if (hr->req && !hr->gone && !ok && msg[0]) {
        if (hr->kind == KIND_STREAM) {
            sse_start(hr, 500);
            sse_error(hr, msg);
        } else {
            http_detach_conn(hr);
            http_reply_error(hr->req, 500, msg);
            hr->req = NULL;
        }
    }
    if (!out->finished) return;
    json_t *whole = hr->pending;
    hr->pending = NULL;
    http_reply_final(hr, whole);
    http_request_done(hr, out, ok);
}

static void on_outputs(evutil_socket_t fd, short what, void *arg)
{
    cv_http *h = arg;
    uint64_t n;
    if (read(fd, &n, sizeof n) < 0 && errno != EAGAIN)
        cv_log_warn("http: reading the output queue eventfd: %s", strerror(errno));
    cv_request_output *out;
    while ((out = cv_output_queue_pop(h->q))) {
        http_req *hr = out->user_data;
        if (hr->submitting) {
            cv_request_output **d = realloc(hr->deferred, sizeof *d * (size_t)(hr->n_deferred + 1));
            if (d) {
                hr->deferred = d;
                d[hr->n_deferred++] = out;
                continue;
            }
            /* out of memory: the output is lost, the request is aborted */
            cv_engine_abort(hr->model->engine, hr->engine_id);
        } else {
            handle_output(hr, out);
        }
        cv_request_output_free(out);
    }
}

/* ---- endpoints ---------------------------------------------------------- */

bool http_body_json(struct evhttp_request *req, json_t **out, bool optional)
{
    struct evbuffer *b = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(b);
    *out = NULL;
    if (len == 0 && optional) return true;
    const char *data = (const char *)evbuffer_pullup(b, -1);
    json_error_t je;
    json_t *j = json_loadb(data ? data : "", len, 0, &je);
    if (!j || !json_is_object(j)) {
        char msg[400];
        if (j)
            snprintf(msg, sizeof msg,
                     "failed to parse the request JSON buffer: expected an "
                     "object");
        else
            snprintf(msg, sizeof msg, "failed to parse the request JSON buffer: %s at %d", je.text,
                     je.position);
        json_decref(j);
        http_reply_error(req, 400, msg);
        return false;
    }
    *out = j;
    return true;
}

/* A submitted request joins the active list, its connection watched for a
 * client that leaves; an OpenAI stream's SSE reply starts now (vLLM's
 * status is 200 whatever follows), /generate_stream's with its first
 * output (sse_start). */
void http_track_request(cv_http *h, http_req *hr, struct evhttp_request *req)
{
    hr->req = req;
    hr->conn = evhttp_request_get_connection(req);
    hr->next = h->active;
    if (h->active) h->active->prev = hr;
    h->active = hr;
    h->n_active++;
    if (!hr->conn) {
        /* The client left while the request was on the worker pool and
         * evhttp detached it: abort; the final output frees it. */
        hr->gone = true;
        req_cancel(hr);
        return;
    }
    http_conn_set_closecb(hr->conn, on_conn_close, hr);
    if (hr->kind == KIND_STREAM && hr->oai)
        sse_start(hr, 200);
    else
        watch_hangup(h, hr);
}

/* The engine request of a checked /generate(_stream) request is built on
 * the worker pool: cv_infer_submit tokenizes the prompt, which for a long
 * prompt takes seconds that every other client on this loop would wait
 * (a 128 MB prompt stalled them 9 s). The loop replies when it is done. */
typedef struct submit_job {
    http_req *hr;
    struct evhttp_request *req;
    struct event *done;
    int rc;
    cv_error err;
} submit_job;

static void submit_on_pool(void *arg)
{
    submit_job *job = arg;
    http_req *hr = job->hr;
    job->rc =
        cv_infer_prepare(&hr->ir, hr->model, &job->err) < 0 ||
                !(hr->engine_id = cv_infer_submit(&hr->ir, hr->model, hr->h->q, hr, &job->err))
            ? -1
            : 0;
    event_active(job->done, EV_TIMEOUT, 0);
}

static void on_submitted(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    submit_job *job = arg;
    http_req *hr = job->hr;
    cv_http *h = hr->h;
    h->n_submitting--;
    if (job->rc < 0) {
        reply_backend_error(job->req, hr->kind, &job->err);
        cv_server_account(hr->model, false, hr->start_ns);
        http_req_free_unsubmitted(hr);
    } else {
        hr->submitting = false;
        http_track_request(h, hr, job->req);
        /* handle_output frees hr with the final output, the last one */
        cv_request_output **d = hr->deferred;
        int n = hr->n_deferred;
        hr->deferred = NULL;
        for (int i = 0; i < n; i++) {
            handle_output(hr, d[i]);
            cv_request_output_free(d[i]);
        }
        free(d);
    }
    event_free(job->done);
    free(job);
}

static void do_generate(cv_http *h, struct evhttp_request *req, cv_model *m, req_kind kind)
{
    json_t *body;
    if (!http_body_json(req, &body, false)) {
        cv_server_account(m, false, cv_now_ns());
        cv_model_release(m);
        return;
    }
    http_req *hr = calloc(1, sizeof *hr);
    if (!hr) {
        json_decref(body);
        cv_model_release(m);
        http_reply_error(req, 500, "out of memory");
        return;
    }
    hr->h = h;
    hr->kind = kind;
    hr->model = m;
    hr->start_ns = cv_now_ns();
    cv_infer_request_init(&hr->ir);
    cv_error err = {.msg = ""};
    int rc = cv_infer_set_json(&hr->ir, m, body, &err);
    json_decref(body);
    if (rc == 0) rc = cv_infer_check(&hr->ir, m, &err);
    if (rc == 0) rc = cv_server_admit(h->s, &err);
    submit_job *job = rc == 0 ? calloc(1, sizeof *job) : NULL;
    if (rc == 0 && (!job || !(job->done = event_new(h->s->base, -1, 0, on_submitted, job)))) {
        free(job);
        job = NULL;
        rc = cv_errorf_class(&err, CV_ERR_INTERNAL, "out of memory");
    }
    if (rc == 0) {
        job->hr = hr;
        job->req = req;
        hr->submitting = true;
        if (cv_workpool_submit(h->pool, submit_on_pool, job) < 0) {
            event_free(job->done);
            free(job);
            hr->submitting = false;
            rc = cv_errorf_class(&err, CV_ERR_UNAVAILABLE, "Server is stopping");
        }
    }
    if (rc < 0) {
        http_reply_core_error(req, &err);
        cv_server_account(m, false, hr->start_ns);
        http_req_free_unsubmitted(hr);
        return;
    }
    h->n_submitting++;
}

/* /v2/models/{m}[/versions/{v}][/action] */
static void route_model(cv_http *h, struct evhttp_request *req, enum evhttp_cmd_type cmd,
                        char **seg, int n)
{
    const char *name = seg[2], *version = "", *action = "";
    int i = 3;
    if (n > 4 && !strcmp(seg[3], "versions")) {
        version = seg[4];
        i = 5;
    }
    if (n == i + 1)
        action = seg[i];
    else if (n != i) {
        http_reply_error(req, 404, "Not Found");
        return;
    }

    if (!strcmp(action, "stats") && cmd == EVHTTP_REQ_GET) {
        http_reply_stats(h, req, name, version);
        return;
    }
    if (!strcmp(action, "ready")) {
        http_reply_empty(req, cv_server_model_ready(h->s, name, version) ? 200 : 400);
        return;
    }
    bool post = cmd == EVHTTP_REQ_POST, get = cmd == EVHTTP_REQ_GET;
    if (!action[0] && get) {
        http_reply_metadata(h, req, name, version);
        return;
    }
    cv_error err = {.msg = ""};
    cv_model *m = cv_server_acquire(h->s, name, version, &err);
    if (!m) {
        http_reply_core_error(req, &err);
        return;
    }
    if (!strcmp(action, "config") && get) {
        http_reply_json(req, 200, cv_model_config_to_json(&m->cfg));
    } else if (!strcmp(action, "infer") && post) {
        cv_errorf_class(&err, CV_ERR_UNSUPPORTED,
                        "HTTP end point doesn't support models with decoupled transaction policy");
        http_reply_core_error(req, &err);
    } else if (!strcmp(action, "generate") && post) {
        do_generate(h, req, m, KIND_GENERATE);
        return;
    } else if (!strcmp(action, "generate_stream") && post) {
        do_generate(h, req, m, KIND_STREAM);
        return;
    } else {
        http_reply_error(req, 404, "Not Found");
    }
    cv_model_release(m);
}

/* True when every Content-Length header carries the same value. evhttp
 * reads the body by the first one; a second, different one means the
 * message boundaries are ambiguous (request smuggling through a proxy that
 * reads the other), so RFC 9112 says reject it. */
static bool content_length_consistent(struct evhttp_request *req)
{
    const char *first = NULL;
    const struct evkeyvalq *hs = evhttp_request_get_input_headers(req);
    for (const struct evkeyval *kv = hs->tqh_first; kv; kv = kv->next.tqe_next) {
        if (evutil_ascii_strcasecmp(kv->key, "Content-Length")) continue;
        if (first && strcmp(first, kv->value)) return false;
        first = kv->value;
    }
    return true;
}

static void route(struct evhttp_request *req, void *arg)
{
    cv_http *h = arg;
    if (!http_conn_request_read(req)) return;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *raw = uri ? evhttp_uri_get_path(uri) : NULL;
    size_t path_len = 0;
    char *path = raw ? evhttp_uridecode(raw, 0, &path_len) : NULL;
    if (!path) {
        http_reply_error(req, 400, "malformed request URI");
        return;
    }
    if (!content_length_consistent(req)) {
        free(path);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
        http_reply_error(req, 400, "conflicting Content-Length headers");
        return;
    }
    /* Names taken from the path are echoed into JSON and log lines and read
     * as C strings: a %00 or invalid UTF-8 must not reach them. */
    size_t valid = cv_utf8_valid_prefix((const uint8_t *)path, path_len);
    if (valid < path_len) {
        http_reply_error(req, 400,
                         path[valid] ? "request path is not valid UTF-8 after percent-decoding"
                                     : "request path holds a NUL byte (%00)");
        free(path);
        return;
    }
    char *seg[16];
    int n = 0;
    for (char *save, *t = strtok_r(path, "/", &save); t && n < 16; t = strtok_r(NULL, "/", &save))
        seg[n++] = t;

    if ((n >= 1 && !strcmp(seg[0], "v1")) ||
        (n == 1 && (!strcmp(seg[0], "tokenize") || !strcmp(seg[0], "detokenize")))) {
        http_route_openai(h, req, cmd, seg, n);
    } else if (n == 1 && !strcmp(seg[0], "health") && cmd == EVHTTP_REQ_GET) {
        /* vLLM's OpenAI server: 200 while serving */
        http_reply_empty(req, cv_server_live(h->s) ? 200 : 503);
    } else if (n == 1 && !strcmp(seg[0], "version") && cmd == EVHTTP_REQ_GET) {
        http_reply_json(req, 200, json_pack("{s:s}", "version", cv_server_version));
    } else if (n == 0 || strcmp(seg[0], "v2")) {
        http_reply_error(req, 404, "Not Found");
    } else if (n == 1 && cmd == EVHTTP_REQ_GET) {
        json_t *ext = json_array();
        for (int i = 0; i < cv_server_n_extensions; i++)
            json_array_append_new(ext, json_string(cv_server_extensions[i]));
        http_reply_json(req, 200,
                        json_pack("{s:s, s:s, s:o}", "name", "cvllm", "version", cv_server_version,
                                  "extensions", ext));
    } else if (n == 3 && !strcmp(seg[1], "health") && cmd == EVHTTP_REQ_GET &&
               (!strcmp(seg[2], "live") || !strcmp(seg[2], "ready"))) {
        bool ok = seg[2][0] == 'l' ? cv_server_live(h->s) : cv_server_ready(h->s);
        http_reply_empty(req, ok ? 200 : 400);
    } else if (n == 3 && !strcmp(seg[1], "models") && !strcmp(seg[2], "stats") &&
               cmd == EVHTTP_REQ_GET) {
        http_reply_stats(h, req, "", "");
    } else if (n >= 3 && !strcmp(seg[1], "models")) {
        route_model(h, req, cmd, seg, n);
    } else if (n >= 3 && !strcmp(seg[1], "repository") && cmd == EVHTTP_REQ_POST) {
        http_route_repository(h, req, seg, n);
    } else {
        http_reply_error(req, 404, "Not Found");
    }
    free(path);
}

/* ---- lifecycle ---------------------------------------------------------- */

static void http_destroy(void *state);

static int http_start(cv_server *s, void **state, cv_error *err)
{
    *state = NULL;
    if (!s->opts.allow_http) return 0;
    cv_http *h = calloc(1, sizeof *h);
    if (!h) return cv_errorf_class(err, CV_ERR_INTERNAL, "out of memory");
    h->s = s;
    if (!(h->q = cv_output_queue_create()) || !(h->http = evhttp_new(s->base))) {
        cv_errorf_class(err, CV_ERR_INTERNAL, "HTTP: cannot create the server");
        goto fail;
    }
    if (!(h->pool = cv_workpool_create(2, err))) goto fail;
    evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD);
    /* Bodies are buffered whole before parsing: bound them, and the
     * headers, and the time a client may keep a connection waiting for
     * them (see cv_server_options). libevent 2.1 answers an overflow itself
     * and closes the connection: 413 for the body (from Content-Length,
     * before reading it), 400 for the headers, which http_conn.c turns into
     * a 431. */
    evhttp_set_max_body_size(h->http, s->opts.http_max_input_bytes);
    evhttp_set_max_headers_size(h->http, s->opts.http_max_header_bytes);
    evhttp_set_timeout(h->http, s->opts.http_idle_timeout_s);
    evhttp_set_gencb(h->http, route, h);
    if (http_conn_start(h, err) < 0) goto fail;
    h->q_ev = event_new(s->base, cv_output_queue_fd(h->q), EV_READ | EV_PERSIST, on_outputs, h);
    if (!h->q_ev || event_add(h->q_ev, NULL) < 0) {
        cv_errorf_class(err, CV_ERR_INTERNAL, "HTTP: cannot watch the output queue");
        goto fail;
    }
    const char *addr = s->opts.http_address;
    h->sock = evhttp_bind_socket_with_handle(h->http, addr, (uint16_t)s->opts.http_port);
    if (!h->sock) {
        cv_errorf_class(err, CV_ERR_UNAVAILABLE,
                        "failed to start HTTP service: cannot bind %s port %d: %s", addr,
                        s->opts.http_port, strerror(errno));
        goto fail;
    }
    h->guard = cv_listen_guard_new(s->base, evhttp_bound_socket_get_listener(h->sock), "HTTP");
    if (!h->guard) {
        cv_errorf_class(err, CV_ERR_INTERNAL, "out of memory");
        goto fail;
    }
    cv_log_info("Started HTTPService at %s:%d", addr, s->opts.http_port);
    *state = h;
    return 0;
fail:
    http_destroy(h);
    return -1;
}

static void http_stop_accepting(void *state)
{
    cv_http *h = state;
    cv_listen_guard_free(h->guard);
    h->guard = NULL;
    if (h->sock) {
        evhttp_del_accept_socket(h->http, h->sock);
        h->sock = NULL;
    }
}

static void http_abort_all(void *state)
{
    cv_http *h = state;
    for (http_req *hr = h->active; hr; hr = hr->next)
        req_cancel(hr);
}

static int http_active(void *state)
{
    const cv_http *h = state;
    return h->n_active + n_unsent + h->n_loading + h->n_submitting;
}

static void http_destroy(void *state)
{
    cv_http *h = state;
    if (!h) return;
    cv_workpool_destroy(h->pool);
    if (h->q_ev) event_free(h->q_ev);
    if (h->http) evhttp_free(h->http);
    http_conn_stop(h);
    if (h->q) cv_output_queue_destroy(h->q);
    free(h);
}

const cv_frontend_ops cv_http_frontend = {
    .name = "HTTP",
    .start = http_start,
    .stop_accepting = http_stop_accepting,
    .abort_all = http_abort_all,
    .active = http_active,
    .destroy = http_destroy,
};

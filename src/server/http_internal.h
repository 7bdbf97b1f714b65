/* Internals of the HTTP frontend shared by http.c (the server, Triton's
 * endpoints, the request lifecycle) and http_openai.c (vLLM's OpenAI API).
 * Everything here runs on the event loop thread. */
#ifndef CV_SERVER_HTTP_INTERNAL_H
#define CV_SERVER_HTTP_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <event2/http.h>
#include <jansson.h>

#include "server/openai.h"
#include "server/server_internal.h"

typedef struct cv_http cv_http;

typedef enum { KIND_GENERATE, KIND_STREAM } req_kind;

/* One /generate, /generate_stream or /v1/completions request in flight
 * (oai set for the last). Freed when its
 * final engine output has been handled (every request gets exactly one). */
typedef struct http_req {
    struct http_req *prev, *next; /* cv_http.active */
    cv_http *h;
    struct evhttp_request *req; /* NULL once replied or the client left */
    struct evhttp_connection *conn;
    struct event *hangup; /* until a reply starts: watches the socket for the client leaving */
    req_kind kind;
    cv_model *model;
    cv_infer_request ir;
    uint64_t engine_id;
    uint64_t start_ns;
    int n_responses;
    json_t *pending; /* /generate: the response held until final */
    cv_openai_request *oai;
    bool cancelled;
    /* Prepared and tokenized on the worker pool: outputs that arrive
     * before the loop has tracked the request wait here, in order. */
    bool submitting;
    cv_request_output **deferred;
    int n_deferred;
    bool gone;        /* the client closed the connection */
    bool sse_started; /* a stream's status line and headers are sent */
} http_req;

typedef struct http_conn http_conn;
typedef void (*http_closecb)(struct evhttp_connection *conn, void *arg);

struct cv_http {
    cv_server *s;
    struct evhttp *http;
    struct evhttp_bound_socket *sock;
    struct cv_listen_guard *guard; /* accept back-off on descriptor exhaustion */
    struct cv_workpool *pool;      /* tokenizes prompts off the event loop */
    int n_submitting;              /* requests on the pool */
    cv_output_queue *q;
    struct event *q_ev;
    http_req *active;
    int n_active;
    int n_loading;          /* model loads whose reply is not yet sent */
    uint64_t n_completions; /* OpenAI request ids */
    /* Connections (http_conn.c): counted for --http-max-connections. */
    http_conn *attaching;    /* accepted, not yet attached */
    struct event *attach_ev; /* attaches them */
    int n_conns;             /* attached and open */
    long conn_refused;       /* refusals not logged yet */
    time_t conn_last_log;
};

/* Replies and the SSE stream of a request. */
void http_reply_json(struct evhttp_request *req, int status, json_t *body);     /* steals body */
void http_reply_error(struct evhttp_request *req, int status, const char *msg); /* {"error":msg} */
void http_reply_core_error(struct evhttp_request *req, const cv_error *err); /* status by class */
void http_reply_empty(struct evhttp_request *req, int status);
/* The body as a JSON object (NULL when empty and optional); false when it
 * is not one, after replying 400 naming the parse error. */
bool http_body_json(struct evhttp_request *req, json_t **out, bool optional);
void http_sse_send(http_req *hr, const char *data); /* "data: ...\n\n" */
void http_sse_send_json(http_req *hr, json_t *j);   /* steals j */

/* Lifecycle: a submitted request is tracked (active list, close callback,
 * SSE headers); its final output gets the final reply, then request_done
 * accounts and frees it. A request refused before submission is freed
 * with req_free_unsubmitted. */
void http_track_request(cv_http *h, http_req *hr, struct evhttp_request *req);
void http_detach_conn(http_req *hr);
void http_reply_final(http_req *hr, json_t *whole); /* steals whole */
void http_request_done(http_req *hr, const cv_request_output *out, bool ok);
void http_req_free_unsubmitted(http_req *hr);

/* http_repo.c: metadata and statistics of a model ("" = all), and the
 * /v2/repository routes (seg: the path's n segments). */
void http_reply_metadata(cv_http *h, struct evhttp_request *req, const char *name,
                         const char *version);
void http_reply_stats(cv_http *h, struct evhttp_request *req, const char *name,
                      const char *version);
void http_route_repository(cv_http *h, struct evhttp_request *req, char **seg, int n);

/* http_conn.c: each connection's count and request-head measurement (see
 * the file). http_conn_start installs evhttp's bufferevent maker;
 * http_conn_stop after evhttp_free. http_conn_set_closecb stands for
 * evhttp_connection_set_closecb. http_conn_request_read is called first
 * for each request evhttp has read: false when it answered it (431). */
int http_conn_start(cv_http *h, cv_error *err);
void http_conn_stop(cv_http *h);
void http_conn_set_closecb(struct evhttp_connection *conn, http_closecb cb, void *arg);
bool http_conn_request_read(struct evhttp_request *req);

/* http_openai.c: the outputs of /v1/completions requests, and the /v1
 * routes. */
void http_openai_output(http_req *hr, const cv_request_output *out);
void http_openai_abort(http_req *hr); /* aborts the engine requests of every prompt */
void http_route_openai(cv_http *h, struct evhttp_request *req, enum evhttp_cmd_type cmd, char **seg,
                       int n);

#endif

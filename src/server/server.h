/* cvllm-server: a Triton-compatible inference server over cvllm engines
 * (docs/PROTOCOL.md): a model repository, HTTP/REST with /generate and
 * SSE /generate_stream on libevent, gRPC inference.GRPCInferenceService on
 * the gRPC C core, and Prometheus /metrics.
 *
 * Threads: the calling thread runs the event loop (HTTP, metrics, signals,
 * HTTP request outputs); gRPC adds a completion-queue thread and an output
 * thread; each loaded model has its engine thread; a model load requested
 * over HTTP or gRPC runs on a thread of its own, and poll mode adds the
 * repository poller. Prompts are tokenized by the engine on the thread that
 * submits them (the event loop or the completion queue): ~13 ms for a
 * 200 KB prompt, well under a millisecond for ordinary ones. */
#ifndef CV_SERVER_SERVER_H
#define CV_SERVER_SERVER_H

#include <stdbool.h>

#include "base/error.h"

typedef enum {
    CV_CONTROL_NONE = 0, /* load every model at start */
    CV_CONTROL_EXPLICIT, /* load --load-model ones; load/unload APIs */
    CV_CONTROL_POLL,     /* like NONE, then re-scans every repository_poll_s */
} cv_control_mode;

enum { CV_SERVER_MAX_LIST = 32 };

typedef struct cv_server_options {
    const char *repos[CV_SERVER_MAX_LIST];
    int n_repos;
    const char *load_models[CV_SERVER_MAX_LIST]; /* "*" = all */
    int n_load_models;
    int http_port, grpc_port, metrics_port;     /* 8000, 8001, 8002 */
    const char *http_address, *grpc_address;    /* bind addresses ("0.0.0.0") */
    const char *metrics_address;                /* NULL: http_address */
    bool allow_http, allow_grpc, allow_metrics; /* true */
    cv_control_mode control_mode;
    bool exit_on_error;        /* true: a failed load at start is fatal */
    bool strict_readiness;     /* true: ready only when every model is */
    int exit_timeout_s;        /* drain limit on SIGINT/SIGTERM (30) */
    int repository_poll_s;     /* poll mode: seconds between scans (15) */
    int n_threads;             /* engine backend threads (0 = all cores) */
    const char *chat_template; /* --chat-template: a file or the template text, or NULL */
    /* HTTP limits (issue 16): a request body above max_input_bytes is
     * refused before it is read (tritonserver's --http-max-input-size,
     * 64 MiB); request headers above max_header_bytes are refused; a
     * connection silent for idle_timeout_s while a request is due (its
     * headers or body, or the next request on a kept-alive connection) is
     * closed, as nginx's client_header/body and keepalive timeouts do. */
    long http_max_input_bytes; /* 64 MiB */
    int http_max_header_bytes; /* 16 KiB */
    int http_idle_timeout_s;   /* 60 */
    /* Connection caps (cvllm's; tritonserver has none): a connection
     * accepted while this many are open is refused at once, with a 503 on
     * HTTP, closed on gRPC, and a log line at most every 10 s. 0: none. */
    int http_max_connections; /* 4096 */
    int grpc_max_connections; /* 4096 */
} cv_server_options;

void cv_server_options_default(cv_server_options *o);

/* Loads the models, serves until SIGINT/SIGTERM, drains (in-flight requests
 * finish, or are aborted with final responses after exit_timeout_s) and
 * returns 0; -1 with err when the server cannot start. */
int cv_server_run(const cv_server_options *o, cv_error *err);

#endif

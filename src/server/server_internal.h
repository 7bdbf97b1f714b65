/* Shared state of the server's frontends (http.c, grpc.c, metrics.c,
 * server.c). Not part of the module's contract. */
#ifndef CV_SERVER_INTERNAL_H
#define CV_SERVER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include <event2/event.h>
#include <event2/http.h>

#include "server/infer.h"
#include "server/repository.h"
#include "server/server.h"

typedef struct cv_grpc cv_grpc;
typedef struct cv_http cv_http;

typedef struct cv_server {
    cv_server_options opts;
    cv_repository *repo;
    struct event_base *base;
    cv_http *http; /* NULL when --allow-http=false */
    struct evhttp *metrics;
    struct evhttp_bound_socket *metrics_sock;
    cv_grpc *grpc;        /* NULL when --allow-grpc=false */
    atomic_bool draining; /* SIGINT/SIGTERM seen: refuse new requests */
    uint64_t drain_start_ns;
    bool drain_aborted; /* exit_timeout_s passed: requests were aborted */
    struct event *drain_timer;
    struct event *sig_int, *sig_term;
    pthread_t poll_thread; /* poll mode only */
    bool poll_started;
    atomic_bool stop_poll;
} cv_server;

/* Server readiness as /v2/health/ready and ServerReady report it. */
bool cv_server_ready(cv_server *s);

/* Triton counters of one finished request. */
void cv_server_account(cv_model *m, bool ok, uint64_t start_ns);

/* Server metadata extensions list. */
extern const char *const cv_server_extensions[];
extern const int cv_server_n_extensions;
extern const char cv_server_version[];

cv_http *cv_http_start(cv_server *s, cv_error *err);
void cv_http_stop_accepting(cv_http *h);
void cv_http_abort_all(cv_http *h);
/* Requests in flight plus replies not yet written out. */
int cv_http_active(const cv_http *h);
void cv_http_destroy(cv_http *h);

cv_grpc *cv_grpc_start(cv_server *s, cv_error *err);
void cv_grpc_abort_all(cv_grpc *g);
/* Requests in flight plus streams with responses or their OK status not
 * yet written. */
int cv_grpc_active(cv_grpc *g);
/* Shuts the gRPC server down (GOAWAY to every connection) and waits for
 * its calls to end and its connections to close; then frees it. */
void cv_grpc_destroy(cv_grpc *g);

/* Triton's model statistics (the statistics extension) of one model. */
typedef struct cv_model_stats {
    char name[256];
    char version[24];
    uint64_t last_inference_ms;
    uint64_t inference_count, execution_count;
    uint64_t success_count, success_ns;
    uint64_t fail_count, fail_ns;
    uint64_t queue_ns; /* time in the engine's waiting queue */
} cv_model_stats;

/* Statistics of model `name` at `version` ("" = any), or of every READY
 * model when name is "". Returns the number in *out (malloc'd, caller
 * frees), or -1 with err and *http_status for an unknown model. */
int cv_server_model_stats(cv_server *s, const char *name, const char *version, cv_model_stats **out,
                          cv_error *err, int *http_status);
json_t *cv_model_stats_json(const cv_model_stats *st, int n);

int cv_metrics_start(cv_server *s, cv_error *err);
/* The Prometheus text of every READY model (new string, caller frees). */
char *cv_metrics_render(cv_server *s);

#endif

/* Shared state of the server core (server.c, core.c, stats.c) and its
 * frontends. Not part of the module's contract. */
#ifndef CV_SERVER_INTERNAL_H
#define CV_SERVER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include <event2/event.h>

#include "server/core.h"
#include "server/infer.h"
#include "server/repository.h"
#include "server/server.h"

enum { CV_SERVER_MAX_FRONTENDS = 8 };

struct cv_server {
    cv_server_options opts;
    cv_repository *repo;
    struct event_base *base;
    /* the started frontends, in start order; state NULL when turned off */
    const cv_frontend_ops *fe[CV_SERVER_MAX_FRONTENDS];
    void *fe_state[CV_SERVER_MAX_FRONTENDS];
    int n_fe;
    atomic_bool draining; /* SIGINT/SIGTERM seen: refuse new requests */
    uint64_t drain_start_ns;
    bool drain_aborted; /* exit_timeout_s passed: requests were aborted */
    struct event *drain_timer;
    struct event *sig_int, *sig_term;
    pthread_t poll_thread; /* poll mode only */
    bool poll_started;
    atomic_bool stop_poll;
};

/* The frontends cv_server_run starts, in order (frontends.c);
 * NULL-terminated. */
extern const cv_frontend_ops *const cv_server_frontends[];

/* Server readiness as /v2/health/ready and ServerReady report it. */
bool cv_server_ready(cv_server *s);

/* Triton counters of one finished request. */
void cv_server_account(cv_model *m, bool ok, uint64_t start_ns);

/* Server metadata extensions list. */
extern const char *const cv_server_extensions[];
extern const int cv_server_n_extensions;
extern const char cv_server_version[];

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
 * frees), or -1 with err (classed as cv_server_acquire's). */
int cv_server_model_stats(cv_server *s, const char *name, const char *version, cv_model_stats **out,
                          cv_error *err);
json_t *cv_model_stats_json(const cv_model_stats *st, int n);

/* The Prometheus text of every READY model (new string, caller frees). */
char *cv_metrics_render(cv_server *s);

#endif

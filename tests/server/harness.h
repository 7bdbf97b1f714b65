/* Test harness for the server tests: a temporary model repository over
 * the model the repository ships (samples/models/cvllm-kjv-4m, so a lone
 * clone tests), cvllm-server started on free loopback ports, and blocking
 * libcurl helpers (plain requests and SSE). */
#ifndef CV_TEST_SERVER_HARNESS_H
#define CV_TEST_SERVER_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct test_server {
    pid_t pid;
    int http_port, grpc_port, metrics_port;
    char repo[256];
    char log_path[300];
} test_server;

/* A fresh repository directory with model "kjv" (REPORT_CUSTOM_METRICS
 * on) over th_model_dir(); returns its path (static). */
const char *th_make_repo(void);
/* Adds model `name` with the given config.pbtxt and model.json texts
 * (model.json NULL = none) to repo. */
void th_add_model(const char *repo, const char *name, const char *pbtxt, const char *model_json);
/* The shipped model's directory (absolute; static buffer). */
const char *th_model_dir(void);
/* model.json engine args for it (static buffer). */
const char *th_model_json(void);

/* Starts cvllm-server on repo with extra flags (NULL-terminated) and waits
 * for /v2/health/live. Returns false when it did not come up. */
bool th_start(test_server *s, const char *repo, const char *const *extra);
/* SIGTERM, wait; returns the exit status (or -1 if killed by a signal). */
int th_stop(test_server *s);
/* Whole server log (malloc'd). */
char *th_log(const test_server *s);

/* One HTTP request; returns the status (0 on transport failure); *body is
 * the malloc'd response body. method "GET" or "POST" (body may be NULL). */
long th_http(const char *method, const char *url, const char *body, char **resp);
/* A /generate_stream request: returns the status; *events gets the
 * concatenated body. If stop_after > 0 the connection is closed after that
 * many "data:" events. */
long th_sse(const char *url, const char *body, int stop_after, char **events);
/* The Content-Type of the last th_http / th_sse / th_expect answer ("" when
 * none; not for use from several threads at once). */
const char *th_last_content_type(void);
/* The value of a metrics line "name{labels} value" (labels exact), or -1. */
double th_metric(const char *metrics_text, const char *name_and_labels);

/* The stdout of a command line (malloc'd). */
char *th_run(const char *cmd);

/* "http://127.0.0.1:<s's HTTP port><path>" (static buffer, reused). */
const char *th_url(const test_server *s, const char *path);
/* One request whose status (and body, unless want_body is NULL) must be
 * exactly as given (cmocka assertions). */
void th_expect(const char *method, const char *url, const char *body, long status,
               const char *want_body);
/* The text cvllm-generate prints for prompt on th_model_dir() (greedy,
 * max_tokens new tokens), without its final newline (malloc'd). */
char *th_greedy_text(const char *prompt, int max_tokens);

#endif

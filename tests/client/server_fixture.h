/* Test fixture: a real cvllm-server (CVLLM_BIN_DIR/cvllm-server) on a
 * temporary model repository serving samples/models/cvllm-kjv-4m as
 * "vllm_model" with the vLLM metrics on, on loopback ports picked free at
 * run time; plus helpers to run the client tools and read their output. */
#ifndef CV_TESTS_SERVER_FIXTURE_H
#define CV_TESTS_SERVER_FIXTURE_H

#include <stdbool.h>
#include <sys/types.h>

typedef struct test_server {
    char dir[256]; /* temporary directory: repository, logs, outputs */
    int http_port, grpc_port, metrics_port;
    pid_t pid;
} test_server;

/* Starts the server and waits (up to 120 s) until /v2/health/ready says 200.
 * Fails the running cmocka test on any problem. */
void test_server_start(test_server *s);
/* The same over the repository s->dir/repo that the caller made (s->dir
 * set, the rest of s zero). */
void test_server_spawn(test_server *s);
/* test_server_spawn with extra command-line flags after the repository and
 * ports (NULL-terminated; NULL for none), waiting up to wait_s seconds for
 * readiness. */
void test_server_spawn_args(test_server *s, const char *const *extra, int wait_s);
/* SIGTERM, then asserts the server exits with status 0; removes dir. */
void test_server_stop(test_server *s);

/* Runs argv[0] (a path) with stdout+stderr to out_path; returns the exit
 * status (or 128 + signal). */
int test_run(char *const argv[], const char *out_path);
/* Whole file, NUL-terminated, malloc'ed; fails the test when unreadable. */
char *test_read_file(const char *path);
/* Value of the first sample of a Prometheus metric (name followed by '{' or
 * ' ') in text; fails the test when absent. */
double test_metric(const char *text, const char *name);
/* GET http://127.0.0.1:port/path body (malloc'ed); fails unless 200. */
char *test_http_get(int port, const char *path);

#endif

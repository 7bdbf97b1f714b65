/* What the server adds to each request: the same greedy requests, one at a
 * time, (1) in process through cv_engine with streamed outputs, (2) through
 * cvllm-server over HTTP /generate_stream (SSE) and (3) over gRPC
 * ModelStreamInfer. Time to first token and inter-token latency are taken
 * on the client side (arrival of each delta); the difference to the
 * in-process numbers is the per-request and per-token overhead of the
 * frontends (parsing, event loop, encoding, loopback sockets). Prints a
 * markdown table. Not a test: nothing here passes or fails. */
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/net.h"
#include "client.h"
#include "cvllm/engine.h"

static const char *const prompts[] = {"Once upon a time", "Lily and Ben went to the park",
                                      "The little dog", "One day, a girl"};
enum { N_PROMPTS = 4 };

typedef struct samples {
    double *v;
    int n, cap;
} samples;

static void add(samples *s, double x)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 256;
        s->v = realloc(s->v, sizeof *s->v * (size_t)s->cap);
        if (!s->v) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
    }
    s->v[s->n++] = x;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(samples *s, double p)
{
    if (s->n == 0) return NAN;
    qsort(s->v, (size_t)s->n, sizeof *s->v, cmp_d);
    int i = (int)ceil(p / 100.0 * s->n) - 1;
    return s->v[i < 0 ? 0 : i];
}

static double mean(const samples *s)
{
    double t = 0;
    for (int i = 0; i < s->n; i++)
        t += s->v[i];
    return s->n ? t / s->n : NAN;
}

typedef struct mode_stats {
    const char *name;
    samples ttft_ms, itl_ms, e2e_ms;
    long tokens;
} mode_stats;

typedef struct opts {
    const char *model;
    int requests; /* per mode */
    int max_tokens;
    int threads;
} opts;

/* Arrival times of one request's deltas -> TTFT and ITLs. */
static void record(mode_stats *m, uint64_t t0, const uint64_t *arrivals, int n)
{
    if (n == 0) return;
    add(&m->ttft_ms, (double)(arrivals[0] - t0) / 1e6);
    for (int i = 1; i < n; i++)
        add(&m->itl_ms, (double)(arrivals[i] - arrivals[i - 1]) / 1e6);
    add(&m->e2e_ms, (double)(arrivals[n - 1] - t0) / 1e6);
    m->tokens += n;
}

/* The sampling parameters as JSON, and escaped once for an HTTP body. */
static char sampling_raw[256], sampling_esc[300];

/* Everything the three paths need, set up once. */
typedef struct paths {
    const opts *o;
    cv_engine *engine;
    cv_output_queue *q;
    cv_sampling_params sp;
    char sse_url[128];
    cvc_stream *stream;
    uint64_t *arr; /* (max_tokens + 8) arrival times of one request */
    int cap;
} paths;

static void inprocess_one(paths *b, const char *p, mode_stats *m)
{
    cv_error err = {.msg = ""};
    cv_request_desc d = {
        .prompt = p, .prompt_len = strlen(p), .params = &b->sp, .stream = true, .sink = b->q};
    uint64_t t0 = cv_now_ns();
    if (!cv_engine_add_request(b->engine, &d, &err)) {
        fprintf(stderr, "add_request: %s\n", err.msg);
        exit(1);
    }
    int n = 0;
    for (;;) {
        cv_request_output *out = cv_output_queue_wait(b->q, -1);
        uint64_t now = cv_now_ns();
        bool fin = out->finished;
        if (out->n_seqs > 0 && out->seqs[0].n_tokens > 0 && n < b->cap) b->arr[n++] = now;
        cv_request_output_free(out);
        if (fin) break;
    }
    if (m) record(m, t0, b->arr, n);
}

typedef struct sse_ctx {
    uint64_t *arr;
    int n, cap;
} sse_ctx;

static int on_event(void *user, const char *data, size_t len, uint64_t arrival_ns)
{
    sse_ctx *c = user;
    if (c->n < c->cap) c->arr[c->n++] = arrival_ns;
    return 0;
}

static void http_one(paths *b, const char *p, mode_stats *m)
{
    char body[1024];
    snprintf(body, sizeof body,
             "{\"text_input\": \"%s\", \"stream\": true, \"sampling_parameters\": \"%s\"}", p,
             sampling_esc);
    sse_ctx c = {.arr = b->arr, .cap = b->cap};
    cvc_http_result res = {0};
    cv_error err = {.msg = ""};
    uint64_t t0 = cv_now_ns();
    if (cvc_http_post_sse(b->sse_url, body, 120000, on_event, &c, &res, &err) < 0 ||
        res.status != 200) {
        fprintf(stderr, "http: %s (status %ld) %s\n", err.msg, res.status,
                res.body ? res.body : "");
        exit(1);
    }
    cvc_http_result_free(&res);
    if (m) record(m, t0, c.arr, c.n);
}

static void grpc_one(paths *b, const char *p, int r, mode_stats *m)
{
    char id[32];
    snprintf(id, sizeof id, "%d", r);
    cvc_request req;
    cvc_request_init(&req);
    req.model_name = "bench";
    req.id = id;
    req.text_input = p;
    req.text_input_len = strlen(p);
    req.stream = 1;
    req.sampling_parameters = sampling_raw;
    cv_error err = {.msg = ""};
    uint64_t t0 = cv_now_ns();
    if (cvc_stream_send(b->stream, &req, &err) < 0) {
        fprintf(stderr, "grpc send: %s\n", err.msg);
        exit(1);
    }
    int n = 0;
    for (;;) {
        cvc_response resp;
        if (cvc_stream_recv(b->stream, 120000, &resp, &err) != CVC_RECV_RESPONSE) {
            fprintf(stderr, "grpc recv: %s\n", err.msg);
            exit(1);
        }
        if (resp.error_message) {
            fprintf(stderr, "grpc: %s\n", resp.error_message);
            exit(1);
        }
        if (n < b->cap) b->arr[n++] = resp.arrival_ns;
        bool fin = resp.final;
        cvc_response_free(&resp);
        if (fin) break;
    }
    if (m) record(m, t0, b->arr, n);
}

/* Round r runs one request on each path, so all three see the same machine
 * load (the CI machines are shared); two warm-up rounds are not recorded. */
static void run_rounds(paths *b, mode_stats *m)
{
    for (int r = -2; r < b->o->requests; r++) {
        const char *p = prompts[(r + 2) % N_PROMPTS];
        inprocess_one(b, p, r >= 0 ? &m[0] : NULL);
        http_one(b, p, r >= 0 ? &m[1] : NULL);
        grpc_one(b, p, r + 2, r >= 0 ? &m[2] : NULL);
    }
}

static void paths_open(paths *b, const opts *o, int http_port, int grpc_port)
{
    memset(b, 0, sizeof *b);
    b->o = o;
    cv_engine_args args;
    cv_engine_args_default(&args);
    snprintf(args.model, sizeof args.model, "%s", o->model);
    args.n_threads = o->threads;
    snprintf(args.device, sizeof args.device, "cpu"); /* measured on the CPU */
    cv_error err = {.msg = ""};
    if (!(b->engine = cv_engine_create(&args, &err))) {
        fprintf(stderr, "engine: %s\n", err.msg);
        exit(1);
    }
    b->q = cv_output_queue_create();
    cv_sampling_params_default(&b->sp);
    if (cv_sampling_params_from_json(&b->sp, sampling_raw, strlen(sampling_raw), &err) < 0) {
        fprintf(stderr, "sampling: %s\n", err.msg);
        exit(1);
    }
    snprintf(b->sse_url, sizeof b->sse_url, "http://127.0.0.1:%d/v2/models/bench/generate_stream",
             http_port);
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", grpc_port);
    if (!(b->stream = cvc_stream_open(target, 0, &err))) {
        fprintf(stderr, "grpc: %s\n", err.msg);
        exit(1);
    }
    b->cap = o->max_tokens + 8;
    b->arr = calloc((size_t)b->cap, sizeof *b->arr);
}

static void paths_close(paths *b)
{
    cv_error err;
    cvc_stream_close_send(b->stream, &err);
    cvc_stream_free(b->stream);
    cv_sampling_params_free(&b->sp);
    cv_engine_shutdown(b->engine, false);
    cv_output_queue_destroy(b->q);
    free(b->arr);
}

static char repo[64]; /* the temporary model repository, removed at the end */

static pid_t start_server(const char *server_bin, const opts *o, int http, int grpc, int metrics)
{
    snprintf(repo, sizeof repo, "/tmp/cvllm_bench_XXXXXX");
    if (!mkdtemp(repo)) exit(1);
    char path[512];
    snprintf(path, sizeof path, "%s/bench", repo);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/bench/1", repo);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/bench/config.pbtxt", repo);
    FILE *f = fopen(path, "w");
    fputs("backend: \"vllm\"\n", f);
    fclose(f);
    snprintf(path, sizeof path, "%s/bench/1/model.json", repo);
    f = fopen(path, "w");
    fprintf(f, "{\"model\": \"%s\"}\n", o->model);
    fclose(f);
    char a[5][300];
    snprintf(a[0], sizeof a[0], "--model-repository=%s", repo);
    snprintf(a[1], sizeof a[1], "--http-port=%d", http);
    snprintf(a[2], sizeof a[2], "--grpc-port=%d", grpc);
    snprintf(a[3], sizeof a[3], "--metrics-port=%d", metrics);
    snprintf(a[4], sizeof a[4], "--threads=%d", o->threads);
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 2);
        execl(server_bin, server_bin, a[0], a[1], a[2], a[3], a[4], (char *)NULL);
        _exit(127);
    }
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v2/health/ready", http);
    for (int i = 0; i < 400; i++) {
        cvc_http_result res = {0};
        cv_error err;
        if (cvc_http_get(url, 1000, &res, &err) == 0 && res.status == 200) {
            cvc_http_result_free(&res);
            return pid;
        }
        cvc_http_result_free(&res);
        usleep(50000);
    }
    fprintf(stderr, "server did not come up\n");
    exit(1);
}

int main(int argc, char **argv)
{
    const char *shared = getenv("CVLLM_SHARED");
    static char model[4096];
    snprintf(model, sizeof model, "%s/models/stories260K", shared ? shared : "../shared");
    opts o = {.model = model, .requests = 40, .max_tokens = 64, .threads = 1};
    const char *server_bin = "build/bin/cvllm-server";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            o.model = argv[i + 1];
        else if (!strcmp(argv[i], "--requests"))
            o.requests = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--max-tokens"))
            o.max_tokens = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            o.threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--server"))
            server_bin = argv[i + 1];
        else {
            fprintf(stderr,
                    "usage: %s [--model DIR] [--requests N] [--max-tokens N] "
                    "[--threads N] [--server BIN]\n",
                    argv[0]);
            return 2;
        }
    }
    snprintf(sampling_raw, sizeof sampling_raw,
             "{\"temperature\": 0, \"max_tokens\": %d, \"ignore_eos\": true}", o.max_tokens);
    snprintf(sampling_esc, sizeof sampling_esc,
             "{\\\"temperature\\\": 0, \\\"max_tokens\\\": %d, \\\"ignore_eos\\\": true}",
             o.max_tokens);

    mode_stats m[3] = {{.name = "in-process engine"},
                       {.name = "HTTP /generate_stream (SSE)"},
                       {.name = "gRPC ModelStreamInfer"}};
    cv_error err;
    if (cvc_http_global_init(&err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    int ports[3];
    if (cv_free_loopback_ports(ports, 3, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const int http = ports[0], grpc = ports[1], metrics = ports[2];
    pid_t pid = start_server(server_bin, &o, http, grpc, metrics);
    paths b;
    paths_open(&b, &o, http, grpc);
    run_rounds(&b, m);
    paths_close(&b);
    kill(pid, SIGTERM);
    int status;
    waitpid(pid, &status, 0);
    cvc_http_global_cleanup();
    char rm[128];
    snprintf(rm, sizeof rm, "rm -rf '%.63s'", repo);
    if (system(rm) != 0) fprintf(stderr, "could not remove %s\n", repo);

    printf("model: %s, %d requests per path (after 2 warm-up rounds, paths interleaved), "
           "concurrency 1, greedy, "
           "%d tokens each (ignore_eos), engine threads %d\n\n",
           o.model, o.requests, o.max_tokens, o.threads);
    printf("| path | TTFT mean ms | TTFT p50 | TTFT p99 | ITL mean ms | ITL p50 | ITL p99 | "
           "request p50 ms | added TTFT p50 ms | added ms/token (p50) |\n"
           "|---|---|---|---|---|---|---|---|---|---|\n");
    /* Added per token: the extra end-to-end time of a request spread over
     * its tokens; unlike ITL differences it is immune to deltas coalescing
     * on the socket. Medians: the shared machine's load spikes dominate means. */
    double base_ttft = pct(&m[0].ttft_ms, 50), base_e2e = pct(&m[0].e2e_ms, 50);
    for (int i = 0; i < 3; i++) {
        double t = pct(&m[i].ttft_ms, 50), e = pct(&m[i].e2e_ms, 50);
        double per_tok = (e - base_e2e) / o.max_tokens;
        printf("| %s | %.3f | %.3f | %.3f | %.4f | %.4f | %.4f | %.3f | %s%.3f | %s%.4f |\n",
               m[i].name, mean(&m[i].ttft_ms), t, pct(&m[i].ttft_ms, 99), mean(&m[i].itl_ms),
               pct(&m[i].itl_ms, 50), pct(&m[i].itl_ms, 99), e, t - base_ttft >= 0 ? "+" : "",
               t - base_ttft, per_tok >= 0 ? "+" : "", per_tok);
    }
    for (int i = 0; i < 3; i++) {
        free(m[i].ttft_ms.v);
        free(m[i].itl_ms.v);
        free(m[i].e2e_ms.v);
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

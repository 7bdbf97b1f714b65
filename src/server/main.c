/* cvllm-server: tritonserver's command line over cv_server_run. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "base/log.h"
#include "server/listen.h"
#include "server/server.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: cvllm-server --model-repository=DIR [options]\n"
            "  --model-repository=DIR    model repository root (repeatable)\n"
            "  --http-port=N             HTTP/REST port (8000)\n"
            "  --grpc-port=N             gRPC port (8001)\n"
            "  --metrics-port=N          Prometheus /metrics port (8002)\n"
            "  --allow-http=BOOL, --allow-grpc=BOOL, --allow-metrics=BOOL (true)\n"
            "  --model-control-mode=none|explicit|poll (none)\n"
            "  --load-model=NAME         model to load at start in explicit mode (repeatable; *)\n"
            "  --log-verbose=N           0 = info, >0 = verbose\n"
            "  --exit-on-error=BOOL      exit when a model fails to load at start (true)\n"
            "  --strict-readiness=BOOL   ready only when every model is (true)\n"
            "  --exit-timeout-secs=N     drain limit on SIGINT/SIGTERM (30)\n"
            "  --repository-poll-secs=N  poll mode: seconds between repository scans (15)\n"
            "  --backend-config=BACKEND,KEY=VALUE  accepted (cvllm has no stub processes)\n"
            "  --threads=N               engine threads per model (0 = all cores)\n"
            "  --chat-template=FILE      chat template over the models' own (model.json's wins)\n"
            "  --http-max-input-size=N   largest request body in bytes (67108864)\n"
            "  --http-max-header-size=N  largest request header block in bytes (16384)\n"
            "  --http-idle-timeout-secs=N  close a connection silent this long while a request\n"
            "                            (or the next keep-alive one) is due (60)\n"
            "  --http-max-connections=N, --grpc-max-connections=N  refuse connections beyond\n"
            "                            N open ones (4096 each; 0 = no cap)\n"
            "  --http-address=A, --grpc-address=A, --metrics-address=A  bind addresses\n"
            "                            (0.0.0.0; metrics: the HTTP address)\n"
            "  --log-file=PATH           append the log to PATH instead of stderr\n"
            "  --log-info=BOOL, --log-warning=BOOL, --log-error=BOOL  that level on/off\n"
            "  accepted and logged as not applicable to cvllm: --backend-directory=DIR,\n"
            "  --log-format=default|ISO8601, --model-load-thread-count=N,\n"
            "  --disable-auto-complete-config, --grpc-infer-allocation-pool-size=N,\n"
            "  --cuda-memory-pool-byte-size=GPU:BYTES, --pinned-memory-pool-byte-size=N\n");
}

/* tritonserver flags that configure nothing in cvllm: their values are
 * checked as tritonserver checks them, then each is logged as not
 * applied, so deployment scripts written for tritonserver run unchanged. */
typedef enum { V_STR, V_INT, V_GPU_BYTES, V_LOG_FORMAT } value_kind;
static const struct {
    const char *flag;
    value_kind kind;
    const char *why;
} inert_flags[] = {
    {"--backend-directory", V_STR, "the vllm backend is built into cvllm-server"},
    {"--log-format", V_LOG_FORMAT, "cvllm's log lines have one format"},
    {"--model-load-thread-count", V_INT, "cvllm loads models one at a time"},
    {"--grpc-infer-allocation-pool-size", V_INT,
     "cvllm allocates each stream's request state as it comes"},
    {"--cuda-memory-pool-byte-size", V_GPU_BYTES,
     "cvllm sizes GPU memory from model.json's gpu_memory_utilization"},
    {"--pinned-memory-pool-byte-size", V_INT, "cvllm does not stage tensors in pinned memory"},
};

static int check_inert(int i, const char *v)
{
    const char *flag = inert_flags[i].flag;
    char *end;
    errno = 0;
    switch (inert_flags[i].kind) {
    case V_STR:
        return 0;
    case V_INT:
        strtoll(v, &end, 10);
        if (errno || *end || end == v) break;
        return 0;
    case V_GPU_BYTES:
        strtol(v, &end, 10);
        if (errno || end == v || *end != ':') break;
        v = end + 1;
        strtoull(v, &end, 10);
        if (errno || *end || end == v) break;
        return 0;
    case V_LOG_FORMAT:
        if (!strcmp(v, "default") || !strcmp(v, "ISO8601")) return 0;
        fprintf(stderr,
                "cvllm-server: invalid argument for --log-format: '%s' "
                "(default, ISO8601)\n",
                v);
        return -1;
    }
    fprintf(stderr, "cvllm-server: %s: invalid value '%s'\n", flag, v);
    return -1;
}

static int parse_bool(const char *flag, const char *v, bool *out)
{
    if (!strcasecmp(v, "true") || !strcmp(v, "1") || !strcasecmp(v, "on")) {
        *out = true;
        return 0;
    }
    if (!strcasecmp(v, "false") || !strcmp(v, "0") || !strcasecmp(v, "off")) {
        *out = false;
        return 0;
    }
    fprintf(stderr, "cvllm-server: %s: invalid boolean '%s'\n", flag, v);
    return -1;
}

static int parse_int(const char *flag, const char *v, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || *end || end == v || n < lo || n > hi) {
        fprintf(stderr, "cvllm-server: %s: invalid value '%s' (expected %d..%d)\n", flag, v, lo,
                hi);
        return -1;
    }
    *out = (int)n;
    return 0;
}

/* Logged once the log goes where --log-file says. */
enum { MAX_NOTES = 16 };
static const char *notes[MAX_NOTES][2]; /* flag, why */
static int n_notes;

static void note_inert(const char *flag, const char *why)
{
    if (n_notes < MAX_NOTES) {
        notes[n_notes][0] = flag;
        notes[n_notes++][1] = why;
    }
}

int main(int argc, char **argv)
{
    cv_server_options o;
    cv_server_options_default(&o);
    int verbose = 0;
    bool log_on[3] = {true, true, true}; /* error, warning, info */
    const char *log_file = NULL;
    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (strncmp(a, "--", 2)) {
            fprintf(stderr, "cvllm-server: unexpected argument '%s'\n", a);
            return 2;
        }
        if (!strcmp(a, "--disable-auto-complete-config")) {
            /* tritonserver's only flag without a value */
            note_inert(a, "cvllm completes the vllm model's configuration as the backend does");
            continue;
        }
        char *flag = a, *val = strchr(a, '=');
        if (val) {
            *val++ = '\0';
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            fprintf(stderr, "cvllm-server: %s needs a value\n", flag);
            return 2;
        }
        int rc = 0;
        if (!strcmp(flag, "--model-repository") || !strcmp(flag, "--model-store")) {
            if (o.n_repos == CV_SERVER_MAX_LIST)
                rc = -1;
            else
                o.repos[o.n_repos++] = val;
        } else if (!strcmp(flag, "--load-model")) {
            if (o.n_load_models == CV_SERVER_MAX_LIST)
                rc = -1;
            else
                o.load_models[o.n_load_models++] = val;
        } else if (!strcmp(flag, "--http-port")) {
            rc = parse_int(flag, val, 0, 65535, &o.http_port);
        } else if (!strcmp(flag, "--grpc-port")) {
            rc = parse_int(flag, val, 0, 65535, &o.grpc_port);
        } else if (!strcmp(flag, "--metrics-port")) {
            rc = parse_int(flag, val, 0, 65535, &o.metrics_port);
        } else if (!strcmp(flag, "--allow-http")) {
            rc = parse_bool(flag, val, &o.allow_http);
        } else if (!strcmp(flag, "--allow-grpc")) {
            rc = parse_bool(flag, val, &o.allow_grpc);
        } else if (!strcmp(flag, "--allow-metrics")) {
            rc = parse_bool(flag, val, &o.allow_metrics);
        } else if (!strcmp(flag, "--exit-on-error")) {
            rc = parse_bool(flag, val, &o.exit_on_error);
        } else if (!strcmp(flag, "--strict-readiness")) {
            rc = parse_bool(flag, val, &o.strict_readiness);
        } else if (!strcmp(flag, "--exit-timeout-secs")) {
            rc = parse_int(flag, val, 0, 86400, &o.exit_timeout_s);
        } else if (!strcmp(flag, "--repository-poll-secs")) {
            rc = parse_int(flag, val, 1, 86400, &o.repository_poll_s);
        } else if (!strcmp(flag, "--http-max-input-size")) {
            long long v;
            char *end;
            errno = 0;
            v = strtoll(val, &end, 10);
            if (errno || *end || end == val || v <= 0) {
                fprintf(stderr,
                        "cvllm-server: --http-max-input-size: expected a positive byte count, "
                        "got '%s'\n",
                        val);
                rc = -1;
            } else {
                o.http_max_input_bytes = (long)v;
            }
        } else if (!strcmp(flag, "--http-max-header-size")) {
            rc = parse_int(flag, val, 1024, 1 << 30, &o.http_max_header_bytes);
        } else if (!strcmp(flag, "--http-idle-timeout-secs")) {
            rc = parse_int(flag, val, 1, 86400, &o.http_idle_timeout_s);
        } else if (!strcmp(flag, "--http-max-connections")) {
            rc = parse_int(flag, val, 0, 1 << 24, &o.http_max_connections);
        } else if (!strcmp(flag, "--grpc-max-connections")) {
            rc = parse_int(flag, val, 0, 1 << 24, &o.grpc_max_connections);
        } else if (!strcmp(flag, "--threads")) {
            rc = parse_int(flag, val, 0, 4096, &o.n_threads);
        } else if (!strcmp(flag, "--chat-template")) {
            o.chat_template = val;
        } else if (!strcmp(flag, "--log-verbose")) {
            rc = parse_int(flag, val, 0, 1000, &verbose);
        } else if (!strcmp(flag, "--model-control-mode")) {
            if (!strcmp(val, "none"))
                o.control_mode = CV_CONTROL_NONE;
            else if (!strcmp(val, "explicit"))
                o.control_mode = CV_CONTROL_EXPLICIT;
            else if (!strcmp(val, "poll"))
                o.control_mode = CV_CONTROL_POLL;
            else {
                fprintf(stderr,
                        "cvllm-server: --model-control-mode: unknown mode '%s' "
                        "(none, explicit, poll)\n",
                        val);
                rc = -1;
            }
        } else if (!strcmp(flag, "--http-address")) {
            o.http_address = val;
        } else if (!strcmp(flag, "--grpc-address")) {
            o.grpc_address = val;
        } else if (!strcmp(flag, "--metrics-address")) {
            o.metrics_address = val;
        } else if (!strcmp(flag, "--log-file")) {
            log_file = val;
        } else if (!strcmp(flag, "--log-error")) {
            rc = parse_bool(flag, val, &log_on[CV_LOG_ERROR]);
        } else if (!strcmp(flag, "--log-warning")) {
            rc = parse_bool(flag, val, &log_on[CV_LOG_WARN]);
        } else if (!strcmp(flag, "--log-info")) {
            rc = parse_bool(flag, val, &log_on[CV_LOG_INFO]);
        } else if (!strcmp(flag, "--backend-config")) {
            /* BACKEND,KEY=VALUE: checked for shape only. Python-backend
             * settings such as shm-region-prefix-name have nothing to
             * configure here (no stub processes, no shared memory). */
            if (!strchr(val, ',') || !strchr(strchr(val, ','), '=')) {
                fprintf(stderr,
                        "cvllm-server: --backend-config: expected BACKEND,KEY=VALUE, "
                        "got '%s'\n",
                        val);
                rc = -1;
            }
        } else {
            int k = -1;
            for (int j = 0; j < (int)(sizeof inert_flags / sizeof *inert_flags); j++)
                if (!strcmp(flag, inert_flags[j].flag)) k = j;
            if (k < 0) {
                fprintf(stderr, "cvllm-server: unknown option '%s'\n", flag);
                usage(stderr);
                return 2;
            }
            rc = check_inert(k, val);
            if (rc == 0) note_inert(inert_flags[k].flag, inert_flags[k].why);
        }
        if (rc < 0) return 2;
    }
    if (o.n_repos == 0) {
        fprintf(stderr, "cvllm-server: --model-repository must be specified\n");
        return 2;
    }
    if (o.control_mode != CV_CONTROL_EXPLICIT && o.n_load_models > 0) {
        fprintf(stderr, "cvllm-server: --load-model is allowed only with "
                        "--model-control-mode=explicit\n");
        return 2;
    }
    /* tritonserver appends to --log-file; everything cvllm logs goes to
     * stderr, so stderr becomes the file. */
    if (log_file) {
        FILE *f = fopen(log_file, "a");
        if (!f) {
            fprintf(stderr, "cvllm-server: --log-file: cannot open '%s': %s\n", log_file,
                    strerror(errno));
            return 2;
        }
        dup2(fileno(f), STDERR_FILENO);
        fclose(f);
    }
    cv_log_set_level(verbose > 0 ? CV_LOG_VERBOSE : CV_LOG_INFO);
    for (int l = CV_LOG_ERROR; l <= CV_LOG_INFO; l++)
        cv_log_enable((cv_log_level)l, log_on[l]);
    for (int i = 0; i < n_notes; i++)
        cv_log_info("%s: accepted, not applicable: %s", notes[i][0], notes[i][1]);
    /* Every connection holds a descriptor: serve with the most the system
     * grants this process. */
    long fd_limit = cv_listen_raise_fd_limit();
    if (fd_limit > 0) cv_log_verbose("file descriptor limit: %ld", fd_limit);
    cv_error err = {.msg = ""};
    if (cv_server_run(&o, &err) < 0) {
        fprintf(stderr, "error: creating server: %s\n", err.msg);
        return 1;
    }
    return 0;
}

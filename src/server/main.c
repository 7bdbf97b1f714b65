/* cvllm-server: tritonserver's command line over cv_server_run. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/log.h"
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
            "  --chat-template=FILE      chat template over the models' own (model.json's wins)\n");
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

int main(int argc, char **argv)
{
    cv_server_options o;
    cv_server_options_default(&o);
    int verbose = 0;
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
            fprintf(stderr, "cvllm-server: unknown option '%s'\n", flag);
            usage(stderr);
            return 2;
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
    cv_log_set_level(verbose > 0 ? CV_LOG_VERBOSE : CV_LOG_INFO);
    cv_error err = {.msg = ""};
    if (cv_server_run(&o, &err) < 0) {
        fprintf(stderr, "error: creating server: %s\n", err.msg);
        return 1;
    }
    return 0;
}

/* cvllm-bench's command line: vLLM's `bench serve` flag names where they
 * exist, argparse-style messages for bad arguments. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

void bench_usage(void *file)
{
    fputs("usage: cvllm-bench [--backend triton-grpc|triton-http|openai|inprocess] [--host HOST]\n"
          "                   [--port PORT] [--base-url URL] [--model NAME] [--tokenizer DIR]\n"
          "                   [--model-repository DIR] [--threads N]\n"
          "                   [--dataset-name random|sharegpt|prompts] [--dataset-path PATH]\n"
          "                   [--random-input-len N] [--random-output-len N] [--random-range-ratio "
          "R]\n"
          "                   [--sharegpt-output-len N] [--prompts-output-len N]\n"
          "                   [--num-prompts N] [--num-warmups N] [--request-rate RATE|inf]\n"
          "                   [--burstiness B] [--max-concurrency N] [--ignore-eos] [--seed S]\n"
          "                   [--goodput NAME:MS ...] [--result-file FILE] [--timeout S]\n"
          "                   [--disable-progress]\n"
          "\n"
          "Streams requests to a Triton gRPC (ModelStreamInfer), Triton HTTP (generate_stream) or\n"
          "OpenAI (/v1/completions) endpoint and reports throughput, TTFT, TPOT, ITL and\n"
          "end-to-end latency (mean, median, p90, p99). --goodput takes ttft, tpot, e2el SLOs in "
          "ms.\n"
          "--timeout bounds each HTTP request, and the whole stream for triton-grpc (all requests\n"
          "share one ModelStreamInfer stream). Warm-up requests (drawn after the measured ones)\n"
          "are excluded from the results; their tokens are reported separately in the JSON.\n"
          "--backend inprocess loads --model from --model-repository as cvllm-server does (its\n"
          "config.pbtxt and model.json; --threads as the server's) and submits to that engine in\n"
          "this process, timing each streamed output as it arrives: the same run without the\n"
          "server, to measure what the server adds. --tokenizer defaults to the model's there;\n"
          "--timeout does not apply.\n",
          (FILE *)file);
}

enum {
    OPT_BACKEND = 256,
    OPT_HOST,
    OPT_PORT,
    OPT_URL,
    OPT_MODEL,
    OPT_TOKENIZER,
    OPT_DATASET,
    OPT_PATH,
    OPT_RIN,
    OPT_ROUT,
    OPT_RATIO,
    OPT_SGOUT,
    OPT_POUT,
    OPT_NUM,
    OPT_WARM,
    OPT_RATE,
    OPT_BURST,
    OPT_CONC,
    OPT_EOS,
    OPT_SEED,
    OPT_GOODPUT,
    OPT_RESULT,
    OPT_TIMEOUT,
    OPT_NOPROG,
    OPT_REPO,
    OPT_THREADS,
};

static const struct option longs[] = {
    {"help", no_argument, NULL, 'h'},
    {"backend", required_argument, NULL, OPT_BACKEND},
    {"host", required_argument, NULL, OPT_HOST},
    {"port", required_argument, NULL, OPT_PORT},
    {"base-url", required_argument, NULL, OPT_URL},
    {"model", required_argument, NULL, OPT_MODEL},
    {"tokenizer", required_argument, NULL, OPT_TOKENIZER},
    {"dataset-name", required_argument, NULL, OPT_DATASET},
    {"dataset-path", required_argument, NULL, OPT_PATH},
    {"random-input-len", required_argument, NULL, OPT_RIN},
    {"random-output-len", required_argument, NULL, OPT_ROUT},
    {"random-range-ratio", required_argument, NULL, OPT_RATIO},
    {"sharegpt-output-len", required_argument, NULL, OPT_SGOUT},
    {"prompts-output-len", required_argument, NULL, OPT_POUT},
    {"num-prompts", required_argument, NULL, OPT_NUM},
    {"num-warmups", required_argument, NULL, OPT_WARM},
    {"request-rate", required_argument, NULL, OPT_RATE},
    {"burstiness", required_argument, NULL, OPT_BURST},
    {"max-concurrency", required_argument, NULL, OPT_CONC},
    {"ignore-eos", no_argument, NULL, OPT_EOS},
    {"seed", required_argument, NULL, OPT_SEED},
    {"goodput", required_argument, NULL, OPT_GOODPUT},
    {"result-file", required_argument, NULL, OPT_RESULT},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"disable-progress", no_argument, NULL, OPT_NOPROG},
    {"disable-tqdm", no_argument, NULL, OPT_NOPROG},
    {"model-repository", required_argument, NULL, OPT_REPO},
    {"threads", required_argument, NULL, OPT_THREADS},
    {NULL, 0, NULL, 0},
};

static const char *opt_name(int c)
{
    for (const struct option *o = longs; o->name; o++)
        if (o->val == c) return o->name;
    return "?";
}

static int parse_int(int c, const char *s, long lo, long *v, cv_error *err)
{
    char *end;
    *v = strtol(s, &end, 10);
    if (!*s || *end)
        return cv_errorf(err, "argument --%s: invalid int value: '%s'", opt_name(c), s);
    if (*v < lo)
        return cv_errorf(err, "argument --%s: must be at least %ld, got %s", opt_name(c), lo, s);
    return 0;
}

static int parse_float(int c, const char *s, double *v, cv_error *err)
{
    char *end;
    *v = strtod(s, &end);
    if (!*s || *end || isnan(*v))
        return cv_errorf(err, "argument --%s: invalid float value: '%s'", opt_name(c), s);
    return 0;
}

static int parse_choice(int c, const char *s, const char *const *choices, int n, int *v,
                        cv_error *err)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(s, choices[i])) {
            *v = i;
            return 0;
        }
    char list[256] = "";
    for (int i = 0; i < n; i++) {
        size_t used = strlen(list);
        snprintf(list + used, sizeof list - used, "%s'%s'", i ? ", " : "", choices[i]);
    }
    return cv_errorf(err, "argument --%s: invalid choice: '%s' (choose from %s)", opt_name(c), s,
                     list);
}

static int parse_one(int c, const char *v, bench_args *a, cv_error *err)
{
    static const char *const backends[] = {"triton-grpc", "triton-http", "openai", "inprocess"};
    static const char *const datasets[] = {"random", "sharegpt", "prompts"};
    long l;
    int choice;
    switch (c) {
    case OPT_BACKEND:
        if (parse_choice(c, v, backends, 4, &choice, err)) return -1;
        a->backend = (bench_backend)choice;
        return 0;
    case OPT_HOST:
        a->host = v;
        return 0;
    case OPT_PORT:
        if (parse_int(c, v, 1, &l, err)) return -1;
        if (l > 65535) return cv_errorf(err, "argument --port: %s is not a TCP port", v);
        a->port = (int)l;
        return 0;
    case OPT_URL:
        a->url = v;
        return 0;
    case OPT_MODEL:
        a->model = v;
        return 0;
    case OPT_TOKENIZER:
        a->tokenizer = v;
        return 0;
    case OPT_DATASET:
        if (parse_choice(c, v, datasets, 3, &choice, err)) return -1;
        a->dataset = (bench_data_kind)choice;
        return 0;
    case OPT_PATH:
        a->dataset_path = v;
        return 0;
    case OPT_RIN:
        return parse_int(c, v, 1, &l, err) ? -1 : (a->random_input_len = (int)l, 0);
    case OPT_ROUT:
        return parse_int(c, v, 1, &l, err) ? -1 : (a->random_output_len = (int)l, 0);
    case OPT_RATIO:
        if (parse_float(c, v, &a->random_range_ratio, err)) return -1;
        if (a->random_range_ratio < 0 || a->random_range_ratio >= 1)
            return cv_errorf(err, "argument --random-range-ratio: must be in [0, 1), got %s", v);
        return 0;
    case OPT_SGOUT:
        return parse_int(c, v, 1, &l, err) ? -1 : (a->sharegpt_output_len = (int)l, 0);
    case OPT_POUT:
        return parse_int(c, v, 1, &l, err) ? -1 : (a->prompts_output_len = (int)l, 0);
    case OPT_NUM:
        return parse_int(c, v, 1, &l, err) ? -1 : (a->num_prompts = (size_t)l, 0);
    case OPT_WARM:
        return parse_int(c, v, 0, &l, err) ? -1 : (a->num_warmups = (size_t)l, 0);
    case OPT_RATE:
        if (parse_float(c, v, &a->request_rate, err)) return -1;
        if (!(a->request_rate > 0))
            return cv_errorf(err, "argument --request-rate: must be positive or inf, got %s", v);
        return 0;
    case OPT_BURST:
        if (parse_float(c, v, &a->burstiness, err)) return -1;
        if (!(a->burstiness > 0) || isinf(a->burstiness))
            return cv_errorf(err, "argument --burstiness: must be a positive number, got %s", v);
        return 0;
    case OPT_CONC:
        return parse_int(c, v, 1, &l, err) ? -1 : (a->max_concurrency = (size_t)l, 0);
    case OPT_EOS:
        a->ignore_eos = true;
        return 0;
    case OPT_SEED:
        return parse_int(c, v, 0, &l, err) ? -1 : (a->seed = (uint64_t)l, 0);
    case OPT_GOODPUT:
        a->has_slo = true;
        return bench_parse_goodput(v, &a->slo, err);
    case OPT_RESULT:
        a->result_file = v;
        return 0;
    case OPT_TIMEOUT:
        if (parse_float(c, v, &a->timeout_s, err)) return -1;
        if (a->timeout_s < 0)
            return cv_errorf(err, "argument --timeout: must not be negative, got %s", v);
        return 0;
    case OPT_NOPROG:
        a->progress = false;
        return 0;
    case OPT_REPO:
        a->model_repository = v;
        return 0;
    case OPT_THREADS:
        if (parse_int(c, v, 0, &l, err)) return -1;
        if (l > 4096) return cv_errorf(err, "argument --threads: at most 4096, got %s", v);
        a->threads = (int)l;
        return 0;
    }
    return cv_errorf(err, "internal: unhandled option %d", c);
}

/* Checks that need several flags together. */
static int check(bench_args *a, cv_error *err)
{
    static const char *const names[] = {"random", "sharegpt", "prompts"};
    if (a->dataset != BENCH_DATA_RANDOM && !a->dataset_path)
        return cv_errorf(err, "--dataset-name %s needs --dataset-path", names[a->dataset]);
    bool inproc = a->backend == BENCH_INPROCESS;
    if (inproc && !a->model_repository)
        return cv_errorf(err, "--backend inprocess needs --model-repository (the directory "
                              "cvllm-server would serve --model from)");
    if (!inproc && (a->model_repository || a->threads >= 0))
        return cv_errorf(err, "--%s is for --backend inprocess only",
                         a->model_repository ? "model-repository" : "threads");
    if (a->dataset != BENCH_DATA_PROMPTS && !a->tokenizer && !inproc)
        return cv_errorf(err,
                         "--dataset-name %s needs --tokenizer (the model's tokenizer directory)",
                         names[a->dataset]);
    if (a->backend == BENCH_OPENAI && a->url && strncmp(a->url, "http", 4))
        return cv_errorf(err, "--base-url '%s' must start with http:// for --backend openai",
                         a->url);
    return 0;
}

int bench_parse_args(int argc, char **argv, bench_args *a, cv_error *err)
{
    *a = (bench_args){
        .backend = BENCH_TRITON_GRPC,
        .host = "localhost",
        .model = "vllm_model",
        .dataset = BENCH_DATA_RANDOM,
        .random_input_len = 1024,
        .random_output_len = 128,
        .prompts_output_len = 128,
        .num_prompts = 1000,
        .request_rate = INFINITY,
        .burstiness = 1.0,
        .progress = true,
        .threads = -1,
        .slo = {.ttft_ms = -1, .tpot_ms = -1, .e2el_ms = -1},
    };
    optind = 0; /* 0 makes glibc's getopt forget any earlier parse */
    opterr = 0;
    int c;
    /* The leading '-' returns positionals in order, so `--goodput ttft:500
     * tpot:50` (vLLM's nargs="+") keeps working. */
    int last = 0;
    while ((c = getopt_long(argc, argv, "-:h", longs, NULL)) != -1) {
        if (c == 'h') {
            bench_usage(stdout);
            return 1;
        }
        if (c == ':') return cv_errorf(err, "argument %s: expected one argument", argv[optind - 1]);
        if (c == '?') return cv_errorf(err, "unrecognized arguments: %s", argv[optind - 1]);
        if (c == 1) {
            if (last != OPT_GOODPUT) return cv_errorf(err, "unrecognized arguments: %s", optarg);
            if (bench_parse_goodput(optarg, &a->slo, err)) return -1;
            continue;
        }
        last = c;
        if (parse_one(c, optarg, a, err)) return -1;
    }
    return check(a, err);
}

/* cvllm-bench internals: the pieces of a serving benchmark in the manner of
 * `vllm bench serve`, split so tests can reach each one.
 *
 *  - bench_rng / arrivals: seeded splitmix64, request arrival times for a
 *    rate (Poisson, or gamma with a burstiness factor).
 *  - datasets: random token prompts of exact length, ShareGPT JSON, a
 *    prompts file.
 *  - stats: percentiles (numpy's linear interpolation), per-request TTFT,
 *    TPOT, ITL, end-to-end latency, goodput.
 *  - args: the command line, with argparse-like error messages.
 *  - runner: sends the requests to a Triton gRPC / Triton HTTP / OpenAI
 *    endpoint, or to cv_engine in this process (the engine cvllm-server
 *    would load for the model, to measure what the server adds), and
 *    records every response's arrival time.
 *  - report: the printed table and the JSON result file. */
#ifndef CV_BENCH_BENCH_H
#define CV_BENCH_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "tokenizer/tokenizer.h"

/* ---- random numbers and arrivals ---------------------------------------- */

typedef struct bench_rng {
    uint64_t state;
} bench_rng;

void bench_rng_seed(bench_rng *r, uint64_t seed);
uint64_t bench_rng_next(bench_rng *r);                       /* splitmix64 */
double bench_rng_uniform(bench_rng *r);                      /* [0, 1), 53 bits */
int64_t bench_rng_int(bench_rng *r, int64_t lo, int64_t hi); /* [lo, hi] */
double bench_rng_exponential(bench_rng *r, double rate);     /* mean 1/rate */
double bench_rng_gamma(bench_rng *r, double shape, double scale);

/* Arrival offsets in seconds (arrival_s[n]) for n requests at rate
 * requests/s: request 0 at 0, then intervals drawn from a gamma
 * distribution of shape `burstiness` and mean 1/rate (burstiness 1 is a
 * Poisson process; smaller is burstier). rate <= 0 or infinite: all 0. */
int bench_arrivals(double rate, double burstiness, uint64_t seed, size_t n, double *arrival_s,
                   cv_error *err);

/* ---- datasets ----------------------------------------------------------- */

typedef struct bench_prompt {
    char *text;     /* UTF-8, malloc'ed */
    int prompt_len; /* tokens as the server counts them; -1 unknown */
    int output_len; /* max_tokens asked for */
} bench_prompt;

typedef struct bench_dataset {
    bench_prompt *items;
    size_t n;
} bench_dataset;

void bench_dataset_free(bench_dataset *d);

/* n prompts whose lengths are drawn uniformly from
 * [input_len*(1-range_ratio), input_len*(1+range_ratio)] (same for output),
 * each built from random vocabulary tokens and adjusted until the tokenizer
 * encodes it (with special tokens, as the server does) to exactly its
 * length. */
int bench_dataset_random(const cv_tokenizer *tok, size_t n, int input_len, int output_len,
                         double range_ratio, uint64_t seed, bench_dataset *out, cv_error *err);

/* ShareGPT JSON (a list of {"conversations": [{"value": prompt}, {"value":
 * completion}, ...]}): shuffled with seed, conversations of fewer than two
 * turns skipped, as vLLM: output_len = tokens of the completion unless
 * fixed_output_len > 0; pairs with prompt or output under 4 tokens, prompt
 * over 1024 or prompt+output over 2048 filtered out. */
int bench_dataset_sharegpt(const char *path, const cv_tokenizer *tok, size_t n,
                           int fixed_output_len, uint64_t seed, bench_dataset *out, cv_error *err);

/* One prompt per non-empty line (line end removed), repeated in order until
 * n; prompt_len from tok when given, else -1. */
int bench_dataset_prompts(const char *path, const cv_tokenizer *tok, size_t n, int output_len,
                          bench_dataset *out, cv_error *err);

/* ---- statistics ---------------------------------------------------------- */

/* p in [0, 100] of v[n] (sorted in place), numpy's default linear
 * interpolation; 0 when n == 0. */
double bench_percentile(double *v, size_t n, double p);

typedef struct bench_summary {
    double mean, median, std, p90, p99;
} bench_summary;

/* Summary of v[n] (sorted in place); all zero when n == 0. std is the
 * population standard deviation, as numpy's. */
bench_summary bench_summarize(double *v, size_t n);

/* What the runner records about one request. Times are cv_now_ns. */
typedef struct bench_record {
    char id[32];
    int prompt_len;          /* dataset's count; -1 unknown */
    int expected_output_len; /* max_tokens */
    uint64_t start_ns, end_ns;
    uint64_t *chunk_ns; /* arrival of each response that carried tokens */
    size_t n_chunks, chunk_cap;
    char *text; /* generated text, concatenated */
    size_t text_len;
    int64_t input_tokens;       /* server's num_input_tokens, else prompt_len */
    int64_t output_tokens;      /* server's count, else re-tokenized text */
    bool server_counted_output; /* output_tokens came from the server */
    bool success;
    char *error; /* NULL when success */
} bench_record;

void bench_record_free(bench_record *r);

typedef struct bench_slo {
    double ttft_ms, tpot_ms, e2el_ms; /* < 0: not set */
} bench_slo;

typedef struct bench_metrics {
    size_t completed, failed;
    int64_t total_input, total_output;
    double duration_s;
    double request_throughput, output_throughput, total_token_throughput;
    size_t good_requests;
    double request_goodput; /* < 0 when no SLO was given */
    bench_summary ttft_ms, tpot_ms, itl_ms, e2el_ms;
} bench_metrics;

/* Per request: ttft (first chunk - start; end - start when no token
 * came), tpot ((e2el - ttft) /
 * (output_tokens - 1), only when output_tokens > 1), itl (differences of
 * successive chunk times), e2el (end - start); all in ms. */
double bench_record_ttft_ms(const bench_record *r);
double bench_record_tpot_ms(const bench_record *r); /* < 0 when undefined */
double bench_record_e2el_ms(const bench_record *r);

int bench_compute_metrics(const bench_record *recs, size_t n, double duration_s,
                          const bench_slo *slo, bench_metrics *m, cv_error *err);

/* Parses goodput SLOs "ttft:MS", "tpot:MS", "e2el:MS" (several may share
 * one argument, separated by spaces or commas) into slo. */
int bench_parse_goodput(const char *arg, bench_slo *slo, cv_error *err);

/* ---- command line -------------------------------------------------------- */

typedef enum { BENCH_TRITON_GRPC, BENCH_TRITON_HTTP, BENCH_OPENAI, BENCH_INPROCESS } bench_backend;
typedef enum { BENCH_DATA_RANDOM, BENCH_DATA_SHAREGPT, BENCH_DATA_PROMPTS } bench_data_kind;

typedef struct bench_args {
    bench_backend backend;
    const char *host;
    int port;        /* 0: the backend's default (8001 gRPC, 8000 HTTP) */
    const char *url; /* overrides host/port: "host:port" or "http://..." */
    const char *model;
    const char *tokenizer;        /* inprocess: NULL = the engine's */
    const char *model_repository; /* inprocess only: where --model is loaded from */
    int threads; /* inprocess only: engine threads as the server's --threads (-1: not given,
                    the server's default 0 = all cores) */
    bench_data_kind dataset;
    const char *dataset_path;
    int random_input_len, random_output_len;
    double random_range_ratio;
    int sharegpt_output_len; /* 0: from the completion */
    int prompts_output_len;
    size_t num_prompts, num_warmups;
    double request_rate; /* INFINITY: all at once */
    double burstiness;
    size_t max_concurrency; /* 0: unlimited */
    bool ignore_eos;
    uint64_t seed;
    bench_slo slo;
    bool has_slo;
    const char *result_file;
    double timeout_s; /* per request; 0: none */
    bool progress;    /* --disable-progress clears it */
} bench_args;

/* Fills a with defaults, then parses argv. Returns 0, 1 for --help (usage
 * written to stdout), or -1 with err naming the bad argument. */
int bench_parse_args(int argc, char **argv, bench_args *a, cv_error *err);
void bench_usage(void *file);

/* ---- runner and report --------------------------------------------------- */

/* --backend inprocess: what the engine did in the measured phase alone
 * (its counters at the end less those when the warm-ups had finished). */
typedef struct bench_engine_phase {
    uint64_t steps, steps_ahead, tokens;
    double forward_s; /* the runner's forwards (cv_engine_stats.forward_s_total) */
    double device_s;  /* of it, the GPU's own span (0 on the CPU) */
} bench_engine_phase;

typedef struct bench_run {
    bench_record *recs; /* one per measured request */
    size_t n;
    double duration_s; /* first send to last completion */
    int64_t warmup_input_tokens, warmup_output_tokens;
    size_t warmup_completed;
    bool has_engine; /* --backend inprocess: engine below is set */
    bench_engine_phase engine;
} bench_run;

/* --backend inprocess: model a->model of a->model_repository loaded as
 * cvllm-server loads it (src/server/repository.c: config.pbtxt, the
 * version policy, model.json's engine arguments, a->threads engine
 * threads), so the two backends run the same engine. */
struct cv_engine; /* include/cvllm/engine.h */
typedef struct bench_engine bench_engine;
bench_engine *bench_engine_open(const bench_args *a, cv_error *err);
/* The loaded engine, owned by e and valid until bench_engine_close. */
struct cv_engine *bench_engine_get(bench_engine *e);
void bench_engine_close(bench_engine *e); /* aborts what is in flight, frees */
/* The engine's counters now, for a phase's start and end (bench_runner.c). */
void bench_engine_counters(struct cv_engine *engine, bench_engine_phase *c);
/* The engine's side of the measured phase on stdout, after the report:
 * steps, how many were scheduled ahead (async_scheduling), tokens, wall and
 * device time per step, and of a step's wall time what the GPU spent on it
 * (what tells a batching change from a kernel change, and either from the
 * host's time between steps). */
void bench_engine_report(const bench_run *run);

/* Runs the warm-up requests (dataset items 0..num_warmups-1, excluded from
 * results), then the measured ones on the arrival schedule. engine: the
 * target of --backend inprocess (NULL for the others). Output tokens
 * the server does not count are re-tokenized with tok (may be NULL, then
 * such a request counts 0). */
int bench_run_requests(const bench_args *a, struct cv_engine *engine, const bench_dataset *warmup,
                       const bench_dataset *d, const cv_tokenizer *tok, bench_run *run,
                       cv_error *err);
void bench_run_free(bench_run *run);

void bench_print_report(const bench_args *a, const bench_metrics *m);
int bench_write_json(const char *path, const bench_args *a, const bench_run *run,
                     const bench_metrics *m, cv_error *err);

#endif

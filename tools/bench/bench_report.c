/* The benchmark's outputs: a table on stdout in the layout of `vllm bench
 * serve`, and a JSON file with the aggregate figures and every request. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "bench.h"

static const char *backend_name(bench_backend b)
{
    return b == BENCH_TRITON_GRPC   ? "triton-grpc"
           : b == BENCH_TRITON_HTTP ? "triton-http"
           : b == BENCH_OPENAI      ? "openai"
                                    : "inprocess";
}

static void section(const char *title, const char *abbrev, const bench_summary *s)
{
    /* The title centred in 50 columns of '-', like Python's "{:-^50}". */
    int pad = 50 - (int)strlen(title), left = pad > 0 ? pad / 2 : 0,
        right = pad > 0 ? pad - left : 0;
    static const char dashes[] = "--------------------------------------------------";
    printf("%.*s%s%.*s\n", left, dashes, title, right, dashes);
    const struct {
        const char *stat;
        double v;
    } rows[] = {{"Mean", s->mean}, {"Median", s->median}, {"P90", s->p90}, {"P99", s->p99}};
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        char label[64];
        snprintf(label, sizeof label, "%s %s (ms):", rows[i].stat, abbrev);
        printf("%-40s%-10.2f\n", label, rows[i].v);
    }
}

void bench_print_report(const bench_args *a, const bench_metrics *m)
{
    printf("============ Serving Benchmark Result ============\n");
    printf("%-40s%-10zu\n", "Successful requests:", m->completed);
    printf("%-40s%-10zu\n", "Failed requests:", m->failed);
    if (a->max_concurrency)
        printf("%-40s%-10zu\n", "Maximum request concurrency:", a->max_concurrency);
    printf("%-40s%-10.2f\n", "Benchmark duration (s):", m->duration_s);
    printf("%-40s%-10lld\n", "Total input tokens:", (long long)m->total_input);
    printf("%-40s%-10lld\n", "Total generated tokens:", (long long)m->total_output);
    printf("%-40s%-10.2f\n", "Request throughput (req/s):", m->request_throughput);
    if (m->request_goodput >= 0)
        printf("%-40s%-10.2f\n", "Request goodput (req/s):", m->request_goodput);
    printf("%-40s%-10.2f\n", "Output token throughput (tok/s):", m->output_throughput);
    printf("%-40s%-10.2f\n", "Total token throughput (tok/s):", m->total_token_throughput);
    section("Time to First Token", "TTFT", &m->ttft_ms);
    section("Time per Output Token (excl. 1st token)", "TPOT", &m->tpot_ms);
    section("Inter-token Latency", "ITL", &m->itl_ms);
    section("End-to-end Latency", "E2EL", &m->e2el_ms);
    printf("==================================================\n");
}

static int put_summary(json_t *o, const char *name, const bench_summary *s)
{
    char key[64];
    const struct {
        const char *stat;
        double v;
    } f[] = {{"mean", s->mean},
             {"median", s->median},
             {"std", s->std},
             {"p90", s->p90},
             {"p99", s->p99}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        snprintf(key, sizeof key, "%s_%s_ms", f[i].stat, name);
        if (json_object_set_new(o, key, json_real(f[i].v))) return -1;
    }
    return 0;
}

/* --backend inprocess: the engine's measured phase (bench_engine_report's
 * figures), "engine_gpu_span_ms_per_step" only where the backend times it. */
static int put_engine(json_t *o, const bench_run *run)
{
    const bench_engine_phase *p = &run->engine;
    const double steps = p->steps ? (double)p->steps : 1.0;
    int bad = json_object_set_new(o, "engine_steps", json_integer((json_int_t)p->steps));
    bad |= json_object_set_new(o, "engine_steps_ahead", json_integer((json_int_t)p->steps_ahead));
    bad |= json_object_set_new(o, "engine_tokens_per_step", json_real((double)p->tokens / steps));
    bad |=
        json_object_set_new(o, "engine_wall_ms_per_step", json_real(1e3 * run->duration_s / steps));
    bad |=
        json_object_set_new(o, "engine_forward_ms_per_step", json_real(1e3 * p->forward_s / steps));
    if (p->device_s > 0)
        bad |= json_object_set_new(o, "engine_gpu_span_ms_per_step",
                                   json_real(1e3 * p->device_s / steps));
    return bad;
}

static json_t *record_json(const bench_record *r, uint64_t t0)
{
    json_t *itl = json_array();
    for (size_t c = 1; itl && c < r->n_chunks; c++)
        json_array_append_new(itl, json_real((double)(r->chunk_ns[c] - r->chunk_ns[c - 1]) * 1e-6));
    double tpot = r->success ? bench_record_tpot_ms(r) : -1.0;
    json_t *j = json_pack(
        "{s:s, s:i, s:I, s:I, s:i, s:b, s:f, s:o, s:o, s:o, s:o, s:s?, s:s}", "id", r->id,
        "prompt_len", r->prompt_len, "input_tokens", (json_int_t)r->input_tokens, "output_tokens",
        (json_int_t)r->output_tokens, "expected_output_len", r->expected_output_len, "success",
        r->success, "start_s", r->start_ns ? (double)(r->start_ns - t0) * 1e-9 : -1.0, "ttft_ms",
        r->success ? json_real(bench_record_ttft_ms(r)) : json_null(), "tpot_ms",
        tpot >= 0 ? json_real(tpot) : json_null(), "e2el_ms",
        r->success ? json_real(bench_record_e2el_ms(r)) : json_null(), "itl_ms",
        itl ? itl : json_null(), "error", r->error, "generated_text", r->text ? r->text : "");
    return j;
}

int bench_write_json(const char *path, const bench_args *a, const bench_run *run,
                     const bench_metrics *m, cv_error *err)
{
    char date[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%Y%m%d-%H%M%S", &tm);
    json_t *o = json_pack(
        "{s:s, s:s, s:s, s:s?, s:I, s:I, s:o, s:f, s:o, s:I, s:b, s:f, s:I, s:I, s:I, s:I, s:I, "
        "s:I,"
        " s:f, s:f, s:f}",
        "date", date, "backend", backend_name(a->backend), "model", a->model, "tokenizer",
        a->tokenizer, "num_prompts", (json_int_t)a->num_prompts, "num_warmups",
        (json_int_t)a->num_warmups, "request_rate",
        isinf(a->request_rate) ? json_string("inf") : json_real(a->request_rate), "burstiness",
        a->burstiness, "max_concurrency",
        a->max_concurrency ? json_integer((json_int_t)a->max_concurrency) : json_null(), "seed",
        (json_int_t)a->seed, "ignore_eos", a->ignore_eos, "duration", m->duration_s, "completed",
        (json_int_t)m->completed, "failed", (json_int_t)m->failed, "total_input_tokens",
        (json_int_t)m->total_input, "total_output_tokens", (json_int_t)m->total_output,
        "warmup_input_tokens", (json_int_t)run->warmup_input_tokens, "warmup_output_tokens",
        (json_int_t)run->warmup_output_tokens, "request_throughput", m->request_throughput,
        "output_throughput", m->output_throughput, "total_token_throughput",
        m->total_token_throughput);
    if (!o) return cv_errorf(err, "out of memory building the result JSON");
    int bad = 0;
    if (m->request_goodput >= 0) {
        bad |= json_object_set_new(o, "request_goodput", json_real(m->request_goodput));
        bad |= json_object_set_new(o, "good_requests", json_integer((json_int_t)m->good_requests));
    }
    bad |= put_summary(o, "ttft", &m->ttft_ms) | put_summary(o, "tpot", &m->tpot_ms) |
           put_summary(o, "itl", &m->itl_ms) | put_summary(o, "e2el", &m->e2el_ms);
    if (run->has_engine) bad |= put_engine(o, run);
    uint64_t t0 = UINT64_MAX;
    for (size_t i = 0; i < run->n; i++)
        if (run->recs[i].start_ns && run->recs[i].start_ns < t0) t0 = run->recs[i].start_ns;
    json_t *reqs = json_array();
    bad |= !reqs;
    for (size_t i = 0; reqs && i < run->n; i++) {
        json_t *r = record_json(&run->recs[i], t0);
        bad |= !r || json_array_append_new(reqs, r);
    }
    bad |= json_object_set_new(o, "requests", reqs);
    if (bad) {
        json_decref(o);
        return cv_errorf(err, "out of memory building the result JSON");
    }
    int rc = json_dump_file(o, path, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (rc) return cv_errorf(err, "cannot write result file '%s'", path);
    return 0;
}

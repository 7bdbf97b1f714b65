/* Benchmark statistics, defined as `vllm bench serve` defines them:
 * percentiles by numpy's linear interpolation, TPOT excluding the first
 * token, ITL over successive token-carrying responses, goodput as the rate
 * of requests meeting every given SLO. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_percentile(double *v, size_t n, double p)
{
    if (n == 0) return 0.0;
    qsort(v, n, sizeof *v, cmp_double);
    double rank = p / 100.0 * (double)(n - 1);
    size_t lo = (size_t)floor(rank), hi = lo + 1 < n ? lo + 1 : lo;
    double frac = rank - (double)lo;
    return v[lo] + (v[hi] - v[lo]) * frac;
}

bench_summary bench_summarize(double *v, size_t n)
{
    bench_summary s = {0};
    if (n == 0) return s;
    double sum = 0.0;
    for (size_t i = 0; i < n; i++)
        sum += v[i];
    s.mean = sum / (double)n;
    double ss = 0.0;
    for (size_t i = 0; i < n; i++)
        ss += (v[i] - s.mean) * (v[i] - s.mean);
    s.std = sqrt(ss / (double)n);
    s.median = bench_percentile(v, n, 50.0);
    s.p90 = bench_percentile(v, n, 90.0);
    s.p99 = bench_percentile(v, n, 99.0);
    return s;
}

void bench_record_free(bench_record *r)
{
    free(r->chunk_ns);
    free(r->text);
    free(r->error);
    memset(r, 0, sizeof *r);
}

double bench_record_ttft_ms(const bench_record *r)
{
    if (r->n_chunks == 0) return bench_record_e2el_ms(r);
    return (double)(r->chunk_ns[0] - r->start_ns) * 1e-6;
}

double bench_record_e2el_ms(const bench_record *r)
{
    return (double)(r->end_ns - r->start_ns) * 1e-6;
}

double bench_record_tpot_ms(const bench_record *r)
{
    if (r->output_tokens <= 1) return -1.0;
    return (bench_record_e2el_ms(r) - bench_record_ttft_ms(r)) / (double)(r->output_tokens - 1);
}

int bench_compute_metrics(const bench_record *recs, size_t n, double duration_s,
                          const bench_slo *slo, bench_metrics *m, cv_error *err)
{
    memset(m, 0, sizeof *m);
    m->duration_s = duration_s;
    m->request_goodput = -1.0;
    size_t n_itl = 0;
    for (size_t i = 0; i < n; i++)
        if (recs[i].success && recs[i].n_chunks > 1) n_itl += recs[i].n_chunks - 1;
    size_t cap = n ? n : 1;
    double *ttft = malloc(cap * sizeof *ttft), *tpot = malloc(cap * sizeof *tpot),
           *e2el = malloc(cap * sizeof *e2el), *itl = malloc((n_itl ? n_itl : 1) * sizeof *itl);
    if (!ttft || !tpot || !e2el || !itl) {
        free(ttft);
        free(tpot);
        free(e2el);
        free(itl);
        return cv_errorf(err, "out of memory computing metrics of %zu requests", n);
    }
    size_t n_ok = 0, n_tpot = 0, k = 0;
    for (size_t i = 0; i < n; i++) {
        const bench_record *r = &recs[i];
        if (!r->success) {
            m->failed++;
            continue;
        }
        m->total_input += r->input_tokens > 0 ? r->input_tokens : 0;
        m->total_output += r->output_tokens;
        ttft[n_ok] = bench_record_ttft_ms(r);
        e2el[n_ok] = bench_record_e2el_ms(r);
        double tp = bench_record_tpot_ms(r);
        if (tp >= 0.0) tpot[n_tpot++] = tp;
        for (size_t c = 1; c < r->n_chunks; c++)
            itl[k++] = (double)(r->chunk_ns[c] - r->chunk_ns[c - 1]) * 1e-6;
        if (slo) {
            /* TPOT of a one-token answer is 0, as vLLM counts it. */
            bool good = (slo->ttft_ms < 0 || ttft[n_ok] <= slo->ttft_ms) &&
                        (slo->tpot_ms < 0 || (tp < 0 ? 0.0 : tp) <= slo->tpot_ms) &&
                        (slo->e2el_ms < 0 || e2el[n_ok] <= slo->e2el_ms);
            m->good_requests += good;
        }
        n_ok++;
    }
    m->completed = n_ok;
    if (duration_s > 0) {
        m->request_throughput = (double)n_ok / duration_s;
        m->output_throughput = (double)m->total_output / duration_s;
        m->total_token_throughput = (double)(m->total_input + m->total_output) / duration_s;
        if (slo) m->request_goodput = (double)m->good_requests / duration_s;
    }
    m->ttft_ms = bench_summarize(ttft, n_ok);
    m->tpot_ms = bench_summarize(tpot, n_tpot);
    m->itl_ms = bench_summarize(itl, k);
    m->e2el_ms = bench_summarize(e2el, n_ok);
    free(ttft);
    free(tpot);
    free(e2el);
    free(itl);
    return 0;
}

int bench_parse_goodput(const char *arg, bench_slo *slo, cv_error *err)
{
    const char *p = arg;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        if (!*p) break;
        size_t len = strcspn(p, " ,");
        char item[128];
        if (len >= sizeof item)
            return cv_errorf(err, "goodput SLO '%.*s' is too long", (int)len, p);
        memcpy(item, p, len);
        item[len] = '\0';
        p += len;
        char *colon = strchr(item, ':');
        if (!colon) return cv_errorf(err, "goodput SLO '%s' is not NAME:MILLISECONDS", item);
        *colon = '\0';
        const char *val = colon + 1;
        char *end;
        double ms = strtod(val, &end);
        double *dst = !strcmp(item, "ttft")   ? &slo->ttft_ms
                      : !strcmp(item, "tpot") ? &slo->tpot_ms
                      : !strcmp(item, "e2el") ? &slo->e2el_ms
                                              : NULL;
        if (!dst)
            return cv_errorf(err,
                             "invalid goodput metric '%s' in '%s:%s': the SLO name must be one of "
                             "ttft, tpot, e2el",
                             item, item, val);
        if (!*val || *end || !(ms >= 0.0) || isinf(ms))
            return cv_errorf(err,
                             "invalid goodput value '%s' for %s: must be a non-negative number of "
                             "milliseconds",
                             val, item);
        *dst = ms;
    }
    return 0;
}

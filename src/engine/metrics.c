/* Histogram buckets as vLLM defines them (vllm/engine/metrics.py). */
#include <string.h>

#include "metrics.h"

static void hist_init(cv_histogram *h, const double *bounds, int n)
{
    memset(h, 0, sizeof(*h));
    if (n > CV_HIST_MAX_BUCKETS) n = CV_HIST_MAX_BUCKETS;
    h->n_bounds = n;
    memcpy(h->bounds, bounds, (size_t)n * sizeof(double));
}

/* vLLM's build_1_2_5_buckets: 1, 2, 5, 10, 20, 50, ... up to max. */
static void hist_init_125(cv_histogram *h, int max_value)
{
    double b[CV_HIST_MAX_BUCKETS];
    int n = 0;
    static const int mant[3] = {1, 2, 5};
    for (double exp10 = 1; n < CV_HIST_MAX_BUCKETS; exp10 *= 10) {
        for (int i = 0; i < 3 && n < CV_HIST_MAX_BUCKETS; i++) {
            double v = mant[i] * exp10;
            if (v > max_value) {
                hist_init(h, b, n);
                return;
            }
            b[n++] = v;
        }
    }
    hist_init(h, b, n);
}

void metrics_init(cv_engine_stats *st, int max_model_len)
{
    static const double ttft[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                  0.25,  0.5,   0.75, 1.0,  2.5,  5.0,  7.5,  10.0};
    static const double tpot[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                  0.3,  0.4,   0.5,  0.75,  1.0, 2.5};
    static const double e2e[] = {1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0};
    static const double n_par[] = {1, 2, 5, 10, 20};
    memset(st, 0, sizeof(*st));
    hist_init(&st->time_to_first_token_s, ttft, sizeof(ttft) / sizeof(ttft[0]));
    hist_init(&st->time_per_output_token_s, tpot, sizeof(tpot) / sizeof(tpot[0]));
    hist_init(&st->e2e_request_latency_s, e2e, sizeof(e2e) / sizeof(e2e[0]));
    /* vLLM has no queue-time buckets of its own in PROTOCOL.md; the e2e ones fit. */
    hist_init(&st->queue_time_s, e2e, sizeof(e2e) / sizeof(e2e[0]));
    hist_init_125(&st->request_prompt_tokens, max_model_len);
    hist_init_125(&st->request_generation_tokens, max_model_len);
    hist_init(&st->request_params_n, n_par, sizeof(n_par) / sizeof(n_par[0]));
}

void hist_observe(cv_histogram *h, double v)
{
    int i = 0;
    while (i < h->n_bounds && v > h->bounds[i])
        i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

/* Prometheus text exposition on the metrics port: Triton's per-model
 * nv_inference_* counters and, for models whose config sets
 * REPORT_CUSTOM_METRICS, the vllm:* metrics from the engine's stats. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "base/log.h"
#include "server/server_internal.h"

typedef struct model_snap {
    char name[256];
    char version[24];
    uint64_t c[9]; /* triton_counters, in order */
    int64_t pending;
    bool custom;
    cv_engine_stats st;
} model_snap;

typedef struct snaps {
    model_snap *v;
    int n, cap;
} snaps;

static void take_snap(cv_model *m, void *arg)
{
    snaps *s = arg;
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 4;
        model_snap *nv = realloc(s->v, sizeof *nv * (size_t)cap);
        if (!nv) return;
        s->v = nv;
        s->cap = cap;
    }
    model_snap *x = &s->v[s->n++];
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%s", m->name);
    snprintf(x->version, sizeof x->version, "%s", m->version_str);
    const cv_model_counters *k = &m->counters;
    x->c[0] = atomic_load(&k->request_success);
    x->c[1] = atomic_load(&k->request_failure);
    x->c[2] = atomic_load(&k->inference_count);
    x->c[3] = atomic_load(&k->exec_count);
    x->c[4] = atomic_load(&k->request_duration_us);
    /* Time in the engine's waiting queue, from its stats. */
    cv_engine_get_stats(m->engine, &x->st);
    x->c[5] = (uint64_t)(x->st.queue_time_s.sum * 1e6);
    /* c[6], c[8]: compute input and output. cvllm has no phase apart from
     * the engine's (tokenizing and detokenizing run inside it), so they
     * stay 0, as compute_input/compute_output in the statistics extension. */
    x->c[7] = atomic_load(&k->compute_infer_duration_us);
    x->pending = atomic_load(&k->pending);
    x->custom = m->report_custom_metrics;
    if (x->custom) cv_engine_get_stats(m->engine, &x->st);
}

static const struct {
    const char *name, *help;
} triton_counters[] = {
    {"nv_inference_request_success", "Number of successful inference requests, all batch sizes"},
    {"nv_inference_request_failure", "Number of failed inference requests, all batch sizes"},
    {"nv_inference_count", "Number of inferences performed (does not include cached requests)"},
    {"nv_inference_exec_count",
     "Number of model executions performed (does not include cached requests)"},
    {"nv_inference_request_duration_us",
     "Cumulative inference request duration in microseconds (includes cached requests)"},
    {"nv_inference_queue_duration_us",
     "Cumulative inference queuing duration in microseconds (includes cached requests)"},
    {"nv_inference_compute_input_duration_us",
     "Cumulative compute input duration in microseconds (does not include cached requests)"},
    {"nv_inference_compute_infer_duration_us",
     "Cumulative compute inference duration in microseconds (does not include cached requests)"},
    {"nv_inference_compute_output_duration_us",
     "Cumulative inference compute output duration in microseconds (does not include cached "
     "requests)"},
};
_Static_assert(sizeof triton_counters / sizeof *triton_counters ==
                   sizeof((model_snap *)0)->c / sizeof(uint64_t),
               "one snapshot counter per Triton counter");

static void family(struct evbuffer *b, const char *name, const char *type, const char *help)
{
    evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void histogram(struct evbuffer *b, const char *name, const model_snap *x,
                      const cv_histogram *h)
{
    uint64_t cum = 0;
    for (int i = 0; i < h->n_bounds; i++) {
        cum += h->counts[i];
        evbuffer_add_printf(b, "%s_bucket{model=\"%s\",version=\"%s\",le=\"%g\"} %llu\n", name,
                            x->name, x->version, h->bounds[i], (unsigned long long)cum);
    }
    cum += h->counts[h->n_bounds];
    evbuffer_add_printf(b, "%s_bucket{model=\"%s\",version=\"%s\",le=\"+Inf\"} %llu\n", name,
                        x->name, x->version, (unsigned long long)cum);
    evbuffer_add_printf(b, "%s_sum{model=\"%s\",version=\"%s\"} %.9g\n", name, x->name, x->version,
                        h->sum);
    evbuffer_add_printf(b, "%s_count{model=\"%s\",version=\"%s\"} %llu\n", name, x->name,
                        x->version, (unsigned long long)h->count);
}

typedef enum {
    V_PROMPT,
    V_GEN,
    V_RUNNING,
    V_WAITING,
    V_KV,
    V_PREEMPT,
    V_PC_QUERIES,
    V_PC_HITS
} vllm_scalar;

static double scalar(const model_snap *x, vllm_scalar k)
{
    switch (k) {
    case V_PROMPT:
        return (double)x->st.prompt_tokens_total;
    case V_GEN:
        return (double)x->st.generation_tokens_total;
    case V_RUNNING:
        return x->st.n_running;
    case V_WAITING:
        return x->st.n_waiting;
    case V_KV:
        return x->st.kv_usage;
    case V_PC_QUERIES:
        return (double)x->st.prefix_cache_queries;
    case V_PC_HITS:
        return (double)x->st.prefix_cache_hits;
    default:
        return (double)x->st.preemptions_total;
    }
}

char *cv_metrics_render(cv_server *s)
{
    snaps sn = {0};
    cv_repository_foreach_ready(s->repo, take_snap, &sn);
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        free(sn.v);
        return NULL;
    }
    for (size_t f = 0; f < sizeof triton_counters / sizeof *triton_counters; f++) {
        family(b, triton_counters[f].name, "counter", triton_counters[f].help);
        for (int i = 0; i < sn.n; i++)
            evbuffer_add_printf(b, "%s{model=\"%s\",version=\"%s\"} %llu\n",
                                triton_counters[f].name, sn.v[i].name, sn.v[i].version,
                                (unsigned long long)sn.v[i].c[f]);
    }
    family(b, "nv_inference_pending_request_count", "gauge",
           "Instantaneous number of pending requests awaiting execution per-model.");
    for (int i = 0; i < sn.n; i++)
        evbuffer_add_printf(b,
                            "nv_inference_pending_request_count{model=\"%s\",version=\"%s\"} "
                            "%lld\n",
                            sn.v[i].name, sn.v[i].version, (long long)sn.v[i].pending);

    static const struct {
        const char *name, *type, *help;
        vllm_scalar k;
    } scalars[] = {
        {"vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", V_PROMPT},
        {"vllm:generation_tokens_total", "counter", "Number of generation tokens processed.",
         V_GEN},
        {"vllm:num_requests_running", "gauge", "Number of requests currently running.", V_RUNNING},
        {"vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.",
         V_WAITING},
        {"vllm:gpu_cache_usage_perc", "gauge",
         "KV-cache usage. 1 means 100 percent usage (cvllm: the CPU KV block pool).", V_KV},
        {"vllm:num_preemptions_total", "counter", "Cumulative number of preemptions.", V_PREEMPT},
        /* vLLM V1's vllm:prefix_cache_queries / _hits counters, in
         * tokens; prometheus_client shows a counter with _total. */
        {"vllm:prefix_cache_queries_total", "counter",
         "Prefix cache queries, in terms of number of queried tokens.", V_PC_QUERIES},
        {"vllm:prefix_cache_hits_total", "counter",
         "Prefix cache hits, in terms of number of cached tokens.", V_PC_HITS},
    };
    static const struct {
        const char *name, *help;
        size_t off;
    } hists[] = {
        {"vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
         offsetof(cv_engine_stats, time_to_first_token_s)},
        {"vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.",
         offsetof(cv_engine_stats, time_per_output_token_s)},
        {"vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.",
         offsetof(cv_engine_stats, e2e_request_latency_s)},
        {"vllm:request_prompt_tokens", "Number of prefill tokens processed.",
         offsetof(cv_engine_stats, request_prompt_tokens)},
        {"vllm:request_generation_tokens", "Number of generation tokens processed.",
         offsetof(cv_engine_stats, request_generation_tokens)},
        {"vllm:request_params_n", "Histogram of the n request parameter.",
         offsetof(cv_engine_stats, request_params_n)},
    };
    bool any_custom = false;
    for (int i = 0; i < sn.n; i++)
        any_custom |= sn.v[i].custom;
    for (size_t f = 0; any_custom && f < sizeof scalars / sizeof *scalars; f++) {
        family(b, scalars[f].name, scalars[f].type, scalars[f].help);
        for (int i = 0; i < sn.n; i++)
            if (sn.v[i].custom)
                evbuffer_add_printf(b, "%s{model=\"%s\",version=\"%s\"} %.9g\n", scalars[f].name,
                                    sn.v[i].name, sn.v[i].version, scalar(&sn.v[i], scalars[f].k));
    }
    for (size_t f = 0; any_custom && f < sizeof hists / sizeof *hists; f++) {
        family(b, hists[f].name, "histogram", hists[f].help);
        for (int i = 0; i < sn.n; i++)
            if (sn.v[i].custom)
                histogram(b, hists[f].name, &sn.v[i],
                          (const cv_histogram *)((const char *)&sn.v[i].st + hists[f].off));
    }
    /* vLLM's info gauge of the adapters in use: the labels carry the
     * adapter names, the value is the time of the snapshot (seconds). */
    bool any_lora = false;
    for (int i = 0; i < sn.n; i++)
        any_lora |= sn.v[i].custom && sn.v[i].st.max_lora > 0;
    if (any_lora) family(b, "vllm:lora_requests_info", "gauge", "Running stats on lora requests.");
    for (int i = 0; any_lora && i < sn.n; i++)
        if (sn.v[i].custom && sn.v[i].st.max_lora > 0)
            evbuffer_add_printf(b,
                                "vllm:lora_requests_info{model=\"%s\",version=\"%s\",max_lora="
                                "\"%d\",running_lora_adapters=\"%s\",waiting_lora_adapters="
                                "\"%s\"} %.9g\n",
                                sn.v[i].name, sn.v[i].version, sn.v[i].st.max_lora,
                                sn.v[i].st.running_lora_adapters, sn.v[i].st.waiting_lora_adapters,
                                (double)time(NULL));
    free(sn.v);
    size_t len = evbuffer_get_length(b);
    char *text = malloc(len + 1);
    if (text) {
        evbuffer_remove(b, text, len);
        text[len] = '\0';
    }
    evbuffer_free(b);
    return text;
}

static void on_metrics(struct evhttp_request *req, void *arg)
{
    cv_server *s = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    if (!path || strcmp(path, "/metrics")) {
        evbuffer_add_printf(b, "Not Found\n");
        evhttp_send_reply(req, 404, "Not Found", b);
    } else {
        char *text = cv_metrics_render(s);
        if (text) {
            evbuffer_add(b, text, strlen(text));
            evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                              "text/plain; charset=utf-8; version=0.0.4");
            evhttp_send_reply(req, 200, "OK", b);
        } else {
            evhttp_send_reply(req, 500, "Internal Server Error", b);
        }
        free(text);
    }
    evbuffer_free(b);
}

/* The metrics frontend: its state is the evhttp server on the metrics
 * port. Scrapes are answered at once, so there is nothing to drain. */
static int metrics_start(cv_server *s, void **state, cv_error *err)
{
    *state = NULL;
    if (!s->opts.allow_metrics) return 0;
    struct evhttp *http = evhttp_new(s->base);
    if (!http)
        return cv_errorf_class(err, CV_ERR_INTERNAL, "metrics: cannot create the HTTP server");
    evhttp_set_gencb(http, on_metrics, s);
    /* tritonserver: the metrics address defaults to the HTTP one. */
    const char *addr = s->opts.metrics_address ? s->opts.metrics_address : s->opts.http_address;
    if (!evhttp_bind_socket_with_handle(http, addr, (uint16_t)s->opts.metrics_port)) {
        cv_errorf_class(err, CV_ERR_UNAVAILABLE,
                        "failed to start Metrics service: cannot bind %s port %d: %s", addr,
                        s->opts.metrics_port, strerror(errno));
        evhttp_free(http);
        return -1;
    }
    cv_log_info("Started Metrics Service at %s:%d", addr, s->opts.metrics_port);
    *state = http;
    return 0;
}

static void metrics_nothing(void *state)
{
    (void)state;
}

static int metrics_active(void *state)
{
    (void)state;
    return 0;
}

static void metrics_destroy(void *state)
{
    evhttp_free(state);
}

const cv_frontend_ops cv_metrics_frontend = {
    .name = "metrics",
    .start = metrics_start,
    .abort_all = metrics_nothing,
    .active = metrics_active,
    .destroy = metrics_destroy,
};

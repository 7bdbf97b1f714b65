/* Triton's statistics extension: per-model request counts and durations
 * (GET /v2/models[/{m}[/versions/{v}]]/stats and the ModelStatistics RPC),
 * from the frontends' counters and the engine's queue time. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server_internal.h"

static void fill(cv_model *m, cv_model_stats *st)
{
    memset(st, 0, sizeof *st);
    snprintf(st->name, sizeof st->name, "%s", m->name);
    snprintf(st->version, sizeof st->version, "%s", m->version_str);
    const cv_model_counters *c = &m->counters;
    st->last_inference_ms = atomic_load(&c->last_inference_ms);
    st->inference_count = atomic_load(&c->inference_count);
    st->execution_count = atomic_load(&c->exec_count);
    st->success_count = atomic_load(&c->request_success);
    st->success_ns = atomic_load(&c->request_duration_us) * 1000u;
    st->fail_count = atomic_load(&c->request_failure);
    st->fail_ns = atomic_load(&c->fail_duration_us) * 1000u;
    cv_engine_stats es;
    cv_engine_get_stats(m->engine, &es);
    st->queue_ns = (uint64_t)(es.queue_time_s.sum * 1e9);
}

typedef struct collect {
    cv_model_stats *v;
    int n, cap;
} collect;

static void add_model(cv_model *m, void *arg)
{
    collect *c = arg;
    if (c->n == c->cap) {
        int cap = c->cap ? c->cap * 2 : 4;
        cv_model_stats *nv = realloc(c->v, sizeof *nv * (size_t)cap);
        if (!nv) return;
        c->v = nv;
        c->cap = cap;
    }
    fill(m, &c->v[c->n++]);
}

int cv_server_model_stats(cv_server *s, const char *name, const char *version, cv_model_stats **out,
                          cv_error *err)
{
    *out = NULL;
    if (!name || !name[0]) {
        collect c = {0};
        cv_repository_foreach_ready(s->repo, add_model, &c);
        *out = c.v;
        return c.n;
    }
    cv_model *m = cv_server_acquire(s, name, version, err);
    if (!m) return -1;
    *out = malloc(sizeof **out);
    if (*out) fill(m, *out);
    cv_model_release(m);
    if (!*out) return cv_errorf_class(err, CV_ERR_INTERNAL, "out of memory");
    return 1;
}

static json_t *duration(uint64_t count, uint64_t ns)
{
    return json_pack("{s:I, s:I}", "count", (json_int_t)count, "ns", (json_int_t)ns);
}

json_t *cv_model_stats_json(const cv_model_stats *st, int n)
{
    json_t *arr = json_array();
    for (int i = 0; arr && i < n; i++) {
        const cv_model_stats *x = &st[i];
        json_t *is = json_pack(
            "{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "success",
            duration(x->success_count, x->success_ns), "fail", duration(x->fail_count, x->fail_ns),
            "queue", duration(x->success_count, x->queue_ns), "compute_input", duration(0, 0),
            "compute_infer", duration(x->success_count, x->success_ns), "compute_output",
            duration(0, 0), "cache_hit", duration(0, 0), "cache_miss", duration(0, 0));
        json_array_append_new(
            arr, json_pack("{s:s, s:s, s:I, s:I, s:I, s:o, s:[]}", "name", x->name, "version",
                           x->version, "last_inference", (json_int_t)x->last_inference_ms,
                           "inference_count", (json_int_t)x->inference_count, "execution_count",
                           (json_int_t)x->execution_count, "inference_stats", is, "batch_stats"));
    }
    return json_pack("{s:o}", "model_stats", arr);
}

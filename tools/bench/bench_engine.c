/* --backend inprocess: the engine cvllm-server would run for a model,
 * loaded through the server's own repository code (config.pbtxt, version
 * policy, model.json -> cv_engine_args), so that a run against it differs
 * from a run against the server only by the server. */
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"
#include "server/repository.h"

struct bench_engine {
    cv_repository *repo;
    cv_model *model; /* a reference held until close */
};

bench_engine *bench_engine_open(const bench_args *a, cv_error *err)
{
    bench_engine *e = calloc(1, sizeof *e);
    if (!e) {
        cv_errorf(err, "out of memory");
        return NULL;
    }
    const char *roots[] = {a->model_repository};
    if (!(e->repo = cv_repository_create(roots, 1, a->threads < 0 ? 0 : a->threads, err)) ||
        cv_repository_load(e->repo, a->model, err) ||
        !(e->model = cv_repository_acquire(e->repo, a->model, NULL, err))) {
        bench_engine_close(e);
        return NULL;
    }
    return e;
}

struct cv_engine *bench_engine_get(bench_engine *e)
{
    return e->model->engine;
}

void bench_engine_counters(cv_engine *engine, bench_engine_phase *c)
{
    cv_engine_stats st;
    cv_engine_get_stats(engine, &st);
    *c = (bench_engine_phase){.steps = st.steps_total,
                              .steps_ahead = st.steps_ahead,
                              .tokens = st.prompt_tokens_computed + st.generation_tokens_total,
                              .forward_s = st.forward_s_total,
                              .device_s = st.device_s_total};
}

void bench_engine_report(const bench_run *run)
{
    const bench_engine_phase *p = &run->engine;
    const double steps = p->steps ? (double)p->steps : 1.0;
    printf("Engine steps (measured phase):     %llu, %llu scheduled ahead\n",
           (unsigned long long)p->steps, (unsigned long long)p->steps_ahead);
    printf("Tokens per step:                   %.1f\n", (double)p->tokens / steps);
    printf("Wall ms per step:                  %.3f\n", 1e3 * run->duration_s / steps);
    printf("Forward ms per step:               %.3f\n", 1e3 * p->forward_s / steps);
    if (p->device_s > 0) /* the GPU's own span, without the host's work around it */
        printf("GPU span ms per step:              %.3f\n", 1e3 * p->device_s / steps);
}

void bench_engine_close(bench_engine *e)
{
    if (!e) return;
    if (e->model) cv_model_release(e->model);
    cv_repository_destroy(e->repo);
    free(e);
}

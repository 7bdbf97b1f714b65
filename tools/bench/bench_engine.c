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

void bench_engine_report(bench_engine *e)
{
    cv_engine_stats st;
    cv_engine_get_stats(e->model->engine, &st);
    const double steps = st.steps_total ? (double)st.steps_total : 1.0;
    printf("Engine steps (warm-ups included):  %llu, %llu scheduled ahead\n",
           (unsigned long long)st.steps_total, (unsigned long long)st.steps_ahead);
    printf("Tokens per step:                   %.1f\n",
           (double)(st.prompt_tokens_computed + st.generation_tokens_total) / steps);
    printf("Device ms per step:                %.3f\n", 1e3 * st.forward_s_total / steps);
    if (st.device_s_total > 0) /* the GPU's own span, without the host's work around it */
        printf("GPU span ms per step:              %.3f\n", 1e3 * st.device_s_total / steps);
}

void bench_engine_close(bench_engine *e)
{
    if (!e) return;
    if (e->model) cv_model_release(e->model);
    cv_repository_destroy(e->repo);
    free(e);
}

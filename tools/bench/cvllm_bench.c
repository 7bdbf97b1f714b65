/* cvllm-bench: serving benchmark for Triton-compatible and OpenAI-compatible
 * servers, in the manner of `vllm bench serve`, and for the same engine in
 * process (see bench.h). */
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"
#include "client.h"
#include "cvllm/engine.h"

static int load_dataset(const bench_args *a, const cv_tokenizer *tok, size_t n, uint64_t seed,
                        bench_dataset *d, cv_error *err)
{
    switch (a->dataset) {
    case BENCH_DATA_RANDOM:
        return bench_dataset_random(tok, n, a->random_input_len, a->random_output_len,
                                    a->random_range_ratio, seed, d, err);
    case BENCH_DATA_SHAREGPT:
        return bench_dataset_sharegpt(a->dataset_path, tok, n, a->sharegpt_output_len, seed, d,
                                      err);
    case BENCH_DATA_PROMPTS:
        return bench_dataset_prompts(a->dataset_path, tok, n, a->prompts_output_len, d, err);
    }
    return cv_errorf(err, "unknown dataset");
}

/* Warm-up prompts come after the measured ones in the same draw, so the
 * measured set does not depend on --num-warmups. */
static int split_warmup(bench_dataset *all, size_t n_measured, bench_dataset *warm)
{
    warm->n = all->n - n_measured;
    warm->items = all->items + n_measured;
    all->n = n_measured;
    return 0;
}

int main(int argc, char **argv)
{
    bench_args a;
    cv_error err = {.msg = ""};
    int rc = bench_parse_args(argc, argv, &a, &err);
    if (rc == 1) return 0;
    if (rc) {
        bench_usage(stderr);
        fprintf(stderr, "cvllm-bench: error: %s\n", err.msg);
        return 2;
    }
    cv_tokenizer *own_tok = NULL;
    if (a.tokenizer && !(own_tok = tok_load(a.tokenizer, &err))) {
        fprintf(stderr, "cvllm-bench: %s\n", err.msg);
        return 1;
    }
    /* Loaded before the dataset, whose prompts may need its tokenizer. */
    bench_engine *eng = NULL;
    if (a.backend == BENCH_INPROCESS && !(eng = bench_engine_open(&a, &err))) {
        fprintf(stderr, "cvllm-bench: %s\n", err.msg);
        tok_free(own_tok);
        return 1;
    }
    const cv_tokenizer *tok =
        own_tok || !eng ? own_tok : cv_engine_tokenizer(bench_engine_get(eng));
    bench_dataset all = {0}, warm = {0};
    if (load_dataset(&a, tok, a.num_prompts + a.num_warmups, a.seed, &all, &err)) {
        fprintf(stderr, "cvllm-bench: %s\n", err.msg);
        bench_engine_close(eng);
        tok_free(own_tok);
        return 1;
    }
    split_warmup(&all, a.num_prompts, &warm);
    size_t all_n = all.n + warm.n;
    if (cvc_http_global_init(&err)) {
        fprintf(stderr, "cvllm-bench: %s\n", err.msg);
        return 1;
    }
    bench_run run;
    rc = bench_run_requests(&a, eng ? bench_engine_get(eng) : NULL, &warm, &all, tok, &run, &err);
    all.n = all_n;
    bench_metrics m;
    if (rc) fprintf(stderr, "cvllm-bench: %s\n", err.msg);
    if (bench_compute_metrics(run.recs, run.n, run.duration_s, a.has_slo ? &a.slo : NULL, &m,
                              &err)) {
        fprintf(stderr, "cvllm-bench: %s\n", err.msg);
        rc = -1;
    } else {
        bench_print_report(&a, &m);
        if (run.has_engine) bench_engine_report(&run);
        for (size_t i = 0; i < run.n && m.failed; i++)
            if (run.recs[i].error) {
                fprintf(stderr, "cvllm-bench: first failed request %s: %s\n", run.recs[i].id,
                        run.recs[i].error);
                break;
            }
        if (a.result_file && bench_write_json(a.result_file, &a, &run, &m, &err)) {
            fprintf(stderr, "cvllm-bench: %s\n", err.msg);
            rc = -1;
        }
    }
    bench_run_free(&run);
    bench_dataset_free(&all);
    bench_engine_close(eng);
    tok_free(own_tok);
    cvc_http_global_cleanup();
    return rc ? 1 : 0;
}

/* The CPU backend against HuggingFace transformers: the tiny random models of
 * tests/fixtures/models (every architecture, f32 and bf16 weights) and the
 * real stories260K, through the model loader and cv_backend_forward.
 *
 * Each fixture is run (a) as one prefill per prompt, (b) with both prompts
 * interleaved in the same batches, in chunks and single decode tokens, through
 * a cache of 4-token blocks, and (c) greedily, one decode step at a time;
 * and that under every SIMD level this CPU has.
 *
 * Error measure (the fixtures' README): max |ours - ref| / max |ref| over all
 * positions and the whole vocabulary; f32 weights <= 1e-4 against HF's fp32
 * logits, bf16 weights <= 2e-2 against HF's fp32 compute on the same
 * weights. Greedy ids must match exactly. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "../common/hf_fixture.h"

#include "backend/cpu/cpu_internal.h"
#include "seq_runner.h"

enum { BLOCK_SIZE = 4, MAX_IDS = 512 };

/* Two threads for the level the CPU would pick, one for the others: the
 * thread count does not change results (test_cpu_backend), and one thread
 * keeps the suite fast on a loaded machine. */
static cv_backend *make_backend(const hf_fixture *f, cpu_simd_level level)
{
    cv_error err = {.msg = ""};
    int n_threads = level == cpu_kernels_best()->level ? 2 : 1;
    cv_backend *bk = cv_backend_cpu_create(f->model, n_threads, &err);
    if (!bk) fail_msg("create: %s", err.msg);
    if (cpu_backend_set_simd(bk, level, &err)) fail_msg("%s", err.msg);
    bk->parallel_min_madds = 0.0; /* these tiny models would run on one thread */
    return bk;
}

/* (a) and (b) for one SIMD level. */
static void check_logits(const hf_fixture *f, cpu_simd_level level, const char *name)
{
    const json_t *prompts = json_object_get(f->ref, "prompts");
    const char *key = f->bf16 ? "logits_fp32_compute" : "logits";
    const double tol = f->bf16 ? 2e-2 : 1e-4;
    const int vocab = f->cfg->vocab_size;
    int32_t ids[2][MAX_IDS];
    int n[2];
    float *got[2];
    for (int p = 0; p < 2; p++) {
        n[p] = hf_ids_from_json(json_object_get(json_array_get(prompts, p), "input_ids"), ids[p],
                                MAX_IDS);
        got[p] = malloc((size_t)n[p] * vocab * sizeof(float));
        assert_non_null(got[p]);
    }
    cv_error err = {.msg = ""};

    /* (a) one prefill per prompt. */
    for (int p = 0; p < 2; p++) {
        cv_backend *bk = make_backend(f, level);
        runner r;
        assert_int_equal(runner_init(&r, bk, BLOCK_SIZE, 1, &err), 0);
        r.seqs[0].ids = ids[p];
        r.seqs[0].n_ids = n[p];
        int chunk[1] = {n[p]};
        if (runner_step(&r, chunk, got[p], &err) != n[p]) fail_msg("%s", err.msg);
        const json_t *rows = json_object_get(json_array_get(prompts, p), key);
        double all = hf_rel_err(got[p], rows, 0, n[p], vocab);
        double last = hf_rel_err(got[p] + (size_t)(n[p] - 1) * vocab, rows, n[p] - 1, 1, vocab);
        print_message("%s %s prompt %d prefill: rel err all %.2e last %.2e\n", name,
                      cpu_kernels_get(level)->name, p, all, last);
        assert_true(all <= tol);
        assert_true(last <= tol);
        cv_backend_destroy(bk);
    }

    /* (b) both prompts in the same steps: chunks and single tokens mixed. */
    static const int plan[2][8] = {{3, 1, 1, 1, 1, 0, 0, 0}, {5, 4, 1, 1, 1, 7, 0, 0}};
    cv_backend *bk = make_backend(f, level);
    runner r;
    assert_int_equal(runner_init(&r, bk, BLOCK_SIZE, 2, &err), 0);
    for (int p = 0; p < 2; p++) {
        r.seqs[p].ids = ids[p];
        r.seqs[p].n_ids = n[p];
    }
    float *step_logits = malloc((size_t)(n[0] + n[1]) * vocab * sizeof(float));
    assert_non_null(step_logits);
    for (int s = 0; s < 8; s++) {
        int chunk[2], done[2];
        for (int p = 0; p < 2; p++) {
            done[p] = r.seqs[p].n_done;
            chunk[p] = plan[p][s];
        }
        if (chunk[0] + chunk[1] == 0) break;
        if (runner_step(&r, chunk, step_logits, &err) < 0) fail_msg("%s", err.msg);
        memcpy(got[0] + (size_t)done[0] * vocab, step_logits,
               (size_t)chunk[0] * vocab * sizeof(float));
        memcpy(got[1] + (size_t)done[1] * vocab, step_logits + (size_t)chunk[0] * vocab,
               (size_t)chunk[1] * vocab * sizeof(float));
    }
    for (int p = 0; p < 2; p++) {
        assert_int_equal(r.seqs[p].n_done, n[p]);
        const json_t *rows = json_object_get(json_array_get(prompts, p), key);
        double all = hf_rel_err(got[p], rows, 0, n[p], vocab);
        print_message("%s %s prompt %d mixed steps: rel err %.2e\n", name,
                      cpu_kernels_get(level)->name, p, all);
        assert_true(all <= tol);
        free(got[p]);
    }
    free(step_logits);
    cv_backend_destroy(bk);
}

/* Greedy decoding one token per step from input_ids; must reproduce
 * expected exactly (HF stops after EOS, which expected then ends with). */
static void check_greedy(cv_backend *bk, const json_t *input_ids, const json_t *expected, int vocab)
{
    int32_t ids[MAX_IDS];
    int n_in = hf_ids_from_json(input_ids, ids, MAX_IDS);
    int n_out = (int)json_array_size(expected);
    assert_true(n_in + n_out <= MAX_IDS);
    float *logits = malloc((size_t)n_in * vocab * sizeof(float));
    assert_non_null(logits);
    cv_error err = {.msg = ""};
    runner r;
    assert_int_equal(runner_init(&r, bk, BLOCK_SIZE, 1, &err), 0);
    r.seqs[0].ids = ids;
    r.seqs[0].n_ids = n_in;
    int chunk[1] = {n_in};
    if (runner_step(&r, chunk, logits, &err) < 0) fail_msg("%s", err.msg);
    const float *last = logits + (size_t)(n_in - 1) * vocab;
    for (int i = 0; i < n_out; i++) {
        int next = hf_argmax(last, vocab);
        int want = (int)json_integer_value(json_array_get(expected, (size_t)i));
        if (next != want) fail_msg("greedy token %d: got %d, HF %d", i, next, want);
        ids[n_in + i] = next;
        r.seqs[0].n_ids = n_in + i + 1;
        chunk[0] = 1;
        if (i + 1 < n_out && runner_step(&r, chunk, logits, &err) < 0) fail_msg("%s", err.msg);
        last = logits;
    }
    free(logits);
}

static void test_fixture(void **state)
{
    const char *name = *state;
    hf_fixture f;
    hf_fixture_load(&f, name);
    for (int l = 0; l < CPU_SIMD_COUNT; l++) {
        if (!cpu_kernels_get((cpu_simd_level)l)) continue;
        check_logits(&f, (cpu_simd_level)l, name);
        cv_backend *bk = make_backend(&f, (cpu_simd_level)l);
        const json_t *g = json_object_get(f.ref, "greedy");
        check_greedy(bk, json_object_get(g, "input_ids"), json_object_get(g, "output_ids"),
                     f.cfg->vocab_size);
        cv_backend_destroy(bk);
    }
    hf_fixture_free(&f);
}

/* stories260K from ../shared: HF's greedy ids for BOS alone (256 tokens, the
 * llama2.c sample) and two prompts (64 tokens each). */
static void test_stories260K_greedy(void **state)
{
    (void)state;
    hf_fixture f;
    hf_fixture_load_stories(&f);
    const json_t *cases = json_object_get(f.ref, "cases");
    assert_int_equal(json_array_size(cases), 3);
    cv_error err = {.msg = ""};
    cv_backend *bk = cv_backend_cpu_create(f.model, 2, &err);
    assert_non_null(bk);
    for (size_t i = 0; i < json_array_size(cases); i++) {
        const json_t *c = json_array_get(cases, i);
        check_greedy(bk, json_object_get(c, "input_ids"), json_object_get(c, "output_ids"),
                     f.cfg->vocab_size);
    }
    cv_backend_destroy(bk);
    hf_fixture_free(&f);
}

#define FIXTURE(n)                                                                                 \
    {                                                                                              \
        .name = n, .test_func = test_fixture, .initial_state = (void *)n                           \
    }

int main(void)
{
    const struct CMUnitTest tests[] = {
        FIXTURE("llama_f32"),
        FIXTURE("llama_bf16"),
        FIXTURE("llama_sharded"),
        FIXTURE("llama3_rope_f32"),
        FIXTURE("llama3_rope_bf16"),
        FIXTURE("llama_linear_rope_f32"),
        FIXTURE("llama_linear_rope_bf16"),
        FIXTURE("mistral_f32"),
        FIXTURE("mistral_bf16"),
        FIXTURE("qwen2_f32"),
        FIXTURE("qwen2_bf16"),
        FIXTURE("qwen3_f32"),
        FIXTURE("qwen3_bf16"),
        cmocka_unit_test(test_stories260K_greedy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

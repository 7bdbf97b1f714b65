/* The CPU backend against HuggingFace transformers: the tiny random models of
 * tests/fixtures/models (every architecture, OPT pre- and post-norm and
 * GPT-2 included, f32 and bf16 weights) and the real stories260K, through
 * the model loader and cv_backend_forward.
 *
 * Each fixture is run (a) as one prefill per prompt, (b) with both prompts
 * interleaved in the same batches, in chunks and single decode tokens, through
 * a cache of 4-token blocks (bit for bit equal to (a)), and (c) greedily,
 * one decode step at a time;
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
#include "../common/seq_runner.h"
#include "../common/shared_data.h"

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

/* (a) and (b) for one SIMD level; (b) must also equal (a) bit for bit:
 * a token's logits do not depend on what else is in its batch. */
static void check_logits(const hf_fixture *f, cpu_simd_level level, const char *name)
{
    const json_t *prompts = json_object_get(f->ref, "prompts");
    const char *key = f->bf16 ? "logits_fp32_compute" : "logits";
    const double tol = f->bf16 ? 2e-2 : 1e-4;
    const int vocab = f->cfg->vocab_size;
    int32_t ids[2][MAX_IDS];
    int n[2];
    float *got[2], *alone[2];
    for (int p = 0; p < 2; p++) {
        n[p] = hf_ids_from_json(json_object_get(json_array_get(prompts, p), "input_ids"), ids[p],
                                MAX_IDS);
        got[p] = malloc((size_t)n[p] * vocab * sizeof(float));
        alone[p] = malloc((size_t)n[p] * vocab * sizeof(float));
        assert_non_null(got[p]);
        assert_non_null(alone[p]);
    }
    cv_error err = {.msg = ""};

    /* (a) one prefill per prompt. */
    for (int p = 0; p < 2; p++) {
        cv_backend *bk = make_backend(f, level);
        runner r;
        assert_int_equal(runner_init(&r, &runner_cpu_ops, bk, BLOCK_SIZE, 1, &err), 0);
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
        memcpy(alone[p], got[p], (size_t)n[p] * vocab * sizeof(float));
        cv_backend_destroy(bk);
    }

    /* (b) both prompts in the same steps: chunks and single tokens mixed. */
    cv_backend *bk = make_backend(f, level);
    runner r;
    assert_int_equal(runner_init(&r, &runner_cpu_ops, bk, BLOCK_SIZE, 2, &err), 0);
    for (int p = 0; p < 2; p++) {
        r.seqs[p].ids = ids[p];
        r.seqs[p].n_ids = n[p];
    }
    runner_feed_mixed(&r, vocab, got);
    for (int p = 0; p < 2; p++) {
        const json_t *rows = json_object_get(json_array_get(prompts, p), key);
        double all = hf_rel_err(got[p], rows, 0, n[p], vocab);
        print_message("%s %s prompt %d mixed steps: rel err %.2e\n", name,
                      cpu_kernels_get(level)->name, p, all);
        assert_true(all <= tol);
        assert_memory_equal(got[p], alone[p], (size_t)n[p] * vocab * sizeof(float));
        free(got[p]);
        free(alone[p]);
    }
    cv_backend_destroy(bk);
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
        runner_check_greedy(&runner_cpu_ops, bk, BLOCK_SIZE, json_object_get(g, "input_ids"),
                            json_object_get(g, "output_ids"), f.cfg->vocab_size);
        cv_backend_destroy(bk);
    }
    hf_fixture_free(&f);
}

/* The fixture's reference greedy continuations (n_cases entries of
 * input_ids / output_ids), each through a fresh CPU backend's runner. */
static void check_greedy_cases(const hf_fixture *f, const json_t *cases, size_t n_cases)
{
    assert_int_equal(json_array_size(cases), n_cases);
    cv_error err = {.msg = ""};
    cv_backend *bk = cv_backend_cpu_create(f->model, 2, &err);
    assert_non_null(bk);
    for (size_t i = 0; i < n_cases; i++) {
        const json_t *c = json_array_get(cases, i);
        runner_check_greedy(&runner_cpu_ops, bk, BLOCK_SIZE, json_object_get(c, "input_ids"),
                            json_object_get(c, "output_ids"), f->cfg->vocab_size);
    }
    cv_backend_destroy(bk);
}

/* stories260K from ../shared: HF's greedy ids for BOS alone (256 tokens, the
 * llama2.c sample) and two prompts (64 tokens each). */
static void test_stories260K_greedy(void **state)
{
    (void)state;
    if (!cv_test_have_shared("models/stories260K")) skip();
    hf_fixture f;
    hf_fixture_load_stories(&f);
    check_greedy_cases(&f, json_object_get(f.ref, "cases"), 3);
    hf_fixture_free(&f);
}

/* opt_seed (facebook/opt-125m's layout at a tiny size: f16
 * pytorch_model.bin with "decoder.*" names, GPT-2's vocabulary): HF's greedy
 * ids, computed in fp32 from the f16 weights, for its two prompts. */
static void test_opt_seed_greedy(void **state)
{
    (void)state;
    hf_fixture f;
    hf_fixture_load(&f, "opt_seed");
    assert_string_equal(f.cfg->architecture, "OPTForCausalLM");
    check_greedy_cases(&f, json_object_get(f.ref, "greedy"), 2);
    hf_fixture_free(&f);
}

/* The torch.save checkpoints (opt-125m's and gpt2's key names), against
 * the references of their safetensors twins. */
#define BIN_FIXTURES(X) X("opt_bin_f32") X("gpt2_bin_sharded")

/* One cmocka test per fixture, named after it. */
#define FIXTURE(n) {.name = n, .test_func = test_fixture, .initial_state = (void *)n},

int main(void)
{
    const struct CMUnitTest tests[] = {
        HF_FIXTURES(FIXTURE) BIN_FIXTURES(FIXTURE) cmocka_unit_test(test_opt_seed_greedy),
        cmocka_unit_test(test_stories260K_greedy),
    };
    return cv_test_exit(cmocka_run_group_tests(tests, NULL, NULL));
}

/* LoRA through the engine on the CPU: each adapter's greedy output equals
 * the merged-weights model's and differs from the base model's; a mix of
 * three adapters and base requests in flight together, with max_loras 2
 * and max_cpu_loras 2 (slots and host copies evicted and reloaded), gives
 * every request exactly its output alone; a prompt cached for the base
 * model is not reused for an adapter; and the lora_name refusals carry
 * vLLM's messages. Those need ../shared's stories260K tokenizer (the
 * fixture models carry none); the step-time adapter failure runs on the
 * shipped model and the metric labels need no model. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../common/shared_data.h"
#include "../engine/engine_test_util.h"
#include "cvllm/engine.h"
#include "engine/engine_state.h"
#include "lora/lora.h"
#include "lora_fixture.h"

static char tmp[4096], stories[4096];

static const lora_spec specs[3] = {
    {.rank = 4, .alpha = 8, .targets = 1u << CV_LORA_Q | 1u << CV_LORA_V, .seed = 11},
    {.rank = 8, .alpha = 4, .rslora = true, .targets = 0x7f, .seed = 12},
    {.rank = 2,
     .alpha = 4,
     .targets = 1u << CV_LORA_O | 1u << CV_LORA_GATE | 1u << CV_LORA_UP | 1u << CV_LORA_DOWN,
     .seed = 13},
};
static const char *const names[3] = {"qv", "all", "mlp"};

/* 19 tokens: with block_size 4 the prompt fills four cacheable blocks. */
static const int32_t prompt[] = {1, 239, 179, 14, 112, 17, 149, 33,  90, 201,
                                 7, 64,  5,   88, 120, 45, 9,   230, 71};
enum { N_PROMPT = sizeof prompt / sizeof prompt[0], N_OUT = 24 };

static cv_engine *make_engine(const char *model, bool lora, int max_loras, int max_cpu_loras)
{
    static char paths[3][4200];
    static const char *path_ptrs[3];
    cv_engine_args a;
    test_args(&a, model);
    snprintf(a.tokenizer, sizeof a.tokenizer, "%s", stories);
    a.block_size = 4;
    a.enable_lora = lora;
    a.max_loras = max_loras;
    a.max_cpu_loras = max_cpu_loras;
    for (int i = 0; i < 3; i++) {
        snprintf(paths[i], sizeof paths[i], "%s/%s", tmp, names[i]);
        path_ptrs[i] = paths[i];
    }
    a.n_lora_modules = 3;
    a.lora_names = names;
    a.lora_paths = path_ptrs;
    return test_engine(&a);
}

static void params(cv_sampling_params *p, const char *lora)
{
    cv_sampling_params_default(p);
    p->temperature = 0;
    p->max_tokens = N_OUT;
    p->ignore_eos = true;
    snprintf(p->lora_name, sizeof p->lora_name, "%s", lora ? lora : "");
}

static void greedy(cv_engine *e, const char *lora, int32_t *out)
{
    cv_sampling_params p;
    params(&p, lora);
    req_result r;
    run_one(e, &p, prompt, N_PROMPT, false, &r);
    assert_null(r.error);
    assert_int_equal(r.seqs[0].n_ids, N_OUT);
    memcpy(out, r.seqs[0].ids, N_OUT * sizeof *out);
    result_free(&r);
}

static void check_model(const char *fixture)
{
    if (!cv_test_have_shared("models/stories260K")) skip();
    char model[4096];
    lf_model_path(model, sizeof model, fixture);
    int32_t want[4][N_OUT]; /* merged-weights greedy of each adapter; [3]: base */
    for (int i = 0; i < 3; i++) {
        char dir[4200], merged[4200];
        snprintf(dir, sizeof dir, "%s/%s", tmp, names[i]);
        snprintf(merged, sizeof merged, "%s/merged", tmp);
        lf_write_adapter(model, dir, &specs[i], NULL);
        lf_write_merged(model, &specs[i], merged);
        cv_engine *m = make_engine(merged, false, 1, 0);
        greedy(m, NULL, want[i]);
        cv_engine_shutdown(m, false);
        lf_rmtree(merged);
    }
    cv_engine *e = make_engine(model, true, 2, 2);
    /* The base model first: its prompt blocks are in the prefix cache
     * when the adapters run the same prompt. */
    greedy(e, NULL, want[3]);
    for (int i = 0; i < 3; i++) {
        int32_t got[N_OUT];
        greedy(e, names[i], got);
        assert_memory_equal(got, want[i], sizeof got);
        assert_memory_not_equal(got, want[3], sizeof got);
    }
    /* All three adapters and the base model, three requests each, in one
     * queue: at most two adapters run at once, and with max_cpu_loras 2
     * host copies are evicted and read again. */
    cv_output_queue *q = cv_output_queue_create();
    req_result res[12];
    memset(res, 0, sizeof res);
    for (int k = 0; k < 12; k++) {
        cv_sampling_params p;
        params(&p, k % 4 == 3 ? NULL : names[k % 4]);
        submit(e, q, &p, prompt, N_PROMPT, NULL, k % 2 == 0, k);
    }
    collect(q, res, 12);
    for (int k = 0; k < 12; k++) {
        assert_null(res[k].error);
        assert_int_equal(res[k].seqs[0].n_ids, N_OUT);
        assert_memory_equal(res[k].seqs[0].ids, want[k % 4], N_OUT * sizeof(int32_t));
        result_free(&res[k]);
    }
    cv_output_queue_destroy(q);
    cv_engine_stats st;
    cv_engine_get_stats(e, &st);
    assert_int_equal(st.max_lora, 2);
    assert_string_equal(st.running_lora_adapters, "");
    assert_string_equal(st.waiting_lora_adapters, "");
    assert_true(cv_engine_is_healthy(e));
    cv_engine_shutdown(e, false);
}

static void test_llama(void **state)
{
    (void)state;
    check_model("llama_f32");
}

static void test_qwen2(void **state)
{
    (void)state;
    check_model("qwen2_f32");
}

static void expect_refusal(cv_engine *e, const char *lora, const char *want)
{
    cv_sampling_params p;
    params(&p, lora);
    cv_output_queue *q = cv_output_queue_create();
    cv_request_desc d = {.prompt_ids = prompt, .n_prompt_ids = N_PROMPT, .params = &p, .sink = q};
    cv_error err = {0};
    assert_int_equal(cv_engine_add_request(e, &d, &err), 0);
    assert_int_equal(err.cls, CV_ERR_INVALID);
    assert_string_equal(err.msg, want);
    cv_output_queue_destroy(q);
}

static void test_refusals(void **state)
{
    (void)state;
    if (!cv_test_have_shared("models/stories260K")) skip();
    char model[4096], path[4300], want[9000];
    lf_model_path(model, sizeof model, "llama_f32");
    cv_engine *e = make_engine(model, false, 1, 0);
    expect_refusal(e, "qv", "LoRA feature is not enabled.");
    cv_engine_shutdown(e, false);
    /* "qv" and "all" are valid adapters; "mlp" asks for DoRA. */
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", tmp, names[i]);
        lf_write_adapter(model, path, &specs[i], i == 2 ? "\"use_dora\": true" : NULL);
    }
    e = make_engine(model, true, 1, 0);
    assert_string_equal(cv_engine_lora_name(e, 2), "mlp");
    assert_null(cv_engine_lora_name(e, 3));
    expect_refusal(e, "sql",
                   "LoRA sql is not supported, we currently support ['qv', 'all', 'mlp']");
    snprintf(path, sizeof path, "%s/mlp", tmp);
    snprintf(want, sizeof want,
             "LoRA mlp: %s/adapter_config.json: use_dora: DoRA adapters are not supported", path);
    expect_refusal(e, "mlp", want);
    /* max_lora_rank 16 by default; "all" has rank 8. With 4 it is refused. */
    cv_engine_shutdown(e, false);
    cv_engine_args a;
    test_args(&a, model);
    snprintf(a.tokenizer, sizeof a.tokenizer, "%s", stories);
    a.enable_lora = true;
    a.max_loras = 2;
    a.max_cpu_loras = 1;
    cv_error err = {0};
    assert_null(cv_engine_create(&a, &err));
    assert_string_equal(err.msg, "max_cpu_loras (1) must be >= max_loras (2)");
    a.max_loras = 0;
    assert_null(cv_engine_create(&a, &err));
    assert_string_equal(err.msg, "engine argument 'max_loras' must be in [1, 64], got 0");
}

/* An adapter whose files disappear after its request was accepted, and
 * that the host LRU dropped meanwhile, fails that request when it is
 * scheduled (the reason in its error); the other requests run and the
 * engine stays healthy. R0 (adapter c) keeps the single slot (max_loras 1)
 * busy, so R1 (a) and R2 (b) wait while R2's check evicts a from host
 * memory (max_cpu_loras 1) and a's files go; R0 is then aborted. That order
 * holds when R0 was still running at the abort, which the test checks. */
static void test_adapter_gone(void **state)
{
    (void)state;
    char kjv[4096], dirs[3][4200];
    const char *src = getenv("CVLLM_SOURCE_DIR");
    snprintf(kjv, sizeof kjv, "%s/samples/models/cvllm-kjv-4m", src && *src ? src : ".");
    static const char *const n[3] = {"a", "b", "c"};
    const char *p[3];
    const lora_spec small = {.rank = 4, .alpha = 1, .targets = 1u << CV_LORA_Q | 1u << CV_LORA_V};
    for (int i = 0; i < 3; i++) {
        snprintf(dirs[i], sizeof dirs[i], "%s/gone_%s", tmp, n[i]);
        lf_write_adapter(kjv, dirs[i], &small, NULL);
        p[i] = dirs[i];
    }
    cv_engine_args a;
    test_args(&a, kjv);
    a.enable_lora = true;
    a.max_loras = 1;
    a.max_cpu_loras = 1;
    a.n_lora_modules = 3;
    a.lora_names = n;
    a.lora_paths = p;
    cv_engine *e = test_engine(&a);
    cv_output_queue *q = cv_output_queue_create();
    req_result res[3];
    memset(res, 0, sizeof res);
    static const int32_t ids[3] = {1, 5, 9};
    cv_sampling_params sp;
    params(&sp, "c");
    sp.max_tokens = 400;
    const uint64_t r0 = submit(e, q, &sp, ids, 3, NULL, true, 0);
    while (res[0].n_outputs == 0)
        collect_next(q, res);
    params(&sp, "a");
    sp.max_tokens = 8;
    submit(e, q, &sp, ids, 3, NULL, false, 1);
    params(&sp, "b");
    sp.max_tokens = 8;
    submit(e, q, &sp, ids, 3, NULL, false, 2);
    lf_rmtree(dirs[0]);
    cv_engine_abort(e, r0);
    collect(q, res, 3);
    if (res[0].seqs[0].finish != CV_FINISH_ABORT) {
        printf("SKIP: request 0 finished before it was aborted (the machine outran the test)\n");
        skip();
    }
    char want[9000];
    snprintf(want, sizeof want,
             "LoRA a: %s/adapter_config.json: unable to open %s/adapter_config.json: No such file "
             "or directory",
             dirs[0], dirs[0]);
    assert_non_null(res[1].error);
    assert_string_equal(res[1].error, want);
    assert_null(res[2].error);
    assert_int_equal(res[2].seqs[0].n_ids, 8);
    assert_true(cv_engine_is_healthy(e));
    for (int i = 0; i < 3; i++)
        result_free(&res[i]);
    cv_output_queue_destroy(q);
    cv_engine_shutdown(e, false);
}

/* The label values of vllm:lora_requests_info: the distinct adapters of a
 * queue in queue order, comma-separated, base sequences left out, and a
 * name that would overflow the buffer left out whole. */
static void test_lora_names_label(void **state)
{
    (void)state;
    char model[4096];
    lf_model_path(model, sizeof model, "llama_f32");
    cv_model *m = cv_model_load(model, &(cv_error){0});
    assert_non_null(m);
    const char *n[3] = {"alpha", "beta", "gamma"}, *p[3] = {"/a", "/b", "/c"};
    cv_engine e;
    memset(&e, 0, sizeof e);
    e.lora = cv_lora_registry_create(cv_model_get_config(m), n, p, 3, 16, 1, &(cv_error){0});
    assert_non_null(e.lora);
    static const int ids[5] = {2, 0, 1, 2, 3};
    cv_seq seqs[5];
    cv_seq *items[5];
    for (int i = 0; i < 5; i++) {
        memset(&seqs[i], 0, sizeof seqs[i]);
        seqs[i].lora_id = ids[i];
        items[i] = &seqs[i];
    }
    seq_list list = {items, 5, 5};
    char buf[64];
    engine_lora_names(&e, &list, buf, sizeof buf);
    assert_string_equal(buf, "beta,alpha,gamma");
    engine_lora_names(&e, &list, buf, 12);
    assert_string_equal(buf, "beta,alpha");
    list.n = 0;
    engine_lora_names(&e, &list, buf, sizeof buf);
    assert_string_equal(buf, "");
    cv_lora_registry_destroy(e.lora);
    cv_model_free(m);
}

static int setup(void **state)
{
    (void)state;
    lf_mkdtemp(tmp, sizeof tmp);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    lf_rmtree(tmp);
    return 0;
}

int main(void)
{
    shared_path(stories, sizeof stories, "models/stories260K");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refusals),     cmocka_unit_test(test_lora_names_label),
        cmocka_unit_test(test_adapter_gone), cmocka_unit_test(test_llama),
        cmocka_unit_test(test_qwen2),
    };
    return cv_test_exit(cmocka_run_group_tests(tests, setup, teardown));
}

/* cvllm's CPU backend with LoRA adapters against HF transformers: the
 * fixtures tests/fixtures/lora/<model>/ that make_lora_fixtures.py writes on
 * the GPU machine (three PEFT adapters per model, reference logits of HF on
 * the merged weights W + scale B A). Every position of every prompt within
 * 1e-4 (max |ours - HF| / max |HF|, fp32) for each adapter alone, and one
 * batch mixing the three adapters with base sequences gives each sequence
 * exactly its rows alone. Through the engine, every adapter's greedy
 * continuation, requested together with the others and the base model,
 * is HF's (needs ../shared's stories260K tokenizer; the fixture models have
 * none). A checkout without those fixtures skips. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>
#include <jansson.h>

#include "../common/hf_fixture.h"
#include "../common/shared_data.h"
#include "../engine/engine_test_util.h"
#include "backend/backend.h"
#include "cvllm/engine.h"
#include "lora/lora.h"
#include "model/model.h"

enum { MAX_TOK = 64, BLOCK = 16, MAX_SEQS = 8 };

typedef struct seq_in {
    int32_t ids[MAX_TOK];
    int n;
    int slot; /* -1: base */
} seq_in;

/* One prefill of seqs; every position's logits into out (sum n, vocab). */
static void prefill(cv_backend *bk, const seq_in *seqs, int n_seqs, float *out)
{
    static int32_t tokens[MAX_SEQS * MAX_TOK], pos[MAX_SEQS * MAX_TOK], idx[MAX_SEQS * MAX_TOK];
    static int64_t slots[MAX_SEQS * MAX_TOK];
    int32_t qs[MAX_SEQS + 1], lens[MAX_SEQS], tables[MAX_SEQS * (MAX_TOK / BLOCK)], lora[MAX_SEQS];
    const int mb = MAX_TOK / BLOCK;
    int t = 0;
    for (int s = 0; s < n_seqs; s++) {
        qs[s] = t;
        lens[s] = seqs[s].n;
        lora[s] = seqs[s].slot;
        for (int b = 0; b < mb; b++)
            tables[s * mb + b] = s * mb + b;
        for (int j = 0; j < seqs[s].n; j++, t++) {
            tokens[t] = seqs[s].ids[j];
            pos[t] = j;
            slots[t] = (int64_t)(s * mb + j / BLOCK) * BLOCK + j % BLOCK;
            idx[t] = t;
        }
    }
    qs[n_seqs] = t;
    const cv_batch b = {.n_tokens = t,
                        .token_ids = tokens,
                        .positions = pos,
                        .slot_mapping = slots,
                        .n_seqs = n_seqs,
                        .query_start = qs,
                        .seq_lens = lens,
                        .block_tables = tables,
                        .max_blocks_per_seq = mb,
                        .n_logits = t,
                        .logits_indices = idx,
                        .lora_slots = lora};
    cv_error err = {0};
    if (cv_backend_forward(bk, &b, out, &err) < 0) fail_msg("%s", err.msg);
}

/* The greedy continuations of reference.json (base and every adapter),
 * all requested at once from one engine serving the three adapters. */
static void check_greedy(const char *root, const char *model_name, json_t *ref)
{
    if (!cv_test_have_shared("models/stories260K")) return;
    char model[4096], stories[4096];
    const char *src = getenv("CVLLM_SOURCE_DIR");
    snprintf(model, sizeof model, "%s/tests/fixtures/models/%s", src && *src ? src : ".",
             model_name);
    shared_path(stories, sizeof stories, "models/stories260K");
    json_t *adapters = json_object_get(ref, "adapters");
    static char paths[3][4400];
    const char *names[3], *path_ptrs[3];
    json_t *greedy[4];
    int k = 0;
    const char *name;
    json_t *a;
    json_object_foreach(adapters, name, a)
    {
        names[k] = name;
        snprintf(paths[k], sizeof paths[k], "%s/%s", root, name);
        path_ptrs[k] = paths[k];
        greedy[k++] = json_object_get(a, "greedy");
    }
    greedy[3] = json_object_get(json_object_get(ref, "base"), "greedy");
    cv_engine_args args;
    test_args(&args, model);
    snprintf(args.tokenizer, sizeof args.tokenizer, "%s", stories);
    args.enable_lora = true;
    args.max_loras = 3;
    args.n_lora_modules = 3;
    args.lora_names = names;
    args.lora_paths = path_ptrs;
    cv_engine *e = test_engine(&args);
    cv_output_queue *q = cv_output_queue_create();
    req_result res[4];
    memset(res, 0, sizeof res);
    int32_t want[4][64];
    int n_want[4];
    for (int i = 0; i < 4; i++) {
        int32_t ids[MAX_TOK];
        int n = hf_ids_from_json(json_object_get(greedy[i], "input_ids"), ids, MAX_TOK);
        n_want[i] = hf_ids_from_json(json_object_get(greedy[i], "output_ids"), want[i], 64);
        cv_sampling_params p;
        cv_sampling_params_default(&p);
        p.temperature = 0;
        p.max_tokens = n_want[i];
        p.ignore_eos = true;
        if (i < 3) snprintf(p.lora_name, sizeof p.lora_name, "%s", names[i]);
        submit(e, q, &p, ids, n, NULL, false, i);
    }
    collect(q, res, 4);
    for (int i = 0; i < 4; i++) {
        assert_null(res[i].error);
        assert_int_equal(res[i].seqs[0].n_ids, n_want[i]);
        assert_memory_equal(res[i].seqs[0].ids, want[i], (size_t)n_want[i] * sizeof(int32_t));
        result_free(&res[i]);
    }
    cv_output_queue_destroy(q);
    cv_engine_shutdown(e, false);
}

static void check(const char *model_name)
{
    const char *src = getenv("CVLLM_SOURCE_DIR");
    char root[4096], path[4300];
    snprintf(root, sizeof root, "%s/tests/fixtures/lora/%s", src && *src ? src : ".", model_name);
    snprintf(path, sizeof path, "%s/reference.json", root);
    struct stat st;
    if (stat(path, &st) != 0) {
        printf("SKIP: %s not made yet (tests/fixtures/lora/make_lora_fixtures.py)\n", path);
        skip();
    }
    json_error_t je;
    json_t *ref = json_load_file(path, 0, &je);
    if (!ref) fail_msg("%s: %s", path, je.text);
    hf_fixture f;
    hf_fixture_load(&f, model_name);
    const int V = f.cfg->vocab_size;
    cv_error err = {0};
    cv_backend *bk = cv_backend_cpu_create(f.model, 2, &err);
    if (!bk || cv_backend_kv_alloc(bk, MAX_SEQS * (MAX_TOK / BLOCK), BLOCK, &err) < 0 ||
        cv_backend_lora_init(bk, 3, 16, &err) < 0)
        fail_msg("%s", err.msg);
    json_t *adapters = json_object_get(ref, "adapters");
    assert_int_equal(json_object_size(adapters), 3);
    cv_lora_adapter *ad[3] = {0};
    seq_in seqs[MAX_SEQS];
    float *alone[MAX_SEQS];
    int n_seqs = 0, k = 0;
    const char *name;
    json_t *a;
    json_object_foreach(adapters, name, a)
    {
        char dir[4400];
        snprintf(dir, sizeof dir, "%s/%s", root, name);
        if (cv_lora_adapter_load(dir, f.cfg, 16, &ad[k], &err) < 0) fail_msg("%s", err.msg);
        assert_int_equal(cv_backend_lora_load(bk, k, ad[k], &err), 0);
        json_t *prompts = json_object_get(a, "prompts");
        for (size_t p = 0; p < json_array_size(prompts); p++) {
            json_t *pr = json_array_get(prompts, p);
            seq_in *s = &seqs[n_seqs];
            s->n = hf_ids_from_json(json_object_get(pr, "input_ids"), s->ids, MAX_TOK);
            s->slot = k;
            alone[n_seqs] = malloc((size_t)s->n * V * sizeof(float));
            prefill(bk, s, 1, alone[n_seqs]);
            const double e = hf_rel_err(alone[n_seqs], json_object_get(pr, "logits"), 0, s->n, V);
            printf("%s/%s prompt %zu (%d tokens): rel err %.3g\n", model_name, name, p, s->n, e);
            if (!(e <= 1e-4))
                fail_msg("%s/%s prompt %zu: rel err %g > 1e-4", model_name, name, p, e);
            n_seqs++;
        }
        k++;
    }
    /* The base model's first prompt joins the mixed batch. */
    json_t *base = json_array_get(json_object_get(json_object_get(ref, "base"), "prompts"), 0);
    seq_in *s = &seqs[n_seqs];
    s->n = hf_ids_from_json(json_object_get(base, "input_ids"), s->ids, MAX_TOK);
    s->slot = -1;
    alone[n_seqs] = malloc((size_t)s->n * V * sizeof(float));
    prefill(bk, s, 1, alone[n_seqs]);
    assert_true(hf_rel_err(alone[n_seqs], json_object_get(base, "logits"), 0, s->n, V) <= 1e-4);
    n_seqs++;
    int total = 0;
    for (int i = 0; i < n_seqs; i++)
        total += seqs[i].n;
    float *mixed = malloc((size_t)total * V * sizeof(float));
    prefill(bk, seqs, n_seqs, mixed);
    for (int i = 0, row = 0; i < n_seqs; row += seqs[i].n, i++) {
        assert_memory_equal(mixed + (size_t)row * V, alone[i],
                            (size_t)seqs[i].n * V * sizeof(float));
        free(alone[i]);
    }
    free(mixed);
    for (int i = 0; i < 3; i++)
        cv_lora_adapter_free(ad[i]);
    cv_backend_destroy(bk);
    hf_fixture_free(&f);
    check_greedy(root, model_name, ref);
    json_decref(ref);
}

static void test_llama(void **state)
{
    (void)state;
    check("llama_f32");
}

static void test_qwen2(void **state)
{
    (void)state;
    check("qwen2_f32");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama),
        cmocka_unit_test(test_qwen2),
    };
    return cv_test_exit(cmocka_run_group_tests(tests, NULL, NULL));
}

/* The LoRA fixture checks on any backend (lora_hf_check.h). */
#include <math.h>
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
#include "cvllm/engine.h"
#include "lora/lora.h"
#include "lora_hf_check.h"

enum { MAX_TOK = 64, BLOCK = 16, MAX_SEQS = 8 };

typedef struct seq_in {
    int32_t ids[MAX_TOK];
    int n;
    int slot; /* -1: base */
} seq_in;

/* One prefill of seqs; every position's logits into out (sum n, vocab). */
static void prefill(const lora_hf_target *t, void *bk, const seq_in *seqs, int n_seqs, float *out)
{
    static int32_t tokens[MAX_SEQS * MAX_TOK], pos[MAX_SEQS * MAX_TOK], idx[MAX_SEQS * MAX_TOK];
    static int64_t slots[MAX_SEQS * MAX_TOK];
    int32_t qs[MAX_SEQS + 1], lens[MAX_SEQS], tables[MAX_SEQS * (MAX_TOK / BLOCK)], lora[MAX_SEQS];
    const int mb = MAX_TOK / BLOCK;
    int n = 0;
    for (int s = 0; s < n_seqs; s++) {
        qs[s] = n;
        lens[s] = seqs[s].n;
        lora[s] = seqs[s].slot;
        for (int b = 0; b < mb; b++)
            tables[s * mb + b] = s * mb + b;
        for (int j = 0; j < seqs[s].n; j++, n++) {
            tokens[n] = seqs[s].ids[j];
            pos[n] = j;
            slots[n] = (int64_t)(s * mb + j / BLOCK) * BLOCK + j % BLOCK;
            idx[n] = n;
        }
    }
    qs[n_seqs] = n;
    const cv_batch b = {.n_tokens = n,
                        .token_ids = tokens,
                        .positions = pos,
                        .slot_mapping = slots,
                        .n_seqs = n_seqs,
                        .query_start = qs,
                        .seq_lens = lens,
                        .block_tables = tables,
                        .max_blocks_per_seq = mb,
                        .n_logits = n,
                        .logits_indices = idx,
                        .lora_slots = lora};
    cv_error err = {0};
    if (t->ops->forward(bk, &b, out, NULL, &err) < 0) fail_msg("%s", err.msg);
}

/* got against want (n_rows, vocab): bitwise when tol is 0, else
 * max |got - want| / max |want| <= tol; fails naming the first value off. */
static void expect_rows(const char *what, const float *got, const float *want, int n_rows,
                        int vocab, double tol)
{
    const size_t n = (size_t)n_rows * vocab;
    double scale = 0.0, worst = 0.0;
    for (size_t i = 0; i < n; i++)
        scale = fabs(want[i]) > scale ? fabs(want[i]) : scale;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)got[i] - want[i]);
        worst = d > worst ? d : worst;
        if (tol == 0.0 ? got[i] != want[i] : !(d <= tol * scale))
            fail_msg("%s: row %zu token %zu: %.9g, alone %.9g (tolerance %g of %g)", what,
                     i / vocab, i % vocab, got[i], want[i], tol, scale);
    }
    printf("%s: max |mixed - alone| %.3g (row scale %.3g)\n", what, worst, scale);
}

/* The greedy continuations of reference.json (base and every adapter),
 * all requested at once from one engine serving the three adapters. */
static void check_greedy(const lora_hf_target *t, const char *root, const char *model_name,
                         json_t *ref)
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
    snprintf(args.device, sizeof args.device, "%s", t->device);
    args.enable_lora = true;
    args.max_loras = t->engine_max_loras;
    args.max_cpu_loras = 3;
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
        const char *who = i < 3 ? names[i] : "base";
        if (res[i].error)
            fail_msg("%s/%s greedy on %s: %s", model_name, who, t->device, res[i].error);
        assert_int_equal(res[i].seqs[0].n_ids, n_want[i]);
        for (int j = 0; j < n_want[i]; j++)
            if (res[i].seqs[0].ids[j] != want[i][j])
                fail_msg("%s/%s greedy on %s (%d slots): token %d is %d, HF %d", model_name, who,
                         t->device, t->engine_max_loras, j, res[i].seqs[0].ids[j], want[i][j]);
        result_free(&res[i]);
    }
    printf("%s: base and 3 adapters greedy on %s with %d slots: HF's %d tokens each\n", model_name,
           t->device, t->engine_max_loras, n_want[0]);
    cv_output_queue_destroy(q);
    cv_engine_shutdown(e, false);
}

/* seq_in from a reference prompt; its logits alone into *alone, within
 * t->tol of HF. */
static void run_alone(const lora_hf_target *t, void *bk, const char *what, json_t *pr, int slot,
                      int vocab, seq_in *s, float **alone)
{
    s->n = hf_ids_from_json(json_object_get(pr, "input_ids"), s->ids, MAX_TOK);
    s->slot = slot;
    *alone = malloc((size_t)s->n * vocab * sizeof(float));
    assert_non_null(*alone);
    prefill(t, bk, s, 1, *alone);
    const double e = hf_rel_err(*alone, json_object_get(pr, "logits"), 0, s->n, vocab);
    printf("%s (%d tokens) on %s: rel err %.3g\n", what, s->n, t->device, e);
    if (!(e <= t->tol)) fail_msg("%s on %s: rel err %g > %g", what, t->device, e, t->tol);
}

void lora_hf_check(const char *model_name, const lora_hf_target *t)
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
    void *bk = t->create(f.model, &err);
    if (!bk || t->ops->kv_alloc(bk, MAX_SEQS * (MAX_TOK / BLOCK), BLOCK, &err) < 0 ||
        t->ops->lora_init(bk, 3, 16, &err) < 0)
        fail_msg("%s", err.msg);
    json_t *adapters = json_object_get(ref, "adapters");
    assert_int_equal(json_object_size(adapters), 3);
    cv_lora_adapter *ad[3] = {0};
    seq_in seqs[MAX_SEQS];
    float *alone[MAX_SEQS];
    char what[MAX_SEQS][160];
    int n_seqs = 0, k = 0, first[3], n_prompts[3];
    const char *name;
    json_t *a;
    json_object_foreach(adapters, name, a)
    {
        char dir[4400];
        snprintf(dir, sizeof dir, "%s/%s", root, name);
        if (cv_lora_adapter_load(dir, f.cfg, 16, &ad[k], &err) < 0) fail_msg("%s", err.msg);
        if (t->ops->lora_load(bk, k, ad[k], &err) < 0) fail_msg("%s", err.msg);
        json_t *prompts = json_object_get(a, "prompts");
        first[k] = n_seqs;
        n_prompts[k] = (int)json_array_size(prompts);
        assert_true(n_seqs + n_prompts[k] < MAX_SEQS); /* room for the base sequence */
        for (size_t p = 0; p < json_array_size(prompts); p++, n_seqs++) {
            snprintf(what[n_seqs], sizeof what[n_seqs], "%s/%s prompt %zu", model_name, name, p);
            run_alone(t, bk, what[n_seqs], json_array_get(prompts, p), k, V, &seqs[n_seqs],
                      &alone[n_seqs]);
        }
        k++;
    }
    /* The base model's first prompt joins the mixed batch. */
    json_t *base = json_array_get(json_object_get(json_object_get(ref, "base"), "prompts"), 0);
    snprintf(what[n_seqs], sizeof what[n_seqs], "%s/base prompt 0", model_name);
    run_alone(t, bk, what[n_seqs], base, -1, V, &seqs[n_seqs], &alone[n_seqs]);
    n_seqs++;
    /* Interleaved (adapter 0, 1, 2, base, 0, 1, 2): an adapter's tokens
     * are not contiguous in the batch. */
    int order[MAX_SEQS] = {0}, n_order = 0;
    for (int p = 0; n_order < n_seqs; p++) {
        for (int j = 0; j < 3; j++)
            if (p < n_prompts[j]) order[n_order++] = first[j] + p;
        if (p == 0) order[n_order++] = n_seqs - 1;
    }
    seq_in mixed_in[MAX_SEQS];
    int total = 0;
    for (int i = 0; i < n_seqs; i++) {
        mixed_in[i] = seqs[order[i]];
        total += seqs[i].n;
    }
    float *mixed = malloc((size_t)total * V * sizeof(float));
    assert_non_null(mixed);
    prefill(t, bk, mixed_in, n_seqs, mixed);
    for (int i = 0, row = 0; i < n_seqs; row += mixed_in[i].n, i++) {
        char label[200];
        snprintf(label, sizeof label, "%s in the mixed batch on %s", what[order[i]], t->device);
        expect_rows(label, mixed + (size_t)row * V, alone[order[i]], mixed_in[i].n, V,
                    t->mixed_tol);
    }
    for (int i = 0; i < n_seqs; i++)
        free(alone[i]);
    free(mixed);
    t->ops->destroy(bk);
    for (int i = 0; i < 3; i++)
        cv_lora_adapter_free(ad[i]);
    hf_fixture_free(&f);
    check_greedy(t, root, model_name, ref);
    json_decref(ref);
}

/* LoRA without the engine: PEFT adapter directories and their refusals,
 * the registry's host LRU, slot assignment, and the CPU backend applying
 * adapters per sequence: logits of every position equal those of the
 * merged-weights model (W + scale B A, made by lora_fixture.c) within
 * 1e-4, and a batch mixing adapters and the base model gives each sequence
 * exactly what it gets alone. Needs only tests/fixtures/models. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "backend/backend.h"
#include "lora/lora.h"
#include "lora_fixture.h"
#include "model/model.h"

static char tmp[4096];

static const lora_spec specs[3] = {
    {.rank = 4, .alpha = 8, .targets = 1u << CV_LORA_Q | 1u << CV_LORA_V, .seed = 1},
    {.rank = 8, .alpha = 4, .rslora = true, .targets = 0x7f, .seed = 2},
    {.rank = 2,
     .alpha = 4,
     .targets = 1u << CV_LORA_O | 1u << CV_LORA_GATE | 1u << CV_LORA_UP | 1u << CV_LORA_DOWN,
     .seed = 3},
};

static const int32_t prompt[] = {1, 239, 179, 14, 112, 17, 149, 33, 90, 201, 7, 64, 5};
enum { N_PROMPT = sizeof prompt / sizeof prompt[0], BLOCK = 16, MAX_SEQS = 8 };

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

/* ---- adapter_config.json and tensor refusals ---------------------------- */

static void expect_load_error(const char *extra, const char *want)
{
    char model[4096], dir[4200];
    lf_model_path(model, sizeof model, "llama_f32");
    snprintf(dir, sizeof dir, "%s/bad", tmp);
    lf_write_adapter(model, dir, &specs[0], extra);
    cv_model *m = cv_model_load(model, &(cv_error){0});
    assert_non_null(m);
    cv_lora_adapter *a = NULL;
    cv_error err = {0};
    assert_int_equal(cv_lora_adapter_load(dir, cv_model_get_config(m), 16, &a, &err), -1);
    assert_null(a);
    char full[9000];
    snprintf(full, sizeof full, want, dir);
    assert_string_equal(err.msg, full);
    cv_model_free(m);
    lf_rmtree(dir);
}

static void test_config_refusals(void **state)
{
    (void)state;
    expect_load_error("\"use_dora\": true",
                      "%s/adapter_config.json: use_dora: DoRA adapters are not supported");
    expect_load_error("\"modules_to_save\": [\"lm_head\"]",
                      "%s/adapter_config.json: modules_to_save: adapters that save whole modules "
                      "are not supported");
    expect_load_error("\"rank_pattern\": {\"q_proj\": 2}",
                      "%s/adapter_config.json: rank_pattern: per-module ranks are not supported");
    expect_load_error("\"layers_to_transform\": [0]",
                      "%s/adapter_config.json: layers_to_transform: adapters of some layers only "
                      "are not supported");
    expect_load_error("\"peft_type\": \"IA3\"",
                      "%s/adapter_config.json: peft_type: only LORA adapters are supported");
    expect_load_error("\"bias\": \"all\"",
                      "%s/adapter_config.json: bias: only \"none\" is supported");
    expect_load_error("\"r\": 0", "%s/adapter_config.json: r: expected a positive integer");
    expect_load_error("\"lora_alpha\": \"8\"",
                      "%s/adapter_config.json: lora_alpha: expected a number");
    expect_load_error("\"use_rslora\": 1",
                      "%s/adapter_config.json: use_rslora: expected true or false");
    expect_load_error("\"fan_in_fan_out\": \"yes\"",
                      "%s/adapter_config.json: fan_in_fan_out: expected true or false");
    /* fan_in_fan_out true only describes GPT-2's Conv1D base weights; the
     * adapter's A and B keep their shapes, so it loads. */
    char model[4096], dir[4200];
    lf_model_path(model, sizeof model, "llama_f32");
    snprintf(dir, sizeof dir, "%s/fifo", tmp);
    lf_write_adapter(model, dir, &specs[0], "\"fan_in_fan_out\": true");
    cv_model *m = cv_model_load(model, &(cv_error){0});
    cv_lora_adapter *a = NULL;
    cv_error err = {0};
    assert_int_equal(cv_lora_adapter_load(dir, cv_model_get_config(m), 16, &a, &err), 0);
    cv_lora_adapter_free(a);
    cv_model_free(m);
    lf_rmtree(dir);
}

static void test_rank_and_targets(void **state)
{
    (void)state;
    char model[4096], dir[4200];
    lf_model_path(model, sizeof model, "llama_f32");
    cv_model *m = cv_model_load(model, &(cv_error){0});
    assert_non_null(m);
    const cv_model_config *cfg = cv_model_get_config(m);
    cv_lora_adapter *a = NULL;
    cv_error err = {0};
    char want[9000];

    snprintf(dir, sizeof dir, "%s/r8", tmp);
    lf_write_adapter(model, dir, &specs[1], NULL);
    assert_int_equal(cv_lora_adapter_load(dir, cfg, 4, &a, &err), -1);
    snprintf(want, sizeof want,
             "%s/adapter_config.json: LoRA rank 8 is greater than max_lora_rank 4.", dir);
    assert_string_equal(err.msg, want);
    /* Within max_lora_rank it loads: rslora scale alpha / sqrt(r). */
    assert_int_equal(cv_lora_adapter_load(dir, cfg, 8, &a, &err), 0);
    assert_int_equal(a->rank, 8);
    assert_float_equal(a->scale, 4.0 / sqrt(8.0), 1e-6);
    for (int k = 0; k < CV_LORA_N_TARGETS; k++)
        assert_non_null(a->w[cfg->n_layers * CV_LORA_N_TARGETS - CV_LORA_N_TARGETS + k].a);
    cv_lora_adapter_free(a);

    /* target_modules naming the embedding, or a module cvllm has no LoRA for. */
    snprintf(dir, sizeof dir, "%s/emb", tmp);
    lf_write_adapter(model, dir, &specs[0], NULL);
    char path[4300];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    lf_write_text(path, "{\"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"q_proj\", "
                        "\"embed_tokens\"]}");
    assert_int_equal(cv_lora_adapter_load(dir, cfg, 16, &a, &err), -1);
    snprintf(want, sizeof want,
             "%s/adapter_config.json: target_modules: 'embed_tokens': embedding and lm_head "
             "adapters are not supported",
             dir);
    assert_string_equal(err.msg, want);
    lf_write_text(path, "{\"r\": 4, \"lora_alpha\": 8, \"target_modules\": \"q_proj|v_proj\"}");
    assert_int_equal(cv_lora_adapter_load(dir, cfg, 16, &a, &err), -1);
    snprintf(want, sizeof want,
             "%s/adapter_config.json: target_modules: a regular expression ('q_proj|v_proj') is "
             "not supported; give a list of module names or \"all-linear\"",
             dir);
    assert_string_equal(err.msg, want);
    lf_write_text(path, "{\"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"c_attn\"]}");
    assert_int_equal(cv_lora_adapter_load(dir, cfg, 16, &a, &err), -1);
    snprintf(want, sizeof want,
             "%s/adapter_config.json: target_modules: 'c_attn' is not a module cvllm applies "
             "LoRA to (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)",
             dir);
    assert_string_equal(err.msg, want);
    /* "all-linear" is accepted; r must match the tensors' shapes. */
    lf_write_text(path, "{\"r\": 2, \"lora_alpha\": 8, \"target_modules\": \"all-linear\"}");
    assert_int_equal(cv_lora_adapter_load(dir, cfg, 16, &a, &err), -1);
    snprintf(want, sizeof want,
             "%s/adapter_model.safetensors: tensor "
             "'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' has shape [4, "
             "64]; expected [2, 64] (r 2)",
             dir);
    assert_string_equal(err.msg, want);
    lf_rmtree(dir);

    /* An embedding adapter's tensors; a module without its lora_B. */
    snprintf(dir, sizeof dir, "%s/emb2", tmp);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    lf_write_text(path, "{\"r\": 1, \"lora_alpha\": 1, \"target_modules\": [\"q_proj\"]}");
    static const float one[64 * 256];
    cv_safetensors_entry e[1] = {
        {"base_model.model.model.embed_tokens.lora_embedding_A", {CV_DTYPE_F32, 2, {1, 256}, one}}};
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    assert_int_equal(cv_safetensors_write(path, e, 1, NULL, NULL, &err), 0);
    assert_int_equal(cv_lora_adapter_load(dir, cfg, 16, &a, &err), -1);
    snprintf(want, sizeof want,
             "%s: tensor 'base_model.model.model.embed_tokens.lora_embedding_A': embedding and "
             "lm_head adapters are not supported",
             path);
    assert_string_equal(err.msg, want);
    e[0] = (cv_safetensors_entry){"base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight",
                                  {CV_DTYPE_F32, 2, {1, 64}, one}};
    assert_int_equal(cv_safetensors_write(path, e, 1, NULL, NULL, &err), 0);
    assert_int_equal(cv_lora_adapter_load(dir, cfg, 16, &a, &err), -1);
    snprintf(want, sizeof want, "%s: layer 1 q_proj has lora_A but no lora_B", path);
    assert_string_equal(err.msg, want);
    unlink(path);
    assert_int_equal(cv_lora_adapter_load(dir, cfg, 16, &a, &err), -1);
    snprintf(want, sizeof want, "%s: no adapter_model.safetensors or adapter_model.bin", dir);
    assert_string_equal(err.msg, want);
    /* GPT-2 (fused c_attn, no gate) has none of the projections. */
    char gpt2[4096];
    lf_model_path(gpt2, sizeof gpt2, "gpt2_f32");
    cv_model *g = cv_model_load(gpt2, &(cv_error){0});
    assert_non_null(g);
    assert_int_equal(cv_lora_adapter_load(dir, cv_model_get_config(g), 16, &a, &err), -1);
    snprintf(want, sizeof want,
             "%s: LoRA adapters need a model with q/k/v/o and gate/up/down projections (Llama, "
             "Mistral, Qwen2, Qwen3); GPT2LMHeadModel has none",
             dir);
    assert_string_equal(err.msg, want);
    cv_model_free(g);
    lf_rmtree(dir);
    cv_model_free(m);
}

/* adapter_model.bin (torch.save zip, read through the model module's pickle
 * reader): tests/fixtures/lora/llama_f32_qv_r4_bin is specs[0]'s adapter
 * rewritten by make_bin_adapter.py; it loads to the same A and B. */
static void test_bin_adapter(void **state)
{
    (void)state;
    char model[4096], bin[4200], st[4200];
    lf_model_path(model, sizeof model, "llama_f32");
    const char *src = getenv("CVLLM_SOURCE_DIR");
    snprintf(bin, sizeof bin, "%s/tests/fixtures/lora/llama_f32_qv_r4_bin",
             src && *src ? src : ".");
    snprintf(st, sizeof st, "%s/st", tmp);
    lf_write_adapter(model, st, &specs[0], NULL);
    cv_model *m = cv_model_load(model, &(cv_error){0});
    assert_non_null(m);
    const cv_model_config *cfg = cv_model_get_config(m);
    cv_lora_adapter *a = NULL, *b = NULL;
    cv_error err = {0};
    if (cv_lora_adapter_load(bin, cfg, 16, &a, &err) < 0) fail_msg("%s", err.msg);
    if (cv_lora_adapter_load(st, cfg, 16, &b, &err) < 0) fail_msg("%s", err.msg);
    assert_int_equal(a->rank, 4);
    assert_float_equal(a->scale, 2.0, 0);
    int n_targeted = 0;
    for (int i = 0; i < cfg->n_layers * CV_LORA_N_TARGETS; i++) {
        const int k = i % CV_LORA_N_TARGETS;
        assert_true(!a->w[i].a == !b->w[i].a);
        if (!a->w[i].a) continue;
        n_targeted++;
        assert_memory_equal(a->w[i].a, b->w[i].a, (size_t)a->rank * a->in[k] * sizeof(float));
        assert_memory_equal(a->w[i].b, b->w[i].b, (size_t)a->out[k] * a->rank * sizeof(float));
    }
    assert_int_equal(n_targeted, 2 * cfg->n_layers); /* q_proj and v_proj of every layer */
    cv_lora_adapter_free(a);
    cv_lora_adapter_free(b);
    cv_model_free(m);
    lf_rmtree(st);
}

/* ---- registry and slots -------------------------------------------------- */

static void test_registry_lru_and_slots(void **state)
{
    (void)state;
    char model[4096], dirs[3][4200];
    lf_model_path(model, sizeof model, "llama_f32");
    const char *names[3] = {"a", "b", "c"}, *paths[3];
    for (int i = 0; i < 3; i++) {
        snprintf(dirs[i], sizeof dirs[i], "%s/reg%d", tmp, i);
        lf_write_adapter(model, dirs[i], &specs[i], NULL);
        paths[i] = dirs[i];
    }
    cv_model *m = cv_model_load(model, &(cv_error){0});
    cv_error err = {0};
    cv_lora_registry *r =
        cv_lora_registry_create(cv_model_get_config(m), names, paths, 3, 16, 2, &err);
    assert_non_null(r);
    assert_int_equal(cv_lora_registry_find(r, "b"), 2);
    assert_int_equal(cv_lora_registry_find(r, "zz"), 0);
    assert_int_equal(cv_lora_registry_loaded(r), 0); /* nothing read before first use */
    const cv_lora_adapter *a = cv_lora_registry_acquire(r, 1, &err);
    assert_non_null(a);
    assert_int_equal(a->rank, 4);
    const cv_lora_adapter *b = cv_lora_registry_acquire(r, 2, &err);
    assert_non_null(b);
    cv_lora_registry_release(r, 2);
    /* A third adapter with max_cpu_loras 2 evicts b (unheld), not a (held). */
    assert_non_null(cv_lora_registry_acquire(r, 3, &err));
    assert_int_equal(cv_lora_registry_loaded(r), 2);
    assert_ptr_equal(cv_lora_registry_acquire(r, 1, &err), a);
    cv_lora_registry_release(r, 1);
    cv_lora_registry_release(r, 1);
    cv_lora_registry_release(r, 3);
    cv_lora_registry_destroy(r);

    /* An adapter that fails to load names itself and its reason. */
    const char *bad_paths[1] = {"/nonexistent/adapter"};
    r = cv_lora_registry_create(cv_model_get_config(m), names, bad_paths, 1, 16, 2, &err);
    assert_null(cv_lora_registry_acquire(r, 1, &err));
    assert_string_equal(err.msg, "LoRA a: /nonexistent/adapter/adapter_config.json: unable to "
                                 "open /nonexistent/adapter/adapter_config.json: No such file or "
                                 "directory");
    cv_lora_registry_destroy(r);
    cv_model_free(m);

    cv_lora_slots s;
    assert_int_equal(cv_lora_slots_init(&s, 2), 0);
    int slot_of[3], load[2];
    assert_int_equal(cv_lora_slots_assign(&s, (int[]){5, 7}, 2, slot_of, load, &err), 0);
    assert_int_equal(slot_of[0], 0);
    assert_int_equal(slot_of[1], 1);
    assert_int_equal(load[0], 5);
    assert_int_equal(load[1], 7);
    /* 7 stays resident; 9 replaces 5, the slot this step does not need. */
    assert_int_equal(cv_lora_slots_assign(&s, (int[]){9, 7}, 2, slot_of, load, &err), 0);
    assert_int_equal(slot_of[0], 0);
    assert_int_equal(slot_of[1], 1);
    assert_int_equal(load[0], 9);
    assert_int_equal(load[1], 0);
    /* 5 again takes the least recently used slot: both were used last step,
     * then 7 alone, so 9's slot. */
    assert_int_equal(cv_lora_slots_assign(&s, (int[]){7}, 1, slot_of, load, &err), 0);
    assert_int_equal(cv_lora_slots_assign(&s, (int[]){5}, 1, slot_of, load, &err), 0);
    assert_int_equal(slot_of[0], 0);
    assert_int_equal(load[0], 5);
    assert_int_equal(cv_lora_slots_assign(&s, (int[]){1, 2, 3}, 3, slot_of, load, &err), -1);
    assert_string_equal(err.msg, "3 LoRA adapters in one step exceed max_loras 2");
    cv_lora_slots_fini(&s);
}

/* ---- the CPU backend ----------------------------------------------------- */

/* One prefill step of n_seqs sequences (each the first lens[i] tokens of
 * prompt), every position's logits into logits (sum lens, vocab). */
static void prefill(cv_backend *bk, int n_seqs, const int *lens, const int32_t *slots,
                    float *logits)
{
    int32_t tokens[MAX_SEQS * N_PROMPT], pos[MAX_SEQS * N_PROMPT], idx[MAX_SEQS * N_PROMPT];
    int64_t slot_map[MAX_SEQS * N_PROMPT];
    int32_t qs[MAX_SEQS + 1], seq_lens[MAX_SEQS], tables[MAX_SEQS];
    int t = 0;
    for (int s = 0; s < n_seqs; s++) {
        qs[s] = t;
        seq_lens[s] = lens[s];
        tables[s] = s; /* one block each: N_PROMPT <= BLOCK */
        for (int j = 0; j < lens[s]; j++, t++) {
            tokens[t] = prompt[j];
            pos[t] = j;
            slot_map[t] = (int64_t)s * BLOCK + j;
            idx[t] = t;
        }
    }
    qs[n_seqs] = t;
    const cv_batch b = {.n_tokens = t,
                        .token_ids = tokens,
                        .positions = pos,
                        .slot_mapping = slot_map,
                        .n_seqs = n_seqs,
                        .query_start = qs,
                        .seq_lens = seq_lens,
                        .block_tables = tables,
                        .max_blocks_per_seq = 1,
                        .n_logits = t,
                        .logits_indices = idx,
                        .lora_slots = slots};
    cv_error err = {0};
    if (cv_backend_forward(bk, &b, logits, &err) < 0) fail_msg("%s", err.msg);
}

static cv_backend *open_backend(const char *dir, cv_model **m, int n_threads)
{
    cv_error err = {0};
    *m = cv_model_load(dir, &err);
    if (!*m) fail_msg("%s", err.msg);
    cv_backend *bk = cv_backend_cpu_create(*m, n_threads, &err);
    if (!bk || cv_backend_kv_alloc(bk, MAX_SEQS, BLOCK, &err) < 0) fail_msg("%s", err.msg);
    return bk;
}

static void check_model(const char *name)
{
    char model[4096];
    lf_model_path(model, sizeof model, name);
    cv_model *m;
    cv_backend *bk = open_backend(model, &m, 2);
    const cv_model_config *cfg = cv_model_get_config(m);
    const int V = cfg->vocab_size;
    cv_error err = {0};
    assert_int_equal(cv_backend_lora_init(bk, 3, 8, &err), 0);
    cv_lora_adapter *ad[3];
    float *alone[4];
    const int lens[4] = {N_PROMPT, N_PROMPT - 3, N_PROMPT, 5};
    for (int i = 0; i < 3; i++) {
        char dir[4200], merged[4200];
        snprintf(dir, sizeof dir, "%s/%s_a%d", tmp, name, i);
        snprintf(merged, sizeof merged, "%s/%s_merged%d", tmp, name, i);
        lf_write_adapter(model, dir, &specs[i], NULL);
        lf_write_merged(model, &specs[i], merged);
        assert_int_equal(cv_lora_adapter_load(dir, cfg, 8, &ad[i], &err), 0);
        assert_int_equal(cv_backend_lora_load(bk, i, ad[i], &err), 0);
        /* The adapter alone against the merged weights, every position. */
        alone[i] = malloc((size_t)N_PROMPT * V * sizeof(float));
        prefill(bk, 1, &lens[i], (int32_t[]){i}, alone[i]);
        cv_model *mm;
        cv_backend *ref = open_backend(merged, &mm, 2);
        float *want = malloc((size_t)N_PROMPT * V * sizeof(float));
        prefill(ref, 1, &lens[i], NULL, want);
        /* The tolerance of the HF fixtures: max |ours - ref| / max |ref|. */
        double max_diff = 0, max_ref = 0;
        for (int j = 0; j < lens[i] * V; j++) {
            max_diff = fmax(max_diff, fabs((double)alone[i][j] - want[j]));
            max_ref = fmax(max_ref, fabs((double)want[j]));
        }
        printf("%s adapter %d: max |logit| %.3f, max diff to merged %.3g (rel %.3g)\n", name, i,
               max_ref, max_diff, max_diff / max_ref);
        if (!(max_diff / max_ref <= 1e-4))
            fail_msg("%s adapter %d: logits differ from the merged model's by %g (max |ref| %g)",
                     name, i, max_diff, max_ref);
        free(want);
        cv_backend_destroy(ref);
        cv_model_free(mm);
        lf_rmtree(merged);
        lf_rmtree(dir);
    }
    /* The base model alone: differs from every adapter. */
    alone[3] = malloc((size_t)N_PROMPT * V * sizeof(float));
    prefill(bk, 1, &lens[3], (int32_t[]){-1}, alone[3]);
    for (int i = 0; i < 3; i++) {
        double d = 0;
        for (int j = 0; j < lens[3] * V; j++)
            d = fmax(d, fabs((double)alone[i][j] - alone[3][j]));
        assert_true(d > 0.05);
    }
    /* One batch: all three adapters and the base model, twice over in
     * another order; each sequence's rows equal its run alone exactly. */
    static const int order[8] = {3, 0, 2, 1, 1, 3, 0, 2};
    int blens[8];
    int32_t bslots[8];
    int total = 0;
    for (int s = 0; s < 8; s++) {
        blens[s] = lens[order[s]];
        bslots[s] = order[s] == 3 ? -1 : order[s];
        total += blens[s];
    }
    float *mixed = malloc((size_t)total * V * sizeof(float));
    prefill(bk, 8, blens, bslots, mixed);
    for (int s = 0, row = 0; s < 8; row += blens[s], s++)
        assert_memory_equal(mixed + (size_t)row * V, alone[order[s]],
                            (size_t)blens[s] * V * sizeof(float));
    /* A bad slot is refused. */
    int32_t toks[1] = {1}, p0[1] = {0}, qs[2] = {0, 1}, sl[1] = {1}, tb[1] = {0}, li[1] = {0};
    int64_t sm[1] = {0};
    const cv_batch bad = {1, toks, p0, sm, 1, qs, sl, tb, 1, 1, li, (int32_t[]){5}};
    assert_int_equal(cv_backend_forward(bk, &bad, mixed, &err), -1);
    assert_string_equal(err.msg, "cv_backend_forward: lora_slots[0] = 5 is not a loaded slot");
    for (int i = 0; i < 4; i++)
        free(alone[i]);
    free(mixed);
    for (int i = 0; i < 3; i++)
        cv_lora_adapter_free(ad[i]);
    cv_backend_destroy(bk);
    cv_model_free(m);
}

static void test_backend_llama(void **state)
{
    (void)state;
    check_model("llama_f32");
}

static void test_backend_qwen2(void **state)
{
    (void)state;
    check_model("qwen2_f32");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_refusals), cmocka_unit_test(test_rank_and_targets),
        cmocka_unit_test(test_bin_adapter),     cmocka_unit_test(test_registry_lru_and_slots),
        cmocka_unit_test(test_backend_llama),   cmocka_unit_test(test_backend_qwen2),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

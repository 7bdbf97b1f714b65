/* The engine on real models: HF greedy references (stories260K and the
 * tiny fixture architectures), cvllm-generate's output, batch invariance
 * under batching, chunked prefill and preemption, prefix caching, seeded
 * sampling inside random batches. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "../common/shared_data.h"
#include "engine_test_util.h"
#include "tokenizer/tokenizer.h"

static char stories[4096];

static void test_cli_greedy_sample(void **state)
{
    (void)state;
    greedy_case c;
    load_stories_case(0, &c);
    const char *bin = getenv("CVLLM_BIN_DIR");
    char cmd[8192];
    snprintf(cmd, sizeof(cmd),
             "%s/cvllm-generate --model %s --prompt '' --max-tokens 256 --temperature 0 "
             "--threads 1 2>/dev/null",
             bin ? bin : "build/bin", stories);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char out[1024];
    size_t n = fread(out, 1, sizeof(out), p);
    assert_int_equal(pclose(p), 0);
    assert_true(n >= 400);
    assert_memory_equal(out, c.text, 400);
    assert_memory_equal(out, "Once upon a time, there was a little girl named Lily.", 53);
}

/* A device the engine does not know: the message names it, exit status 2. */
static void test_cli_bad_device(void **state)
{
    (void)state;
    const char *bin = getenv("CVLLM_BIN_DIR");
    char cmd[8192];
    snprintf(cmd, sizeof(cmd), "%s/cvllm-generate --model %s --prompt x --device tpu 2>&1",
             bin ? bin : "build/bin", stories);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char out[1024] = "";
    size_t n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = 0;
    int status = pclose(p);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 2);
    assert_non_null(strstr(out, "--device: expected auto, cpu or cuda, got 'tpu'\n"));
}

/* --prompts-file: all lines at once, outputs in input order, each followed
 * by an empty line; an empty line is BOS alone. */
static void test_cli_prompts_file(void **state)
{
    (void)state;
    greedy_case c[3];
    for (int i = 0; i < 3; i++)
        load_stories_case(i, &c[i]);
    char path[] = "/tmp/cvllm_prompts_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("\nOnce upon a time\nThe little dog\n", f);
    fclose(f);
    /* Case 0 runs 256 tokens in the fixture; its first 64 are a prefix of
     * the same greedy run, whose text the tokenizer gives. */
    cv_error err;
    cv_tokenizer *tok = tok_load(stories, &err);
    assert_non_null(tok);
    char *t0;
    size_t n0;
    assert_int_equal(tok_decode(tok, c[0].output, 64, true, &t0, &n0, &err), 0);
    tok_free(tok);
    static char want[16384];
    snprintf(want, sizeof(want), "%s\n\n%s\n\n%s\n\n", t0, c[1].text, c[2].text);
    free(t0);
    const char *bin = getenv("CVLLM_BIN_DIR");
    char cmd[8192];
    snprintf(cmd, sizeof(cmd),
             "%s/cvllm-generate --model %s --prompts-file %s --max-tokens 64 --temperature 0 "
             "--threads 1 2>/dev/null",
             bin ? bin : "build/bin", stories, path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char out[8192];
    size_t n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    assert_int_equal(pclose(p), 0);
    unlink(path);
    assert_string_equal(out, want);
}

static void test_stories_fixture(void **state)
{
    (void)state;
    cv_engine_args a;
    test_args(&a, stories);
    cv_engine *e = test_engine(&a);
    for (int i = 0; i < 3; i++)
        for (int stream = 0; stream < 2; stream++)
            expect_stories_case(e, i, stream);
    /* The same prompt as text goes through the tokenizer (BOS added). */
    cv_output_queue *q = cv_output_queue_create();
    cv_sampling_params p;
    cv_sampling_params_default(&p);
    p.temperature = 0;
    p.max_tokens = 64;
    req_result r = {0};
    submit(e, q, &p, NULL, 0, "Once upon a time", false, 0);
    collect(q, &r, 1);
    greedy_case c;
    load_stories_case(1, &c);
    assert_int_equal(r.n_prompt, c.n_input);
    assert_string_equal(r.seqs[0].text, c.text);
    result_free(&r);
    cv_output_queue_destroy(q);
    /* Seven requests ran: 3 cases x (stream, not) + the text prompt. */
    cv_engine_wait_idle(e);
    cv_engine_stats st;
    cv_engine_get_stats(e, &st);
    assert_int_equal(st.prompt_tokens_total, 2 * (1 + 5 + 5) + 5);
    assert_int_equal(st.generation_tokens_total, 2 * (256 + 64 + 64) + 64);
    assert_int_equal(st.requests_finished[CV_FINISH_LENGTH], 7);
    assert_int_equal(st.time_to_first_token_s.count, 7);
    assert_int_equal(st.e2e_request_latency_s.count, 7);
    assert_int_equal(st.queue_time_s.count, 7);
    assert_int_equal(st.time_per_output_token_s.count, 2 * (255 + 63 + 63) + 63);
    assert_int_equal(st.request_params_n.counts[0], 7);
    assert_int_equal(st.request_generation_tokens.count, 7);
    assert_int_equal(st.n_running + st.n_waiting, 0);
    assert_int_equal(st.kv_blocks_free, st.kv_blocks_total);
    assert_true(st.steps_total >= 256);
    /* With async_scheduling, the requests running one at a time, each
     * step after a request's first (its prefill) is scheduled while the one
     * before runs: its last token is known to be the last, so no step runs
     * past it. */
    if (a.async_scheduling)
        assert_int_equal(st.steps_ahead, st.generation_tokens_total - 7);
    else
        assert_int_equal(st.steps_ahead, 0);
    /* The CPU's forward is all device time: no span timed apart. */
    assert_true(st.forward_s_total > 0.0);
    assert_true(st.device_s_total == 0.0);
    assert_true(cv_engine_is_healthy(e));
    cv_engine_shutdown(e, false);
}

static void test_tiny_fixture_models(void **state)
{
    (void)state;
    static const char *names[] = {"llama_f32",       "qwen3_f32", "mistral_f32",
                                  "llama3_rope_f32", "qwen2_f32", "llama_sharded"};
    for (size_t m = 0; m < sizeof(names) / sizeof(names[0]); m++) {
        char dir[4096], ref[4200];
        snprintf(dir, sizeof(dir), "tests/fixtures/models/%s", names[m]);
        source_path(ref, sizeof(ref), dir);
        cv_engine_args a;
        test_args(&a, ref);
        /* The fixtures carry no tokenizer; stories260K's covers their 256 ids. */
        snprintf(a.tokenizer, sizeof(a.tokenizer), "%s", stories);
        cv_engine *e = test_engine(&a);
        /* reference.json: "greedy": {"input_ids": [...], "output_ids": [...]}. */
        static const int32_t in[] = {1, 239, 179, 14, 112, 17, 149};
        char path[4300];
        snprintf(path, sizeof(path), "%s/reference.json", ref);
        FILE *f = fopen(path, "r");
        assert_non_null(f);
        static char buf[1 << 22];
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        char *g = strstr(buf, "\"greedy\"");
        assert_non_null(g);
        char *o = strstr(g, "\"output_ids\"");
        assert_non_null(o);
        o = strchr(o, '[') + 1;
        int32_t want[64];
        int n_want = 0;
        while (*o && *o != ']') {
            want[n_want++] = (int32_t)strtol(o, &o, 10);
            while (*o == ',' || *o == ' ' || *o == '\n')
                o++;
        }
        cv_sampling_params p;
        cv_sampling_params_default(&p);
        p.temperature = 0;
        p.max_tokens = n_want;
        req_result r;
        run_one(e, &p, in, 7, false, &r);
        assert_int_equal(r.seqs[0].n_ids, n_want);
        assert_memory_equal(r.seqs[0].ids, want, (size_t)n_want * sizeof(int32_t));
        result_free(&r);
        cv_engine_shutdown(e, false);
    }
}

enum { N_BATCH = 32, BATCH_OUT = 24 };

static int batch_prompt(const greedy_case *c, int i, int32_t *ids)
{
    int len = 1 + (i * 7) % 41;
    ids[0] = 1;
    for (int k = 0; k < len; k++)
        ids[1 + k] = c->output[(i * 3 + k) % c->n_output];
    return len + 1;
}

static void run_batch(cv_engine *e, const greedy_case *c, req_result *res)
{
    cv_sampling_params p;
    cv_sampling_params_default(&p);
    p.temperature = 0;
    p.max_tokens = BATCH_OUT;
    p.ignore_eos = true;
    cv_output_queue *q = cv_output_queue_create();
    memset(res, 0, N_BATCH * sizeof(*res));
    for (int i = 0; i < N_BATCH; i++) {
        int32_t ids[64];
        int n = batch_prompt(c, i, ids);
        submit(e, q, &p, ids, n, NULL, i % 2 == 0, i);
    }
    collect(q, res, N_BATCH);
    cv_output_queue_destroy(q);
}

static void test_batch_invariance(void **state)
{
    (void)state;
    greedy_case c;
    load_stories_case(0, &c);
    cv_engine_args a;
    test_args(&a, stories);
    a.enable_prefix_caching = false;
    cv_engine *e = test_engine(&a);
    static req_result alone[N_BATCH], batched[N_BATCH];
    cv_sampling_params p;
    cv_sampling_params_default(&p);
    p.temperature = 0;
    p.max_tokens = BATCH_OUT;
    p.ignore_eos = true;
    for (int i = 0; i < N_BATCH; i++) {
        int32_t ids[64];
        int n = batch_prompt(&c, i, ids);
        run_one(e, &p, ids, n, false, &alone[i]);
        assert_int_equal(alone[i].seqs[0].n_ids, BATCH_OUT);
    }
    cv_engine_shutdown(e, false);

    /* 1: all at once; 2: a 16-token budget (prompts up to 42 tokens are
     * prefilled in chunks next to decodes); 3: a 12-block pool (192 tokens
     * for 32 sequences of up to 66), which must preempt. */
    for (int mode = 0; mode < 3; mode++) {
        test_args(&a, stories);
        if (mode == 1) a.max_num_batched_tokens = 16;
        if (mode == 2) {
            a.kv_blocks = 12;
            a.max_model_len = 128;
        }
        e = test_engine(&a);
        run_batch(e, &c, batched);
        cv_engine_stats st;
        cv_engine_get_stats(e, &st);
        if (mode == 2)
            assert_true(st.preemptions_total > 0);
        else
            assert_int_equal(st.preemptions_total, 0);
        for (int i = 0; i < N_BATCH; i++) {
            assert_int_equal(batched[i].n_finals, 1);
            assert_int_equal(batched[i].seqs[0].n_ids, BATCH_OUT);
            if (memcmp(batched[i].seqs[0].ids, alone[i].seqs[0].ids, BATCH_OUT * sizeof(int32_t)) !=
                0)
                fail_msg("mode %d: prompt %d differs from its output alone", mode, i);
            assert_string_equal(batched[i].seqs[0].text, alone[i].seqs[0].text);
            result_free(&batched[i]);
        }
        cv_engine_shutdown(e, false);
    }
    for (int i = 0; i < N_BATCH; i++)
        result_free(&alone[i]);
}

static void test_prefix_caching(void **state)
{
    (void)state;
    greedy_case c;
    load_stories_case(0, &c);
    int32_t a_ids[101], b_ids[101];
    a_ids[0] = b_ids[0] = 1;
    for (int i = 1; i < 101; i++)
        a_ids[i] = b_ids[i] = c.output[i - 1];
    for (int i = 97; i < 101; i++)
        b_ids[i] = c.output[150 + i]; /* the last 4 differ: 97 shared tokens */
    cv_sampling_params p;
    cv_sampling_params_default(&p);
    p.temperature = 0;
    p.max_tokens = 20;

    cv_engine_args args;
    test_args(&args, stories);
    args.enable_prefix_caching = false;
    cv_engine *e = test_engine(&args);
    req_result ref;
    run_one(e, &p, b_ids, 101, false, &ref);
    cv_engine_shutdown(e, false);

    test_args(&args, stories);
    e = test_engine(&args);
    req_result r;
    run_one(e, &p, a_ids, 101, false, &r);
    result_free(&r);
    cv_engine_stats s1, s2;
    cv_engine_get_stats(e, &s1);
    assert_int_equal(s1.prompt_tokens_computed, 101);
    run_one(e, &p, b_ids, 101, false, &r);
    cv_engine_get_stats(e, &s2);
    /* Six whole blocks of 16 (96 tokens) come from the cache. */
    assert_int_equal(s2.prompt_tokens_computed - s1.prompt_tokens_computed, 5);
    assert_int_equal(s2.prefix_cache_hits - s1.prefix_cache_hits, 96);
    assert_int_equal(s2.prefix_cache_queries - s1.prefix_cache_queries, 101);
    assert_int_equal(r.seqs[0].n_ids, ref.seqs[0].n_ids);
    assert_memory_equal(r.seqs[0].ids, ref.seqs[0].ids, 20 * sizeof(int32_t));
    assert_string_equal(r.seqs[0].text, ref.seqs[0].text);
    result_free(&r);
    result_free(&ref);
    cv_engine_shutdown(e, false);
}

static void test_seeded_in_random_batch(void **state)
{
    (void)state;
    greedy_case c;
    load_stories_case(1, &c);
    cv_engine_args args;
    test_args(&args, stories);
    cv_engine *e = test_engine(&args);
    cv_sampling_params p;
    cv_sampling_params_default(&p);
    p.temperature = 0.8f;
    p.top_p = 0.9f;
    p.top_k = 40;
    p.has_seed = true;
    p.seed = 1234;
    p.max_tokens = 32;
    p.ignore_eos = true;
    req_result alone, other;
    run_one(e, &p, c.input, c.n_input, false, &alone);
    assert_int_equal(alone.seqs[0].n_ids, 32);
    p.seed = 1235;
    run_one(e, &p, c.input, c.n_input, false, &other);
    assert_memory_not_equal(alone.seqs[0].ids, other.seqs[0].ids, 32 * sizeof(int32_t));
    result_free(&other);
    p.seed = 1234;

    srand(7);
    for (int round = 0; round < 2; round++) {
        static req_result res[16];
        memset(res, 0, sizeof(res));
        cv_output_queue *q = cv_output_queue_create();
        cv_sampling_params others[16];
        for (int i = 0; i < 16; i++) {
            if (i == 7) {
                submit(e, q, &p, c.input, c.n_input, NULL, round == 1, i);
                continue;
            }
            cv_sampling_params *o = &others[i];
            cv_sampling_params_default(o);
            o->temperature = (float)(rand() % 15) / 10.0f;
            o->top_p = rand() % 2 ? 1.0f : 0.7f;
            o->has_seed = rand() % 2;
            o->seed = (uint64_t)rand();
            o->max_tokens = 1 + rand() % 40;
            int32_t ids[64];
            int n = 1 + rand() % 50;
            ids[0] = 1;
            for (int k = 1; k < n; k++)
                ids[k] = 3 + rand() % 500;
            submit(e, q, o, ids, n, NULL, rand() % 2, i);
        }
        collect(q, res, 16);
        assert_memory_equal(res[7].seqs[0].ids, alone.seqs[0].ids, 32 * sizeof(int32_t));
        assert_string_equal(res[7].seqs[0].text, alone.seqs[0].text);
        for (int i = 0; i < 16; i++)
            result_free(&res[i]);
        cv_output_queue_destroy(q);
    }
    result_free(&alone);
    cv_engine_shutdown(e, false);
}

int main(void)
{
    /* Checked against stories260K's HF references throughout (the shipped
     * model's run in tests/sample_model). */
    cv_test_need_shared("models/stories260K");
    shared_path(stories, sizeof(stories), "models/stories260K");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cli_greedy_sample),   cmocka_unit_test(test_cli_prompts_file),
        cmocka_unit_test(test_cli_bad_device),      cmocka_unit_test(test_stories_fixture),
        cmocka_unit_test(test_tiny_fixture_models), cmocka_unit_test(test_batch_invariance),
        cmocka_unit_test(test_prefix_caching),      cmocka_unit_test(test_seeded_in_random_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* async_scheduling against the engine without it: the same mixed workload
 * (greedy and seeded sampling, penalties, n > 1, stop strings, min_tokens,
 * logprobs, prompt logprobs, a structured-output choice) on a pool small
 * enough to preempt and a budget
 * small enough to chunk, through an engine that runs each step before
 * scheduling the next and one that schedules step N+1 while step N runs.
 * Sampling draws from counter-based streams and the CPU backend computes a
 * sequence's logits the same in any batch, so every output must be
 * identical: token ids, text, finish reasons and logprobs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine_test_util.h"

enum { N_REQ = 48 };

static char *stops[] = {"a", "the "};

/* Request i of the workload: its parameters and prompt. */
static int make_request(int i, cv_sampling_params *p, int32_t *prompt)
{
    cv_sampling_params_default(p);
    p->max_tokens = 4 + (i * 7) % 24;
    switch (i % 7) {
    case 0: /* greedy, logprobs: runs ahead */
        p->temperature = 0.0f;
        p->logprobs = 2;
        break;
    case 1: /* seeded sampling with top-k/top-p: runs ahead */
        p->temperature = 0.8f;
        p->top_k = 20;
        p->top_p = 0.9f;
        p->has_seed = true;
        p->seed = 1000 + (uint64_t)i;
        break;
    case 2: /* penalties read the tokens: each token is taken first */
        p->temperature = 0.0f;
        p->repetition_penalty = 1.3f;
        p->presence_penalty = 0.5f;
        break;
    case 3: /* n > 1: the first token forks, then each sequence runs ahead */
        p->temperature = 1.0f;
        p->n = 2;
        p->has_seed = true;
        p->seed = 7 + (uint64_t)i;
        break;
    case 4: /* stop strings and min_tokens: tokens run past the stop */
        p->temperature = 0.0f;
        p->stop = stops;
        p->n_stop = 2;
        p->min_tokens = 2;
        break;
    case 5: /* unseeded sampling (the engine's seed and the request id), prompt logprobs */
        p->temperature = 1.0f;
        p->prompt_logprobs = 1;
        break;
    default: /* a grammar: each token's mask needs the one before */
        p->temperature = 0.7f;
        p->has_seed = true;
        p->seed = 99 + (uint64_t)i;
        p->structured_kind = CV_STRUCTURED_CHOICE;
        p->structured_text = strdup("[\"light\", \"darkness\", \"the earth was\"]");
        break;
    }
    int n = 3 + (i * 13) % 37;
    prompt[0] = 1;
    for (int k = 1; k < n; k++)
        prompt[k] = 3 + (i * 31 + k * 17) % 500;
    return n;
}

/* Runs the workload, all requests queued at once; res gets the results. */
static void run_workload(bool async, req_result *res, cv_engine_stats *st)
{
    char model[4096];
    source_path(model, sizeof(model), "samples/models/cvllm-kjv-4m"); /* shipped */
    cv_engine_args a;
    test_args(&a, model);
    a.async_scheduling = async;
    a.kv_blocks = 10;
    a.max_model_len = 128;
    a.max_num_seqs = 8;
    a.max_num_batched_tokens = 32;
    cv_engine *e = test_engine(&a);
    cv_output_queue *q = cv_output_queue_create();
    memset(res, 0, N_REQ * sizeof(*res));
    for (int i = 0; i < N_REQ; i++) {
        cv_sampling_params p;
        int32_t prompt[40];
        const int n = make_request(i, &p, prompt);
        submit(e, q, &p, prompt, n, NULL, i % 2, i);
        free(p.structured_text); /* the engine keeps its copy; stop is static */
    }
    collect(q, res, N_REQ);
    cv_engine_wait_idle(e);
    cv_engine_get_stats(e, st);
    assert_true(cv_engine_is_healthy(e));
    cv_output_queue_destroy(q);
    cv_engine_shutdown(e, false);
}

static void expect_same_logprobs(const cv_token_logprobs *a, const cv_token_logprobs *b)
{
    assert_int_equal(a->n, b->n);
    for (int k = 0; k < a->n; k++) {
        assert_int_equal(a->entries[k].token_id, b->entries[k].token_id);
        assert_true(a->entries[k].logprob == b->entries[k].logprob);
        assert_int_equal(a->entries[k].rank, b->entries[k].rank);
    }
}

static void test_async_matches_sync(void **state)
{
    (void)state;
    static req_result sync_res[N_REQ], async_res[N_REQ];
    cv_engine_stats sync_st, async_st;
    run_workload(false, sync_res, &sync_st);
    run_workload(true, async_res, &async_st);
    /* The workload does what it is for: preemptions in both, and most of
     * the async engine's steps scheduled while one ran. */
    print_message(
        "without async_scheduling: %llu steps, %llu preemptions; with it: %llu steps, "
        "%llu of them ahead, %llu preemptions\n",
        (unsigned long long)sync_st.steps_total, (unsigned long long)sync_st.preemptions_total,
        (unsigned long long)async_st.steps_total, (unsigned long long)async_st.steps_ahead,
        (unsigned long long)async_st.preemptions_total);
    assert_true(sync_st.preemptions_total > 0);
    assert_true(async_st.preemptions_total > 0);
    assert_int_equal(sync_st.steps_ahead, 0);
    assert_true(async_st.steps_ahead > async_st.steps_total / 2);
    assert_int_equal(async_st.generation_tokens_total, sync_st.generation_tokens_total);
    for (int i = 0; i < N_REQ; i++) {
        const req_result *s = &sync_res[i], *x = &async_res[i];
        if (s->error || x->error) fail_msg("request %d: %s / %s", i, s->error, x->error);
        assert_int_equal(s->n_finals, 1);
        assert_int_equal(x->n_finals, 1);
        assert_int_equal(x->n_seqs, s->n_seqs);
        for (int k = 0; k < s->n_seqs; k++) {
            const seq_result *a = &s->seqs[k], *b = &x->seqs[k];
            if (a->n_ids != b->n_ids || memcmp(a->ids, b->ids, (size_t)a->n_ids * 4))
                fail_msg("request %d seq %d: %d tokens without async_scheduling, %d with", i, k,
                         a->n_ids, b->n_ids);
            assert_string_equal(a->text, b->text);
            assert_int_equal(a->finish, b->finish);
            assert_true(a->cum_logprob == b->cum_logprob);
            assert_int_equal(a->n_lps, b->n_lps);
            for (int t = 0; t < a->n_lps; t++)
                expect_same_logprobs(&a->lps[t], &b->lps[t]);
        }
        assert_int_equal(x->n_prompt, s->n_prompt);
        for (int t = 0; s->prompt_lps && t < s->n_prompt; t++)
            expect_same_logprobs(&s->prompt_lps[t], &x->prompt_lps[t]);
        result_free(&sync_res[i]);
        result_free(&async_res[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_async_matches_sync),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

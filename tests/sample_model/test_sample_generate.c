/* cvllm's engine, greedy, on the shipped model samples/models/cvllm-kjv-4m
 * gives exactly HF transformers' tokens and text for the three prompts of
 * tests/fixtures/sample_model_greedy.json (issue 7's acceptance), both as
 * one final output and as a stream of deltas. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cvllm/engine.h"
#include "sample_fixture.h"

typedef struct fixture_state {
    sample_fixture fx;
    cv_engine *engine;
} fixture_state;

static int setup(void **state)
{
    fixture_state *s = calloc(1, sizeof *s);
    if (!s) return -1;
    cv_error err = {.msg = ""};
    cv_engine_args args;
    cv_engine_args_default(&args);
    sample_model_dir(args.model, sizeof args.model);
    args.n_threads = 2;
    /* 4 layers x 2 (K, V) x 4 KV heads x 32 dims x 4 bytes = 4 KiB a token:
     * 4,096 tokens, far more than three 40-token requests need. */
    args.kv_cache_bytes = (size_t)16 << 20;
    if (sample_fixture_load(&s->fx, &err) || !(s->engine = cv_engine_create(&args, &err))) {
        print_error("%s\n", err.msg);
        sample_fixture_free(&s->fx);
        free(s);
        return -1;
    }
    *state = s;
    return 0;
}

static int teardown(void **state)
{
    fixture_state *s = *state;
    cv_engine_shutdown(s->engine, false);
    sample_fixture_free(&s->fx);
    free(s);
    return 0;
}

/* Queues one greedy request for case c with its outputs going to q. */
static void submit_case(cv_engine *engine, const sample_case *c, bool stream, cv_output_queue *q)
{
    cv_sampling_params p;
    cv_sampling_params_default(&p);
    p.temperature = 0.0f;
    p.max_tokens = c->max_new_tokens;
    cv_request_desc req = {
        .prompt = c->prompt,
        .prompt_len = strlen(c->prompt),
        .params = &p,
        .stream = stream,
        .sink = q,
    };
    cv_error err = {.msg = ""};
    if (cv_engine_add_request(engine, &req, &err) == 0) fail_msg("%s", err.msg);
}

/* Collects the token ids and text of case c's request over all its outputs
 * in q (one when not streaming) and compares them with HF's. */
static void check_case(const sample_case *c, cv_output_queue *q)
{
    int32_t *ids = NULL;
    size_t n_ids = 0;
    char *text = calloc(1, 1);
    assert_non_null(text);
    size_t text_len = 0;
    for (bool finished = false; !finished;) {
        cv_request_output *out = cv_output_queue_wait(q, 60000);
        if (!out) fail_msg("no output within 60 s for prompt %s", c->prompt);
        if (out->error) fail_msg("prompt %s: %s", c->prompt, out->error);
        assert_int_equal(out->n_prompt_tokens, c->n_input);
        assert_int_equal(out->n_seqs, 1);
        const cv_seq_output *so = &out->seqs[0];
        int32_t *grown_ids = realloc(ids, (n_ids + so->n_tokens + 1) * sizeof *ids);
        char *grown_text = realloc(text, text_len + so->text_len + 1);
        assert_non_null(grown_ids);
        assert_non_null(grown_text);
        ids = grown_ids;
        text = grown_text;
        memcpy(ids + n_ids, so->token_ids, so->n_tokens * sizeof *ids);
        n_ids += so->n_tokens;
        memcpy(text + text_len, so->text, so->text_len + 1);
        text_len += so->text_len;
        finished = out->finished;
        if (finished) assert_int_equal(so->finish_reason, CV_FINISH_LENGTH);
        cv_request_output_free(out);
    }
    assert_int_equal(n_ids, c->n_output);
    for (size_t j = 0; j < n_ids; j++)
        assert_int_equal(ids[j], c->output_ids[j]);
    assert_string_equal(text, c->text_incremental);
    free(ids);
    free(text);
}

/* All cases run at once, so the engine batches them; greedy results must
 * not depend on the batch. */
static void check_cases(void **state, bool stream)
{
    const fixture_state *s = *state;
    enum { N_CASES = 3 };
    assert_int_equal(s->fx.n_cases, N_CASES);
    cv_output_queue *queues[N_CASES];
    for (size_t i = 0; i < N_CASES; i++) {
        queues[i] = cv_output_queue_create();
        assert_non_null(queues[i]);
        submit_case(s->engine, &s->fx.cases[i], stream, queues[i]);
    }
    for (size_t i = 0; i < N_CASES; i++) {
        check_case(&s->fx.cases[i], queues[i]);
        cv_output_queue_destroy(queues[i]);
    }
}

static void test_greedy_final_output(void **state)
{
    check_cases(state, false);
}

static void test_greedy_stream(void **state)
{
    check_cases(state, true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_final_output),
        cmocka_unit_test(test_greedy_stream),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

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
    cv_error err = {{0}};
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

/* Runs one greedy request for case c; collects all token ids and text
 * over its outputs (one when !stream). */
static void run_case(cv_engine *engine, const sample_case *c, bool stream, int32_t **ids,
                     size_t *n_ids, char **text)
{
    cv_sampling_params p;
    cv_sampling_params_default(&p);
    p.temperature = 0.0f;
    p.max_tokens = c->max_new_tokens;
    cv_output_queue *q = cv_output_queue_create();
    assert_non_null(q);
    cv_request_desc req = {
        .prompt = c->prompt,
        .prompt_len = strlen(c->prompt),
        .params = &p,
        .stream = stream,
        .sink = q,
    };
    cv_error err = {{0}};
    if (cv_engine_add_request(engine, &req, &err) == 0) fail_msg("%s", err.msg);

    *ids = NULL;
    *n_ids = 0;
    *text = calloc(1, 1);
    assert_non_null(*text);
    size_t text_len = 0;
    for (bool finished = false; !finished;) {
        cv_request_output *out = cv_output_queue_wait(q, 60000);
        if (!out) fail_msg("no output within 60 s for prompt %s", c->prompt);
        if (out->error) fail_msg("prompt %s: %s", c->prompt, out->error);
        assert_int_equal(out->n_prompt_tokens, c->n_input);
        assert_int_equal(out->n_seqs, 1);
        const cv_seq_output *so = &out->seqs[0];
        int32_t *grown_ids = realloc(*ids, (*n_ids + so->n_tokens + 1) * sizeof **ids);
        char *grown_text = realloc(*text, text_len + so->text_len + 1);
        assert_non_null(grown_ids);
        assert_non_null(grown_text);
        *ids = grown_ids;
        *text = grown_text;
        memcpy(*ids + *n_ids, so->token_ids, so->n_tokens * sizeof **ids);
        *n_ids += so->n_tokens;
        memcpy(*text + text_len, so->text, so->text_len + 1);
        text_len += so->text_len;
        finished = out->finished;
        if (finished) assert_int_equal(so->finish_reason, CV_FINISH_LENGTH);
        cv_request_output_free(out);
    }
    cv_output_queue_destroy(q);
}

static void check_cases(void **state, bool stream)
{
    const fixture_state *s = *state;
    assert_int_equal(s->fx.n_cases, 3);
    for (size_t i = 0; i < s->fx.n_cases; i++) {
        const sample_case *c = &s->fx.cases[i];
        int32_t *ids;
        size_t n;
        char *text;
        run_case(s->engine, c, stream, &ids, &n, &text);
        assert_int_equal(n, c->n_output);
        for (size_t j = 0; j < n; j++)
            assert_int_equal(ids[j], c->output_ids[j]);
        assert_string_equal(text, c->text_incremental);
        free(ids);
        free(text);
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

/* The shipped model's tokenizer (samples/models/cvllm-kjv-4m, byte-level
 * BPE) through cvllm's tokenizer gives exactly HF's ids and text for the
 * prompts and greedy outputs of tests/fixtures/sample_model_greedy.json. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sample_fixture.h"
#include "tokenizer/tokenizer.h"

typedef struct fixture_state {
    sample_fixture fx;
    cv_tokenizer *tok;
} fixture_state;

static int setup(void **state)
{
    fixture_state *s = calloc(1, sizeof *s);
    if (!s) return -1;
    cv_error err = {.msg = ""};
    char dir[4096];
    sample_model_dir(dir, sizeof dir);
    if (sample_fixture_load(&s->fx, &err) || !(s->tok = tok_load(dir, &err))) {
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
    tok_free(s->tok);
    sample_fixture_free(&s->fx);
    free(s);
    return 0;
}

static void assert_ids_equal(const int32_t *got, size_t n_got, const int32_t *want, size_t n_want)
{
    assert_int_equal(n_got, n_want);
    for (size_t i = 0; i < n_want; i++)
        assert_int_equal(got[i], want[i]);
}

static void test_vocab_and_special_ids(void **state)
{
    const fixture_state *s = *state;
    assert_int_equal(tok_vocab_size(s->tok), 4096);
    assert_int_equal(tok_bos_id(s->tok), 1);
    assert_int_equal(tok_eos_id(s->tok), 2);
    assert_true(tok_is_special(s->tok, 0));
    assert_false(tok_is_special(s->tok, 3));
    assert_string_equal(tok_id_to_token(s->tok, 1), "<s>");
}

/* encode(prompt) with special tokens is BOS + the prompt's BPE ids, and
 * without them the same ids minus BOS. */
static void test_encode_prompts(void **state)
{
    const fixture_state *s = *state;
    assert_int_equal(s->fx.n_cases, 3);
    for (size_t i = 0; i < s->fx.n_cases; i++) {
        const sample_case *c = &s->fx.cases[i];
        cv_error err = {.msg = ""};
        int32_t *ids = NULL;
        size_t n = 0;
        if (tok_encode(s->tok, c->prompt, strlen(c->prompt), true, &ids, &n, &err))
            fail_msg("encode %s: %s", c->prompt, err.msg);
        assert_ids_equal(ids, n, c->input_ids, c->n_input);
        free(ids);
        if (tok_encode(s->tok, c->prompt, strlen(c->prompt), false, &ids, &n, &err))
            fail_msg("encode %s: %s", c->prompt, err.msg);
        assert_ids_equal(ids, n, c->input_ids + 1, c->n_input - 1);
        free(ids);
    }
}

static void test_decode_outputs(void **state)
{
    const fixture_state *s = *state;
    for (size_t i = 0; i < s->fx.n_cases; i++) {
        const sample_case *c = &s->fx.cases[i];
        cv_error err = {.msg = ""};
        char *text = NULL;
        size_t len = 0;
        if (tok_decode(s->tok, c->output_ids, c->n_output, true, &text, &len, &err))
            fail_msg("decode case %zu: %s", i, err.msg);
        assert_string_equal(text, c->text);
        assert_int_equal(len, strlen(c->text));
        free(text);
        if (tok_decode(s->tok, c->input_ids, c->n_input, true, &text, &len, &err))
            fail_msg("decode case %zu: %s", i, err.msg);
        assert_string_equal(text, c->prompt); /* BOS skipped, bytes exact */
        free(text);
    }
}

/* Streaming one token at a time yields the text a server appends to the
 * prompt, leading space included. */
static void test_stream_outputs(void **state)
{
    const fixture_state *s = *state;
    for (size_t i = 0; i < s->fx.n_cases; i++) {
        const sample_case *c = &s->fx.cases[i];
        size_t n_all = c->n_input + c->n_output;
        int32_t *all = malloc(n_all * sizeof *all);
        char *joined = calloc(1, 1);
        assert_non_null(all);
        assert_non_null(joined);
        memcpy(all, c->input_ids, c->n_input * sizeof *all);
        memcpy(all + c->n_input, c->output_ids, c->n_output * sizeof *all);
        cv_tok_stream st;
        tok_stream_init(&st, s->tok, all, c->n_input, true);
        size_t joined_len = 0;
        for (size_t n = c->n_input + 1; n <= n_all; n++) {
            cv_error err = {.msg = ""};
            char *delta = NULL;
            size_t delta_len = 0;
            if (tok_stream_next(&st, s->tok, all, n, &delta, &delta_len, &err))
                fail_msg("stream case %zu at %zu: %s", i, n, err.msg);
            char *grown = realloc(joined, joined_len + delta_len + 1);
            assert_non_null(grown);
            joined = grown;
            memcpy(joined + joined_len, delta, delta_len + 1);
            joined_len += delta_len;
            free(delta);
        }
        assert_string_equal(joined, c->text_incremental);
        free(joined);
        free(all);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vocab_and_special_ids),
        cmocka_unit_test(test_encode_prompts),
        cmocka_unit_test(test_decode_outputs),
        cmocka_unit_test(test_stream_outputs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

/* SamplingParams: vLLM defaults, JSON parsing (strings for numbers and
 * bools, as Triton clients send them) and vLLM's validation messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "cvllm/engine.h"
#include "engine/engine_internal.h"

static int parse(cv_sampling_params *p, const char *json, cv_error *err)
{
    cv_sampling_params_default(p);
    return cv_sampling_params_from_json(p, json, strlen(json), err);
}

static void test_defaults(void **state)
{
    (void)state;
    cv_sampling_params p;
    cv_sampling_params_default(&p);
    assert_int_equal(p.n, 1);
    assert_true(p.temperature == 1.0f);
    assert_true(p.top_p == 1.0f);
    assert_int_equal(p.max_tokens, 16);
    assert_int_equal(p.logprobs, -1);
    assert_int_equal(p.prompt_logprobs, -1);
    assert_true(p.skip_special_tokens);
    assert_false(p.has_seed);
    cv_error err;
    assert_int_equal(cv_sampling_params_validate(&p, &err), 0);
}

static void test_strings_as_values(void **state)
{
    (void)state;
    cv_sampling_params p;
    cv_error err;
    assert_int_equal(parse(&p,
                           "{\"temperature\":\"0.1\",\"top_p\":\"0.95\",\"max_tokens\":\"100\","
                           "\"ignore_eos\":\"true\",\"seed\":7,\"n\":2,\"top_k\":\"5\","
                           "\"stop\":\"\\n\",\"stop_token_ids\":[3,\"4\"],\"logprobs\":2,"
                           "\"include_stop_str_in_output\":false,\"lora_name\":\"a\"}",
                           &err),
                     0);
    assert_true(p.temperature == 0.1f);
    assert_true(p.top_p == 0.95f);
    assert_int_equal(p.max_tokens, 100);
    assert_true(p.ignore_eos);
    assert_true(p.has_seed);
    assert_int_equal(p.seed, 7);
    assert_int_equal(p.n, 2);
    assert_int_equal(p.top_k, 5);
    assert_int_equal(p.n_stop, 1);
    assert_string_equal(p.stop[0], "\n");
    assert_int_equal(p.n_stop_token_ids, 2);
    assert_int_equal(p.stop_token_ids[1], 4);
    assert_int_equal(p.logprobs, 2);
    assert_string_equal(p.lora_name, "a");
    cv_sampling_params q;
    assert_int_equal(cv_sampling_params_copy(&q, &p), 0);
    assert_string_equal(q.stop[0], "\n");
    assert_ptr_not_equal(q.stop, p.stop);
    cv_sampling_params_free(&q);
    cv_sampling_params_free(&p);

    assert_int_equal(parse(&p, "{\"stop\":[\"a\",\"bc\"],\"seed\":-1,\"max_tokens\":null}", &err),
                     0);
    assert_int_equal(p.n_stop, 2);
    assert_string_equal(p.stop[1], "bc");
    assert_false(p.has_seed);
    assert_int_equal(p.max_tokens, -1);
    cv_sampling_params_free(&p);
}

static void expect_parse_error(const char *json, const char *msg)
{
    cv_sampling_params p;
    cv_error err;
    assert_int_equal(parse(&p, json, &err), -1);
    assert_string_equal(err.msg, msg);
    cv_sampling_params_free(&p);
}

static void test_parse_errors(void **state)
{
    (void)state;
    expect_parse_error("{\"foo\":1}", "unknown sampling parameter 'foo'");
    expect_parse_error("{\"temperature\":\"abc\"}",
                       "sampling parameter 'temperature' must be a number, got \"abc\"");
    expect_parse_error("{\"max_tokens\":1.5}",
                       "sampling parameter 'max_tokens' must be an integer, got 1.5");
    expect_parse_error("{\"ignore_eos\":\"maybe\"}",
                       "sampling parameter 'ignore_eos' must be a boolean, got \"maybe\"");
    expect_parse_error("{\"stop\":[1]}",
                       "sampling parameter 'stop' must be a string or a list of strings, got [1]");
    expect_parse_error("[1]", "sampling parameters must be a JSON object");
}

static void expect_invalid(const char *json, const char *msg)
{
    cv_sampling_params p;
    cv_error err;
    assert_int_equal(parse(&p, json, &err), 0);
    assert_int_equal(cv_sampling_params_validate(&p, &err), -1);
    assert_string_equal(err.msg, msg);
    cv_sampling_params_free(&p);
}

static void test_validation_messages(void **state)
{
    (void)state;
    expect_invalid("{\"temperature\":-1}", "temperature must be non-negative, got -1.0.");
    expect_invalid("{\"top_p\":1.5}", "top_p must be in (0, 1], got 1.5.");
    expect_invalid("{\"top_p\":0}", "top_p must be in (0, 1], got 0.0.");
    expect_invalid("{\"n\":0}", "n must be at least 1, got 0.");
    expect_invalid("{\"top_k\":-2}", "top_k must be 0 (disable), or at least 1, got -2.");
    expect_invalid("{\"min_p\":1.5}", "min_p must be in [0, 1], got 1.5.");
    expect_invalid("{\"presence_penalty\":3}", "presence_penalty must be in [-2, 2], got 3.0.");
    expect_invalid("{\"frequency_penalty\":-2.5}",
                   "frequency_penalty must be in [-2, 2], got -2.5.");
    expect_invalid("{\"repetition_penalty\":0}",
                   "repetition_penalty must be greater than zero, got 0.0.");
    expect_invalid("{\"temperature\":\"inf\"}", "temperature must be a finite number, got inf.");
    /* vLLM's message; -1 is no "unlimited" (that is null). */
    expect_parse_error("{\"max_tokens\":0}", "max_tokens must be at least 1, got 0.");
    expect_parse_error("{\"max_tokens\":-1}", "max_tokens must be at least 1, got -1.");
    expect_parse_error("{\"max_tokens\":\"-1\"}", "max_tokens must be at least 1, got -1.");
    expect_invalid("{\"min_tokens\":-1}", "min_tokens must be greater than or equal to 0, got -1.");
    expect_invalid("{\"min_tokens\":20,\"max_tokens\":10}",
                   "min_tokens must be less than or equal to max_tokens=10, got 20.");
    expect_invalid("{\"logprobs\":-3}", "logprobs must be non-negative or -1, got -3.");
    expect_invalid("{\"logprobs\":21}",
                   "Requested sample logprobs of 21, which is greater than max allowed: 20");
    expect_invalid("{\"prompt_logprobs\":-2}",
                   "prompt_logprobs must be non-negative or -1, got -2.");
    expect_invalid("{\"stop\":[\"a\",\"\"]}", "stop cannot contain an empty string.");
    expect_invalid("{\"n\":2,\"temperature\":0}", "n must be 1 when using greedy sampling, got 2.");
    expect_invalid("{\"n\":3,\"best_of\":2}",
                   "best_of must be greater than or equal to n, got n=3 and best_of=2.");
}

static void test_pyfloat(void **state)
{
    (void)state;
    char b[48];
    fmt_pyfloat(b, sizeof(b), 0.1f);
    assert_string_equal(b, "0.1");
    fmt_pyfloat(b, sizeof(b), 100.0f);
    assert_string_equal(b, "100.0");
    fmt_pyfloat(b, sizeof(b), 1e-5f);
    assert_string_equal(b, "1e-05");
    fmt_pyfloat(b, sizeof(b), 0.95f);
    assert_string_equal(b, "0.95");
    fmt_pyfloat(b, sizeof(b), -2.5f);
    assert_string_equal(b, "-2.5");
    fmt_pyfloat(b, sizeof(b), 1e16f);
    assert_string_equal(b, "1e+16");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),     cmocka_unit_test(test_strings_as_values),
        cmocka_unit_test(test_parse_errors), cmocka_unit_test(test_validation_messages),
        cmocka_unit_test(test_pyfloat),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Metrics: PROTOCOL.md's histogram buckets exactly, Prometheus "le"
 * counting, and vLLM's 1-2-5 token buckets up to max_model_len. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "engine/metrics.h"

static void expect_bounds(const cv_histogram *h, const double *b, int n)
{
    assert_int_equal(h->n_bounds, n);
    for (int i = 0; i < n; i++)
        assert_true(h->bounds[i] == b[i]);
}

static void test_buckets(void **state)
{
    (void)state;
    cv_engine_stats st;
    metrics_init(&st, 2048);
    static const double ttft[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                  0.25,  0.5,   0.75, 1,    2.5,  5,    7.5,  10};
    static const double tpot[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                  0.3,  0.4,   0.5,  0.75,  1,   2.5};
    static const double e2e[] = {1, 2.5, 5, 10, 15, 20, 30, 40, 50, 60};
    static const double toks[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000};
    static const double n[] = {1, 2, 5, 10, 20};
    expect_bounds(&st.time_to_first_token_s, ttft, 16);
    expect_bounds(&st.time_per_output_token_s, tpot, 13);
    expect_bounds(&st.e2e_request_latency_s, e2e, 10);
    expect_bounds(&st.request_prompt_tokens, toks, 11);
    expect_bounds(&st.request_generation_tokens, toks, 11);
    expect_bounds(&st.request_params_n, n, 5);
}

static void test_observe(void **state)
{
    (void)state;
    cv_engine_stats st;
    metrics_init(&st, 100);
    cv_histogram *h = &st.request_prompt_tokens; /* 1 2 5 10 20 50 100 */
    assert_int_equal(h->n_bounds, 7);
    hist_observe(h, 1);   /* le 1 */
    hist_observe(h, 3);   /* le 5 */
    hist_observe(h, 5);   /* le 5 */
    hist_observe(h, 101); /* +Inf */
    assert_int_equal(h->counts[0], 1);
    assert_int_equal(h->counts[2], 2);
    assert_int_equal(h->counts[7], 1);
    assert_int_equal(h->count, 4);
    assert_true(h->sum == 110);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buckets),
        cmocka_unit_test(test_observe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

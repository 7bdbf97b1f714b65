/* vLLM V1's prefix-cache counters on /metrics (vllm:prefix_cache_queries
 * and vllm:prefix_cache_hits, in tokens, shown with prometheus_client's
 * _total): after two requests whose prompts share a prefix, exact token
 * counts, through a cvllm-server on loopback ports. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "harness.h"

/* The prompt length in tokens a /generate of one token reports. */
static long generate_one(const test_server *s, const char *prompt)
{
    char body[512], *resp = NULL;
    snprintf(body, sizeof body,
             "{\"text_input\": \"%s\", \"parameters\": {\"max_tokens\": 1, "
             "\"return_num_input_tokens\": true}}",
             prompt);
    assert_int_equal(th_http("POST", th_url(s, "/v2/models/kjv/generate"), body, &resp), 200);
    json_t *j = json_loads(resp, 0, NULL);
    long n = (long)json_integer_value(json_object_get(j, "num_input_tokens"));
    json_decref(j);
    free(resp);
    return n;
}

static void test_prefix_cache_counters(void **state)
{
    (void)state;
    test_server s;
    assert_true(th_start(&s, th_make_repo(), NULL));
    char u[128], *text = NULL;
    snprintf(u, sizeof u, "http://127.0.0.1:%d/metrics", s.metrics_port);
    const char *Q = "vllm:prefix_cache_queries_total{model=\"kjv\",version=\"1\"}";
    const char *H = "vllm:prefix_cache_hits_total{model=\"kjv\",version=\"1\"}";
    assert_int_equal(th_http("GET", u, NULL, &text), 200);
    assert_non_null(strstr(text, "# HELP vllm:prefix_cache_queries_total Prefix cache queries, in "
                                 "terms of number of queried tokens.\n"
                                 "# TYPE vllm:prefix_cache_queries_total counter\n"));
    assert_non_null(strstr(text, "# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms "
                                 "of number of cached tokens.\n"
                                 "# TYPE vllm:prefix_cache_hits_total counter\n"));
    assert_true(th_metric(text, Q) == 0);
    assert_true(th_metric(text, H) == 0);
    free(text);

    /* B is A and more words. A's request (one token: only its prompt's
     * KV is computed) leaves its whole 16-token blocks in the cache. */
    long n_a = generate_one(&s, "In the beginning God created the heaven and the earth. And the "
                                "earth was without form, and void; and darkness was upon the face "
                                "of the deep.");
    long n_b = generate_one(&s, "In the beginning God created the heaven and the earth. And the "
                                "earth was without form, and void; and darkness was upon the face "
                                "of the deep. And God said, Let there be light");
    assert_int_equal(n_a, 34);
    assert_int_equal(n_b, 42);
    assert_int_equal(th_http("GET", u, NULL, &text), 200);
    /* Every prompt token is looked up once: 34 + 42. */
    assert_int_equal((long)th_metric(text, Q), 76);
    /* B finds A's two whole blocks (32 of its 34 shared tokens). */
    assert_int_equal((long)th_metric(text, H), 32);
    free(text);
    assert_int_equal(th_stop(&s), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefix_cache_counters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

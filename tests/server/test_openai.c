/* vLLM's OpenAI API on cvllm-server's HTTP port, over real loopback
 * sockets: /v1/completions text equal to cvllm-generate's (whole and
 * streamed with the usage chunk and [DONE]), usage counts, logprobs, null
 * fields, /v1/models, /health, /version, and OpenAI error objects for
 * every bad request, including one asking for 10^8 sequences. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "harness.h"

static test_server srv;

static const char *url(const char *path)
{
    return th_url(&srv, path);
}

static void expect(const char *method, const char *path, const char *body, long status,
                   const char *want_body)
{
    th_expect(method, url(path), body, status, want_body);
}

static int setup(void **state)
{
    (void)state;
    curl_global_init(CURL_GLOBAL_ALL);
    if (!th_start(&srv, th_make_repo(), NULL)) return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    int rc = th_stop(&srv);
    curl_global_cleanup();
    return rc == 0 ? 0 : -1;
}

/* POST /v1/completions as vLLM's OpenAI server answers it: the same text
 * as every other surface, whole and streamed (with the usage chunk and
 * [DONE]), logprobs, GET /v1/models, and OpenAI error objects. */
static void test_openai_completions(void **state)
{
    (void)state;
    char *ref = th_greedy_text("Once upon a time", 32);
    char *resp = NULL;
    assert_int_equal(th_http("POST", url("/v1/completions"),
                             "{\"model\": \"kjv\", \"prompt\": \"Once upon a time\", "
                             "\"max_tokens\": 32, \"temperature\": 0}",
                             &resp),
                     200);
    json_t *j = json_loads(resp, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "text_completion");
    assert_string_equal(json_string_value(json_object_get(j, "model")), "kjv");
    assert_int_equal(strncmp(json_string_value(json_object_get(j, "id")), "cmpl-", 5), 0);
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(c0, "text")), ref);
    assert_string_equal(json_string_value(json_object_get(c0, "finish_reason")), "length");
    assert_true(json_is_null(json_object_get(c0, "logprobs")));
    json_t *usage = json_object_get(j, "usage");
    /* BOS and 5 tokens of the shipped model's byte-level BPE
     * (1 2652 350 427 262 781). */
    assert_int_equal(json_integer_value(json_object_get(usage, "prompt_tokens")), 6);
    assert_int_equal(json_integer_value(json_object_get(usage, "completion_tokens")), 32);
    assert_int_equal(json_integer_value(json_object_get(usage, "total_tokens")), 38);
    json_decref(j);
    free(resp);

    /* Streamed: the chunks' texts concatenate to the same text, then one
     * usage chunk (choices []), then [DONE]. */
    char *events = NULL;
    assert_int_equal(th_sse(url("/v1/completions"),
                            "{\"model\": \"kjv\", \"prompt\": \"Once upon a time\", "
                            "\"max_tokens\": 32, \"temperature\": 0, \"stream\": true, "
                            "\"stream_options\": {\"include_usage\": true}}",
                            0, &events),
                     200);
    char text[2048] = "", finish[16] = "";
    int n_chunks = 0, completion_tokens = -1;
    bool done = false;
    for (const char *p = events; (p = strstr(p, "data: "));) {
        p += 6;
        const char *end = strstr(p, "\n\n");
        assert_non_null(end);
        assert_false(done); /* nothing after [DONE] */
        if (end - p == 6 && !strncmp(p, "[DONE]", 6)) {
            done = true;
        } else {
            json_t *ev = json_loadb(p, (size_t)(end - p), 0, NULL);
            assert_non_null(ev);
            json_t *ch = json_array_get(json_object_get(ev, "choices"), 0);
            if (ch) {
                strncat(text, json_string_value(json_object_get(ch, "text")),
                        sizeof text - strlen(text) - 1);
                if (json_is_string(json_object_get(ch, "finish_reason")))
                    snprintf(finish, sizeof finish, "%s",
                             json_string_value(json_object_get(ch, "finish_reason")));
                n_chunks++;
            } else {
                completion_tokens = (int)json_integer_value(
                    json_object_get(json_object_get(ev, "usage"), "completion_tokens"));
            }
            json_decref(ev);
        }
        p = end + 2;
    }
    assert_true(done);
    assert_string_equal(text, ref);
    assert_string_equal(finish, "length");
    assert_true(n_chunks > 1);
    assert_int_equal(completion_tokens, 32);
    free(events);
    free(ref);

    /* logprobs: 2 -> the sampled token's logprob and top entries, per token. */
    assert_int_equal(th_http("POST", url("/v1/completions"),
                             "{\"model\": \"kjv\", \"prompt\": \"Once\", \"max_tokens\": 3, "
                             "\"temperature\": 0, \"logprobs\": 2}",
                             &resp),
                     200);
    j = json_loads(resp, 0, NULL);
    json_t *lp = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "logprobs");
    assert_int_equal(json_array_size(json_object_get(lp, "tokens")), 3);
    assert_int_equal(json_array_size(json_object_get(lp, "token_logprobs")), 3);
    json_t *top0 = json_array_get(json_object_get(lp, "top_logprobs"), 0);
    assert_true(json_object_size(top0) >= 2 && json_object_size(top0) <= 3);
    assert_true(json_real_value(json_array_get(json_object_get(lp, "token_logprobs"), 0)) <= 0);
    json_decref(j);
    free(resp);

    /* A null field keeps its default: max_tokens 16. */
    assert_int_equal(th_http("POST", url("/v1/completions"),
                             "{\"model\": \"kjv\", \"prompt\": \"Once upon a time\", "
                             "\"max_tokens\": null, \"temperature\": 0, \"user\": \"u1\"}",
                             &resp),
                     200);
    j = json_loads(resp, 0, NULL);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens")), 16);
    json_decref(j);
    free(resp);

    /* The served models. */
    assert_int_equal(th_http("GET", url("/v1/models"), NULL, &resp), 200);
    j = json_loads(resp, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "list");
    bool listed = false;
    json_t *m;
    size_t i;
    json_array_foreach(json_object_get(j, "data"), i, m)
    {
        assert_string_equal(json_string_value(json_object_get(m, "object")), "model");
        listed |= !strcmp(json_string_value(json_object_get(m, "id")), "kjv");
    }
    assert_true(listed);
    json_decref(j);
    free(resp);

    expect("POST", "/v1/completions", "{\"model\": \"nope\", \"prompt\": \"x\"}", 404,
           "{\"object\":\"error\",\"message\":\"The model `nope` does not exist.\",\"type\":"
           "\"NotFoundError\",\"param\":null,\"code\":404}");
    expect("POST", "/v1/completions", "{\"model\": \"kjv\", \"prompt\": \"x\", \"foo\": 1}", 400,
           "{\"object\":\"error\",\"message\":\"unknown sampling parameter 'foo'\",\"type\":"
           "\"BadRequestError\",\"param\":null,\"code\":400}");
    expect("POST", "/v1/completions", "{\"model\": \"kjv\"}", 400,
           "{\"object\":\"error\",\"message\":\"'prompt' is required\",\"type\":"
           "\"BadRequestError\",\"param\":null,\"code\":400}");
    expect("POST", "/v1/completions", "{\"model\": \"kjv\", \"prompt\": [\"a\", \"b\"]}", 400,
           "{\"object\":\"error\",\"message\":\"'prompt': a list of 2 prompts is not supported; "
           "send one request per prompt\",\"type\":\"BadRequestError\",\"param\":null,"
           "\"code\":400}");
    expect("POST", "/v1/completions",
           "{\"model\": \"kjv\", \"prompt\": \"x\", \"temperature\": -1}", 400,
           "{\"object\":\"error\",\"message\":\"temperature must be non-negative, got -1.0.\","
           "\"type\":\"BadRequestError\",\"param\":null,\"code\":400}");
    expect("POST", "/v1/completions", "nonsense", 400,
           "{\"object\":\"error\",\"message\":\"failed to parse the request JSON: '[' or '{' "
           "expected near 'nonsense'\",\"type\":\"BadRequestError\",\"param\":null,"
           "\"code\":400}");
    /* A request for 10^8 sequences is refused at once (it used to take
     * gigabytes and the engine's steps); the server keeps serving. */
    expect("POST", "/v1/completions",
           "{\"model\": \"kjv\", \"prompt\": \"x\", \"n\": 100000000, \"max_tokens\": 2}", 400,
           "{\"object\":\"error\",\"message\":\"n 100000000 is more sequences than this engine "
           "runs for one request (4096)\",\"type\":\"BadRequestError\",\"param\":null,"
           "\"code\":400}");
    expect("POST", "/v2/models/kjv/generate",
           "{\"text_input\": \"x\", \"parameters\": {\"best_of\": 5000, \"max_tokens\": 2}}", 500,
           "{\"error\":\"Error generating stream: best_of 5000 is more sequences than this "
           "engine runs for one request (4096)\"}");
    expect("POST", "/v1/completions",
           "{\"model\": \"kjv\", \"prompt\": \"x\", \"n\": 3, \"max_tokens\": 2}", 200, NULL);
    /* vLLM's /health and /version: the version is the server's (/v2). */
    expect("GET", "/health", NULL, 200, "");
    char *v1 = NULL, *v2 = NULL;
    assert_int_equal(th_http("GET", url("/version"), NULL, &v1), 200);
    assert_int_equal(th_http("GET", url("/v2"), NULL, &v2), 200);
    json_t *jv1 = json_loads(v1, 0, NULL), *jv2 = json_loads(v2, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(jv1, "version")),
                        json_string_value(json_object_get(jv2, "version")));
    json_decref(jv1);
    json_decref(jv2);
    free(v1);
    free(v2);
    expect("GET", "/v1/chat", NULL, 404,
           "{\"object\":\"error\",\"message\":\"Not Found\",\"type\":\"NotFoundError\","
           "\"param\":null,\"code\":404}");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openai_completions),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

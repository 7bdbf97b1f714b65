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
           "{\"error\":{\"message\":\"The model `nope` does not exist.\",\"type\":"
           "\"NotFoundError\",\"param\":null,\"code\":404}}");
    expect("POST", "/v1/completions", "{\"model\": \"kjv\", \"prompt\": \"x\", \"foo\": 1}", 400,
           "{\"error\":{\"message\":\"unknown sampling parameter 'foo'\",\"type\":"
           "\"BadRequestError\",\"param\":null,\"code\":400}}");
    expect("POST", "/v1/completions", "{\"model\": \"kjv\"}", 400,
           "{\"error\":{\"message\":\"'prompt' is required\",\"type\":"
           "\"BadRequestError\",\"param\":null,\"code\":400}}");
    expect("POST", "/v1/completions", "{\"model\": \"kjv\", \"prompt\": [\"a\", 7]}", 400,
           "{\"error\":{\"message\":\"'prompt'[1]: expected a string or a list of token ids\","
           "\"type\":\"BadRequestError\",\"param\":null,\"code\":400}}");
    expect("POST", "/v1/completions", "{\"model\": \"kjv\", \"prompt\": [[1, \"a\"]]}", 400,
           "{\"error\":{\"message\":\"'prompt'[1]: expected a token id\","
           "\"type\":\"BadRequestError\",\"param\":null,\"code\":400}}");
    expect("POST", "/v1/completions", "{\"model\": \"kjv\", \"prompt\": []}", 400,
           "{\"error\":{\"message\":\"'prompt': expected a string, a list of strings, a list "
           "of token ids or a list of lists of token ids\",\"type\":\"BadRequestError\","
           "\"param\":null,\"code\":400}}");
    expect("POST", "/v1/completions",
           "{\"model\": \"kjv\", \"prompt\": \"x\", \"stream_options\": {\"include_usage\": "
           "true}}",
           400,
           "{\"error\":{\"message\":\"Stream options can only be defined when `stream=True`.\","
           "\"type\":\"BadRequestError\",\"param\":null,\"code\":400}}");
    expect("POST", "/v1/completions", "{\"model\": \"kjv\", \"prompt\": \"x\", \"echo\": 1}", 400,
           "{\"error\":{\"message\":\"'echo': expected true or false\","
           "\"type\":\"BadRequestError\",\"param\":null,\"code\":400}}");
    expect("POST", "/v1/completions",
           "{\"model\": \"kjv\", \"prompt\": \"x\", \"temperature\": -1}", 400,
           "{\"error\":{\"message\":\"temperature must be non-negative, got -1.0.\","
           "\"type\":\"BadRequestError\",\"param\":null,\"code\":400}}");
    expect("POST", "/v1/completions", "nonsense", 400,
           "{\"error\":{\"message\":\"failed to parse the request JSON: '[' or '{' "
           "expected near 'nonsense'\",\"type\":\"BadRequestError\",\"param\":null,"
           "\"code\":400}}");
    /* A request for 10^8 sequences is refused at once (it used to take
     * gigabytes and the engine's steps); the server keeps serving. */
    expect("POST", "/v1/completions",
           "{\"model\": \"kjv\", \"prompt\": \"x\", \"n\": 100000000, \"max_tokens\": 2}", 400,
           "{\"error\":{\"message\":\"n 100000000 is more sequences than this engine "
           "runs for one request (4096)\",\"type\":\"BadRequestError\",\"param\":null,"
           "\"code\":400}}");
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
           "{\"error\":{\"message\":\"Not Found\",\"type\":\"NotFoundError\","
           "\"param\":null,\"code\":404}}");
}

/* A whole /v1/completions response (parsed; the status must be 200). */
static json_t *complete(const char *body)
{
    char *resp = NULL;
    long status = th_http("POST", url("/v1/completions"), body, &resp);
    if (status != 200) fprintf(stderr, "%s -> %ld %s\n", body, status, resp);
    assert_int_equal(status, 200);
    json_t *j = json_loads(resp, 0, NULL);
    assert_non_null(j);
    free(resp);
    return j;
}

static const char *choice_text(const json_t *j, size_t i)
{
    return json_string_value(
        json_object_get(json_array_get(json_object_get(j, "choices"), i), "text"));
}

static int usage_of(const json_t *j, const char *key)
{
    return (int)json_integer_value(json_object_get(json_object_get(j, "usage"), key));
}

/* A streamed request: each choice's texts concatenated into texts[index]
 * (up to 8), the usage chunk's completion tokens (-1 when none); asserts
 * one [DONE] at the end. Returns the number of data events. */
static int stream_texts(const char *body, char texts[8][1024], int *completion_tokens)
{
    char *events = NULL;
    assert_int_equal(th_sse(url("/v1/completions"), body, 0, &events), 200);
    memset(texts, 0, 8 * 1024);
    *completion_tokens = -1;
    int n = 0;
    bool done = false;
    for (const char *p = events; (p = strstr(p, "data: "));) {
        p += 6;
        const char *end = strstr(p, "\n\n");
        assert_non_null(end);
        assert_false(done);
        n++;
        if (end - p == 6 && !strncmp(p, "[DONE]", 6)) {
            done = true;
        } else {
            json_t *ev = json_loadb(p, (size_t)(end - p), 0, NULL);
            assert_non_null(ev);
            size_t i;
            json_t *ch;
            json_array_foreach(json_object_get(ev, "choices"), i, ch)
            {
                json_int_t idx = json_integer_value(json_object_get(ch, "index"));
                assert_true(idx >= 0 && idx < 8);
                strncat(texts[idx], json_string_value(json_object_get(ch, "text")),
                        1023 - strlen(texts[idx]));
            }
            if (json_is_object(json_object_get(ev, "usage")))
                *completion_tokens = usage_of(ev, "completion_tokens");
            json_decref(ev);
        }
        p = end + 2;
    }
    assert_true(done);
    free(events);
    return n;
}

/* A list of prompts is a batch: choice p * n + k is sequence k of prompt
 * p (vLLM's order), whole and streamed, with usage summed over prompts. */
static void test_openai_prompt_list(void **state)
{
    (void)state;
    char *ref_a = th_greedy_text("Once upon a time", 8), *ref_b = th_greedy_text("The cat", 8);
    json_t *a = complete("{\"model\": \"kjv\", \"prompt\": \"The cat\", \"max_tokens\": 8, "
                         "\"temperature\": 0}");
    const int tokens_b = usage_of(a, "prompt_tokens");
    json_decref(a);
    const char *body = "{\"model\": \"kjv\", \"prompt\": [\"Once upon a time\", \"The cat\"], "
                       "\"n\": 2, \"max_tokens\": 8, \"temperature\": 1, \"top_k\": 1%s}";
    char req[512];
    snprintf(req, sizeof req, body, "");
    json_t *j = complete(req);
    assert_int_equal(json_array_size(json_object_get(j, "choices")), 4);
    for (size_t i = 0; i < 4; i++) {
        json_t *c = json_array_get(json_object_get(j, "choices"), i);
        assert_int_equal(json_integer_value(json_object_get(c, "index")), (json_int_t)i);
        assert_string_equal(choice_text(j, i), i < 2 ? ref_a : ref_b);
    }
    assert_int_equal(usage_of(j, "prompt_tokens"), 6 + tokens_b);
    assert_int_equal(usage_of(j, "completion_tokens"), 32);
    assert_int_equal(usage_of(j, "total_tokens"), 38 + tokens_b);
    json_decref(j);

    char texts[8][1024];
    int completion_tokens;
    snprintf(req, sizeof req, body,
             ", \"stream\": true, \"stream_options\": {\"include_usage\": true}");
    stream_texts(req, texts, &completion_tokens);
    for (int i = 0; i < 4; i++)
        assert_string_equal(texts[i], i < 2 ? ref_a : ref_b);
    assert_int_equal(completion_tokens, 32);
    /* A token-id prompt list: [[...], [...]]. */
    j = complete("{\"model\": \"kjv\", \"prompt\": [[1, 400], [1, 500, 501]], \"max_tokens\": "
                 "2, \"temperature\": 0}");
    assert_int_equal(json_array_size(json_object_get(j, "choices")), 2);
    assert_int_equal(usage_of(j, "prompt_tokens"), 5);
    json_decref(j);
    free(ref_a);
    free(ref_b);
}

/* echo: the prompt text before each choice's text, whole and streamed;
 * with logprobs the prompt's tokens come first, the first with null
 * logprob and top_logprobs as in vLLM. */
static void test_openai_echo(void **state)
{
    (void)state;
    char *ref = th_greedy_text("Once upon a time", 8), want[1024];
    snprintf(want, sizeof want, "Once upon a time%s", ref);
    json_t *j = complete("{\"model\": \"kjv\", \"prompt\": \"Once upon a time\", \"max_tokens\": "
                         "8, \"temperature\": 1, \"top_k\": 1, \"echo\": true, \"n\": 2}");
    assert_string_equal(choice_text(j, 0), want);
    assert_string_equal(choice_text(j, 1), want);
    assert_int_equal(usage_of(j, "prompt_tokens"), 6);
    assert_int_equal(usage_of(j, "completion_tokens"), 16);
    json_decref(j);

    char texts[8][1024];
    int completion_tokens;
    stream_texts("{\"model\": \"kjv\", \"prompt\": \"Once upon a time\", \"max_tokens\": 8, "
                 "\"temperature\": 0, \"echo\": true, \"stream\": true}",
                 texts, &completion_tokens);
    assert_string_equal(texts[0], want);
    assert_int_equal(completion_tokens, -1);

    j = complete("{\"model\": \"kjv\", \"prompt\": \"Once upon a time\", \"max_tokens\": 8, "
                 "\"temperature\": 0, \"echo\": true, \"logprobs\": 1}");
    assert_string_equal(choice_text(j, 0), want);
    json_t *lp = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "logprobs");
    json_t *toks = json_object_get(lp, "tokens"), *lps = json_object_get(lp, "token_logprobs");
    json_t *tops = json_object_get(lp, "top_logprobs"), *offs = json_object_get(lp, "text_offset");
    assert_int_equal(json_array_size(toks), 14);
    assert_int_equal(json_array_size(offs), 14);
    assert_string_equal(json_string_value(json_array_get(toks, 0)), "<s>");
    assert_true(json_is_null(json_array_get(lps, 0)));
    assert_true(json_is_null(json_array_get(tops, 0)));
    size_t off = 0;
    for (size_t i = 0; i < 14; i++) {
        assert_int_equal(json_integer_value(json_array_get(offs, i)), (json_int_t)off);
        off += json_string_length(json_array_get(toks, i));
        if (i > 0) {
            assert_true(json_real_value(json_array_get(lps, i)) <= 0);
            assert_true(json_object_size(json_array_get(tops, i)) >= 1);
        }
    }
    json_decref(j);

    /* Streamed: the first chunk carries the prompt's logprobs before its
     * own tokens; offsets run on over the chunks' texts. */
    char *events = NULL;
    assert_int_equal(
        th_sse(url("/v1/completions"),
               "{\"model\": \"kjv\", \"prompt\": \"Once upon a time\", "
               "\"max_tokens\": 8, \"temperature\": 0, \"echo\": true, \"logprobs\": 1, "
               "\"stream\": true}",
               0, &events),
        200);
    size_t n_tokens = 0, n_chunks = 0, text_len = 0;
    for (const char *p = events; (p = strstr(p, "data: {"));) {
        p += 6;
        const char *end = strstr(p, "\n\n");
        json_t *ev = json_loadb(p, (size_t)(end - p), 0, NULL);
        json_t *c = json_array_get(json_object_get(ev, "choices"), 0);
        json_t *l = json_object_get(c, "logprobs");
        if (n_chunks == 0) {
            assert_true(json_is_null(json_array_get(json_object_get(l, "token_logprobs"), 0)));
            assert_string_equal(json_string_value(json_array_get(json_object_get(l, "tokens"), 0)),
                                "<s>");
        }
        json_t *o0 = json_array_get(json_object_get(l, "text_offset"), 0);
        if (o0) assert_int_equal(json_integer_value(o0), (json_int_t)text_len);
        text_len += json_string_length(json_object_get(c, "text"));
        n_tokens += json_array_size(json_object_get(l, "tokens"));
        n_chunks++;
        json_decref(ev);
        p = end;
    }
    assert_int_equal(n_tokens, 14);
    free(events);

    /* max_tokens 0 with echo: the prompt and its logprobs alone. */
    j = complete("{\"model\": \"kjv\", \"prompt\": \"Once upon a time\", \"max_tokens\": 0, "
                 "\"echo\": true, \"logprobs\": 1}");
    assert_string_equal(choice_text(j, 0), "Once upon a time");
    lp = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "logprobs");
    assert_int_equal(json_array_size(json_object_get(lp, "tokens")), 6);
    assert_true(json_is_null(json_array_get(json_object_get(lp, "token_logprobs"), 0)));
    assert_true(json_real_value(json_array_get(json_object_get(lp, "token_logprobs"), 5)) < 0);
    json_decref(j);
    stream_texts("{\"model\": \"kjv\", \"prompt\": \"Once upon a time\", \"max_tokens\": 0, "
                 "\"echo\": true, \"stream\": true}",
                 texts, &completion_tokens);
    assert_string_equal(texts[0], "Once upon a time");
    expect("POST", "/v1/completions", "{\"model\": \"kjv\", \"prompt\": \"x\", \"max_tokens\": 0}",
           400,
           "{\"error\":{\"message\":\"max_tokens must be at least 1, got 0.\",\"type\":"
           "\"BadRequestError\",\"param\":null,\"code\":400}}");

    /* A token-id prompt echoes its decoded text. */
    j = complete("{\"model\": \"kjv\", \"prompt\": [[1, 400]], \"max_tokens\": 2, "
                 "\"temperature\": 0, \"echo\": true}");
    json_t *plain = complete("{\"model\": \"kjv\", \"prompt\": [1, 400], \"max_tokens\": 2, "
                             "\"temperature\": 0}");
    const char *echoed = choice_text(j, 0), *gen = choice_text(plain, 0);
    size_t lead = strlen(echoed) - strlen(gen);
    assert_true(strlen(echoed) > strlen(gen));
    assert_string_equal(echoed + lead, gen);
    assert_int_equal(strncmp(echoed, "<s>", 3), 0);
    json_decref(j);
    json_decref(plain);
    free(ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openai_completions),
        cmocka_unit_test(test_openai_prompt_list),
        cmocka_unit_test(test_openai_echo),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

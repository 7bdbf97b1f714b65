/* tool_choice "required" and named functions on cvllm-server over
 * loopback: the output is held to the tools' schemas by structured
 * outputs (as vLLM does), so even the shipped tiny model
 * (samples/models/cvllm-kjv-4m, with a ChatML template of the test's own)
 * calls the tool; whole and streamed give the same calls in vLLM's
 * shapes. openai_chat_out.c's shapes in detail: test_openai_chat_out.c;
 * the refusals: test_openai_chat.c. */
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

static const char CHATML[] =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] %}{{ message['content'] }}{% endif %}{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if tools %}{{ '<|im_start|>tools\\n' + (tools | tojson) + '<|im_end|>\\n' }}{% endif %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

#define USER_MSG "\"messages\": [{\"role\": \"user\", \"content\": \"Once upon a time\"}]"
#define CITY_TOOLS                                                                                 \
    "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", "              \
    "\"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\", "    \
    "\"enum\": [\"Paris\", \"Rome\"]}}, \"required\": [\"city\"]}}}]"
#define NAMED "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\"}}"

static int setup(void **state)
{
    (void)state;
    curl_global_init(CURL_GLOBAL_ALL);
    const char *repo = th_make_repo();
    /* model.json's chat_template holding the text itself */
    json_t *mj = json_pack("{s:s, s:b, s:s}", "model", th_model_dir(), "enforce_eager", 1,
                           "chat_template", CHATML);
    char *text = json_dumps(mj, 0);
    th_add_model(repo, "chat", "backend: \"vllm\"\n", text);
    free(text);
    json_decref(mj);
    return th_start(&srv, repo, NULL) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    int rc = th_stop(&srv);
    curl_global_cleanup();
    return rc == 0 ? 0 : -1;
}

static json_t *post(const char *body)
{
    char *resp = NULL;
    long status = th_http("POST", th_url(&srv, "/v1/chat/completions"), body, &resp);
    if (status != 200) fprintf(stderr, "%s -> %ld %s\n", body, status, resp);
    assert_int_equal(status, 200);
    json_t *j = json_loads(resp, 0, NULL);
    assert_non_null(j);
    free(resp);
    return j;
}

static const json_t *choice(const json_t *j, size_t i)
{
    return json_array_get(json_object_get(j, "choices"), i);
}

/* A call's arguments hold the schema's one property, a city of its enum. */
static void check_city(const char *args)
{
    json_t *a = json_loads(args, 0, NULL);
    assert_non_null(a);
    assert_int_equal(json_object_size(a), 1);
    const char *city = json_string_value(json_object_get(a, "city"));
    assert_true(city && (!strcmp(city, "Paris") || !strcmp(city, "Rome")));
    json_decref(a);
}

/* A streamed chat's tool calls of choice 0 assembled from their deltas
 * (name and id on the first of each, argument text after); returns how
 * many; *finish the finish reason. */
static int stream_calls(const char *body, char names[4][64], char args[4][256], char *finish)
{
    char *events = NULL;
    int n = 0;
    assert_int_equal(th_sse(th_url(&srv, "/v1/chat/completions"), body, 0, &events), 200);
    memset(args, 0, 4 * 256);
    for (const char *p = events; (p = strstr(p, "data: {"));) {
        p += 6;
        const char *end = strstr(p, "\n\n");
        assert_non_null(end);
        json_t *ev = json_loadb(p, (size_t)(end - p), 0, NULL), *tc;
        const json_t *ch = choice(ev, 0);
        size_t i;
        json_array_foreach(json_object_get(json_object_get(ch, "delta"), "tool_calls"), i, tc)
        {
            json_int_t k = json_integer_value(json_object_get(tc, "index"));
            assert_true(k >= 0 && k < 4);
            const json_t *fn = json_object_get(tc, "function");
            if (json_object_get(tc, "id")) {
                assert_int_equal(k, n++);
                snprintf(names[k], 64, "%s", json_string_value(json_object_get(fn, "name")));
            }
            strncat(args[k], json_string_value(json_object_get(fn, "arguments")),
                    255 - strlen(args[k]));
        }
        if (json_is_string(json_object_get(ch, "finish_reason")))
            snprintf(finish, 16, "%s", json_string_value(json_object_get(ch, "finish_reason")));
        json_decref(ev);
        p = end;
    }
    free(events);
    return n;
}

/* tool_choice naming a function, or "required": the output is held to
 * the schema, so even this tiny model calls the tool, whole and streamed
 * alike (vLLM's shapes: content "", streamed finish "tool_calls"). The
 * model repeats "required"'s list until max_tokens: the calls are those
 * whose element closed. */
static void test_chat_forced_tools(void **state)
{
    (void)state;
    const char *body = "{\"model\": \"chat\", " USER_MSG ", " CITY_TOOLS ", \"tool_choice\": " NAMED
                       ", \"max_tokens\": 40, \"temperature\": 0%s}";
    char b[1024], names[4][64], args[4][256], finish[16];
    snprintf(b, sizeof b, body, "");
    json_t *j = post(b);
    const json_t *m = json_object_get(choice(j, 0), "message");
    assert_string_equal(json_string_value(json_object_get(m, "content")), "");
    assert_string_equal(json_string_value(json_object_get(choice(j, 0), "finish_reason")), "stop");
    assert_int_equal(json_array_size(json_object_get(m, "tool_calls")), 1);
    const json_t *fn =
        json_object_get(json_array_get(json_object_get(m, "tool_calls"), 0), "function");
    assert_string_equal(json_string_value(json_object_get(fn, "name")), "get_weather");
    const char *whole_args = json_string_value(json_object_get(fn, "arguments"));
    check_city(whole_args);
    assert_true(
        json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens")) < 40);
    snprintf(b, sizeof b, body, ", \"stream\": true");
    assert_int_equal(stream_calls(b, names, args, finish), 1);
    assert_string_equal(names[0], "get_weather");
    assert_string_equal(args[0], whole_args);
    assert_string_equal(finish, "tool_calls");
    json_decref(j);

    body = "{\"model\": \"chat\", " USER_MSG ", " CITY_TOOLS ", \"tool_choice\": \"required\", "
           "\"max_tokens\": 120, \"temperature\": 0%s}";
    snprintf(b, sizeof b, body, "");
    j = post(b);
    m = json_object_get(choice(j, 0), "message");
    assert_string_equal(json_string_value(json_object_get(choice(j, 0), "finish_reason")),
                        "length");
    assert_string_equal(json_string_value(json_object_get(m, "content")), "");
    size_t n = json_array_size(json_object_get(m, "tool_calls"));
    assert_true(n >= 1 && n <= 4);
    snprintf(b, sizeof b, body, ", \"stream\": true");
    assert_int_equal(stream_calls(b, names, args, finish), (int)n);
    for (size_t i = 0; i < n; i++) {
        fn = json_object_get(json_array_get(json_object_get(m, "tool_calls"), i), "function");
        assert_string_equal(json_string_value(json_object_get(fn, "name")), "get_weather");
        assert_string_equal(names[i], "get_weather");
        assert_string_equal(args[i], json_string_value(json_object_get(fn, "arguments")));
        check_city(args[i]);
    }
    assert_string_equal(finish, "tool_calls");
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_forced_tools),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

/* The tool-call parsers of the chat API (src/server/openai_tools.c) on
 * exact model outputs: Hermes / Qwen2.5 <tool_call> blocks and Llama 3.1
 * JSON calls, whole and streamed in pieces, with arguments serialized as
 * vLLM's json.dumps(ensure_ascii=False) does; and the forced calls of
 * tool_choice "required" (vLLM's schema, its output read back whole and
 * streamed) and of a named function (streamed as vLLM's deltas). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "server/openai_tools.h"

/* Parses text whole; checks content (NULL = none) and the calls' names
 * and arguments (n of them). */
static void expect_whole(cv_tool_parser p, const char *text, const char *content, int n,
                         const char *const *names, const char *const *args)
{
    uint64_t seq = 0;
    char *got = NULL;
    json_t *calls = NULL;
    assert_int_equal(cv_tools_extract(p, text, strlen(text), &seq, &got, &calls), 0);
    if (content)
        assert_string_equal(got, content);
    else
        assert_null(got);
    assert_int_equal(json_array_size(calls), n);
    for (int i = 0; i < n; i++) {
        json_t *c = json_array_get(calls, (size_t)i), *fn = json_object_get(c, "function");
        const char *id = json_string_value(json_object_get(c, "id"));
        assert_int_equal(strncmp(id, "chatcmpl-tool-", 14), 0);
        assert_int_equal(strlen(id), 14 + 32);
        assert_string_equal(json_string_value(json_object_get(c, "type")), "function");
        assert_string_equal(json_string_value(json_object_get(fn, "name")), names[i]);
        assert_string_equal(json_string_value(json_object_get(fn, "arguments")), args[i]);
    }
    if (n == 2)
        assert_string_not_equal(json_string_value(json_object_get(json_array_get(calls, 0), "id")),
                                json_string_value(json_object_get(json_array_get(calls, 1), "id")));
    free(got);
    json_decref(calls);
}

static void test_hermes_whole(void **state)
{
    (void)state;
    const char *names[] = {"get_weather", "get_time"};
    expect_whole(CV_TOOLS_HERMES,
                 "Let me check.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":"
                 "\"Paris\",\"days\":2}}\n</tool_call>",
                 "Let me check.", 1, names, (const char *[]){"{\"city\": \"Paris\", \"days\": 2}"});
    expect_whole(CV_TOOLS_HERMES,
                 "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Z\xc3\xbc"
                 "rich\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": "
                 "{}}\n</tool_call>",
                 NULL, 2, names, (const char *[]){"{\"city\": \"Z\xc3\xbcrich\"}", "{}"});
    /* Python's float repr and nested values. */
    expect_whole(CV_TOOLS_HERMES,
                 "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"a\": 1e-05, \"b\": "
                 "1e16, \"c\": 3.0, \"d\": -2.5, \"e\": 0.1, \"f\": [true, null, \"q\\\"\\n\"], "
                 "\"g\": {\"h\": 123456.789}}}</tool_call>",
                 NULL, 1, names,
                 (const char *[]){"{\"a\": 1e-05, \"b\": 1e+16, \"c\": 3.0, \"d\": -2.5, \"e\": "
                                  "0.1, \"f\": [true, null, \"q\\\"\\n\"], \"g\": {\"h\": "
                                  "123456.789}}"});
    /* An unclosed final block still counts (vLLM's second pattern). */
    expect_whole(CV_TOOLS_HERMES, "<tool_call>{\"name\": \"get_time\", \"arguments\": {}}", NULL, 1,
                 names + 1, (const char *[]){"{}"});
    /* No call, or a malformed one: all of it is content. */
    expect_whole(CV_TOOLS_HERMES, "It is sunny.", "It is sunny.", 0, NULL, NULL);
    expect_whole(CV_TOOLS_HERMES, "x<tool_call>{\"name\": \"f\", \"arguments\": }</tool_call>",
                 "x<tool_call>{\"name\": \"f\", \"arguments\": }</tool_call>", 0, NULL, NULL);
    expect_whole(CV_TOOLS_HERMES, "<tool_call>{\"arguments\": {}}</tool_call>",
                 "<tool_call>{\"arguments\": {}}</tool_call>", 0, NULL, NULL);
    /* No parser: plain text. */
    expect_whole(CV_TOOLS_NONE, "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>",
                 "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>", 0, NULL, NULL);
    expect_whole(CV_TOOLS_HERMES, "", NULL, 0, NULL, NULL);
    assert_int_equal(cv_tool_parser_named("hermes"), CV_TOOLS_HERMES);
    assert_int_equal(cv_tool_parser_named("llama3_json"), CV_TOOLS_LLAMA3_JSON);
    assert_int_equal(cv_tool_parser_named("mistral"), CV_TOOLS_NONE);
    assert_int_equal(cv_tool_parser_named(NULL), CV_TOOLS_NONE);
}

static void test_llama3_whole(void **state)
{
    (void)state;
    const char *names[] = {"get_weather", "get_time"};
    expect_whole(CV_TOOLS_LLAMA3_JSON,
                 "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}", NULL, 1,
                 names, (const char *[]){"{\"city\": \"Paris\"}"});
    expect_whole(CV_TOOLS_LLAMA3_JSON,
                 "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {}}; {\"name\": "
                 "\"get_time\", \"arguments\": {\"tz\": \"UTC\"}}",
                 NULL, 2, names, (const char *[]){"{}", "{\"tz\": \"UTC\"}"});
    expect_whole(CV_TOOLS_LLAMA3_JSON, "The weather is {sunny}.", "The weather is {sunny}.", 0,
                 NULL, NULL);
    expect_whole(CV_TOOLS_LLAMA3_JSON, "{\"oops\": 1}", "{\"oops\": 1}", 0, NULL, NULL);
    expect_whole(CV_TOOLS_LLAMA3_JSON, "{\"name\": \"f\", \"parameters\": {}} trailing",
                 "{\"name\": \"f\", \"parameters\": {}} trailing", 0, NULL, NULL);
}

/* Feeds one piece; checks the delta's content (NULL = none) and the
 * number of tool calls it carries. Returns the delta (caller frees). */
static json_t *feed(cv_tool_stream *st, cv_tool_parser p, const char *piece, bool final,
                    const char *content, size_t n_calls)
{
    static uint64_t seq;
    json_t *d = cv_tool_stream_feed(st, p, piece, strlen(piece), final, &seq);
    if (!content && n_calls == 0) {
        assert_null(d);
        return NULL;
    }
    assert_non_null(d);
    if (content)
        assert_string_equal(json_string_value(json_object_get(d, "content")), content);
    else
        assert_null(json_object_get(d, "content"));
    assert_int_equal(json_array_size(json_object_get(d, "tool_calls")), n_calls);
    return d;
}

static void test_hermes_stream(void **state)
{
    (void)state;
    cv_tool_stream st = {0};
    json_decref(feed(&st, CV_TOOLS_HERMES, "Sure", false, "Sure", 0));
    json_decref(feed(&st, CV_TOOLS_HERMES, " <tool", false, " ", 0)); /* "<tool" held back */
    feed(&st, CV_TOOLS_HERMES, "_call>{\"name\": \"f\", ", false, NULL, 0);
    json_t *d =
        feed(&st, CV_TOOLS_HERMES, "\"arguments\": {\"a\": 1}}</tool_call>", false, NULL, 1);
    json_t *c = json_array_get(json_object_get(d, "tool_calls"), 0);
    assert_int_equal(json_integer_value(json_object_get(c, "index")), 0);
    assert_string_equal(json_string_value(json_object_get(c, "type")), "function");
    assert_string_equal(json_string_value(json_object_get(json_object_get(c, "function"), "name")),
                        "f");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(c, "function"), "arguments")),
        "{\"a\": 1}");
    json_decref(d);
    d = feed(&st, CV_TOOLS_HERMES, "<tool_call>{\"name\": \"g\", \"arguments\": {}}</tool_call>",
             true, NULL, 1);
    c = json_array_get(json_object_get(d, "tool_calls"), 0);
    assert_int_equal(json_integer_value(json_object_get(c, "index")), 1);
    json_decref(d);
    assert_int_equal(cv_tool_stream_calls(&st), 2);
    cv_tool_stream_free(&st);

    /* A held-back "<" that turns out to be text is sent at the end. */
    json_decref(feed(&st, CV_TOOLS_HERMES, "a <", false, "a ", 0));
    json_decref(feed(&st, CV_TOOLS_HERMES, "", true, "<", 0));
    assert_int_equal(cv_tool_stream_calls(&st), 0);
    cv_tool_stream_free(&st);
    /* A malformed call stays text. */
    json_decref(feed(&st, CV_TOOLS_HERMES, "<tool_call>{oops}</tool_call>", false,
                     "<tool_call>{oops}</tool_call>", 0));
    cv_tool_stream_free(&st);
}

static void test_llama3_stream(void **state)
{
    (void)state;
    cv_tool_stream st = {0};
    feed(&st, CV_TOOLS_LLAMA3_JSON, "{\"name\"", false, NULL, 0);
    feed(&st, CV_TOOLS_LLAMA3_JSON, ": \"f\", \"parameters\": {\"x\": [1, 2]}}", false, NULL, 0);
    json_t *d = feed(&st, CV_TOOLS_LLAMA3_JSON, "", true, NULL, 1);
    json_t *fn = json_object_get(json_array_get(json_object_get(d, "tool_calls"), 0), "function");
    assert_string_equal(json_string_value(json_object_get(fn, "arguments")), "{\"x\": [1, 2]}");
    json_decref(d);
    cv_tool_stream_free(&st);

    feed(&st, CV_TOOLS_LLAMA3_JSON, "<|py", false, NULL, 0); /* may be the tag */
    json_decref(feed(&st, CV_TOOLS_LLAMA3_JSON, "re", false, "<|pyre", 0));
    json_decref(feed(&st, CV_TOOLS_LLAMA3_JSON, " text", true, " text", 0));
    cv_tool_stream_free(&st);
    /* Held as a call, but not one: all of it as content at the end. */
    feed(&st, CV_TOOLS_LLAMA3_JSON, "{not json", false, NULL, 0);
    json_decref(feed(&st, CV_TOOLS_LLAMA3_JSON, "", true, "{not json", 0));
    cv_tool_stream_free(&st);
}

#define WEATHER                                                                                    \
    "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": "          \
    "{\"type\": \"object\", \"properties\": {\"city\": {\"$ref\": \"#/$defs/city\"}}, "            \
    "\"$defs\": {\"city\": {\"enum\": [\"Paris\", \"Rome\"]}}}}}"

/* vLLM's schema for "required": the array of {name, parameters}, a
 * missing parameters schema as {}, every tool's $defs at the top. */
static void test_required_schema(void **state)
{
    (void)state;
    cv_error err = {.msg = ""};
    json_t *tools = json_loads(
        "[" WEATHER ", {\"type\": \"function\", \"function\": {\"name\": \"now\"}}]", 0, NULL);
    json_t *schema = cv_tools_required_schema(tools, &err);
    char *got = json_dumps(schema, JSON_COMPACT);
    assert_string_equal(
        got, "{\"type\":\"array\",\"minItems\":1,\"items\":{\"type\":\"object\",\"anyOf\":["
             "{\"properties\":{\"name\":{\"type\":\"string\",\"enum\":[\"get_weather\"]},"
             "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"$ref\":\"#/$defs/"
             "city\"}}}},\"required\":[\"name\",\"parameters\"]},{\"properties\":{\"name\":{"
             "\"type\":\"string\",\"enum\":[\"now\"]},\"parameters\":{\"type\":\"object\","
             "\"properties\":{}}},\"required\":[\"name\",\"parameters\"]}]},\"$defs\":{\"city\":"
             "{\"enum\":[\"Paris\",\"Rome\"]}}}");
    /* the request's tools keep their $defs */
    assert_non_null(json_object_get(
        json_object_get(json_object_get(json_array_get(tools, 0), "function"), "parameters"),
        "$defs"));
    free(got);
    json_decref(schema);
    json_decref(tools);

    tools = json_loads("[" WEATHER ", {\"type\": \"function\", \"function\": {\"name\": \"g\", "
                       "\"parameters\": {\"$defs\": {\"city\": {\"type\": \"string\"}}}}}]",
                       0, NULL);
    assert_null(cv_tools_required_schema(tools, &err));
    assert_string_equal(err.msg,
                        "Tool definition 'city' has multiple schemas, which is not supported.");
    json_decref(tools);
}

static void test_required_whole(void **state)
{
    (void)state;
    uint64_t seq = 0;
    json_t *calls = NULL;
    const char *text = "[{\"name\": \"get_weather\", \"parameters\": {\"city\":\"Paris\"}}, "
                       "{\"name\":\"now\",\"parameters\":{}}]";
    assert_int_equal(cv_tools_required_extract(text, strlen(text), &seq, &calls), 0);
    assert_int_equal(json_array_size(calls), 2);
    const char *names[] = {"get_weather", "now"}, *args[] = {"{\"city\": \"Paris\"}", "{}"};
    for (size_t i = 0; i < 2; i++) {
        json_t *c = json_array_get(calls, i), *fn = json_object_get(c, "function");
        assert_int_equal(strlen(json_string_value(json_object_get(c, "id"))), 14 + 32);
        assert_string_equal(json_string_value(json_object_get(c, "type")), "function");
        assert_string_equal(json_string_value(json_object_get(fn, "name")), names[i]);
        assert_string_equal(json_string_value(json_object_get(fn, "arguments")), args[i]);
    }
    json_decref(calls);
    /* Cut short by max_tokens: the calls whose element closed, or none. */
    assert_int_equal(cv_tools_required_extract(text, 70, &seq, &calls), 0);
    assert_int_equal(json_array_size(calls), 1);
    assert_null(json_object_get(json_array_get(calls, 0), "index"));
    json_decref(calls);
    assert_int_equal(cv_tools_required_extract(text, 30, &seq, &calls), 0);
    assert_null(calls);
    assert_int_equal(cv_tools_required_extract("[]", 2, &seq, &calls), 0);
    assert_null(calls);

    json_t *call = cv_tools_named_call("get_weather", "{\"city\":\"Rome\"}x", 15, &seq);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(call, "function"), "arguments")),
        "{\"city\":\"Rome\"}");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(call, "function"), "name")),
        "get_weather");
    json_decref(call);
}

/* The one tool call of a delta: checks its index, and returns it. */
static json_t *only_call(json_t *delta, int index)
{
    assert_non_null(delta);
    assert_null(json_object_get(delta, "content"));
    assert_int_equal(json_array_size(json_object_get(delta, "tool_calls")), 1);
    json_t *c = json_array_get(json_object_get(delta, "tool_calls"), 0);
    assert_int_equal(json_integer_value(json_object_get(c, "index")), index);
    return c;
}

static void test_forced_stream(void **state)
{
    (void)state;
    uint64_t seq = 0;
    cv_tool_stream st = {0};
    /* Named: the first delta names the call, then argument text alone. */
    json_t *d = cv_tool_stream_feed_named(&st, "get_weather", "{\"ci", 4, &seq);
    json_t *c = only_call(d, 0), *fn = json_object_get(c, "function");
    assert_int_equal(strncmp(json_string_value(json_object_get(c, "id")), "chatcmpl-tool-", 14), 0);
    assert_string_equal(json_string_value(json_object_get(c, "type")), "function");
    assert_string_equal(json_string_value(json_object_get(fn, "name")), "get_weather");
    assert_string_equal(json_string_value(json_object_get(fn, "arguments")), "{\"ci");
    json_decref(d);
    d = cv_tool_stream_feed_named(&st, "get_weather", "ty\": \"Rome\"}", 12, &seq);
    c = only_call(d, 0);
    fn = json_object_get(c, "function");
    assert_null(json_object_get(c, "id"));
    assert_null(json_object_get(fn, "name"));
    assert_string_equal(json_string_value(json_object_get(fn, "arguments")), "ty\": \"Rome\"}");
    json_decref(d);
    assert_null(cv_tool_stream_feed_named(&st, "get_weather", "", 0, &seq));
    assert_int_equal(cv_tool_stream_calls(&st), 1);
    cv_tool_stream_free(&st);

    /* Required: a call once its element closes; braces in strings and
     * escaped quotes do not count. */
    const char *pieces[] = {"[{\"name\": \"get_weather\", \"param",
                            "eters\": {\"city\": \"}{\\\"\"}}, {\"na",
                            "me\": \"now\", \"parameters\": {}}", "]"};
    const char *args[] = {NULL, "{\"city\": \"}{\\\"\"}", "{}", NULL};
    for (int i = 0; i < 4; i++) {
        d = cv_tool_stream_feed_required(&st, pieces[i], strlen(pieces[i]), &seq);
        if (!args[i]) {
            assert_null(d);
            continue;
        }
        c = only_call(d, i - 1);
        fn = json_object_get(c, "function");
        assert_string_equal(json_string_value(json_object_get(fn, "name")),
                            i == 1 ? "get_weather" : "now");
        assert_string_equal(json_string_value(json_object_get(fn, "arguments")), args[i]);
        assert_int_equal(strlen(json_string_value(json_object_get(c, "id"))), 14 + 32);
        json_decref(d);
    }
    assert_int_equal(cv_tool_stream_calls(&st), 2);
    cv_tool_stream_free(&st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hermes_whole),    cmocka_unit_test(test_llama3_whole),
        cmocka_unit_test(test_hermes_stream),   cmocka_unit_test(test_llama3_stream),
        cmocka_unit_test(test_required_schema), cmocka_unit_test(test_required_whole),
        cmocka_unit_test(test_forced_stream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Chat responses assembled from engine outputs whose text holds tool
 * calls (the tiny test models never write one): the whole
 * chat.completion with tool_calls and finish_reason "tool_calls", and
 * the streamed chunks (role first, content deltas, one tool_calls delta
 * per call, the finish chunk, usage), for the hermes and llama3_json
 * parsers; and the forced calls of tool_choice "required" and a named
 * function as vLLM answers them (content "", the engine's finish reason
 * whole, "tool_calls" streamed) with the schema each puts in the
 * sampling parameters. In process: openai_chat.c's parser and
 * openai_chat_out.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "server/openai_chat.h"
#include "server/openai_chat_internal.h"

#define BODY                                                                                       \
    "{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"Weather?\"}], "         \
    "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\"}}]%s}"

static void start(cv_openai_request *r, cv_tool_parser p, const char *extra)
{
    char body[1024];
    cv_error err = {.msg = ""};
    snprintf(body, sizeof body, BODY, extra);
    assert_int_equal(cv_chat_parse(body, strlen(body), 1, r, &err), 0);
    ((cv_chat_state *)r->chat_state)->parser = p; /* cv_chat_prepare's pick */
    assert_int_equal(cv_openai_begin(r, NULL, &err), 0);
}

/* One engine output of sequence 0 with `text`. */
static cv_request_output output(const char *text, int n_tokens, cv_finish_reason f,
                                cv_seq_output *seq)
{
    memset(seq, 0, sizeof *seq);
    seq->text = (char *)text;
    seq->text_len = strlen(text);
    seq->n_tokens = n_tokens;
    seq->finish_reason = f;
    return (cv_request_output){
        .n_prompt_tokens = 30, .n_seqs = 1, .seqs = seq, .finished = f != CV_FINISH_NONE};
}

static void check_call(const json_t *call, const char *args)
{
    const json_t *fn = json_object_get(call, "function");
    assert_int_equal(strncmp(json_string_value(json_object_get(call, "id")), "chatcmpl-tool-", 14),
                     0);
    assert_string_equal(json_string_value(json_object_get(call, "type")), "function");
    assert_string_equal(json_string_value(json_object_get(fn, "name")), "get_weather");
    assert_string_equal(json_string_value(json_object_get(fn, "arguments")), args);
}

static void test_whole_tool_calls(void **state)
{
    (void)state;
    cv_openai_request r;
    cv_seq_output seq;
    start(&r, CV_TOOLS_HERMES, "");
    cv_request_output out = output("Let me look.<tool_call>\n{\"name\": \"get_weather\", "
                                   "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
                                   20, CV_FINISH_STOP, &seq);
    assert_int_equal(cv_chat_accumulate(&r, 0, &out), 0);
    json_t *j = cv_chat_response(&r);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "chat.completion");
    json_t *c = json_array_get(json_object_get(j, "choices"), 0),
           *m = json_object_get(c, "message");
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "tool_calls");
    assert_string_equal(json_string_value(json_object_get(m, "content")), "Let me look.");
    assert_int_equal(json_array_size(json_object_get(m, "tool_calls")), 1);
    check_call(json_array_get(json_object_get(m, "tool_calls"), 0), "{\"city\": \"Paris\"}");
    json_t *u = json_object_get(j, "usage");
    assert_int_equal(json_integer_value(json_object_get(u, "prompt_tokens")), 30);
    assert_int_equal(json_integer_value(json_object_get(u, "completion_tokens")), 20);
    assert_int_equal(json_integer_value(json_object_get(u, "total_tokens")), 50);
    json_decref(j);
    cv_openai_request_free(&r);

    /* llama3_json: content null, finish tool_calls. */
    start(&r, CV_TOOLS_LLAMA3_JSON, "");
    out = output("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}", 12,
                 CV_FINISH_STOP, &seq);
    assert_int_equal(cv_chat_accumulate(&r, 0, &out), 0);
    j = cv_chat_response(&r);
    c = json_array_get(json_object_get(j, "choices"), 0);
    m = json_object_get(c, "message");
    assert_true(json_is_null(json_object_get(m, "content")));
    check_call(json_array_get(json_object_get(m, "tool_calls"), 0), "{\"city\": \"Oslo\"}");
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "tool_calls");
    json_decref(j);
    cv_openai_request_free(&r);

    /* tool_choice none (no parser): the same text is content. */
    start(&r, CV_TOOLS_NONE, ", \"tool_choice\": \"none\"");
    out = output("<tool_call>{\"name\": \"get_weather\", \"arguments\": {}}</tool_call>", 9,
                 CV_FINISH_STOP, &seq);
    assert_int_equal(cv_chat_accumulate(&r, 0, &out), 0);
    j = cv_chat_response(&r);
    c = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(c, "message"), "content")),
        "<tool_call>{\"name\": \"get_weather\", \"arguments\": {}}</tool_call>");
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "stop");
    json_decref(j);
    cv_openai_request_free(&r);
}

/* The delta of the only choice of a chunk. */
static json_t *delta_of(json_t *chunk)
{
    assert_non_null(chunk);
    assert_string_equal(json_string_value(json_object_get(chunk, "object")),
                        "chat.completion.chunk");
    return json_object_get(json_array_get(json_object_get(chunk, "choices"), 0), "delta");
}

static const char *finish_of(json_t *chunk)
{
    return json_string_value(
        json_object_get(json_array_get(json_object_get(chunk, "choices"), 0), "finish_reason"));
}

static void test_streamed_tool_calls(void **state)
{
    (void)state;
    cv_openai_request r;
    cv_seq_output seq;
    start(&r, CV_TOOLS_HERMES, ", \"stream\": true, \"stream_options\": {\"include_usage\": true}");
    json_t *first = cv_chat_start_chunks(&r);
    assert_int_equal(json_array_size(first), 1);
    json_t *d = delta_of(json_array_get(first, 0));
    assert_string_equal(json_string_value(json_object_get(d, "role")), "assistant");
    assert_string_equal(json_string_value(json_object_get(d, "content")), "");
    json_decref(first);

    cv_request_output out = output("Let me", 2, CV_FINISH_NONE, &seq);
    json_t *ch = cv_chat_chunk(&r, 0, &out);
    assert_string_equal(json_string_value(json_object_get(delta_of(ch), "content")), "Let me");
    assert_null(finish_of(ch));
    json_decref(ch);
    out = output(" look.<tool", 3, CV_FINISH_NONE, &seq);
    ch = cv_chat_chunk(&r, 0, &out);
    assert_string_equal(json_string_value(json_object_get(delta_of(ch), "content")), " look.");
    json_decref(ch);
    out = output("_call>\n{\"name\": \"get_weather\", ", 6, CV_FINISH_NONE, &seq);
    assert_null(cv_chat_chunk(&r, 0, &out)); /* inside the call: nothing yet */
    out = output("\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>", 9, CV_FINISH_STOP, &seq);
    ch = cv_chat_chunk(&r, 0, &out);
    d = delta_of(ch);
    assert_null(json_object_get(d, "content"));
    json_t *call = json_array_get(json_object_get(d, "tool_calls"), 0);
    assert_int_equal(json_integer_value(json_object_get(call, "index")), 0);
    check_call(call, "{\"city\": \"Paris\"}");
    assert_string_equal(finish_of(ch), "tool_calls");
    json_decref(ch);
    json_t *u = cv_chat_usage_chunk(&r);
    assert_int_equal(json_array_size(json_object_get(u, "choices")), 0);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(u, "usage"), "completion_tokens")), 20);
    json_decref(u);
    cv_openai_request_free(&r);
}

#define NAMED                                                                                      \
    ", \"tool_choice\": {\"type\": \"function\", \"function\": {\"name\": \"get_weather\"}}"

/* The only choice of a whole response, after one output of `text`. */
static json_t *whole(const char *extra, const char *text, cv_finish_reason f, json_t **resp)
{
    cv_openai_request r;
    cv_seq_output seq;
    start(&r, CV_TOOLS_NONE, extra);
    cv_request_output out = output(text, 7, f, &seq);
    assert_int_equal(cv_chat_accumulate(&r, 0, &out), 0);
    *resp = cv_chat_response(&r);
    cv_openai_request_free(&r);
    return json_array_get(json_object_get(*resp, "choices"), 0);
}

static void test_forced_whole(void **state)
{
    (void)state;
    /* The constraint each choice puts on the output. */
    cv_openai_request r;
    start(&r, CV_TOOLS_NONE, NAMED);
    assert_int_equal(r.sp.structured_kind, CV_STRUCTURED_JSON);
    assert_string_equal(r.sp.structured_text, "{\"type\":\"object\",\"properties\":{}}");
    cv_openai_request_free(&r);
    start(&r, CV_TOOLS_NONE, ", \"tool_choice\": \"required\"");
    assert_int_equal(r.sp.structured_kind, CV_STRUCTURED_JSON);
    assert_string_equal(r.sp.structured_text,
                        "{\"type\":\"array\",\"minItems\":1,\"items\":{\"type\":\"object\","
                        "\"anyOf\":[{\"properties\":{\"name\":{\"type\":\"string\",\"enum\":["
                        "\"get_weather\"]},\"parameters\":{\"type\":\"object\",\"properties\":{}}"
                        "},\"required\":[\"name\",\"parameters\"]}]}}");
    cv_openai_request_free(&r);

    /* Named: one call whose arguments are the text; content "" and the
     * engine's finish reason (vLLM). */
    json_t *j;
    json_t *c = whole(NAMED, "{\"city\":\"Rome\"}", CV_FINISH_STOP, &j),
           *m = json_object_get(c, "message");
    assert_string_equal(json_string_value(json_object_get(m, "content")), "");
    assert_int_equal(json_array_size(json_object_get(m, "tool_calls")), 1);
    check_call(json_array_get(json_object_get(m, "tool_calls"), 0), "{\"city\":\"Rome\"}");
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "stop");
    json_decref(j);
    c = whole(NAMED, "{\"ci", CV_FINISH_LENGTH, &j);
    check_call(json_array_get(json_object_get(json_object_get(c, "message"), "tool_calls"), 0),
               "{\"ci");
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "length");
    json_decref(j);

    /* Required: the list's calls, arguments re-serialized. */
    c = whole(", \"tool_choice\": \"required\"",
              "[{\"name\": \"get_weather\", \"parameters\": {\"city\":\"Rome\"}}, {\"name\": "
              "\"get_weather\", \"parameters\": {}}]",
              CV_FINISH_STOP, &j);
    m = json_object_get(c, "message");
    assert_string_equal(json_string_value(json_object_get(m, "content")), "");
    assert_int_equal(json_array_size(json_object_get(m, "tool_calls")), 2);
    check_call(json_array_get(json_object_get(m, "tool_calls"), 0), "{\"city\": \"Rome\"}");
    check_call(json_array_get(json_object_get(m, "tool_calls"), 1), "{}");
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "stop");
    json_decref(j);
    /* Cut short: no call; the text is the content. */
    c = whole(", \"tool_choice\": \"required\"", "[{\"name\": \"get_w", CV_FINISH_LENGTH, &j);
    m = json_object_get(c, "message");
    assert_string_equal(json_string_value(json_object_get(m, "content")), "[{\"name\": \"get_w");
    assert_int_equal(json_array_size(json_object_get(m, "tool_calls")), 0);
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "length");
    json_decref(j);
}

static void test_forced_stream(void **state)
{
    (void)state;
    cv_openai_request r;
    cv_seq_output seq;
    start(&r, CV_TOOLS_NONE, NAMED ", \"stream\": true");
    json_decref(cv_chat_start_chunks(&r));
    cv_request_output out = output("{\"ci", 2, CV_FINISH_NONE, &seq);
    json_t *ch = cv_chat_chunk(&r, 0, &out);
    json_t *call = json_array_get(json_object_get(delta_of(ch), "tool_calls"), 0);
    assert_int_equal(json_integer_value(json_object_get(call, "index")), 0);
    check_call(call, "{\"ci");
    assert_null(json_object_get(delta_of(ch), "content"));
    assert_null(finish_of(ch));
    json_decref(ch);
    out = output("ty\":\"Rome\"}", 3, CV_FINISH_STOP, &seq);
    ch = cv_chat_chunk(&r, 0, &out);
    call = json_array_get(json_object_get(delta_of(ch), "tool_calls"), 0);
    assert_null(json_object_get(call, "id"));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(call, "function"), "arguments")),
        "ty\":\"Rome\"}");
    assert_string_equal(finish_of(ch), "tool_calls"); /* vLLM's streamed reason */
    json_decref(ch);
    cv_openai_request_free(&r);

    start(&r, CV_TOOLS_NONE, ", \"tool_choice\": \"required\", \"stream\": true");
    json_decref(cv_chat_start_chunks(&r));
    out = output("[{\"name\": \"get_weather\", ", 5, CV_FINISH_NONE, &seq);
    assert_null(cv_chat_chunk(&r, 0, &out));
    out = output("\"parameters\": {\"city\": \"Rome\"}}]", 6, CV_FINISH_LENGTH, &seq);
    ch = cv_chat_chunk(&r, 0, &out);
    call = json_array_get(json_object_get(delta_of(ch), "tool_calls"), 0);
    assert_int_equal(json_integer_value(json_object_get(call, "index")), 0);
    check_call(call, "{\"city\": \"Rome\"}");
    assert_string_equal(finish_of(ch), "tool_calls");
    json_decref(ch);
    cv_openai_request_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole_tool_calls),
        cmocka_unit_test(test_streamed_tool_calls),
        cmocka_unit_test(test_forced_whole),
        cmocka_unit_test(test_forced_stream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* The client side against a real cvllm-server serving the shipped model (see
 * server_fixture.h): cv_client's gRPC stream (ids, counts, final flags,
 * half-close, cancel) and HTTP SSE (deltas equal /generate's text), then
 * cvllm-client checked the way the seed's CI checks client.py: the PASS/FAIL
 * line, the results file's layout, and the prompt prepended only to
 * non-streamed output without --exclude-inputs-in-outputs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "server_fixture.h"

static const char *const prompts[] = {"Hello, my name is\n", "The most dangerous animal is\n",
                                      "The capital of France is\n", "The future of AI is\n"};
static const char *sep = "\n\n=========\n\n";

static int setup(void **state)
{
    static test_server s;
    cv_error err;
    if (cvc_http_global_init(&err)) return -1;
    test_server_start(&s);
    char path[300];
    snprintf(path, sizeof path, "%s/prompts.txt", s.dir);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    for (size_t i = 0; i < 4; i++)
        fputs(prompts[i], f);
    fclose(f);
    *state = &s;
    return 0;
}

static int teardown(void **state)
{
    test_server_stop(*state);
    cvc_http_global_cleanup();
    return 0;
}

/* Runs cvllm-client with extra flags; returns its exit status, output and
 * results file. */
static int run_client(test_server *s, const char *const *extra, size_t n_extra, char **out,
                      char **results)
{
    char exe[512], url[64], prompts_path[300], results_path[300], out_path[300];
    const char *bin = getenv("CVLLM_BIN_DIR");
    snprintf(exe, sizeof exe, "%s/cvllm-client", bin ? bin : "build/bin");
    snprintf(url, sizeof url, "127.0.0.1:%d", s->grpc_port);
    snprintf(prompts_path, sizeof prompts_path, "%s/prompts.txt", s->dir);
    snprintf(results_path, sizeof results_path, "%s/results.txt", s->dir);
    snprintf(out_path, sizeof out_path, "%s/client.out", s->dir);
    remove(results_path);
    char *argv[32] = {exe,         "-u", url, "--input-prompts", prompts_path, "--results-file",
                      results_path};
    size_t argc = 7;
    for (size_t i = 0; i < n_extra; i++)
        argv[argc++] = (char *)extra[i];
    argv[argc] = NULL;
    int rc = test_run(argv, out_path);
    *out = test_read_file(out_path);
    FILE *f = fopen(results_path, "r");
    *results = NULL;
    if (f) {
        fclose(f);
        *results = test_read_file(results_path);
    }
    return rc;
}

/* Splits results into sections at the separator; asserts there are n. */
static size_t sections(char *results, char **sec, size_t max)
{
    size_t n = 0;
    char *p = results;
    char *q;
    while ((q = strstr(p, sep)) != NULL) {
        *q = '\0';
        assert_true(n < max);
        sec[n++] = p;
        p = q + strlen(sep);
    }
    assert_string_equal(p, ""); /* the file ends with a separator */
    return n;
}

static void test_streaming_pass(void **state)
{
    test_server *s = *state;
    const char *extra[] = {"--streaming-mode"};
    char *out, *results;
    int rc = run_client(s, extra, 1, &out, &results);
    assert_int_equal(rc, 0);
    char want_head[400];
    snprintf(want_head, sizeof want_head, "Loading inputs from `%s/prompts.txt`...\n", s->dir);
    assert_memory_equal(out, want_head, strlen(want_head));
    size_t n = strlen(out);
    assert_true(n > 19);
    assert_string_equal(out + n - 19, "PASS: vLLM example\n");
    assert_non_null(results);
    char *sec[8];
    assert_int_equal(sections(results, sec, 8), 4);
    for (size_t i = 0; i < 4; i++) {
        assert_true(strlen(sec[i]) > 0);
        /* Streamed deltas never repeat the prompt. */
        assert_true(strncmp(sec[i], prompts[i], strlen(prompts[i])) != 0);
    }
    free(out);
    free(results);
}

static void test_non_streaming_prepends_prompt(void **state)
{
    test_server *s = *state;
    char *out, *results;
    assert_int_equal(run_client(s, NULL, 0, &out, &results), 0);
    assert_non_null(strstr(out, "PASS: vLLM example\n"));
    char *sec[8];
    assert_int_equal(sections(results, sec, 8), 4);
    for (size_t i = 0; i < 4; i++) {
        assert_memory_equal(sec[i], prompts[i], strlen(prompts[i]));
        assert_true(strlen(sec[i]) > strlen(prompts[i]));
    }
    free(out);
    free(results);

    const char *extra[] = {"--exclude-inputs-in-outputs"};
    assert_int_equal(run_client(s, extra, 1, &out, &results), 0);
    assert_non_null(strstr(out, "PASS: vLLM example\n"));
    assert_int_equal(sections(results, sec, 8), 4);
    for (size_t i = 0; i < 4; i++)
        assert_true(strncmp(sec[i], prompts[i], strlen(prompts[i])) != 0);
    free(out);
    free(results);
}

static void test_iterations_and_offset(void **state)
{
    test_server *s = *state;
    const char *extra[] = {"-s", "--iterations", "2", "--offset", "100", "-v"};
    char *out, *results;
    assert_int_equal(run_client(s, extra, 6, &out, &results), 0);
    assert_non_null(strstr(out, "PASS: vLLM example\n"));
    /* -v names every request id: 100..107. */
    for (int id = 100; id < 108; id++) {
        char line[64];
        snprintf(line, sizeof line, "stream_infer(request id %d)\n", id);
        assert_non_null(strstr(out, line));
    }
    char *sec[16];
    assert_int_equal(sections(results, sec, 16), 8);
    free(out);
    free(results);
}

static void test_unknown_model_fails(void **state)
{
    test_server *s = *state;
    const char *extra[] = {"-s", "-m", "no_such_model"};
    char *out, *results;
    run_client(s, extra, 3, &out, &results);
    assert_non_null(strstr(out, "Encountered error while processing: "));
    assert_non_null(strstr(out, "FAIL: vLLM example\n"));
    assert_null(strstr(out, "PASS"));
    free(out);
    free(results);
}

/* ---- cv_client directly ---- */

static void send_request(cvc_stream *st, const char *id, const char *prompt, const char *sampling)
{
    cvc_request r;
    cvc_request_init(&r);
    r.model_name = "vllm_model";
    r.id = id;
    r.text_input = prompt;
    r.text_input_len = strlen(prompt);
    r.stream = 1;
    r.sampling_parameters = sampling;
    r.return_num_input_tokens = true;
    r.return_num_output_tokens = true;
    r.return_finish_reason = true;
    cv_error err = {.msg = ""};
    if (cvc_stream_send(st, &r, &err)) fail_msg("%s", err.msg);
}

/* Two requests interleaved on one stream: responses carry their request's
 * id, token counts add up to max_tokens, the last one is final with
 * finish_reason "length", then the half-closed stream ends with OK. */
static void test_stream_two_requests(void **state)
{
    test_server *s = *state;
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", s->grpc_port);
    cv_error err = {.msg = ""};
    cvc_stream *st = cvc_stream_open(target, 60.0, &err);
    assert_non_null(st);
    const char *sp = "{\"max_tokens\": 12, \"temperature\": 0, \"ignore_eos\": true}";
    send_request(st, "a", "Once upon a time", sp);
    send_request(st, "b", "The little dog", sp);
    assert_int_equal(cvc_stream_close_send(st, &err), 0);
    int64_t tokens[2] = {0, 0}, n_in[2] = {-1, -1};
    int finals[2] = {0, 0};
    size_t text_len[2] = {0, 0};
    for (;;) {
        cvc_response r;
        cvc_recv_status rs = cvc_stream_recv(st, 30000, &r, &err);
        if (rs == CVC_RECV_END) break;
        if (rs != CVC_RECV_RESPONSE) fail_msg("recv: %d %s", rs, err.msg);
        assert_null(r.error_message);
        assert_true(!strcmp(r.id, "a") || !strcmp(r.id, "b"));
        int k = r.id[0] - 'a';
        assert_int_equal(finals[k], 0); /* nothing after the final response */
        assert_true(r.arrival_ns > 0);
        if (r.num_output_tokens >= 0) tokens[k] += r.num_output_tokens;
        if (r.num_input_tokens >= 0) n_in[k] = r.num_input_tokens;
        for (size_t i = 0; i < r.n_text; i++)
            text_len[k] += r.text_len[i];
        if (r.final) {
            finals[k] = 1;
            assert_non_null(r.finish_reason);
            assert_string_equal(r.finish_reason, "length");
        }
        cvc_response_free(&r);
    }
    for (int k = 0; k < 2; k++) {
        assert_int_equal(finals[k], 1);
        assert_int_equal(tokens[k], 12);
        assert_true(n_in[k] >= 4); /* BOS + the prompt's tokens */
        assert_true(text_len[k] > 0);
    }
    cvc_stream_free(st);
}

/* Cancelling the RPC mid-generation: the stream reports CANCELLED. */
static void test_stream_cancel(void **state)
{
    test_server *s = *state;
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", s->grpc_port);
    cv_error err = {.msg = ""};
    cvc_stream *st = cvc_stream_open(target, 60.0, &err);
    assert_non_null(st);
    send_request(st, "long", "Once upon a time",
                 "{\"max_tokens\": 400, \"temperature\": 0, \"ignore_eos\": true}");
    cvc_response r;
    assert_int_equal(cvc_stream_recv(st, 30000, &r, &err), CVC_RECV_RESPONSE);
    assert_string_equal(r.id, "long");
    assert_false(r.final);
    cvc_response_free(&r);
    cvc_stream_cancel(st);
    /* Responses already in flight may still arrive (on a loaded machine even
     * the final one); the call itself must end CANCELLED. */
    cvc_recv_status rs;
    while ((rs = cvc_stream_recv(st, 30000, &r, &err)) == CVC_RECV_RESPONSE)
        cvc_response_free(&r);
    assert_int_equal(rs, CVC_RECV_ERROR);
    assert_memory_equal(err.msg, "ModelStreamInfer: CANCELLED: ", 29);
    cvc_stream_free(st);
}

typedef struct sse_text {
    char text[4096];
    size_t len;
    int events;
    uint64_t last_ns;
} sse_text;

static int collect_sse(void *user, const char *data, size_t len, uint64_t arrival_ns)
{
    sse_text *t = user;
    json_error_t jerr;
    json_t *j = json_loadb(data, len, 0, &jerr);
    assert_non_null(j);
    const char *piece = json_string_value(json_object_get(j, "text_output"));
    assert_non_null(piece);
    size_t n = strlen(piece);
    assert_true(t->len + n < sizeof t->text);
    memcpy(t->text + t->len, piece, n);
    t->len += n;
    t->text[t->len] = '\0';
    assert_true(arrival_ns >= t->last_ns); /* events are stamped in order */
    t->last_ns = arrival_ns;
    t->events++;
    json_decref(j);
    return 0;
}

/* HTTP: generate_stream's events concatenate to /generate's text. */
static void test_http_stream_matches_generate(void **state)
{
    test_server *s = *state;
    char url[128];
    const char *body =
        "{\"text_input\": \"Once upon a time\", \"parameters\": {\"max_tokens\": 20, "
        "\"temperature\": 0, \"exclude_input_in_output\": true}}";
    cvc_http_result res;
    cv_error err = {.msg = ""};
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v2/models/vllm_model/generate", s->http_port);
    assert_int_equal(cvc_http_post_sse(url, body, 30000, NULL, NULL, &res, &err), 0);
    assert_int_equal(res.status, 200);
    json_error_t jerr;
    json_t *j = json_loads(res.body, 0, &jerr);
    assert_non_null(j);
    const char *whole = json_string_value(json_object_get(j, "text_output"));
    assert_non_null(whole);
    assert_true(strlen(whole) > 0);
    cvc_http_result_free(&res);

    const char *sbody =
        "{\"text_input\": \"Once upon a time\", \"parameters\": {\"max_tokens\": 20, "
        "\"temperature\": 0, \"stream\": true}}";
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v2/models/vllm_model/generate_stream",
             s->http_port);
    sse_text t = {0};
    assert_int_equal(cvc_http_post_sse(url, sbody, 30000, collect_sse, &t, &res, &err), 0);
    assert_int_equal(res.status, 200);
    assert_true(t.events > 1);
    assert_string_equal(t.text, whole);
    cvc_http_result_free(&res);
    json_decref(j);

    /* An unknown model: 404 with an error body, no events. */
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v2/models/nope/generate_stream", s->http_port);
    sse_text none = {0};
    assert_int_equal(cvc_http_post_sse(url, sbody, 30000, collect_sse, &none, &res, &err), 0);
    assert_int_equal(res.status, 404);
    assert_int_equal(none.events, 0);
    assert_non_null(res.body);
    assert_non_null(strstr(res.body, "\"error\""));
    cvc_http_result_free(&res);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_two_requests),
        cmocka_unit_test(test_stream_cancel),
        cmocka_unit_test(test_http_stream_matches_generate),
        cmocka_unit_test(test_streaming_pass),
        cmocka_unit_test(test_non_streaming_prepends_prompt),
        cmocka_unit_test(test_iterations_and_offset),
        cmocka_unit_test(test_unknown_model_fails),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

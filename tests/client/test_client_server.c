/* cvllm-client against a real cvllm-server serving stories260K over gRPC
 * ModelStreamInfer (see server_fixture.h), checked the way the seed's CI
 * checks client.py: the PASS/FAIL line, the results file's layout, and the
 * prompt prepended only to non-streamed output without
 * --exclude-inputs-in-outputs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
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
    for (size_t i = 0; i < 4; i++) fputs(prompts[i], f);
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
    char *argv[32] = {exe, "-u", url, "--input-prompts", prompts_path, "--results-file", results_path};
    size_t argc = 7;
    for (size_t i = 0; i < n_extra; i++) argv[argc++] = (char *)extra[i];
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
    for (size_t i = 0; i < 4; i++) assert_true(strncmp(sec[i], prompts[i], strlen(prompts[i])) != 0);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_streaming_pass),
        cmocka_unit_test(test_non_streaming_prepends_prompt),
        cmocka_unit_test(test_iterations_and_offset),
        cmocka_unit_test(test_unknown_model_fails),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

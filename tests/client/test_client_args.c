/* cvllm-client's command line: argparse-style errors (exit 2) and a
 * connection failure reported with the gRPC status (exit 1). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server_fixture.h"

static char exe[512];
static char out_path[] = "/tmp/cvllm-client-args-XXXXXX";

static int run(char **out, const char *a, const char *b, const char *c)
{
    char *argv[] = {exe, (char *)a, (char *)b, (char *)c, NULL};
    int rc = test_run(argv, out_path);
    *out = test_read_file(out_path);
    return rc;
}

static void test_bad_arguments(void **state)
{
    const char *bin = getenv("CVLLM_BIN_DIR");
    snprintf(exe, sizeof exe, "%s/cvllm-client", bin ? bin : "build/bin");
    int fd = mkstemp(out_path);
    assert_true(fd >= 0);
    close(fd);
    char *out;
    assert_int_equal(run(&out, "--offset", "x", NULL), 2);
    assert_non_null(
        strstr(out, "\ncvllm-client: error: argument --offset: invalid int value: 'x'\n"));
    free(out);
    assert_int_equal(run(&out, "-t", "soon", NULL), 2);
    assert_non_null(strstr(
        out, "\ncvllm-client: error: argument -t/--stream-timeout: invalid float value: 'soon'\n"));
    free(out);
    assert_int_equal(run(&out, "--iterations", NULL, NULL), 2);
    assert_non_null(
        strstr(out, "\ncvllm-client: error: argument --iterations: expected one argument\n"));
    free(out);
    assert_int_equal(run(&out, "--frobnicate", NULL, NULL), 2);
    assert_non_null(strstr(out, "\ncvllm-client: error: unrecognized arguments: --frobnicate\n"));
    free(out);
    assert_int_equal(run(&out, "-h", NULL, NULL), 0);
    assert_memory_equal(out, "usage: cvllm-client [-h]", 24);
    free(out);
    assert_int_equal(run(&out, "--input-prompts", "/nonexistent/prompts.txt", NULL), 1);
    assert_string_equal(out, "Loading inputs from `/nonexistent/prompts.txt`...\n"
                             "cvllm-client: cannot open prompts file '/nonexistent/prompts.txt'\n");
    free(out);
}

static void test_connection_refused(void **state)
{
    char prompts[] = "/tmp/cvllm-client-prompts-XXXXXX";
    int fd = mkstemp(prompts);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "Hi\n", 3), 3);
    close(fd);
    char *argv[] = {exe, "-u", "127.0.0.1:1", "--input-prompts", prompts, NULL};
    assert_int_equal(test_run(argv, out_path), 1);
    char *out = test_read_file(out_path);
    assert_non_null(strstr(out, "\nModelStreamInfer: UNAVAILABLE: "));
    assert_null(strstr(out, "PASS"));
    free(out);
    unlink(prompts);
    unlink(out_path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_connection_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

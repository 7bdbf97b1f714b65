/* cvllm-bench --backend inprocess (issue 10's server-overhead baseline):
 *  - on stories260K (../shared) from a repository of our own: every request
 *    completes with exactly the drawn prompt length and max_tokens
 *    (ignore_eos), the totals add up and every metric is present;
 *  - on the shipped model, against a real cvllm-server serving the same
 *    repository: the same seed gives the same prompts, token counts and
 *    greedy text in process as over gRPC, i.e. both load the same engine;
 *  - the load errors (unknown model, missing repository) as printed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../common/shared_data.h"
#include "bench_result.h"
#include "client.h"
#include "server_fixture.h"

static const char *bin_path(void)
{
    static char exe[512];
    const char *bin = getenv("CVLLM_BIN_DIR");
    snprintf(exe, sizeof exe, "%s/cvllm-bench", bin ? bin : "build/bin");
    return exe;
}

/* Runs cvllm-bench with the common workload flags after `extra` (NULL
 * terminated); returns its exit status, the output in *out (malloc'ed) and
 * the result file parsed in *res when it exited 0. */
static int run_bench(const char *dir, const char *tag, char *const *extra, char **out, json_t **res)
{
    char result[400], log[400];
    snprintf(result, sizeof result, "%s/%s.json", dir, tag);
    snprintf(log, sizeof log, "%s/%s.out", dir, tag);
    char *argv[64];
    int n = 0;
    argv[n++] = (char *)bin_path();
    while (*extra)
        argv[n++] = *extra++;
    char *common[] = {"--dataset-name",
                      "random",
                      "--random-input-len",
                      "16",
                      "--random-output-len",
                      "24",
                      "--random-range-ratio",
                      "0.5",
                      "--num-prompts",
                      "6",
                      "--num-warmups",
                      "1",
                      "--max-concurrency",
                      "3",
                      "--ignore-eos",
                      "--seed",
                      "3",
                      "--result-file",
                      result,
                      "--disable-progress",
                      NULL};
    for (char **c = common; *c; c++)
        argv[n++] = *c;
    argv[n] = NULL;
    int rc = test_run(argv, log);
    *out = test_read_file(log);
    *res = NULL;
    if (rc == 0) {
        json_error_t jerr;
        if (!(*res = json_load_file(result, 0, &jerr))) fail_msg("%s: %s", result, jerr.text);
    }
    return rc;
}

static void check_result(json_t *o, const char *backend)
{
    assert_string_equal(json_string_value(json_object_get(o, "backend")), backend);
    assert_int_equal((int)bench_num(o, "completed"), 6);
    assert_int_equal((int)bench_num(o, "failed"), 0);
    json_t *reqs = json_object_get(o, "requests");
    assert_int_equal(json_array_size(reqs), 6);
    int64_t in = 0, out = 0;
    for (size_t i = 0; i < 6; i++) {
        json_t *r = json_array_get(reqs, i);
        assert_true(json_is_true(json_object_get(r, "success")));
        int64_t pl = (int64_t)bench_num(r, "prompt_len"),
                it = (int64_t)bench_num(r, "input_tokens");
        int64_t ot = (int64_t)bench_num(r, "output_tokens"),
                eo = (int64_t)bench_num(r, "expected_output_len");
        assert_int_equal(it, pl); /* the engine counts exactly the drawn length */
        assert_in_range(pl, 8, 24);
        assert_int_equal(ot, eo); /* ignore_eos: exactly max_tokens */
        assert_in_range(eo, 12, 36);
        assert_true(bench_num(r, "ttft_ms") > 0 &&
                    bench_num(r, "e2el_ms") >= bench_num(r, "ttft_ms"));
        assert_true(bench_num(r, "tpot_ms") > 0);
        assert_in_range(json_array_size(json_object_get(r, "itl_ms")), 1, (size_t)(ot - 1));
        assert_true(strlen(json_string_value(json_object_get(r, "generated_text"))) > 0);
        in += it;
        out += ot;
    }
    assert_int_equal((int64_t)bench_num(o, "total_input_tokens"), in);
    assert_int_equal((int64_t)bench_num(o, "total_output_tokens"), out);
    assert_int_equal((int64_t)bench_num(o, "warmup_output_tokens") > 0, 1);
    assert_true(bench_num(o, "duration") > 0);
    assert_true(bench_num(o, "request_throughput") > 0 && bench_num(o, "output_throughput") > 0);
    assert_true(bench_num(o, "total_token_throughput") > bench_num(o, "output_throughput"));
    bench_check_metric(o, "ttft");
    bench_check_metric(o, "tpot");
    bench_check_metric(o, "itl");
    bench_check_metric(o, "e2el");
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static void rm_rf(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_inprocess_stories260k(void **state)
{
    (void)state;
    if (!cv_test_have_shared("models/stories260K")) return;
    char dir[] = "/tmp/cvllm-bench-inproc-XXXXXX", path[600], text[4400], shared[4096];
    assert_non_null(mkdtemp(dir));
    assert_non_null(realpath(cv_test_shared_root(), shared));
    snprintf(path, sizeof path, "%s/s260", dir);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(path, sizeof path, "%s/s260/1", dir);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(path, sizeof path, "%s/s260/config.pbtxt", dir);
    write_file(path, "backend: \"vllm\"\n");
    snprintf(path, sizeof path, "%s/s260/1/model.json", dir);
    snprintf(text, sizeof text, "{\"model\": \"%s/models/stories260K\", \"max_num_seqs\": 2}\n",
             shared);
    write_file(path, text);
    /* No --tokenizer: the prompts are drawn with the engine's. */
    char *extra[] = {"--backend", "inprocess", "--model-repository",
                     dir,         "--model",   "s260",
                     "--threads", "1",         NULL};
    char *out;
    json_t *o;
    int rc = run_bench(dir, "s260", extra, &out, &o);
    if (rc) fail_msg("cvllm-bench exited %d:\n%s", rc, out);
    assert_non_null(strstr(out, "============ Serving Benchmark Result ============\n"));
    assert_non_null(strstr(out, "Successful requests:                    6 "));
    check_result(o, "inprocess");
    assert_true(json_is_null(json_object_get(o, "tokenizer")));
    /* The engine's measured phase: 6 requests of 12-36 tokens, two at a
     * time, take at least 36 steps; the CPU's forward has no GPU span. */
    assert_non_null(strstr(out, "Engine steps (measured phase):"));
    assert_true(bench_num(o, "engine_steps") >= 36);
    assert_true(bench_num(o, "engine_tokens_per_step") >= 1.0);
    assert_true(bench_num(o, "engine_wall_ms_per_step") > 0);
    assert_true(bench_num(o, "engine_forward_ms_per_step") > 0);
    assert_null(json_object_get(o, "engine_gpu_span_ms_per_step"));
    free(out);
    json_decref(o);
    rm_rf(dir);
}

/* The server fixture's repository (the shipped model as vllm_model): the
 * same run over gRPC and in process. */
static void test_inprocess_matches_server(void **state)
{
    (void)state;
    test_server s;
    cv_error err;
    assert_int_equal(cvc_http_global_init(&err), 0);
    test_server_start(&s);
    char repo[300], port[16], tok[4200];
    const char *src = getenv("CVLLM_SOURCE_DIR");
    snprintf(repo, sizeof repo, "%s/repo", s.dir);
    snprintf(port, sizeof port, "%d", s.grpc_port);
    snprintf(tok, sizeof tok, "%s/samples/models/cvllm-kjv-4m", src ? src : ".");
    char *grpc_args[] = {"--backend", "triton-grpc", "--host",      "127.0.0.1", "--port", port,
                         "--model",   "vllm_model",  "--tokenizer", tok,         NULL};
    char *inproc_args[] = {"--backend",   "inprocess", "--model-repository",
                           repo,          "--model",   "vllm_model",
                           "--tokenizer", tok,         NULL};
    char *out_g, *out_i;
    json_t *g, *in;
    int rc = run_bench(s.dir, "grpc", grpc_args, &out_g, &g);
    if (rc) fail_msg("cvllm-bench triton-grpc exited %d:\n%s", rc, out_g);
    rc = run_bench(s.dir, "inproc", inproc_args, &out_i, &in);
    if (rc) fail_msg("cvllm-bench inprocess exited %d:\n%s", rc, out_i);
    check_result(g, "triton-grpc");
    check_result(in, "inprocess");
    assert_null(json_object_get(g, "engine_steps")); /* the server's engine is not ours */
    assert_true(bench_num(in, "engine_steps") > 0);
    json_t *gr = json_object_get(g, "requests"), *ir = json_object_get(in, "requests");
    for (size_t i = 0; i < 6; i++) {
        json_t *a = json_array_get(gr, i), *b = json_array_get(ir, i);
        assert_int_equal((int64_t)bench_num(a, "input_tokens"),
                         (int64_t)bench_num(b, "input_tokens"));
        assert_int_equal((int64_t)bench_num(a, "output_tokens"),
                         (int64_t)bench_num(b, "output_tokens"));
        assert_string_equal(json_string_value(json_object_get(a, "generated_text")),
                            json_string_value(json_object_get(b, "generated_text")));
    }
    assert_int_equal((int64_t)bench_num(g, "total_input_tokens"),
                     (int64_t)bench_num(in, "total_input_tokens"));
    free(out_g);
    free(out_i);
    json_decref(g);
    json_decref(in);
    test_server_stop(&s);
    cvc_http_global_cleanup();
}

static void test_inprocess_load_errors(void **state)
{
    (void)state;
    char dir[] = "/tmp/cvllm-bench-inproc-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *unknown[] = {"--backend", "inprocess", "--model-repository", dir, "--model",
                       "nope",      NULL};
    char *out;
    json_t *o;
    assert_int_equal(run_bench(dir, "unknown", unknown, &out, &o), 1);
    assert_non_null(
        strstr(out, "cvllm-bench: failed to load 'nope', failed to poll from model repository\n"));
    free(out);
    char missing[600];
    snprintf(missing, sizeof missing, "%s/none", dir);
    char *norepo[] = {"--backend", "inprocess", "--model-repository", missing, NULL};
    assert_int_equal(run_bench(dir, "norepo", norepo, &out, &o), 1);
    char want[800];
    snprintf(want, sizeof want, "cvllm-bench: --model-repository '%s' is not a directory\n",
             missing);
    assert_non_null(strstr(out, want));
    free(out);
    rm_rf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inprocess_stories260k),
        cmocka_unit_test(test_inprocess_matches_server),
        cmocka_unit_test(test_inprocess_load_errors),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return cv_test_exit(failed);
}

/* cvllm-bench against a real cvllm-server on the shipped model (issue 6's
 * acceptance): 50 random requests over gRPC, then 12 over HTTP SSE; the
 * JSON result must count every request, its token totals must equal what
 * the server's /metrics counted (vllm:prompt_tokens_total and
 * vllm:generation_tokens_total, warm-up included), every prompt must have
 * exactly the drawn length as the server tokenizes it, and the latency
 * figures must be positive and ordered. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_result.h"
#include "client.h"
#include "server_fixture.h"

static int setup(void **state)
{
    static test_server s;
    cv_error err;
    if (cvc_http_global_init(&err)) return -1;
    test_server_start(&s);
    *state = &s;
    return 0;
}

static int teardown(void **state)
{
    test_server_stop(*state);
    cvc_http_global_cleanup();
    return 0;
}

/* Runs cvllm-bench; returns the parsed result file. */
static json_t *run_bench(test_server *s, const char *backend, int port, const char *n,
                         const char *warmups)
{
    const char *bin = getenv("CVLLM_BIN_DIR"), *src = getenv("CVLLM_SOURCE_DIR");
    char exe[512], tok[4200], ports[16], result[300], out[300];
    snprintf(exe, sizeof exe, "%s/cvllm-bench", bin ? bin : "build/bin");
    snprintf(tok, sizeof tok, "%s/samples/models/cvllm-kjv-4m", src ? src : ".");
    snprintf(ports, sizeof ports, "%d", port);
    snprintf(result, sizeof result, "%s/%s.json", s->dir, backend);
    snprintf(out, sizeof out, "%s/%s.out", s->dir, backend);
    char *argv[] = {exe,
                    "--backend",
                    (char *)backend,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    ports,
                    "--tokenizer",
                    tok,
                    "--dataset-name",
                    "random",
                    "--random-input-len",
                    "16",
                    "--random-output-len",
                    "24",
                    "--random-range-ratio",
                    "0.5",
                    "--num-prompts",
                    (char *)n,
                    "--num-warmups",
                    (char *)warmups,
                    "--max-concurrency",
                    "8",
                    "--ignore-eos",
                    "--seed",
                    "3",
                    "--goodput",
                    "e2el:600000",
                    "--result-file",
                    result,
                    "--disable-progress",
                    NULL};
    int rc = test_run(argv, out);
    char *text = test_read_file(out);
    if (rc != 0) fail_msg("cvllm-bench exited %d:\n%s", rc, text);
    assert_non_null(strstr(text, "============ Serving Benchmark Result ============\n"));
    free(text);
    json_error_t jerr;
    json_t *o = json_load_file(result, 0, &jerr);
    if (!o) fail_msg("%s: %s", result, jerr.text);
    return o;
}

/* Checks one run's JSON; returns its token totals including warm-up. */
static void check_run(json_t *o, size_t n, int64_t *in_total, int64_t *out_total)
{
    assert_int_equal((size_t)bench_num(o, "completed"), n);
    assert_int_equal((size_t)bench_num(o, "failed"), 0);
    assert_int_equal((size_t)bench_num(o, "good_requests"), n);
    json_t *reqs = json_object_get(o, "requests");
    assert_int_equal(json_array_size(reqs), n);
    int64_t in = 0, out = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *r = json_array_get(reqs, i);
        assert_true(json_is_true(json_object_get(r, "success")));
        int64_t pl = (int64_t)bench_num(r, "prompt_len"),
                it = (int64_t)bench_num(r, "input_tokens");
        int64_t ot = (int64_t)bench_num(r, "output_tokens"),
                eo = (int64_t)bench_num(r, "expected_output_len");
        assert_int_equal(it, pl); /* the server counts exactly the drawn length */
        assert_in_range(pl, 8, 24);
        assert_int_equal(ot, eo); /* ignore_eos: exactly max_tokens */
        assert_true(bench_num(r, "ttft_ms") > 0 &&
                    bench_num(r, "e2el_ms") >= bench_num(r, "ttft_ms"));
        /* One ITL per pair of token-carrying responses. */
        assert_in_range(json_array_size(json_object_get(r, "itl_ms")), 0, (size_t)(ot - 1));
        in += it;
        out += ot;
    }
    assert_int_equal((int64_t)bench_num(o, "total_input_tokens"), in);
    assert_int_equal((int64_t)bench_num(o, "total_output_tokens"), out);
    assert_true(bench_num(o, "duration") > 0);
    assert_true(bench_num(o, "request_throughput") > 0);
    assert_true(bench_num(o, "output_throughput") > 0);
    bench_check_metric(o, "ttft");
    bench_check_metric(o, "tpot");
    bench_check_metric(o, "itl");
    bench_check_metric(o, "e2el");
    *in_total = in + (int64_t)bench_num(o, "warmup_input_tokens");
    *out_total = out + (int64_t)bench_num(o, "warmup_output_tokens");
}

static void test_bench_matches_server_metrics(void **state)
{
    test_server *s = *state;
    json_t *g = run_bench(s, "triton-grpc", s->grpc_port, "50", "2");
    int64_t in1, out1;
    check_run(g, 50, &in1, &out1);
    assert_true(bench_num(g, "warmup_input_tokens") > 0);
    char *m = test_http_get(s->metrics_port, "/metrics");
    assert_int_equal((int64_t)test_metric(m, "vllm:prompt_tokens_total"), in1);
    assert_int_equal((int64_t)test_metric(m, "vllm:generation_tokens_total"), out1);
    free(m);

    json_t *h = run_bench(s, "triton-http", s->http_port, "12", "0");
    int64_t in2, out2;
    check_run(h, 12, &in2, &out2);
    m = test_http_get(s->metrics_port, "/metrics");
    assert_int_equal((int64_t)test_metric(m, "vllm:prompt_tokens_total"), in1 + in2);
    assert_int_equal((int64_t)test_metric(m, "vllm:generation_tokens_total"), out1 + out2);
    free(m);
    /* Same seed, same prompts, greedy: both endpoints give the same text. */
    json_t *gr = json_object_get(g, "requests"), *hr = json_object_get(h, "requests");
    for (size_t i = 0; i < 12; i++)
        assert_string_equal(
            json_string_value(json_object_get(json_array_get(gr, i), "generated_text")),
            json_string_value(json_object_get(json_array_get(hr, i), "generated_text")));

    /* The OpenAI endpoint (/v1/completions on the HTTP port): the same
     * counts and text. */
    json_t *oa = run_bench(s, "openai", s->http_port, "12", "0");
    int64_t in3, out3;
    check_run(oa, 12, &in3, &out3);
    m = test_http_get(s->metrics_port, "/metrics");
    assert_int_equal((int64_t)test_metric(m, "vllm:prompt_tokens_total"), in1 + in2 + in3);
    assert_int_equal((int64_t)test_metric(m, "vllm:generation_tokens_total"), out1 + out2 + out3);
    free(m);
    json_t * or = json_object_get(oa, "requests");
    for (size_t i = 0; i < 12; i++)
        assert_string_equal(
            json_string_value(json_object_get(json_array_get(gr, i), "generated_text")),
            json_string_value(json_object_get(json_array_get(or, i), "generated_text")));
    json_decref(g);
    json_decref(h);
    json_decref(oa);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bench_matches_server_metrics),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

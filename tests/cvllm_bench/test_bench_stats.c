/* cvllm-bench's arithmetic: splitmix64 against its published outputs,
 * arrival schedules, numpy-style percentiles, the per-request metrics and
 * goodput, and the command line's error messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static void test_splitmix64_reference(void **state)
{
    /* Seed 0: the first outputs of Vigna's reference splitmix64.c. */
    bench_rng r;
    bench_rng_seed(&r, 0);
    assert_true(bench_rng_next(&r) == 0xe220a8397b1dcdafull);
    assert_true(bench_rng_next(&r) == 0x6e789e6aa1b965f4ull);
    assert_true(bench_rng_next(&r) == 0x06c45d188009454full);
}

static void test_rng_int_range(void **state)
{
    bench_rng r;
    bench_rng_seed(&r, 7);
    int seen[5] = {0};
    for (int i = 0; i < 5000; i++) {
        int64_t v = bench_rng_int(&r, 3, 7);
        assert_true(v >= 3 && v <= 7);
        seen[v - 3]++;
    }
    for (int i = 0; i < 5; i++)
        assert_in_range(seen[i], 900, 1100);
    assert_int_equal(bench_rng_int(&r, 4, 4), 4);
}

static void test_poisson_arrivals_exact(void **state)
{
    /* rate 4/s, seed 42: t[i+1] = t[i] - log1p(-u_i)/4, u_i the 53-bit
     * uniforms of splitmix64(42); values computed independently in Python. */
    double t[5];
    cv_error err = {.msg = ""};
    assert_int_equal(bench_arrivals(4.0, 1.0, 42, 5, t, &err), 0);
    const double want[5] = {0.0, 0.3382776495610036, 0.38183932898291434, 0.463480098299481,
                            0.5689514129782677};
    for (int i = 0; i < 5; i++)
        assert_true(fabs(t[i] - want[i]) < 1e-12);
}

static void test_arrivals_inf_and_errors(void **state)
{
    double t[3] = {1, 1, 1};
    cv_error err = {.msg = ""};
    assert_int_equal(bench_arrivals(INFINITY, 1.0, 1, 3, t, &err), 0);
    for (int i = 0; i < 3; i++)
        assert_true(t[i] == 0.0);
    assert_int_equal(bench_arrivals(4.0, 0.0, 1, 3, t, &err), -1);
    assert_string_equal(err.msg, "burstiness must be a positive number, got 0");
}

/* Gamma intervals: mean 1/rate whatever the burstiness, variance
 * 1/(rate^2 * burstiness). The seed is fixed, so this is deterministic. */
static void check_gamma(double rate, double burstiness)
{
    enum { N = 200000 };
    double *t = malloc((N + 1) * sizeof *t);
    assert_non_null(t);
    cv_error err = {.msg = ""};
    assert_int_equal(bench_arrivals(rate, burstiness, 123, N + 1, t, &err), 0);
    double sum = 0, ss = 0;
    for (int i = 0; i < N; i++)
        sum += t[i + 1] - t[i];
    double mean = sum / N;
    for (int i = 0; i < N; i++)
        ss += (t[i + 1] - t[i] - mean) * (t[i + 1] - t[i] - mean);
    double var = ss / N, want_var = 1.0 / (rate * rate * burstiness);
    assert_true(fabs(mean * rate - 1.0) < 0.01);
    assert_true(fabs(var / want_var - 1.0) < 0.03);
    for (int i = 0; i < N; i++)
        assert_true(t[i + 1] >= t[i]);
    free(t);
}

static void test_gamma_arrivals(void **state)
{
    check_gamma(10.0, 0.5);
    check_gamma(10.0, 1.0);
    check_gamma(2.0, 4.0);
}

static void test_percentile_numpy_linear(void **state)
{
    double v[10] = {10, 9, 8, 7, 6, 5, 4, 3, 2, 1};
    assert_true(fabs(bench_percentile(v, 10, 50) - 5.5) < 1e-12);
    assert_true(fabs(bench_percentile(v, 10, 90) - 9.1) < 1e-12);
    assert_true(fabs(bench_percentile(v, 10, 99) - 9.91) < 1e-12);
    assert_true(bench_percentile(v, 10, 0) == 1.0);
    assert_true(bench_percentile(v, 10, 100) == 10.0);
    double w[5] = {50, 15, 40, 20, 35};
    assert_true(fabs(bench_percentile(w, 5, 40) - 29.0) < 1e-12);
    double one = 3.5;
    assert_true(bench_percentile(&one, 1, 99) == 3.5);
    assert_true(bench_percentile(NULL, 0, 50) == 0.0);
    double s[4] = {2, 4, 4, 6};
    bench_summary sum = bench_summarize(s, 4);
    assert_true(sum.mean == 4.0);
    assert_true(fabs(sum.std - sqrt(2.0)) < 1e-12);
    assert_true(sum.median == 4.0);
}

static const uint64_t MS = 1000000;

static void make_records(bench_record r[3], uint64_t a_chunks[3], uint64_t b_chunks[1])
{
    memset(r, 0, 3 * sizeof *r);
    /* A: 3 tokens in 3 responses at 10, 30, 60 ms. */
    a_chunks[0] = 10 * MS;
    a_chunks[1] = 30 * MS;
    a_chunks[2] = 60 * MS;
    r[0] = (bench_record){.start_ns = 0 + 1,
                          .end_ns = 60 * MS + 1,
                          .n_chunks = 3,
                          .input_tokens = 5,
                          .output_tokens = 3,
                          .success = true};
    for (int i = 0; i < 3; i++)
        a_chunks[i] += 1;
    r[0].chunk_ns = a_chunks;
    /* B: one token at 5 ms after its start at 100 ms. */
    b_chunks[0] = 105 * MS;
    r[1] = (bench_record){.start_ns = 100 * MS,
                          .end_ns = 105 * MS,
                          .n_chunks = 1,
                          .chunk_ns = b_chunks,
                          .input_tokens = 7,
                          .output_tokens = 1,
                          .success = true};
    /* C: failed. */
    r[2] = (bench_record){.start_ns = 1, .end_ns = 2, .input_tokens = 100, .output_tokens = 50};
}

static void test_metrics(void **state)
{
    bench_record r[3];
    uint64_t a[3], b[1];
    make_records(r, a, b);
    assert_true(fabs(bench_record_ttft_ms(&r[0]) - 10.0) < 1e-9);
    assert_true(fabs(bench_record_tpot_ms(&r[0]) - 25.0) < 1e-9);
    assert_true(bench_record_tpot_ms(&r[1]) < 0);
    bench_metrics m;
    cv_error err = {.msg = ""};
    assert_int_equal(bench_compute_metrics(r, 3, 1.0, NULL, &m, &err), 0);
    assert_int_equal(m.completed, 2);
    assert_int_equal(m.failed, 1);
    assert_int_equal(m.total_input, 12);
    assert_int_equal(m.total_output, 4);
    assert_true(m.request_throughput == 2.0);
    assert_true(m.output_throughput == 4.0);
    assert_true(m.total_token_throughput == 16.0);
    assert_true(m.request_goodput < 0);
    assert_true(fabs(m.ttft_ms.mean - 7.5) < 1e-9);
    assert_true(fabs(m.ttft_ms.std - 2.5) < 1e-9);
    assert_true(fabs(m.ttft_ms.p90 - 9.5) < 1e-9);
    assert_true(fabs(m.ttft_ms.p99 - 9.95) < 1e-9);
    assert_true(fabs(m.tpot_ms.mean - 25.0) < 1e-9);
    assert_true(fabs(m.tpot_ms.p99 - 25.0) < 1e-9);
    assert_true(fabs(m.itl_ms.mean - 25.0) < 1e-9);
    assert_true(fabs(m.itl_ms.p90 - 29.0) < 1e-9);
    assert_true(fabs(m.e2el_ms.mean - 32.5) < 1e-9);
    assert_true(fabs(m.e2el_ms.p99 - 59.45) < 1e-9);
}

static void test_goodput(void **state)
{
    bench_record r[3];
    uint64_t a[3], b[1];
    make_records(r, a, b);
    bench_metrics m;
    cv_error err = {.msg = ""};
    bench_slo slo = {.ttft_ms = 8, .tpot_ms = -1, .e2el_ms = -1};
    assert_int_equal(bench_compute_metrics(r, 3, 2.0, &slo, &m, &err), 0);
    assert_int_equal(m.good_requests, 1); /* only B's TTFT is under 8 ms */
    assert_true(m.request_goodput == 0.5);
    slo = (bench_slo){.ttft_ms = 10, .tpot_ms = 25, .e2el_ms = 60};
    assert_int_equal(bench_compute_metrics(r, 3, 2.0, &slo, &m, &err), 0);
    assert_int_equal(m.good_requests, 2); /* limits are inclusive */
    slo = (bench_slo){.ttft_ms = -1, .tpot_ms = 24.9, .e2el_ms = -1};
    assert_int_equal(bench_compute_metrics(r, 3, 2.0, &slo, &m, &err), 0);
    assert_int_equal(m.good_requests, 1);
}

static void test_parse_goodput(void **state)
{
    bench_slo slo = {-1, -1, -1};
    cv_error err = {.msg = ""};
    assert_int_equal(bench_parse_goodput("ttft:500 tpot:50,e2el:2000.5", &slo, &err), 0);
    assert_true(slo.ttft_ms == 500 && slo.tpot_ms == 50 && slo.e2el_ms == 2000.5);
    assert_int_equal(bench_parse_goodput("itl:5", &slo, &err), -1);
    assert_string_equal(err.msg,
                        "invalid goodput metric 'itl' in 'itl:5': the SLO name must be one "
                        "of ttft, tpot, e2el");
    assert_int_equal(bench_parse_goodput("ttft:-1", &slo, &err), -1);
    assert_string_equal(err.msg,
                        "invalid goodput value '-1' for ttft: must be a non-negative number "
                        "of milliseconds");
    assert_int_equal(bench_parse_goodput("ttft", &slo, &err), -1);
    assert_string_equal(err.msg, "goodput SLO 'ttft' is not NAME:MILLISECONDS");
}

#define ARGV(...) ((char *[]){"cvllm-bench", __VA_ARGS__, NULL})
#define ARGC(...) ((int)(sizeof((char *[]){"cvllm-bench", __VA_ARGS__}) / sizeof(char *)))

static void expect_arg_error(int argc, char **argv, const char *msg)
{
    bench_args a;
    cv_error err = {.msg = ""};
    assert_int_equal(bench_parse_args(argc, argv, &a, &err), -1);
    assert_string_equal(err.msg, msg);
}

#define EXPECT_ERROR(msg, ...) expect_arg_error(ARGC(__VA_ARGS__), ARGV(__VA_ARGS__), msg)

static void test_args_errors(void **state)
{
    EXPECT_ERROR("argument --request-rate: invalid float value: 'abc'", "--request-rate", "abc");
    EXPECT_ERROR("argument --request-rate: must be positive or inf, got 0", "--request-rate", "0");
    EXPECT_ERROR("argument --backend: invalid choice: 'grpc' (choose from 'triton-grpc', "
                 "'triton-http', 'openai', 'inprocess')",
                 "--backend", "grpc");
    EXPECT_ERROR("--backend inprocess needs --model-repository (the directory cvllm-server "
                 "would serve --model from)",
                 "--backend", "inprocess");
    EXPECT_ERROR("--model-repository is for --backend inprocess only", "--tokenizer", "t",
                 "--model-repository", "repo");
    EXPECT_ERROR("--threads is for --backend inprocess only", "--tokenizer", "t", "--threads", "2");
    EXPECT_ERROR("argument --threads: must be at least 0, got -1", "--threads", "-1");
    EXPECT_ERROR("argument --threads: at most 4096, got 5000", "--threads", "5000");
    EXPECT_ERROR("unrecognized arguments: --bogus", "--bogus");
    EXPECT_ERROR("unrecognized arguments: stray", "--tokenizer", "t", "stray");
    EXPECT_ERROR("argument --model: expected one argument", "--model");
    EXPECT_ERROR("argument --num-prompts: must be at least 1, got 0", "--num-prompts", "0");
    EXPECT_ERROR("argument --max-concurrency: invalid int value: '4x'", "--max-concurrency", "4x");
    EXPECT_ERROR("argument --port: 70000 is not a TCP port", "--port", "70000");
    EXPECT_ERROR("argument --random-range-ratio: must be in [0, 1), got 1", "--random-range-ratio",
                 "1");
    EXPECT_ERROR("argument --burstiness: must be a positive number, got -2", "--burstiness", "-2");
    EXPECT_ERROR("--dataset-name random needs --tokenizer (the model's tokenizer directory)",
                 "--num-prompts", "3");
    EXPECT_ERROR("--dataset-name sharegpt needs --dataset-path", "--dataset-name", "sharegpt",
                 "--tokenizer", "t");
    EXPECT_ERROR("argument --dataset-name: invalid choice: 'sonnet' (choose from 'random', "
                 "'sharegpt', 'prompts')",
                 "--dataset-name", "sonnet");
    EXPECT_ERROR("invalid goodput metric 'ttlt' in 'ttlt:3': the SLO name must be one of ttft, "
                 "tpot, e2el",
                 "--goodput", "ttft:1", "ttlt:3");
}

static void test_args_ok(void **state)
{
    bench_args a;
    cv_error err = {.msg = ""};
    char **argv = ARGV("--backend", "triton-http", "--tokenizer", "tok", "--num-prompts", "50",
                       "--request-rate", "inf", "--max-concurrency", "4", "--goodput", "ttft:500",
                       "tpot:50", "--ignore-eos", "--seed", "9", "--result-file", "r.json");
    assert_int_equal(
        bench_parse_args(ARGC("--backend", "triton-http", "--tokenizer", "tok", "--num-prompts",
                              "50", "--request-rate", "inf", "--max-concurrency", "4", "--goodput",
                              "ttft:500", "tpot:50", "--ignore-eos", "--seed", "9", "--result-file",
                              "r.json"),
                         argv, &a, &err),
        0);
    assert_int_equal(a.backend, BENCH_TRITON_HTTP);
    assert_string_equal(a.tokenizer, "tok");
    assert_int_equal(a.num_prompts, 50);
    assert_true(isinf(a.request_rate));
    assert_int_equal(a.max_concurrency, 4);
    assert_true(a.has_slo && a.slo.ttft_ms == 500 && a.slo.tpot_ms == 50 && a.slo.e2el_ms < 0);
    assert_true(a.ignore_eos);
    assert_int_equal(a.seed, 9);
    assert_string_equal(a.result_file, "r.json");
    assert_string_equal(a.model, "vllm_model");
    assert_int_equal(a.dataset, BENCH_DATA_RANDOM);
    assert_int_equal(a.random_input_len, 1024);
    assert_true(a.burstiness == 1.0);
    assert_null(a.model_repository);
    assert_int_equal(a.threads, -1);
}

/* --backend inprocess needs no --tokenizer: the engine's is used. */
static void test_args_inprocess(void **state)
{
    bench_args a;
    cv_error err = {.msg = ""};
    char **argv = ARGV("--backend", "inprocess", "--model-repository", "repo", "--model", "m",
                       "--threads", "0");
    assert_int_equal(bench_parse_args(ARGC("--backend", "inprocess", "--model-repository", "repo",
                                           "--model", "m", "--threads", "0"),
                                      argv, &a, &err),
                     0);
    assert_int_equal(a.backend, BENCH_INPROCESS);
    assert_string_equal(a.model_repository, "repo");
    assert_string_equal(a.model, "m");
    assert_int_equal(a.threads, 0);
    assert_null(a.tokenizer);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_splitmix64_reference),
        cmocka_unit_test(test_rng_int_range),
        cmocka_unit_test(test_poisson_arrivals_exact),
        cmocka_unit_test(test_arrivals_inf_and_errors),
        cmocka_unit_test(test_gamma_arrivals),
        cmocka_unit_test(test_percentile_numpy_linear),
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_goodput),
        cmocka_unit_test(test_parse_goodput),
        cmocka_unit_test(test_args_errors),
        cmocka_unit_test(test_args_ok),
        cmocka_unit_test(test_args_inprocess),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* CPU backend contract on the real stories260K: logits do not depend on batch
 * composition or thread count (bit for bit), cv_backend_kv_copy forks a
 * sequence (copy-on-write), 16-bit KV caches stay close to fp32, and bad
 * batches, pools and weights are refused with messages naming the wrong
 * input. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backend/cpu/cpu_internal.h"
#include "../common/seq_runner.h"
#include "../common/shared_data.h"

enum { N_SEQS = 4, PROMPT = 11, DECODE = 6, TOTAL = PROMPT + DECODE };

static cv_model *model;
static int vocab;
static int32_t ids[N_SEQS][TOTAL];

static int setup(void **state)
{
    (void)state;
    const char *shared = getenv("CVLLM_SHARED");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/stories260K", shared ? shared : "../shared");
    cv_error err = {.msg = ""};
    model = cv_model_load(dir, &err);
    if (!model) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    vocab = cv_model_get_config(model)->vocab_size;
    uint32_t r = 7;
    for (int s = 0; s < N_SEQS; s++) {
        ids[s][0] = 1;
        for (int i = 1; i < TOTAL; i++) {
            r = r * 1664525u + 1013904223u;
            ids[s][i] = 3 + (int32_t)((r >> 8) % (uint32_t)(vocab - 3));
        }
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    cv_model_free(model);
    return 0;
}

/* stories260K is small enough to run on one thread; the tests force the
 * team so that the threaded paths are what they check. */
static cv_backend *backend(int n_threads)
{
    cv_error err = {.msg = ""};
    cv_backend *bk = cv_backend_cpu_create(model, n_threads, &err);
    if (!bk) fail_msg("%s", err.msg);
    bk->parallel_min_madds = 0.0;
    return bk;
}

/* Logits of every position of sequence s run alone: prefill then decode. */
static void run_alone_kv(int s, int n_threads, cv_dtype kv_dtype,
                         float *out /* (TOTAL - 1, vocab) */)
{
    cv_backend *bk = backend(n_threads);
    cv_error err = {.msg = ""};
    assert_int_equal(cv_backend_cpu_set_kv_dtype(bk, kv_dtype, &err), 0);
    runner r;
    assert_int_equal(runner_init(&r, &runner_cpu_ops, bk, 4, 1, &err), 0);
    r.seqs[0].ids = ids[s];
    r.seqs[0].n_ids = TOTAL;
    int chunk[1] = {PROMPT};
    assert_int_equal(runner_step(&r, chunk, out, &err), PROMPT);
    chunk[0] = 1;
    for (int i = PROMPT; i < TOTAL - 1; i++)
        assert_int_equal(runner_step(&r, chunk, out + (size_t)i * vocab, &err), 1);
    cv_backend_destroy(bk);
}

static void run_alone(int s, int n_threads, float *out)
{
    run_alone_kv(s, n_threads, CV_DTYPE_F32, out);
}

/* max |a - b| / max |b| over n values. */
static double rel_diff(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num = fmax(num, fabs((double)a[i] - b[i]));
        den = fmax(den, fabs((double)b[i]));
    }
    return num / den;
}

/* vLLM's dtype argument: an F32 checkpoint run with F16 or BF16 matrices
 * (converted once at create) stays close to the F32 logits, and really
 * runs converted weights (the logits differ, the matrices changed type). */
static void test_matrix_dtype_conversion(void **state)
{
    (void)state;
    const size_t n = (size_t)PROMPT * vocab;
    float *ref = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
    assert_true(ref && got);
    const cv_dtype types[] = {CV_DTYPE_F32, CV_DTYPE_F16, CV_DTYPE_BF16};
    const double max_rel[] = {0.0, 2e-3, 2e-2};
    for (int k = 0; k < 3; k++) {
        cv_error err = {.msg = ""};
        cv_backend *bk = cv_backend_cpu_create_as(model, 1, types[k], &err);
        if (!bk) fail_msg("%s", err.msg);
        assert_int_equal(bk->lm_head.dtype, types[k]);
        assert_int_equal(bk->layers[0].w.wq.dtype, types[k]);
        runner r;
        assert_int_equal(runner_init(&r, &runner_cpu_ops, bk, 4, 1, &err), 0);
        r.seqs[0].ids = ids[0];
        r.seqs[0].n_ids = PROMPT;
        int chunk[1] = {PROMPT};
        assert_int_equal(runner_step(&r, chunk, k == 0 ? ref : got, &err), PROMPT);
        cv_backend_destroy(bk);
        if (k == 0) continue;
        double d = rel_diff(got, ref, n);
        assert_true(d > 0.0 && d <= max_rel[k]);
    }
    cv_error err = {.msg = ""};
    assert_null(cv_backend_cpu_create_as(model, 1, (cv_dtype)7, &err));
    assert_string_equal(err.msg, "cv_backend_cpu_create: unsupported weight dtype 7");
    free(ref);
    free(got);
}

static void test_batch_and_thread_invariance(void **state)
{
    (void)state;
    const size_t rows = TOTAL - 1;
    float *alone = malloc(N_SEQS * rows * vocab * sizeof(float));
    float *one_thread = malloc(rows * vocab * sizeof(float));
    float *batched = malloc(N_SEQS * rows * vocab * sizeof(float));
    float *step = malloc(N_SEQS * TOTAL * vocab * sizeof(float));
    assert_true(alone && one_thread && batched && step);
    for (int s = 0; s < N_SEQS; s++)
        run_alone(s, 2, alone + s * rows * vocab);
    run_alone(0, 1, one_thread);
    assert_memory_equal(one_thread, alone, rows * vocab * sizeof(float));

    /* All sequences together, staggered: prefill chunks of different sizes
     * share steps with other sequences' decode tokens. */
    cv_backend *bk = backend(2);
    cv_error err = {.msg = ""};
    runner r;
    assert_int_equal(runner_init(&r, &runner_cpu_ops, bk, 4, N_SEQS, &err), 0);
    for (int s = 0; s < N_SEQS; s++) {
        r.seqs[s].ids = ids[s];
        r.seqs[s].n_ids = TOTAL - 1;
    }
    static const int first[N_SEQS] = {PROMPT, 5, 3, 1};
    for (int k = 0;; k++) {
        int chunk[N_SEQS], done[N_SEQS], any = 0;
        for (int s = 0; s < N_SEQS; s++) {
            done[s] = r.seqs[s].n_done;
            chunk[s] = k == 0 ? first[s] : (done[s] < PROMPT ? PROMPT - done[s] : 1);
            if (done[s] >= TOTAL - 1) chunk[s] = 0;
            any += chunk[s];
        }
        if (!any) break;
        assert_true(runner_step(&r, chunk, step, &err) > 0);
        size_t row = 0;
        for (int s = 0; s < N_SEQS; s++) {
            memcpy(batched + (s * rows + done[s]) * vocab, step + row * vocab,
                   (size_t)chunk[s] * vocab * sizeof(float));
            row += (size_t)chunk[s];
        }
    }
    assert_memory_equal(batched, alone, N_SEQS * rows * vocab * sizeof(float));
    cv_backend_destroy(bk);
    free(alone);
    free(one_thread);
    free(batched);
    free(step);
}

/* Sequence 1 forks from sequence 0 after 9 tokens: it shares the two full
 * blocks and gets a copy of the partial third one; both then continue with
 * the same tokens and must give the unforked logits. */
static void test_kv_copy_fork(void **state)
{
    (void)state;
    float *ref = malloc((TOTAL - 1) * vocab * sizeof(float));
    float *got = malloc(2 * (size_t)vocab * sizeof(float));
    assert_true(ref && got);
    run_alone(0, 2, ref);
    cv_backend *bk = backend(2);
    cv_error err = {.msg = ""};
    runner r;
    assert_int_equal(runner_init(&r, &runner_cpu_ops, bk, 4, 2, &err), 0);
    r.seqs[0].ids = ids[0];
    r.seqs[0].n_ids = TOTAL - 1;
    int chunk[2] = {9, 0};
    float *prefill = malloc(9 * (size_t)vocab * sizeof(float));
    assert_non_null(prefill);
    assert_int_equal(runner_step(&r, chunk, prefill, &err), 9);
    r.seqs[1] = r.seqs[0];
    r.seqs[1].table[2] = 5; /* blocks nobody else uses */
    r.seqs[1].table[3] = 6;
    int32_t src = r.seqs[0].table[2], dst = 5;
    assert_int_equal(cv_backend_kv_copy(bk, &src, &dst, 1, &err), 0);
    chunk[0] = chunk[1] = 1;
    for (int i = 9; i < TOTAL - 1; i++) {
        assert_int_equal(runner_step(&r, chunk, got, &err), 2);
        assert_memory_equal(got, ref + (size_t)i * vocab, vocab * sizeof(float));
        assert_memory_equal(got + vocab, ref + (size_t)i * vocab, vocab * sizeof(float));
    }
    cv_backend_destroy(bk);
    free(prefill);
    free(ref);
    free(got);
}

/* A valid one-sequence batch of 3 tokens in blocks 2 and 3 (block size 2). */
typedef struct good_batch {
    int32_t ids[3], pos[3], starts[2], lens[1], table[2], idx[1];
    int64_t slots[3];
    cv_batch b;
} good_batch;

static void good_batch_init(good_batch *g)
{
    *g = (good_batch){
        .ids = {1, 5, 9},
        .pos = {0, 1, 2},
        .starts = {0, 3},
        .lens = {3},
        .table = {2, 3},
        .idx = {2},
        .slots = {4, 5, 6},
    };
    g->b = (cv_batch){
        .n_tokens = 3,
        .token_ids = g->ids,
        .positions = g->pos,
        .slot_mapping = g->slots,
        .n_seqs = 1,
        .query_start = g->starts,
        .seq_lens = g->lens,
        .block_tables = g->table,
        .max_blocks_per_seq = 2,
        .n_logits = 1,
        .logits_indices = g->idx,
    };
}

static void expect_forward_error(cv_backend *bk, const good_batch *g, const char *msg)
{
    cv_error err = {.msg = ""};
    float *logits = malloc((size_t)vocab * sizeof(float));
    assert_non_null(logits);
    assert_int_equal(cv_backend_forward(bk, &g->b, logits, &err), -1);
    assert_string_equal(err.msg, msg);
    free(logits);
}

static void test_bad_batches(void **state)
{
    (void)state;
    cv_backend *bk = backend(2);
    cv_error err = {.msg = ""};
    good_batch g;
    good_batch_init(&g);
    expect_forward_error(bk, &g,
                         "cv_backend_forward: KV pool not allocated (call cv_backend_kv_alloc)");
    assert_int_equal(cv_backend_kv_alloc(bk, 0, 2, &err), -1);
    assert_string_equal(err.msg, "cv_backend_kv_alloc: n_blocks 0 and block_size 2 must be > 0");
    assert_int_equal(cv_backend_kv_alloc(bk, 4, 2, &err), 0);

    float *logits = malloc((size_t)vocab * sizeof(float));
    assert_non_null(logits);
    assert_int_equal(cv_backend_forward(bk, &g.b, logits, &err), 0);
    free(logits);

    g.ids[1] = 512;
    expect_forward_error(bk, &g,
                         "cv_backend_forward: token_ids[1] = 512 is outside the vocabulary 0..511");
    good_batch_init(&g);
    g.slots[2] = 8;
    expect_forward_error(bk, &g, "cv_backend_forward: slot_mapping[2] = 8 is outside slots 0..7");
    good_batch_init(&g);
    g.table[1] = 4;
    expect_forward_error(bk, &g,
                         "cv_backend_forward: block_tables[0][1] = 4 is outside blocks 0..3");
    good_batch_init(&g);
    g.lens[0] = 2;
    expect_forward_error(bk, &g, "cv_backend_forward: seq_lens[0] = 2 must be in 3..4");
    good_batch_init(&g);
    g.idx[0] = 3;
    expect_forward_error(bk, &g,
                         "cv_backend_forward: logits_indices[0] = 3 is outside tokens 0..2");
    good_batch_init(&g);
    g.starts[1] = 2;
    expect_forward_error(bk, &g,
                         "cv_backend_forward: query_start must run from 0 to n_tokens 3 "
                         "(got 0 .. 2)");
    good_batch_init(&g);
    g.pos[0] = -1;
    expect_forward_error(bk, &g, "cv_backend_forward: positions[0] = -1 is negative");

    int32_t src = 0, dst = 4;
    assert_int_equal(cv_backend_kv_copy(bk, &src, &dst, 1, &err), -1);
    assert_string_equal(err.msg, "cv_backend_kv_copy: pair 0 (0 -> 4) is outside blocks 0..3");
    assert_int_equal(cv_backend_kv_block_bytes(bk, 2), (size_t)5 * 2 * 4 * 2 * 8 * 4);
    cv_backend_destroy(bk);
}

static void test_bad_weights(void **state)
{
    (void)state;
    const cv_model_config *cfg = cv_model_get_config(model);
    cv_model_weights w = *cv_model_get_weights(model);
    cv_layer_weights layers[5];
    memcpy(layers, w.layers, sizeof layers);
    w.layers = layers;
    layers[3].wk.shape[1] = 65;
    cv_error err = {.msg = ""};
    assert_null(cpu_backend_create_from(cfg, &w, 1, cfg->dtype, &err));
    assert_string_equal(err.msg, "cpu backend: weight layer 3 wk has shape (32, 65) with 2 dims, "
                                 "expected (32, 64)");
    layers[3].wk.shape[1] = 64;
    layers[0].ffn_norm.data = NULL;
    assert_null(cpu_backend_create_from(cfg, &w, 1, cfg->dtype, &err));
    assert_string_equal(err.msg, "cpu backend: weight layer 0 ffn_norm is missing");
    assert_null(cv_backend_cpu_create(NULL, 1, &err));
    assert_string_equal(err.msg, "cv_backend_cpu_create: model is NULL");
}

/* A 16-bit KV cache stays close to the fp32 one: max |diff| / max |ref|
 * over every position's logits (stories260K is an fp32 model). */
static void test_kv_dtypes(void **state)
{
    (void)state;
    const size_t n = (size_t)(TOTAL - 1) * vocab;
    float *ref = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
    assert_true(ref && got);
    run_alone_kv(1, 2, CV_DTYPE_F32, ref);
    static const cv_dtype dts[2] = {CV_DTYPE_F16, CV_DTYPE_BF16};
    static const double tol[2] = {1e-3, 1e-2};
    for (int i = 0; i < 2; i++) {
        run_alone_kv(1, 2, dts[i], got);
        double md = 0.0, mr = 0.0;
        for (size_t j = 0; j < n; j++) {
            md = fmax(md, fabs((double)got[j] - ref[j]));
            mr = fmax(mr, fabs((double)ref[j]));
        }
        print_message("kv %s: rel err %.2e\n", cv_dtype_name(dts[i]), md / mr);
        assert_true(md / mr <= tol[i]);
        assert_true(md > 0.0); /* the cache really is narrower */
    }
    cv_backend *bk = backend(1);
    cv_error err = {.msg = ""};
    assert_int_equal(cv_backend_kv_block_bytes(bk, 16), (size_t)5 * 2 * 4 * 16 * 8 * 4);
    assert_int_equal(cv_backend_cpu_set_kv_dtype(bk, CV_DTYPE_F16, &err), 0);
    assert_int_equal(cv_backend_kv_block_bytes(bk, 16), (size_t)5 * 2 * 4 * 16 * 8 * 2);
    assert_int_equal(cv_backend_kv_alloc(bk, 2, 16, &err), 0);
    assert_int_equal(cv_backend_cpu_set_kv_dtype(bk, CV_DTYPE_F32, &err), -1);
    assert_string_equal(err.msg, "cv_backend_cpu_set_kv_dtype: the KV pool is already allocated");
    cv_backend_destroy(bk);
    free(ref);
    free(got);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_and_thread_invariance),
        cmocka_unit_test(test_kv_copy_fork),
        cmocka_unit_test(test_kv_dtypes),
        cmocka_unit_test(test_matrix_dtype_conversion),
        cmocka_unit_test(test_bad_batches),
        cmocka_unit_test(test_bad_weights),
    };
    cv_test_need_shared("models/stories260K"); /* every test runs on it */
    return cmocka_run_group_tests(tests, setup, teardown);
}

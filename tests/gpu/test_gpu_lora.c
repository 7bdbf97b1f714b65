/* LoRA on the CUDA backend (backend/cuda/lora): the gather kernels alone
 * against an fp64 reference (check_gather), and the fixtures of
 * tests/fixtures/lora through tests/lora/lora_hf_check.h, the same checks
 * as the CPU's test_lora_hf:
 *  - each adapter alone, every position within 1e-4 of HF's fp32 logits on
 *    the merged weights: the fixtures are fp32 models, which the backend
 *    runs as fp32 cuBLAS GEMMs with TF32 off and fp32 LoRA kernels (the
 *    tolerance test_gpu_fixtures holds fp32 models to; the CPU measures
 *    2.4e-6);
 *  - a prefill batch mixing the three adapters (interleaved) and a base
 *    sequence within 1e-5 of each alone: the LoRA kernels add the same bits
 *    in any batch, but cuBLAS and the attention split count may pick other
 *    summation orders for another batch size, fp32 rounding ~1e-6;
 *  - through the engine on "cuda", base and three adapters in flight at
 *    once, greedy continuations equal HF's: with 3 slots (decode tokens of
 *    several adapters share steps) and with 1 slot (adapters wait, evict
 *    each other and reload).
 * The fixture's adapters on llama_bf16 against the CPU backend, prefill and
 * decode (check_bf16 says why its bounds); the backend's refusals, each
 * with its message. Without a CUDA device the program exits 77 (ctest:
 * skipped). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cuda_runtime_api.h>

#include "../common/hf_fixture.h"
#include "../common/shared_data.h"
#include "../lora/lora_hf_check.h"
#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/lora/cuda_lora.h"
#include "lora/lora.h"

static void *gpu_create(const cv_model *model, cv_error *err)
{
    return cv_cuda_backend_create(model, 0, err);
}

static void check(const char *name, int engine_max_loras)
{
    const lora_hf_target gpu = {
        .device = "cuda",
        .create = gpu_create,
        .ops = &cv_cuda_backend_ops,
        .tol = 1e-4,
        .mixed_tol = 1e-5,
        .engine_max_loras = engine_max_loras,
    };
    lora_hf_check(name, &gpu);
}

static void test_llama(void **state)
{
    (void)state;
    check("llama_f32", 3);
}

static void test_qwen2(void **state)
{
    (void)state;
    check("qwen2_f32", 3);
}

/* More adapters in flight than slots: each waits for a slot. */
static void test_llama_one_slot(void **state)
{
    (void)state;
    check("llama_f32", 1);
}

/* ---- bf16: the GEMV decode path and split activations --------------------- */

enum { BF_SEQS = 4, BF_BLOCKS = 4, BF_BLOCK = 16 };

/* One step over BF_SEQS sequences: sequence s feeds ids[s][from .. to) at
 * their positions (its cache holds the tokens before), with adapter
 * slot[s]; every token's logits into out. */
static void bf_step(const cv_backend_ops *ops, void *bk, int32_t ids[BF_SEQS][64], int from, int to,
                    const int32_t *slot, float *out)
{
    int32_t tok[BF_SEQS * 64], pos[BF_SEQS * 64], rows[BF_SEQS * 64], qs[BF_SEQS + 1];
    int32_t lens[BF_SEQS], tables[BF_SEQS * BF_BLOCKS];
    int64_t kv[BF_SEQS * 64];
    int n = 0;
    for (int s = 0; s < BF_SEQS; s++) {
        qs[s] = n;
        lens[s] = to;
        for (int b = 0; b < BF_BLOCKS; b++)
            tables[s * BF_BLOCKS + b] = s * BF_BLOCKS + b;
        for (int j = from; j < to; j++, n++) {
            tok[n] = ids[s][j];
            pos[n] = j;
            kv[n] = (int64_t)(s * BF_BLOCKS + j / BF_BLOCK) * BF_BLOCK + j % BF_BLOCK;
            rows[n] = n;
        }
    }
    qs[BF_SEQS] = n;
    const cv_batch bt = {.n_tokens = n,
                         .token_ids = tok,
                         .positions = pos,
                         .slot_mapping = kv,
                         .n_seqs = BF_SEQS,
                         .query_start = qs,
                         .seq_lens = lens,
                         .block_tables = tables,
                         .max_blocks_per_seq = BF_BLOCKS,
                         .n_logits = n,
                         .logits_indices = rows,
                         .lora_slots = slot};
    cv_error err = {0};
    if (ops->forward(bk, &bt, out, NULL, &err) < 0) fail_msg("%s", err.msg);
}

/* max |a - b| / max |b| over n values. */
static double rel_diff(const float *a, const float *b, size_t n)
{
    double scale = 0.0, worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        scale = fabs(b[i]) > scale ? fabs(b[i]) : scale;
        worst = fabs((double)a[i] - b[i]) > worst ? fabs((double)a[i] - b[i]) : worst;
    }
    return worst / scale;
}

/* The llama_f32 fixture's adapters on llama_bf16 (same shapes): the GPU
 * against the CPU backend (fp32 arithmetic on the same bf16 weights, fp32
 * adapters; its mixed batches equal each sequence alone bitwise), for a
 * prefill of 6 tokens and then single decode tokens of the three adapters
 * and a base sequence in one batch: 4 tokens, which 16-bit models run as
 * GEMVs with fused epilogues without adapters. The fixture's adapters are
 * strong (they move the logits by 1.0 to 1.5 of the row's scale, HF's
 * reference), so the bounds below are far from what a lost or misplaced
 * delta gives: in the exact configuration (F32 KV, split activations, so
 * fp32 adapter slots) 1e-3 (the base rows agree to ~1e-5); in the
 * default one (bf16 KV and activations) 1e-1, test_gpu_fixtures' near-tie
 * scale for those numerics. Those numerics include the 24-token prefill's
 * q|k|v and gate|up products rounded to bf16 (cuBLAS runs them); with an
 * adapter the expand adds its delta into that bf16 product and rounds once
 * more, at most 2^-8 of each value, the size of the product's own
 * rounding, which the bound already covers (the decode steps' GEMV path
 * keeps those products in fp32 and rounds nothing more). */
static void check_bf16(cv_cuda_act_mode mode)
{
    hf_fixture f;
    hf_fixture_load(&f, "llama_bf16");
    const int V = f.cfg->vocab_size;
    const bool exact = mode == CV_CUDA_ACT_SPLIT;
    cv_error err = {0};
    cv_backend *cpu = cv_backend_cpu_create(f.model, 2, &err);
    cv_cuda_backend *gpu = cv_cuda_backend_create(f.model, 0, &err);
    if (!cpu || !gpu) fail_msg("%s", err.msg);
    if (exact && (cv_cuda_backend_set_kv_dtype(gpu, CV_DTYPE_F32, &err) ||
                  cv_cuda_backend_set_act_mode(gpu, CV_CUDA_ACT_SPLIT, &err)))
        fail_msg("%s", err.msg);
    const int n_blocks = BF_SEQS * BF_BLOCKS;
    if (cv_backend_kv_alloc(cpu, n_blocks, BF_BLOCK, &err) ||
        cv_cuda_backend_kv_alloc(gpu, n_blocks, BF_BLOCK, &err) ||
        cv_backend_lora_init(cpu, 3, 16, &err) || cv_cuda_backend_lora_init(gpu, 3, 16, &err))
        fail_msg("%s", err.msg);
    static const char *const names[3] = {"qv_r4", "all_r8_rslora", "mlp_o_r2"};
    cv_lora_adapter *ad[3];
    const char *src = getenv("CVLLM_SOURCE_DIR");
    for (int k = 0; k < 3; k++) {
        char dir[4300];
        snprintf(dir, sizeof dir, "%s/tests/fixtures/lora/llama_f32/%s", src && *src ? src : ".",
                 names[k]);
        if (cv_lora_adapter_load(dir, f.cfg, 16, &ad[k], &err) ||
            cv_backend_lora_load(cpu, k, ad[k], &err) ||
            cv_cuda_backend_lora_load(gpu, k, ad[k], &err))
            fail_msg("%s", err.msg);
    }
    int32_t ids[BF_SEQS][64];
    for (int s = 0; s < BF_SEQS; s++)
        for (int j = 0; j < 64; j++)
            ids[s][j] = (int32_t)((s * 37 + j * 11 + 3) % V);
    const int32_t slot[BF_SEQS] = {0, 1, 2, -1}, none[BF_SEQS] = {-1, -1, -1, -1};
    enum { PRE = 6, DEC = 4 };
    float *want = malloc((size_t)BF_SEQS * PRE * V * sizeof(float));
    float *got = malloc((size_t)BF_SEQS * PRE * V * sizeof(float));
    float *base = malloc((size_t)BF_SEQS * PRE * V * sizeof(float));
    assert_true(want && got && base);
    for (int step = 0; step <= DEC; step++) {
        const int from = step ? PRE + step - 1 : 0, to = PRE + step, n = to - from;
        bf_step(&cv_cpu_backend_ops, cpu, ids, from, to, slot, want);
        bf_step(&cv_cuda_backend_ops, gpu, ids, from, to, slot, got);
        for (int s = 0; s < BF_SEQS; s++) {
            const size_t off = (size_t)s * n * V, len = (size_t)n * V;
            const double e = rel_diff(got + off, want + off, len);
            printf("llama_bf16 %s %s step %d seq %d (%s): rel err vs CPU %.3g\n",
                   exact ? "exact" : "default", step ? "decode" : "prefill", step, s,
                   slot[s] >= 0 ? names[slot[s]] : "base", e);
            if (!(e <= (exact ? 1e-3 : 1e-1)))
                fail_msg("llama_bf16 %s step %d seq %d: rel err %g", exact ? "exact" : "default",
                         step, s, e);
            if (exact && step == 0 && slot[s] >= 0) {
                /* The adapter's own effect: the same tokens without it. */
                cv_backend *ref = cv_backend_cpu_create(f.model, 2, &err);
                if (!ref || cv_backend_kv_alloc(ref, n_blocks, BF_BLOCK, &err))
                    fail_msg("%s", err.msg);
                bf_step(&cv_cpu_backend_ops, ref, ids, 0, PRE, none, base);
                cv_backend_destroy(ref);
                const double effect = rel_diff(want + off, base + off, len);
                printf("  adapter %s changes the logits by %.3g\n", names[slot[s]], effect);
                if (!(e <= effect / 10))
                    fail_msg("llama_bf16 seq %d: error %g is not small against the adapter's "
                             "effect %g",
                             s, e, effect);
            }
        }
    }
    free(want), free(got), free(base);
    for (int k = 0; k < 3; k++)
        cv_lora_adapter_free(ad[k]);
    cv_backend_destroy(cpu);
    cv_cuda_backend_destroy(gpu);
    hf_fixture_free(&f);
}

static void test_bf16_exact(void **state)
{
    (void)state;
    check_bf16(CV_CUDA_ACT_SPLIT);
}

static void test_bf16_default(void **state)
{
    (void)state;
    check_bf16(CV_CUDA_ACT_ROUND);
}

/* ---- the gather kernels alone ----------------------------------------------- */

enum { G_TOK = 40, G_IN = 5000, G_RANK = 16, G_SLOTS = 3, G_OUT = 500 };

/* Segments as cuda_lora_prepare cuts them: tokens grouped by slot (-1: no
 * adapter, left out), at most CUDA_LORA_SEG_TOKENS each, then empty ones up
 * to a power of two (segs holds 2 n_tok). Returns the count. */
static int g_segments(const int *tok_slot, int n_tok, int32_t *tok, cuda_lora_seg *segs)
{
    int n = 0, n_segs = 0;
    for (int k = 0; k < G_SLOTS; k++)
        for (int t = 0; t < n_tok; t++) {
            if (tok_slot[t] != k) continue;
            if (!n_segs || segs[n_segs - 1].slot != k ||
                segs[n_segs - 1].count == CUDA_LORA_SEG_TOKENS)
                segs[n_segs++] = (cuda_lora_seg){.slot = k, .start = n, .count = 0};
            tok[n++] = t;
            segs[n_segs - 1].count++;
        }
    int padded = 1;
    while (padded < n_segs)
        padded *= 2;
    for (; n_segs < padded; n_segs++)
        segs[n_segs] = (cuda_lora_seg){.slot = 0, .start = 0, .count = 0};
    return n_segs;
}

static void *g_upload(const void *host, size_t bytes)
{
    void *dev = NULL;
    assert_int_equal(cudaMalloc(&dev, bytes), cudaSuccess);
    assert_int_equal(cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice), cudaSuccess);
    return dev;
}

/* cuda_lora_shrink then cuda_lora_expand with launch p (host pointers in
 * tok/segs/y replaced by device copies) on the tokens and segments given;
 * y (n_tok, G_OUT) of p.y_dtype in place. */
static void g_run(cuda_lora_launch p, const int32_t *tok, int n_tok_list, const cuda_lora_seg *segs,
                  int n_segs, void *y)
{
    const size_t y_bytes = (size_t)G_TOK * G_OUT * cv_dtype_size(p.y_dtype);
    p.tok = g_upload(tok, (size_t)(n_tok_list ? n_tok_list : 1) * sizeof(int32_t));
    p.segs = g_upload(segs, (size_t)(n_segs ? n_segs : 1) * sizeof(cuda_lora_seg));
    p.n_segs = n_segs;
    void *yd = g_upload(y, y_bytes);
    p.y = yd;
    assert_int_equal(cuda_lora_shrink(&p, 0), 0);
    assert_int_equal(cuda_lora_expand(&p, 0), 0);
    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
    assert_int_equal(cudaMemcpy(y, yd, y_bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    cudaFree((void *)p.tok);
    cudaFree((void *)p.segs);
    cudaFree(yd);
}

/* Shrink and expand on their own against an fp64 reference, with an input
 * wider than two chunks (5000 = 2048 + 2048 + 904), q|k|v-like parts of
 * 300, 100, 100 columns (weights in wdt, x in dtype, y in ydt), three
 * slots, tokens without adapter interleaved and the empty segments that
 * pad the list to a power of two: every output within 1e-4
 * of the largest delta (fp32 sums of 5000 products) of y + delta, plus,
 * for a 16-bit y, the one rounding of that sum to ydt (unit roundoff 2^-8
 * of the sum in bf16, 2^-11 in fp16: the expand rounds once, to nearest);
 * untouched rows bitwise; then each token alone in its own segment gives
 * the same bits as in the batch (batch invariance). */
static void check_gather(cv_dtype dtype, cv_dtype wdt, cv_dtype ydt, bool split)
{
    const int n_rows = 3 * G_RANK, ld_u = 3 * G_RANK;
    const size_t slot_elems = (size_t)n_rows * G_IN + (size_t)G_RANK * G_OUT;
    const size_t es = cv_dtype_size(dtype), x_rows = split ? 2 * G_TOK : G_TOK;
    const size_t ws = cv_dtype_size(wdt), ys = cv_dtype_size(ydt);
    const double y_round = ydt == CV_DTYPE_BF16 ? 0x1p-8 : ydt == CV_DTYPE_F16 ? 0x1p-11 : 0.0;
    void *pool = malloc(slot_elems * G_SLOTS * ws), *x = malloc(x_rows * G_IN * es);
    void *y0 = malloc(ys * G_TOK * G_OUT), *y = malloc(ys * G_TOK * G_OUT);
    assert_true(pool && x && y0 && y);
    uint64_t rng = 12345;
    for (size_t i = 0; i < slot_elems * G_SLOTS; i++) {
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        cv_dtype_store(pool, i, wdt, (float)((double)(rng >> 11) / 9007199254740992.0 - 0.5));
    }
    for (size_t i = 0; i < x_rows * G_IN; i++) {
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        const double v = (double)(rng >> 11) / 9007199254740992.0 - 0.5;
        cv_dtype_store(x, i, dtype, (float)(i >= (size_t)G_TOK * G_IN ? v / 256 : v));
    }
    for (int i = 0; i < G_TOK * G_OUT; i++)
        cv_dtype_store(y0, (size_t)i, ydt, (float)(i % 97) / 97.0f - 0.5f);
    /* -1, 0, 1, 2 in turn, and slot 0 again on every ninth token. */
    int tok_slot[G_TOK];
    for (int t = 0; t < G_TOK; t++)
        tok_slot[t] = t % 9 == 0 ? 0 : t % 4 - 1;
    int32_t tok[G_TOK];
    cuda_lora_seg segs[2 * G_TOK];
    const int n_segs = g_segments(tok_slot, G_TOK, tok, segs);
    void *pool_d = g_upload(pool, slot_elems * G_SLOTS * ws);
    void *x_d = g_upload(x, x_rows * G_IN * es);
    float *u_d = NULL;
    const size_t chunk_stride = (size_t)G_TOK * ld_u;
    assert_int_equal(cudaMalloc((void **)&u_d, 3 * chunk_stride * sizeof(float)), cudaSuccess);
    const cuda_lora_launch p = {
        .dtype = dtype,
        .w_dtype = wdt,
        .x = x_d,
        .x_lo_off = split ? (size_t)G_TOK * G_IN : 0,
        .in = G_IN,
        .a = pool_d,
        .bt = (const char *)pool_d + (size_t)n_rows * G_IN * ws,
        .slot_elems = slot_elems,
        .rank = G_RANK,
        .n_parts = 3,
        .part_end = {300, 400, 500},
        .u = u_d,
        .ld_u = ld_u,
        .u_chunk_stride = chunk_stride,
        .y_dtype = ydt,
        .ld_y = G_OUT,
    };
    memcpy(y, y0, ys * G_TOK * G_OUT);
    int n_list = 0;
    for (int i = 0; i < n_segs; i++)
        n_list += segs[i].count;
    g_run(p, tok, n_list, segs, n_segs, y);
    double *want = malloc(sizeof(double) * G_TOK * G_OUT), scale = 0.0, worst = 0.0;
    assert_non_null(want);
    for (int t = 0; t < G_TOK; t++) {
        const int k = tok_slot[t];
        if (k < 0) {
            assert_memory_equal((char *)y + (size_t)t * G_OUT * ys,
                                (char *)y0 + (size_t)t * G_OUT * ys, G_OUT * ys);
            continue;
        }
        double u[3 * G_RANK];
        for (int r = 0; r < n_rows; r++) {
            double acc = 0.0;
            for (int i = 0; i < G_IN; i++) {
                double xv = cv_dtype_load(x, (size_t)t * G_IN + i, dtype);
                if (split) xv += cv_dtype_load(x, (size_t)(G_TOK + t) * G_IN + i, dtype);
                acc += cv_dtype_load(pool, k * slot_elems + (size_t)r * G_IN + i, wdt) * xv;
            }
            u[r] = acc;
        }
        for (int c = 0; c < G_OUT; c++) {
            const int part = c < 300 ? 0 : c < 400 ? 1 : 2;
            double d = 0.0;
            for (int r = 0; r < G_RANK; r++)
                d += cv_dtype_load(pool,
                                   k * slot_elems + (size_t)n_rows * G_IN + (size_t)r * G_OUT + c,
                                   wdt) *
                     u[part * G_RANK + r];
            want[(size_t)t * G_OUT + c] = cv_dtype_load(y0, (size_t)t * G_OUT + c, ydt) + d;
            scale = fabs(d) > scale ? fabs(d) : scale;
        }
    }
    for (int t = 0; t < G_TOK; t++)
        for (int c = 0; tok_slot[t] >= 0 && c < G_OUT; c++) {
            const size_t i = (size_t)t * G_OUT + c;
            const double got = cv_dtype_load(y, i, ydt), e = fabs(got - want[i]);
            const double tol = 1e-4 * scale + y_round * (fabs(want[i]) + 1e-4 * scale);
            worst = e > worst ? e : worst;
            if (!(e <= tol))
                fail_msg("gather dtype %d/%d/%d split %d: token %d (slot %d) column %d: %.7g, "
                         "want %.7g (tolerance %.3g: 1e-4 of the largest delta %.3g and y's "
                         "rounding)",
                         (int)dtype, (int)wdt, (int)ydt, split, t, tok_slot[t], c, got, want[i],
                         tol, scale);
        }
    printf("gather dtype %d/%d/%d split %d: %d segments, max error %.3g of max delta %.3g\n",
           (int)dtype, (int)wdt, (int)ydt, split, n_segs, worst, scale);
    free(want);
    /* Each adapter token alone: the same bits. */
    char *alone = malloc(ys * G_TOK * G_OUT);
    assert_non_null(alone);
    for (int t = 0; t < G_TOK; t++) {
        if (tok_slot[t] < 0) continue;
        memcpy(alone, y0, ys * G_TOK * G_OUT);
        const int32_t one[1] = {t};
        const cuda_lora_seg seg[1] = {{.slot = tok_slot[t], .start = 0, .count = 1}};
        g_run(p, one, 1, seg, 1, alone);
        if (memcmp(alone + (size_t)t * G_OUT * ys, (char *)y + (size_t)t * G_OUT * ys, G_OUT * ys))
            fail_msg("gather dtype %d/%d/%d split %d: token %d alone differs from the batch",
                     (int)dtype, (int)wdt, (int)ydt, split, t);
    }
    free(alone);
    cudaFree(pool_d);
    cudaFree(x_d);
    cudaFree(u_d);
    free(pool), free(x), free(y0), free(y);
}

static void test_gather(void **state)
{
    (void)state;
    check_gather(CV_DTYPE_F32, CV_DTYPE_F32, CV_DTYPE_F32, false);
    check_gather(CV_DTYPE_BF16, CV_DTYPE_BF16, CV_DTYPE_F32, false);
    check_gather(CV_DTYPE_BF16, CV_DTYPE_BF16, CV_DTYPE_F32, true);
    /* The exact mode's slots: fp32 weights, bf16 hi + lo activations. */
    check_gather(CV_DTYPE_BF16, CV_DTYPE_F32, CV_DTYPE_F32, true);
    check_gather(CV_DTYPE_F16, CV_DTYPE_F16, CV_DTYPE_F32, false);
    /* The products a 16-bit model leaves in its dtype (q|k|v, gate|up of
     * cuBLAS-size steps): the delta added into them in place. */
    check_gather(CV_DTYPE_BF16, CV_DTYPE_BF16, CV_DTYPE_BF16, false);
    check_gather(CV_DTYPE_F16, CV_DTYPE_F16, CV_DTYPE_F16, false);
}

static void expect_error(int rc, const cv_error *err, const char *want)
{
    assert_int_equal(rc, -1);
    if (!strstr(err->msg, want)) fail_msg("error \"%s\" lacks \"%s\"", err->msg, want);
}

static void test_refusals(void **state)
{
    (void)state;
    hf_fixture f;
    hf_fixture_load(&f, "llama_f32");
    cv_error err = {0};
    cv_cuda_backend *b = cv_cuda_backend_create(f.model, 0, &err);
    if (!b) fail_msg("%s", err.msg);
    assert_int_equal(cv_cuda_backend_kv_alloc(b, 4, 16, &err), 0);
    expect_error(cv_cuda_backend_lora_load(b, 0, NULL, &err), &err,
                 "cv_cuda_backend_lora_load: no LoRA slots (call lora_init first)");
    expect_error(cv_cuda_backend_lora_init(b, 0, 8, &err), &err,
                 "n_slots 0 must be >= 1 and max_rank 8 in 1..512");
    expect_error(cv_cuda_backend_lora_init(b, 2, 513, &err), &err,
                 "n_slots 2 must be >= 1 and max_rank 513 in 1..512");
    assert_int_equal(cv_cuda_backend_lora_init(b, 2, 2, &err), 0);
    expect_error(cv_cuda_backend_lora_init(b, 2, 2, &err), &err,
                 "cv_cuda_backend_lora_init: the LoRA slots are already reserved");
    expect_error(cv_cuda_backend_lora_load(b, 2, NULL, &err), &err,
                 "cv_cuda_backend_lora_load: slot 2 is outside slots 0..1");
    char dir[4300];
    const char *src = getenv("CVLLM_SOURCE_DIR");
    snprintf(dir, sizeof dir, "%s/tests/fixtures/lora/llama_f32/all_r8_rslora",
             src && *src ? src : ".");
    cv_lora_adapter *ad = NULL;
    if (cv_lora_adapter_load(dir, f.cfg, 16, &ad, &err) < 0) fail_msg("%s", err.msg);
    expect_error(cv_cuda_backend_lora_load(b, 0, ad, &err), &err,
                 "adapter of rank 8 over 2 layers does not fit slots of rank 2 for 2 layers");
    /* A step naming an empty slot. */
    const int32_t ids[1] = {1}, pos[1] = {0}, qs[2] = {0, 1}, lens[1] = {1}, table[1] = {0},
                  rows[1] = {0}, slot[1] = {1};
    const int64_t kv[1] = {0};
    const cv_batch bt = {.n_tokens = 1,
                         .token_ids = ids,
                         .positions = pos,
                         .slot_mapping = kv,
                         .n_seqs = 1,
                         .query_start = qs,
                         .seq_lens = lens,
                         .block_tables = table,
                         .max_blocks_per_seq = 1,
                         .n_logits = 1,
                         .logits_indices = rows,
                         .lora_slots = slot};
    float *logits = malloc((size_t)f.cfg->vocab_size * sizeof(float));
    expect_error(cv_cuda_backend_forward(b, &bt, logits, &err), &err,
                 "cv_cuda_backend_forward: lora_slots[0] = 1 is not a loaded slot");
    free(logits);
    cv_cuda_backend_destroy(b);
    /* A delta applied without its shrink begun (the forward's contract
     * with cuda_lora.h): refused, not an expand of a stale u. */
    b = cv_cuda_backend_create(f.model, 0, &err);
    const int32_t slot0[1] = {0};
    cv_batch bt0 = bt;
    bt0.lora_slots = slot0;
    if (!b || cv_cuda_backend_lora_init(b, 1, 8, &err) ||
        cv_cuda_backend_lora_load(b, 0, ad, &err) || cuda_lora_prepare(b, &bt0, &err))
        fail_msg("%s", err.msg);
    expect_error(cuda_lora_apply(b, 0, CUDA_LORA_O, NULL, CV_DTYPE_F32, &err), &err,
                 "cuda_lora_apply: layer 0's o delta was not begun");
    cv_lora_adapter_free(ad);
    cv_cuda_backend_destroy(b);
    hf_fixture_free(&f);
    /* A model without a gated MLP. */
    hf_fixture_load(&f, "opt_f32");
    b = cv_cuda_backend_create(f.model, 0, &err);
    if (!b) fail_msg("%s", err.msg);
    expect_error(cv_cuda_backend_lora_init(b, 1, 8, &err), &err,
                 "this model's MLP is not gated (OPT, GPT-2)");
    cv_cuda_backend_destroy(b);
    hf_fixture_free(&f);
}

/* argv[1]: run only the tests matching this cmocka pattern (the
 * compute-sanitizer runs of tests/gpu/run_lora.sh). */
int main(int argc, char **argv)
{
    if (argc > 1) cmocka_set_test_filter(argv[1]);
    if (cv_cuda_device_count() == 0) {
        printf("no CUDA device: test_gpu_lora skipped\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gather),         cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_bf16_exact),     cmocka_unit_test(test_bf16_default),
        cmocka_unit_test(test_llama),          cmocka_unit_test(test_qwen2),
        cmocka_unit_test(test_llama_one_slot),
    };
    return cv_test_exit(cmocka_run_group_tests(tests, NULL, NULL));
}

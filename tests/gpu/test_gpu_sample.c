/* The device sampler (src/backend/cuda/kernels/sample.cu) against the CPU
 * sampler (src/engine/sampler.c) on fixed logits rows: greedy identical;
 * top_k 1 and a tiny top_p identical to greedy; penalties and min_tokens'
 * mask move the choice as on the CPU; the chosen token's logprob and rank
 * and the top-N list equal the CPU's within 1e-5; sampled tokens equal the
 * CPU's (the same stream and order); the sampled distribution at
 * temperature 1 (plain, top_k, top_p, min_p) matches the renormalized
 * softmax by a chi-square test; the same seed gives the same tokens run to
 * run and in another batch composition; the logits rows are left as they
 * were. Exits 77 (ctest: skipped) where no CUDA device is visible. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cuda_runtime_api.h>

#include "backend/cuda/kernels/sample.h"
#include "runner/sampler.h"

/* A request on one logits row, as the engine would make it. */
typedef struct trow {
    int row;
    cv_sampling_params p; /* temperature, top_k, top_p, min_p, penalties, min_tokens, logprobs */
    uint64_t seed;
    const int32_t *tokens; /* prompt then output */
    int n_prompt, n_tokens;
    const int32_t *stops; /* masked while the output is shorter than min_tokens */
    int n_stops;
} trow;

static void cuda_ok(cudaError_t e, const char *what)
{
    if (e != cudaSuccess) fail_msg("%s: %s", what, cudaGetErrorString(e));
}

static uint64_t rng_state = 0x1234567;

static double rnd(void) /* uniform [0, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) * (1.0 / 9007199254740992.0);
}

static float gauss(void)
{
    double s = 0;
    for (int i = 0; i < 12; i++)
        s += rnd();
    return (float)(s - 6.0);
}

static trow base_row(int row, float temperature, uint64_t seed)
{
    trow t = {.row = row, .seed = seed};
    cv_sampling_params_default(&t.p);
    t.p.temperature = temperature;
    t.p.logprobs = -1;
    return t;
}

static bool penalized(const cv_sampling_params *p)
{
    return p->repetition_penalty != 1.0f || p->frequency_penalty != 0.0f ||
           p->presence_penalty != 0.0f;
}

/* Samples rows on the GPU from logits (host, (n_rows, vocab)); out[i] for
 * rows[i]. Checks that the device rows come back unchanged. */
static void gpu_sample(const float *logits, int n_rows, int vocab, const trow *rows, int n,
                       cuda_sample_out *out)
{
    size_t bytes = (size_t)n_rows * vocab * sizeof(float);
    int entries = 0;
    for (int i = 0; i < n; i++)
        entries += (penalized(&rows[i].p) ? rows[i].n_tokens : 0) + rows[i].n_stops;
    cuda_sample_row *dr = calloc((size_t)n, sizeof(*dr));
    int32_t *ids = malloc((size_t)(entries + 1) * sizeof(int32_t));
    assert_non_null(dr);
    assert_non_null(ids);
    int at = 0, crow = 0;
    for (int i = 0; i < n; i++) {
        const trow *t = &rows[i];
        int nt = penalized(&t->p) ? t->n_tokens : 0;
        int n_out = t->n_tokens - t->n_prompt;
        int nm = n_out < t->p.min_tokens ? t->n_stops : 0;
        if (nt) memcpy(ids + at, t->tokens, (size_t)nt * sizeof(int32_t));
        if (nm) memcpy(ids + at + nt, t->stops, (size_t)nm * sizeof(int32_t));
        dr[i] = (cuda_sample_row){
            .temperature = t->p.temperature,
            .top_p = t->p.top_p,
            .min_p = t->p.min_p,
            .repetition_penalty = t->p.repetition_penalty,
            .frequency_penalty = t->p.frequency_penalty,
            .presence_penalty = t->p.presence_penalty,
            .top_k = t->p.top_k,
            .n_top = t->p.logprobs > 0 ? t->p.logprobs : 0,
            .seed = t->seed,
            .draw = (uint64_t)n_out,
            .row = t->row,
            .edits = at,
            .n_prompt = nt ? t->n_prompt : 0,
            .n_tokens = nt,
            .n_masked = nm,
            .counts = nt + nm > 0 ? crow++ : -1,
        };
        at += nt + nm;
    }
    float *d_logits;
    cuda_sample_row *d_rows;
    int32_t *d_ids;
    cuda_sample_edit *d_saved;
    uint32_t *d_counts;
    cuda_sample_out *d_out;
    size_t count_bytes = (size_t)(crow > 0 ? crow : 1) * vocab * sizeof(uint32_t);
    cuda_ok(cudaMalloc((void **)&d_logits, bytes), "cudaMalloc logits");
    cuda_ok(cudaMalloc((void **)&d_rows, (size_t)n * sizeof(*d_rows)), "cudaMalloc rows");
    cuda_ok(cudaMalloc((void **)&d_ids, (size_t)(entries + 1) * sizeof(int32_t)), "cudaMalloc ids");
    cuda_ok(cudaMalloc((void **)&d_saved, (size_t)(entries + 1) * sizeof(*d_saved)),
            "cudaMalloc saved");
    cuda_ok(cudaMalloc((void **)&d_counts, count_bytes), "cudaMalloc counts");
    cuda_ok(cudaMalloc((void **)&d_out, (size_t)n * sizeof(*d_out)), "cudaMalloc out");
    cuda_ok(cudaMemset(d_counts, 0, count_bytes), "clearing counts");
    cuda_ok(cudaMemcpy(d_logits, logits, bytes, cudaMemcpyHostToDevice), "logits upload");
    cuda_ok(cudaMemcpy(d_rows, dr, (size_t)n * sizeof(*dr), cudaMemcpyHostToDevice), "rows");
    cuda_ok(cudaMemcpy(d_ids, ids, (size_t)(entries + 1) * sizeof(int32_t), cudaMemcpyHostToDevice),
            "ids");
    cuda_ok(
        (cudaError_t)cuda_sample(d_logits, vocab, d_rows, n, d_ids, d_saved, d_counts, d_out, NULL),
        "cuda_sample launch");
    cuda_ok(cudaDeviceSynchronize(), "cuda_sample");
    cuda_ok(cudaMemcpy(out, d_out, (size_t)n * sizeof(*out), cudaMemcpyDeviceToHost), "out");
    for (int i = 0; i < n; i++)
        if (out[i].token < 0 || out[i].token >= vocab)
            fail_msg("row %d: token %d is outside the vocabulary of %d", i, out[i].token, vocab);
    /* The rows are left as they were and the counts zero. */
    float *back = malloc(bytes);
    uint32_t *counts = malloc(count_bytes);
    assert_non_null(back);
    assert_non_null(counts);
    cuda_ok(cudaMemcpy(back, d_logits, bytes, cudaMemcpyDeviceToHost), "logits download");
    cuda_ok(cudaMemcpy(counts, d_counts, count_bytes, cudaMemcpyDeviceToHost), "counts");
    if (memcmp(back, logits, bytes) != 0) fail_msg("the sampler left a logits row changed");
    for (size_t i = 0; i < count_bytes / sizeof(uint32_t); i++)
        if (counts[i]) fail_msg("count scratch word %zu left %u, not 0", i, counts[i]);
    free(back);
    free(counts);
    cudaFree(d_logits);
    cudaFree(d_rows);
    cudaFree(d_ids);
    cudaFree(d_saved);
    cudaFree(d_counts);
    cudaFree(d_out);
    free(dr);
    free(ids);
}

static int32_t cpu_sample(sampler *smp, const float *logits, int vocab, const trow *t,
                          sample_logprobs *lp)
{
    sample_request sr = {
        .params = &t->p,
        .logits = logits + (size_t)t->row * vocab,
        .tokens = t->tokens,
        .n_prompt = t->n_prompt,
        .n_tokens = t->n_tokens,
        .seed = t->seed,
        .stop_ids = t->stops,
        .n_stop_ids = t->n_stops,
    };
    return sampler_sample(smp, &sr, t->p.logprobs > 0 ? t->p.logprobs : 0, lp);
}

/* The logprobs of GPU and CPU for the same chosen token: within 1e-5, same
 * rank, same top list. Returns the number of differences (printed). */
static int compare_logprobs(int i, const cuda_sample_out *g, const sample_logprobs *c)
{
    int bad = 0;
    if (fabsf(g->logprob - c->logprob) > 1e-5f || g->rank != c->rank) {
        printf("row %d token %d: GPU logprob %.7g rank %d, CPU %.7g rank %d\n", i, g->token,
               g->logprob, g->rank, c->logprob, c->rank);
        bad++;
    }
    if (g->n_top != c->n_top) {
        printf("row %d: GPU top list of %d, CPU %d\n", i, g->n_top, c->n_top);
        return bad + 1;
    }
    for (int j = 0; j < c->n_top; j++)
        if (g->top_ids[j] != c->top_ids[j] ||
            fabsf(g->top_logprobs[j] - c->top_logprobs[j]) > 1e-5f) {
            printf("row %d top %d: GPU id %d logprob %.7g, CPU id %d logprob %.7g\n", i, j,
                   g->top_ids[j], g->top_logprobs[j], c->top_ids[j], c->top_logprobs[j]);
            bad++;
        }
    return bad;
}

/* Rows of three kinds: peaked (scale 6), moderate (2) and flat (0.3), the
 * last ones with ties at the maximum, +0/-0 and a run of equal values. */
static float *make_rows(int n_rows, int vocab)
{
    float *x = malloc((size_t)n_rows * vocab * sizeof(float));
    assert_non_null(x);
    for (int r = 0; r < n_rows; r++) {
        float scale = r % 3 == 0 ? 6.0f : r % 3 == 1 ? 2.0f : 0.3f;
        float *row = x + (size_t)r * vocab;
        for (int i = 0; i < vocab; i++)
            row[i] = scale * gauss();
        if (r % 3 == 2) {
            float mx = -INFINITY;
            for (int i = 0; i < vocab; i++)
                mx = row[i] > mx ? row[i] : mx;
            row[vocab / 2] = mx; /* a tie at the maximum: the lower id wins */
            row[7] = 0.0f;
            row[8] = -0.0f;
            /* 39 equal values: 39 p never meets a top_p boundary of
             * these tests (0.5, 0.9) exactly, where float sums of equal
             * terms may round either way (CPU and GPU differ there). */
            for (int i = 100; i < 139; i++)
                row[i] = 1.25f;
        }
    }
    return x;
}

enum { BIG_VOCAB = 151936, N_BIG = 48 };

static void test_greedy_and_logprobs(void **state)
{
    (void)state;
    const int V = BIG_VOCAB;
    float *x = make_rows(N_BIG, V);
    trow rows[N_BIG];
    for (int i = 0; i < N_BIG; i++) {
        rows[i] = base_row(i, 0.0f, 0);
        rows[i].p.logprobs = i % 4 == 0 ? -1 : i % 4 == 1 ? 0 : i % 4 == 2 ? 5 : 20;
    }
    cuda_sample_out out[N_BIG];
    gpu_sample(x, N_BIG, V, rows, N_BIG, out);
    sampler *smp = sampler_create(V);
    int bad = 0;
    for (int i = 0; i < N_BIG; i++) {
        sample_logprobs lp;
        int32_t t = cpu_sample(smp, x, V, &rows[i], &lp);
        if (out[i].token != t) {
            printf("greedy row %d: GPU %d, CPU %d\n", i, out[i].token, t);
            bad++;
            continue;
        }
        bad += compare_logprobs(i, &out[i], &lp);
    }
    sampler_destroy(smp);
    free(x);
    assert_int_equal(bad, 0);
}

/* top_k 1 and top_p 1e-6 at temperature 1 keep only the maximum (top_k
 * all of its ties, top_p the first). */
static void test_topk1_topp_tiny_are_greedy(void **state)
{
    (void)state;
    const int V = BIG_VOCAB;
    float *x = make_rows(N_BIG, V);
    trow rows[N_BIG];
    for (int i = 0; i < N_BIG; i++) {
        rows[i] = base_row(i, 1.0f, 1000 + (uint64_t)i);
        if (i % 2)
            rows[i].p.top_k = 1;
        else
            rows[i].p.top_p = 1e-6f;
    }
    cuda_sample_out out[N_BIG];
    gpu_sample(x, N_BIG, V, rows, N_BIG, out);
    int bad = 0;
    for (int i = 0; i < N_BIG; i++) {
        const float *row = x + (size_t)i * V;
        int best = 0;
        for (int j = 1; j < V; j++)
            if (row[j] > row[best]) best = j;
        /* top_k keeps every token of the k-th value: with ties at the
         * maximum, any of them (the rows i % 3 == 2 have such ties). */
        const bool ok = i % 2 ? row[out[i].token] == row[best] : out[i].token == best;
        if (!ok) {
            printf("row %d (%s): GPU %d (logit %g), greedy %d (logit %g)\n", i,
                   i % 2 ? "top_k 1" : "top_p 1e-6", out[i].token, row[out[i].token], best,
                   row[best]);
            bad++;
        }
    }
    free(x);
    assert_int_equal(bad, 0);
}

/* Random settings on the big rows: the GPU's token equals the CPU's (same
 * stream, same order), logprobs within 1e-5. A uniform draw within float
 * rounding of a boundary could differ: at most 1 of the rows may. */
static void test_sampled_equal_cpu(void **state)
{
    (void)state;
    const int V = BIG_VOCAB, R = N_BIG, ROUNDS = 4;
    float *x = make_rows(R, V);
    static int32_t toks[N_BIG][64];
    int mismatches = 0, bad = 0, total = 0;
    sampler *smp = sampler_create(V);
    for (int round = 0; round < ROUNDS; round++) {
        trow rows[R];
        for (int i = 0; i < R; i++) {
            static const float temps[] = {0.7f, 1.0f, 1.5f, 0.005f};
            static const int ks[] = {0, 40, 0, 1000};
            static const float ps[] = {1.0f, 0.9f, 0.5f, 1.0f};
            static const float mins[] = {0.0f, 0.0f, 0.05f, 0.0f};
            int c = (i + round) % 4;
            rows[i] = base_row(i, temps[c], (uint64_t)round * 7919 + (uint64_t)i);
            rows[i].p.top_k = ks[(i / 4 + round) % 4];
            rows[i].p.top_p = ps[(i / 2 + round) % 4];
            rows[i].p.min_p = mins[(i / 8 + round) % 4];
            rows[i].p.logprobs = (i + round) % 3 == 0 ? 3 : -1;
            if ((i + round) % 5 == 0) {
                for (int j = 0; j < 64; j++)
                    toks[i][j] = (int32_t)(rnd() * 200);
                rows[i].tokens = toks[i];
                rows[i].n_prompt = 40;
                rows[i].n_tokens = 64;
                rows[i].p.repetition_penalty = 1.3f;
                rows[i].p.frequency_penalty = 0.4f;
                rows[i].p.presence_penalty = 0.25f;
            }
        }
        cuda_sample_out out[R];
        gpu_sample(x, R, V, rows, R, out);
        for (int i = 0; i < R; i++) {
            sample_logprobs lp;
            int32_t t = cpu_sample(smp, x, V, &rows[i], &lp);
            total++;
            if (out[i].token != t) {
                printf("round %d row %d (T %g k %d p %g min_p %g): GPU %d, CPU %d\n", round, i,
                       rows[i].p.temperature, rows[i].p.top_k, rows[i].p.top_p, rows[i].p.min_p,
                       out[i].token, t);
                mismatches++;
                continue;
            }
            bad += compare_logprobs(i, &out[i], &lp);
        }
    }
    sampler_destroy(smp);
    free(x);
    printf("sampled tokens equal to the CPU's: %d of %d\n", total - mismatches, total);
    assert_int_equal(bad, 0);
    assert_true(mismatches <= 1);
}

/* Penalties and min_tokens' mask at temperature 0, each made to move the
 * choice from the best token (id 10) to the second (id 20). */
static void test_penalties_move_greedy(void **state)
{
    (void)state;
    enum { V = 1000, CASES = 6 };
    float *x = malloc((size_t)CASES * V * sizeof(float));
    assert_non_null(x);
    for (int r = 0; r < CASES; r++)
        for (int i = 0; i < V; i++)
            x[(size_t)r * V + i] = i == 10 ? 5.0f : i == 20 ? 4.0f : (float)(i % 7) * 0.1f;
    x[(size_t)5 * V + 10] = -1.0f; /* case 5: the best is negative and 20 is -1.5 */
    x[(size_t)5 * V + 20] = -1.5f;
    for (int i = 0; i < V; i++)
        if (i != 10 && i != 20) x[(size_t)5 * V + i] = -3.0f;
    static const int32_t out_10[] = {1, 2, 10, 10, 10}; /* prompt 2, output 10 10 10 */
    static const int32_t prompt_10[] = {10, 3, 4};      /* 10 in the prompt only */
    static const int32_t stop_10[] = {10};
    trow rows[CASES];
    for (int r = 0; r < CASES; r++)
        rows[r] = base_row(r, 0.0f, 0);
    rows[0].tokens = out_10, rows[0].n_prompt = 2, rows[0].n_tokens = 5;
    rows[0].p.repetition_penalty = 2.0f; /* 5 / 2 < 4 */
    rows[1].tokens = out_10, rows[1].n_prompt = 2, rows[1].n_tokens = 5;
    rows[1].p.frequency_penalty = 0.5f; /* 5 - 1.5 < 4 */
    rows[2].tokens = out_10, rows[2].n_prompt = 2, rows[2].n_tokens = 5;
    rows[2].p.presence_penalty = 1.5f; /* 5 - 1.5 < 4 */
    rows[3].tokens = prompt_10, rows[3].n_prompt = 3, rows[3].n_tokens = 3;
    rows[3].p.repetition_penalty = 1.5f; /* the prompt counts for repetition: 3.33 < 4 */
    rows[4].stops = stop_10, rows[4].n_stops = 1;
    rows[4].p.min_tokens = 1; /* no output yet: 10 is masked */
    rows[5].tokens = out_10, rows[5].n_prompt = 2, rows[5].n_tokens = 5;
    rows[5].p.repetition_penalty = 2.0f; /* negative: -1 * 2 < -1.5 */
    for (int r = 0; r < CASES; r++)
        rows[r].p.logprobs = 2;
    cuda_sample_out out[CASES];
    gpu_sample(x, CASES, V, rows, CASES, out);
    sampler *smp = sampler_create(V);
    int bad = 0;
    for (int r = 0; r < CASES; r++) {
        sample_logprobs lp;
        int32_t t = cpu_sample(smp, x, V, &rows[r], &lp);
        if (t != 20 || out[r].token != 20) {
            printf("penalty case %d: GPU %d, CPU %d, expected 20\n", r, out[r].token, t);
            bad++;
            continue;
        }
        bad += compare_logprobs(r, &out[r], &lp);
    }
    /* A frequency penalty on a prompt-only token changes nothing. */
    rows[3].p.repetition_penalty = 1.0f;
    rows[3].p.frequency_penalty = 5.0f;
    gpu_sample(x, CASES, V, &rows[3], 1, out);
    if (out[0].token != 10) {
        printf("frequency penalty on a prompt-only token moved the choice to %d\n", out[0].token);
        bad++;
    }
    sampler_destroy(smp);
    free(x);
    assert_int_equal(bad, 0);
}

/* Chi-square of counts against probabilities over bins; the last bin is
 * "every other token". */
static double chi_square(const int *obs, const double *prob, int bins, int n)
{
    double chi = 0;
    for (int b = 0; b < bins; b++) {
        double e = prob[b] * n;
        if (e > 0) chi += (obs[b] - e) * (obs[b] - e) / e;
    }
    return chi;
}

/* 8192 draws (seeds 0..8191) from copies of one row at temperature 1: the
 * frequencies of the 8 head tokens (and of the tail) match the softmax
 * kept by each filter, renormalized; tokens a filter drops never come.
 * Tolerance: chi-square below 40 with at most 8 degrees of freedom (a
 * correct sampler exceeds it with probability < 2e-6). */
static void test_distribution(void **state)
{
    (void)state;
    enum { V = 8192, COPIES = 512, DRAWS = 8192, HEAD = 8 };
    float *x = malloc((size_t)COPIES * V * sizeof(float));
    assert_non_null(x);
    for (int i = 0; i < V; i++)
        x[i] = i < HEAD ? 4.0f - 0.5f * (float)i : -6.0f + 0.01f * (float)(i % 13);
    for (int c = 1; c < COPIES; c++)
        memcpy(x + (size_t)c * V, x, V * sizeof(float));
    double e[V], sum = 0;
    for (int i = 0; i < V; i++)
        sum += e[i] = exp((double)x[i]);
    struct {
        const char *name;
        int top_k;
        float top_p, min_p;
        int kept; /* head tokens kept; 0: all tokens */
    } cfg[] = {
        {"plain", 0, 1.0f, 0.0f, 0}, /* tail bin too */
        {"top_k 5", 5, 1.0f, 0.0f, 5},
        {"top_p 0.6", 0, 0.6f, 0.0f, 3}, /* cumulative 0.35, 0.56, 0.69 */
        {"min_p 0.1", 0, 1.0f, 0.1f, 5}, /* x >= 4 + ln 0.1 = 1.70 */
    };
    int bad = 0;
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        int obs[HEAD + 1] = {0};
        for (int base = 0; base < DRAWS; base += COPIES) {
            trow rows[COPIES];
            for (int i = 0; i < COPIES; i++) {
                rows[i] = base_row(i, 1.0f, (uint64_t)(base + i));
                rows[i].p.top_k = cfg[c].top_k;
                rows[i].p.top_p = cfg[c].top_p;
                rows[i].p.min_p = cfg[c].min_p;
            }
            cuda_sample_out out[COPIES];
            gpu_sample(x, COPIES, V, rows, COPIES, out);
            for (int i = 0; i < COPIES; i++)
                obs[out[i].token < HEAD ? out[i].token : HEAD]++;
        }
        double prob[HEAD + 1] = {0}, kept_sum = 0;
        int kept = cfg[c].kept ? cfg[c].kept : HEAD;
        for (int i = 0; i < kept; i++)
            kept_sum += e[i];
        if (!cfg[c].kept) kept_sum = sum;
        for (int i = 0; i < kept; i++)
            prob[i] = e[i] / kept_sum;
        if (!cfg[c].kept) {
            double head = 0;
            for (int i = 0; i < HEAD; i++)
                head += prob[i];
            prob[HEAD] = 1.0 - head;
        }
        int dropped = 0;
        for (int b = kept; b <= HEAD; b++)
            if (prob[b] == 0) dropped += obs[b];
        double chi = chi_square(obs, prob, HEAD + 1, DRAWS);
        printf("%-10s chi-square %.1f; observed/expected:", cfg[c].name, chi);
        for (int b = 0; b <= HEAD; b++)
            printf(" %d/%.0f", obs[b], prob[b] * DRAWS);
        printf("\n");
        if (chi >= 40.0 || dropped) {
            printf("%s: distribution differs (chi-square %.1f, %d draws of dropped tokens)\n",
                   cfg[c].name, chi, dropped);
            bad++;
        }
    }
    free(x);
    assert_int_equal(bad, 0);
}

/* The same seeds give the same tokens run to run, and a row's token does
 * not depend on which rows share its batch or where it sits. */
static void test_seeds_reproducible(void **state)
{
    (void)state;
    enum { V = 32000, R = 12 };
    float *x = make_rows(R, V);
    trow rows[R];
    for (int i = 0; i < R; i++) {
        rows[i] = base_row(i, 1.0f, 42 + (uint64_t)i);
        rows[i].p.top_p = i % 2 ? 0.95f : 1.0f;
        rows[i].p.top_k = i % 3 ? 0 : 50;
    }
    cuda_sample_out a[R], b[R], c[R];
    gpu_sample(x, R, V, rows, R, a);
    gpu_sample(x, R, V, rows, R, b);
    trow sub[R];
    int n = 0;
    for (int i = R - 1; i >= 0; i -= 3)
        sub[n++] = rows[i]; /* every third row, in reverse order */
    gpu_sample(x, R, V, sub, n, c);
    int bad = 0;
    for (int i = 0; i < R; i++)
        if (a[i].token != b[i].token) {
            printf("row %d: run 1 gave %d, run 2 gave %d\n", i, a[i].token, b[i].token);
            bad++;
        }
    for (int j = 0; j < n; j++)
        if (c[j].token != a[sub[j].row].token) {
            printf("row %d: %d in the full batch, %d in another composition\n", sub[j].row,
                   a[sub[j].row].token, c[j].token);
            bad++;
        }
    free(x);
    assert_int_equal(bad, 0);
}

/* argv[1]: run only the tests whose name matches (cmocka's filter), as
 * tests/gpu/run_sample.sh does under compute-sanitizer. */
int main(int argc, char **argv)
{
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("test_gpu_sample: no CUDA device visible; skipped\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_and_logprobs),
        cmocka_unit_test(test_topk1_topp_tiny_are_greedy),
        cmocka_unit_test(test_sampled_equal_cpu),
        cmocka_unit_test(test_penalties_move_greedy),
        cmocka_unit_test(test_distribution),
        cmocka_unit_test(test_seeds_reproducible),
    };
    if (argc > 1) cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}

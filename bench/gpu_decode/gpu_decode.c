/* cvllm-bench-gpu-decode: the CUDA backend on one GPU against the card's
 * measured ceilings, in the same run (docs/PERFORMANCE.md, G2 and batched
 * decode).
 *
 *   cvllm-bench-gpu-decode --model DIR [--prompt 512] [--gen 256]
 *                          [--batches 16,64] [--batch-gen 64] [--json FILE]
 *                          [--sample B]
 *
 * 1. Ceilings: a 2 GiB device-to-device copy (bytes read + written, 20
 *    copies after 2 warm-ups) and a cuBLAS 8192^3 bf16 GEMM on random data
 *    (fp32 accumulation, 10 after 3 warm-ups), both timed with CUDA events.
 * 2. Batch 1 (G2): a --prompt token prompt of seeded random ids as one
 *    prefill step (TTFT: host wall clock of the step; best of 3 on fresh
 *    KV), then --gen greedy decode steps (TPOT: mean and median step time).
 *    Every step takes the greedy choice made on the GPU, as the engine
 *    asks for it. Floor = weight bytes / measured copy bandwidth, weight
 *    bytes as PERFORMANCE.md counts them (every tensor of the model). Then
 *    16 decode steps again with per-phase CUDA events (where the time goes).
 * 3. Batched: B sequences of --prompt tokens prefilled 8 per step (prefill
 *    tok/s), then --batch-gen steps of B decode tokens (aggregate tok/s).
 *    With profiles, the largest batch also times mixed steps: B - 2
 *    decodes and 2 whole prompts (a saturated server's step, G1).
 * 4. --sample B: B sequences decode --batch-gen steps sampling every row
 *    (temperature 0.8, top_p 0.95, a seed per sequence) on the GPU
 *    (kernels/sample.cu: the token and its logprob cross to the host), then
 *    as before it (each row downloaded and sampled by the CPU sampler on
 *    all OpenMP threads, as the engine's draw_all); bf16 activations, graphs.
 * KV cache: BF16 (vLLM's "auto" for a bf16 model), 16-token blocks. */
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <jansson.h>

#include "backend/cuda/cuda_backend.h"
#include "base/clock.h"
#include "runner/sampler.h"

/* MIXED_NEW_SEQS: prompts that join the largest batch in its mixed-step
 * profile (G1 with 128-token outputs finishes ~2 sequences of 256 a step). */
enum { BLOCK_SIZE = 16, MAX_BATCH = 256, PREFILL_SEQS_PER_STEP = 8, MIXED_NEW_SEQS = 2 };

/* How step() reduces the logits rows. */
typedef enum { ROWS_GREEDY, ROWS_SAMPLE_GPU, ROWS_SAMPLE_HOST } rows_mode;

#define CHECK(call)                                                                                \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng_next(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Device-to-device copy bandwidth in GB/s, counting bytes read + written. */
static double copy_gbps(void)
{
    const size_t bytes = (size_t)2 << 30;
    void *a, *b;
    CHECK(cudaMalloc(&a, bytes));
    CHECK(cudaMalloc(&b, bytes));
    CHECK(cudaMemset(a, 0x5a, bytes));
    cudaEvent_t e0, e1;
    CHECK(cudaEventCreate(&e0));
    CHECK(cudaEventCreate(&e1));
    for (int i = 0; i < 2; i++)
        CHECK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    CHECK(cudaEventRecord(e0, 0));
    for (int i = 0; i < 20; i++)
        CHECK(cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, bytes, cudaMemcpyDeviceToDevice, 0));
    CHECK(cudaEventRecord(e1, 0));
    CHECK(cudaEventSynchronize(e1));
    float ms;
    CHECK(cudaEventElapsedTime(&ms, e0, e1));
    cudaFree(a);
    cudaFree(b);
    return 2.0 * bytes * 20 / (ms * 1e-3) / 1e9;
}

/* cuBLAS bf16 GEMM TFLOP/s at n x n x n on random data. */
static double gemm_tflops(int n)
{
    const size_t elems = (size_t)n * n;
    uint16_t *host = malloc(elems * sizeof *host);
    if (!host) {
        fprintf(stderr, "gemm: out of memory\n");
        exit(1);
    }
    void *a, *b, *c;
    CHECK(cudaMalloc(&a, elems * 2));
    CHECK(cudaMalloc(&b, elems * 2));
    CHECK(cudaMalloc(&c, elems * 2));
    for (int m = 0; m < 2; m++) {
        for (size_t i = 0; i < elems; i++) /* uniform in [-1, 1) */
            host[i] = cv_f32_to_bf16((float)(rng_next() >> 40) * 0x1p-23f - 1.0f);
        CHECK(cudaMemcpy(m ? b : a, host, elems * 2, cudaMemcpyHostToDevice));
    }
    free(host);
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "cublasCreate failed\n");
        exit(1);
    }
    const float alpha = 1.0f, beta = 0.0f;
    cudaEvent_t e0, e1;
    CHECK(cudaEventCreate(&e0));
    CHECK(cudaEventCreate(&e1));
    for (int i = 0; i < 13; i++) {
        if (i == 3) CHECK(cudaEventRecord(e0, 0));
        if (cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a, CUDA_R_16BF, n, b,
                         CUDA_R_16BF, n, &beta, c, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
            fprintf(stderr, "cublasGemmEx failed\n");
            exit(1);
        }
    }
    CHECK(cudaEventRecord(e1, 0));
    CHECK(cudaEventSynchronize(e1));
    float ms;
    CHECK(cudaEventElapsedTime(&ms, e0, e1));
    cublasDestroy(h);
    cudaFree(a), cudaFree(b), cudaFree(c);
    return 2.0 * n * (double)n * n * 10 / (ms * 1e-3) / 1e12;
}

/* Sequences driven through the backend: each owns a contiguous run of
 * blocks; its prompt is seeded random ids. */
typedef struct bench {
    cv_cuda_backend *bk;
    int vocab, max_blocks;
    int32_t *prompt; /* (MAX_BATCH, prompt_len) */
    int prompt_len;
    int32_t next[MAX_BATCH]; /* next token of each sequence */
    int len[MAX_BATCH];      /* tokens in the cache */
    float *logits;           /* (max tokens, vocab) */
    /* Every sequence decodes greedily, reduced on the GPU as the engine
     * asks for it: 12 bytes per row cross to the host, not the row. */
    uint8_t want[MAX_BATCH];
    int32_t greedy_token[MAX_BATCH], greedy_rank[MAX_BATCH];
    float greedy_logprob[MAX_BATCH];
    /* --sample: rows sampled on the GPU or downloaded and sampled here. */
    rows_mode mode;
    cv_sample_row sample[MAX_BATCH];
    int32_t top_ids[MAX_BATCH * CV_SAMPLE_MAX_TOP];
    float top_lps[MAX_BATCH * CV_SAMPLE_MAX_TOP];
    cv_sampling_params params; /* the host sampler's */
    sampler **samplers;        /* one per OpenMP thread */
    /* A batched decode step's floor: (weight bytes + the KV bytes its
     * attention reads) / copy bandwidth. */
    double weight_bytes, kv_bytes_per_token, copy_bytes_per_s;
    /* step arrays */
    int32_t *ids, *pos, *starts, *lens, *tables, *idx;
    int64_t *slots;
} bench;

/* One step: sequence seqs[i] feeds chunks[i] tokens (prompt tokens while
 * len < prompt_len, else its next token); logits of each sequence's last
 * token. Returns the step's wall time in seconds. */
static double step_seqs(bench *b, const int *seqs, const int *chunks, int ns)
{
    int n = 0;
    b->starts[0] = 0;
    for (int i = 0; i < ns; i++) {
        const int s = seqs[i], chunk = chunks[i];
        for (int k = 0; k < chunk; k++, n++) {
            const int p = b->len[s] + k;
            b->ids[n] = p < b->prompt_len ? b->prompt[(size_t)s * b->prompt_len + p] : b->next[s];
            b->pos[n] = p;
            b->slots[n] = (int64_t)s * b->max_blocks * BLOCK_SIZE + p;
        }
        b->len[s] += chunk;
        b->lens[i] = b->len[s];
        for (int j = 0; j < b->max_blocks; j++)
            b->tables[i * b->max_blocks + j] = s * b->max_blocks + j;
        b->starts[i + 1] = n;
        b->idx[i] = n - 1;
    }
    const cv_batch batch = {
        .n_tokens = n,
        .token_ids = b->ids,
        .positions = b->pos,
        .slot_mapping = b->slots,
        .n_seqs = ns,
        .query_start = b->starts,
        .seq_lens = b->lens,
        .block_tables = b->tables,
        .max_blocks_per_seq = b->max_blocks,
        .n_logits = ns,
        .logits_indices = b->idx,
    };
    for (int i = 0; i < ns; i++) {
        b->want[i] = b->mode == ROWS_GREEDY       ? CV_ROW_GREEDY
                     : b->mode == ROWS_SAMPLE_GPU ? CV_ROW_SAMPLE
                                                  : CV_ROW_LOGITS;
        b->sample[i] = (cv_sample_row){.temperature = b->params.temperature,
                                       .top_p = b->params.top_p,
                                       .repetition_penalty = 1.0f,
                                       .seed = (uint64_t)seqs[i],
                                       .draw = (uint64_t)b->len[seqs[i]]};
    }
    cv_error err = {.msg = ""};
    const cv_greedy_rows greedy = {.want = b->want,
                                   .token = b->greedy_token,
                                   .logprob = b->greedy_logprob,
                                   .rank = b->greedy_rank,
                                   .sample = b->sample,
                                   .top_ids = b->top_ids,
                                   .top_logprobs = b->top_lps};
    const uint64_t t0 = cv_now_ns();
    if (cv_cuda_backend_forward_greedy(b->bk, &batch, b->logits, &greedy, &err) < 0) {
        fprintf(stderr, "forward: %s\n", err.msg);
        exit(1);
    }
    if (b->mode == ROWS_SAMPLE_HOST) {
#pragma omp parallel for schedule(dynamic, 2)
        for (int i = 0; i < ns; i++) {
            const sample_request r = {.params = &b->params,
                                      .logits = b->logits + (size_t)i * b->vocab,
                                      .seed = b->sample[i].seed};
            sample_logprobs lp;
            b->greedy_token[i] = sampler_sample(b->samplers[omp_get_thread_num()], &r, 0, &lp);
        }
    }
    const double s = cv_ns_to_s(cv_now_ns() - t0);
    for (int i = 0; i < ns; i++)
        b->next[seqs[i]] = b->greedy_token[i];
    return s;
}

/* Sequences [s0, s0 + ns) feed chunk tokens each. */
static double step(bench *b, int s0, int ns, int chunk)
{
    int seqs[MAX_BATCH], chunks[MAX_BATCH];
    for (int i = 0; i < ns; i++)
        seqs[i] = s0 + i, chunks[i] = chunk;
    return step_seqs(b, seqs, chunks, ns);
}

/* A mixed step as a saturated server runs it (G1's steady state): the
 * first B - n_new sequences decode one token and the last n_new start over
 * with their whole prompt, decodes first as vLLM's scheduler orders them. */
static double step_mixed(bench *b, int B, int n_new)
{
    int seqs[MAX_BATCH], chunks[MAX_BATCH];
    for (int i = 0; i < B; i++) {
        seqs[i] = i;
        chunks[i] = i < B - n_new ? 1 : b->prompt_len;
        if (i >= B - n_new) b->len[i] = 0;
    }
    return step_seqs(b, seqs, chunks, B);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int64_t model_bytes(const cv_model *m)
{
    const cv_model_weights *w = cv_model_get_weights(m);
    const cv_model_config *c = cv_model_get_config(m);
    int64_t n = cv_tensor_numel(&w->embed) * cv_dtype_size(w->embed.dtype) +
                cv_tensor_numel(&w->final_norm) * cv_dtype_size(w->final_norm.dtype);
    if (w->lm_head.data != w->embed.data)
        n += cv_tensor_numel(&w->lm_head) * cv_dtype_size(w->lm_head.dtype);
    for (int l = 0; l < c->n_layers; l++) {
        const cv_layer_weights *L = &w->layers[l];
        const cv_tensor *t[] = {&L->attn_norm, &L->wq,     &L->wk,     &L->wv,     &L->bq,
                                &L->bk,        &L->bv,     &L->q_norm, &L->k_norm, &L->wo,
                                &L->ffn_norm,  &L->w_gate, &L->w_up,   &L->w_down};
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
            if (t[i]->data) n += cv_tensor_numel(t[i]) * cv_dtype_size(t[i]->dtype);
    }
    return n;
}

/* Prints the per-phase table of the last profiled steps and stores it in
 * run[key] (ms per step). */
static void take_profile(cv_cuda_backend *bk, int steps, json_t *run, const char *key)
{
    double ms[CV_CUDA_N_PHASES], total = 0.0;
    const char *names[CV_CUDA_N_PHASES];
    const int n = cv_cuda_backend_profile_read(bk, ms, names);
    cv_cuda_backend_profile(bk, 0);
    for (int i = 0; i < n; i++)
        total += ms[i];
    printf("\n| phase (%s, eager) | ms/step | share |\n|---|---|---|\n", key);
    json_t *obj = json_object();
    for (int i = 0; i < n; i++) {
        printf("| %s | %.3f | %.1f%% |\n", names[i], ms[i] / steps, 100.0 * ms[i] / total);
        json_object_set_new(obj, names[i], json_real(ms[i] / steps));
    }
    printf("| total (events) | %.3f | |\n", total / steps);
    json_object_set_new(run, key, obj);
}

typedef struct run_config {
    const char *label;
    cv_cuda_act_mode act;
    int graphs;
    int batched; /* also run the batched measurements */
    int profile; /* also take per-phase profiles */
} run_config;

/* G2 at batch 1, then (cfg->batched) the batched prefill and decode. */
static json_t *run_one(bench *b, const run_config *cfg, int gen, int batch_gen, const int *batches,
                       int n_batches, double floor_ms)
{
    cv_error err = {.msg = ""};
    if (cv_cuda_backend_set_act_mode(b->bk, cfg->act, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    cv_cuda_backend_set_graphs(b->bk, cfg->graphs);
    json_t *run =
        json_pack("{s:s, s:s, s:b}", "label", cfg->label, "act",
                  cfg->act == CV_CUDA_ACT_ROUND ? "round" : "split", "graphs", cfg->graphs);
    const int prompt_len = b->prompt_len;
    double ttft = 1e30;
    for (int rep = 0; rep < 4; rep++) { /* the first is a warm-up */
        b->len[0] = 0;
        const double s = step(b, 0, 1, prompt_len);
        if (rep > 0) ttft = s < ttft ? s : ttft;
    }
    double *tpot = malloc((size_t)gen * sizeof(double));
    if (!tpot) exit(1);
    double sum = 0.0;
    for (int i = 0; i < gen; i++)
        sum += tpot[i] = step(b, 0, 1, 1);
    const double tpot_mean = sum / gen * 1e3;
    qsort(tpot, (size_t)gen, sizeof *tpot, cmp_double);
    const double tpot_med = tpot[gen / 2] * 1e3;
    free(tpot);
    printf("\n### %s\n\n| batch 1 (G2) | value |\n|---|---|\n", cfg->label);
    printf("| TTFT, %d-token prompt | %.2f ms (%.0f prefill tok/s) |\n", prompt_len, ttft * 1e3,
           prompt_len / ttft);
    printf("| TPOT mean / median over %d steps | %.3f / %.3f ms (%.1f tok/s) |\n", gen, tpot_mean,
           tpot_med, 1e3 / tpot_mean);
    printf("| TPOT / floor | %.2fx |\n", tpot_mean / floor_ms);
    json_object_set_new(run, "ttft_ms", json_real(ttft * 1e3));
    json_object_set_new(run, "tpot_mean_ms", json_real(tpot_mean));
    json_object_set_new(run, "tpot_median_ms", json_real(tpot_med));
    if (cfg->profile) {
        cv_cuda_backend_profile(b->bk, 1);
        for (int i = 0; i < 16; i++)
            step(b, 0, 1, 1);
        take_profile(b->bk, 16, run, "profile_batch1_decode");
        cv_cuda_backend_profile(b->bk, 1);
        b->len[0] = 0;
        step(b, 0, 1, prompt_len);
        take_profile(b->bk, 1, run, "profile_prefill");
    }
    if (!cfg->batched) return run;
    json_t *arr = json_array();
    printf(
        "\n| batch | prefill tok/s | decode step ms | decode tok/s | step / floor (weights + KV) "
        "|\n|---|---|---|---|---|\n");
    for (int bi = 0; bi < n_batches; bi++) {
        const int B = batches[bi];
        double pre_s = 0.0;
        for (int s0 = 0; s0 < B; s0 += PREFILL_SEQS_PER_STEP) {
            const int ns = B - s0 < PREFILL_SEQS_PER_STEP ? B - s0 : PREFILL_SEQS_PER_STEP;
            for (int i = 0; i < ns; i++)
                b->len[s0 + i] = 0;
            pre_s += step(b, s0, ns, prompt_len);
        }
        step(b, 0, B, 1); /* warm-up of this batch shape */
        double dec_s = 0.0;
        for (int i = 0; i < batch_gen; i++)
            dec_s += step(b, 0, B, 1);
        const double step_ms = dec_s / batch_gen * 1e3;
        /* Mean context over the measured steps: the prompt, the warm-up
         * token, half the generated ones. */
        const double ctx = prompt_len + 1 + batch_gen / 2.0;
        const double floor_b_ms =
            (b->weight_bytes + B * ctx * b->kv_bytes_per_token) / b->copy_bytes_per_s * 1e3;
        printf("| %d | %.0f | %.3f | %.0f | %.2fx (%.3f ms) |\n", B, (double)B * prompt_len / pre_s,
               step_ms, B * 1e3 / step_ms, step_ms / floor_b_ms, floor_b_ms);
        json_array_append_new(arr, json_pack("{s:i, s:f, s:f, s:f}", "n", B, "prefill_tok_s",
                                             (double)B * prompt_len / pre_s, "step_ms", step_ms,
                                             "decode_tok_s", B * 1e3 / step_ms));
        if (cfg->profile && bi == n_batches - 1) {
            cv_cuda_backend_profile(b->bk, 1);
            for (int i = 0; i < 8; i++)
                step(b, 0, B, 1);
            char key[64];
            snprintf(key, sizeof key, "profile_batch%d_decode", B);
            take_profile(b->bk, 8, run, key);
            if (B > MIXED_NEW_SEQS) {
                double mixed_s = 0.0;
                for (int i = 0; i < 4; i++) {
                    if (i == 1) cv_cuda_backend_profile(b->bk, 1);
                    const double s = step_mixed(b, B, MIXED_NEW_SEQS);
                    if (i > 0) mixed_s += s;
                }
                snprintf(key, sizeof key, "profile_batch%d_mixed", B);
                printf("\nmixed step: %d decodes + %d prompts of %d: %.3f ms\n", B - MIXED_NEW_SEQS,
                       MIXED_NEW_SEQS, prompt_len, mixed_s / 3 * 1e3);
                take_profile(b->bk, 3, run, key);
            }
        }
    }
    json_object_set_new(run, "batches", arr);
    return run;
}

/* --sample: B sequences' decode steps with every row sampled on the GPU,
 * then downloaded and sampled on the host (fresh prefills before each). */
static void run_sample(bench *b, int B, int batch_gen, json_t *root)
{
    cv_error err = {.msg = ""};
    if (cv_cuda_backend_set_act_mode(b->bk, CV_CUDA_ACT_ROUND, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    cv_cuda_backend_set_graphs(b->bk, 1);
    static const rows_mode modes[] = {ROWS_SAMPLE_GPU, ROWS_SAMPLE_HOST};
    static const char *const names[] = {"on the GPU", "downloaded, CPU sampler"};
    double ms[2];
    for (int m = 0; m < 2; m++) {
        b->mode = ROWS_GREEDY;
        for (int s0 = 0; s0 < B; s0 += PREFILL_SEQS_PER_STEP) {
            const int ns = B - s0 < PREFILL_SEQS_PER_STEP ? B - s0 : PREFILL_SEQS_PER_STEP;
            for (int i = 0; i < ns; i++)
                b->len[s0 + i] = 0;
            step(b, s0, ns, b->prompt_len);
        }
        b->mode = modes[m];
        step(b, 0, B, 1); /* warm-up */
        double sum = 0.0;
        for (int i = 0; i < batch_gen; i++)
            sum += step(b, 0, B, 1);
        ms[m] = sum / batch_gen * 1e3;
    }
    b->mode = ROWS_GREEDY;
    printf("\n| %d sequences, temperature %.1f top_p %.2f (bf16 activations, graphs) | decode step "
           "ms |\n|---|---|\n",
           B, b->params.temperature, b->params.top_p);
    for (int m = 0; m < 2; m++)
        printf("| sampled %s%s | %.3f |\n", names[m], m ? "" : " (kernels/sample.cu)", ms[m]);
    printf("| GPU / CPU sampling | %.2fx (%d host threads) |\n", ms[0] / ms[1],
           omp_get_max_threads());
    json_object_set_new(root, "sample",
                        json_pack("{s:i, s:f, s:f, s:i}", "n", B, "gpu_step_ms", ms[0],
                                  "host_step_ms", ms[1], "host_threads", omp_get_max_threads()));
}

int main(int argc, char **argv)
{
    const char *model_dir = NULL, *json_path = NULL, *batches_arg = "16,64";
    int prompt_len = 512, gen = 256, batch_gen = 64, sample_batch = 0;
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},     {"prompt", required_argument, 0, 'p'},
        {"gen", required_argument, 0, 'g'},       {"batches", required_argument, 0, 'b'},
        {"batch-gen", required_argument, 0, 'G'}, {"json", required_argument, 0, 'j'},
        {"sample", required_argument, 0, 's'},    {0, 0, 0, 0}};
    for (int o; (o = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        switch (o) {
        case 'm':
            model_dir = optarg;
            break;
        case 'p':
            prompt_len = atoi(optarg);
            break;
        case 'g':
            gen = atoi(optarg);
            break;
        case 'b':
            batches_arg = optarg;
            break;
        case 'G':
            batch_gen = atoi(optarg);
            break;
        case 'j':
            json_path = optarg;
            break;
        case 's':
            sample_batch = atoi(optarg);
            break;
        default:
            return 2;
        }
    }
    if (!model_dir || prompt_len < 1 || gen < 1 || batch_gen < 1 || sample_batch < 0 ||
        sample_batch > MAX_BATCH) {
        fprintf(stderr,
                "usage: %s --model DIR [--prompt N] [--gen N] [--batches 16,64] "
                "[--batch-gen N] [--json FILE] [--sample B (1..%d)]\n",
                argv[0], MAX_BATCH);
        return 2;
    }
    int batches[8], n_batches = 0;
    for (const char *p = batches_arg; *p && n_batches < 8;) {
        batches[n_batches] = atoi(p);
        if (batches[n_batches] < 1 || batches[n_batches] > MAX_BATCH) {
            fprintf(stderr, "--batches: each size must be 1..%d\n", MAX_BATCH);
            return 2;
        }
        n_batches++;
        p = strchr(p, ',');
        if (!p) break;
        p++;
    }

    struct cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    const double copy = copy_gbps(), tflops = gemm_tflops(8192);
    printf("device: %s, %d SMs, %.1f GiB\n", prop.name, prop.multiProcessorCount,
           prop.totalGlobalMem / 1073741824.0);
    printf("device-to-device copy: %.0f GB/s (read + write); bf16 GEMM 8192^3: %.0f TFLOP/s\n",
           copy, tflops);

    cv_error err = {.msg = ""};
    uint64_t t0 = cv_now_ns();
    cv_model *model = cv_model_load(model_dir, &err);
    if (!model) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const double load_s = cv_ns_to_s(cv_now_ns() - t0);
    t0 = cv_now_ns();
    cv_cuda_backend *bk = cv_cuda_backend_create(model, 0, &err);
    if (!bk) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const double upload_s = cv_ns_to_s(cv_now_ns() - t0);
    const int64_t wbytes = model_bytes(model);
    const double floor_ms = wbytes / (copy * 1e9) * 1e3;
    printf("model: %s, %.2f GB of weights; load %.1f s, upload %.1f s; decode floor %.3f ms\n",
           model_dir, wbytes / 1e9, load_s, upload_s, floor_ms);

    int max_batch = sample_batch > 1 ? sample_batch : 1;
    for (int i = 0; i < n_batches; i++)
        max_batch = batches[i] > max_batch ? batches[i] : max_batch;
    /* Batch 1 runs gen + 16 profiled steps, the batches batch_gen + 9. */
    const int extra = gen + 16 > batch_gen + 9 ? gen + 16 : batch_gen + 9;
    const int max_ctx = prompt_len + extra + 1;
    bench b = {.bk = bk,
               .vocab = cv_model_get_config(model)->vocab_size,
               .max_blocks = (max_ctx + BLOCK_SIZE - 1) / BLOCK_SIZE,
               .prompt_len = prompt_len};
    const int max_tokens = PREFILL_SEQS_PER_STEP * prompt_len > max_batch
                               ? PREFILL_SEQS_PER_STEP * prompt_len
                               : max_batch;
    b.prompt = malloc((size_t)max_batch * prompt_len * sizeof *b.prompt);
    b.logits = malloc((size_t)max_batch * b.vocab * sizeof *b.logits);
    b.ids = malloc((size_t)max_tokens * sizeof(int32_t));
    b.pos = malloc((size_t)max_tokens * sizeof(int32_t));
    b.slots = malloc((size_t)max_tokens * sizeof(int64_t));
    b.starts = malloc((MAX_BATCH + 1) * sizeof(int32_t));
    b.lens = malloc(MAX_BATCH * sizeof(int32_t));
    b.idx = malloc(MAX_BATCH * sizeof(int32_t));
    b.tables = malloc((size_t)MAX_BATCH * b.max_blocks * sizeof(int32_t));
    cv_sampling_params_default(&b.params);
    b.params.temperature = 0.8f;
    b.params.top_p = 0.95f;
    b.samplers = calloc((size_t)omp_get_max_threads(), sizeof *b.samplers);
    for (int i = 0; b.samplers && i < omp_get_max_threads(); i++)
        if (!(b.samplers[i] = sampler_create(b.vocab))) {
            fprintf(stderr, "out of memory\n");
            return 1;
        }
    const cv_model_config *mc = cv_model_get_config(model);
    b.weight_bytes = (double)wbytes;
    b.kv_bytes_per_token = 2.0 * mc->n_layers * mc->n_kv_heads * mc->head_dim * 2; /* BF16 K, V */
    b.copy_bytes_per_s = copy * 1e9;
    if (!b.samplers || !b.prompt || !b.logits || !b.ids || !b.pos || !b.slots || !b.starts ||
        !b.lens || !b.idx || !b.tables) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < (size_t)max_batch * prompt_len; i++)
        b.prompt[i] = (int32_t)(rng_next() % (uint64_t)b.vocab);
    if (cv_cuda_backend_set_kv_dtype(bk, CV_DTYPE_BF16, &err) ||
        cv_cuda_backend_kv_alloc(bk, max_batch * b.max_blocks, BLOCK_SIZE, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }

    json_t *root = json_pack("{s:s, s:f, s:f, s:I, s:f, s:f, s:i, s:i, s:i}", "device", prop.name,
                             "copy_gbps", copy, "gemm_tflops", tflops, "weight_bytes",
                             (json_int_t)wbytes, "upload_s", upload_s, "floor_ms", floor_ms,
                             "prompt", prompt_len, "gen", gen, "batch_gen", batch_gen);
    static const run_config configs[] = {
        {"bf16 activations (CV_CUDA_ACT_ROUND), CUDA graphs", CV_CUDA_ACT_ROUND, 1, 1, 1},
        {"split fp32 activations (CV_CUDA_ACT_SPLIT, default), CUDA graphs", CV_CUDA_ACT_SPLIT, 1,
         1, 0},
        {"bf16 activations, no graphs", CV_CUDA_ACT_ROUND, 0, 0, 0},
    };
    json_t *runs = json_array();
    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++)
        json_array_append_new(
            runs, run_one(&b, &configs[i], gen, batch_gen, batches, n_batches, floor_ms));
    json_object_set_new(root, "runs", runs);
    if (sample_batch > 0) run_sample(&b, sample_batch, batch_gen, root);
    if (json_path && json_dump_file(root, json_path, JSON_INDENT(1)) != 0) {
        fprintf(stderr, "cannot write %s\n", json_path);
        return 1;
    }
    json_decref(root);
    cv_cuda_backend_destroy(bk);
    cv_model_free(model);
    return 0;
}

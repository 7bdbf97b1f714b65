/* cvllm-bench-lora-decode: what LoRA adapters cost a decode step on the
 * CPU or the GPU (issue 12's bench): 64 sequences decoding together, with
 * 0, 1, 4 and 16 distinct adapters spread over them round-robin, every
 * adapter of rank --rank on all seven projections (random weights, built
 * in memory: the adapter files' format is not what is timed).
 *
 *   cvllm-bench-lora-decode [--device cpu|cuda] [--threads N] [--seqs N]
 *                           [--rank R] [--steps N] [--reps N] [--prompt N]
 *                           MODEL_DIR
 *
 * The backend is driven through its function table (backend.h) as the
 * engine drives it, greedy rows reduced where the backend can (the GPU
 * then downloads no logits). On the GPU every step runs as the engine's
 * would (CUDA graphs; GEMV epilogues without adapters); one with adapters
 * adds the gather kernels around each product (backend/cuda/lora).
 *
 * Each sequence first gets a --prompt token context (one prefill, no
 * adapter); then each configuration runs --steps decode steps (one token
 * per sequence per step, positions after the prompt), best mean step time
 * of --reps runs (the machine may be shared). Prints a markdown table:
 * adapters, step ms, tok/s, step time / no-adapter step time; on the GPU
 * the per-phase times of none and 16 adapters go to stderr. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "base/clock.h"
#include "lora/lora.h"
#ifdef CVLLM_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

enum { BLOCK = 16, MAX_ADAPTERS = 16 };

typedef struct opts {
    int n_threads, n_seqs, rank, steps, reps, prompt;
    const char *model, *device;
} opts;

static int parse(int argc, char **argv, opts *o)
{
    *o = (opts){.n_threads = 0,
                .n_seqs = 64,
                .rank = 16,
                .steps = 16,
                .reps = 3,
                .prompt = 64,
                .device = "cpu"};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc) {
            o->device = argv[++i];
            continue;
        }
        int *dst = !strcmp(argv[i], "--threads")  ? &o->n_threads
                   : !strcmp(argv[i], "--seqs")   ? &o->n_seqs
                   : !strcmp(argv[i], "--rank")   ? &o->rank
                   : !strcmp(argv[i], "--steps")  ? &o->steps
                   : !strcmp(argv[i], "--reps")   ? &o->reps
                   : !strcmp(argv[i], "--prompt") ? &o->prompt
                                                  : NULL;
        if (dst && i + 1 < argc) {
            *dst = atoi(argv[++i]);
        } else if (argv[i][0] != '-' && !o->model) {
            o->model = argv[i];
        } else {
            fprintf(stderr, "usage: cvllm-bench-lora-decode [--device cpu|cuda] [--threads N] "
                            "[--seqs N] [--rank R] [--steps N] [--reps N] [--prompt N] "
                            "MODEL_DIR\n");
            return -1;
        }
    }
    if (!o->model || o->n_seqs < 1 || o->rank < 1 || o->steps < 1 || o->reps < 1 || o->prompt < 1) {
        fprintf(stderr, "cvllm-bench-lora-decode: a MODEL_DIR and positive sizes are needed\n");
        return -1;
    }
    if (strcmp(o->device, "cpu") && strcmp(o->device, "cuda")) {
        fprintf(stderr, "cvllm-bench-lora-decode: --device %s: cpu or cuda\n", o->device);
        return -1;
    }
    return 0;
}

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static float next_rand(void)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)(((double)(rng >> 11) / 9007199254740992.0 - 0.5) * 0.1);
}

/* A rank-r adapter on every projection of every layer, random weights. */
static cv_lora_adapter *random_adapter(const cv_model_config *cfg, int r)
{
    cv_lora_adapter *a = calloc(1, sizeof *a);
    const int N = CV_LORA_N_TARGETS;
    size_t total = 0;
    for (int k = 0; k < N; k++) {
        cv_lora_target_dims(cfg, (cv_lora_target)k, &a->in[k], &a->out[k]);
        total += (size_t)r * (a->in[k] + a->out[k]) * cfg->n_layers;
    }
    a->rank = r;
    a->scale = 1.0f / (float)r;
    a->n_layers = cfg->n_layers;
    a->w = calloc((size_t)cfg->n_layers * N, sizeof *a->w);
    a->data = malloc(total * sizeof(float));
    if (!a->w || !a->data) {
        fprintf(stderr, "out of memory for an adapter\n");
        exit(1);
    }
    for (size_t i = 0; i < total; i++)
        a->data[i] = next_rand();
    float *p = a->data;
    for (int l = 0; l < cfg->n_layers; l++)
        for (int k = 0; k < N; k++) {
            a->w[l * N + k].a = p;
            p += (size_t)r * a->in[k];
            a->w[l * N + k].b = p;
            p += (size_t)r * a->out[k];
        }
    return a;
}

/* Per-phase CUDA events of the CUDA backend (eager while on). */
static void set_profile(void *bk, int enable)
{
#ifdef CVLLM_HAVE_CUDA
    cv_cuda_backend_profile(bk, enable);
#else
    (void)bk, (void)enable;
#endif
}

/* Prints the phases of the steps profiled since set_profile, ms per step,
 * and turns profiling off. */
static void print_profile(void *bk, int n_adapters, int steps)
{
#ifdef CVLLM_HAVE_CUDA
    double ms[CV_CUDA_N_PHASES];
    const char *names[CV_CUDA_N_PHASES];
    const int n = cv_cuda_backend_profile_read(bk, ms, names);
    cv_cuda_backend_profile(bk, 0);
    fprintf(stderr, "phases with %d adapters (eager, ms/step):", n_adapters);
    for (int i = 0; i < n; i++)
        fprintf(stderr, " %s %.3f", names[i], ms[i] / steps);
    fprintf(stderr, "\n");
#else
    (void)bk, (void)n_adapters, (void)steps;
#endif
}

int main(int argc, char **argv)
{
    opts o;
    if (parse(argc, argv, &o) < 0) return 2;
    cv_error err = {0};
    cv_model *m = cv_model_load(o.model, &err);
    const cv_backend_ops *ops = &cv_cpu_backend_ops;
    void *bk = NULL;
    if (m && !strcmp(o.device, "cpu")) {
        bk = cv_backend_cpu_create(m, o.n_threads, &err);
    } else if (m) {
#ifdef CVLLM_HAVE_CUDA
        ops = &cv_cuda_backend_ops;
        bk = cv_cuda_backend_create(m, 0, &err);
#else
        cv_errorf(&err, "this build has no CUDA backend");
#endif
    }
    const int blocks_per_seq = (o.prompt + o.steps + BLOCK - 1) / BLOCK;
    if (!bk || ops->kv_alloc(bk, o.n_seqs * blocks_per_seq, BLOCK, &err) < 0 ||
        ops->lora_init(bk, MAX_ADAPTERS, o.rank, &err) < 0) {
        fprintf(stderr, "cvllm-bench-lora-decode: %s\n", err.msg);
        return 1;
    }
    const cv_model_config *cfg = cv_model_get_config(m);
    cv_lora_adapter *ad[MAX_ADAPTERS];
    for (int i = 0; i < MAX_ADAPTERS; i++) {
        ad[i] = random_adapter(cfg, o.rank);
        if (ops->lora_load(bk, i, ad[i], &err) < 0) {
            fprintf(stderr, "cvllm-bench-lora-decode: %s\n", err.msg);
            return 1;
        }
    }
    const int S = o.n_seqs, T = S * o.prompt;
    int32_t *tok = malloc((size_t)T * sizeof *tok), *pos = malloc((size_t)T * sizeof *pos);
    int32_t *idx = malloc((size_t)S * sizeof *idx), *qs = malloc((size_t)(S + 1) * sizeof *qs);
    int32_t *lens = malloc((size_t)S * sizeof *lens), *lora = malloc((size_t)S * sizeof *lora);
    int32_t *tables = malloc((size_t)S * blocks_per_seq * sizeof *tables);
    int64_t *slots = malloc((size_t)T * sizeof *slots);
    float *logits = malloc((size_t)S * cfg->vocab_size * sizeof *logits);
    uint8_t *want = malloc((size_t)S);
    int32_t *g_tok = malloc((size_t)S * sizeof *g_tok),
            *g_rank = malloc((size_t)S * sizeof *g_rank);
    float *g_lp = malloc((size_t)S * sizeof *g_lp);
    if (!tok || !pos || !idx || !qs || !lens || !lora || !tables || !slots || !logits || !want ||
        !g_tok || !g_rank || !g_lp) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (int s = 0; s < S; s++)
        for (int b = 0; b < blocks_per_seq; b++)
            tables[s * blocks_per_seq + b] = s * blocks_per_seq + b;
    /* The prompt of every sequence in one prefill, no adapter. */
    for (int s = 0, t = 0; s < S; s++) {
        qs[s] = t;
        lens[s] = o.prompt;
        idx[s] = t + o.prompt - 1;
        for (int j = 0; j < o.prompt; j++, t++) {
            tok[t] = j == 0 ? 1
                            : (int32_t)(rng = rng * 6364136223846793005ULL + 1,
                                        (rng >> 33) % (uint64_t)cfg->vocab_size);
            pos[t] = j;
            slots[t] = (int64_t)tables[s * blocks_per_seq + j / BLOCK] * BLOCK + j % BLOCK;
        }
    }
    qs[S] = T;
    memset(want, CV_ROW_GREEDY, (size_t)S);
    const cv_greedy_rows greedy = {.want = want, .token = g_tok, .logprob = g_lp, .rank = g_rank};
    cv_batch b = {T, tok, pos, slots, S, qs, lens, tables, blocks_per_seq, S, idx, NULL};
    if (ops->forward(bk, &b, logits, &greedy, &err) < 0) {
        fprintf(stderr, "cvllm-bench-lora-decode: %s\n", err.msg);
        return 1;
    }
    printf("model %s on %s, %d sequences, %d-token context, adapters of rank %d on "
           "q/k/v/o/gate/up/down, %d threads (0: all)\n\n",
           o.model, o.device, S, o.prompt, o.rank, o.n_threads);
    printf("| adapters | step ms | tok/s | vs none |\n|---:|---:|---:|---:|\n");
    static const int configs[] = {0, 1, 4, 16};
    double base_ms = 0;
    for (size_t c = 0; c < sizeof configs / sizeof *configs; c++) {
        const int n_ad = configs[c];
        for (int s = 0; s < S; s++)
            lora[s] = n_ad ? s % n_ad : -1;
        double best = INFINITY;
        /* On the GPU, none and 16 adapters get one more (untimed) run with
         * per-phase CUDA events: where the adapters' time goes. */
        const bool profile = ops != &cv_cpu_backend_ops && (n_ad == 0 || n_ad == 16);
        for (int rep = 0; rep < o.reps + profile; rep++) {
            const bool profiling = rep == o.reps;
            if (profiling) set_profile(bk, 1);
            const uint64_t t0 = cv_now_ns();
            for (int step = 0; step < o.steps; step++) {
                const int p = o.prompt + step;
                for (int s = 0; s < S; s++) {
                    qs[s] = s;
                    tok[s] = (int32_t)((s * 7 + step) % cfg->vocab_size);
                    pos[s] = p;
                    lens[s] = p + 1;
                    idx[s] = s;
                    slots[s] = (int64_t)tables[s * blocks_per_seq + p / BLOCK] * BLOCK + p % BLOCK;
                }
                qs[S] = S;
                cv_batch d = {S,     tok,    pos,
                              slots, S,      qs,
                              lens,  tables, blocks_per_seq,
                              S,     idx,    n_ad ? lora : NULL};
                if (ops->forward(bk, &d, logits, &greedy, &err) < 0) {
                    fprintf(stderr, "cvllm-bench-lora-decode: %s\n", err.msg);
                    return 1;
                }
            }
            if (profiling) {
                print_profile(bk, n_ad, o.steps);
                continue;
            }
            const double ms = cv_ns_to_s(cv_now_ns() - t0) * 1e3 / o.steps;
            best = ms < best ? ms : best;
        }
        if (n_ad == 0) base_ms = best;
        printf("| %d | %.2f | %.0f | %.2fx |\n", n_ad, best, S / (best / 1e3), best / base_ms);
    }
    for (int i = 0; i < MAX_ADAPTERS; i++)
        cv_lora_adapter_free(ad[i]);
    free(tok), free(pos), free(idx), free(qs), free(lens), free(lora), free(tables), free(slots);
    free(logits), free(want), free(g_tok), free(g_rank), free(g_lp);
    ops->destroy(bk);
    cv_model_free(m);
    return 0;
}

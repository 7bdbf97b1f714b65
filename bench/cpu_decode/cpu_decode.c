/* cvllm-bench-cpu-decode: CPU backend throughput against the memory
 * bandwidth roofline, measured in the same run (docs/PERFORMANCE.md, C1).
 *
 *   cvllm-bench-cpu-decode [--threads N] [--prompt N] [--gen N]
 *                          [--batch-steps N] [--batches 8,32,64] [--reps N]
 *                          MODEL_DIR...
 *
 * 1. STREAM-style triad a[i] = b[i] + s * c[i] over 3 x 256 MiB with the
 *    backend's thread count; best of 10; 24 bytes per element; on 4 KiB
 *    pages as STREAM and docs/PERFORMANCE.md measure it (the roofline), and
 *    on 2 MiB pages like the backend's weight copy (reported beside it).
 * 2. Per model: prefill of a --prompt token prompt (BOS + seeded random ids)
 *    as one chunk (best of 3), then --gen single-stream greedy decode steps
 *    (best of --reps runs, default 3: the machine may be shared). Bytes per
 *    decode token = every weight read once (layers, final norm, lm_head, one
 *    embedding row) + the KV cache (in the backend's KV dtype) read at the
 *    mean context + the KV written.
 *    Roofline tok/s = 4 KiB-page triad bytes/s / bytes per token.
 * 3. Batched decode: B sequences, each with the prompt's KV (copied block by
 *    block, not shared), B tokens per step for --batch-steps steps;
 *    aggregate tok/s.
 * Prints one markdown table row per model and measurement. */
#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "backend/backend.h"
#include "base/clock.h"

enum { BLOCK_SIZE = 16, MAX_BATCH = 256 };

static double triad_gbps(int n_threads, bool huge_pages)
{
    const size_t n = (size_t)32 << 20; /* 32 Mi doubles = 256 MiB per array */
    double *arr[3];
    for (int i = 0; i < 3; i++) {
        arr[i] = aligned_alloc((size_t)2 << 20, n * sizeof(double));
        if (!arr[i]) {
            fprintf(stderr, "triad: out of memory\n");
            return 0.0;
        }
        (void)madvise(arr[i], n * sizeof(double), huge_pages ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    }
    double *a = arr[0], *b = arr[1], *c = arr[2];
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (size_t i = 0; i < n; i++)
        a[i] = 0.0, b[i] = 1.0, c[i] = 2.0;
    double best = 1e30;
    for (int rep = 0; rep < 10; rep++) {
        uint64_t t0 = cv_now_ns();
#pragma omp parallel for num_threads(n_threads) schedule(static)
        for (size_t i = 0; i < n; i++)
            a[i] = b[i] + 3.0 * c[i];
        double s = cv_ns_to_s(cv_now_ns() - t0);
        best = s < best ? s : best;
    }
    double sink = a[n / 2];
    free(a), free(b), free(c);
    return sink == 7.0 ? 3.0 * n * sizeof(double) / best * 1e-9 : 0.0;
}

static double tensor_bytes(const cv_tensor *t)
{
    if (!t->data) return 0.0;
    double n = (double)cv_dtype_size(t->dtype);
    for (int d = 0; d < t->n_dims; d++)
        n *= (double)t->shape[d];
    return n;
}

static double weight_bytes_per_token(const cv_model *m)
{
    const cv_model_config *c = cv_model_get_config(m);
    const cv_model_weights *w = cv_model_get_weights(m);
    double bytes = tensor_bytes(&w->final_norm) + tensor_bytes(&w->lm_head) +
                   (double)c->hidden_size * cv_dtype_size(w->embed.dtype);
    for (int l = 0; l < c->n_layers; l++) {
        const cv_layer_weights *L = &w->layers[l];
        const cv_tensor *all[] = {&L->attn_norm, &L->wq,     &L->wk,     &L->wv,     &L->bq,
                                  &L->bk,        &L->bv,     &L->q_norm, &L->k_norm, &L->wo,
                                  &L->ffn_norm,  &L->w_gate, &L->w_up,   &L->w_down};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++)
            bytes += tensor_bytes(all[i]);
    }
    return bytes;
}

static int argmax(const float *row, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (row[i] > row[best]) best = i;
    return best;
}

/* The KV state of B sequences and one step's batch arrays. */
typedef struct bench_seqs {
    int n_seqs, max_blocks;
    int32_t *tables; /* (n_seqs, max_blocks) */
    int32_t *len;    /* (n_seqs) tokens in the cache */
    int32_t *next;   /* (n_seqs) token to feed next */
    int32_t *ids, *pos, *starts, *lens, *idx;
    int64_t *slots;
} bench_seqs;

/* One decode step for every sequence; greedy next tokens. */
static int decode_step(cv_backend *bk, bench_seqs *s, float *logits, int vocab, cv_error *err)
{
    for (int i = 0; i < s->n_seqs; i++) {
        int p = s->len[i];
        s->ids[i] = s->next[i];
        s->pos[i] = p;
        s->slots[i] =
            (int64_t)s->tables[i * s->max_blocks + p / BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE;
        s->starts[i] = i;
        s->lens[i] = p + 1;
        s->idx[i] = i;
    }
    s->starts[s->n_seqs] = s->n_seqs;
    cv_batch b = {.n_tokens = s->n_seqs,
                  .token_ids = s->ids,
                  .positions = s->pos,
                  .slot_mapping = s->slots,
                  .n_seqs = s->n_seqs,
                  .query_start = s->starts,
                  .seq_lens = s->lens,
                  .block_tables = s->tables,
                  .max_blocks_per_seq = s->max_blocks,
                  .n_logits = s->n_seqs,
                  .logits_indices = s->idx};
    if (cv_backend_forward(bk, &b, logits, err)) return -1;
    for (int i = 0; i < s->n_seqs; i++) {
        s->next[i] = argmax(logits + (size_t)i * vocab, vocab);
        s->len[i]++;
    }
    return 0;
}

typedef struct bench_opts {
    int n_threads, prompt, gen, batch_steps, reps, n_batches;
    int batches[8];
    double triad;      /* GB/s, 4 KiB pages */
    double triad_huge; /* GB/s, 2 MiB pages */
} bench_opts;

static int bench_model(const char *dir, const bench_opts *o)
{
    cv_error err = {.msg = ""};
    cv_model *m = cv_model_load(dir, &err);
    if (!m) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    const cv_model_config *c = cv_model_get_config(m);
    const int vocab = c->vocab_size;
    int max_batch = 1;
    for (int i = 0; i < o->n_batches; i++)
        max_batch = o->batches[i] > max_batch ? o->batches[i] : max_batch;
    const int ctx = o->prompt + (o->gen > o->batch_steps ? o->gen : o->batch_steps) + 1;
    const int max_blocks = (ctx + BLOCK_SIZE - 1) / BLOCK_SIZE;
    cv_backend *bk = cv_backend_cpu_create(m, o->n_threads, &err);
    const size_t rows = (size_t)(o->prompt > max_batch ? o->prompt : max_batch);
    float *logits = malloc(rows * vocab * sizeof(float));
    bench_seqs s = {.max_blocks = max_blocks};
    s.tables = malloc((size_t)max_batch * max_blocks * sizeof(int32_t));
    s.len = malloc((size_t)max_batch * sizeof(int32_t));
    s.next = malloc((size_t)max_batch * sizeof(int32_t));
    s.ids = malloc(rows * sizeof(int32_t));
    s.pos = malloc(rows * sizeof(int32_t));
    s.slots = malloc(rows * sizeof(int64_t));
    s.starts = malloc((size_t)(max_batch + 1) * sizeof(int32_t));
    s.lens = malloc((size_t)max_batch * sizeof(int32_t));
    s.idx = malloc(rows * sizeof(int32_t));
    if (!bk || !logits || !s.tables || !s.len || !s.next || !s.ids || !s.pos || !s.slots ||
        !s.starts || !s.lens || !s.idx ||
        cv_backend_kv_alloc(bk, max_batch * max_blocks, BLOCK_SIZE, &err)) {
        fprintf(stderr, "%s: setup failed (%s)\n", dir, err.msg[0] ? err.msg : "out of memory");
        return -1;
    }
    for (int i = 0; i < max_batch * max_blocks; i++)
        s.tables[i] = i;

    /* Prefill of sequence 0: the prompt as one chunk. */
    uint32_t r = 42;
    for (int i = 0; i < o->prompt; i++) {
        r = r * 1664525u + 1013904223u;
        s.ids[i] = i == 0 && c->bos_token_id >= 0 ? c->bos_token_id
                                                  : (int32_t)((r >> 8) % (uint32_t)vocab);
        s.pos[i] = i;
        s.slots[i] = (int64_t)s.tables[i / BLOCK_SIZE] * BLOCK_SIZE + i % BLOCK_SIZE;
    }
    int32_t starts[2] = {0, o->prompt}, lens[1] = {o->prompt}, last[1] = {o->prompt - 1};
    cv_batch pb = {.n_tokens = o->prompt,
                   .token_ids = s.ids,
                   .positions = s.pos,
                   .slot_mapping = s.slots,
                   .n_seqs = 1,
                   .query_start = starts,
                   .seq_lens = lens,
                   .block_tables = s.tables,
                   .max_blocks_per_seq = max_blocks,
                   .n_logits = 1,
                   .logits_indices = last};
    int32_t first_tok = 0;
    double pp_best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        uint64_t t0 = cv_now_ns();
        if (cv_backend_forward(bk, &pb, logits, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            return -1;
        }
        double t = cv_ns_to_s(cv_now_ns() - t0);
        pp_best = t < pp_best ? t : pp_best;
        first_tok = argmax(logits, vocab);
    }

    /* Single-stream greedy decode, repeated from the end of the prompt (the
     * same slots are rewritten); the best repetition counts. */
    s.n_seqs = 1;
    double tg = 0.0;
    for (int rep = 0; rep < o->reps; rep++) {
        s.len[0] = o->prompt;
        s.next[0] = first_tok;
        uint64_t t0 = cv_now_ns();
        for (int i = 0; i < o->gen; i++)
            if (decode_step(bk, &s, logits, vocab, &err)) {
                fprintf(stderr, "%s\n", err.msg);
                return -1;
            }
        double rate = o->gen / cv_ns_to_s(cv_now_ns() - t0);
        tg = rate > tg ? rate : tg;
    }
    const double kv_tok = (double)cv_backend_kv_block_bytes(bk, 1);
    const double bytes = weight_bytes_per_token(m) + kv_tok * (o->prompt + o->gen / 2.0 + 1.0);
    const double roof = o->triad * 1e9 / bytes;
    const char *name = strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir;
    const double roof_huge = o->triad_huge * 1e9 / bytes;
    printf("| %s | %s | pp%d | %.1f | | | | |\n", name, cv_dtype_name(c->dtype), o->prompt,
           o->prompt / pp_best);
    printf("| %s | %s | tg%d (1 seq) | %.1f | %.1f | %.1f | %.0f%% | %.0f%% |\n", name,
           cv_dtype_name(c->dtype), o->gen, tg, bytes / 1e6, roof, 100.0 * tg / roof,
           100.0 * tg / roof_huge);
    fflush(stdout);

    /* Batched decode: every sequence starts from a copy of the prompt's KV. */
    int32_t *src = malloc((size_t)max_blocks * sizeof(int32_t));
    int32_t *dst = malloc((size_t)max_blocks * sizeof(int32_t));
    const int prompt_blocks = (o->prompt + BLOCK_SIZE - 1) / BLOCK_SIZE;
    for (int bi = 0; bi < o->n_batches && src && dst; bi++) {
        const int B = o->batches[bi];
        s.n_seqs = B;
        for (int q = 0; q < B; q++) {
            for (int j = 0; j < prompt_blocks; j++) {
                src[j] = s.tables[j];
                dst[j] = s.tables[q * max_blocks + j];
            }
            if (q > 0 && cv_backend_kv_copy(bk, src, dst, prompt_blocks, &err)) {
                fprintf(stderr, "%s\n", err.msg);
                return -1;
            }
        }
        double agg = 0.0;
        for (int rep = 0; rep < o->reps; rep++) {
            for (int q = 0; q < B; q++) {
                s.len[q] = o->prompt;
                s.next[q] = (first_tok + q) % vocab; /* distinct continuations */
            }
            uint64_t b0 = cv_now_ns();
            for (int i = 0; i < o->batch_steps; i++)
                if (decode_step(bk, &s, logits, vocab, &err)) {
                    fprintf(stderr, "%s\n", err.msg);
                    return -1;
                }
            double rate = (double)B * o->batch_steps / cv_ns_to_s(cv_now_ns() - b0);
            agg = rate > agg ? rate : agg;
        }
        printf("| %s | %s | decode, %d seqs x %d steps | %.1f | | | | |\n", name,
               cv_dtype_name(c->dtype), B, o->batch_steps, agg);
        fflush(stdout);
    }
    free(src);
    free(dst);
    free(s.tables), free(s.len), free(s.next), free(s.ids), free(s.pos), free(s.slots);
    free(s.starts), free(s.lens), free(s.idx);
    free(logits);
    cv_backend_destroy(bk);
    cv_model_free(m);
    return 0;
}

static int parse_batches(const char *arg, bench_opts *o)
{
    o->n_batches = 0;
    for (const char *p = arg; *p && o->n_batches < 8;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > MAX_BATCH) return -1;
        o->batches[o->n_batches++] = (int)v;
        p = *end == ',' ? end + 1 : end;
    }
    return 0;
}

int main(int argc, char **argv)
{
    bench_opts o = {.n_threads = 2,
                    .prompt = 128,
                    .gen = 256,
                    .batch_steps = 64,
                    .reps = 3,
                    .n_batches = 3,
                    .batches = {8, 32, 64}};
    int first_model = argc;
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && strcmp(argv[i], "--threads") == 0)
            o.n_threads = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--prompt") == 0)
            o.prompt = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--gen") == 0)
            o.gen = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--reps") == 0)
            o.reps = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--batch-steps") == 0)
            o.batch_steps = atoi(argv[++i]);
        else if (i + 1 < argc && strcmp(argv[i], "--batches") == 0) {
            if (parse_batches(argv[++i], &o)) {
                fprintf(stderr, "--batches: expected a list like 8,32,64 (each 1..%d)\n",
                        MAX_BATCH);
                return 2;
            }
        } else {
            first_model = i;
            break;
        }
    }
    if (first_model >= argc || o.n_threads < 1 || o.prompt < 2 || o.gen < 1 || o.batch_steps < 1 ||
        o.reps < 1) {
        fprintf(stderr,
                "usage: %s [--threads N] [--prompt N] [--gen N] [--batch-steps N] "
                "[--batches 8,32,64] [--reps N] MODEL_DIR...\n",
                argv[0]);
        return 2;
    }
    o.triad = triad_gbps(o.n_threads, false);
    o.triad_huge = triad_gbps(o.n_threads, true);
    printf("STREAM-style triad, %d threads: %.1f GB/s on 4 KiB pages, %.1f GB/s on 2 MiB pages\n\n",
           o.n_threads, o.triad, o.triad_huge);
    printf("| model | weights | workload | tok/s | MB read per token | roofline tok/s | "
           "of roofline | of 2 MiB-page roofline |\n|---|---|---|---|---|---|---|---|\n");
    fflush(stdout);
    for (int i = first_model; i < argc; i++)
        if (bench_model(argv[i], &o)) return 1;
    return 0;
}

/* Device sampling of a step's CV_ROW_SAMPLE rows: packs their parameters
 * and edit ids (penalized rows' prompt and output tokens, min_tokens' masked
 * ids) into one pinned buffer, uploads it once, runs kernels/sample.cu over
 * the logits rows the step left on the device, and downloads per row the
 * chosen token and its logprobs (cuda_sample_out, 184 bytes) instead of the
 * row. The penalties' token lists are sent each step rather than kept per
 * sequence on the device: they are the engine's own arrays, read without a
 * copy, preemption and forks need no device bookkeeping, and at 256
 * sequences of ~1.1k tokens they are ~1 MB a step against the 131 MB of
 * logits rows they replace. */
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/kernels/sample.h"

_Static_assert((int)CV_SAMPLE_MAX_TOP == (int)CUDA_SAMPLE_MAX_TOP,
               "backend.h and kernels/sample.h agree on the logprobs list length");

struct cuda_sampler {
    void *up_host;                       /* pinned: cuda_sample_row[n] then int32 ids[entries] */
    void *up_dev;                        /* the same, then cuda_sample_edit[entries] */
    size_t up_cap;                       /* bytes of up_host */
    size_t dev_cap;                      /* bytes of up_dev */
    cuda_sample_out *out_host, *out_dev; /* (out_cap) */
    int out_cap;
    uint32_t *counts; /* (count_rows, vocab) zero between calls */
    int count_rows;
    int n; /* rows sampled by the step in flight */
};

void cuda_sample_free(cv_cuda_backend *b)
{
    struct cuda_sampler *s = b->sampler;
    if (!s) return;
    cudaFreeHost(s->up_host);
    cudaFree(s->up_dev);
    cudaFreeHost(s->out_host);
    cudaFree(s->out_dev);
    cudaFree(s->counts);
    free(s);
    b->sampler = NULL;
}

static bool penalized(const cv_sample_row *r)
{
    return r->repetition_penalty != 1.0f || r->frequency_penalty != 0.0f ||
           r->presence_penalty != 0.0f;
}

/* Grows the buffers to n rows, entries edit ids and count_rows scratch
 * rows. The previous step has finished (the forward synchronizes), so old
 * buffers can go at once. */
static int reserve(cv_cuda_backend *b, int n, size_t entries, int count_rows, cv_error *err)
{
    struct cuda_sampler *s = b->sampler;
    const size_t up = (size_t)n * sizeof(cuda_sample_row) + entries * sizeof(int32_t);
    const size_t dev = up + entries * sizeof(cuda_sample_edit);
    if (up > s->up_cap) {
        cudaFreeHost(s->up_host);
        s->up_host = NULL;
        s->up_cap = 0;
        CU(cudaMallocHost(&s->up_host, up * 2), "sampling parameters (pinned)");
        s->up_cap = up * 2;
    }
    if (dev > s->dev_cap) {
        cudaFree(s->up_dev);
        s->up_dev = NULL;
        s->dev_cap = 0;
        CU(cudaMalloc(&s->up_dev, dev * 2), "sampling parameters");
        s->dev_cap = dev * 2;
    }
    if (n > s->out_cap) {
        cudaFreeHost(s->out_host);
        cudaFree(s->out_dev);
        s->out_host = NULL;
        s->out_dev = NULL;
        s->out_cap = 0;
        CU(cudaMallocHost((void **)&s->out_host, (size_t)n * sizeof(cuda_sample_out)),
           "sampling results (pinned)");
        CU(cudaMalloc((void **)&s->out_dev, (size_t)n * sizeof(cuda_sample_out)),
           "sampling results");
        s->out_cap = n;
    }
    if (count_rows > s->count_rows) {
        const size_t bytes = (size_t)count_rows * (size_t)b->cfg.vocab_size * sizeof(uint32_t);
        cudaFree(s->counts);
        s->counts = NULL;
        s->count_rows = 0;
        CU(cudaMalloc((void **)&s->counts, bytes), "penalty counts");
        CU(cudaMemsetAsync(s->counts, 0, bytes, b->stream), "clearing penalty counts");
        s->count_rows = count_rows;
    }
    return 0;
}

static int check_row(const cv_sample_row *r, int i, cv_error *err)
{
    if (r->n_tokens < 0 || r->n_prompt < 0 || r->n_prompt > r->n_tokens || r->n_masked < 0 ||
        (r->n_tokens > 0 && !r->tokens) || (r->n_masked > 0 && !r->masked))
        return cv_errorf(err,
                         "cv_cuda_backend_forward: sample row %d: n_prompt %d, n_tokens %d, "
                         "n_masked %d or their arrays are invalid",
                         i, r->n_prompt, r->n_tokens, r->n_masked);
    if (r->n_top < 0 || r->n_top > CV_SAMPLE_MAX_TOP)
        return cv_errorf(err, "cv_cuda_backend_forward: sample row %d: n_top %d is outside 0..%d",
                         i, r->n_top, CV_SAMPLE_MAX_TOP);
    return 0;
}

int cuda_sample_enqueue(cv_cuda_backend *b, int n_logits, const cv_greedy_rows *rows, cv_error *err)
{
    if (!b->sampler && !(b->sampler = calloc(1, sizeof(*b->sampler))))
        return cv_errorf(err, "cv_cuda_backend_forward: out of memory for the sampler");
    struct cuda_sampler *s = b->sampler;
    s->n = 0;
    if (!rows->sample) return 0;
    if (!rows->top_ids || !rows->top_logprobs)
        return cv_errorf(err, "cv_cuda_backend_forward: sample rows without top_ids/top_logprobs");
    int n = 0, count_rows = 0;
    size_t entries = 0;
    for (int r = 0; r < n_logits; r++) {
        if (rows->want[r] != CV_ROW_SAMPLE) continue;
        const cv_sample_row *q = &rows->sample[r];
        if (check_row(q, r, err)) return -1;
        const size_t e = (size_t)(penalized(q) ? q->n_tokens : 0) + (size_t)q->n_masked;
        entries += e;
        count_rows += e > 0;
        n++;
    }
    if (n == 0) return 0;
    if (entries > INT32_MAX)
        return cv_errorf(err, "cv_cuda_backend_forward: %zu penalty and mask ids in one step",
                         entries);
    if (reserve(b, n, entries, count_rows, err)) return -1;
    cuda_sample_row *dr = s->up_host;
    int32_t *ids = (int32_t *)(dr + n);
    int i = 0, at = 0, crow = 0;
    for (int r = 0; r < n_logits; r++) {
        if (rows->want[r] != CV_ROW_SAMPLE) continue;
        const cv_sample_row *q = &rows->sample[r];
        const int nt = penalized(q) ? q->n_tokens : 0;
        if (nt) memcpy(ids + at, q->tokens, (size_t)nt * sizeof(int32_t));
        if (q->n_masked) memcpy(ids + at + nt, q->masked, (size_t)q->n_masked * sizeof(int32_t));
        dr[i++] = (cuda_sample_row){
            .temperature = q->temperature,
            .top_p = q->top_p,
            .min_p = q->min_p,
            .repetition_penalty = q->repetition_penalty,
            .frequency_penalty = q->frequency_penalty,
            .presence_penalty = q->presence_penalty,
            .top_k = q->top_k,
            .n_top = q->n_top,
            .seed = q->seed,
            .draw = q->draw,
            .row = r,
            .edits = at,
            .n_prompt = nt ? q->n_prompt : 0,
            .n_tokens = nt,
            .n_masked = q->n_masked,
            .counts = nt + q->n_masked > 0 ? crow++ : -1,
        };
        at += nt + q->n_masked;
    }
    const size_t up = (size_t)n * sizeof(cuda_sample_row) + entries * sizeof(int32_t);
    CU(cudaMemcpyAsync(s->up_dev, s->up_host, up, cudaMemcpyHostToDevice, b->stream),
       "sampling parameters upload");
    const cuda_sample_row *d_rows = s->up_dev;
    const int32_t *d_ids = (const int32_t *)(d_rows + n);
    cuda_sample_edit *d_saved = (cuda_sample_edit *)((char *)s->up_dev + up);
    KL(cuda_sample(b->logits, b->cfg.vocab_size, d_rows, n, d_ids, d_saved, s->counts, s->out_dev,
                   b->stream),
       "sampling kernel");
    CU(cudaMemcpyAsync(s->out_host, s->out_dev, (size_t)n * sizeof(cuda_sample_out),
                       cudaMemcpyDeviceToHost, b->stream),
       "sampling results download");
    s->n = n;
    return 0;
}

void cuda_sample_collect(cv_cuda_backend *b, int n_logits, const cv_greedy_rows *rows)
{
    const struct cuda_sampler *s = b->sampler;
    if (!s) return;
    const cuda_sample_row *dr = s->up_host;
    for (int i = 0; i < s->n; i++) {
        const int r = dr[i].row;
        if (r >= n_logits) continue;
        const cuda_sample_out *o = &s->out_host[i];
        rows->token[r] = o->token;
        rows->logprob[r] = o->logprob;
        rows->rank[r] = o->rank;
        memcpy(rows->top_ids + (size_t)r * CV_SAMPLE_MAX_TOP, o->top_ids,
               (size_t)o->n_top * sizeof(int32_t));
        memcpy(rows->top_logprobs + (size_t)r * CV_SAMPLE_MAX_TOP, o->top_logprobs,
               (size_t)o->n_top * sizeof(float));
    }
}

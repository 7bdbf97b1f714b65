/* vLLM V1 sampling on one logits row (see sampler.h for the order). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runner/sampler.h"

typedef struct cand {
    float logit;
    int32_t id;
} cand;

struct sampler {
    int vocab;
    float *work;        /* (vocab) processed logits */
    float *masked;      /* (vocab) logits with the disallowed tokens at -inf */
    int32_t *counts;    /* (vocab) output occurrences, zero between calls */
    uint8_t *in_prompt; /* (vocab) prompt occurrence flags, zero between calls */
    cand *cands;        /* (vocab) surviving candidates */
};

sampler *sampler_create(int vocab_size)
{
    sampler *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->vocab = vocab_size;
    s->work = malloc((size_t)vocab_size * sizeof(float));
    s->counts = calloc((size_t)vocab_size, sizeof(int32_t));
    s->in_prompt = calloc((size_t)vocab_size, 1);
    s->cands = malloc((size_t)vocab_size * sizeof(cand));
    s->masked = malloc((size_t)vocab_size * sizeof(float));
    if (!s->masked || !s->work || !s->counts || !s->in_prompt || !s->cands) {
        sampler_destroy(s);
        return NULL;
    }
    return s;
}

void sampler_destroy(sampler *s)
{
    if (!s) return;
    free(s->work);
    free(s->counts);
    free(s->in_prompt);
    free(s->cands);
    free(s->masked);
    free(s);
}

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

double sampler_uniform(uint64_t seed, uint64_t i)
{
    uint64_t x = mix64(mix64(seed) ^ mix64(i ^ 0x5851f42d4c957f2dULL));
    return (double)(x >> 11) * (1.0 / 9007199254740992.0); /* 53 bits */
}

/* ---- Row reductions ----------------------------------------------------
 * A 32K-152K vocab row is reduced several times per token, for every
 * sequence of a step; max and rank are written so the compiler vectorizes
 * them (-fopenmp-simd). */

static float row_max(const float *x, int n)
{
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int i = 0; i < n; i++)
        m = x[i] > m ? x[i] : m;
    return m;
}

/* sum of e^(x_i - mx): expf per term (glibc's is faster here than a
 * vectorized polynomial without AVX), summed in double. */
static double row_sum_exp(const float *x, int n, float mx)
{
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += expf(x[i] - mx);
    return sum;
}

/* vLLM's rank: tokens at least as likely as x_t, itself included. */
static int row_rank(const float *x, int n, float xt)
{
    int rank = 0;
#pragma omp simd reduction(+ : rank)
    for (int i = 0; i < n; i++)
        rank += x[i] >= xt;
    return rank;
}

/* First index of the maximum (torch.argmax's tie rule). */
static int32_t row_argmax(const float *x, int n)
{
    float m = row_max(x, n);
    int32_t i = 0;
    while (i < n - 1 && !(x[i] == m))
        i++;
    return i;
}

void sampler_logprobs(sampler *s, const float *logits, int32_t token, int n_top,
                      sample_logprobs *lp)
{
    float mx = row_max(logits, s->vocab);
    float lt = logits[token];
    double lse = mx + log(row_sum_exp(logits, s->vocab, mx));
    int rank = row_rank(logits, s->vocab, lt);
    lp->token = token;
    lp->logprob = (float)(lt - lse);
    lp->rank = rank;
    if (n_top > CV_MAX_LOGPROBS) n_top = CV_MAX_LOGPROBS;
    if (n_top > s->vocab) n_top = s->vocab;
    /* Insertion into a sorted top list; ties keep the lower id first. */
    int n = 0;
    for (int i = 0; i < s->vocab && n_top > 0; i++) {
        float v = logits[i];
        if (n == n_top && v <= logits[lp->top_ids[n - 1]]) continue;
        int at = n < n_top ? n++ : n - 1;
        while (at > 0 && logits[lp->top_ids[at - 1]] < v) {
            lp->top_ids[at] = lp->top_ids[at - 1];
            at--;
        }
        lp->top_ids[at] = i;
    }
    lp->n_top = n;
    for (int j = 0; j < n; j++)
        lp->top_logprobs[j] = (float)(logits[lp->top_ids[j]] - lse);
}

static void apply_penalties(sampler *s, const sample_request *r)
{
    const cv_sampling_params *p = r->params;
    bool rep = p->repetition_penalty != 1.0f;
    if (!rep && p->frequency_penalty == 0.0f && p->presence_penalty == 0.0f) return;
    for (int i = 0; i < r->n_prompt; i++)
        s->in_prompt[r->tokens[i]] = 1;
    for (int i = r->n_prompt; i < r->n_tokens; i++)
        s->counts[r->tokens[i]]++;
    /* Each distinct token once: visit every occurrence, act on the first
     * (the flag/count is cleared after use). */
    for (int i = 0; i < r->n_tokens; i++) {
        int32_t t = r->tokens[i];
        if (!s->in_prompt[t] && s->counts[t] == 0) continue;
        float *x = &s->work[t];
        if (rep) *x = *x > 0 ? *x / p->repetition_penalty : *x * p->repetition_penalty;
        *x -= p->frequency_penalty * (float)s->counts[t];
        *x -= p->presence_penalty * (s->counts[t] > 0 ? 1.0f : 0.0f);
        s->in_prompt[t] = 0;
        s->counts[t] = 0;
    }
}

static int cmp_cand_desc(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
    return x->id - y->id;
}

/* min_p, top_k, top_p over the tempered logits in s->work; returns the
 * surviving candidates in s->cands (count). */
/* The k-th largest logit of c[0..n) (1 <= k <= n), by quickselect; c is
 * reordered. */
static float kth_largest(cand *c, int n, int k)
{
    int lo = 0, hi = n - 1, want = k - 1; /* index in descending order */
    while (lo < hi) {
        float pivot = c[lo + (hi - lo) / 2].logit;
        int i = lo, j = hi;
        while (i <= j) {
            while (c[i].logit > pivot)
                i++;
            while (c[j].logit < pivot)
                j--;
            if (i <= j) {
                cand t = c[i];
                c[i++] = c[j];
                c[j--] = t;
            }
        }
        /* [lo, j] >= pivot >= [i, hi]; between them, == pivot. */
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            return pivot;
    }
    return c[want].logit;
}

/* top_p over cands[0..n) sorted descending, as vLLM: over the ascending
 * order, drop tokens while the cumulative probability stays <= 1 - top_p
 * (starting from `removed`, the share already dropped); the most likely
 * always stays. Returns how many stay. */
static int top_p_keep(const cand *c, int n, float mx, double sum, double removed, float top_p)
{
    double cum = removed;
    int keep = n;
    for (int i = n - 1; i > 0; i--) {
        cum += expf(c[i].logit - mx) / sum;
        if (cum > 1.0 - top_p) break;
        keep = i;
    }
    return keep;
}

static int filter_candidates(sampler *s, const cv_sampling_params *p)
{
    float mx = row_max(s->work, s->vocab);
    /* min_p: p_i < min_p * p_max  <=>  x_i - x_max < log(min_p). */
    float floor_x = p->min_p > 0.0f ? mx + logf(p->min_p) : -INFINITY;
    int n = 0;
    for (int i = 0; i < s->vocab; i++)
        if (s->work[i] > -INFINITY && s->work[i] >= floor_x) s->cands[n++] = (cand){s->work[i], i};
    bool use_k = p->top_k > 0 && p->top_k < n;
    bool use_p = p->top_p < 1.0f;
    if (!use_k && !use_p) return n;
    if (!use_k) {
        /* Tokens of probability <= (1 - top_p) / n weigh at most 1 - top_p
         * together and come first in ascending order, so top_p drops all
         * of them: leave them out of the sort (at a low temperature a
         * 32K-152K row keeps a handful). */
        double sum = 0;
        for (int i = 0; i < n; i++)
            sum += expf(s->cands[i].logit - mx);
        double small = (1.0 - p->top_p) / n * sum, removed = 0;
        int m = 0;
        for (int i = 0; i < n; i++) {
            double e = expf(s->cands[i].logit - mx);
            if (e <= small)
                removed += e;
            else
                s->cands[m++] = s->cands[i];
        }
        qsort(s->cands, (size_t)m, sizeof(cand), cmp_cand_desc);
        return top_p_keep(s->cands, m, mx, sum, removed / sum, p->top_p);
    }
    /* vLLM keeps every logit >= the k-th largest (ties survive): select
     * that value in linear time, then sort only the survivors. */
    float kth = kth_largest(s->cands, n, p->top_k);
    int m = 0;
    for (int i = 0; i < n; i++)
        if (s->cands[i].logit >= kth) s->cands[m++] = s->cands[i];
    qsort(s->cands, (size_t)m, sizeof(cand), cmp_cand_desc);
    n = m;
    if (use_p) {
        double sum = 0;
        for (int i = 0; i < n; i++)
            sum += expf(s->cands[i].logit - mx);
        n = top_p_keep(s->cands, n, mx, sum, 0, p->top_p);
    }
    return n;
}

/* Greedy with nothing to mask or penalize: the argmax of the raw row,
 * without copying it. */
static bool plain_greedy(const sample_request *r)
{
    const cv_sampling_params *p = r->params;
    return p->temperature < CV_SAMPLING_EPS && p->repetition_penalty == 1.0f &&
           p->frequency_penalty == 0.0f && p->presence_penalty == 0.0f &&
           (r->n_tokens - r->n_prompt >= p->min_tokens || r->n_stop_ids == 0);
}

int32_t sampler_sample(sampler *s, const sample_request *req, int n_top, sample_logprobs *lp)
{
    sample_request masked;
    const sample_request *r = req;
    if (req->allowed) {
        for (int i = 0; i < s->vocab; i++)
            s->masked[i] = req->allowed[i >> 5] >> (i & 31) & 1u ? req->logits[i] : -INFINITY;
        masked = *req;
        masked.logits = s->masked;
        masked.allowed = NULL;
        r = &masked;
    }
    const cv_sampling_params *p = r->params;
    if (plain_greedy(r)) {
        int32_t best = row_argmax(r->logits, s->vocab);
        sampler_logprobs(s, r->logits, best, n_top, lp);
        return best;
    }
    memcpy(s->work, r->logits, (size_t)s->vocab * sizeof(float));
    if (r->n_tokens - r->n_prompt < p->min_tokens)
        for (int i = 0; i < r->n_stop_ids; i++)
            if (r->stop_ids[i] >= 0 && r->stop_ids[i] < s->vocab)
                s->work[r->stop_ids[i]] = -INFINITY;
    apply_penalties(s, r);

    int32_t token = 0;
    if (p->temperature < CV_SAMPLING_EPS) {
        token = row_argmax(s->work, s->vocab);
    } else {
        float t = p->temperature < CV_MIN_TEMPERATURE ? CV_MIN_TEMPERATURE : p->temperature;
        for (int i = 0; i < s->vocab; i++)
            s->work[i] /= t;
        int n = filter_candidates(s, p);
        float mx = -INFINITY;
        for (int i = 0; i < n; i++)
            if (s->cands[i].logit > mx) mx = s->cands[i].logit;
        double sum = 0;
        for (int i = 0; i < n; i++)
            sum += expf(s->cands[i].logit - mx);
        double u = sampler_uniform(r->seed, (uint64_t)(r->n_tokens - r->n_prompt)) * sum;
        double cum = 0;
        token = n > 0 ? s->cands[n - 1].id : 0;
        for (int i = 0; i < n; i++) {
            cum += expf(s->cands[i].logit - mx);
            if (u < cum) {
                token = s->cands[i].id;
                break;
            }
        }
    }
    sampler_logprobs(s, r->logits, token, n_top, lp);
    return token;
}

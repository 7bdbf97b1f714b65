/* One engine step: schedule, flatten into a cv_batch, run the backend,
 * sample, detokenize, check stops, deliver outputs. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/log.h"
#include "engine_internal.h"
#include "engine_state.h"
#include "metrics.h"
#include "stop.h"

static int grow(void **p, int *cap, int need, size_t elem)
{
    if (need <= *cap) return 0;
    int c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, (size_t)c * elem);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

static int resize(void *pp, int n, size_t elem)
{
    void **p = pp;
    void *q = realloc(*p, (size_t)n * elem);
    if (!q) return -1;
    *p = q;
    return 0;
}

static int next_cap(int cap, int need)
{
    int c = cap ? cap : 64;
    while (c < need)
        c *= 2;
    return c;
}

/* Grows the batch arrays to n_tokens tokens and n_seqs sequences. After a
 * failed realloc some arrays may be larger than recorded; the next call
 * grows them again, which is harmless. */
static int reserve_batch(cv_engine *e, int n_tokens, int n_seqs, int max_blocks)
{
    if (n_tokens > e->cap_b_tokens) {
        int c = next_cap(e->cap_b_tokens, n_tokens);
        if (resize(&e->b_tokens, c, sizeof(int32_t)) ||
            resize(&e->b_positions, c, sizeof(int32_t)) ||
            resize(&e->b_slots, c, sizeof(int64_t)) ||
            resize(&e->b_logits_idx, c, sizeof(int32_t)) || resize(&e->g_want, c, 1) ||
            resize(&e->g_token, c, sizeof(int32_t)) || resize(&e->g_rank, c, sizeof(int32_t)) ||
            resize(&e->g_logprob, c, sizeof(float)) ||
            resize(&e->g_sample, c, sizeof(cv_sample_row)) ||
            resize(&e->g_top_ids, c, CV_MAX_LOGPROBS * sizeof(int32_t)) ||
            resize(&e->g_top_lps, c, CV_MAX_LOGPROBS * sizeof(float)))
            return -1;
        e->cap_b_tokens = c;
    }
    if (n_seqs + 1 > e->cap_b_seqs) {
        int c = next_cap(e->cap_b_seqs, n_seqs + 1);
        if (resize(&e->b_query_start, c, sizeof(int32_t)) ||
            resize(&e->b_seq_lens, c, sizeof(int32_t)) || resize(&e->e_first_row, c, sizeof(int)) ||
            resize(&e->b_lora_slots, c, sizeof(int32_t)) || resize(&e->e_n_rows, c, sizeof(int)))
            return -1;
        e->cap_b_seqs = c;
    }
    return grow((void **)&e->b_block_tables, &e->cap_b_tables, n_seqs * max_blocks,
                sizeof(int32_t));
}

/* Does this step's chunk of seq need one logits row per token (prompt
 * logprobs still missing for positions it covers)? */
static bool wants_prompt_rows(const request *req, const cv_seq *s)
{
    return req->prompt_lps && s->index == 0 && req->prompt_lps_done < req->n_prompt &&
           s->n_computed < req->n_prompt;
}

/* Is the next token of s all its logits row is for, and greedy (the
 * sampler's plain_greedy with no logprobs list)? Then a GPU backend may
 * pick it and send 12 bytes instead of the row. */
static bool greedy_row(const request *req, const cv_seq *s)
{
    const cv_sampling_params *p = &req->params;
    /* A constrained row needs its mask applied on the CPU first. */
    return !req->grammar && p->temperature < CV_SAMPLING_EPS && p->repetition_penalty == 1.0f &&
           p->frequency_penalty == 0.0f && p->presence_penalty == 0.0f && p->logprobs <= 0 &&
           (s->n_tokens - s->n_prompt >= p->min_tokens || req->n_mask_ids == 0);
}

_Static_assert((int)CV_MAX_LOGPROBS == (int)CV_SAMPLE_MAX_TOP,
               "a device-sampled row returns the engine's longest logprobs list");

/* How a backend may reduce the row of s's next token (CV_ROW_*): greedy as
 * above; else sampled by the backend, unless a grammar's mask applies (it is
 * built on the CPU) or the row is an n > 1 request's first, which every
 * sequence samples with its own stream. */
static uint8_t row_kind(const request *req, const cv_seq *s)
{
    if (greedy_row(req, s)) return CV_ROW_GREEDY;
    if (req->grammar || (!req->forked && req->n_seqs > 1)) return CV_ROW_LOGITS;
    return CV_ROW_SAMPLE;
}

/* The sampler's request (draw's sample_request) for a backend. */
static cv_sample_row sample_row(const request *req, const cv_seq *s)
{
    const cv_sampling_params *p = &req->params;
    const int n_out = s->n_tokens - s->n_prompt;
    const bool masking = n_out < p->min_tokens && req->n_mask_ids > 0;
    return (cv_sample_row){
        .temperature = p->temperature,
        .top_p = p->top_p,
        .min_p = p->min_p,
        .top_k = p->top_k,
        .repetition_penalty = p->repetition_penalty,
        .frequency_penalty = p->frequency_penalty,
        .presence_penalty = p->presence_penalty,
        .seed = req->seqs[s->index].rng_seed,
        .draw = (uint64_t)n_out,
        .tokens = s->tokens,
        .n_prompt = s->n_prompt,
        .n_tokens = s->n_tokens,
        .masked = masking ? req->mask_ids : NULL,
        .n_masked = masking ? req->n_mask_ids : 0,
        .n_top = p->logprobs <= 0                ? 0
                 : p->logprobs < CV_MAX_LOGPROBS ? p->logprobs
                                                 : CV_MAX_LOGPROBS,
    };
}

static int build_batch(cv_engine *e, const sched_output *so, cv_batch *b)
{
    int max_blocks = 1;
    for (int i = 0; i < so->n_entries; i++)
        if (so->entries[i].seq->n_blocks > max_blocks) max_blocks = so->entries[i].seq->n_blocks;
    if (reserve_batch(e, so->n_tokens, so->n_entries, max_blocks) < 0) return -1;
    int bs = e->block_size, t = 0, rows = 0;
    for (int i = 0; i < so->n_entries; i++) {
        const cv_seq *s = so->entries[i].seq;
        int n_new = so->entries[i].n_new;
        const request *req = s->owner;
        e->b_query_start[i] = t;
        for (int j = 0; j < n_new; j++, t++) {
            int p = s->n_computed + j;
            e->b_tokens[t] = s->tokens[p];
            e->b_positions[t] = p;
            e->b_slots[t] = (int64_t)s->block_table[p / bs] * bs + p % bs;
        }
        e->b_seq_lens[i] = s->n_computed + n_new;
        int32_t *row = e->b_block_tables + (size_t)i * max_blocks;
        memcpy(row, s->block_table, (size_t)s->n_blocks * sizeof(int32_t));
        for (int j = s->n_blocks; j < max_blocks; j++)
            row[j] = 0; /* never read: seq_lens bounds the context */
        e->e_first_row[i] = rows;
        if (wants_prompt_rows(req, s)) {
            for (int j = 0; j < n_new; j++) {
                e->g_want[rows] = 0;
                e->b_logits_idx[rows++] = e->b_query_start[i] + j;
            }
        } else if (s->n_computed + n_new == s->n_tokens) {
            e->g_want[rows] = row_kind(req, s);
            if (e->g_want[rows] == CV_ROW_SAMPLE) e->g_sample[rows] = sample_row(req, s);
            e->b_logits_idx[rows++] = t - 1;
        }
        e->e_n_rows[i] = rows - e->e_first_row[i];
    }
    e->b_query_start[so->n_entries] = t;
    bool lora = false;
    if (engine_lora_assign(e, so, &lora) < 0) return -1;
    if (rows > e->cap_logits_rows) {
        float *l = realloc(e->logits, (size_t)rows * (size_t)e->vocab * sizeof(float));
        if (!l) return -1;
        e->logits = l;
        e->cap_logits_rows = rows;
    }
    *b = (cv_batch){
        .n_tokens = t,
        .token_ids = e->b_tokens,
        .positions = e->b_positions,
        .slot_mapping = e->b_slots,
        .n_seqs = so->n_entries,
        .query_start = e->b_query_start,
        .seq_lens = e->b_seq_lens,
        .block_tables = e->b_block_tables,
        .max_blocks_per_seq = max_blocks,
        .n_logits = rows,
        .logits_indices = e->b_logits_idx,
        .lora_slots = lora ? e->b_lora_slots : NULL,
    };
    return 0;
}

static int append_text(seq_state *ss, const char *delta, size_t n)
{
    if (ss->text_len + n + 1 > ss->text_cap) {
        size_t cap = ss->text_cap ? ss->text_cap : 64;
        while (cap < ss->text_len + n + 1)
            cap *= 2;
        char *t = realloc(ss->text, cap);
        if (!t) return -1;
        ss->text = t;
        ss->text_cap = cap;
    }
    memcpy(ss->text + ss->text_len, delta, n);
    ss->text_len += n;
    ss->text[ss->text_len] = '\0';
    return 0;
}

static bool in_list(const int32_t *ids, int n, int32_t t)
{
    for (int i = 0; i < n; i++)
        if (ids[i] == t) return true;
    return false;
}

/* After a token was appended to sequence k: vLLM's check_stop (length,
 * then EOS and stop_token_ids once min_tokens is reached), incremental
 * detokenization, then stop strings over the new text. */
static int check_stop(cv_engine *e, request *req, int k)
{
    seq_state *ss = &req->seqs[k];
    cv_seq *s = ss->seq;
    const cv_sampling_params *p = &req->params;
    int n_out = s->n_tokens - s->n_prompt;
    int32_t last = s->tokens[s->n_tokens - 1];
    cv_finish_reason finish = CV_FINISH_NONE;
    bool stop_token = false;
    if (s->n_tokens >= e->max_model_len || n_out >= req->max_tokens) {
        finish = CV_FINISH_LENGTH;
    } else if (n_out >= p->min_tokens && in_list(req->stop_ids, req->n_stop_ids, last)) {
        finish = CV_FINISH_STOP;
        stop_token = true;
    } else if (req->grammar && so_done(req->grammar, ss->so)) {
        finish = CV_FINISH_STOP; /* the constraint is complete and nothing may follow */
    }
    /* A stop token's own text is left out unless asked for (vLLM). */
    size_t n_ids = (size_t)s->n_tokens - (stop_token && !p->include_stop_str_in_output ? 1 : 0);
    char *delta = NULL;
    size_t dlen = 0;
    if (tok_stream_next(&ss->detok, e->tok, s->tokens, n_ids, &delta, &dlen, &e->step_err) < 0)
        return -1;
    int rc = append_text(ss, delta, dlen);
    free(delta);
    if (rc < 0) return -1;
    size_t cut;
    if (p->n_stop > 0 && n_out > p->min_tokens &&
        stop_find(ss->text, ss->text_len, dlen, p->stop, p->n_stop, p->include_stop_str_in_output,
                  &cut) >= 0) {
        ss->text_len = cut;
        ss->text[cut] = '\0';
        finish = CV_FINISH_STOP;
    }
    if (finish != CV_FINISH_NONE) engine_finish_seq(e, req, k, finish);
    return 0;
}

/* A sequence to sample after the forward: which one, from which logits row,
 * and (filled by the parallel pass) what came out. */
typedef struct sample_job {
    request *req;
    int k;                /* sequence index in req */
    const float *row;     /* (vocab) logits */
    const uint32_t *mask; /* structured output: the allowed tokens, NULL = all */
    int32_t token;
    sample_logprobs lp;
} sample_job;

static int push_job(cv_engine *e, request *req, int k, const float *row)
{
    if (grow((void **)&e->jobs, &e->cap_jobs, e->n_jobs + 1, sizeof(sample_job)) < 0) return -1;
    e->jobs[e->n_jobs++] = (sample_job){.req = req, .k = k, .row = row};
    return 0;
}

/* The logits row a job samples from. */
static int job_row(const cv_engine *e, const sample_job *j)
{
    return (int)((j->row - e->logits) / e->vocab);
}

/* Did the backend already choose this job's token (greedy or sampled on
 * the device)? Then drawing it is a copy. */
static bool device_chosen(const cv_engine *e, const sample_job *j)
{
    return e->greedy_filled && e->g_want[job_row(e, j)] != CV_ROW_LOGITS;
}

static void draw(const cv_engine *e, sampler *smp, sample_job *j)
{
    const int row = job_row(e, j);
    if (device_chosen(e, j)) {
        j->token = e->g_token[row];
        j->lp = (sample_logprobs){
            .token = j->token, .logprob = e->g_logprob[row], .rank = e->g_rank[row]};
        if (e->g_want[row] == CV_ROW_SAMPLE) {
            int n = e->g_sample[row].n_top < e->vocab ? e->g_sample[row].n_top : e->vocab;
            memcpy(j->lp.top_ids, e->g_top_ids + (size_t)row * CV_MAX_LOGPROBS,
                   (size_t)n * sizeof(int32_t));
            memcpy(j->lp.top_logprobs, e->g_top_lps + (size_t)row * CV_MAX_LOGPROBS,
                   (size_t)n * sizeof(float));
            j->lp.n_top = n;
        }
        return;
    }
    seq_state *ss = &j->req->seqs[j->k];
    const cv_sampling_params *p = &j->req->params;
    sample_request sr = {
        .params = p,
        .logits = j->row,
        .tokens = ss->seq->tokens,
        .n_prompt = ss->seq->n_prompt,
        .n_tokens = ss->seq->n_tokens,
        .seed = ss->rng_seed,
        .stop_ids = j->req->mask_ids,
        .n_stop_ids = j->req->n_mask_ids,
        .allowed = j->mask,
    };
    j->token = sampler_sample(smp, &sr, p->logprobs > 0 ? p->logprobs : 0, &j->lp);
}

/* Sampling is independent per sequence (own RNG stream, read-only inputs),
 * so it runs on the backend's threads while they would otherwise wait: at
 * 64 sequences and a 32K vocab it is several percent of a step. */
static int draw_all(cv_engine *e)
{
    int n = e->n_jobs, n_host = 0;
    /* Masks first, on this thread: a grammar builds its states lazily. */
    for (int i = 0; i < n; i++) {
        sample_job *j = &e->jobs[i];
        if (j->req->grammar && !(j->mask = so_mask(j->req->grammar, j->req->seqs[j->k].so)))
            return -1;
        n_host += !device_chosen(e, j);
    }
    /* Only rows sampled here are worth the threads: a step whose tokens the
     * GPU chose copies them on this thread, without a parallel region that
     * would wake every sampler thread and wait for the last one to be
     * scheduled (milliseconds on a host busy with clients). */
#pragma omp parallel for num_threads(e->n_samplers) schedule(dynamic, 2) if (n_host >= 8)
    for (int i = 0; i < n; i++)
        draw(e, e->samplers[omp_get_thread_num()], &e->jobs[i]);
    return 0;
}

/* Appends a drawn token with its logprobs, then checks for a stop. */
static int apply_job(cv_engine *e, const sample_job *j, uint64_t now)
{
    request *req = j->req;
    seq_state *ss = &req->seqs[j->k];
    if (seq_append_token(ss->seq, j->token) < 0) return -1;
    if (req->grammar) ss->so = so_advance(req->grammar, ss->so, j->token);
    ss->cum_logprob += j->lp.logprob;
    if (req->params.logprobs >= 0) {
        if (grow((void **)&ss->lps, &ss->cap_lps, ss->n_lps + 1, sizeof(cv_token_logprobs)) < 0)
            return -1;
        if (engine_make_logprobs(e, &j->lp, &ss->lps[ss->n_lps++]) < 0) return -1;
    }
    pthread_mutex_lock(&e->stats_mu);
    e->stats.generation_tokens_total++;
    if (req->t_first_token_ns == 0)
        hist_observe(&e->stats.time_to_first_token_s, cv_ns_to_s(now - req->t_arrival_ns));
    pthread_mutex_unlock(&e->stats_mu);
    if (req->t_first_token_ns == 0) req->t_first_token_ns = now;
    return check_stop(e, req, j->k);
}

/* First token of an n > 1 request: the other sequences share the prompt's
 * blocks (the partial last block copied) and each samples its own first
 * token from the same logits. A child that finds no free block, or no
 * running slot under max_num_seqs, is queued to recompute its prompt
 * instead (its prefix is then found in the cache); the scheduler admits it
 * when a slot frees, so n > 1 never runs more than max_num_seqs sequences. */
static int fork_children(cv_engine *e, request *req)
{
    cv_seq *parent = req->seqs[0].seq;
    req->forked = true;
    for (int k = 1; k < req->n_seqs; k++) {
        cv_seq *child = seq_clone(parent, e->next_seq_id++);
        if (!child) return -1;
        child->index = k;
        req->seqs[k].seq = child;
        int32_t src, dst;
        int r = -1;
        if (e->sched.running.n < e->sched.max_num_seqs)
            r = bm_fork(e->bm, parent, child, &src, &dst);
        else
            child->n_computed = 0;
        if (r == 1 && cv_device_backend_kv_copy(e->backend, &src, &dst, 1, &e->step_err) < 0)
            return -1;
        if ((r >= 0 ? sched_add_running(&e->sched, child) : sched_add(&e->sched, child, true)) < 0)
            return -1;
    }
    return 0;
}

static void fill_prompt_logprobs(cv_engine *e, request *req, int start, int n_new,
                                 const float *rows)
{
    for (int j = 0; j < n_new; j++) {
        int p = start + j; /* logits at p predict prompt token p + 1 */
        if (p + 1 >= req->n_prompt || p + 1 < req->prompt_lps_done) continue;
        sample_logprobs lp;
        sampler_logprobs(e->samplers[0], rows + (size_t)j * e->vocab, req->prompt[p + 1],
                         req->params.prompt_logprobs, &lp);
        if (engine_make_logprobs(e, &lp, &req->prompt_lps[p + 1]) < 0)
            return; /* the entry stays empty; nothing else depends on it */
        req->prompt_lps_done = p + 2;
    }
}

/* Marks a scheduled chunk computed; queues the sequences whose next token
 * is due (forking an n > 1 request's children first). */
static int process_entry(cv_engine *e, const sched_entry *en, int first_row, int n_rows,
                         uint64_t now)
{
    cv_seq *s = en->seq;
    request *req = s->owner;
    int start = s->n_computed;
    bool prompt_rows = wants_prompt_rows(req, s);
    s->n_computed += en->n_new;
    bm_cache_computed(e->bm, s);
    const float *rows = e->logits + (size_t)first_row * e->vocab;
    if (prompt_rows) fill_prompt_logprobs(e, req, start, en->n_new, rows);
    if (req->t_scheduled_ns == 0) {
        req->t_scheduled_ns = now;
        pthread_mutex_lock(&e->stats_mu);
        hist_observe(&e->stats.queue_time_s, cv_ns_to_s(now - req->t_arrival_ns));
        pthread_mutex_unlock(&e->stats_mu);
    }
    if (s->n_computed < s->n_tokens || n_rows == 0) return 0;
    const float *last = rows + (size_t)(n_rows - 1) * e->vocab;
    req->touched = true;
    if (req->forked) return push_job(e, req, s->index, last);
    if (fork_children(e, req) < 0) return -1;
    for (int k = 0; k < req->n_seqs; k++) {
        cv_seq *c = req->seqs[k].seq;
        if (c->status == SEQ_RUNNING && c->n_computed == c->n_tokens &&
            push_job(e, req, k, last) < 0)
            return -1;
    }
    return 0;
}

void engine_update_gauges(cv_engine *e)
{
    pthread_mutex_lock(&e->stats_mu);
    cv_engine_stats *st = &e->stats;
    if (e->lora) {
        engine_lora_names(e, &e->sched.running, st->running_lora_adapters,
                          sizeof st->running_lora_adapters);
        engine_lora_names(e, &e->sched.waiting, st->waiting_lora_adapters,
                          sizeof st->waiting_lora_adapters);
    }
    st->n_running = e->sched.running.n;
    st->n_waiting = e->sched.waiting.n;
    st->n_swapped = 0;
    st->kv_blocks_free = bm_n_free(e->bm);
    st->kv_usage = 1.0 - (double)st->kv_blocks_free / (double)e->n_blocks;
    pthread_mutex_unlock(&e->stats_mu);
}

static void count_schedule(cv_engine *e, const sched_output *so)
{
    pthread_mutex_lock(&e->stats_mu);
    e->stats.preemptions_total += (uint64_t)so->n_preempted;
    e->stats.prefix_cache_queries += (uint64_t)so->cache_queried_tokens;
    e->stats.prefix_cache_hits += (uint64_t)so->cache_hit_tokens;
    pthread_mutex_unlock(&e->stats_mu);
}

#ifdef CVLLM_FAULT_INJECTION
/* Test builds: CVLLM_FAULT_FAIL_STEP="<text>:<n>" fails the n-th step (from
 * 1) of every engine whose model path contains <text>, as a backend error
 * would (CUDA out of memory, a lost device), so that tests can watch the
 * model turn unhealthy while the others keep serving. */
static bool fault_injected(cv_engine *e)
{
    const char *spec = getenv("CVLLM_FAULT_FAIL_STEP");
    const char *colon = spec ? strrchr(spec, ':') : NULL;
    if (!colon) return false;
    e->n_steps_run++;
    char text[256];
    snprintf(text, sizeof text, "%.*s", (int)(colon - spec), spec);
    if (!strstr(e->args.model, text) || e->n_steps_run != strtoll(colon + 1, NULL, 10))
        return false;
    cv_errorf(&e->step_err, "injected fault: step %lld failed (CVLLM_FAULT_FAIL_STEP)",
              (long long)e->n_steps_run);
    return true;
}
#endif

/* Adds a step's phases to e->step_log; every 10 s of steps, with verbose
 * logging on, says where the time went (after the forward: taking the
 * tokens, i.e. sampling, detokenizing and stop checks, until t_out, then
 * handing the outputs to their requests). */
static void log_step(cv_engine *e, int n_tokens, uint64_t t_step, uint64_t t_fwd, uint64_t t_post,
                     uint64_t t_out)
{
    uint64_t end = cv_now_ns();
    if (e->step_log.t0_ns == 0) e->step_log.t0_ns = t_step;
    e->step_log.steps++;
    e->step_log.tokens += n_tokens;
    e->step_log.before_s += cv_ns_to_s(t_fwd - t_step);
    e->step_log.forward_s += cv_ns_to_s(t_post - t_fwd);
    e->step_log.after_s += cv_ns_to_s(end - t_post);
    e->step_log.outputs_s += cv_ns_to_s(end - t_out);
    double span = cv_ns_to_s(end - e->step_log.t0_ns);
    if (span < 10.0) return;
    double n = (double)e->step_log.steps;
    cv_log_verbose(
        "engine: %lld steps in %.1f s (%.0f tokens/step): %.3f ms before the forward, "
        "%.3f ms in it, %.3f ms after it (%.3f of it handing out outputs) per step; idle %.0f%%",
        (long long)e->step_log.steps, span, (double)e->step_log.tokens / n,
        e->step_log.before_s / n * 1e3, e->step_log.forward_s / n * 1e3,
        e->step_log.after_s / n * 1e3, e->step_log.outputs_s / n * 1e3,
        100.0 *
            (1.0 - (e->step_log.before_s + e->step_log.forward_s + e->step_log.after_s) / span));
    memset(&e->step_log, 0, sizeof e->step_log);
}

/* Starts computing, on the prefetch thread, the masks of the constrained
 * sequences that sample after this step's forward, so that first visits
 * of automaton states overlap the forward (issue 14). Best effort: when no
 * thread or memory is had, draw_all computes them as before. */
static void prefetch_masks(cv_engine *e, const sched_output *so)
{
    int n = 0;
    for (int i = 0; i < so->n_entries; i++) {
        const cv_seq *s = so->entries[i].seq;
        const request *req = s->owner;
        n += req->grammar && s->n_computed + so->entries[i].n_new >= s->n_tokens;
    }
    if (n == 0) return;
    if (!e->so_prefetch && !(e->so_prefetch = so_prefetch_create(e->n_samplers))) return;
    so_grammar **g = malloc((size_t)n * sizeof(*g));
    so_state *st = malloc((size_t)n * sizeof(*st));
    n = 0;
    for (int i = 0; g && st && i < so->n_entries; i++) {
        const cv_seq *s = so->entries[i].seq;
        const request *req = s->owner;
        if (!req->grammar || s->n_computed + so->entries[i].n_new < s->n_tokens) continue;
        g[n] = req->grammar;
        st[n++] = req->seqs[s->index].so;
    }
    if (g && st) (void)so_prefetch_start(e->so_prefetch, g, st, n);
    free(g);
    free(st);
}

int engine_step(cv_engine *e)
{
    uint64_t t_step = cv_now_ns();
    e->step_err.msg[0] = '\0';
#ifdef CVLLM_FAULT_INJECTION
    if (fault_injected(e)) return -1;
#endif
    sched_output so;
    if (sched_schedule(&e->sched, &so) < 0) return -1;
    count_schedule(e, &so);
    if (so.n_entries == 0) return 0;
    if (engine_lora_hold(e, &so) < 0) return -1;
    if (so.n_entries == 0) {
        engine_update_gauges(e);
        return 0;
    }
    cv_batch batch;
    const int built = build_batch(e, &so, &batch);
    engine_lora_release_step(e);
    if (built < 0) return -1;
    int64_t prompt_computed = 0;
    for (int i = 0; i < so.n_entries; i++) {
        const cv_seq *s = so.entries[i].seq;
        int end = s->n_computed + so.entries[i].n_new;
        int upto = end < s->n_prompt ? end : s->n_prompt;
        if (upto > s->n_computed) prompt_computed += upto - s->n_computed;
    }
    uint64_t t_fwd = cv_now_ns();
    const cv_greedy_rows greedy = {.want = e->g_want,
                                   .token = e->g_token,
                                   .logprob = e->g_logprob,
                                   .rank = e->g_rank,
                                   .sample = e->g_sample,
                                   .top_ids = e->g_top_ids,
                                   .top_logprobs = e->g_top_lps};
    prefetch_masks(e, &so);
    const int fwd = cv_device_backend_forward(e->backend, &batch, e->logits, &greedy, &e->step_err);
    if (e->so_prefetch) so_prefetch_wait(e->so_prefetch);
    if (fwd < 0) return -1;
    e->greedy_filled = fwd == 1;
    uint64_t now = cv_now_ns();
    e->n_jobs = 0;
    for (int i = 0; i < so.n_entries; i++)
        if (process_entry(e, &so.entries[i], e->e_first_row[i], e->e_n_rows[i], now) < 0) return -1;
    if (draw_all(e) < 0) return -1;
    for (int i = 0; i < e->n_jobs; i++)
        if (apply_job(e, &e->jobs[i], now) < 0) return -1;
    const uint64_t t_out = cv_now_ns();
    pthread_mutex_lock(&e->stats_mu);
    e->stats.prompt_tokens_computed += (uint64_t)prompt_computed;
    e->stats.forward_s_total += cv_ns_to_s(now - t_fwd);
    e->stats.steps_total++;
    /* Counted before outputs go out, so a caller woken by the last output
     * of a step already sees that step's time. */
    e->stats.step_s_total += cv_ns_to_s(cv_now_ns() - t_step);
    pthread_mutex_unlock(&e->stats_mu);
    for (request *req = e->active, *next; req; req = next) {
        next = req->next;
        if (!req->touched) continue;
        req->touched = false;
        bool finished = req->n_finished == req->n_seqs;
        if (req->t_last_token_ns) {
            pthread_mutex_lock(&e->stats_mu);
            hist_observe(&e->stats.time_per_output_token_s, cv_ns_to_s(now - req->t_last_token_ns));
            pthread_mutex_unlock(&e->stats_mu);
        }
        req->t_last_token_ns = now;
        /* Counted before the final output goes out, so a client that
         * scrapes the metrics right after its response sees it. */
        if (finished) engine_count_finished(e, req);
        engine_emit(e, req, finished);
        if (finished) engine_retire(e, req);
    }
    engine_update_gauges(e);
    if (cv_log_get_level() >= CV_LOG_VERBOSE)
        log_step(e, batch.n_tokens, t_step, t_fwd, now, t_out);
    return 0;
}

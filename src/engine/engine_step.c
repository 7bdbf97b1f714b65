/* One engine step: schedule, flatten into a step for the runner, submit it,
 * then take the tokens of the step before it (async_scheduling) or of
 * itself, detokenize, check stops, deliver outputs. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* Grows a step buffer's arrays to n_tokens tokens and n_seqs sequences.
 * After a failed realloc some arrays may be larger than recorded; the next
 * call grows them again, which is harmless. */
static int reserve_step(step_buf *sb, int n_tokens, int n_seqs, int max_blocks)
{
    if (n_tokens > sb->cap_tokens) {
        int c = next_cap(sb->cap_tokens, n_tokens);
        if (resize(&sb->tokens, c, sizeof(int32_t)) || resize(&sb->positions, c, sizeof(int32_t)) ||
            resize(&sb->slots, c, sizeof(int64_t)) || resize(&sb->logits_idx, c, sizeof(int32_t)) ||
            resize(&sb->want, c, 1) || resize(&sb->token, c, sizeof(int32_t)) ||
            resize(&sb->rank, c, sizeof(int32_t)) || resize(&sb->logprob, c, sizeof(float)) ||
            resize(&sb->sample, c, sizeof(cv_sample_row)) ||
            resize(&sb->top_ids, c, CV_MAX_LOGPROBS * sizeof(int32_t)) ||
            resize(&sb->top_lps, c, CV_MAX_LOGPROBS * sizeof(float)))
            return -1;
        sb->cap_tokens = c;
    }
    if (n_seqs + 1 > sb->cap_seqs) {
        int c = next_cap(sb->cap_seqs, n_seqs + 1);
        if (resize(&sb->query_start, c, sizeof(int32_t)) ||
            resize(&sb->seq_lens, c, sizeof(int32_t)) ||
            resize(&sb->entries, c, sizeof(step_entry)) ||
            resize(&sb->lora_slots, c, sizeof(int32_t)) ||
            resize(&sb->fill_at, 2 * c, sizeof(int32_t *)) ||
            resize(&sb->fill_row, 2 * c, sizeof(int32_t)))
            return -1;
        sb->cap_seqs = c;
    }
    return grow((void **)&sb->block_tables, &sb->cap_tables, n_seqs * max_blocks, sizeof(int32_t));
}

void engine_steps_free(cv_engine *e)
{
    for (int i = 0; i < 2; i++) {
        step_buf *sb = &e->steps[i];
        free(sb->entries);
        free(sb->tokens);
        free(sb->positions);
        free(sb->query_start);
        free(sb->seq_lens);
        free(sb->block_tables);
        free(sb->logits_idx);
        free(sb->slots);
        free(sb->lora_slots);
        free(sb->fill_at);
        free(sb->fill_row);
        free(sb->hist);
        free(sb->want);
        free(sb->sample);
        free(sb->token);
        free(sb->rank);
        free(sb->top_ids);
        free(sb->logprob);
        free(sb->top_lps);
        free(sb->logits);
        free(sb->lora_drop);
    }
    memset(e->steps, 0, sizeof e->steps);
}

/* Does this step's chunk of seq need one logits row per token (prompt
 * logprobs still missing for positions it covers)? */
static bool wants_prompt_rows(const request *req, const cv_seq *s)
{
    return req->prompt_lps && s->index == 0 && req->prompt_lps_done < req->n_prompt &&
           s->n_computed < req->n_prompt;
}

/* Output tokens of s, the one a step in flight samples included. */
static int n_output(const cv_seq *s)
{
    return s->n_tokens + s->n_pending - s->n_prompt;
}

static bool penalized(const cv_sampling_params *p)
{
    return p->repetition_penalty != 1.0f || p->frequency_penalty != 0.0f ||
           p->presence_penalty != 0.0f;
}

/* Is the next token of s all its logits row is for, and greedy (the
 * sampler's plain_greedy with no logprobs list)? Then a GPU backend may
 * pick it and send 12 bytes instead of the row. */
static bool greedy_row(const request *req, const cv_seq *s)
{
    const cv_sampling_params *p = &req->params;
    /* A constrained row needs its mask applied on the CPU first. */
    return !req->grammar && p->temperature < CV_SAMPLING_EPS && !penalized(p) && p->logprobs <= 0 &&
           (n_output(s) >= p->min_tokens || req->n_mask_ids == 0);
}

_Static_assert((int)CV_MAX_LOGPROBS == (int)CV_SAMPLE_MAX_TOP,
               "a device-sampled row returns the engine's longest logprobs list");

/* What the runner returns for the row of s's next token (CV_ROW_*): its
 * greedy choice as above; else a token sampled by the backend or the
 * runner, unless a grammar's mask applies (it is built here) or the row is
 * an n > 1 request's first, which every sequence samples with its own
 * stream. */
static uint8_t row_kind(const request *req, const cv_seq *s)
{
    if (greedy_row(req, s)) return CV_ROW_GREEDY;
    if (req->grammar || (!req->forked && req->n_seqs > 1)) return CV_ROW_LOGITS;
    return CV_ROW_SAMPLE;
}

/* The sampler's request (draw's sample_request) for the runner. */
static cv_sample_row sample_row(const request *req, const cv_seq *s)
{
    const cv_sampling_params *p = &req->params;
    const int n_out = n_output(s);
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

/* Is the token a step samples for s certainly its last (max_tokens or
 * max_model_len, counting that token)? */
static bool last_token(const cv_engine *e, const request *req, const cv_seq *s)
{
    return n_output(s) + 1 >= req->max_tokens || s->n_tokens + s->n_pending + 1 >= e->max_model_len;
}

/* A placeholder: *at gets the token the step in flight chose for s. */
static void add_fill(step_buf *sb, int *n_fill, int32_t *at, const cv_seq *s)
{
    *at = 0;
    sb->fill_at[*n_fill] = at;
    sb->fill_row[(*n_fill)++] = s->pending_row;
}

/* A penalized SAMPLE row's token list, copied into the step (the runner
 * reads it while the engine appends to the sequence's), its pending token
 * a placeholder. */
static void copy_history(step_buf *sb, int *hist_used, int *n_fill, cv_seq *s, cv_sample_row *row)
{
    int32_t *h = sb->hist + *hist_used;
    memcpy(h, s->tokens, (size_t)s->n_tokens * sizeof(int32_t));
    if (s->n_pending) add_fill(sb, n_fill, h + s->n_tokens, s);
    row->tokens = h;
    row->n_tokens = s->n_tokens + s->n_pending;
    *hist_used += row->n_tokens;
}

/* Lays out one scheduled sequence's tokens and rows in the step, and
 * advances it as submitted: n_computed now counts the chunk, and the token
 * the step samples is pending until the step's outputs are handed out. */
static void build_entry(cv_engine *e, step_buf *sb, int i, const sched_entry *se, int max_blocks,
                        int *t, int *rows, int *n_fill, int *hist_used, bool *blocking)
{
    cv_seq *s = se->seq;
    request *req = s->owner;
    const int bs = e->block_size, n_new = se->n_new, start = s->n_computed;
    sb->query_start[i] = *t;
    for (int j = 0; j < n_new; j++, (*t)++) {
        const int p = start + j;
        if (p < s->n_tokens)
            sb->tokens[*t] = s->tokens[p];
        else
            add_fill(sb, n_fill, &sb->tokens[*t], s); /* the step in flight samples it */
        sb->positions[*t] = p;
        sb->slots[*t] = (int64_t)s->block_table[p / bs] * bs + p % bs;
    }
    sb->seq_lens[i] = start + n_new;
    int32_t *table = sb->block_tables + (size_t)i * max_blocks;
    memcpy(table, s->block_table, (size_t)s->n_blocks * sizeof(int32_t));
    for (int j = s->n_blocks; j < max_blocks; j++)
        table[j] = 0; /* never read: seq_lens bounds the context */
    step_entry *en = &sb->entries[i];
    *en = (step_entry){.seq = s,
                       .start = start,
                       .n_new = n_new,
                       .first_row = *rows,
                       .epoch = s->epoch,
                       .prompt_rows = wants_prompt_rows(req, s)};
    if (en->prompt_rows) {
        for (int j = 0; j < n_new; j++) {
            sb->want[*rows] = CV_ROW_LOGITS;
            sb->logits_idx[(*rows)++] = sb->query_start[i] + j;
        }
    }
    en->samples = start + n_new == s->n_tokens + s->n_pending;
    if (en->samples && !en->prompt_rows) {
        const uint8_t kind = row_kind(req, s);
        sb->want[*rows] = kind;
        if (kind == CV_ROW_SAMPLE) {
            sb->sample[*rows] = sample_row(req, s);
            if (penalized(&req->params)) copy_history(sb, hist_used, n_fill, s, &sb->sample[*rows]);
        }
        sb->logits_idx[(*rows)++] = *t - 1;
    }
    en->n_rows = *rows - en->first_row;
    s->n_computed = start + n_new;
    bm_cache_computed(e->bm, s);
    req->n_in_steps++;
    if (en->samples) {
        /* May the next step decode the token this one samples before it is
         * known (async_scheduling)? Only where the runner chooses it and it
         * is not the last: a LOGITS row's token is sampled here after the
         * step, and its sequence sits the next step out (a prompt logprobs
         * chunk's end, once). A grammar's every token is such a token: rather
         * than run constrained requests at half their rate, the step is
         * handed out before the next is scheduled; so is an n > 1 request's
         * first, whose fork copies KV blocks (the runner must be idle). */
        const uint8_t kind = en->prompt_rows ? CV_ROW_LOGITS : sb->want[*rows - 1];
        const bool last = last_token(e, req, s);
        s->run_ahead = e->args.async_scheduling && kind != CV_ROW_LOGITS && !last;
        *blocking |= (req->grammar && !last) || (!req->forked && req->n_seqs > 1);
        s->pending_row = *rows - 1;
        s->n_pending++;
    }
}

/* Builds the step of so in sb. *blocking: the step's outputs must be
 * handed out before the following step is scheduled. */
static int build_step(cv_engine *e, const sched_output *so, step_buf *sb, bool *blocking)
{
    int max_blocks = 1;
    for (int i = 0; i < so->n_entries; i++)
        if (so->entries[i].seq->n_blocks > max_blocks) max_blocks = so->entries[i].seq->n_blocks;
    if (reserve_step(sb, so->n_tokens, so->n_entries, max_blocks) < 0) return -1;
    /* Room for every penalized sequence's token list, so that pointers
     * into it stay valid. */
    int hist_need = 0;
    for (int i = 0; i < so->n_entries; i++) {
        const cv_seq *s = so->entries[i].seq;
        if (penalized(&((const request *)s->owner)->params))
            hist_need += s->n_tokens + s->n_pending;
    }
    if (grow((void **)&sb->hist, &sb->cap_hist, hist_need, sizeof(int32_t)) < 0) return -1;
    bool lora = false;
    if (engine_lora_assign(e, so, sb->lora_slots, &lora) < 0) return -1;
    int t = 0, rows = 0, n_fill = 0, hist_used = 0;
    sb->prompt_computed = 0;
    *blocking = false;
    for (int i = 0; i < so->n_entries; i++) {
        const cv_seq *s = so->entries[i].seq;
        const int end = s->n_computed + so->entries[i].n_new;
        const int upto = end < s->n_prompt ? end : s->n_prompt;
        if (upto > s->n_computed) sb->prompt_computed += upto - s->n_computed;
        build_entry(e, sb, i, &so->entries[i], max_blocks, &t, &rows, &n_fill, &hist_used,
                    blocking);
    }
    sb->query_start[so->n_entries] = t;
    sb->n_entries = so->n_entries;
    if (rows > sb->cap_logits_rows) {
        float *l = realloc(sb->logits, (size_t)rows * (size_t)e->vocab * sizeof(float));
        if (!l) return -1;
        sb->logits = l;
        sb->cap_logits_rows = rows;
    }
    sb->step = (cv_step){
        .batch =
            {
                .n_tokens = t,
                .token_ids = sb->tokens,
                .positions = sb->positions,
                .slot_mapping = sb->slots,
                .n_seqs = so->n_entries,
                .query_start = sb->query_start,
                .seq_lens = sb->seq_lens,
                .block_tables = sb->block_tables,
                .max_blocks_per_seq = max_blocks,
                .n_logits = rows,
                .logits_indices = sb->logits_idx,
                .lora_slots = lora ? sb->lora_slots : NULL,
            },
        .want = sb->want,
        .sample = sb->sample,
        .n_fill = n_fill,
        .fill_at = sb->fill_at,
        .fill_row = sb->fill_row,
        .logits = sb->logits,
        .token = sb->token,
        .logprob = sb->logprob,
        .rank = sb->rank,
        .top_ids = sb->top_ids,
        .top_logprobs = sb->top_lps,
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
 * and what came out. */
typedef struct sample_job {
    request *req;
    int k;                /* sequence index in req */
    int row;              /* logits row of the step */
    const uint32_t *mask; /* structured output: the allowed tokens, NULL = all */
    int32_t token;
    sample_logprobs lp;
} sample_job;

static int push_job(cv_engine *e, request *req, int k, int row)
{
    if (grow((void **)&e->jobs, &e->cap_jobs, e->n_jobs + 1, sizeof(sample_job)) < 0) return -1;
    e->jobs[e->n_jobs++] = (sample_job){.req = req, .k = k, .row = row};
    return 0;
}

/* The runner's choice for a GREEDY or SAMPLE row. */
static void take_choice(const cv_engine *e, const step_buf *sb, sample_job *j)
{
    const int row = j->row;
    j->token = sb->token[row];
    j->lp =
        (sample_logprobs){.token = j->token, .logprob = sb->logprob[row], .rank = sb->rank[row]};
    if (sb->want[row] != CV_ROW_SAMPLE) return;
    const int n = sb->sample[row].n_top < e->vocab ? sb->sample[row].n_top : e->vocab;
    memcpy(j->lp.top_ids, sb->top_ids + (size_t)row * CV_MAX_LOGPROBS, (size_t)n * sizeof(int32_t));
    memcpy(j->lp.top_logprobs, sb->top_lps + (size_t)row * CV_MAX_LOGPROBS,
           (size_t)n * sizeof(float));
    j->lp.n_top = n;
}

/* Every job's token: copied where the runner chose it, else sampled here
 * from its row through the runner's host samplers (grammar masks first, on
 * this thread: a grammar builds its states lazily). */
static int draw_all(cv_engine *e, const step_buf *sb)
{
    int n_host = 0;
    for (int i = 0; i < e->n_jobs; i++) {
        sample_job *j = &e->jobs[i];
        if (j->req->grammar && !(j->mask = so_mask(j->req->grammar, j->req->seqs[j->k].so)))
            return -1;
        n_host += sb->want[j->row] == CV_ROW_LOGITS;
    }
    if (n_host > e->cap_draws &&
        grow((void **)&e->draws, &e->cap_draws, n_host, sizeof(cv_runner_draw)) < 0)
        return -1;
    n_host = 0;
    for (int i = 0; i < e->n_jobs; i++) {
        sample_job *j = &e->jobs[i];
        if (sb->want[j->row] != CV_ROW_LOGITS) {
            take_choice(e, sb, j);
            continue;
        }
        const seq_state *ss = &j->req->seqs[j->k];
        const cv_sampling_params *p = &j->req->params;
        e->draws[n_host++] = (cv_runner_draw){
            .req = {.params = p,
                    .logits = sb->logits + (size_t)j->row * e->vocab,
                    .tokens = ss->seq->tokens,
                    .n_prompt = ss->seq->n_prompt,
                    .n_tokens = ss->seq->n_tokens,
                    .seed = ss->rng_seed,
                    .stop_ids = j->req->mask_ids,
                    .n_stop_ids = j->req->n_mask_ids,
                    .allowed = j->mask},
            .n_top = p->logprobs > 0 ? p->logprobs : 0,
        };
    }
    cv_runner_sample(e->runner, e->draws, n_host);
    n_host = 0;
    for (int i = 0; i < e->n_jobs; i++) {
        sample_job *j = &e->jobs[i];
        if (sb->want[j->row] != CV_ROW_LOGITS) continue;
        j->token = e->draws[n_host].token;
        j->lp = e->draws[n_host++].lp;
    }
    return 0;
}

/* Appends a drawn token with its logprobs, then checks for a stop. */
static int apply_job(cv_engine *e, const sample_job *j, uint64_t now)
{
    request *req = j->req;
    seq_state *ss = &req->seqs[j->k];
    if (seq_append_token(ss->seq, j->token) < 0) return -1;
    if (ss->seq->n_pending > 0) ss->seq->n_pending--;
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
 * when a slot frees, so n > 1 never runs more than max_num_seqs sequences.
 * The parent's row is a LOGITS row, so no step is in flight here (the
 * runner refuses the copy otherwise). */
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
        child->n_pending = r >= 0 ? parent->n_pending : 0; /* its first token comes now */
        if (r == 1 && cv_runner_kv_copy(e->runner, &src, &dst, 1, &e->step_err) < 0) return -1;
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
        cv_runner_logprobs(e->runner, rows + (size_t)j * e->vocab, req->prompt[p + 1],
                           req->params.prompt_logprobs, &lp);
        if (engine_make_logprobs(e, &lp, &req->prompt_lps[p + 1]) < 0)
            return; /* the entry stays empty; nothing else depends on it */
        req->prompt_lps_done = p + 2;
    }
}

/* Whether an entry still stands: its sequence neither finished (a stop in
 * the step before) nor was preempted since the step was built. */
static bool entry_live(const step_entry *en)
{
    return en->seq->status == SEQ_RUNNING && en->seq->epoch == en->epoch;
}

/* Takes a computed chunk's prompt logprobs and queues the sequences whose
 * next token is due (forking an n > 1 request's children first). */
static int process_entry(cv_engine *e, const step_buf *sb, const step_entry *en, uint64_t now)
{
    cv_seq *s = en->seq;
    request *req = s->owner;
    const float *rows = sb->logits + (size_t)en->first_row * e->vocab;
    if (en->prompt_rows) fill_prompt_logprobs(e, req, en->start, en->n_new, rows);
    if (req->t_scheduled_ns == 0) {
        req->t_scheduled_ns = now;
        pthread_mutex_lock(&e->stats_mu);
        hist_observe(&e->stats.queue_time_s, cv_ns_to_s(now - req->t_arrival_ns));
        pthread_mutex_unlock(&e->stats_mu);
    }
    if (!en->samples || en->n_rows == 0) return 0;
    const int last = en->first_row + en->n_rows - 1;
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
 * logging on, says where the time went: on the engine thread, building
 * the step (schedule, batch, submit), waiting for the runner, and taking
 * its tokens (sampling the host's rows, detokenizing, stop checks) then
 * handing the outputs to their requests; on the runner, the step itself,
 * and of that, where the backend times it, the device's own span (the rest
 * is the host preparing, launching and collecting the step while the device
 * waits). The device's share of the wall time is what async_scheduling
 * raises. */
static void log_step(cv_engine *e, const step_buf *sb, uint64_t t_waited, uint64_t t_out)
{
    const uint64_t end = cv_now_ns();
    if (e->step_log.t0_ns == 0) e->step_log.t0_ns = sb->t_start_ns;
    e->step_log.steps++;
    const cv_batch *bt = &sb->step.batch;
    e->step_log.tokens += bt->n_tokens;
    int64_t chunks = 0;
    for (int s = 0; s < bt->n_seqs; s++) {
        const int len = bt->query_start[s + 1] - bt->query_start[s];
        if (len == 1) {
            e->step_log.decode_rows++;
        } else {
            chunks++;
            e->step_log.chunk_tokens += len;
        }
    }
    e->step_log.chunks += chunks;
    e->step_log.mixed_steps += chunks > 0;
    e->step_log.before_s += cv_ns_to_s(sb->t_submit_ns - sb->t_start_ns);
    e->step_log.forward_s += sb->step.forward_s;
    e->step_log.device_s += sb->step.device_s;
    e->step_log.wait_s += cv_ns_to_s(t_waited - sb->t_wait_ns);
    e->step_log.after_s += cv_ns_to_s(end - t_waited);
    e->step_log.outputs_s += cv_ns_to_s(end - t_out);
    const double span = cv_ns_to_s(end - e->step_log.t0_ns);
    if (span < 10.0) return;
    const double n = (double)e->step_log.steps;
    /* Where the backend does not time the device apart, all of a forward is. */
    const double device_s = e->step_log.device_s > 0 ? e->step_log.device_s : e->step_log.forward_s;
    /* The composition tells a batching change from a speed change. */
    cv_log_verbose("engine: %lld steps in %.1f s (%.0f tokens/step: %.1f decode rows, %.2f "
                   "prefill chunks of %.0f tokens, %.0f%% of steps with a chunk): per step %.3f "
                   "ms building it, %.3f ms waiting for it, %.3f ms taking its tokens (%.3f of it "
                   "handing out outputs); %.3f ms running it (%.3f ms of it the device's own), "
                   "the device busy %.0f%% of the time",
                   (long long)e->step_log.steps, span, (double)e->step_log.tokens / n,
                   (double)e->step_log.decode_rows / n, (double)e->step_log.chunks / n,
                   e->step_log.chunks ? (double)e->step_log.chunk_tokens / e->step_log.chunks : 0.0,
                   100.0 * (double)e->step_log.mixed_steps / n, e->step_log.before_s / n * 1e3,
                   e->step_log.wait_s / n * 1e3, e->step_log.after_s / n * 1e3,
                   e->step_log.outputs_s / n * 1e3, e->step_log.forward_s / n * 1e3,
                   device_s / n * 1e3, 100.0 * device_s / span);
    memset(&e->step_log, 0, sizeof e->step_log);
}

/* Starts computing, on the prefetch thread, the masks of the constrained
 * sequences that sample after sb's forward, so that first visits of
 * automaton states overlap the forward (issue 14). Best effort: when no
 * thread or memory is had, draw_all computes them as before. Called with no
 * other step's masks being computed or used. */
static void prefetch_masks(cv_engine *e, const step_buf *sb)
{
    int n = 0;
    for (int i = 0; i < sb->n_entries; i++)
        n += sb->entries[i].samples && ((const request *)sb->entries[i].seq->owner)->grammar;
    if (n == 0) return;
    if (!e->so_prefetch) {
        /* As many mask workers as the engine has threads (every core by
         * default): masks of different grammars run in parallel. */
        const long cores = sysconf(_SC_NPROCESSORS_ONLN);
        const int n_workers = e->args.n_threads > 0 ? e->args.n_threads
                              : cores > 0           ? (int)cores
                                                    : 1;
        if (!(e->so_prefetch = so_prefetch_create(n_workers))) return;
    }
    so_grammar **g = malloc((size_t)n * sizeof(*g));
    so_state *st = malloc((size_t)n * sizeof(*st));
    n = 0;
    for (int i = 0; g && st && i < sb->n_entries; i++) {
        const cv_seq *s = sb->entries[i].seq;
        const request *req = s->owner;
        if (!req->grammar || !sb->entries[i].samples) continue;
        g[n] = req->grammar;
        st[n++] = req->seqs[s->index].so;
    }
    if (g && st) (void)so_prefetch_start(e->so_prefetch, g, st, n);
    free(g);
    free(st);
}

/* Drops the step's hold on its requests, retiring those that finished
 * while it ran. */
static void release_entries(cv_engine *e, const step_buf *sb)
{
    for (int i = 0; i < sb->n_entries; i++) {
        request *req = sb->entries[i].seq->owner;
        if (--req->n_in_steps == 0 && req->retire_deferred) engine_retire(e, req);
    }
}

/* Waits for sb's step and hands out its outputs: tokens appended, stops
 * checked, deltas delivered, finished requests retired. */
static int process_step(cv_engine *e, step_buf *sb)
{
    sb->t_wait_ns = cv_now_ns();
    const int rc = cv_runner_wait(e->runner, &sb->step, &e->step_err);
    if (e->so_prefetch) so_prefetch_wait(e->so_prefetch);
    if (rc < 0) return -1;
    const uint64_t now = cv_now_ns();
    e->n_jobs = 0;
    for (int i = 0; i < sb->n_entries; i++)
        if (entry_live(&sb->entries[i]) && process_entry(e, sb, &sb->entries[i], now) < 0)
            return -1;
    if (draw_all(e, sb) < 0) return -1;
    for (int i = 0; i < e->n_jobs; i++)
        if (apply_job(e, &e->jobs[i], now) < 0) return -1;
    const uint64_t t_out = cv_now_ns();
    pthread_mutex_lock(&e->stats_mu);
    e->stats.prompt_tokens_computed += (uint64_t)sb->prompt_computed;
    e->stats.forward_s_total += sb->step.forward_s;
    e->stats.device_s_total += sb->step.device_s;
    e->stats.steps_total++;
    /* Counted before outputs go out, so a caller woken by the last output
     * of a step already sees that step's time. */
    e->stats.step_s_total +=
        cv_ns_to_s(sb->t_submit_ns - sb->t_start_ns) + cv_ns_to_s(cv_now_ns() - now);
    pthread_mutex_unlock(&e->stats_mu);
    /* The gauges too: the sequences that finished left the running list. */
    engine_update_gauges(e);
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
        /* Retired once no step holds it (release_entries): the step after
         * this one may still compute for its sequences. */
        if (finished) req->retire_deferred = true;
    }
    release_entries(e, sb);
    engine_lora_drop_after(e, sb);
    if (cv_log_get_level() >= CV_LOG_VERBOSE) log_step(e, sb, now, t_out);
    return 0;
}

int engine_finish_in_flight(cv_engine *e)
{
    step_buf *sb = e->in_flight;
    if (!sb) return 0;
    e->in_flight = NULL;
    return process_step(e, sb);
}

int engine_step(cv_engine *e)
{
    const uint64_t t_step = cv_now_ns();
    e->step_err.msg[0] = '\0';
#ifdef CVLLM_FAULT_INJECTION
    if (fault_injected(e)) return -1;
#endif
    /* The step in flight samples tokens the next needs first (a grammar's,
     * an n > 1 request's first): it is handed out before scheduling. */
    if (e->in_flight && e->in_flight_blocks && engine_finish_in_flight(e) < 0) return -1;
    sched_output so;
    if (sched_schedule(&e->sched, &so) < 0) return -1;
    count_schedule(e, &so);
    if (so.n_entries > 0 && engine_lora_hold(e, &so) < 0) return -1;
    if (so.n_entries == 0) {
        engine_update_gauges(e);
        return engine_finish_in_flight(e);
    }
    step_buf *sb = e->building;
    sb->t_start_ns = t_step;
    bool blocking;
    const int built = build_step(e, &so, sb, &blocking);
    engine_lora_release_step(e);
    if (built < 0 || cv_runner_submit(e->runner, &sb->step, &e->step_err) < 0) return -1;
    sb->t_submit_ns = cv_now_ns();
    step_buf *prev = e->in_flight;
    if (prev) {
        pthread_mutex_lock(&e->stats_mu);
        e->stats.steps_ahead++;
        pthread_mutex_unlock(&e->stats_mu);
    }
    e->in_flight = sb;
    e->in_flight_blocks = blocking;
    e->building = sb == &e->steps[0] ? &e->steps[1] : &e->steps[0];
    /* Step N's outputs go out while step N+1 runs; then N+1's masks. */
    if (prev && process_step(e, prev) < 0) return -1;
    prefetch_masks(e, sb);
    return e->args.async_scheduling ? 0 : engine_finish_in_flight(e);
}

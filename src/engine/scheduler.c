/* Token-budget scheduling with chunked prefill and preemption by recompute
 * (see scheduler.h for the policy). */
#include <stdlib.h>
#include <string.h>

#include "scheduler.h"

static int list_insert(seq_list *l, int at, cv_seq *seq)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 16;
        cv_seq **items = realloc(l->items, (size_t)cap * sizeof(*items));
        if (!items) return -1;
        l->items = items;
        l->cap = cap;
    }
    memmove(l->items + at + 1, l->items + at, (size_t)(l->n - at) * sizeof(*l->items));
    l->items[at] = seq;
    l->n++;
    return 0;
}

static void list_remove_at(seq_list *l, int at)
{
    memmove(l->items + at, l->items + at + 1, (size_t)(l->n - at - 1) * sizeof(*l->items));
    l->n--;
}

static int list_find(const seq_list *l, const cv_seq *seq)
{
    for (int i = 0; i < l->n; i++)
        if (l->items[i] == seq) return i;
    return -1;
}

int sched_init(scheduler *s, block_manager *bm, int max_num_seqs, int max_num_batched_tokens)
{
    memset(s, 0, sizeof(*s));
    s->bm = bm;
    s->max_num_seqs = max_num_seqs;
    s->max_num_batched_tokens = max_num_batched_tokens;
    return 0;
}

void sched_fini(scheduler *s)
{
    free(s->waiting.items);
    free(s->running.items);
    free(s->entries);
    memset(s, 0, sizeof(*s));
}

int sched_add(scheduler *s, cv_seq *seq, bool front)
{
    seq->status = SEQ_WAITING;
    return list_insert(&s->waiting, front ? 0 : s->waiting.n, seq);
}

int sched_add_running(scheduler *s, cv_seq *seq)
{
    seq->status = SEQ_RUNNING;
    return list_insert(&s->running, s->running.n, seq);
}

void sched_remove(scheduler *s, cv_seq *seq)
{
    int i = list_find(&s->running, seq);
    if (i >= 0) {
        list_remove_at(&s->running, i);
    } else if ((i = list_find(&s->waiting, seq)) >= 0) {
        list_remove_at(&s->waiting, i);
    }
    bm_free_seq(s->bm, seq);
    seq->status = SEQ_FINISHED;
}

static int reserve_entries(scheduler *s)
{
    int need = s->running.n + s->waiting.n;
    if (need <= s->cap_entries) return 0;
    sched_entry *e = realloc(s->entries, (size_t)need * sizeof(*e));
    if (!e) return -1;
    s->entries = e;
    s->cap_entries = need;
    return 0;
}

/* Moves the last running sequence to the front of the waiting queue. The
 * insert cannot fail: waiting keeps capacity for every sequence (see
 * sched_schedule). */
static cv_seq *preempt_last(scheduler *s)
{
    cv_seq *victim = s->running.items[s->running.n - 1];
    s->running.n--;
    bm_free_seq(s->bm, victim);
    /* A token a step in flight samples for it is dropped: the recompute
     * samples it again (the same one, for a seeded request). */
    victim->n_pending = 0;
    victim->epoch++;
    sched_add(s, victim, true);
    return victim;
}

static int reserve_list(seq_list *l, int n)
{
    if (n <= l->cap) return 0;
    cv_seq **items = realloc(l->items, (size_t)n * sizeof(*items));
    if (!items) return -1;
    l->items = items;
    l->cap = n;
    return 0;
}

/* Tokens seq runs this step: what it has left (its pending token
 * included, when the step may run ahead of it), within the budget and its
 * own chunk limit. */
static int chunk_size(const cv_seq *seq, int budget)
{
    if (seq->n_pending && !seq->run_ahead) return 0;
    int n = seq->n_tokens + seq->n_pending - seq->n_computed;
    if (n > budget) n = budget;
    if (seq->max_chunk > 0 && n > seq->max_chunk) n = seq->max_chunk;
    return n;
}

static bool has_lora(const int *loras, int n, int id)
{
    for (int i = 0; i < n; i++)
        if (loras[i] == id) return true;
    return false;
}

int sched_schedule(scheduler *s, sched_output *out)
{
    memset(out, 0, sizeof(*out));
    int total = s->running.n + s->waiting.n;
    if (reserve_entries(s) < 0 || reserve_list(&s->waiting, total) < 0 ||
        reserve_list(&s->running, total) < 0)
        return -1;
    out->entries = s->entries;
    int budget = s->max_num_batched_tokens;

    for (int i = 0; i < s->running.n && budget > 0;) {
        cv_seq *seq = s->running.items[i];
        int n_new = chunk_size(seq, budget);
        if (n_new <= 0) {
            i++;
            continue;
        }
        bool self_preempted = false;
        while (bm_allocate(s->bm, seq, seq->n_computed + n_new) < 0) {
            cv_seq *victim = preempt_last(s);
            out->n_preempted++;
            if (victim == seq) {
                self_preempted = true;
                break;
            }
        }
        if (self_preempted) break;
        out->entries[out->n_entries++] = (sched_entry){seq, n_new};
        out->n_tokens += n_new;
        budget -= n_new;
        i++;
    }

    /* The adapters running now; admissions may add up to max_loras. */
    int loras[64], n_loras = 0;
    const int max_loras = s->max_loras < 64 ? s->max_loras : 64;
    for (int i = 0; i < s->running.n && n_loras < max_loras; i++) {
        const int id = s->running.items[i]->lora_id;
        if (id && !has_lora(loras, n_loras, id)) loras[n_loras++] = id;
    }
    for (int w = 0; out->n_preempted == 0 && w < s->waiting.n && budget > 0 &&
                    s->running.n < s->max_num_seqs;) {
        cv_seq *seq = s->waiting.items[w];
        const int lora = seq->lora_id;
        if (lora && !has_lora(loras, n_loras, lora)) {
            if (n_loras >= max_loras) {
                w++; /* its adapter must wait for a free slot */
                continue;
            }
        }
        int hits = seq->n_blocks == 0 ? bm_attach_cached_prefix(s->bm, seq) : 0;
        int n_new = chunk_size(seq, budget);
        if (bm_allocate(s->bm, seq, seq->n_computed + n_new) < 0) {
            bm_free_seq(s->bm, seq); /* give back the prefix hits until it fits */
            break;
        }
        list_remove_at(&s->waiting, w);
        sched_add_running(s, seq);
        if (lora && !has_lora(loras, n_loras, lora)) loras[n_loras++] = lora;
        out->cache_queried_tokens += seq->n_tokens;
        out->cache_hit_tokens += hits;
        out->entries[out->n_entries++] = (sched_entry){seq, n_new};
        out->n_tokens += n_new;
        budget -= n_new;
    }
    return 0;
}

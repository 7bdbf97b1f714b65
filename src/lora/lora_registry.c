/* The adapters one model serves: names to directories, an LRU of the ones
 * loaded in host memory (max_cpu_loras), and the slot assignment of each
 * step (max_loras). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora/lora.h"

typedef struct reg_entry {
    char *name, *path;
    cv_lora_adapter *adapter; /* NULL while not loaded */
    int refs;                 /* holders (acquire - release) */
    uint64_t used;            /* LRU clock of the last acquire */
} reg_entry;

struct cv_lora_registry {
    cv_model_config cfg;
    int max_rank, max_cpu_loras;
    reg_entry *e; /* (n) id i + 1 is e[i] */
    int n;
    int n_loaded;
    uint64_t clock;
    pthread_mutex_t mu;
};

cv_lora_registry *cv_lora_registry_create(const cv_model_config *cfg, const char *const *names,
                                          const char *const *paths, int n, int max_rank,
                                          int max_cpu_loras, cv_error *err)
{
    cv_lora_registry *r = calloc(1, sizeof *r);
    if (!r || !(r->e = calloc(n > 0 ? (size_t)n : 1, sizeof *r->e))) {
        free(r);
        cv_errorf(err, "LoRA registry: out of memory");
        return NULL;
    }
    r->cfg = *cfg;
    r->max_rank = max_rank;
    r->max_cpu_loras = max_cpu_loras > 0 ? max_cpu_loras : 1;
    pthread_mutex_init(&r->mu, NULL);
    for (int i = 0; i < n; i++, r->n++) {
        r->e[i].name = strdup(names[i]);
        r->e[i].path = strdup(paths[i]);
        if (!r->e[i].name || !r->e[i].path) {
            r->n++;
            cv_lora_registry_destroy(r);
            cv_errorf(err, "LoRA registry: out of memory");
            return NULL;
        }
    }
    return r;
}

void cv_lora_registry_destroy(cv_lora_registry *r)
{
    if (!r) return;
    for (int i = 0; i < r->n; i++) {
        free(r->e[i].name);
        free(r->e[i].path);
        cv_lora_adapter_free(r->e[i].adapter);
    }
    pthread_mutex_destroy(&r->mu);
    free(r->e);
    free(r);
}

int cv_lora_registry_count(const cv_lora_registry *r)
{
    return r ? r->n : 0;
}

const char *cv_lora_registry_name(const cv_lora_registry *r, int id)
{
    return r->e[id - 1].name;
}

int cv_lora_registry_find(const cv_lora_registry *r, const char *name)
{
    for (int i = 0; r && i < r->n; i++)
        if (!strcmp(r->e[i].name, name)) return i + 1;
    return 0;
}

/* Frees least recently used unheld adapters until one more fits. */
static void make_room(cv_lora_registry *r)
{
    while (r->n_loaded >= r->max_cpu_loras) {
        reg_entry *victim = NULL;
        for (int i = 0; i < r->n; i++)
            if (r->e[i].adapter && r->e[i].refs == 0 && (!victim || r->e[i].used < victim->used))
                victim = &r->e[i];
        if (!victim) return; /* every loaded adapter is held: exceed until released */
        cv_lora_adapter_free(victim->adapter);
        victim->adapter = NULL;
        r->n_loaded--;
    }
}

const cv_lora_adapter *cv_lora_registry_acquire(cv_lora_registry *r, int id, cv_error *err)
{
    pthread_mutex_lock(&r->mu);
    reg_entry *e = &r->e[id - 1];
    if (!e->adapter) {
        /* Loading under the lock keeps two threads from reading one
         * adapter twice; adapters load once per LRU miss, not per step. */
        make_room(r);
        cv_error le;
        if (cv_lora_adapter_load(e->path, &r->cfg, r->max_rank, &e->adapter, &le) < 0) {
            pthread_mutex_unlock(&r->mu);
            cv_errorf(err, "LoRA %s: %s", e->name, le.msg);
            return NULL;
        }
        r->n_loaded++;
    }
    e->refs++;
    e->used = ++r->clock;
    const cv_lora_adapter *a = e->adapter;
    pthread_mutex_unlock(&r->mu);
    return a;
}

void cv_lora_registry_release(cv_lora_registry *r, int id)
{
    pthread_mutex_lock(&r->mu);
    r->e[id - 1].refs--;
    pthread_mutex_unlock(&r->mu);
}

int cv_lora_registry_loaded(cv_lora_registry *r)
{
    pthread_mutex_lock(&r->mu);
    int n = r->n_loaded;
    pthread_mutex_unlock(&r->mu);
    return n;
}

int cv_lora_slots_init(cv_lora_slots *s, int n_slots)
{
    memset(s, 0, sizeof *s);
    s->id = calloc((size_t)n_slots, sizeof *s->id);
    s->used = calloc((size_t)n_slots, sizeof *s->used);
    if (!s->id || !s->used) {
        cv_lora_slots_fini(s);
        return -1;
    }
    s->n = n_slots;
    return 0;
}

void cv_lora_slots_fini(cv_lora_slots *s)
{
    free(s->id);
    free(s->used);
    memset(s, 0, sizeof *s);
}

static bool in_ids(const int *ids, int n, int id)
{
    for (int i = 0; i < n; i++)
        if (ids[i] == id) return true;
    return false;
}

int cv_lora_slots_assign(cv_lora_slots *s, const int *ids, int n, int *slot_of, int *load,
                         cv_error *err)
{
    if (n > s->n)
        return cv_errorf(err, "%d LoRA adapters in one step exceed max_loras %d", n, s->n);
    s->clock++;
    for (int k = 0; k < s->n; k++)
        load[k] = 0;
    for (int i = 0; i < n; i++) {
        slot_of[i] = -1;
        for (int k = 0; k < s->n; k++)
            if (s->id[k] == ids[i]) slot_of[i] = k;
    }
    for (int i = 0; i < n; i++) {
        if (slot_of[i] < 0) {
            /* An empty slot (used 0) first, else the least recently used
             * one whose adapter this step does not need. */
            int best = -1;
            for (int k = 0; k < s->n; k++) {
                if (s->id[k] && in_ids(ids, n, s->id[k])) continue;
                if (best < 0 || s->used[k] < s->used[best]) best = k;
            }
            slot_of[i] = best;
            s->id[best] = ids[i];
            load[best] = ids[i];
        }
        s->used[slot_of[i]] = s->clock;
    }
    return 0;
}

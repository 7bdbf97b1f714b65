/* The cache of compiled grammars (see structured.h): keyed by (kind, text),
 * each holding a count of references. A grammar nobody holds stays cached
 * for the next request with the same constraint, until the idle ones
 * together outgrow the cache's budget: then the least recently released
 * are freed first. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "so_internal.h"
#include "structured.h"

typedef struct entry {
    so_grammar *g;
    so_kind kind;
    char *text;
    int refs;
    uint64_t released; /* the release tick that made it idle */
    size_t bytes;      /* its memory when it became idle */
    struct entry *next;
    so_cache *cache;
} entry;

struct so_cache {
    const so_vocab *vocab;
    pthread_mutex_t mu;
    entry *head;
    size_t idle_bytes, budget;
    uint64_t tick;
};

so_cache *so_cache_create(const so_vocab *vocab)
{
    so_cache *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->vocab = vocab;
    c->budget = (size_t)SO_CACHE_IDLE_MIB << 20;
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

static void entry_free(entry *e)
{
    so_grammar_destroy(e->g);
    free(e->text);
    free(e);
}

void so_cache_free(so_cache *c)
{
    if (!c) return;
    for (entry *e = c->head, *next; e; e = next) {
        next = e->next;
        entry_free(e);
    }
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* Frees idle grammars, least recently released first, until the idle ones
 * fit the budget. */
static void evict(so_cache *c)
{
    while (c->idle_bytes > c->budget) {
        entry **oldest = NULL;
        for (entry **link = &c->head; *link; link = &(*link)->next)
            if ((*link)->refs == 0 && (!oldest || (*link)->released < (*oldest)->released))
                oldest = link;
        if (!oldest) return;
        entry *e = *oldest;
        *oldest = e->next;
        c->idle_bytes -= e->bytes;
        entry_free(e);
    }
}

void so_cache_set_idle_budget(so_cache *c, size_t bytes)
{
    pthread_mutex_lock(&c->mu);
    c->budget = bytes;
    evict(c);
    pthread_mutex_unlock(&c->mu);
}

so_grammar *so_cache_get(so_cache *c, so_kind kind, const char *text, cv_error *err)
{
    pthread_mutex_lock(&c->mu);
    entry *e = c->head;
    while (e && (e->kind != kind || strcmp(e->text, text)))
        e = e->next;
    if (!e) {
        e = calloc(1, sizeof(*e));
        char *t = e ? strdup(text) : NULL;
        so_grammar *g = t ? so_grammar_compile(c->vocab, kind, text, err) : NULL;
        if (!g) {
            if (!t) cv_errorf(err, "out of memory compiling a structured-output constraint");
            free(t);
            free(e);
            pthread_mutex_unlock(&c->mu);
            return NULL;
        }
        *e = (entry){.g = g, .kind = kind, .text = t, .next = c->head, .cache = c};
        *so_grammar_cache_entry(g) = e;
        c->head = e;
    } else if (e->refs == 0) {
        c->idle_bytes -= e->bytes;
    }
    e->refs++;
    pthread_mutex_unlock(&c->mu);
    return e->g;
}

void so_grammar_release(so_grammar *g)
{
    if (!g) return;
    entry *e = *so_grammar_cache_entry(g);
    so_cache *c = e->cache;
    /* Measured before the cache's lock is taken: other holders may be
     * growing g under its own lock meanwhile, which only makes this an
     * estimate. */
    size_t bytes = so_grammar_bytes(g);
    pthread_mutex_lock(&c->mu);
    if (--e->refs == 0) {
        e->bytes = bytes;
        e->released = ++c->tick;
        c->idle_bytes += bytes;
        evict(c);
    }
    pthread_mutex_unlock(&c->mu);
}

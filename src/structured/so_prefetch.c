/* Mask prefetch (see structured.h): one worker thread computes the masks a
 * decode step will ask for while the step's forward pass runs, so first
 * visits of automaton states cost the step nothing when the forward takes
 * longer (a GPU step). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "structured.h"

struct so_prefetch {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    so_grammar **g; /* (n) the asked masks, copied from the caller */
    so_state *s;
    int n, cap;
    bool busy; /* a batch is asked and not yet done */
    bool quit;
};

static void *worker(void *arg)
{
    so_prefetch *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->busy && !p->quit)
            pthread_cond_wait(&p->cv, &p->mu);
        if (p->quit) break;
        int n = p->n;
        pthread_mutex_unlock(&p->mu);
        /* The arrays stay put while busy: start waits for the batch. A
         * mask that is out of memory stays uncomputed; the step's own ask
         * reports it. */
        for (int i = 0; i < n; i++)
            (void)so_mask(p->g[i], p->s[i]);
        pthread_mutex_lock(&p->mu);
        p->busy = false;
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

so_prefetch *so_prefetch_create(void)
{
    so_prefetch *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (pthread_create(&p->thread, NULL, worker, p) != 0) {
        pthread_cond_destroy(&p->cv);
        pthread_mutex_destroy(&p->mu);
        free(p);
        return NULL;
    }
    return p;
}

void so_prefetch_free(so_prefetch *p)
{
    if (!p) return;
    so_prefetch_wait(p);
    pthread_mutex_lock(&p->mu);
    p->quit = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->g);
    free(p->s);
    free(p);
}

void so_prefetch_wait(so_prefetch *p)
{
    pthread_mutex_lock(&p->mu);
    while (p->busy)
        pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

int so_prefetch_start(so_prefetch *p, so_grammar *const *g, const so_state *s, int n)
{
    so_prefetch_wait(p);
    if (n <= 0) return 0;
    if (n > p->cap) {
        so_grammar **ng = realloc(p->g, (size_t)n * sizeof(*ng));
        if (ng) p->g = ng;
        so_state *ns = realloc(p->s, (size_t)n * sizeof(*ns));
        if (ns) p->s = ns;
        if (!ng || !ns) return -1;
        p->cap = n;
    }
    memcpy(p->g, g, (size_t)n * sizeof(*g));
    memcpy(p->s, s, (size_t)n * sizeof(*s));
    pthread_mutex_lock(&p->mu);
    p->n = n;
    p->busy = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

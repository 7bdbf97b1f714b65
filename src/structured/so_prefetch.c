/* Mask prefetch (see structured.h): worker threads compute the masks a
 * decode step will ask for while the step's forward pass runs, so first
 * visits of automaton states cost the step nothing when the forward takes
 * longer (a GPU step). Masks of different grammars are computed in
 * parallel; those of one grammar take turns on its lock. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "structured.h"

struct so_prefetch {
    pthread_t *threads;
    int n_threads;
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    so_grammar **g; /* (n) the asked masks, copied from the caller */
    so_state *s;
    int n, cap;
    int next;       /* the first mask of the batch no worker has taken */
    int checked_in; /* workers not yet through the batch */
    uint64_t batch; /* counts batches asked */
    bool busy;      /* a batch is asked and not yet done */
    bool quit;
};

static void *worker(void *arg)
{
    so_prefetch *p = arg;
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->batch == seen && !p->quit)
            pthread_cond_wait(&p->work, &p->mu);
        if (p->quit) break;
        seen = p->batch;
        /* The arrays stay put while busy: start waits for the batch. A
         * mask that is out of memory stays uncomputed; the step's own ask
         * reports it. */
        while (p->next < p->n) {
            int i = p->next++;
            pthread_mutex_unlock(&p->mu);
            (void)so_mask(p->g[i], p->s[i]);
            pthread_mutex_lock(&p->mu);
        }
        /* Every worker checks in, so none can still be in this batch
         * when the next one is asked. */
        if (--p->checked_in == 0) {
            p->busy = false;
            pthread_cond_broadcast(&p->done);
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void stop_workers(so_prefetch *p, int n)
{
    pthread_mutex_lock(&p->mu);
    p->quit = true;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < n; i++)
        pthread_join(p->threads[i], NULL);
}

so_prefetch *so_prefetch_create(int n_threads)
{
    so_prefetch *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    if (n_threads < 1) n_threads = 1;
    p->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int i = 0; p->threads && i < n_threads; i++, p->n_threads++)
        if (pthread_create(&p->threads[i], NULL, worker, p) != 0) break;
    if (p->n_threads < n_threads) {
        stop_workers(p, p->n_threads);
        p->n_threads = 0;
        so_prefetch_free(p);
        return NULL;
    }
    return p;
}

void so_prefetch_wait(so_prefetch *p)
{
    pthread_mutex_lock(&p->mu);
    while (p->busy)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

void so_prefetch_free(so_prefetch *p)
{
    if (!p) return;
    so_prefetch_wait(p);
    stop_workers(p, p->n_threads);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p->g);
    free(p->s);
    free(p);
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
    p->next = 0;
    p->checked_in = p->n_threads;
    p->busy = true;
    p->batch++;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

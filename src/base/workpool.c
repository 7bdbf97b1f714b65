/* Worker pool (see workpool.h): one mutex, one condition, a FIFO list. */
#include "base/workpool.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

typedef struct job {
    void (*fn)(void *arg);
    void *arg;
    struct job *next;
} job;

struct cv_workpool {
    pthread_mutex_t mu;
    pthread_cond_t wake;
    job *head, *tail;
    bool stopping;
    int n_threads;
    pthread_t threads[];
};

static void *worker(void *arg)
{
    cv_workpool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->head && !p->stopping)
            pthread_cond_wait(&p->wake, &p->mu);
        job *j = p->head;
        if (!j) break; /* stopping and drained */
        p->head = j->next;
        if (!p->head) p->tail = NULL;
        pthread_mutex_unlock(&p->mu);
        j->fn(j->arg);
        free(j);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

cv_workpool *cv_workpool_create(int n_threads, cv_error *err)
{
    if (n_threads < 1) n_threads = 1;
    cv_workpool *p = calloc(1, sizeof *p + (size_t)n_threads * sizeof(pthread_t));
    if (!p) {
        cv_errorf(err, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    for (; p->n_threads < n_threads; p->n_threads++)
        if (pthread_create(&p->threads[p->n_threads], NULL, worker, p) != 0) {
            cv_errorf(err, "cannot start worker thread %d", p->n_threads);
            cv_workpool_destroy(p);
            return NULL;
        }
    return p;
}

int cv_workpool_submit(cv_workpool *p, void (*fn)(void *arg), void *arg)
{
    job *j = malloc(sizeof *j);
    if (!j) return -1;
    *j = (job){fn, arg, NULL};
    pthread_mutex_lock(&p->mu);
    bool stopping = p->stopping;
    if (!stopping) {
        if (p->tail)
            p->tail->next = j;
        else
            p->head = j;
        p->tail = j;
        pthread_cond_signal(&p->wake);
    }
    pthread_mutex_unlock(&p->mu);
    if (stopping) free(j);
    return stopping ? -1 : 0;
}

void cv_workpool_destroy(cv_workpool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_threads; i++)
        pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

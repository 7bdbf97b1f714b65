/* cv_output_queue: an unbounded MPSC list of request outputs guarded by a
 * mutex, with an eventfd that is readable exactly while the list is not
 * empty (pop drains it when the last output leaves), so an event loop can
 * poll the fd and a plain thread can block in cv_output_queue_wait. The
 * engine never blocks on a queue: back pressure is the frontend's business. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "cvllm/engine.h"
#include "engine_internal.h"

typedef struct out_node {
    cv_request_output *out;
    struct out_node *next;
} out_node;

struct cv_output_queue {
    pthread_mutex_t mu;
    pthread_cond_t cond; /* signalled on every push */
    out_node *head, *tail;
    int efd;
};

cv_output_queue *cv_output_queue_create(void)
{
    cv_output_queue *q = calloc(1, sizeof(*q));
    if (!q) return NULL;
    q->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (q->efd < 0) {
        free(q);
        return NULL;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&q->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&q->mu, NULL);
    return q;
}

void cv_output_queue_destroy(cv_output_queue *q)
{
    if (!q) return;
    for (out_node *n = q->head; n;) {
        out_node *next = n->next;
        cv_request_output_free(n->out);
        free(n);
        n = next;
    }
    close(q->efd);
    pthread_cond_destroy(&q->cond);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

int cv_output_queue_fd(const cv_output_queue *q)
{
    return q->efd;
}

int output_queue_push(cv_output_queue *q, cv_request_output *out)
{
    out_node *n = malloc(sizeof(*n));
    if (!n) return -1;
    n->out = out;
    n->next = NULL;
    pthread_mutex_lock(&q->mu);
    if (q->tail)
        q->tail->next = n;
    else
        q->head = n;
    q->tail = n;
    uint64_t one = 1;
    /* Cannot fail short of counter overflow (2^64 - 1 pushes). */
    ssize_t w = write(q->efd, &one, sizeof(one));
    (void)w;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->mu);
    return 0;
}

/* Caller holds q->mu. */
static cv_request_output *pop_locked(cv_output_queue *q)
{
    out_node *n = q->head;
    if (!n) return NULL;
    q->head = n->next;
    if (!q->head) {
        q->tail = NULL;
        uint64_t v;
        ssize_t r = read(q->efd, &v, sizeof(v)); /* EAGAIN when already drained */
        (void)r;
    }
    cv_request_output *out = n->out;
    free(n);
    return out;
}

cv_request_output *cv_output_queue_pop(cv_output_queue *q)
{
    pthread_mutex_lock(&q->mu);
    cv_request_output *out = pop_locked(q);
    pthread_mutex_unlock(&q->mu);
    return out;
}

cv_request_output *cv_output_queue_wait(cv_output_queue *q, int timeout_ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    if (timeout_ms > 0) {
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&q->mu);
    while (!q->head && timeout_ms != 0) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&q->cond, &q->mu);
        } else if (pthread_cond_timedwait(&q->cond, &q->mu, &deadline) == ETIMEDOUT) {
            break;
        }
    }
    cv_request_output *out = pop_locked(q);
    pthread_mutex_unlock(&q->mu);
    return out;
}

static void free_logprobs(cv_token_logprobs *lp, int n)
{
    if (!lp) return;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < lp[i].n; j++)
            free(lp[i].entries[j].decoded_token);
        free(lp[i].entries);
    }
    free(lp);
}

void cv_request_output_free(cv_request_output *out)
{
    if (!out) return;
    for (int i = 0; i < out->n_seqs; i++) {
        cv_seq_output *s = &out->seqs[i];
        free(s->token_ids);
        free(s->text);
        free_logprobs(s->logprobs, s->n_tokens);
    }
    free(out->seqs);
    free_logprobs(out->prompt_logprobs, out->n_prompt_tokens);
    free(out->error);
    free(out);
}

const char *cv_finish_reason_name(cv_finish_reason r)
{
    switch (r) {
    case CV_FINISH_STOP:
        return "stop";
    case CV_FINISH_LENGTH:
        return "length";
    case CV_FINISH_ABORT:
        return "abort";
    default:
        return "None";
    }
}

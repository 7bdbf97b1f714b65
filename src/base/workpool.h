/* A fixed pool of worker threads running queued jobs in order of arrival:
 * for work that must not run on an event loop thread (tokenizing a long
 * prompt), as vLLM's frontend tokenizes in a thread pool. */
#ifndef CV_BASE_WORKPOOL_H
#define CV_BASE_WORKPOOL_H

#include "base/error.h"

typedef struct cv_workpool cv_workpool;

cv_workpool *cv_workpool_create(int n_threads, cv_error *err);
/* Queues fn(arg) (run on one of the pool's threads); -1 when out of memory
 * or the pool is being destroyed (fn then never runs). */
int cv_workpool_submit(cv_workpool *p, void (*fn)(void *arg), void *arg);
/* Runs the jobs still queued, joins the threads and frees the pool. */
void cv_workpool_destroy(cv_workpool *p);

#endif

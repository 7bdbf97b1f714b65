/* Accepting connections that survives file-descriptor exhaustion.
 *
 * libevent's listener retries a failing accept() at once and logs each
 * failure: with the process out of file descriptors (EMFILE) the pending
 * connection stays in the backlog, so the loop spins a core and writes
 * megabytes of "Too many open files". gRPC core's own listener gives up on
 * the first EMFILE and never accepts again. cv_listen_guard makes a
 * listener pause for CV_LISTEN_BACKOFF_MS on such errors instead, logging
 * at most one line per CV_LISTEN_LOG_PERIOD_S with the count of failures;
 * cv_listen_grpc accepts for gRPC core the same way (gRPC core then only
 * ever sees connected sockets) and refuses a connection outright while
 * fewer than CV_LISTEN_FD_RESERVE descriptors are left, so that loads,
 * metrics and the other listener keep descriptors to work with. */
#ifndef CV_SERVER_LISTEN_H
#define CV_SERVER_LISTEN_H

#include <event2/event.h>
#include <event2/listener.h>

#include "base/error.h"

enum { CV_LISTEN_BACKOFF_MS = 250, CV_LISTEN_LOG_PERIOD_S = 10, CV_LISTEN_FD_RESERVE = 32 };

typedef struct cv_listen_guard cv_listen_guard;

/* Watches lev (borrowed; it must outlive the guard) for accept errors;
 * `what` names it in log lines ("HTTP"). NULL when out of memory. */
cv_listen_guard *cv_listen_guard_new(struct event_base *base, struct evconnlistener *lev,
                                     const char *what);
void cv_listen_guard_free(cv_listen_guard *g);

/* Listens on host:port and hands each accepted socket to fn (which owns
 * it). With max_conns > 0, a socket accepted while max_conns handed-out
 * sockets are still open is closed at once, with a log line naming
 * --<flag>-max-connections at most every CV_LISTEN_LOG_PERIOD_S. The
 * listener is freed with cv_listen_free. */
typedef void (*cv_accept_fn)(int fd, void *arg);
typedef struct cv_listen cv_listen;
cv_listen *cv_listen_new(struct event_base *base, const char *host, int port, const char *what,
                         const char *flag, int max_conns, cv_accept_fn fn, void *arg,
                         cv_error *err);
void cv_listen_free(cv_listen *l);

/* Raises the soft RLIMIT_NOFILE to the hard limit (as nginx's
 * worker_rlimit_nofile does); returns the soft limit now in force. */
long cv_listen_raise_fd_limit(void);

#endif

/* Accept back-off on descriptor exhaustion, and gRPC's listener (see
 * listen.h). */
#include "server/listen.h"

#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"

struct cv_listen_guard {
    struct evconnlistener *lev;
    struct event *resume;
    const char *what;
    time_t last_log;
    long suppressed; /* failures not logged since last_log */
};

/* The listener's error callback gets the argument of its accept callback,
 * which for evhttp's listener is evhttp's own: guards are found by
 * listener instead. */
enum { MAX_GUARDS = 8 };
static cv_listen_guard *guards[MAX_GUARDS];
static pthread_mutex_t guards_mu = PTHREAD_MUTEX_INITIALIZER;

static cv_listen_guard *guard_of(struct evconnlistener *lev)
{
    cv_listen_guard *g = NULL;
    pthread_mutex_lock(&guards_mu);
    for (int i = 0; i < MAX_GUARDS && !g; i++)
        if (guards[i] && guards[i]->lev == lev) g = guards[i];
    pthread_mutex_unlock(&guards_mu);
    return g;
}

static bool guard_register(cv_listen_guard *g, bool on)
{
    bool ok = false;
    pthread_mutex_lock(&guards_mu);
    for (int i = 0; i < MAX_GUARDS && !ok; i++)
        if (guards[i] == (on ? NULL : g)) {
            guards[i] = on ? g : NULL;
            ok = true;
        }
    pthread_mutex_unlock(&guards_mu);
    return ok;
}

static bool out_of_resources(int e)
{
    return e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM;
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    cv_listen_guard *g = arg;
    evconnlistener_enable(g->lev);
}

static void log_limited(cv_listen_guard *g, int e)
{
    time_t now = time(NULL);
    if (g->last_log && now - g->last_log < CV_LISTEN_LOG_PERIOD_S) {
        g->suppressed++;
        return;
    }
    if (g->suppressed)
        cv_log_error("%s: accept failed: %s (%ld more failures in the last %ld s); pausing "
                     "accepts %d ms at a time",
                     g->what, strerror(e), g->suppressed, (long)(now - g->last_log),
                     CV_LISTEN_BACKOFF_MS);
    else
        cv_log_error("%s: accept failed: %s; pausing accepts %d ms at a time", g->what, strerror(e),
                     CV_LISTEN_BACKOFF_MS);
    g->last_log = now;
    g->suppressed = 0;
}

static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    (void)arg;
    int e = EVUTIL_SOCKET_ERROR();
    cv_listen_guard *g = guard_of(lev);
    if (!g) return;
    log_limited(g, e);
    if (!out_of_resources(e)) return; /* ECONNABORTED and the like: the next one may work */
    /* The pending connection stays queued: retrying now would spin. */
    evconnlistener_disable(lev);
    struct timeval tv = {0, CV_LISTEN_BACKOFF_MS * 1000};
    event_add(g->resume, &tv);
}

cv_listen_guard *cv_listen_guard_new(struct event_base *base, struct evconnlistener *lev,
                                     const char *what)
{
    cv_listen_guard *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->lev = lev;
    g->what = what;
    if (!(g->resume = evtimer_new(base, on_resume, g)) || !guard_register(g, true)) {
        if (g->resume) event_free(g->resume);
        free(g);
        return NULL;
    }
    evconnlistener_set_error_cb(lev, on_accept_error);
    return g;
}

void cv_listen_guard_free(cv_listen_guard *g)
{
    if (!g) return;
    evconnlistener_set_error_cb(g->lev, NULL);
    guard_register(g, false);
    event_free(g->resume);
    free(g);
}

/* ---- gRPC's listener ------------------------------------------------------ */

/* A socket handed to fn, as (descriptor, inode): the descriptor is the
 * same socket while its inode is, so no close notice is needed to count
 * the open ones. */
typedef struct {
    int fd;
    ino_t ino;
} handed;

struct cv_listen {
    struct evconnlistener *lev;
    cv_listen_guard *guard;
    cv_accept_fn fn;
    void *arg;
    const char *what;
    const char *flag; /* "grpc": names the cap's flag in the log */
    int max_conns;    /* 0: no cap */
    handed *open;     /* sockets handed out, some perhaps closed since */
    int n_open;
    long refused; /* refusals not logged yet */
    time_t last_log;
};

/* Drops the sockets that have been closed from l->open. */
static void prune_closed(cv_listen *l)
{
    int n = 0;
    for (int i = 0; i < l->n_open; i++) {
        struct stat st;
        if (fstat(l->open[i].fd, &st) == 0 && st.st_ino == l->open[i].ino)
            l->open[n++] = l->open[i];
    }
    l->n_open = n;
}

/* True when fd may be handed out under the cap (it is then counted). */
static bool admit(cv_listen *l, int fd)
{
    if (l->max_conns <= 0) return true;
    if (l->n_open >= l->max_conns) prune_closed(l);
    struct stat st;
    if (l->n_open < l->max_conns && fstat(fd, &st) == 0) {
        l->open[l->n_open++] = (handed){fd, st.st_ino};
        return true;
    }
    time_t now = time(NULL);
    l->refused++;
    if (!l->last_log || now - l->last_log >= CV_LISTEN_LOG_PERIOD_S) {
        cv_log_error("%s: the cap of %d open connections (--%s-max-connections) is reached: "
                     "refused %ld new connection(s) in the last %ld s",
                     l->what, l->max_conns, l->flag, l->refused,
                     l->last_log ? (long)(now - l->last_log) : 0l);
        l->last_log = now;
        l->refused = 0;
    }
    return false;
}

static void on_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    (void)lev;
    (void)sa;
    (void)salen;
    cv_listen *l = arg;
    /* Descriptors are handed out lowest first: fd >= limit - reserve means
     * fewer than the reserve are left. The limit is read each time: it may
     * change while the server runs (prlimit). */
    struct rlimit rl;
    long limit =
        getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY ? (long)rl.rlim_cur : 0;
    if (limit > 0 && fd >= limit - CV_LISTEN_FD_RESERVE) {
        close(fd);
        errno = EMFILE;
        on_accept_error(l->lev, NULL);
        return;
    }
    if (!admit(l, fd)) {
        close(fd);
        return;
    }
    l->fn(fd, l->arg);
}

cv_listen *cv_listen_new(struct event_base *base, const char *host, int port, const char *what,
                         const char *flag, int max_conns, cv_accept_fn fn, void *arg, cv_error *err)
{
    cv_listen *l = calloc(1, sizeof *l);
    if (l && max_conns > 0 && !(l->open = calloc((size_t)max_conns, sizeof *l->open))) {
        free(l);
        l = NULL;
    }
    if (!l) {
        cv_errorf(err, "out of memory");
        return NULL;
    }
    l->flag = flag;
    l->max_conns = max_conns;
    l->fn = fn;
    l->arg = arg;
    l->what = what;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(host, service, &hints, &ai);
    if (rc != 0) {
        cv_errorf(err, "%s: cannot resolve '%s': %s", what, host, gai_strerror(rc));
        free(l->open);
        free(l);
        return NULL;
    }
    /* No LEV_OPT_REUSEABLE_PORT: a second server on a taken port must fail
     * to bind, not share it. */
    l->lev = evconnlistener_new_bind(base, on_accept, l,
                                     LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC |
                                         LEV_OPT_REUSEABLE | LEV_OPT_THREADSAFE,
                                     1024, ai->ai_addr, (int)ai->ai_addrlen);
    freeaddrinfo(ai);
    if (!l->lev) {
        cv_errorf(err, "%s: cannot bind %s port %d: %s", what, host, port, strerror(errno));
        free(l->open);
        free(l);
        return NULL;
    }
    if (!(l->guard = cv_listen_guard_new(base, l->lev, what))) {
        cv_errorf(err, "out of memory");
        cv_listen_free(l);
        return NULL;
    }
    return l;
}

void cv_listen_free(cv_listen *l)
{
    if (!l) return;
    cv_listen_guard_free(l->guard);
    evconnlistener_free(l->lev);
    free(l->open);
    free(l);
}

long cv_listen_raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t old = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) rl.rlim_cur = old;
    }
    return rl.rlim_cur == RLIM_INFINITY ? -1 : (long)rl.rlim_cur;
}

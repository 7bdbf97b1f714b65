/* cv_server_run: model loading, the frontends' lifecycle (core.h), the
 * event loop, readiness, counters and the SIGINT/SIGTERM drain. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/thread.h>

#include "base/clock.h"
#include "base/log.h"
#include "server/server_internal.h"

const char cv_server_version[] = "0.1.0";
const char *const cv_server_extensions[] = {
    "model_repository", "model_configuration", "statistics", "parameters", "generate", "metrics"};
const int cv_server_n_extensions = 6;

void cv_server_options_default(cv_server_options *o)
{
    memset(o, 0, sizeof *o);
    o->http_port = 8000;
    o->grpc_port = 8001;
    o->metrics_port = 8002;
    o->http_address = o->grpc_address = "0.0.0.0";
    o->allow_http = o->allow_grpc = o->allow_metrics = true;
    o->control_mode = CV_CONTROL_NONE;
    o->exit_on_error = true;
    o->strict_readiness = true;
    o->exit_timeout_s = 30;
    o->repository_poll_s = 15;
    o->http_max_input_bytes = 64l << 20;
    o->http_max_header_bytes = 16 << 10;
    o->http_idle_timeout_s = 60;
    o->http_max_connections = 4096;
    o->grpc_max_connections = 4096;
}

bool cv_server_ready(cv_server *s)
{
    if (atomic_load(&s->draining)) return false;
    return !s->opts.strict_readiness || cv_repository_all_ready(s->repo);
}

void cv_server_account(cv_model *m, bool ok, uint64_t start_ns)
{
    cv_model_counters *c = &m->counters;
    uint64_t us = (cv_now_ns() - start_ns) / 1000;
    if (ok) {
        atomic_fetch_add(&c->request_success, 1);
        atomic_fetch_add(&c->inference_count, 1);
        atomic_fetch_add(&c->exec_count, 1);
        atomic_fetch_add(&c->request_duration_us, us);
        atomic_fetch_add(&c->compute_infer_duration_us, us);
    } else {
        atomic_fetch_add(&c->request_failure, 1);
        atomic_fetch_add(&c->fail_duration_us, us);
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    atomic_store(&c->last_inference_ms,
                 (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u);
}

static int load_models(cv_server *s, cv_error *err)
{
    const cv_server_options *o = &s->opts;
    int failed = 0;
    bool all = o->control_mode != CV_CONTROL_EXPLICIT;
    for (int i = 0; i < o->n_load_models; i++)
        all |= !strcmp(o->load_models[i], "*");
    if (all) {
        failed = cv_repository_load_all(s->repo);
    } else {
        for (int i = 0; i < o->n_load_models; i++) {
            cv_error e;
            failed += cv_repository_load(s->repo, o->load_models[i], &e) < 0;
        }
    }
    if (failed && o->exit_on_error)
        return cv_errorf(err, "failed to load all models (%d failed; see the log above)", failed);
    return 0;
}

static int busy(cv_server *s)
{
    int n = 0;
    for (int i = 0; i < s->n_fe; i++)
        if (s->fe_state[i]) n += s->fe[i]->active(s->fe_state[i]);
    return n;
}

static void on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
    cv_server *s = arg;
    if (busy(s) == 0) {
        event_base_loopexit(s->base, NULL);
        return;
    }
    uint64_t waited_ns = cv_now_ns() - s->drain_start_ns;
    if (s->drain_aborted && waited_ns > 5000000000ull) {
        /* Aborted requests end within a step; what is left is output a
         * client does not read. Stop waiting for it. */
        cv_log_warn("drain: %d replies still unwritten 5 s after aborting: exiting", busy(s));
        event_base_loopexit(s->base, NULL);
    } else if (!s->drain_aborted && waited_ns > (uint64_t)s->opts.exit_timeout_s * 1000000000ull) {
        cv_log_warn("drain: %d requests still running after %d s: aborting them", busy(s),
                    s->opts.exit_timeout_s);
        for (int i = 0; i < s->n_fe; i++)
            if (s->fe_state[i]) s->fe[i]->abort_all(s->fe_state[i]);
        s->drain_aborted = true;
        s->drain_start_ns = cv_now_ns();
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    cv_server *s = arg;
    if (atomic_load(&s->draining)) {
        cv_log_warn("Signal (%d) received again: aborting in-flight requests", (int)sig);
        s->opts.exit_timeout_s = 0;
        return;
    }
    cv_log_info("Signal (%d) received: draining %d in-flight requests", (int)sig, busy(s));
    atomic_store(&s->draining, true);
    s->drain_start_ns = cv_now_ns();
    for (int i = 0; i < s->n_fe; i++)
        if (s->fe_state[i] && s->fe[i]->stop_accepting) s->fe[i]->stop_accepting(s->fe_state[i]);
    struct timeval tick = {0, 20000};
    s->drain_timer = event_new(s->base, -1, EV_PERSIST, on_drain_tick, s);
    if (!s->drain_timer || event_add(s->drain_timer, &tick) < 0) event_base_loopexit(s->base, NULL);
}

/* Poll mode: re-scan the repositories every repository_poll_s seconds on
 * this thread (loads take long; the event loop must not wait for them). */
static void *poll_main(void *arg)
{
    cv_server *s = arg;
    for (;;) {
        for (int t = 0; t < s->opts.repository_poll_s * 20; t++) {
            if (atomic_load(&s->stop_poll)) return NULL;
            struct timespec ts = {0, 50000000};
            nanosleep(&ts, NULL);
        }
        cv_repository_poll(s->repo);
    }
}

static void server_free(cv_server *s)
{
    if (s->poll_started) {
        atomic_store(&s->stop_poll, true);
        pthread_join(s->poll_thread, NULL);
    }
    for (int i = s->n_fe - 1; i >= 0; i--)
        if (s->fe_state[i]) s->fe[i]->destroy(s->fe_state[i]);
    if (s->drain_timer) event_free(s->drain_timer);
    if (s->sig_int) event_free(s->sig_int);
    if (s->sig_term) event_free(s->sig_term);
    cv_repository_destroy(s->repo);
    if (s->base) event_base_free(s->base);
    free(s);
}

int cv_server_run(const cv_server_options *o, cv_error *err)
{
    signal(SIGPIPE, SIG_IGN); /* a client closing mid-write must not kill the server */
    cv_server *s = calloc(1, sizeof *s);
    if (!s) return cv_errorf(err, "out of memory");
    s->opts = *o;
    int rc = -1;
    if (!(s->repo = cv_repository_create(o->repos, o->n_repos, o->n_threads, err))) goto out;
    if (load_models(s, err) < 0) goto out;
    /* Model loads finish on their own threads and wake the loop. */
    if (evthread_use_pthreads() < 0 || !(s->base = event_base_new())) {
        cv_errorf(err, "cannot create the event loop");
        goto out;
    }
    for (const cv_frontend_ops *const *fe = cv_server_frontends; *fe; fe++) {
        if (s->n_fe == CV_SERVER_MAX_FRONTENDS) {
            cv_errorf_class(err, CV_ERR_INTERNAL, "more than %d frontends",
                            CV_SERVER_MAX_FRONTENDS);
            goto out;
        }
        s->fe[s->n_fe] = *fe;
        if ((*fe)->start(s, &s->fe_state[s->n_fe], err) < 0) goto out;
        s->n_fe++;
    }
    s->sig_int = evsignal_new(s->base, SIGINT, on_signal, s);
    s->sig_term = evsignal_new(s->base, SIGTERM, on_signal, s);
    if (!s->sig_int || !s->sig_term || evsignal_add(s->sig_int, NULL) < 0 ||
        evsignal_add(s->sig_term, NULL) < 0) {
        cv_errorf(err, "cannot install signal handlers");
        goto out;
    }
    if (o->control_mode == CV_CONTROL_POLL) {
        if (pthread_create(&s->poll_thread, NULL, poll_main, s) != 0) {
            cv_errorf(err, "cannot start the repository poller");
            goto out;
        }
        s->poll_started = true;
    }
    event_base_dispatch(s->base);
    cv_log_info("all requests finished: exiting");
    rc = 0;
out:
    server_free(s);
    return rc;
}

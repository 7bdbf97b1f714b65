/* The HTTP frontend's connections (issue 16): the counted connection cap
 * (--http-max-connections), and 431 for a request head over
 * --http-max-header-size.
 *
 * libevent 2.1's evhttp has no per-connection hook but the one that makes
 * a connection's bufferevent (evhttp_set_bevcb), and it answers a request
 * head over its limit itself, with the 400 page it writes for any
 * malformed head. So each bufferevent made here carries an http_conn:
 * - a deferred attach, run on the loop before the connection's first read,
 *   takes the evhttp_connection from the bufferevent's callback argument,
 *   installs the close callback that ends the http_conn (and counts it),
 *   and refuses a connection over the cap with a 503;
 * - a callback on its input buffer measures each request head as its bytes
 *   arrive (evhttp's rule, line ends included, so never less than evhttp
 *   counts): a head over the limit marks the connection;
 * - a callback on its output buffer replaces evhttp's 400 page on a marked
 *   connection by a 431 with a JSON body. A marked head that evhttp still
 *   took (its count leaves out line ends) gets the 431 from
 *   http_conn_request_read, which http.c's router calls first.
 * The close callback of a connection belongs to http_conn: http.c's
 * watchers go through http_conn_set_closecb, which finds the http_conn of
 * an evhttp_connection in a list of them all (evhttp keeps no user data;
 * a linear search, over at most the cap). Everything runs on the loop
 * thread; the mutex only keeps the list sound were there two servers. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>

#include "base/log.h"
#include "server/http_internal.h"

struct http_conn {
    http_conn *prev, *next; /* conns, or cv_http.attaching before the attach */
    cv_http *h;
    struct bufferevent *bev;
    struct evhttp_connection *evcon;          /* NULL until attached */
    evutil_socket_t fd;                       /* its socket, and the socket's inode: */
    ino_t ino;                                /* see prune_closed */
    struct evbuffer_cb_entry *in_cb, *out_cb; /* on bev's buffers */
    http_closecb closecb;                     /* http.c's watcher of the connection */
    void *closecb_arg;
    /* The head being read: stream offsets of the bytes evhttp reads. */
    uint64_t arrived;    /* bytes added to the input buffer */
    uint64_t consumed;   /* bytes evhttp took out of it */
    uint64_t head_start; /* the current request's first byte */
    uint64_t line_bytes; /* bytes of the current head line so far */
    int n_lines;         /* complete lines of the current head */
    bool last_cr;        /* the last byte of the line so far was '\r' */
    bool head_done;      /* the current head's empty line has arrived */
    bool overflow;       /* the current head is over the limit */
    bool replaced;       /* the 431 has been written */
};

static http_conn *conns; /* attached connections, of every cv_http */
static pthread_mutex_t conns_mu = PTHREAD_MUTEX_INITIALIZER;

static void list_remove(http_conn **head, http_conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        *head = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static void list_push(http_conn **head, http_conn *c)
{
    c->prev = NULL;
    c->next = *head;
    if (*head) (*head)->prev = c;
    *head = c;
}

/* ---- head measurement ----------------------------------------------------- */

/* Feeds bytes of the current head; base is the stream offset of p[0].
 * evhttp reads lines ending in "\n" or "\r\n" and a head ends with the
 * first empty line after the request line. */
static void head_scan(http_conn *c, const unsigned char *p, size_t n, uint64_t base)
{
    for (size_t i = 0; i < n && !c->head_done; i++) {
        if (p[i] != '\n') {
            c->line_bytes++;
            c->last_cr = p[i] == '\r';
            continue;
        }
        bool empty = c->line_bytes == 0 || (c->line_bytes == 1 && c->last_cr);
        if (empty && c->n_lines > 0) {
            c->head_done = true;
            uint64_t end = base + i + 1; /* the stream offset after this '\n' */
            if (end - c->head_start > (uint64_t)c->h->s->opts.http_max_header_bytes)
                c->overflow = true;
        }
        c->n_lines++;
        c->line_bytes = 0;
        c->last_cr = false;
    }
}

/* Scans the input buffer from buffer offset `from` (stream offset base). */
static void head_scan_buffer(http_conn *c, struct evbuffer *buf, size_t from, uint64_t base)
{
    struct evbuffer_ptr pos;
    if (evbuffer_ptr_set(buf, &pos, from, EVBUFFER_PTR_SET) < 0) return;
    size_t left = evbuffer_get_length(buf) - from;
    while (left > 0 && !c->head_done) {
        struct evbuffer_iovec v[8];
        int n = evbuffer_peek(buf, (ev_ssize_t)left, &pos, v, 8);
        if (n <= 0) break;
        size_t got = 0;
        for (int i = 0; i < n && i < 8 && got < left; i++) {
            size_t len = v[i].iov_len < left - got ? v[i].iov_len : left - got;
            head_scan(c, v[i].iov_base, len, base + got);
            got += len;
        }
        left -= got;
        base += got;
        if (left > 0 && evbuffer_ptr_set(buf, &pos, got, EVBUFFER_PTR_ADD) < 0) break;
    }
}

static void head_check_open(http_conn *c)
{
    if (!c->head_done && c->arrived - c->head_start > (uint64_t)c->h->s->opts.http_max_header_bytes)
        c->overflow = true;
}

static void on_input(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    http_conn *c = arg;
    c->consumed += info->n_deleted;
    if (!info->n_added) return;
    if (!c->head_done && !c->overflow) {
        size_t len = evbuffer_get_length(buf);
        head_scan_buffer(c, buf, len >= info->n_added ? len - info->n_added : 0, c->arrived);
    }
    c->arrived += info->n_added;
    if (!c->overflow) head_check_open(c);
}

/* ---- the 431 in place of evhttp's 400 page ------------------------------ */

static void write_431(http_conn *c, struct evbuffer *out)
{
    char body[200];
    int n = snprintf(body, sizeof body,
                     "{\"error\":\"request header fields are larger than the %d-byte limit "
                     "(--http-max-header-size)\"}",
                     c->h->s->opts.http_max_header_bytes);
    evbuffer_add_printf(out,
                        "HTTP/1.1 431 Request Header Fields Too Large\r\n"
                        "Content-Type: application/json\r\nConnection: close\r\n"
                        "Content-Length: %d\r\n\r\n%s",
                        n, body);
}

/* True when out starts with a whole 400 page of evhttp's (text/html: the
 * server's own replies are JSON); *len is its length. evhttp writes its page in several adds, so
 * this waits for the head and Content-Length bytes of body. */
static bool whole_400(struct evbuffer *out, size_t *len)
{
    struct evbuffer_ptr end = evbuffer_search(out, "\r\n\r\n", 4, NULL);
    if (end.pos < 0) return false;
    size_t head = (size_t)end.pos + 4;
    char text[1024];
    size_t take = head < sizeof text - 1 ? head : sizeof text - 1;
    /* evbuffer_peek, not evbuffer_copyout: the start of the buffer may be
     * frozen here, which copyout refuses */
    struct evbuffer_iovec v[4];
    int nv = evbuffer_peek(out, (ev_ssize_t)take, NULL, v, 4);
    size_t got = 0;
    for (int i = 0; i < nv && i < 4 && got < take; i++) {
        size_t n = v[i].iov_len < take - got ? v[i].iov_len : take - got;
        memcpy(text + got, v[i].iov_base, n);
        got += n;
    }
    text[got] = '\0';
    if (strncmp(text, "HTTP/1.1 400 ", 13) && strncmp(text, "HTTP/1.0 400 ", 13)) return false;
    if (!strstr(text, "\r\nContent-Type: text/html\r\n")) return false; /* not evhttp's page */
    const char *cl = strstr(text, "\r\nContent-Length: ");
    if (!cl) return false;
    size_t total = head + strtoul(cl + 18, NULL, 10);
    if (evbuffer_get_length(out) < total) return false;
    *len = total;
    return true;
}

static void on_output(struct evbuffer *out, const struct evbuffer_cb_info *info, void *arg)
{
    http_conn *c = arg;
    if (!c->overflow || c->replaced || !info->n_added) return;
    size_t len;
    if (!whole_400(out, &len)) return;
    c->replaced = true; /* before the changes below call back */
    if (evbuffer_drain(out, len) < 0) {
        /* the start is frozen (a drain fails only then): thaw it for this */
        evbuffer_unfreeze(out, 1);
        evbuffer_drain(out, len);
        evbuffer_freeze(out, 1);
    }
    write_431(c, out);
}

/* ---- lifetime, cap and close callbacks ---------------------------------- */

static void log_refused(cv_http *h)
{
    time_t now = time(NULL);
    h->conn_refused++;
    if (h->conn_last_log && now - h->conn_last_log < 10) return;
    cv_log_error("HTTP: the cap of %d open connections (--http-max-connections) is reached: "
                 "refused %ld new connection(s) in the last %ld s",
                 h->s->opts.http_max_connections, h->conn_refused,
                 h->conn_last_log ? (long)(now - h->conn_last_log) : 0l);
    h->conn_last_log = now;
    h->conn_refused = 0;
}

static void on_close(struct evhttp_connection *evcon, void *arg)
{
    http_conn *c = arg;
    if (c->closecb) c->closecb(evcon, c->closecb_arg);
    /* evhttp frees the bufferevent next: nothing may call back into c */
    evbuffer_remove_cb_entry(bufferevent_get_input(c->bev), c->in_cb);
    evbuffer_remove_cb_entry(bufferevent_get_output(c->bev), c->out_cb);
    pthread_mutex_lock(&conns_mu);
    list_remove(&conns, c);
    pthread_mutex_unlock(&conns_mu);
    c->h->n_conns--;
    free(c);
}

/* Over the cap: a 503 written straight to the socket (the connection is
 * new: nothing else is queued on it), then the connection is freed. */
static void refuse(http_conn *c)
{
    static const char body[] = "{\"error\":\"too many connections: the server's "
                               "--http-max-connections cap is reached\"}";
    char text[300];
    int n = snprintf(text, sizeof text,
                     "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                     "Connection: close\r\nContent-Length: %zu\r\n\r\n%s",
                     sizeof body - 1, body);
    evutil_socket_t fd = bufferevent_getfd(c->bev);
    if (fd >= 0 && send(fd, text, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
        cv_log_verbose("HTTP: writing the 503 to a refused connection: %s", strerror(errno));
    log_refused(c->h);
    evhttp_connection_free(c->evcon); /* calls on_close */
}

/* evhttp calls the close callback only for a connection in a connected
 * state; should one ever be freed otherwise, its count would stay. At the
 * cap, entries whose descriptor no longer is their socket (closed, or
 * reused for another) are dropped, so the cap counts open sockets. */
static void prune_closed(cv_http *h)
{
    pthread_mutex_lock(&conns_mu);
    http_conn *c = conns, *next;
    for (; c; c = next) {
        next = c->next;
        struct stat st;
        if (c->h != h || (fstat(c->fd, &st) == 0 && st.st_ino == c->ino)) continue;
        list_remove(&conns, c);
        h->n_conns--;
        free(c);
    }
    pthread_mutex_unlock(&conns_mu);
}

static void attach_one(http_conn *c)
{
    cv_http *h = c->h;
    void *evcon = NULL;
    bufferevent_getcb(c->bev, NULL, NULL, NULL, &evcon);
    bufferevent_decref(c->bev);
    if (!evcon) { /* evhttp dropped the connection already */
        free(c);
        return;
    }
    c->evcon = evcon;
    c->fd = bufferevent_getfd(c->bev);
    struct stat st;
    c->ino = fstat(c->fd, &st) == 0 ? st.st_ino : 0;
    pthread_mutex_lock(&conns_mu);
    list_push(&conns, c);
    pthread_mutex_unlock(&conns_mu);
    h->n_conns++;
    evhttp_connection_set_closecb(c->evcon, on_close, c);
    int cap = h->s->opts.http_max_connections;
    if (cap > 0 && h->n_conns > cap) prune_closed(h);
    if (cap > 0 && h->n_conns > cap) refuse(c);
}

static void on_attach(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    cv_http *h = arg;
    http_conn *c;
    while ((c = h->attaching)) {
        list_remove(&h->attaching, c);
        attach_one(c);
    }
}

/* evhttp's bufferevent maker: called when a connection is accepted, before
 * evhttp makes the connection and its first request. The bufferevent is
 * evhttp's own kind (a socket bufferevent without options); the reference
 * taken here keeps it until the attach. */
static struct bufferevent *make_bev(struct event_base *base, void *arg)
{
    cv_http *h = arg;
    struct bufferevent *bev = bufferevent_socket_new(base, -1, 0);
    http_conn *c = bev ? calloc(1, sizeof *c) : NULL;
    if (!c) return bev; /* evhttp serves it; it is neither counted nor measured */
    c->h = h;
    c->bev = bev;
    c->in_cb = evbuffer_add_cb(bufferevent_get_input(bev), on_input, c);
    c->out_cb = evbuffer_add_cb(bufferevent_get_output(bev), on_output, c);
    if (!c->in_cb || !c->out_cb) {
        if (c->in_cb) evbuffer_remove_cb_entry(bufferevent_get_input(bev), c->in_cb);
        free(c);
        return bev; /* served, neither counted nor measured */
    }
    bufferevent_incref(bev);
    list_push(&h->attaching, c);
    event_active(h->attach_ev, EV_TIMEOUT, 0);
    return bev;
}

int http_conn_start(cv_http *h, cv_error *err)
{
    h->attach_ev = event_new(h->s->base, -1, 0, on_attach, h);
    if (!h->attach_ev) return cv_errorf_class(err, CV_ERR_INTERNAL, "out of memory");
    evhttp_set_bevcb(h->http, make_bev, h);
    return 0;
}

void http_conn_stop(cv_http *h)
{
    /* evhttp_free has closed the attached ones (on_close freed them) */
    on_attach(-1, 0, h);
    if (h->attach_ev) event_free(h->attach_ev);
    h->attach_ev = NULL;
}

static http_conn *conn_of(struct evhttp_connection *evcon)
{
    pthread_mutex_lock(&conns_mu);
    http_conn *c = conns;
    while (c && c->evcon != evcon)
        c = c->next;
    pthread_mutex_unlock(&conns_mu);
    return c;
}

void http_conn_set_closecb(struct evhttp_connection *evcon, http_closecb cb, void *arg)
{
    http_conn *c = conn_of(evcon);
    if (!c) {
        evhttp_connection_set_closecb(evcon, cb, arg);
        return;
    }
    c->closecb = cb;
    c->closecb_arg = arg;
}

bool http_conn_request_read(struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    http_conn *c = evcon ? conn_of(evcon) : NULL;
    if (!c) return true;
    if (c->overflow) {
        c->replaced = true;
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
        char msg[160];
        snprintf(msg, sizeof msg,
                 "request header fields are larger than the %d-byte limit "
                 "(--http-max-header-size)",
                 c->h->s->opts.http_max_header_bytes);
        http_reply_json(req, 431, json_pack("{s:s}", "error", msg));
        return false;
    }
    /* The next head starts where this request ended: what evhttp has not
     * taken yet (a pipelined request) is measured again as its head. */
    c->head_start = c->consumed;
    c->line_bytes = 0;
    c->n_lines = 0;
    c->last_cr = false;
    c->head_done = false;
    head_scan_buffer(c, bufferevent_get_input(c->bev), 0, c->consumed);
    head_check_open(c);
    return true;
}

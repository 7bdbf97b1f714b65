/* See hub_harness.h. */
#include "hub_harness.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/net.h"

static bool accepts(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0) close(fd);
    return ok;
}

static bool start_once(th_hub *h, const char *log_dir, const char *const *args)
{
    cv_error err = {.msg = ""};
    if (cv_free_loopback_ports(&h->port, 1, &err) < 0) return false;
    snprintf(h->endpoint, sizeof h->endpoint, "http://127.0.0.1:%d", h->port);
    snprintf(h->log, sizeof h->log, "%s/hub-%d.log", log_dir, h->port);
    char port[16];
    snprintf(port, sizeof port, "%d", h->port);
    const char *argv[64] = {"python3", "tests/hub/hub_server.py", "--port", port, "--log", h->log};
    int n = 6;
    for (int i = 0; args && args[i] && n < 63; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    h->pid = fork();
    if (h->pid == 0) {
        execvp("python3", (char *const *)argv);
        _exit(127);
    }
    for (int i = 0; i < 400; i++) {
        if (accepts(h->port)) return true;
        int st;
        if (waitpid(h->pid, &st, WNOHANG) == h->pid) {
            h->pid = 0;
            return false;
        }
        struct timespec ts = {0, 25000000};
        nanosleep(&ts, NULL);
    }
    th_hub_stop(h);
    return false;
}

bool th_hub_start(th_hub *h, const char *log_dir, const char *const *args)
{
    memset(h, 0, sizeof *h);
    /* Another test may take the free port first: retry on a fresh one. */
    for (int attempt = 0; attempt < 5; attempt++)
        if (start_once(h, log_dir, args)) return true;
    return false;
}

void th_hub_stop(th_hub *h)
{
    if (h->pid <= 0) return;
    kill(h->pid, SIGTERM);
    int st;
    waitpid(h->pid, &st, 0);
    h->pid = 0;
}

/* Calls match(line's fields, ctx) for every logged request; returns how many matched. */
typedef bool (*line_match)(const char *method, const char *path, const char *range,
                           const char *auth, const void *ctx);

static int count_lines(const th_hub *h, line_match match, const void *ctx)
{
    FILE *f = fopen(h->log, "r");
    if (!f) return 0;
    char line[8192];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        const char *m = json_string_value(json_object_get(j, "method"));
        const char *p = json_string_value(json_object_get(j, "path"));
        if (m && p &&
            match(m, p, json_string_value(json_object_get(j, "range")),
                  json_string_value(json_object_get(j, "auth")), ctx))
            n++;
        json_decref(j);
    }
    fclose(f);
    return n;
}

typedef struct {
    const char *method, *path_part, *range, *auth;
} query;

static bool by_range(const char *m, const char *p, const char *r, const char *a, const void *ctx)
{
    const query *q = ctx;
    (void)a;
    return !strcmp(m, q->method) && strstr(p, q->path_part) &&
           (!q->range || !strcmp(r ? r : "", q->range));
}

static bool by_auth(const char *m, const char *p, const char *r, const char *a, const void *ctx)
{
    const query *q = ctx;
    (void)m;
    (void)r;
    return strstr(p, q->path_part) && (q->auth ? a && !strcmp(a, q->auth) : !a);
}

int th_hub_count(const th_hub *h, const char *method, const char *path_part, const char *range)
{
    query q = {method, path_part, range, NULL};
    return count_lines(h, by_range, &q);
}

int th_hub_count_auth(const th_hub *h, const char *path_part, const char *auth)
{
    query q = {NULL, path_part, NULL, auth};
    return count_lines(h, by_auth, &q);
}

const char *th_hub_down_endpoint(void)
{
    static char buf[64];
    int port = 0;
    cv_error err = {.msg = ""};
    if (cv_free_loopback_ports(&port, 1, &err) < 0) abort();
    snprintf(buf, sizeof buf, "http://127.0.0.1:%d", port);
    return buf;
}

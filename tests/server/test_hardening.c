/* No client can take the server down (issue 16): raw HTTP bytes that curl
 * would never send, each answered with an exact status and message while
 * the server keeps serving. */
#define _GNU_SOURCE /* prlimit */
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

static test_server srv;

static int setup(void **state)
{
    (void)state;
    const char *repo = th_make_repo();
    return th_start(&srv, repo, NULL) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return th_stop(&srv) == 0 ? 0 : -1;
}

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

static void send_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        assert_true(n > 0);
        data += n;
        len -= (size_t)n;
    }
}

/* True once buf holds a whole response (headers and Content-Length bytes). */
static bool response_complete(const char *buf, size_t len)
{
    const char *end = strstr(buf, "\r\n\r\n");
    const char *cl = strstr(buf, "Content-Length: ");
    if (!end || !cl || cl > end) return false;
    return len >= (size_t)(end + 4 - buf) + strtoul(cl + 16, NULL, 10);
}

/* What the server sends on fd until one whole response arrived, it closes,
 * or it is silent for timeout_ms (malloc'd, NUL-terminated). */
static char *recv_until_quiet(int fd, int timeout_ms)
{
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    assert_non_null(buf);
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, timeout_ms) <= 0) break;
        if (len + 1024 > cap) buf = realloc(buf, cap *= 2);
        ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
        if (n <= 0) break;
        len += (size_t)n;
        buf[len] = '\0';
        if (response_complete(buf, len)) break;
    }
    buf[len] = '\0';
    return buf;
}

/* One raw request on a fresh connection; the whole response text. */
static char *raw_request(const char *req)
{
    int fd = connect_to(srv.http_port);
    send_all(fd, req, strlen(req));
    char *resp = recv_until_quiet(fd, 10000);
    close(fd);
    return resp;
}

static void expect_response(const char *req, const char *status_line, const char *body)
{
    char *resp = raw_request(req);
    assert_true(strncmp(resp, status_line, strlen(status_line)) == 0);
    const char *b = strstr(resp, "\r\n\r\n");
    assert_non_null(b);
    assert_string_equal(b + 4, body);
    free(resp);
}

static void expect_still_serving(void)
{
    th_expect("GET", th_url(&srv, "/v2/health/live"), NULL, 200, "");
}

/* A model name from the path with %00 or invalid UTF-8: a clear 400, not a
 * truncated name (another model) and not a 500 "out of memory". */
static void test_path_nul_and_invalid_utf8(void **state)
{
    (void)state;
    expect_response("GET /v2/models/kjv%00evil HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400",
                    "{\"error\":\"request path holds a NUL byte (%00)\"}");
    expect_response("GET /v2/models/kjv%FF/ready HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400",
                    "{\"error\":\"request path is not valid UTF-8 after percent-decoding\"}");
    expect_response("GET /v2/models/%C0%AF HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400",
                    "{\"error\":\"request path is not valid UTF-8 after percent-decoding\"}");
    /* Valid UTF-8 that names no model is the usual 404. */
    expect_response("GET /v2/models/%C3%A9t%C3%A9 HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 404",
                    "{\"error\":\"Request for unknown model: '\xc3\xa9t\xc3\xa9' is not found\"}");
    expect_still_serving();
}

/* Two different Content-Length values: the body's end is ambiguous, so the
 * request is refused and the connection closed. */
static void test_conflicting_content_length(void **state)
{
    (void)state;
    expect_response("POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                    "Content-Length: 40\r\n\r\n{}",
                    "HTTP/1.1 400", "{\"error\":\"conflicting Content-Length headers\"}");
    /* The same value twice is one length (RFC 9112 allows it). */
    char *resp = raw_request("POST /v2/repository/index HTTP/1.1\r\nHost: x\r\n"
                             "Content-Length: 2\r\nContent-Length: 2\r\nConnection: close\r\n"
                             "\r\n{}");
    assert_true(strncmp(resp, "HTTP/1.1 200", 12) == 0);
    free(resp);
    expect_still_serving();
}

static double metric(const char *name_and_labels)
{
    char url[96], *text = NULL;
    snprintf(url, sizeof url, "http://127.0.0.1:%d/metrics", srv.metrics_port);
    assert_int_equal(th_http("GET", url, NULL, &text), 200);
    double v = th_metric(text, name_and_labels);
    free(text);
    return v;
}

static double running(void)
{
    return metric("vllm:num_requests_running{model=\"kjv\",version=\"1\"}");
}

static int count_in_log(const char *needle)
{
    char *log = th_log(&srv);
    int n = 0;
    for (const char *p = log; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    free(log);
    return n;
}

/* Waits (up to 120 s) until sequences run (busy) or none does. */
static void wait_running(bool busy)
{
    for (int i = 0; i < 2400 && (running() > 0) != busy; i++)
        usleep(50000);
    assert_true((running() > 0) == busy);
}

/* A non-streaming request whose client leaves mid-generation is aborted in
 * the engine (it kept computing to the end before: issue 16 defect 4). */
static void disconnect_mid_request(const char *path, const char *body)
{
    int before = count_in_log("[vllm] Cancelling the request");
    double ok_before = metric("nv_inference_request_success{model=\"kjv\",version=\"1\"}");
    char head[512];
    snprintf(head, sizeof head,
             "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n",
             path, strlen(body));
    int fd = connect_to(srv.http_port);
    send_all(fd, head, strlen(head));
    send_all(fd, body, strlen(body));
    wait_running(true);
    close(fd);
    wait_running(false);
    assert_int_equal(count_in_log("[vllm] Cancelling the request"), before + 1);
    assert_true(metric("nv_inference_request_success{model=\"kjv\",version=\"1\"}") == ok_before);
    expect_still_serving();
}

static void test_generate_cancelled_on_disconnect(void **state)
{
    (void)state;
    disconnect_mid_request("/v2/models/kjv/generate",
                           "{\"text_input\": \"Once\", \"parameters\": {\"max_tokens\": 500, "
                           "\"n\": 32, \"ignore_eos\": true}}");
}

static void test_completions_cancelled_on_disconnect(void **state)
{
    (void)state;
    disconnect_mid_request("/v1/completions",
                           "{\"model\": \"kjv\", \"prompt\": \"Once\", \"max_tokens\": "
                           "500, \"n\": 32, \"ignore_eos\": true}");
}

/* Defect 3: a prompt of tens of megabytes is tokenized on the worker pool,
 * not on the event loop: a health check sent while it is being tokenized
 * is answered while the big request still has no answer. (On the loop, the
 * big request's answer was written first: 128 MB stalled every client 9 s.) */
static void test_long_prompt_does_not_stall_loop(void **state)
{
    (void)state;
    size_t n_text = 40u << 20;
    char *body = malloc(n_text + 256);
    assert_non_null(body);
    size_t n = (size_t)sprintf(body, "{\"text_input\": \"");
    for (size_t i = 0; i < n_text / 8; i++, n += 8)
        memcpy(body + n, "In the b", 8);
    n += (size_t)sprintf(body + n, "\", \"parameters\": {\"max_tokens\": 1}}");
    char head[256];
    snprintf(head, sizeof head,
             "POST /v2/models/kjv/generate HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n", n);
    int big = connect_to(srv.http_port);
    send_all(big, head, strlen(head));
    send_all(big, body, n);
    free(body);
    usleep(500000); /* the server has read the body and is tokenizing */
    /* (sanitizer builds parse the 40 MB body slowly: wait as long as it takes) */
    int hc = connect_to(srv.http_port);
    const char *health = "GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(hc, health, strlen(health));
    char *resp = recv_until_quiet(hc, 120000);
    close(hc);
    assert_true(strncmp(resp, "HTTP/1.1 200", 12) == 0);
    free(resp);
    struct pollfd p = {.fd = big, .events = POLLIN};
    assert_int_equal(poll(&p, 1, 0), 0); /* still tokenizing */
    resp = recv_until_quiet(big, 120000);
    assert_true(strncmp(resp, "HTTP/1.1 500", 12) == 0); /* the backend's error, as Triton */
    assert_string_equal(strstr(resp, "\r\n\r\n") + 4,
                        "{\"error\":\"Error generating stream: The decoder prompt (length "
                        "15728641) is longer than the maximum model length of 512.\"}");
    free(resp);
    close(big);
}

/* ---- limits and descriptor exhaustion (own servers) ---------------------- */

/* A server of its own with extra flags; its log is checked by the caller. */
static void start_own(test_server *t, const char *const *extra)
{
    assert_true(th_start(t, srv.repo, extra));
}

static char *request_on(int port, const char *req)
{
    int fd = connect_to(port);
    send_all(fd, req, strlen(req));
    char *resp = recv_until_quiet(fd, 10000);
    close(fd);
    return resp;
}

/* Defect 2: a header block beyond --http-max-header-size (many small
 * headers, one big one, or one line that never ends) is refused with 431
 * and the connection closed, instead of being held in memory (four
 * clients once grew the server to 2.7 GB); a body beyond
 * --http-max-input-size answers 413 before it is read. */
static const char head_431_body[] = "{\"error\":\"request header fields are larger than the "
                                    "4096-byte limit (--http-max-header-size)\"}";

static void expect_431(const char *resp)
{
    assert_true(strncmp(resp, "HTTP/1.1 431 Request Header Fields Too Large\r\n", 46) == 0);
    assert_non_null(strstr(resp, "\r\nConnection: close\r\n"));
    assert_non_null(strstr(resp, "\r\nContent-Type: application/json\r\n"));
    const char *b = strstr(resp, "\r\n\r\n");
    assert_non_null(b);
    assert_string_equal(b + 4, head_431_body);
}

static void test_header_and_body_limits(void **state)
{
    (void)state;
    test_server t;
    const char *extra[] = {"--http-max-header-size=4096", "--http-max-input-size=1000", NULL};
    start_own(&t, extra);
    size_t cap = 64 << 10;
    char *req = malloc(cap);
    assert_non_null(req);
    size_t n = (size_t)snprintf(req, cap, "GET /v2/health/live HTTP/1.1\r\nHost: x\r\n");
    for (int i = 0; n + 64 < cap - 1024; i++)
        n += (size_t)snprintf(req + n, cap - n, "X-H%d: v\r\n", i);
    snprintf(req + n, cap - n, "\r\n");
    char *resp = request_on(t.http_port, req);
    expect_431(resp);
    free(resp);
    /* one long header */
    n = (size_t)snprintf(req, cap, "GET /v2/health/live HTTP/1.1\r\nX-Big: ");
    memset(req + n, 'a', 8000);
    snprintf(req + n + 8000, cap - n - 8000, "\r\n\r\n");
    resp = request_on(t.http_port, req);
    expect_431(resp);
    free(resp);
    /* a request line that never ends */
    n = (size_t)snprintf(req, cap, "GET /");
    memset(req + n, 'a', 6000);
    req[n + 6000] = '\0';
    resp = request_on(t.http_port, req);
    expect_431(resp);
    free(resp);
    /* 3628 bytes of lines, 4232 with their line ends: libevent (which
     * leaves the ends out) takes it; the server still answers 431 */
    n = (size_t)snprintf(req, cap, "GET /v2/health/live HTTP/1.1\r\n");
    for (int i = 0; i < 300; i++)
        n += (size_t)snprintf(req + n, cap - n, "X-Pad: 12345\r\n");
    snprintf(req + n, cap - n, "\r\n");
    resp = request_on(t.http_port, req);
    expect_431(resp);
    free(resp);
    /* the second request of a kept-alive connection is measured from its
     * own first byte: a small one passes, a big one gets the 431 */
    int fd = connect_to(t.http_port);
    const char *small = "GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n";
    for (int i = 0; i < 3; i++) {
        send_all(fd, small, strlen(small));
        resp = recv_until_quiet(fd, 10000);
        assert_true(strncmp(resp, "HTTP/1.1 200", 12) == 0);
        free(resp);
    }
    n = (size_t)snprintf(req, cap, "GET /v2/health/live HTTP/1.1\r\nX-Big: ");
    memset(req + n, 'b', 5000);
    snprintf(req + n + 5000, cap - n - 5000, "\r\n\r\n");
    send_all(fd, req, strlen(req));
    resp = recv_until_quiet(fd, 10000);
    expect_431(resp);
    free(resp);
    close(fd);
    /* a body over the cap, refused from its Content-Length alone */
    resp = request_on(t.http_port, "POST /v2/models/kjv/generate HTTP/1.1\r\nHost: x\r\n"
                                   "Content-Length: 5000\r\n\r\n{");
    assert_true(strncmp(resp, "HTTP/1.1 413 Request Entity Too Large\r\n", 39) == 0);
    assert_non_null(strstr(resp, "\r\nConnection: close\r\n"));
    free(resp);
    /* within both limits: served */
    resp = request_on(t.http_port, "GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"
                                   "Connection: close\r\n\r\n");
    assert_true(strncmp(resp, "HTTP/1.1 200", 12) == 0);
    free(resp);
    free(req);
    assert_int_equal(th_stop(&t), 0);
}

/* The connection caps: with --http-max-connections=3 a fourth HTTP
 * connection gets a 503 and is closed, and with --grpc-max-connections=2 a
 * third gRPC connection is closed; each is logged; a closed connection
 * frees its place. */
static const char h2_preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\4\0\0\0\0\0";

/* A gRPC connection that gRPC core serves: its SETTINGS frame arrives. */
static bool grpc_served(int fd)
{
    if (send(fd, h2_preface, sizeof h2_preface - 1, MSG_NOSIGNAL) != sizeof h2_preface - 1)
        return false; /* closed by the server already */
    char buf[64];
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 10000) <= 0) return false;
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    return n >= 9 && buf[3] == 4; /* a frame of type SETTINGS */
}

static void test_connection_caps(void **state)
{
    (void)state;
    test_server t;
    const char *extra[] = {"--http-max-connections=3", "--grpc-max-connections=2", NULL};
    start_own(&t, extra);
    const char *live = "GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n";
    int h[3];
    for (int i = 0; i < 3; i++) {
        h[i] = connect_to(t.http_port);
        send_all(h[i], live, strlen(live));
        char *resp = recv_until_quiet(h[i], 10000);
        assert_true(strncmp(resp, "HTTP/1.1 200", 12) == 0);
        free(resp);
    }
    int over = connect_to(t.http_port);
    char *resp = recv_until_quiet(over, 10000);
    assert_true(strncmp(resp, "HTTP/1.1 503 Service Unavailable\r\n", 34) == 0);
    const char *b = strstr(resp, "\r\n\r\n");
    assert_non_null(b);
    assert_string_equal(b + 4, "{\"error\":\"too many connections: the server's "
                               "--http-max-connections cap is reached\"}");
    free(resp);
    char c;
    assert_int_equal(recv(over, &c, 1, 0), 0); /* closed */
    close(over);
    /* one leaves: a new one is served (once the server saw it leave) */
    close(h[0]);
    bool served = false;
    for (int tries = 0; tries < 100 && !served; tries++) {
        int fd = connect_to(t.http_port);
        send_all(fd, live, strlen(live));
        resp = recv_until_quiet(fd, 10000);
        served = strncmp(resp, "HTTP/1.1 200", 12) == 0;
        free(resp);
        close(fd);
        if (!served) usleep(50000);
    }
    assert_true(served);

    int g[2];
    for (int i = 0; i < 2; i++) {
        g[i] = connect_to(t.grpc_port);
        assert_true(grpc_served(g[i]));
    }
    int gover = connect_to(t.grpc_port);
    assert_false(grpc_served(gover));
    close(gover);
    close(g[0]);
    served = false;
    for (int tries = 0; tries < 100 && !served; tries++) {
        int fd = connect_to(t.grpc_port);
        served = grpc_served(fd);
        close(fd);
        if (!served) usleep(50000);
    }
    assert_true(served);
    for (int i = 1; i < 3; i++)
        close(h[i]);
    close(g[1]);
    assert_int_equal(th_stop(&t), 0);
    char *log = th_log(&t);
    assert_non_null(strstr(log, "HTTP: the cap of 3 open connections (--http-max-connections) "
                                "is reached: refused 1 new connection(s) in the last 0 s"));
    assert_non_null(strstr(log, "gRPC: the cap of 2 open connections (--grpc-max-connections) "
                                "is reached: refused 1 new connection(s) in the last 0 s"));
    free(log);
}

/* The caps' flags refuse what is not a count, naming the flag. */
static void test_connection_cap_flags(void **state)
{
    (void)state;
    const char *bin = getenv("CVLLM_BIN_DIR");
    char cmd[700];
    snprintf(cmd, sizeof cmd,
             "'%s/cvllm-server' --model-repository=%s --http-max-connections=-1 2>&1; "
             "'%s/cvllm-server' --model-repository=%s --grpc-max-connections=many 2>&1",
             bin ? bin : "build/bin", srv.repo, bin ? bin : "build/bin", srv.repo);
    char *out = th_run(cmd);
    assert_string_equal(out, "cvllm-server: --http-max-connections: invalid value '-1' (expected "
                             "0..16777216)\n"
                             "cvllm-server: --grpc-max-connections: invalid value 'many' "
                             "(expected 0..16777216)\n");
    free(out);
}

/* Defect 1 (timeouts): a connection that sends part of a request line and
 * then nothing is closed after --http-idle-timeout-secs. */
static void test_idle_connection_closed(void **state)
{
    (void)state;
    test_server t;
    const char *extra[] = {"--http-idle-timeout-secs=1", NULL};
    start_own(&t, extra);
    int fd = connect_to(t.http_port);
    send_all(fd, "GET /v2/hea", 11);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    assert_int_equal(poll(&p, 1, 30000), 1); /* the old server never closed it */
    char c;
    assert_true(recv(fd, &c, 1, 0) <= 0);
    close(fd);
    assert_int_equal(th_stop(&t), 0);
}

static int count_fds(pid_t pid)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *de; (de = readdir(d));)
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

/* ServerLive over gRPC through Debian's python3-grpcio: "live" or why not. */
static char *grpc_live(int port)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c 'import grpc\n"
             "ch = grpc.insecure_channel(\"127.0.0.1:%d\")\n"
             "f = ch.unary_unary(\"/inference.GRPCInferenceService/ServerLive\")\n"
             "print(\"live\" if f(b\"\", timeout=20) == b\"\\x08\\x01\" else \"not live\")' "
             "2>&1",
             port);
    return th_run(cmd);
}

/* Defect 1 (exhaustion): with the server's descriptor limit lowered to a
 * few dozen above what it uses, clients hold far more connections to both
 * ports than it can accept. The server must neither spin nor flood its log
 * (libevent logged every failed accept), and once the clients leave, both
 * HTTP and gRPC serve again (gRPC core's listener used to stop for good on
 * the first EMFILE). */
static void test_fd_exhaustion_recovers(void **state)
{
    (void)state;
    char *live = grpc_live(srv.grpc_port);
    if (strcmp(live, "live\n")) {
        free(live);
        skip(); /* no python3-grpcio to check gRPC with */
    }
    free(live);
    test_server t;
    const char *extra[] = {"--http-idle-timeout-secs=600", NULL};
    start_own(&t, extra);
    int base = count_fds(t.pid);
    struct rlimit rl = {.rlim_cur = (rlim_t)base + 48, .rlim_max = (rlim_t)base + 48};
    assert_int_equal(prlimit(t.pid, RLIMIT_NOFILE, &rl, NULL), 0);
    enum { N_CONN = 160 };
    int fds[N_CONN];
    for (int i = 0; i < N_CONN; i++) {
        fds[i] = connect_to(i % 4 == 3 ? t.grpc_port : t.http_port);
        if (i % 4 != 3) send_all(fds[i], "GET /v2/hea", 11);
    }
    sleep(3);
    char *log = th_log(&t);
    int lines = 0;
    for (const char *p = log; (p = strstr(p, "accept")); p++)
        lines++;
    /* one line per listener per 10 s, not one per failed accept */
    assert_true(lines >= 1 && lines <= 4);
    assert_null(strstr(log, "Too many open files\n[warn]"));
    free(log);
    for (int i = 0; i < N_CONN; i++)
        close(fds[i]);
    /* Both listeners resume within their back-off. */
    th_expect("GET", th_url(&t, "/v2/health/live"), NULL, 200, "");
    live = grpc_live(t.grpc_port);
    assert_string_equal(live, "live\n");
    free(live);
    assert_int_equal(th_stop(&t), 0);
}

/* Fault injection (test builds): an engine step of model "bad" fails. Its
 * in-flight request ends with the backend's message and status 500 (a
 * stream's error event; its status 500 only while none was sent), the model (with
 * ENABLE_VLLM_HEALTH_CHECK) turns unhealthy and refuses requests, and model
 * "kjv" beside it keeps serving. */
static void test_engine_fault_isolated(void **state)
{
    (void)state;
    const char *repo = th_make_repo();
    char link[512], json[700];
    const char *src = getenv("CVLLM_SOURCE_DIR");
    char cwd[400];
    if (!src) src = getcwd(cwd, sizeof cwd);
    snprintf(link, sizeof link, "%s-faulty-kjv-4m", repo); /* beside the repository */
    char target[512];
    snprintf(target, sizeof target, "%s/samples/models/cvllm-kjv-4m", src);
    assert_int_equal(symlink(target, link), 0);
    const char *pbtxt = "backend: \"vllm\"\n"
                        "parameters: { key: \"ENABLE_VLLM_HEALTH_CHECK\" value: { string_value: "
                        "\"true\" } }\n"
                        "instance_group [ { count: 1 kind: KIND_MODEL } ]\n";
    snprintf(json, sizeof json, "{\"model\": \"%s\"}", link);
    th_add_model(repo, "bad", pbtxt, json);
    snprintf(json, sizeof json, "{\"model\": \"%s\"}", link); /* a second engine, same fault */
    th_add_model(repo, "bad_oai", pbtxt, json);
    th_add_model(repo, "bad_late", pbtxt, json); /* fails after its first two tokens */
    /* 4-token chunks: step 3 fails a longer prompt's prefill, before its first output */
    snprintf(json, sizeof json, "{\"model\": \"%s\", \"max_num_batched_tokens\": 4}", link);
    th_add_model(repo, "bad_early", pbtxt, json);
    setenv("CVLLM_FAULT_FAIL_STEP", "faulty-kjv-4m:3", 1);
    test_server t;
    bool up = th_start(&t, repo, NULL);
    unsetenv("CVLLM_FAULT_FAIL_STEP");
    unlink(link); /* the model is loaded */
    assert_true(up);
    const char *body = "{\"text_input\": \"In the\", \"parameters\": {\"max_tokens\": 8, "
                       "\"ignore_eos\": true}}";
    char *resp = NULL;
    long st = th_http("POST", th_url(&t, "/v2/models/bad/generate"), body, &resp);
    if (st == 200) { /* a build without CVLLM_FAULT_INJECTION */
        free(resp);
        th_stop(&t);
        skip();
    }
    /* The engine's failure, not the request's: Triton's INTERNAL, 500 */
    assert_int_equal(st, 500);
    assert_string_equal(resp, "{\"error\":\"engine step failed: injected fault: step 3 failed "
                              "(CVLLM_FAULT_FAIL_STEP)\"}");
    free(resp);
    /* A stream takes its status from its first response (as Triton's): an
     * engine error before any token is a 500 with the error event ... */
    const char *fault_event = "data: {\"error\":\"engine step failed: injected fault: step 3 "
                              "failed (CVLLM_FAULT_FAIL_STEP)\"}\n\n";
    st = th_sse(th_url(&t, "/v2/models/bad_early/generate_stream"),
                "{\"text_input\": \"In the beginning God created the heaven and the earth\", "
                "\"parameters\": {\"max_tokens\": 8}}",
                0, &resp);
    assert_int_equal(st, 500);
    assert_string_equal(th_last_content_type(), "text/event-stream; charset=utf-8");
    assert_string_equal(resp, fault_event);
    free(resp);
    /* ... one after its first tokens is an error event after them (the
     * status, 200, is sent) */
    st = th_sse(th_url(&t, "/v2/models/bad_late/generate_stream"),
                "{\"text_input\": \"In the\", \"stream\": true, \"parameters\": "
                "{\"max_tokens\": 8, \"ignore_eos\": true}}",
                0, &resp);
    assert_int_equal(st, 200);
    const char *token_event = "data: {\"model_name\":\"bad_late\",\"model_version\":\"1\","
                              "\"text_output\":\"";
    assert_int_equal(strncmp(resp, token_event, strlen(token_event)), 0);
    const char *second = strstr(resp + 1, "data: ");
    assert_non_null(second);
    assert_int_equal(strncmp(second, token_event, strlen(token_event)), 0);
    assert_string_equal(strstr(second + 1, "data: "), fault_event);
    free(resp);
    th_expect("GET", th_url(&t, "/v2/models/bad/ready"), NULL, 400, "");
    st = th_http("POST", th_url(&t, "/v2/models/bad/generate"), body, &resp);
    assert_int_equal(st, 503);
    assert_non_null(strstr(resp, "Model is unavailable due to unhealthy vLLM engine"));
    free(resp);
    /* The OpenAI API answers a failed step as vLLM does: 500 */
    st = th_http("POST", th_url(&t, "/v1/completions"),
                 "{\"model\": \"bad_oai\", \"prompt\": \"In the\", \"max_tokens\": 8, "
                 "\"ignore_eos\": true}",
                 &resp);
    assert_int_equal(st, 500);
    assert_string_equal(resp, "{\"error\":{\"message\":\"engine step failed: injected fault: "
                              "step 3 failed (CVLLM_FAULT_FAIL_STEP)\",\"type\":"
                              "\"InternalServerError\",\"param\":null,\"code\":500}}");
    free(resp);
    th_expect("GET", th_url(&t, "/v2/models/kjv/ready"), NULL, 200, "");
    assert_int_equal(th_http("POST", th_url(&t, "/v2/models/kjv/generate"), body, &resp), 200);
    assert_non_null(strstr(resp, "\"text_output\":\"In the"));
    free(resp);
    assert_int_equal(th_stop(&t), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_path_nul_and_invalid_utf8),
        cmocka_unit_test(test_conflicting_content_length),
        cmocka_unit_test(test_generate_cancelled_on_disconnect),
        cmocka_unit_test(test_completions_cancelled_on_disconnect),
        cmocka_unit_test(test_long_prompt_does_not_stall_loop),
        cmocka_unit_test(test_header_and_body_limits),
        cmocka_unit_test(test_connection_caps),
        cmocka_unit_test(test_connection_cap_flags),
        cmocka_unit_test(test_idle_connection_closed),
        cmocka_unit_test(test_fd_exhaustion_recovers),
        cmocka_unit_test(test_engine_fault_isolated),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

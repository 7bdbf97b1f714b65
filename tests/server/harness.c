/* Test harness for the server tests (see harness.h). */
#include "harness.h"

#include <curl/curl.h>
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/net.h"

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "harness: cannot write %s: %s\n", path, strerror(errno));
        abort();
    }
    fputs(text, f);
    fclose(f);
}

const char *th_model_dir(void)
{
    static char dir[4200];
    const char *src = getenv("CVLLM_SOURCE_DIR");
    char cwd[4096];
    if (!src && !(src = getcwd(cwd, sizeof cwd))) src = ".";
    snprintf(dir, sizeof dir, "%s/samples/models/cvllm-kjv-4m", src);
    return dir;
}

const char *th_model_json(void)
{
    static char buf[4400];
    snprintf(buf, sizeof buf,
             "{\"model\": \"%s\", \"gpu_memory_utilization\": 0.5, \"enforce_eager\": true}",
             th_model_dir());
    return buf;
}

void th_add_model(const char *repo, const char *name, const char *pbtxt, const char *model_json)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", repo, name);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/%s/1", repo, name);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/%s/config.pbtxt", repo, name);
    write_file(p, pbtxt);
    if (model_json) {
        snprintf(p, sizeof p, "%s/%s/1/model.json", repo, name);
        write_file(p, model_json);
    }
}

/* Repositories made by this process, removed at exit. */
static char made[16][64];
static int n_made;

static void remove_repos(void)
{
    for (int i = 0; i < n_made; i++) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%.63s'", made[i]);
        if (system(cmd) != 0) fprintf(stderr, "harness: could not remove %s\n", made[i]);
    }
}

const char *th_make_repo(void)
{
    static char dir[64];
    snprintf(dir, sizeof dir, "/tmp/cvllm_srv_XXXXXX");
    if (!mkdtemp(dir) || n_made == 16) abort();
    if (n_made == 0) atexit(remove_repos);
    snprintf(made[n_made++], sizeof made[0], "%s", dir);
    th_add_model(
        dir, "kjv",
        "backend: \"vllm\"\n"
        "parameters: { key: \"REPORT_CUSTOM_METRICS\" value: { string_value: \"true\" } }\n"
        "instance_group [ { count: 1 kind: KIND_MODEL } ]\n",
        th_model_json());
    return dir;
}

/* One start on fresh ports; false when the server exited during start-up. */
static bool start_once(test_server *s, const char *repo, const char *const *extra)
{
    memset(s, 0, sizeof *s);
    int ports[3];
    cv_error err = {.msg = ""};
    if (cv_free_loopback_ports(ports, 3, &err)) abort();
    s->http_port = ports[0];
    s->grpc_port = ports[1];
    s->metrics_port = ports[2];
    snprintf(s->repo, sizeof s->repo, "%s", repo);
    snprintf(s->log_path, sizeof s->log_path, "%s/server-%d.log", repo, s->http_port);
    const char *bin_dir = getenv("CVLLM_BIN_DIR");
    char bin[512], a_repo[300], a_http[32], a_grpc[32], a_metrics[32];
    snprintf(bin, sizeof bin, "%s/cvllm-server", bin_dir ? bin_dir : "build/bin");
    snprintf(a_repo, sizeof a_repo, "--model-repository=%s", repo);
    snprintf(a_http, sizeof a_http, "--http-port=%d", s->http_port);
    snprintf(a_grpc, sizeof a_grpc, "--grpc-port=%d", s->grpc_port);
    snprintf(a_metrics, sizeof a_metrics, "--metrics-port=%d", s->metrics_port);
    const char *argv[32] = {bin, a_repo, a_http, a_grpc, a_metrics, "--threads=1"};
    int n = 6;
    for (int i = 0; extra && extra[i] && n < 31; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        FILE *log = fopen(s->log_path, "w");
        if (log) {
            dup2(fileno(log), 1);
            dup2(fileno(log), 2);
        }
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    s->pid = pid;
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v2/health/live", s->http_port);
    for (int i = 0; i < 600; i++) {
        char *body = NULL;
        long st = th_http("GET", url, NULL, &body);
        free(body);
        if (st == 200) return true;
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            s->pid = 0;
            return false;
        }
        struct timespec ts = {0, 50000000};
        nanosleep(&ts, NULL);
    }
    return false;
}

bool th_start(test_server *s, const char *repo, const char *const *extra)
{
    /* A port found free can be taken by a concurrent test before the
     * server binds it: a start-up exit is retried on fresh ports. */
    for (int attempt = 0; attempt < 5; attempt++)
        if (start_once(s, repo, extra)) return true;
    return false;
}

int th_stop(test_server *s)
{
    if (s->pid <= 0) return -1;
    kill(s->pid, SIGTERM);
    int status = 0;
    /* A server that does not drain within 60 s is a failure, not a hang. */
    pid_t got = 0;
    for (int i = 0; i < 3000 && got == 0; i++) {
        got = waitpid(s->pid, &status, WNOHANG);
        if (got == 0) usleep(20000);
    }
    if (got == 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, &status, 0);
        s->pid = 0;
        return -1;
    }
    s->pid = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

char *th_log(const test_server *s)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "cat '%s'", s->log_path);
    return th_run(cmd);
}

typedef struct buf {
    char *data;
    size_t len;
    int events;     /* "data:" events seen */
    int stop_after; /* close after this many (0 = never) */
} buf;

static size_t on_data(char *ptr, size_t size, size_t n, void *arg)
{
    buf *b = arg;
    size_t add = size * n;
    char *nd = realloc(b->data, b->len + add + 1);
    if (!nd) return 0;
    b->data = nd;
    memcpy(b->data + b->len, ptr, add);
    b->len += add;
    b->data[b->len] = '\0';
    if (b->stop_after > 0) {
        int events = 0;
        for (const char *p = b->data; (p = strstr(p, "data: ")); p += 6)
            events++;
        if (events >= b->stop_after) return 0; /* aborts the transfer: the client goes away */
    }
    return add;
}

static char last_content_type[128];

const char *th_last_content_type(void)
{
    return last_content_type;
}

static long perform(const char *method, const char *url, const char *body, int stop_after,
                    char **resp)
{
    CURL *c = curl_easy_init();
    buf b = {.stop_after = stop_after};
    b.data = calloc(1, 1);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 120L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (!strcmp(method, "POST")) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
    }
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    if (rc == CURLE_OK || (stop_after > 0 && rc == CURLE_WRITE_ERROR))
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    char *type = NULL;
    curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &type);
    snprintf(last_content_type, sizeof last_content_type, "%s", type ? type : "");
    curl_easy_cleanup(c);
    *resp = b.data;
    return status;
}

long th_http(const char *method, const char *url, const char *body, char **resp)
{
    return perform(method, url, body, 0, resp);
}

long th_sse(const char *url, const char *body, int stop_after, char **events)
{
    return perform("POST", url, body, stop_after, events);
}

double th_metric(const char *text, const char *name_and_labels)
{
    size_t n = strlen(name_and_labels);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (!strncmp(p, name_and_labels, n) && p[n] == ' ') return strtod(p + n + 1, NULL);
    }
    return -1;
}

char *th_run(const char *cmd)
{
    FILE *p = popen(cmd, "r");
    if (!p) return NULL;
    char *out = NULL;
    size_t len = 0;
    char chunk[4096];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, p)) > 0) {
        char *no = realloc(out, len + got + 1);
        if (!no) break;
        out = no;
        memcpy(out + len, chunk, got);
        len += got;
        out[len] = '\0';
    }
    pclose(p);
    return out ? out : calloc(1, 1);
}

const char *th_url(const test_server *s, const char *path)
{
    static char u[512];
    snprintf(u, sizeof u, "http://127.0.0.1:%d%s", s->http_port, path);
    return u;
}

void th_expect(const char *method, const char *url, const char *body, long status,
               const char *want_body)
{
    char *resp = NULL;
    long st = th_http(method, url, body, &resp);
    if (st != status || (want_body && strcmp(resp, want_body)))
        fprintf(stderr, "%s %s -> %ld %s\n", method, url, st, resp);
    assert_int_equal(st, status);
    if (want_body) assert_string_equal(resp, want_body);
    free(resp);
}

char *th_greedy_text(const char *prompt, int max_tokens)
{
    char cmd[5000];
    const char *bin = getenv("CVLLM_BIN_DIR");
    snprintf(cmd, sizeof cmd,
             "%s/cvllm-generate --model %s --prompt '%s' --max-tokens %d "
             "--temperature 0 --threads 1 2>/dev/null",
             bin, th_model_dir(), prompt, max_tokens);
    char *out = th_run(cmd);
    size_t n = strlen(out);
    assert_true(n > 0 && out[n - 1] == '\n');
    out[n - 1] = '\0';
    return out;
}

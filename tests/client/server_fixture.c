/* See server_fixture.h. */
#include "server_fixture.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/net.h"
#include "client.h"

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

/* The model the repository ships, so that a lone clone tests. */
static const char *model_dir(void)
{
    static char dir[4200];
    const char *src = getenv("CVLLM_SOURCE_DIR");
    snprintf(dir, sizeof dir, "%s/samples/models/cvllm-kjv-4m", src ? src : ".");
    return dir;
}

static const char *bin_dir(void)
{
    const char *s = getenv("CVLLM_BIN_DIR");
    return s ? s : "build/bin";
}

char *test_read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot read %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

char *test_http_get(int port, const char *path)
{
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    cvc_http_result res;
    cv_error err = {.msg = ""};
    if (cvc_http_get(url, 10000, &res, &err)) fail_msg("%s", err.msg);
    if (res.status != 200) fail_msg("GET %s: status %ld", url, res.status);
    char *body = res.body ? res.body : strdup("");
    res.body = NULL;
    cvc_http_result_free(&res);
    return body;
}

double test_metric(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, name, n) || (p[n] != '{' && p[n] != ' ')) continue;
        const char *v = p + n;
        if (*v == '{') v = strchr(v, '}') + 1;
        return strtod(v, NULL);
    }
    fail_msg("metric %s not found in /metrics", name);
    return 0;
}

int test_run(char *const argv[], const char *out_path)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) _exit(126);
        dup2(fd, 1);
        dup2(fd, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

enum { MAX_EXTRA_ARGS = 16 };

/* Starts cvllm-server on fresh free ports over s->dir/repo with the extra
 * flags and waits up to wait_s until it is ready; false when it exited
 * during start-up. */
static bool spawn_and_wait(test_server *s, const char *const *extra, int wait_s)
{
    int ports[3];
    cv_error err = {.msg = ""};
    if (cv_free_loopback_ports(ports, 3, &err)) fail_msg("%s", err.msg);
    s->http_port = ports[0];
    s->grpc_port = ports[1];
    s->metrics_port = ports[2];
    char server[512], repo[300], hp[32], gp[32], mp[32], log_path[300];
    snprintf(server, sizeof server, "%s/cvllm-server", bin_dir());
    if (access(server, X_OK)) fail_msg("%s is not built", server);
    snprintf(repo, sizeof repo, "--model-repository=%s/repo", s->dir);
    snprintf(hp, sizeof hp, "--http-port=%d", s->http_port);
    snprintf(gp, sizeof gp, "--grpc-port=%d", s->grpc_port);
    snprintf(mp, sizeof mp, "--metrics-port=%d", s->metrics_port);
    snprintf(log_path, sizeof log_path, "%s/server.log", s->dir);
    const char *argv[6 + MAX_EXTRA_ARGS] = {server, repo, hp, gp, mp};
    int argc = 5;
    for (int i = 0; extra && extra[i]; i++) {
        if (i == MAX_EXTRA_ARGS) fail_msg("more than %d extra server flags", MAX_EXTRA_ARGS);
        argv[argc++] = extra[i];
    }
    s->pid = fork();
    assert_true(s->pid >= 0);
    if (s->pid == 0) {
        int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(server, (char *const *)argv);
        _exit(127);
    }
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v2/health/ready", s->http_port);
    for (int i = 0; i < wait_s * 10; i++) {
        int status;
        if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
            char *log = test_read_file(log_path);
            print_error("cvllm-server exited during start-up; its log:\n%s", log);
            free(log);
            s->pid = 0;
            return false;
        }
        cvc_http_result res;
        if (cvc_http_get(url, 1000, &res, &err) == 0) {
            long st = res.status;
            cvc_http_result_free(&res);
            if (st == 200) return true;
        }
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(s->pid, SIGKILL);
    fail_msg("cvllm-server not ready after %d s", wait_s);
    return false;
}

void test_server_start(test_server *s)
{
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "/tmp/cvllm-client-test-XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    char path[512], text[4400];
    snprintf(path, sizeof path, "%s/repo", s->dir);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(path, sizeof path, "%s/repo/vllm_model", s->dir);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(path, sizeof path, "%s/repo/vllm_model/1", s->dir);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(path, sizeof path, "%s/repo/vllm_model/config.pbtxt", s->dir);
    write_file(
        path, "backend: \"vllm\"\n"
              "instance_group [{ count: 1, kind: KIND_MODEL }]\n"
              "parameters: { key: \"REPORT_CUSTOM_METRICS\" value: { string_value: \"true\" } }\n");
    snprintf(path, sizeof path, "%s/repo/vllm_model/1/model.json", s->dir);
    snprintf(text, sizeof text, "{\"model\": \"%s\", \"seed\": 0}\n", model_dir());
    write_file(path, text);
    test_server_spawn(s);
}

void test_server_spawn(test_server *s)
{
    test_server_spawn_args(s, NULL, 120);
}

void test_server_spawn_args(test_server *s, const char *const *extra, int wait_s)
{
    /* A port found free can be taken by a concurrent test before the
     * server binds it: a start-up exit is retried on fresh ports. */
    for (int attempt = 0; attempt < 5; attempt++)
        if (spawn_and_wait(s, extra, wait_s)) return;
    fail_msg("cvllm-server did not start in 5 attempts");
}

void test_server_stop(test_server *s)
{
    if (!s || s->pid <= 0) return; /* start-up failed: nothing to stop */
    assert_int_equal(kill(s->pid, SIGTERM), 0);
    int status;
    assert_int_equal(waitpid(s->pid, &status, 0), s->pid);
    s->pid = 0;
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s->dir);
    assert_int_equal(system(cmd), 0);
}

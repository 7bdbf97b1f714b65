/* The seed's quick start, offline: samples/model_repository/vllm_model
 * exactly as the seed wrote it ("model": "facebook/opt-125m") served by the
 * real cvllm-server, with HF_ENDPOINT at the test hub serving a tiny random
 * OPT model in facebook/opt-125m's file layout (pytorch_model.bin with the
 * base model's "decoder.*" names, vocab.json + merges.txt; written at test
 * time by tests/hub/make_seed_opt.py from ../shared's GPT-2 vocabulary) and
 * an empty HF_HOME. The seed's client (cvllm-client, and samples/client.py
 * when tritonclient is importable) must print "PASS: vLLM example"; a greedy
 * /generate must equal cvllm-generate on the downloaded snapshot; the
 * download must sit in huggingface_hub's cache layout. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "../common/shared_data.h"
#include "../server/harness.h"
#include "hub_harness.h"

/* The id the seed names; hub_server.py serves it at commit sha1(id). */
#define OPT_ID "facebook/opt-125m"
#define OPT_CACHE "hub/models--facebook--opt-125m"

/* The files the hub serves (all of make_seed_opt.py's output). */
static const char *const opt_files[] = {
    "config.json", "generation_config.json", "pytorch_model.bin",       "vocab.json",
    "merges.txt",  "tokenizer_config.json",  "special_tokens_map.json",
};
enum { N_OPT_FILES = sizeof opt_files / sizeof opt_files[0] };

static const char *bin_dir(void)
{
    const char *b = getenv("CVLLM_BIN_DIR");
    return b ? b : "build/bin";
}

/* Runs a shell command; returns its stdout (malloc'd) and sets *status to
 * its exit status, appended by the shell as the last line. */
static char *run_status(const char *cmd, int *status)
{
    char full[4096];
    snprintf(full, sizeof full, "%s; echo \"exit=$?\"", cmd);
    char *out = th_run(full);
    char *tail = strstr(out, "exit=");
    while (tail && strstr(tail + 1, "exit="))
        tail = strstr(tail + 1, "exit=");
    assert_non_null(tail);
    *status = atoi(tail + 5);
    *tail = '\0';
    return out;
}

static void expect_cmd_ok(const char *cmd)
{
    int status;
    char *out = run_status(cmd, &status);
    if (status != 0) fprintf(stderr, "%s ->\n%s\n", cmd, out);
    assert_int_equal(status, 0);
    free(out);
}

/* cvllm-generate's greedy text on DIR (its trailing newline removed). */
static char *greedy_local(const char *dir, const char *prompt, int max_tokens)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "%s/cvllm-generate --model '%s' --prompt '%s' --max-tokens %d --temperature 0 "
             "--threads 1 2>/dev/null",
             bin_dir(), dir, prompt, max_tokens);
    char *out = th_run(cmd);
    size_t n = strlen(out);
    assert_true(n > 0 && out[n - 1] == '\n');
    out[n - 1] = '\0';
    return out;
}

/* A seed client (CLIENT: the command up to its flags) against the server's
 * gRPC port with the seed's samples/prompts.txt: exit 0, the PASS line
 * last, one results section per prompt, each starting with its prompt (the
 * seed's client asks for the inputs in the outputs). */
static void expect_client_pass(const test_server *s, const char *tmp, const char *client)
{
    char results[400], cmd[2048];
    snprintf(results, sizeof results, "%s/results.txt", tmp);
    remove(results);
    snprintf(cmd, sizeof cmd,
             "%s -u 127.0.0.1:%d --input-prompts samples/prompts.txt --results-file '%s' 2>&1",
             client, s->grpc_port, results);
    int status;
    char *out = run_status(cmd, &status);
    if (status != 0 || !strstr(out, "PASS: vLLM example\n")) fprintf(stderr, "%s\n", out);
    assert_int_equal(status, 0);
    size_t n = strlen(out);
    assert_true(n >= 19);
    assert_string_equal(out + n - 19, "PASS: vLLM example\n");
    free(out);

    snprintf(cmd, sizeof cmd, "cat '%s'", results);
    char *text = th_run(cmd);
    static const char *const prompts[] = {"Hello, my name is", "The most dangerous animal is",
                                          "The capital of France is", "The future of AI is"};
    const char *sep = "\n\n=========\n\n";
    char *p = text;
    for (size_t i = 0; i < 4; i++) {
        char *q = strstr(p, sep);
        assert_non_null(q);
        assert_memory_equal(p, prompts[i], strlen(prompts[i]));
        assert_true((size_t)(q - p) > strlen(prompts[i]));
        p = q + strlen(sep);
    }
    assert_string_equal(p, "");
    free(text);
}

static void expect_generate(const test_server *s, const char *prompt, const char *ref)
{
    char body[512], *resp = NULL;
    snprintf(body, sizeof body,
             "{\"text_input\": \"%s\", \"parameters\": {\"max_tokens\": 16, \"temperature\": 0}}",
             prompt);
    assert_int_equal(th_http("POST", th_url(s, "/v2/models/vllm_model/generate"), body, &resp),
                     200);
    json_t *j = json_loads(resp, 0, NULL);
    assert_non_null(j);
    char want[4096];
    snprintf(want, sizeof want, "%s%s", prompt, ref);
    assert_string_equal(json_string_value(json_object_get(j, "text_output")), want);
    json_decref(j);
    free(resp);
}

/* HF_HOME/hub/models--facebook--opt-125m as huggingface_hub writes it:
 * refs/main holds the commit; snapshots/<commit>/<file> is a relative
 * symlink to ../../blobs/<etag> (the sha256 for the LFS pytorch_model.bin,
 * the git blob sha1 for the rest) whose content is the served file; no
 * .incomplete left. Returns the snapshot directory (static). */
static const char *expect_cache_layout(const char *home, const char *served)
{
    static char snap[600];
    char path[700], cmd[2048];
    snprintf(cmd, sizeof cmd, "printf %%s '%s' | sha1sum | cut -c1-40", OPT_ID);
    char *commit = th_run(cmd);
    commit[strcspn(commit, "\n")] = '\0';
    assert_int_equal(strlen(commit), 40);

    snprintf(cmd, sizeof cmd, "cat '%s/" OPT_CACHE "/refs/main'", home);
    char *ref = th_run(cmd);
    assert_string_equal(ref, commit);
    free(ref);
    snprintf(snap, sizeof snap, "%s/" OPT_CACHE "/snapshots/%s", home, commit);

    for (size_t i = 0; i < N_OPT_FILES; i++) {
        const char *f = opt_files[i];
        /* The etag as the hub computes it: sha256 for LFS, else the git
         * blob id ("blob <size>\0" + content). */
        if (!strcmp(f, "pytorch_model.bin"))
            snprintf(cmd, sizeof cmd, "sha256sum '%s/%s' | cut -c1-64", served, f);
        else
            snprintf(cmd, sizeof cmd,
                     "{ printf 'blob %%s\\0' $(stat -c %%s '%s/%s'); cat '%s/%s'; } | sha1sum | "
                     "cut -c1-40",
                     served, f, served, f);
        char *etag = th_run(cmd);
        etag[strcspn(etag, "\n")] = '\0';
        snprintf(path, sizeof path, "%s/%s", snap, f);
        char target[512], want[512];
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n < 0) fprintf(stderr, "%s: not a symlink\n", path);
        assert_true(n > 0);
        target[n] = '\0';
        snprintf(want, sizeof want, "../../blobs/%s", etag);
        assert_string_equal(target, want);
        snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s/%s'", path, served, f);
        expect_cmd_ok(cmd);
        free(etag);
    }
    snprintf(cmd, sizeof cmd, "find '%s/" OPT_CACHE "' -name '*.incomplete' | wc -l", home);
    char *left = th_run(cmd);
    assert_string_equal(left, "0\n");
    free(left);
    free(commit);
    return snap;
}

static void test_seed_vllm_model(void **state)
{
    (void)state;
    char tmp[] = "/tmp/cv_seed_XXXXXX";
    assert_non_null(mkdtemp(tmp));
    char served[300], home[300], repo[300], cmd[2048];
    snprintf(served, sizeof served, "%s/opt-125m", tmp);
    snprintf(home, sizeof home, "%s/hf_home", tmp);
    snprintf(repo, sizeof repo, "%s/model_repository", tmp);

    snprintf(cmd, sizeof cmd, "python3 tests/hub/make_seed_opt.py '%s' '%s' 2>&1",
             cv_test_shared_root(), served);
    expect_cmd_ok(cmd);
    /* The seed's directory, byte for byte. */
    snprintf(cmd, sizeof cmd,
             "mkdir -p '%s' '%s' && cp -r samples/model_repository/vllm_model '%s/' && "
             "diff -r samples/model_repository/vllm_model '%s/vllm_model' 2>&1",
             home, repo, repo, repo);
    expect_cmd_ok(cmd);
    /* ... and it is still the seed's: the hub id, the GPU share, eager,
     * and no device (auto: the CPU here). */
    snprintf(cmd, sizeof cmd, "%s/vllm_model/1/model.json", repo);
    json_t *mj = json_load_file(cmd, 0, NULL);
    assert_non_null(mj);
    assert_string_equal(json_string_value(json_object_get(mj, "model")), OPT_ID);
    assert_true(json_real_value(json_object_get(mj, "gpu_memory_utilization")) == 0.5);
    assert_true(json_is_true(json_object_get(mj, "enforce_eager")));
    assert_null(json_object_get(mj, "device"));
    json_decref(mj);

    setenv("HF_HOME", home, 1);
    setenv("NO_PROXY", "127.0.0.1,localhost", 1); /* the loopback hub, never a proxy */
    unsetenv("HF_HUB_CACHE");
    unsetenv("HF_HUB_OFFLINE");
    unsetenv("HF_TOKEN");
    th_hub hub;
    char spec[400];
    snprintf(spec, sizeof spec, OPT_ID "=%s", served);
    const char *args[] = {"--repo", spec, NULL};
    assert_true(th_hub_start(&hub, tmp, args));
    setenv("HF_ENDPOINT", hub.endpoint, 1);

    static const char *const flags[] = {"--model-control-mode=explicit", "--load-model=vllm_model",
                                        NULL};
    test_server s;
    assert_true(th_start(&s, repo, flags));

    snprintf(cmd, sizeof cmd, "%s/cvllm-client", bin_dir());
    expect_client_pass(&s, tmp, cmd);
    if (system("python3 -c 'import tritonclient.grpc' 2>/dev/null") == 0)
        expect_client_pass(&s, tmp, "python3 samples/client.py");
    else
        printf("samples/client.py not run: tritonclient is not importable (cvllm-client ran)\n");

    const char *snap = expect_cache_layout(home, served);
    char *ref = greedy_local(snap, "Hello, my name is", 16);
    assert_true(strlen(ref) > 0);
    expect_generate(&s, "Hello, my name is", ref);
    free(ref);

    assert_int_equal(th_stop(&s), 0);
    char *log = th_log(&s);
    if (!strstr(log, "hub: " OPT_ID ": pytorch_model.bin")) fprintf(stderr, "%s\n", log);
    assert_non_null(strstr(log, "hub: " OPT_ID ": pytorch_model.bin"));
    free(log);
    /* The weights came once, through the hub's LFS redirect. */
    assert_int_equal(th_hub_count(&hub, "GET", "/lfs/", NULL), 1);
    th_hub_stop(&hub);

    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    if (!cv_test_have_shared("tokenizers/gpt2/tokenizer.json")) return CV_TEST_SKIP;
    if (system("python3 -c pass 2>/dev/null") != 0) {
        printf("test_seed_sample: python3 (the test hub) not found; skipped\n");
        return CV_TEST_SKIP;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seed_vllm_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

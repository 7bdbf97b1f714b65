/* src/hub against the test hub (hub_server.py on loopback, no internet):
 * a download into an empty cache in huggingface_hub's layout, then the same
 * snapshot offline and with the hub down; resume after a dropped transfer
 * and from a partial file; two processes downloading one model at once; the
 * committed cache fixture written in huggingface_hub's layout; model.json's
 * revision / tokenizer / tokenizer_revision / download_dir; and the exact
 * error texts. */
#include <dirent.h>
#include <errno.h>
#include <openssl/evp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "hub/hub.h"
#include "hub_harness.h"
#include "model/model.h"
#include "server/model_json.h"

#define KJV_DIR "samples/models/cvllm-kjv-4m"
#define KJV_COMMIT "0123456789abcdef0123456789abcdef01234567"
#define FIXTURE_COMMIT "5e1f0c3a9b7d2e4f6a8c0b1d3e5f7a9c2b4d6e8f"

static char root[64]; /* per test: HF_HOME */

static int setup(void **state)
{
    (void)state;
    snprintf(root, sizeof root, "/tmp/cv_hub_XXXXXX");
    if (!mkdtemp(root)) return -1;
    setenv("HF_HOME", root, 1);
    /* a proxy in the environment must not see the loopback hub */
    setenv("NO_PROXY", "127.0.0.1,localhost", 1);
    static const char *const unset[] = {"HF_HUB_CACHE",  "HUGGINGFACE_HUB_CACHE", "HF_TOKEN",
                                        "HF_TOKEN_PATH", "HF_HUB_OFFLINE",        "HF_ENDPOINT"};
    for (size_t i = 0; i < sizeof unset / sizeof *unset; i++)
        unsetenv(unset[i]);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- helpers ----------------------------------------------------------- */

static void start_hub(th_hub *h, ...)
{
    const char *args[32];
    int n = 0;
    va_list ap;
    va_start(ap, h);
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < 31)
        args[n++] = a;
    va_end(ap);
    args[n] = NULL;
    assert_true(th_hub_start(h, root, args));
    setenv("HF_ENDPOINT", h->endpoint, 1);
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void assert_same_file(const char *a, const char *b)
{
    size_t na, nb;
    char *x = read_all(a, &na), *y = read_all(b, &nb);
    assert_non_null(x);
    assert_non_null(y);
    assert_int_equal(na, nb);
    assert_memory_equal(x, y, na);
    free(x);
    free(y);
}

static void digest_hex(const EVP_MD *md, const char *prefix, size_t prefix_len, const char *data,
                       size_t n, char *out)
{
    unsigned char dig[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    EVP_DigestInit_ex(c, md, NULL);
    EVP_DigestUpdate(c, prefix, prefix_len);
    EVP_DigestUpdate(c, data, n);
    EVP_DigestFinal_ex(c, dig, &len);
    EVP_MD_CTX_free(c);
    for (unsigned i = 0; i < len; i++)
        sprintf(out + 2 * i, "%02x", dig[i]);
}

/* The etag the hub gives a file: sha256 for LFS files, else the git blob's sha1. */
static void etag_of(const char *path, bool lfs, char out[65])
{
    size_t n;
    char *data = read_all(path, &n);
    assert_non_null(data);
    char prefix[64];
    int plen = snprintf(prefix, sizeof prefix, "blob %zu", n) + 1; /* with its NUL */
    if (lfs)
        digest_hex(EVP_sha256(), "", 0, data, n, out);
    else
        digest_hex(EVP_sha1(), prefix, (size_t)plen, data, n, out);
    free(data);
}

static void assert_link(const char *path, const char *want)
{
    char got[512];
    ssize_t n = readlink(path, got, sizeof got - 1);
    assert_true(n > 0);
    got[n] = '\0';
    assert_string_equal(got, want);
}

static bool exists(const char *p)
{
    struct stat st;
    return lstat(p, &st) == 0;
}

static int resolve(const char *id, const char *rev, char *out, cv_error *err)
{
    cv_hub_opts o = {.revision = rev, .want = CV_HUB_MODEL};
    return cv_hub_resolve(id, &o, out, 4096, err);
}

static const char *kjv_snapshot(void)
{
    static char p[256];
    snprintf(p, sizeof p, "%s/hub/models--test-org--kjv/snapshots/" KJV_COMMIT, root);
    return p;
}

/* ---- tests ------------------------------------------------------------- */

static void test_download_then_offline(void **state)
{
    (void)state;
    th_hub h;
    start_hub(&h, "--repo", "test-org/kjv=" KJV_DIR "@" KJV_COMMIT, NULL);
    char out[4096], p[8192], want[256], etag[65];
    cv_error err = {.msg = ""};
    assert_int_equal(resolve("test-org/kjv", NULL, out, &err), 0);
    assert_string_equal(out, kjv_snapshot());

    snprintf(p, sizeof p, "%s/hub/models--test-org--kjv/refs/main", root);
    size_t n;
    char *ref = read_all(p, &n);
    assert_non_null(ref);
    assert_string_equal(ref, KJV_COMMIT);
    free(ref);
    static const char *const files[] = {"config.json", "generation_config.json", "tokenizer.json",
                                        "tokenizer_config.json", "model.safetensors"};
    for (size_t i = 0; i < 5; i++) {
        char src[256];
        snprintf(src, sizeof src, KJV_DIR "/%s", files[i]);
        etag_of(src, i == 4, etag);
        snprintf(p, sizeof p, "%s/%s", out, files[i]);
        snprintf(want, sizeof want, "../../blobs/%s", etag);
        assert_link(p, want);
        assert_same_file(p, src);
        /* one GET of each file's bytes */
        snprintf(want, sizeof want, "/resolve/" KJV_COMMIT "/%s", files[i]);
        assert_int_equal(th_hub_count(&h, "HEAD", want, NULL), 1);
        if (i < 4) assert_int_equal(th_hub_count(&h, "GET", want, NULL), 1);
    }
    assert_int_equal(th_hub_count(&h, "GET", "/lfs/", NULL), 1);
    /* README.md is not a file a model needs */
    snprintf(p, sizeof p, "%s/README.md", out);
    assert_false(exists(p));
    assert_int_equal(th_hub_count(&h, "HEAD", "README.md", NULL), 0);

    /* Cached: one revision request, no file requests. */
    assert_int_equal(resolve("test-org/kjv", "main", out, &err), 0);
    assert_int_equal(th_hub_count(&h, "GET", "/api/models/test-org/kjv/revision/main", NULL), 2);
    assert_int_equal(th_hub_count(&h, "HEAD", "/resolve/", NULL), 5);
    /* HF_HUB_OFFLINE=1 sends nothing, even with the hub up */
    setenv("HF_HUB_OFFLINE", "1", 1);
    assert_int_equal(resolve("test-org/kjv", NULL, out, &err), 0);
    assert_int_equal(th_hub_count(&h, "GET", "/api/", NULL), 2);
    unsetenv("HF_HUB_OFFLINE");
    th_hub_stop(&h);

    /* Offline, and online with the hub down: the cached snapshot. */
    setenv("HF_HUB_OFFLINE", "1", 1);
    assert_int_equal(resolve("test-org/kjv", NULL, out, &err), 0);
    assert_string_equal(out, kjv_snapshot());
    assert_int_equal(resolve("test-org/kjv", KJV_COMMIT, out, &err), 0);
    assert_string_equal(out, kjv_snapshot());
    unsetenv("HF_HUB_OFFLINE");
    setenv("HF_ENDPOINT", th_hub_down_endpoint(), 1);
    assert_int_equal(resolve("test-org/kjv", NULL, out, &err), 0);
    assert_string_equal(out, kjv_snapshot());
    cv_model *m = cv_model_load(out, &err);
    assert_non_null(m);
    cv_model_free(m);
}

static void test_resume_after_drop(void **state)
{
    (void)state;
    th_hub h;
    start_hub(&h, "--repo", "test-org/kjv=" KJV_DIR "@" KJV_COMMIT, "--drop",
              "model.safetensors=1000000", "--drop", "tokenizer.json=1000", NULL);
    char out[4096], p[8192];
    cv_error err = {.msg = ""};
    assert_int_equal(resolve("test-org/kjv", NULL, out, &err), 0);
    snprintf(p, sizeof p, "%s/model.safetensors", out);
    assert_same_file(p, KJV_DIR "/model.safetensors");
    snprintf(p, sizeof p, "%s/tokenizer.json", out);
    assert_same_file(p, KJV_DIR "/tokenizer.json");
    assert_int_equal(th_hub_count(&h, "GET", "/lfs/", NULL), 2);
    assert_int_equal(th_hub_count(&h, "GET", "/lfs/", "bytes=1000000-"), 1);
    assert_int_equal(th_hub_count(&h, "GET", "/tokenizer.json", "bytes=1000-"), 1);
    th_hub_stop(&h);
}

/* A partial file an earlier process left: resumed with Range, or, from a
 * server that ignores Range, started over. */
static void test_resume_from_partial_file(void **state)
{
    (void)state;
    char etag[65], p[8192], out[4096], cmd[20000];
    etag_of(KJV_DIR "/model.safetensors", true, etag);
    for (int no_range = 0; no_range < 2; no_range++) {
        snprintf(cmd, sizeof cmd, "rm -rf %s/hub", root);
        assert_int_equal(system(cmd), 0);
        snprintf(p, sizeof p, "%s/hub/models--test-org--kjv/blobs", root);
        snprintf(cmd, sizeof cmd,
                 "mkdir -p %s && head -c 3000000 " KJV_DIR "/model.safetensors > %s/%s.incomplete",
                 p, p, etag);
        assert_int_equal(system(cmd), 0);
        th_hub h;
        start_hub(&h, "--repo", "test-org/kjv=" KJV_DIR "@" KJV_COMMIT,
                  no_range ? "--no-range" : NULL, NULL);
        cv_error err = {.msg = ""};
        assert_int_equal(resolve("test-org/kjv", NULL, out, &err), 0);
        assert_int_equal(th_hub_count(&h, "GET", "/lfs/", NULL), 1);
        assert_int_equal(th_hub_count(&h, "GET", "/lfs/", "bytes=3000000-"), 1);
        snprintf(p, sizeof p, "%s/model.safetensors", out);
        assert_same_file(p, KJV_DIR "/model.safetensors");
        snprintf(p, sizeof p, "%s/hub/models--test-org--kjv/blobs/%s.incomplete", root, etag);
        assert_false(exists(p));
        th_hub_stop(&h);
    }
}

/* The hub goes away mid-download: the retries fail, the error says where
 * the partial file is, no ref names the snapshot; the next start resumes. */
static void test_hub_gone_mid_download(void **state)
{
    (void)state;
    th_hub h;
    start_hub(&h, "--repo", "test-org/kjv=" KJV_DIR "@" KJV_COMMIT, "--exit-after",
              "model.safetensors=2000000", NULL);
    char out[4096], etag[65], want[2048], p[8192];
    cv_error err = {.msg = ""};
    assert_int_equal(resolve("test-org/kjv", NULL, out, &err), -1);
    etag_of(KJV_DIR "/model.safetensors", true, etag);
    snprintf(want, sizeof want,
             "hub: download of 'model.safetensors' of model 'test-org/kjv' from %s failed "
             "(Couldn't connect to server); 2.0 MB are kept in "
             "%s/hub/models--test-org--kjv/blobs/%s.incomplete and the next start resumes from "
             "there",
             h.endpoint, root, etag);
    assert_string_equal(err.msg, want);
    snprintf(p, sizeof p, "%s/hub/models--test-org--kjv/refs/main", root);
    assert_false(exists(p));
    th_hub_stop(&h);

    start_hub(&h, "--repo", "test-org/kjv=" KJV_DIR "@" KJV_COMMIT, NULL);
    assert_int_equal(resolve("test-org/kjv", NULL, out, &err), 0);
    assert_int_equal(th_hub_count(&h, "GET", "/lfs/", NULL), 1);
    assert_int_equal(th_hub_count(&h, "GET", "/lfs/", "bytes=2000000-"), 1);
    assert_int_equal(th_hub_count(&h, "GET", "/resolve/", NULL), 0);
    snprintf(p, sizeof p, "%s/model.safetensors", out);
    assert_same_file(p, KJV_DIR "/model.safetensors");
    th_hub_stop(&h);
}

static void test_two_processes_download_once(void **state)
{
    (void)state;
    th_hub h;
    /* ~0.5 s per copy of the weights, so that the two overlap */
    start_hub(&h, "--repo", "test-org/kjv=" KJV_DIR "@" KJV_COMMIT, "--delay-ms", "2", NULL);
    pid_t kids[2];
    for (int i = 0; i < 2; i++) {
        kids[i] = fork();
        if (kids[i] == 0) {
            char out[4096];
            cv_error err = {.msg = ""};
            int rc = resolve("test-org/kjv", NULL, out, &err);
            if (rc) fprintf(stderr, "child %d: %s\n", i, err.msg);
            _exit(rc == 0 && !strcmp(out, kjv_snapshot()) ? 0 : 1);
        }
    }
    for (int i = 0; i < 2; i++) {
        int st;
        assert_int_equal(waitpid(kids[i], &st, 0), kids[i]);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    assert_int_equal(th_hub_count(&h, "GET", "/api/models/", NULL), 2);
    assert_int_equal(th_hub_count(&h, "GET", "/lfs/", NULL), 1);
    assert_int_equal(th_hub_count(&h, "GET", "/resolve/", NULL), 4);
    char p[8192];
    snprintf(p, sizeof p, "%s/model.safetensors", kjv_snapshot());
    assert_same_file(p, KJV_DIR "/model.safetensors");
    th_hub_stop(&h);
}

/* huggingface_hub's FileLock is fcntl.flock on the same lock path: while a
 * Python process holds .locks/models--test-org--kjv/<etag>.lock and puts
 * the blob in place, cvllm waits and then downloads nothing. */
static void test_lock_shared_with_python(void **state)
{
    (void)state;
    char etag[65], cmd[20000], ready[256];
    th_hub h;
    start_hub(&h, "--repo", "test-org/kjv=" KJV_DIR "@" KJV_COMMIT, NULL);
    etag_of(KJV_DIR "/model.safetensors", true, etag);
    snprintf(ready, sizeof ready, "%s/python-holds-lock", root);
    snprintf(cmd, sizeof cmd,
             "python3 -c 'import fcntl, os, shutil, sys, time\n"
             "locks, blobs, etag, ready = sys.argv[1:5]\n"
             "os.makedirs(locks, exist_ok=True); os.makedirs(blobs, exist_ok=True)\n"
             "f = open(os.path.join(locks, etag + \".lock\"), \"w\")\n"
             "fcntl.flock(f, fcntl.LOCK_EX); open(ready, \"w\").close(); time.sleep(4)\n"
             "shutil.copyfile(\"" KJV_DIR "/model.safetensors\", os.path.join(blobs, etag))\n"
             "' %s/hub/.locks/models--test-org--kjv %s/hub/models--test-org--kjv/blobs %s %s &",
             root, root, etag, ready);
    assert_int_equal(system(cmd), 0);
    for (int i = 0; i < 600 && !exists(ready); i++)
        usleep(10000);
    assert_true(exists(ready));
    char out[4096], p[8192];
    cv_error err = {.msg = ""};
    assert_int_equal(resolve("test-org/kjv", NULL, out, &err), 0);
    assert_int_equal(th_hub_count(&h, "GET", "/lfs/", NULL), 0);
    snprintf(p, sizeof p, "%s/model.safetensors", out);
    assert_same_file(p, KJV_DIR "/model.safetensors");
    th_hub_stop(&h);
}

/* tests/fixtures/hf_cache: a cache in huggingface_hub's layout (refs,
 * blobs, relative snapshot symlinks as git stores them), read with no hub. */
static void test_committed_hf_cache(void **state)
{
    (void)state;
    setenv("HF_HUB_CACHE", "tests/fixtures/hf_cache/hub", 1);
    setenv("HF_HUB_OFFLINE", "1", 1);
    char out[4096];
    cv_error err = {.msg = ""};
    const char *want =
        "tests/fixtures/hf_cache/hub/models--test-org--tiny-llama/snapshots/" FIXTURE_COMMIT;
    static const char *const revs[] = {NULL, "main", "v1.0", FIXTURE_COMMIT};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(resolve("test-org/tiny-llama", revs[i], out, &err), 0);
        assert_string_equal(out, want);
    }
    cv_model *m = cv_model_load(out, &err);
    assert_non_null(m);
    assert_int_equal(cv_model_get_config(m)->n_layers, 2);
    cv_model_free(m);
    /* online with no hub: the same snapshot, nothing written */
    unsetenv("HF_HUB_OFFLINE");
    setenv("HF_ENDPOINT", th_hub_down_endpoint(), 1);
    assert_int_equal(resolve("test-org/tiny-llama", NULL, out, &err), 0);
    assert_string_equal(out, want);
    assert_int_equal(resolve("test-org/tiny-llama", "v2.0", out, &err), -1);
}

static void test_model_json_keys(void **state)
{
    (void)state;
    th_hub h;
    start_hub(&h, "--repo", "test-org/kjv=" KJV_DIR "@" KJV_COMMIT, "--repo",
              "test-org/tok=" KJV_DIR, "--tag", "test-org/kjv=v1", "--tag", "test-org/tok=v1",
              NULL);
    char mj[1024], want[512];
    snprintf(mj, sizeof mj,
             "{\"model\": \"test-org/kjv\", \"revision\": \"v1\", \"download_dir\": \"%s/dl\", "
             "\"tokenizer\": \"test-org/tok\", \"tokenizer_revision\": null}",
             root);
    cv_engine_args args;
    memset(&args, 0, sizeof args);
    cv_model_json_extra extra;
    cv_error err = {.msg = ""};
    assert_int_equal(
        cv_model_json_parse(mj, strlen(mj), "model.json", "/nonexistent", &args, &extra, &err), 0);
    snprintf(want, sizeof want, "%s/dl/models--test-org--kjv/snapshots/" KJV_COMMIT, root);
    assert_string_equal(args.model, want);
    snprintf(want, sizeof want, "%s/dl/models--test-org--kjv/refs/v1", root);
    assert_true(exists(want));
    /* the tokenizer id at tokenizer_revision = revision, in the HF cache,
     * with the tokenizer files and config.json only */
    assert_int_equal(th_hub_count(&h, "GET", "/api/models/test-org/tok/revision/v1", NULL), 1);
    assert_int_equal(th_hub_count(&h, "HEAD", "/test-org/tok/resolve/", NULL), 3);
    assert_non_null(strstr(args.tokenizer, "/hub/models--test-org--tok/snapshots/"));
    assert_true(strncmp(args.tokenizer, root, strlen(root)) == 0);

    /* no tokenizer key, a tokenizer_revision of its own: the model id's
     * tokenizer files at that revision */
    const char *mj2 = "{\"model\": \"test-org/kjv\", \"tokenizer_revision\": \"v1\"}";
    memset(&args, 0, sizeof args);
    assert_int_equal(
        cv_model_json_parse(mj2, strlen(mj2), "model.json", "/nonexistent", &args, &extra, &err),
        0);
    assert_string_equal(args.model, kjv_snapshot());
    assert_string_equal(args.tokenizer, kjv_snapshot());
    assert_int_equal(th_hub_count(&h, "GET", "/api/models/test-org/kjv/revision/main", NULL), 1);
    assert_int_equal(th_hub_count(&h, "GET", "/api/models/test-org/kjv/revision/v1", NULL), 2);
    th_hub_stop(&h);
}

static void test_errors(void **state)
{
    (void)state;
    char dir[256], p[8192], out[4096], want[1024];
    /* a repository without weights */
    snprintf(dir, sizeof dir, "%s/noweights", root);
    mkdir(dir, 0755);
    snprintf(p, sizeof p, "cp " KJV_DIR "/config.json %s/", dir);
    assert_int_equal(system(p), 0);
    char repo_spec[400];
    snprintf(repo_spec, sizeof repo_spec, "test-org/noweights=%s@" KJV_COMMIT, dir);
    th_hub h;
    start_hub(&h, "--repo", "test-org/kjv=" KJV_DIR "@" KJV_COMMIT, "--repo", repo_spec, "--gated",
              "test-org/kjv=secret", "--cdn-host", "localhost", NULL);
    cv_error err = {.msg = ""};

    assert_int_equal(resolve("test-org/kjv", NULL, out, &err), -1);
    snprintf(want, sizeof want,
             "hub: model 'test-org/kjv' at %s: HTTP 401 for revision 'main': the model is gated "
             "or private (or does not exist); set HF_TOKEN to a HuggingFace token with access",
             h.endpoint);
    assert_string_equal(err.msg, want);

    setenv("HF_TOKEN", "wrong", 1);
    assert_int_equal(resolve("test-org/kjv", NULL, out, &err), -1);
    snprintf(want, sizeof want,
             "hub: model 'test-org/kjv' at %s: HTTP 403 for revision 'main': the token from "
             "HF_TOKEN has no access to this gated or private model; request access on the "
             "model's page, or set HF_TOKEN to a token that has it",
             h.endpoint);
    assert_string_equal(err.msg, want);
    unsetenv("HF_TOKEN");

    /* the token file `huggingface-cli login` writes */
    snprintf(p, sizeof p, "%s/token", root);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs("secret\n", f);
    fclose(f);
    assert_int_equal(resolve("test-org/kjv", NULL, out, &err), 0);
    assert_int_equal(th_hub_count(&h, "GET", "/api/models/test-org/kjv", NULL), 3);
    /* the token goes to the hub, not to the CDN (another origin) */
    assert_int_equal(th_hub_count_auth(&h, "/api/models/test-org/kjv", "Bearer secret"), 1);
    assert_int_equal(th_hub_count_auth(&h, "/test-org/kjv/resolve/", "Bearer secret"), 9);
    assert_int_equal(th_hub_count_auth(&h, "/lfs/", NULL), 1);

    assert_int_equal(resolve("test-org/none", NULL, out, &err), -1);
    snprintf(want, sizeof want,
             "hub: no model 'test-org/none' at %s (HTTP 404 for revision 'main'); check the "
             "model id",
             h.endpoint);
    assert_string_equal(err.msg, want);

    assert_int_equal(resolve("test-org/kjv", "v9", out, &err), -1);
    snprintf(want, sizeof want,
             "hub: model 'test-org/kjv' at %s has no revision 'v9' (HTTP 404); check the revision",
             h.endpoint);
    assert_string_equal(err.msg, want);

    assert_int_equal(resolve("test-org/noweights", NULL, out, &err), -1);
    assert_string_equal(err.msg, "hub: model 'test-org/noweights' (commit " KJV_COMMIT
                                 ") has no weights: neither *.safetensors nor pytorch_model*.bin");

    assert_int_equal(resolve("not an id", NULL, out, &err), -1);
    assert_string_equal(err.msg,
                        "'not an id' is not a local directory nor a hub id of the form org/name");
    th_hub_stop(&h);

    const char *down = th_hub_down_endpoint();
    setenv("HF_ENDPOINT", down, 1);
    assert_int_equal(resolve("test-org/other", NULL, out, &err), -1);
    snprintf(want, sizeof want,
             "hub: cannot reach %s for model 'test-org/other' (Couldn't connect to server) and it "
             "is not in the cache %s/hub/models--test-org--other; check the network and "
             "HF_ENDPOINT, or fill the cache on a machine with network access",
             down, root);
    assert_string_equal(err.msg, want);

    setenv("HF_HUB_OFFLINE", "1", 1);
    assert_int_equal(resolve("test-org/other", "v2", out, &err), -1);
    snprintf(want, sizeof want,
             "hub: model 'test-org/other' (revision 'v2') is not in the cache "
             "%s/hub/models--test-org--other and HF_HUB_OFFLINE=1 forbids downloading it; unset "
             "HF_HUB_OFFLINE, or fill the cache on a machine with network access",
             root);
    assert_string_equal(err.msg, want);
}

/* A corrupted file: the git sha1 of a small file, then the sha256 of an
 * LFS file, fail their checks; the partial file is removed and no ref
 * names the incomplete snapshot. */
static void test_checksums(void **state)
{
    (void)state;
    static const struct {
        const char *file, *kind;
        bool lfs;
    } cases[] = {{"tokenizer.json", "git sha1", false}, {"model.safetensors", "sha256", true}};
    for (size_t i = 0; i < 2; i++) {
        th_hub h;
        start_hub(&h, "--repo", "test-org/kjv=" KJV_DIR "@" KJV_COMMIT, "--corrupt", cases[i].file,
                  NULL);
        char out[4096], etag[65], want[1024], got[65], p[8192], src[256];
        cv_error err = {.msg = ""};
        assert_int_equal(resolve("test-org/kjv", NULL, out, &err), -1);
        snprintf(src, sizeof src, KJV_DIR "/%s", cases[i].file);
        etag_of(src, cases[i].lfs, etag);
        size_t n;
        char *data = read_all(src, &n);
        data[n - 1] ^= (char)0xFF;
        char prefix[64];
        int plen = snprintf(prefix, sizeof prefix, "blob %zu", n) + 1;
        if (cases[i].lfs)
            digest_hex(EVP_sha256(), "", 0, data, n, got);
        else
            digest_hex(EVP_sha1(), prefix, (size_t)plen, data, n, got);
        free(data);
        snprintf(want, sizeof want,
                 "hub: '%s' of model 'test-org/kjv' failed its %s check (expected %s, got %s); "
                 "removed, try again",
                 cases[i].file, cases[i].kind, etag, got);
        assert_string_equal(err.msg, want);
        snprintf(p, sizeof p, "%s/hub/models--test-org--kjv/blobs/%s.incomplete", root, etag);
        assert_false(exists(p));
        snprintf(p, sizeof p, "%s/hub/models--test-org--kjv/refs/main", root);
        assert_false(exists(p));
        th_hub_stop(&h);
    }
}

/* A write that fails (the partial file is /dev/full) is an error at once,
 * not a retried transfer. */
static void test_disk_full(void **state)
{
    (void)state;
    char etag[65], p[8192], out[4096], want[8400];
    etag_of(KJV_DIR "/model.safetensors", true, etag);
    snprintf(p, sizeof p, "%s/hub/models--test-org--kjv/blobs", root);
    char cmd[20000];
    snprintf(cmd, sizeof cmd, "mkdir -p %s && ln -s /dev/full %s/%s.incomplete", p, p, etag);
    assert_int_equal(system(cmd), 0);
    th_hub h;
    start_hub(&h, "--repo", "test-org/kjv=" KJV_DIR "@" KJV_COMMIT, NULL);
    cv_error err = {.msg = ""};
    assert_int_equal(resolve("test-org/kjv", NULL, out, &err), -1);
    snprintf(want, sizeof want, "hub: cannot write %s/%s.incomplete: No space left on device", p,
             etag);
    assert_string_equal(err.msg, want);
    assert_int_equal(th_hub_count(&h, "GET", "/lfs/", NULL), 1);
    th_hub_stop(&h);
}

/* A repository directory under root with one small file per name (an
 * index gets a weight_map over `shards`), served as test-org/<name>. */
static void make_repo(const char *name, const char *const *files, const char *shards)
{
    char p[8192];
    snprintf(p, sizeof p, "%s/repos/%s/original", root, name);
    char cmd[8300];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", p);
    assert_int_equal(system(cmd), 0);
    for (size_t i = 0; files[i]; i++) {
        snprintf(p, sizeof p, "%s/repos/%s/%s", root, name, files[i]);
        FILE *f = fopen(p, "w");
        assert_non_null(f);
        if (strstr(files[i], ".index.json"))
            fprintf(f, "{\"metadata\": {}, \"weight_map\": {%s}}", shards);
        else
            fprintf(f, "contents of %s", files[i]);
        fclose(f);
    }
}

/* The names in a snapshot directory, sorted, joined by ' '. */
static void list_dir(const char *dir, char *out, size_t cap)
{
    struct dirent **names;
    int n = scandir(dir, &names, NULL, alphasort);
    assert_true(n >= 0);
    out[0] = '\0';
    for (int i = 0; i < n; i++) {
        if (names[i]->d_name[0] != '.') {
            if (out[0]) strncat(out, " ", cap - strlen(out) - 1);
            strncat(out, names[i]->d_name, cap - strlen(out) - 1);
        }
        free(names[i]);
    }
    free(names);
}

/* Which files are fetched: safetensors preferred over .bin, the shards an
 * index names (not consolidated.safetensors), pytorch_model*.bin where
 * there are no safetensors (not training_args.bin, tf_model.h5, ...), the
 * tokenizer files, nothing in subdirectories; a tokenizer-only lookup. */
static void test_file_choice(void **state)
{
    (void)state;
    static const char *const opt[] = {"README.md",
                                      "LICENSE.md",
                                      "config.json",
                                      "flax_model.msgpack",
                                      "generation_config.json",
                                      "merges.txt",
                                      "pytorch_model.bin",
                                      "special_tokens_map.json",
                                      "tf_model.h5",
                                      "tokenizer_config.json",
                                      "vocab.json",
                                      "training_args.bin",
                                      NULL};
    static const char *const bin_shards[] = {"config.json", "pytorch_model-00001-of-00002.bin",
                                             "pytorch_model-00002-of-00002.bin",
                                             "pytorch_model.bin.index.json", NULL};
    static const char *const both[] = {"config.json", "model.safetensors", "pytorch_model.bin",
                                       NULL};
    static const char *const st_shards[] = {"config.json",
                                            "model-00001-of-00002.safetensors",
                                            "model-00002-of-00002.safetensors",
                                            "model.safetensors.index.json",
                                            "consolidated.safetensors",
                                            "original/params.safetensors",
                                            "tokenizer.json",
                                            "chat_template.jinja",
                                            "added_tokens.json",
                                            "tokenizer.model",
                                            NULL};
    static const char *const no_config[] = {"model.safetensors", "tokenizer.json", NULL};
    make_repo("opt", opt, "");
    make_repo("binshards", bin_shards,
              "\"a\": \"pytorch_model-00001-of-00002.bin\", \"b\": "
              "\"pytorch_model-00002-of-00002.bin\", \"c\": \"pytorch_model-00002-of-00002.bin\"");
    make_repo("both", both, "");
    make_repo("stshards", st_shards,
              "\"a\": \"model-00001-of-00002.safetensors\", \"b\": "
              "\"model-00002-of-00002.safetensors\"");
    make_repo("noconfig", no_config, "");
    static const char *const ids[] = {"opt", "binshards", "both", "stshards", "noconfig"};
    char specs[5][300];
    for (int i = 0; i < 5; i++)
        snprintf(specs[i], sizeof specs[i], "test-org/%s=%s/repos/%s", ids[i], root, ids[i]);
    th_hub h;
    start_hub(&h, "--repo", specs[0], "--repo", specs[1], "--repo", specs[2], "--repo", specs[3],
              "--repo", specs[4], NULL);
    static const char *const want[] = {
        "config.json generation_config.json merges.txt pytorch_model.bin "
        "special_tokens_map.json tokenizer_config.json vocab.json",
        "config.json pytorch_model-00001-of-00002.bin pytorch_model-00002-of-00002.bin "
        "pytorch_model.bin.index.json",
        "config.json model.safetensors",
        "added_tokens.json chat_template.jinja config.json model-00001-of-00002.safetensors "
        "model-00002-of-00002.safetensors model.safetensors.index.json tokenizer.json",
    };
    char out[4096], id[64], got[1024];
    cv_error err = {.msg = ""};
    for (int i = 0; i < 4; i++) {
        snprintf(id, sizeof id, "test-org/%s", ids[i]);
        assert_int_equal(resolve(id, NULL, out, &err), 0);
        list_dir(out, got, sizeof got);
        assert_string_equal(got, want[i]);
    }
    assert_int_equal(resolve("test-org/noconfig", NULL, out, &err), -1);
    /* the test hub's default commit is the sha1 of the id */
    char commit[41], msg[512];
    digest_hex(EVP_sha1(), "", 0, "test-org/noconfig", strlen("test-org/noconfig"), commit);
    snprintf(msg, sizeof msg,
             "hub: model 'test-org/noconfig' (commit %s) has no config.json; it is not a "
             "transformers model repository",
             commit);
    assert_string_equal(err.msg, msg);
    /* a tokenizer lookup takes the tokenizer files (and config.json) only */
    cv_hub_opts tok = {.want = CV_HUB_TOKENIZER};
    assert_int_equal(cv_hub_resolve("test-org/noconfig", &tok, out, sizeof out, &err), 0);
    list_dir(out, got, sizeof got);
    assert_string_equal(got, "tokenizer.json");
    th_hub_stop(&h);
}

static void test_repo_ids(void **state)
{
    (void)state;
    static const char *const good[] = {"facebook/opt-125m", "Qwen/Qwen2.5-0.5B-Instruct", "a/b",
                                       "org_1/name.v2"};
    static const char *const bad[] = {"gpt2",   "a/b/c",  "/abs/path", "org/",   "/name",
                                      "o--x/n", "org/..", "org/a..b",  "o rg/n", "./x"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        assert_true(cv_hub_is_repo_id(good[i]));
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_false(cv_hub_is_repo_id(bad[i]));
}

int main(void)
{
    if (system("python3 -c pass 2>/dev/null") != 0) {
        printf("test_hub: python3 (the test hub) not found; skipped\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_download_then_offline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_after_drop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_from_partial_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hub_gone_mid_download, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_processes_download_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lock_shared_with_python, setup, teardown),
        cmocka_unit_test_setup_teardown(test_committed_hf_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(test_model_json_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_checksums, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_choice, setup, teardown),
        cmocka_unit_test(test_repo_ids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

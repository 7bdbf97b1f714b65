/* The model repository under concurrent load / unload / acquire (issue 16,
 * defect 5): threads reload, unload and acquire the shipped sample model
 * (samples/models/cvllm-kjv-4m) at once. Under ASan the old code read a
 * freed model (cv_repository_load logged m->version_str after a concurrent
 * unload had freed m); here every call must return a defined result and the
 * repository must end in a consistent state. */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/log.h"
#include "server/repository.h"

enum { STORM_ROUNDS = 40 };

static char repo_dir[64];

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* A repository with model "kjv" over the shipped sample model. */
static int make_repo(void **state)
{
    (void)state;
    snprintf(repo_dir, sizeof repo_dir, "/tmp/cvllm_repo_XXXXXX");
    if (!mkdtemp(repo_dir)) return -1;
    char p[512], json[1024];
    const char *src = getenv("CVLLM_SOURCE_DIR");
    char cwd[400];
    if (!src) src = getcwd(cwd, sizeof cwd);
    snprintf(p, sizeof p, "%s/kjv", repo_dir);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/kjv/1", repo_dir);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/kjv/config.pbtxt", repo_dir);
    write_text(p, "backend: \"vllm\"\ninstance_group [ { count: 1 kind: KIND_MODEL } ]\n");
    snprintf(p, sizeof p, "%s/kjv/1/model.json", repo_dir);
    snprintf(json, sizeof json, "{\"model\": \"%s/samples/models/cvllm-kjv-4m\"}", src);
    write_text(p, json);
    return 0;
}

static int remove_repo(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", repo_dir);
    return system(cmd) == 0 ? 0 : -1;
}

typedef struct storm {
    cv_repository *repo;
    atomic_int loads_ok, unloads_ok, acquired;
    atomic_int bad; /* unexpected results, checked on the main thread */
    atomic_bool stop;
} storm;

static void *loader(void *arg)
{
    storm *s = arg;
    for (int i = 0; i < STORM_ROUNDS; i++) {
        cv_error err = {.msg = ""};
        if (cv_repository_load(s->repo, "kjv", &err) == 0)
            atomic_fetch_add(&s->loads_ok, 1);
        else if (!strstr(err.msg, "a load of this model is in progress"))
            atomic_fetch_add(&s->bad, 1); /* the only refusal a concurrent load may give */
    }
    return NULL;
}

/* Unloads every second freshly loaded model the moment it is seen: that
 * model replaced a loaded one, so its loader is still freeing the old
 * engine outside the lock when the unload frees the new model (the window
 * where the old code read it). */
static void *unloader(void *arg)
{
    storm *s = arg;
    const cv_model *seen = NULL;
    int fresh = 0;
    while (!atomic_load(&s->stop)) {
        cv_error err = {.msg = ""};
        cv_model *m = cv_repository_acquire(s->repo, "kjv", NULL, &err);
        bool is_new = m && m != seen;
        if (m) {
            seen = m;
            cv_model_release(m);
        }
        if (!is_new || ++fresh % 2) {
            sched_yield();
            continue;
        }
        if (cv_repository_unload(s->repo, "kjv", &err) == 0)
            atomic_fetch_add(&s->unloads_ok, 1);
        else
            atomic_fetch_add(&s->bad, 1);
    }
    return NULL;
}

static void *acquirer(void *arg)
{
    storm *s = arg;
    while (!atomic_load(&s->stop)) {
        cv_error err = {.msg = ""};
        cv_model *m = cv_repository_acquire(s->repo, "kjv", NULL, &err);
        if (m) {
            if (strcmp(m->name, "kjv") || strcmp(m->version_str, "1")) atomic_fetch_add(&s->bad, 1);
            cv_model_release(m);
            atomic_fetch_add(&s->acquired, 1);
        } else if (err.cls != CV_ERR_UNAVAILABLE) {
            atomic_fetch_add(&s->bad, 1);
        }
        sched_yield();
    }
    return NULL;
}

static void test_load_unload_storm(void **state)
{
    (void)state;
    /* INFO: the old code's use-after-free was in the "successfully loaded" line. */
    cv_log_set_level(CV_LOG_INFO);
    const char *roots[] = {repo_dir};
    cv_error err = {.msg = ""};
    storm s = {.repo = cv_repository_create(roots, 1, 1, &err)};
    assert_non_null(s.repo);
    pthread_t load[2], unload, acq;
    for (int i = 0; i < 2; i++)
        pthread_create(&load[i], NULL, loader, &s);
    pthread_create(&unload, NULL, unloader, &s);
    pthread_create(&acq, NULL, acquirer, &s);
    for (int i = 0; i < 2; i++)
        pthread_join(load[i], NULL);
    atomic_store(&s.stop, true);
    pthread_join(unload, NULL);
    pthread_join(acq, NULL);
    assert_int_equal(atomic_load(&s.bad), 0);
    assert_true(atomic_load(&s.loads_ok) > 0);
    assert_true(atomic_load(&s.unloads_ok) > 0);

    /* Settled: one more load serves, one more unload leaves it unavailable. */
    assert_int_equal(cv_repository_load(s.repo, "kjv", &err), 0);
    cv_model *m = cv_repository_acquire(s.repo, "kjv", "1", &err);
    assert_non_null(m);
    cv_model_release(m);
    assert_int_equal(cv_repository_unload(s.repo, "kjv", &err), 0);
    assert_null(cv_repository_acquire(s.repo, "kjv", NULL, &err));
    assert_int_equal(err.cls, CV_ERR_UNAVAILABLE);
    assert_string_equal(err.msg, "Request for unknown model: 'kjv' has no available versions");
    cv_repository_destroy(s.repo);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_load_unload_storm, make_repo, remove_repo),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

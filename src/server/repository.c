/* Model repository: find, load, unload and count references to models. */
#include "server/repository.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/log.h"

typedef struct model_entry {
    char name[256];
    cv_model_state state;
    char version[24];
    char reason[CV_ERROR_MSG_BYTES];
    cv_model *model; /* the READY model, holding the repository's reference */
    uint64_t stamp;  /* newest mtime (ns) of the model's files at the last load */
    /* The last load found a model cvllm does not serve (another backend,
     * an ensemble): it stays UNAVAILABLE with the reason, and neither
     * fails the start nor holds back readiness. */
    bool unsupported;
} model_entry;

struct cv_repository {
    pthread_mutex_t mu;
    char **roots;
    int n_roots;
    int n_threads;
    model_entry *entries;
    int n_entries;
};

static const char *const state_names[] = {"", "LOADING", "READY", "UNAVAILABLE"};

const char *cv_model_state_name(cv_model_state s)
{
    return (unsigned)s <= CV_MODEL_UNAVAILABLE ? state_names[s] : "";
}

/* opendir(3) by open(2) and fdopendir(3). glibc's opendir creates its
 * descriptor with a system call that ThreadSanitizer does not intercept,
 * so TSan kept what it knew of an earlier descriptor of that number (a
 * gRPC socket's epoll_ctl on another thread) and took the closedir of a
 * model directory for a race with it. Through open, TSan sees the
 * descriptor created. */
static DIR *open_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return NULL;
    DIR *d = fdopendir(fd);
    if (!d) {
        int e = errno;
        close(fd);
        errno = e;
    }
    return d;
}

static bool is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

cv_repository *cv_repository_create(const char *const *roots, int n_roots, int n_threads,
                                    cv_error *err)
{
    cv_repository *r = calloc(1, sizeof *r);
    if (!r || !(r->roots = calloc((size_t)n_roots + 1, sizeof *r->roots))) {
        free(r);
        cv_errorf(err, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    r->n_threads = n_threads;
    for (int i = 0; i < n_roots; i++) {
        if (!is_dir(roots[i])) {
            cv_errorf(err, "--model-repository '%s' is not a directory", roots[i]);
            cv_repository_destroy(r);
            return NULL;
        }
        if (!(r->roots[r->n_roots++] = strdup(roots[i]))) {
            cv_errorf(err, "out of memory");
            cv_repository_destroy(r);
            return NULL;
        }
    }
    return r;
}

static void model_free(cv_model *m)
{
    if (m->engine) cv_engine_shutdown(m->engine, false);
    free(m);
}

/* Drops one reference; the caller holds the lock. Returns the model to
 * free (outside the lock) when it was the last. */
static cv_model *unref_locked(cv_model *m)
{
    return --m->refs == 0 ? m : NULL;
}

void cv_repository_destroy(cv_repository *r)
{
    if (!r) return;
    for (int i = 0; i < r->n_entries; i++) {
        cv_model *m = r->entries[i].model;
        if (m && unref_locked(m)) model_free(m);
    }
    for (int i = 0; i < r->n_roots; i++)
        free(r->roots[i]);
    free(r->roots);
    free(r->entries);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static model_entry *find_entry(cv_repository *r, const char *name)
{
    for (int i = 0; i < r->n_entries; i++)
        if (!strcmp(r->entries[i].name, name)) return &r->entries[i];
    return NULL;
}

static model_entry *get_entry(cv_repository *r, const char *name)
{
    model_entry *e = find_entry(r, name);
    if (e) return e;
    model_entry *ne = realloc(r->entries, sizeof *ne * (size_t)(r->n_entries + 1));
    if (!ne) return NULL;
    r->entries = ne;
    e = &ne[r->n_entries++];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    return e;
}

/* The model directory of `name` in the first root that has it. */
static bool find_model_dir(const cv_repository *r, const char *name, char *out, size_t cap)
{
    if (!name[0] || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, "..")) return false;
    for (int i = 0; i < r->n_roots; i++) {
        snprintf(out, cap, "%s/%s", r->roots[i], name);
        if (is_dir(out)) return true;
    }
    return false;
}

static uint64_t mtime_of(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) return 0;
    return (uint64_t)st.st_mtim.tv_sec * 1000000000u + (uint64_t)st.st_mtim.tv_nsec;
}

/* The newest modification time of config.pbtxt, the version directories
 * and their model.json: what poll mode watches. */
static uint64_t model_stamp(const char *dir)
{
    char p[8400];
    snprintf(p, sizeof p, "%s/config.pbtxt", dir);
    uint64_t newest = mtime_of(p);
    DIR *d = open_dir(dir);
    if (!d) return newest;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        uint64_t t;
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        if ((t = mtime_of(p)) > newest) newest = t;
        snprintf(p, sizeof p, "%s/%s/model.json", dir, de->d_name);
        if ((t = mtime_of(p)) > newest) newest = t;
    }
    closedir(d);
    return newest;
}

/* The version to serve under the config's version policy: the highest
 * numeric subdirectory allowed (cvllm serves one version per model). */
static int pick_version(const char *dir, const cv_model_config *cfg, int64_t *version,
                        cv_error *err)
{
    DIR *d = open_dir(dir);
    if (!d) return cv_errorf(err, "%s: cannot list: %s", dir, strerror(errno));
    int64_t best = -1;
    struct dirent *de;
    while ((de = readdir(d))) {
        char *end;
        errno = 0;
        long long v = strtoll(de->d_name, &end, 10);
        if (errno || *end || end == de->d_name || v < 0) continue;
        char p[8400];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        if (!is_dir(p)) continue;
        bool allowed = cfg->version_policy != CV_VERSIONS_SPECIFIC;
        for (int i = 0; i < cfg->n_specific; i++)
            allowed |= cfg->specific[i] == v;
        if (allowed && v > best) best = v;
    }
    closedir(d);
    if (best < 0)
        return cv_errorf(err,
                         "at least one version must be available under the version policy "
                         "of model '%s' (no numeric version directory in %s)",
                         cfg->name, dir);
    *version = best;
    return 0;
}

static cv_model *build_model(cv_repository *r, const char *name, const char *dir, cv_error *err)
{
    cv_model *m = calloc(1, sizeof *m);
    if (!m) {
        cv_errorf(err, "out of memory");
        return NULL;
    }
    snprintf(m->name, sizeof m->name, "%s", name);
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    m->repo = r;
    m->refs = 1;
    if (cv_model_config_load(&m->cfg, dir, name, err) < 0) goto fail;
    if (strcmp(m->cfg.backend, "vllm")) {
        cv_errorf(err, "%s/config.pbtxt: backend '%s' is not served by cvllm (only \"vllm\")", dir,
                  m->cfg.backend);
        goto fail;
    }
    if (cv_model_config_autocomplete_vllm(&m->cfg, err) < 0) goto fail;
    if (pick_version(dir, &m->cfg, &m->version, err) < 0) goto fail;
    snprintf(m->version_str, sizeof m->version_str, "%" PRId64, m->version);
    cv_engine_args_default(&m->args);
    m->args.n_threads = r->n_threads;
    if (cv_model_json_load(dir, m->version_str, &m->args, &m->extra, err) < 0) goto fail;
    bool kind_gpu = false;
    for (int i = 0; i < m->cfg.n_groups; i++)
        kind_gpu |= m->cfg.groups[i].kind == CV_KIND_GPU;
    if (m->extra.tensor_parallel_size > 1 && kind_gpu) {
        cv_errorf(err, "KIND_GPU is currently for single-GPU models, please specify KIND_MODEL "
                       "in the model's config.pbtxt for multi-GPU models");
        goto fail;
    }
    if (m->extra.tensor_parallel_size > 1 || m->extra.pipeline_parallel_size > 1) {
        cv_errorf(err,
                  "%s/%s/model.json: tensor_parallel_size %d, pipeline_parallel_size %d: "
                  "cvllm's CPU engine runs a single rank",
                  dir, m->version_str, m->extra.tensor_parallel_size,
                  m->extra.pipeline_parallel_size);
        goto fail;
    }
    /* The backend's rule: vllm:* metrics need REPORT_CUSTOM_METRICS on and
     * model.json's disable_log_stats off. */
    m->report_custom_metrics =
        cv_model_config_param_true(&m->cfg, "REPORT_CUSTOM_METRICS") && !m->extra.disable_log_stats;
    m->health_check = cv_model_config_param_true(&m->cfg, "ENABLE_VLLM_HEALTH_CHECK");
    cv_error eerr = {.msg = ""};
    m->engine = cv_engine_create(&m->args, &eerr);
    if (!m->engine) {
        cv_errorf(err, "model '%s': %s", name, eerr.msg);
        goto fail;
    }
    return m;
fail:
    free(m);
    return NULL;
}

int cv_repository_load(cv_repository *r, const char *name, cv_error *err)
{
    char dir[4096];
    if (!find_model_dir(r, name, dir, sizeof dir))
        return cv_errorf_class(err, CV_ERR_INTERNAL,
                               "failed to load '%s', failed to poll from model repository", name);
    pthread_mutex_lock(&r->mu);
    model_entry *e = get_entry(r, name);
    if (!e) {
        pthread_mutex_unlock(&r->mu);
        return cv_errorf(err, "out of memory");
    }
    if (e->state == CV_MODEL_LOADING) {
        pthread_mutex_unlock(&r->mu);
        return cv_errorf(err, "failed to load '%s': a load of this model is in progress", name);
    }
    cv_model_state prev = e->state;
    e->state = CV_MODEL_LOADING;
    e->stamp = model_stamp(dir);
    pthread_mutex_unlock(&r->mu);

    cv_log_info("loading: %s", name);
    cv_error lerr = {.msg = ""};
    cv_model *m = build_model(r, name, dir, &lerr);

    /* Once the lock is released a concurrent unload may free m: what is
     * logged afterwards is copied under the lock. */
    char version[sizeof e->version] = "";
    cv_model *old = NULL;
    pthread_mutex_lock(&r->mu);
    e = find_entry(r, name);
    if (m) {
        if (e->model) old = unref_locked(e->model);
        e->model = m;
        e->state = CV_MODEL_READY;
        snprintf(e->version, sizeof e->version, "%s", m->version_str);
        snprintf(version, sizeof version, "%s", m->version_str);
        e->reason[0] = '\0';
    } else {
        /* A failed reload keeps serving the model that was loaded. */
        e->state = e->model ? prev : CV_MODEL_UNAVAILABLE;
        if (!e->model) snprintf(e->reason, sizeof e->reason, "%s", lerr.msg);
    }
    e->unsupported = !m && !e->model && lerr.cls == CV_ERR_UNSUPPORTED;
    pthread_mutex_unlock(&r->mu);
    if (old) model_free(old);
    if (!m) {
        cv_log_error("failed to load '%s': %s", name, lerr.msg);
        return cv_errorf_class(err,
                               lerr.cls == CV_ERR_UNSUPPORTED ? CV_ERR_UNSUPPORTED : CV_ERR_INVALID,
                               "failed to load '%s', %s", name, lerr.msg);
    }
    cv_log_info("successfully loaded '%s' version %s", name, version);
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of the model directories of every root (first root wins). */
static char **list_models(cv_repository *r, int *n_out)
{
    char **names = NULL;
    int n = 0;
    for (int i = 0; i < r->n_roots; i++) {
        DIR *d = open_dir(r->roots[i]);
        if (!d) continue;
        struct dirent *de;
        while ((de = readdir(d))) {
            if (de->d_name[0] == '.') continue;
            char p[8400];
            snprintf(p, sizeof p, "%s/%s", r->roots[i], de->d_name);
            if (!is_dir(p)) continue;
            bool dup = false;
            for (int j = 0; j < n; j++)
                dup |= !strcmp(names[j], de->d_name);
            if (dup) continue;
            char **nn = realloc(names, sizeof *nn * (size_t)(n + 1));
            if (!nn || !(nn[n] = strdup(de->d_name))) {
                names = nn ? nn : names;
                break;
            }
            names = nn;
            n++;
        }
        closedir(d);
    }
    if (n) qsort(names, (size_t)n, sizeof *names, cmp_str);
    *n_out = n;
    return names;
}

int cv_repository_load_all(cv_repository *r)
{
    int n, failed = 0;
    char **names = list_models(r, &n);
    for (int i = 0; i < n; i++) {
        cv_error err;
        failed += cv_repository_load(r, names[i], &err) < 0 && err.cls != CV_ERR_UNSUPPORTED;
        free(names[i]);
    }
    free(names);
    return failed;
}

int cv_repository_poll(cv_repository *r)
{
    int n, failed = 0;
    char **names = list_models(r, &n);
    for (int i = 0; i < n; i++) {
        char dir[4096];
        if (!find_model_dir(r, names[i], dir, sizeof dir)) continue;
        uint64_t stamp = model_stamp(dir);
        pthread_mutex_lock(&r->mu);
        model_entry *e = find_entry(r, names[i]);
        bool stale = !e || e->state == CV_MODEL_UNKNOWN || e->stamp != stamp;
        pthread_mutex_unlock(&r->mu);
        cv_error err;
        if (stale)
            failed += cv_repository_load(r, names[i], &err) < 0 && err.cls != CV_ERR_UNSUPPORTED;
    }
    /* Models whose directory went away. */
    for (;;) {
        char gone[256] = "";
        pthread_mutex_lock(&r->mu);
        for (int i = 0; i < r->n_entries && !gone[0]; i++) {
            bool listed = false;
            for (int j = 0; j < n; j++)
                listed |= !strcmp(names[j], r->entries[i].name);
            if (!listed && r->entries[i].model)
                snprintf(gone, sizeof gone, "%s", r->entries[i].name);
        }
        pthread_mutex_unlock(&r->mu);
        cv_error err;
        if (!gone[0] || cv_repository_unload(r, gone, &err) < 0) break;
    }
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return failed;
}

int cv_repository_unload(cv_repository *r, const char *name, cv_error *err)
{
    char dir[4096];
    pthread_mutex_lock(&r->mu);
    model_entry *e = find_entry(r, name);
    if (!e && !find_model_dir(r, name, dir, sizeof dir)) {
        pthread_mutex_unlock(&r->mu);
        return cv_errorf(err, "failed to unload '%s', no version is available", name);
    }
    cv_model *gone = NULL;
    if (e && e->model) {
        gone = unref_locked(e->model);
        e->model = NULL;
        e->state = CV_MODEL_UNAVAILABLE;
        snprintf(e->reason, sizeof e->reason, "unloaded");
    }
    pthread_mutex_unlock(&r->mu);
    if (gone) model_free(gone);
    cv_log_info("successfully unloaded '%s'", name);
    return 0;
}

bool cv_model_healthy(const cv_model *model)
{
    return !model->health_check || cv_engine_is_healthy(model->engine);
}

cv_model *cv_repository_acquire(cv_repository *r, const char *name, const char *version,
                                cv_error *err)
{
    char dir[4096];
    pthread_mutex_lock(&r->mu);
    model_entry *e = find_entry(r, name);
    cv_model *m = e ? e->model : NULL;
    if (!m) {
        bool exists = e || find_model_dir(r, name, dir, sizeof dir);
        pthread_mutex_unlock(&r->mu);
        if (exists)
            cv_errorf_class(err, CV_ERR_UNAVAILABLE,
                            "Request for unknown model: '%s' has no available versions", name);
        else
            cv_errorf_class(err, CV_ERR_NOT_FOUND, "Request for unknown model: '%s' is not found",
                            name);
        return NULL;
    }
    if (version && version[0] && strcmp(version, m->version_str)) {
        pthread_mutex_unlock(&r->mu);
        cv_errorf_class(err, CV_ERR_NOT_FOUND,
                        "Request for unknown model: '%s' version %s is not found", name, version);
        return NULL;
    }
    m->refs++;
    pthread_mutex_unlock(&r->mu);
    return m;
}

void cv_model_release(cv_model *m)
{
    cv_repository *r = m->repo;
    pthread_mutex_lock(&r->mu);
    cv_model *gone = unref_locked(m);
    pthread_mutex_unlock(&r->mu);
    if (gone) model_free(gone);
}

json_t *cv_repository_index(cv_repository *r, bool ready_only)
{
    json_t *arr = json_array();
    if (!arr) return NULL;
    pthread_mutex_lock(&r->mu);
    int n;
    char **names = list_models(r, &n);
    for (int i = 0; i < n; i++) {
        model_entry *e = find_entry(r, names[i]);
        if (!ready_only || (e && e->state == CV_MODEL_READY)) {
            json_t *o = json_pack("{s:s}", "name", names[i]);
            if (o && e && e->state != CV_MODEL_UNKNOWN) {
                if (e->version[0]) json_object_set_new(o, "version", json_string(e->version));
                json_object_set_new(o, "state", json_string(cv_model_state_name(e->state)));
                if (e->reason[0]) json_object_set_new(o, "reason", json_string(e->reason));
            }
            json_array_append_new(arr, o);
        }
        free(names[i]);
    }
    free(names);
    pthread_mutex_unlock(&r->mu);
    return arr;
}

bool cv_repository_all_ready(cv_repository *r)
{
    bool ok = true;
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->n_entries; i++)
        ok &= r->entries[i].state == CV_MODEL_READY || r->entries[i].state == CV_MODEL_UNKNOWN ||
              r->entries[i].unsupported ||
              (r->entries[i].state == CV_MODEL_UNAVAILABLE &&
               !strcmp(r->entries[i].reason, "unloaded"));
    pthread_mutex_unlock(&r->mu);
    return ok;
}

void cv_repository_foreach_ready(cv_repository *r, void (*fn)(cv_model *m, void *arg), void *arg)
{
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->n_entries; i++)
        if (r->entries[i].model) fn(r->entries[i].model, arg);
    pthread_mutex_unlock(&r->mu);
}

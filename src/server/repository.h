/* The model repository: every model directory under the --model-repository
 * roots, its state (Triton's READY / UNAVAILABLE / LOADING) and,
 * while loaded, its engine.
 *
 * Lifetime: cv_repository_acquire hands out a counted reference to a READY
 * model; each in-flight request holds one. Unloading makes the model
 * UNAVAILABLE (new acquires fail) and drops the repository's own reference;
 * the engine is shut down when the last reference goes, so a frontend may
 * call cv_engine_abort on a model it holds at any time. All functions are
 * thread-safe. */
#ifndef CV_SERVER_REPOSITORY_H
#define CV_SERVER_REPOSITORY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "base/error.h"
#include "cvllm/engine.h"
#include "server/model_config.h"
#include "server/model_json.h"

typedef enum {
    CV_MODEL_UNKNOWN = 0, /* never loaded */
    CV_MODEL_LOADING,
    CV_MODEL_READY,
    CV_MODEL_UNAVAILABLE, /* unloaded or failed to load (see reason) */
} cv_model_state;

const char *cv_model_state_name(cv_model_state s);

/* Triton's per-model counters (nv_inference_*), updated by the frontends. */
typedef struct cv_model_counters {
    atomic_uint_fast64_t request_success;
    atomic_uint_fast64_t request_failure;
    atomic_uint_fast64_t inference_count;
    atomic_uint_fast64_t exec_count;
    atomic_uint_fast64_t request_duration_us;
    atomic_uint_fast64_t fail_duration_us;
    atomic_uint_fast64_t last_inference_ms; /* wall clock, ms since the epoch */
    atomic_uint_fast64_t compute_infer_duration_us;
    atomic_int_fast64_t pending;
} cv_model_counters;

typedef struct cv_model {
    char name[256];
    int64_t version;
    char version_str[24];
    char dir[4096];      /* the model directory */
    cv_model_config cfg; /* completed configuration */
    cv_engine_args args;
    cv_model_json_extra extra;
    cv_engine *engine;
    bool report_custom_metrics; /* REPORT_CUSTOM_METRICS, unless disable_log_stats */
    bool health_check;          /* config parameter ENABLE_VLLM_HEALTH_CHECK */
    cv_model_counters counters;
    int refs; /* guarded by the repository lock */
    struct cv_repository *repo;
} cv_model;

typedef struct cv_repository cv_repository;

/* Scans nothing yet: models are found by name at load time, so models added
 * to a root later load too. `roots` are copied. */
cv_repository *cv_repository_create(const char *const *roots, int n_roots, int n_threads,
                                    cv_error *err);
/* Unloads every model (aborting in-flight requests) and frees. */
void cv_repository_destroy(cv_repository *repo);

/* Loads (or reloads) model `name` from the first root holding it. On
 * failure the model is UNAVAILABLE with the message as its reason; err's
 * class is CV_ERR_UNSUPPORTED for a model cvllm does not serve (another
 * backend, an ensemble), which neither counts as a failure below nor
 * holds back cv_repository_all_ready. */
int cv_repository_load(cv_repository *repo, const char *name, cv_error *err);
/* Loads every model directory of every root; returns the number that
 * failed, models cvllm does not serve excepted (their messages are
 * logged). */
int cv_repository_load_all(cv_repository *repo);
int cv_repository_unload(cv_repository *repo, const char *name, cv_error *err);
/* Poll mode: loads the model directories that appeared, or whose
 * config.pbtxt, version directories or model.json changed since their last
 * load, and unloads models whose directory went away. Returns the number
 * of loads that failed. */
int cv_repository_poll(cv_repository *repo);

/* A READY model by name and optional version ("" or NULL = any), with a
 * reference; NULL otherwise, with err of class CV_ERR_NOT_FOUND (unknown
 * model or version) or CV_ERR_UNAVAILABLE (known but not loaded). */
cv_model *cv_repository_acquire(cv_repository *repo, const char *name, const char *version,
                                cv_error *err);
void cv_model_release(cv_model *model);

/* False when ENABLE_VLLM_HEALTH_CHECK is on and the engine has failed a
 * step: the model then reports not ready and refuses requests with
 * CV_MODEL_UNHEALTHY_MSG (503 / UNAVAILABLE), as the vLLM backend does. */
bool cv_model_healthy(const cv_model *model);
#define CV_MODEL_UNHEALTHY_MSG "Model is unavailable due to unhealthy vLLM engine"

/* Triton's repository index: [{"name","version","state","reason"}...]
 * over every model directory of every root. */
json_t *cv_repository_index(cv_repository *repo, bool ready_only);
/* True when every model that was asked to load is READY (models cvllm
 * does not serve excepted). */
bool cv_repository_all_ready(cv_repository *repo);
/* Calls fn on every READY model, with the lock held (fn must not call
 * back into the repository). */
void cv_repository_foreach_ready(cv_repository *repo, void (*fn)(cv_model *m, void *arg),
                                 void *arg);

#endif

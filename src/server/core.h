/* The protocol-neutral server core: what the frontends (HTTP, gRPC,
 * metrics) ask of the server, written once. An operation that fails sets
 * a cv_error whose class (base/error.h) cv_error_status maps to the HTTP
 * status and the gRPC code, as Triton derives both from one error code.
 * Frontends plug in through cv_frontend_ops (frontends.c lists them); the
 * core never names one. Every function here is thread-safe. */
#ifndef CV_SERVER_CORE_H
#define CV_SERVER_CORE_H

#include <stdbool.h>

#include "base/error.h"
#include "server/repository.h"

typedef struct cv_server cv_server;

/* ---- error classes -> protocol status ----------------------------------- */

typedef struct cv_protocol_status {
    int http; /* HTTP status line code */
    int grpc; /* grpc_status_code */
} cv_protocol_status;

/* The one mapping, Triton's: INVALID 400 / INVALID_ARGUMENT, NOT_FOUND
 * 404 / NOT_FOUND, UNAVAILABLE 503 / UNAVAILABLE, UNSUPPORTED 501 /
 * UNIMPLEMENTED, INTERNAL 500 / INTERNAL. */
cv_protocol_status cv_error_status(cv_error_class cls);

/* ---- frontends ---------------------------------------------------------- */

/* A frontend: started on the server's event loop thread after the models
 * at start are loaded, stopped in the reverse order. `state` is the
 * frontend's own object (NULL when its --allow-* option turns it off; the
 * other callbacks are then not called). */
typedef struct cv_frontend_ops {
    const char *name;
    int (*start)(cv_server *s, void **state, cv_error *err);
    /* SIGINT/SIGTERM: refuse new connections (NULL: keeps accepting and
     * refuses requests one by one through cv_server_admit). */
    void (*stop_accepting)(void *state);
    /* The drain timed out: abort every request in flight. */
    void (*abort_all)(void *state);
    /* Requests in flight plus replies not yet written out (the drain
     * waits for 0). */
    int (*active)(void *state);
    void (*destroy)(void *state);
} cv_frontend_ops;

/* ---- models ------------------------------------------------------------- */

/* A READY model by name and version ("" or NULL = any), with a reference
 * (cv_model_release); NULL with err: NOT_FOUND for an unknown model or
 * version, UNAVAILABLE for a model that is not loaded. */
cv_model *cv_server_acquire(cv_server *s, const char *name, const char *version, cv_error *err);

/* Model readiness (ModelReady, /v2/models/{m}/ready): loaded and healthy. */
bool cv_server_model_ready(cv_server *s, const char *name, const char *version);

/* Server liveness: false once SIGINT/SIGTERM started the drain. */
bool cv_server_live(cv_server *s);

/* Accepts a new inference request, or refuses it (UNAVAILABLE) while the
 * server drains. (The model's own checks are cv_infer_prepare's.) */
int cv_server_admit(cv_server *s, cv_error *err);

/* Model metadata (KServe's model metadata response), protocol-neutral. */
typedef struct cv_tensor_meta {
    const char *name;
    const char *datatype; /* KServe name: "BYTES", "BOOL", "FP32", ... */
    int n_dims;
    const int64_t *dims;
} cv_tensor_meta;

typedef struct cv_model_metadata {
    cv_model *model; /* the reference the strings below live in */
    const char *name, *version, *platform;
    int n_inputs, n_outputs;
    cv_tensor_meta inputs[CV_MAX_TENSORS], outputs[CV_MAX_TENSORS];
} cv_model_metadata;

/* Fills md for the model (errors as cv_server_acquire); the caller ends
 * with cv_model_release(md->model). */
int cv_server_model_metadata(cv_server *s, const char *name, const char *version,
                             cv_model_metadata *md, cv_error *err);

/* Explicit model control. Refused (UNAVAILABLE, Triton's message) unless
 * --model-control-mode=explicit; a load failure is INVALID (the model's
 * files), a model absent from every repository INTERNAL, as in Triton; a
 * model cvllm does not serve (another backend, an ensemble) UNSUPPORTED. */
int cv_server_load(cv_server *s, const char *name, cv_error *err);
int cv_server_unload(cv_server *s, const char *name, cv_error *err);

/* cv_server_load on a thread of its own (a load reads weights and builds
 * an engine: seconds), so the caller's thread keeps serving. done(arg, rc,
 * err) runs exactly once: on that thread when the load ends, or on the
 * caller's thread before this returns when the load is refused or no
 * thread can start. err is valid only during the call. */
typedef void (*cv_load_done_fn)(void *arg, int rc, const cv_error *err);
void cv_server_load_async(cv_server *s, const char *name, cv_load_done_fn done, void *arg);

#endif

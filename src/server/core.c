/* The protocol-neutral server core (core.h): the error-class mapping,
 * model lookup, readiness, admission, metadata and explicit load/unload
 * that every frontend calls. */
#include "server/core.h"

#include <grpc/status.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server_internal.h"

cv_protocol_status cv_error_status(cv_error_class cls)
{
    switch (cls) {
    case CV_ERR_INVALID:
        return (cv_protocol_status){400, GRPC_STATUS_INVALID_ARGUMENT};
    case CV_ERR_NOT_FOUND:
        return (cv_protocol_status){404, GRPC_STATUS_NOT_FOUND};
    case CV_ERR_UNAVAILABLE:
        return (cv_protocol_status){503, GRPC_STATUS_UNAVAILABLE};
    case CV_ERR_UNSUPPORTED:
        return (cv_protocol_status){501, GRPC_STATUS_UNIMPLEMENTED};
    case CV_ERR_INTERNAL:
        break;
    }
    return (cv_protocol_status){500, GRPC_STATUS_INTERNAL};
}

cv_model *cv_server_acquire(cv_server *s, const char *name, const char *version, cv_error *err)
{
    return cv_repository_acquire(s->repo, name, version, err);
}

bool cv_server_model_ready(cv_server *s, const char *name, const char *version)
{
    cv_error err;
    cv_model *m = cv_repository_acquire(s->repo, name, version, &err);
    bool ready = m && cv_model_healthy(m);
    if (m) cv_model_release(m);
    return ready;
}

bool cv_server_live(cv_server *s)
{
    return !atomic_load(&s->draining);
}

int cv_server_admit(cv_server *s, cv_error *err)
{
    if (atomic_load(&s->draining))
        return cv_errorf_class(err, CV_ERR_UNAVAILABLE,
                               "Server is stopping: no new requests are accepted");
    return 0;
}

static cv_tensor_meta tensor_meta(const cv_tensor_config *t)
{
    return (cv_tensor_meta){t->name, cv_data_type_kserve(t->data_type), t->n_dims, t->dims};
}

int cv_server_model_metadata(cv_server *s, const char *name, const char *version,
                             cv_model_metadata *md, cv_error *err)
{
    memset(md, 0, sizeof *md);
    cv_model *m = cv_repository_acquire(s->repo, name, version, err);
    if (!m) return -1;
    md->model = m;
    md->name = m->name;
    md->version = m->version_str;
    md->platform = m->cfg.platform[0] ? m->cfg.platform : m->cfg.backend;
    md->n_inputs = m->cfg.n_inputs;
    md->n_outputs = m->cfg.n_outputs;
    for (int i = 0; i < m->cfg.n_inputs; i++)
        md->inputs[i] = tensor_meta(&m->cfg.inputs[i]);
    for (int i = 0; i < m->cfg.n_outputs; i++)
        md->outputs[i] = tensor_meta(&m->cfg.outputs[i]);
    return 0;
}

/* Triton's refusal (model_repository_manager.cc), in every mode but
 * explicit. */
static int check_explicit(cv_server *s, cv_error *err)
{
    if (s->opts.control_mode == CV_CONTROL_EXPLICIT) return 0;
    return cv_errorf_class(err, CV_ERR_UNAVAILABLE,
                           "explicit model load / unload is not allowed if polling is enabled");
}

int cv_server_load(cv_server *s, const char *name, cv_error *err)
{
    if (check_explicit(s, err) < 0) return -1;
    return cv_repository_load(s->repo, name, err);
}

int cv_server_unload(cv_server *s, const char *name, cv_error *err)
{
    if (check_explicit(s, err) < 0) return -1;
    return cv_repository_unload(s->repo, name, err);
}

typedef struct load_job {
    cv_server *s;
    char name[256];
    cv_load_done_fn done;
    void *arg;
} load_job;

static void *load_main(void *p)
{
    load_job *job = p;
    cv_error err = {.msg = ""};
    int rc = cv_repository_load(job->s->repo, job->name, &err);
    job->done(job->arg, rc, &err);
    free(job);
    return NULL;
}

void cv_server_load_async(cv_server *s, const char *name, cv_load_done_fn done, void *arg)
{
    cv_error err = {.msg = ""};
    if (check_explicit(s, &err) < 0) {
        done(arg, -1, &err);
        return;
    }
    load_job *job = malloc(sizeof *job);
    pthread_t t;
    if (job) {
        *job = (load_job){.s = s, .done = done, .arg = arg};
        snprintf(job->name, sizeof job->name, "%s", name);
    }
    if (!job || pthread_create(&t, NULL, load_main, job) != 0) {
        free(job);
        cv_errorf_class(&err, CV_ERR_INTERNAL, "cannot start the load of model '%s'", name);
        done(arg, -1, &err);
        return;
    }
    pthread_detach(t);
}

/* The HTTP frontend's model metadata and statistics replies and the
 * repository endpoints (index, load, unload) of the KServe model
 * repository extension; http.c routes to them. */
#include <stdlib.h>

#include <event2/event.h>
#include <event2/http.h>

#include "server/http_internal.h"

static json_t *tensor_meta_json(const cv_tensor_meta *t)
{
    json_t *shape = json_array();
    for (int i = 0; i < t->n_dims; i++)
        json_array_append_new(shape, json_integer(t->dims[i]));
    return json_pack("{s:s, s:s, s:o}", "name", t->name, "datatype", t->datatype, "shape", shape);
}

void http_reply_metadata(cv_http *h, struct evhttp_request *req, const char *name,
                         const char *version)
{
    cv_model_metadata md;
    cv_error err = {.msg = ""};
    if (cv_server_model_metadata(h->s, name, version, &md, &err) < 0) {
        http_reply_core_error(req, &err);
        return;
    }
    json_t *in = json_array(), *out = json_array();
    for (int i = 0; i < md.n_inputs; i++)
        json_array_append_new(in, tensor_meta_json(&md.inputs[i]));
    for (int i = 0; i < md.n_outputs; i++)
        json_array_append_new(out, tensor_meta_json(&md.outputs[i]));
    http_reply_json(req, 200,
                    json_pack("{s:s, s:[s], s:s, s:o, s:o}", "name", md.name, "versions",
                              md.version, "platform", md.platform, "inputs", in, "outputs", out));
    cv_model_release(md.model);
}

void http_reply_stats(cv_http *h, struct evhttp_request *req, const char *name, const char *version)
{
    cv_model_stats *st;
    cv_error err = {.msg = ""};
    int n = cv_server_model_stats(h->s, name, version, &st, &err);
    if (n < 0) {
        http_reply_core_error(req, &err);
        return;
    }
    http_reply_json(req, 200, cv_model_stats_json(st, n));
    free(st);
}

/* A model load runs on a thread of the core (cv_server_load_async) so the
 * event loop keeps streaming other requests; the reply goes out from the
 * loop when the load is done. The request stays valid meanwhile: evhttp
 * detaches (does not free) an unanswered request whose client leaves, and
 * the reply frees it. */
typedef struct load_job {
    cv_http *h;
    struct evhttp_request *req;
    struct event *done;
    int rc;
    cv_error err;
} load_job;

static void on_load_done(evutil_socket_t fd, short what, void *arg)
{
    load_job *job = arg;
    if (job->rc < 0)
        http_reply_core_error(job->req, &job->err);
    else
        http_reply_empty(job->req, 200);
    job->h->n_loading--;
    if (job->done) event_free(job->done);
    free(job);
}

/* The core's callback: on the load's thread, or inline on a refusal. */
static void load_finished(void *arg, int rc, const cv_error *err)
{
    load_job *job = arg;
    job->rc = rc;
    job->err = *err;
    event_active(job->done, EV_TIMEOUT, 0);
}

static void load_async(cv_http *h, struct evhttp_request *req, const char *name)
{
    load_job *job = calloc(1, sizeof *job);
    if (job) {
        job->h = h;
        job->req = req;
        job->done = event_new(h->s->base, -1, 0, on_load_done, job);
    }
    if (!job || !job->done) {
        if (job && job->done) event_free(job->done);
        free(job);
        http_reply_error(req, 500, "cannot start the model load");
        return;
    }
    h->n_loading++;
    cv_server_load_async(h->s, name, load_finished, job);
}

void http_route_repository(cv_http *h, struct evhttp_request *req, char **seg, int n)
{
    cv_server *s = h->s;
    if (n == 3 && !strcmp(seg[2], "index")) {
        json_t *body;
        if (!http_body_json(req, &body, true)) return;
        bool ready = json_is_true(json_object_get(body, "ready"));
        json_decref(body);
        {
            http_reply_json(req, 200, cv_repository_index(s->repo, ready));
            return;
        }
    }
    if (n != 5 || strcmp(seg[2], "models") ||
        (strcmp(seg[4], "load") && strcmp(seg[4], "unload"))) {
        http_reply_error(req, 404, "Not Found");
        return;
    }
    if (!strcmp(seg[4], "load")) {
        load_async(h, req, seg[3]);
        return;
    }
    cv_error err = {.msg = ""};
    if (cv_server_unload(s, seg[3], &err) < 0) {
        http_reply_core_error(req, &err);
        return;
    }
    http_reply_empty(req, 200);
}

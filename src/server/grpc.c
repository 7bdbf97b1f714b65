/* gRPC frontend on the gRPC C core: one completion-queue thread runs every
 * call; unary RPCs are answered inline (grpc_codec.c); ModelStreamInfer is
 * a bidirectional stream whose requests are checked on that thread, then
 * tokenized and submitted to the engines on a worker pool (a long prompt
 * takes seconds that every other call would wait), with outputs on one
 * cv_output_queue, drained by an output thread that queues response
 * messages on their stream. One mutex guards every stream and every
 * grpc_call_start_batch on a stream, so the threads never race. */
#include <errno.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_posix.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/log.h"
#include "base/workpool.h"
#include "server/grpc_internal.h"
#include "server/listen.h"

#define STREAM_METHOD "/inference.GRPCInferenceService/ModelStreamInfer"
#define LOAD_METHOD "/inference.GRPCInferenceService/RepositoryModelLoad"

typedef struct cv_grpc cv_grpc;

typedef enum {
    TAG_NEW_CALL,
    TAG_SHUTDOWN,
    TAG_UNARY_RECV,
    TAG_UNARY_DONE,
    TAG_STREAM_START,
    TAG_STREAM_RECV,
    TAG_STREAM_SEND,
    TAG_STREAM_CLOSE,
    TAG_STREAM_STATUS,
} tag_type;

typedef struct tag {
    tag_type type;
    void *owner;
} tag;

typedef struct unary_call {
    grpc_call *call;
    char method[160];
    grpc_byte_buffer *recv;
    grpc_byte_buffer *send;
    grpc_slice details;
    int cancelled;
    tag t_recv, t_done;
} unary_call;

typedef struct stream stream;

/* One ModelInferRequest of a stream, in the engine. */
typedef struct stream_req {
    struct stream_req *next;
    stream *st;
    cv_model *model;
    cv_infer_request ir;
    char *id;
    char **wanted; /* requested output names */
    size_t n_wanted;
    uint64_t engine_id;
    uint64_t start_ns;
    /* On the worker pool (see stream_submit): outputs that arrive before
     * it is done wait here, in order. */
    bool submitting;
    cv_request_output **deferred;
    int n_deferred;
    bool lost; /* an output could not be kept */
} stream_req;

struct stream {
    struct stream *next;
    cv_grpc *g;
    grpc_call *call;
    grpc_byte_buffer *recv;
    int close_cancelled;
    bool half_closed, cancelled, status_sent;
    int ops; /* batches in flight */
    grpc_byte_buffer **sendq;
    int nq, capq;
    bool sending;
    stream_req *reqs;
    int n_reqs;
    tag t_start, t_recv, t_send, t_close, t_status;
};

struct cv_grpc {
    cv_server *s;
    grpc_server *server;
    grpc_completion_queue *cq;
    cv_output_queue *q;
    pthread_t cq_thread, out_thread;
    bool cq_started, out_started;
    pthread_mutex_t mu;
    /* the pending grpc_server_request_call */
    grpc_call *new_call;
    grpc_call_details details;
    grpc_metadata_array md;
    tag t_new, t_shutdown;
    bool shutdown_started, shutdown_done;
    stream *streams;
    atomic_int n_calls; /* unary calls and streams alive (atomic: a load thread ends its call) */
    atomic_bool stop_out;
    atomic_int n_loading; /* RepositoryModelLoad calls whose load has not ended */
    cv_listen *listen;    /* accepts for gRPC core, on the server's event loop */
    cv_workpool *pool;    /* tokenizes and submits stream requests */
    bool aborted;         /* grpc_abort_all ran: requests still submitting abort when done */
    grpc_server_credentials *creds;
};

static void request_next_call(cv_grpc *g);

/* ---- unary -------------------------------------------------------------- */

static void unary_start(cv_grpc *g, grpc_call *call, const char *method)
{
    unary_call *u = calloc(1, sizeof *u);
    if (!u) {
        grpc_call_cancel(call, NULL);
        grpc_call_unref(call);
        return;
    }
    u->call = call;
    snprintf(u->method, sizeof u->method, "%s", method);
    u->t_recv = (tag){TAG_UNARY_RECV, u};
    u->t_done = (tag){TAG_UNARY_DONE, u};
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_RECV_MESSAGE;
    ops[1].data.recv_message.recv_message = &u->recv;
    g->n_calls++;
    if (grpc_call_start_batch(call, ops, 2, &u->t_recv, NULL) != GRPC_CALL_OK) {
        grpc_call_unref(call);
        g->n_calls--;
        free(u);
    }
}

static void unary_done(cv_grpc *g, unary_call *u);

/* Sends the answer of a unary call: out (packed, malloc'd, freed here)
 * on OK, else status code with msg. */
static void unary_send(cv_grpc *g, unary_call *u, grpc_status_code code, uint8_t *out,
                       size_t out_len, const char *msg)
{
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    int n = 0;
    if (code == GRPC_STATUS_OK) {
        grpc_slice sl = grpc_slice_from_copied_buffer((const char *)out, out_len);
        u->send = grpc_raw_byte_buffer_create(&sl, 1);
        grpc_slice_unref(sl);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = u->send;
    }
    free(out);
    u->details = grpc_slice_from_copied_string(msg);
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = code;
    ops[n++].data.send_status_from_server.status_details = &u->details;
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n++].data.recv_close_on_server.cancelled = &u->cancelled;
    if (grpc_call_start_batch(u->call, ops, (size_t)n, &u->t_done, NULL) != GRPC_CALL_OK) {
        cv_log_error("grpc: cannot answer %s", u->method);
        unary_done(g, u); /* no completion will come for it */
    }
}

/* The received message of u (empty when none). */
static grpc_slice unary_message(unary_call *u)
{
    grpc_slice all = grpc_empty_slice();
    grpc_byte_buffer_reader rd;
    if (u->recv && grpc_byte_buffer_reader_init(&rd, u->recv)) {
        all = grpc_byte_buffer_reader_readall(&rd);
        grpc_byte_buffer_reader_destroy(&rd);
    }
    return all;
}

static void unary_answer(cv_grpc *g, unary_call *u)
{
    uint8_t *out = NULL;
    size_t out_len = 0;
    grpc_slice all = unary_message(u);
    char msg[CV_ERROR_MSG_BYTES] = "";
    grpc_status_code code = cv_grpc_unary(g->s, u->method, GRPC_SLICE_START_PTR(all),
                                          GRPC_SLICE_LENGTH(all), &out, &out_len, msg, sizeof msg);
    grpc_slice_unref(all);
    unary_send(g, u, code, out, out_len, msg);
}

typedef struct load_job {
    cv_grpc *g;
    unary_call *u;
} load_job;

/* The core's callback when the load ended (on its thread) or was refused
 * (inline). Only this callback touches the call until its final batch
 * completes. */
static void load_finished(void *arg, int rc, const cv_error *err)
{
    load_job *job = arg;
    uint8_t *out;
    size_t out_len;
    char msg[CV_ERROR_MSG_BYTES] = "";
    grpc_status_code code = cv_grpc_load_reply(rc, err, &out, &out_len, msg, sizeof msg);
    unary_send(job->g, job->u, code, out, out_len, msg);
    atomic_fetch_sub(&job->g->n_loading, 1);
    free(job);
}

/* A model load builds an engine (seconds for a large model): the core runs
 * it on a thread of its own so the completion queue keeps serving every
 * stream. */
static void unary_recv(cv_grpc *g, unary_call *u)
{
    if (strcmp(u->method, LOAD_METHOD)) {
        unary_answer(g, u);
        return;
    }
    grpc_slice all = unary_message(u);
    cv_error err = {.msg = ""};
    char *name = cv_grpc_load_request_name(GRPC_SLICE_START_PTR(all), GRPC_SLICE_LENGTH(all), &err);
    grpc_slice_unref(all);
    load_job *job = malloc(sizeof *job);
    if (!name || !job) {
        unary_send(g, u, name ? GRPC_STATUS_INTERNAL : GRPC_STATUS_INVALID_ARGUMENT, NULL, 0,
                   name ? "out of memory" : err.msg);
        free(name);
        free(job);
        return;
    }
    *job = (load_job){g, u};
    atomic_fetch_add(&g->n_loading, 1);
    cv_server_load_async(g->s, name, load_finished, job);
    free(name);
}

static void unary_done(cv_grpc *g, unary_call *u)
{
    if (u->recv) grpc_byte_buffer_destroy(u->recv);
    if (u->send) grpc_byte_buffer_destroy(u->send);
    grpc_slice_unref(u->details);
    grpc_call_unref(u->call);
    free(u);
    g->n_calls--;
}

/* ---- streams (all with g->mu held) -------------------------------------- */

static bool start_batch(stream *st, grpc_op *ops, size_t n, tag *t)
{
    if (grpc_call_start_batch(st->call, ops, n, t, NULL) != GRPC_CALL_OK) {
        cv_log_error("grpc: stream batch refused");
        return false;
    }
    st->ops++;
    return true;
}

static void stream_recv(stream *st)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &st->recv;
    start_batch(st, &op, 1, &st->t_recv);
}

static void stream_pump(stream *st)
{
    if (st->sending || st->nq == 0 || st->cancelled) return;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_MESSAGE;
    op.data.send_message.send_message = st->sendq[0];
    st->sending = start_batch(st, &op, 1, &st->t_send);
}

static void stream_queue(stream *st, uint8_t *bytes, size_t len)
{
    if (!bytes) return;
    if (st->cancelled) {
        free(bytes);
        return;
    }
    if (st->nq == st->capq) {
        int cap = st->capq ? st->capq * 2 : 8;
        grpc_byte_buffer **nq = realloc(st->sendq, sizeof *nq * (size_t)cap);
        if (!nq) {
            free(bytes);
            return;
        }
        st->sendq = nq;
        st->capq = cap;
    }
    grpc_slice sl = grpc_slice_from_copied_buffer((const char *)bytes, len);
    st->sendq[st->nq++] = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    free(bytes);
    stream_pump(st);
}

/* Ends the RPC with OK once the client half-closed and every response of
 * every request has been written; frees the stream when nothing is left. */
static void stream_settle(stream *st)
{
    cv_grpc *g = st->g;
    if (!st->status_sent && !st->cancelled && st->half_closed && st->n_reqs == 0 && st->nq == 0 &&
        !st->sending) {
        grpc_op op;
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        op.data.send_status_from_server.status = GRPC_STATUS_OK;
        st->status_sent = start_batch(st, &op, 1, &st->t_status);
    }
    if (st->ops > 0 || st->n_reqs > 0) return;
    for (stream **p = &g->streams; *p; p = &(*p)->next) {
        if (*p == st) {
            *p = st->next;
            break;
        }
    }
    for (int i = 0; i < st->nq; i++)
        grpc_byte_buffer_destroy(st->sendq[i]);
    free(st->sendq);
    grpc_call_unref(st->call);
    free(st);
    g->n_calls--;
}

static void stream_start(cv_grpc *g, grpc_call *call)
{
    stream *st = calloc(1, sizeof *st);
    if (!st) {
        grpc_call_cancel(call, NULL);
        grpc_call_unref(call);
        return;
    }
    st->g = g;
    st->call = call;
    st->t_start = (tag){TAG_STREAM_START, st};
    st->t_recv = (tag){TAG_STREAM_RECV, st};
    st->t_send = (tag){TAG_STREAM_SEND, st};
    st->t_close = (tag){TAG_STREAM_CLOSE, st};
    st->t_status = (tag){TAG_STREAM_STATUS, st};
    st->next = g->streams;
    g->streams = st;
    g->n_calls++;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_INITIAL_METADATA;
    start_batch(st, &op, 1, &st->t_start);
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &st->close_cancelled;
    start_batch(st, &op, 1, &st->t_close);
    stream_recv(st);
    stream_settle(st);
}

static void stream_error(stream *st, const Inference__ModelInferRequest *rq, const char *msg)
{
    size_t len;
    uint8_t *b = cv_grpc_pack_stream_response(NULL, NULL, 0, rq ? rq->model_name : "",
                                              rq ? rq->model_version : "", rq ? rq->id : "", true,
                                              msg, &len);
    stream_queue(st, b, len);
}

static void stream_req_free(stream_req *r)
{
    free(r->deferred);
    for (size_t i = 0; i < r->n_wanted; i++)
        free(r->wanted[i]);
    free(r->wanted);
    free(r->id);
    cv_infer_request_free(&r->ir);
    if (r->model) cv_model_release(r->model);
    free(r);
}

static void stream_output(stream_req *r, const cv_request_output *out);

static void stream_unlink(stream *st, stream_req *r)
{
    for (stream_req **p = &st->reqs; *p; p = &(*p)->next) {
        if (*p == r) {
            *p = r->next;
            break;
        }
    }
    st->n_reqs--;
}

/* A checked stream request is tokenized and submitted here, on the worker
 * pool, without g->mu; then, under it, its error is answered or the
 * outputs that came meanwhile are handled. */
static void stream_submit(void *arg)
{
    stream_req *r = arg;
    stream *st = r->st;
    cv_grpc *g = st->g;
    cv_error err = {.msg = ""};
    int rc = cv_infer_prepare(&r->ir, r->model, &err);
    uint64_t id = rc == 0 ? cv_infer_submit(&r->ir, r->model, g->q, r, &err) : 0;
    pthread_mutex_lock(&g->mu);
    r->submitting = false;
    if (!id) {
        cv_server_account(r->model, false, r->start_ns);
        size_t len;
        uint8_t *b = cv_grpc_pack_stream_response(
            NULL, NULL, 0, r->model->name, r->model->version_str, r->id, true, err.msg, &len);
        stream_queue(st, b, len);
        stream_unlink(st, r);
        stream_req_free(r);
        stream_settle(st);
    } else {
        r->engine_id = id;
        if (st->cancelled || g->aborted || r->lost) cv_engine_abort(r->model->engine, id);
        /* stream_output frees r with the final output, the last one */
        cv_request_output **d = r->deferred;
        int n = r->n_deferred;
        r->deferred = NULL;
        for (int i = 0; i < n; i++) {
            stream_output(r, d[i]);
            cv_request_output_free(d[i]);
        }
        free(d);
    }
    pthread_mutex_unlock(&g->mu);
}

/* One ModelInferRequest arrived on the stream. */
static void stream_request(stream *st, const uint8_t *data, size_t len)
{
    cv_grpc *g = st->g;
    Inference__ModelInferRequest *rq = inference__model_infer_request__unpack(NULL, len, data);
    if (!rq) {
        stream_error(st, NULL, "cannot parse the ModelInferRequest message");
        return;
    }
    cv_error err = {.msg = ""};
    if (cv_grpc_check_strings(&inference__model_infer_request__descriptor, data, len, &err) < 0) {
        /* Nothing of rq may be echoed back: its strings are not valid. */
        inference__model_infer_request__free_unpacked(rq, NULL);
        stream_error(st, NULL, err.msg);
        return;
    }
    stream_req *r = calloc(1, sizeof *r);
    if (!r) {
        stream_error(st, rq, "out of memory");
        inference__model_infer_request__free_unpacked(rq, NULL);
        return;
    }
    cv_infer_request_init(&r->ir);
    r->st = st;
    r->start_ns = cv_now_ns();
    r->model = cv_server_acquire(g->s, rq->model_name, rq->model_version, &err);
    int rc = r->model ? cv_server_admit(g->s, &err) : -1;
    if (rc == 0 &&
        (!(r->id = strdup(rq->id)) || !(r->wanted = calloc(rq->n_outputs + 1, sizeof *r->wanted))))
        rc = cv_errorf(&err, "out of memory");
    for (size_t i = 0; rc == 0 && i < rq->n_outputs; i++) {
        if (!(r->wanted[i] = strdup(rq->outputs[i]->name))) rc = cv_errorf(&err, "out of memory");
        r->n_wanted = i + 1;
    }
    if (rc == 0) rc = cv_grpc_parse_infer(rq, r->model, &r->ir, &err);
    if (rc == 0) rc = cv_infer_check(&r->ir, r->model, &err);
    if (rc == 0) {
        /* Tracked from now on: the stream stays until the pool is done. */
        r->submitting = true;
        r->next = st->reqs;
        st->reqs = r;
        st->n_reqs++;
        if (cv_workpool_submit(g->pool, stream_submit, r) < 0) {
            stream_unlink(st, r);
            rc = cv_errorf_class(&err, CV_ERR_UNAVAILABLE, "Server is stopping");
        }
    }
    if (rc < 0) {
        if (r->model) cv_server_account(r->model, false, r->start_ns);
        stream_error(st, rq, err.msg);
        stream_req_free(r);
    }
    inference__model_infer_request__free_unpacked(rq, NULL);
}

static void stream_cancel(stream *st)
{
    if (st->cancelled) return;
    st->cancelled = true;
    for (stream_req *r = st->reqs; r; r = r->next) {
        cv_log_info("[vllm] Cancelling the request");
        if (!r->submitting) cv_engine_abort(r->model->engine, r->engine_id);
    }
    for (int i = st->sending ? 1 : 0; i < st->nq; i++)
        grpc_byte_buffer_destroy(st->sendq[i]);
    st->nq = st->sending ? 1 : 0;
}

/* An engine output for a stream request (output thread, g->mu held). */
static void stream_output(stream_req *r, const cv_request_output *out)
{
    stream *st = r->st;
    bool ok = !out->error;
    if (!st->cancelled) {
        const cv_model *m = r->model;
        size_t len;
        uint8_t *b;
        if (out->error) {
            b = cv_grpc_pack_stream_response(NULL, NULL, 0, m->name, m->version_str, r->id, true,
                                             out->error, &len);
            stream_queue(st, b, len);
        } else {
            cv_infer_response resp;
            cv_error err = {.msg = ""};
            if (cv_infer_response_build(&r->ir, out, &resp, &err) < 0) {
                ok = false;
                b = cv_grpc_pack_stream_response(NULL, NULL, 0, m->name, m->version_str, r->id,
                                                 true, err.msg, &len);
                stream_queue(st, b, len);
            } else {
                /* The vLLM backend puts the final flag on its last data
                 * response, so triton_enable_empty_final_response never
                 * adds an empty one (Triton sends that only for a final
                 * flag without a response). */
                b = cv_grpc_pack_stream_response(&resp, r->wanted, r->n_wanted, m->name,
                                                 m->version_str, r->id, out->finished, NULL, &len);
                stream_queue(st, b, len);
                cv_infer_response_free(&resp);
            }
        }
    }
    if (!out->finished) return;
    if (st->cancelled) cv_log_info("[vllm] Successfully cancelled the request");
    bool aborted = out->n_seqs > 0 && out->seqs[0].finish_reason == CV_FINISH_ABORT;
    atomic_fetch_sub(&r->model->counters.pending, 1);
    cv_server_account(r->model, ok && !aborted && !st->cancelled, r->start_ns);
    stream_unlink(st, r);
    stream_req_free(r);
    stream_settle(st);
}

/* ---- threads ------------------------------------------------------------ */

static void on_event(cv_grpc *g, tag *t, bool ok)
{
    if (t->type == TAG_SHUTDOWN) {
        g->shutdown_done = true;
        return;
    }
    if (t->type == TAG_NEW_CALL) {
        if (!ok) /* the server is shutting down */
            return;
        grpc_call *call = g->new_call;
        char method[160];
        snprintf(method, sizeof method, "%.*s", (int)GRPC_SLICE_LENGTH(g->details.method),
                 (const char *)GRPC_SLICE_START_PTR(g->details.method));
        grpc_call_details_destroy(&g->details);
        grpc_metadata_array_destroy(&g->md);
        if (!strcmp(method, STREAM_METHOD))
            stream_start(g, call);
        else
            unary_start(g, call, method);
        request_next_call(g);
        return;
    }
    if (t->type == TAG_UNARY_RECV) {
        unary_recv(g, t->owner);
        return;
    }
    if (t->type == TAG_UNARY_DONE) {
        unary_done(g, t->owner);
        return;
    }
    stream *st = t->owner;
    st->ops--;
    switch (t->type) {
    case TAG_STREAM_RECV:
        if (!ok || !st->recv) {
            st->half_closed = true;
        } else {
            grpc_byte_buffer_reader rd;
            if (grpc_byte_buffer_reader_init(&rd, st->recv)) {
                grpc_slice all = grpc_byte_buffer_reader_readall(&rd);
                grpc_byte_buffer_reader_destroy(&rd);
                stream_request(st, GRPC_SLICE_START_PTR(all), GRPC_SLICE_LENGTH(all));
                grpc_slice_unref(all);
            }
            grpc_byte_buffer_destroy(st->recv);
            st->recv = NULL;
            if (!st->cancelled) stream_recv(st);
        }
        break;
    case TAG_STREAM_SEND:
        grpc_byte_buffer_destroy(st->sendq[0]);
        memmove(st->sendq, st->sendq + 1, sizeof *st->sendq * (size_t)(st->nq - 1));
        st->nq--;
        st->sending = false;
        if (!ok) stream_cancel(st);
        stream_pump(st);
        break;
    case TAG_STREAM_CLOSE:
        if (st->close_cancelled) stream_cancel(st);
        st->half_closed = true;
        break;
    default:
        break;
    }
    stream_settle(st);
}

static void *cq_main(void *arg)
{
    cv_grpc *g = arg;
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(g->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
        if (ev.type != GRPC_OP_COMPLETE) continue;
        pthread_mutex_lock(&g->mu);
        on_event(g, ev.tag, ev.success != 0);
        pthread_mutex_unlock(&g->mu);
    }
    return NULL;
}

static void *out_main(void *arg)
{
    cv_grpc *g = arg;
    while (!atomic_load(&g->stop_out)) {
        cv_request_output *out = cv_output_queue_wait(g->q, 100);
        if (!out) continue;
        pthread_mutex_lock(&g->mu);
        stream_req *r = out->user_data;
        if (r->submitting) {
            cv_request_output **d = realloc(r->deferred, sizeof *d * (size_t)(r->n_deferred + 1));
            if (d) {
                r->deferred = d;
                d[r->n_deferred++] = out;
                out = NULL;
            } else {
                r->lost = true; /* out of memory: stream_submit aborts it */
            }
        } else {
            stream_output(r, out);
        }
        pthread_mutex_unlock(&g->mu);
        if (out) cv_request_output_free(out);
    }
    return NULL;
}

static void request_next_call(cv_grpc *g)
{
    if (g->shutdown_started) return;
    grpc_call_details_init(&g->details);
    grpc_metadata_array_init(&g->md);
    g->new_call = NULL;
    if (grpc_server_request_call(g->server, &g->new_call, &g->details, &g->md, g->cq, g->cq,
                                 &g->t_new) != GRPC_CALL_OK)
        cv_log_error("grpc: cannot request the next call");
}

/* ---- lifecycle ---------------------------------------------------------- */

static void grpc_destroy(void *state);

/* A connection accepted on the gRPC port (event loop thread): gRPC core
 * takes the socket over, unless the server is shutting down. TCP_NODELAY
 * as gRPC core's own listener sets it: without it a streamed response's
 * small frames wait for the client's delayed ACK (~40 ms on Linux), and a
 * concurrency-1 stream gets all its deltas in one burst at the end. */
static void on_grpc_accept(int fd, void *arg)
{
    cv_grpc *g = arg;
    pthread_mutex_lock(&g->mu);
    bool open = !g->shutdown_started;
    pthread_mutex_unlock(&g->mu);
    const int one = 1;
    if (open && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
        cv_log_warn("grpc: TCP_NODELAY on an accepted connection: %s", strerror(errno));
    if (open)
        grpc_server_add_channel_from_fd(g->server, fd, g->creds);
    else
        close(fd);
}

static int grpc_start(cv_server *s, void **state, cv_error *err)
{
    *state = NULL;
    if (!s->opts.allow_grpc) return 0;
    cv_grpc *g = calloc(1, sizeof *g);
    if (!g) return cv_errorf_class(err, CV_ERR_INTERNAL, "out of memory");
    grpc_init();
    g->s = s;
    pthread_mutex_init(&g->mu, NULL);
    g->t_new = (tag){TAG_NEW_CALL, NULL};
    g->t_shutdown = (tag){TAG_SHUTDOWN, NULL};
    g->q = cv_output_queue_create();
    g->cq = grpc_completion_queue_create_for_next(NULL);
    if (!(g->pool = cv_workpool_create(2, err))) goto fail;
    /* No SO_REUSEPORT: a second server on a taken port must fail to bind,
     * not share it. Messages up to 2 GiB as in tritonserver (long prompts
     * exceed gRPC's 4 MiB default). */
    grpc_arg arg[3] = {
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_ALLOW_REUSEPORT, .value.integer = 0},
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
         .value.integer = INT32_MAX},
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH,
         .value.integer = INT32_MAX},
    };
    grpc_channel_args args = {.num_args = 3, .args = arg};
    g->server = grpc_server_create(&args, NULL);
    if (!g->q || !g->cq || !g->server) {
        cv_errorf_class(err, CV_ERR_INTERNAL, "gRPC: cannot create the server");
        goto fail;
    }
    grpc_server_register_completion_queue(g->server, g->cq, NULL);
    char addr[300];
    const char *host = s->opts.grpc_address;
    /* an IPv6 address goes in brackets before the port */
    snprintf(addr, sizeof addr, strchr(host, ':') ? "[%.256s]:%d" : "%.256s:%d", host,
             s->opts.grpc_port);
    /* gRPC core's own listener stops for good on the first EMFILE; cvllm
     * accepts (with back-off, see listen.h) and hands it connected sockets. */
    g->creds = grpc_insecure_server_credentials_create();
    grpc_server_start(g->server);
    cv_error lerr = {.msg = ""};
    g->listen = cv_listen_new(s->base, host, s->opts.grpc_port, "gRPC", "grpc",
                              s->opts.grpc_max_connections, on_grpc_accept, g, &lerr);
    if (!g->listen) {
        cv_log_verbose("%s", lerr.msg);
        cv_errorf_class(err, CV_ERR_UNAVAILABLE, "failed to start GRPC service: cannot bind %s",
                        addr);
        goto fail;
    }
    pthread_mutex_lock(&g->mu);
    request_next_call(g);
    pthread_mutex_unlock(&g->mu);
    if (pthread_create(&g->cq_thread, NULL, cq_main, g) != 0 || !(g->cq_started = true) ||
        pthread_create(&g->out_thread, NULL, out_main, g) != 0) {
        cv_errorf_class(err, CV_ERR_INTERNAL, "gRPC: cannot start threads");
        goto fail;
    }
    g->out_started = true;
    cv_log_info("Started GRPCInferenceService at %s", addr);
    *state = g;
    return 0;
fail:
    grpc_destroy(g);
    return -1;
}

static void stop_accepting(cv_grpc *g)
{
    pthread_mutex_lock(&g->mu);
    if (!g->shutdown_started) {
        g->shutdown_started = true;
        grpc_server_shutdown_and_notify(g->server, g->cq, &g->t_shutdown);
    }
    pthread_mutex_unlock(&g->mu);
}

static void grpc_abort_all(void *state)
{
    cv_grpc *g = state;
    pthread_mutex_lock(&g->mu);
    g->aborted = true;
    for (stream *st = g->streams; st; st = st->next)
        for (stream_req *r = st->reqs; r; r = r->next)
            if (!r->submitting) cv_engine_abort(r->model->engine, r->engine_id);
    pthread_mutex_unlock(&g->mu);
}

/* Requests in flight plus streams with responses or their OK status not
 * yet written, plus loads not yet answered. */
static int grpc_active(void *state)
{
    cv_grpc *g = state;
    pthread_mutex_lock(&g->mu);
    int n = 0;
    for (stream *st = g->streams; st; st = st->next)
        n += st->n_reqs + (st->nq > 0 || st->sending || st->status_sent);
    pthread_mutex_unlock(&g->mu);
    return n + atomic_load(&g->n_loading);
}

/* Shuts the gRPC server down (GOAWAY to every connection) and waits for
 * its calls to end and its connections to close; then frees it. */
static void grpc_destroy(void *state)
{
    cv_grpc *g = state;
    if (!g) return;
    cv_listen_free(g->listen); /* the event loop has stopped: nothing accepts now */
    g->listen = NULL;
    if (g->server) {
        if (g->cq_started) {
            stop_accepting(g);
            /* Calls end once their engine requests delivered final outputs;
             * a model load in progress is waited for whatever it takes,
             * since its thread still uses the server. Calls get a grace
             * period before being cancelled: a status already handed to
             * the transport must reach the client, not a reset stream. */
            for (int i = 0; i < 3500 || atomic_load(&g->n_loading) > 0; i++) {
                if (i == 500) grpc_server_cancel_all_calls(g->server);
                pthread_mutex_lock(&g->mu);
                bool done = g->shutdown_done && g->n_calls == 0;
                pthread_mutex_unlock(&g->mu);
                if (done) break;
                struct timespec ts = {0, 2000000};
                nanosleep(&ts, NULL);
            }
        }
        cv_workpool_destroy(g->pool); /* its jobs use the calls */
        g->pool = NULL;
        grpc_server_destroy(g->server);
    }
    if (g->out_started) {
        atomic_store(&g->stop_out, true);
        pthread_join(g->out_thread, NULL);
    }
    if (g->cq) {
        grpc_completion_queue_shutdown(g->cq);
        if (g->cq_started)
            pthread_join(g->cq_thread, NULL);
        else
            while (grpc_completion_queue_next(g->cq, gpr_inf_past(GPR_CLOCK_REALTIME), NULL).type !=
                   GRPC_QUEUE_SHUTDOWN)
                ;
        grpc_completion_queue_destroy(g->cq);
    }
    cv_workpool_destroy(g->pool);
    if (g->q) cv_output_queue_destroy(g->q);
    if (g->creds) grpc_server_credentials_release(g->creds);
    pthread_mutex_destroy(&g->mu);
    free(g);
    grpc_shutdown();
}

/* No stop_accepting: gRPC keeps accepting while the server drains, and
 * refuses new calls one by one (cv_server_admit). Shutting the gRPC server
 * down at once would send GOAWAY, and the transport then closes as soon as
 * its last stream is done, possibly before that stream's last responses
 * left it; the client sees a reset connection. grpc_destroy shuts down
 * once idle. */
const cv_frontend_ops cv_grpc_frontend = {
    .name = "gRPC",
    .start = grpc_start,
    .abort_all = grpc_abort_all,
    .active = grpc_active,
    .destroy = grpc_destroy,
};

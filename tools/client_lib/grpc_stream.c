/* ModelStreamInfer over the gRPC C core.
 *
 * One call per stream on a pluck completion queue: each kind of operation
 * has its own tag, so a sender thread (plucking send/close tags) and a
 * receiver thread (plucking recv/status tags) never steal each other's
 * completions. RECV_STATUS_ON_CLIENT is started at open so the final status
 * is there whenever the receive side sees the end of the stream. */
#include "client.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"

struct cvc_stream {
    grpc_channel *channel;
    grpc_completion_queue *cq; /* pluck queue owned by this stream */
    grpc_call *call;
    pthread_mutex_t send_mu; /* one SEND_MESSAGE / close in flight at a time */
    bool send_closed;

    grpc_metadata_array initial_md, trailing_md;
    grpc_status_code status;
    grpc_slice status_details;
    bool status_plucked;

    grpc_byte_buffer *recv_buf;
    bool recv_pending;      /* a RECV_MESSAGE was started and not plucked */
    bool got_initial_md_op; /* RECV_INITIAL_METADATA already requested */
    bool finished;          /* END or ERROR was reported */

    /* Distinct addresses used as completion tags. */
    char tag_send, tag_close, tag_recv, tag_status, tag_start;
};

static const char *status_name(grpc_status_code c)
{
    static const char *names[] = {"OK",
                                  "CANCELLED",
                                  "UNKNOWN",
                                  "INVALID_ARGUMENT",
                                  "DEADLINE_EXCEEDED",
                                  "NOT_FOUND",
                                  "ALREADY_EXISTS",
                                  "PERMISSION_DENIED",
                                  "RESOURCE_EXHAUSTED",
                                  "FAILED_PRECONDITION",
                                  "ABORTED",
                                  "OUT_OF_RANGE",
                                  "UNIMPLEMENTED",
                                  "INTERNAL",
                                  "UNAVAILABLE",
                                  "DATA_LOSS",
                                  "UNAUTHENTICATED"};
    if ((int)c >= 0 && (size_t)c < sizeof names / sizeof names[0]) return names[c];
    return "UNKNOWN_STATUS";
}

static gpr_timespec deadline_in_ms(int ms)
{
    if (ms < 0) return gpr_inf_future(GPR_CLOCK_REALTIME);
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

/* Starts a batch and waits for its completion. Returns whether the batch
 * succeeded (a failed send means the stream has already ended). */
static int run_batch(cvc_stream *s, const grpc_op *ops, size_t n, void *tag, bool *ok,
                     cv_error *err)
{
    grpc_call_error ce = grpc_call_start_batch(s->call, ops, n, tag, NULL);
    if (ce != GRPC_CALL_OK)
        return cv_errorf(err, "ModelStreamInfer: grpc_call_start_batch failed (%d)", (int)ce);
    grpc_event ev =
        grpc_completion_queue_pluck(s->cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    *ok = ev.type == GRPC_OP_COMPLETE && ev.success;
    return 0;
}

cvc_stream *cvc_stream_open(const char *target, double timeout_s, cv_error *err)
{
    cvc_stream *s = calloc(1, sizeof *s);
    if (!s) {
        cv_errorf(err, "out of memory opening a stream to %s", target);
        return NULL;
    }
    grpc_init();
    pthread_mutex_init(&s->send_mu, NULL);
    grpc_metadata_array_init(&s->initial_md);
    grpc_metadata_array_init(&s->trailing_md);
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    s->channel = grpc_channel_create(target, creds, NULL);
    grpc_channel_credentials_release(creds);
    s->cq = grpc_completion_queue_create_for_pluck(NULL);
    gpr_timespec deadline = timeout_s > 0 ? deadline_in_ms((int)(timeout_s * 1000.0))
                                          : gpr_inf_future(GPR_CLOCK_REALTIME);
    grpc_slice method =
        grpc_slice_from_static_string("/inference.GRPCInferenceService/ModelStreamInfer");
    s->call = grpc_channel_create_call(s->channel, NULL, GRPC_PROPAGATE_DEFAULTS, s->cq, method,
                                       NULL, deadline, NULL);
    if (!s->channel || !s->cq || !s->call) {
        cv_errorf(err, "ModelStreamInfer: cannot create a call to '%s'", target);
        goto fail;
    }
    grpc_op ops[1];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    bool ok;
    if (run_batch(s, ops, 1, &s->tag_start, &ok, err)) goto fail;
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[0].data.recv_status_on_client.trailing_metadata = &s->trailing_md;
    ops[0].data.recv_status_on_client.status = &s->status;
    ops[0].data.recv_status_on_client.status_details = &s->status_details;
    if (grpc_call_start_batch(s->call, ops, 1, &s->tag_status, NULL) != GRPC_CALL_OK) {
        cv_errorf(err, "ModelStreamInfer: cannot wait for the status of the call to '%s'", target);
        goto fail;
    }
    return s;
fail:
    cvc_stream_free(s);
    return NULL;
}

/* Collects the final status (the call is over) and turns it into a
 * CVC_RECV_END or CVC_RECV_ERROR with the status named in err. */
static cvc_recv_status finish(cvc_stream *s, cv_error *err)
{
    if (!s->status_plucked) {
        grpc_completion_queue_pluck(s->cq, &s->tag_status, gpr_inf_future(GPR_CLOCK_REALTIME),
                                    NULL);
        s->status_plucked = true;
    }
    s->finished = true;
    if (s->status == GRPC_STATUS_OK) return CVC_RECV_END;
    char *details = grpc_slice_to_c_string(s->status_details);
    cv_errorf(err, "ModelStreamInfer: %s: %s", status_name(s->status), details ? details : "");
    gpr_free(details);
    return CVC_RECV_ERROR;
}

int cvc_stream_send(cvc_stream *s, const cvc_request *req, cv_error *err)
{
    uint8_t *buf;
    size_t len;
    if (cvc_request_encode(req, &buf, &len, err)) return -1;
    grpc_slice slice = grpc_slice_from_copied_buffer((const char *)buf, len);
    free(buf);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_MESSAGE;
    op.data.send_message.send_message = bb;
    pthread_mutex_lock(&s->send_mu);
    bool ok = false;
    int rc = s->send_closed ? cv_errorf(err, "ModelStreamInfer: request '%s' sent after close",
                                        req->id ? req->id : "")
                            : run_batch(s, &op, 1, &s->tag_send, &ok, err);
    pthread_mutex_unlock(&s->send_mu);
    grpc_byte_buffer_destroy(bb);
    if (rc) return -1;
    if (!ok)
        return cv_errorf(err, "ModelStreamInfer: request '%s' not sent: the stream has ended",
                         req->id ? req->id : "");
    return 0;
}

int cvc_stream_close_send(cvc_stream *s, cv_error *err)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    pthread_mutex_lock(&s->send_mu);
    bool ok = true;
    int rc = 0;
    if (!s->send_closed) {
        rc = run_batch(s, &op, 1, &s->tag_close, &ok, err);
        s->send_closed = true;
    }
    pthread_mutex_unlock(&s->send_mu);
    /* A failed half-close means the call is already over; recv reports why. */
    return rc;
}

cvc_recv_status cvc_stream_recv(cvc_stream *s, int timeout_ms, cvc_response *out, cv_error *err)
{
    memset(out, 0, sizeof *out);
    out->num_input_tokens = out->num_output_tokens = -1;
    if (s->finished) return finish(s, err);
    if (!s->recv_pending) {
        grpc_op ops[2];
        memset(ops, 0, sizeof ops);
        size_t n = 0;
        /* The server's headers must be read before its first message. */
        if (!s->got_initial_md_op) {
            ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
            ops[n].data.recv_initial_metadata.recv_initial_metadata = &s->initial_md;
            n++;
        }
        ops[n].op = GRPC_OP_RECV_MESSAGE;
        ops[n].data.recv_message.recv_message = &s->recv_buf;
        n++;
        s->recv_buf = NULL;
        grpc_call_error ce = grpc_call_start_batch(s->call, ops, n, &s->tag_recv, NULL);
        if (ce != GRPC_CALL_OK) {
            cv_errorf(err, "ModelStreamInfer: grpc_call_start_batch (receive) failed (%d)",
                      (int)ce);
            return CVC_RECV_ERROR;
        }
        s->got_initial_md_op = true;
        s->recv_pending = true;
    }
    grpc_event ev =
        grpc_completion_queue_pluck(s->cq, &s->tag_recv, deadline_in_ms(timeout_ms), NULL);
    if (ev.type == GRPC_QUEUE_TIMEOUT) return CVC_RECV_TIMEOUT;
    uint64_t arrival_ns = cv_now_ns();
    s->recv_pending = false;
    if (!s->recv_buf) return finish(s, err); /* end of stream */
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, s->recv_buf)) {
        grpc_byte_buffer_destroy(s->recv_buf);
        s->recv_buf = NULL;
        cv_errorf(err, "ModelStreamInfer: cannot read a response message");
        return CVC_RECV_ERROR;
    }
    grpc_slice all = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    grpc_byte_buffer_destroy(s->recv_buf);
    s->recv_buf = NULL;
    int rc = cvc_response_decode(GRPC_SLICE_START_PTR(all), GRPC_SLICE_LENGTH(all), out, err);
    grpc_slice_unref(all);
    if (rc) return CVC_RECV_ERROR;
    out->arrival_ns = arrival_ns;
    return CVC_RECV_RESPONSE;
}

void cvc_stream_cancel(cvc_stream *s)
{
    if (s->call) grpc_call_cancel(s->call, NULL);
}

void cvc_stream_free(cvc_stream *s)
{
    if (!s) return;
    if (s->call) {
        gpr_timespec inf = gpr_inf_future(GPR_CLOCK_REALTIME);
        grpc_call_cancel(s->call, NULL); /* no-op when the call is over */
        if (s->recv_pending) grpc_completion_queue_pluck(s->cq, &s->tag_recv, inf, NULL);
        if (s->recv_buf) grpc_byte_buffer_destroy(s->recv_buf);
        if (!s->status_plucked) grpc_completion_queue_pluck(s->cq, &s->tag_status, inf, NULL);
        grpc_call_unref(s->call);
    }
    if (s->cq) {
        grpc_completion_queue_shutdown(s->cq);
        while (grpc_completion_queue_pluck(s->cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
                   .type != GRPC_QUEUE_SHUTDOWN) {
        }
        grpc_completion_queue_destroy(s->cq);
    }
    if (s->channel) grpc_channel_destroy(s->channel);
    grpc_slice_unref(s->status_details);
    grpc_metadata_array_destroy(&s->initial_md);
    grpc_metadata_array_destroy(&s->trailing_md);
    pthread_mutex_destroy(&s->send_mu);
    free(s);
    grpc_shutdown();
}

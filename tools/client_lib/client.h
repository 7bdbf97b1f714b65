/* cvllm client library (cv_client): talks to a Triton-compatible server the
 * way tritonclient does, for cvllm-client and cvllm-bench.
 *
 *  - Raw tensor encoding (Triton's raw_input_contents / raw_output_contents):
 *    BYTES elements are a 4-byte little-endian length followed by the bytes;
 *    BOOL is one byte per element.
 *  - gRPC ModelStreamInfer over the gRPC C core: one bidirectional stream,
 *    many requests on it, responses matched to requests by id.
 *  - HTTP generate_stream (and OpenAI /v1/completions) over libcurl: each
 *    server-sent event is handed to a callback with its arrival time.
 *
 * Errors are values (base/error.h): functions return 0 or -1 with a message
 * naming the wrong input. Ownership is stated per function. */
#ifndef CV_CLIENT_CLIENT_H
#define CV_CLIENT_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

/* ------------------------------------------------------------------------ */
/* Raw tensor encoding                                                      */

/* Appends one BYTES element (len bytes of data) to *buf (malloc'ed, grown
 * with realloc; *buf may start NULL with *buf_len 0). */
int cvc_bytes_append(uint8_t **buf, size_t *buf_len, const void *data, size_t len, cv_error *err);

/* Splits a raw BYTES tensor into its elements. On success *elems and *lens
 * are malloc'ed arrays of *n pointers into raw (not copies: valid while raw
 * is) and lengths; the caller frees both arrays. A truncated length prefix
 * or an element running past the end is an error naming the element. */
int cvc_bytes_decode(const uint8_t *raw, size_t raw_len, const uint8_t ***elems, size_t **lens,
                     size_t *n, cv_error *err);

/* Raw BOOL tensor of one element: one byte, 0 or 1. */
uint8_t cvc_bool_encode(bool v);
/* Decodes element i of a raw BOOL tensor; any nonzero byte is true. */
int cvc_bool_decode(const uint8_t *raw, size_t raw_len, size_t i, bool *v, cv_error *err);

/* ------------------------------------------------------------------------ */
/* Server-sent events                                                       */

/* Incremental text/event-stream parser. Bytes arrive in arbitrary chunks;
 * each complete event (terminated by a blank line) is reported once with
 * its "data" lines joined by '\n', as the WHATWG EventSource algorithm does
 * ("data:" with one optional space after the colon; comment lines starting
 * with ':' and other fields are ignored; CRLF, LF and CR line ends). */
typedef int (*cvc_sse_event_fn)(void *user, const char *data, size_t len);

typedef struct cvc_sse_parser {
    char *line; /* partial line carried between chunks */
    size_t line_len, line_cap;
    char *data; /* data of the event being assembled */
    size_t data_len, data_cap;
    bool has_data;    /* a data field was seen in this event */
    bool last_was_cr; /* a CR ended the previous chunk: skip a leading LF */
    cvc_sse_event_fn on_event;
    void *user;
} cvc_sse_parser;

void cvc_sse_init(cvc_sse_parser *p, cvc_sse_event_fn on_event, void *user);
/* Feeds len bytes. Returns -1 if on_event returned nonzero (parsing stops)
 * or on allocation failure. */
int cvc_sse_feed(cvc_sse_parser *p, const char *bytes, size_t len, cv_error *err);
void cvc_sse_free(cvc_sse_parser *p);

/* ------------------------------------------------------------------------ */
/* HTTP streaming (SSE) requests                                            */

/* Called for each event with its data and its arrival time (cv_now_ns).
 * Returning nonzero aborts the request (the connection is closed, which
 * cancels the request in a cvllm server). */
typedef int (*cvc_http_event_fn)(void *user, const char *data, size_t len, uint64_t arrival_ns);

typedef struct cvc_http_result {
    long status; /* HTTP status; 0 when no response arrived */
    char *body;  /* non-SSE body (e.g. an error JSON), NUL-terminated, may be NULL */
    size_t body_len;
} cvc_http_result;

/* Process-wide setup for libcurl; call once before any thread starts. */
int cvc_http_global_init(cv_error *err);
void cvc_http_global_cleanup(void);

/* POSTs json_body (Content-Type: application/json) to url and streams the
 * text/event-stream answer through on_event. Blocks until the response
 * ends, timeout_ms passes (0: none) or on_event aborts. Returns 0 when the
 * transfer completed (whatever the HTTP status: see res->status), -1 on a
 * transport error. res->body is malloc'ed, freed by cvc_http_result_free. */
int cvc_http_post_sse(const char *url, const char *json_body, long timeout_ms,
                      cvc_http_event_fn on_event, void *user, cvc_http_result *res, cv_error *err);
/* Plain GET (e.g. /metrics): the whole body into res. */
int cvc_http_get(const char *url, long timeout_ms, cvc_http_result *res, cv_error *err);
void cvc_http_result_free(cvc_http_result *res);

/* ------------------------------------------------------------------------ */
/* gRPC ModelStreamInfer                                                    */

typedef enum { CVC_PARAM_BOOL, CVC_PARAM_INT64, CVC_PARAM_STRING, CVC_PARAM_DOUBLE } cvc_param_kind;

/* A request parameter (ModelInferRequest.parameters map entry). */
typedef struct cvc_param {
    const char *key;
    cvc_param_kind kind;
    bool b;
    int64_t i;
    const char *s;
    double d;
} cvc_param;

/* One request for the vllm model. Inputs left NULL / negative are omitted. */
typedef struct cvc_request {
    const char *model_name;
    const char *model_version; /* NULL or "" for the default */
    const char *id;
    const char *text_input; /* UTF-8 prompt */
    size_t text_input_len;
    int stream;                      /* -1 omit, else BOOL input "stream" */
    const char *sampling_parameters; /* JSON object text, NULL to omit */
    int exclude_input_in_output;     /* -1 omit, else BOOL */
    bool return_num_input_tokens;    /* each true adds a BOOL input = true */
    bool return_num_output_tokens;
    bool return_finish_reason;
    const cvc_param *params; /* request parameters */
    size_t n_params;
    const char *const *outputs; /* requested outputs; none: all */
    size_t n_outputs;
} cvc_request;

/* Initialises r with every optional input omitted. */
void cvc_request_init(cvc_request *r);

/* One ModelStreamInferResponse, decoded. */
typedef struct cvc_response {
    char *id;            /* "" when the server sent none */
    char *error_message; /* NULL when the response is not an error */
    bool final;          /* parameter triton_final_response */
    size_t n_text;       /* text_output elements */
    char **text;         /* NUL-terminated copies */
    size_t *text_len;
    char *finish_reason;       /* first element of finish_reason, NULL if absent */
    int64_t num_input_tokens;  /* -1 when absent */
    int64_t num_output_tokens; /* first element; -1 when absent */
    uint64_t arrival_ns;       /* cv_now_ns when it was received */
} cvc_response;

void cvc_response_free(cvc_response *r);

/* Decodes a serialized ModelStreamInferResponse (exposed for tests). */
int cvc_response_decode(const uint8_t *buf, size_t len, cvc_response *out, cv_error *err);
/* Serializes a request as a ModelInferRequest (malloc'ed, caller frees). */
int cvc_request_encode(const cvc_request *req, uint8_t **buf, size_t *len, cv_error *err);

typedef struct cvc_stream cvc_stream;

/* Opens ModelStreamInfer to target ("host:port"). timeout_s > 0 sets the
 * deadline of the whole stream (tritonclient's stream_timeout), 0: none.
 * Connection failures show up on the first send or recv. */
cvc_stream *cvc_stream_open(const char *target, double timeout_s, cv_error *err);

/* Sends one request and waits until gRPC has taken it. Safe to call from
 * one thread while another calls cvc_stream_recv. */
int cvc_stream_send(cvc_stream *s, const cvc_request *req, cv_error *err);

/* Half-closes the stream: no more requests; the server finishes the ones it
 * has and then ends the stream. */
int cvc_stream_close_send(cvc_stream *s, cv_error *err);

typedef enum {
    CVC_RECV_RESPONSE = 1, /* *out holds a response */
    CVC_RECV_TIMEOUT = 0,  /* nothing within timeout_ms; call again */
    CVC_RECV_END = 2,      /* the server ended the stream with status OK */
    CVC_RECV_ERROR = -1,   /* the stream failed; err says how (gRPC status) */
} cvc_recv_status;

/* Waits up to timeout_ms (< 0: forever) for the next response. One thread
 * at a time. After CVC_RECV_END or CVC_RECV_ERROR the stream is finished. */
cvc_recv_status cvc_stream_recv(cvc_stream *s, int timeout_ms, cvc_response *out, cv_error *err);

/* Cancels the RPC: the server aborts its requests; recv then reports the
 * CANCELLED status. */
void cvc_stream_cancel(cvc_stream *s);

/* Cancels if still open, then frees everything. */
void cvc_stream_free(cvc_stream *s);

#endif

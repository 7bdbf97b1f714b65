/* One inference request of the vllm model, independent of the protocol it
 * came in on: the input tensors of PROTOCOL.md ("Tensors of the vllm
 * model") and request parameters are collected here, checked and turned
 * into engine sampling parameters; engine outputs come back as the model's
 * output tensors. http.c and grpc.c only translate wire formats. */
#ifndef CV_SERVER_INFER_H
#define CV_SERVER_INFER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "base/error.h"
#include "cvllm/engine.h"
#include "server/repository.h"

typedef struct cv_infer_request {
    char *prompt; /* text_input (owned, NUL-terminated) */
    size_t prompt_len;
    bool has_prompt;
    bool stream;
    int exclude_input; /* -1 absent, 0 false, 1 true */
    bool ret_finish_reason, ret_cumulative_logprob, ret_logprobs;
    bool ret_num_input_tokens, ret_num_output_tokens;
    char *sampling_json;   /* the sampling_parameters input (owned) or NULL */
    json_t *params;        /* request parameters (owned object) */
    int n_inputs;          /* inputs given */
    cv_sampling_params sp; /* filled by cv_infer_prepare */
    bool sp_ready;
} cv_infer_request;

void cv_infer_request_init(cv_infer_request *r);
void cv_infer_request_free(cv_infer_request *r);

/* Sets input `name` of model m from a BOOL or BYTES value. Unknown inputs
 * and type mismatches are errors naming the input. */
int cv_infer_set_bool(cv_infer_request *r, const cv_model *m, const char *name, bool v,
                      cv_error *err);
int cv_infer_set_bytes(cv_infer_request *r, const cv_model *m, const char *name, const char *data,
                       size_t len, cv_error *err);
/* Adds request parameter `key` (a JSON scalar; the reference is stolen). */
int cv_infer_set_param(cv_infer_request *r, const char *key, json_t *value, cv_error *err);

/* The JSON object of a /generate(_stream) body (Triton's generate
 * extension): keys naming model inputs set them (a scalar each), a
 * "parameters" object's keys likewise, every other key is a request
 * parameter. Errors name the key. body stays the caller's. */
int cv_infer_set_json(cv_infer_request *r, const cv_model *m, json_t *body, cv_error *err);

/* What Triton's core checks before a request reaches the backend: the
 * required input text_input is given. Errors are CV_ERR_INVALID. */
int cv_infer_check(const cv_infer_request *r, const cv_model *m, cv_error *err);

/* What the vLLM backend does with a request before the engine runs it:
 * the engine health check (ENABLE_VLLM_HEALTH_CHECK), stream with
 * exclude_input_in_output false, lora_name against the model, and the
 * sampling parameters (the sampling_parameters input when present, else
 * the request parameters, Triton-reserved ones excluded). Its errors are
 * the backend's error responses: CV_ERR_INTERNAL (the class of the
 * backend's pb_utils.TritonError) with the backend's message, prefixed
 * "Error generating stream: " where the backend prefixes it; an unhealthy
 * engine CV_ERR_UNAVAILABLE. HTTP /generate_stream sends them as SSE
 * error events. */
int cv_infer_prepare(cv_infer_request *r, const cv_model *m, cv_error *err);
/* cv_infer_prepare's last part, with the same errors: r->sp from the
 * sampling_parameters input or the request parameters, and lora_name
 * checked against m. */
int cv_infer_sampling(cv_infer_request *r, const cv_model *m, cv_error *err);

/* Queues the prepared request in m's engine with outputs to sink and counts
 * it pending (the frontend decrements m->counters.pending at its final
 * output). Errors are backend errors as cv_infer_prepare's (a request the
 * engine refuses: INTERNAL, prefixed), or CV_ERR_UNAVAILABLE when the
 * engine's queue is full. */
uint64_t cv_infer_submit(cv_infer_request *r, cv_model *m, cv_output_queue *sink, void *user_data,
                         cv_error *err);

/* ---- responses ---------------------------------------------------------- */

enum { CV_MAX_OUT_TENSORS = 6 };

typedef struct cv_out_tensor {
    const char *name;  /* static */
    cv_data_type type; /* CV_TYPE_STRING, CV_TYPE_FP32 or CV_TYPE_UINT32 */
    int n;             /* elements (shape [n]) */
    char **bytes;      /* (n) STRING elements (owned) */
    size_t *lens;      /* (n) */
    float *f32;        /* (n) FP32 (owned) */
    uint32_t *u32;     /* (n) UINT32 (owned) */
} cv_out_tensor;

typedef struct cv_infer_response {
    int n_tensors;
    cv_out_tensor t[CV_MAX_OUT_TENSORS];
} cv_infer_response;

/* The outputs of one engine output for request r (text_output always, the
 * others when their return_* input is true). */
int cv_infer_response_build(const cv_infer_request *r, const cv_request_output *out,
                            cv_infer_response *resp, cv_error *err);
void cv_infer_response_free(cv_infer_response *resp);

/* {"model_name","model_version",<output>:...} with one-element tensors as
 * scalars (the /generate body). */
json_t *cv_infer_response_json(const cv_infer_response *resp, const char *model,
                               const char *version);

#endif

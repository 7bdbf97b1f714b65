/* The OpenAI-compatible completions API on the HTTP port, as vLLM's OpenAI
 * server answers it: POST /v1/completions (whole or streamed as SSE chunks
 * ending with "data: [DONE]") and GET /v1/models. This module only
 * translates: request bodies into a prompt and engine sampling parameters,
 * engine outputs into response objects; http.c does the I/O.
 *
 * Text is the engine's, the same as every other surface returns
 * (PROTOCOL.md: incremental detokenization, stop strings held back). */
#ifndef CV_SERVER_OPENAI_H
#define CV_SERVER_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "base/error.h"
#include "cvllm/engine.h"

typedef struct cv_openai_request {
    char model[256];
    char *prompt; /* text prompt (owned), or NULL when prompt_ids */
    size_t prompt_len;
    int32_t *prompt_ids; /* token-id prompt (owned) */
    size_t n_prompt_ids;
    bool stream;
    bool include_usage; /* stream_options.include_usage */
    cv_sampling_params sp;
    char id[48];     /* "cmpl-..." */
    int64_t created; /* Unix seconds */
    /* Whole responses: each sequence's text so far, and the counts. */
    int n_seqs;
    char **text;              /* (n_seqs) owned */
    size_t *text_len;         /* (n_seqs) */
    cv_finish_reason *finish; /* (n_seqs) */
    json_t **logprobs;        /* (n_seqs) OpenAI logprobs so far, NULL when not asked */
    int prompt_tokens;
    int completion_tokens;
} cv_openai_request;

/* Parses a /v1/completions body: model and prompt (a string, a one-string
 * list or a list of token ids) are required; stream, stream_options, echo
 * (false only), user and the vLLM SamplingParams fields are taken (a null
 * one keeps its default); any other field is an error naming it. The
 * request id takes `serial`. Logprobs' text_offset counts the lengths of
 * the decoded tokens. */
int cv_openai_parse(const char *body, size_t len, uint64_t serial, cv_openai_request *r,
                    cv_error *err);
/* Allocates the per-sequence state of the n sequences, once the engine
 * has accepted the request (which bounds n); -1 when out of memory. */
int cv_openai_begin(cv_openai_request *r);
void cv_openai_request_free(cv_openai_request *r);

/* Streamed: the chunk object for one engine output, or NULL when the output
 * adds neither text nor a finish reason. Also counts tokens into r. */
json_t *cv_openai_chunk(cv_openai_request *r, const cv_request_output *out);
/* Streamed, after the last chunk when include_usage: choices [] and usage. */
json_t *cv_openai_usage_chunk(const cv_openai_request *r);

/* Whole: adds one engine output to r; returns -1 when out of memory. */
int cv_openai_accumulate(cv_openai_request *r, const cv_request_output *out);
/* Whole: the response once the final output was accumulated. */
json_t *cv_openai_response(const cv_openai_request *r);

/* vLLM's ErrorResponse: {"object":"error","message","type","param","code"}
 * with type "BadRequestError" (400), "NotFoundError" (404) or
 * "ServiceUnavailableError" (503). */
json_t *cv_openai_error(const char *message, int code);

/* {"object":"list","data":[{"id","object":"model","created","owned_by"}...]} */
json_t *cv_openai_model_list(const char *const *names, int n, int64_t created);

#endif

/* The OpenAI-compatible API on the HTTP port, as vLLM's OpenAI server
 * answers it: POST /v1/completions (whole or streamed as SSE chunks ending
 * with "data: [DONE]"), POST /v1/chat/completions (openai_chat.h), GET
 * /v1/models, and vLLM's error object. This module only translates:
 * request bodies into prompts and engine sampling parameters, engine
 * outputs into response objects; http_openai.c does the I/O.
 *
 * Text is the engine's, the same as every other surface returns
 * (PROTOCOL.md: incremental detokenization, stop strings held back).
 *
 * A request holds one or more prompts (a list of prompts is a batched
 * completion); each becomes one engine request with n sequences, and
 * choice `p * n + k` is sequence k of prompt p, as in vLLM. */
#ifndef CV_SERVER_OPENAI_H
#define CV_SERVER_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "base/error.h"
#include "cvllm/engine.h"

typedef struct cv_openai_prompt {
    char *text; /* text prompt (owned), or NULL when ids */
    size_t len;
    int32_t *ids; /* token-id prompt (owned) */
    size_t n_ids;
    uint64_t engine_id; /* its engine request, 0 until submitted */
    bool finished;      /* its final output arrived */
    int n_tokens;       /* prompt tokens, from its outputs */
    char *echo;         /* echo: the prompt text prepended to each choice (owned) */
    size_t echo_len;
    char *first_token; /* echo with logprobs: the first prompt token decoded (owned) */
    json_t *echo_lp;   /* echo with logprobs: the prompt's logprobs once they arrived */
} cv_openai_prompt;

typedef struct cv_openai_request {
    char model[256];
    cv_openai_prompt *prompts; /* (n_prompts) owned */
    int n_prompts;
    bool stream;
    bool include_usage;  /* stream_options.include_usage */
    bool stream_options; /* stream_options given (only with stream) */
    bool echo;
    bool echo_only; /* echo with max_tokens 0: the prompt alone (vLLM) */
    bool chat;      /* a chat completion (openai_chat.c builds its objects) */
    cv_sampling_params sp;
    char id[48];     /* "cmpl-..." or "chatcmpl-..." */
    int64_t created; /* Unix seconds */
    /* Per choice (n_prompts * sp.n): text so far, finish, logprobs. */
    int n_seqs;
    char **text;              /* (n_seqs) owned */
    size_t *text_len;         /* (n_seqs) */
    size_t *lp_offset;        /* (n_seqs) whole: sum of logprob token lengths so far */
    bool *started;            /* (n_seqs) streamed: a chunk of the choice was sent */
    cv_finish_reason *finish; /* (n_seqs) */
    json_t **logprobs;        /* (n_seqs) logprobs so far, NULL when not asked */
    int completion_tokens;
    int n_submitted;  /* prompts queued in the engine */
    int n_finished;   /* prompts whose final output arrived */
    bool failed;      /* an output carried an error */
    void *chat_state; /* openai_chat.c's (owned through cv_openai_request_free) */
    void (*chat_state_free)(void *);
} cv_openai_request;

/* Parses a /v1/completions body: model and prompt (a string, a list of
 * strings, a list of token ids or a list of such lists) are required;
 * stream, stream_options, echo, user and the vLLM SamplingParams fields
 * are taken (a null one keeps its default); any other field is an error
 * naming it. The request id takes `serial`. */
int cv_openai_parse(const char *body, size_t len, uint64_t serial, cv_openai_request *r,
                    cv_error *err);
/* Allocates the per-choice state once the engine has accepted the
 * requests (which bounds n), and the echo texts: token-id prompts decoded
 * with tok (also used for the first prompt token of echo with logprobs). */
int cv_openai_begin(cv_openai_request *r, const cv_tokenizer *tok, cv_error *err);
void cv_openai_request_free(cv_openai_request *r);

/* The prompt whose engine request is request_id, or -1. */
int cv_openai_prompt_of(const cv_openai_request *r, uint64_t request_id);

/* Streamed: the chunk object for one engine output of prompt p, or NULL
 * when the output adds neither text nor a finish reason. Also counts
 * tokens into r. */
json_t *cv_openai_chunk(cv_openai_request *r, int p, const cv_request_output *out);
/* Streamed, after the last chunk when include_usage: choices [] and usage. */
json_t *cv_openai_usage_chunk(const cv_openai_request *r);

/* Whole: adds one engine output of prompt p to r; -1 when out of memory. */
int cv_openai_accumulate(cv_openai_request *r, int p, const cv_request_output *out);
/* Whole: the response once every prompt's final output was accumulated. */
json_t *cv_openai_response(const cv_openai_request *r);

/* Shared with openai_chat.c. */
json_t *cv_openai_usage_json(const cv_openai_request *r);
int cv_openai_prompt_tokens(const cv_openai_request *r);
/* Per-choice state for n_seqs choices; -1 when out of memory. */
int cv_openai_alloc_choices(cv_openai_request *r);
/* Appends len bytes of s to choice i's text; -1 when out of memory. */
int cv_openai_append_text(cv_openai_request *r, int i, const char *s, size_t len);
/* A logprob as JSON, clamped to -9999 as vLLM does (JSON has no -inf). */
json_t *cv_openai_logprob_json(float lp);
/* Takes stream_options: include_usage (and continuous_usage_stats). */
#define CV_OPENAI_STREAM_OPTIONS_MSG "Stream options can only be defined when `stream=True`."
int cv_openai_stream_options(cv_openai_request *r, json_t *v, cv_error *err);
/* Applies a JSON object of vLLM SamplingParams fields to r->sp, then
 * checks the ranges. */
int cv_openai_sampling(cv_openai_request *r, json_t *sampling, cv_error *err);

/* vLLM's ErrorResponse (since v0.10.1):
 * {"error": {"message","type","param","code"}} with code the HTTP status
 * and type "BadRequestError" (400), "NotFoundError" (404),
 * "InternalServerError" (500), "NotImplementedError" (501) or
 * "ServiceUnavailableError" (503). */
json_t *cv_openai_error(const char *message, int code);

/* {"object":"list","data":[{"id","object":"model","created","owned_by"}...]} */
json_t *cv_openai_model_list(const char *const *names, int n, int64_t created);

#endif

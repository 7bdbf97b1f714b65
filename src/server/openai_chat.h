/* vLLM's chat API: POST /v1/chat/completions bodies into one engine
 * request (the conversation rendered by the model's chat template, then
 * tokenized), its outputs into chat.completion objects and
 * chat.completion.chunk deltas (tool calls parsed back by
 * openai_tools.h), and vLLM's POST /tokenize and /detokenize.
 *
 * The chat template, first found of: the request's chat_template (text),
 * model.json's chat_template, the server's --chat-template (a file, or the
 * text when it holds a brace or newline), <tokenizer>/chat_template.jinja,
 * tokenizer_config.json's chat_template (a string, or a list of named
 * templates: "tool_use" when tools are given and it exists, else
 * "default"). The template sees messages, tools, documents,
 * add_generation_prompt, the tokenizer's special tokens (bos_token,
 * eos_token, unk_token, pad_token) and chat_template_kwargs, as
 * transformers' apply_chat_template.
 *
 * tool_choice as vLLM takes it: "auto" (the default with tools; the
 * model's tool_call_parser reads calls out of the text), "none", and
 * "required" or {"type": "function", "function": {"name"}}, which need no
 * parser: the output is held by structured outputs to the named tool's
 * parameters schema, or to an array of {"name", "parameters"} of the
 * tools (openai_tools.h reads either back into tool_calls). Other
 * structured-output fields beside those are refused. response_format
 * and structured_outputs go to the engine as in /v1/completions. */
#ifndef CV_SERVER_OPENAI_CHAT_H
#define CV_SERVER_OPENAI_CHAT_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "base/error.h"
#include "server/openai.h"

/* What a chat request needs of its model (pointers borrowed). */
typedef struct cv_chat_model {
    const char *tokenizer_dir;    /* holds tokenizer_config.json */
    const char *chat_template;    /* model.json's, else --chat-template's; NULL or "" = none */
    const char *tool_call_parser; /* model.json's tool_call_parser, "" = none */
    const cv_tokenizer *tok;
    int max_model_len;
} cv_chat_model;

/* Parses a /v1/chat/completions body into r (r->chat set). Messages and
 * template options stay in r until cv_chat_prepare. */
int cv_chat_parse(const char *body, size_t len, uint64_t serial, cv_openai_request *r,
                  cv_error *err);
/* Renders r's conversation with m's template and tokenizes it into r's
 * one prompt; checks the tool options against m's tool_call_parser. */
int cv_chat_prepare(cv_openai_request *r, const cv_chat_model *m, cv_error *err);

/* The rendering of a conversation (the options of a chat or /tokenize
 * request; borrowed). */
typedef struct cv_chat_render_args {
    const json_t *messages; /* array of {"role","content",...} */
    const json_t *tools;    /* array or NULL */
    const json_t *documents;
    const json_t *kwargs; /* chat_template_kwargs object or NULL */
    const char *chat_template;
    bool add_generation_prompt;
    bool continue_final_message;
} cv_chat_render_args;

/* The rendered prompt text (malloc'd). */
char *cv_chat_render(const cv_chat_model *m, const cv_chat_render_args *a, cv_error *err);

/* Streamed: the chunks that open the stream, before any output: each
 * choice's role chunk (then its echo, when asked). A new array. */
json_t *cv_chat_start_chunks(cv_openai_request *r);
/* Streamed: the chunk of one engine output (NULL when it adds nothing). */
json_t *cv_chat_chunk(cv_openai_request *r, int p, const cv_request_output *out);
json_t *cv_chat_usage_chunk(const cv_openai_request *r);
/* Whole. */
int cv_chat_accumulate(cv_openai_request *r, int p, const cv_request_output *out);
json_t *cv_chat_response(const cv_openai_request *r);

/* vLLM's /tokenize: {"prompt"} or {"messages", ...} ->
 * {"count","max_model_len","tokens","token_strs"}. The model field is
 * the caller's. */
json_t *cv_openai_tokenize(const cv_chat_model *m, const json_t *body, cv_error *err);
/* vLLM's /detokenize: {"tokens"} -> {"prompt"}. */
json_t *cv_openai_detokenize(const cv_chat_model *m, const json_t *body, cv_error *err);

#endif

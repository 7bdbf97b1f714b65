/* State of a chat completion shared by openai_chat.c (requests) and
 * openai_chat_out.c (responses). Not part of the module's contract. */
#ifndef CV_SERVER_OPENAI_CHAT_INTERNAL_H
#define CV_SERVER_OPENAI_CHAT_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "server/openai_chat.h"
#include "server/openai_tools.h"

/* tool_choice: auto (also when absent), none, "required", a named function. */
typedef enum {
    CV_CHOICE_AUTO = 0,
    CV_CHOICE_NONE,
    CV_CHOICE_REQUIRED,
    CV_CHOICE_NAMED
} cv_tool_choice;

typedef struct cv_chat_state {
    json_t *messages, *tools, *documents, *kwargs; /* owned; tools etc. NULL when absent */
    char *chat_template;                           /* the request's (owned) or NULL */
    bool add_generation_prompt;                    /* true */
    bool continue_final_message;
    bool add_special_tokens; /* false: the template writes them */
    json_t *tool_choice_v;   /* the request's tool_choice (owned; NULL when absent or null) */
    cv_tool_choice tool_choice;
    char *tool_name; /* CV_CHOICE_NAMED: the function (owned) */
    bool logprobs;
    int top_logprobs;
    cv_tool_parser parser;   /* the one parsing this request's output (NONE: plain text) */
    uint64_t tool_seq;       /* tool call ids */
    cv_tool_stream *streams; /* streamed: (n_streams = the request's n_seqs) */
    int n_streams;
    char *echo; /* echo: the final assistant message's content (owned) */
    size_t echo_len;
} cv_chat_state;

#endif

/* Tool calls in a chat model's output text, parsed back into OpenAI
 * `tool_calls` as vLLM's tool parsers (--tool-call-parser) do:
 *   hermes       <tool_call>{"name": ..., "arguments": {...}}</tool_call>
 *                (Hermes 2 Pro, Qwen2.5, Qwen3), any number of them;
 *   llama3_json  output starting with `{` or <|python_tag|>: JSON objects
 *                {"name": ..., "parameters": {...}} separated by "; "
 *                (Llama 3.1 / 3.2 JSON tool calling).
 * Arguments are re-serialized as Python's json.dumps(ensure_ascii=False)
 * writes them (", " and ": " separators), as vLLM returns them.
 *
 * Streaming: a cv_tool_stream per choice takes the text deltas and
 * returns OpenAI delta objects: content as it comes, holding back text
 * that may begin a tool call; each complete tool call as one tool_calls
 * delta (index, id, type, function name and whole arguments).
 *
 * Forced tool calls (tool_choice "required" or a named function, as vLLM
 * serves them): the output is constrained by structured outputs to a JSON
 * schema, and read back here without a model-format parser:
 *   named     the output is the function's arguments (its parameters
 *             schema); one call of that function, arguments the text as
 *             generated; streamed as the text comes: a first delta with
 *             id, type, name and the arguments so far, then argument text;
 *   required  the output is a JSON array of {"name", "parameters"}
 *             (cv_tools_required_schema); one call per element,
 *             arguments re-serialized as above; streamed one whole call
 *             per delta once its element closes (vLLM streams the
 *             argument text piecewise; the calls assembled are the same),
 *             and whole the same calls: those whose element closed. */
#ifndef CV_SERVER_OPENAI_TOOLS_H
#define CV_SERVER_OPENAI_TOOLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "base/error.h"

typedef enum { CV_TOOLS_NONE = 0, CV_TOOLS_HERMES, CV_TOOLS_LLAMA3_JSON } cv_tool_parser;

/* "hermes", "llama3_json"; anything else (or NULL, "") CV_TOOLS_NONE. */
cv_tool_parser cv_tool_parser_named(const char *name);

/* Whole output text (len bytes) -> *content (malloc'd, NULL when the
 * output is only tool calls or empty) and *calls (a new array of
 * {"id","type":"function","function":{"name","arguments"}}, empty when
 * the text holds no well-formed tool call: then content is the whole
 * text). Ids are "chatcmpl-tool-" + 32 hex digits from *id_seq (advanced).
 * Returns -1 when out of memory. */
int cv_tools_extract(cv_tool_parser p, const char *text, size_t len, uint64_t *id_seq,
                     char **content, json_t **calls);

typedef struct cv_tool_stream {
    char *buf; /* the choice's whole text so far (owned) */
    size_t len, cap;
    size_t done;  /* bytes of buf already turned into deltas */
    int n_calls;  /* tool calls emitted */
    bool decided; /* llama3_json: enough text came to tell whether it is a tool call */
    bool held;    /* llama3_json: it is, held to the end */
    /* required: a JSON scan of buf up to `scan`: bracket depth, inside a
     * string, after a backslash; the open array element starts at elem */
    size_t scan, elem;
    int depth;
    bool in_string, escaped;
} cv_tool_stream;

/* Adds a text delta; returns the delta object to send ({"content"} and/or
 * {"tool_calls": [...]}), or NULL when nothing is ready. final: the
 * choice ended, flush everything. */
json_t *cv_tool_stream_feed(cv_tool_stream *st, cv_tool_parser p, const char *text, size_t len,
                            bool final, uint64_t *id_seq);
int cv_tool_stream_calls(const cv_tool_stream *st); /* tool calls emitted so far */

/* tool_choice "required": vLLM's schema of the output, an array of at
 * least one {"name": <enum of one tool's name>, "parameters": <that tool's
 * parameters schema, or an empty object schema>} with every tool's
 * "$defs" gathered at the top (tools: a checked `tools` list, borrowed).
 * A new object; NULL with err when two tools define one $defs name
 * differently. */
json_t *cv_tools_required_schema(const json_t *tools, cv_error *err);
/* Whole output of a "required" request -> *calls (a new array) of its
 * elements that closed (all, unless max_tokens cut the list short), or
 * NULL when none did. Returns -1 when out of memory. */
int cv_tools_required_extract(const char *text, size_t len, uint64_t *id_seq, json_t **calls);
/* A named tool_choice's one call: name with the output text as its
 * arguments. A new object, NULL when out of memory. */
json_t *cv_tools_named_call(const char *name, const char *text, size_t len, uint64_t *id_seq);
/* Streamed forms of the two (see above); NULL when nothing is ready. */
json_t *cv_tool_stream_feed_named(cv_tool_stream *st, const char *name, const char *text,
                                  size_t len, uint64_t *id_seq);
json_t *cv_tool_stream_feed_required(cv_tool_stream *st, const char *text, size_t len,
                                     uint64_t *id_seq);
void cv_tool_stream_free(cv_tool_stream *st);

#endif

/* Chat responses: engine outputs into vLLM's chat.completion objects and
 * chat.completion.chunk deltas, with tool calls parsed back from the
 * text (see openai_chat.h). */
#include <stdlib.h>
#include <string.h>

#include "server/openai_chat.h"
#include "server/openai_chat_internal.h"

static json_t *chunk_obj(const cv_openai_request *r, json_t *choices, json_t *usage)
{
    json_t *c =
        json_pack("{s:s, s:s, s:I, s:s, s:o}", "id", r->id, "object", "chat.completion.chunk",
                  "created", (json_int_t)r->created, "model", r->model, "choices", choices);
    if (c && usage) json_object_set_new(c, "usage", usage);
    return c;
}

static json_t *finish_json(cv_finish_reason f, bool tool_calls)
{
    if (f == CV_FINISH_NONE) return json_null();
    return json_string(tool_calls && f == CV_FINISH_STOP ? "tool_calls" : cv_finish_reason_name(f));
}

static json_t *stream_choice(int index, json_t *delta, json_t *logprobs, json_t *finish)
{
    return json_pack("{s:i, s:o, s:o, s:o}", "index", index, "delta", delta, "logprobs",
                     logprobs ? logprobs : json_null(), "finish_reason", finish);
}

static json_t *bytes_of(const char *s)
{
    json_t *b = json_array();
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        json_array_append_new(b, json_integer(*p));
    return b;
}

static json_t *lp_entry(const cv_top_logprob *e)
{
    return json_pack("{s:s, s:o, s:o}", "token", e->decoded_token, "logprob",
                     cv_openai_logprob_json(e->logprob), "bytes", bytes_of(e->decoded_token));
}

/* The chat logprobs of a sequence's new tokens: per token its string,
 * logprob, UTF-8 bytes and the first `top` entries (vLLM's order: the
 * sampled token, then the most likely). */
static json_t *chat_logprobs(const cv_seq_output *s, int top)
{
    json_t *content = json_array();
    for (int i = 0; content && i < s->n_tokens; i++) {
        const cv_token_logprobs *t = &s->logprobs[i];
        if (t->n == 0) continue;
        json_t *e = lp_entry(&t->entries[0]), *tops = json_array();
        for (int k = 0; k < t->n && k < top; k++)
            json_array_append_new(tops, lp_entry(&t->entries[k]));
        json_object_set_new(e, "top_logprobs", tops);
        json_array_append_new(content, e);
    }
    return content;
}

json_t *cv_chat_start_chunks(cv_openai_request *r)
{
    cv_chat_state *st = r->chat_state;
    json_t *chunks = json_array();
    if (!st->streams && !(st->streams = calloc((size_t)r->n_seqs, sizeof *st->streams)))
        return chunks;
    st->n_streams = r->n_seqs;
    for (int i = 0; i < r->n_seqs; i++)
        json_array_append_new(
            chunks, chunk_obj(r,
                              json_pack("[o]", stream_choice(i,
                                                             json_pack("{s:s, s:s}", "role",
                                                                       "assistant", "content", ""),
                                                             NULL, json_null())),
                              NULL));
    for (int i = 0; st->echo && i < r->n_seqs; i++)
        json_array_append_new(
            chunks, chunk_obj(r,
                              json_pack("[o]", stream_choice(i,
                                                             json_pack("{s:s%}", "content",
                                                                       st->echo, st->echo_len),
                                                             NULL, json_null())),
                              NULL));
    return chunks;
}

json_t *cv_chat_chunk(cv_openai_request *r, int p, const cv_request_output *out)
{
    cv_chat_state *st = r->chat_state;
    r->prompts[p].n_tokens = out->n_prompt_tokens;
    json_t *choices = json_array();
    for (int i = 0; st->streams && i < out->n_seqs; i++) {
        const cv_seq_output *s = &out->seqs[i];
        r->completion_tokens += s->n_tokens;
        if (s->index < 0 || s->index >= r->n_seqs) continue;
        cv_tool_stream *ts = &st->streams[s->index];
        bool final = s->finish_reason != CV_FINISH_NONE;
        bool forced = st->tool_choice == CV_CHOICE_NAMED || st->tool_choice == CV_CHOICE_REQUIRED;
        json_t *delta =
            st->tool_choice == CV_CHOICE_NAMED
                ? cv_tool_stream_feed_named(ts, st->tool_name, s->text, s->text_len, &st->tool_seq)
            : st->tool_choice == CV_CHOICE_REQUIRED
                ? cv_tool_stream_feed_required(ts, s->text, s->text_len, &st->tool_seq)
                : cv_tool_stream_feed(ts, st->parser, s->text, s->text_len, final, &st->tool_seq);
        json_t *lp = st->logprobs && s->logprobs
                         ? json_pack("{s:o}", "content", chat_logprobs(s, st->top_logprobs))
                         : NULL;
        if (!delta && (final || lp)) delta = json_pack("{s:s}", "content", "");
        if (!delta) continue;
        /* vLLM streamed: a forced call finishes as "tool_calls" whatever
         * ended it; whole, it keeps the engine's reason */
        bool calls = cv_tool_stream_calls(ts) > 0;
        json_t *finish = forced && final && calls ? json_string("tool_calls")
                                                  : finish_json(s->finish_reason, !forced && calls);
        json_array_append_new(choices, stream_choice(s->index, delta, lp, finish));
    }
    if (json_array_size(choices) == 0) {
        json_decref(choices);
        return NULL;
    }
    return chunk_obj(r, choices, NULL);
}

json_t *cv_chat_usage_chunk(const cv_openai_request *r)
{
    return chunk_obj(r, json_array(), cv_openai_usage_json(r));
}

int cv_chat_accumulate(cv_openai_request *r, int p, const cv_request_output *out)
{
    cv_chat_state *st = r->chat_state;
    r->prompts[p].n_tokens = out->n_prompt_tokens;
    for (int i = 0; i < out->n_seqs; i++) {
        const cv_seq_output *s = &out->seqs[i];
        if (s->index < 0 || s->index >= r->n_seqs) continue;
        r->completion_tokens += s->n_tokens;
        if (cv_openai_append_text(r, s->index, s->text, s->text_len) < 0) return -1;
        if (st->logprobs && s->logprobs) {
            json_t *more = chat_logprobs(s, st->top_logprobs), **all = &r->logprobs[s->index];
            if (!more) return -1;
            if (!*all)
                *all = more;
            else {
                json_array_extend(*all, more);
                json_decref(more);
            }
        }
        if (s->finish_reason != CV_FINISH_NONE) r->finish[s->index] = s->finish_reason;
    }
    return 0;
}

/* The calls of a forced tool_choice's output (named, or "required"; see
 * openai_tools.h); *content is the text when "required"'s output is not
 * a whole list (cut short). NULL when out of memory. */
static json_t *forced_calls(cv_chat_state *st, const char *text, size_t len, char **content)
{
    json_t *calls = NULL;
    if (st->tool_choice == CV_CHOICE_NAMED) {
        json_t *call = cv_tools_named_call(st->tool_name, text, len, &st->tool_seq);
        return call ? json_pack("[o]", call) : NULL;
    }
    if (cv_tools_required_extract(text, len, &st->tool_seq, &calls) < 0) return NULL;
    if (calls) return calls;
    if (len > 0 && (*content = malloc(len + 1))) {
        memcpy(*content, text, len);
        (*content)[len] = '\0';
    }
    return len > 0 && !*content ? NULL : json_array();
}

/* One choice's message: vLLM's echo before the text, tool calls parsed
 * out of it (content "" beside a forced call, as vLLM). *tool_calls: the
 * finish reason becomes "tool_calls" (the parsed calls of "auto"). */
static json_t *message_of(const cv_openai_request *r, int i, bool *tool_calls)
{
    cv_chat_state *st = r->chat_state;
    const char *text = r->text[i] ? r->text[i] : "";
    char *content = NULL;
    json_t *calls = NULL;
    bool forced = st->tool_choice == CV_CHOICE_NAMED || st->tool_choice == CV_CHOICE_REQUIRED;
    if (forced)
        calls = forced_calls(st, text, r->text_len[i], &content);
    else if (cv_tools_extract(st->parser, text, r->text_len[i], &st->tool_seq, &content, &calls) <
             0) {
        json_decref(calls);
        calls = NULL;
    }
    if (!calls) {
        free(content);
        return NULL;
    }
    *tool_calls = !forced && json_array_size(calls) > 0;
    json_t *c = json_null();
    if (content || st->echo || forced) {
        size_t a = st->echo ? st->echo_len : 0, b = content ? strlen(content) : 0;
        char *joined = malloc(a + b + 1);
        if (joined) {
            memcpy(joined, st->echo ? st->echo : "", a);
            memcpy(joined + a, content ? content : "", b);
            c = json_stringn(joined, a + b);
            free(joined);
        }
    } else if (json_array_size(calls) == 0) {
        c = json_string(""); /* an empty answer is "" */
    }
    free(content);
    return json_pack("{s:s, s:o, s:o}", "role", "assistant", "content", c, "tool_calls", calls);
}

json_t *cv_chat_response(const cv_openai_request *r)
{
    json_t *choices = json_array();
    for (int i = 0; i < r->n_seqs; i++) {
        bool tools = false;
        json_t *msg = message_of(r, i, &tools);
        json_t *lp = r->logprobs[i] ? json_pack("{s:O}", "content", r->logprobs[i]) : json_null();
        json_array_append_new(choices,
                              json_pack("{s:i, s:o, s:o, s:o, s:n}", "index", i, "message",
                                        msg ? msg : json_null(), "logprobs", lp, "finish_reason",
                                        finish_json(r->finish[i], tools), "stop_reason"));
    }
    return json_pack("{s:s, s:s, s:I, s:s, s:o, s:o}", "id", r->id, "object", "chat.completion",
                     "created", (json_int_t)r->created, "model", r->model, "choices", choices,
                     "usage", cv_openai_usage_json(r));
}

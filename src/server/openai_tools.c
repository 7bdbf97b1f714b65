/* Tool-call parsers of chat model output (see openai_tools.h). */
#define _GNU_SOURCE /* memmem */
#include "server/openai_tools.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char HERMES_OPEN[] = "<tool_call>", HERMES_CLOSE[] = "</tool_call>";
static const char PYTHON_TAG[] = "<|python_tag|>";

cv_tool_parser cv_tool_parser_named(const char *name)
{
    if (name && !strcmp(name, "hermes")) return CV_TOOLS_HERMES;
    if (name && !strcmp(name, "llama3_json")) return CV_TOOLS_LLAMA3_JSON;
    return CV_TOOLS_NONE;
}

/* ---- Python's json.dumps(ensure_ascii=False) ---------------------------- */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void put(sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = true;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void puts_(sbuf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* repr(float): the shortest text that reads back the same, in exponent
 * form outside 1e-4 <= |x| < 1e16, with ".0" on integral values. */
static void put_real(sbuf *b, double x)
{
    char t[40];
    if (isnan(x) || isinf(x)) {
        puts_(b, isnan(x) ? "NaN" : x > 0 ? "Infinity" : "-Infinity");
        return;
    }
    int prec = 1;
    for (; prec < 17; prec++) {
        snprintf(t, sizeof t, "%.*e", prec - 1, x);
        if (strtod(t, NULL) == x) break;
    }
    snprintf(t, sizeof t, "%.*e", prec - 1, x);
    char *e = strchr(t, 'e');
    int exp10 = atoi(e + 1);
    char digits[24];
    size_t nd = 0;
    for (const char *q = t; q < e; q++)
        if (*q >= '0' && *q <= '9') digits[nd++] = *q;
    digits[nd] = '\0';
    char out[64];
    size_t o = 0;
    if (x < 0) out[o++] = '-';
    if (exp10 < -4 || exp10 >= 16) {
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            for (size_t i = 1; i < nd; i++)
                out[o++] = digits[i];
        }
        o += (size_t)snprintf(out + o, sizeof out - o, "e%c%02d", exp10 < 0 ? '-' : '+',
                              exp10 < 0 ? -exp10 : exp10);
    } else if (exp10 < 0) {
        out[o++] = '0';
        out[o++] = '.';
        for (int i = 0; i < -exp10 - 1; i++)
            out[o++] = '0';
        for (size_t i = 0; i < nd; i++)
            out[o++] = digits[i];
    } else {
        for (int i = 0; i <= exp10; i++)
            out[o++] = (size_t)i < nd ? digits[i] : '0';
        out[o++] = '.';
        if ((size_t)exp10 + 1 >= nd) out[o++] = '0';
        for (size_t i = (size_t)exp10 + 1; i < nd; i++)
            out[o++] = digits[i];
    }
    put(b, out, o);
}

static void put_string(sbuf *b, const char *s, size_t n)
{
    put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        switch (c) {
        case '"':
            puts_(b, "\\\"");
            break;
        case '\\':
            puts_(b, "\\\\");
            break;
        case '\n':
            puts_(b, "\\n");
            break;
        case '\r':
            puts_(b, "\\r");
            break;
        case '\t':
            puts_(b, "\\t");
            break;
        case '\b':
            puts_(b, "\\b");
            break;
        case '\f':
            puts_(b, "\\f");
            break;
        default:
            if (c < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", c);
                puts_(b, esc);
            } else {
                put(b, (const char *)&s[i], 1);
            }
        }
    }
    put(b, "\"", 1);
}

static void put_json(sbuf *b, const json_t *v)
{
    char t[32];
    const char *k;
    json_t *e;
    size_t i;
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        put(b, "{", 1);
        i = 0;
        json_object_foreach((json_t *)v, k, e)
        {
            if (i++) puts_(b, ", ");
            put_string(b, k, strlen(k));
            puts_(b, ": ");
            put_json(b, e);
        }
        put(b, "}", 1);
        break;
    case JSON_ARRAY:
        put(b, "[", 1);
        json_array_foreach(v, i, e)
        {
            if (i) puts_(b, ", ");
            put_json(b, e);
        }
        put(b, "]", 1);
        break;
    case JSON_STRING:
        put_string(b, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        snprintf(t, sizeof t, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        puts_(b, t);
        break;
    case JSON_REAL:
        put_real(b, json_real_value(v));
        break;
    case JSON_TRUE:
        puts_(b, "true");
        break;
    case JSON_FALSE:
        puts_(b, "false");
        break;
    default:
        puts_(b, "null");
        break;
    }
}

/* ---- whole output ------------------------------------------------------- */

/* A new tool call id: "chatcmpl-tool-" + 32 hex digits from *id_seq. */
static void next_id(char id[64], uint64_t *id_seq)
{
    uint64_t n = ++*id_seq;
    snprintf(id, 64, "chatcmpl-tool-%016" PRIx64 "%016" PRIx64,
             (uint64_t)(n * 0x9e3779b97f4a7c15ull), (uint64_t)(n ^ 0xc2b2ae3d27d4eb4full));
}

/* {"id","type":"function","function":{"name","arguments"}} of a parsed
 * call object; NULL when it lacks a string name or its arguments (under
 * key, else under fallback when not NULL). */
static json_t *make_call(const json_t *obj, const char *key, const char *fallback, uint64_t *id_seq)
{
    json_t *name = json_object_get(obj, "name"), *args = json_object_get(obj, key);
    if (!args && fallback) args = json_object_get(obj, fallback);
    if (!json_is_object(obj) || !json_is_string(name) || !args) return NULL;
    sbuf b = {0};
    put_json(&b, args);
    if (b.oom || !b.p) {
        free(b.p);
        return NULL;
    }
    char id[64];
    next_id(id, id_seq);
    json_t *call = json_pack("{s:s, s:s, s:{s:O, s:s}}", "id", id, "type", "function", "function",
                             "name", name, "arguments", b.p);
    free(b.p);
    return call;
}

static char *dup_n(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* Hermes: every <tool_call>...</tool_call> (the last may be unclosed);
 * content is the text before the first. */
static json_t *hermes_calls(const char *text, size_t len, uint64_t *id_seq, size_t *first)
{
    const size_t no = sizeof HERMES_OPEN - 1, nc = sizeof HERMES_CLOSE - 1;
    const char *at = memmem(text, len, HERMES_OPEN, no), *end = text + len;
    if (!at) return NULL;
    *first = (size_t)(at - text);
    json_t *calls = json_array();
    while (calls && at) {
        const char *body = at + no;
        const char *close = memmem(body, (size_t)(end - body), HERMES_CLOSE, nc);
        const char *stop = close ? close : end;
        json_t *obj = json_loadb(body, (size_t)(stop - body), JSON_DECODE_ANY, NULL);
        json_t *call = obj ? make_call(obj, "arguments", NULL, id_seq) : NULL;
        json_decref(obj);
        if (!call) {
            json_decref(calls);
            return NULL;
        }
        json_array_append_new(calls, call);
        at = close ? memmem(close + nc, (size_t)(end - close - nc), HERMES_OPEN, no) : NULL;
    }
    return calls;
}

/* Llama 3 JSON: objects from the start (after <|python_tag|>), "; "
 * between them. */
static json_t *llama3_calls(const char *text, size_t len, uint64_t *id_seq)
{
    const size_t nt = sizeof PYTHON_TAG - 1;
    size_t at = 0;
    if (len >= nt && !memcmp(text, PYTHON_TAG, nt))
        at = nt;
    else if (len == 0 || text[0] != '{')
        return NULL;
    json_t *calls = json_array();
    while (calls && at < len) {
        json_error_t e;
        json_t *obj = json_loadb(text + at, len - at, JSON_DISABLE_EOF_CHECK, &e);
        json_t *call = obj ? make_call(obj, "arguments", "parameters", id_seq) : NULL;
        json_decref(obj);
        if (!call) {
            json_decref(calls);
            return NULL;
        }
        json_array_append_new(calls, call);
        at += (size_t)e.position + 2; /* "; " */
    }
    return calls;
}

int cv_tools_extract(cv_tool_parser p, const char *text, size_t len, uint64_t *id_seq,
                     char **content, json_t **calls)
{
    size_t first = 0;
    json_t *found = p == CV_TOOLS_HERMES        ? hermes_calls(text, len, id_seq, &first)
                    : p == CV_TOOLS_LLAMA3_JSON ? llama3_calls(text, len, id_seq)
                                                : NULL;
    *content = NULL;
    *calls = found ? found : json_array();
    size_t n = found ? first : len;
    if (n > 0 && !(*content = dup_n(text, n))) return -1;
    return *calls ? 0 : -1;
}

/* ---- streaming ---------------------------------------------------------- */

/* The longest suffix of s[0..n) that is a proper prefix of tag. */
static size_t partial_tag(const char *s, size_t n, const char *tag)
{
    size_t t = strlen(tag);
    for (size_t k = n < t - 1 ? n : t - 1; k > 0; k--)
        if (!memcmp(s + n - k, tag, k)) return k;
    return 0;
}

static void delta_content(json_t **delta, const char *s, size_t n)
{
    if (n == 0) return;
    if (!*delta) *delta = json_object();
    json_t *old = json_object_get(*delta, "content");
    if (!old) {
        json_object_set_new(*delta, "content", json_stringn(s, n));
        return;
    }
    char *joined = malloc(json_string_length(old) + n + 1);
    if (!joined) return;
    memcpy(joined, json_string_value(old), json_string_length(old));
    memcpy(joined + json_string_length(old), s, n);
    json_object_set_new(*delta, "content", json_stringn(joined, json_string_length(old) + n));
    free(joined);
}

static void delta_calls(json_t **delta, cv_tool_stream *st, json_t *calls)
{
    size_t i;
    json_t *c;
    if (!*delta) *delta = json_object();
    json_t *list = json_object_get(*delta, "tool_calls");
    if (!list) json_object_set_new(*delta, "tool_calls", list = json_array());
    json_array_foreach(calls, i, c)
    {
        json_object_set_new(c, "index", json_integer(st->n_calls++));
        json_array_append(list, c);
    }
}

static json_t *feed_hermes(cv_tool_stream *st, bool final, uint64_t *id_seq)
{
    const size_t no = sizeof HERMES_OPEN - 1, nc = sizeof HERMES_CLOSE - 1;
    json_t *delta = NULL;
    for (;;) {
        const char *s = st->buf + st->done;
        size_t n = st->len - st->done;
        const char *open = memmem(s, n, HERMES_OPEN, no);
        if (!open) {
            size_t keep = final ? 0 : partial_tag(s, n, HERMES_OPEN);
            delta_content(&delta, s, n - keep);
            st->done += n - keep;
            return delta;
        }
        delta_content(&delta, s, (size_t)(open - s));
        const char *close = memmem(open + no, n - (size_t)(open - s) - no, HERMES_CLOSE, nc);
        if (!close && !final) {
            st->done += (size_t)(open - s);
            return delta;
        }
        size_t block = close ? (size_t)(close + nc - open) : n - (size_t)(open - s);
        size_t ignored;
        json_t *calls = hermes_calls(open, block, id_seq, &ignored);
        if (calls)
            delta_calls(&delta, st, calls);
        else /* not a well-formed call: it stays text */
            delta_content(&delta, open, block);
        json_decref(calls);
        st->done += (size_t)(open - s) + block;
    }
}

static json_t *feed_llama3(cv_tool_stream *st, bool final, uint64_t *id_seq)
{
    const size_t nt = sizeof PYTHON_TAG - 1;
    if (!st->decided) {
        /* a tool call starts with '{' or <|python_tag|>; wait while the
         * text so far could still be the tag */
        bool tag = st->len >= nt && !memcmp(st->buf, PYTHON_TAG, nt);
        bool maybe_tag = st->len < nt && !memcmp(st->buf, PYTHON_TAG, st->len);
        if (!final && (st->len == 0 || maybe_tag)) return NULL;
        st->decided = true;
        st->held = st->len > 0 && (st->buf[0] == '{' || tag);
    }
    json_t *delta = NULL;
    if (!st->held) {
        delta_content(&delta, st->buf + st->done, st->len - st->done);
        st->done = st->len;
        return delta;
    }
    if (!final) return NULL;
    json_t *calls = llama3_calls(st->buf, st->len, id_seq);
    if (calls)
        delta_calls(&delta, st, calls);
    else
        delta_content(&delta, st->buf, st->len);
    json_decref(calls);
    st->done = st->len;
    return delta;
}

/* Appends a text delta to st->buf; -1 when out of memory. */
static int stream_append(cv_tool_stream *st, const char *text, size_t len)
{
    if (st->len + len + 1 > st->cap) {
        size_t cap = (st->len + len + 1) * 2;
        char *b = realloc(st->buf, cap);
        if (!b) return -1;
        st->buf = b;
        st->cap = cap;
    }
    memcpy(st->buf + st->len, text, len);
    st->len += len;
    st->buf[st->len] = '\0';
    return 0;
}

json_t *cv_tool_stream_feed(cv_tool_stream *st, cv_tool_parser p, const char *text, size_t len,
                            bool final, uint64_t *id_seq)
{
    if (stream_append(st, text, len) < 0) return NULL;
    if (p == CV_TOOLS_HERMES) return feed_hermes(st, final, id_seq);
    if (p == CV_TOOLS_LLAMA3_JSON) return feed_llama3(st, final, id_seq);
    json_t *delta = NULL;
    delta_content(&delta, st->buf + st->done, st->len - st->done);
    st->done = st->len;
    return delta;
}

int cv_tool_stream_calls(const cv_tool_stream *st)
{
    return st->n_calls;
}

void cv_tool_stream_free(cv_tool_stream *st)
{
    free(st->buf);
    memset(st, 0, sizeof *st);
}

/* ---- forced tool calls (tool_choice "required" or named) ---------------- */

json_t *cv_tools_required_schema(const json_t *tools, cv_error *err)
{
    json_t *branches = json_array(), *defs = json_object();
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t)
    {
        json_t *fn = json_object_get(t, "function");
        json_t *params = json_object_get(fn, "parameters"), *p;
        /* vLLM: missing or empty parameters are generated as {} */
        if (json_is_object(params) && json_object_size(params) > 0) {
            p = json_copy(params);
            const char *k;
            json_t *v;
            json_object_foreach(json_object_get(p, "$defs"), k, v)
            {
                json_t *have = json_object_get(defs, k);
                if (have && !json_equal(have, v)) {
                    cv_errorf(err,
                              "Tool definition '%s' has multiple schemas, which is not supported.",
                              k);
                    json_decref(p);
                    json_decref(branches);
                    json_decref(defs);
                    return NULL;
                }
                json_object_set(defs, k, v);
            }
            json_object_del(p, "$defs");
        } else {
            p = json_pack("{s:s, s:{}}", "type", "object", "properties");
        }
        json_array_append_new(branches,
                              json_pack("{s:{s:{s:s, s:[O]}, s:o}, s:[s, s]}", "properties", "name",
                                        "type", "string", "enum", json_object_get(fn, "name"),
                                        "parameters", p, "required", "name", "parameters"));
    }
    json_t *schema = json_pack("{s:s, s:i, s:{s:s, s:o}}", "type", "array", "minItems", 1, "items",
                               "type", "object", "anyOf", branches);
    if (schema && json_object_size(defs) > 0) json_object_set(schema, "$defs", defs);
    json_decref(defs);
    if (!schema) cv_errorf(err, "out of memory");
    return schema;
}

int cv_tools_required_extract(const char *text, size_t len, uint64_t *id_seq, json_t **calls)
{
    /* the streamed reading on the whole text: the same calls either way */
    cv_tool_stream st = {0};
    json_t *delta = cv_tool_stream_feed_required(&st, text, len, id_seq), *c;
    size_t i;
    bool oom = st.len < len;
    cv_tool_stream_free(&st);
    *calls = json_incref(json_object_get(delta, "tool_calls"));
    json_decref(delta);
    json_array_foreach(*calls, i, c) json_object_del(c, "index");
    return oom ? -1 : 0;
}

json_t *cv_tools_named_call(const char *name, const char *text, size_t len, uint64_t *id_seq)
{
    char id[64];
    next_id(id, id_seq);
    return json_pack("{s:s, s:s, s:{s:s, s:s%}}", "id", id, "type", "function", "function", "name",
                     name, "arguments", text, len);
}

json_t *cv_tool_stream_feed_named(cv_tool_stream *st, const char *name, const char *text,
                                  size_t len, uint64_t *id_seq)
{
    if (st->n_calls > 0 && len == 0) return NULL;
    /* vLLM: the first delta names the call, the next ones add argument text */
    json_t *call = st->n_calls == 0 ? cv_tools_named_call(name, text, len, id_seq)
                                    : json_pack("{s:{s:s%}}", "function", "arguments", text, len);
    if (!call) return NULL;
    st->n_calls = 1;
    json_object_set_new(call, "index", json_integer(0));
    return json_pack("{s:[o]}", "tool_calls", call);
}

json_t *cv_tool_stream_feed_required(cv_tool_stream *st, const char *text, size_t len,
                                     uint64_t *id_seq)
{
    if (stream_append(st, text, len) < 0) return NULL;
    json_t *delta = NULL;
    /* The output is [{...}, ...]: an element is whole when the brace that
     * opened it at depth 2 closes (braces inside strings do not count). */
    for (; st->scan < st->len; st->scan++) {
        char c = st->buf[st->scan];
        if (st->in_string) {
            if (st->escaped)
                st->escaped = false;
            else if (c == '\\')
                st->escaped = true;
            else if (c == '"')
                st->in_string = false;
        } else if (c == '"') {
            st->in_string = true;
        } else if (c == '{' || c == '[') {
            if (++st->depth == 2) st->elem = st->scan;
        } else if ((c == '}' || c == ']') && --st->depth == 1) {
            json_t *obj = json_loadb(st->buf + st->elem, st->scan + 1 - st->elem, 0, NULL);
            json_t *call = make_call(obj, "parameters", NULL, id_seq);
            json_t *one = call ? json_pack("[o]", call) : NULL;
            json_decref(obj);
            if (one) delta_calls(&delta, st, one);
            json_decref(one);
        }
    }
    st->done = st->len;
    return delta;
}

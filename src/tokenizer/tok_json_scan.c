/* Fast path for the two big members of tokenizer.json: model.vocab (an
 * object of token -> id, 151k entries for Qwen) and model.merges (an array
 * of "a b" strings or [a, b] pairs). Building jansson objects for them
 * dominates loading, so they are located and parsed here straight from
 * the text and cut out of it (tok_scan_model) before jansson
 * parses the small rest. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

static const char *ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

static int hex4(const char *p, const char *e, uint32_t *v)
{
    if (e - p < 4) return -1;
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) return -1;
        *v = *v * 16 + (uint32_t)d;
    }
    return 0;
}

/* p at the opening quote. Returns the byte after the closing quote, or
 * NULL when malformed; appends the decoded bytes to out when non-NULL. */
static const char *string(const char *p, const char *e, tok_buf *out, cv_error *err)
{
    if (p >= e || *p != '"') return NULL;
    p++;
    const char *run = p;
    while (p < e && *p != '"') {
        if ((unsigned char)*p < 0x20) return NULL;
        if (*p != '\\') {
            p++;
            continue;
        }
        if (out && tok_buf_put(out, run, (size_t)(p - run), err)) return NULL;
        if (++p >= e) return NULL;
        char c = *p++, one = 0;
        switch (c) {
        case '"':
        case '\\':
        case '/':
            one = c;
            break;
        case 'b':
            one = '\b';
            break;
        case 'f':
            one = '\f';
            break;
        case 'n':
            one = '\n';
            break;
        case 'r':
            one = '\r';
            break;
        case 't':
            one = '\t';
            break;
        case 'u': {
            uint32_t cp, lo;
            if (hex4(p, e, &cp)) return NULL;
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00) {
                if (e - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, e, &lo) ||
                    lo < 0xDC00 || lo > 0xDFFF)
                    return NULL;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            } else if (cp >= 0xDC00 && cp < 0xE000) {
                return NULL;
            }
            char u[4];
            if (out && tok_buf_put(out, u, (size_t)tok_utf8_put(cp, u), err)) return NULL;
            break;
        }
        default:
            return NULL;
        }
        if (one && out && tok_buf_put(out, &one, 1, err)) return NULL;
        run = p;
    }
    if (p >= e) return NULL;
    if (out && tok_buf_put(out, run, (size_t)(p - run), err)) return NULL;
    return p + 1;
}

/* Skips one value of any type; NULL when malformed. */
static const char *skip_value(const char *p, const char *e)
{
    p = ws(p, e);
    if (p >= e) return NULL;
    if (*p == '"') return string(p, e, NULL, NULL);
    if (*p != '{' && *p != '[') {
        while (p < e && !strchr(",}] \n\r\t", *p))
            p++;
        return p;
    }
    int depth = 0;
    while (p < e) {
        if (*p == '"') {
            if (!(p = string(p, e, NULL, NULL))) return NULL;
            continue;
        }
        if (*p == '{' || *p == '[')
            depth++;
        else if ((*p == '}' || *p == ']') && --depth == 0)
            return p + 1;
        p++;
    }
    return NULL;
}

/* In the object at p, finds the values of the keys in keys[0..n) and
 * records their spans (start, end) in spans[2 * i]. */
static int object_members(const char *p, const char *e, const char *const *keys, size_t n,
                          const char **spans)
{
    p = ws(p, e);
    if (p >= e || *p != '{') return -1;
    p = ws(p + 1, e);
    if (p < e && *p == '}') return 0;
    tok_buf key = {0};
    int rc = -1;
    while (p < e) {
        key.len = 0;
        const char *q = string(p, e, &key, NULL);
        if (!q || (q = ws(q, e)) >= e || *q != ':') break;
        const char *v = ws(q + 1, e), *end = skip_value(v, e);
        if (!end) break;
        for (size_t i = 0; i < n; i++)
            if (key.len == strlen(keys[i]) && !memcmp(key.p, keys[i], key.len)) {
                spans[2 * i] = v;
                spans[2 * i + 1] = end;
            }
        p = ws(end, e);
        if (p < e && *p == '}') {
            rc = 0;
            break;
        }
        if (p >= e || *p != ',') break;
        p = ws(p + 1, e);
    }
    tok_buf_free(&key);
    return rc;
}

size_t tok_scan_model(char *text, size_t n, tok_raw_model *out)
{
    memset(out, 0, sizeof *out);
    const char *e = text + n, *model[2] = {0};
    static const char *const top_keys[] = {"model"};
    if (object_members(text, e, top_keys, 1, model) || !model[0]) return n;
    const char *spans[4] = {0};
    static const char *const model_keys[] = {"vocab", "merges"};
    if (object_members(model[0], model[1], model_keys, 2, spans)) return n;
    for (int k = 0; k < 2; k++) {
        if (!spans[2 * k]) continue;
        size_t len = (size_t)(spans[2 * k + 1] - spans[2 * k]);
        char *copy = malloc(len + 1);
        if (!copy) return n; /* tok_bpe_load reports the member missing */
        memcpy(copy, spans[2 * k], len);
        copy[len] = '\0';
        *(k ? &out->merges : &out->vocab) = copy;
        *(k ? &out->merges_len : &out->vocab_len) = len;
    }
    /* Cut both members down to an empty value of their type with the same
     * number of newlines, moving the text in between left. */
    size_t w = 0, r = 0;
    int order[2] = {0, 1};
    if (spans[0] && spans[2] && spans[2] < spans[0]) {
        order[0] = 1;
        order[1] = 0;
    }
    for (int i = 0; i < 2; i++) {
        int k = order[i];
        if (!spans[2 * k]) continue;
        size_t a = (size_t)(spans[2 * k] - text), b = (size_t)(spans[2 * k + 1] - text);
        memmove(text + w, text + r, a - r);
        w += a - r;
        char open = text[a], close = text[b - 1];
        size_t lines = 0;
        for (size_t j = a; j < b; j++)
            lines += text[j] == '\n';
        if (open == '{' || open == '[') {
            text[w++] = open;
            memset(text + w, '\n', lines);
            w += lines;
            text[w++] = close;
        } else {
            text[w++] = '0';
        }
        r = b;
    }
    memmove(text + w, text + r, n - r);
    return w + n - r;
}

/* ---- parsing the two members ------------------------------------------- */

int tok_parse_vocab(const char *p, size_t n, tok_vocab_fn fn, void *ctx, cv_error *err)
{
    const char *e = p + n;
    p = ws(p, e);
    if (p >= e || *p != '{') return cv_errorf(err, "tokenizer.json: model.vocab must be an object");
    p = ws(p + 1, e);
    tok_buf key = {0};
    int rc = 0;
    size_t i = 0;
    while (!rc && p < e && *p != '}') {
        key.len = 0;
        const char *q = string(p, e, &key, err);
        if (q) q = ws(q, e);
        char *num_end = NULL;
        long long id = q && q < e && *q == ':' ? strtoll(ws(q + 1, e), &num_end, 10) : -1;
        if (!num_end || id < 0 || id >= INT32_MAX / 2) {
            rc = cv_errorf(err, "tokenizer.json: model.vocab entry %zu is not \"token\": id", i);
            break;
        }
        rc = fn(ctx, key.p ? key.p : "", key.len, (int32_t)id, err);
        p = ws(num_end, e);
        if (p < e && *p == ',') p = ws(p + 1, e);
        i++;
    }
    tok_buf_free(&key);
    return rc;
}

int tok_parse_merges(const char *p, size_t n, tok_merge_fn fn, void *ctx, cv_error *err)
{
    const char *e = p + n;
    p = ws(p, e);
    if (p >= e || *p != '[') return cv_errorf(err, "tokenizer.json: model.merges must be an array");
    p = ws(p + 1, e);
    tok_buf a = {0}, b = {0};
    int rc = 0;
    for (size_t i = 0; !rc && p < e && *p != ']'; i++) {
        a.len = b.len = 0;
        const char *q = NULL;
        size_t split = 0;
        if (*p == '"') { /* "a b" */
            q = string(p, e, &a, err);
            const char *sp = q ? memchr(a.p ? a.p : "", ' ', a.len) : NULL;
            if (sp && !memchr(sp + 1, ' ', a.len - (size_t)(sp - a.p) - 1))
                split = (size_t)(sp - a.p);
            else
                q = NULL;
            if (q) rc = fn(ctx, i, a.p, split, sp + 1, a.len - split - 1, err);
        } else if (*p == '[') { /* ["a", "b"] */
            q = string(ws(p + 1, e), e, &a, err);
            q = q ? ws(q, e) : NULL;
            q = q && q < e && *q == ',' ? string(ws(q + 1, e), e, &b, err) : NULL;
            q = q ? ws(q, e) : NULL;
            q = q && q < e && *q == ']' ? q + 1 : NULL;
            if (q) rc = fn(ctx, i, a.p ? a.p : "", a.len, b.p ? b.p : "", b.len, err);
        }
        if (!q && !rc)
            rc = cv_errorf(err, "tokenizer.json: model.merges[%zu] is neither \"a b\" nor [a, b]",
                           i);
        if (!rc) {
            p = ws(q, e);
            if (p < e && *p == ',') p = ws(p + 1, e);
        }
    }
    tok_buf_free(&a);
    tok_buf_free(&b);
    return rc;
}

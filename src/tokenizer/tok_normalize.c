/* Normalizers (tokenizer.json "normalizer"): NFC/NFKC/NFD/NFKD through
 * utf8proc, Lowercase, Strip, Prepend, Replace and Sequence, loaded from
 * JSON and applied to one piece of text. Offsets are not tracked: cvllm
 * needs ids, not alignments. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer/tok_internal.h"

/* Runs utf8proc on in[0..n) and appends the result. */
static int map_form(tok_norm_type t, const char *in, size_t n, tok_buf *out, cv_error *err)
{
    int opt = UTF8PROC_STABLE;
    if (t == TOK_NORM_NFC || t == TOK_NORM_NFKC)
        opt |= UTF8PROC_COMPOSE;
    else
        opt |= UTF8PROC_DECOMPOSE;
    if (t == TOK_NORM_NFKC || t == TOK_NORM_NFKD) opt |= UTF8PROC_COMPAT;
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t m = utf8proc_map((const utf8proc_uint8_t *)in, (utf8proc_ssize_t)n, &dst,
                                      (utf8proc_option_t)opt);
    if (m < 0)
        return cv_errorf(err, "tokenizer: unicode normalization failed: %s", utf8proc_errmsg(m));
    int rc = tok_buf_put(out, dst, (size_t)m, err);
    free(dst);
    return rc;
}

/* A code point is inert under a form when it has combining class 0, is no
 * mark (marks of class 0 can still be the second half of a composition),
 * is no conjoining Hangul jamo, and the form maps it to itself. Text can
 * be cut before any inert code point and normalized piecewise. */
static bool inert_cp(tok_norm_type t, uint32_t cp)
{
    if (cp < 0x80) return true;
    const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)cp);
    if (p->combining_class || p->category == UTF8PROC_CATEGORY_MN ||
        p->category == UTF8PROC_CATEGORY_MC || p->category == UTF8PROC_CATEGORY_ME ||
        (cp >= 0x1100 && cp <= 0x11FF) || (cp >= 0xA960 && cp <= 0xA97F) ||
        (cp >= 0xD7B0 && cp <= 0xD7FF))
        return false;
    if (p->decomp_seqindex == UINT16_MAX) return true; /* no decomposition of any kind */
    char u[4];
    int k = tok_utf8_put(cp, u);
    tok_buf b = {0};
    bool same =
        map_form(t, u, (size_t)k, &b, NULL) == 0 && b.len == (size_t)k && !memcmp(b.p, u, b.len);
    tok_buf_free(&b);
    return same;
}

static int build_inert(tok_normalizer *nm, cv_error *err)
{
    nm->inert = calloc(65536 / 8, 1);
    if (!nm->inert) return cv_errorf(err, "tokenizer: out of memory");
    for (uint32_t cp = 0; cp < 65536; cp++)
        if ((cp < 0xD800 || cp > 0xDFFF) && inert_cp(nm->type, cp))
            nm->inert[cp >> 3] |= (uint8_t)(1u << (cp & 7));
    return 0;
}

static bool is_inert(const tok_normalizer *nm, uint32_t cp)
{
    if (cp < 65536) return nm->inert[cp >> 3] >> (cp & 7) & 1;
    return inert_cp(nm->type, cp);
}

/* Copies inert stretches as they are and runs utf8proc only over the
 * pieces around non-inert code points: from the code point before (which
 * a mark may compose with) to the next inert one. */
static int unicode_form(const tok_normalizer *nm, const char *in, size_t n, tok_buf *out,
                        cv_error *err)
{
    size_t done = 0, prev = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = (size_t)tok_utf8_next(in + i, n - i, &cp);
        if ((unsigned char)in[i] < 0x80 || is_inert(nm, cp)) {
            prev = i;
            i += k;
            continue;
        }
        size_t start = i > done ? prev : i, end = i + k;
        while (end < n) {
            size_t kk = (size_t)tok_utf8_next(in + end, n - end, &cp);
            if ((unsigned char)in[end] < 0x80 || is_inert(nm, cp)) break;
            end += kk;
        }
        if (tok_buf_put(out, in + done, start - done, err) ||
            map_form(nm->type, in + start, end - start, out, err))
            return -1;
        done = i = prev = end;
    }
    return tok_buf_put(out, in + done, n - done, err);
}

static int lowercase(const char *in, size_t n, tok_buf *out, cv_error *err)
{
    if (tok_buf_reserve(out, n, err)) return -1;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += (size_t)tok_utf8_next(in + i, n - i, &cp);
        char u[8];
        int k;
        if (cp == 0x130) { /* the one multi-char lowercase in Rust: "i\u0307" */
            memcpy(u, "i\xCC\x87", 3);
            k = 3;
        } else {
            k = tok_utf8_put((uint32_t)utf8proc_tolower((utf8proc_int32_t)cp), u);
        }
        if (tok_buf_put(out, u, (size_t)k, err)) return -1;
    }
    return 0;
}

static int strip(const tok_normalizer *nm, const char *in, size_t n, tok_buf *out, cv_error *err)
{
    size_t a = 0, b = n;
    while (nm->strip_left && a < b) {
        uint32_t cp;
        int k = tok_utf8_next(in + a, b - a, &cp);
        if (!tok_is_whitespace(cp)) break;
        a += (size_t)k;
    }
    while (nm->strip_right && b > a) {
        size_t s = b - 1;
        while (s > a && ((unsigned char)in[s] & 0xC0) == 0x80)
            s--;
        uint32_t cp;
        tok_utf8_next(in + s, b - s, &cp);
        if (!tok_is_whitespace(cp)) break;
        b = s;
    }
    return tok_buf_put(out, in + a, b - a, err);
}

typedef struct replace_ctx {
    const tok_normalizer *nm;
    const char *in;
    size_t done;
    tok_buf *out;
} replace_ctx;

static int replace_hit(void *ctx, size_t a, size_t b, cv_error *err)
{
    replace_ctx *c = ctx;
    if (tok_buf_put(c->out, c->in + c->done, a - c->done, err) ||
        tok_buf_put(c->out, c->nm->text, c->nm->text_len, err))
        return -1;
    c->done = b;
    return 0;
}

int tok_normalize(const tok_normalizer *nm, const char *in, size_t n, tok_buf *out, cv_error *err)
{
    out->len = 0;
    switch (nm->type) {
    case TOK_NORM_NFC:
    case TOK_NORM_NFKC:
    case TOK_NORM_NFD:
    case TOK_NORM_NFKD:
        return unicode_form(nm, in, n, out, err);
    case TOK_NORM_LOWERCASE:
        return lowercase(in, n, out, err);
    case TOK_NORM_STRIP:
        return strip(nm, in, n, out, err);
    case TOK_NORM_PREPEND:
        if (n && tok_buf_put(out, nm->text, nm->text_len, err)) return -1;
        return tok_buf_put(out, in, n, err);
    case TOK_NORM_REPLACE: {
        replace_ctx c = {nm, in, 0, out};
        if (tok_buf_reserve(out, n, err) ||
            tok_pattern_find(&nm->pattern, in, n, replace_hit, &c, err))
            return -1;
        return tok_buf_put(out, in + c.done, n - c.done, err);
    }
    case TOK_NORM_SEQUENCE: {
        tok_buf a = {0}, b = {0};
        int rc = tok_buf_put(&a, in, n, err);
        for (size_t i = 0; !rc && i < nm->n_items; i++) {
            rc = tok_normalize(&nm->items[i], a.p, a.len, &b, err);
            tok_buf t = a;
            a = b;
            b = t;
        }
        if (!rc) rc = tok_buf_put(out, a.p, a.len, err);
        tok_buf_free(&a);
        tok_buf_free(&b);
        return rc;
    }
    }
    return cv_errorf(err, "tokenizer: bad normalizer");
}

/* ---- loading ------------------------------------------------------------ */

static int dup_str(const json_t *j, const char *key, const char *what, char **out, size_t *len,
                   cv_error *err)
{
    const json_t *v = json_object_get(j, key);
    if (!json_is_string(v))
        return cv_errorf(err, "tokenizer.json: %s needs a string \"%s\"", what, key);
    *len = json_string_length(v);
    *out = malloc(*len + 1);
    if (!*out) return cv_errorf(err, "tokenizer: out of memory");
    memcpy(*out, json_string_value(v), *len + 1);
    return 0;
}

int tok_load_pattern(const json_t *j, const char *what, tok_pattern *p, cv_error *err)
{
    const json_t *pat = json_object_get(j, "pattern");
    const json_t *s = json_object_get(pat, "String");
    const json_t *r = json_object_get(pat, "Regex");
    if (json_is_string(s)) return dup_str(pat, "String", what, &p->lit, &p->lit_len, err);
    if (json_is_string(r)) return tok_regex_compile(p, json_string_value(r), err);
    return cv_errorf(err, "tokenizer.json: %s needs \"pattern\": {\"String\"|\"Regex\": ...}",
                     what);
}

int tok_load_normalizer(const json_t *j, tok_normalizer *out, cv_error *err)
{
    memset(out, 0, sizeof *out);
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) return cv_errorf(err, "tokenizer.json: normalizer without a \"type\"");
    static const struct {
        const char *name;
        tok_norm_type type;
    } simple[] = {{"NFC", TOK_NORM_NFC},
                  {"NFKC", TOK_NORM_NFKC},
                  {"NFD", TOK_NORM_NFD},
                  {"NFKD", TOK_NORM_NFKD},
                  {"Lowercase", TOK_NORM_LOWERCASE}};
    for (size_t i = 0; i < sizeof simple / sizeof simple[0]; i++)
        if (!strcmp(type, simple[i].name)) {
            out->type = simple[i].type;
            return out->type == TOK_NORM_LOWERCASE ? 0 : build_inert(out, err);
        }
    if (!strcmp(type, "Strip")) {
        out->type = TOK_NORM_STRIP;
        out->strip_left = json_is_true(json_object_get(j, "strip_left"));
        out->strip_right = json_is_true(json_object_get(j, "strip_right"));
        return 0;
    }
    if (!strcmp(type, "Prepend")) {
        out->type = TOK_NORM_PREPEND;
        return dup_str(j, "prepend", "Prepend normalizer", &out->text, &out->text_len, err);
    }
    if (!strcmp(type, "Replace")) {
        out->type = TOK_NORM_REPLACE;
        if (tok_load_pattern(j, "Replace normalizer", &out->pattern, err)) return -1;
        return dup_str(j, "content", "Replace normalizer", &out->text, &out->text_len, err);
    }
    if (!strcmp(type, "Sequence")) {
        out->type = TOK_NORM_SEQUENCE;
        const json_t *arr = json_object_get(j, "normalizers");
        if (!json_is_array(arr))
            return cv_errorf(err, "tokenizer.json: Sequence normalizer needs \"normalizers\"");
        out->items = calloc(json_array_size(arr) + 1, sizeof *out->items);
        if (!out->items) return cv_errorf(err, "tokenizer: out of memory");
        for (size_t i = 0; i < json_array_size(arr); i++) {
            out->n_items = i + 1;
            if (tok_load_normalizer(json_array_get(arr, i), &out->items[i], err)) return -1;
        }
        return 0;
    }
    return cv_errorf(err, "tokenizer.json: unknown normalizer type \"%s\"", type);
}

void tok_normalizer_free(tok_normalizer *n)
{
    for (size_t i = 0; i < n->n_items; i++)
        tok_normalizer_free(&n->items[i]);
    free(n->items);
    free(n->text);
    free(n->inert);
    tok_pattern_free(&n->pattern);
}

/* Pre-tokenizers (tokenizer.json "pre_tokenizer"): ByteLevel, Split,
 * Metaspace, Digits, WhitespaceSplit and Sequence. Each turns a list of
 * spans over a text buffer into a finer list, with HF's split behaviours
 * (Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous). */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

const char tok_gpt2_regex[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* GPT-2's byte -> code point map: printable Latin-1 bytes map to
 * themselves, the other 68 bytes to U+0100.. in byte order. */
const uint16_t tok_byte_to_cp[256] = {
#define R(a) a, a + 1, a + 2, a + 3, a + 4, a + 5, a + 6, a + 7
    R(256), R(264), R(272), R(280), 288,   33,    34,     35,     36,     37,     38,
    39,     R(40),  R(48),  R(56),  R(64), R(72), R(80),  R(88),  R(96),  R(104), R(112),
    120,    121,    122,    123,    124,   125,   126,    289,    R(290), R(298), R(306),
    R(314), 322,    161,    162,    163,   164,   165,    166,    167,    168,    169,
    170,    171,    172,    323,    174,   175,   R(176), R(184), R(192), R(200), R(208),
    R(216), R(224), R(232), R(240), R(248)
#undef R
};

int tok_cp_to_byte(uint32_t cp)
{
    if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 255 && cp != 173)) return (int)cp;
    if (cp < 256 || cp >= 324) return -1;
    /* the remapped bytes in order: 0..32, 127..160, 173 */
    uint32_t i = cp - 256;
    return i < 33 ? (int)i : i < 67 ? (int)(127 + i - 33) : 173;
}

int tok_splits_push(tok_splits *s, size_t off, size_t len, bool first, cv_error *err)
{
    if (!len) return 0; /* HF drops empty splits */
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        tok_span *v = realloc(s->v, cap * sizeof *v);
        if (!v) return cv_errorf(err, "tokenizer: out of memory (%zu spans)", cap);
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = (tok_span){(uint32_t)off, (uint32_t)len, first};
    return 0;
}

void tok_splits_free(tok_splits *s)
{
    tok_buf_free(&s->text);
    free(s->v);
    memset(s, 0, sizeof *s);
}

/* ---- matches -> spans with a behaviour ---------------------------------- */

typedef struct piece {
    size_t a, b;
    bool match;
} piece;

typedef struct pieces {
    piece *v;
    size_t n, cap;
    size_t done; /* end of the last match, while collecting */
} pieces;

static int pieces_push(pieces *p, size_t a, size_t b, bool match, cv_error *err)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 32;
        piece *v = realloc(p->v, cap * sizeof *v);
        if (!v) return cv_errorf(err, "tokenizer: out of memory");
        p->v = v;
        p->cap = cap;
    }
    p->v[p->n++] = (piece){a, b, match};
    return 0;
}

static int collect_hit(void *ctx, size_t a, size_t b, cv_error *err)
{
    pieces *p = ctx;
    if (a > p->done && pieces_push(p, p->done, a, false, err)) return -1;
    p->done = b;
    return pieces_push(p, a, b, true, err);
}

/* Applies HF's SplitDelimiterBehavior to the alternating match list and
 * pushes the resulting spans (offsets relative to base) to out. */
static int emit_behavior(pieces *p, tok_split_behavior bh, size_t base, bool first, tok_splits *out,
                         cv_error *err)
{
    size_t n = 0; /* pieces are merged in place into p->v[0..n) */
    bool prev_match = false;
    if (bh == TOK_SPLIT_MERGED_NEXT) {
        for (size_t i = p->n; i-- > 0;) {
            piece c = p->v[i];
            if (c.match && !prev_match && n)
                p->v[p->n - n].a = c.a;
            else
                p->v[p->n - ++n] = (piece){c.a, c.b, false};
            prev_match = c.match;
        }
        memmove(p->v, p->v + p->n - n, n * sizeof *p->v);
    } else {
        for (size_t i = 0; i < p->n; i++) {
            piece c = p->v[i];
            if (bh == TOK_SPLIT_REMOVED) {
                if (!c.match) p->v[n++] = c;
                continue;
            }
            bool merge = bh == TOK_SPLIT_MERGED_PREV  ? c.match && !prev_match
                         : bh == TOK_SPLIT_CONTIGUOUS ? c.match == prev_match
                                                      : false;
            if (merge && n)
                p->v[n - 1].b = c.b;
            else
                p->v[n++] = c;
            prev_match = c.match;
        }
    }
    for (size_t i = 0; i < n; i++)
        if (tok_splits_push(out, base + p->v[i].a, p->v[i].b - p->v[i].a, first && p->v[i].a == 0,
                            err))
            return -1;
    return 0;
}

/* Collects the pieces of s[0..n): matches of a pattern, or single code
 * points accepted by a class (each one its own match, as HF's char
 * patterns). */
typedef bool (*cp_class)(uint32_t cp, const tok_pretok *pt);

static int collect(const tok_pattern *pat, cp_class cls, const tok_pretok *pt, bool invert,
                   const char *s, size_t n, pieces *p, cv_error *err)
{
    p->n = p->done = 0;
    if (pat) {
        if (tok_pattern_find(pat, s, n, collect_hit, p, err)) return -1;
    } else {
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            size_t k = (size_t)tok_utf8_next(s + i, n - i, &cp);
            if (cls(cp, pt) && collect_hit(p, i, i + k, err)) return -1;
            i += k;
        }
    }
    if (p->done < n && pieces_push(p, p->done, n, false, err)) return -1;
    if (invert)
        for (size_t i = 0; i < p->n; i++)
            p->v[i].match = !p->v[i].match;
    return 0;
}

static bool is_digit_class(uint32_t cp, const tok_pretok *pt)
{
    (void)pt;
    return tok_is_numeric(cp);
}

static bool is_space_class(uint32_t cp, const tok_pretok *pt)
{
    (void)pt;
    return tok_is_whitespace(cp);
}

static bool is_replacement(uint32_t cp, const tok_pretok *pt)
{
    return cp == pt->replacement_cp;
}

/* ---- the pre-tokenizers ------------------------------------------------- */

/* Splits that keep the text: only the span list changes. */
static int split_spans(const tok_pretok *pt, const tok_pattern *pat, cp_class cls,
                       tok_split_behavior bh, bool invert, tok_splits *cur, tok_splits *tmp,
                       pieces *p, cv_error *err)
{
    tmp->n = 0;
    for (size_t i = 0; i < cur->n; i++) {
        tok_span sp = cur->v[i];
        if (collect(pat, cls, pt, invert, cur->text.p + sp.off, sp.len, p, err) ||
            emit_behavior(p, bh, sp.off, sp.first, tmp, err))
            return -1;
    }
    tok_span *v = cur->v;
    size_t cap = cur->cap;
    cur->v = tmp->v;
    cur->n = tmp->n;
    cur->cap = tmp->cap;
    tmp->v = v;
    tmp->cap = cap;
    tmp->n = 0;
    return 0;
}

static void swap_splits(tok_splits *a, tok_splits *b)
{
    tok_splits t = *a;
    *a = *b;
    *b = t;
}

typedef struct bytelevel_ctx {
    const char *s;
    tok_splits *out;
} bytelevel_ctx;

/* Writes s[a..b) through the byte map as one new span. */
static int bytelevel_emit(void *ctx, size_t a, size_t b, cv_error *err)
{
    bytelevel_ctx *c = ctx;
    tok_buf *t = &c->out->text;
    size_t off = t->len;
    if (tok_buf_reserve(t, 2 * (b - a), err)) return -1;
    for (size_t i = a; i < b; i++) {
        uint32_t cp = tok_byte_to_cp[(unsigned char)c->s[i]];
        if (cp < 0x80) {
            t->p[t->len++] = (char)cp;
        } else {
            t->p[t->len++] = (char)(0xC0 | (cp >> 6));
            t->p[t->len++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    return tok_splits_push(c->out, off, t->len - off, false, err);
}

static int bytelevel(const tok_pretok *pt, const pcre2_code *re, tok_splits *cur, tok_splits *tmp,
                     cv_error *err)
{
    tmp->n = tmp->text.len = 0;
    tok_buf scratch = {0};
    tok_pattern pat = {.re = (pcre2_code *)re};
    int rc = 0;
    for (size_t i = 0; !rc && i < cur->n; i++) {
        tok_span sp = cur->v[i];
        const char *s = cur->text.p + sp.off;
        size_t n = sp.len;
        if (pt->add_prefix_space && s[0] != ' ') {
            scratch.len = 0;
            if ((rc = tok_buf_put(&scratch, " ", 1, err)) ||
                (rc = tok_buf_put(&scratch, s, n, err)))
                break;
            s = scratch.p;
            n = scratch.len;
        }
        bytelevel_ctx c = {s, tmp};
        rc = pt->use_regex ? tok_pattern_find(&pat, s, n, bytelevel_emit, &c, err)
                           : bytelevel_emit(&c, 0, n, err);
    }
    tok_buf_free(&scratch);
    if (!rc) swap_splits(cur, tmp);
    return rc;
}

static int metaspace(const tok_pretok *pt, tok_splits *cur, tok_splits *tmp, pieces *p,
                     cv_error *err)
{
    tmp->n = tmp->text.len = 0;
    size_t rlen = strlen(pt->replacement);
    for (size_t i = 0; i < cur->n; i++) {
        tok_span sp = cur->v[i];
        const char *s = cur->text.p + sp.off;
        size_t off = tmp->text.len;
        bool prepend = pt->prepend_scheme == TOK_PREPEND_ALWAYS ||
                       (pt->prepend_scheme == TOK_PREPEND_FIRST && sp.first);
        /* the span starts with the replacement once spaces are replaced */
        if (prepend && (s[0] == ' ' || (sp.len >= rlen && !memcmp(s, pt->replacement, rlen))))
            prepend = false;
        if (prepend && tok_buf_put(&tmp->text, pt->replacement, rlen, err)) return -1;
        for (size_t k = 0; k < sp.len; k++) {
            int rc = s[k] == ' ' ? tok_buf_put(&tmp->text, pt->replacement, rlen, err)
                                 : tok_buf_put(&tmp->text, s + k, 1, err);
            if (rc) return -1;
        }
        size_t len = tmp->text.len - off;
        if (!pt->split) {
            if (tok_splits_push(tmp, off, len, sp.first, err)) return -1;
            continue;
        }
        if (collect(NULL, is_replacement, pt, false, tmp->text.p + off, len, p, err) ||
            emit_behavior(p, TOK_SPLIT_MERGED_NEXT, off, sp.first, tmp, err))
            return -1;
    }
    swap_splits(cur, tmp);
    return 0;
}

static int run(const tok_pretok *pt, const pcre2_code *bl_re, tok_splits *cur, tok_splits *tmp,
               pieces *p, cv_error *err)
{
    switch (pt->type) {
    case TOK_PRE_BYTELEVEL:
        return bytelevel(pt, bl_re, cur, tmp, err);
    case TOK_PRE_SPLIT:
        return split_spans(pt, &pt->pattern, NULL, pt->behavior, pt->invert, cur, tmp, p, err);
    case TOK_PRE_METASPACE:
        return metaspace(pt, cur, tmp, p, err);
    case TOK_PRE_DIGITS:
        return split_spans(pt, NULL, is_digit_class,
                           pt->individual_digits ? TOK_SPLIT_ISOLATED : TOK_SPLIT_CONTIGUOUS, false,
                           cur, tmp, p, err);
    case TOK_PRE_WHITESPACE_SPLIT:
        return split_spans(pt, NULL, is_space_class, TOK_SPLIT_REMOVED, false, cur, tmp, p, err);
    case TOK_PRE_SEQUENCE:
        for (size_t i = 0; i < pt->n_items; i++)
            if (run(&pt->items[i], bl_re, cur, tmp, p, err)) return -1;
        return 0;
    }
    return cv_errorf(err, "tokenizer: bad pre-tokenizer");
}

int tok_pretokenize(const tok_pretok *pt, const pcre2_code *bytelevel_re, tok_splits *cur,
                    tok_splits *tmp, cv_error *err)
{
    pieces p = {0};
    int rc = run(pt, bytelevel_re, cur, tmp, &p, err);
    free(p.v);
    return rc;
}

/* ---- loading ------------------------------------------------------------ */

static bool get_bool(const json_t *j, const char *key, bool dflt)
{
    const json_t *v = json_object_get(j, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static int load_replacement(const json_t *j, tok_pretok *out, cv_error *err)
{
    const char *r = json_string_value(json_object_get(j, "replacement"));
    if (!r || !r[0] || strlen(r) > 4 || tok_utf8_check(r, strlen(r)) != strlen(r))
        return cv_errorf(err, "tokenizer.json: Metaspace needs a one-character \"replacement\"");
    strcpy(out->replacement, r);
    tok_utf8_next(r, strlen(r), &out->replacement_cp);
    const char *scheme = json_string_value(json_object_get(j, "prepend_scheme"));
    if (scheme) {
        if (!strcmp(scheme, "always"))
            out->prepend_scheme = TOK_PREPEND_ALWAYS;
        else if (!strcmp(scheme, "first"))
            out->prepend_scheme = TOK_PREPEND_FIRST;
        else if (!strcmp(scheme, "never"))
            out->prepend_scheme = TOK_PREPEND_NEVER;
        else
            return cv_errorf(err, "tokenizer.json: unknown Metaspace prepend_scheme \"%s\"",
                             scheme);
    } else { /* files older than prepend_scheme */
        out->prepend_scheme =
            get_bool(j, "add_prefix_space", true) ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER;
    }
    return 0;
}

static int load_behavior(const json_t *j, tok_split_behavior *out, cv_error *err)
{
    static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                  "Contiguous"};
    const char *b = json_string_value(json_object_get(j, "behavior"));
    for (int i = 0; b && i < 5; i++)
        if (!strcmp(b, names[i])) {
            *out = (tok_split_behavior)i;
            return 0;
        }
    return cv_errorf(err, "tokenizer.json: unknown Split behavior \"%s\"", b ? b : "(none)");
}

int tok_load_pretok(const json_t *j, tok_pretok *out, cv_error *err)
{
    memset(out, 0, sizeof *out);
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) return cv_errorf(err, "tokenizer.json: pre_tokenizer without a \"type\"");
    if (!strcmp(type, "ByteLevel")) {
        out->type = TOK_PRE_BYTELEVEL;
        out->add_prefix_space = get_bool(j, "add_prefix_space", true);
        out->use_regex = get_bool(j, "use_regex", true);
        return 0;
    }
    if (!strcmp(type, "Split")) {
        out->type = TOK_PRE_SPLIT;
        out->invert = get_bool(j, "invert", false);
        if (tok_load_pattern(j, "Split pre_tokenizer", &out->pattern, err)) return -1;
        return load_behavior(j, &out->behavior, err);
    }
    if (!strcmp(type, "Metaspace")) {
        out->type = TOK_PRE_METASPACE;
        out->split = get_bool(j, "split", true);
        return load_replacement(j, out, err);
    }
    if (!strcmp(type, "Digits")) {
        out->type = TOK_PRE_DIGITS;
        out->individual_digits = get_bool(j, "individual_digits", false);
        return 0;
    }
    if (!strcmp(type, "WhitespaceSplit")) {
        out->type = TOK_PRE_WHITESPACE_SPLIT;
        return 0;
    }
    if (!strcmp(type, "Sequence")) {
        out->type = TOK_PRE_SEQUENCE;
        const json_t *arr = json_object_get(j, "pretokenizers");
        if (!json_is_array(arr))
            return cv_errorf(err, "tokenizer.json: Sequence pre_tokenizer needs \"pretokenizers\"");
        out->items = calloc(json_array_size(arr) + 1, sizeof *out->items);
        if (!out->items) return cv_errorf(err, "tokenizer: out of memory");
        for (size_t i = 0; i < json_array_size(arr); i++) {
            out->n_items = i + 1;
            if (tok_load_pretok(json_array_get(arr, i), &out->items[i], err)) return -1;
        }
        return 0;
    }
    return cv_errorf(err, "tokenizer.json: unknown pre_tokenizer type \"%s\"", type);
}

void tok_pretok_free(tok_pretok *p)
{
    for (size_t i = 0; i < p->n_items; i++)
        tok_pretok_free(&p->items[i]);
    free(p->items);
    tok_pattern_free(&p->pattern);
}

/* Decoding: the decoder chain (ByteLevel, Metaspace, Replace, ByteFallback,
 * Fuse, Strip, Sequence) over token strings, tok_decode, and vLLM's
 * incremental detokenization (tok_stream_*). */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

/* ---- token string lists ---------------------------------------------------- */

int tok_strs_push(tok_strs *s, const char *p, size_t n, cv_error *err)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        uint32_t *off = realloc(s->off, cap * sizeof *off);
        if (off) s->off = off;
        uint32_t *len = off ? realloc(s->len, cap * sizeof *len) : NULL;
        if (!len) return cv_errorf(err, "tokenizer: out of memory (%zu tokens)", cap);
        s->len = len;
        s->cap = cap;
    }
    s->off[s->n] = (uint32_t)s->text.len;
    s->len[s->n] = (uint32_t)n;
    s->n++;
    return tok_buf_put(&s->text, p, n, err);
}

void tok_strs_free(tok_strs *s)
{
    tok_buf_free(&s->text);
    free(s->off);
    free(s->len);
    memset(s, 0, sizeof *s);
}

#define STR(s, i) ((s)->text.p + (s)->off[i])

/* ---- the decoders ------------------------------------------------------------ */

static int dec_bytelevel(const tok_strs *in, tok_strs *out, cv_error *err)
{
    tok_buf bytes = {0};
    int rc = 0;
    for (size_t i = 0; !rc && i < in->n; i++) {
        const char *s = STR(in, i);
        size_t n = in->len[i], start = bytes.len;
        bool ok = true;
        for (size_t k = 0; ok && k < n;) {
            uint32_t cp;
            k += (size_t)tok_utf8_next(s + k, n - k, &cp);
            int b = tok_cp_to_byte(cp);
            char c = (char)b;
            ok = b >= 0 && !(rc = tok_buf_put(&bytes, &c, 1, err));
        }
        if (!ok && !rc) { /* not a byte-level token: its text as is */
            bytes.len = start;
            rc = tok_buf_put(&bytes, s, n, err);
        }
    }
    tok_buf text = {0};
    if (!rc)
        rc = tok_utf8_lossy(&text, bytes.p ? bytes.p : "", bytes.len, err) ||
             tok_strs_push(out, text.p ? text.p : "", text.len, err);
    tok_buf_free(&bytes);
    tok_buf_free(&text);
    return rc ? -1 : 0;
}

/* Replaces every `cp` with a space, dropping it in the first token unless
 * the prepend scheme is "never" (HF Metaspace::decode_chain). */
static int dec_metaspace(const tok_decoder *d, const tok_strs *in, tok_strs *out, cv_error *err)
{
    tok_buf t = {0};
    int rc = 0;
    for (size_t i = 0; !rc && i < in->n; i++) {
        const char *s = STR(in, i);
        size_t n = in->len[i];
        t.len = 0;
        for (size_t k = 0; !rc && k < n;) {
            uint32_t cp;
            int w = tok_utf8_next(s + k, n - k, &cp);
            if (cp != d->replacement_cp)
                rc = tok_buf_put(&t, s + k, (size_t)w, err);
            else if (i > 0 || d->prepend_scheme == TOK_PREPEND_NEVER)
                rc = tok_buf_put(&t, " ", 1, err);
            k += (size_t)w;
        }
        if (!rc) rc = tok_strs_push(out, t.p ? t.p : "", t.len, err);
    }
    tok_buf_free(&t);
    return rc;
}

typedef struct repl_ctx {
    const tok_decoder *d;
    const char *s;
    size_t done;
    tok_buf *t;
} repl_ctx;

static int repl_hit(void *ctx, size_t a, size_t b, cv_error *err)
{
    repl_ctx *c = ctx;
    if (tok_buf_put(c->t, c->s + c->done, a - c->done, err) ||
        tok_buf_put(c->t, c->d->text, c->d->text_len, err))
        return -1;
    c->done = b;
    return 0;
}

static int dec_replace(const tok_decoder *d, const tok_strs *in, tok_strs *out, cv_error *err)
{
    tok_buf t = {0};
    int rc = 0;
    for (size_t i = 0; !rc && i < in->n; i++) {
        repl_ctx c = {d, STR(in, i), 0, &t};
        t.len = 0;
        rc = tok_pattern_find(&d->pattern, c.s, in->len[i], repl_hit, &c, err) ||
             tok_buf_put(&t, c.s + c.done, in->len[i] - c.done, err) ||
             tok_strs_push(out, t.p ? t.p : "", t.len, err);
    }
    tok_buf_free(&t);
    return rc ? -1 : 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Runs of "<0xXX>" tokens become their bytes when those form valid UTF-8,
 * else one U+FFFD per byte. */
static int flush_bytes(tok_buf *bytes, tok_strs *out, cv_error *err)
{
    if (!bytes->len) return 0;
    int rc = 0;
    if (tok_utf8_check(bytes->p, bytes->len) == bytes->len)
        rc = tok_strs_push(out, bytes->p, bytes->len, err);
    else
        for (size_t i = 0; !rc && i < bytes->len; i++)
            rc = tok_strs_push(out, "\xEF\xBF\xBD", 3, err);
    bytes->len = 0;
    return rc;
}

static int dec_bytefallback(const tok_strs *in, tok_strs *out, cv_error *err)
{
    tok_buf bytes = {0};
    int rc = 0;
    for (size_t i = 0; !rc && i < in->n; i++) {
        const char *s = STR(in, i);
        int hi = -1, lo = -1;
        if (in->len[i] == 6 && !memcmp(s, "<0x", 3) && s[5] == '>') {
            hi = hexval(s[3]);
            lo = hexval(s[4]);
        }
        if (hi >= 0 && lo >= 0) {
            char b = (char)(hi * 16 + lo);
            rc = tok_buf_put(&bytes, &b, 1, err);
        } else {
            rc = flush_bytes(&bytes, out, err) || tok_strs_push(out, s, in->len[i], err);
        }
    }
    if (!rc) rc = flush_bytes(&bytes, out, err);
    tok_buf_free(&bytes);
    return rc ? -1 : 0;
}

static int dec_strip(const tok_decoder *d, const tok_strs *in, tok_strs *out, cv_error *err)
{
    char c[4];
    size_t cl = (size_t)tok_utf8_put(d->strip_cp, c);
    for (size_t i = 0; i < in->n; i++) {
        const char *s = STR(in, i);
        size_t a = 0, b = in->len[i];
        for (int k = 0; k < d->strip_start && b - a >= cl && !memcmp(s + a, c, cl); k++)
            a += cl;
        for (int k = 0; k < d->strip_stop && b - a >= cl && !memcmp(s + b - cl, c, cl); k++)
            b -= cl;
        if (tok_strs_push(out, s + a, b - a, err)) return -1;
    }
    return 0;
}

static int dec_run(const tok_decoder *d, tok_strs *cur, cv_error *err)
{
    if (d->type == TOK_DEC_SEQUENCE) {
        for (size_t i = 0; i < d->n_items; i++)
            if (dec_run(&d->items[i], cur, err)) return -1;
        return 0;
    }
    tok_strs out = {0};
    int rc;
    switch (d->type) {
    case TOK_DEC_BYTELEVEL:
        rc = dec_bytelevel(cur, &out, err);
        break;
    case TOK_DEC_METASPACE:
        rc = dec_metaspace(d, cur, &out, err);
        break;
    case TOK_DEC_REPLACE:
        rc = dec_replace(d, cur, &out, err);
        break;
    case TOK_DEC_BYTEFALLBACK:
        rc = dec_bytefallback(cur, &out, err);
        break;
    case TOK_DEC_FUSE:
        rc = tok_strs_push(&out, cur->text.p ? cur->text.p : "", cur->text.len, err);
        break;
    case TOK_DEC_STRIP:
        rc = dec_strip(d, cur, &out, err);
        break;
    default:
        rc = cv_errorf(err, "tokenizer: bad decoder");
    }
    tok_strs_free(cur);
    *cur = out;
    return rc;
}

int tok_run_decoder(const cv_tokenizer *tok, tok_strs *in, tok_buf *out, cv_error *err)
{
    out->len = 0;
    if (tok->decoder && dec_run(tok->decoder, in, err)) return -1;
    for (size_t i = 0; i < in->n; i++) {
        /* without a decoder HF joins the tokens with spaces */
        if (!tok->decoder && i && tok_buf_put(out, " ", 1, err)) return -1;
        if (tok_buf_put(out, STR(in, i), in->len[i], err)) return -1;
    }
    return tok_buf_reserve(out, 0, err);
}

/* ---- tok_decode ------------------------------------------------------------- */

int tok_decode(const cv_tokenizer *tok, const int32_t *ids, size_t n_ids, bool skip_special_tokens,
               char **text, size_t *len, cv_error *err)
{
    *text = NULL;
    *len = 0;
    tok_strs toks = {0};
    tok_buf out = {0};
    int rc = 0;
    for (size_t i = 0; !rc && i < n_ids; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= tok->n_ids || !tok->id_str[id])
            rc = cv_errorf(err, "tokenizer: id %d at position %zu is out of range (vocab size %d)",
                           id, i, tok->n_ids);
        else if (!(skip_special_tokens && tok->id_special[id]))
            rc = tok_strs_push(&toks, tok->id_str[id], tok->id_len[id], err);
    }
    if (!rc) rc = tok_run_decoder(tok, &toks, &out, err);
    tok_strs_free(&toks);
    if (rc) {
        tok_buf_free(&out);
        return -1;
    }
    *text = out.p;
    *len = out.len;
    return 0;
}

/* ---- one token for logprobs (vLLM convert_ids_list_to_tokens) ----------- */

static const char *pretok_marker(const tok_pretok *p)
{
    if (!p) return NULL;
    if (p->type == TOK_PRE_METASPACE) return p->replacement;
    for (size_t i = 0; p->type == TOK_PRE_SEQUENCE && i < p->n_items; i++)
        if (p->items[i].type == TOK_PRE_METASPACE) return p->items[i].replacement;
    return NULL;
}

static const char *norm_marker(const tok_normalizer *n)
{
    if (!n) return NULL;
    if (n->type == TOK_NORM_REPLACE && n->pattern.lit && n->pattern.lit_len == 1 &&
        n->pattern.lit[0] == ' ' && n->text_len > 0)
        return n->text;
    for (size_t i = 0; n->type == TOK_NORM_SEQUENCE && i < n->n_items; i++) {
        const char *m = norm_marker(&n->items[i]);
        if (m) return m;
    }
    return NULL;
}

int tok_decode_token(const cv_tokenizer *tok, int32_t id, char **text, size_t *len, cv_error *err)
{
    if (tok_decode(tok, &id, 1, false, text, len, err) < 0) return -1;
    const char *marker = pretok_marker(tok->pretok);
    if (!marker) marker = norm_marker(tok->normalizer);
    size_t mlen = marker ? strlen(marker) : 0;
    if (!mlen) return 0;
    const char *raw = tok->id_str[id];
    size_t n_markers = 0;
    for (size_t off = 0; off + mlen <= tok->id_len[id] && !memcmp(raw + off, marker, mlen);
         off += mlen)
        n_markers++;
    size_t have = 0;
    while (have < *len && (*text)[have] == ' ')
        have++;
    if (n_markers <= have) return 0;
    size_t add = n_markers - have;
    char *t = malloc(*len + add + 1);
    if (!t) {
        free(*text);
        *text = NULL;
        *len = 0;
        return cv_errorf(err, "tokenizer: out of memory decoding token %d", id);
    }
    memset(t, ' ', add);
    memcpy(t + add, *text, *len + 1);
    free(*text);
    *text = t;
    *len += add;
    return 0;
}

/* ---- incremental detokenization (vLLM detokenize_incrementally) ------------ */

enum { STREAM_CONTEXT = 5 }; /* vLLM's INITIAL_INCREMENTAL_DETOKENIZATION_OFFSET */

static bool skipped(const cv_tokenizer *tok, int32_t id, bool skip)
{
    return skip && id >= 0 && id < tok->n_ids && tok->id_special[id];
}

void tok_stream_init(cv_tok_stream *st, const cv_tokenizer *tok, const int32_t *prompt_ids,
                     size_t n_prompt, bool skip_special_tokens)
{
    /* vLLM converts the last CONTEXT + 2 prompt ids to tokens (dropping
     * skipped specials) and starts the window CONTEXT tokens back. */
    size_t lo = n_prompt > STREAM_CONTEXT + 2 ? n_prompt - (STREAM_CONTEXT + 2) : 0;
    size_t prefix = n_prompt, kept = 0;
    for (size_t i = n_prompt; i > lo && kept < STREAM_CONTEXT; i--)
        if (!skipped(tok, prompt_ids[i - 1], skip_special_tokens)) {
            kept++;
            prefix = i - 1;
        }
    if (kept < STREAM_CONTEXT) prefix = lo;
    st->prefix_offset = prefix;
    st->read_offset = n_prompt;
    st->skip_special_tokens = skip_special_tokens;
    st->n_seen = n_prompt;
}

/* Decodes ids[a..b) as vLLM's convert_tokens_to_string: out-of-range ids
 * are empty tokens, skipped specials are absent. */
static int window_text(const cv_tokenizer *tok, const int32_t *ids, size_t a, size_t b, bool skip,
                       tok_buf *out, cv_error *err)
{
    tok_strs toks = {0};
    int rc = 0;
    for (size_t i = a; !rc && i < b; i++) {
        int32_t id = ids[i];
        if (skipped(tok, id, skip)) continue;
        bool ok = id >= 0 && id < tok->n_ids && tok->id_str[id];
        rc = tok_strs_push(&toks, ok ? tok->id_str[id] : "", ok ? tok->id_len[id] : 0, err);
    }
    if (!rc) rc = tok_run_decoder(tok, &toks, out, err);
    tok_strs_free(&toks);
    return rc;
}

/* Byte offset of code point number `cps` in s. */
static size_t cp_offset(const char *s, size_t n, size_t cps)
{
    size_t i = 0;
    for (; i < n && cps; cps--) {
        uint32_t cp;
        i += (size_t)tok_utf8_next(s + i, n - i, &cp);
    }
    return i;
}

int tok_stream_next(cv_tok_stream *st, const cv_tokenizer *tok, const int32_t *ids, size_t n_ids,
                    char **out, size_t *out_len, cv_error *err)
{
    tok_buf delta = {0}, prefix = {0}, full = {0};
    int rc = tok_buf_reserve(&delta, 0, err);
    for (; !rc && st->n_seen < n_ids; st->n_seen++) {
        size_t end = st->n_seen + 1;
        if ((rc = window_text(tok, ids, st->prefix_offset, st->read_offset, st->skip_special_tokens,
                              &prefix, err)) ||
            (rc = window_text(tok, ids, st->prefix_offset, end, st->skip_special_tokens, &full,
                              err)))
            break;
        size_t n_pre = tok_utf8_count(prefix.p, prefix.len);
        size_t n_full = tok_utf8_count(full.p, full.len);
        /* hold back text that may end in an unfinished UTF-8 sequence */
        if (n_full <= n_pre || (full.len >= 3 && !memcmp(full.p + full.len - 3, "\xEF\xBF\xBD", 3)))
            continue;
        size_t cut = cp_offset(full.p, full.len, n_pre);
        rc = tok_buf_put(&delta, full.p + cut, full.len - cut, err);
        st->prefix_offset = st->read_offset;
        st->read_offset = end;
    }
    tok_buf_free(&prefix);
    tok_buf_free(&full);
    if (rc) {
        tok_buf_free(&delta);
        *out = NULL;
        *out_len = 0;
        return -1;
    }
    *out = delta.p;
    *out_len = delta.len;
    return 0;
}

/* ---- loading ------------------------------------------------------------------ */

int tok_load_decoder(const json_t *j, tok_decoder *out, cv_error *err)
{
    memset(out, 0, sizeof *out);
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) return cv_errorf(err, "tokenizer.json: decoder without a \"type\"");
    if (!strcmp(type, "ByteLevel")) {
        out->type = TOK_DEC_BYTELEVEL;
    } else if (!strcmp(type, "ByteFallback")) {
        out->type = TOK_DEC_BYTEFALLBACK;
    } else if (!strcmp(type, "Fuse")) {
        out->type = TOK_DEC_FUSE;
    } else if (!strcmp(type, "Metaspace")) {
        out->type = TOK_DEC_METASPACE;
        tok_pretok pt;
        int rc = tok_load_pretok(j, &pt, err);
        out->replacement_cp = pt.replacement_cp;
        out->prepend_scheme = pt.prepend_scheme;
        tok_pretok_free(&pt);
        return rc;
    } else if (!strcmp(type, "Replace")) {
        out->type = TOK_DEC_REPLACE;
        const char *content = json_string_value(json_object_get(j, "content"));
        if (!content)
            return cv_errorf(err, "tokenizer.json: Replace decoder needs a string \"content\"");
        out->text_len = strlen(content);
        if (!(out->text = strdup(content))) return cv_errorf(err, "tokenizer: out of memory");
        return tok_load_pattern(j, "Replace decoder", &out->pattern, err);
    } else if (!strcmp(type, "Strip")) {
        out->type = TOK_DEC_STRIP;
        const char *c = json_string_value(json_object_get(j, "content"));
        if (!c || !c[0])
            return cv_errorf(err, "tokenizer.json: Strip decoder needs a \"content\" character");
        tok_utf8_next(c, strlen(c), &out->strip_cp);
        out->strip_start = (int)json_integer_value(json_object_get(j, "start"));
        out->strip_stop = (int)json_integer_value(json_object_get(j, "stop"));
    } else if (!strcmp(type, "Sequence")) {
        out->type = TOK_DEC_SEQUENCE;
        const json_t *arr = json_object_get(j, "decoders");
        if (!json_is_array(arr))
            return cv_errorf(err, "tokenizer.json: Sequence decoder needs \"decoders\"");
        out->items = calloc(json_array_size(arr) + 1, sizeof *out->items);
        if (!out->items) return cv_errorf(err, "tokenizer: out of memory");
        for (size_t i = 0; i < json_array_size(arr); i++) {
            out->n_items = i + 1;
            if (tok_load_decoder(json_array_get(arr, i), &out->items[i], err)) return -1;
        }
    } else {
        return cv_errorf(err, "tokenizer.json: unknown decoder type \"%s\"", type);
    }
    return 0;
}

void tok_decoder_free(tok_decoder *d)
{
    for (size_t i = 0; i < d->n_items; i++)
        tok_decoder_free(&d->items[i]);
    free(d->items);
    free(d->text);
    tok_pattern_free(&d->pattern);
}

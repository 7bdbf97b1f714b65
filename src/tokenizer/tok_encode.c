/* tok_encode: HF's encode pipeline for one sequence.
 *   1. split the input on non-normalized added tokens;
 *   2. normalize each remaining piece, split it on normalized added tokens;
 *   3. pre-tokenize each remaining piece, run BPE on every pre-token;
 *   4. wrap with the post-processor's special tokens when asked. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

typedef struct enc {
    cv_tokenizer *tok; /* the BPE cache is the only thing written */
    tok_ids out;
    tok_buf norm;
    tok_splits cur, tmp;
} enc;

/* ---- added tokens ---------------------------------------------------------- */

static bool ends_with_word(const char *s, size_t n)
{
    if (!n) return false;
    size_t i = n - 1;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80)
        i--;
    uint32_t cp;
    tok_utf8_next(s + i, n - i, &cp);
    return tok_is_alnum(cp) || cp == '_';
}

static bool starts_with_word(const char *s, size_t n)
{
    if (!n) return false;
    uint32_t cp;
    tok_utf8_next(s, n, &cp);
    return tok_is_alnum(cp) || cp == '_';
}

/* Longest added token of the set starting at s[i], or NULL. */
static const tok_added *match_at(const tok_added_set *set, const char *s, size_t n, size_t i)
{
    unsigned char b = (unsigned char)s[i];
    for (uint32_t k = set->start[b]; k < set->start[b + 1]; k++) {
        const tok_added *a = set->v[k];
        if (a->match_len <= n - i && !memcmp(s + i, a->match, a->match_len)) return a;
    }
    return NULL;
}

typedef int (*piece_fn)(enc *e, const char *s, size_t n, bool first, cv_error *err);

/* HF AddedVocabulary::find_matches: leftmost-longest matches, filtered by
 * single_word and widened by lstrip/rstrip; text between matches goes to
 * `rest`, matched tokens straight to the output. */
static int split_added(enc *e, const tok_added_set *set, const char *s, size_t n, bool first,
                       piece_fn rest, cv_error *err)
{
    size_t done = 0; /* end of the last emitted match */
    for (size_t i = 0; set->n && i < n;) {
        const tok_added *a = set->start[(unsigned char)s[i]] < set->start[(unsigned char)s[i] + 1]
                                 ? match_at(set, s, n, i)
                                 : NULL;
        if (!a) {
            i++;
            continue;
        }
        size_t start = i, stop = i + a->match_len;
        i = stop;
        if (a->single_word && (ends_with_word(s, start) || starts_with_word(s + stop, n - stop)))
            continue;
        if (a->lstrip) {
            while (start > done) {
                size_t p = start - 1;
                while (p > done && ((unsigned char)s[p] & 0xC0) == 0x80)
                    p--;
                uint32_t cp;
                tok_utf8_next(s + p, start - p, &cp);
                if (!tok_is_whitespace(cp)) break;
                start = p;
            }
        }
        if (a->rstrip) {
            while (stop < n) {
                uint32_t cp;
                int k = tok_utf8_next(s + stop, n - stop, &cp);
                if (!tok_is_whitespace(cp)) break;
                stop += (size_t)k;
            }
            i = stop;
        }
        if (start > done && rest(e, s + done, start - done, first && done == 0, err)) return -1;
        if (tok_ids_push(&e->out, a->id, err)) return -1;
        done = stop;
    }
    if (done < n || n == 0) return rest(e, s + done, n - done, first && done == 0, err);
    return 0;
}

/* ---- pre-tokenize + model -------------------------------------------------- */

/* Without a pre-tokenizer the whole piece is one BPE word; when the vocab
 * allows (tok_bpe.metaspace_words) it is cut before each U+2581 that
 * follows another character, which gives the same merges. */
static int metaspace_words(enc *e, const char *s, size_t n, cv_error *err)
{
    static const char mark[3] = {'\xE2', '\x96', '\x81'};
    size_t start = 0;
    for (size_t i = 1; i + 3 <= n; i++)
        if (s[i] == mark[0] && !memcmp(s + i, mark, 3) && (i < 3 || memcmp(s + i - 3, mark, 3))) {
            if (tok_bpe_word(&e->tok->bpe, s + start, i - start, &e->out, err)) return -1;
            start = i;
        }
    return n > start ? tok_bpe_word(&e->tok->bpe, s + start, n - start, &e->out, err) : 0;
}

static int model_piece(enc *e, const char *s, size_t n, bool first, cv_error *err)
{
    tok_splits *c = &e->cur;
    c->n = c->text.len = 0;
    if (tok_buf_put(&c->text, s, n, err) || tok_splits_push(c, 0, n, first, err)) return -1;
    if (e->tok->pretok &&
        tok_pretokenize(e->tok->pretok, e->tok->bytelevel_re, &e->cur, &e->tmp, err))
        return -1;
    if (!e->tok->pretok && e->tok->bpe.metaspace_words) return metaspace_words(e, s, n, err);
    for (size_t i = 0; i < e->cur.n; i++)
        if (tok_bpe_word(&e->tok->bpe, e->cur.text.p + e->cur.v[i].off, e->cur.v[i].len, &e->out,
                         err))
            return -1;
    return 0;
}

static int normalized_piece(enc *e, const char *s, size_t n, bool first, cv_error *err)
{
    const cv_tokenizer *tok = e->tok;
    if (!tok->normalizer) return split_added(e, &tok->added_norm, s, n, first, model_piece, err);
    if (tok_normalize(tok->normalizer, s, n, &e->norm, err)) return -1;
    /* split_added reads e->norm while model_piece fills e->cur: distinct */
    tok_buf text = e->norm;
    e->norm = (tok_buf){0};
    int rc =
        split_added(e, &tok->added_norm, text.p ? text.p : "", text.len, first, model_piece, err);
    tok_buf_free(&e->norm);
    e->norm = text;
    return rc;
}

int tok_encode(const cv_tokenizer *tok, const char *text, size_t len, bool add_special_tokens,
               int32_t **ids, size_t *n_ids, cv_error *err)
{
    *ids = NULL;
    *n_ids = 0;
    /* spans are 32-bit and ByteLevel doubles the text: stay well inside */
    if (len > UINT32_MAX / 4)
        return cv_errorf(err, "tokenizer: input of %zu bytes is too long (limit %u)", len,
                         UINT32_MAX / 4);
    size_t bad = tok_utf8_check(text, len);
    if (bad < len)
        return cv_errorf(err, "tokenizer: invalid UTF-8 in input at byte offset %zu (byte 0x%02X)",
                         bad, (unsigned char)text[bad]);
    enc e = {.tok = (cv_tokenizer *)tok};
    int rc = 0;
    if (add_special_tokens)
        for (size_t i = 0; !rc && i < tok->n_prefix; i++)
            rc = tok_ids_push(&e.out, tok->prefix_ids[i], err);
    if (!rc)
        rc = split_added(&e, &tok->added_raw, len ? text : "", len, true, normalized_piece, err);
    if (add_special_tokens)
        for (size_t i = 0; !rc && i < tok->n_suffix; i++)
            rc = tok_ids_push(&e.out, tok->suffix_ids[i], err);
    tok_buf_free(&e.norm);
    tok_splits_free(&e.cur);
    tok_splits_free(&e.tmp);
    if (rc) {
        free(e.out.v);
        return -1;
    }
    if (!e.out.v && !(e.out.v = malloc(sizeof *e.out.v)))
        return cv_errorf(err, "tokenizer: out of memory");
    *ids = e.out.v;
    *n_ids = e.out.n;
    return 0;
}

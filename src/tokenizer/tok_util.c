/* Shared helpers of the tokenizer: growable buffers, UTF-8 decoding and
 * validation, the Unicode character classes HF's Rust code uses
 * (char::is_whitespace / is_alphanumeric / is_numeric), hashing and pattern
 * search (literal or PCRE2). */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer/tok_internal.h"

/* ---- buffers ------------------------------------------------------------ */

int tok_buf_reserve(tok_buf *b, size_t extra, cv_error *err)
{
    if (b->len + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return cv_errorf(err, "tokenizer: out of memory (%zu bytes)", cap);
    b->p = p;
    b->cap = cap;
    return 0;
}

int tok_buf_put(tok_buf *b, const void *data, size_t n, cv_error *err)
{
    if (tok_buf_reserve(b, n, err)) return -1;
    if (n) memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

void tok_buf_free(tok_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

int tok_ids_push(tok_ids *a, int32_t id, cv_error *err)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        int32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return cv_errorf(err, "tokenizer: out of memory (%zu ids)", cap);
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return 0;
}

/* ---- UTF-8 -------------------------------------------------------------- */

int tok_utf8_next(const char *s, size_t n, uint32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    if (u[0] < 0x80 || n < 2) {
        *cp = u[0];
        return 1;
    }
    if (u[0] < 0xE0) {
        *cp = ((uint32_t)(u[0] & 0x1F) << 6) | (u[1] & 0x3F);
        return 2;
    }
    if (u[0] < 0xF0 || n < 4) {
        *cp = ((uint32_t)(u[0] & 0x0F) << 12) | ((uint32_t)(u[1] & 0x3F) << 6) | (u[2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t)(u[0] & 0x07) << 18) | ((uint32_t)(u[1] & 0x3F) << 12) |
          ((uint32_t)(u[2] & 0x3F) << 6) | (u[3] & 0x3F);
    return 4;
}

int tok_utf8_put(uint32_t cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 when invalid; *bad
 * receives the length of the maximal invalid prefix (Unicode's "maximal
 * subpart", which is what from_utf8_lossy replaces by one U+FFFD). */
static int utf8_seq(const unsigned char *s, size_t n, size_t *bad)
{
    unsigned c = s[0];
    *bad = 1;
    if (c < 0x80) return 1;
    int need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        need = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return 0;
    for (int i = 1; i <= need; i++) {
        if ((size_t)i >= n || s[i] < lo || s[i] > hi) {
            *bad = (size_t)i;
            return 0;
        }
        lo = 0x80;
        hi = 0xBF;
    }
    return need + 1;
}

size_t tok_utf8_check(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, bad;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        int k = utf8_seq(u + i, n - i, &bad);
        if (!k) return i;
        i += (size_t)k;
    }
    return n;
}

int tok_utf8_lossy(tok_buf *out, const char *s, size_t n, cv_error *err)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0, bad;
    while (i < n) {
        int k = u[i] < 0x80 ? 1 : utf8_seq(u + i, n - i, &bad);
        if (k) {
            i += (size_t)k;
            continue;
        }
        if (tok_buf_put(out, s + run, i - run, err) || tok_buf_put(out, "\xEF\xBF\xBD", 3, err))
            return -1;
        i += bad;
        run = i;
    }
    return tok_buf_put(out, s + run, n - run, err);
}

size_t tok_utf8_count(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

/* ---- Unicode classes ---------------------------------------------------- */

bool tok_is_whitespace(uint32_t cp)
{
    return (cp >= 9 && cp <= 13) || cp == 32 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

bool tok_is_numeric(uint32_t cp)
{
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

bool tok_is_alnum(uint32_t cp)
{
    if (cp < 0x80) return (cp >= '0' && cp <= '9') || ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z');
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) || tok_is_numeric(cp);
}

/* ---- hashing ------------------------------------------------------------ */

/* FNV-1a over 8-byte words, then a final mix: fast for the short strings
 * (tokens, words) hashed here. */
uint64_t tok_hash(const void *data, size_t n)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull ^ n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, n);
    h = (h ^ w) * 0x100000001b3ull;
    h ^= h >> 32;
    h *= 0xd6e8feb86659fd93ull;
    h ^= h >> 32;
    return h;
}

/* ---- patterns ----------------------------------------------------------- */

int tok_regex_compile(tok_pattern *p, const char *regex, cv_error *err)
{
    int code;
    PCRE2_SIZE off;
    p->re = pcre2_compile((PCRE2_SPTR)regex, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &code,
                          &off, NULL);
    if (!p->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        return cv_errorf(err, "tokenizer: bad regex \"%s\" at offset %zu: %s", regex, (size_t)off,
                         (char *)msg);
    }
    /* JIT is an optimisation: without it (e.g. unsupported CPU) matching
     * still works through the interpreter. */
    pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE);
    return 0;
}

void tok_pattern_free(tok_pattern *p)
{
    free(p->lit);
    if (p->re) pcre2_code_free(p->re);
    memset(p, 0, sizeof *p);
}

static int regex_find(const pcre2_code *re, const char *s, size_t n, tok_match_fn fn, void *ctx,
                      cv_error *err)
{
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    pcre2_match_context *mc = NULL;
    pcre2_jit_stack *stack = NULL;
    if (!md) return cv_errorf(err, "tokenizer: out of memory (regex match data)");
    int rc = 0;
    size_t pos = 0;
    while (pos < n) {
        int m = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, mc);
        if (m == PCRE2_ERROR_JIT_STACKLIMIT && !stack) {
            /* Long whitespace runs under `\s+(?!\S)` backtrack deeply; give
             * the JIT a larger stack only when the default one is short. */
            mc = pcre2_match_context_create(NULL);
            stack = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, NULL);
            if (!mc || !stack) {
                rc = cv_errorf(err, "tokenizer: out of memory (regex stack)");
                break;
            }
            pcre2_jit_stack_assign(mc, NULL, stack);
            continue;
        }
        if (m == PCRE2_ERROR_NOMATCH) break;
        if (m < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(m, msg, sizeof msg);
            rc = cv_errorf(err, "tokenizer: regex match failed at byte %zu: %s", pos, (char *)msg);
            break;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t a = ov[0], b = ov[1];
        if (b == a) {
            uint32_t cp;
            pos = a + (size_t)tok_utf8_next(s + a, n - a, &cp);
            continue;
        }
        if ((rc = fn(ctx, a, b, err))) break;
        pos = b;
    }
    if (stack) pcre2_jit_stack_free(stack);
    if (mc) pcre2_match_context_free(mc);
    pcre2_match_data_free(md);
    return rc;
}

int tok_pattern_find(const tok_pattern *p, const char *s, size_t n, tok_match_fn fn, void *ctx,
                     cv_error *err)
{
    if (p->re) return regex_find(p->re, s, n, fn, ctx, err);
    if (!p->lit_len) return 0;
    size_t pos = 0;
    while (pos + p->lit_len <= n) {
        const char *hit = memchr(s + pos, p->lit[0], n - pos - p->lit_len + 1);
        if (!hit) break;
        size_t a = (size_t)(hit - s);
        if (memcmp(hit, p->lit, p->lit_len) == 0) {
            if (fn(ctx, a, a + p->lit_len, err)) return -1;
            pos = a + p->lit_len;
        } else {
            pos = a + 1;
        }
    }
    return 0;
}

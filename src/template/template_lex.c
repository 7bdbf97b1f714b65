/* The chat-template lexer: source text -> tokens, with jinja2's whitespace
 * rules as transformers configures them (trim_blocks, lstrip_blocks, one
 * trailing newline dropped, \r\n and \r read as \n). */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template/template_internal.h"

typedef struct lexer {
    const char *s; /* normalised source */
    size_t n, pos;
    int line; /* line of s[line_pos] */
    size_t line_pos;
    tpl_tok *toks;
    size_t n_toks, cap;
    cv_error *err;
} lexer;

static int line_at(lexer *lx, size_t pos)
{
    for (; lx->line_pos < pos; lx->line_pos++)
        if (lx->s[lx->line_pos] == '\n') lx->line++;
    return lx->line;
}

static int lx_fail(lexer *lx, size_t pos, const char *msg)
{
    return cv_errorf(lx->err, "chat template line %d: %s", line_at(lx, pos), msg);
}

static int emit(lexer *lx, tpl_tok_kind kind, size_t at, const char *text, size_t len)
{
    if (lx->n_toks == lx->cap) {
        size_t cap = lx->cap ? lx->cap * 2 : 256;
        tpl_tok *t = realloc(lx->toks, cap * sizeof *t);
        if (!t) return cv_errorf(lx->err, "chat template: out of memory");
        lx->toks = t;
        lx->cap = cap;
    }
    tpl_tok *t = &lx->toks[lx->n_toks];
    memset(t, 0, sizeof *t);
    t->kind = kind;
    t->line = line_at(lx, at);
    t->text = malloc(len + 1);
    if (!t->text) return cv_errorf(lx->err, "chat template: out of memory");
    if (len) memcpy(t->text, text, len);
    t->text[len] = '\0';
    t->len = len;
    lx->n_toks++;
    return 0;
}

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* A string literal's escapes, as jinja2 decodes them (Python's
 * unicode-escape codec; unknown escapes keep their backslash). */
static void put_utf8(tpl_buf *b, uint32_t cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    tpl_buf_put(b, u, n);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int lex_string(lexer *lx)
{
    size_t start = lx->pos;
    char q = lx->s[lx->pos++];
    tpl_buf b = {0};
    while (lx->pos < lx->n && lx->s[lx->pos] != q) {
        char c = lx->s[lx->pos++];
        if (c != '\\') {
            tpl_buf_putc(&b, c);
            continue;
        }
        if (lx->pos >= lx->n) break;
        char e = lx->s[lx->pos++];
        int nhex = 0;
        switch (e) {
        case 'n':
            tpl_buf_putc(&b, '\n');
            break;
        case 't':
            tpl_buf_putc(&b, '\t');
            break;
        case 'r':
            tpl_buf_putc(&b, '\r');
            break;
        case 'a':
            tpl_buf_putc(&b, '\a');
            break;
        case 'b':
            tpl_buf_putc(&b, '\b');
            break;
        case 'f':
            tpl_buf_putc(&b, '\f');
            break;
        case 'v':
            tpl_buf_putc(&b, '\v');
            break;
        case '\\':
            tpl_buf_putc(&b, '\\');
            break;
        case '\'':
            tpl_buf_putc(&b, '\'');
            break;
        case '"':
            tpl_buf_putc(&b, '"');
            break;
        case '\n':
            break; /* line continuation */
        case 'x':
            nhex = 2;
            break;
        case 'u':
            nhex = 4;
            break;
        case 'U':
            nhex = 8;
            break;
        default:
            if (e >= '0' && e <= '7') {
                uint32_t cp = (uint32_t)(e - '0');
                for (int i = 0;
                     i < 2 && lx->pos < lx->n && lx->s[lx->pos] >= '0' && lx->s[lx->pos] <= '7';
                     i++)
                    cp = cp * 8 + (uint32_t)(lx->s[lx->pos++] - '0');
                put_utf8(&b, cp);
            } else {
                tpl_buf_putc(&b, '\\');
                tpl_buf_putc(&b, e);
            }
        }
        if (nhex) {
            uint32_t cp = 0;
            for (int i = 0; i < nhex; i++) {
                int h = lx->pos < lx->n ? hexval(lx->s[lx->pos]) : -1;
                if (h < 0) {
                    free(b.p);
                    return lx_fail(lx, start, "truncated \\x/\\u escape in string literal");
                }
                cp = cp * 16 + (uint32_t)h;
                lx->pos++;
            }
            if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
                free(b.p);
                return lx_fail(lx, start, "invalid code point escape in string literal");
            }
            put_utf8(&b, cp);
        }
    }
    if (lx->pos >= lx->n) {
        free(b.p);
        return lx_fail(lx, start, "unterminated string literal");
    }
    lx->pos++;
    if (b.oom) {
        free(b.p);
        return lx_fail(lx, start, "string literal too long");
    }
    int rc = emit(lx, TK_STRING, start, b.p ? b.p : "", b.len);
    free(b.p);
    return rc;
}

static int lex_number(lexer *lx)
{
    size_t start = lx->pos;
    char buf[64];
    size_t k = 0;
    bool is_float = false;
    const char *s = lx->s;
    while (lx->pos < lx->n && (isdigit((unsigned char)s[lx->pos]) || s[lx->pos] == '_')) {
        if (s[lx->pos] != '_' && k < sizeof buf - 1) buf[k++] = s[lx->pos];
        lx->pos++;
    }
    if (lx->pos + 1 < lx->n && s[lx->pos] == '.' && isdigit((unsigned char)s[lx->pos + 1])) {
        is_float = true;
        if (k < sizeof buf - 1) buf[k++] = '.';
        lx->pos++;
        while (lx->pos < lx->n && (isdigit((unsigned char)s[lx->pos]) || s[lx->pos] == '_')) {
            if (s[lx->pos] != '_' && k < sizeof buf - 1) buf[k++] = s[lx->pos];
            lx->pos++;
        }
    }
    if (lx->pos < lx->n && (s[lx->pos] == 'e' || s[lx->pos] == 'E')) {
        size_t p = lx->pos + 1;
        if (p < lx->n && (s[p] == '+' || s[p] == '-')) p++;
        if (p < lx->n && isdigit((unsigned char)s[p])) {
            is_float = true;
            while (lx->pos < p && k < sizeof buf - 1)
                buf[k++] = s[lx->pos++];
            while (lx->pos < lx->n && isdigit((unsigned char)s[lx->pos])) {
                if (k < sizeof buf - 1) buf[k++] = s[lx->pos];
                lx->pos++;
            }
        }
    }
    buf[k] = '\0';
    if (k >= sizeof buf - 1) return lx_fail(lx, start, "number literal too long");
    if (emit(lx, is_float ? TK_FLOAT : TK_INT, start, buf, k)) return -1;
    tpl_tok *t = &lx->toks[lx->n_toks - 1];
    if (is_float) {
        t->fval = strtod(buf, NULL);
    } else {
        errno = 0;
        t->ival = strtoll(buf, NULL, 10);
        if (errno == ERANGE) return lx_fail(lx, start, "integer literal too large");
    }
    return 0;
}

static const char *const ops2[] = {"//", "**", "==", "!=", "<=", ">="};
static const char ops1[] = "+-*/%~<>=.,:|()[]{};";

/* Tokens of one {{ }} or {% %} tag up to its end delimiter, which counts
 * only while brackets are balanced (as in jinja2). Returns the end's sign
 * ('-', '+' or 0) through *sign. */
static int lex_tag(lexer *lx, bool block, size_t tag_start, char *sign)
{
    char stack[TPL_MAX_NESTING];
    int depth = 0;
    const char *end = block ? "%}" : "}}";
    for (;;) {
        while (lx->pos < lx->n && is_ws(lx->s[lx->pos]))
            lx->pos++;
        if (lx->pos >= lx->n)
            return lx_fail(lx, tag_start,
                           block ? "unexpected end of template, expected '%}'"
                                 : "unexpected end of template, expected '}}'");
        const char *p = lx->s + lx->pos;
        size_t left = lx->n - lx->pos;
        if (depth == 0) {
            if (left >= 3 && (p[0] == '-' || (block && p[0] == '+')) && !memcmp(p + 1, end, 2)) {
                *sign = p[0];
                lx->pos += 3;
                return emit(lx, block ? TK_BLOCK_END : TK_VAR_END, lx->pos - 3, p, 3);
            }
            if (left >= 2 && !memcmp(p, end, 2)) {
                *sign = 0;
                lx->pos += 2;
                return emit(lx, block ? TK_BLOCK_END : TK_VAR_END, lx->pos - 2, p, 2);
            }
        }
        char c = p[0];
        if (c == '\'' || c == '"') {
            if (lex_string(lx)) return -1;
        } else if (isdigit((unsigned char)c)) {
            if (lex_number(lx)) return -1;
        } else if (isalpha((unsigned char)c) || c == '_') {
            size_t k = 0;
            while (k < left && (isalnum((unsigned char)p[k]) || p[k] == '_'))
                k++;
            if (emit(lx, TK_NAME, lx->pos, p, k)) return -1;
            lx->pos += k;
        } else {
            size_t k = 0;
            for (size_t i = 0; i < sizeof ops2 / sizeof *ops2 && !k; i++)
                if (left >= 2 && !memcmp(p, ops2[i], 2)) k = 2;
            if (!k && strchr(ops1, c) && c) k = 1;
            if (!k) {
                char msg[64];
                snprintf(msg, sizeof msg, "unexpected char '%c'",
                         isprint((unsigned char)c) ? c : '?');
                return lx_fail(lx, lx->pos, msg);
            }
            if (c == '(' || c == '[' || c == '{') {
                if (depth == TPL_MAX_NESTING)
                    return lx_fail(lx, lx->pos, "brackets nested too deeply");
                stack[depth++] = c == '(' ? ')' : c == '[' ? ']' : '}';
            } else if (c == ')' || c == ']' || c == '}') {
                if (!depth || stack[depth - 1] != c) {
                    char msg[64];
                    snprintf(msg, sizeof msg, "unexpected '%c'", c);
                    return lx_fail(lx, lx->pos, msg);
                }
                depth--;
            }
            if (emit(lx, TK_OP, lx->pos, p, k)) return -1;
            lx->pos += k;
        }
    }
}

/* After an end tag: '-' eats all whitespace, trim_blocks one newline after
 * a block or comment. Returns whether the consumed text ended a line. */
static bool after_tag(lexer *lx, char sign, bool block_or_comment, bool ended_nl)
{
    if (sign == '-') {
        size_t p = lx->pos;
        while (lx->pos < lx->n && is_ws(lx->s[lx->pos]))
            lx->pos++;
        return lx->pos > p ? lx->s[lx->pos - 1] == '\n' : ended_nl;
    }
    if (sign != '+' && block_or_comment && lx->pos < lx->n && lx->s[lx->pos] == '\n') {
        lx->pos++;
        return true;
    }
    return false;
}

static int lex_all(lexer *lx)
{
    bool line_starting = true;
    while (lx->pos < lx->n) {
        /* the next tag opener */
        size_t t = lx->pos;
        const char *s = lx->s;
        while (t + 1 < lx->n &&
               !(s[t] == '{' && (s[t + 1] == '{' || s[t + 1] == '%' || s[t + 1] == '#')))
            t++;
        if (t + 1 >= lx->n) t = lx->n;
        size_t text_end = t;
        char kind = t < lx->n ? s[t + 1] : 0;
        char sign = 0;
        if (kind && t + 2 < lx->n && (s[t + 2] == '-' || s[t + 2] == '+')) sign = s[t + 2];
        if (kind && sign == '-') {
            while (text_end > lx->pos && is_ws(s[text_end - 1]))
                text_end--;
        } else if (kind && sign != '+' && kind != '{') {
            /* lstrip_blocks: only whitespace between the line start and the tag */
            size_t l = text_end;
            while (l > lx->pos && s[l - 1] != '\n')
                l--;
            bool at_line_start = l > lx->pos || line_starting;
            size_t w = l;
            while (w < text_end &&
                   (s[w] == ' ' || s[w] == '\t' || s[w] == '\v' || s[w] == '\f' || s[w] == '\r'))
                w++;
            if (at_line_start && w == text_end && w > l) text_end = l;
        }
        if (text_end > lx->pos && emit(lx, TK_DATA, lx->pos, s + lx->pos, text_end - lx->pos))
            return -1;
        if (!kind) break;
        lx->pos = t + 2 + (sign ? 1 : 0);
        if (kind == '#') {
            size_t e = lx->pos;
            while (e + 1 < lx->n && !(s[e] == '#' && s[e + 1] == '}'))
                e++;
            if (e + 1 >= lx->n) return lx_fail(lx, t, "missing end of comment tag");
            char esign = e > lx->pos && (s[e - 1] == '-' || s[e - 1] == '+') ? s[e - 1] : 0;
            lx->pos = e + 2;
            line_starting = after_tag(lx, esign, true, false);
            continue;
        }
        bool block = kind == '%';
        if (emit(lx, block ? TK_BLOCK_BEGIN : TK_VAR_BEGIN, t, s + t, 2)) return -1;
        char esign = 0;
        if (lex_tag(lx, block, t, &esign)) return -1;
        line_starting = after_tag(lx, esign, block, false);
    }
    return emit(lx, TK_EOF, lx->n, "", 0);
}

int tpl_lex(const char *src, size_t len, tpl_tok **toks, size_t *n_toks, cv_error *err)
{
    lexer lx = {.line = 1, .err = err};
    char *s = malloc(len + 1);
    if (!s) return cv_errorf(err, "chat template: out of memory");
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else {
            s[n++] = src[i];
        }
    }
    if (n && s[n - 1] == '\n') n--;
    s[n] = '\0';
    lx.s = s;
    lx.n = n;
    int rc = lex_all(&lx);
    free(s);
    if (rc) {
        tpl_toks_free(lx.toks, lx.n_toks);
        return -1;
    }
    *toks = lx.toks;
    *n_toks = lx.n_toks;
    return 0;
}

void tpl_toks_free(tpl_tok *toks, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(toks[i].text);
    free(toks);
}

/* Protobuf text format parser: a recursive-descent reader over a tiny
 * tokenizer (identifiers, numbers, strings, punctuation). See pbtxt.h. */
#include "server/pbtxt.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct parser {
    const char *p, *end;
    const char *file;
    int line;
    cv_error *err;
} parser;

static void skip_space(parser *ps)
{
    while (ps->p < ps->end) {
        char c = *ps->p;
        if (c == '\n') {
            ps->line++;
            ps->p++;
        } else if (isspace((unsigned char)c)) {
            ps->p++;
        } else if (c == '#') {
            while (ps->p < ps->end && *ps->p != '\n')
                ps->p++;
        } else {
            break;
        }
    }
}

static int fail(parser *ps, const char *what)
{
    return cv_errorf(ps->err, "%s:%d: %s", ps->file, ps->line, what);
}

static bool is_ident_char(char c)
{
    return isalnum((unsigned char)c) || c == '_' || c == '.' || c == '-' || c == '+';
}

/* Appends one unescaped string literal at ps->p to (*buf, *len). */
static int read_string(parser *ps, char **buf, size_t *len, size_t *cap)
{
    char q = *ps->p++;
    while (ps->p < ps->end && *ps->p != q) {
        char c = *ps->p++;
        if (c == '\n') return fail(ps, "newline inside a string literal");
        if (c == '\\') {
            if (ps->p >= ps->end) break;
            char e = *ps->p++;
            switch (e) {
            case 'n':
                c = '\n';
                break;
            case 't':
                c = '\t';
                break;
            case 'r':
                c = '\r';
                break;
            case '\\':
            case '\'':
            case '"':
            case '?':
                c = e;
                break;
            case 'x': {
                int v = 0, nd = 0;
                while (nd < 2 && ps->p < ps->end && isxdigit((unsigned char)*ps->p)) {
                    char h = *ps->p++;
                    v = v * 16 + (isdigit((unsigned char)h) ? h - '0' : (tolower(h) - 'a' + 10));
                    nd++;
                }
                if (nd == 0) return fail(ps, "bad \\x escape in string literal");
                c = (char)v;
                break;
            }
            default:
                if (e >= '0' && e <= '7') {
                    int v = e - '0', nd = 1;
                    while (nd < 3 && ps->p < ps->end && *ps->p >= '0' && *ps->p <= '7') {
                        v = v * 8 + (*ps->p++ - '0');
                        nd++;
                    }
                    c = (char)v;
                } else {
                    return fail(ps, "unknown escape in string literal");
                }
            }
        }
        if (*len + 2 > *cap) {
            size_t ncap = *cap ? *cap * 2 : 32;
            char *nb = realloc(*buf, ncap);
            if (!nb) return fail(ps, "out of memory");
            *buf = nb;
            *cap = ncap;
        }
        (*buf)[(*len)++] = c;
    }
    if (ps->p >= ps->end) return fail(ps, "unterminated string literal");
    ps->p++;
    return 0;
}

static int parse_fields(parser *ps, cv_pbtxt_msg *msg, char close);

static cv_pbtxt_field *add_field(parser *ps, cv_pbtxt_msg *msg, const char *name, size_t name_len,
                                 int line)
{
    cv_pbtxt_field *nf = realloc(msg->fields, sizeof *nf * (size_t)(msg->n_fields + 1));
    if (!nf) {
        fail(ps, "out of memory");
        return NULL;
    }
    msg->fields = nf;
    cv_pbtxt_field *f = &nf[msg->n_fields];
    memset(f, 0, sizeof *f);
    f->name = strndup(name, name_len);
    if (!f->name) {
        fail(ps, "out of memory");
        return NULL;
    }
    f->line = line;
    msg->n_fields++;
    return f;
}

/* One value after `name:` or inside a list: a message or a scalar. */
static int parse_value(parser *ps, cv_pbtxt_field *f)
{
    skip_space(ps);
    if (ps->p >= ps->end) return fail(ps, "expected a value, found end of file");
    char c = *ps->p;
    if (c == '{' || c == '<') {
        ps->p++;
        f->msg = calloc(1, sizeof *f->msg);
        if (!f->msg) return fail(ps, "out of memory");
        return parse_fields(ps, f->msg, c == '{' ? '}' : '>');
    }
    if (c == '"' || c == '\'') {
        size_t len = 0, cap = 0;
        char *buf = NULL;
        while (ps->p < ps->end && (*ps->p == '"' || *ps->p == '\'')) {
            if (read_string(ps, &buf, &len, &cap) < 0) {
                free(buf);
                return -1;
            }
            skip_space(ps);
        }
        if (!buf && !(buf = malloc(1))) return fail(ps, "out of memory");
        buf[len] = '\0';
        f->value = buf;
        f->value_len = len;
        f->quoted = true;
        return 0;
    }
    const char *s = ps->p;
    while (ps->p < ps->end && is_ident_char(*ps->p))
        ps->p++;
    if (ps->p == s) {
        char m[64];
        snprintf(m, sizeof m, "unexpected character '%c' where a value belongs", c);
        return fail(ps, m);
    }
    f->value = strndup(s, (size_t)(ps->p - s));
    if (!f->value) return fail(ps, "out of memory");
    f->value_len = (size_t)(ps->p - s);
    return 0;
}

static int parse_fields(parser *ps, cv_pbtxt_msg *msg, char close)
{
    for (;;) {
        skip_space(ps);
        if (ps->p >= ps->end) {
            if (close) return fail(ps, "unexpected end of file: missing closing brace");
            return 0;
        }
        if (*ps->p == close && close) {
            ps->p++;
            return 0;
        }
        const char *name = ps->p;
        while (ps->p < ps->end && (isalnum((unsigned char)*ps->p) || *ps->p == '_'))
            ps->p++;
        size_t name_len = (size_t)(ps->p - name);
        if (name_len == 0) {
            char m[64];
            snprintf(m, sizeof m, "expected a field name, found '%c'", *ps->p);
            return fail(ps, m);
        }
        int line = ps->line;
        skip_space(ps);
        bool colon = ps->p < ps->end && *ps->p == ':';
        if (colon) {
            ps->p++;
            skip_space(ps);
        }
        if (ps->p < ps->end && *ps->p == '[') {
            ps->p++;
            skip_space(ps);
            if (ps->p < ps->end && *ps->p == ']') {
                ps->p++;
            } else {
                for (;;) {
                    cv_pbtxt_field *f = add_field(ps, msg, name, name_len, line);
                    if (!f || parse_value(ps, f) < 0) return -1;
                    skip_space(ps);
                    if (ps->p < ps->end && *ps->p == ',') {
                        ps->p++;
                        continue;
                    }
                    if (ps->p < ps->end && *ps->p == ']') {
                        ps->p++;
                        break;
                    }
                    return fail(ps, "expected ',' or ']' in a list");
                }
            }
        } else {
            if (!colon && (ps->p >= ps->end || (*ps->p != '{' && *ps->p != '<'))) {
                char m[320];
                snprintf(m, sizeof m, "expected ':' or '{' after field '%.*s'", (int)name_len,
                         name);
                return fail(ps, m);
            }
            cv_pbtxt_field *f = add_field(ps, msg, name, name_len, line);
            if (!f || parse_value(ps, f) < 0) return -1;
        }
        skip_space(ps);
        if (ps->p < ps->end && (*ps->p == ',' || *ps->p == ';')) ps->p++;
    }
}

cv_pbtxt_msg *cv_pbtxt_parse(const char *text, size_t len, const char *file, cv_error *err)
{
    parser ps = {.p = text, .end = text + len, .file = file, .line = 1, .err = err};
    cv_pbtxt_msg *msg = calloc(1, sizeof *msg);
    if (!msg) {
        cv_errorf(err, "%s: out of memory", file);
        return NULL;
    }
    if (parse_fields(&ps, msg, 0) < 0) {
        cv_pbtxt_free(msg);
        return NULL;
    }
    return msg;
}

void cv_pbtxt_free(cv_pbtxt_msg *msg)
{
    if (!msg) return;
    for (int i = 0; i < msg->n_fields; i++) {
        free(msg->fields[i].name);
        free(msg->fields[i].value);
        cv_pbtxt_free(msg->fields[i].msg);
    }
    free(msg->fields);
    free(msg);
}

/* Grammar front end: vLLM's structured_outputs.grammar in the GBNF dialect
 * of llama.cpp and xgrammar (rules "name ::= body", "root" the start;
 * alternation |, sequences, groups ( ), quantifiers * + ? {m} {m,} {m,n},
 * string literals "..." and character classes [...] with the escapes \n \r
 * \t \\ \" \[ \] \- \^ \xHH \uHHHH \UHHHHHHHH, '.' for any character, and
 * # comments).
 *
 * The automaton of src/structured is finite, so only regular grammars fit:
 * every rule reference is expanded in place into one regex of the SO_REGEX
 * subset, which the regex front end compiles. A rule may refer to itself
 * as the last item of some of its alternatives and the first of others
 * (R ::= a R | R c | b is a* b c*); any other recursion is refused naming
 * the rule. A rule body runs until the next
 * "name ::=", so alternatives and sequences may span lines. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "so_internal.h"

/* Expanded grammars larger than this (in regex bytes) are refused: rules
 * used many times in many places multiply. */
enum { GB_MAX_REGEX = 1 << 22, GB_MAX_REPEAT = 1000 };

typedef struct gb_rule {
    const char *name;
    size_t name_len;
    size_t body, end; /* the body's text span */
    bool expanding;   /* on the current expansion path */
} gb_rule;

typedef struct gb {
    const char *s;
    size_t n;
    gb_rule *rules;
    int n_rules;
    char *out; /* the regex so far */
    size_t len, cap;
    cv_error *err;
    bool failed;
} gb;

static int line_of(const gb *g, size_t pos)
{
    int line = 1;
    for (size_t i = 0; i < pos && i < g->n; i++)
        line += g->s[i] == '\n';
    return line;
}

/* Reports what is wrong at pos (the first report wins). */
static void gb_fail(gb *g, size_t pos, const char *fmt, const char *arg)
{
    if (g->failed) return;
    char what[256];
    snprintf(what, sizeof(what), fmt, arg);
    cv_errorf(g->err, "grammar line %d: %s", line_of(g, pos), what);
    g->failed = true;
}

static void emit(gb *g, const char *text, size_t n)
{
    if (g->failed) return;
    if (g->len + n > GB_MAX_REGEX) {
        cv_errorf(g->err, "grammar is too large once its rules are expanded (over %d bytes)",
                  GB_MAX_REGEX);
        g->failed = true;
        return;
    }
    if (g->len + n + 1 > g->cap) {
        size_t cap = g->cap ? g->cap : 256;
        while (cap < g->len + n + 1)
            cap *= 2;
        char *p = realloc(g->out, cap);
        if (!p) {
            cv_errorf(g->err, "out of memory compiling a grammar");
            g->failed = true;
            return;
        }
        g->out = p;
        g->cap = cap;
    }
    memcpy(g->out + g->len, text, n);
    g->len += n;
    g->out[g->len] = '\0';
}

static void emits(gb *g, const char *text)
{
    emit(g, text, strlen(text));
}

static bool name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

/* Past spaces, newlines and # comments. */
static size_t skip_ws(const gb *g, size_t pos, size_t end)
{
    while (pos < end) {
        char c = g->s[pos];
        if (c == '#') {
            while (pos < end && g->s[pos] != '\n')
                pos++;
        } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            pos++;
        } else {
            break;
        }
    }
    return pos;
}

/* Whether "name ::=" starts at pos; *name_end and *body are set when so. */
static bool rule_head(const gb *g, size_t pos, size_t *name_end, size_t *body)
{
    size_t i = pos;
    while (i < g->n && name_char(g->s[i]))
        i++;
    if (i == pos) return false;
    size_t j = i;
    while (j < g->n && (g->s[j] == ' ' || g->s[j] == '\t'))
        j++;
    if (j + 3 > g->n || memcmp(g->s + j, "::=", 3)) return false;
    *name_end = i;
    *body = j + 3;
    return true;
}

/* Past one lexical item at pos (a literal, a class, a name or one
 * character); reports an unterminated literal or class. */
static size_t skip_item(gb *g, size_t pos)
{
    char c = g->s[pos];
    if (c == '"' || c == '[') {
        char close = c == '"' ? '"' : ']';
        size_t i = pos + 1;
        while (i < g->n && g->s[i] != close && g->s[i] != '\n')
            i += g->s[i] == '\\' && i + 1 < g->n ? 2 : 1;
        if (i >= g->n || g->s[i] != close) {
            gb_fail(g, pos, c == '"' ? "unterminated string literal%s" : "unterminated [%s", "");
            return g->n;
        }
        return i + 1;
    }
    if (name_char(c)) {
        while (pos < g->n && name_char(g->s[pos]))
            pos++;
        return pos;
    }
    return pos + 1;
}

/* Splits the text into rules. */
static void split_rules(gb *g)
{
    size_t pos = skip_ws(g, 0, g->n);
    while (pos < g->n && !g->failed) {
        size_t name_end, body;
        if (!rule_head(g, pos, &name_end, &body)) {
            gb_fail(g, pos, "expected a rule 'name ::= ...'%s", "");
            return;
        }
        for (int i = 0; i < g->n_rules; i++)
            if (g->rules[i].name_len == name_end - pos &&
                !memcmp(g->rules[i].name, g->s + pos, name_end - pos)) {
                char name[128];
                snprintf(name, sizeof(name), "%.*s", (int)(name_end - pos), g->s + pos);
                gb_fail(g, pos, "rule '%s' is defined twice", name);
                return;
            }
        gb_rule *r = realloc(g->rules, (size_t)(g->n_rules + 1) * sizeof(gb_rule));
        if (!r) {
            gb_fail(g, pos, "out of memory%s", "");
            return;
        }
        g->rules = r;
        size_t end = skip_ws(g, body, g->n), unused;
        while (end < g->n && !g->failed && !rule_head(g, end, &unused, &unused))
            end = skip_ws(g, skip_item(g, end), g->n);
        g->rules[g->n_rules++] =
            (gb_rule){.name = g->s + pos, .name_len = name_end - pos, .body = body, .end = end};
        pos = end;
    }
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* One character of a literal or class at *pos (advanced): its code point,
 * or -1 after reporting. */
static long read_char(gb *g, size_t *pos, size_t end)
{
    unsigned char c = (unsigned char)g->s[*pos];
    if (c != '\\') {
        /* UTF-8 as is. */
        int len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
        if (len == 0 || *pos + (size_t)len > end) {
            gb_fail(g, *pos, "invalid UTF-8%s", "");
            return -1;
        }
        long cp = len == 1 ? c : c & (0x7F >> len);
        for (int i = 1; i < len; i++) {
            unsigned char d = (unsigned char)g->s[*pos + (size_t)i];
            if ((d & 0xC0) != 0x80) {
                gb_fail(g, *pos, "invalid UTF-8%s", "");
                return -1;
            }
            cp = cp << 6 | (d & 0x3F);
        }
        *pos += (size_t)len;
        return cp;
    }
    if (*pos + 1 >= end) {
        gb_fail(g, *pos, "trailing backslash%s", "");
        return -1;
    }
    char e = g->s[*pos + 1];
    *pos += 2;
    switch (e) {
    case 'n':
        return '\n';
    case 'r':
        return '\r';
    case 't':
        return '\t';
    case '\\':
    case '"':
    case '[':
    case ']':
    case '-':
    case '^':
        return e;
    case 'x':
    case 'u':
    case 'U': {
        int digits = e == 'x' ? 2 : e == 'u' ? 4 : 8;
        long cp = 0;
        for (int i = 0; i < digits; i++) {
            int h = *pos < end ? hex_value(g->s[*pos]) : -1;
            if (h < 0) {
                gb_fail(g, *pos, "\\%c needs hex digits", e == 'x' ? "x" : e == 'u' ? "u" : "U");
                return -1;
            }
            cp = cp * 16 + h;
            (*pos)++;
        }
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            gb_fail(g, *pos, "escape is not a Unicode scalar value%s", "");
            return -1;
        }
        return cp;
    }
    default: {
        char esc[2] = {e, '\0'};
        gb_fail(g, *pos - 2, "unsupported escape \\%s", esc);
        return -1;
    }
    }
}

/* Code point cp as the regex spells it: letters and digits as they are,
 * other ASCII as \xHH, the rest as UTF-8. */
static void emit_char(gb *g, long cp)
{
    char buf[8];
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9')) {
        buf[0] = (char)cp;
        emit(g, buf, 1);
    } else if (cp < 0x80) {
        snprintf(buf, sizeof(buf), "\\x%02lX", cp);
        emit(g, buf, 4);
    } else {
        int n = cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
        buf[0] = (char)(n == 2 ? 0xC0 | cp >> 6 : n == 3 ? 0xE0 | cp >> 12 : 0xF0 | cp >> 18);
        for (int i = 1; i < n; i++)
            buf[i] = (char)(0x80 | ((cp >> (6 * (n - 1 - i))) & 0x3F));
        emit(g, buf, (size_t)n);
    }
}

static void literal(gb *g, size_t *pos, size_t end)
{
    (*pos)++; /* the opening quote; split_rules saw the closing one */
    emits(g, "(?:");
    while (*pos < end && g->s[*pos] != '"' && !g->failed) {
        long cp = read_char(g, pos, end);
        if (cp >= 0) emit_char(g, cp);
    }
    emits(g, ")");
    (*pos)++;
}

static void char_class(gb *g, size_t *pos, size_t end)
{
    size_t at = (*pos)++;
    emits(g, "[");
    bool negate = *pos < end && g->s[*pos] == '^';
    if (negate) {
        emits(g, "^");
        (*pos)++;
    }
    while (*pos < end && g->s[*pos] != ']' && !g->failed) {
        long lo = read_char(g, pos, end);
        if (lo < 0) return;
        long hi = lo;
        if (*pos + 1 < end && g->s[*pos] == '-' && g->s[*pos + 1] != ']') {
            (*pos)++;
            if ((hi = read_char(g, pos, end)) < 0) return;
            if (hi < lo) gb_fail(g, at, "character range out of order in [...]%s", "");
        }
        /* The regex subset's classes are ASCII ranges plus single
         * non-ASCII members. */
        if ((lo >= 0x80 || hi >= 0x80) && (lo != hi || negate))
            gb_fail(g, at, "%s",
                    negate ? "a negated class with non-ASCII members is not supported"
                           : "a character range with non-ASCII ends is not supported");
        emit_char(g, lo);
        if (hi != lo) {
            emits(g, "-");
            emit_char(g, hi);
        }
    }
    emits(g, "]");
    (*pos)++;
}

static void alternatives(gb *g, size_t *pos, size_t end);
static void sequence(gb *g, size_t *pos, size_t end);

/* A top-level alternative of a rule body, by how it refers to its rule:
 * not at all, once as its last item (right recursion), once as its first
 * (left recursion), or otherwise. */
typedef enum { ALT_PLAIN, ALT_RIGHT, ALT_LEFT, ALT_OTHER } alt_kind;

typedef struct gb_alt {
    size_t start, end; /* the alternative less the self reference */
    alt_kind kind;
} gb_alt;

enum { GB_MAX_ALTS = 64 };

static bool quantifier_at(const gb *g, size_t pos, size_t end)
{
    return pos < end && strchr("*+?{", g->s[pos]) != NULL;
}

/* Splits r's body into its top-level alternatives (at most GB_MAX_ALTS;
 * more are ALT_OTHER) and classifies them; returns how many. */
static int split_alts(gb *g, const gb_rule *r, gb_alt *alts)
{
    int n = 0, depth = 0, n_tok = 0, n_self = 0;
    size_t pos = skip_ws(g, r->body, r->end), start = pos, first_end = pos, last = pos;
    bool first_self = false, last_self = false, after_first_quant = false;
    for (;;) {
        pos = skip_ws(g, pos, r->end);
        if (pos >= r->end || (depth == 0 && g->s[pos] == '|')) {
            if (n == GB_MAX_ALTS) return n;
            gb_alt *a = &alts[n++];
            *a = (gb_alt){.start = start, .end = pos, .kind = ALT_OTHER};
            if (n_self == 0) {
                a->kind = ALT_PLAIN;
            } else if (n_self == 1 && n_tok > 1 && last_self) {
                a->kind = ALT_RIGHT;
                a->end = last;
            } else if (n_self == 1 && n_tok > 1 && first_self && !after_first_quant) {
                a->kind = ALT_LEFT;
                a->start = first_end;
            }
            if (pos >= r->end || g->failed) return n;
            start = ++pos;
            n_tok = n_self = 0;
            first_self = last_self = false;
            continue;
        }
        size_t e = skip_item(g, pos);
        if (g->failed) return n;
        char c = g->s[pos];
        depth += c == '(' ? 1 : c == ')' ? -1 : 0;
        bool self = name_char(c) && e - pos == r->name_len && !memcmp(g->s + pos, r->name, e - pos);
        n_self += self;
        if (n_tok == 0) {
            first_self = self;
            first_end = e;
            after_first_quant = quantifier_at(g, skip_ws(g, e, r->end), r->end);
        }
        last_self = self;
        last = pos;
        n_tok++;
        pos = e;
    }
}

/* Emits the alternatives of kind k among alts as one group, then suffix;
 * nothing when there are none. */
static void emit_alts(gb *g, const gb_alt *alts, int n, alt_kind k, const char *suffix)
{
    bool first = true;
    for (int i = 0; i < n && !g->failed; i++) {
        if (alts[i].kind != k) continue;
        emits(g, first ? "(?:" : "|");
        first = false;
        size_t pos = alts[i].start;
        sequence(g, &pos, alts[i].end);
        if (!g->failed && pos < alts[i].end) gb_fail(g, pos, "unexpected '%s'", ")");
    }
    if (!first) {
        emits(g, ")");
        emits(g, suffix);
    }
}

/* A rule whose alternatives refer to it only as their last item (R ::= a
 * R | b) or only as their first (R ::= R a | b), or both kinds, is
 * regular: (rights)* (plains) (lefts)*. Returns false when r is not of
 * that form (then expanding it finds the recursion). */
static bool expand_linear(gb *g, gb_rule *r)
{
    gb_alt alts[GB_MAX_ALTS];
    int n = split_alts(g, r, alts), n_plain = 0, n_rec = 0;
    for (int i = 0; i < n; i++) {
        if (alts[i].kind == ALT_OTHER) return false;
        n_plain += alts[i].kind == ALT_PLAIN;
        n_rec += alts[i].kind != ALT_PLAIN;
    }
    if (g->failed || n_rec == 0 || n_plain == 0) return false;
    r->expanding = true;
    emits(g, "(?:");
    emit_alts(g, alts, n, ALT_RIGHT, "*");
    emit_alts(g, alts, n, ALT_PLAIN, "");
    emit_alts(g, alts, n, ALT_LEFT, "*");
    emits(g, ")");
    r->expanding = false;
    return true;
}

static void expand_rule(gb *g, size_t at, const char *name, size_t name_len)
{
    char nm[128];
    snprintf(nm, sizeof(nm), "%.*s", (int)(name_len < 100 ? name_len : 100), name);
    for (int i = 0; i < g->n_rules; i++) {
        gb_rule *r = &g->rules[i];
        if (r->name_len != name_len || memcmp(r->name, name, name_len)) continue;
        if (r->expanding) {
            gb_fail(g, at,
                    "rule '%s' is recursive other than as the first or last item of its own "
                    "alternatives; only regular grammars are supported",
                    nm);
            return;
        }
        if (expand_linear(g, r)) return;
        r->expanding = true;
        size_t pos = r->body;
        emits(g, "(?:");
        alternatives(g, &pos, r->end);
        if (!g->failed && pos < r->end) gb_fail(g, pos, "unexpected '%s'", ")");
        emits(g, ")");
        g->rules[i].expanding = false;
        return;
    }
    gb_fail(g, at, "rule '%s' is not defined", nm);
}

/* {m}, {m,}, {m,n} at *pos (on the '{'), copied after checking. */
static void counted(gb *g, size_t *pos, size_t end)
{
    size_t at = *pos, i = *pos + 1;
    long m = 0, n = -2;
    bool digits = false;
    while (i < end && g->s[i] >= '0' && g->s[i] <= '9' && m <= GB_MAX_REPEAT) {
        m = m * 10 + (g->s[i++] - '0');
        digits = true;
    }
    if (i < end && g->s[i] == ',') {
        i++;
        n = -1;
        while (i < end && g->s[i] >= '0' && g->s[i] <= '9' && n <= GB_MAX_REPEAT)
            n = (n < 0 ? 0 : n * 10) + (g->s[i++] - '0');
    }
    if (!digits || i >= end || g->s[i] != '}' || m > GB_MAX_REPEAT || n > GB_MAX_REPEAT ||
        (n >= 0 && n < m)) {
        gb_fail(g, at, "bad repeat {m,n} (at most %s, m <= n)", "1000");
        return;
    }
    emit(g, g->s + at, i + 1 - at);
    *pos = i + 1;
}

/* Items up to '|', ')' or the end of the body. */
static void sequence(gb *g, size_t *pos, size_t end)
{
    for (*pos = skip_ws(g, *pos, end); *pos < end && !g->failed; *pos = skip_ws(g, *pos, end)) {
        char c = g->s[*pos];
        size_t at = *pos;
        if (c == '|' || c == ')') return;
        if (c == '"') {
            literal(g, pos, end);
        } else if (c == '[') {
            char_class(g, pos, end);
        } else if (c == '.') {
            emits(g, "(?:.|\\n)");
            (*pos)++;
        } else if (c == '(') {
            (*pos)++;
            emits(g, "(?:");
            alternatives(g, pos, end);
            if (*pos >= end || g->s[*pos] != ')') {
                gb_fail(g, at, "missing )%s", "");
                return;
            }
            emits(g, ")");
            (*pos)++;
        } else if (name_char(c)) {
            size_t e = *pos;
            while (e < end && name_char(g->s[e]))
                e++;
            expand_rule(g, at, g->s + at, e - at);
            *pos = e;
        } else {
            char what[2] = {c, '\0'};
            gb_fail(g, at, "unexpected '%s'", what);
            return;
        }
        /* Quantifiers bind to the item just emitted (a group, so one). */
        while (*pos < end && !g->failed) {
            char q = g->s[*pos];
            if (q == '*' || q == '+' || q == '?') {
                emit(g, &q, 1);
                (*pos)++;
                /* Two in a row would be a lazy or possessive regex: not GBNF. */
                if (*pos < end && strchr("*+?{", g->s[*pos])) {
                    gb_fail(g, *pos, "a quantifier cannot follow a quantifier%s", "");
                    return;
                }
            } else if (q == '{') {
                counted(g, pos, end);
                if (*pos < end && strchr("*+?{", g->s[*pos]))
                    gb_fail(g, *pos, "a quantifier cannot follow a quantifier%s", "");
            } else {
                break;
            }
        }
    }
}

static void alternatives(gb *g, size_t *pos, size_t end)
{
    sequence(g, pos, end);
    while (!g->failed && *pos < end && g->s[*pos] == '|') {
        (*pos)++;
        emits(g, "|");
        sequence(g, pos, end);
    }
}

int so_gbnf_compile(so_nfa *a, const char *text, size_t n, so_frag *out, cv_error *err)
{
    gb g = {.s = text, .n = n, .err = err};
    split_rules(&g);
    if (!g.failed && g.n_rules == 0) gb_fail(&g, 0, "no rules%s", "");
    if (!g.failed) {
        bool have_root = false;
        for (int i = 0; i < g.n_rules; i++)
            have_root =
                have_root || (g.rules[i].name_len == 4 && !memcmp(g.rules[i].name, "root", 4));
        if (!have_root) {
            cv_errorf(err, "grammar has no rule 'root' (where generation starts)");
            g.failed = true;
        }
    }
    if (!g.failed) expand_rule(&g, 0, "root", 4);
    int rc = 0;
    if (g.failed) {
        rc = -1;
    } else {
        cv_error rerr;
        if (so_regex_compile(a, g.out ? g.out : "", g.len, out, &rerr) < 0)
            rc = cv_errorf(err, "grammar: %s (in the regex it expands to)", rerr.msg);
    }
    free(g.rules);
    free(g.out);
    return rc;
}

/* The byte NFA (Thompson fragments) and the regex front end that builds it.
 * A regex is parsed by recursive descent straight into fragments; a counted
 * repeat {m,n} re-parses its atom's text once per copy, so no fragment ever
 * needs cloning. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "so_internal.h"

/* ---- NFA and fragment builders ------------------------------------------ */

void so_nfa_free(so_nfa *a)
{
    free(a->first);
    free(a->edges);
    memset(a, 0, sizeof(*a));
}

int32_t so_nfa_node(so_nfa *a)
{
    if (a->failed) return 0;
    if (a->n_nodes >= SO_MAX_NODES) {
        a->failed = true;
        return 0;
    }
    if (a->n_nodes == a->cap_nodes) {
        int32_t cap = a->cap_nodes ? 2 * a->cap_nodes : 256;
        int32_t *f = realloc(a->first, (size_t)cap * sizeof(int32_t));
        if (!f) {
            a->failed = true;
            return 0;
        }
        a->first = f;
        a->cap_nodes = cap;
    }
    a->first[a->n_nodes] = -1;
    return a->n_nodes++;
}

static void add_edge(so_nfa *a, int32_t from, so_edge e)
{
    if (a->failed) return;
    if (a->n_edges == a->cap_edges) {
        int32_t cap = a->cap_edges ? 2 * a->cap_edges : 512;
        so_edge *p = realloc(a->edges, (size_t)cap * sizeof(so_edge));
        if (!p) {
            a->failed = true;
            return;
        }
        a->edges = p;
        a->cap_edges = cap;
    }
    e.next = a->first[from];
    a->edges[a->n_edges] = e;
    a->first[from] = a->n_edges++;
}

void so_nfa_eps(so_nfa *a, int32_t from, int32_t to)
{
    add_edge(a, from, (so_edge){.to = to, .eps = true});
}

void so_nfa_range(so_nfa *a, int32_t from, int32_t to, uint8_t lo, uint8_t hi)
{
    add_edge(a, from, (so_edge){.to = to, .lo = lo, .hi = hi});
}

so_frag so_frag_empty(so_nfa *a)
{
    int32_t s = so_nfa_node(a);
    return (so_frag){s, s};
}

so_frag so_frag_lit(so_nfa *a, const char *s, size_t n)
{
    so_frag f = so_frag_empty(a);
    for (size_t i = 0; i < n; i++) {
        int32_t next = so_nfa_node(a);
        so_nfa_range(a, f.end, next, (uint8_t)s[i], (uint8_t)s[i]);
        f.end = next;
    }
    return f;
}

so_frag so_frag_cat(so_nfa *a, so_frag x, so_frag y)
{
    so_nfa_eps(a, x.end, y.start);
    return (so_frag){x.start, y.end};
}

so_frag so_frag_alt(so_nfa *a, so_frag x, so_frag y)
{
    so_frag f = {so_nfa_node(a), so_nfa_node(a)};
    so_nfa_eps(a, f.start, x.start);
    so_nfa_eps(a, f.start, y.start);
    so_nfa_eps(a, x.end, f.end);
    so_nfa_eps(a, y.end, f.end);
    return f;
}

so_frag so_frag_opt(so_nfa *a, so_frag x)
{
    so_frag f = {so_nfa_node(a), so_nfa_node(a)};
    so_nfa_eps(a, f.start, x.start);
    so_nfa_eps(a, f.start, f.end);
    so_nfa_eps(a, x.end, f.end);
    return f;
}

so_frag so_frag_star(so_nfa *a, so_frag x)
{
    so_frag f = {so_nfa_node(a), so_nfa_node(a)};
    so_nfa_eps(a, f.start, x.start);
    so_nfa_eps(a, f.start, f.end);
    so_nfa_eps(a, x.end, x.start);
    so_nfa_eps(a, x.end, f.end);
    return f;
}

so_frag so_frag_plus(so_nfa *a, so_frag x)
{
    int32_t end = so_nfa_node(a);
    so_nfa_eps(a, x.end, x.start);
    so_nfa_eps(a, x.end, end);
    return (so_frag){x.start, end};
}

/* Continuation bytes 80-BF, n of them, from `from` to `to`. */
static void cont_bytes(so_nfa *a, int32_t from, int32_t to, int n)
{
    for (int i = 0; i < n; i++) {
        int32_t next = i == n - 1 ? to : so_nfa_node(a);
        so_nfa_range(a, from, next, 0x80, 0xBF);
        from = next;
    }
}

so_frag so_frag_char(so_nfa *a, const bool ascii[128], bool multibyte)
{
    so_frag f = {so_nfa_node(a), so_nfa_node(a)};
    for (int b = 0; b < 128; b++) {
        if (!ascii[b]) continue;
        int e = b;
        while (e + 1 < 128 && ascii[e + 1])
            e++;
        so_nfa_range(a, f.start, f.end, (uint8_t)b, (uint8_t)e);
        b = e;
    }
    if (!multibyte) return f;
    /* RFC 3629 well-formed sequences (Unicode Table 3-7). */
    static const struct {
        uint8_t lo, hi, lo2, hi2;
        int n_more;
    } seq[] = {
        {0xC2, 0xDF, 0x80, 0xBF, 0}, {0xE0, 0xE0, 0xA0, 0xBF, 1}, {0xE1, 0xEC, 0x80, 0xBF, 1},
        {0xED, 0xED, 0x80, 0x9F, 1}, {0xEE, 0xEF, 0x80, 0xBF, 1}, {0xF0, 0xF0, 0x90, 0xBF, 2},
        {0xF1, 0xF3, 0x80, 0xBF, 2}, {0xF4, 0xF4, 0x80, 0x8F, 2},
    };
    for (size_t i = 0; i < sizeof(seq) / sizeof(seq[0]); i++) {
        int32_t n1 = so_nfa_node(a);
        so_nfa_range(a, f.start, n1, seq[i].lo, seq[i].hi);
        if (seq[i].n_more == 0) {
            so_nfa_range(a, n1, f.end, seq[i].lo2, seq[i].hi2);
        } else {
            int32_t n2 = so_nfa_node(a);
            so_nfa_range(a, n1, n2, seq[i].lo2, seq[i].hi2);
            cont_bytes(a, n2, f.end, seq[i].n_more);
        }
    }
    return f;
}

/* ---- Regex parser -------------------------------------------------------- */

typedef struct rx {
    so_nfa *a;
    const char *s;
    size_t n, pos;
    int depth;
    cv_error *err;
    bool failed;
} rx;

static int rx_fail(rx *p, const char *what)
{
    if (!p->failed) cv_errorf(p->err, "invalid regex at position %zu: %s", p->pos, what);
    p->failed = true;
    return -1;
}

static bool rx_eof(const rx *p)
{
    return p->pos >= p->n;
}

static so_frag rx_alt(rx *p);

static void set_range(bool set[128], int lo, int hi)
{
    for (int c = lo; c <= hi; c++)
        set[c] = true;
}

/* \d \w \s and their negations into set; returns false when c is not one. */
static bool class_escape(char c, bool set[128])
{
    bool tmp[128] = {false};
    char lower = (char)(c | 0x20);
    if (lower == 'd') {
        set_range(tmp, '0', '9');
    } else if (lower == 'w') {
        set_range(tmp, '0', '9');
        set_range(tmp, 'a', 'z');
        set_range(tmp, 'A', 'Z');
        tmp['_'] = true;
    } else if (lower == 's') {
        set_range(tmp, '\t', '\r');
        tmp[' '] = true;
    } else {
        return false;
    }
    bool negate = c != lower;
    for (int i = 0; i < 128; i++)
        if (tmp[i] != negate) set[i] = true;
    return true;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A single-character escape after '\' (the pos is on the character);
 * returns the byte, or -1 after reporting. */
static int rx_escape_char(rx *p)
{
    char c = p->s[p->pos++];
    switch (c) {
    case 'n':
        return '\n';
    case 't':
        return '\t';
    case 'r':
        return '\r';
    case 'f':
        return '\f';
    case 'v':
        return '\v';
    case 'x': {
        if (p->pos + 2 > p->n) return rx_fail(p, "\\x needs two hex digits");
        int h = hex_digit(p->s[p->pos]), l = hex_digit(p->s[p->pos + 1]);
        if (h < 0 || l < 0) return rx_fail(p, "\\x needs two hex digits");
        p->pos += 2;
        if (h * 16 + l > 127) return rx_fail(p, "\\x above 7F is not supported");
        return h * 16 + l;
    }
    default:
        if ((unsigned char)c < 128 &&
            !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')))
            return (unsigned char)c;
        p->pos--;
        char msg[64];
        snprintf(msg, sizeof(msg), "unsupported escape \\%c", c);
        return rx_fail(p, msg);
    }
}

/* Length of the UTF-8 sequence starting at s[0] (1 for ASCII), 0 if bad. */
static size_t utf8_len(const char *s, size_t n)
{
    unsigned char c = (unsigned char)s[0];
    size_t len = c < 0x80                 ? 1
                 : c >= 0xC2 && c <= 0xDF ? 2
                 : c >= 0xE0 && c <= 0xEF ? 3
                 : c >= 0xF0 && c <= 0xF4 ? 4
                                          : 0;
    if (len == 0 || len > n) return 0;
    for (size_t i = 1; i < len; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) return 0;
    return len;
}

/* [...] after the '['. Non-ASCII members are alternatives of their own. */
static so_frag rx_class(rx *p)
{
    bool set[128] = {false};
    bool negate = false;
    so_frag extra = {-1, -1};
    if (!rx_eof(p) && p->s[p->pos] == '^') {
        negate = true;
        p->pos++;
    }
    bool first = true;
    while (!rx_eof(p) && (p->s[p->pos] != ']' || first)) {
        first = false;
        int lo;
        if (p->s[p->pos] == '\\') {
            p->pos++;
            if (rx_eof(p)) break;
            if (class_escape(p->s[p->pos], set)) {
                p->pos++;
                continue;
            }
            if ((lo = rx_escape_char(p)) < 0) return so_frag_empty(p->a);
        } else if ((unsigned char)p->s[p->pos] >= 0x80) {
            size_t len = utf8_len(p->s + p->pos, p->n - p->pos);
            if (len == 0) {
                rx_fail(p, "invalid UTF-8");
                return so_frag_empty(p->a);
            }
            if (negate) {
                rx_fail(p, "a negated class with non-ASCII members is not supported");
                return so_frag_empty(p->a);
            }
            so_frag lit = so_frag_lit(p->a, p->s + p->pos, len);
            extra = extra.start < 0 ? lit : so_frag_alt(p->a, extra, lit);
            p->pos += len;
            if (!rx_eof(p) && p->s[p->pos] == '-' && p->pos + 1 < p->n && p->s[p->pos + 1] != ']') {
                rx_fail(p, "a range of non-ASCII characters is not supported");
                return so_frag_empty(p->a);
            }
            continue;
        } else {
            lo = (unsigned char)p->s[p->pos++];
        }
        int hi = lo;
        if (p->pos + 1 < p->n && p->s[p->pos] == '-' && p->s[p->pos + 1] != ']') {
            p->pos++;
            if (p->s[p->pos] == '\\') {
                p->pos++;
                if (rx_eof(p) || (hi = rx_escape_char(p)) < 0) {
                    rx_fail(p, "bad range end");
                    return so_frag_empty(p->a);
                }
            } else if ((unsigned char)p->s[p->pos] >= 0x80) {
                rx_fail(p, "a range of non-ASCII characters is not supported");
                return so_frag_empty(p->a);
            } else {
                hi = (unsigned char)p->s[p->pos++];
            }
            if (hi < lo) {
                rx_fail(p, "range out of order");
                return so_frag_empty(p->a);
            }
        }
        set_range(set, lo, hi);
    }
    if (rx_eof(p)) {
        rx_fail(p, "missing ]");
        return so_frag_empty(p->a);
    }
    p->pos++;
    if (negate)
        for (int i = 0; i < 128; i++)
            set[i] = !set[i];
    so_frag f = so_frag_char(p->a, set, negate);
    return extra.start < 0 ? f : so_frag_alt(p->a, f, extra);
}

static so_frag rx_atom(rx *p)
{
    char c = p->s[p->pos];
    if (c == '(') {
        p->pos++;
        if (p->pos + 1 < p->n && p->s[p->pos] == '?') {
            if (p->s[p->pos + 1] != ':') {
                rx_fail(p, "only (?:...) groups are supported (no lookaround or flags)");
                return so_frag_empty(p->a);
            }
            p->pos += 2;
        }
        if (++p->depth > 200) {
            rx_fail(p, "groups nested too deep");
            return so_frag_empty(p->a);
        }
        so_frag f = rx_alt(p);
        p->depth--;
        if (rx_eof(p) || p->s[p->pos] != ')') {
            rx_fail(p, "missing )");
            return f;
        }
        p->pos++;
        return f;
    }
    if (c == '[') {
        p->pos++;
        return rx_class(p);
    }
    if (c == '.') {
        p->pos++;
        bool set[128];
        for (int i = 0; i < 128; i++)
            set[i] = i != '\n';
        return so_frag_char(p->a, set, true);
    }
    if (c == '\\') {
        p->pos++;
        if (rx_eof(p)) {
            rx_fail(p, "trailing backslash");
            return so_frag_empty(p->a);
        }
        bool set[128] = {false};
        char e = p->s[p->pos];
        if (class_escape(e, set)) {
            p->pos++;
            return so_frag_char(p->a, set, e >= 'A' && e <= 'Z');
        }
        if (e >= '1' && e <= '9') {
            rx_fail(p, "backreferences are not supported");
            return so_frag_empty(p->a);
        }
        int b = rx_escape_char(p);
        if (b < 0) return so_frag_empty(p->a);
        char ch = (char)b;
        return so_frag_lit(p->a, &ch, 1);
    }
    if (c == '*' || c == '+' || c == '?' || c == '{') {
        rx_fail(p, "nothing to repeat");
        return so_frag_empty(p->a);
    }
    size_t len = utf8_len(p->s + p->pos, p->n - p->pos);
    if (len == 0) {
        rx_fail(p, "invalid UTF-8");
        return so_frag_empty(p->a);
    }
    so_frag f = so_frag_lit(p->a, p->s + p->pos, len);
    p->pos += len;
    return f;
}

/* {m}, {m,}, {m,n} at pos (on the '{'); false when it is not a counted
 * repeat (then '{' is a literal, as in Python). */
static bool rx_counts(rx *p, int *m, int *n)
{
    size_t i = p->pos + 1;
    long a = 0, b = -1;
    size_t d0 = i;
    while (i < p->n && p->s[i] >= '0' && p->s[i] <= '9' && a <= 100000)
        a = a * 10 + (p->s[i++] - '0');
    if (i == d0) return false;
    if (i < p->n && p->s[i] == ',') {
        i++;
        size_t d1 = i;
        b = 0;
        while (i < p->n && p->s[i] >= '0' && p->s[i] <= '9' && b <= 100000)
            b = b * 10 + (p->s[i++] - '0');
        if (i == d1) b = -1;
    } else {
        b = a;
    }
    if (i >= p->n || p->s[i] != '}') return false;
    p->pos = i + 1;
    *m = (int)a;
    *n = (int)b;
    return true;
}

static bool is_quantifier(const rx *p)
{
    int m, n;
    rx probe = *p;
    char c = p->s[p->pos];
    return c == '*' || c == '+' || c == '?' || (c == '{' && rx_counts(&probe, &m, &n));
}

/* x{m,n}: m copies, then n - m optional ones (n < 0: a loop). Copies after
 * the first re-parse the atom's text at atom_at. */
static so_frag rx_counted(rx *p, so_frag f, size_t atom_at, int m, int n)
{
    size_t after = p->pos;
    so_frag out = so_frag_empty(p->a);
    int copies = n < 0 ? (m > 0 ? m : 1) : n;
    for (int k = 0; k < copies && !p->failed; k++) {
        so_frag x = f;
        if (k > 0) {
            p->pos = atom_at;
            x = rx_atom(p);
        }
        if (n >= 0 && k >= m) x = so_frag_opt(p->a, x);
        if (n < 0 && k == copies - 1) x = m > 0 ? so_frag_plus(p->a, x) : so_frag_star(p->a, x);
        out = so_frag_cat(p->a, out, x);
    }
    p->pos = after;
    return n == 0 ? so_frag_empty(p->a) : out;
}

static so_frag rx_repeat(rx *p)
{
    size_t atom_at = p->pos;
    so_frag f = rx_atom(p);
    if (p->failed || rx_eof(p) || !is_quantifier(p)) return f;
    char c = p->s[p->pos];
    int m, n;
    if (c == '{') {
        rx_counts(p, &m, &n);
        if ((n >= 0 && n < m) || m > 1000 || n > 1000) {
            rx_fail(p, "bad repeat count (at most 1000, min <= max)");
            return f;
        }
        f = rx_counted(p, f, atom_at, m, n);
    } else {
        p->pos++;
        f = c == '*'   ? so_frag_star(p->a, f)
            : c == '+' ? so_frag_plus(p->a, f)
                       : so_frag_opt(p->a, f);
    }
    /* Lazy and possessive suffixes change nothing about the language. */
    if (!rx_eof(p) && (p->s[p->pos] == '?' || p->s[p->pos] == '+')) p->pos++;
    if (!rx_eof(p) && is_quantifier(p)) rx_fail(p, "multiple repeat");
    return f;
}

static so_frag rx_concat(rx *p)
{
    so_frag f = so_frag_empty(p->a);
    while (!p->failed && !rx_eof(p) && p->s[p->pos] != '|' && p->s[p->pos] != ')') {
        if (p->s[p->pos] == '^' && p->pos == 0) {
            p->pos++;
            continue;
        }
        if (p->s[p->pos] == '$' && p->pos + 1 == p->n) {
            p->pos++;
            continue;
        }
        if (p->s[p->pos] == '^' || p->s[p->pos] == '$') {
            rx_fail(p, "anchors are only supported at the ends");
            break;
        }
        f = so_frag_cat(p->a, f, rx_repeat(p));
    }
    return f;
}

static so_frag rx_alt(rx *p)
{
    so_frag f = rx_concat(p);
    while (!p->failed && !rx_eof(p) && p->s[p->pos] == '|') {
        p->pos++;
        f = so_frag_alt(p->a, f, rx_concat(p));
    }
    return f;
}

int so_regex_compile(so_nfa *a, const char *re, size_t n, so_frag *out, cv_error *err)
{
    rx p = {.a = a, .s = re, .n = n, .err = err};
    *out = rx_alt(&p);
    if (!p.failed && !rx_eof(&p)) rx_fail(&p, "unbalanced )");
    if (p.failed) return -1;
    if (a->failed)
        return cv_errorf(err, "regex is too large (more than %d automaton states)", SO_MAX_NODES);
    return 0;
}

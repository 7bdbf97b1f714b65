/* The chat-template parser, expressions: jinja2's grammar and operator
 * precedence (parser.py), from conditional expressions down to literals,
 * with filters and tests; unknown filters and tests are compile errors
 * naming the line, as in jinja2. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template/template_parse.h"

int tp_fail(tpl_parser *p, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return cv_errorf(p->err, "chat template line %d: %s", tp_cur(p)->line, msg);
}

const char *tp_tok_desc(tpl_tok *t)
{
    switch (t->kind) {
    case TK_EOF:
        return "end of template";
    case TK_BLOCK_END:
        return "end of statement block";
    case TK_VAR_END:
        return "end of print statement";
    case TK_DATA:
        return "template data";
    default:
        return t->text;
    }
}

int tp_expect_op(tpl_parser *p, const char *op)
{
    if (tp_accept_op(p, op)) return 0;
    return tp_fail(p, "expected '%s', got '%s'", op, tp_tok_desc(tp_cur(p)));
}

int tp_expect_block_end(tpl_parser *p)
{
    if (tp_cur(p)->kind == TK_BLOCK_END) {
        p->i++;
        return 0;
    }
    return tp_fail(p, "expected end of statement block, got '%s'", tp_tok_desc(tp_cur(p)));
}

char *tp_take_name(tpl_parser *p)
{
    if (tp_cur(p)->kind != TK_NAME) {
        tp_fail(p, "expected a name, got '%s'", tp_tok_desc(tp_cur(p)));
        return NULL;
    }
    char *s = strdup(tp_cur(p)->text);
    if (!s) cv_errorf(p->err, "chat template: out of memory");
    p->i++;
    return s;
}

tpl_node *tp_mk(tpl_parser *p, tpl_node_kind kind, int line)
{
    tpl_node *n = calloc(1, sizeof *n);
    if (!n) {
        cv_errorf(p->err, "chat template: out of memory");
        return NULL;
    }
    n->kind = kind;
    n->line = line;
    return n;
}

int tp_push(tpl_parser *p, tpl_nodes *v, tpl_node *n)
{
    if (!n) return -1;
    tpl_node **nv = realloc(v->v, (v->n + 1) * sizeof *nv);
    if (!nv) {
        tpl_node_free(n);
        return cv_errorf(p->err, "chat template: out of memory");
    }
    v->v = nv;
    v->v[v->n++] = n;
    return 0;
}

int tp_push_name(tpl_parser *p, char ***names, size_t *n, char *name)
{
    if (!name) return -1;
    char **nv = realloc(*names, (*n + 1) * sizeof *nv);
    if (!nv) {
        free(name);
        return cv_errorf(p->err, "chat template: out of memory");
    }
    *names = nv;
    nv[(*n)++] = name;
    return 0;
}

/* ---- expressions ------------------------------------------------------- */

static tpl_node *p_unary(tpl_parser *p, bool with_filter);

bool tp_enter(tpl_parser *p)
{
    if (++p->depth > TPL_MAX_NESTING) {
        tp_fail(p, "nested too deeply (more than %d levels)", TPL_MAX_NESTING);
        return false;
    }
    return true;
}

/* Records n's height and refuses trees deeper than TPL_MAX_HEIGHT: chains
 * such as 1+1+1+... or x|f|f|f... nest without brackets, and evaluating or
 * freeing them recurses once per level. Frees n on failure. */
static tpl_node *seal(tpl_parser *p, tpl_node *n)
{
    if (!n) return NULL;
    const tpl_node *kids[4] = {n->a, n->b, n->c, n->d};
    int h = 0;
    for (int i = 0; i < 4; i++)
        if (kids[i] && kids[i]->height > h) h = kids[i]->height;
    for (size_t i = 0; i < n->args.n; i++)
        if (n->args.v[i] && n->args.v[i]->height > h) h = n->args.v[i]->height;
    n->height = h + 1;
    if (n->height > TPL_MAX_HEIGHT) {
        tp_fail(p, "expression nested too deeply (more than %d levels)", TPL_MAX_HEIGHT);
        tpl_node_free(n);
        return NULL;
    }
    return n;
}

static tpl_node *binary(tpl_parser *p, tpl_node_kind kind, int op, tpl_node *a, tpl_node *b,
                        int line)
{
    if (!a || !b) {
        tpl_node_free(a);
        tpl_node_free(b);
        return NULL;
    }
    tpl_node *n = tp_mk(p, kind, line);
    if (!n) {
        tpl_node_free(a);
        tpl_node_free(b);
        return NULL;
    }
    n->op = op;
    n->a = a;
    n->b = b;
    return seal(p, n);
}

/* Call arguments after '(' up to ')': positional and keyword. */
int tp_call_args(tpl_parser *p, tpl_node *n)
{
    if (tp_expect_op(p, "(")) return -1;
    while (!tp_accept_op(p, ")")) {
        if (n->args.n && tp_expect_op(p, ",")) return -1;
        if (tp_accept_op(p, ")")) break;
        char *kw = NULL;
        if (tp_cur(p)->kind == TK_NAME && p->t[p->i + 1].kind == TK_OP &&
            !strcmp(p->t[p->i + 1].text, "=")) {
            kw = tp_take_name(p);
            if (!kw) return -1;
            p->i++;
        } else if (n->argnames) {
            for (size_t i = 0; i < n->args.n; i++)
                if (n->argnames[i])
                    return tp_fail(p, "positional argument follows keyword argument");
        }
        char **nn = realloc(n->argnames, (n->args.n + 1) * sizeof *nn);
        if (!nn) {
            free(kw);
            return cv_errorf(p->err, "chat template: out of memory");
        }
        n->argnames = nn;
        nn[n->args.n] = kw;
        if (tp_push(p, &n->args, tp_expr(p, true))) {
            free(kw);
            return -1;
        }
    }
    return 0;
}

static tpl_node *p_primary(tpl_parser *p)
{
    tpl_tok *t = tp_cur(p);
    int line = t->line;
    tpl_node *n = NULL;
    if (t->kind == TK_NAME) {
        const char *s = t->text;
        json_t *c = NULL;
        if (!strcmp(s, "true") || !strcmp(s, "True"))
            c = json_true();
        else if (!strcmp(s, "false") || !strcmp(s, "False"))
            c = json_false();
        else if (!strcmp(s, "none") || !strcmp(s, "None"))
            c = json_null();
        if (c) {
            n = tp_mk(p, N_CONST, line);
            if (n) n->value = c;
            p->i++;
            return n;
        }
        n = tp_mk(p, N_NAME, line);
        if (n && !(n->name = tp_take_name(p))) {
            tpl_node_free(n);
            return NULL;
        }
        return n;
    }
    if (t->kind == TK_STRING) {
        tpl_buf b = {0};
        while (tp_cur(p)->kind == TK_STRING) {
            tpl_buf_put(&b, tp_cur(p)->text, tp_cur(p)->len);
            p->i++;
        }
        n = tp_mk(p, N_CONST, line);
        if (n) n->value = json_stringn_nocheck(b.p ? b.p : "", b.len);
        free(b.p);
        if (n && !n->value) {
            tpl_node_free(n);
            cv_errorf(p->err, "chat template: out of memory");
            return NULL;
        }
        return n;
    }
    if (t->kind == TK_INT || t->kind == TK_FLOAT) {
        n = tp_mk(p, N_CONST, line);
        if (n) n->value = t->kind == TK_INT ? json_integer(t->ival) : json_real(t->fval);
        if (n && !n->value) {
            /* jansson refuses inf/nan reals */
            tpl_node_free(n);
            tp_fail(p, "number literal out of range");
            return NULL;
        }
        p->i++;
        return n;
    }
    if (tp_accept_op(p, "(")) {
        n = tp_tuple(p, true, true);
        if (n && tp_expect_op(p, ")")) {
            tpl_node_free(n);
            return NULL;
        }
        return n;
    }
    if (tp_accept_op(p, "[")) {
        n = tp_mk(p, N_LIST, line);
        while (n && !tp_accept_op(p, "]")) {
            if (n->args.n && tp_expect_op(p, ",")) goto fail;
            if (tp_accept_op(p, "]")) break;
            if (tp_push(p, &n->args, tp_expr(p, true))) goto fail;
        }
        return seal(p, n);
    }
    if (tp_accept_op(p, "{")) {
        n = tp_mk(p, N_DICT, line);
        while (n && !tp_accept_op(p, "}")) {
            if (n->args.n && tp_expect_op(p, ",")) goto fail;
            if (tp_accept_op(p, "}")) break;
            if (tp_push(p, &n->args, tp_expr(p, true)) || tp_expect_op(p, ":") ||
                tp_push(p, &n->args, tp_expr(p, true)))
                goto fail;
        }
        return seal(p, n);
    }
    tp_fail(p, "unexpected '%s'", tp_tok_desc(t));
    return NULL;
fail:
    tpl_node_free(n);
    return NULL;
}

static tpl_node *p_subscript(tpl_parser *p, tpl_node *obj)
{
    int line = tp_cur(p)->line;
    if (tp_accept_op(p, ".")) {
        tpl_tok *t = tp_cur(p);
        if (t->kind == TK_INT) {
            tpl_node *k = tp_mk(p, N_CONST, line);
            if (k) k->value = json_integer(t->ival);
            p->i++;
            return binary(p, N_ITEM, 0, obj, k, line);
        }
        tpl_node *n = tp_mk(p, N_ATTR, line);
        if (!n || !(n->name = tp_take_name(p))) {
            tpl_node_free(n);
            tpl_node_free(obj);
            return NULL;
        }
        n->a = obj;
        return n;
    }
    p->i++; /* '[' */
    tpl_node *parts[3] = {NULL, NULL, NULL};
    bool slice = false;
    int k = 0;
    for (;;) {
        if (!tp_is_op(p, ":") && !tp_is_op(p, "]")) {
            parts[k] = tp_expr(p, true);
            if (!parts[k]) goto fail;
        }
        if (k < 2 && tp_accept_op(p, ":")) {
            slice = true;
            k++;
            continue;
        }
        break;
    }
    if (tp_expect_op(p, "]")) goto fail;
    if (!slice) {
        if (!parts[0]) {
            tp_fail(p, "expected an index");
            goto fail;
        }
        return binary(p, N_ITEM, 0, obj, parts[0], line);
    }
    tpl_node *n = tp_mk(p, N_SLICE, line);
    if (!n) goto fail;
    n->a = obj;
    n->b = parts[0];
    n->c = parts[1];
    n->d = parts[2];
    return n;
fail:
    for (int i = 0; i < 3; i++)
        tpl_node_free(parts[i]);
    tpl_node_free(obj);
    return NULL;
}

static tpl_node *p_postfix(tpl_parser *p, tpl_node *n)
{
    while (n) {
        if (tp_is_op(p, ".") || tp_is_op(p, "[")) {
            n = seal(p, p_subscript(p, n));
        } else if (tp_is_op(p, "(")) {
            tpl_node *c = tp_mk(p, N_CALL, tp_cur(p)->line);
            if (!c) {
                tpl_node_free(n);
                return NULL;
            }
            c->a = n;
            if (tp_call_args(p, c)) {
                tpl_node_free(c);
                return NULL;
            }
            n = seal(p, c);
        } else {
            break;
        }
    }
    return n;
}

static tpl_node *p_filter_or_test(tpl_parser *p, tpl_node *n)
{
    while (n) {
        int line = tp_cur(p)->line;
        if (tp_accept_op(p, "|")) {
            tpl_node *f = tp_mk(p, N_FILTER, line);
            if (!f) goto fail;
            f->a = n;
            n = f;
            if (!(f->name = tp_take_name(p))) goto fail;
            if (!tpl_filter_exists(f->name)) {
                tp_fail(p, "unknown filter '%s'", f->name);
                goto fail;
            }
            if (tp_is_op(p, "(") && tp_call_args(p, f)) goto fail;
            n = seal(p, n);
        } else if (tp_accept_name(p, "is")) {
            tpl_node *t = tp_mk(p, N_TEST, line);
            if (!t) goto fail;
            t->a = n;
            n = t;
            t->op = tp_accept_name(p, "not");
            if (!(t->name = tp_take_name(p))) goto fail;
            if (!tpl_test_exists(t->name)) {
                tp_fail(p, "unknown test '%s'", t->name);
                goto fail;
            }
            tpl_tok *c = tp_cur(p);
            if (tp_is_op(p, "(")) {
                if (tp_call_args(p, t)) goto fail;
            } else if ((c->kind == TK_NAME || c->kind == TK_STRING || c->kind == TK_INT ||
                        c->kind == TK_FLOAT || tp_is_op(p, "[") || tp_is_op(p, "{")) &&
                       !tp_is_name(p, "else") && !tp_is_name(p, "or") && !tp_is_name(p, "and") &&
                       !tp_is_name(p, "is") && !tp_is_name(p, "if") && !tp_is_name(p, "in") &&
                       !tp_is_name(p, "not")) {
                if (tp_push(p, &t->args, p_postfix(p, p_primary(p)))) goto fail;
                t->argnames = calloc(1, sizeof *t->argnames);
                if (!t->argnames) goto fail;
            }
            n = seal(p, n);
        } else if (tp_is_op(p, "(")) {
            n = p_postfix(p, n);
        } else {
            break;
        }
    }
    return n;
fail:
    tpl_node_free(n);
    return NULL;
}

static tpl_node *p_unary(tpl_parser *p, bool with_filter)
{
    if (!tp_enter(p)) return NULL;
    int line = tp_cur(p)->line;
    tpl_node *n;
    if (tp_is_op(p, "-") || tp_is_op(p, "+")) {
        tpl_node_kind k = tp_is_op(p, "-") ? N_NEG : N_POS;
        p->i++;
        tpl_node *a = p_unary(p, false);
        n = a ? tp_mk(p, k, line) : NULL;
        if (n)
            n->a = a;
        else
            tpl_node_free(a);
        n = seal(p, n);
    } else {
        n = p_primary(p);
    }
    n = p_postfix(p, n);
    if (with_filter) n = p_filter_or_test(p, n);
    p->depth--;
    return n;
}

static tpl_node *p_pow(tpl_parser *p)
{
    tpl_node *n = p_unary(p, true);
    while (n && tp_is_op(p, "**")) {
        int line = tp_cur(p)->line;
        p->i++;
        n = binary(p, N_BINOP, OP_POW, n, p_unary(p, true), line);
    }
    return n;
}

static tpl_node *p_math2(tpl_parser *p)
{
    tpl_node *n = p_pow(p);
    for (;;) {
        int op = tp_is_op(p, "*")    ? OP_MUL
                 : tp_is_op(p, "/")  ? OP_DIV
                 : tp_is_op(p, "//") ? OP_FLOORDIV
                 : tp_is_op(p, "%")  ? OP_MOD
                                     : -1;
        if (!n || op < 0) return n;
        int line = tp_cur(p)->line;
        p->i++;
        n = binary(p, N_BINOP, op, n, p_pow(p), line);
    }
}

static tpl_node *p_concat(tpl_parser *p)
{
    tpl_node *n = p_math2(p);
    while (n && tp_is_op(p, "~")) {
        int line = tp_cur(p)->line;
        p->i++;
        n = binary(p, N_BINOP, OP_CONCAT, n, p_math2(p), line);
    }
    return n;
}

static tpl_node *p_math1(tpl_parser *p)
{
    tpl_node *n = p_concat(p);
    for (;;) {
        int op = tp_is_op(p, "+") ? OP_ADD : tp_is_op(p, "-") ? OP_SUB : -1;
        if (!n || op < 0) return n;
        int line = tp_cur(p)->line;
        p->i++;
        n = binary(p, N_BINOP, op, n, p_concat(p), line);
    }
}

static int cmp_op(tpl_parser *p)
{
    static const char *const ops[] = {"==", "!=", "<", "<=", ">", ">="};
    static const int codes[] = {OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE};
    for (size_t i = 0; i < 6; i++)
        if (tp_is_op(p, ops[i])) return codes[i];
    if (tp_is_name(p, "in")) return OP_IN;
    if (tp_is_name(p, "not") && p->t[p->i + 1].kind == TK_NAME &&
        !strcmp(p->t[p->i + 1].text, "in"))
        return OP_NOTIN;
    return -1;
}

/* Chained comparisons (a < b < c) are refused: chat templates do not use
 * them and their evaluate-once semantics would need a node of their own. */
static tpl_node *p_compare(tpl_parser *p)
{
    tpl_node *n = p_math1(p);
    int op = n ? cmp_op(p) : -1;
    if (op < 0) return n;
    int line = tp_cur(p)->line;
    p->i += op == OP_NOTIN ? 2 : 1;
    n = binary(p, N_BINOP, op, n, p_math1(p), line);
    if (n && cmp_op(p) >= 0) {
        tpl_node_free(n);
        tp_fail(p, "chained comparisons are not supported");
        return NULL;
    }
    return n;
}

static tpl_node *p_not(tpl_parser *p)
{
    if (tp_is_name(p, "not")) {
        int line = tp_cur(p)->line;
        p->i++;
        if (!tp_enter(p)) return NULL;
        tpl_node *a = p_not(p);
        p->depth--;
        tpl_node *n = a ? tp_mk(p, N_NOT, line) : NULL;
        if (n)
            n->a = a;
        else
            tpl_node_free(a);
        return seal(p, n);
    }
    return p_compare(p);
}

static tpl_node *p_and(tpl_parser *p)
{
    tpl_node *n = p_not(p);
    while (n && tp_is_name(p, "and")) {
        int line = tp_cur(p)->line;
        p->i++;
        n = binary(p, N_AND, 0, n, p_not(p), line);
    }
    return n;
}

static tpl_node *p_or(tpl_parser *p)
{
    tpl_node *n = p_and(p);
    while (n && tp_is_name(p, "or")) {
        int line = tp_cur(p)->line;
        p->i++;
        n = binary(p, N_OR, 0, n, p_and(p), line);
    }
    return n;
}

tpl_node *tp_expr(tpl_parser *p, bool with_cond)
{
    if (!tp_enter(p)) return NULL;
    tpl_node *n = p_or(p);
    while (with_cond && n && tp_is_name(p, "if")) {
        int line = tp_cur(p)->line;
        p->i++;
        tpl_node *c = tp_mk(p, N_COND, line);
        if (!c) break;
        c->b = n;
        n = c;
        if (!(c->a = p_or(p))) goto fail;
        if (tp_accept_name(p, "else") && !(c->c = tp_expr(p, true))) goto fail;
        n = seal(p, n);
    }
    p->depth--;
    return n;
fail:
    tpl_node_free(n);
    return NULL;
}

/* Comma-separated expressions: one expression, or a tuple (a list). */
tpl_node *tp_tuple(tpl_parser *p, bool with_cond, bool explicit_parens)
{
    int line = tp_cur(p)->line;
    if (explicit_parens && tp_is_op(p, ")")) return tp_mk(p, N_LIST, line);
    tpl_node *first = tp_expr(p, with_cond);
    if (!first || !tp_is_op(p, ",")) return first;
    tpl_node *n = tp_mk(p, N_LIST, line);
    if (tp_push(p, &n->args, first)) {
        tpl_node_free(n);
        return NULL;
    }
    while (tp_accept_op(p, ",")) {
        tpl_tok *c = tp_cur(p);
        if (c->kind == TK_VAR_END || c->kind == TK_BLOCK_END || tp_is_op(p, ")")) break;
        if (tp_push(p, &n->args, tp_expr(p, with_cond))) {
            tpl_node_free(n);
            return NULL;
        }
    }
    return seal(p, n);
}

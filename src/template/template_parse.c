/* The chat-template parser: tokens -> syntax tree, following jinja2's
 * grammar and operator precedence (parser.py). Unknown tags, filters and
 * tests are compile errors naming the line, as in jinja2. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template/template_internal.h"

typedef struct parser {
    tpl_tok *t;
    size_t n, i;
    int depth;      /* nesting, bounded by TPL_MAX_NESTING */
    int loop_depth; /* for break/continue */
    cv_error *err;
} parser;

static tpl_tok *cur(parser *p)
{
    return &p->t[p->i];
}

static int p_fail(parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int p_fail(parser *p, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return cv_errorf(p->err, "chat template line %d: %s", cur(p)->line, msg);
}

static bool is_op(parser *p, const char *op)
{
    return cur(p)->kind == TK_OP && !strcmp(cur(p)->text, op);
}

static bool is_name(parser *p, const char *name)
{
    return cur(p)->kind == TK_NAME && !strcmp(cur(p)->text, name);
}

static bool accept_op(parser *p, const char *op)
{
    if (!is_op(p, op)) return false;
    p->i++;
    return true;
}

static bool accept_name(parser *p, const char *name)
{
    if (!is_name(p, name)) return false;
    p->i++;
    return true;
}

static const char *tok_desc(tpl_tok *t)
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

static int expect_op(parser *p, const char *op)
{
    if (accept_op(p, op)) return 0;
    return p_fail(p, "expected '%s', got '%s'", op, tok_desc(cur(p)));
}

static int expect_block_end(parser *p)
{
    if (cur(p)->kind == TK_BLOCK_END) {
        p->i++;
        return 0;
    }
    return p_fail(p, "expected end of statement block, got '%s'", tok_desc(cur(p)));
}

static char *take_name(parser *p)
{
    if (cur(p)->kind != TK_NAME) {
        p_fail(p, "expected a name, got '%s'", tok_desc(cur(p)));
        return NULL;
    }
    char *s = strdup(cur(p)->text);
    if (!s) cv_errorf(p->err, "chat template: out of memory");
    p->i++;
    return s;
}

static tpl_node *mk(parser *p, tpl_node_kind kind, int line)
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

static int push(parser *p, tpl_nodes *v, tpl_node *n)
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

static int push_name(parser *p, char ***names, size_t *n, char *name)
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

void tpl_node_free(tpl_node *n)
{
    if (!n) return;
    free(n->name);
    free(n->attr);
    free(n->text);
    if (n->value) json_decref(n->value);
    tpl_node_free(n->a);
    tpl_node_free(n->b);
    tpl_node_free(n->c);
    tpl_node_free(n->d);
    for (size_t i = 0; i < n->args.n; i++) {
        tpl_node_free(n->args.v[i]);
        if (n->argnames) free(n->argnames[i]);
    }
    free(n->args.v);
    free(n->argnames);
    for (size_t i = 0; i < n->n_names; i++)
        free(n->names[i]);
    free(n->names);
    for (size_t i = 0; i < n->body.n; i++)
        tpl_node_free(n->body.v[i]);
    free(n->body.v);
    for (size_t i = 0; i < n->else_body.n; i++)
        tpl_node_free(n->else_body.v[i]);
    free(n->else_body.v);
    free(n);
}

/* ---- expressions ------------------------------------------------------- */

static tpl_node *p_expr(parser *p, bool with_cond);
static tpl_node *p_tuple(parser *p, bool with_cond, bool explicit_parens);
static tpl_node *p_unary(parser *p, bool with_filter);

static bool enter(parser *p)
{
    if (++p->depth > TPL_MAX_NESTING) {
        p_fail(p, "nested too deeply (more than %d levels)", TPL_MAX_NESTING);
        return false;
    }
    return true;
}

/* Records n's height and refuses trees deeper than TPL_MAX_HEIGHT: chains
 * such as 1+1+1+... or x|f|f|f... nest without brackets, and evaluating or
 * freeing them recurses once per level. Frees n on failure. */
static tpl_node *seal(parser *p, tpl_node *n)
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
        p_fail(p, "expression nested too deeply (more than %d levels)", TPL_MAX_HEIGHT);
        tpl_node_free(n);
        return NULL;
    }
    return n;
}

static tpl_node *binary(parser *p, tpl_node_kind kind, int op, tpl_node *a, tpl_node *b, int line)
{
    if (!a || !b) {
        tpl_node_free(a);
        tpl_node_free(b);
        return NULL;
    }
    tpl_node *n = mk(p, kind, line);
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
static int p_call_args(parser *p, tpl_node *n)
{
    if (expect_op(p, "(")) return -1;
    while (!accept_op(p, ")")) {
        if (n->args.n && expect_op(p, ",")) return -1;
        if (accept_op(p, ")")) break;
        char *kw = NULL;
        if (cur(p)->kind == TK_NAME && p->t[p->i + 1].kind == TK_OP &&
            !strcmp(p->t[p->i + 1].text, "=")) {
            kw = take_name(p);
            if (!kw) return -1;
            p->i++;
        } else if (n->argnames) {
            for (size_t i = 0; i < n->args.n; i++)
                if (n->argnames[i])
                    return p_fail(p, "positional argument follows keyword argument");
        }
        char **nn = realloc(n->argnames, (n->args.n + 1) * sizeof *nn);
        if (!nn) {
            free(kw);
            return cv_errorf(p->err, "chat template: out of memory");
        }
        n->argnames = nn;
        nn[n->args.n] = kw;
        if (push(p, &n->args, p_expr(p, true))) {
            free(kw);
            return -1;
        }
    }
    return 0;
}

static tpl_node *p_primary(parser *p)
{
    tpl_tok *t = cur(p);
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
            n = mk(p, N_CONST, line);
            if (n) n->value = c;
            p->i++;
            return n;
        }
        n = mk(p, N_NAME, line);
        if (n && !(n->name = take_name(p))) {
            tpl_node_free(n);
            return NULL;
        }
        return n;
    }
    if (t->kind == TK_STRING) {
        tpl_buf b = {0};
        while (cur(p)->kind == TK_STRING) {
            tpl_buf_put(&b, cur(p)->text, cur(p)->len);
            p->i++;
        }
        n = mk(p, N_CONST, line);
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
        n = mk(p, N_CONST, line);
        if (n) n->value = t->kind == TK_INT ? json_integer(t->ival) : json_real(t->fval);
        if (n && !n->value) {
            /* jansson refuses inf/nan reals */
            tpl_node_free(n);
            p_fail(p, "number literal out of range");
            return NULL;
        }
        p->i++;
        return n;
    }
    if (accept_op(p, "(")) {
        n = p_tuple(p, true, true);
        if (n && expect_op(p, ")")) {
            tpl_node_free(n);
            return NULL;
        }
        return n;
    }
    if (accept_op(p, "[")) {
        n = mk(p, N_LIST, line);
        while (n && !accept_op(p, "]")) {
            if (n->args.n && expect_op(p, ",")) goto fail;
            if (accept_op(p, "]")) break;
            if (push(p, &n->args, p_expr(p, true))) goto fail;
        }
        return seal(p, n);
    }
    if (accept_op(p, "{")) {
        n = mk(p, N_DICT, line);
        while (n && !accept_op(p, "}")) {
            if (n->args.n && expect_op(p, ",")) goto fail;
            if (accept_op(p, "}")) break;
            if (push(p, &n->args, p_expr(p, true)) || expect_op(p, ":") ||
                push(p, &n->args, p_expr(p, true)))
                goto fail;
        }
        return seal(p, n);
    }
    p_fail(p, "unexpected '%s'", tok_desc(t));
    return NULL;
fail:
    tpl_node_free(n);
    return NULL;
}

static tpl_node *p_subscript(parser *p, tpl_node *obj)
{
    int line = cur(p)->line;
    if (accept_op(p, ".")) {
        tpl_tok *t = cur(p);
        if (t->kind == TK_INT) {
            tpl_node *k = mk(p, N_CONST, line);
            if (k) k->value = json_integer(t->ival);
            p->i++;
            return binary(p, N_ITEM, 0, obj, k, line);
        }
        tpl_node *n = mk(p, N_ATTR, line);
        if (!n || !(n->name = take_name(p))) {
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
        if (!is_op(p, ":") && !is_op(p, "]")) {
            parts[k] = p_expr(p, true);
            if (!parts[k]) goto fail;
        }
        if (k < 2 && accept_op(p, ":")) {
            slice = true;
            k++;
            continue;
        }
        break;
    }
    if (expect_op(p, "]")) goto fail;
    if (!slice) {
        if (!parts[0]) {
            p_fail(p, "expected an index");
            goto fail;
        }
        return binary(p, N_ITEM, 0, obj, parts[0], line);
    }
    tpl_node *n = mk(p, N_SLICE, line);
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

static tpl_node *p_postfix(parser *p, tpl_node *n)
{
    while (n) {
        if (is_op(p, ".") || is_op(p, "[")) {
            n = seal(p, p_subscript(p, n));
        } else if (is_op(p, "(")) {
            tpl_node *c = mk(p, N_CALL, cur(p)->line);
            if (!c) {
                tpl_node_free(n);
                return NULL;
            }
            c->a = n;
            if (p_call_args(p, c)) {
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

static tpl_node *p_filter_or_test(parser *p, tpl_node *n)
{
    while (n) {
        int line = cur(p)->line;
        if (accept_op(p, "|")) {
            tpl_node *f = mk(p, N_FILTER, line);
            if (!f) goto fail;
            f->a = n;
            n = f;
            if (!(f->name = take_name(p))) goto fail;
            if (!tpl_filter_exists(f->name)) {
                p_fail(p, "unknown filter '%s'", f->name);
                goto fail;
            }
            if (is_op(p, "(") && p_call_args(p, f)) goto fail;
            n = seal(p, n);
        } else if (accept_name(p, "is")) {
            tpl_node *t = mk(p, N_TEST, line);
            if (!t) goto fail;
            t->a = n;
            n = t;
            t->op = accept_name(p, "not");
            if (!(t->name = take_name(p))) goto fail;
            if (!tpl_test_exists(t->name)) {
                p_fail(p, "unknown test '%s'", t->name);
                goto fail;
            }
            tpl_tok *c = cur(p);
            if (is_op(p, "(")) {
                if (p_call_args(p, t)) goto fail;
            } else if ((c->kind == TK_NAME || c->kind == TK_STRING || c->kind == TK_INT ||
                        c->kind == TK_FLOAT || is_op(p, "[") || is_op(p, "{")) &&
                       !is_name(p, "else") && !is_name(p, "or") && !is_name(p, "and") &&
                       !is_name(p, "is") && !is_name(p, "if") && !is_name(p, "in") &&
                       !is_name(p, "not")) {
                if (push(p, &t->args, p_postfix(p, p_primary(p)))) goto fail;
                t->argnames = calloc(1, sizeof *t->argnames);
                if (!t->argnames) goto fail;
            }
            n = seal(p, n);
        } else if (is_op(p, "(")) {
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

static tpl_node *p_unary(parser *p, bool with_filter)
{
    if (!enter(p)) return NULL;
    int line = cur(p)->line;
    tpl_node *n;
    if (is_op(p, "-") || is_op(p, "+")) {
        tpl_node_kind k = is_op(p, "-") ? N_NEG : N_POS;
        p->i++;
        tpl_node *a = p_unary(p, false);
        n = a ? mk(p, k, line) : NULL;
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

static tpl_node *p_pow(parser *p)
{
    tpl_node *n = p_unary(p, true);
    while (n && is_op(p, "**")) {
        int line = cur(p)->line;
        p->i++;
        n = binary(p, N_BINOP, OP_POW, n, p_unary(p, true), line);
    }
    return n;
}

static tpl_node *p_math2(parser *p)
{
    tpl_node *n = p_pow(p);
    for (;;) {
        int op = is_op(p, "*")    ? OP_MUL
                 : is_op(p, "/")  ? OP_DIV
                 : is_op(p, "//") ? OP_FLOORDIV
                 : is_op(p, "%")  ? OP_MOD
                                  : -1;
        if (!n || op < 0) return n;
        int line = cur(p)->line;
        p->i++;
        n = binary(p, N_BINOP, op, n, p_pow(p), line);
    }
}

static tpl_node *p_concat(parser *p)
{
    tpl_node *n = p_math2(p);
    while (n && is_op(p, "~")) {
        int line = cur(p)->line;
        p->i++;
        n = binary(p, N_BINOP, OP_CONCAT, n, p_math2(p), line);
    }
    return n;
}

static tpl_node *p_math1(parser *p)
{
    tpl_node *n = p_concat(p);
    for (;;) {
        int op = is_op(p, "+") ? OP_ADD : is_op(p, "-") ? OP_SUB : -1;
        if (!n || op < 0) return n;
        int line = cur(p)->line;
        p->i++;
        n = binary(p, N_BINOP, op, n, p_concat(p), line);
    }
}

static int cmp_op(parser *p)
{
    static const char *const ops[] = {"==", "!=", "<", "<=", ">", ">="};
    static const int codes[] = {OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE};
    for (size_t i = 0; i < 6; i++)
        if (is_op(p, ops[i])) return codes[i];
    if (is_name(p, "in")) return OP_IN;
    if (is_name(p, "not") && p->t[p->i + 1].kind == TK_NAME && !strcmp(p->t[p->i + 1].text, "in"))
        return OP_NOTIN;
    return -1;
}

/* Chained comparisons (a < b < c) are refused: chat templates do not use
 * them and their evaluate-once semantics would need a node of their own. */
static tpl_node *p_compare(parser *p)
{
    tpl_node *n = p_math1(p);
    int op = n ? cmp_op(p) : -1;
    if (op < 0) return n;
    int line = cur(p)->line;
    p->i += op == OP_NOTIN ? 2 : 1;
    n = binary(p, N_BINOP, op, n, p_math1(p), line);
    if (n && cmp_op(p) >= 0) {
        tpl_node_free(n);
        p_fail(p, "chained comparisons are not supported");
        return NULL;
    }
    return n;
}

static tpl_node *p_not(parser *p)
{
    if (is_name(p, "not")) {
        int line = cur(p)->line;
        p->i++;
        if (!enter(p)) return NULL;
        tpl_node *a = p_not(p);
        p->depth--;
        tpl_node *n = a ? mk(p, N_NOT, line) : NULL;
        if (n)
            n->a = a;
        else
            tpl_node_free(a);
        return seal(p, n);
    }
    return p_compare(p);
}

static tpl_node *p_and(parser *p)
{
    tpl_node *n = p_not(p);
    while (n && is_name(p, "and")) {
        int line = cur(p)->line;
        p->i++;
        n = binary(p, N_AND, 0, n, p_not(p), line);
    }
    return n;
}

static tpl_node *p_or(parser *p)
{
    tpl_node *n = p_and(p);
    while (n && is_name(p, "or")) {
        int line = cur(p)->line;
        p->i++;
        n = binary(p, N_OR, 0, n, p_and(p), line);
    }
    return n;
}

static tpl_node *p_expr(parser *p, bool with_cond)
{
    if (!enter(p)) return NULL;
    tpl_node *n = p_or(p);
    while (with_cond && n && is_name(p, "if")) {
        int line = cur(p)->line;
        p->i++;
        tpl_node *c = mk(p, N_COND, line);
        if (!c) break;
        c->b = n;
        n = c;
        if (!(c->a = p_or(p))) goto fail;
        if (accept_name(p, "else") && !(c->c = p_expr(p, true))) goto fail;
        n = seal(p, n);
    }
    p->depth--;
    return n;
fail:
    tpl_node_free(n);
    return NULL;
}

/* Comma-separated expressions: one expression, or a tuple (a list). */
static tpl_node *p_tuple(parser *p, bool with_cond, bool explicit_parens)
{
    int line = cur(p)->line;
    if (explicit_parens && is_op(p, ")")) return mk(p, N_LIST, line);
    tpl_node *first = p_expr(p, with_cond);
    if (!first || !is_op(p, ",")) return first;
    tpl_node *n = mk(p, N_LIST, line);
    if (push(p, &n->args, first)) {
        tpl_node_free(n);
        return NULL;
    }
    while (accept_op(p, ",")) {
        tpl_tok *c = cur(p);
        if (c->kind == TK_VAR_END || c->kind == TK_BLOCK_END || is_op(p, ")")) break;
        if (push(p, &n->args, p_expr(p, with_cond))) {
            tpl_node_free(n);
            return NULL;
        }
    }
    return seal(p, n);
}

/* ---- statements ---------------------------------------------------------- */

static int p_body(parser *p, tpl_nodes *body, const char *const *ends);

/* Target names of for/set: a name or names separated by commas. */
static int p_targets(parser *p, tpl_node *n)
{
    bool paren = accept_op(p, "(");
    do {
        if (push_name(p, &n->names, &n->n_names, take_name(p))) return -1;
    } while (accept_op(p, ","));
    return paren ? expect_op(p, ")") : 0;
}

static tpl_node *p_if(parser *p, int line)
{
    tpl_node *n = mk(p, N_IF, line);
    if (!n) return NULL;
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    if (!(n->a = p_tuple(p, true, false)) || expect_block_end(p) || p_body(p, &n->body, ends))
        goto fail;
    if (accept_name(p, "elif")) {
        if (push(p, &n->else_body, p_if(p, cur(p)->line))) goto fail;
        return n; /* the nested if consumed endif */
    }
    if (accept_name(p, "else")) {
        static const char *const ends2[] = {"endif", NULL};
        if (expect_block_end(p) || p_body(p, &n->else_body, ends2)) goto fail;
    }
    if (!accept_name(p, "endif") || expect_block_end(p)) {
        if (!p->err->msg[0]) p_fail(p, "expected 'endif'");
        goto fail;
    }
    return n;
fail:
    tpl_node_free(n);
    return NULL;
}

static tpl_node *p_for(parser *p, int line)
{
    tpl_node *n = mk(p, N_FOR, line);
    if (!n) return NULL;
    if (p_targets(p, n)) goto fail;
    if (!accept_name(p, "in")) {
        p_fail(p, "expected 'in', got '%s'", tok_desc(cur(p)));
        goto fail;
    }
    if (!(n->a = p_tuple(p, false, false))) goto fail;
    if (accept_name(p, "if") && !(n->b = p_expr(p, true))) goto fail;
    if (is_name(p, "recursive")) {
        p_fail(p, "recursive loops are not supported");
        goto fail;
    }
    if (expect_block_end(p)) goto fail;
    static const char *const ends[] = {"else", "endfor", NULL};
    p->loop_depth++;
    int rc = p_body(p, &n->body, ends);
    p->loop_depth--;
    if (rc) goto fail;
    if (accept_name(p, "else")) {
        static const char *const ends2[] = {"endfor", NULL};
        if (expect_block_end(p) || p_body(p, &n->else_body, ends2)) goto fail;
    }
    p->i++; /* endfor */
    if (expect_block_end(p)) goto fail;
    return n;
fail:
    tpl_node_free(n);
    return NULL;
}

static tpl_node *p_set(parser *p, int line)
{
    tpl_node *n = mk(p, N_SET, line);
    if (!n) return NULL;
    if (cur(p)->kind == TK_NAME && p->t[p->i + 1].kind == TK_OP &&
        !strcmp(p->t[p->i + 1].text, ".")) {
        if (!(n->name = take_name(p))) goto fail;
        p->i++;
        if (!(n->attr = take_name(p))) goto fail;
    } else if (p_targets(p, n)) {
        goto fail;
    }
    if (accept_op(p, "=")) {
        if (!(n->b = p_tuple(p, true, false)) || expect_block_end(p)) goto fail;
        return n;
    }
    if (n->attr || n->n_names != 1) {
        p_fail(p, "expected '='");
        goto fail;
    }
    n->kind = N_SETBLOCK;
    if (expect_block_end(p)) goto fail;
    static const char *const ends[] = {"endset", NULL};
    if (p_body(p, &n->body, ends)) goto fail;
    p->i++;
    if (expect_block_end(p)) goto fail;
    return n;
fail:
    tpl_node_free(n);
    return NULL;
}

static tpl_node *p_macro(parser *p, int line)
{
    tpl_node *n = mk(p, N_MACRO, line);
    if (!n || !(n->name = take_name(p)) || expect_op(p, "(")) goto fail;
    while (!accept_op(p, ")")) {
        if (n->n_names && expect_op(p, ",")) goto fail;
        if (accept_op(p, ")")) break;
        if (push_name(p, &n->names, &n->n_names, take_name(p))) goto fail;
        tpl_node *def = NULL;
        if (accept_op(p, "=") && !(def = p_expr(p, true))) goto fail;
        tpl_node **v = realloc(n->args.v, (n->args.n + 1) * sizeof *v);
        if (!v) {
            tpl_node_free(def);
            cv_errorf(p->err, "chat template: out of memory");
            goto fail;
        }
        n->args.v = v;
        v[n->args.n++] = def;
    }
    if (expect_block_end(p)) goto fail;
    static const char *const ends[] = {"endmacro", NULL};
    int saved = p->loop_depth;
    p->loop_depth = 0;
    int rc = p_body(p, &n->body, ends);
    p->loop_depth = saved;
    if (rc) goto fail;
    p->i++;
    if (is_name(p, n->name)) p->i++;
    if (expect_block_end(p)) goto fail;
    return n;
fail:
    tpl_node_free(n);
    return NULL;
}

/* {% filter name(args) %}...{% endfilter %}: the body's text through a filter. */
static tpl_node *p_filterblock(parser *p, int line)
{
    tpl_node *n = mk(p, N_FILTERBLOCK, line);
    tpl_node *body = mk(p, N_BODY, line);
    if (!n || !body) {
        tpl_node_free(n);
        tpl_node_free(body);
        return NULL;
    }
    tpl_node *f = mk(p, N_FILTER, line);
    if (!f) goto fail_body;
    f->a = body;
    n->a = f;
    if (!(f->name = take_name(p))) goto fail;
    if (!tpl_filter_exists(f->name)) {
        p_fail(p, "unknown filter '%s'", f->name);
        goto fail;
    }
    if (is_op(p, "(") && p_call_args(p, f)) goto fail;
    static const char *const ends[] = {"endfilter", NULL};
    if (expect_block_end(p) || p_body(p, &body->body, ends)) goto fail;
    p->i++;
    if (expect_block_end(p)) goto fail;
    return n;
fail_body:
    tpl_node_free(body);
fail:
    tpl_node_free(n);
    return NULL;
}

static tpl_node *p_statement(parser *p)
{
    int line = cur(p)->line;
    if (cur(p)->kind != TK_NAME) {
        p_fail(p, "expected a tag name, got '%s'", tok_desc(cur(p)));
        return NULL;
    }
    char *tag = cur(p)->text;
    p->i++;
    if (!strcmp(tag, "if")) return p_if(p, line);
    if (!strcmp(tag, "for")) return p_for(p, line);
    if (!strcmp(tag, "set")) return p_set(p, line);
    if (!strcmp(tag, "macro")) return p_macro(p, line);
    if (!strcmp(tag, "filter")) return p_filterblock(p, line);
    if (!strcmp(tag, "break") || !strcmp(tag, "continue")) {
        if (!p->loop_depth) {
            p->i--;
            p_fail(p, "'%s' outside of a loop", tag);
            return NULL;
        }
        tpl_node *n = mk(p, tag[0] == 'b' ? N_BREAK : N_CONTINUE, line);
        if (n && expect_block_end(p)) {
            tpl_node_free(n);
            return NULL;
        }
        return n;
    }
    if (!strcmp(tag, "generation")) {
        /* transformers' assistant-mask tag: renders its body unchanged */
        tpl_node *n = mk(p, N_BODY, line);
        static const char *const ends[] = {"endgeneration", NULL};
        if (!n || expect_block_end(p) || p_body(p, &n->body, ends)) goto fail;
        p->i++;
        if (expect_block_end(p)) goto fail;
        return n;
    fail:
        tpl_node_free(n);
        return NULL;
    }
    p->i--;
    p_fail(p, "unknown tag '%s'", tag);
    return NULL;
}

/* Statements up to a block whose tag is one of ends (left unconsumed: the
 * cursor is on the tag name), or the end of the template when ends is NULL. */
static int p_body(parser *p, tpl_nodes *body, const char *const *ends)
{
    if (!enter(p)) return -1;
    int start_line = p->i ? p->t[p->i - 1].line : 1; /* the opening tag's */
    for (;;) {
        tpl_tok *t = cur(p);
        tpl_node *n = NULL;
        if (t->kind == TK_EOF) {
            if (!ends) break;
            p_fail(p,
                   "unexpected end of template (a block opened near line %d is not closed; "
                   "expected '%s')",
                   start_line, ends[0]);
            return -1;
        } else if (t->kind == TK_DATA) {
            n = mk(p, N_TEXT, t->line);
            if (!n) return -1;
            n->text = t->text;
            n->len = t->len;
            t->text = NULL; /* moved */
            p->i++;
        } else if (t->kind == TK_VAR_BEGIN) {
            p->i++;
            n = mk(p, N_OUTPUT, t->line);
            if (!n) return -1;
            if (!(n->a = p_tuple(p, true, false))) {
                tpl_node_free(n);
                return -1;
            }
            if (cur(p)->kind != TK_VAR_END) {
                p_fail(p, "expected end of print statement, got '%s'", tok_desc(cur(p)));
                tpl_node_free(n);
                return -1;
            }
            p->i++;
        } else if (t->kind == TK_BLOCK_BEGIN) {
            p->i++;
            for (size_t k = 0; ends && ends[k]; k++)
                if (is_name(p, ends[k])) {
                    p->depth--;
                    return 0;
                }
            if (!(n = p_statement(p))) return -1;
        } else {
            return p_fail(p, "unexpected '%s'", tok_desc(t));
        }
        if (push(p, body, n)) return -1;
    }
    p->depth--;
    return 0;
}

tpl_node *tpl_parse(tpl_tok *toks, size_t n_toks, cv_error *err)
{
    parser p = {.t = toks, .n = n_toks, .err = err};
    tpl_node *root = mk(&p, N_BODY, 1);
    if (!root) return NULL;
    if (p_body(&p, &root->body, NULL)) {
        tpl_node_free(root);
        return NULL;
    }
    return root;
}

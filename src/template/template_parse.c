/* The chat-template parser, statements: text, {{ }}, and the tags if, for,
 * set, macro, filter, break, continue and transformers' generation; and the
 * syntax tree's destructor. */
#include <stdlib.h>
#include <string.h>

#include "template/template_parse.h"

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

/* ---- statements ---------------------------------------------------------- */

static int p_body(tpl_parser *p, tpl_nodes *body, const char *const *ends);

/* Target names of for/set: a name or names separated by commas. */
static int p_targets(tpl_parser *p, tpl_node *n)
{
    bool paren = tp_accept_op(p, "(");
    do {
        if (tp_push_name(p, &n->names, &n->n_names, tp_take_name(p))) return -1;
    } while (tp_accept_op(p, ","));
    return paren ? tp_expect_op(p, ")") : 0;
}

static tpl_node *p_if(tpl_parser *p, int line)
{
    tpl_node *n = tp_mk(p, N_IF, line);
    if (!n) return NULL;
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    if (!(n->a = tp_tuple(p, true, false)) || tp_expect_block_end(p) || p_body(p, &n->body, ends))
        goto fail;
    if (tp_accept_name(p, "elif")) {
        if (tp_push(p, &n->else_body, p_if(p, tp_cur(p)->line))) goto fail;
        return n; /* the nested if consumed endif */
    }
    if (tp_accept_name(p, "else")) {
        static const char *const ends2[] = {"endif", NULL};
        if (tp_expect_block_end(p) || p_body(p, &n->else_body, ends2)) goto fail;
    }
    if (!tp_accept_name(p, "endif") || tp_expect_block_end(p)) {
        if (!p->err->msg[0]) tp_fail(p, "expected 'endif'");
        goto fail;
    }
    return n;
fail:
    tpl_node_free(n);
    return NULL;
}

static tpl_node *p_for(tpl_parser *p, int line)
{
    tpl_node *n = tp_mk(p, N_FOR, line);
    if (!n) return NULL;
    if (p_targets(p, n)) goto fail;
    if (!tp_accept_name(p, "in")) {
        tp_fail(p, "expected 'in', got '%s'", tp_tok_desc(tp_cur(p)));
        goto fail;
    }
    if (!(n->a = tp_tuple(p, false, false))) goto fail;
    if (tp_accept_name(p, "if") && !(n->b = tp_expr(p, true))) goto fail;
    if (tp_is_name(p, "recursive")) {
        tp_fail(p, "recursive loops are not supported");
        goto fail;
    }
    if (tp_expect_block_end(p)) goto fail;
    static const char *const ends[] = {"else", "endfor", NULL};
    p->loop_depth++;
    int rc = p_body(p, &n->body, ends);
    p->loop_depth--;
    if (rc) goto fail;
    if (tp_accept_name(p, "else")) {
        static const char *const ends2[] = {"endfor", NULL};
        if (tp_expect_block_end(p) || p_body(p, &n->else_body, ends2)) goto fail;
    }
    p->i++; /* endfor */
    if (tp_expect_block_end(p)) goto fail;
    return n;
fail:
    tpl_node_free(n);
    return NULL;
}

static tpl_node *p_set(tpl_parser *p, int line)
{
    tpl_node *n = tp_mk(p, N_SET, line);
    if (!n) return NULL;
    if (tp_cur(p)->kind == TK_NAME && p->t[p->i + 1].kind == TK_OP &&
        !strcmp(p->t[p->i + 1].text, ".")) {
        if (!(n->name = tp_take_name(p))) goto fail;
        p->i++;
        if (!(n->attr = tp_take_name(p))) goto fail;
    } else if (p_targets(p, n)) {
        goto fail;
    }
    if (tp_accept_op(p, "=")) {
        if (!(n->b = tp_tuple(p, true, false)) || tp_expect_block_end(p)) goto fail;
        return n;
    }
    if (n->attr || n->n_names != 1) {
        tp_fail(p, "expected '='");
        goto fail;
    }
    n->kind = N_SETBLOCK;
    if (tp_expect_block_end(p)) goto fail;
    static const char *const ends[] = {"endset", NULL};
    if (p_body(p, &n->body, ends)) goto fail;
    p->i++;
    if (tp_expect_block_end(p)) goto fail;
    return n;
fail:
    tpl_node_free(n);
    return NULL;
}

static tpl_node *p_macro(tpl_parser *p, int line)
{
    tpl_node *n = tp_mk(p, N_MACRO, line);
    if (!n || !(n->name = tp_take_name(p)) || tp_expect_op(p, "(")) goto fail;
    while (!tp_accept_op(p, ")")) {
        if (n->n_names && tp_expect_op(p, ",")) goto fail;
        if (tp_accept_op(p, ")")) break;
        if (tp_push_name(p, &n->names, &n->n_names, tp_take_name(p))) goto fail;
        tpl_node *def = NULL;
        if (tp_accept_op(p, "=") && !(def = tp_expr(p, true))) goto fail;
        tpl_node **v = realloc(n->args.v, (n->args.n + 1) * sizeof *v);
        if (!v) {
            tpl_node_free(def);
            cv_errorf(p->err, "chat template: out of memory");
            goto fail;
        }
        n->args.v = v;
        v[n->args.n++] = def;
    }
    if (tp_expect_block_end(p)) goto fail;
    static const char *const ends[] = {"endmacro", NULL};
    int saved = p->loop_depth;
    p->loop_depth = 0;
    int rc = p_body(p, &n->body, ends);
    p->loop_depth = saved;
    if (rc) goto fail;
    p->i++;
    if (tp_is_name(p, n->name)) p->i++;
    if (tp_expect_block_end(p)) goto fail;
    return n;
fail:
    tpl_node_free(n);
    return NULL;
}

/* {% filter name(args) %}...{% endfilter %}: the body's text through a filter. */
static tpl_node *p_filterblock(tpl_parser *p, int line)
{
    tpl_node *n = tp_mk(p, N_FILTERBLOCK, line);
    tpl_node *body = tp_mk(p, N_BODY, line);
    if (!n || !body) {
        tpl_node_free(n);
        tpl_node_free(body);
        return NULL;
    }
    tpl_node *f = tp_mk(p, N_FILTER, line);
    if (!f) goto fail_body;
    f->a = body;
    n->a = f;
    if (!(f->name = tp_take_name(p))) goto fail;
    if (!tpl_filter_exists(f->name)) {
        tp_fail(p, "unknown filter '%s'", f->name);
        goto fail;
    }
    if (tp_is_op(p, "(") && tp_call_args(p, f)) goto fail;
    static const char *const ends[] = {"endfilter", NULL};
    if (tp_expect_block_end(p) || p_body(p, &body->body, ends)) goto fail;
    p->i++;
    if (tp_expect_block_end(p)) goto fail;
    return n;
fail_body:
    tpl_node_free(body);
fail:
    tpl_node_free(n);
    return NULL;
}

static tpl_node *p_statement(tpl_parser *p)
{
    int line = tp_cur(p)->line;
    if (tp_cur(p)->kind != TK_NAME) {
        tp_fail(p, "expected a tag name, got '%s'", tp_tok_desc(tp_cur(p)));
        return NULL;
    }
    char *tag = tp_cur(p)->text;
    p->i++;
    if (!strcmp(tag, "if")) return p_if(p, line);
    if (!strcmp(tag, "for")) return p_for(p, line);
    if (!strcmp(tag, "set")) return p_set(p, line);
    if (!strcmp(tag, "macro")) return p_macro(p, line);
    if (!strcmp(tag, "filter")) return p_filterblock(p, line);
    if (!strcmp(tag, "break") || !strcmp(tag, "continue")) {
        if (!p->loop_depth) {
            p->i--;
            tp_fail(p, "'%s' outside of a loop", tag);
            return NULL;
        }
        tpl_node *n = tp_mk(p, tag[0] == 'b' ? N_BREAK : N_CONTINUE, line);
        if (n && tp_expect_block_end(p)) {
            tpl_node_free(n);
            return NULL;
        }
        return n;
    }
    if (!strcmp(tag, "generation")) {
        /* transformers' assistant-mask tag: renders its body unchanged */
        tpl_node *n = tp_mk(p, N_BODY, line);
        static const char *const ends[] = {"endgeneration", NULL};
        if (!n || tp_expect_block_end(p) || p_body(p, &n->body, ends)) goto fail;
        p->i++;
        if (tp_expect_block_end(p)) goto fail;
        return n;
    fail:
        tpl_node_free(n);
        return NULL;
    }
    p->i--;
    tp_fail(p, "unknown tag '%s'", tag);
    return NULL;
}

/* Statements up to a block whose tag is one of ends (left unconsumed: the
 * cursor is on the tag name), or the end of the template when ends is NULL. */
static int p_body(tpl_parser *p, tpl_nodes *body, const char *const *ends)
{
    if (!tp_enter(p)) return -1;
    int start_line = p->i ? p->t[p->i - 1].line : 1; /* the opening tag's */
    for (;;) {
        tpl_tok *t = tp_cur(p);
        tpl_node *n = NULL;
        if (t->kind == TK_EOF) {
            if (!ends) break;
            tp_fail(p,
                    "unexpected end of template (a block opened near line %d is not closed; "
                    "expected '%s')",
                    start_line, ends[0]);
            return -1;
        } else if (t->kind == TK_DATA) {
            n = tp_mk(p, N_TEXT, t->line);
            if (!n) return -1;
            n->text = t->text;
            n->len = t->len;
            t->text = NULL; /* moved */
            p->i++;
        } else if (t->kind == TK_VAR_BEGIN) {
            p->i++;
            n = tp_mk(p, N_OUTPUT, t->line);
            if (!n) return -1;
            if (!(n->a = tp_tuple(p, true, false))) {
                tpl_node_free(n);
                return -1;
            }
            if (tp_cur(p)->kind != TK_VAR_END) {
                tp_fail(p, "expected end of print statement, got '%s'", tp_tok_desc(tp_cur(p)));
                tpl_node_free(n);
                return -1;
            }
            p->i++;
        } else if (t->kind == TK_BLOCK_BEGIN) {
            p->i++;
            for (size_t k = 0; ends && ends[k]; k++)
                if (tp_is_name(p, ends[k])) {
                    p->depth--;
                    return 0;
                }
            if (!(n = p_statement(p))) return -1;
        } else {
            return tp_fail(p, "unexpected '%s'", tp_tok_desc(t));
        }
        if (tp_push(p, body, n)) return -1;
    }
    p->depth--;
    return 0;
}

tpl_node *tpl_parse(tpl_tok *toks, size_t n_toks, cv_error *err)
{
    tpl_parser p = {.t = toks, .n = n_toks, .err = err};
    tpl_node *root = tp_mk(&p, N_BODY, 1);
    if (!root) return NULL;
    if (p_body(&p, &root->body, NULL)) {
        tpl_node_free(root);
        return NULL;
    }
    return root;
}

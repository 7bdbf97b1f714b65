/* Internals of the chat-template parser shared by its two files:
 * template_parse_expr.c (tokens, expressions) and template_parse.c
 * (statements). */
#ifndef CV_TEMPLATE_TEMPLATE_PARSE_H
#define CV_TEMPLATE_TEMPLATE_PARSE_H

#include <string.h>

#include "template/template_internal.h"

typedef struct tpl_parser {
    tpl_tok *t;
    size_t n, i;
    int depth;      /* nesting, bounded by TPL_MAX_NESTING */
    int loop_depth; /* for break/continue */
    cv_error *err;
} tpl_parser;

static inline tpl_tok *tp_cur(tpl_parser *p)
{
    return &p->t[p->i];
}

static inline bool tp_is_op(tpl_parser *p, const char *op)
{
    return tp_cur(p)->kind == TK_OP && !strcmp(tp_cur(p)->text, op);
}

static inline bool tp_is_name(tpl_parser *p, const char *name)
{
    return tp_cur(p)->kind == TK_NAME && !strcmp(tp_cur(p)->text, name);
}

static inline bool tp_accept_op(tpl_parser *p, const char *op)
{
    if (!tp_is_op(p, op)) return false;
    p->i++;
    return true;
}

static inline bool tp_accept_name(tpl_parser *p, const char *name)
{
    if (!tp_is_name(p, name)) return false;
    p->i++;
    return true;
}

int tp_fail(tpl_parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *tp_tok_desc(tpl_tok *t);
int tp_expect_op(tpl_parser *p, const char *op);
int tp_expect_block_end(tpl_parser *p);
char *tp_take_name(tpl_parser *p); /* malloc'ed, NULL on error */
tpl_node *tp_mk(tpl_parser *p, tpl_node_kind kind, int line);
int tp_push(tpl_parser *p, tpl_nodes *v, tpl_node *n); /* frees n on failure */
int tp_push_name(tpl_parser *p, char ***names, size_t *n, char *name);
bool tp_enter(tpl_parser *p); /* one nesting level deeper; false past the limit */
tpl_node *tp_expr(tpl_parser *p, bool with_cond);
tpl_node *tp_tuple(tpl_parser *p, bool with_cond, bool explicit_parens);
int tp_call_args(tpl_parser *p, tpl_node *n); /* '(' args ')' into n->args */

#endif

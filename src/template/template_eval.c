/* The chat-template evaluator: expressions and statements over the syntax
 * tree, with jinja2's scoping (loops and macros open a scope, if does not),
 * Undefined semantics and Python's operators; and the public entry points. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template/template_internal.h"

int tpl_fail(tpl_ctx *ctx, const tpl_node *at, const char *fmt, ...)
{
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return cv_errorf(ctx->err, "chat template line %d: %s", at ? at->line : 0, msg);
}

const tpl_val *tpl_arg(const tpl_args *a, size_t pos, const char *name)
{
    size_t k = 0;
    for (size_t i = 0; i < a->n; i++) {
        if (!a->names[i]) {
            if (k++ == pos) return &a->v[i];
        } else if (name && !strcmp(a->names[i], name)) {
            return &a->v[i];
        }
    }
    return NULL;
}

/* ---- scopes ----------------------------------------------------------------- */

static int push_frame(tpl_ctx *ctx, bool barrier)
{
    if (ctx->n_frames == ctx->cap_frames) {
        size_t cap = ctx->cap_frames ? ctx->cap_frames * 2 : 16;
        tpl_frame *f = realloc(ctx->frames, cap * sizeof *f);
        if (!f) return cv_errorf(ctx->err, "chat template: out of memory");
        ctx->frames = f;
        ctx->cap_frames = cap;
    }
    ctx->frames[ctx->n_frames++] = (tpl_frame){.barrier = barrier};
    return 0;
}

static void pop_frame(tpl_ctx *ctx)
{
    tpl_frame *f = &ctx->frames[--ctx->n_frames];
    for (size_t i = 0; i < f->n; i++)
        tpl_drop(&f->vars[i].val);
    free(f->vars);
}

/* Binds name in the innermost scope; takes v. */
static int set_var(tpl_ctx *ctx, const char *name, tpl_val v)
{
    tpl_frame *f = &ctx->frames[ctx->n_frames - 1];
    for (size_t i = 0; i < f->n; i++)
        if (!strcmp(f->vars[i].name, name)) {
            tpl_drop(&f->vars[i].val);
            f->vars[i].val = v;
            return 0;
        }
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 8;
        tpl_var *nv = realloc(f->vars, cap * sizeof *nv);
        if (!nv) {
            tpl_drop(&v);
            return cv_errorf(ctx->err, "chat template: out of memory");
        }
        f->vars = nv;
        f->cap = cap;
    }
    f->vars[f->n++] = (tpl_var){.name = name, .val = v};
    return 0;
}

static const tpl_val *find_in(const tpl_frame *f, const char *name)
{
    for (size_t i = 0; i < f->n; i++)
        if (!strcmp(f->vars[i].name, name)) return &f->vars[i].val;
    return NULL;
}

static tpl_val lookup(tpl_ctx *ctx, const char *name)
{
    for (size_t i = ctx->n_frames; i-- > 0;) {
        const tpl_val *v = find_in(&ctx->frames[i], name);
        if (v) return tpl_copy(v);
        if (ctx->frames[i].barrier && i > 0) i = 1; /* continue with frames[0] */
    }
    json_t *j = json_object_get(ctx->context, name);
    if (j) return tpl_json(json_incref(j));
    if (tpl_is_global(name)) return (tpl_val){.kind = TV_FUNC, .name = name};
    return tpl_undef(name);
}

/* ---- expressions ------------------------------------------------------------ */

static void args_free(tpl_args *a)
{
    for (size_t i = 0; i < a->n; i++)
        tpl_drop(&a->v[i]);
    free(a->v);
    a->v = NULL;
    a->n = 0;
}

static int eval_args(tpl_ctx *ctx, const tpl_node *n, tpl_args *a)
{
    a->n = 0;
    a->names = n->argnames;
    a->v = calloc(n->args.n + 1, sizeof *a->v);
    if (!a->v) return cv_errorf(ctx->err, "chat template: out of memory");
    for (size_t i = 0; i < n->args.n; i++) {
        if (tpl_eval(ctx, n->args.v[i], &a->v[i])) {
            args_free(a);
            return -1;
        }
        a->n++;
    }
    return 0;
}

static int call_macro(tpl_ctx *ctx, const tpl_node *at, const tpl_node *m, tpl_args *args,
                      tpl_val *out)
{
    if (ctx->call_depth >= TPL_MAX_CALL_DEPTH)
        return tpl_fail(ctx, at, "macro calls nested too deeply (more than %d)",
                        TPL_MAX_CALL_DEPTH);
    size_t n_pos = 0;
    for (size_t i = 0; i < args->n; i++) {
        if (!args->names[i])
            n_pos++;
        else {
            bool known = false;
            for (size_t k = 0; k < m->n_names; k++)
                known |= !strcmp(m->names[k], args->names[i]);
            if (!known)
                return tpl_fail(ctx, at, "macro '%s' takes no keyword argument '%s'", m->name,
                                args->names[i]);
        }
    }
    if (n_pos > m->n_names)
        return tpl_fail(ctx, at, "macro '%s' takes not more than %zu argument(s)", m->name,
                        m->n_names);
    if (push_frame(ctx, true)) return -1;
    int rc = 0;
    for (size_t k = 0; k < m->n_names && !rc; k++) {
        const tpl_val *v = tpl_arg(args, k, m->names[k]);
        tpl_val val;
        if (v)
            val = tpl_copy(v);
        else if (m->args.v[k])
            rc = tpl_eval(ctx, m->args.v[k], &val);
        else
            val = tpl_undef(m->names[k]);
        if (!rc) rc = set_var(ctx, m->names[k], val);
    }
    tpl_buf buf = {0}, *saved = ctx->out;
    if (!rc) {
        ctx->out = &buf;
        ctx->call_depth++;
        rc = tpl_exec_body(ctx, &m->body);
        ctx->call_depth--;
        ctx->out = saved;
    }
    pop_frame(ctx);
    if (!rc) *out = tpl_str(buf.p, buf.len);
    free(buf.p);
    return rc;
}

int tpl_call_value(tpl_ctx *ctx, const tpl_node *at, const tpl_val *fn, tpl_args *args,
                   tpl_val *out)
{
    switch (fn->kind) {
    case TV_MACRO:
        return call_macro(ctx, at, fn->node, args, out);
    case TV_FUNC:
        return tpl_global_call(ctx, at, fn->name, args, out);
    case TV_METHOD: {
        tpl_val recv = {.kind = TV_JSON, .j = fn->j};
        return tpl_method(ctx, at, &recv, fn->name, args, out);
    }
    case TV_UNDEF:
        return tpl_fail(ctx, at, "'%s' is undefined", fn->name);
    default:
        return tpl_fail(ctx, at, "'%s' object is not callable", tpl_type_name(fn));
    }
}

static int eval_container(tpl_ctx *ctx, const tpl_node *n, tpl_val *out)
{
    json_t *c = n->kind == N_LIST ? json_array() : json_object();
    if (!c) return cv_errorf(ctx->err, "chat template: out of memory");
    for (size_t i = 0; i < n->args.n; i++) {
        tpl_val v;
        if (tpl_eval(ctx, n->args.v[i], &v)) goto fail;
        if (tpl_ensure_json(ctx, n, &v)) {
            tpl_drop(&v);
            goto fail;
        }
        if (n->kind == N_LIST) {
            json_array_append(c, v.j);
        } else {
            tpl_val val;
            if (!tpl_is_str(&v)) {
                tpl_fail(ctx, n, "dict keys must be strings, not %s", tpl_type_name(&v));
                tpl_drop(&v);
                goto fail;
            }
            if (tpl_eval(ctx, n->args.v[++i], &val)) {
                tpl_drop(&v);
                goto fail;
            }
            if (tpl_ensure_json(ctx, n, &val)) {
                tpl_drop(&v);
                tpl_drop(&val);
                goto fail;
            }
            json_object_setn(c, json_string_value(v.j), json_string_length(v.j), val.j);
            tpl_drop(&val);
        }
        tpl_drop(&v);
    }
    *out = tpl_json(c);
    return 0;
fail:
    json_decref(c);
    return -1;
}

static int eval_node(tpl_ctx *ctx, const tpl_node *n, tpl_val *out);

/* Macros called inside deep expressions inside deep blocks multiply the
 * parser's per-tree limits: the render bounds its total depth too. */
int tpl_eval(tpl_ctx *ctx, const tpl_node *n, tpl_val *out)
{
    if (ctx->eval_depth >= TPL_MAX_EVAL_DEPTH)
        return tpl_fail(ctx, n, "template nests too deeply while rendering (more than %d levels)",
                        TPL_MAX_EVAL_DEPTH);
    ctx->eval_depth++;
    int rc = eval_node(ctx, n, out);
    ctx->eval_depth--;
    return rc;
}

static int eval_node(tpl_ctx *ctx, const tpl_node *n, tpl_val *out)
{
    if (++ctx->steps > TPL_MAX_STEPS)
        return tpl_fail(ctx, n, "template takes too long (more than %d steps of work)",
                        TPL_MAX_STEPS);
    tpl_val a = {0}, b = {0};
    tpl_args args = {0};
    int rc = 0;
    switch (n->kind) {
    case N_CONST:
        *out = tpl_json(json_incref(n->value));
        return 0;
    case N_NAME:
        *out = lookup(ctx, n->name);
        return 0;
    case N_LIST:
    case N_DICT:
        return eval_container(ctx, n, out);
    case N_ATTR:
        if (tpl_eval(ctx, n->a, &a)) return -1;
        rc = tpl_getattr(ctx, n, &a, n->name, out);
        break;
    case N_ITEM:
        if (tpl_eval(ctx, n->a, &a) || tpl_eval(ctx, n->b, &b))
            rc = -1;
        else
            rc = tpl_getitem(ctx, n, &a, &b, out);
        break;
    case N_SLICE:
        return tpl_eval_slice(ctx, n, out);
    case N_CALL:
        if (tpl_eval(ctx, n->a, &a) || eval_args(ctx, n, &args))
            rc = -1;
        else
            rc = tpl_call_value(ctx, n, &a, &args, out);
        break;
    case N_FILTER:
        if (tpl_eval(ctx, n->a, &a) || eval_args(ctx, n, &args))
            rc = -1;
        else
            rc = tpl_filter(ctx, n, n->name, &a, &args, out);
        break;
    case N_TEST: {
        bool r = false;
        if (tpl_eval(ctx, n->a, &a) || eval_args(ctx, n, &args))
            rc = -1;
        else
            rc = tpl_test(ctx, n, n->name, &a, &args, &r);
        if (!rc) *out = tpl_json(json_boolean(r != (n->op != 0)));
        break;
    }
    case N_NOT:
        if (tpl_eval(ctx, n->a, &a)) return -1;
        *out = tpl_json(json_boolean(!tpl_truthy(&a)));
        break;
    case N_NEG:
    case N_POS:
        if (tpl_eval(ctx, n->a, &a)) return -1;
        if (!tpl_is_num(&a)) {
            rc = tpl_fail(ctx, n, "bad operand type for unary %c: '%s'",
                          n->kind == N_NEG ? '-' : '+', tpl_type_name(&a));
        } else if (n->kind == N_POS) {
            *out =
                tpl_json(json_is_boolean(a.j) ? json_integer(json_is_true(a.j)) : json_incref(a.j));
        } else if (json_is_real(a.j)) {
            *out = tpl_json(json_real(-json_real_value(a.j)));
        } else {
            json_int_t v = json_is_integer(a.j) ? json_integer_value(a.j) : json_is_true(a.j);
            if (v == INT64_MIN)
                rc = tpl_fail(ctx, n, "integer overflow in unary -");
            else
                *out = tpl_json(json_integer(-v));
        }
        break;
    case N_BINOP:
        if (tpl_eval(ctx, n->a, &a) || tpl_eval(ctx, n->b, &b))
            rc = -1;
        else
            rc = tpl_binop_eval(ctx, n, n->op, &a, &b, out);
        break;
    case N_AND:
    case N_OR:
        if (tpl_eval(ctx, n->a, &a)) return -1;
        if (tpl_truthy(&a) == (n->kind == N_OR)) {
            *out = a;
            return 0;
        }
        tpl_drop(&a);
        return tpl_eval(ctx, n->b, out);
    case N_COND:
        if (tpl_eval(ctx, n->a, &a)) return -1;
        if (tpl_truthy(&a))
            rc = tpl_eval(ctx, n->b, out);
        else if (n->c)
            rc = tpl_eval(ctx, n->c, out);
        else
            *out = tpl_undef("else branch");
        break;
    default:
        return tpl_fail(ctx, n, "statement used as an expression");
    }
    tpl_drop(&a);
    tpl_drop(&b);
    args_free(&args);
    return rc;
}

/* ---- statements ------------------------------------------------------------- */

static int output(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v)
{
    tpl_str_of(ctx->out, v);
    if (ctx->out->oom)
        return tpl_fail(ctx, at, "output too large (over %u bytes)", TPL_MAX_OUTPUT_BYTES);
    return 0;
}

/* Assigns v to the targets of a for/set: one name, or unpacks a sequence. */
static int assign(tpl_ctx *ctx, const tpl_node *n, const tpl_val *v)
{
    if (n->n_names == 1) return set_var(ctx, n->names[0], tpl_copy(v));
    if (v->kind != TV_JSON || !json_is_array(v->j))
        return tpl_fail(ctx, n, "cannot unpack a %s into %zu names", tpl_type_name(v), n->n_names);
    if (json_array_size(v->j) != n->n_names)
        return tpl_fail(ctx, n, "cannot unpack %zu values into %zu names", json_array_size(v->j),
                        n->n_names);
    for (size_t i = 0; i < n->n_names; i++)
        if (set_var(ctx, n->names[i], tpl_json(json_incref(json_array_get(v->j, i))))) return -1;
    return 0;
}

static json_t *loop_object(size_t i, size_t len, json_t *items)
{
    json_t *l = json_object();
    json_object_set_new(l, "index", json_integer((json_int_t)i + 1));
    json_object_set_new(l, "index0", json_integer((json_int_t)i));
    json_object_set_new(l, "revindex", json_integer((json_int_t)(len - i)));
    json_object_set_new(l, "revindex0", json_integer((json_int_t)(len - i - 1)));
    json_object_set_new(l, "first", json_boolean(i == 0));
    json_object_set_new(l, "last", json_boolean(i + 1 == len));
    json_object_set_new(l, "length", json_integer((json_int_t)len));
    json_object_set_new(l, "depth", json_integer(1));
    json_object_set_new(l, "depth0", json_integer(0));
    if (i > 0) json_object_set(l, "previtem", json_array_get(items, i - 1));
    if (i + 1 < len) json_object_set(l, "nextitem", json_array_get(items, i + 1));
    return l;
}

static int exec_for(tpl_ctx *ctx, const tpl_node *n)
{
    tpl_val seq;
    json_t *all = NULL, *items = NULL;
    if (tpl_eval(ctx, n->a, &seq)) return -1;
    int rc = tpl_iterate(ctx, n->a, &seq, &all);
    tpl_drop(&seq);
    if (rc || push_frame(ctx, false)) {
        json_decref(all);
        return -1;
    }
    /* loop.length and loop.last count only the items the if-filter keeps,
     * so filter first (as jinja2 does) */
    if (n->b) {
        items = json_array();
        for (size_t i = 0; i < json_array_size(all) && !rc; i++) {
            tpl_val it = tpl_json(json_incref(json_array_get(all, i))), keep = {0};
            rc = assign(ctx, n, &it);
            if (!rc) rc = tpl_eval(ctx, n->b, &keep);
            if (!rc && tpl_truthy(&keep)) json_array_append(items, it.j);
            tpl_drop(&it);
            tpl_drop(&keep);
        }
        json_decref(all);
    } else {
        items = all;
    }
    size_t len = json_array_size(items);
    for (size_t i = 0; i < len && !rc; i++) {
        if (++ctx->iterations > TPL_MAX_ITERATIONS) {
            rc = tpl_fail(ctx, n, "too many loop iterations (more than %d)", TPL_MAX_ITERATIONS);
            break;
        }
        tpl_val it = tpl_json(json_incref(json_array_get(items, i)));
        rc = assign(ctx, n, &it);
        tpl_drop(&it);
        if (!rc) rc = set_var(ctx, "loop", tpl_json(loop_object(i, len, items)));
        if (!rc) rc = tpl_exec_body(ctx, &n->body);
        if (ctx->ctl == CTL_BREAK) {
            ctx->ctl = 0;
            break;
        }
        ctx->ctl = 0;
    }
    pop_frame(ctx);
    json_decref(items);
    if (!rc && len == 0) rc = tpl_exec_body(ctx, &n->else_body);
    return rc;
}

/* How deeply v nests lists and dicts, counting up to limit. */
static int value_depth(const json_t *j, int limit)
{
    if (limit <= 0 || !(json_is_array(j) || json_is_object(j))) return 0;
    int d = 0;
    if (json_is_array(j)) {
        for (size_t i = 0; i < json_array_size(j) && d < limit - 1; i++) {
            int k = value_depth(json_array_get(j, i), limit - 1);
            d = k > d ? k : d;
        }
    } else {
        const char *key;
        json_t *x;
        json_object_foreach((json_t *)j, key, x)
        {
            int k = value_depth(x, limit - 1);
            d = k > d ? k : d;
            if (d >= limit - 1) break;
        }
    }
    return d + 1;
}

/* A loop that sets x = [x] would nest without bound (and printing or
 * freeing such a value recurses once per level): refuse it. */
static int check_depth(tpl_ctx *ctx, const tpl_node *n, const tpl_val *v)
{
    if ((v->kind == TV_JSON || v->kind == TV_NS) &&
        value_depth(v->j, TPL_MAX_VALUE_DEPTH + 1) > TPL_MAX_VALUE_DEPTH)
        return tpl_fail(ctx, n, "value nested too deeply (more than %d levels)",
                        TPL_MAX_VALUE_DEPTH);
    return 0;
}

static int exec_set(tpl_ctx *ctx, const tpl_node *n)
{
    tpl_val v;
    if (tpl_eval(ctx, n->b, &v)) return -1;
    if (check_depth(ctx, n, &v)) {
        tpl_drop(&v);
        return -1;
    }
    if (!n->attr) {
        int rc = assign(ctx, n, &v);
        tpl_drop(&v);
        return rc;
    }
    tpl_val ns = lookup(ctx, n->name);
    int rc = 0;
    if (ns.kind != TV_NS)
        rc = tpl_fail(ctx, n, "cannot assign attribute on non-namespace object");
    else if (!(rc = tpl_ensure_json(ctx, n, &v)))
        json_object_set(ns.j, n->attr, v.j);
    tpl_drop(&ns);
    tpl_drop(&v);
    return rc;
}

static int capture(tpl_ctx *ctx, const tpl_nodes *body, tpl_val *out)
{
    tpl_buf buf = {0}, *saved = ctx->out;
    ctx->out = &buf;
    int rc = tpl_exec_body(ctx, body);
    ctx->out = saved;
    if (!rc) *out = tpl_str(buf.p, buf.len);
    free(buf.p);
    return rc;
}

static int exec_stmt(tpl_ctx *ctx, const tpl_node *n)
{
    tpl_val v = {0};
    int rc = 0;
    switch (n->kind) {
    case N_TEXT:
        tpl_buf_put(ctx->out, n->text, n->len);
        if (ctx->out->oom)
            return tpl_fail(ctx, n, "output too large (over %u bytes)", TPL_MAX_OUTPUT_BYTES);
        return 0;
    case N_OUTPUT:
        if (tpl_eval(ctx, n->a, &v)) return -1;
        rc = output(ctx, n, &v);
        break;
    case N_IF:
        if (tpl_eval(ctx, n->a, &v)) return -1;
        rc = tpl_exec_body(ctx, tpl_truthy(&v) ? &n->body : &n->else_body);
        break;
    case N_FOR:
        return exec_for(ctx, n);
    case N_SET:
        return exec_set(ctx, n);
    case N_SETBLOCK:
        if (capture(ctx, &n->body, &v)) return -1;
        return set_var(ctx, n->names[0], v);
    case N_MACRO:
        return set_var(ctx, n->name, (tpl_val){.kind = TV_MACRO, .node = n});
    case N_BREAK:
        ctx->ctl = CTL_BREAK;
        return 0;
    case N_CONTINUE:
        ctx->ctl = CTL_CONTINUE;
        return 0;
    case N_BODY:
        return tpl_exec_body(ctx, &n->body);
    case N_FILTERBLOCK: {
        tpl_val text, res;
        tpl_args args = {0};
        const tpl_node *f = n->a;
        if (capture(ctx, &f->a->body, &text)) return -1;
        if (eval_args(ctx, f, &args)) {
            tpl_drop(&text);
            return -1;
        }
        rc = tpl_filter(ctx, f, f->name, &text, &args, &res);
        if (!rc) rc = output(ctx, n, &res);
        if (!rc) tpl_drop(&res);
        tpl_drop(&text);
        args_free(&args);
        return rc;
    }
    default:
        return tpl_fail(ctx, n, "expression used as a statement");
    }
    tpl_drop(&v);
    return rc;
}

int tpl_exec_body(tpl_ctx *ctx, const tpl_nodes *body)
{
    if (ctx->eval_depth >= TPL_MAX_EVAL_DEPTH)
        return tpl_fail(ctx, body->n ? body->v[0] : NULL,
                        "template nests too deeply while rendering (more than %d levels)",
                        TPL_MAX_EVAL_DEPTH);
    for (size_t i = 0; i < body->n; i++) {
        ctx->eval_depth++;
        int rc = exec_stmt(ctx, body->v[i]);
        ctx->eval_depth--;
        if (rc) return -1;
        if (ctx->ctl) return 0; /* break/continue: unwind to the loop */
    }
    return 0;
}

/* ---- public API -------------------------------------------------------------- */

cv_template *cv_template_compile(const char *source, size_t len, cv_error *err)
{
    if (!source) {
        cv_errorf(err, "chat template: no source");
        return NULL;
    }
    /* jansson's string constructor is the UTF-8 check */
    json_t *probe = json_stringn(source, len);
    if (!probe) {
        cv_errorf(err, "chat template: not valid UTF-8");
        return NULL;
    }
    json_decref(probe);
    tpl_tok *toks;
    size_t n;
    if (tpl_lex(source, len, &toks, &n, err)) return NULL;
    tpl_node *root = tpl_parse(toks, n, err);
    tpl_toks_free(toks, n);
    if (!root) return NULL;
    cv_template *t = malloc(sizeof *t);
    if (!t) {
        tpl_node_free(root);
        cv_errorf(err, "chat template: out of memory");
        return NULL;
    }
    t->root = root;
    return t;
}

char *cv_template_render(const cv_template *t, const json_t *context, cv_error *err)
{
    if (!json_is_object(context)) {
        cv_errorf(err, "chat template: the render context must be a JSON object");
        return NULL;
    }
    tpl_buf out = {0};
    tpl_ctx ctx = {.context = context, .out = &out, .err = err};
    size_t *outer = tpl_work;
    tpl_work = &ctx.steps;
    int rc = push_frame(&ctx, false);
    if (!rc) rc = tpl_exec_body(&ctx, &t->root->body);
    tpl_work = outer;
    while (ctx.n_frames)
        pop_frame(&ctx);
    free(ctx.frames);
    if (rc) {
        free(out.p);
        return NULL;
    }
    if (!out.p) out.p = calloc(1, 1);
    if (!out.p) cv_errorf(err, "chat template: out of memory");
    return out.p;
}

void cv_template_free(cv_template *t)
{
    if (!t) return;
    tpl_node_free(t->root);
    free(t);
}

/* jinja2's tests (`x is defined`, `x is string`, `n is divisibleby 3`...)
 * as chat templates use them. */
#include <string.h>

#include "template/template_internal.h"
#include "template/template_text.h"

static const char *const test_names[] = {
    "defined", "undefined", "none",    "string",  "mapping",  "iterable", "number", "sequence",
    "true",    "false",     "boolean", "integer", "float",    "equalto",  "eq",     "==",
    "ne",      "!=",        "lt",      "<",       "le",       "<=",       "gt",     ">",
    "ge",      ">=",        "in",      "sameas",  "callable", "even",     "odd",    "divisibleby",
    "lower",   "upper",     "escaped", "filter",  "test",     NULL};

bool tpl_test_exists(const char *name)
{
    return tpl_name_in(test_names, name);
}

static bool is_json(const tpl_val *v, json_type t)
{
    return v->kind == TV_JSON && json_typeof(v->j) == t;
}

int tpl_test(tpl_ctx *ctx, const tpl_node *at, const char *name, const tpl_val *v, tpl_args *args,
             bool *out)
{
    const tpl_val *x = tpl_arg(args, 0, NULL);
    bool str = tpl_is_str(v);
    if (!strcmp(name, "defined"))
        *out = v->kind != TV_UNDEF;
    else if (!strcmp(name, "undefined"))
        *out = v->kind == TV_UNDEF;
    else if (!strcmp(name, "none"))
        *out = is_json(v, JSON_NULL);
    else if (!strcmp(name, "string"))
        *out = str;
    else if (!strcmp(name, "mapping"))
        *out = is_json(v, JSON_OBJECT);
    else if (!strcmp(name, "iterable"))
        *out = v->kind == TV_UNDEF || str || is_json(v, JSON_ARRAY) || is_json(v, JSON_OBJECT);
    else if (!strcmp(name, "sequence"))
        *out = v->kind == TV_UNDEF || str || is_json(v, JSON_ARRAY) || is_json(v, JSON_OBJECT);
    else if (!strcmp(name, "number"))
        *out = tpl_is_num(v);
    else if (!strcmp(name, "true"))
        *out = is_json(v, JSON_TRUE);
    else if (!strcmp(name, "false"))
        *out = is_json(v, JSON_FALSE);
    else if (!strcmp(name, "boolean"))
        *out = v->kind == TV_JSON && json_is_boolean(v->j);
    else if (!strcmp(name, "integer"))
        *out = is_json(v, JSON_INTEGER);
    else if (!strcmp(name, "float"))
        *out = is_json(v, JSON_REAL);
    else if (!strcmp(name, "callable"))
        *out = v->kind == TV_MACRO || v->kind == TV_FUNC || v->kind == TV_METHOD;
    else if (!strcmp(name, "escaped"))
        *out = false;
    else if (!strcmp(name, "filter"))
        *out = tpl_is_str(v) && tpl_filter_exists(json_string_value(v->j));
    else if (!strcmp(name, "test"))
        *out = tpl_is_str(v) && tpl_test_exists(json_string_value(v->j));
    else if (!strcmp(name, "lower") || !strcmp(name, "upper")) {
        *out = false;
        if (str) {
            tpl_val t;
            if (tpl_text_case(ctx, at, v, name[0] == 'l' ? TEXT_LOWER : TEXT_UPPER, &t)) return -1;
            *out = tpl_equal(&t, v);
            tpl_drop(&t);
        }
    } else if (!strcmp(name, "even") || !strcmp(name, "odd") || !strcmp(name, "divisibleby")) {
        json_int_t d = 2;
        if (name[0] == 'd') {
            if (!x || !tpl_is_int(x))
                return tpl_fail(ctx, at, "test 'divisibleby' needs an integer argument");
            d = json_is_integer(x->j) ? json_integer_value(x->j) : json_is_true(x->j);
            if (d == 0) return tpl_fail(ctx, at, "integer division or modulo by zero");
        }
        if (!tpl_is_int(v))
            return tpl_fail(ctx, at, "test '%s' needs an integer, not %s", name, tpl_type_name(v));
        json_int_t i = json_is_integer(v->j) ? json_integer_value(v->j) : json_is_true(v->j);
        json_int_t m = d == -1 ? 0 : i % d;
        *out = name[0] == 'o' ? m != 0 : m == 0;
    } else if (!strcmp(name, "sameas")) {
        if (!x) return tpl_fail(ctx, at, "test 'sameas' needs an argument");
        *out = v->kind == x->kind &&
               (v->j == x->j || (v->kind == TV_JSON && json_typeof(v->j) == json_typeof(x->j) &&
                                 (json_is_null(v->j) || json_is_boolean(v->j))));
    } else {
        /* comparison tests */
        static const char *const names[] = {"equalto", "eq", "==", "ne", "!=", "lt", "<",
                                            "le",      "<=", "gt", ">",  "ge", ">=", "in"};
        static const int ops[] = {OP_EQ, OP_EQ, OP_EQ, OP_NE, OP_NE, OP_LT, OP_LT,
                                  OP_LE, OP_LE, OP_GT, OP_GT, OP_GE, OP_GE, OP_IN};
        for (size_t i = 0; i < sizeof ops / sizeof *ops; i++) {
            if (strcmp(name, names[i])) continue;
            if (!x) return tpl_fail(ctx, at, "test '%s' needs an argument", name);
            tpl_val r;
            if (tpl_binop_eval(ctx, at, ops[i], v, x, &r)) return -1;
            *out = tpl_truthy(&r);
            tpl_drop(&r);
            return 0;
        }
        return tpl_fail(ctx, at, "unknown test '%s'", name);
    }
    return 0;
}

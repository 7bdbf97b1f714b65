/* Python's binary operators on template values: arithmetic, comparison,
 * membership and jinja2's ~ concatenation. */
/* memmem: linear-time substring search */
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "template/template_internal.h"

static const char *const op_sym[] = {"+",  "-",  "*", "/",  "//", "%",  "**", "~",
                                     "==", "!=", "<", "<=", ">",  ">=", "in", "not in"};

static json_int_t ival(const json_t *j)
{
    return json_is_integer(j) ? json_integer_value(j) : json_is_true(j);
}

static int unsupported(tpl_ctx *ctx, const tpl_node *at, int op, const tpl_val *a, const tpl_val *b)
{
    if (a->kind == TV_UNDEF) return tpl_fail(ctx, at, "'%s' is undefined", a->name);
    if (b->kind == TV_UNDEF) return tpl_fail(ctx, at, "'%s' is undefined", b->name);
    if (op >= OP_LT && op <= OP_GE)
        return tpl_fail(ctx, at, "'%s' not supported between instances of '%s' and '%s'",
                        op_sym[op], tpl_type_name(a), tpl_type_name(b));
    return tpl_fail(ctx, at, "unsupported operand type(s) for %s: '%s' and '%s'", op_sym[op],
                    tpl_type_name(a), tpl_type_name(b));
}

static int repeat(tpl_ctx *ctx, const tpl_node *at, const json_t *seq, json_int_t times,
                  tpl_val *out)
{
    if (times < 0) times = 0;
    size_t unit = json_is_string(seq) ? json_string_length(seq) : json_array_size(seq);
    size_t max = json_is_string(seq) ? TPL_MAX_OUTPUT_BYTES : TPL_MAX_LIST_ITEMS;
    if (unit && (size_t)times > max / unit) return tpl_fail(ctx, at, "repetition result too large");
    if (!json_is_string(seq)) tpl_charge(unit * (size_t)times);
    if (json_is_string(seq)) {
        tpl_buf b = {0};
        for (json_int_t i = 0; i < times; i++)
            tpl_buf_put(&b, json_string_value(seq), unit);
        *out = tpl_str(b.p, b.len);
        free(b.p);
    } else {
        json_t *r = json_array();
        for (json_int_t i = 0; i < times; i++)
            json_array_extend(r, (json_t *)seq);
        *out = tpl_json(r);
    }
    return 0;
}

static int arith(tpl_ctx *ctx, const tpl_node *at, int op, const tpl_val *a, const tpl_val *b,
                 tpl_val *out)
{
    bool both_int = tpl_is_int(a) && tpl_is_int(b);
    if (both_int && op != OP_DIV) {
        json_int_t x = ival(a->j), y = ival(b->j), r = 0;
        switch (op) {
        case OP_ADD:
            if (__builtin_add_overflow(x, y, &r)) goto overflow;
            break;
        case OP_SUB:
            if (__builtin_sub_overflow(x, y, &r)) goto overflow;
            break;
        case OP_MUL:
            if (__builtin_mul_overflow(x, y, &r)) goto overflow;
            break;
        case OP_FLOORDIV:
        case OP_MOD:
            if (y == 0) return tpl_fail(ctx, at, "integer division or modulo by zero");
            if (x == INT64_MIN && y == -1) goto overflow;
            r = op == OP_FLOORDIV ? x / y : x % y;
            if (op == OP_FLOORDIV && (x % y != 0) && ((x < 0) != (y < 0))) r--;
            if (op == OP_MOD && r != 0 && ((r < 0) != (y < 0))) r += y;
            break;
        case OP_POW:
            if (y < 0) {
                *out = tpl_json(json_real(pow((double)x, (double)y)));
                return 0;
            }
            r = 1;
            for (json_int_t i = 0; i < y; i++) {
                if (__builtin_mul_overflow(r, x, &r)) goto overflow;
                if (r == 0 || r == 1) break;
            }
            if (r == 1 && x == -1 && y % 2) r = -1;
            break;
        }
        *out = tpl_json(json_integer(r));
        return 0;
    overflow:
        return tpl_fail(ctx, at, "integer overflow in '%s'", op_sym[op]);
    }
    double x = tpl_num(a->j), y = tpl_num(b->j), r = 0;
    switch (op) {
    case OP_ADD:
        r = x + y;
        break;
    case OP_SUB:
        r = x - y;
        break;
    case OP_MUL:
        r = x * y;
        break;
    case OP_DIV:
        if (y == 0) return tpl_fail(ctx, at, "division by zero");
        r = x / y;
        break;
    case OP_FLOORDIV:
    case OP_MOD:
        if (y == 0) return tpl_fail(ctx, at, "float division by zero");
        r = op == OP_FLOORDIV ? floor(x / y) : fmod(x, y);
        if (op == OP_MOD && r != 0 && ((r < 0) != (y < 0))) r += y;
        break;
    case OP_POW:
        r = pow(x, y);
        break;
    }
    json_t *j = json_real(r);
    if (!j) return tpl_fail(ctx, at, "numeric result out of range in '%s'", op_sym[op]);
    *out = tpl_json(j);
    return 0;
}

static int contains(tpl_ctx *ctx, const tpl_node *at, const tpl_val *item, const tpl_val *seq,
                    bool *res)
{
    *res = false;
    if (seq->kind == TV_UNDEF) return 0;
    if (seq->kind == TV_NS && tpl_is_str(item)) {
        *res = json_object_get(seq->j, json_string_value(item->j)) != NULL;
        return 0;
    }
    if (seq->kind != TV_JSON)
        return tpl_fail(ctx, at, "argument of type '%s' is not iterable", tpl_type_name(seq));
    const json_t *s = seq->j;
    if (json_is_string(s)) {
        if (!tpl_is_str(item))
            return tpl_fail(ctx, at, "'in <string>' requires string as left operand, not %s",
                            tpl_type_name(item));
        size_t n = json_string_length(item->j), h = json_string_length(s);
        const char *hs = json_string_value(s), *nd = json_string_value(item->j);
        tpl_charge(h / 16);
        *res = n == 0 || memmem(hs, h, nd, n) != NULL;
    } else if (json_is_array(s)) {
        tpl_charge(json_array_size(s));
        for (size_t i = 0; i < json_array_size(s) && !*res; i++) {
            tpl_val e = {.kind = TV_JSON, .j = json_array_get(s, i)};
            *res = tpl_equal(&e, item);
        }
    } else if (json_is_object(s)) {
        *res = tpl_is_str(item) &&
               json_object_getn(s, json_string_value(item->j), json_string_length(item->j));
    } else {
        return tpl_fail(ctx, at, "argument of type '%s' is not iterable", tpl_type_name(seq));
    }
    return 0;
}

static int compare(tpl_ctx *ctx, const tpl_node *at, int op, const tpl_val *a, const tpl_val *b,
                   bool *res)
{
    int c;
    if (tpl_is_num(a) && tpl_is_num(b)) {
        if (tpl_is_int(a) && tpl_is_int(b)) {
            json_int_t x = ival(a->j), y = ival(b->j);
            c = x < y ? -1 : x > y;
        } else {
            double x = tpl_num(a->j), y = tpl_num(b->j);
            if (isnan(x) || isnan(y)) {
                *res = false;
                return 0;
            }
            c = x < y ? -1 : x > y;
        }
    } else if (tpl_is_str(a) && tpl_is_str(b)) {
        size_t la = json_string_length(a->j), lb = json_string_length(b->j);
        c = memcmp(json_string_value(a->j), json_string_value(b->j), la < lb ? la : lb);
        if (!c) c = la < lb ? -1 : la > lb;
    } else {
        return unsupported(ctx, at, op, a, b);
    }
    *res = op == OP_LT ? c < 0 : op == OP_LE ? c <= 0 : op == OP_GT ? c > 0 : c >= 0;
    return 0;
}

int tpl_binop_eval(tpl_ctx *ctx, const tpl_node *at, int op, const tpl_val *a, const tpl_val *b,
                   tpl_val *out)
{
    bool r = false;
    switch (op) {
    case OP_EQ:
    case OP_NE:
        *out = tpl_json(json_boolean(tpl_equal(a, b) == (op == OP_EQ)));
        return 0;
    case OP_IN:
    case OP_NOTIN:
        if (contains(ctx, at, a, b, &r)) return -1;
        *out = tpl_json(json_boolean(r == (op == OP_IN)));
        return 0;
    case OP_LT:
    case OP_LE:
    case OP_GT:
    case OP_GE:
        if (compare(ctx, at, op, a, b, &r)) return -1;
        *out = tpl_json(json_boolean(r));
        return 0;
    case OP_CONCAT: {
        tpl_buf buf = {0};
        tpl_str_of(&buf, a);
        tpl_str_of(&buf, b);
        if (buf.oom) {
            free(buf.p);
            return tpl_fail(ctx, at, "string too long");
        }
        *out = tpl_str(buf.p, buf.len);
        free(buf.p);
        return 0;
    }
    default:
        break;
    }
    if (tpl_is_num(a) && tpl_is_num(b)) return arith(ctx, at, op, a, b, out);
    if (a->kind != TV_JSON || b->kind != TV_JSON) return unsupported(ctx, at, op, a, b);
    if (op == OP_ADD && json_is_string(a->j) && json_is_string(b->j)) {
        size_t la = json_string_length(a->j), lb = json_string_length(b->j);
        if (la + lb > TPL_MAX_OUTPUT_BYTES) return tpl_fail(ctx, at, "string too long");
        char *s = malloc(la + lb + 1);
        if (!s) return cv_errorf(ctx->err, "chat template: out of memory");
        memcpy(s, json_string_value(a->j), la);
        memcpy(s + la, json_string_value(b->j), lb);
        *out = tpl_str(s, la + lb);
        free(s);
        return 0;
    }
    if (op == OP_ADD && json_is_array(a->j) && json_is_array(b->j)) {
        size_t total = json_array_size(a->j) + json_array_size(b->j);
        if (total > TPL_MAX_LIST_ITEMS)
            return tpl_fail(ctx, at, "list too long (over %d items)", TPL_MAX_LIST_ITEMS);
        tpl_charge(total);
        json_t *r2 = json_array();
        json_array_extend(r2, a->j);
        json_array_extend(r2, b->j);
        *out = tpl_json(r2);
        return 0;
    }
    if (op == OP_MUL) {
        const tpl_val *seq = tpl_is_int(b) ? a : tpl_is_int(a) ? b : NULL;
        const tpl_val *cnt = seq == a ? b : a;
        if (seq && (json_is_string(seq->j) || json_is_array(seq->j)))
            return repeat(ctx, at, seq->j, ival(cnt->j), out);
    }
    return unsupported(ctx, at, op, a, b);
}

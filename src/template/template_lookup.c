/* Attribute, item and slice lookups on template values as jinja2's sandbox
 * does them (a dict's methods before its keys, Undefined for what is
 * missing), and iteration over lists, dict keys and string characters. */
#include <stdlib.h>
#include <string.h>

#include "template/template_internal.h"

static int undefined_error(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v)
{
    return tpl_fail(ctx, at, "'%s' is undefined", v->name ? v->name : "value");
}

int tpl_getattr(tpl_ctx *ctx, const tpl_node *at, const tpl_val *obj, const char *name,
                tpl_val *out)
{
    if (obj->kind == TV_UNDEF) return undefined_error(ctx, at, obj);
    if (obj->kind == TV_NS) {
        json_t *j = json_object_get(obj->j, name);
        *out = j ? tpl_json(json_incref(j)) : tpl_undef(name);
        return 0;
    }
    if (obj->kind != TV_JSON) {
        *out = tpl_undef(name);
        return 0;
    }
    if (tpl_is_method(obj, name)) {
        *out = (tpl_val){.kind = TV_METHOD, .j = json_incref(obj->j), .name = name};
        return 0;
    }
    json_t *j = json_is_object(obj->j) ? json_object_get(obj->j, name) : NULL;
    *out = j ? tpl_json(json_incref(j)) : tpl_undef(name);
    return 0;
}

int tpl_getitem(tpl_ctx *ctx, const tpl_node *at, const tpl_val *obj, const tpl_val *key,
                tpl_val *out)
{
    if (obj->kind == TV_UNDEF) return undefined_error(ctx, at, obj);
    *out = tpl_undef("item");
    if (tpl_is_str(key) &&
        (obj->kind == TV_NS || (obj->kind == TV_JSON && json_is_object(obj->j)))) {
        json_t *j = json_object_getn(obj->j, json_string_value(key->j), json_string_length(key->j));
        if (j)
            *out = tpl_json(json_incref(j));
        else if (obj->kind == TV_JSON)
            return tpl_getattr(ctx, at, obj, json_string_value(key->j), out);
        return 0;
    }
    if (obj->kind != TV_JSON || !tpl_is_int(key)) return 0;
    json_int_t i = json_is_integer(key->j) ? json_integer_value(key->j) : json_is_true(key->j);
    if (json_is_array(obj->j)) {
        json_int_t n = (json_int_t)json_array_size(obj->j);
        if (i < 0) i += n;
        if (i >= 0 && i < n) *out = tpl_json(json_incref(json_array_get(obj->j, (size_t)i)));
    } else if (json_is_string(obj->j)) {
        size_t *offs;
        json_int_t n = (json_int_t)tpl_utf8_offsets(json_string_value(obj->j),
                                                    json_string_length(obj->j), &offs);
        if (!offs) return cv_errorf(ctx->err, "chat template: out of memory");
        if (i < 0) i += n;
        if (i >= 0 && i < n)
            *out = tpl_str(json_string_value(obj->j) + offs[i], offs[i + 1] - offs[i]);
        free(offs);
    }
    return 0;
}

/* Python's slice indices for a sequence of n items. */
static int slice_bounds(tpl_ctx *ctx, const tpl_node *at, const tpl_val *lo, const tpl_val *hi,
                        const tpl_val *st, json_int_t n, json_int_t *start, json_int_t *stop,
                        json_int_t *step)
{
    const tpl_val *vs[3] = {lo, hi, st};
    json_int_t x[3];
    bool given[3];
    for (int k = 0; k < 3; k++) {
        given[k] = vs[k]->kind == TV_JSON && !json_is_null(vs[k]->j);
        if (given[k] && !tpl_is_int(vs[k]))
            return tpl_fail(ctx, at, "slice indices must be integers or None");
        x[k] = given[k] ? (json_is_integer(vs[k]->j) ? json_integer_value(vs[k]->j)
                                                     : json_is_true(vs[k]->j))
                        : 0;
    }
    *step = given[2] ? x[2] : 1;
    if (*step == 0) return tpl_fail(ctx, at, "slice step cannot be zero");
    json_int_t dlo = *step > 0 ? 0 : n - 1, dhi = *step > 0 ? n : -1;
    for (int k = 0; k < 2; k++) {
        json_int_t v = given[k] ? x[k] : (k ? dhi : dlo);
        if (given[k]) {
            if (v < 0) v += n;
            if (*step > 0)
                v = v < 0 ? 0 : v > n ? n : v;
            else
                v = v < -1 ? -1 : v > n - 1 ? n - 1 : v;
        }
        if (k)
            *stop = v;
        else
            *start = v;
    }
    return 0;
}

int tpl_eval_slice(tpl_ctx *ctx, const tpl_node *n, tpl_val *out)
{
    tpl_val obj = {0}, lo = {0}, hi = {0}, st = {0};
    int rc = -1;
    if (tpl_eval(ctx, n->a, &obj) || (n->b && tpl_eval(ctx, n->b, &lo)) ||
        (n->c && tpl_eval(ctx, n->c, &hi)) || (n->d && tpl_eval(ctx, n->d, &st)))
        goto done;
    if (obj.kind == TV_UNDEF) {
        undefined_error(ctx, n, &obj);
        goto done;
    }
    bool is_s = tpl_is_str(&obj);
    if (obj.kind != TV_JSON || !(is_s || json_is_array(obj.j))) {
        tpl_fail(ctx, n, "'%s' object is not subscriptable", tpl_type_name(&obj));
        goto done;
    }
    size_t *offs = NULL;
    json_int_t len = is_s ? (json_int_t)tpl_utf8_offsets(json_string_value(obj.j),
                                                         json_string_length(obj.j), &offs)
                          : (json_int_t)json_array_size(obj.j);
    if (is_s && !offs) {
        cv_errorf(ctx->err, "chat template: out of memory");
        goto done;
    }
    json_int_t start = 0, stop = 0, step = 1;
    if (slice_bounds(ctx, n, &lo, &hi, &st, len, &start, &stop, &step)) {
        free(offs);
        goto done;
    }
    if (is_s) {
        tpl_buf b = {0};
        const char *s = json_string_value(obj.j);
        for (json_int_t i = start; step > 0 ? i < stop : i > stop; i += step)
            tpl_buf_put(&b, s + offs[i], offs[i + 1] - offs[i]);
        *out = tpl_str(b.p, b.len);
        free(b.p);
    } else {
        json_t *a = json_array();
        for (json_int_t i = start; step > 0 ? i < stop : i > stop; i += step)
            json_array_append(a, json_array_get(obj.j, (size_t)i));
        *out = tpl_json(a);
    }
    free(offs);
    rc = 0;
done:
    tpl_drop(&obj);
    tpl_drop(&lo);
    tpl_drop(&hi);
    tpl_drop(&st);
    return rc;
}

int tpl_ensure_json(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v)
{
    if (v->kind == TV_JSON) return 0;
    if (v->kind == TV_UNDEF) return undefined_error(ctx, at, v);
    return tpl_fail(ctx, at, "a %s cannot be stored in a list or dict", tpl_type_name(v));
}

int tpl_iterate(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v, json_t **items)
{
    if (v->kind == TV_UNDEF) {
        *items = json_array();
        return 0;
    }
    if (v->kind != TV_JSON)
        return tpl_fail(ctx, at, "'%s' object is not iterable", tpl_type_name(v));
    json_t *j = v->j;
    tpl_charge(json_is_string(j)   ? json_string_length(j)
               : json_is_array(j)  ? json_array_size(j)
               : json_is_object(j) ? json_object_size(j)
                                   : 0);
    if (json_is_array(j)) {
        *items = json_incref(j);
    } else if (json_is_object(j)) {
        *items = json_array();
        const char *k;
        json_t *x;
        json_object_foreach(j, k, x) json_array_append_new(*items, json_string_nocheck(k));
    } else if (json_is_string(j)) {
        size_t *offs;
        size_t n = tpl_utf8_offsets(json_string_value(j), json_string_length(j), &offs);
        if (!offs) return cv_errorf(ctx->err, "chat template: out of memory");
        *items = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(*items, json_stringn_nocheck(json_string_value(j) + offs[i],
                                                               offs[i + 1] - offs[i]));
        free(offs);
    } else {
        return tpl_fail(ctx, at, "'%s' object is not iterable", tpl_type_name(v));
    }
    if (!*items) return cv_errorf(ctx->err, "chat template: out of memory");
    return 0;
}

/* jinja2's filters as chat templates use them, with transformers' tojson
 * (json.dumps with ensure_ascii=False). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template/template_internal.h"
#include "template/template_text.h"

static const char *const filter_names[] = {
    "tojson", "trim",    "length",     "count",     "selectattr", "rejectattr", "select",
    "reject", "map",     "join",       "first",     "last",       "default",    "d",
    "upper",  "lower",   "capitalize", "title",     "list",       "string",     "int",
    "float",  "replace", "indent",     "items",     "dictsort",   "unique",     "reverse",
    "round",  "safe",    "e",          "escape",    "abs",        "sum",        "min",
    "max",    "sort",    "attr",       "wordcount", "center",     "batch",      "bool",
    NULL};

bool tpl_filter_exists(const char *name)
{
    return tpl_name_in(filter_names, name);
}

static bool is_json(const tpl_val *v, json_type t)
{
    return v->kind == TV_JSON && json_typeof(v->j) == t;
}

/* ---- helpers ------------------------------------------------------------------ */

static bool arg_bool(const tpl_args *a, size_t pos, const char *name, bool def)
{
    const tpl_val *v = tpl_arg(a, pos, name);
    return v ? tpl_truthy(v) : def;
}

/* value.attribute with jinja2's dotted paths ("a.b") and integer parts. */
static int get_path(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v, const tpl_val *attr,
                    tpl_val *out)
{
    if (tpl_is_int(attr)) return tpl_getitem(ctx, at, v, attr, out);
    if (!tpl_is_str(attr)) return tpl_fail(ctx, at, "attribute must be a string");
    *out = tpl_copy(v);
    const char *p = json_string_value(attr->j);
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        tpl_val key = tpl_str(p, n), next;
        bool digits = n > 0 && strspn(p, "0123456789") >= n;
        if (digits) {
            tpl_drop(&key);
            key = tpl_json(json_integer(strtoll(p, NULL, 10)));
        }
        int rc = out->kind == TV_UNDEF ? (next = tpl_undef("attribute"), 0)
                                       : tpl_getitem(ctx, at, out, &key, &next);
        tpl_drop(&key);
        tpl_drop(out);
        if (rc) return -1;
        *out = next;
        p += n + (dot ? 1 : 0);
    }
    return 0;
}

/* select/reject/selectattr/rejectattr: keep the items whose (attribute's)
 * test result equals want. */
static int select_items(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v, tpl_args *args,
                        bool by_attr, bool want, tpl_val *out)
{
    json_t *items;
    if (tpl_iterate(ctx, at, v, &items)) return -1;
    size_t first = 0;
    const tpl_val *attr = NULL, *test = NULL;
    if (by_attr) {
        attr = tpl_arg(args, 0, NULL);
        if (!attr) {
            json_decref(items);
            return tpl_fail(ctx, at, "selectattr/rejectattr need an attribute name");
        }
        first = 1;
    }
    test = tpl_arg(args, first, NULL);
    if (test && !tpl_is_str(test)) {
        json_decref(items);
        return tpl_fail(ctx, at, "the test name must be a string");
    }
    const char *tname = test ? json_string_value(test->j) : NULL;
    if (tname && !tpl_test_exists(tname)) {
        json_decref(items);
        return tpl_fail(ctx, at, "unknown test '%s'", tname);
    }
    /* the remaining positional arguments go to the test */
    tpl_args targs = {.v = args->v, .names = args->names, .n = args->n};
    size_t skip = first + (test ? 1 : 0), k = 0;
    tpl_val *tv = calloc(args->n + 1, sizeof *tv);
    char **tn = calloc(args->n + 1, sizeof *tn);
    if (!tv || !tn) {
        free(tv);
        free(tn);
        json_decref(items);
        return cv_errorf(ctx->err, "chat template: out of memory");
    }
    for (size_t i = 0, pos = 0; i < args->n; i++) {
        if (!args->names[i] && pos++ < skip) continue;
        tv[k] = args->v[i];
        tn[k++] = args->names[i];
    }
    targs = (tpl_args){.v = tv, .names = tn, .n = k};
    json_t *res = json_array();
    int rc = 0;
    for (size_t i = 0; i < json_array_size(items) && !rc; i++) {
        tpl_val item = {.kind = TV_JSON, .j = json_array_get(items, i)}, x;
        if (attr)
            rc = get_path(ctx, at, &item, attr, &x);
        else
            x = tpl_copy(&item);
        if (rc) break;
        bool r;
        if (tname)
            rc = tpl_test(ctx, at, tname, &x, &targs, &r);
        else
            r = tpl_truthy(&x);
        tpl_drop(&x);
        if (!rc && r == want) json_array_append(res, item.j);
    }
    free(tv);
    free(tn);
    json_decref(items);
    if (rc) {
        json_decref(res);
        return -1;
    }
    *out = tpl_json(res);
    return 0;
}

static int map_items(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v, tpl_args *args,
                     tpl_val *out)
{
    json_t *items;
    if (tpl_iterate(ctx, at, v, &items)) return -1;
    const tpl_val *attr = tpl_arg(args, 99, "attribute"), *def = tpl_arg(args, 99, "default");
    const tpl_val *fname = attr ? NULL : tpl_arg(args, 0, NULL);
    if (!attr &&
        (!fname || !tpl_is_str(fname) || !tpl_filter_exists(json_string_value(fname->j)))) {
        json_decref(items);
        return tpl_fail(ctx, at, "map needs attribute= or the name of a filter");
    }
    tpl_args fargs = {.v = args->v, .names = args->names, .n = args->n};
    if (fname) {
        /* the filter's own arguments follow its name */
        size_t i0 = (size_t)(fname - args->v) + 1;
        fargs = (tpl_args){.v = args->v + i0, .names = args->names + i0, .n = args->n - i0};
    }
    json_t *res = json_array();
    int rc = 0;
    for (size_t i = 0; i < json_array_size(items) && !rc; i++) {
        tpl_val item = {.kind = TV_JSON, .j = json_array_get(items, i)}, x;
        if (attr) {
            rc = get_path(ctx, at, &item, attr, &x);
            if (!rc && x.kind == TV_UNDEF && def) x = tpl_copy(def);
        } else {
            rc = tpl_filter(ctx, at, json_string_value(fname->j), &item, &fargs, &x);
        }
        if (rc) break;
        if (x.kind == TV_UNDEF) x = tpl_json(json_null());
        rc = tpl_ensure_json(ctx, at, &x);
        if (!rc) json_array_append(res, x.j);
        tpl_drop(&x);
    }
    json_decref(items);
    if (rc) {
        json_decref(res);
        return -1;
    }
    *out = tpl_json(res);
    return 0;
}

static int len_of(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v, json_int_t *n)
{
    if (v->kind == TV_UNDEF)
        *n = 0;
    else if (v->kind == TV_NS)
        *n = (json_int_t)json_object_size(v->j);
    else if (tpl_is_str(v))
        *n = (json_int_t)tpl_utf8_count(json_string_value(v->j), json_string_length(v->j));
    else if (is_json(v, JSON_ARRAY))
        *n = (json_int_t)json_array_size(v->j);
    else if (is_json(v, JSON_OBJECT))
        *n = (json_int_t)json_object_size(v->j);
    else
        return tpl_fail(ctx, at, "object of type '%s' has no len()", tpl_type_name(v));
    return 0;
}

static int to_str(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v, tpl_val *out)
{
    if (tpl_is_str(v)) {
        *out = tpl_copy(v);
        return 0;
    }
    tpl_buf b = {0};
    tpl_str_of(&b, v);
    if (b.oom) {
        free(b.p);
        return tpl_fail(ctx, at, "string too long");
    }
    *out = tpl_str(b.p, b.len);
    free(b.p);
    return 0;
}

static int do_tojson(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v, tpl_args *args,
                     tpl_val *out)
{
    if (v->kind != TV_JSON)
        return tpl_fail(ctx, at, "Object of type %s is not JSON serializable", tpl_type_name(v));
    const tpl_val *indent = tpl_arg(args, 1, "indent"), *seps = tpl_arg(args, 2, "separators");
    bool ensure_ascii = arg_bool(args, 0, "ensure_ascii", false),
         sort_keys = arg_bool(args, 3, "sort_keys", false);
    char ind[64];
    const char *indp = NULL, *item_sep = NULL, *key_sep = NULL;
    if (indent && indent->kind == TV_JSON && !json_is_null(indent->j)) {
        if (tpl_is_str(indent)) {
            indp = json_string_value(indent->j);
        } else if (tpl_is_int(indent)) {
            json_int_t k = json_is_integer(indent->j) ? json_integer_value(indent->j)
                                                      : json_is_true(indent->j);
            if (k >= (json_int_t)sizeof ind) return tpl_fail(ctx, at, "tojson indent too large");
            k = k < 0 ? 0 : k;
            memset(ind, ' ', (size_t)k);
            ind[k] = '\0';
            indp = ind;
        } else {
            return tpl_fail(ctx, at, "tojson indent must be an integer or a string");
        }
    }
    if (seps && seps->kind == TV_JSON && !json_is_null(seps->j)) {
        if (!json_is_array(seps->j) || json_array_size(seps->j) != 2 ||
            !json_is_string(json_array_get(seps->j, 0)) ||
            !json_is_string(json_array_get(seps->j, 1)))
            return tpl_fail(ctx, at, "tojson separators must be two strings");
        item_sep = json_string_value(json_array_get(seps->j, 0));
        key_sep = json_string_value(json_array_get(seps->j, 1));
    }
    tpl_buf b = {0};
    tpl_tojson(&b, v->j, ensure_ascii, indp, item_sep, key_sep, sort_keys);
    if (b.oom) {
        free(b.p);
        return tpl_fail(ctx, at, "tojson result too large");
    }
    *out = tpl_str(b.p, b.len);
    free(b.p);
    return 0;
}

/* jinja2's indent: every line but the first (unless first=True) gets the
 * prefix; blank lines only with blank=True. */
static int do_indent(tpl_ctx *ctx, const tpl_node *at, const tpl_val *s, tpl_args *args,
                     tpl_val *out)
{
    const tpl_val *w = tpl_arg(args, 0, "width");
    char ind[256];
    if (!w)
        strcpy(ind, "    ");
    else if (tpl_is_str(w))
        snprintf(ind, sizeof ind, "%s", json_string_value(w->j));
    else if (tpl_is_int(w) && json_integer_value(w->j) >= 0 &&
             json_integer_value(w->j) < (json_int_t)sizeof ind) {
        memset(ind, ' ', (size_t)json_integer_value(w->j));
        ind[json_integer_value(w->j)] = '\0';
    } else {
        return tpl_fail(ctx, at, "indent width must be a small integer or a string");
    }
    bool first = arg_bool(args, 1, "first", false), blank = arg_bool(args, 2, "blank", false);
    const char *p = json_string_value(s->j);
    size_t n = json_string_length(s->j);
    tpl_buf b = {0};
    if (first) tpl_buf_puts(&b, ind);
    /* jinja2 splits s + "\n" with splitlines: the pieces of s between \n */
    for (size_t i = 0, line = 0;; line++) {
        size_t e = i;
        while (e < n && p[e] != '\n')
            e++;
        if (line > 0) {
            tpl_buf_putc(&b, '\n');
            if (blank || e > i) tpl_buf_puts(&b, ind);
        }
        tpl_buf_put(&b, p + i, e - i);
        if (e == n) break;
        i = e + 1;
    }
    *out = tpl_str(b.p, b.len);
    free(b.p);
    return 0;
}

typedef struct sort_item {
    json_t *v;
    json_t *key;
    size_t idx;
    bool fold; /* compare strings lower-cased */
    bool reverse;
    int *err;
} sort_item;

static int sort_cmp(const void *pa, const void *pb)
{
    const sort_item *a = pa, *b = pb;
    const json_t *x = a->key, *y = b->key;
    int c = 0;
    if ((json_is_number(x) || json_is_boolean(x)) && (json_is_number(y) || json_is_boolean(y))) {
        double dx = tpl_num(x), dy = tpl_num(y);
        c = dx < dy ? -1 : dx > dy;
    } else if (json_is_string(x) && json_is_string(y)) {
        size_t lx = json_string_length(x), ly = json_string_length(y);
        c = memcmp(json_string_value(x), json_string_value(y), lx < ly ? lx : ly);
        if (!c) c = lx < ly ? -1 : lx > ly;
    } else {
        *a->err = 1;
    }
    if (a->reverse) c = -c;
    return c ? c : (a->idx < b->idx ? -1 : 1);
}

/* sort/dictsort: key_of picks the sort key (the item, an attribute or a
 * pair's key/value); strings compare lower-cased unless case_sensitive. */
static int sort_values(tpl_ctx *ctx, const tpl_node *at, json_t *items, const tpl_val *attr,
                       int pair_part, bool case_sensitive, bool reverse, tpl_val *out)
{
    size_t n = json_array_size(items);
    tpl_charge(n * 20);
    sort_item *s = calloc(n + 1, sizeof *s);
    int err = 0, rc = 0;
    if (!s) return cv_errorf(ctx->err, "chat template: out of memory");
    for (size_t i = 0; i < n && !rc; i++) {
        tpl_val item = {.kind = TV_JSON, .j = json_array_get(items, i)}, k;
        if (pair_part >= 0)
            k = tpl_json(json_incref(json_array_get(item.j, (size_t)pair_part)));
        else if (attr)
            rc = get_path(ctx, at, &item, attr, &k);
        else
            k = tpl_copy(&item);
        if (rc) break;
        if (!case_sensitive && tpl_is_str(&k)) {
            tpl_val low;
            rc = tpl_text_case(ctx, at, &k, TEXT_LOWER, &low);
            tpl_drop(&k);
            k = low;
        }
        if (k.kind != TV_JSON) {
            tpl_drop(&k);
            k = tpl_json(json_null());
        }
        s[i] = (sort_item){.v = item.j, .key = k.j, .idx = i, .reverse = reverse, .err = &err};
    }
    if (!rc) qsort(s, n, sizeof *s, sort_cmp);
    json_t *res = json_array();
    for (size_t i = 0; i < n; i++) {
        if (!rc) json_array_append(res, s[i].v);
        if (s[i].key) json_decref(s[i].key);
    }
    free(s);
    if (!rc && err) rc = tpl_fail(ctx, at, "'<' not supported between the items being sorted");
    if (rc) {
        json_decref(res);
        return -1;
    }
    *out = tpl_json(res);
    return 0;
}

static json_t *pairs_of(const json_t *obj)
{
    json_t *res = json_array();
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v) json_array_append_new(res, json_pack("[sO]", k, v));
    return res;
}

static int minmax_sum(tpl_ctx *ctx, const tpl_node *at, const char *name, const tpl_val *v,
                      tpl_args *args, tpl_val *out)
{
    json_t *items;
    if (tpl_iterate(ctx, at, v, &items)) return -1;
    const tpl_val *attr = tpl_arg(args, name[1] == 'u' ? 0 : 99, "attribute");
    int rc = 0;
    if (name[1] == 'u') { /* sum */
        const tpl_val *start = tpl_arg(args, 1, "start");
        tpl_val acc = start ? tpl_copy(start) : tpl_json(json_integer(0));
        for (size_t i = 0; i < json_array_size(items) && !rc; i++) {
            tpl_val item = {.kind = TV_JSON, .j = json_array_get(items, i)}, x, r;
            if (attr)
                rc = get_path(ctx, at, &item, attr, &x);
            else
                x = tpl_copy(&item);
            if (!rc) rc = tpl_binop_eval(ctx, at, OP_ADD, &acc, &x, &r);
            tpl_drop(&x);
            if (!rc) {
                tpl_drop(&acc);
                acc = r;
            }
        }
        json_decref(items);
        if (rc)
            tpl_drop(&acc);
        else
            *out = acc;
        return rc;
    }
    bool cs = arg_bool(args, 0, "case_sensitive", false);
    tpl_val sorted;
    rc = sort_values(ctx, at, items, attr, -1, cs, name[1] == 'a', &sorted);
    json_decref(items);
    if (rc) return -1;
    json_t *first = json_array_get(sorted.j, 0);
    *out =
        first ? tpl_json(json_incref(first)) : tpl_undef("No aggregated item, sequence was empty.");
    tpl_drop(&sorted);
    return 0;
}

static int do_round(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v, tpl_args *args,
                    tpl_val *out)
{
    const tpl_val *pv = tpl_arg(args, 0, "precision"), *mv = tpl_arg(args, 1, "method");
    json_int_t prec = pv && tpl_is_int(pv) ? json_integer_value(pv->j) : 0;
    const char *method = mv && tpl_is_str(mv) ? json_string_value(mv->j) : "common";
    if (!tpl_is_num(v)) return tpl_fail(ctx, at, "round needs a number, not %s", tpl_type_name(v));
    if (strcmp(method, "common") && strcmp(method, "ceil") && strcmp(method, "floor"))
        return tpl_fail(ctx, at, "method must be common, ceil or floor");
    if (!strcmp(method, "common") && tpl_is_int(v)) {
        *out = tpl_copy(v);
        return 0;
    }
    if (prec > 300 || prec < -300) prec = prec > 0 ? 300 : -300;
    double x = tpl_num(v->j), m = pow(10, (double)prec), r;
    if (!strcmp(method, "ceil"))
        r = ceil(x * m) / m;
    else if (!strcmp(method, "floor"))
        r = floor(x * m) / m;
    else if (prec >= 0 && prec <= 40) {
        /* Python rounds the exact binary value, half to even: as printf does */
        char tmp[400];
        snprintf(tmp, sizeof tmp, "%.*f", (int)prec, x);
        r = strtod(tmp, NULL);
    } else {
        r = nearbyint(x * m) / m;
    }
    json_t *j = json_real(isfinite(r) ? r : x);
    if (!j) return tpl_fail(ctx, at, "round result out of range");
    *out = tpl_json(j);
    return 0;
}

static int need_str(tpl_ctx *ctx, const tpl_node *at, const char *filter, const tpl_val *v,
                    tpl_val *s)
{
    if (v->kind == TV_UNDEF && strcmp(filter, "trim") && strcmp(filter, "upper") &&
        strcmp(filter, "lower"))
        return tpl_fail(ctx, at, "'%s' is undefined", v->name);
    return to_str(ctx, at, v, s);
}

int tpl_filter(tpl_ctx *ctx, const tpl_node *at, const char *name, const tpl_val *v, tpl_args *args,
               tpl_val *out)
{
    const tpl_val *a0 = tpl_arg(args, 0, NULL);
    json_t *items = NULL;
    tpl_val s = {0};
    int rc = 0;
    if (!strcmp(name, "tojson")) return do_tojson(ctx, at, v, args, out);
    if (!strcmp(name, "safe")) {
        *out = tpl_copy(v);
        return 0;
    }
    if (!strcmp(name, "length") || !strcmp(name, "count")) {
        json_int_t n = 0;
        if (len_of(ctx, at, v, &n)) return -1;
        *out = tpl_json(json_integer(n));
        return 0;
    }
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        const tpl_val *def = tpl_arg(args, 0, "default_value");
        bool boolean = arg_bool(args, 1, "boolean", false);
        bool use_def = v->kind == TV_UNDEF || (boolean && !tpl_truthy(v));
        *out = use_def ? (def ? tpl_copy(def) : tpl_str("", 0)) : tpl_copy(v);
        return 0;
    }
    if (!strcmp(name, "selectattr") || !strcmp(name, "rejectattr"))
        return select_items(ctx, at, v, args, true, name[0] == 's', out);
    if (!strcmp(name, "select") || !strcmp(name, "reject"))
        return select_items(ctx, at, v, args, false, name[0] == 's', out);
    if (!strcmp(name, "map")) return map_items(ctx, at, v, args, out);
    if (!strcmp(name, "sum") || !strcmp(name, "min") || !strcmp(name, "max"))
        return minmax_sum(ctx, at, name, v, args, out);
    if (!strcmp(name, "round")) return do_round(ctx, at, v, args, out);
    if (!strcmp(name, "attr")) {
        if (!a0 || !tpl_is_str(a0)) return tpl_fail(ctx, at, "attr needs an attribute name");
        return tpl_getattr(ctx, at, v, json_string_value(a0->j), out);
    }
    if (!strcmp(name, "abs")) {
        if (!tpl_is_num(v))
            return tpl_fail(ctx, at, "bad operand type for abs(): '%s'", tpl_type_name(v));
        if (json_is_real(v->j))
            *out = tpl_json(json_real(fabs(json_real_value(v->j))));
        else {
            json_int_t i = json_is_integer(v->j) ? json_integer_value(v->j) : json_is_true(v->j);
            if (i == INT64_MIN) return tpl_fail(ctx, at, "integer overflow in abs");
            *out = tpl_json(json_integer(i < 0 ? -i : i));
        }
        return 0;
    }
    if (!strcmp(name, "bool")) {
        *out = tpl_json(json_boolean(tpl_truthy(v)));
        return 0;
    }
    if (!strcmp(name, "int") || !strcmp(name, "float")) {
        bool is_int = name[0] == 'i';
        const tpl_val *def = tpl_arg(args, 0, "default");
        json_t *r = NULL;
        if (tpl_is_num(v)) {
            double d = tpl_num(v->j);
            if (is_int && json_is_real(v->j) && isfinite(d) && fabs(d) < 9.2e18)
                r = json_integer((json_int_t)d);
            else if (is_int && !json_is_real(v->j))
                r = json_integer((json_int_t)d);
            else if (!is_int)
                r = json_real(d);
        } else if (tpl_is_str(v)) {
            const char *p = json_string_value(v->j);
            char *end;
            double d = strtod(p, &end);
            while (*end == ' ' || *end == '\t' || *end == '\n')
                end++;
            if (end != p && !*end && isfinite(d)) {
                if (!is_int)
                    r = json_real(d);
                else if (strspn(p, " \t\n+-0123456789_") == strlen(p))
                    r = json_integer(strtoll(p, NULL, 10));
                else if (fabs(d) < 9.2e18)
                    r = json_integer((json_int_t)d); /* jinja2 tries float() */
            }
        }
        if (!r)
            r = def      ? (def->kind == TV_JSON ? json_incref(def->j) : json_null())
                : is_int ? json_integer(0)
                         : json_real(0);
        *out = tpl_json(r);
        return 0;
    }
    if (!strcmp(name, "list") || !strcmp(name, "first") || !strcmp(name, "last") ||
        !strcmp(name, "reverse") || !strcmp(name, "unique") || !strcmp(name, "sort") ||
        !strcmp(name, "join") || !strcmp(name, "batch")) {
        if (v->kind == TV_UNDEF && strcmp(name, "list") && strcmp(name, "join"))
            return tpl_fail(ctx, at, "'%s' is undefined", v->name);
        if (tpl_iterate(ctx, at, v, &items)) return -1;
        size_t n = json_array_size(items);
        if (!strcmp(name, "list")) {
            *out = tpl_json(json_is_array(v->j) && v->kind == TV_JSON ? json_copy(items)
                                                                      : json_incref(items));
        } else if (!strcmp(name, "first") || !strcmp(name, "last")) {
            json_t *x = n ? json_array_get(items, name[0] == 'f' ? 0 : n - 1) : NULL;
            *out = x ? tpl_json(json_incref(x)) : tpl_undef("No first item, sequence was empty.");
        } else if (!strcmp(name, "reverse")) {
            if (tpl_is_str(v)) {
                tpl_buf b = {0};
                for (size_t i = n; i-- > 0;) {
                    json_t *c = json_array_get(items, i);
                    tpl_buf_put(&b, json_string_value(c), json_string_length(c));
                }
                *out = tpl_str(b.p, b.len);
                free(b.p);
            } else {
                json_t *r = json_array();
                for (size_t i = n; i-- > 0;)
                    json_array_append(r, json_array_get(items, i));
                *out = tpl_json(r);
            }
        } else if (!strcmp(name, "unique")) {
            bool cs = arg_bool(args, 0, "case_sensitive", false);
            const tpl_val *attr = tpl_arg(args, 1, "attribute");
            json_t *r = json_array(), *seen = json_array();
            for (size_t i = 0; i < n && !rc; i++) {
                tpl_val item = {.kind = TV_JSON, .j = json_array_get(items, i)}, k;
                rc = attr ? get_path(ctx, at, &item, attr, &k) : (k = tpl_copy(&item), 0);
                if (!rc && !cs && tpl_is_str(&k)) {
                    tpl_val low;
                    rc = tpl_text_case(ctx, at, &k, TEXT_LOWER, &low);
                    tpl_drop(&k);
                    k = low;
                }
                if (rc) break;
                bool dup = false;
                for (size_t j = 0; j < json_array_size(seen) && !dup; j++)
                    dup = k.kind == TV_JSON && tpl_json_equal(json_array_get(seen, j), k.j);
                if (!dup && k.kind == TV_JSON) {
                    json_array_append(seen, k.j);
                    json_array_append(r, item.j);
                }
                tpl_drop(&k);
            }
            json_decref(seen);
            if (rc)
                json_decref(r);
            else
                *out = tpl_json(r);
        } else if (!strcmp(name, "sort")) {
            rc = sort_values(ctx, at, items, tpl_arg(args, 2, "attribute"), -1,
                             arg_bool(args, 1, "case_sensitive", false),
                             arg_bool(args, 0, "reverse", false), out);
        } else if (!strcmp(name, "batch")) {
            const tpl_val *k = tpl_arg(args, 0, "linecount");
            if (!k || !tpl_is_int(k) || json_integer_value(k->j) <= 0) {
                rc = tpl_fail(ctx, at, "batch needs a positive size");
            } else {
                size_t per = (size_t)json_integer_value(k->j);
                json_t *r = json_array(), *cur = NULL;
                for (size_t i = 0; i < n; i++) {
                    if (!cur || json_array_size(cur) == per)
                        json_array_append_new(r, cur = json_array());
                    json_array_append(cur, json_array_get(items, i));
                }
                *out = tpl_json(r);
            }
        } else { /* join */
            const tpl_val *sep = tpl_arg(args, 0, "d"), *attr = tpl_arg(args, 1, "attribute");
            tpl_buf b = {0};
            for (size_t i = 0; i < n && !rc; i++) {
                tpl_val item = {.kind = TV_JSON, .j = json_array_get(items, i)}, x;
                if (i && sep) tpl_str_of(&b, sep);
                rc = attr ? get_path(ctx, at, &item, attr, &x) : (x = tpl_copy(&item), 0);
                if (!rc) tpl_str_of(&b, &x);
                tpl_drop(&x);
            }
            if (!rc && b.oom) rc = tpl_fail(ctx, at, "join result too large");
            if (!rc) *out = tpl_str(b.p, b.len);
            free(b.p);
        }
        json_decref(items);
        return rc;
    }
    if (!strcmp(name, "items") || !strcmp(name, "dictsort")) {
        if (v->kind == TV_UNDEF) {
            *out = tpl_json(json_array());
            return 0;
        }
        if (!is_json(v, JSON_OBJECT) && v->kind != TV_NS)
            return tpl_fail(ctx, at, "%s needs a mapping, not %s", name, tpl_type_name(v));
        items = pairs_of(v->j);
        if (name[0] == 'i') {
            *out = tpl_json(items);
            return 0;
        }
        const tpl_val *by = tpl_arg(args, 1, "by");
        int part = by && tpl_is_str(by) && !strcmp(json_string_value(by->j), "value") ? 1 : 0;
        rc = sort_values(ctx, at, items, NULL, part, arg_bool(args, 0, "case_sensitive", false),
                         arg_bool(args, 2, "reverse", false), out);
        json_decref(items);
        return rc;
    }
    /* the string filters */
    if (need_str(ctx, at, name, v, &s)) return -1;
    if (!strcmp(name, "trim"))
        rc = tpl_text_strip(ctx, at, &s, tpl_arg(args, 0, "chars"), true, true, out);
    else if (!strcmp(name, "upper"))
        rc = tpl_text_case(ctx, at, &s, TEXT_UPPER, out);
    else if (!strcmp(name, "lower"))
        rc = tpl_text_case(ctx, at, &s, TEXT_LOWER, out);
    else if (!strcmp(name, "capitalize"))
        rc = tpl_text_case(ctx, at, &s, TEXT_CAPITALIZE, out);
    else if (!strcmp(name, "title"))
        rc = tpl_text_case(ctx, at, &s, TEXT_JINJA_TITLE, out);
    else if (!strcmp(name, "string"))
        *out = tpl_copy(&s);
    else if (!strcmp(name, "indent"))
        rc = do_indent(ctx, at, &s, args, out);
    else if (!strcmp(name, "wordcount")) {
        json_int_t words = 0;
        const char *p = json_string_value(s.j);
        for (size_t i = 0, in = 0; p[i]; i++) {
            bool w = (p[i] & 0x80) || (p[i] >= '0' && p[i] <= '9') ||
                     (p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z') || p[i] == '_';
            if (w && !in) words++;
            in = w;
        }
        *out = tpl_json(json_integer(words));
    } else if (!strcmp(name, "replace")) {
        const tpl_val *old = tpl_arg(args, 0, "old"), *nw = tpl_arg(args, 1, "new"),
                      *cnt = tpl_arg(args, 2, "count");
        if (!old || !nw || !tpl_is_str(old) || !tpl_is_str(nw))
            rc = tpl_fail(ctx, at, "replace needs two strings");
        else
            rc = tpl_text_replace(ctx, at, &s, old, nw,
                                  cnt && tpl_is_int(cnt) ? json_integer_value(cnt->j) : -1, out);
    } else if (!strcmp(name, "center")) {
        const tpl_val *w = tpl_arg(args, 0, "width");
        json_int_t width = w && tpl_is_int(w) ? json_integer_value(w->j) : 80;
        json_int_t len =
            (json_int_t)tpl_utf8_count(json_string_value(s.j), json_string_length(s.j));
        if (width > 4096) width = 4096;
        json_int_t pad = width > len ? width - len : 0, left = pad / 2 + (pad & width & 1);
        tpl_buf b = {0};
        for (json_int_t i = 0; i < left; i++)
            tpl_buf_putc(&b, ' ');
        tpl_buf_put(&b, json_string_value(s.j), json_string_length(s.j));
        for (json_int_t i = 0; i < pad - left; i++)
            tpl_buf_putc(&b, ' ');
        *out = tpl_str(b.p, b.len);
        free(b.p);
    } else { /* e, escape: jinja2 escapes HTML even with autoescape off */
        tpl_buf b = {0};
        const char *p = json_string_value(s.j);
        for (size_t i = 0; i < json_string_length(s.j); i++) {
            switch (p[i]) {
            case '&':
                tpl_buf_puts(&b, "&amp;");
                break;
            case '<':
                tpl_buf_puts(&b, "&lt;");
                break;
            case '>':
                tpl_buf_puts(&b, "&gt;");
                break;
            case '"':
                tpl_buf_puts(&b, "&#34;");
                break;
            case '\'':
                tpl_buf_puts(&b, "&#39;");
                break;
            default:
                tpl_buf_putc(&b, p[i]);
            }
        }
        if (b.oom)
            rc = tpl_fail(ctx, at, "escape result too large");
        else
            *out = tpl_str(b.p, b.len);
        free(b.p);
    }
    tpl_drop(&s);
    return rc;
}

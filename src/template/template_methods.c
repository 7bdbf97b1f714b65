/* Methods of str, dict and list values as jinja2's immutable sandbox
 * allows them (mutating methods are refused, as there), and the globals
 * transformers' environment has: range, namespace, dict, raise_exception,
 * strftime_now. */
/* memmem: linear-time substring search */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "template/template_text.h"

static const char *const str_methods[] = {
    "strip",   "lstrip",  "rstrip",  "split",        "rsplit",       "startswith", "endswith",
    "upper",   "lower",   "title",   "capitalize",   "replace",      "format",     "find",
    "rfind",   "count",   "join",    "splitlines",   "isdigit",      "isalpha",    "isalnum",
    "isspace", "islower", "isupper", "removeprefix", "removesuffix", NULL};
static const char *const dict_methods[] = {"get",    "items", "keys",    "values",
                                           "copy",   "pop",   "popitem", "setdefault",
                                           "update", "clear", NULL};
static const char *const list_methods[] = {"index",   "count",  "copy",  "append",
                                           "extend",  "insert", "pop",   "remove",
                                           "reverse", "sort",   "clear", NULL};
static const char *const unsafe[] = {"pop",    "popitem", "setdefault", "update",
                                     "clear",  "append",  "extend",     "insert",
                                     "remove", "reverse", "sort",       NULL};
static const char *const globals[] = {"range",           "namespace",    "dict",
                                      "raise_exception", "strftime_now", NULL};

static bool listed(const char *const *l, const char *name)
{
    for (size_t i = 0; l[i]; i++)
        if (!strcmp(l[i], name)) return true;
    return false;
}

bool tpl_is_method(const tpl_val *recv, const char *name)
{
    if (recv->kind != TV_JSON) return false;
    if (json_is_string(recv->j)) return listed(str_methods, name);
    if (json_is_object(recv->j)) return listed(dict_methods, name);
    if (json_is_array(recv->j)) return listed(list_methods, name);
    return false;
}

bool tpl_is_global(const char *name)
{
    return listed(globals, name);
}

static json_int_t int_arg(const tpl_val *v, json_int_t def)
{
    if (!v || !tpl_is_int(v)) return def;
    return json_is_integer(v->j) ? json_integer_value(v->j) : json_is_true(v->j);
}

static bool find_sub(const char *s, size_t n, const char *sub, size_t m, size_t from, bool last,
                     size_t *at)
{
    /* memmem is linear: no template can make this quadratic */
    bool found = false;
    tpl_charge(n / 16);
    while (from <= n) {
        const char *p = m ? memmem(s + from, n - from, sub, m) : s + from;
        if (!p) break;
        *at = (size_t)(p - s);
        found = true;
        if (!last) break;
        from = *at + 1;
    }
    return found;
}

static int str_split(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v, tpl_args *args, bool right,
                     tpl_val *out)
{
    const tpl_val *sep = tpl_arg(args, 0, "sep");
    json_int_t maxsplit = int_arg(tpl_arg(args, 1, "maxsplit"), -1);
    const char *s = json_string_value(v->j);
    size_t n = json_string_length(v->j);
    json_t *r = json_array();
    if (sep && sep->kind == TV_JSON && json_is_null(sep->j)) sep = NULL;
    if (sep && !tpl_is_str(sep)) {
        json_decref(r);
        return tpl_fail(ctx, at, "split separator must be a string");
    }
    if (sep) {
        const char *p = json_string_value(sep->j);
        size_t m = json_string_length(sep->j);
        if (!m) {
            json_decref(r);
            return tpl_fail(ctx, at, "empty separator");
        }
        if (right) {
            /* rsplit: cut from the end, then restore order */
            size_t end = n;
            json_int_t done = 0;
            json_t *rev = json_array();
            while (maxsplit < 0 || done < maxsplit) {
                size_t pos;
                if (end < m || !find_sub(s, end, p, m, 0, true, &pos)) break;
                json_array_append_new(rev, json_stringn_nocheck(s + pos + m, end - pos - m));
                end = pos;
                done++;
            }
            json_array_append_new(r, json_stringn_nocheck(s, end));
            for (size_t i = json_array_size(rev); i-- > 0;)
                json_array_append(r, json_array_get(rev, i));
            json_decref(rev);
        } else {
            size_t start = 0, pos;
            json_int_t done = 0;
            while ((maxsplit < 0 || done < maxsplit) && find_sub(s, n, p, m, start, false, &pos)) {
                json_array_append_new(r, json_stringn_nocheck(s + start, pos - start));
                start = pos + m;
                done++;
            }
            json_array_append_new(r, json_stringn_nocheck(s + start, n - start));
        }
        *out = tpl_json(r);
        return 0;
    }
    /* no separator: runs of whitespace, no empty strings; once maxsplit
     * pieces are cut the rest is one piece (CPython's split_whitespace) */
    json_decref(r);
    size_t *offs;
    size_t k = tpl_utf8_offsets(s, n, &offs);
    bool *sp = offs ? calloc(k + 1, sizeof *sp) : NULL;
    if (!sp) {
        free(offs);
        return cv_errorf(ctx->err, "chat template: out of memory");
    }
    for (size_t i = 0; i < k; i++) {
        tpl_val ch = tpl_str(s + offs[i], offs[i + 1] - offs[i]), st;
        tpl_text_strip(ctx, at, &ch, NULL, true, false, &st);
        sp[i] = json_string_length(st.j) == 0;
        tpl_drop(&ch);
        tpl_drop(&st);
    }
    json_t *words = json_array();
    json_int_t count = 0;
    if (!right) {
        size_t i = 0;
        for (;;) {
            while (i < k && sp[i])
                i++;
            if (i == k) break;
            if (maxsplit >= 0 && count == maxsplit) {
                json_array_append_new(words, json_stringn_nocheck(s + offs[i], n - offs[i]));
                break;
            }
            size_t st = i;
            while (i < k && !sp[i])
                i++;
            json_array_append_new(words, json_stringn_nocheck(s + offs[st], offs[i] - offs[st]));
            count++;
        }
    } else {
        size_t i = k;
        json_t *rev = json_array();
        for (;;) {
            while (i > 0 && sp[i - 1])
                i--;
            if (i == 0) break;
            if (maxsplit >= 0 && count == maxsplit) {
                json_array_append_new(rev, json_stringn_nocheck(s, offs[i]));
                break;
            }
            size_t e = i;
            while (i > 0 && !sp[i - 1])
                i--;
            json_array_append_new(rev, json_stringn_nocheck(s + offs[i], offs[e] - offs[i]));
            count++;
        }
        for (size_t j = json_array_size(rev); j-- > 0;)
            json_array_append(words, json_array_get(rev, j));
        json_decref(rev);
    }
    free(sp);
    free(offs);
    *out = tpl_json(words);
    return 0;
}

/* str.format with {} / {0} / {name} fields and {{ }} escapes; format specs
 * and conversions are refused. */
static int str_format(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v, tpl_args *args,
                      tpl_val *out)
{
    const char *s = json_string_value(v->j);
    size_t n = json_string_length(v->j), auto_idx = 0;
    tpl_buf b = {0};
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '}' && i + 1 < n && s[i + 1] == '}') {
            tpl_buf_putc(&b, '}');
            i++;
        } else if (s[i] == '{' && i + 1 < n && s[i + 1] == '{') {
            tpl_buf_putc(&b, '{');
            i++;
        } else if (s[i] == '{') {
            size_t e = i + 1;
            while (e < n && s[e] != '}')
                e++;
            if (e == n) goto bad;
            char field[64];
            size_t fl = e - i - 1;
            if (fl >= sizeof field || memchr(s + i + 1, ':', fl) || memchr(s + i + 1, '!', fl))
                goto bad;
            memcpy(field, s + i + 1, fl);
            field[fl] = '\0';
            const tpl_val *arg;
            if (!fl)
                arg = tpl_arg(args, auto_idx++, NULL);
            else if (strspn(field, "0123456789") == fl)
                arg = tpl_arg(args, (size_t)atoi(field), NULL);
            else
                arg = tpl_arg(args, (size_t)-1, field);
            if (!arg) {
                free(b.p);
                return tpl_fail(ctx, at, "format: no argument for field '{%s}'", field);
            }
            tpl_str_of(&b, arg);
            i = e;
        } else if (s[i] == '}') {
            goto bad;
        } else {
            tpl_buf_putc(&b, s[i]);
        }
    }
    if (b.oom) {
        free(b.p);
        return tpl_fail(ctx, at, "string too long");
    }
    *out = tpl_str(b.p, b.len);
    free(b.p);
    return 0;
bad:
    free(b.p);
    return tpl_fail(ctx, at, "format string not supported: only {}, {0} and {name} fields");
}

static int str_method(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v, const char *name,
                      tpl_args *args, tpl_val *out)
{
    const char *s = json_string_value(v->j);
    size_t n = json_string_length(v->j);
    const tpl_val *a0 = tpl_arg(args, 0, NULL), *a1 = tpl_arg(args, 1, NULL);
    if (!strcmp(name, "strip") || !strcmp(name, "lstrip") || !strcmp(name, "rstrip"))
        return tpl_text_strip(ctx, at, v, a0, name[0] != 'r', name[0] != 'l', out);
    if (!strcmp(name, "split") || !strcmp(name, "rsplit"))
        return str_split(ctx, at, v, args, name[0] == 'r', out);
    if (!strcmp(name, "upper")) return tpl_text_case(ctx, at, v, TEXT_UPPER, out);
    if (!strcmp(name, "lower")) return tpl_text_case(ctx, at, v, TEXT_LOWER, out);
    if (!strcmp(name, "title")) return tpl_text_case(ctx, at, v, TEXT_TITLE, out);
    if (!strcmp(name, "capitalize")) return tpl_text_case(ctx, at, v, TEXT_CAPITALIZE, out);
    if (!strcmp(name, "format")) return str_format(ctx, at, v, args, out);
    if (!strcmp(name, "splitlines")) {
        json_t *r = json_array();
        size_t st = 0;
        for (size_t i = 0; i < n; i++)
            if (s[i] == '\n' || s[i] == '\r') {
                json_array_append_new(r, json_stringn_nocheck(s + st, i - st));
                if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n') i++;
                st = i + 1;
            }
        if (st < n) json_array_append_new(r, json_stringn_nocheck(s + st, n - st));
        *out = tpl_json(r);
        return 0;
    }
    if (!strncmp(name, "is", 2)) {
        bool r = n > 0;
        for (size_t i = 0; i < n && r; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c >= 0x80) continue; /* non-ASCII letters count as letters */
            if (!strcmp(name, "isdigit"))
                r = c >= '0' && c <= '9';
            else if (!strcmp(name, "isalpha"))
                r = (c | 32) >= 'a' && (c | 32) <= 'z';
            else if (!strcmp(name, "isalnum"))
                r = ((c | 32) >= 'a' && (c | 32) <= 'z') || (c >= '0' && c <= '9');
            else if (!strcmp(name, "isspace"))
                r = tpl_is_space(c);
        }
        if (!strcmp(name, "islower") || !strcmp(name, "isupper")) {
            tpl_val t;
            if (tpl_text_case(ctx, at, v, name[2] == 'l' ? TEXT_LOWER : TEXT_UPPER, &t)) return -1;
            tpl_val o;
            if (tpl_text_case(ctx, at, v, name[2] == 'l' ? TEXT_UPPER : TEXT_LOWER, &o)) {
                tpl_drop(&t);
                return -1;
            }
            r = tpl_equal(&t, v) &&
                !tpl_equal(&o, v); /* some cased character, none of the other case */
            tpl_drop(&t);
            tpl_drop(&o);
        }
        *out = tpl_json(json_boolean(r));
        return 0;
    }
    if (!strcmp(name, "join")) {
        json_t *items;
        if (!a0 || tpl_iterate(ctx, at, a0, &items))
            return a0 ? -1 : tpl_fail(ctx, at, "join needs an iterable");
        tpl_buf b = {0};
        int rc = 0;
        for (size_t i = 0; i < json_array_size(items) && !rc; i++) {
            json_t *x = json_array_get(items, i);
            if (!json_is_string(x))
                rc = tpl_fail(ctx, at, "sequence item %zu: expected str instance", i);
            if (i) tpl_buf_put(&b, s, n);
            tpl_buf_put(&b, json_string_value(x), json_string_length(x));
        }
        json_decref(items);
        if (!rc && b.oom) rc = tpl_fail(ctx, at, "string too long");
        if (!rc) *out = tpl_str(b.p, b.len);
        free(b.p);
        return rc;
    }
    /* the rest take a string argument */
    if (!a0) return tpl_fail(ctx, at, "str.%s needs an argument", name);
    if (!strcmp(name, "startswith") || !strcmp(name, "endswith")) {
        bool r = false;
        size_t np = tpl_is_str(a0)                                ? 1
                    : a0->kind == TV_JSON && json_is_array(a0->j) ? json_array_size(a0->j)
                                                                  : 0;
        if (!np && !tpl_is_str(a0))
            return tpl_fail(ctx, at, "%s first arg must be str or a tuple of str", name);
        for (size_t i = 0; i < np && !r; i++) {
            json_t *p = tpl_is_str(a0) ? a0->j : json_array_get(a0->j, i);
            if (!json_is_string(p))
                return tpl_fail(ctx, at, "%s first arg must be str or a tuple of str", name);
            size_t m = json_string_length(p);
            r = m <= n && !memcmp(name[0] == 's' ? s : s + n - m, json_string_value(p), m);
        }
        *out = tpl_json(json_boolean(r));
        return 0;
    }
    if (!tpl_is_str(a0))
        return tpl_fail(ctx, at, "str.%s needs a string argument, not %s", name, tpl_type_name(a0));
    const char *p = json_string_value(a0->j);
    size_t m = json_string_length(a0->j), pos = 0;
    if (!strcmp(name, "replace")) {
        if (!a1 || !tpl_is_str(a1)) return tpl_fail(ctx, at, "str.replace needs two strings");
        return tpl_text_replace(ctx, at, v, a0, a1, int_arg(tpl_arg(args, 2, "count"), -1), out);
    }
    if (!strcmp(name, "find") || !strcmp(name, "rfind")) {
        bool f = find_sub(s, n, p, m, 0, name[0] == 'r', &pos);
        *out = tpl_json(json_integer(f ? (json_int_t)tpl_utf8_count(s, pos) : -1));
        return 0;
    }
    if (!strcmp(name, "count")) {
        json_int_t c = 0;
        if (!m) c = (json_int_t)tpl_utf8_count(s, n) + 1;
        for (size_t i = 0; m && i + m <= n;)
            if (!memcmp(s + i, p, m)) {
                c++;
                i += m;
            } else {
                i++;
            }
        *out = tpl_json(json_integer(c));
        return 0;
    }
    bool pre = !strcmp(name, "removeprefix");
    if (m <= n && !memcmp(pre ? s : s + n - m, p, m))
        *out = pre ? tpl_str(s + m, n - m) : tpl_str(s, n - m);
    else
        *out = tpl_copy(v);
    return 0;
}

int tpl_method(tpl_ctx *ctx, const tpl_node *at, const tpl_val *recv, const char *name,
               tpl_args *args, tpl_val *out)
{
    if (listed(unsafe, name))
        return tpl_fail(ctx, at, "access to attribute '%s' of '%s' object is unsafe", name,
                        tpl_type_name(recv));
    json_t *j = recv->j;
    const tpl_val *a0 = tpl_arg(args, 0, NULL);
    if (json_is_string(j)) return str_method(ctx, at, recv, name, args, out);
    if (!strcmp(name, "copy")) {
        *out = tpl_json(json_copy(j));
        return 0;
    }
    if (json_is_object(j)) {
        if (!strcmp(name, "get")) {
            if (!a0) return tpl_fail(ctx, at, "get expected at least 1 argument");
            json_t *x = tpl_is_str(a0) ? json_object_getn(j, json_string_value(a0->j),
                                                          json_string_length(a0->j))
                                       : NULL;
            const tpl_val *def = tpl_arg(args, 1, NULL);
            *out = x ? tpl_json(json_incref(x)) : def ? tpl_copy(def) : tpl_json(json_null());
            return 0;
        }
        json_t *r = json_array();
        const char *k;
        json_t *v;
        json_object_foreach(j, k, v)
        {
            if (name[0] == 'k')
                json_array_append_new(r, json_string_nocheck(k));
            else if (name[0] == 'v')
                json_array_append(r, v);
            else
                json_array_append_new(r, json_pack("[sO]", k, v));
        }
        *out = tpl_json(r);
        return 0;
    }
    /* list: index, count */
    if (!a0) return tpl_fail(ctx, at, "list.%s needs an argument", name);
    json_int_t c = 0, idx = -1;
    for (size_t i = 0; i < json_array_size(j); i++) {
        tpl_val e = {.kind = TV_JSON, .j = json_array_get(j, i)};
        if (tpl_equal(&e, a0)) {
            if (idx < 0) idx = (json_int_t)i;
            c++;
        }
    }
    if (name[0] == 'i' && idx < 0) return tpl_fail(ctx, at, "list.index(x): x not in list");
    *out = tpl_json(json_integer(name[0] == 'i' ? idx : c));
    return 0;
}

/* ---- globals ------------------------------------------------------------------ */

static int make_range(tpl_ctx *ctx, const tpl_node *at, tpl_args *args, tpl_val *out)
{
    const tpl_val *a[3] = {tpl_arg(args, 0, NULL), tpl_arg(args, 1, NULL), tpl_arg(args, 2, NULL)};
    size_t na = a[2] ? 3 : a[1] ? 2 : a[0] ? 1 : 0;
    for (size_t i = 0; i < na; i++)
        if (!tpl_is_int(a[i])) return tpl_fail(ctx, at, "range() arguments must be integers");
    if (!na) return tpl_fail(ctx, at, "range expected at least 1 argument");
    json_int_t start = na > 1 ? int_arg(a[0], 0) : 0,
               stop = na > 1 ? int_arg(a[1], 0) : int_arg(a[0], 0);
    json_int_t step = na > 2 ? int_arg(a[2], 1) : 1;
    if (step == INT64_MIN) step = INT64_MIN + 1;
    if (step == 0) return tpl_fail(ctx, at, "range() arg 3 must not be zero");
    double count = step > 0 ? ((double)stop - (double)start) / (double)step
                            : ((double)start - (double)stop) / (double)-step;
    if (count > TPL_MAX_ITERATIONS)
        return tpl_fail(ctx, at, "range too big (more than %d items)", TPL_MAX_ITERATIONS);
    tpl_charge(count > 0 ? (size_t)count : 0);
    json_t *r = json_array();
    for (json_int_t i = start; step > 0 ? i < stop : i > stop;) {
        json_array_append_new(r, json_integer(i));
        if (__builtin_add_overflow(i, step, &i)) break;
    }
    *out = tpl_json(r);
    return 0;
}

int tpl_global_call(tpl_ctx *ctx, const tpl_node *at, const char *name, tpl_args *args,
                    tpl_val *out)
{
    const tpl_val *a0 = tpl_arg(args, 0, NULL);
    if (!strcmp(name, "range")) return make_range(ctx, at, args, out);
    if (!strcmp(name, "raise_exception")) {
        tpl_buf b = {0};
        if (a0) tpl_str_of(&b, a0);
        cv_errorf(ctx->err, "%s", b.p ? b.p : "");
        free(b.p);
        return -1;
    }
    if (!strcmp(name, "strftime_now")) {
        if (!a0 || !tpl_is_str(a0)) return tpl_fail(ctx, at, "strftime_now needs a format string");
        time_t now = time(NULL);
        struct tm tm;
        char buf[512];
        localtime_r(&now, &tm);
        size_t n = strftime(buf, sizeof buf, json_string_value(a0->j), &tm);
        if (!n && json_string_length(a0->j))
            return tpl_fail(ctx, at, "strftime_now: format gives no text or too much");
        *out = tpl_str(buf, n);
        return 0;
    }
    /* namespace(...) and dict(...): a mapping from a dict argument and keywords */
    json_t *obj = json_object();
    for (size_t i = 0; i < args->n; i++) {
        tpl_val *v = &args->v[i];
        if (!args->names[i]) {
            if (v->kind != TV_JSON || !json_is_object(v->j)) {
                json_decref(obj);
                return tpl_fail(ctx, at, "%s() takes a mapping or keyword arguments", name);
            }
            json_object_update(obj, v->j);
        } else {
            if (tpl_ensure_json(ctx, at, v)) {
                json_decref(obj);
                return -1;
            }
            json_object_set(obj, args->names[i], v->j);
        }
    }
    *out = name[0] == 'n' ? (tpl_val){.kind = TV_NS, .j = obj} : tpl_json(obj);
    return 0;
}

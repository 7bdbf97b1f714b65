/* Runtime values of the chat-template engine and their Python behaviour:
 * truthiness, equality, str()/repr() as Python prints them, float repr,
 * and json.dumps as transformers' tojson calls it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "template/template_internal.h"

_Thread_local size_t *tpl_work;

void tpl_buf_put(tpl_buf *b, const char *s, size_t n)
{
    if (b->oom) return;
    tpl_charge(n / 16);
    if (b->len + n + 1 > b->cap) {
        if (b->len + n + 1 > TPL_MAX_OUTPUT_BYTES) {
            b->oom = true;
            return;
        }
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void tpl_buf_puts(tpl_buf *b, const char *s)
{
    tpl_buf_put(b, s, strlen(s));
}
void tpl_buf_putc(tpl_buf *b, char c)
{
    tpl_buf_put(b, &c, 1);
}

tpl_val tpl_undef(const char *name)
{
    return (tpl_val){.kind = TV_UNDEF, .name = name};
}
tpl_val tpl_json(json_t *j)
{
    return (tpl_val){.kind = TV_JSON, .j = j};
}
tpl_val tpl_str(const char *s, size_t n)
{
    return tpl_json(json_stringn_nocheck(s ? s : "", n));
}

tpl_val tpl_copy(const tpl_val *v)
{
    tpl_val c = *v;
    if (c.j) json_incref(c.j);
    return c;
}

void tpl_drop(tpl_val *v)
{
    if (v->j) json_decref(v->j);
    v->j = NULL;
    v->kind = TV_UNDEF;
}

bool tpl_is_str(const tpl_val *v)
{
    return v->kind == TV_JSON && json_is_string(v->j);
}
bool tpl_is_num(const tpl_val *v)
{
    return v->kind == TV_JSON && (json_is_number(v->j) || json_is_boolean(v->j));
}
bool tpl_is_int(const tpl_val *v)
{
    return v->kind == TV_JSON && (json_is_integer(v->j) || json_is_boolean(v->j));
}

double tpl_num(const json_t *j)
{
    if (json_is_boolean(j)) return json_is_true(j) ? 1 : 0;
    return json_number_value(j);
}

bool tpl_truthy(const tpl_val *v)
{
    switch (v->kind) {
    case TV_UNDEF:
        return false;
    case TV_JSON:
        break;
    default:
        return true;
    }
    const json_t *j = v->j;
    switch (json_typeof(j)) {
    case JSON_NULL:
    case JSON_FALSE:
        return false;
    case JSON_TRUE:
        return true;
    case JSON_INTEGER:
        return json_integer_value(j) != 0;
    case JSON_REAL:
        return json_real_value(j) != 0;
    case JSON_STRING:
        return json_string_length(j) > 0;
    case JSON_ARRAY:
        return json_array_size(j) > 0;
    case JSON_OBJECT:
        return json_object_size(j) > 0;
    }
    return false;
}

static bool is_numeric(const json_t *j)
{
    return json_is_number(j) || json_is_boolean(j);
}

bool tpl_json_equal(const json_t *a, const json_t *b)
{
    if (is_numeric(a) && is_numeric(b)) {
        bool ai = !json_is_real(a), bi = !json_is_real(b);
        if (ai && bi) {
            json_int_t x = json_is_integer(a) ? json_integer_value(a) : json_is_true(a);
            json_int_t y = json_is_integer(b) ? json_integer_value(b) : json_is_true(b);
            return x == y;
        }
        return tpl_num(a) == tpl_num(b);
    }
    if (json_typeof(a) != json_typeof(b)) return false;
    switch (json_typeof(a)) {
    case JSON_NULL:
        return true;
    case JSON_STRING:
        return json_string_length(a) == json_string_length(b) &&
               !memcmp(json_string_value(a), json_string_value(b), json_string_length(a));
    case JSON_ARRAY:
        if (json_array_size(a) != json_array_size(b)) return false;
        for (size_t i = 0; i < json_array_size(a); i++)
            if (!tpl_json_equal(json_array_get(a, i), json_array_get(b, i))) return false;
        return true;
    case JSON_OBJECT: {
        if (json_object_size(a) != json_object_size(b)) return false;
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)a, k, v)
        {
            json_t *w = json_object_get(b, k);
            if (!w || !tpl_json_equal(v, w)) return false;
        }
        return true;
    }
    default:
        return false;
    }
}

bool tpl_equal(const tpl_val *a, const tpl_val *b)
{
    if (a->kind == TV_JSON && b->kind == TV_JSON) return tpl_json_equal(a->j, b->j);
    if (a->kind != b->kind) return false;
    switch (a->kind) {
    case TV_UNDEF:
        return true;
    case TV_NS:
        return a->j == b->j;
    case TV_MACRO:
        return a->node == b->node;
    case TV_FUNC:
        return !strcmp(a->name, b->name);
    case TV_METHOD:
        return a->j == b->j && !strcmp(a->name, b->name);
    default:
        return false;
    }
}

const char *tpl_type_name(const tpl_val *v)
{
    switch (v->kind) {
    case TV_UNDEF:
        return "Undefined";
    case TV_NS:
        return "Namespace";
    case TV_MACRO:
        return "Macro";
    case TV_FUNC:
    case TV_METHOD:
        return "function";
    case TV_JSON:
        break;
    }
    switch (json_typeof(v->j)) {
    case JSON_NULL:
        return "NoneType";
    case JSON_TRUE:
    case JSON_FALSE:
        return "bool";
    case JSON_INTEGER:
        return "int";
    case JSON_REAL:
        return "float";
    case JSON_STRING:
        return "str";
    case JSON_ARRAY:
        return "list";
    case JSON_OBJECT:
        return "dict";
    }
    return "object";
}

/* Python's repr(float): the shortest digits that read back as d, fixed
 * notation for exponents -4..15, else d.ddde+XX. */
void tpl_float_repr(tpl_buf *b, double d)
{
    if (isnan(d)) {
        tpl_buf_puts(b, "nan");
        return;
    }
    if (isinf(d)) {
        tpl_buf_puts(b, d < 0 ? "-inf" : "inf");
        return;
    }
    char tmp[64];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, d);
        if (strtod(tmp, NULL) == d) break;
    }
    /* tmp: [-]D[.DDD]e[+-]XX */
    char digits[32];
    size_t nd = 0;
    const char *p = tmp;
    if (*p == '-') {
        tpl_buf_putc(b, '-');
        p++;
    }
    for (; *p && *p != 'e'; p++)
        if (*p != '.') digits[nd++] = *p;
    int exp = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    if (exp >= -4 && exp < 16) {
        if (exp < 0) {
            tpl_buf_puts(b, "0.");
            for (int i = 0; i < -exp - 1; i++)
                tpl_buf_putc(b, '0');
            tpl_buf_put(b, digits, nd);
        } else {
            for (int i = 0; i <= exp; i++)
                tpl_buf_putc(b, (size_t)i < nd ? digits[i] : '0');
            tpl_buf_putc(b, '.');
            if ((size_t)exp + 1 < nd)
                tpl_buf_put(b, digits + exp + 1, nd - (size_t)exp - 1);
            else
                tpl_buf_putc(b, '0');
        }
        return;
    }
    tpl_buf_putc(b, digits[0]);
    if (nd > 1) {
        tpl_buf_putc(b, '.');
        tpl_buf_put(b, digits + 1, nd - 1);
    }
    snprintf(tmp, sizeof tmp, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    tpl_buf_puts(b, tmp);
}

static void put_int(tpl_buf *b, json_int_t v)
{
    char tmp[32];
    snprintf(tmp, sizeof tmp, "%" JSON_INTEGER_FORMAT, v);
    tpl_buf_puts(b, tmp);
}

static uint32_t next_cp(const char *s, size_t n, size_t *i)
{
    utf8proc_int32_t cp;
    utf8proc_ssize_t k =
        utf8proc_iterate((const utf8proc_uint8_t *)s + *i, (utf8proc_ssize_t)(n - *i), &cp);
    if (k <= 0) {
        cp = (unsigned char)s[*i];
        k = 1;
    }
    *i += (size_t)k;
    return (uint32_t)cp;
}

/* Python's repr(str): single quotes unless the text has ' and no ",
 * escapes for the quote, backslash and unprintable characters. */
static void repr_str(tpl_buf *b, const char *s, size_t n)
{
    bool sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
    char q = sq && !dq ? '"' : '\'';
    tpl_buf_putc(b, q);
    for (size_t i = 0; i < n;) {
        size_t start = i;
        uint32_t cp = next_cp(s, n, &i);
        char tmp[16];
        if (cp == (uint32_t)q || cp == '\\') {
            tpl_buf_putc(b, '\\');
            tpl_buf_putc(b, (char)cp);
        } else if (cp == '\n') {
            tpl_buf_puts(b, "\\n");
        } else if (cp == '\r') {
            tpl_buf_puts(b, "\\r");
        } else if (cp == '\t') {
            tpl_buf_puts(b, "\\t");
        } else if (cp < 0x20 || cp == 0x7f) {
            snprintf(tmp, sizeof tmp, "\\x%02x", cp);
            tpl_buf_puts(b, tmp);
        } else if (cp >= 0x80) {
            utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
            bool printable = !(c == UTF8PROC_CATEGORY_CC || c == UTF8PROC_CATEGORY_CF ||
                               c == UTF8PROC_CATEGORY_CS || c == UTF8PROC_CATEGORY_CO ||
                               c == UTF8PROC_CATEGORY_CN || c == UTF8PROC_CATEGORY_ZL ||
                               c == UTF8PROC_CATEGORY_ZP || c == UTF8PROC_CATEGORY_ZS);
            if (printable) {
                tpl_buf_put(b, s + start, i - start);
            } else {
                snprintf(tmp, sizeof tmp,
                         cp < 0x100     ? "\\x%02x"
                         : cp < 0x10000 ? "\\u%04x"
                                        : "\\U%08x",
                         cp);
                tpl_buf_puts(b, tmp);
            }
        } else {
            tpl_buf_putc(b, (char)cp);
        }
    }
    tpl_buf_putc(b, q);
}

void tpl_repr_json(tpl_buf *b, const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_NULL:
        tpl_buf_puts(b, "None");
        return;
    case JSON_TRUE:
        tpl_buf_puts(b, "True");
        return;
    case JSON_FALSE:
        tpl_buf_puts(b, "False");
        return;
    case JSON_INTEGER:
        put_int(b, json_integer_value(j));
        return;
    case JSON_REAL:
        tpl_float_repr(b, json_real_value(j));
        return;
    case JSON_STRING:
        repr_str(b, json_string_value(j), json_string_length(j));
        return;
    case JSON_ARRAY:
        tpl_buf_putc(b, '[');
        for (size_t i = 0; i < json_array_size(j) && !b->oom; i++) {
            if (i) tpl_buf_puts(b, ", ");
            tpl_repr_json(b, json_array_get(j, i));
        }
        tpl_buf_putc(b, ']');
        return;
    case JSON_OBJECT: {
        tpl_buf_putc(b, '{');
        const char *k;
        json_t *v;
        bool first = true;
        json_object_foreach((json_t *)j, k, v)
        {
            if (b->oom) break;
            if (!first) tpl_buf_puts(b, ", ");
            first = false;
            repr_str(b, k, strlen(k));
            tpl_buf_puts(b, ": ");
            tpl_repr_json(b, v);
        }
        tpl_buf_putc(b, '}');
        return;
    }
    }
}

void tpl_str_of(tpl_buf *b, const tpl_val *v)
{
    switch (v->kind) {
    case TV_UNDEF:
        return;
    case TV_NS:
        tpl_buf_puts(b, "<Namespace ");
        tpl_repr_json(b, v->j);
        tpl_buf_putc(b, '>');
        return;
    case TV_MACRO:
    case TV_FUNC:
    case TV_METHOD:
        tpl_buf_puts(b, "<function ");
        tpl_buf_puts(b, v->kind == TV_MACRO ? v->node->name : v->name);
        tpl_buf_putc(b, '>');
        return;
    case TV_JSON:
        break;
    }
    if (json_is_string(v->j))
        tpl_buf_put(b, json_string_value(v->j), json_string_length(v->j));
    else
        tpl_repr_json(b, v->j);
}

/* ---- json.dumps ----------------------------------------------------------------- */

static void dumps_str(tpl_buf *b, const char *s, size_t n, bool ensure_ascii)
{
    tpl_buf_putc(b, '"');
    for (size_t i = 0; i < n;) {
        size_t start = i;
        uint32_t cp = next_cp(s, n, &i);
        char tmp[16];
        switch (cp) {
        case '"':
            tpl_buf_puts(b, "\\\"");
            continue;
        case '\\':
            tpl_buf_puts(b, "\\\\");
            continue;
        case '\n':
            tpl_buf_puts(b, "\\n");
            continue;
        case '\r':
            tpl_buf_puts(b, "\\r");
            continue;
        case '\t':
            tpl_buf_puts(b, "\\t");
            continue;
        case '\b':
            tpl_buf_puts(b, "\\b");
            continue;
        case '\f':
            tpl_buf_puts(b, "\\f");
            continue;
        default:
            break;
        }
        if (cp < 0x20 || (ensure_ascii && cp >= 0x7f)) {
            if (cp >= 0x10000) {
                uint32_t v = cp - 0x10000;
                snprintf(tmp, sizeof tmp, "\\u%04x\\u%04x", 0xD800 + (v >> 10),
                         0xDC00 + (v & 0x3FF));
            } else {
                snprintf(tmp, sizeof tmp, "\\u%04x", cp);
            }
            tpl_buf_puts(b, tmp);
        } else {
            tpl_buf_put(b, s + start, i - start);
        }
    }
    tpl_buf_putc(b, '"');
}

typedef struct dumps_opts {
    bool ensure_ascii, sort_keys;
    const char *indent, *item_sep, *key_sep;
} dumps_opts;

static void newline_indent(tpl_buf *b, const dumps_opts *o, int level)
{
    tpl_buf_putc(b, '\n');
    for (int i = 0; i < level && !b->oom; i++)
        tpl_buf_puts(b, o->indent);
}

static int key_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void dumps(tpl_buf *b, const json_t *j, const dumps_opts *o, int level)
{
    if (b->oom) return;
    switch (json_typeof(j)) {
    case JSON_NULL:
        tpl_buf_puts(b, "null");
        return;
    case JSON_TRUE:
        tpl_buf_puts(b, "true");
        return;
    case JSON_FALSE:
        tpl_buf_puts(b, "false");
        return;
    case JSON_INTEGER:
        put_int(b, json_integer_value(j));
        return;
    case JSON_REAL:
        tpl_float_repr(b, json_real_value(j));
        return;
    case JSON_STRING:
        dumps_str(b, json_string_value(j), json_string_length(j), o->ensure_ascii);
        return;
    case JSON_ARRAY:
        if (!json_array_size(j)) {
            tpl_buf_puts(b, "[]");
            return;
        }
        tpl_buf_putc(b, '[');
        for (size_t i = 0; i < json_array_size(j) && !b->oom; i++) {
            if (i) tpl_buf_puts(b, o->item_sep);
            if (o->indent) newline_indent(b, o, level + 1);
            dumps(b, json_array_get(j, i), o, level + 1);
        }
        if (o->indent) newline_indent(b, o, level);
        tpl_buf_putc(b, ']');
        return;
    case JSON_OBJECT: {
        size_t n = json_object_size(j);
        if (!n) {
            tpl_buf_puts(b, "{}");
            return;
        }
        const char **keys = malloc(n * sizeof *keys);
        if (!keys) {
            b->oom = true;
            return;
        }
        size_t k = 0;
        const char *key;
        json_t *v;
        json_object_foreach((json_t *)j, key, v) keys[k++] = key;
        if (o->sort_keys) qsort(keys, n, sizeof *keys, key_cmp);
        tpl_buf_putc(b, '{');
        for (size_t i = 0; i < n && !b->oom; i++) {
            if (i) tpl_buf_puts(b, o->item_sep);
            if (o->indent) newline_indent(b, o, level + 1);
            dumps_str(b, keys[i], strlen(keys[i]), o->ensure_ascii);
            tpl_buf_puts(b, o->key_sep);
            dumps(b, json_object_get(j, keys[i]), o, level + 1);
        }
        free(keys);
        if (o->indent) newline_indent(b, o, level);
        tpl_buf_putc(b, '}');
        return;
    }
    }
}

void tpl_tojson(tpl_buf *b, const json_t *j, bool ensure_ascii, const char *indent,
                const char *item_sep, const char *key_sep, bool sort_keys)
{
    dumps_opts o = {.ensure_ascii = ensure_ascii, .sort_keys = sort_keys, .indent = indent};
    o.item_sep = item_sep ? item_sep : indent ? "," : ", ";
    o.key_sep = key_sep ? key_sep : ": ";
    dumps(b, j, &o, 0);
}

/* ---- UTF-8 ------------------------------------------------------------------ */

size_t tpl_utf8_offsets(const char *s, size_t n, size_t **offs)
{
    tpl_charge(n / 4);
    size_t *o = malloc((n + 1) * sizeof *o);
    size_t k = 0;
    if (!o) {
        *offs = NULL;
        return 0;
    }
    for (size_t i = 0; i < n;) {
        o[k++] = i;
        next_cp(s, n, &i);
    }
    o[k] = n;
    *offs = o;
    return k;
}

size_t tpl_utf8_count(const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) k++;
    return k;
}

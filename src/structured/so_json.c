/* JSON front end: any JSON value (json_object) and a JSON-schema subset
 * (see structured.h) compiled into the byte NFA. Objects emit their
 * properties in schema order; an optional property may be skipped, and the
 * comma before a property depends only on whether one came before, so each
 * property's value is built once and shared by both paths. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "so_internal.h"
#include "structured.h"

/* Schemas nested deeper than this are refused (the compiler recurses). */
enum { SCHEMA_MAX_DEPTH = 32 };

static so_frag ws(so_nfa *a)
{
    return so_frag_opt(a, so_frag_lit(a, " ", 1));
}

static so_frag lit(so_nfa *a, const char *s)
{
    return so_frag_lit(a, s, strlen(s));
}

static so_frag cat3(so_nfa *a, so_frag x, so_frag y, so_frag z)
{
    return so_frag_cat(a, so_frag_cat(a, x, y), z);
}

/* One character inside a JSON string: printable UTF-8 except '"' and '\',
 * or a short escape. */
static so_frag string_char(so_nfa *a)
{
    bool set[128] = {false};
    for (int c = 0x20; c < 128; c++)
        set[c] = c != '"' && c != '\\';
    so_frag plain = so_frag_char(a, set, true);
    bool esc[128] = {false};
    for (const char *e = "\"\\/bfnrt"; *e; e++)
        esc[(unsigned char)*e] = true;
    so_frag escape = so_frag_cat(a, lit(a, "\\"), so_frag_char(a, esc, false));
    return so_frag_alt(a, plain, escape);
}

/* A string of min_len..max_len characters (max_len < 0: unbounded). */
static so_frag jstring(so_nfa *a, int min_len, int max_len)
{
    so_frag body = so_frag_empty(a);
    for (int k = 0; k < min_len; k++)
        body = so_frag_cat(a, body, string_char(a));
    if (max_len < 0) {
        body = so_frag_cat(a, body, so_frag_star(a, string_char(a)));
    } else {
        for (int k = min_len; k < max_len; k++)
            body = so_frag_cat(a, body, so_frag_opt(a, string_char(a)));
    }
    return cat3(a, lit(a, "\""), body, lit(a, "\""));
}

static so_frag digits(so_nfa *a, int min, int max)
{
    bool set[128] = {false};
    for (int c = '0'; c <= '9'; c++)
        set[c] = true;
    so_frag f = so_frag_empty(a);
    for (int k = 0; k < max; k++) {
        so_frag d = so_frag_char(a, set, false);
        f = so_frag_cat(a, f, k < min ? d : so_frag_opt(a, d));
    }
    return f;
}

static so_frag jinteger(so_nfa *a)
{
    bool nz[128] = {false};
    for (int c = '1'; c <= '9'; c++)
        nz[c] = true;
    so_frag lead = so_frag_cat(a, so_frag_char(a, nz, false), digits(a, 0, 15));
    return so_frag_cat(a, so_frag_opt(a, lit(a, "-")), so_frag_alt(a, lit(a, "0"), lead));
}

static so_frag jnumber(so_nfa *a)
{
    so_frag frac = so_frag_opt(a, so_frag_cat(a, lit(a, "."), digits(a, 1, 16)));
    bool e[128] = {false}, sign[128] = {false};
    e['e'] = e['E'] = true;
    sign['+'] = sign['-'] = true;
    so_frag expo =
        so_frag_opt(a, cat3(a, so_frag_char(a, e, false),
                            so_frag_opt(a, so_frag_char(a, sign, false)), digits(a, 1, 2)));
    return cat3(a, jinteger(a), frac, expo);
}

static so_frag scalar_any(so_nfa *a)
{
    so_frag f = so_frag_alt(a, jstring(a, 0, -1), jnumber(a));
    f = so_frag_alt(a, f, lit(a, "true"));
    f = so_frag_alt(a, f, lit(a, "false"));
    return so_frag_alt(a, f, lit(a, "null"));
}

/* An item builder for lists: a value schema, or a free key-value pair. */
typedef struct item_gen {
    so_frag (*fn)(struct item_gen *g);
    so_nfa *a;
    const json_t *schema; /* items schema, NULL = any value */
    int depth;            /* free nesting left */
    int schema_depth;
    const json_t *root;
    cv_error *err;
    bool failed;
} item_gen;

static so_frag sep(so_nfa *a)
{
    return cat3(a, ws(a), lit(a, ","), ws(a));
}

/* open item (sep item){min-1..max-1} close, at least min and at most max
 * items (max < 0: unbounded, the last item looping back through a
 * separator so it is built once). */
static so_frag json_list(so_nfa *a, const char *open, const char *close, item_gen *g, int min,
                         int max)
{
    so_frag f = so_frag_cat(a, lit(a, open), ws(a));
    if (max == 0) return so_frag_cat(a, f, lit(a, close));
    so_frag body = so_frag_empty(a);
    for (int k = 1; k < min && !g->failed; k++)
        body = cat3(a, body, g->fn(g), sep(a));
    if (max < 0) {
        so_frag item = g->fn(g), s = sep(a);
        int32_t end = so_nfa_node(a);
        so_nfa_eps(a, item.end, s.start);
        so_nfa_eps(a, s.end, item.start);
        so_nfa_eps(a, item.end, end);
        body = so_frag_cat(a, body, (so_frag){item.start, end});
    } else {
        body = so_frag_cat(a, body, g->fn(g));
        for (int k = min > 1 ? min : 1; k < max && !g->failed; k++)
            body = so_frag_cat(a, body, so_frag_opt(a, so_frag_cat(a, sep(a), g->fn(g))));
    }
    if (min == 0) body = so_frag_opt(a, body);
    return cat3(a, f, body, so_frag_cat(a, ws(a), lit(a, close)));
}

static so_frag gen_any(item_gen *g)
{
    return so_json_any(g->a, g->depth);
}

static so_frag gen_kv(item_gen *g)
{
    so_nfa *a = g->a;
    return cat3(a, jstring(a, 0, -1), cat3(a, ws(a), lit(a, ":"), ws(a)), so_json_any(a, g->depth));
}

so_frag so_json_any(so_nfa *a, int depth)
{
    so_frag f = scalar_any(a);
    if (depth <= 0) return f;
    item_gen vals = {.fn = gen_any, .a = a, .depth = depth - 1};
    item_gen kvs = {.fn = gen_kv, .a = a, .depth = depth - 1};
    f = so_frag_alt(a, f, json_list(a, "[", "]", &vals, 0, -1));
    return so_frag_alt(a, f, json_list(a, "{", "}", &kvs, 0, -1));
}

/* ---- Schemas -------------------------------------------------------------- */

typedef struct sc {
    so_nfa *a;
    const json_t *root; /* the whole schema: where $ref points */
    cv_error *err;
    bool failed;
} sc;

static int sc_fail(sc *c, const char *fmt, const char *arg)
{
    if (!c->failed) cv_errorf(c->err, fmt, arg);
    c->failed = true;
    return -1;
}

static so_frag schema(sc *c, const json_t *s, int depth);

static so_frag json_literal(sc *c, const json_t *v)
{
    char *text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    if (!text) {
        sc_fail(c, "out of memory compiling %s", "a JSON literal");
        return so_frag_empty(c->a);
    }
    so_frag f = lit(c->a, text);
    free(text);
    return f;
}

static int get_count(sc *c, const json_t *s, const char *key, int dflt)
{
    const json_t *v = json_object_get(s, key);
    if (!v) return dflt;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 1000) {
        sc_fail(c, "JSON schema '%s' must be an integer in [0, 1000]", key);
        return dflt;
    }
    return (int)json_integer_value(v);
}

static bool is_required(const json_t *required, const char *name)
{
    size_t i;
    const json_t *r;
    json_array_foreach(required, i,
                       r) if (json_is_string(r) && !strcmp(json_string_value(r), name)) return true;
    return false;
}

/* { "k1": v1, "k2": v2 } in schema order: A[i] = nothing written before
 * property i, B[i] = something written; property i's pair is shared. */
static so_frag object_schema(sc *c, const json_t *s, int depth)
{
    so_nfa *a = c->a;
    const json_t *props = json_object_get(s, "properties");
    const json_t *required = json_object_get(s, "required");
    const json_t *extra = json_object_get(s, "additionalProperties");
    if (required && !json_is_array(required)) {
        sc_fail(c, "JSON schema '%s' must be a list of property names", "required");
        return so_frag_empty(a);
    }
    if (extra && !json_is_false(extra)) {
        sc_fail(c, "JSON schema keyword '%s' is only supported as false", "additionalProperties");
        return so_frag_empty(a);
    }
    if (!props) {
        item_gen kvs = {.fn = gen_kv, .a = a, .depth = SO_MAX_FREE_DEPTH - 1};
        return json_list(a, "{", "}", &kvs, 0, -1);
    }
    if (!json_is_object(props)) {
        sc_fail(c, "JSON schema '%s' must be an object", "properties");
        return so_frag_empty(a);
    }
    so_frag f = so_frag_cat(a, lit(a, "{"), ws(a));
    int32_t A = f.end, B = so_nfa_node(a), end = so_nfa_node(a);
    const char *name;
    const json_t *sub;
    json_object_foreach((json_t *)props, name, sub)
    {
        json_t *key = json_string(name);
        so_frag k = json_literal(c, key);
        json_decref(key);
        so_frag pair = cat3(a, k, cat3(a, ws(a), lit(a, ":"), ws(a)), schema(c, sub, depth + 1));
        so_nfa_eps(a, A, pair.start);
        so_frag comma = cat3(a, ws(a), lit(a, ","), ws(a));
        so_nfa_eps(a, B, comma.start);
        so_nfa_eps(a, comma.end, pair.start);
        int32_t A2 = so_nfa_node(a), B2 = so_nfa_node(a);
        so_nfa_eps(a, pair.end, B2);
        if (!required || !is_required(required, name)) {
            so_nfa_eps(a, A, A2);
            so_nfa_eps(a, B, B2);
        }
        A = A2;
        B = B2;
    }
    so_frag close_a = lit(a, "}"), close_b = so_frag_cat(a, ws(a), lit(a, "}"));
    so_nfa_eps(a, A, close_a.start);
    so_nfa_eps(a, B, close_b.start);
    so_nfa_eps(a, close_a.end, end);
    so_nfa_eps(a, close_b.end, end);
    return (so_frag){f.start, end};
}

static so_frag gen_items(item_gen *g)
{
    sc c = {.a = g->a, .root = g->root, .err = g->err};
    so_frag f = g->schema ? schema(&c, g->schema, g->schema_depth) : so_json_any(g->a, g->depth);
    if (c.failed) g->failed = true;
    return f;
}

static so_frag array_schema(sc *c, const json_t *s, int depth)
{
    int min = get_count(c, s, "minItems", 0), max = get_count(c, s, "maxItems", -1);
    if (max >= 0 && max < min) {
        sc_fail(c, "JSON schema '%s' is below minItems", "maxItems");
        return so_frag_empty(c->a);
    }
    const json_t *items = json_object_get(s, "items");
    item_gen g = {.fn = gen_items,
                  .a = c->a,
                  .schema = items,
                  .depth = SO_MAX_FREE_DEPTH - 1,
                  .schema_depth = depth + 1,
                  .root = c->root,
                  .err = c->err};
    so_frag f = json_list(c->a, "[", "]", &g, min, max);
    if (g.failed) c->failed = true;
    return f;
}

/* The JSON spelling of byte b inside a string, when b may not stand for
 * itself there ('"', '\\', controls); NULL when it may. */
static const char *escape_of(uint8_t b, char buf[8])
{
    switch (b) {
    case '"':
        return "\\\"";
    case '\\':
        return "\\\\";
    case '\b':
        return "\\b";
    case '\f':
        return "\\f";
    case '\n':
        return "\\n";
    case '\r':
        return "\\r";
    case '\t':
        return "\\t";
    default:
        break;
    }
    if (b >= 0x20) return NULL;
    snprintf(buf, 8, "\\u%04x", b);
    return buf;
}

/* The regex fragment built from node first_node and edge first_edge on
 * matches string values; JSON text must spell some bytes as escapes. Each
 * byte edge is cut to the bytes that stand for themselves, and every other
 * byte it held gets a side path that spells its escape. */
static void escape_edges(so_nfa *a, int32_t first_node, int32_t first_edge)
{
    int32_t n_nodes = a->n_nodes, n_edges = a->n_edges;
    for (int32_t x = first_node; x < n_nodes; x++)
        for (int32_t e = a->first[x]; e >= first_edge; e = a->edges[e].next) {
            if (e >= n_edges || a->edges[e].eps) continue; /* one added here, or epsilon */
            so_edge ed = a->edges[e];
            /* The bytes that stand for themselves: [0x20-0x21], [0x23-0x5B], [0x5D-0xFF]. */
            static const uint8_t keep[3][2] = {{0x20, 0x21}, {0x23, 0x5B}, {0x5D, 0xFF}};
            bool first = true;
            for (int k = 0; k < 3; k++) {
                int lo = ed.lo > keep[k][0] ? ed.lo : keep[k][0];
                int hi = ed.hi < keep[k][1] ? ed.hi : keep[k][1];
                if (lo > hi) continue;
                if (first) {
                    a->edges[e].lo = (uint8_t)lo;
                    a->edges[e].hi = (uint8_t)hi;
                    first = false;
                } else {
                    so_nfa_range(a, x, ed.to, (uint8_t)lo, (uint8_t)hi);
                }
            }
            if (first) { /* nothing stands for itself: an empty range never matches */
                a->edges[e].lo = 1;
                a->edges[e].hi = 0;
            }
            for (int b = ed.lo; b <= ed.hi; b++) {
                char buf[8];
                const char *spelled = escape_of((uint8_t)b, buf);
                if (!spelled) continue;
                so_frag f = lit(a, spelled);
                so_nfa_eps(a, x, f.start);
                so_nfa_eps(a, f.end, ed.to);
            }
        }
}

/* A string whose value matches the regex re (the whole value: JSON
 * schema's pattern is a search, but generation needs an end, as in
 * xgrammar). what names the keyword in errors. */
static so_frag pattern_string(sc *c, const char *re, const char *what)
{
    so_nfa *a = c->a;
    int32_t n0 = a->n_nodes, e0 = a->n_edges;
    so_frag body;
    cv_error rerr;
    if (so_regex_compile(a, re, strlen(re), &body, &rerr) < 0) {
        char msg[sizeof(rerr.msg) + 64];
        snprintf(msg, sizeof(msg), "JSON schema '%s': %s", what, rerr.msg);
        sc_fail(c, "%s", msg);
        return so_frag_empty(a);
    }
    escape_edges(a, n0, e0);
    return cat3(a, lit(a, "\""), body, lit(a, "\""));
}

/* JSON schema formats as regexes of their values (RFC 3339 date, time and
 * date-time; RFC 4122 uuid; dotted-quad ipv4; a common email and hostname
 * subset). Other formats are annotations only: a plain string. */
static const char *const formats[][2] = {
    {"date", "\\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\\d|3[01])"},
    {"time",
     "([01]\\d|2[0-3]):[0-5]\\d:([0-5]\\d|60)(\\.\\d{1,9})?(Z|[+-]([01]\\d|2[0-3]):[0-5]\\d)"},
    {"date-time", "\\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\\d|3[01])T([01]\\d|2[0-3]):[0-5]\\d:([0-5]"
                  "\\d|60)(\\.\\d{1,9})?(Z|[+-]([01]\\d|2[0-3]):[0-5]\\d)"},
    {"uuid", "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"},
    {"ipv4", "((25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)\\.){3}(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)"},
    {"email",
     "[a-zA-Z0-9._%+-]+@[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\\.[a-zA-Z0-9]([a-zA-Z0-9-]*"
     "[a-zA-Z0-9])?)*\\.[a-zA-Z]{2,}"},
    {"hostname",
     "[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*"},
};

static so_frag string_schema(sc *c, const json_t *s)
{
    so_nfa *a = c->a;
    int min = get_count(c, s, "minLength", 0), max = get_count(c, s, "maxLength", -1);
    if (max >= 0 && max < min) sc_fail(c, "JSON schema '%s' is below minLength", "maxLength");
    const json_t *pattern = json_object_get(s, "pattern"), *format = json_object_get(s, "format");
    const char *re = NULL, *what = "pattern";
    if (pattern) {
        if (!json_is_string(pattern)) {
            sc_fail(c, "JSON schema '%s' must be a string", "pattern");
            return so_frag_empty(a);
        }
        re = json_string_value(pattern);
    } else if (format) {
        if (!json_is_string(format)) {
            sc_fail(c, "JSON schema '%s' must be a string", "format");
            return so_frag_empty(a);
        }
        what = "format";
        for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++)
            if (!strcmp(json_string_value(format), formats[i][0])) re = formats[i][1];
    }
    if (!re) return jstring(a, min, max);
    /* A regular language and a length bound intersect to a product
     * automaton this compiler does not build. */
    if (json_object_get(s, "minLength") || json_object_get(s, "maxLength")) {
        sc_fail(c, "JSON schema 'minLength'/'maxLength' together with '%s' is not supported", what);
        return so_frag_empty(a);
    }
    return pattern_string(c, re, what);
}

static so_frag type_frag(sc *c, const json_t *s, const char *type, int depth)
{
    so_nfa *a = c->a;
    if (!strcmp(type, "string")) return string_schema(c, s);
    if (!strcmp(type, "integer")) return jinteger(a);
    if (!strcmp(type, "number")) return jnumber(a);
    if (!strcmp(type, "boolean")) return so_frag_alt(a, lit(a, "true"), lit(a, "false"));
    if (!strcmp(type, "null")) return lit(a, "null");
    if (!strcmp(type, "object")) return object_schema(c, s, depth);
    if (!strcmp(type, "array")) return array_schema(c, s, depth);
    sc_fail(c, "JSON schema type '%s' is not supported", type);
    return so_frag_empty(a);
}

/* "#/$defs/name" or "#/definitions/name" inside the root schema. A
 * recursive reference ends at SCHEMA_MAX_DEPTH with that message. */
static const json_t *resolve_ref(sc *c, const json_t *ref)
{
    const char *r = json_string_value(ref);
    const char *name = NULL;
    const json_t *defs = NULL;
    if (r && !strncmp(r, "#/$defs/", 8)) {
        defs = json_object_get(c->root, "$defs");
        name = r + 8;
    } else if (r && !strncmp(r, "#/definitions/", 14)) {
        defs = json_object_get(c->root, "definitions");
        name = r + 14;
    }
    const json_t *target = name ? json_object_get(defs, name) : NULL;
    if (!target)
        sc_fail(c,
                "JSON schema '$ref' %s is not supported (only #/$defs/NAME and #/definitions/NAME "
                "that exist)",
                r ? r : "(not a string)");
    return target;
}

static const char *const known_keywords[] = {
    "type",     "properties",  "required",    "additionalProperties",
    "enum",     "const",       "items",       "minItems",
    "maxItems", "minLength",   "maxLength",   "anyOf",
    "title",    "description", "$schema",     "oneOf",
    "$ref",     "$defs",       "definitions", "default",
    "examples", "pattern",     "format",
};

static so_frag schema(sc *c, const json_t *s, int depth)
{
    so_nfa *a = c->a;
    if (c->failed) return so_frag_empty(a);
    if (a->failed) {
        /* Stops a schema that doubles at every level (two $refs to itself)
         * long before its 2^32 expansions. */
        sc_fail(c, "JSON schema is too large (more than %s automaton states)", "1048576");
        return so_frag_empty(a);
    }
    if (depth > SCHEMA_MAX_DEPTH) {
        sc_fail(c, "JSON schema is nested deeper than %s levels", "32");
        return so_frag_empty(a);
    }
    if (json_is_true(s)) return so_json_any(a, SO_MAX_FREE_DEPTH);
    if (!json_is_object(s)) {
        sc_fail(c, "JSON schema must be an object%s", "");
        return so_frag_empty(a);
    }
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)s, key, v)
    {
        bool known = false;
        for (size_t i = 0; i < sizeof(known_keywords) / sizeof(known_keywords[0]); i++)
            known = known || !strcmp(key, known_keywords[i]);
        if (!known) {
            sc_fail(c, "JSON schema keyword '%s' is not supported", key);
            return so_frag_empty(a);
        }
    }
    const json_t *ref = json_object_get(s, "$ref");
    if (ref) {
        const json_t *target = resolve_ref(c, ref);
        return target ? schema(c, target, depth + 1) : so_frag_empty(a);
    }
    const json_t *cnst = json_object_get(s, "const"), *en = json_object_get(s, "enum");
    /* oneOf generates as anyOf: an output matching several branches is
     * rare and generation cannot rule it out token by token. */
    const json_t *any_of = json_object_get(s, "anyOf"), *type = json_object_get(s, "type");
    if (!any_of) any_of = json_object_get(s, "oneOf");
    if (cnst) return json_literal(c, cnst);
    if (en) {
        if (!json_is_array(en) || json_array_size(en) == 0) {
            sc_fail(c, "JSON schema '%s' must be a non-empty list", "enum");
            return so_frag_empty(a);
        }
        so_frag f = json_literal(c, json_array_get(en, 0));
        for (size_t i = 1; i < json_array_size(en); i++)
            f = so_frag_alt(a, f, json_literal(c, json_array_get(en, i)));
        return f;
    }
    if (any_of) {
        if (!json_is_array(any_of) || json_array_size(any_of) == 0) {
            sc_fail(c, "JSON schema '%s' must be a non-empty list of schemas", "anyOf");
            return so_frag_empty(a);
        }
        so_frag f = schema(c, json_array_get(any_of, 0), depth + 1);
        for (size_t i = 1; i < json_array_size(any_of); i++)
            f = so_frag_alt(a, f, schema(c, json_array_get(any_of, i), depth + 1));
        return f;
    }
    if (json_is_string(type)) return type_frag(c, s, json_string_value(type), depth);
    if (json_is_array(type) && json_array_size(type) > 0) {
        so_frag f = {-1, -1};
        size_t i;
        const json_t *t;
        json_array_foreach(type, i, t)
        {
            if (!json_is_string(t)) {
                sc_fail(c, "JSON schema '%s' must be a string or a list of strings", "type");
                return so_frag_empty(a);
            }
            so_frag x = type_frag(c, s, json_string_value(t), depth);
            f = f.start < 0 ? x : so_frag_alt(a, f, x);
        }
        return f;
    }
    if (type) {
        sc_fail(c, "JSON schema '%s' must be a string or a list of strings", "type");
        return so_frag_empty(a);
    }
    /* Keywords only strings have imply a string, as in xgrammar. */
    if (json_object_get(s, "pattern") || json_object_get(s, "format")) return string_schema(c, s);
    if (json_object_get(s, "properties")) return object_schema(c, s, depth);
    if (json_object_get(s, "items")) return array_schema(c, s, depth);
    return so_json_any(a, SO_MAX_FREE_DEPTH);
}

int so_json_schema_compile(so_nfa *a, const char *text, so_frag *out, cv_error *err)
{
    json_error_t jerr;
    json_t *root = json_loads(text, JSON_DECODE_ANY, &jerr);
    if (!root)
        return cv_errorf(err, "JSON schema is not valid JSON: %s (line %d, column %d)", jerr.text,
                         jerr.line, jerr.column);
    sc c = {.a = a, .root = root, .err = err};
    *out = schema(&c, root, 0);
    json_decref(root);
    if (c.failed) return -1;
    if (a->failed)
        return cv_errorf(err, "JSON schema is too large (more than %d automaton states)",
                         SO_MAX_NODES);
    return 0;
}

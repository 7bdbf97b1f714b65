/* An independent check of JSON values against the JSON-schema subset the
 * structured-output tests use (see schema_check.h), written apart from
 * src/structured: jansson for the values, POSIX regexec for patterns, and
 * direct checks for formats. */
#include <arpa/inet.h>
#include <ctype.h>
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "schema_check.h"

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

static bool has_type(const json_t *v, const char *t)
{
    if (!strcmp(t, "string")) return json_is_string(v);
    if (!strcmp(t, "integer")) return json_is_integer(v);
    if (!strcmp(t, "number")) return json_is_number(v);
    if (!strcmp(t, "boolean")) return json_is_boolean(v);
    if (!strcmp(t, "null")) return json_is_null(v);
    if (!strcmp(t, "object")) return json_is_object(v);
    if (!strcmp(t, "array")) return json_is_array(v);
    return false;
}

/* The whole schema, where $ref points. */
static const json_t *schema_root;

/* The whole string value v matches the POSIX ERE re (the test schemas'
 * patterns are written in the common subset; ^ and $ may be given). */
static bool posix_full_match(const char *re, const json_t *v)
{
    char anchored[512];
    size_t n = strlen(re);
    if (n && re[n - 1] == '$') n--;
    if (*re == '^') re++, n--;
    snprintf(anchored, sizeof(anchored), "^(%.*s)$", (int)n, re);
    regex_t rx;
    assert_int_equal(regcomp(&rx, anchored, REG_EXTENDED | REG_NOSUB), 0);
    bool ok = regexec(&rx, json_string_value(v), 0, NULL, 0) == 0;
    regfree(&rx);
    return ok;
}

static bool is_date(const char *t)
{
    int y, m, d, n = 0;
    return strlen(t) == 10 && sscanf(t, "%4d-%2d-%2d%n", &y, &m, &d, &n) == 3 && n == 10 &&
           m >= 1 && m <= 12 && d >= 1 && d <= 31 && t[4] == '-' && t[7] == '-';
}

static bool is_time(const char *t)
{
    int h, m, sec, n = 0;
    if (sscanf(t, "%2d:%2d:%2d%n", &h, &m, &sec, &n) != 3 || n != 8 || h > 23 || m > 59 || sec > 60)
        return false;
    t += 8;
    if (*t == '.') {
        int digits = 0;
        while (t[1 + digits] >= '0' && t[1 + digits] <= '9')
            digits++;
        if (digits == 0) return false;
        t += 1 + digits;
    }
    if (!strcmp(t, "Z")) return true;
    return (*t == '+' || *t == '-') && sscanf(t + 1, "%2d:%2d%n", &h, &m, &n) == 2 && n == 5 &&
           t[6] == '\0' && h <= 23 && m <= 59;
}

static bool format_valid(const char *format, const json_t *v)
{
    const char *t = json_string_value(v);
    if (!strcmp(format, "date")) return is_date(t);
    if (!strcmp(format, "time")) return is_time(t);
    if (!strcmp(format, "date-time")) {
        char date[11];
        snprintf(date, sizeof(date), "%s", t);
        return strlen(t) > 11 && t[10] == 'T' && is_date(date) && is_time(t + 11);
    }
    if (!strcmp(format, "uuid")) {
        if (strlen(t) != 36) return false;
        for (int i = 0; i < 36; i++)
            if (i == 8 || i == 13 || i == 18 || i == 23 ? t[i] != '-'
                                                        : !isxdigit((unsigned char)t[i]))
                return false;
        return true;
    }
    if (!strcmp(format, "ipv4")) {
        /* inet_pton takes no leading zeros in glibc's strict dotted quad. */
        struct in_addr addr;
        return inet_pton(AF_INET, t, &addr) == 1;
    }
    fail_msg("the checker has no format '%s'", format);
    return false;
}

static bool valid(const json_t *v, const json_t *s)
{
    const json_t *x;
    if ((x = json_object_get(s, "$ref"))) {
        const char *ref = json_string_value(x);
        bool defs = !strncmp(ref, "#/$defs/", 8);
        const char *name = ref + (defs ? 8 : strlen("#/definitions/"));
        return valid(
            v, json_object_get(json_object_get(schema_root, defs ? "$defs" : "definitions"), name));
    }
    if ((x = json_object_get(s, "oneOf"))) {
        int n = 0;
        size_t i;
        const json_t *e;
        json_array_foreach(x, i, e) n += valid(v, e);
        return n == 1;
    }
    if ((x = json_object_get(s, "const"))) return json_equal(v, x);
    if ((x = json_object_get(s, "enum"))) {
        size_t i;
        const json_t *e;
        json_array_foreach(x, i, e) if (json_equal(v, e)) return true;
        return false;
    }
    if ((x = json_object_get(s, "anyOf"))) {
        size_t i;
        const json_t *e;
        json_array_foreach(x, i, e) if (valid(v, e)) return true;
        return false;
    }
    if ((x = json_object_get(s, "type"))) {
        bool ok = false;
        if (json_is_string(x)) ok = has_type(v, json_string_value(x));
        size_t i;
        const json_t *e;
        json_array_foreach(x, i, e) ok = ok || has_type(v, json_string_value(e));
        if (!ok) return false;
    }
    if (json_is_string(v)) {
        if ((x = json_object_get(s, "pattern")) && !posix_full_match(json_string_value(x), v))
            return false;
        if ((x = json_object_get(s, "format")) && !format_valid(json_string_value(x), v))
            return false;
        size_t len = utf8_chars(json_string_value(v));
        if ((x = json_object_get(s, "maxLength")) && len > (size_t)json_integer_value(x))
            return false;
        if ((x = json_object_get(s, "minLength")) && len < (size_t)json_integer_value(x))
            return false;
    }
    if (json_is_array(v)) {
        size_t n = json_array_size(v);
        if ((x = json_object_get(s, "maxItems")) && n > (size_t)json_integer_value(x)) return false;
        if ((x = json_object_get(s, "minItems")) && n < (size_t)json_integer_value(x)) return false;
        if ((x = json_object_get(s, "items")))
            for (size_t i = 0; i < n; i++)
                if (!valid(json_array_get(v, i), x)) return false;
    }
    if (json_is_object(v)) {
        const json_t *props = json_object_get(s, "properties");
        const json_t *req = json_object_get(s, "required");
        size_t i;
        const json_t *e;
        json_array_foreach(req, i, e) if (!json_object_get(v, json_string_value(e))) return false;
        const char *key;
        const json_t *val;
        json_object_foreach((json_t *)v, key, val)
        {
            const json_t *ps = json_object_get(props, key);
            if (props && !ps) return false; /* only listed properties are generated */
            if (ps && !valid(val, ps)) return false;
        }
    }
    return true;
}

bool schema_check(const json_t *v, const json_t *schema)
{
    schema_root = schema;
    return valid(v, schema);
}

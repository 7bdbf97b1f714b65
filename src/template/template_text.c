/* String operations with Python's str semantics over UTF-8 text: case
 * mapping (utf8proc), strip with Python's whitespace set, replace. */
/* memmem: linear-time substring search */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "template/template_text.h"

static uint32_t cp_at(const char *s, size_t n, size_t *i)
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

static void put_cp(tpl_buf *b, uint32_t cp)
{
    utf8proc_uint8_t u[4];
    utf8proc_ssize_t k = utf8proc_encode_char((utf8proc_int32_t)cp, u);
    tpl_buf_put(b, (const char *)u, (size_t)k);
}

/* Python's str.isspace() set. */
bool tpl_is_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

static bool is_cased(uint32_t c)
{
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT;
}

static int finish(tpl_ctx *ctx, const tpl_node *at, tpl_buf *b, tpl_val *out)
{
    if (b->oom) {
        free(b->p);
        return tpl_fail(ctx, at, "string too long");
    }
    *out = tpl_str(b->p, b->len);
    free(b->p);
    return 0;
}

int tpl_text_case(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v, tpl_text_case_mode mode,
                  tpl_val *out)
{
    const char *s = json_string_value(v->j);
    size_t n = json_string_length(v->j);
    tpl_buf b = {0};
    bool prev_cased = false, word_start = true, first = true;
    for (size_t i = 0; i < n;) {
        uint32_t c = cp_at(s, n, &i), r = c;
        switch (mode) {
        case TEXT_LOWER:
            r = (uint32_t)utf8proc_tolower((utf8proc_int32_t)c);
            break;
        case TEXT_UPPER:
            r = (uint32_t)utf8proc_toupper((utf8proc_int32_t)c);
            break;
        case TEXT_CAPITALIZE:
            r = (uint32_t)(first ? utf8proc_totitle((utf8proc_int32_t)c)
                                 : utf8proc_tolower((utf8proc_int32_t)c));
            break;
        case TEXT_TITLE: /* str.title: upper after an uncased character */
            r = (uint32_t)(prev_cased ? utf8proc_tolower((utf8proc_int32_t)c)
                                      : utf8proc_totitle((utf8proc_int32_t)c));
            prev_cased = is_cased(c);
            break;
        case TEXT_JINJA_TITLE: /* jinja2's title: words start after whitespace - ( { [ < */
            r = (uint32_t)(word_start ? utf8proc_toupper((utf8proc_int32_t)c)
                                      : utf8proc_tolower((utf8proc_int32_t)c));
            word_start =
                tpl_is_space(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
            break;
        }
        first = false;
        put_cp(&b, r);
    }
    return finish(ctx, at, &b, out);
}

static bool in_chars(uint32_t c, const char *chars, size_t n)
{
    for (size_t i = 0; i < n;)
        if (cp_at(chars, n, &i) == c) return true;
    return false;
}

int tpl_text_strip(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v, const tpl_val *chars,
                   bool left, bool right, tpl_val *out)
{
    if (chars && chars->kind == TV_JSON && json_is_null(chars->j)) chars = NULL;
    if (chars && !tpl_is_str(chars)) return tpl_fail(ctx, at, "strip arg must be None or str");
    const char *s = json_string_value(v->j), *cs = chars ? json_string_value(chars->j) : NULL;
    size_t n = json_string_length(v->j), ncs = chars ? json_string_length(chars->j) : 0;
    size_t start = 0, end = n;
    if (left) {
        while (start < n) {
            size_t i = start;
            uint32_t c = cp_at(s, n, &i);
            if (!(cs ? in_chars(c, cs, ncs) : tpl_is_space(c))) break;
            start = i;
        }
    }
    if (right) {
        while (end > start) {
            size_t p = end - 1;
            while (p > start && ((unsigned char)s[p] & 0xC0) == 0x80)
                p--;
            size_t i = p;
            uint32_t c = cp_at(s, n, &i);
            if (!(cs ? in_chars(c, cs, ncs) : tpl_is_space(c))) break;
            end = p;
        }
    }
    *out = tpl_str(s + start, end - start);
    return 0;
}

int tpl_text_replace(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v, const tpl_val *old,
                     const tpl_val *new_, json_int_t count, tpl_val *out)
{
    const char *s = json_string_value(v->j), *o = json_string_value(old->j),
               *w = json_string_value(new_->j);
    size_t n = json_string_length(v->j), no = json_string_length(old->j),
           nw = json_string_length(new_->j);
    tpl_buf b = {0};
    json_int_t done = 0;
    if (no == 0) {
        /* Python inserts new before every character and at the end */
        for (size_t i = 0; i <= n && !b.oom;) {
            if (count < 0 || done < count) {
                tpl_buf_put(&b, w, nw);
                done++;
            }
            if (i == n) break;
            size_t j = i;
            cp_at(s, n, &j);
            tpl_buf_put(&b, s + i, j - i);
            i = j;
        }
        return finish(ctx, at, &b, out);
    }
    size_t i = 0;
    while (i < n && !b.oom) {
        const char *hit = count < 0 || done < count ? memmem(s + i, n - i, o, no) : NULL;
        size_t upto = hit ? (size_t)(hit - s) : n;
        tpl_buf_put(&b, s + i, upto - i);
        i = upto;
        if (hit) {
            tpl_buf_put(&b, w, nw);
            i += no;
            done++;
        }
    }
    return finish(ctx, at, &b, out);
}

/* Helpers shared by the tokenizer tests: paths under CVLLM_SHARED and the
 * source tree, loading JSON fixtures, and comparing id arrays with a
 * readable failure message. */
#ifndef CV_TESTS_TOK_TEST_UTIL_H
#define CV_TESTS_TOK_TEST_UTIL_H

#include <jansson.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <setjmp.h>
#include <cmocka.h>

#include "tokenizer/tokenizer.h"

static inline const char *tt_env(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v && v[0] ? v : dflt;
}

/* snprintf into a static rotating buffer: paths for the duration of a test */
static inline const char *tt_path(const char *fmt, ...)
{
    static char bufs[8][4096];
    static int next;
    char *b = bufs[next++ % 8];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, 4096, fmt, ap);
    va_end(ap);
    return b;
}

static inline const char *tt_shared(void)
{
    return tt_env("CVLLM_SHARED", "../shared");
}
static inline const char *tt_source(void)
{
    return tt_env("CVLLM_SOURCE_DIR", ".");
}

static inline cv_tokenizer *tt_load(const char *dir)
{
    cv_error err = {.msg = ""};
    cv_tokenizer *tok = tok_load(dir, &err);
    if (!tok) fail_msg("tok_load(%s): %s", dir, err.msg);
    return tok;
}

static inline json_t *tt_json(const char *path)
{
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) fail_msg("%s: %s (line %d)", path, je.text, je.line);
    return j;
}

/* JSON array of integers -> malloc'ed int32 array. */
static inline int32_t *tt_ids(const json_t *arr, size_t *n)
{
    *n = json_array_size(arr);
    int32_t *v = malloc((*n + 1) * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < *n; i++)
        v[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return v;
}

static inline void tt_print_ids(char *out, size_t cap, const int32_t *v, size_t n)
{
    size_t k = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && k + 16 < cap; i++)
        k += (size_t)snprintf(out + k, cap - k, i ? " %d" : "%d", v[i]);
}

/* Encodes text and checks the ids equal want[0..n_want). `what` names the
 * case in the failure message. */
static inline void tt_check_encode(const cv_tokenizer *tok, const char *text, size_t len,
                                   bool add_special, const int32_t *want, size_t n_want,
                                   const char *what)
{
    cv_error err = {.msg = ""};
    int32_t *ids = NULL;
    size_t n = 0;
    if (tok_encode(tok, text, len, add_special, &ids, &n, &err))
        fail_msg("%s: encode failed: %s", what, err.msg);
    if (n != n_want || memcmp(ids, want, n * sizeof *ids)) {
        char got[4096], exp[4096];
        tt_print_ids(got, sizeof got, ids, n);
        tt_print_ids(exp, sizeof exp, want, n_want);
        free(ids);
        fail_msg("%s (add_special=%d): ids differ\n  got:  %s\n  want: %s", what, add_special, got,
                 exp);
    }
    free(ids);
}

static inline void tt_check_decode(const cv_tokenizer *tok, const int32_t *ids, size_t n, bool skip,
                                   const char *want, const char *what)
{
    cv_error err = {.msg = ""};
    char *text = NULL;
    size_t len = 0;
    if (tok_decode(tok, ids, n, skip, &text, &len, &err))
        fail_msg("%s: decode failed: %s", what, err.msg);
    if (len != strlen(want) || memcmp(text, want, len)) {
        char msg[8192];
        snprintf(msg, sizeof msg,
                 "%s (skip_special=%d): decoded text differs\n  got:  \"%s\"\n  "
                 "want: \"%s\"",
                 what, skip, text, want);
        free(text);
        fail_msg("%s", msg);
    }
    free(text);
}

#endif

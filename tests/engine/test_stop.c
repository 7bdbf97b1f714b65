/* Stop strings: matches spanning the previous text, vLLM's search window,
 * list-order precedence, include_stop_str_in_output, stream hold-back in
 * characters. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "engine/stop.h"

static void test_find(void **state)
{
    (void)state;
    char *stops[] = {"world", "lo"};
    const char *t = "Hello world!";
    size_t cut = 0;
    /* New text "ld!" completes "world" begun in earlier tokens. */
    assert_int_equal(stop_find(t, strlen(t), 3, stops, 1, false, &cut), 0);
    assert_int_equal(cut, 6);
    assert_int_equal(stop_find(t, strlen(t), 3, stops, 1, true, &cut), 0);
    assert_int_equal(cut, 11);
    /* "lo" lies entirely before the window of the last 3 bytes + 1. */
    assert_int_equal(stop_find(t, strlen(t), 3, stops + 1, 1, false, &cut), -1);
    /* List order wins over position, as in vLLM. */
    assert_int_equal(stop_find(t, strlen(t), 12, stops, 2, false, &cut), 0);
    char *rev[] = {"lo", "world"};
    assert_int_equal(stop_find(t, strlen(t), 12, rev, 2, false, &cut), 0);
    assert_int_equal(cut, 3);
    assert_int_equal(stop_find(t, strlen(t), 0, stops, 2, false, &cut), -1);
}

static void test_holdback(void **state)
{
    (void)state;
    char *stops[] = {"ab", "\xc3\xa9!x"}; /* "é!x": 3 characters, 4 bytes */
    assert_int_equal(stop_holdback_chars(stops, 2, false), 2);
    assert_int_equal(stop_holdback_chars(stops, 2, true), 0);
    assert_int_equal(stop_holdback_chars(NULL, 0, false), 0);
    const char *t = "ab\xc3\xa9\xc3\xa9";
    assert_int_equal(stop_emit_limit(t, strlen(t), 1), 4);
    assert_int_equal(stop_emit_limit(t, strlen(t), 2), 2);
    assert_int_equal(stop_emit_limit(t, strlen(t), 9), 0);
    assert_int_equal(stop_emit_limit(t, strlen(t), 0), 6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_find),
        cmocka_unit_test(test_holdback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* The chat-template engine on its own: the language cases of
 * tests/fixtures/chat_templates/engine_cases.json (made with jinja2 in
 * transformers' environment) render byte-exactly; compile and render errors
 * name the template line; raise_exception's message comes back as is;
 * runaway templates hit limits with clear errors; strftime_now uses the
 * local clock. Needs no shared data. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <setjmp.h>
#include <cmocka.h>

#include "template/template.h"

static char *render(const char *src, const char *ctx_json, cv_error *err)
{
    err->msg[0] = '\0';
    cv_template *t = cv_template_compile(src, strlen(src), err);
    if (!t) return NULL;
    json_t *ctx = json_loads(ctx_json ? ctx_json : "{}", 0, NULL);
    assert_non_null(ctx);
    char *out = cv_template_render(t, ctx, err);
    json_decref(ctx);
    cv_template_free(t);
    return out;
}

static void expect_text(const char *src, const char *ctx, const char *want)
{
    cv_error err;
    char *got = render(src, ctx, &err);
    if (!got) fail_msg("%s: %s", src, err.msg);
    if (strcmp(got, want)) fail_msg("%s:\n  want \"%s\"\n  got  \"%s\"", src, want, got);
    free(got);
}

static void expect_error(const char *src, const char *ctx, const char *want)
{
    cv_error err;
    char *got = render(src, ctx, &err);
    if (got) fail_msg("%s: rendered \"%s\", want error \"%s\"", src, got, want);
    if (strcmp(err.msg, want))
        fail_msg("%s:\n  want error \"%s\"\n  got error  \"%s\"", src, want, err.msg);
}

static void test_engine_cases(void **state)
{
    (void)state;
    const char *src = getenv("CVLLM_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/chat_templates/engine_cases.json",
             src && src[0] ? src : ".");
    json_error_t je;
    json_t *f = json_load_file(path, 0, &je);
    if (!f) fail_msg("%s: %s", path, je.text);
    char *ctx = json_dumps(json_object_get(f, "context"), 0);
    json_t *cases = json_object_get(f, "cases");
    size_t n = json_array_size(cases);
    assert_true(n >= 50);
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(cases, i);
        expect_text(json_string_value(json_object_get(c, "template")), ctx,
                    json_string_value(json_object_get(c, "text")));
    }
    free(ctx);
    json_decref(f);
}

static void test_syntax_errors_name_line(void **state)
{
    (void)state;
    expect_error("a\nb\n{{ x | foo }}", NULL, "chat template line 3: unknown filter 'foo'");
    expect_error("{% if x %}\n\n{{ x is bogus }}{% endif %}", NULL,
                 "chat template line 3: unknown test 'bogus'");
    expect_error(
        "line 1\n{% if x %}\nno end", NULL,
        "chat template line 3: unexpected end of template (a block opened near line 2 is not "
        "closed; expected 'elif')");
    expect_error("\n\n\n{% endfor %}", NULL, "chat template line 4: unknown tag 'endfor'");
    expect_error("{% frobnicate %}", NULL, "chat template line 1: unknown tag 'frobnicate'");
    expect_error("x\n{{ 'unterminated }}", NULL,
                 "chat template line 2: unterminated string literal");
    expect_error("{{ (1 }}", NULL, "chat template line 1: unexpected '}'");
    expect_error("{{ 1 ]}}", NULL, "chat template line 1: unexpected ']'");
    expect_error("{# open comment", NULL, "chat template line 1: missing end of comment tag");
    expect_error("{{ x", NULL, "chat template line 1: unexpected end of template, expected '}}'");
    expect_error("\n{% for x %}", NULL,
                 "chat template line 2: expected 'in', got 'end of statement block'");
    expect_error("{% break %}", NULL, "chat template line 1: 'break' outside of a loop");
    expect_error("{{ a < b < c }}", NULL,
                 "chat template line 1: chained comparisons are not supported");
    expect_error("{{ 1 $ 2 }}", NULL, "chat template line 1: unexpected char '$'");
    expect_error("{{ 99999999999999999999 }}", NULL,
                 "chat template line 1: integer literal too large");
    cv_error err;
    assert_null(cv_template_compile("\xff\xfe", 2, &err));
    assert_string_equal(err.msg, "chat template: not valid UTF-8");
}

static void test_render_errors_name_line(void **state)
{
    (void)state;
    expect_error("ok\n{{ x.y }}", NULL, "chat template line 2: 'x' is undefined");
    expect_error("{{ 1 + 'a' }}", NULL,
                 "chat template line 1: unsupported operand type(s) for +: 'int' and 'str'");
    expect_error("\n{{ 'a' < 1 }}", NULL,
                 "chat template line 2: '<' not supported between instances of 'str' and 'int'");
    expect_error("{{ 1 // 0 }}", NULL, "chat template line 1: integer division or modulo by zero");
    expect_error("{{ [].append(1) }}", NULL,
                 "chat template line 1: access to attribute 'append' of 'list' object is unsafe");
    expect_error("{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}", NULL,
                 "chat template line 1: macro 'm' takes not more than 1 argument(s)");
    expect_error("{% set x = 1 %}{% set x.a = 2 %}", NULL,
                 "chat template line 1: cannot assign attribute on non-namespace object");
    expect_error("{{ none|tojson }}{{ u|tojson }}", NULL,
                 "chat template line 1: Object of type Undefined is not JSON serializable");
    expect_error(
        "{{ '{:>4}'.format(1) }}", NULL,
        "chat template line 1: format string not supported: only {}, {0} and {name} fields");
    cv_error err;
    cv_template *t = cv_template_compile("x", 1, &err);
    json_t *arr = json_array();
    assert_null(cv_template_render(t, arr, &err));
    assert_string_equal(err.msg, "chat template: the render context must be a JSON object");
    json_decref(arr);
    cv_template_free(t);
}

static void test_raise_exception(void **state)
{
    (void)state;
    expect_error("{% if messages[0].role == 'system' %}{{ raise_exception('System role not "
                 "supported') }}{% endif %}",
                 "{\"messages\": [{\"role\": \"system\", \"content\": \"x\"}]}",
                 "System role not supported");
    expect_text("{% if false %}{{ raise_exception('no') }}{% endif %}ok", NULL, "ok");
}

static void test_limits(void **state)
{
    (void)state;
    /* deep expression nesting is refused at compile time */
    size_t depth = 5000;
    char *deep = malloc(depth * 2 + 16);
    strcpy(deep, "{{ ");
    for (size_t i = 0; i < depth; i++)
        strcat(deep, "(");
    strcat(deep, "1");
    for (size_t i = 0; i < depth; i++)
        strcat(deep, ")");
    strcat(deep, " }}");
    expect_error(deep, NULL, "chat template line 1: brackets nested too deeply");
    char *nots = malloc(depth * 4 + 16);
    strcpy(nots, "{{ ");
    for (size_t i = 0; i < depth; i++)
        strcat(nots, "not ");
    strcat(nots, "1 }}");
    expect_error(nots, NULL, "chat template line 1: nested too deeply (more than 200 levels)");
    free(deep);
    free(nots);
    /* nested blocks */
    char *blocks = malloc(depth * 20 + 16);
    blocks[0] = '\0';
    for (size_t i = 0; i < 300; i++)
        strcat(blocks, "{% if 1 %}");
    expect_error(blocks, NULL, "chat template line 1: nested too deeply (more than 200 levels)");
    free(blocks);
    /* unbounded recursion, huge loops and huge output stop with an error */
    expect_error("{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}", NULL,
                 "chat template line 1: macro calls nested too deeply (more than 100)");
    expect_error("{% for i in range(100000000) %}{% endfor %}", NULL,
                 "chat template line 1: range too big (more than 1000000 items)");
    expect_error("{% for i in range(1000) %}{% for j in range(1001) %}{% endfor %}{% endfor %}",
                 NULL, "chat template line 1: too many loop iterations (more than 1000000)");
    expect_error("{{ 'x' * 100000000 }}", NULL,
                 "chat template line 1: repetition result too large");
    expect_error("{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}{% set "
                 "ns.s = ns.s + ns.s %}{% endfor %}",
                 NULL, "chat template line 1: string too long");
}

/* Limits that keep the stack and the work bounded whatever the template. */
static void test_limits_stack_and_work(void **state)
{
    (void)state;
    char *src = malloc(8192);
    strcpy(src, "{{ 1");
    for (int i = 0; i < 500; i++)
        strcat(src, "+1");
    strcat(src, " }}");
    expect_error(src, NULL,
                 "chat template line 1: expression nested too deeply (more than 400 levels)");
    strcpy(src, "{{ 'x'");
    for (int i = 0; i < 500; i++)
        strcat(src, "|trim");
    strcat(src, " }}");
    expect_error(src, NULL,
                 "chat template line 1: expression nested too deeply (more than 400 levels)");
    strcpy(src, "{% macro r(n) %}");
    for (int i = 0; i < 60; i++)
        strcat(src, "{% if true %}");
    strcat(src, "{{ r(n + 1) }}");
    for (int i = 0; i < 60; i++)
        strcat(src, "{% endif %}");
    strcat(src, "{% endmacro %}{{ r(0) }}");
    expect_error(
        src, NULL,
        "chat template line 1: template nests too deeply while rendering (more than 2000 levels)");
    free(src);
    expect_error("{% set ns = namespace(x=[]) %}{% for i in range(2000) %}{% set ns.x = [ns.x] "
                 "%}{% endfor %}",
                 NULL, "chat template line 1: value nested too deeply (more than 1000 levels)");
    expect_error(
        "{% for i in range(1000) %}{% set x = range(100000) %}{% endfor %}", NULL,
        "chat template line 1: template takes too long (more than 20000000 steps of work)");
    expect_error("{% set ns = namespace(l=[1]) %}{% for i in range(30) %}{% set ns.l = ns.l + ns.l "
                 "%}{% endfor %}",
                 NULL, "chat template line 1: list too long (over 1000000 items)");
}

static void test_strftime_now(void **state)
{
    (void)state;
    char want[64];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(want, sizeof want, "%d %b %Y", &tm);
    cv_error err;
    char *got = render("{{ strftime_now('%d %b %Y') }}", NULL, &err);
    assert_non_null(got);
    if (strcmp(got, want)) { /* midnight passed between the two clocks: once more */
        now = time(NULL);
        localtime_r(&now, &tm);
        strftime(want, sizeof want, "%d %b %Y", &tm);
    }
    assert_string_equal(got, want);
    free(got);
    expect_text("{{ strftime_now is defined }}", NULL, "True");
}

static void test_context_variables(void **state)
{
    (void)state;
    /* tools passed as null is defined and none; absent is undefined */
    expect_text("{{ tools is defined }}{{ tools is none }}{{ x is defined }}", "{\"tools\": null}",
                "TrueTrueFalse");
    /* a template's set shadows the caller's variable without changing it */
    expect_text("{% set messages = messages[1:] %}{{ messages|length }}",
                "{\"messages\": [1, 2, 3]}", "2");
    /* the rendered string may contain NUL-free non-ASCII from the context */
    expect_text("{{ m }}|{{ m|length }}|{{ m[::-1] }}", "{\"m\": \"\\u00e9\\u4f60\\ud83d\\ude00\"}",
                "\xc3\xa9\xe4\xbd\xa0\xf0\x9f\x98\x80|3|\xf0\x9f\x98\x80\xe4\xbd\xa0\xc3\xa9");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_engine_cases),
        cmocka_unit_test(test_syntax_errors_name_line),
        cmocka_unit_test(test_render_errors_name_line),
        cmocka_unit_test(test_raise_exception),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_limits_stack_and_work),
        cmocka_unit_test(test_strftime_now),
        cmocka_unit_test(test_context_variables),
    };
    return cmocka_run_group_tests_name("template_engine", tests, NULL, NULL);
}

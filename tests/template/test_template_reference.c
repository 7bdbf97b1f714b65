/* Every conversation of tests/fixtures/chat_templates/conversations.json,
 * rendered with its real chat template from ../shared, must equal
 * reference.json (made by make_reference.py with transformers) byte for
 * byte; conversations the template refuses must fail with the same
 * raise_exception message. */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <setjmp.h>
#include <cmocka.h>

#include "template/template.h"

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v && v[0] ? v : dflt;
}

static json_t *load_json(const char *path)
{
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) fail_msg("%s: %s (line %d)", path, je.text, je.line);
    return j;
}

/* The template text: a .jinja file, or the chat_template key of a
 * tokenizer_config.json. */
static char *load_source(const char *shared, const char *rel)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", shared, rel);
    if (strstr(rel, ".json")) {
        json_t *cfg = load_json(path);
        char *s = strdup(json_string_value(json_object_get(cfg, "chat_template")));
        json_decref(cfg);
        return s;
    }
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    return s;
}

/* The variables transformers' apply_chat_template passes. */
static json_t *make_context(const json_t *tpl, const json_t *conv)
{
    json_t *ctx = json_object();
    json_object_set(ctx, "messages", json_object_get(conv, "messages"));
    json_object_set(ctx, "tools", json_object_get(conv, "tools"));
    json_object_set_new(ctx, "documents", json_null());
    json_object_set(ctx, "add_generation_prompt", json_object_get(conv, "add_generation_prompt"));
    const char *toks[] = {"bos_token", "eos_token"};
    for (int i = 0; i < 2; i++) {
        json_t *t = json_object_get(tpl, toks[i]);
        if (json_is_string(t)) json_object_set(ctx, toks[i], t);
    }
    json_object_update(ctx, json_object_get(conv, "kwargs"));
    return ctx;
}

static void show_diff(const char *what, const char *want, const char *got)
{
    size_t i = 0;
    while (want[i] && want[i] == got[i])
        i++;
    size_t from = i > 40 ? i - 40 : 0;
    print_error("%s: differs at byte %zu\n  want: ...%.80s\n  got:  ...%.80s\n", what, i,
                want + from, got + from);
}

static void test_reference(void **state)
{
    (void)state;
    const char *src = env_or("CVLLM_SOURCE_DIR", ".");
    const char *shared = env_or("CVLLM_SHARED", "../shared");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/chat_templates/conversations.json", src);
    json_t *convs = load_json(path);
    snprintf(path, sizeof path, "%s/tests/fixtures/chat_templates/reference.json", src);
    json_t *ref = load_json(path);
    size_t checked = 0, failed = 0;
    json_t *tpls = json_object_get(convs, "templates");
    for (size_t i = 0; i < json_array_size(tpls); i++) {
        json_t *tpl = json_array_get(tpls, i);
        const char *tname = json_string_value(json_object_get(tpl, "name"));
        char *source = load_source(shared, json_string_value(json_object_get(tpl, "source")));
        cv_error err = {.msg = ""};
        cv_template *t = cv_template_compile(source, strlen(source), &err);
        if (!t) fail_msg("%s: %s", tname, err.msg);
        json_t *list = json_object_get(tpl, "conversations");
        size_t n_conv = json_array_size(list);
        assert_true(n_conv >= 10);
        for (size_t k = 0; k < n_conv; k++) {
            json_t *conv = json_array_get(list, k);
            const char *cname = json_string_value(json_object_get(conv, "name"));
            json_t *want =
                json_object_get(json_object_get(json_object_get(ref, "templates"), tname), cname);
            if (!want) fail_msg("reference.json has no %s/%s", tname, cname);
            char what[256];
            snprintf(what, sizeof what, "%s/%s", tname, cname);
            json_t *ctx = make_context(tpl, conv);
            err.msg[0] = '\0';
            char *got = cv_template_render(t, ctx, &err);
            const char *want_text = json_string_value(json_object_get(want, "text"));
            const char *want_err = json_string_value(json_object_get(want, "error"));
            if (want_text && !got) {
                print_error("%s: render failed: %s\n", what, err.msg);
                failed++;
            } else if (want_text && strcmp(want_text, got)) {
                show_diff(what, want_text, got);
                failed++;
            } else if (want_err && got) {
                print_error("%s: rendered, but transformers fails with \"%s\"\n", what, want_err);
                failed++;
            } else if (want_err && strcmp(want_err, err.msg)) {
                print_error("%s: error \"%s\", want \"%s\"\n", what, err.msg, want_err);
                failed++;
            }
            free(got);
            json_decref(ctx);
            checked++;
        }
        cv_template_free(t);
        free(source);
    }
    print_message("checked %zu renders, %zu failed\n", checked, failed);
    assert_int_equal(failed, 0);
    assert_true(checked >= 70);
    json_decref(convs);
    json_decref(ref);
}

int main(void)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/chat_templates", env_or("CVLLM_SHARED", "../shared"));
    FILE *probe = fopen(path, "r");
    if (!probe) {
        printf("skipped: no %s (set CVLLM_SHARED to the shared data directory)\n", path);
        return 77;
    }
    fclose(probe);
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_reference)};
    return cmocka_run_group_tests_name("template_reference", tests, NULL, NULL);
}

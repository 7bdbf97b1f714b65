/* Components the four real tokenizers do not use (NFKC, Lowercase, Strip,
 * regex Replace, Digits, every Split behaviour and invert, the Llama-3
 * regex with ignore_merges, Metaspace pre-tokenizer/decoder in all three
 * prepend schemes, WhitespaceSplit, continuing_subword_prefix,
 * end_of_word_suffix, unk with and without fuse_unk, byte_fallback, the
 * Strip decoder, no decoder at all, TemplateProcessing with a suffix, and
 * added tokens with lstrip/rstrip/single_word/normalized), against HF
 * tokenizers: the "synthetic" part of reference.json. Each tokenizer.json
 * is rebuilt here from its description, as make_reference.py does. */
#include <sys/stat.h>
#include <utf8proc.h>

#include "tok_test_util.h"
#include "../common/shared_data.h"

static json_t *g_ref;
static char g_tmp[256];

static int setup(void **state)
{
    (void)state;
    g_ref = tt_json(tt_path("%s/tests/fixtures/tokenizer/reference.json", tt_source()));
    snprintf(g_tmp, sizeof g_tmp, "/tmp/cvllm_tok_synth_XXXXXX");
    return mkdtemp(g_tmp) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    json_decref(g_ref);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    return system(cmd) == 0 ? 0 : -1;
}

/* Writes the tokenizer described by spec into a fresh directory. */
static const char *build(const json_t *spec)
{
    const char *name = json_string_value(json_object_get(spec, "name"));
    json_t *j;
    if (json_object_get(spec, "tokenizer")) {
        j = json_deep_copy(json_object_get(spec, "tokenizer"));
    } else {
        const char *base = json_string_value(json_object_get(spec, "base"));
        j = tt_json(tt_path("%s/tokenizers/%s/tokenizer.json", tt_shared(), base));
        const char *key;
        json_t *v;
        json_object_foreach(json_object_get(spec, "set"), key, v) json_object_set(j, key, v);
        json_t *model = json_object_get(j, "model");
        json_object_foreach(json_object_get(spec, "model_set"), key, v)
            json_object_set(model, key, v);
        json_t *added = json_object_get(j, "added_tokens");
        size_t i;
        json_array_foreach(json_object_get(spec, "added"), i, v) json_array_append(added, v);
    }
    const char *dir = tt_path("%s/%s", g_tmp, name);
    mkdir(dir, 0755);
    assert_int_equal(json_dump_file(j, tt_path("%s/tokenizer.json", dir), JSON_COMPACT), 0);
    json_decref(j);
    return dir;
}

static void test_synthetic(void **s)
{
    (void)s;
    const json_t *list = json_object_get(g_ref, "synthetic");
    assert_true(json_array_size(list) >= 14);
    size_t i;
    const json_t *item;
    json_array_foreach(list, i, item)
    {
        const json_t *spec = json_object_get(item, "spec");
        const char *name = json_string_value(json_object_get(spec, "name"));
        cv_tokenizer *tok = tt_load(build(spec));
        size_t k;
        const json_t *c;
        json_array_foreach(json_object_get(item, "cases"), k, c)
        {
            const json_t *text = json_object_get(c, "text");
            const char *what = tt_path("%s[%zu]", name, k);
            size_t n, n2;
            int32_t *ids = tt_ids(json_object_get(c, "ids"), &n);
            int32_t *ids2 = tt_ids(json_object_get(c, "ids_no_special"), &n2);
            tt_check_encode(tok, json_string_value(text), json_string_length(text), true, ids, n,
                            what);
            tt_check_encode(tok, json_string_value(text), json_string_length(text), false, ids2, n2,
                            what);
            tt_check_decode(tok, ids, n, false, json_string_value(json_object_get(c, "decoded")),
                            what);
            tt_check_decode(tok, ids, n, true,
                            json_string_value(json_object_get(c, "decoded_skip")), what);
            free(ids);
            free(ids2);
        }
        tok_free(tok);
    }
}

/* NFC is applied piecewise, only around code points that can change;
 * the ids must equal those of the text normalized by utf8proc in one go.
 * The strings hold what can go wrong: Hangul jamo composing into and onto
 * syllables, marks out of canonical order, singletons (Angstrom, Ohm),
 * composition exclusions, class-0 vowel signs that compose (Tamil,
 * Kannada), a mark at the very start, astral characters. */
static void test_nfc_fast_path(void **s)
{
    (void)s;
    cv_tokenizer *tok = tt_load(tt_path("%s/tokenizers/qwen3", tt_shared()));
    const char *texts[] = {
        "\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8 and \xea\xb0\x80\xe1\x86\xa8",
        "a\xcc\x96\xcc\x81 vs a\xcc\x81\xcc\x96, e\xcc\x81\xcc\x81x",
        "\xe2\x84\xab \xe2\x84\xa6 \xe0\xa5\x98 \xef\xac\x81",
        "\xe0\xae\x92\xe0\xaf\x97 \xe0\xb2\xbf\xe0\xb3\x95 \xe0\xb7\x99\xe0\xb7\x8f",
        "\xcc\x81start and end\xcc\x81",
        "caf\xc3\xa9 cafe\xcc\x81 \xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd \xf0\x9d\x85\x9e",
        "\xe3\x81\x8b\xe3\x82\x99 \xe3\x83\x8f\xe3\x82\x9a\xe3\x82\x99",
    };
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        utf8proc_uint8_t *nfc = NULL;
        utf8proc_ssize_t m =
            utf8proc_map((const utf8proc_uint8_t *)texts[i], (utf8proc_ssize_t)strlen(texts[i]),
                         &nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        assert_true(m >= 0);
        cv_error err = {.msg = ""};
        int32_t *want;
        size_t n;
        assert_int_equal(tok_encode(tok, (const char *)nfc, (size_t)m, false, &want, &n, &err), 0);
        tt_check_encode(tok, texts[i], strlen(texts[i]), false, want, n, tt_path("nfc[%zu]", i));
        free(want);
        free(nfc);
    }
    tok_free(tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_synthetic),
        cmocka_unit_test(test_nfc_fast_path),
    };
    cv_test_need_shared("tokenizers"); /* the specs build on the real tokenizers */
    return cmocka_run_group_tests_name("tokenizer_synthetic", tests, setup, teardown);
}

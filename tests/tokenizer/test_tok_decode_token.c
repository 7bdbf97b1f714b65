/* tok_decode_token: one token as vLLM's logprobs show it (decoded_token),
 * over tokenizers written here: a Metaspace one (Llama-3.2/Mistral
 * layout, where vLLM reads the space marker), the legacy Llama layout
 * (the same SentencePiece scheme as normalizers), and one without a
 * marker. The leading space a lone token's decode strips comes back, so
 * the decoded tokens of a sequence concatenate to its text. */
#include <sys/stat.h>

#include "tok_test_util.h"

static char g_tmp[256];

static int setup(void **state)
{
    (void)state;
    snprintf(g_tmp, sizeof g_tmp, "/tmp/cvllm_tok_token_XXXXXX");
    return mkdtemp(g_tmp) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    return system(cmd) == 0 ? 0 : -1;
}

/* vocab: 0 "▁", 1 "t", 2 "h", 3 "e", 4 "r", 5 "▁t", 6 "▁th", 7 "▁the",
 * 8 "▁ther", 9 "▁there", 10 "he", 11 "▁▁" */
#define MODEL                                                                                      \
    "\"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, "                      \
    "\"continuing_subword_prefix\": null, \"end_of_word_suffix\": null, \"fuse_unk\": false, "     \
    "\"byte_fallback\": false, \"ignore_merges\": false, \"vocab\": {\"\u2581\": 0, \"t\": 1, "    \
    "\"h\": 2, \"e\": 3, \"r\": 4, \"\u2581t\": 5, \"\u2581th\": 6, \"\u2581the\": 7, "            \
    "\"\u2581ther\": 8, \"\u2581there\": 9, \"he\": 10, \"\u2581\u2581\": 11}, \"merges\": "       \
    "[\"\u2581 t\", \"\u2581t h\", \"\u2581th e\", \"\u2581the r\", \"\u2581ther e\", \"h e\", "   \
    "\"\u2581 \u2581\"]}"

static cv_tokenizer *write_and_load(const char *name, const char *components)
{
    const char *dir = tt_path("%s/%s", g_tmp, name);
    mkdir(dir, 0755);
    FILE *f = fopen(tt_path("%s/tokenizer.json", dir), "w");
    assert_non_null(f);
    fprintf(f,
            "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null, "
            "\"added_tokens\": [], \"post_processor\": null, %s, " MODEL "}",
            components);
    fclose(f);
    return tt_load(dir);
}

static void expect_token(const cv_tokenizer *tok, int32_t id, const char *plain, const char *want)
{
    char *text;
    size_t len;
    cv_error err = {.msg = ""};
    assert_int_equal(tok_decode(tok, &id, 1, false, &text, &len, &err), 0);
    assert_string_equal(text, plain); /* what decode([id]) gives */
    free(text);
    assert_int_equal(tok_decode_token(tok, id, &text, &len, &err), 0);
    assert_string_equal(text, want);
    assert_int_equal(len, strlen(want));
    free(text);
}

static void test_metaspace(void **state)
{
    (void)state;
    cv_tokenizer *tok = write_and_load(
        "metaspace", "\"normalizer\": null, \"pre_tokenizer\": {\"type\": \"Metaspace\", "
                     "\"replacement\": \"\u2581\", \"prepend_scheme\": \"first\", \"split\": "
                     "false}, \"decoder\": {\"type\": \"Metaspace\", \"replacement\": \"\u2581\", "
                     "\"prepend_scheme\": \"first\", \"split\": false}");
    expect_token(tok, 9, "there", " there");
    expect_token(tok, 11, "", "  "); /* HF drops every marker of a first token */
    expect_token(tok, 10, "he", "he");
    expect_token(tok, 0, "", " ");
    tok_free(tok);
}

static void test_legacy_llama(void **state)
{
    (void)state;
    cv_tokenizer *tok = write_and_load(
        "legacy",
        "\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", "
        "\"prepend\": \"\u2581\"}, {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, "
        "\"content\": \"\u2581\"}]}, \"pre_tokenizer\": null, \"decoder\": {\"type\": "
        "\"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": {\"String\": "
        "\"\u2581\"}, \"content\": \" \"}, {\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"}, "
        "{\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}]}");
    expect_token(tok, 9, "there", " there");
    expect_token(tok, 5, "t", " t");
    expect_token(tok, 3, "e", "e");
    /* " the" + "r" + "e" is the text of the three ids. */
    int32_t ids[] = {7, 4, 3};
    char *text, *parts[3];
    size_t len;
    cv_error err = {.msg = ""};
    assert_int_equal(tok_decode(tok, ids, 3, false, &text, &len, &err), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(tok_decode_token(tok, ids[i], &parts[i], &len, &err), 0);
    char joined[64];
    snprintf(joined, sizeof joined, "%s%s%s", parts[0], parts[1], parts[2]);
    assert_string_equal(joined, " there");
    assert_string_equal(text, "there"); /* a lone sequence's decode strips it */
    for (int i = 0; i < 3; i++)
        free(parts[i]);
    free(text);
    tok_free(tok);
}

static void test_no_marker(void **state)
{
    (void)state;
    /* No Metaspace and no space-replacing normalizer: decode as is. */
    cv_tokenizer *tok = write_and_load("plain", "\"normalizer\": null, \"pre_tokenizer\": null, "
                                                "\"decoder\": {\"type\": \"Fuse\"}");
    expect_token(tok, 9, "\u2581there", "\u2581there");
    char *text;
    size_t len;
    cv_error err = {.msg = ""};
    assert_int_equal(tok_decode_token(tok, 99, &text, &len, &err), -1);
    assert_string_equal(err.msg, "tokenizer: id 99 at position 0 is out of range (vocab size 12)");
    assert_null(text);
    tok_free(tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metaspace),
        cmocka_unit_test(test_legacy_llama),
        cmocka_unit_test(test_no_marker),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

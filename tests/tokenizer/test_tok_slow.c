/* Slow-tokenizer files (vocab.json + merges.txt and side files, issue 11).
 * GPT-2's vocab.json and merges.txt are written at test time from
 * ../shared/tokenizers/gpt2/tokenizer.json; loaded without tokenizer.json
 * they must give exactly the conformance baseline's ids and texts, and an
 * OPT-style config must prepend its BOS "</s>". Small synthetic files test
 * merges.txt's reading rules and the error messages without ../shared. */
#include <sys/stat.h>
#include <unistd.h>

#include "../common/shared_data.h"
#include "tok_test_util.h"

static char g_dir[256]; /* GPT-2 files for the tests that need ../shared */

static void write_text(const char *dir, const char *name, const char *text)
{
    FILE *f = fopen(tt_path("%s/%s", dir, name), "wb");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    fclose(f);
}

static void rm_dir(const char *dir)
{
    static const char *const names[] = {"vocab.json", "merges.txt", "tokenizer_config.json",
                                        "special_tokens_map.json", "added_tokens.json"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        unlink(tt_path("%s/%s", dir, names[i]));
    rmdir(dir);
}

static int setup_tmp(void **state)
{
    static char dir[256];
    snprintf(dir, sizeof dir, "%s/cvllm-tok-slow-XXXXXX", tt_env("TMPDIR", "/tmp"));
    if (!mkdtemp(dir)) return -1;
    *state = dir;
    return 0;
}

static int teardown_tmp(void **state)
{
    rm_dir(*state);
    return 0;
}

/* vocab.json and merges.txt of GPT-2 into g_dir, from tokenizer.json. */
static void write_gpt2_files(const char *dir)
{
    json_t *tj = tt_json(tt_path("%s/tokenizers/gpt2/tokenizer.json", tt_shared()));
    const json_t *model = json_object_get(tj, "model");
    assert_int_equal(json_dump_file(json_object_get(model, "vocab"), tt_path("%s/vocab.json", dir),
                                    JSON_COMPACT),
                     0);
    FILE *f = fopen(tt_path("%s/merges.txt", dir), "wb");
    assert_non_null(f);
    fputs("#version: 0.2\n", f);
    const json_t *merges = json_object_get(model, "merges");
    for (size_t i = 0; i < json_array_size(merges); i++)
        fprintf(f, "%s\n", json_string_value(json_array_get(merges, i)));
    fclose(f);
    json_decref(tj);
}

static void check_ids(const cv_tokenizer *tok, const char *text, const int32_t *want, size_t n)
{
    tt_check_encode(tok, text, strlen(text), true, want, n, text);
}

/* ---- GPT-2 (needs ../shared) -------------------------------------------------- */

static void test_gpt2_conformance(void **state)
{
    (void)state;
    json_t *cfg = tt_json(tt_path("%s/tokenizers/gpt2/tokenizer_config.json", tt_shared()));
    assert_int_equal(json_dump_file(cfg, tt_path("%s/tokenizer_config.json", g_dir), 0), 0);
    json_decref(cfg);
    cv_tokenizer *tok = tt_load(g_dir);
    cv_tokenizer *ref = tt_load(tt_path("%s/tokenizers/gpt2", tt_shared()));
    assert_int_equal(tok_vocab_size(tok), tok_vocab_size(ref));
    assert_int_equal(tok_bos_id(tok), 50256);
    assert_int_equal(tok_eos_id(tok), 50256);
    assert_true(tok_is_special(tok, 50256));

    json_t *inputs = tt_json(tt_path("%s/tokenizers/conformance/inputs.json", tt_shared()));
    json_t *base =
        tt_json(tt_path("%s/tokenizers/conformance/openai-community__gpt2.json", tt_shared()));
    const json_t *list = json_object_get(inputs, "inputs");
    for (size_t i = 0; i < json_array_size(list); i++) {
        const json_t *in = json_array_get(list, i);
        const char *id = json_string_value(json_object_get(in, "id"));
        const json_t *text = json_object_get(in, "text");
        const json_t *e = json_object_get(json_object_get(base, "entries"), id);
        size_t n;
        int32_t *want = tt_ids(json_object_get(e, "input_ids"), &n);
        tt_check_encode(tok, json_string_value(text), json_string_length(text), true, want, n, id);
        tt_check_decode(tok, want, n, false,
                        json_string_value(json_object_get(e, "decoded_with_special")), id);
        tt_check_decode(tok, want, n, true,
                        json_string_value(json_object_get(e, "decoded_skip_special")), id);
        free(want);
    }
    assert_true(json_array_size(list) >= 30);
    json_decref(inputs);
    json_decref(base);
    tok_free(ref);
    tok_free(tok);
}

/* OPT's tokenizer_config.json and special_tokens_map.json (legacy layout,
 * as facebook/opt-125m ships them) over GPT-2's vocab: "</s>" is not in
 * this vocab, so it is added after it (id 50257; OPT's own vocab has it at
 * 2) and, with add_bos_token, prepended. "<pad>" comes next (50258). */
static void test_opt_config(void **state)
{
    (void)state;
    write_text(g_dir, "tokenizer_config.json",
               "{\"errors\": \"replace\", \"add_bos_token\": true, \"add_prefix_space\": false,"
               " \"bos_token\": {\"__type\": \"AddedToken\", \"content\": \"</s>\", \"lstrip\":"
               " false, \"normalized\": true, \"rstrip\": false, \"single_word\": false},"
               " \"eos_token\": \"</s>\", \"unk_token\": \"</s>\", \"pad_token\": \"<pad>\","
               " \"model_max_length\": 1000000000000000019884624838656}");
    write_text(g_dir, "special_tokens_map.json",
               "{\"bos_token\": {\"content\": \"</s>\", \"lstrip\": false, \"normalized\": true,"
               " \"rstrip\": false, \"single_word\": false}, \"eos_token\": {\"content\":"
               " \"</s>\", \"lstrip\": false, \"normalized\": true, \"rstrip\": false,"
               " \"single_word\": false}, \"pad_token\": \"<pad>\", \"unk_token\": \"</s>\"}");
    cv_tokenizer *tok = tt_load(g_dir);
    assert_int_equal(tok_vocab_size(tok), 50259);
    assert_int_equal(tok_bos_id(tok), 50257);
    assert_int_equal(tok_eos_id(tok), 50257);
    assert_string_equal(tok_id_to_token(tok, 50258), "<pad>");
    assert_true(tok_is_special(tok, 50257) && tok_is_special(tok, 50258));
    check_ids(tok, "Hello world", (const int32_t[]){50257, 15496, 995}, 3);
    check_ids(tok, "a</s>b", (const int32_t[]){50257, 64, 50257, 65}, 4);
    tt_check_decode(tok, (const int32_t[]){50257, 15496, 995}, 3, false, "</s>Hello world", "opt");
    tt_check_decode(tok, (const int32_t[]){50257, 15496, 995}, 3, true, "Hello world", "opt");
    tok_free(tok);

    /* added_tokens.json (legacy): listed tokens come first, in id order */
    write_text(g_dir, "added_tokens.json", "{\"<extra>\": 50257}");
    tok = tt_load(g_dir);
    assert_string_equal(tok_id_to_token(tok, 50257), "<extra>");
    assert_false(tok_is_special(tok, 50257));
    assert_int_equal(tok_bos_id(tok), 50258);
    check_ids(tok, "x<extra>y", (const int32_t[]){50258, 87, 50257, 88}, 4);
    tt_check_decode(tok, (const int32_t[]){50258, 87, 50257, 88}, 4, true, "x<extra>y", "extra");
    tok_free(tok);
    unlink(tt_path("%s/added_tokens.json", g_dir));

    /* transformers >= 4.34 layout: added_tokens_decoder in the config, and
     * special_tokens_map.json is not read */
    write_text(g_dir, "tokenizer_config.json",
               "{\"add_bos_token\": true, \"bos_token\": \"</s>\", \"eos_token\": \"</s>\","
               " \"added_tokens_decoder\": {\"50258\": {\"content\": \"</s>\", \"lstrip\": false,"
               " \"normalized\": true, \"rstrip\": false, \"single_word\": false, \"special\":"
               " true}, \"50257\": {\"content\": \"<pad>\", \"lstrip\": false, \"normalized\":"
               " true, \"rstrip\": false, \"single_word\": false, \"special\": true}}}");
    write_text(g_dir, "special_tokens_map.json", "{\"bos_token\": \"<|endoftext|>\"}");
    tok = tt_load(g_dir);
    assert_int_equal(tok_bos_id(tok), 50258);
    assert_string_equal(tok_id_to_token(tok, 50257), "<pad>");
    check_ids(tok, "Hi", (const int32_t[]){50258, 17250}, 2);
    tok_free(tok);
    unlink(tt_path("%s/special_tokens_map.json", g_dir));
}

static void copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    fclose(out);
}

/* tests/fixtures/tokenizer_slow/opt_reference.json holds what
 * transformers itself gives for the OPT-style files over GPT-2's vocab
 * (make_reference.py, run where transformers is installed). */
static void test_opt_reference(void **state)
{
    (void)state;
    const char *ref_path =
        tt_path("%s/tests/fixtures/tokenizer_slow/opt_reference.json", tt_source());
    copy_file(tt_path("%s/tests/fixtures/tokenizer_slow/opt/tokenizer_config.json", tt_source()),
              tt_path("%s/tokenizer_config.json", g_dir));
    copy_file(tt_path("%s/tests/fixtures/tokenizer_slow/opt/special_tokens_map.json", tt_source()),
              tt_path("%s/special_tokens_map.json", g_dir));
    cv_tokenizer *tok = tt_load(g_dir);
    json_t *ref = tt_json(ref_path);
    assert_int_equal(tok_vocab_size(tok), json_integer_value(json_object_get(ref, "vocab_size")));
    assert_int_equal(tok_bos_id(tok), json_integer_value(json_object_get(ref, "bos_token_id")));
    assert_int_equal(tok_eos_id(tok), json_integer_value(json_object_get(ref, "eos_token_id")));
    json_t *inputs = tt_json(tt_path("%s/tokenizers/conformance/inputs.json", tt_shared()));
    const json_t *list = json_object_get(inputs, "inputs");
    const char *id;
    json_t *e;
    json_object_foreach(json_object_get(ref, "entries"), id, e)
    {
        const json_t *in = NULL;
        for (size_t i = 0; i < json_array_size(list); i++)
            if (!strcmp(json_string_value(json_object_get(json_array_get(list, i), "id")), id))
                in = json_object_get(json_array_get(list, i), "text");
        assert_non_null(in);
        size_t n;
        int32_t *want = tt_ids(json_object_get(e, "input_ids"), &n);
        tt_check_encode(tok, json_string_value(in), json_string_length(in), true, want, n, id);
        tt_check_decode(tok, want, n, false,
                        json_string_value(json_object_get(e, "decoded_with_special")), id);
        tt_check_decode(tok, want, n, true,
                        json_string_value(json_object_get(e, "decoded_skip_special")), id);
        free(want);
    }
    assert_true(json_object_size(json_object_get(ref, "entries")) >= 30);
    json_decref(inputs);
    json_decref(ref);
    tok_free(tok);
}

/* ---- synthetic files (no ../shared) ------------------------------------------- */

static const char tiny_vocab[] = "{\"a\": 0, \"b\": 1, \"c\": 2, \"ab\": 3, \"bc\": 4, "
                                 "\"\\u0120\": 5, \"\\\"\": 6, \"\\\"\\\"\": 7}";

/* GPT2Tokenizer reads text.split("\n")[1:-1]: the header line goes, and so
 * does a last line without a newline ("b c" here). */
static void test_merges_rules(void **state)
{
    const char *dir = *state;
    write_text(dir, "vocab.json", tiny_vocab);
    write_text(dir, "merges.txt", "#version: 0.2\na b\n\n\" \"\r\nb c");
    cv_tokenizer *tok = tt_load(dir);
    /* no config: GPT2TokenizerFast's default bos/eos/unk "<|endoftext|>",
     * not in this vocab, is added after it */
    assert_int_equal(tok_vocab_size(tok), 9);
    assert_int_equal(tok_bos_id(tok), 8);
    assert_int_equal(tok_eos_id(tok), 8);
    assert_true(tok_is_special(tok, 8));
    check_ids(tok, "a<|endoftext|>", (const int32_t[]){0, 8}, 2);
    check_ids(tok, "ab", (const int32_t[]){3}, 1);
    check_ids(tok, "bc", (const int32_t[]){1, 2}, 2);
    check_ids(tok, "\"\"", (const int32_t[]){7}, 1);
    tt_check_decode(tok, (const int32_t[]){3, 5, 2}, 3, false, "ab c", "decode");
    tok_free(tok);
    /* an explicit null: no such token, no default */
    write_text(dir, "tokenizer_config.json",
               "{\"bos_token\": null, \"eos_token\": null, \"unk_token\": null}");
    tok = tt_load(dir);
    assert_int_equal(tok_vocab_size(tok), 8);
    assert_int_equal(tok_bos_id(tok), -1);
    tok_free(tok);
}

/* tests/fixtures/models/opt_seed (the lead's make_fixtures_opt_gpt2.py):
 * OPT's slow files over GPT-2's vocab with "</s>" in vocab.json, and
 * transformers' ids and texts for the conformance strings. */
static void test_opt_seed(void **state)
{
    (void)state;
    const char *dir = tt_path("%s/tests/fixtures/models/opt_seed", tt_source());
    const char *ref_path = tt_path("%s/reference.json", dir);
    struct stat st;
    if (stat(ref_path, &st) != 0) {
        printf("test_opt_seed: no %s yet (make_fixtures_opt_gpt2.py writes it)\n", ref_path);
        skip();
    }
    cv_tokenizer *tok = tt_load(dir);
    json_t *ref = tt_json(ref_path);
    const json_t *cases = json_object_get(ref, "tokenizer");
    for (size_t i = 0; i < json_array_size(cases); i++) {
        const json_t *c = json_array_get(cases, i);
        const char *id = json_string_value(json_object_get(c, "id"));
        const json_t *text = json_object_get(c, "text");
        size_t n;
        int32_t *want = tt_ids(json_object_get(c, "input_ids"), &n);
        tt_check_encode(tok, json_string_value(text), json_string_length(text), true, want, n, id);
        tt_check_decode(tok, want, n, false, json_string_value(json_object_get(c, "decoded")), id);
        tt_check_decode(tok, want, n, true,
                        json_string_value(json_object_get(c, "decoded_skip_special")), id);
        free(want);
    }
    assert_true(json_array_size(cases) >= 30);
    const json_t *greedy = json_object_get(ref, "greedy");
    for (size_t i = 0; i < json_array_size(greedy); i++) {
        const json_t *g = json_array_get(greedy, i);
        const json_t *prompt = json_object_get(g, "prompt");
        size_t n;
        int32_t *want = tt_ids(json_object_get(g, "input_ids"), &n);
        tt_check_encode(tok, json_string_value(prompt), json_string_length(prompt), true, want, n,
                        json_string_value(prompt));
        free(want);
    }
    json_decref(ref);
    tok_free(tok);
}

static void assert_load_error(const char *dir, const char *want)
{
    cv_error err = {.msg = ""};
    assert_null(tok_load(dir, &err));
    assert_string_equal(err.msg, want);
}

static void test_errors(void **state)
{
    const char *dir = *state;
    write_text(dir, "vocab.json", tiny_vocab);
    assert_load_error(dir, tt_path("tokenizer: cannot open %s/merges.txt: No such file or "
                                   "directory",
                                   dir));
    write_text(dir, "merges.txt", "#version: 0.2\na b\na b c\n");
    assert_load_error(dir, tt_path("tokenizer: %s/merges.txt: line 3 is not two tokens "
                                   "separated by a space",
                                   dir));
    write_text(dir, "merges.txt", "#version: 0.2\na x\n");
    assert_load_error(dir,
                      tt_path("tokenizer %s (vocab.json + merges.txt): tokenizer.json: "
                              "model.merges[0] (\"a\" \"x\") uses a token missing from the vocab",
                              dir));
    write_text(dir, "merges.txt", "#version: 0.2\n");
    write_text(dir, "tokenizer_config.json", "{\"bos_token\": ");
    assert_load_error(dir, tt_path("tokenizer: %s/tokenizer_config.json: malformed JSON at "
                                   "line 1 column 14: unexpected token near end of file",
                                   dir));
    write_text(dir, "tokenizer_config.json", "[]");
    assert_load_error(dir, tt_path("tokenizer: %s/tokenizer_config.json: not a JSON object", dir));
    unlink(tt_path("%s/tokenizer_config.json", dir));
    write_text(dir, "special_tokens_map.json", "[\"</s>\"]");
    assert_load_error(dir,
                      tt_path("tokenizer: %s/special_tokens_map.json: not a JSON object", dir));
    unlink(tt_path("%s/special_tokens_map.json", dir));
    write_text(dir, "added_tokens.json", "{\"<x>\": 8");
    assert_load_error(dir, tt_path("tokenizer: %s/added_tokens.json: malformed JSON at line 1 "
                                   "column 9: '}' expected near end of file",
                                   dir));
    unlink(tt_path("%s/added_tokens.json", dir));
    write_text(dir, "vocab.json", "{\"a\": 0,");
    assert_load_error(dir, tt_path("tokenizer: %s/vocab.json: malformed JSON at line 1 column "
                                   "8: string or '}' expected near end of file",
                                   dir));
}

int main(void)
{
    const struct CMUnitTest synthetic[] = {
        cmocka_unit_test_setup_teardown(test_merges_rules, setup_tmp, teardown_tmp),
        cmocka_unit_test_setup_teardown(test_errors, setup_tmp, teardown_tmp),
        cmocka_unit_test(test_opt_seed),
    };
    int failed = cmocka_run_group_tests_name("synthetic", synthetic, NULL, NULL);
    if (!cv_test_have_shared("tokenizers/gpt2/tokenizer.json") ||
        !cv_test_have_shared("tokenizers/conformance/inputs.json"))
        return cv_test_exit(failed);
    void *dir;
    if (setup_tmp(&dir)) return 1;
    snprintf(g_dir, sizeof g_dir, "%s", (const char *)dir);
    write_gpt2_files(g_dir);
    const struct CMUnitTest gpt2_tests[] = {
        cmocka_unit_test(test_gpt2_conformance),
        cmocka_unit_test(test_opt_config),
        cmocka_unit_test(test_opt_reference),
    };
    failed += cmocka_run_group_tests_name("gpt2", gpt2_tests, NULL, NULL);
    rm_dir(g_dir);
    return cv_test_exit(failed);
}

/* Bad input gives exact error messages, never a crash: invalid UTF-8,
 * missing or malformed tokenizer.json, unknown component types,
 * out-of-range ids. Also the cvllm-tokenize CLI end to end (stdin as is,
 * --decode, --skip-special-tokens, exit status 1 with a message). */
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tok_test_util.h"
#include "../common/shared_data.h"

static char g_tmp[256];

static int setup(void **state)
{
    (void)state;
    snprintf(g_tmp, sizeof g_tmp, "/tmp/cvllm_tok_test_XXXXXX");
    return mkdtemp(g_tmp) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    return system(cmd) == 0 ? 0 : -1;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(text, 1, strlen(text), f);
    fclose(f);
}

/* A directory holding tokenizer.json = json; returns its path. */
static const char *tok_dir_with(const char *name, const char *json)
{
    const char *dir = tt_path("%s/%s", g_tmp, name);
    mkdir(dir, 0755);
    write_file(tt_path("%s/tokenizer.json", dir), json);
    return dir;
}

static void expect_load_error(const char *dir, const char *want)
{
    cv_error err = {.msg = ""};
    cv_tokenizer *tok = tok_load(dir, &err);
    if (tok) {
        tok_free(tok);
        fail_msg("tok_load(%s) succeeded, expected: %s", dir, want);
    }
    assert_string_equal(err.msg, want);
}

#define MODEL                                                                                      \
    "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, "                  \
    "\"merges\": [\"a b\"]}"

static void test_small_tokenizer_works(void **s)
{
    (void)s;
    const char *dir = tok_dir_with("ok", "{" MODEL "}");
    cv_tokenizer *tok = tt_load(dir);
    const int32_t want[] = {2, 0, 2};
    tt_check_encode(tok, "abaab", 5, true, want, 3, "small");
    tok_free(tok);
}

/* A vocab with "a\u2581b" forbids cutting SentencePiece text before the
 * U+2581: "a b" must merge to the one token (ids worked out by hand from
 * the merges: a+\u2581 -> 3, then 3+b -> 4). Without that token the cut
 * is allowed and gives the same ids as merging the whole text. */
static void test_metaspace_cut_guard(void **s)
{
    (void)s;
    const char *norm = "\"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, "
                       "\"content\": \"\u2581\"}";
    char json[1024];
    snprintf(json, sizeof json,
             "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"\u2581\": 1, \"b\": 2, "
             "\"a\u2581\": 3, \"a\u2581b\": 4}, \"merges\": [\"a \u2581\", \"a\u2581 b\"]}, %s}",
             norm);
    cv_tokenizer *tok = tt_load(tok_dir_with("cut_forbidden", json));
    const int32_t one[] = {4};
    tt_check_encode(tok, "a b", 3, false, one, 1, "cut_forbidden");
    tok_free(tok);
    snprintf(json, sizeof json,
             "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"\u2581\": 1, \"b\": 2, "
             "\"\u2581b\": 3, \"ab\": 4}, \"merges\": [\"\u2581 b\", \"a b\"]}, %s}",
             norm);
    tok = tt_load(tok_dir_with("cut_allowed", json));
    const int32_t three[] = {0, 3, 4, 3};
    tt_check_encode(tok, "a bab b", 7, false, three, 4, "cut_allowed");
    tok_free(tok);
}

static void test_invalid_utf8(void **s)
{
    (void)s;
    if (!cv_test_have_shared("tokenizers/gpt2")) skip();
    cv_tokenizer *tok = tt_load(tt_path("%s/tokenizers/gpt2", tt_shared()));
    const char *bad[] = {"abc\xff", "caf\xc3", "x\xe2\x82y", "\xed\xa0\x80", "ok\xc0\xaf"};
    const char *want[] = {
        "tokenizer: invalid UTF-8 in input at byte offset 3 (byte 0xFF)",
        "tokenizer: invalid UTF-8 in input at byte offset 3 (byte 0xC3)",
        "tokenizer: invalid UTF-8 in input at byte offset 1 (byte 0xE2)",
        "tokenizer: invalid UTF-8 in input at byte offset 0 (byte 0xED)",
        "tokenizer: invalid UTF-8 in input at byte offset 2 (byte 0xC0)",
    };
    for (size_t i = 0; i < 5; i++) {
        cv_error err = {.msg = ""};
        int32_t *ids = (int32_t *)1;
        size_t n = 7;
        assert_int_equal(tok_encode(tok, bad[i], strlen(bad[i]), true, &ids, &n, &err), -1);
        assert_null(ids);
        assert_int_equal(n, 0);
        assert_string_equal(err.msg, want[i]);
    }
    tok_free(tok);
}

static void test_missing_file(void **s)
{
    (void)s;
    expect_load_error(tt_path("%s/nothing", g_tmp),
                      tt_path("tokenizer: cannot open %s/nothing/tokenizer.json: No such file or "
                              "directory",
                              g_tmp));
}

static void test_malformed_json(void **s)
{
    (void)s;
    const char *dir = tok_dir_with("malformed", "{\"model\": {\"type\": \"BPE\",,}");
    expect_load_error(dir, tt_path("tokenizer: %s/tokenizer.json: malformed JSON at line 1 column "
                                   "26: string or '}' expected near ','",
                                   dir));
    dir = tok_dir_with("nomodel", "{\"version\": \"1.0\"}");
    expect_load_error(dir, tt_path("tokenizer %s: tokenizer.json: no \"model\" object", dir));
}

static void test_unknown_types(void **s)
{
    (void)s;
    const char *dir =
        tok_dir_with("unigram", "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}");
    expect_load_error(dir, tt_path("tokenizer %s: tokenizer.json: unknown model type \"Unigram\" "
                                   "(only BPE is supported)",
                                   dir));
    dir = tok_dir_with("norm", "{" MODEL ", \"normalizer\": {\"type\": \"Sequence\", "
                               "\"normalizers\": [{\"type\": \"NFC\"}, {\"type\": \"Fancy\"}]}}");
    expect_load_error(dir, tt_path("tokenizer %s: tokenizer.json: unknown normalizer type "
                                   "\"Fancy\"",
                                   dir));
    dir = tok_dir_with("pre", "{" MODEL ", \"pre_tokenizer\": {\"type\": \"Punctuation\"}}");
    expect_load_error(dir, tt_path("tokenizer %s: tokenizer.json: unknown pre_tokenizer type "
                                   "\"Punctuation\"",
                                   dir));
    dir = tok_dir_with("dec", "{" MODEL ", \"decoder\": {\"type\": \"WordPiece\"}}");
    expect_load_error(dir, tt_path("tokenizer %s: tokenizer.json: unknown decoder type "
                                   "\"WordPiece\"",
                                   dir));
    dir = tok_dir_with("merge", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
                                "\"merges\": [\"a z\"]}}");
    expect_load_error(dir, tt_path("tokenizer %s: tokenizer.json: model.merges[0] (\"a\" \"z\") "
                                   "uses a token missing from the vocab",
                                   dir));
    dir = tok_dir_with("regex", "{" MODEL ", \"pre_tokenizer\": {\"type\": \"Split\", "
                                "\"pattern\": {\"Regex\": \"(a\"}, \"behavior\": \"Isolated\"}}");
    expect_load_error(dir, tt_path("tokenizer %s: tokenizer: bad regex \"(a\" at offset 2: "
                                   "missing closing parenthesis",
                                   dir));
}

static void test_decode_out_of_range(void **s)
{
    (void)s;
    if (!cv_test_have_shared("tokenizers/gpt2")) skip();
    cv_tokenizer *tok = tt_load(tt_path("%s/tokenizers/gpt2", tt_shared()));
    const int32_t ids[] = {15496, 50257, 1};
    cv_error err = {.msg = ""};
    char *text = (char *)1;
    size_t len = 5;
    assert_int_equal(tok_decode(tok, ids, 3, false, &text, &len, &err), -1);
    assert_null(text);
    assert_string_equal(err.msg,
                        "tokenizer: id 50257 at position 1 is out of range (vocab size 50257)");
    const int32_t neg[] = {-3};
    assert_int_equal(tok_decode(tok, neg, 1, true, &text, &len, &err), -1);
    assert_string_equal(err.msg,
                        "tokenizer: id -3 at position 0 is out of range (vocab size 50257)");
    /* streaming treats unknown ids as empty tokens, as vLLM does */
    const int32_t seq[] = {15496, 99999999, 995};
    cv_tok_stream st;
    tok_stream_init(&st, tok, seq, 1, false);
    char *d;
    assert_int_equal(tok_stream_next(&st, tok, seq, 3, &d, &len, &err), 0);
    assert_string_equal(d, " world");
    free(d);
    tok_free(tok);
}

/* Runs the CLI with stdin from a file; returns the exit status and fills
 * out/errout with stdout/stderr. */
static int run_cli(const char *args, const char *in, size_t in_len, char *out, size_t cap,
                   char *errout)
{
    const char *bin = tt_env("CVLLM_BIN_DIR", "build/bin");
    const char *inp = tt_path("%s/cli_in", g_tmp), *outp = tt_path("%s/cli_out", g_tmp);
    const char *errp = tt_path("%s/cli_err", g_tmp);
    FILE *f = fopen(inp, "wb");
    assert_non_null(f);
    fwrite(in, 1, in_len, f);
    fclose(f);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s/cvllm-tokenize' %s < '%s' > '%s' 2> '%s'", bin, args, inp, outp,
             errp);
    int st = system(cmd);
    const char *paths[2] = {outp, errp};
    char *bufs[2] = {out, errout};
    for (int k = 0; k < 2; k++) {
        f = fopen(paths[k], "rb");
        assert_non_null(f);
        size_t n = fread(bufs[k], 1, cap - 1, f);
        bufs[k][n] = '\0';
        fclose(f);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_cli(void **s)
{
    (void)s;
    if (!cv_test_have_shared("tokenizers/gpt2") || !cv_test_have_shared("tokenizers/llama2"))
        skip();
    char out[4096], err[4096];
    char gpt2[1024], llama[1024]; /* tt_path buffers rotate: keep copies */
    snprintf(gpt2, sizeof gpt2, "--tokenizer '%s/tokenizers/gpt2'", tt_shared());
    snprintf(llama, sizeof llama, "--tokenizer '%s/tokenizers/llama2'", tt_shared());
    /* the trailing newline is part of the text: GPT-2 id 198 is "\n" */
    assert_int_equal(run_cli(gpt2, "Hello world\n", 12, out, sizeof out, err), 0);
    assert_string_equal(out, "15496 995 198\n");
    assert_int_equal(run_cli(llama, "Hello", 5, out, sizeof out, err), 0);
    assert_string_equal(out, "15043\n");
    assert_int_equal(
        run_cli(tt_path("%s --add-special-tokens", llama), "Hello", 5, out, sizeof out, err), 0);
    assert_string_equal(out, "1 15043\n");
    assert_int_equal(
        run_cli(tt_path("%s --decode", llama), "1 15043 3186\n", 13, out, sizeof out, err), 0);
    assert_string_equal(out, "<s> Hello world");
    assert_int_equal(run_cli(tt_path("%s --decode --skip-special-tokens", llama), "1 15043 3186",
                             12, out, sizeof out, err),
                     0);
    assert_string_equal(out, "Hello world");
    assert_int_equal(run_cli(gpt2, "bad \xff", 5, out, sizeof out, err), 1);
    assert_string_equal(err, "cvllm-tokenize: tokenizer: invalid UTF-8 in input at byte offset 4 "
                             "(byte 0xFF)\n");
    assert_int_equal(run_cli(tt_path("%s --decode", gpt2), "1 x", 3, out, sizeof out, err), 1);
    assert_string_equal(err, "cvllm-tokenize: \"x\" is not a token id\n");
    assert_int_equal(run_cli(tt_path("%s --decode", gpt2), "60000", 5, out, sizeof out, err), 1);
    assert_string_equal(err, "cvllm-tokenize: tokenizer: id 60000 at position 0 is out of range "
                             "(vocab size 50257)\n");
    assert_int_equal(run_cli(tt_path("--tokenizer '%s/none'", g_tmp), "", 0, out, sizeof out, err),
                     1);
    assert_string_equal(err,
                        tt_path("cvllm-tokenize: tokenizer: cannot open %s/none/tokenizer.json:"
                                " No such file or directory\n",
                                g_tmp));
}

/* Far-out ids are refused at once, before any table is sized by them. */
static void test_sparse_ids_refused(void **s)
{
    (void)s;
    const char *dir = tok_dir_with("far_vocab", "{\"model\": {\"type\": \"BPE\", \"vocab\": "
                                                "{\"a\": 0, \"b\": 100000000}, \"merges\": []}}");
    expect_load_error(dir, tt_path("tokenizer %s: tokenizer.json: model.vocab id 100000000 is far "
                                   "beyond its 2 entries (ids must number the vocab densely)",
                                   dir));
    dir = tok_dir_with("far_added", "{" MODEL ", \"added_tokens\": [{\"id\": 100000000, "
                                    "\"content\": \"<x>\"}]}");
    expect_load_error(dir, tt_path("tokenizer %s: tokenizer.json: added_tokens[0] id 100000000 is "
                                   "far beyond the vocab of 3 and 1 added tokens (ids must be "
                                   "dense)",
                                   dir));
    /* Gaps within the bound load. */
    cv_tokenizer *tok = tt_load(tok_dir_with(
        "gaps", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1000}, "
                "\"merges\": []}, \"added_tokens\": [{\"id\": 2000, \"content\": \"<x>\"}]}"));
    assert_int_equal(tok_vocab_size(tok), 2001);
    tok_free(tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_tokenizer_works),
        cmocka_unit_test(test_metaspace_cut_guard),
        cmocka_unit_test(test_sparse_ids_refused),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_malformed_json),
        cmocka_unit_test(test_unknown_types),
        cmocka_unit_test(test_decode_out_of_range),
        cmocka_unit_test(test_cli),
    };
    return cv_test_exit(cmocka_run_group_tests_name("tokenizer_errors", tests, setup, teardown));
}

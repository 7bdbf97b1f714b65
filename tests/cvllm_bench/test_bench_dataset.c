/* cvllm-bench datasets with real tokenizers: random prompts encode to
 * exactly their drawn length, the same seed gives the same prompts,
 * ShareGPT filtering and the prompts file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/shared_data.h"
#include "bench.h"

#define KJV "samples/models/cvllm-kjv-4m" /* shipped: every clone has it */

/* Tokenizer `name`: the shipped model's, or one of ../shared (tests that
 * use those call cv_test_have_shared first). */
static cv_tokenizer *load(const char *name)
{
    const char *src = getenv("CVLLM_SOURCE_DIR");
    char dir[4200];
    if (!strcmp(name, KJV))
        snprintf(dir, sizeof dir, "%s/%s", src ? src : ".", name);
    else
        snprintf(dir, sizeof dir, "%s/%s", cv_test_shared_root(), name);
    cv_error err = {.msg = ""};
    cv_tokenizer *tok = tok_load(dir, &err);
    if (!tok) fail_msg("%s", err.msg);
    return tok;
}

static int encoded_len(const cv_tokenizer *tok, const char *text)
{
    int32_t *ids;
    size_t n;
    cv_error err = {.msg = ""};
    if (tok_encode(tok, text, strlen(text), true, &ids, &n, &err)) fail_msg("%s", err.msg);
    free(ids);
    return (int)n;
}

static void check_random(const char *tokenizer, int input_len, double ratio)
{
    cv_tokenizer *tok = load(tokenizer);
    bench_dataset a = {0}, b = {0};
    cv_error err = {.msg = ""};
    assert_int_equal(bench_dataset_random(tok, 20, input_len, 32, ratio, 5, &a, &err), 0);
    assert_int_equal(a.n, 20);
    int lo = (int)(input_len * (1 - ratio)), hi = (int)(input_len * (1 + ratio));
    bool varied = false;
    for (size_t i = 0; i < a.n; i++) {
        assert_in_range(a.items[i].prompt_len, lo, hi);
        assert_in_range(a.items[i].output_len, (int)(32 * (1 - ratio)), (int)(32 * (1 + ratio)));
        assert_int_equal(encoded_len(tok, a.items[i].text), a.items[i].prompt_len);
        varied |= a.items[i].prompt_len != a.items[0].prompt_len;
    }
    assert_true(varied == (ratio > 0));
    assert_int_equal(bench_dataset_random(tok, 20, input_len, 32, ratio, 5, &b, &err), 0);
    for (size_t i = 0; i < a.n; i++)
        assert_string_equal(a.items[i].text, b.items[i].text);
    bench_dataset_free(&b);
    assert_int_equal(bench_dataset_random(tok, 20, input_len, 32, ratio, 6, &b, &err), 0);
    assert_string_not_equal(a.items[0].text, b.items[0].text);
    bench_dataset_free(&a);
    bench_dataset_free(&b);
    tok_free(tok);
}

static void test_random_exact_lengths(void **state)
{
    if (!cv_test_have_shared("tokenizers/llama2") || !cv_test_have_shared("tokenizers/gpt2") ||
        !cv_test_have_shared("models/stories260K"))
        skip();
    check_random("tokenizers/llama2", 128, 0.5);
    check_random("tokenizers/gpt2", 64, 0.0);
    check_random("models/stories260K", 16, 0.25);
}

/* The shipped tokenizer is byte-level: some of its pieces decode to a NUL
 * byte, which would cut a prompt short where it is sent as a C string. */
static void test_random_exact_kjv(void **state)
{
    check_random(KJV, 128, 0.0);
}

static void test_random_errors(void **state)
{
    cv_tokenizer *tok = load(KJV);
    bench_dataset d = {0};
    cv_error err = {.msg = ""};
    assert_int_equal(bench_dataset_random(tok, 2, 0, 8, 0, 1, &d, &err), -1);
    assert_string_equal(err.msg, "--random-input-len must be at least 1, got 0");
    /* The shipped tokenizer adds BOS, so a 1-token prompt has no room for
     * text. */
    assert_int_equal(bench_dataset_random(tok, 2, 1, 8, 0, 1, &d, &err), -1);
    assert_string_equal(err.msg, "random prompt 0: random prompt of 1 tokens is shorter than the 1 "
                                 "special tokens plus one");
    tok_free(tok);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_sharegpt(void **state)
{
    if (!cv_test_have_shared("tokenizers/gpt2")) skip();
    cv_tokenizer *tok = load("tokenizers/gpt2");
    char path[] = "/tmp/cvllm-sharegpt-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    write_text(
        path,
        "[{\"conversations\": [{\"from\": \"human\", \"value\": \"Tell me a long story about a "
        "dog and a cat.\"}, {\"from\": \"gpt\", \"value\": \"Once upon a time there was a "
        "dog.\"}]},"
        " {\"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"gpt\", "
        "\"value\": \"Hello there, how are you today?\"}]},"
        " {\"conversations\": [{\"from\": \"human\", \"value\": \"only one turn\"}]},"
        " {\"conversations\": [{\"from\": \"human\", \"value\": \"What is the capital of "
        "France?\"}, {\"from\": \"gpt\", \"value\": \"The capital of France is Paris.\"}]}]");
    bench_dataset d = {0};
    cv_error err = {.msg = ""};
    /* "Hi" (1 token) and the one-turn conversation are skipped. */
    assert_int_equal(bench_dataset_sharegpt(path, tok, 2, 0, 3, &d, &err), 0);
    assert_int_equal(d.n, 2);
    int seen_story = 0, seen_paris = 0;
    for (size_t i = 0; i < d.n; i++) {
        if (!strcmp(d.items[i].text, "Tell me a long story about a dog and a cat.")) {
            seen_story++;
            assert_int_equal(d.items[i].prompt_len, 12);
            assert_int_equal(d.items[i].output_len, 9); /* "Once upon a time there was a dog." */
        } else {
            assert_string_equal(d.items[i].text, "What is the capital of France?");
            seen_paris++;
            assert_int_equal(d.items[i].prompt_len, 7);
            assert_int_equal(d.items[i].output_len, 7);
        }
    }
    assert_int_equal(seen_story, 1);
    assert_int_equal(seen_paris, 1);
    bench_dataset_free(&d);
    assert_int_equal(bench_dataset_sharegpt(path, tok, 3, 0, 3, &d, &err), -1);
    char want[256];
    snprintf(want, sizeof want, "%s: only 2 usable conversations, 3 prompts asked", path);
    assert_string_equal(err.msg, want);
    /* A fixed output length keeps the short "Hi" pair. */
    assert_int_equal(bench_dataset_sharegpt(path, tok, 3, 50, 3, &d, &err), 0);
    for (size_t i = 0; i < d.n; i++)
        assert_int_equal(d.items[i].output_len, 50);
    bench_dataset_free(&d);
    write_text(path, "{\"not\": \"a list\"}");
    assert_int_equal(bench_dataset_sharegpt(path, tok, 1, 0, 3, &d, &err), -1);
    snprintf(want, sizeof want, "%s: a ShareGPT dataset is a JSON list of conversations", path);
    assert_string_equal(err.msg, want);
    unlink(path);
    tok_free(tok);
}

static void test_prompts_file(void **state)
{
    if (!cv_test_have_shared("tokenizers/gpt2")) skip();
    cv_tokenizer *tok = load("tokenizers/gpt2");
    char path[] = "/tmp/cvllm-prompts-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    write_text(path, "Hello, my name is\n\nThe capital of France is\r\n");
    bench_dataset d = {0};
    cv_error err = {.msg = ""};
    assert_int_equal(bench_dataset_prompts(path, tok, 5, 12, &d, &err), 0);
    assert_int_equal(d.n, 5);
    const char *want[] = {"Hello, my name is", "The capital of France is"};
    for (size_t i = 0; i < 5; i++) {
        assert_string_equal(d.items[i].text, want[i % 2]);
        assert_int_equal(d.items[i].output_len, 12);
        assert_int_equal(d.items[i].prompt_len, 5); /* GPT-2 adds no BOS */
    }
    bench_dataset_free(&d);
    assert_int_equal(bench_dataset_prompts("/nonexistent/p.txt", NULL, 1, 12, &d, &err), -1);
    assert_string_equal(err.msg, "cannot open prompts file '/nonexistent/p.txt'");
    unlink(path);
    tok_free(tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_exact_lengths), cmocka_unit_test(test_random_exact_kjv),
        cmocka_unit_test(test_random_errors),        cmocka_unit_test(test_sharegpt),
        cmocka_unit_test(test_prompts_file),
    };
    return cv_test_exit(cmocka_run_group_tests(tests, NULL, NULL));
}

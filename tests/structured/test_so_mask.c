/* The token masks of src/structured against brute force: along random walks
 * through several constraints, every state's mask must allow exactly the
 * tokens whose bytes, fed one by one to the automaton, keep it alive (plus
 * the end id where the state accepts). Runs on the shipped model's
 * tokenizer (samples/models/cvllm-kjv-4m) and, when ../shared has it, on
 * Qwen3's 151k-token vocabulary (byte-level BPE: tokens that are pieces of
 * UTF-8 characters, long whitespace runs) and Llama 2's 32k. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../common/shared_data.h"
#include "structured/so_internal.h"
#include "structured/structured.h"
#include "tokenizer/tokenizer.h"

typedef struct constraint {
    so_kind kind;
    const char *text;
} constraint;

static const constraint constraints[] = {
    {SO_REGEX, "[^\"]*"},
    {SO_REGEX, "a(b|c)*d{2}[^x]\\."},
    {SO_REGEX, "[a-z ]{0,20}\\d{2,4}"},
    {SO_CHOICE, "[\"the waters\",\"the\",\"thee\",\"αβγ\"]"},
    {SO_JSON_OBJECT, ""},
    {SO_JSON, "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":"
              "8},\"n\":{\"type\":\"integer\"},\"tags\":{\"type\":\"array\",\"items\":{\"enum\":["
              "\"a b\",\"c\"]}}},\"required\":[\"name\",\"n\"]}"},
};

static uint64_t rng = 0x9E3779B97F4A7C15ULL;

static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Checks the mask of st token by token; returns how many tokens it allows
 * (other than end) and puts one of them, picked at random, in *pick. */
static int check_state(so_grammar *g, const so_vocab *v, int32_t eos, so_state st, int32_t *pick)
{
    /* Asked first, so_done works without the mask. */
    bool done = so_done(g, st);
    const uint32_t *mask = so_mask(g, st);
    assert_non_null(mask);
    int n_allowed = 0;
    for (int32_t t = 0; t < so_vocab_size(v); t++) {
        int nb = 0;
        const uint8_t *b = so_vocab_bytes(v, t, &nb);
        bool want = b ? so_advance_bytes(g, st, (const char *)b, (size_t)nb) != SO_DEAD
                      : t == eos && so_accepting(g, st);
        bool got = mask[t >> 5] >> (t & 31) & 1u;
        if (got != want)
            fail_msg("state %d token %d: mask %d, bytes say %d", st, t, (int)got, (int)want);
        if (want && b && next_rand() % (uint64_t)++n_allowed == 0) *pick = t;
    }
    assert_int_equal(done, n_allowed == 0);
    assert_int_equal(so_done(g, st), n_allowed == 0);
    return n_allowed;
}

static void walk_all(const char *tok_dir, int n_walks, int max_steps)
{
    cv_error err;
    cv_tokenizer *tok = tok_load(tok_dir, &err);
    if (!tok) fail_msg("tok_load %s: %s", tok_dir, err.msg);
    int32_t eos = tok_eos_id(tok);
    so_vocab *v = so_vocab_create(tok, &eos, 1, &err);
    assert_non_null(v);
    for (size_t i = 0; i < sizeof(constraints) / sizeof(constraints[0]); i++) {
        so_cache *c = so_cache_create(v);
        so_grammar *g = so_cache_get(c, constraints[i].kind, constraints[i].text, &err);
        if (!g) fail_msg("%s: %s", constraints[i].text, err.msg);
        for (int w = 0; w < n_walks; w++) {
            so_state st = so_start(g);
            for (int s = 0; s < max_steps; s++) {
                int32_t pick = -1;
                if (check_state(g, v, eos, st, &pick) == 0) break;
                st = so_advance(g, st, pick);
                assert_int_not_equal(st, SO_DEAD);
            }
        }
        so_cache_free(c);
    }
    so_vocab_free(v);
    tok_free(tok);
}

static void test_kjv_vocab(void **state)
{
    (void)state;
    char dir[4096];
    const char *src = getenv("CVLLM_SOURCE_DIR");
    snprintf(dir, sizeof(dir), "%s/samples/models/cvllm-kjv-4m", src ? src : ".");
    walk_all(dir, 3, 24);
}

static void test_qwen3_vocab(void **state)
{
    (void)state;
    if (!cv_test_have_shared("tokenizers/qwen3")) return;
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/tokenizers/qwen3", cv_test_shared_root());
    walk_all(dir, 1, 6);
}

/* Llama 2's byte tokens <0x41> have the bytes of "A" too: tokens with
 * equal bytes share a trie node and must all be allowed. */
static void test_llama2_vocab(void **state)
{
    (void)state;
    if (!cv_test_have_shared("tokenizers/llama2")) return;
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/tokenizers/llama2", cv_test_shared_root());
    walk_all(dir, 1, 8);
}

/* ---- JSON-schema pattern and format, byte by byte -------------------- */

static so_vocab *kjv_vocab(cv_tokenizer **tok)
{
    char dir[4096];
    const char *src = getenv("CVLLM_SOURCE_DIR");
    snprintf(dir, sizeof(dir), "%s/samples/models/cvllm-kjv-4m", src ? src : ".");
    cv_error err;
    *tok = tok_load(dir, &err);
    if (!*tok) fail_msg("tok_load %s: %s", dir, err.msg);
    int32_t eos = tok_eos_id(*tok);
    so_vocab *v = so_vocab_create(*tok, &eos, 1, &err);
    assert_non_null(v);
    return v;
}

static bool matches(so_grammar *g, const char *s)
{
    so_state st = so_advance_bytes(g, so_start(g), s, strlen(s));
    return st != SO_DEAD && so_accepting(g, st);
}

typedef struct text_case {
    const char *schema;
    const char *good[4], *bad[5];
} text_case;

static const text_case text_cases[] = {
    {"{\"type\":\"string\",\"pattern\":\"^[a-z]+(-[a-z]+)*$\"}",
     {"\"abc\"", "\"a-b-c\""},
     {"\"\"", "\"a-\"", "\"A\"", "abc"}},
    /* Bytes JSON must escape are spelled as escapes; the value still matches. */
    {"{\"type\":\"string\",\"pattern\":\"a\\\"b\\\\\\\\c\\n[\\\\x00-\\\\x02]\"}",
     {"\"a\\\"b\\\\c\\n\\u0001\""},
     {"\"a\"b\\\\c\\n\\u0001\"", "\"a\\\"b\\\\c\n\\u0001\"", "\"a\\\"b\\\\c\\n\\u0003\""}},
    {"{\"pattern\":\"\\\\d{3}\"}", {"\"123\""}, {"123", "\"12\""}},
    {"{\"type\":\"string\",\"format\":\"date\"}",
     {"\"2024-02-29\"", "\"1999-12-31\""},
     {"\"2024-13-01\"", "\"2024-00-10\"", "\"2024-1-01\"", "\"2024-01-32\""}},
    {"{\"type\":\"string\",\"format\":\"time\"}",
     {"\"23:59:60Z\"", "\"08:30:00.125+05:30\""},
     {"\"24:00:00Z\"", "\"08:30:00\"", "\"08:60:00Z\""}},
    {"{\"type\":\"string\",\"format\":\"date-time\"}",
     {"\"2026-12-05T15:30:52Z\"", "\"2026-12-05T15:30:52.5-01:00\""},
     {"\"2026-12-05 15:30:52Z\"", "\"2026-12-05T15:30Z\""}},
    {"{\"type\":\"string\",\"format\":\"uuid\"}",
     {"\"123e4567-e89b-12d3-a456-426614174000\""},
     {"\"123e4567e89b12d3a456426614174000\"", "\"123e4567-e89b-12d3-a456-42661417400g\""}},
    {"{\"type\":\"string\",\"format\":\"ipv4\"}",
     {"\"192.168.0.1\"", "\"255.255.255.255\"", "\"0.0.0.0\""},
     {"\"256.1.1.1\"", "\"1.2.3\"", "\"01.2.3.4\"", "\"1.2.3.4.5\""}},
    {"{\"type\":\"string\",\"format\":\"email\"}",
     {"\"john.doe+x@example.co.uk\"", "\"a@b.io\""},
     {"\"a@b\"", "\"@b.io\"", "\"a@-b.io\"", "\"a b@c.io\""}},
    {"{\"type\":\"string\",\"format\":\"hostname\"}",
     {"\"example.com\"", "\"localhost\""},
     {"\"-x.com\"", "\"a..b\""}},
    /* Formats without a generator are annotations: any string. */
    {"{\"type\":\"string\",\"format\":\"uri\"}", {"\"any thing\""}, {"1"}},
};

/* Compiles each case's text as kind on the shipped model's vocabulary: its
 * good strings must match, its bad ones must not. */
static void check_text_cases(so_kind kind, const text_case *cases, size_t n)
{
    cv_tokenizer *tok;
    so_vocab *v = kjv_vocab(&tok);
    so_cache *c = so_cache_create(v);
    cv_error err;
    for (size_t i = 0; i < n; i++) {
        const text_case *tc = &cases[i];
        so_grammar *g = so_cache_get(c, kind, tc->schema, &err);
        if (!g) fail_msg("%s: %s", tc->schema, err.msg);
        for (int k = 0; k < 4 && tc->good[k]; k++)
            if (!matches(g, tc->good[k])) fail_msg("%s refuses %s", tc->schema, tc->good[k]);
        for (int k = 0; k < 5 && tc->bad[k]; k++)
            if (matches(g, tc->bad[k])) fail_msg("%s accepts %s", tc->schema, tc->bad[k]);
    }
    so_cache_free(c);
    so_vocab_free(v);
    tok_free(tok);
}

static void test_pattern_format(void **state)
{
    (void)state;
    check_text_cases(SO_JSON, text_cases, sizeof(text_cases) / sizeof(text_cases[0]));
}

static void expect_compile_error(so_cache *c, so_kind kind, const char *text, const char *want)
{
    cv_error err = {.msg = ""};
    assert_null(so_cache_get(c, kind, text, &err));
    if (strcmp(err.msg, want)) fail_msg("%s: got '%s', want '%s'", text, err.msg, want);
}

static void test_pattern_errors(void **state)
{
    (void)state;
    cv_tokenizer *tok;
    so_vocab *v = kjv_vocab(&tok);
    so_cache *c = so_cache_create(v);
    expect_compile_error(c, SO_JSON, "{\"type\":\"string\",\"pattern\":\"(a\"}",
                         "JSON schema 'pattern': invalid regex at position 2: missing )");
    expect_compile_error(c, SO_JSON, "{\"type\":\"string\",\"pattern\":\"(?=a)\"}",
                         "JSON schema 'pattern': invalid regex at position 1: "
                         "only (?:...) groups are supported (no lookaround or flags)");
    expect_compile_error(c, SO_JSON, "{\"type\":\"string\",\"pattern\":5}",
                         "JSON schema 'pattern' must be a string");
    expect_compile_error(c, SO_JSON, "{\"type\":\"string\",\"format\":[]}",
                         "JSON schema 'format' must be a string");
    expect_compile_error(c, SO_JSON, "{\"type\":\"string\",\"format\":\"date\",\"maxLength\":3}",
                         "JSON schema 'minLength'/'maxLength' together with 'format' is not "
                         "supported");
    so_cache_free(c);
    so_vocab_free(v);
    tok_free(tok);
}

/* ---- Grammars (GBNF without recursion) -------------------------------- */

static const text_case grammar_cases[] = {
    /* Right, left and mixed self-recursion are regular: loops. */
    {"root ::= list\nlist ::= \"a\" | \"a\" \",\" list", {"a", "a,a,a"}, {"", "a,", ",a"}},
    {"root ::= expr\nexpr ::= expr \"+\" num | num\nnum ::= [0-9]+",
     {"1", "1+22+3"},
     {"+1", "1+", "", "1++2"}},
    {"root ::= r\nr ::= \"b\" r | r \"c\" | \"a\"", {"a", "bba", "acc", "bacc"}, {"ab", "ca", "b"}},
    {"root ::= \"yes\" | \"no\"", {"yes", "no"}, {"", "yesno", "n"}},
    /* Rules used twice, a group with a quantifier, comments, a multi-line body. */
    {"# a date list\nroot ::= date (\", \" date)*\ndate ::= year \"-\" d2 \"-\" d2\n"
     "year ::= [12] [0-9]{3}\nd2 ::= [0-9] [0-9]\n",
     {"2024-01-31", "1999-12-01, 2000-02-29"},
     {"2024-1-31", "3024-01-01", "2024-01-31,2024-01-31"}},
    {"root ::= (\n  \"a\"\n  | \"b\"+\n) tail?\ntail ::= \"!\" | \"?\"",
     {"a", "bbb?", "a!"},
     {"ab", "!", "a!!"}},
    /* Escapes, '.', classes with escapes and a non-ASCII member. */
    {"root ::= \"\\\"\" [^\"\\\\\\n]* \"\\\"\" \" \" . [\\x41-\\x43\\u00e9] \"\\u00fc\\t\"",
     {"\"ab c\" \nA\xc3\xbc\t", "\"\" x\xc3\xa9\xc3\xbc\t"},
     {"\"a\"b\" xA\xc3\xbc\t", "\"\" xD\xc3\xbc\t", "\"\" \xc3\xbc\t"}},
    {"root ::= x{2,3} y{2} z{1,}\nx ::= \"x\"\ny ::= \"y\"\nz ::= \"z\"",
     {"xxyyz", "xxxyyzzz"},
     {"xyyz", "xxxxyyz", "xxyyyz", "xxyy"}},
    {"root ::= item (\",\" item)?\nitem ::= \"(\" [a-z_-]* \")\" | \"[]\"",
     {"(a-b_c)", "(),[]"},
     {"(A)", "[]]", "(a),"}},
};

static void test_grammar(void **state)
{
    (void)state;
    check_text_cases(SO_GRAMMAR, grammar_cases, sizeof(grammar_cases) / sizeof(grammar_cases[0]));
}

static void test_grammar_errors(void **state)
{
    (void)state;
    cv_tokenizer *tok;
    so_vocab *v = kjv_vocab(&tok);
    so_cache *c = so_cache_create(v);
    expect_compile_error(c, SO_GRAMMAR, "root ::= \"(\" root \")\" | \"\"",
                         "grammar line 1: rule 'root' is recursive other than as the first or last "
                         "item of its own alternatives; only regular grammars are supported");
    expect_compile_error(c, SO_GRAMMAR, "root ::= list\nlist ::= \"a\" list",
                         "grammar line 2: rule 'list' is recursive other than as the first or last "
                         "item of its own alternatives; only regular grammars are supported");
    expect_compile_error(c, SO_GRAMMAR, "root ::= a\na ::= \"x\" b | \"y\"\nb ::= a \"z\"",
                         "grammar line 3: rule 'a' is recursive other than as the first or last "
                         "item of its own alternatives; only regular grammars are supported");
    expect_compile_error(c, SO_GRAMMAR, "root ::= x\nx ::= \"a\" x? | \"b\"",
                         "grammar line 2: rule 'x' is recursive other than as the first or last "
                         "item of its own alternatives; only regular grammars are supported");
    expect_compile_error(c, SO_GRAMMAR, "root ::= a\n", "grammar line 1: rule 'a' is not defined");
    expect_compile_error(c, SO_GRAMMAR, "start ::= \"a\"",
                         "grammar has no rule 'root' (where generation starts)");
    expect_compile_error(c, SO_GRAMMAR, "", "grammar line 1: no rules");
    expect_compile_error(c, SO_GRAMMAR, "root = \"a\"",
                         "grammar line 1: expected a rule 'name ::= ...'");
    expect_compile_error(c, SO_GRAMMAR, "root ::= \"a\"\nroot ::= \"b\"",
                         "grammar line 2: rule 'root' is defined twice");
    expect_compile_error(c, SO_GRAMMAR, "root ::= \"abc\n",
                         "grammar line 1: unterminated string literal");
    expect_compile_error(c, SO_GRAMMAR, "root ::= [a-z", "grammar line 1: unterminated [");
    expect_compile_error(c, SO_GRAMMAR, "root ::= (\"a\"", "grammar line 1: missing )");
    expect_compile_error(c, SO_GRAMMAR, "root ::= \"a\")", "grammar line 1: unexpected ')'");
    expect_compile_error(c, SO_GRAMMAR, "root ::= \"a\"**",
                         "grammar line 1: a quantifier cannot follow a quantifier");
    expect_compile_error(c, SO_GRAMMAR, "root ::= \"a\"{3,2}",
                         "grammar line 1: bad repeat {m,n} (at most 1000, m <= n)");
    expect_compile_error(c, SO_GRAMMAR, "root ::= [\u00e0-\u00fc]",
                         "grammar line 1: a character range with non-ASCII ends is not supported");
    expect_compile_error(c, SO_GRAMMAR, "root ::= \"\\q\"",
                         "grammar line 1: unsupported escape \\q");
    expect_compile_error(c, SO_GRAMMAR, "root ::= \"a\" ; \"b\"", "grammar line 1: unexpected ';'");
    so_cache_free(c);
    so_vocab_free(v);
    tok_free(tok);
}

/* The prefetch thread computes exactly the masks asked, and the ones the
 * caller then asks for are the same arrays (already made). */
static void test_prefetch(void **state)
{
    (void)state;
    cv_tokenizer *tok;
    so_vocab *v = kjv_vocab(&tok);
    so_cache *c = so_cache_create(v);
    cv_error err;
    so_grammar *g = so_cache_get(c, SO_REGEX, "(ab|cd)[0-9]{2}", &err);
    so_grammar *h = so_cache_get(c, SO_JSON_OBJECT, "", &err);
    assert_true(g && h);
    so_prefetch *p = so_prefetch_create(3);
    assert_non_null(p);
    so_grammar *gs[] = {g, g, g, h};
    so_state ss[] = {so_start(g), so_advance_bytes(g, so_start(g), "ab", 2),
                     so_advance_bytes(g, so_start(g), "ab", 2), so_start(h)};
    int n_states, n_masks;
    so_grammar_stats(g, &n_states, &n_masks);
    assert_int_equal(n_masks, 0);
    assert_int_equal(so_prefetch_start(p, gs, ss, 4), 0);
    so_prefetch_wait(p);
    so_grammar_stats(g, &n_states, &n_masks);
    assert_int_equal(n_masks, 2);
    so_grammar_stats(h, &n_states, &n_masks);
    assert_int_equal(n_masks, 1);
    const uint32_t *m = so_mask(g, ss[1]);
    so_grammar_stats(g, &n_states, &n_masks);
    assert_int_equal(n_masks, 2);
    int32_t eos = tok_eos_id(tok), pick = -1;
    assert_true(check_state(g, v, eos, ss[1], &pick) > 0);
    assert_ptr_equal(so_mask(g, ss[1]), m);
    /* Freed with a batch under way: it is finished first. */
    so_state s2 = so_advance_bytes(g, ss[1], "1", 1);
    assert_int_equal(so_prefetch_start(p, gs, &s2, 1), 0);
    so_prefetch_free(p);
    so_grammar_stats(g, &n_states, &n_masks);
    assert_int_equal(n_masks, 3);
    so_cache_free(c);
    so_vocab_free(v);
    tok_free(tok);
}

/* ---- The cache: references and the idle budget ------------------------- */

static int masks_made(so_grammar *g)
{
    int n_states, n_masks;
    so_grammar_stats(g, &n_states, &n_masks);
    return n_masks;
}

static void test_cache_budget(void **state)
{
    (void)state;
    cv_tokenizer *tok;
    so_vocab *v = kjv_vocab(&tok);
    so_cache *c = so_cache_create(v);
    cv_error err;
    /* Held twice, released once: kept whatever the budget. */
    so_grammar *a = so_cache_get(c, SO_REGEX, "a[0-9]{3}", &err);
    assert_ptr_equal(so_cache_get(c, SO_REGEX, "a[0-9]{3}", &err), a);
    (void)so_mask(a, so_start(a));
    so_cache_set_idle_budget(c, 0);
    so_grammar_release(a);
    assert_int_equal(masks_made(a), 1);
    /* Idle within the budget: the same grammar comes back, masks and all. */
    so_cache_set_idle_budget(c, (size_t)1 << 30);
    so_grammar_release(a);
    assert_ptr_equal(so_cache_get(c, SO_REGEX, "a[0-9]{3}", &err), a);
    assert_int_equal(masks_made(a), 1);
    /* Two idle grammars and room for one: the one released first goes. */
    so_grammar *b = so_cache_get(c, SO_REGEX, "b[0-9]{3}", &err);
    (void)so_mask(b, so_start(b));
    size_t bytes_a = so_grammar_bytes(a), bytes_b = so_grammar_bytes(b);
    so_grammar_release(a);
    so_grammar_release(b);
    so_cache_set_idle_budget(c, bytes_a > bytes_b ? bytes_a : bytes_b);
    assert_ptr_equal(so_cache_get(c, SO_REGEX, "b[0-9]{3}", &err), b);
    assert_int_equal(masks_made(b), 1);
    so_grammar_release(b);
    /* a was freed: asking again compiles it afresh, with no masks yet. */
    so_grammar *a2 = so_cache_get(c, SO_REGEX, "a[0-9]{3}", &err);
    assert_non_null(a2);
    assert_int_equal(masks_made(a2), 0);
    so_grammar_release(a2);
    so_grammar_release(NULL);
    so_cache_free(c);
    so_vocab_free(v);
    tok_free(tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kjv_vocab),      cmocka_unit_test(test_qwen3_vocab),
        cmocka_unit_test(test_llama2_vocab),   cmocka_unit_test(test_pattern_format),
        cmocka_unit_test(test_pattern_errors), cmocka_unit_test(test_grammar),
        cmocka_unit_test(test_grammar_errors), cmocka_unit_test(test_prefetch),
        cmocka_unit_test(test_cache_budget),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return cv_test_exit(failed);
}

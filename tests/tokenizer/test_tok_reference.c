/* tests/fixtures/tokenizer/reference.json (made by make_reference.py with
 * HF tokenizers on the GPU machine) for gpt2, llama2, qwen3 and
 * stories260K: encode with and without special tokens, decode with and
 * without skip_special_tokens, hand-made id lists, and the streaming
 * deltas of vLLM's incremental detokenizer. Also: the stories text
 * round-trips, and deltas concatenate to the full decode. */
#include <pthread.h>

#include "tok_test_util.h"
#include "../common/shared_data.h"

static json_t *g_ref;

static int setup(void **state)
{
    (void)state;
    g_ref = tt_json(tt_path("%s/tests/fixtures/tokenizer/reference.json", tt_source()));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    json_decref(g_ref);
    return 0;
}

static const char *tok_dir(const char *name)
{
    if (!strcmp(name, "stories260K")) return tt_path("%s/models/stories260K", tt_shared());
    return tt_path("%s/tokenizers/%s", tt_shared(), name);
}

static void check_stream(const cv_tokenizer *tok, const json_t *c, const char *what)
{
    size_t np, ng;
    int32_t *p = tt_ids(json_object_get(c, "prompt_ids"), &np);
    int32_t *g = tt_ids(json_object_get(c, "gen_ids"), &ng);
    const json_t *deltas = json_object_get(c, "deltas");
    bool skip = json_is_true(json_object_get(c, "skip_special_tokens"));
    assert_int_equal(json_array_size(deltas), ng);
    int32_t *all = malloc((np + ng + 1) * sizeof *all);
    assert_non_null(all);
    memcpy(all, p, np * sizeof *all);
    cv_tok_stream st;
    tok_stream_init(&st, tok, p, np, skip);
    for (size_t i = 0; i < ng; i++) {
        all[np + i] = g[i];
        cv_error err = {.msg = ""};
        char *d = NULL;
        size_t dl = 0;
        if (tok_stream_next(&st, tok, all, np + i + 1, &d, &dl, &err))
            fail_msg("%s: stream step %zu: %s", what, i, err.msg);
        const char *want = json_string_value(json_array_get(deltas, i));
        if (dl != strlen(want) || memcmp(d, want, dl)) {
            char msg[2048];
            snprintf(msg, sizeof msg, "%s (skip=%d) step %zu: delta \"%s\", want \"%s\"", what,
                     skip, i, d, want);
            free(d);
            fail_msg("%s", msg);
        }
        free(d);
    }
    free(all);
    free(p);
    free(g);
}

static void run_reference(const char *name)
{
    const json_t *t = json_object_get(json_object_get(g_ref, "tokenizers"), name);
    assert_non_null(t);
    cv_tokenizer *tok = tt_load(tok_dir(name));
    assert_int_equal(tok_vocab_size(tok), json_integer_value(json_object_get(t, "vocab_size")));
    const json_t *specials = json_object_get(t, "special_ids");
    for (size_t i = 0; i < json_array_size(specials); i++)
        assert_true(tok_is_special(tok, (int32_t)json_integer_value(json_array_get(specials, i))));

    const json_t *enc = json_object_get(t, "encode");
    for (size_t i = 0; i < json_array_size(enc); i++) {
        const json_t *e = json_array_get(enc, i);
        const json_t *text = json_object_get(e, "text");
        const char *what = tt_path("%s/encode[%zu]", name, i);
        size_t n, n2;
        int32_t *ids = tt_ids(json_object_get(e, "ids"), &n);
        int32_t *ids2 = tt_ids(json_object_get(e, "ids_no_special"), &n2);
        tt_check_encode(tok, json_string_value(text), json_string_length(text), true, ids, n, what);
        tt_check_encode(tok, json_string_value(text), json_string_length(text), false, ids2, n2,
                        what);
        tt_check_decode(tok, ids, n, false, json_string_value(json_object_get(e, "decoded")), what);
        tt_check_decode(tok, ids, n, true, json_string_value(json_object_get(e, "decoded_skip")),
                        what);
        free(ids);
        free(ids2);
    }
    const json_t *dec = json_object_get(t, "decode");
    for (size_t i = 0; i < json_array_size(dec); i++) {
        const json_t *e = json_array_get(dec, i);
        const char *what = tt_path("%s/decode[%zu]", name, i);
        size_t n;
        int32_t *ids = tt_ids(json_object_get(e, "ids"), &n);
        tt_check_decode(tok, ids, n, false, json_string_value(json_object_get(e, "decoded")), what);
        tt_check_decode(tok, ids, n, true, json_string_value(json_object_get(e, "decoded_skip")),
                        what);
        free(ids);
    }
    const json_t *stream = json_object_get(t, "stream");
    for (size_t i = 0; i < json_array_size(stream); i++)
        check_stream(tok, json_array_get(stream, i), tt_path("%s/stream[%zu]", name, i));
    tok_free(tok);
}

static void test_gpt2(void **s)
{
    (void)s;
    run_reference("gpt2");
}
static void test_llama2(void **s)
{
    (void)s;
    run_reference("llama2");
}
static void test_qwen3(void **s)
{
    (void)s;
    run_reference("qwen3");
}
static void test_stories260k(void **s)
{
    (void)s;
    run_reference("stories260K");
}

/* The stories tokenizer round-trips story text, and the BOS/EOS come from
 * its tokenizer_config.json. */
static void test_stories_roundtrip(void **s)
{
    (void)s;
    cv_tokenizer *tok = tt_load(tok_dir("stories260K"));
    assert_int_equal(tok_bos_id(tok), 1);
    assert_int_equal(tok_eos_id(tok), 2);
    assert_string_equal(tok_id_to_token(tok, 1), "<s>");
    assert_null(tok_id_to_token(tok, 512));
    assert_int_equal(tok_token_to_id(tok, "</s>"), 2);
    assert_int_equal(tok_token_to_id(tok, "<0x0A>"), 13);
    assert_int_equal(tok_token_to_id(tok, "no such token"), -1);
    const char *story = "Once upon a time, there was a little girl named Lily. She loved to play "
                        "outside in the park. One day, she saw a big, red ball. \"Can I play?\" "
                        "she asked.\nHer mom said yes!";
    cv_error err = {.msg = ""};
    int32_t *ids;
    size_t n;
    assert_int_equal(tok_encode(tok, story, strlen(story), true, &ids, &n, &err), 0);
    assert_int_equal(ids[0], 1);
    char *text;
    size_t len;
    assert_int_equal(tok_decode(tok, ids, n, true, &text, &len, &err), 0);
    assert_string_equal(text, story);
    free(text);
    free(ids);
    tok_free(tok);
}

/* Streaming a whole generation yields exactly the text that decoding it in
 * context adds, and every delta is valid UTF-8 (held back while a
 * multi-byte character is incomplete). */
static void test_stream_concat(void **s)
{
    (void)s;
    const char *names[] = {"gpt2", "llama2", "qwen3", "stories260K"};
    const char *prompt = "Tell me:", *gen = " 你好世界 👍🏽 naïve café — done.\n\tOK";
    for (size_t k = 0; k < 4; k++) {
        cv_tokenizer *tok = tt_load(tok_dir(names[k]));
        cv_error err = {.msg = ""};
        int32_t *p, *all;
        size_t np, nall;
        char buf[256];
        snprintf(buf, sizeof buf, "%s%s", prompt, gen);
        assert_int_equal(tok_encode(tok, prompt, strlen(prompt), false, &p, &np, &err), 0);
        assert_int_equal(tok_encode(tok, buf, strlen(buf), false, &all, &nall, &err), 0);
        assert_memory_equal(p, all, np * sizeof *p);
        cv_tok_stream st;
        tok_stream_init(&st, tok, all, np, false);
        char out[512] = "";
        size_t used = 0;
        for (size_t i = np; i < nall; i++) {
            char *d;
            size_t dl;
            assert_int_equal(tok_stream_next(&st, tok, all, i + 1, &d, &dl, &err), 0);
            assert_true(used + dl < sizeof out);
            memcpy(out + used, d, dl);
            used += dl;
            out[used] = '\0';
            cv_error e2 = {.msg = ""};
            int32_t *tmp;
            size_t nt;
            /* each delta is valid UTF-8: it encodes without error */
            assert_int_equal(tok_encode(tok, d, dl, false, &tmp, &nt, &e2), 0);
            free(tmp);
            free(d);
        }
        assert_string_equal(out, gen);
        free(p);
        free(all);
        tok_free(tok);
    }
}

/* One loaded tokenizer shared by several threads (its word cache is the
 * only shared mutable state) gives every thread the reference ids. */
typedef struct thread_job {
    const cv_tokenizer *tok;
    const json_t *cases;
    int mismatches;
} thread_job;

static void *encode_all(void *arg)
{
    thread_job *job = arg;
    for (int round = 0; round < 20; round++)
        for (size_t i = 0; i < json_array_size(job->cases); i++) {
            const json_t *e = json_array_get(job->cases, i);
            const json_t *text = json_object_get(e, "text");
            const json_t *want = json_object_get(e, "ids");
            cv_error err = {.msg = ""};
            int32_t *ids = NULL;
            size_t n = 0;
            if (tok_encode(job->tok, json_string_value(text), json_string_length(text), true, &ids,
                           &n, &err) ||
                n != json_array_size(want)) {
                job->mismatches++;
            } else {
                for (size_t k = 0; k < n; k++)
                    job->mismatches += ids[k] != json_integer_value(json_array_get(want, k));
            }
            free(ids);
        }
    return NULL;
}

static void test_threads(void **s)
{
    (void)s;
    cv_tokenizer *tok = tt_load(tok_dir("gpt2"));
    const json_t *cases =
        json_object_get(json_object_get(json_object_get(g_ref, "tokenizers"), "gpt2"), "encode");
    enum { N = 4 };
    pthread_t th[N];
    thread_job jobs[N];
    for (int i = 0; i < N; i++) {
        jobs[i] = (thread_job){tok, cases, 0};
        assert_int_equal(pthread_create(&th[i], NULL, encode_all, &jobs[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(jobs[i].mismatches, 0);
    }
    tok_free(tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt2),
        cmocka_unit_test(test_llama2),
        cmocka_unit_test(test_qwen3),
        cmocka_unit_test(test_stories260k),
        cmocka_unit_test(test_stories_roundtrip),
        cmocka_unit_test(test_stream_concat),
        cmocka_unit_test(test_threads),
    };
    cv_test_need_shared("tokenizers");
    cv_test_need_shared("models/stories260K");
    return cmocka_run_group_tests_name("tokenizer_reference", tests, setup, teardown);
}

/* Structured outputs on the shipped model samples/models/cvllm-kjv-4m (and
 * on stories260K when ../shared has it): every output sampled at
 * temperature 1, and the greedy one, under a JSON schema, a regex, a
 * grammar or a choice list is checked by an independent checker (jansson
 * and a schema check written here; POSIX regexec over the whole output;
 * list membership); greedy under a choice equals the constrained greedy
 * path computed here from the backend's unmasked logits; constrained and
 * free requests share batches; bad constraints give vLLM's messages. */
#include <math.h>
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "cvllm/engine.h"
#include "../common/shared_data.h"
#include "engine_test_util.h"
#include "schema_check.h"
#include "structured/structured.h"
#include "tokenizer/tokenizer.h"

static const char *const PROMPT = "And God said, Let there be";

typedef struct ctx {
    char model_dir[4096];
    cv_engine *engine;
    cv_tokenizer *tok;
    int32_t *prompt;
    size_t n_prompt;
    bool greedy; /* sample_many at temperature 0 instead of 1 */
} ctx;

static ctx *open_ctx(const char *model_dir)
{
    ctx *c = calloc(1, sizeof(*c));
    snprintf(c->model_dir, sizeof(c->model_dir), "%s", model_dir);
    cv_engine_args a;
    test_args(&a, c->model_dir);
    a.n_threads = 2;
    c->engine = test_engine(&a);
    cv_error err;
    c->tok = tok_load(c->model_dir, &err);
    if (!c->tok) fail_msg("tok_load: %s", err.msg);
    if (tok_encode(c->tok, PROMPT, strlen(PROMPT), true, &c->prompt, &c->n_prompt, &err) < 0)
        fail_msg("tok_encode: %s", err.msg);
    return c;
}

static void close_ctx(ctx *c)
{
    cv_engine_shutdown(c->engine, false);
    tok_free(c->tok);
    free(c->prompt);
    free(c);
}

static int setup(void **state)
{
    char dir[4096];
    source_path(dir, sizeof(dir), "samples/models/cvllm-kjv-4m");
    *state = open_ctx(dir);
    return 0;
}

static int teardown(void **state)
{
    close_ctx(*state);
    return 0;
}

static void sampling(cv_sampling_params *p, cv_structured_kind kind, const char *text)
{
    cv_sampling_params_default(p);
    p->temperature = 1.0f;
    p->max_tokens = 160;
    p->structured_kind = kind;
    p->structured_text = text ? strdup(text) : NULL;
}

/* Runs n_req requests of n sequences each (seeds seed0, seed0 + 1, ...)
 * together and calls check on every output text. */
static void sample_many(ctx *c, cv_structured_kind kind, const char *text, int n_req, int n,
                        uint64_t seed0, void (*check)(const char *out, const void *arg),
                        const void *arg)
{
    cv_sampling_params p;
    sampling(&p, kind, text);
    if (c->greedy) p.temperature = 0.0f;
    p.n = n;
    p.has_seed = true;
    cv_output_queue *q = cv_output_queue_create();
    req_result res[16];
    memset(res, 0, sizeof(res));
    assert_true(n_req <= 16);
    for (int r = 0; r < n_req; r++) {
        p.seed = seed0 + (uint64_t)r;
        assert_true(submit(c->engine, q, &p, c->prompt, (int)c->n_prompt, NULL, false, r) > 0);
    }
    collect(q, res, n_req);
    for (int r = 0; r < n_req; r++) {
        if (res[r].error) fail_msg("request %d: %s", r, res[r].error);
        assert_int_equal(res[r].n_seqs, n);
        for (int k = 0; k < n; k++) {
            const seq_result *s = &res[r].seqs[k];
            if (s->finish != CV_FINISH_STOP)
                fail_msg("%s: seed %llu seq %d ended '%s': %s", text ? text : "json_object",
                         (unsigned long long)(seed0 + (uint64_t)r), k,
                         cv_finish_reason_name(s->finish), s->text);
            check(s->text, arg);
        }
        result_free(&res[r]);
    }
    cv_output_queue_destroy(q);
    cv_sampling_params_free(&p);
}

/* ---- JSON schemas, checked by schema_check.c ---------------------------- */

static void check_schema(const char *out, const void *arg)
{
    const char *schema_text = arg;
    json_error_t jerr;
    json_t *v = json_loads(out, JSON_DECODE_ANY, &jerr);
    if (!v) fail_msg("not JSON (%s) under %s: '%s'", jerr.text, schema_text, out);
    json_t *s = json_loads(schema_text, 0, &jerr);
    assert_non_null(s);
    if (!schema_check(v, s)) fail_msg("'%s' does not validate against %s", out, schema_text);
    json_decref(v);
    json_decref(s);
}

static const char *const schemas[] = {
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":12},"
    "\"age\":{\"type\":\"integer\"}},\"required\":[\"name\",\"age\"]}",
    "{\"type\":\"object\",\"properties\":{\"ok\":{\"type\":\"boolean\"},\"note\":{\"type\":"
    "\"string\",\"maxLength\":8}},\"required\":[\"ok\"]}",
    "{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":1,\"maxItems\":4}",
    "{\"enum\":[\"red\",\"green\",\"blue\",1,null]}",
    "{\"type\":\"object\",\"properties\":{\"point\":{\"type\":\"object\",\"properties\":{\"x\":{"
    "\"type\":\"number\"},\"y\":{\"type\":\"number\"}},\"required\":[\"x\",\"y\"]},\"label\":{"
    "\"const\":\"p\"}},\"required\":[\"point\",\"label\"]}",
    "{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"string\",\"maxLength\":5}]}",
    "{\"type\":[\"string\",\"null\"],\"maxLength\":6}",
    "{\"type\":\"object\",\"properties\":{\"tags\":{\"type\":\"array\",\"items\":{\"type\":"
    "\"string\",\"maxLength\":6},\"maxItems\":3},\"id\":{\"type\":\"integer\"}},\"required\":["
    "\"tags\",\"id\"],\"additionalProperties\":false}",
    "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\",\"maxLength\":4},\"b\":{"
    "\"type\":\"string\",\"maxLength\":4},\"c\":{\"type\":\"string\",\"maxLength\":4}}}",
    "{\"type\":\"boolean\"}",
    "{\"type\":\"object\",\"properties\":{\"kind\":{\"enum\":[\"a\",\"b\"]},\"items\":{\"type\":"
    "\"array\",\"items\":{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"integer\"}},"
    "\"required\":[\"n\"]},\"minItems\":2,\"maxItems\":3}},\"required\":[\"kind\",\"items\"]}",
    "{\"type\":\"number\"}",
    "{\"$defs\":{\"pt\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\"}},"
    "\"required\":[\"x\"]}},\"type\":\"object\",\"properties\":{\"a\":{\"$ref\":\"#/$defs/pt\"},"
    "\"b\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/pt\"},\"maxItems\":2}},"
    "\"required\":[\"a\",\"b\"]}",
    "{\"oneOf\":[{\"type\":\"boolean\"},{\"enum\":[\"x\",\"y\"]}],\"title\":\"t\",\"default\":"
    "true}",
    "{\"type\":\"object\",\"properties\":{\"word\":{\"type\":\"string\",\"minLength\":2,"
    "\"maxLength\":10},\"héllo\":{\"const\":\"wörld ✓\"}},\"required\":[\"word\",\"héllo\"]}",
    /* pattern and format (issue 14) */
    "{\"type\":\"object\",\"properties\":{\"code\":{\"type\":\"string\",\"pattern\":\"^[A-Z]{2}-"
    "[0-9]{3}$\"}},\"required\":[\"code\"]}",
    "{\"type\":\"object\",\"properties\":{\"born\":{\"type\":\"string\",\"format\":\"date\"},"
    "\"n\":{\"type\":\"integer\"}},\"required\":[\"born\",\"n\"]}",
    "{\"type\":\"string\",\"format\":\"uuid\"}",
    "{\"type\":\"array\",\"items\":{\"type\":\"string\",\"format\":\"ipv4\"},\"minItems\":1,"
    "\"maxItems\":3}",
    "{\"type\":\"string\",\"format\":\"date-time\"}",
    "{\"type\":\"object\",\"properties\":{\"t\":{\"type\":\"string\",\"format\":\"time\"}},"
    "\"required\":[\"t\"]}",
    "{\"type\":\"string\",\"pattern\":\"say \\\"(hi|yo)\\\"!?\"}",
    "{\"type\":\"string\",\"pattern\":\"(α|β|γ){1,3}ü\"}",
    "{\"definitions\":{\"c\":{\"type\":\"string\",\"pattern\":\"#[0-9a-f]{6}\"}},\"type\":"
    "\"object\",\"properties\":{\"fg\":{\"$ref\":\"#/definitions/c\"},\"bg\":{\"$ref\":"
    "\"#/definitions/c\"}},\"required\":[\"fg\"]}",
    "{\"oneOf\":[{\"type\":\"string\",\"format\":\"ipv4\"},{\"type\":\"integer\"}]}",
    /* more shapes */
    "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"object\",\"properties\":{\"b\":{"
    "\"type\":\"object\",\"properties\":{\"c\":{\"type\":\"integer\"}},\"required\":[\"c\"]}},"
    "\"required\":[\"b\"]}},\"required\":[\"a\"]}",
    "{\"enum\":[\"ä\",\"ö\",true,2.5,{\"k\":1},[1,2]]}",
    "{\"type\":\"array\",\"items\":{\"enum\":[\"x\",\"y\",\"z\"]},\"minItems\":2,\"maxItems\":4}",
    "{\"anyOf\":[{\"type\":\"object\",\"properties\":{\"cat\":{\"const\":\"meow\"}},\"required\":"
    "[\"cat\"]},{\"type\":\"object\",\"properties\":{\"dog\":{\"type\":\"integer\"}},"
    "\"required\":[\"dog\"]}]}",
    "{\"type\":\"array\",\"items\":{\"type\":\"boolean\"},\"minItems\":3,\"maxItems\":3}",
    "{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"null\"},\"y\":{\"type\":"
    "\"boolean\"}},\"additionalProperties\":false}",
    "{\"type\":[\"integer\",\"boolean\",\"null\"]}",
    "{\"type\":\"object\",\"properties\":{\"ü\":{\"type\":\"string\",\"minLength\":1,"
    "\"maxLength\":3}},\"required\":[\"ü\"]}",
};

static void test_json_schemas(void **state)
{
    ctx *c = *state;
    for (size_t i = 0; i < sizeof(schemas) / sizeof(schemas[0]); i++)
        sample_many(c, CV_STRUCTURED_JSON, schemas[i], 4, 3, 1000 + 10 * i, check_schema,
                    schemas[i]);
}

/* Greedy outputs (one per schema) validate too. */
static void test_greedy_schemas(void **state)
{
    ctx *c = *state;
    c->greedy = true;
    for (size_t i = 0; i < sizeof(schemas) / sizeof(schemas[0]); i++)
        sample_many(c, CV_STRUCTURED_JSON, schemas[i], 1, 1, 0, check_schema, schemas[i]);
    c->greedy = false;
}

static void check_any_json(const char *out, const void *arg)
{
    (void)arg;
    json_error_t jerr;
    json_t *v = json_loads(out, JSON_DECODE_ANY, &jerr);
    if (!v) fail_msg("json_object output is not JSON (%s): '%s'", jerr.text, out);
    json_decref(v);
}

static void test_json_object(void **state)
{
    ctx *c = *state;
    sample_many(c, CV_STRUCTURED_JSON_OBJECT, NULL, 4, 3, 77, check_any_json, NULL);
}

/* ---- Regexes: ours, and the same language in POSIX ERE -------------- */

typedef struct regex_case {
    const char *ours, *posix;
} regex_case;

static void check_regex(const char *out, const void *arg)
{
    const regex_case *rc = arg;
    char anchored[512];
    snprintf(anchored, sizeof(anchored), "^(%s)$", rc->posix);
    regex_t re;
    assert_int_equal(regcomp(&re, anchored, REG_EXTENDED | REG_NOSUB), 0);
    if (regexec(&re, out, 0, NULL, 0) != 0)
        fail_msg("'%s' does not match %s (POSIX %s)", out, rc->ours, rc->posix);
    regfree(&re);
}

static const regex_case regexes[] = {
    {"[0-9]{3}-[0-9]{4}", "[0-9]{3}-[0-9]{4}"},
    {"(yes|no|maybe)", "(yes|no|maybe)"},
    {"[A-Z][a-z]{1,8}( [A-Z][a-z]{1,8}){0,2}", "[A-Z][a-z]{1,8}( [A-Z][a-z]{1,8}){0,2}"},
    {"\\d{1,5}\\.\\d{2}", "[0-9]{1,5}\\.[0-9]{2}"},
    {"[a-z]{1,10}@[a-z]{1,10}\\.(com|org)", "[a-z]{1,10}@[a-z]{1,10}\\.(com|org)"},
    {"(?:ab|c){0,4}d", "(ab|c){0,4}d"},
    {"\\w{2,6}\\s\\w{2,6}", "[A-Za-z0-9_]{2,6}[[:space:]][A-Za-z0-9_]{2,6}"},
    {"^[^,.;:]{3,12}[.!?]$", "[^,.;:]{3,12}[.!?]"},
};

static void test_regexes(void **state)
{
    ctx *c = *state;
    for (size_t i = 0; i < sizeof(regexes) / sizeof(regexes[0]); i++)
        sample_many(c, CV_STRUCTURED_REGEX, regexes[i].ours, 4, 3, 500 + 10 * i, check_regex,
                    &regexes[i]);
}

/* ---- Grammars: ours (GBNF), and the same language in POSIX ERE -------- */

static const regex_case grammars[] = {
    /* vLLM's documentation example (structured outputs, grammar). */
    {"\n    root ::= select_statement\n\n    select_statement ::= \"SELECT \" column \" from \" "
     "table \" where \" condition\n\n    column ::= \"col_1 \" | \"col_2 \"\n\n    table ::= "
     "\"table_1 \" | \"table_2 \"\n\n    condition ::= column \"= \" number\n\n    number ::= "
     "\"1 \" | \"2 \"\n",
     "SELECT (col_1 |col_2 ) from (table_1 |table_2 ) where (col_1 |col_2 )= (1 |2 )"},
    {"root ::= \"Let there be \" thing\nthing ::= \"light\" | \"darkness\" | [a-z]{1,8}",
     "Let there be (light|darkness|[a-z]{1,8})"},
    {"root ::= verse (\"; \" verse){0,2}\nverse ::= [A-Z] [a-z]{0,6} \" \" num\n"
     "num ::= [1-9] [0-9]?",
     "[A-Z][a-z]{0,6} [1-9][0-9]?(; [A-Z][a-z]{0,6} [1-9][0-9]?){0,2}"},
    {"# key = value lines\nroot ::= kv (\"\\n\" kv)?\nkv ::= key \"=\" val\nkey ::= [a-z]{1,5}\n"
     "val ::= \"\\\"\" [^\"\\n]{0,6} \"\\\"\" | [0-9]{1,3}",
     "[a-z]{1,5}=(\"[^\"\n]{0,6}\"|[0-9]{1,3})(\n[a-z]{1,5}=(\"[^\"\n]{0,6}\"|[0-9]{1,3}))?"},
};

static void test_grammars(void **state)
{
    ctx *c = *state;
    for (size_t i = 0; i < sizeof(grammars) / sizeof(grammars[0]); i++)
        sample_many(c, CV_STRUCTURED_GRAMMAR, grammars[i].ours, 4, 3, 700 + 10 * i, check_regex,
                    &grammars[i]);
}

/* ---- Choices ------------------------------------------------------------ */

static void check_choice(const char *out, const void *arg)
{
    json_t *list = json_loads(arg, 0, NULL);
    size_t i;
    const json_t *e;
    bool found = false;
    json_array_foreach(list, i, e) found = found || !strcmp(json_string_value(e), out);
    json_decref(list);
    if (!found) fail_msg("'%s' is not one of %s", out, (const char *)arg);
}

static const char *const choices[] = {
    "[\"light\",\"darkness\",\"the waters\",\"Let there be\"]",
    "[\"yes\",\"no\"]",
    "[\"Genesis\",\"Exodus\",\"Leviticus\",\"Numbers\",\"Deuteronomy\",\"Gen\"]",
    "[\"αβγ\",\"a\",\"ab\",\"abc\"]",
};

static void test_choices(void **state)
{
    ctx *c = *state;
    for (size_t i = 0; i < sizeof(choices) / sizeof(choices[0]); i++)
        sample_many(c, CV_STRUCTURED_CHOICE, choices[i], 4, 3, 300 + 10 * i, check_choice,
                    choices[i]);
}

/* Greedy under a choice equals, step by step, the arg-max of the
 * backend's unmasked logits over the tokens that keep some choice
 * reachable (their decoded text continues a choice; the end id once a
 * choice is complete). Token texts come from the tokenizer here, not from
 * src/structured. */
static void greedy_choice_reference(ctx *c, const char *const *list, int n_list, int32_t *out,
                                    int *n_out)
{
    ref_model ref;
    ref_open(&ref, c->model_dir);
    int vocab = ref.vocab;
    float *logits = malloc((size_t)(c->n_prompt + 64) * (size_t)vocab * sizeof(float));
    int32_t ids[256];
    int n = (int)c->n_prompt;
    memcpy(ids, c->prompt, (size_t)n * sizeof(int32_t));
    char text[256] = "";
    *n_out = 0;
    for (;;) {
        size_t tl = strlen(text);
        bool complete = false, can_continue = false;
        for (int i = 0; i < n_list; i++) {
            complete = complete || !strcmp(list[i], text);
            can_continue = can_continue || (strlen(list[i]) > tl && !strncmp(list[i], text, tl));
        }
        if (!can_continue) break; /* the engine stops here with "stop" */
        ref_logits(&ref, ids, n, logits);
        const float *row = logits + (size_t)(n - 1) * vocab;
        int32_t best = -1;
        for (int32_t t = 0; t < vocab; t++) {
            bool ok = false;
            if (tok_is_special(c->tok, t)) {
                ok = complete && t == tok_eos_id(c->tok);
            } else {
                char *piece = NULL;
                size_t plen = 0;
                cv_error err;
                assert_int_equal(tok_decode_token(c->tok, t, &piece, &plen, &err), 0);
                for (int i = 0; i < n_list && !ok && plen > 0; i++)
                    ok = strlen(list[i]) >= tl + plen && !strncmp(list[i], text, tl) &&
                         !memcmp(list[i] + tl, piece, plen);
                free(piece);
            }
            if (ok && (best < 0 || row[t] > row[best])) best = t;
        }
        assert_true(best >= 0);
        out[(*n_out)++] = best;
        if (best == tok_eos_id(c->tok)) break;
        char *piece = NULL;
        size_t plen = 0;
        cv_error err;
        assert_int_equal(tok_decode_token(c->tok, best, &piece, &plen, &err), 0);
        strncat(text, piece, sizeof(text) - strlen(text) - 1);
        free(piece);
        ids[n++] = best;
    }
    free(logits);
    ref_close(&ref);
}

static void test_greedy_choice(void **state)
{
    ctx *c = *state;
    static const char *const lists[][5] = {
        {"light", "darkness", "the waters", "Let there be", NULL},
        {"the earth", "the heaven", "the evening", "the morning", NULL},
        {"And", "God", "said", "unto", NULL},
    };
    for (size_t l = 0; l < sizeof(lists) / sizeof(lists[0]); l++) {
        json_t *arr = json_array();
        int n_list = 0;
        for (; n_list < 5 && lists[l][n_list]; n_list++)
            json_array_append_new(arr, json_string(lists[l][n_list]));
        char *text = json_dumps(arr, JSON_COMPACT);
        json_decref(arr);
        int32_t want[64];
        int n_want = 0;
        greedy_choice_reference(c, lists[l], n_list, want, &n_want);
        cv_sampling_params p;
        sampling(&p, CV_STRUCTURED_CHOICE, text);
        p.temperature = 0.0f;
        req_result r;
        run_one(c->engine, &p, c->prompt, (int)c->n_prompt, false, &r);
        if (r.error) fail_msg("%s", r.error);
        assert_int_equal(r.seqs[0].finish, CV_FINISH_STOP);
        /* The reference ends with the end id where the engine may stop
         * first (a complete choice no token extends). */
        int n_cmp = n_want > 0 && want[n_want - 1] == tok_eos_id(c->tok) ? n_want - 1 : n_want;
        int n_got = r.seqs[0].n_ids;
        if (n_got > n_cmp && r.seqs[0].ids[n_got - 1] == tok_eos_id(c->tok)) n_got--;
        assert_int_equal(n_got, n_cmp);
        for (int i = 0; i < n_cmp; i++)
            assert_int_equal(r.seqs[0].ids[i], want[i]);
        check_choice(r.seqs[0].text, text);
        result_free(&r);
        cv_sampling_params_free(&p);
        free(text);
    }
}

/* A free greedy request gives the same tokens alone and in a batch with
 * constrained ones (n > 1, seeds, logprobs); the constrained logprobs are
 * of the masked distribution, so every reported top token is allowed. */
static void test_mixed_batch(void **state)
{
    ctx *c = *state;
    cv_sampling_params free_p;
    cv_sampling_params_default(&free_p);
    free_p.temperature = 0.0f;
    free_p.max_tokens = 24;
    free_p.ignore_eos = true;
    req_result alone;
    run_one(c->engine, &free_p, c->prompt, (int)c->n_prompt, false, &alone);

    cv_sampling_params con;
    sampling(&con, CV_STRUCTURED_REGEX, "[a-z]{2,5}( [a-z]{2,5}){1,3}");
    con.n = 3;
    con.has_seed = true;
    con.seed = 9;
    con.logprobs = 3;
    cv_output_queue *q = cv_output_queue_create();
    req_result res[3];
    memset(res, 0, sizeof(res));
    submit(c->engine, q, &con, c->prompt, (int)c->n_prompt, NULL, false, 0);
    submit(c->engine, q, &free_p, c->prompt, (int)c->n_prompt, NULL, false, 1);
    submit(c->engine, q, &con, c->prompt, (int)c->n_prompt, NULL, true, 2);
    collect(q, res, 3);
    assert_int_equal(res[1].seqs[0].n_ids, alone.seqs[0].n_ids);
    for (int i = 0; i < alone.seqs[0].n_ids; i++)
        assert_int_equal(res[1].seqs[0].ids[i], alone.seqs[0].ids[i]);
    assert_string_equal(res[1].seqs[0].text, alone.seqs[0].text);
    regex_case rc = {"", "[a-z]{2,5}( [a-z]{2,5}){1,3}"};
    for (int r = 0; r < 3; r += 2)
        for (int k = 0; k < 3; k++) {
            const seq_result *s = &res[r].seqs[k];
            assert_int_equal(s->finish, CV_FINISH_STOP);
            check_regex(s->text, &rc);
            assert_int_equal(s->n_lps, s->n_ids);
            for (int t = 0; t < s->n_lps; t++)
                for (int j = 0; j < s->lps[t].n; j++)
                    assert_true(isfinite(s->lps[t].entries[j].logprob));
        }
    /* Same seed, streamed or not: the same texts. */
    for (int k = 0; k < 3; k++)
        assert_string_equal(res[0].seqs[k].text, res[2].seqs[k].text);
    for (int r = 0; r < 3; r++)
        result_free(&res[r]);
    result_free(&alone);
    cv_output_queue_destroy(q);
    cv_sampling_params_free(&con);
}

/* Each way of asking gives the same kind and text. */
static void expect_params(const char *json, cv_structured_kind kind, const char *text)
{
    cv_sampling_params p;
    cv_sampling_params_default(&p);
    cv_error err = {.msg = ""};
    if (cv_sampling_params_from_json(&p, json, strlen(json), &err) < 0)
        fail_msg("%s: %s", json, err.msg);
    assert_int_equal(p.structured_kind, kind);
    assert_string_equal(p.structured_text, text);
    cv_sampling_params copy;
    assert_int_equal(cv_sampling_params_copy(&copy, &p), 0);
    assert_string_equal(copy.structured_text, text);
    cv_sampling_params_free(&copy);
    cv_sampling_params_free(&p);
}

static void test_params(void **state)
{
    (void)state;
    expect_params("{\"structured_outputs\":{\"choice\":[\"a\",\"b\"]}}", CV_STRUCTURED_CHOICE,
                  "[\"a\",\"b\"]");
    expect_params("{\"guided_choice\":[\"a\"]}", CV_STRUCTURED_CHOICE, "[\"a\"]");
    expect_params("{\"structured_outputs\":\"{\\\"regex\\\":\\\"a+\\\"}\"}", CV_STRUCTURED_REGEX,
                  "a+");
    expect_params("{\"guided_regex\":\"a+\"}", CV_STRUCTURED_REGEX, "a+");
    expect_params("{\"structured_outputs\":{\"json\":{\"type\":\"integer\"},"
                  "\"disable_any_whitespace\":true}}",
                  CV_STRUCTURED_JSON, "{\"type\":\"integer\"}");
    expect_params("{\"guided_json\":\"{\\\"type\\\": \\\"integer\\\"}\"}", CV_STRUCTURED_JSON,
                  "{\"type\": \"integer\"}");
    expect_params("{\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":"
                  "\"n\",\"schema\":{\"type\":\"null\"}}}}",
                  CV_STRUCTURED_JSON, "{\"type\":\"null\"}");
    expect_params("{\"structured_outputs\":{\"json_object\":true}}", CV_STRUCTURED_JSON_OBJECT, "");
    expect_params("{\"response_format\":{\"type\":\"json_object\"}}", CV_STRUCTURED_JSON_OBJECT,
                  "");
}

/* Stop strings still cut a constrained output (vLLM applies them to the
 * text as usual); min_tokens holds back the end id, not the constraint's
 * own stop; max_tokens may cut it short with finish "length". */
static void test_with_stops(void **state)
{
    ctx *c = *state;
    cv_sampling_params p;
    sampling(&p, CV_STRUCTURED_REGEX, "[a-z]{2,5}( [a-z]{2,5}){1,3}");
    p.has_seed = true;
    p.seed = 4;
    p.n_stop = 1;
    p.stop = calloc(1, sizeof(char *));
    p.stop[0] = strdup(" ");
    req_result r;
    run_one(c->engine, &p, c->prompt, (int)c->n_prompt, false, &r);
    assert_int_equal(r.seqs[0].finish, CV_FINISH_STOP);
    regex_case word = {"", "[a-z]{2,5}"};
    check_regex(r.seqs[0].text, &word);
    result_free(&r);
    cv_sampling_params_free(&p);

    sampling(&p, CV_STRUCTURED_CHOICE, "[\"yes\",\"no\"]");
    p.min_tokens = 3;
    p.has_seed = true;
    run_one(c->engine, &p, c->prompt, (int)c->n_prompt, false, &r);
    assert_int_equal(r.seqs[0].finish, CV_FINISH_STOP);
    check_choice(r.seqs[0].text, "[\"yes\",\"no\"]");
    result_free(&r);
    cv_sampling_params_free(&p);

    sampling(&p, CV_STRUCTURED_REGEX, "[a-z]{40}");
    p.max_tokens = 3;
    run_one(c->engine, &p, c->prompt, (int)c->n_prompt, false, &r);
    assert_int_equal(r.seqs[0].finish, CV_FINISH_LENGTH);
    assert_int_equal(r.seqs[0].n_ids, 3);
    regex_case prefix = {"", "[a-z]{3,39}"};
    check_regex(r.seqs[0].text, &prefix);
    result_free(&r);
    cv_sampling_params_free(&p);
}

/* ---- The automaton alone ------------------------------------------------ */

static bool matches(so_grammar *g, const char *s)
{
    so_state st = so_advance_bytes(g, so_start(g), s, strlen(s));
    return st != SO_DEAD && so_accepting(g, st);
}

static void test_automaton(void **state)
{
    ctx *c = *state;
    int32_t eos = tok_eos_id(c->tok);
    cv_error err;
    so_vocab *v = so_vocab_create(c->tok, &eos, 1, &err);
    assert_non_null(v);
    so_cache *cache = so_cache_create(v);
    so_grammar *g = so_cache_get(cache, SO_REGEX, "a(b|c)*d{2}[^x]\\.", &err);
    assert_non_null(g);
    assert_ptr_equal(so_cache_get(cache, SO_REGEX, "a(b|c)*d{2}[^x]\\.", &err), g);
    assert_true(matches(g, "abcbdd..") && matches(g, "add\xc3\xa9.") && matches(g, "addy."));
    assert_false(matches(g, "addx.") || matches(g, "abd.") || matches(g, "add\xc3."));
    /* The mask allows exactly the tokens whose bytes keep a match alive. */
    so_state st = so_advance_bytes(g, so_start(g), "ab", 2);
    const uint32_t *mask = so_mask(g, st);
    for (int32_t t = 0; t < so_vocab_size(v); t++) {
        int nb = 0;
        const uint8_t *b = so_vocab_bytes(v, t, &nb);
        bool want = b && so_advance_bytes(g, st, (const char *)b, (size_t)nb) != SO_DEAD;
        assert_int_equal(!!(mask[t >> 5] >> (t & 31) & 1u), want);
    }
    so_grammar *j = so_cache_get(cache, SO_JSON_OBJECT, "", &err);
    assert_true(matches(j, "{\"a\": [1, 2.5e3, \"x\\n\", {\"b\": null}]}") && matches(j, "-0"));
    assert_false(matches(j, "{\"a\":1,}") || matches(j, "[1 2]") || matches(j, "01"));
    st = so_advance_bytes(j, so_start(j), "true", 4);
    assert_true(so_done(j, st) && so_accepting(j, st));
    mask = so_mask(j, st);
    assert_true(mask[eos >> 5] >> (eos & 31) & 1u);
    so_cache_free(cache);
    so_vocab_free(v);
}

/* ---- Bad constraints ------------------------------------------------------ */

static void expect_params_error(const char *json, const char *want_prefix)
{
    cv_sampling_params p;
    cv_sampling_params_default(&p);
    cv_error err = {.msg = ""};
    assert_int_equal(cv_sampling_params_from_json(&p, json, strlen(json), &err), -1);
    if (strncmp(err.msg, want_prefix, strlen(want_prefix)))
        fail_msg("%s: got '%s', want '%s...'", json, err.msg, want_prefix);
    cv_sampling_params_free(&p);
}

static void expect_add_error(ctx *c, const char *json, const char *want)
{
    cv_sampling_params p;
    cv_sampling_params_default(&p);
    cv_error err = {.msg = ""};
    assert_int_equal(cv_sampling_params_from_json(&p, json, strlen(json), &err), 0);
    cv_output_queue *q = cv_output_queue_create();
    cv_request_desc d = {.prompt = "x", .prompt_len = 1, .params = &p, .sink = q};
    assert_true(cv_engine_add_request(c->engine, &d, &err) == 0);
    assert_int_equal(err.cls, CV_ERR_INVALID);
    if (strcmp(err.msg, want)) fail_msg("%s: got '%s', want '%s'", json, err.msg, want);
    cv_output_queue_destroy(q);
    cv_sampling_params_free(&p);
}

static void test_bad_constraints(void **state)
{
    ctx *c = *state;
    expect_params_error("{\"structured_outputs\":{\"regex\":\"a\",\"choice\":[\"a\"]}}",
                        "You can only use one kind of structured outputs constraint but multiple "
                        "are specified: ");
    expect_params_error("{\"structured_outputs\":{}}",
                        "You must use one kind of structured outputs constraint but none are "
                        "specified: ");
    expect_params_error(
        "{\"structured_outputs\":{\"structural_tag\":\"x\"}}",
        "structured_outputs 'structural_tag' is not supported yet (supported: json, "
        "regex, choice, grammar, json_object)");
    expect_params_error("{\"structured_outputs\":{\"grammar\":[]}}",
                        "structured_outputs 'grammar' must be a string");
    expect_params_error("{\"guided_regex\":\"a\",\"guided_choice\":[\"a\"]}",
                        "You can only use one kind of guided decoding (`guided_json`, "
                        "`guided_regex` or `guided_choice`).");
    expect_params_error("{\"guided_choice\":\"a\"}",
                        "guided_choice must be a non-empty list of strings");
    expect_add_error(
        c, "{\"guided_grammar\":\"x\"}",
        "structured_outputs 'grammar': grammar line 1: expected a rule 'name ::= ...'");
    expect_add_error(c,
                     "{\"structured_outputs\":{\"grammar\":\"root ::= a\\na ::= \\\"x\\\" a?\"}}",
                     "structured_outputs 'grammar': grammar line 2: rule 'a' is recursive other "
                     "than as the first or last item of its own alternatives; only regular "
                     "grammars are supported");
    expect_params_error("{\"structured_outputs\":{\"regex\":5}}",
                        "structured_outputs 'regex' must be a string");
    expect_params_error("{\"structured_outputs\":{\"regexp\":\"a\"}}",
                        "unknown structured_outputs field 'regexp'");
    expect_params_error("{\"structured_outputs\":{\"regex\":\"a\"},\"guided_json\":{}}",
                        "You can only use one kind of structured outputs constraint but multiple "
                        "are specified: structured_outputs and guided_json");
    expect_params_error("{\"structured_outputs\":{\"json\":\"x\",\"whitespace_pattern\":\" \"}}",
                        "structured_outputs 'whitespace_pattern' is not supported");

    expect_params_error("{\"response_format\":{\"type\":\"yaml\"}}",
                        "response_format type 'yaml' is not supported (text, json_object, "
                        "json_schema)");
    expect_params_error("{\"response_format\":{\"type\":\"json_schema\"}}",
                        "response_format 'json_schema' must carry a 'schema' object");
    expect_params_error("{\"response_format\":{\"type\":\"json_object\"},\"guided_regex\":\"a\"}",
                        "You can only use one kind of guided decoding");

    expect_add_error(c, "{\"structured_outputs\":{\"regex\":\"(ab\"}}",
                     "structured_outputs 'regex': invalid regex at position 3: missing )");
    expect_add_error(c, "{\"guided_regex\":\"a{3,2}\"}",
                     "structured_outputs 'regex': invalid regex at position 6: bad repeat count "
                     "(at most 1000, min <= max)");
    expect_add_error(c, "{\"guided_regex\":\"(a)\\\\1\"}",
                     "structured_outputs 'regex': invalid regex at position 4: backreferences "
                     "are not supported");
    expect_add_error(
        c, "{\"structured_outputs\":{\"json\":{\"type\":\"array\",\"uniqueItems\":true}}}",
        "structured_outputs 'json': JSON schema keyword 'uniqueItems' is not supported");
    expect_add_error(
        c, "{\"structured_outputs\":{\"json\":{\"type\":\"string\",\"pattern\":\"(a\"}}}",
        "structured_outputs 'json': JSON schema 'pattern': invalid regex at position 2: "
        "missing )");
    expect_add_error(c, "{\"guided_json\":{\"$ref\":\"#/$defs/a\"}}",
                     "structured_outputs 'json': JSON schema '$ref' #/$defs/a is not supported "
                     "(only #/$defs/NAME and #/definitions/NAME that exist)");
    expect_add_error(c,
                     "{\"guided_json\":{\"$defs\":{\"t\":{\"type\":\"array\",\"items\":{\"$ref\":"
                     "\"#/$defs/t\"}}},\"$ref\":\"#/$defs/t\"}}",
                     "structured_outputs 'json': JSON schema is nested deeper than 32 levels");
    expect_add_error(c,
                     "{\"guided_json\":{\"$defs\":{\"t\":{\"type\":\"object\",\"properties\":{"
                     "\"a\":{\"$ref\":\"#/$defs/t\"},\"b\":{\"$ref\":\"#/$defs/t\"}}}},"
                     "\"$ref\":\"#/$defs/t\"}}",
                     "structured_outputs 'json': JSON schema is nested deeper than 32 levels");
    expect_add_error(c, "{\"structured_outputs\":{\"json\":{\"type\":\"date\"}}}",
                     "structured_outputs 'json': JSON schema type 'date' is not supported");
    expect_add_error(c, "{\"structured_outputs\":{\"json\":\"{\\\"type\\\":\"}}",
                     "structured_outputs 'json': JSON schema is not valid JSON: unexpected token "
                     "near end of file (line 1, column 8)");
}

/* The same schemas, regexes and grammars on stories260K (../shared): a
 * 512-token vocabulary, so outputs are spelled in many small tokens. */
static void test_stories260k(void **state)
{
    (void)state;
    if (!cv_test_have_shared("models/stories260K")) return;
    char dir[4096];
    shared_path(dir, sizeof(dir), "models/stories260K");
    ctx *c = open_ctx(dir);
    for (int greedy = 0; greedy < 2; greedy++) {
        c->greedy = greedy;
        int n = greedy ? 1 : 2;
        for (size_t i = 0; i < sizeof(schemas) / sizeof(schemas[0]); i++)
            sample_many(c, CV_STRUCTURED_JSON, schemas[i], n, n, 2000 + 10 * i, check_schema,
                        schemas[i]);
        for (size_t i = 0; i < sizeof(regexes) / sizeof(regexes[0]); i++)
            sample_many(c, CV_STRUCTURED_REGEX, regexes[i].ours, n, n, 2500 + 10 * i, check_regex,
                        &regexes[i]);
        for (size_t i = 0; i < sizeof(grammars) / sizeof(grammars[0]); i++)
            sample_many(c, CV_STRUCTURED_GRAMMAR, grammars[i].ours, n, n, 2700 + 10 * i,
                        check_regex, &grammars[i]);
    }
    close_ctx(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_params),          cmocka_unit_test(test_automaton),
        cmocka_unit_test(test_bad_constraints), cmocka_unit_test(test_choices),
        cmocka_unit_test(test_greedy_choice),   cmocka_unit_test(test_regexes),
        cmocka_unit_test(test_grammars),        cmocka_unit_test(test_json_schemas),
        cmocka_unit_test(test_json_object),     cmocka_unit_test(test_mixed_batch),
        cmocka_unit_test(test_with_stops),      cmocka_unit_test(test_greedy_schemas),
        cmocka_unit_test(test_stories260k),
    };
    int failed = cmocka_run_group_tests(tests, setup, teardown);
    return cv_test_exit(failed);
}

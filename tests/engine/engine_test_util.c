/* Test helpers (see engine_test_util.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "engine_test_util.h"

void shared_path(char *buf, size_t size, const char *rel)
{
    const char *s = getenv("CVLLM_SHARED");
    snprintf(buf, size, "%s/%s", s ? s : "../shared", rel);
}

void source_path(char *buf, size_t size, const char *rel)
{
    const char *s = getenv("CVLLM_SOURCE_DIR");
    snprintf(buf, size, "%s/%s", s ? s : ".", rel);
}

void test_args(cv_engine_args *a, const char *model_dir)
{
    cv_engine_args_default(a);
    snprintf(a->model, sizeof(a->model), "%s", model_dir);
    /* The CPU backend on every machine: the expected values are its
     * numerics (tests/gpu runs the engine on a GPU). */
    snprintf(a->device, sizeof(a->device), "cpu");
    a->n_threads = 1;
    a->kv_blocks = 256;
    /* The *_async variants of the engine tests (tests/engine/CMakeLists.txt). */
    const char *async = getenv("CVLLM_TEST_ASYNC_SCHEDULING");
    a->async_scheduling = async && !strcmp(async, "1");
}

cv_engine *test_engine(const cv_engine_args *a)
{
    cv_error err;
    cv_engine *e = cv_engine_create(a, &err);
    if (!e) fail_msg("cv_engine_create: %s", err.msg);
    return e;
}

uint64_t submit(cv_engine *e, cv_output_queue *q, const cv_sampling_params *p, const int32_t *ids,
                int n_ids, const char *text, bool stream, int slot)
{
    cv_request_desc d = {
        .prompt = text,
        .prompt_len = text ? strlen(text) : 0,
        .prompt_ids = ids,
        .n_prompt_ids = (size_t)n_ids,
        .params = p,
        .stream = stream,
        .sink = q,
        .user_data = (void *)(intptr_t)slot,
    };
    cv_error err;
    uint64_t id = cv_engine_add_request(e, &d, &err);
    if (id == 0) fail_msg("cv_engine_add_request: %s", err.msg);
    return id;
}

static void merge_seq(seq_result *r, cv_seq_output *o)
{
    r->index = o->index;
    r->ids = realloc(r->ids, (size_t)(r->n_ids + o->n_tokens + 1) * sizeof(int32_t));
    assert_non_null(r->ids);
    memcpy(r->ids + r->n_ids, o->token_ids, (size_t)o->n_tokens * sizeof(int32_t));
    r->text = realloc(r->text, r->text_len + o->text_len + 1);
    assert_non_null(r->text);
    memcpy(r->text + r->text_len, o->text, o->text_len);
    r->text_len += o->text_len;
    r->text[r->text_len] = '\0';
    if (o->logprobs) {
        r->lps = realloc(r->lps, (size_t)(r->n_lps + o->n_tokens) * sizeof(cv_token_logprobs));
        assert_non_null(r->lps);
        memcpy(r->lps + r->n_lps, o->logprobs, (size_t)o->n_tokens * sizeof(cv_token_logprobs));
        r->n_lps += o->n_tokens;
        free(o->logprobs);
        o->logprobs = NULL;
    }
    r->n_ids += o->n_tokens;
    r->finish = o->finish_reason;
    r->cum_logprob = o->cumulative_logprob;
    assert_int_equal(o->n_output_tokens_total, r->n_ids);
}

bool collect_next(cv_output_queue *q, req_result *res)
{
    cv_request_output *o = cv_output_queue_wait(q, 60000);
    if (!o) fail_msg("no output within 60 s");
    return merge_output(o, res);
}

bool merge_output(cv_request_output *o, req_result *res)
{
    req_result *r = &res[(intptr_t)o->user_data];
    r->id = o->request_id;
    r->n_outputs++;
    if (r->n_finals > 0) r->output_after_final = true;
    r->n_prompt = o->n_prompt_tokens;
    if (o->error && !r->error) r->error = strdup(o->error);
    assert_true(o->n_seqs <= RESULT_MAX_SEQS);
    if (o->n_seqs > r->n_seqs) r->n_seqs = o->n_seqs;
    for (int k = 0; k < o->n_seqs; k++)
        merge_seq(&r->seqs[k], &o->seqs[k]);
    if (o->prompt_logprobs) {
        r->prompt_lps = o->prompt_logprobs;
        o->prompt_logprobs = NULL;
    }
    bool final = o->finished;
    if (final) r->n_finals++;
    cv_request_output_free(o);
    return final;
}

void collect(cv_output_queue *q, req_result *res, int n_final)
{
    for (int got = 0; got < n_final;)
        got += collect_next(q, res);
}

static void free_lps(cv_token_logprobs *lp, int n)
{
    for (int i = 0; lp && i < n; i++) {
        for (int j = 0; j < lp[i].n; j++)
            free(lp[i].entries[j].decoded_token);
        free(lp[i].entries);
    }
    free(lp);
}

void result_free(req_result *r)
{
    for (int k = 0; k < RESULT_MAX_SEQS; k++) {
        free(r->seqs[k].ids);
        free(r->seqs[k].text);
        free_lps(r->seqs[k].lps, r->seqs[k].n_lps);
    }
    free_lps(r->prompt_lps, r->n_prompt);
    free(r->error);
    memset(r, 0, sizeof(*r));
}

void run_one(cv_engine *e, const cv_sampling_params *p, const int32_t *ids, int n_ids, bool stream,
             req_result *out)
{
    cv_output_queue *q = cv_output_queue_create();
    memset(out, 0, sizeof(*out));
    submit(e, q, p, ids, n_ids, NULL, stream, 0);
    collect(q, out, 1);
    cv_output_queue_destroy(q);
}

/* ---- Reference path ----------------------------------------------------- */

enum { REF_BLOCK = 16, REF_MAX_TOKENS = 1024 };

void ref_open(ref_model *r, const char *dir)
{
    cv_error err;
    r->model = cv_model_load(dir, &err);
    if (!r->model) fail_msg("cv_model_load: %s", err.msg);
    r->backend = cv_backend_cpu_create(r->model, 1, &err);
    if (!r->backend ||
        cv_backend_kv_alloc(r->backend, REF_MAX_TOKENS / REF_BLOCK, REF_BLOCK, &err) < 0)
        fail_msg("backend: %s", err.msg);
    r->vocab = cv_model_get_config(r->model)->vocab_size;
}

void ref_close(ref_model *r)
{
    cv_backend_destroy(r->backend);
    cv_model_free(r->model);
}

void ref_logits(ref_model *r, const int32_t *ids, int n, float *logits)
{
    assert_true(n <= REF_MAX_TOKENS);
    int32_t pos[REF_MAX_TOKENS], idx[REF_MAX_TOKENS], table[REF_MAX_TOKENS / REF_BLOCK];
    int64_t slots[REF_MAX_TOKENS];
    for (int i = 0; i < n; i++) {
        pos[i] = i;
        idx[i] = i;
        slots[i] = i;
    }
    for (int b = 0; b < REF_MAX_TOKENS / REF_BLOCK; b++)
        table[b] = b;
    int32_t qs[2] = {0, n}, lens[1] = {n};
    cv_batch batch = {
        .n_tokens = n,
        .token_ids = ids,
        .positions = pos,
        .slot_mapping = slots,
        .n_seqs = 1,
        .query_start = qs,
        .seq_lens = lens,
        .block_tables = table,
        .max_blocks_per_seq = REF_MAX_TOKENS / REF_BLOCK,
        .n_logits = n,
        .logits_indices = idx,
    };
    cv_error err;
    if (cv_backend_forward(r->backend, &batch, logits, &err) < 0) fail_msg("forward: %s", err.msg);
}

void ref_greedy(ref_model *r, const int32_t *prompt, int n_prompt, int n_out, const int32_t *mask,
                int n_mask, int min_tokens, int32_t *out)
{
    int32_t *ids = malloc((size_t)(n_prompt + n_out) * sizeof(int32_t));
    float *logits = malloc((size_t)(n_prompt + n_out) * (size_t)r->vocab * sizeof(float));
    assert_non_null(ids);
    assert_non_null(logits);
    memcpy(ids, prompt, (size_t)n_prompt * sizeof(int32_t));
    for (int k = 0; k < n_out; k++) {
        int n = n_prompt + k;
        ref_logits(r, ids, n, logits);
        float *last = logits + (size_t)(n - 1) * r->vocab;
        if (k < min_tokens)
            for (int j = 0; j < n_mask; j++)
                last[mask[j]] = -1e30f;
        int best = 0;
        for (int v = 1; v < r->vocab; v++)
            if (last[v] > last[best]) best = v;
        ids[n] = best;
        out[k] = best;
    }
    free(ids);
    free(logits);
}

void load_stories_case(int i, greedy_case *c)
{
    char path[4096];
    source_path(path, sizeof(path), "tests/fixtures/stories260K_greedy.json");
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) fail_msg("%s: %s", path, je.text);
    json_t *cs = json_array_get(json_object_get(root, "cases"), (size_t)i);
    assert_non_null(cs);
    memset(c, 0, sizeof(*c));
    json_t *in = json_object_get(cs, "input_ids"), *outs = json_object_get(cs, "output_ids");
    for (size_t k = 0; k < json_array_size(in); k++)
        c->input[c->n_input++] = (int32_t)json_integer_value(json_array_get(in, k));
    for (size_t k = 0; k < json_array_size(outs); k++)
        c->output[c->n_output++] = (int32_t)json_integer_value(json_array_get(outs, k));
    snprintf(c->text, sizeof(c->text), "%s",
             json_string_value(json_object_get(cs, "text_incremental")));
    json_decref(root);
}

void expect_stories_case(cv_engine *e, int i, bool stream)
{
    greedy_case c;
    load_stories_case(i, &c);
    cv_sampling_params p;
    cv_sampling_params_default(&p);
    p.temperature = 0;
    p.max_tokens = c.n_output;
    req_result r;
    run_one(e, &p, c.input, c.n_input, stream, &r);
    assert_null(r.error);
    assert_int_equal(r.n_finals, 1);
    assert_int_equal(r.seqs[0].n_ids, c.n_output);
    assert_memory_equal(r.seqs[0].ids, c.output, (size_t)c.n_output * sizeof(int32_t));
    assert_string_equal(r.seqs[0].text, c.text);
    assert_int_equal(r.seqs[0].finish, CV_FINISH_LENGTH);
    assert_int_equal(r.n_prompt, c.n_input);
    if (stream) assert_true(r.n_outputs > 1);
    result_free(&r);
}

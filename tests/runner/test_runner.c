/* The runner on the CPU backend with the shipped model
 * (samples/models/cvllm-kjv-4m): one sequence decoded greedily step by
 * step, its next input a placeholder the runner fills from the step
 * before, must choose the tokens the same steps choose with the inputs
 * written in; with the worker thread, the step after is submitted before
 * the one before is waited for. Misuse is refused with a message naming
 * it: a third outstanding step, waiting out of order, KV operations and
 * reserving LoRA slots while a step is outstanding, a placeholder fed by a
 * row the runner did not choose (and every step after a failed one). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "runner/runner.h"

enum { BLOCK = 16, N_BLOCKS = 8, PROMPT = 4, N_DECODE = 6, MAX_TOP = CV_SAMPLE_MAX_TOP };

static const int32_t prompt[PROMPT] = {1, 45, 311, 72};

/* One sequence's step: tokens [start, start + n) of it, one logits row
 * for its last token, chosen as `want`. */
typedef struct one_step {
    cv_step step;
    int32_t tokens[PROMPT], positions[PROMPT], query_start[2], seq_len, table[N_BLOCKS], row;
    int64_t slots[PROMPT];
    uint8_t want;
    int32_t *fill_at[1], fill_row[1];
    float *logits;
    int32_t token, rank, top_ids[MAX_TOP];
    float logprob, top_logprobs[MAX_TOP];
} one_step;

static void fixture_path(char *buf, size_t size)
{
    const char *s = getenv("CVLLM_SOURCE_DIR");
    snprintf(buf, size, "%s/samples/models/cvllm-kjv-4m", s ? s : ".");
}

/* ids (n of them, from position start); placeholder: the last one is the
 * previous step's row 0. */
static void make_step(one_step *s, int vocab, const int32_t *ids, int start, int n,
                      bool placeholder, uint8_t want)
{
    float *logits = s->logits ? s->logits : malloc((size_t)vocab * sizeof(float));
    memset(s, 0, sizeof *s);
    s->logits = logits;
    for (int i = 0; i < n; i++) {
        s->tokens[i] = ids[i];
        s->positions[i] = start + i;
        s->slots[i] = start + i; /* block 0 onwards: the table is the identity */
    }
    for (int b = 0; b < N_BLOCKS; b++)
        s->table[b] = b;
    s->query_start[1] = n;
    s->seq_len = start + n;
    s->row = n - 1;
    s->want = want;
    s->step = (cv_step){
        .batch = {.n_tokens = n,
                  .token_ids = s->tokens,
                  .positions = s->positions,
                  .slot_mapping = s->slots,
                  .n_seqs = 1,
                  .query_start = s->query_start,
                  .seq_lens = &s->seq_len,
                  .block_tables = s->table,
                  .max_blocks_per_seq = N_BLOCKS,
                  .n_logits = 1,
                  .logits_indices = &s->row},
        .want = &s->want,
        .logits = s->logits,
        .token = &s->token,
        .logprob = &s->logprob,
        .rank = &s->rank,
        .top_ids = s->top_ids,
        .top_logprobs = s->top_logprobs,
    };
    if (placeholder) {
        s->tokens[n - 1] = -1; /* must be overwritten */
        s->fill_at[0] = &s->tokens[n - 1];
        s->fill_row[0] = 0;
        s->step.n_fill = 1;
        s->step.fill_at = s->fill_at;
        s->step.fill_row = s->fill_row;
    }
}

static cv_runner *open_runner(cv_model **model, bool overlap)
{
    char dir[4096];
    fixture_path(dir, sizeof dir);
    cv_error err = {0};
    *model = cv_model_load(dir, &err);
    if (!*model) fail_msg("cv_model_load: %s", err.msg);
    const cv_runner_options o = {
        .device = {.device = "cpu",
                   .matrix_dtype = cv_model_get_config(*model)->dtype,
                   .n_threads = 1,
                   .kv_dtype = -1},
        .n_samplers = 1,
        .overlap = overlap,
    };
    cv_runner *r = cv_runner_create(*model, &o, &err);
    if (!r) fail_msg("cv_runner_create: %s", err.msg);
    if (cv_runner_kv_alloc(r, N_BLOCKS, BLOCK, &err) < 0) fail_msg("kv_alloc: %s", err.msg);
    return r;
}

/* The prompt's prefill, then N_DECODE decode steps; with placeholders
 * each decode's input is filled by the runner (and, overlapping, the step
 * is submitted before the one before it is waited for), else written in. */
static void decode(bool overlap, bool placeholders, int32_t *out)
{
    cv_model *model;
    cv_runner *r = open_runner(&model, overlap);
    const int vocab = cv_model_get_config(model)->vocab_size;
    one_step steps[2] = {0};
    cv_error err = {0};
    make_step(&steps[0], vocab, prompt, 0, PROMPT, false, CV_ROW_GREEDY);
    assert_int_equal(cv_runner_submit(r, &steps[0].step, &err), 0);
    for (int k = 0; k < N_DECODE; k++) {
        one_step *done = &steps[k % 2], *next = &steps[(k + 1) % 2];
        if (placeholders && overlap) {
            make_step(next, vocab, &(int32_t){0}, PROMPT + k, 1, true, CV_ROW_GREEDY);
            assert_int_equal(cv_runner_submit(r, &next->step, &err), 0);
            assert_int_equal(cv_runner_outstanding(r), 2);
            if (cv_runner_wait(r, &done->step, &err) < 0) fail_msg("wait: %s", err.msg);
            out[k] = done->token;
        } else {
            if (cv_runner_wait(r, &done->step, &err) < 0) fail_msg("wait: %s", err.msg);
            out[k] = done->token;
            make_step(next, vocab, &out[k], PROMPT + k, 1, placeholders, CV_ROW_GREEDY);
            assert_int_equal(cv_runner_submit(r, &next->step, &err), 0);
        }
    }
    if (cv_runner_wait(r, &steps[N_DECODE % 2].step, &err) < 0) fail_msg("wait: %s", err.msg);
    assert_int_equal(cv_runner_outstanding(r), 0);
    free(steps[0].logits);
    free(steps[1].logits);
    cv_runner_destroy(r);
    cv_model_free(model);
}

static void test_placeholders_match_written_inputs(void **state)
{
    (void)state;
    int32_t written[N_DECODE], filled[N_DECODE], overlapped[N_DECODE];
    decode(false, false, written);
    decode(false, true, filled);
    decode(true, true, overlapped);
    assert_memory_equal(filled, written, sizeof written);
    assert_memory_equal(overlapped, written, sizeof written);
    /* A real continuation, not one token repeated. */
    bool varied = false;
    for (int k = 1; k < N_DECODE; k++)
        varied |= written[k] != written[0];
    assert_true(varied);
}

static void test_refusals(void **state)
{
    (void)state;
    cv_model *model;
    cv_runner *r = open_runner(&model, true);
    const int vocab = cv_model_get_config(model)->vocab_size;
    one_step a = {0}, b = {0}, c = {0};
    cv_error err = {0};
    /* The prefill's row comes back as logits: nothing to feed a placeholder. */
    make_step(&a, vocab, prompt, 0, PROMPT, false, CV_ROW_LOGITS);
    make_step(&b, vocab, &(int32_t){0}, PROMPT, 1, true, CV_ROW_GREEDY);
    make_step(&c, vocab, &(int32_t){0}, PROMPT + 1, 1, false, CV_ROW_GREEDY);
    assert_int_equal(cv_runner_submit(r, &a.step, &err), 0);
    assert_int_equal(cv_runner_submit(r, &b.step, &err), 0);
    assert_int_equal(cv_runner_submit(r, &c.step, &err), -1);
    assert_string_equal(err.msg, "runner: two steps are outstanding already");
    assert_int_equal(cv_runner_wait(r, &b.step, &err), -1);
    assert_string_equal(err.msg, "runner: the step waited for is not the oldest outstanding one");
    const int32_t src = 0, dst = 1;
    assert_int_equal(cv_runner_kv_copy(r, &src, &dst, 1, &err), -1);
    assert_string_equal(err.msg, "runner: copying KV blocks while a step is outstanding");
    assert_int_equal(cv_runner_lora_init(r, 1, 8, &err), -1);
    assert_string_equal(err.msg, "runner: reserving LoRA slots while a step is outstanding");
    assert_int_equal(cv_runner_wait(r, &a.step, &err), 0);
    assert_int_equal(cv_runner_wait(r, &b.step, &err), -1);
    assert_string_equal(err.msg, "runner: placeholder 0 of the step waits for row 0 of the "
                                 "previous step, which chose no token there");
    /* A failed step fails every one after it with its error. */
    assert_int_equal(cv_runner_submit(r, &c.step, &err), 0);
    memset(&err, 0, sizeof err);
    assert_int_equal(cv_runner_wait(r, &c.step, &err), -1);
    assert_string_equal(err.msg, "runner: placeholder 0 of the step waits for row 0 of the "
                                 "previous step, which chose no token there");
    assert_int_equal(cv_runner_wait(r, &c.step, &err), -1);
    assert_string_equal(err.msg, "runner: the step waited for is not the oldest outstanding one");
    free(a.logits);
    free(b.logits);
    free(c.logits);
    cv_runner_destroy(r);
    cv_model_free(model);
}

/* A first step with no logits row (a prompt's first chunk) runs, and
 * leaves nothing for a placeholder of the next. */
static void test_step_without_rows(void **state)
{
    (void)state;
    cv_model *model;
    cv_runner *r = open_runner(&model, true);
    const int vocab = cv_model_get_config(model)->vocab_size;
    one_step a = {0}, b = {0};
    cv_error err = {0};
    make_step(&a, vocab, prompt, 0, 2, false, CV_ROW_GREEDY);
    a.step.batch.n_logits = 0;
    make_step(&b, vocab, &(int32_t){0}, 2, 1, true, CV_ROW_GREEDY);
    assert_int_equal(cv_runner_submit(r, &a.step, &err), 0);
    assert_int_equal(cv_runner_submit(r, &b.step, &err), 0);
    assert_int_equal(cv_runner_wait(r, &a.step, &err), 0);
    assert_int_equal(cv_runner_wait(r, &b.step, &err), -1);
    assert_string_equal(err.msg, "runner: placeholder 0 of the step waits for row 0 of the "
                                 "previous step, which chose no token there");
    free(a.logits);
    free(b.logits);
    cv_runner_destroy(r);
    cv_model_free(model);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_placeholders_match_written_inputs),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_step_without_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

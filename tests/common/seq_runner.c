/* See seq_runner.h. */
#include "seq_runner.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hf_fixture.h"

static int cpu_kv_alloc(void *bk, int n_blocks, int block_size, cv_error *err)
{
    return cv_backend_kv_alloc(bk, n_blocks, block_size, err);
}

static int cpu_forward(void *bk, const cv_batch *batch, float *logits, cv_error *err)
{
    return cv_backend_forward(bk, batch, logits, err);
}

const runner_ops runner_cpu_ops = {cpu_kv_alloc, cpu_forward};

int runner_init(runner *r, const runner_ops *ops, void *bk, int block_size, int n_seqs,
                cv_error *err)
{
    r->ops = ops;
    r->bk = bk;
    r->block_size = block_size;
    r->n_blocks = RUNNER_MAX_SEQS * RUNNER_MAX_BLOCKS;
    r->n_seqs = n_seqs;
    for (int i = 0; i < n_seqs; i++) {
        r->seqs[i].n_done = 0;
        for (int j = 0; j < RUNNER_MAX_BLOCKS; j++)
            r->seqs[i].table[j] = r->n_blocks - 1 - (i * RUNNER_MAX_BLOCKS + j);
    }
    return ops->kv_alloc(bk, r->n_blocks, block_size, err);
}

int runner_step(runner *r, const int *chunk, float *logits, cv_error *err)
{
    enum { MAX_TOKENS = 1024 };
    static int32_t ids[MAX_TOKENS], pos[MAX_TOKENS], starts[RUNNER_MAX_SEQS + 1],
        lens[RUNNER_MAX_SEQS], tables[RUNNER_MAX_SEQS * RUNNER_MAX_BLOCKS], idx[MAX_TOKENS];
    static int64_t slots[MAX_TOKENS];
    int n = 0, ns = 0;
    starts[0] = 0;
    for (int i = 0; i < r->n_seqs; i++) {
        runner_seq *s = &r->seqs[i];
        if (chunk[i] <= 0) continue;
        for (int k = 0; k < chunk[i]; k++, n++) {
            int p = s->n_done + k;
            if (n >= MAX_TOKENS || p >= s->n_ids || p / r->block_size >= RUNNER_MAX_BLOCKS)
                return cv_errorf(err, "runner: sequence %d cannot feed token %d", i, p);
            ids[n] = s->ids[p];
            pos[n] = p;
            slots[n] = (int64_t)s->table[p / r->block_size] * r->block_size + p % r->block_size;
            idx[n] = n;
        }
        s->n_done += chunk[i];
        lens[ns] = s->n_done;
        for (int j = 0; j < RUNNER_MAX_BLOCKS; j++)
            tables[ns * RUNNER_MAX_BLOCKS + j] = s->table[j];
        starts[++ns] = n;
    }
    cv_batch b = {
        .n_tokens = n,
        .token_ids = ids,
        .positions = pos,
        .slot_mapping = slots,
        .n_seqs = ns,
        .query_start = starts,
        .seq_lens = lens,
        .block_tables = tables,
        .max_blocks_per_seq = RUNNER_MAX_BLOCKS,
        .n_logits = n,
        .logits_indices = idx,
    };
    if (r->ops->forward(r->bk, &b, logits, err)) return -1;
    return n;
}

void runner_feed_mixed(runner *r, int vocab, float *const got[2])
{
    static const int plan[2][8] = {{3, 1, 1, 1, 1, 0, 0, 0}, {5, 4, 1, 1, 1, 7, 0, 0}};
    const int n_rows = r->seqs[0].n_ids + r->seqs[1].n_ids;
    float *step = malloc((size_t)n_rows * vocab * sizeof(float));
    assert_non_null(step);
    cv_error err = {.msg = ""};
    for (int s = 0; s < 8; s++) {
        int chunk[2], done[2];
        for (int p = 0; p < 2; p++) {
            done[p] = r->seqs[p].n_done;
            chunk[p] = plan[p][s];
        }
        if (chunk[0] + chunk[1] == 0) break;
        if (runner_step(r, chunk, step, &err) < 0) fail_msg("%s", err.msg);
        memcpy(got[0] + (size_t)done[0] * vocab, step, (size_t)chunk[0] * vocab * sizeof(float));
        memcpy(got[1] + (size_t)done[1] * vocab, step + (size_t)chunk[0] * vocab,
               (size_t)chunk[1] * vocab * sizeof(float));
    }
    for (int p = 0; p < 2; p++)
        assert_int_equal(r->seqs[p].n_done, r->seqs[p].n_ids);
    free(step);
}

int runner_greedy_agreement(const runner_ops *ops, void *bk, int block_size,
                            const json_t *input_ids, const json_t *expected, int vocab, float *gap)
{
    enum { MAX_IDS = 512 };
    int32_t ids[MAX_IDS];
    const int n_in = hf_ids_from_json(input_ids, ids, MAX_IDS);
    const int n_out = (int)json_array_size(expected);
    assert_true(n_in + n_out <= MAX_IDS);
    float *logits = malloc((size_t)n_in * vocab * sizeof(float));
    assert_non_null(logits);
    cv_error err = {.msg = ""};
    runner r;
    if (runner_init(&r, ops, bk, block_size, 1, &err)) fail_msg("%s", err.msg);
    r.seqs[0].ids = ids;
    r.seqs[0].n_ids = n_in;
    int chunk[1] = {n_in};
    if (runner_step(&r, chunk, logits, &err) < 0) fail_msg("%s", err.msg);
    const float *last = logits + (size_t)(n_in - 1) * vocab;
    int agree = 0;
    for (; agree < n_out; agree++) {
        const int next = hf_argmax(last, vocab);
        const int want = (int)json_integer_value(json_array_get(expected, (size_t)agree));
        if (next != want) {
            float scale = 0.0f;
            for (int v = 0; v < vocab; v++)
                scale = fabsf(last[v]) > scale ? fabsf(last[v]) : scale;
            const float rel = want >= 0 && want < vocab && scale > 0.0f
                                  ? (last[next] - last[want]) / scale
                                  : INFINITY;
            if (gap) *gap = rel;
            print_message("greedy token %d: got %d, HF %d (HF's %.2e below, relative)\n", agree,
                          next, want, rel);
            break;
        }
        ids[n_in + agree] = next;
        r.seqs[0].n_ids = n_in + agree + 1;
        chunk[0] = 1;
        if (agree + 1 < n_out && runner_step(&r, chunk, logits, &err) < 0) fail_msg("%s", err.msg);
        last = logits;
    }
    free(logits);
    return agree;
}

void runner_check_greedy(const runner_ops *ops, void *bk, int block_size, const json_t *input_ids,
                         const json_t *expected, int vocab)
{
    const int n_out = (int)json_array_size(expected);
    const int agree =
        runner_greedy_agreement(ops, bk, block_size, input_ids, expected, vocab, NULL);
    if (agree != n_out) fail_msg("greedy: %d of %d tokens as HF's", agree, n_out);
}

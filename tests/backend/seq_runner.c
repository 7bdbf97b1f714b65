/* See seq_runner.h. */
#include "seq_runner.h"

int runner_init(runner *r, cv_backend *bk, int block_size, int n_seqs, cv_error *err)
{
    r->bk = bk;
    r->block_size = block_size;
    r->n_blocks = RUNNER_MAX_SEQS * RUNNER_MAX_BLOCKS;
    r->n_seqs = n_seqs;
    for (int i = 0; i < n_seqs; i++) {
        r->seqs[i].n_done = 0;
        for (int j = 0; j < RUNNER_MAX_BLOCKS; j++)
            r->seqs[i].table[j] = r->n_blocks - 1 - (i * RUNNER_MAX_BLOCKS + j);
    }
    return cv_backend_kv_alloc(bk, r->n_blocks, block_size, err);
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
    if (cv_backend_forward(r->bk, &b, logits, err)) return -1;
    return n;
}

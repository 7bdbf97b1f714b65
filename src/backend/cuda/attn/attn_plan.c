/* Host side of a step's attention (contract in attn.h): which kernels run,
 * with which tile height, and the decode work list (partition size and
 * items), decided once per step from the host copies of query_start and
 * seq_lens, so that a layer's attention is one cuda_attn_run call and a
 * graph key is the plan's grid. */
#include "backend/cuda/attn/attn.h"

/* The shortest partition is one tile of the decode kernel. */
enum { MIN_PARTITION = 64 };

static int decode_items(const int32_t *query_start, const int32_t *seq_lens, int n_seqs,
                        int partition)
{
    int n = 0;
    for (int s = 0; s < n_seqs; s++)
        if (query_start[s + 1] - query_start[s] == 1)
            n += (seq_lens[s] + partition - 1) / partition;
    return n;
}

/* Items per kv head that occupy the GPU: four CTAs per SM across the kv
 * heads (a CTA of 4 warps with ~100 KB of shared memory at head_dim 128:
 * two resident per SM, two queued), what the partition is halved for. */
static int decode_grid(int n_kv_heads, int n_sms)
{
    return (4 * n_sms + n_kv_heads - 1) / n_kv_heads;
}

void cuda_attn_plan_make(cuda_attn_plan *plan, const int32_t *query_start, const int32_t *seq_lens,
                         int n_seqs, int n_heads, int n_kv_heads, int head_dim, int n_sms,
                         int partition, int fixed_grid)
{
    int n_decode = 0, n_prefill = 0, prefill_tokens = 0, max_len = 1;
    for (int s = 0; s < n_seqs; s++) {
        const int qlen = query_start[s + 1] - query_start[s];
        if (qlen == 1) {
            n_decode++;
            max_len = seq_lens[s] > max_len ? seq_lens[s] : max_len;
        } else {
            n_prefill++;
            prefill_tokens += qlen;
        }
    }
    plan->has_prefill = n_prefill > 0;
    plan->has_decode = n_decode > 0;
    /* 128-row tiles halve the K/V reads per mma but waste rows on short
     * chunks and halve the CTA count: only when the chunks average >= 96
     * tokens and the grid still gives every SM two CTAs. */
    plan->tile_rows = 64;
    if (n_prefill > 0 && prefill_tokens >= 96 * n_prefill &&
        (long)(prefill_tokens / 128) * n_heads >= 2L * n_sms)
        plan->tile_rows = 128;
    plan->max_seq_len = max_len;
    const int want = decode_grid(n_kv_heads, n_sms);
    int p = partition > 0 ? partition : CUDA_ATTN_MAX_PARTITION;
    int items = decode_items(query_start, seq_lens, n_seqs, p);
    if (fixed_grid) {
        /* A graph's grid cannot follow the items: it is the CTAs the
         * occupancy target asks for, or one per sequence when there are
         * more, and the partition the smallest that still gives every CTA
         * at most one item (a CTA past the items exits at once; with
         * contexts past 2048 keys a CTA takes every grid_x-th item). */
        plan->grid_x = n_decode > want ? n_decode : want;
        while (partition <= 0 && p > MIN_PARTITION) {
            const int finer = decode_items(query_start, seq_lens, n_seqs, p / 2);
            if (finer > plan->grid_x) break;
            p /= 2;
            items = finer;
        }
    } else {
        /* Eager: halved until the items reach the target, a CTA per item
         * (the hardware balances them). */
        while (partition <= 0 && p > MIN_PARTITION && items < want) {
            p /= 2;
            items = decode_items(query_start, seq_lens, n_seqs, p);
        }
        plan->grid_x = items > 0 ? items : 1;
    }
    plan->partition = p;
    plan->n_items = items;
    plan->reduce = fixed_grid || items > n_decode;
    plan->ws_floats =
        plan->reduce && items > 0 ? (size_t)items * (size_t)n_heads * (size_t)(head_dim + 2) : 0;
}

/* With 2048-key partitions a step has one item per sequence and one more
 * per 2048 tokens; eager plans halve the partition only while the items are
 * under the target, which at most doubles them; a graph's plan stops at
 * max(target, sequences). */
int cuda_attn_max_items(int max_seqs, long total_tokens, int n_kv_heads, int n_sms)
{
    const long bound = max_seqs +
                       (total_tokens + CUDA_ATTN_MAX_PARTITION - 1) / CUDA_ATTN_MAX_PARTITION +
                       2L * decode_grid(n_kv_heads, n_sms);
    return bound < 0x7fffffff ? (int)bound : 0x7fffffff;
}

size_t cuda_attn_work_ints(int n_seqs, int n_items)
{
    return (size_t)CUDA_ATTN_WORK_HEAD + (size_t)n_seqs + 1 + (size_t)n_items;
}

void cuda_attn_work_fill(const cuda_attn_plan *plan, const int32_t *query_start,
                         const int32_t *seq_lens, int n_seqs, int table_stride, int32_t *work)
{
    work[0] = plan->partition;
    work[1] = plan->n_items;
    work[2] = table_stride;
    int32_t *item_start = work + CUDA_ATTN_WORK_HEAD, *items = item_start + n_seqs + 1;
    int n = 0;
    for (int s = 0; s < n_seqs; s++) {
        item_start[s] = n;
        if (query_start[s + 1] - query_start[s] != 1) continue;
        const int parts = (seq_lens[s] + plan->partition - 1) / plan->partition;
        for (int part = 0; part < parts; part++)
            items[n++] = (int32_t)((uint32_t)s << 16 | (uint32_t)part);
    }
    item_start[n_seqs] = n;
}

int cuda_attn_run(const cuda_attn_paged *a, const cuda_attn_plan *plan, float *workspace,
                  cudaStream_t stream)
{
    if (plan->has_prefill) {
        const int rc = cuda_attn_prefill(a, plan->has_decode, plan->tile_rows, stream);
        if (rc) return rc;
    }
    if (plan->has_decode) return cuda_attn_decode(a, plan, workspace, stream);
    return 0;
}

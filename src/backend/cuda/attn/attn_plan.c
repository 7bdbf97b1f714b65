/* Host side of a step's attention (contract in attn.h): which kernels run,
 * with which tile height and decode partition, decided once per step from
 * the host copies of query_start and seq_lens, so that a layer's
 * attention is one cuda_attn_run call and a graph key is the plan. */
#include "backend/cuda/attn/attn.h"

void cuda_attn_plan_make(cuda_attn_plan *plan, const int32_t *query_start, const int32_t *seq_lens,
                         int n_seqs, int n_heads, int n_kv_heads, int head_dim, int n_sms,
                         int partition)
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
    plan->partition = partition > 0 ? partition
                                    : cuda_attn_decode_partition(n_decode > 0 ? n_decode : 1,
                                                                 n_kv_heads, max_len, n_sms);
    plan->n_parts = (max_len + plan->partition - 1) / plan->partition;
    plan->ws_floats = plan->n_parts > 1 ? (size_t)n_seqs * (size_t)n_heads * (size_t)plan->n_parts *
                                              (size_t)(head_dim + 2)
                                        : 0;
}

int cuda_attn_run(const cuda_attn_paged *a, const cuda_attn_plan *plan, float *workspace,
                  cudaStream_t stream)
{
    if (plan->has_prefill) {
        const int rc = cuda_attn_prefill(a, plan->has_decode, plan->tile_rows, stream);
        if (rc) return rc;
    }
    if (plan->has_decode)
        return cuda_attn_decode(a, plan->max_seq_len, plan->partition, workspace, stream);
    return 0;
}

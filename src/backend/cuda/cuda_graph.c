/* CUDA graphs of decode steps (contract in cuda_internal.h): the ladder of
 * batch sizes a step is padded to, the graph table keyed on everything a
 * capture bakes in (shape, attention grids, buffer addresses, LoRA
 * segments), the ladder captured at start, other keys on first use, replay
 * after. */
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_internal.h"
#include "base/clock.h"
#include "base/log.h"

/* Do two steps launch the same attention kernels with the same grids?
 * The decode partition and items are data (the work array), not grid. */
static bool same_attn(const step_attn *a, const step_attn *b)
{
    if (a->tensor_cores != b->tensor_cores) return false;
    if (!a->tensor_cores) return a->n_splits == b->n_splits;
    const cuda_attn_plan *p = &a->plan, *q = &b->plan;
    return p->has_prefill == q->has_prefill && p->has_decode == q->has_decode &&
           (!p->has_prefill || p->tile_rows == q->tile_rows) &&
           (!p->has_decode || (p->grid_x == q->grid_x && p->reduce == q->reduce));
}

void cuda_graphs_clear(cv_cuda_backend *b)
{
    for (int i = 0; i < CUDA_GRAPH_SLOTS; i++) {
        if (b->graphs[i].exec) cudaGraphExecDestroy(b->graphs[i].exec);
        b->graphs[i].exec = NULL;
    }
}

/* A capture that fails (a driver without support, say) turns graphs off. */
int cuda_graph_run(cv_cuda_backend *b, const cv_batch *bt, const step_arrays *d,
                   const step_attn *sa, cv_error *err)
{
    const cuda_graph_entry key = {
        .n_tokens = bt->n_tokens,
        .n_seqs = bt->n_seqs,
        .n_logits = bt->n_logits,
        /* The scalar kernel takes the table width as a launch argument; the
         * tensor-core decode reads it from the work array. */
        .max_blocks = sa->tensor_cores ? 0 : bt->max_blocks_per_seq,
        .attn = *sa,
        .act_mem = b->act_mem,
        .stage_dev = b->stage_dev,
        .partial = b->partial,
        .kv = b->kv,
        .lora = cuda_lora_graph_key_of(b),
    };
    for (int i = 0; i < CUDA_GRAPH_SLOTS; i++) {
        const cuda_graph_entry *g = &b->graphs[i];
        if (g->exec && g->n_tokens == key.n_tokens && g->n_seqs == key.n_seqs &&
            g->n_logits == key.n_logits && g->max_blocks == key.max_blocks &&
            same_attn(&g->attn, &key.attn) && g->act_mem == key.act_mem &&
            g->stage_dev == key.stage_dev && g->partial == key.partial && g->kv == key.kv &&
            g->lora.n_segs == key.lora.n_segs && g->lora.stage == key.lora.stage &&
            g->lora.u == key.lora.u) {
            CU(cudaGraphLaunch(g->exec, b->stream), "cudaGraphLaunch");
            return 0;
        }
    }
    CU(cudaStreamBeginCapture(b->stream, cudaStreamCaptureModeThreadLocal),
       "cudaStreamBeginCapture");
    const int rc = cuda_enqueue_step(b, bt, d, sa, err);
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(b->stream, &graph);
    cudaGraphExec_t exec = NULL;
    if (rc == 0 && e == cudaSuccess) e = cudaGraphInstantiate(&exec, graph, 0);
    if (graph) cudaGraphDestroy(graph);
    if (rc || e != cudaSuccess) {
        cv_log_warn("cuda backend: capturing a step as a CUDA graph failed (%s); running "
                    "steps eagerly from now on",
                    rc ? err->msg : cudaGetErrorString(e));
        (void)cudaGetLastError();
        b->graphs_broken = true;
        return cuda_enqueue_step(b, bt, d, sa, err);
    }
    cuda_graph_entry *slot = &b->graphs[b->graph_next];
    b->graph_next = (b->graph_next + 1) % CUDA_GRAPH_SLOTS;
    if (slot->exec) cudaGraphExecDestroy(slot->exec);
    *slot = key;
    slot->exec = exec;
    CU(cudaGraphLaunch(exec, b->stream), "cudaGraphLaunch");
    return 0;
}

/* The graph ladder's batch size for n sequences (vLLM captures the same:
 * 1, 2, 4, then every multiple of 8). */
static int ladder_size(int n)
{
    return n <= 4 ? (n <= 1 ? 1 : n <= 2 ? 2 : 4) : (n + 7) / 8 * 8;
}

int cuda_graph_pad_step(cv_cuda_backend *b, const cv_batch *bt, cv_batch *pad, cv_error *err)
{
    const int n = ladder_size(bt->n_seqs);
    int width = 1;
    if (cuda_tensor_core_attention(b))
        width = bt->max_blocks_per_seq;
    else
        while (width < bt->max_blocks_per_seq)
            width *= 2;
    if (!b->pad_ids) {
        const size_t cap = CUDA_GRAPH_MAX_TOKENS;
        b->pad_ids = malloc(cap * sizeof(int32_t));
        b->pad_positions = malloc(cap * sizeof(int32_t));
        b->pad_query_start = malloc((cap + 1) * sizeof(int32_t));
        b->pad_seq_lens = malloc(cap * sizeof(int32_t));
        b->pad_rows = malloc(cap * sizeof(int32_t));
        b->pad_slots = malloc(cap * sizeof(int64_t));
        if (!b->pad_ids || !b->pad_positions || !b->pad_query_start || !b->pad_seq_lens ||
            !b->pad_rows || !b->pad_slots)
            return cv_errorf(err, "cv_cuda_backend_forward: out of memory padding a step");
    }
    if ((size_t)n * width > b->pad_table_cap) {
        int32_t *t = realloc(b->pad_tables, (size_t)n * width * sizeof(int32_t));
        if (!t) return cv_errorf(err, "cv_cuda_backend_forward: out of memory padding a step");
        b->pad_tables = t;
        b->pad_table_cap = (size_t)n * width;
    }
    const int scratch = b->n_blocks;
    for (int s = 0; s < n; s++) {
        const bool real = s < bt->n_seqs;
        b->pad_ids[s] = real ? bt->token_ids[s] : 0;
        b->pad_positions[s] = real ? bt->positions[s] : 0;
        b->pad_slots[s] = real ? bt->slot_mapping[s] : (int64_t)scratch * b->block_size;
        b->pad_query_start[s] = s;
        b->pad_seq_lens[s] = real ? bt->seq_lens[s] : 1;
        b->pad_rows[s] = s;
        int32_t *row = b->pad_tables + (size_t)s * width;
        const int used = real ? bt->max_blocks_per_seq : 0;
        if (real) memcpy(row, bt->block_tables + (size_t)s * used, (size_t)used * sizeof(int32_t));
        for (int j = used; j < width; j++)
            row[j] = scratch;
    }
    b->pad_query_start[n] = n;
    *pad = (cv_batch){
        .n_tokens = n,
        .token_ids = b->pad_ids,
        .positions = b->pad_positions,
        .slot_mapping = b->pad_slots,
        .n_seqs = n,
        .query_start = b->pad_query_start,
        .seq_lens = b->pad_seq_lens,
        .block_tables = b->pad_tables,
        .max_blocks_per_seq = width,
        .n_logits = n,
        .logits_indices = b->pad_rows,
    };
    return 0;
}

bool cuda_graph_step(const cv_cuda_backend *b, const cv_batch *bt)
{
    if (!b->use_graphs || b->graphs_broken || b->prof || bt->n_tokens > CUDA_GRAPH_MAX_TOKENS)
        return false;
    if (bt->n_tokens != bt->n_seqs || bt->n_logits != bt->n_seqs) return false;
    for (int i = 0; i < bt->n_logits; i++)
        if (bt->logits_indices[i] != i) return false;
    return true;
}

int cuda_graphs_capture_ladder(cv_cuda_backend *b, cv_error *err)
{
    const int max_seqs = b->graph_max_seqs;
    if (!b->use_graphs || b->graphs_broken || max_seqs <= 0 || !b->kv ||
        !cuda_tensor_core_attention(b))
        return 0;
    const uint64_t t0 = cv_now_ns();
    const cv_model_config *c = &b->cfg;
    /* Buffers a graph reads are sized now for every later step, eager ones
     * included (they share them): a step that grew one would drop the
     * graphs. */
    const int top =
        ladder_size(max_seqs < CUDA_GRAPH_MAX_TOKENS ? max_seqs : CUDA_GRAPH_MAX_TOKENS);
    const int seqs = max_seqs > top ? max_seqs : top;
    const int width = (b->graph_max_len + b->block_size - 1) / b->block_size;
    const int items =
        cuda_attn_max_items(seqs, (long)b->n_blocks * b->block_size, c->n_kv_heads, b->n_sms);
    if (items > b->work_items_cap) b->work_items_cap = items;
    const int tokens = b->cap_tokens > top ? b->cap_tokens : top;
    const int logits = b->cap_logits > top ? b->cap_logits : top;
    if (cuda_stage_reserve(b, cuda_stage_bytes(b, tokens, seqs, logits, width > 1 ? width : 1),
                           err) ||
        cuda_partial_reserve(b, (size_t)items * c->n_heads * (c->head_dim + 2), err))
        return cv_error_prefix(err, "capturing the decode graphs");

    /* Each size's step: one-token sequences on the scratch block. */
    const int scratch = b->n_blocks;
    int32_t *ints = malloc(((size_t)top * 6 + 1) * sizeof(int32_t));
    int64_t *slots = malloc((size_t)top * sizeof(int64_t));
    if (!ints || !slots) {
        free(ints);
        free(slots);
        return cv_errorf(err, "capturing the decode graphs: out of memory");
    }
    int32_t *ids = ints, *positions = ids + top, *lens = positions + top, *tables = lens + top,
            *rows = tables + top, *query_start = rows + top;
    for (int s = 0; s < top; s++) {
        query_start[s] = s;
        ids[s] = positions[s] = 0;
        lens[s] = 1;
        tables[s] = scratch;
        rows[s] = s;
        slots[s] = (int64_t)scratch * b->block_size;
    }
    query_start[top] = top;
    int n_graphs = 0, rc = 0;
    for (int n = 1; n <= top && !rc && !b->graphs_broken; n = ladder_size(n + 1)) {
        const cv_batch step = {
            .n_tokens = n,
            .token_ids = ids,
            .positions = positions,
            .slot_mapping = slots,
            .n_seqs = n,
            .query_start = query_start,
            .seq_lens = lens,
            .block_tables = tables,
            .max_blocks_per_seq = 1,
            .n_logits = n,
            .logits_indices = rows,
        };
        cv_batch padded;
        rc = cuda_graph_pad_step(b, &step, &padded, err) ||
             cuda_forward_enqueue(b, &padded, true, err);
        /* The next size's upload rewrites the pinned staging buffer. */
        if (!rc && cudaStreamSynchronize(b->stream) != cudaSuccess)
            rc = cv_errorf(err, "cuda backend: running the captured step of batch %d: %s", n,
                           cudaGetErrorString(cudaGetLastError()));
        n_graphs += !rc && !b->graphs_broken;
    }
    free(ints);
    free(slots);
    if (rc) return cv_error_prefix(err, "capturing the decode graphs");
    cv_log_info("cuda backend: %d decode graphs captured (batch sizes 1..%d, any context up to "
                "%d tokens) in %.2f s",
                n_graphs, top, b->graph_max_len, cv_ns_to_s(cv_now_ns() - t0));
    return 0;
}

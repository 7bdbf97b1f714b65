/* One forward step of a decoder over a paged KV cache: the Llama family
 * (pre-norm RMSNorm, RoPE, gated MLP) and the structures cv_model_config
 * also describes (OPT, GPT-2: LayerNorm, pre- or post-norm, learned
 * positions, embedding projections, a plain MLP, biases).
 *
 * The whole step runs inside one OpenMP parallel region: every phase hands
 * out its work (weight row chunks, tokens, or (token, heads) pairs) to the
 * threads from a counter and ends with a barrier, so a decode step pays a
 * handful of barriers per layer instead of forking a team per matmul. Each output
 * element is computed by exactly one thread in a fixed order, so results do
 * not depend on the thread count or on how the batch is composed. */
#include <math.h>
#include <omp.h>
#include <sched.h>
#include <string.h>

#include "backend/cpu/cpu_internal.h"
#include "lora/lora.h"

/* Work phases of one layer; each has a counter in work_next from which the
 * threads take items (row chunks, tokens, attention items) one by one, so a
 * thread that another process slows down leaves its share to the others
 * instead of stalling the next barrier. */
enum {
    PH_ATTN_NORM,
    PH_QKV,
    PH_ROPE,
    PH_ATTN,
    PH_WO,
    PH_FFN_NORM,
    PH_MLP,
    PH_DOWN,
    PH_LORA_QKV, /* A x of each adapter token, before the product it adds to */
    PH_LORA_O,
    PH_LORA_MLP,
    PH_LORA_DOWN,
    PH_PER_LAYER
};

/* Phases after the layers, numbered from n_layers * PH_PER_LAYER. */
enum { PH_EMBED, PH_PROJ_IN, PH_FINAL_NORM, PH_PROJ_OUT, PH_LM_HEAD, PH_GLOBAL };

static inline int next_item(cv_backend *bk, int phase)
{
    return atomic_fetch_add(&bk->work_next[phase], 1);
}

static inline int layer_phase(int layer, int phase)
{
    return layer * PH_PER_LAYER + phase;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* The team's barrier: spins briefly, then yields the core. OpenMP's own
 * barrier spins for a long time, which is fastest on idle cores but, when
 * other processes share the cores (a 2-core machine running a server and
 * builds), burns the time slice the late thread needs. */
static void team_barrier(cv_backend *bk)
{
    cpu_barrier *b = &bk->barrier;
    const int phase = atomic_load(&b->phase);
    if (atomic_fetch_add(&b->arrived, 1) == b->n_threads - 1) {
        atomic_store(&b->arrived, 0);
        atomic_fetch_add(&b->phase, 1);
        return;
    }
    for (int spin = 0; atomic_load(&b->phase) == phase; spin++) {
        if (spin < 2000)
            cpu_relax();
        else
            sched_yield();
    }
}

void cpu_rmsnorm(const float *x, const float *weight, int n, float eps, float *out)
{
    double ss = 0.0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float inv = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++)
        out[i] = weight[i] * (x[i] * inv);
}

void cpu_layernorm(const float *x, const float *weight, const float *bias, int n, float eps,
                   float *out)
{
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += x[i];
    const double mean = sum / n;
    double ss = 0.0;
    for (int i = 0; i < n; i++)
        ss += (x[i] - mean) * (x[i] - mean);
    const float inv = 1.0f / sqrtf((float)(ss / n) + eps), m = (float)mean;
    for (int i = 0; i < n; i++)
        out[i] = (x[i] - m) * inv * weight[i] + bias[i];
}

void cpu_act(cv_activation act, float *x, int n)
{
    const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
    for (int i = 0; i < n; i++) {
        const float v = x[i];
        if (act == CV_ACT_RELU)
            x[i] = v > 0.0f ? v : 0.0f;
        else if (act == CV_ACT_GELU_TANH)
            x[i] = 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
        else
            x[i] = v / (1.0f + expf(-v));
    }
}

/* The model's norm of one row (RMSNorm, or LayerNorm with bias B). */
static void norm_row(const cv_backend *bk, const float *x, const float *w, const float *b,
                     float *out)
{
    if (bk->cfg.norm_type == CV_NORM_LAYER)
        cpu_layernorm(x, w, b, bk->cfg.hidden_size, bk->cfg.rms_norm_eps, out);
    else
        cpu_rmsnorm(x, w, bk->cfg.hidden_size, bk->cfg.rms_norm_eps, out);
}

void cpu_rope_apply(float *head, const float *cos_t, const float *sin_t, int head_dim)
{
    const int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        float x0 = head[i], x1 = head[i + half];
        head[i] = x0 * cos_t[i] - x1 * sin_t[i];
        head[i + half] = x1 * cos_t[i] + x0 * sin_t[i];
    }
}

/* One matrix product of a phase: y = w x (+ y when accumulate) (+ bias). */
typedef struct mm_job {
    const cv_tensor *w;
    const float *x;
    int ldx;
    float *y;
    int ldy;
    bool accumulate;
    const float *bias; /* (out) or NULL */
    int lora;          /* 1 + the cv_lora_target added after the product; 0: none */
    int lora_k;        /* which of lora_u's A x it reads */
    int layer;
} mm_job;

/* sum a[i] b[i] in eight interleaved partial sums added in a fixed order:
 * the compiler vectorizes it, and the result depends only on a and b. */
static float lora_dot(const float *a, const float *b, int n)
{
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j] * b[i + j];
    for (int j = 0; i < n; i++, j++)
        acc[j] += a[i] * b[i];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* LoRA, first half: lora_u[t][k] = A_k x[t] for the targets of one product
 * phase, for every token with an adapter that targets them, one token per
 * item in a fixed order (so a token's result does not depend on the batch). */
static void lora_down(cv_backend *bk, int phase, int layer, const cv_lora_target *targets,
                      int n_targets, const float *x, int ldx, int n_tok)
{
    const int R = bk->lora_rank, ldu = 3 * R;
    for (int t = next_item(bk, phase); t < n_tok; t = next_item(bk, phase)) {
        const cv_lora_adapter *a = bk->tok_lora[t];
        if (!a) continue;
        for (int k = 0; k < n_targets; k++) {
            const cv_lora_weights *w = &a->w[layer * CV_LORA_N_TARGETS + targets[k]];
            if (!w->a) continue;
            const int in = a->in[targets[k]];
            const float *xt = x + (int64_t)t * ldx;
            float *u = bk->lora_u + (int64_t)t * ldu + k * R;
            for (int r = 0; r < a->rank; r++)
                u[r] = lora_dot(w->a + (int64_t)r * in, xt, in);
        }
    }
    team_barrier(bk);
}

/* LoRA, second half, fused after a product's work item: y[t][lo, hi) +=
 * scale B (A x) for the item's tokens [t0, t1) that have an adapter on
 * target (A x from lora_u slot k). */
static void lora_up(const cv_backend *bk, int layer, int target, int k, float *y, int ldy, int t0,
                    int t1, int lo, int hi)
{
    const int R = bk->lora_rank, ldu = 3 * R;
    for (int t = t0; t < t1; t++) {
        const cv_lora_adapter *a = bk->tok_lora[t];
        if (!a) continue;
        const cv_lora_weights *w = &a->w[layer * CV_LORA_N_TARGETS + target];
        if (!w->b) continue;
        const float *u = bk->lora_u + (int64_t)t * ldu + k * R;
        float *yt = y + (int64_t)t * ldy;
        for (int o = lo; o < hi; o++)
            yt[o] += a->scale * lora_dot(w->b + (int64_t)o * a->rank, u, a->rank);
    }
}

/* Rows per work chunk: whole panels of the packed weights (cpu_kernels.h),
 * two for a lone token, whose kernel takes panels in pairs. */
static int chunk_rows(int n_tok)
{
    return n_tok == 1 ? 2 * CPU_PANEL : CPU_PANEL;
}

/* Token ranges each row chunk is cut into: one, unless several threads
 * share chunks too few to share out evenly (a 576-row output is 9 panels:
 * 5 and 4 on two threads); then enough for ~8 items per thread, each range
 * keeping at least 12 tokens so that a panel read still serves two full
 * tiles. */
static int token_parts(int n_chunks, int n_tok, int n_threads)
{
    if (n_threads == 1) return 1;
    int parts = (8 * n_threads + n_chunks - 1) / n_chunks;
    if (parts > n_tok / 12) parts = n_tok / 12;
    return parts < 1 ? 1 : parts;
}

/* Work item c of a phase: row chunk c / parts, token range c % parts. */
typedef struct work_item {
    int chunk, t0, t1;
} work_item;

static work_item item_of(int c, int parts, int n_tok)
{
    const int part = c % parts;
    return (work_item){c / parts, (int)((int64_t)n_tok * part / parts),
                       (int)((int64_t)n_tok * (part + 1) / parts)};
}

/* The products of one phase (independent of each other), cut into work
 * items that the threads take from the phase's counter. Ends with a
 * barrier. */
static void run_jobs(cv_backend *bk, int phase, const mm_job *jobs, int n_jobs, int n_tok)
{
    const int rows = chunk_rows(n_tok);
    int first[4], n_chunks = 0;
    for (int j = 0; j < n_jobs; j++) {
        first[j] = n_chunks;
        n_chunks += ((int)jobs[j].w->shape[0] + rows - 1) / rows;
    }
    const int parts = token_parts(n_chunks, n_tok, bk->barrier.n_threads);
    for (int c = next_item(bk, phase); c < n_chunks * parts; c = next_item(bk, phase)) {
        const work_item it = item_of(c, parts, n_tok);
        int j = n_jobs - 1;
        while (first[j] > it.chunk)
            j--;
        const mm_job *m = &jobs[j];
        int lo = (it.chunk - first[j]) * rows;
        int hi = lo + rows < m->w->shape[0] ? lo + rows : (int)m->w->shape[0];
        bk->kern->matmul(m->w->dtype, m->w->data, (int)m->w->shape[1],
                         m->x + (int64_t)it.t0 * m->ldx, m->ldx, it.t1 - it.t0,
                         m->y + (int64_t)it.t0 * m->ldy, m->ldy, lo, hi, m->accumulate);
        if (m->bias)
            for (int t = it.t0; t < it.t1; t++)
                for (int o = lo; o < hi; o++)
                    m->y[(int64_t)t * m->ldy + o] += m->bias[o];
        if (m->lora && bk->step_lora)
            lora_up(bk, m->layer, m->lora - 1, m->lora_k, m->y, m->ldy, it.t0, it.t1, lo, hi);
    }
    team_barrier(bk);
}

/* The MLP's first half into gate, item by item so that each thread applies
 * the activation to the rows it just computed: act(gate) * up, or for a
 * plain MLP act(up x + b_up). */
static void run_mlp_in(cv_backend *bk, int phase, int layer, const cpu_layer *L, const float *xin,
                       int n_tok)
{
    const cv_layer_weights *W = &L->w;
    const int rows = chunk_rows(n_tok), n = (int)W->w_up.shape[0];
    const int in = (int)W->w_up.shape[1], n_chunks = (n + rows - 1) / rows;
    const int parts = token_parts(n_chunks, n_tok, bk->barrier.n_threads);
    for (int c = next_item(bk, phase); c < n_chunks * parts; c = next_item(bk, phase)) {
        const work_item it = item_of(c, parts, n_tok);
        const int lo = it.chunk * rows, hi = lo + rows < n ? lo + rows : n;
        const float *x = xin + (int64_t)it.t0 * bk->ld_h;
        float *gate = bk->gate + (int64_t)it.t0 * bk->ld_f;
        float *up = bk->up + (int64_t)it.t0 * bk->ld_f;
        if (bk->cfg.plain_mlp) {
            bk->kern->matmul(W->w_up.dtype, W->w_up.data, in, x, bk->ld_h, it.t1 - it.t0, gate,
                             bk->ld_f, lo, hi, false);
            for (int t = 0; t < it.t1 - it.t0; t++) {
                float *row = gate + (int64_t)t * bk->ld_f;
                if (L->b_up)
                    for (int o = lo; o < hi; o++)
                        row[o] += L->b_up[o];
                cpu_act(bk->cfg.hidden_act, row + lo, hi - lo);
            }
            continue;
        }
        bk->kern->matmul(W->w_gate.dtype, W->w_gate.data, in, x, bk->ld_h, it.t1 - it.t0, gate,
                         bk->ld_f, lo, hi, false);
        bk->kern->matmul(W->w_up.dtype, W->w_up.data, in, x, bk->ld_h, it.t1 - it.t0, up, bk->ld_f,
                         lo, hi, false);
        if (bk->step_lora) {
            lora_up(bk, layer, CV_LORA_GATE, 0, bk->gate, bk->ld_f, it.t0, it.t1, lo, hi);
            lora_up(bk, layer, CV_LORA_UP, 1, bk->up, bk->ld_f, it.t0, it.t1, lo, hi);
        }
        for (int t = 0; t < it.t1 - it.t0; t++)
            bk->kern->gated_act(bk->cfg.hidden_act, gate + (int64_t)t * bk->ld_f + lo,
                                up + (int64_t)t * bk->ld_f + lo, hi - lo);
    }
    team_barrier(bk);
}

/* n floats into the KV pool at element elem, narrowed to its dtype. */
static void store_kv(cv_backend *bk, size_t elem, const float *src, int n)
{
    void *dst = cpu_kv_at(bk, elem);
    if (bk->kv_dtype == CV_DTYPE_F32)
        memcpy(dst, src, (size_t)n * sizeof(float));
    else
        bk->kern->narrow(bk->kv_dtype, src, dst, n);
}

/* Per-head norm (Qwen3), RoPE (unless positions are learned), and the K/V
 * of each token into its slot. */
static void rope_and_store(cv_backend *bk, const cv_batch *b, int layer)
{
    const cv_model_config *c = &bk->cfg;
    const cpu_layer *L = &bk->layers[layer];
    const int hd = c->head_dim, bs = bk->block_size, nkv = c->n_kv_heads;
    const int phase = layer_phase(layer, PH_ROPE);
    const bool rope = c->pos_type == CV_POS_ROPE;
    for (int t = next_item(bk, phase); t < b->n_tokens; t = next_item(bk, phase)) {
        const float *cs = bk->rope_cos + (int64_t)t * bk->ld_r;
        const float *sn = bk->rope_sin + (int64_t)t * bk->ld_r;
        float *q = bk->q + (int64_t)t * bk->ld_q;
        for (int h = 0; h < c->n_heads; h++) {
            if (L->q_norm) cpu_rmsnorm(q + h * hd, L->q_norm, hd, c->rms_norm_eps, q + h * hd);
            if (rope) cpu_rope_apply(q + h * hd, cs, sn, hd);
        }
        int64_t slot = b->slot_mapping[t];
        const size_t base = (size_t)(slot / bs) * bk->block_elems +
                            (size_t)layer * 2 * nkv * bs * hd + (size_t)(slot % bs) * hd;
        float *k = bk->k + (int64_t)t * bk->ld_kv;
        const float *v = bk->v + (int64_t)t * bk->ld_kv;
        for (int g = 0; g < nkv; g++) {
            if (L->k_norm) cpu_rmsnorm(k + g * hd, L->k_norm, hd, c->rms_norm_eps, k + g * hd);
            if (rope) cpu_rope_apply(k + g * hd, cs, sn, hd);
            store_kv(bk, base + (size_t)g * bs * hd, k + g * hd, hd);
            store_kv(bk, base + (size_t)(nkv + g) * bs * hd, v + g * hd, hd);
        }
    }
}

/* Token t's query heads [h0, h1) against its causal context, read block by
 * block through the block table with an online softmax per head. The heads
 * are whole kv groups, or part of one group: in a block, the K rows of kv
 * heads g0..g1 are one contiguous run and so are their V rows, which the
 * loop prefetches a block ahead (the next block lies wherever the block
 * table says, where no hardware prefetcher looks). scratch: group *
 * block_size scores, then the running max and sum of each head. */
static void attend(cv_backend *bk, const cv_batch *b, int layer, int t, int h0, int h1,
                   float *scratch)
{
    const cv_model_config *c = &bk->cfg;
    const cpu_kernels *K = bk->kern;
    const int hd = c->head_dim, bs = bk->block_size, nkv = c->n_kv_heads;
    const int group = c->n_heads / nkv, g0 = h0 / group, g1 = (h1 - 1) / group + 1;
    const int s = bk->tok_seq[t];
    const int q0 = b->query_start[s], qlen = b->query_start[s + 1] - q0;
    const int ctx = b->seq_lens[s] - qlen + (t - q0) + 1;
    const int32_t *table = b->block_tables + (int64_t)s * b->max_blocks_per_seq;
    const float scale = 1.0f / sqrtf((float)hd);
    float *scores = scratch, *m = scratch + group * bs, *l = m + c->n_heads;
    for (int h = h0; h < h1; h++) {
        float *out = bk->attn + (int64_t)t * bk->ld_q + h * hd;
        for (int i = 0; i < hd; i++)
            out[i] = 0.0f;
        m[h] = -INFINITY;
        l[h] = 0.0f;
    }
    const size_t head_elems = (size_t)bs * hd; /* one kv head's rows of a block */
    const size_t k_off = ((size_t)layer * 2 * nkv + g0) * head_elems;
    const size_t v_off = k_off + (size_t)nkv * head_elems;
    const size_t run_bytes = (size_t)(g1 - g0) * head_elems * cv_dtype_size(bk->kv_dtype);
    /* Sliding-window attention (Mistral): the query at position ctx-1 sees
     * keys j with (ctx-1) - j < window, as HF's mask does. */
    const int window = c->sliding_window;
    const int first = window > 0 && ctx > window ? ctx - window : 0;
    for (int j = first; j < ctx;) {
        const int blk = j / bs, off = j % bs;
        const int n = ctx - j < bs - off ? ctx - j : bs - off;
        const size_t base = (size_t)table[blk] * bk->block_elems;
        if (j + n < ctx) {
            const size_t next = (size_t)table[blk + 1] * bk->block_elems;
            const char *nk = cpu_kv_at(bk, next + k_off), *nv = cpu_kv_at(bk, next + v_off);
            for (size_t o = 0; o < run_bytes; o += 64) {
                __builtin_prefetch(nk + o);
                __builtin_prefetch(nv + o);
            }
        }
        /* One call per kv head, for its query heads in [h0, h1). */
        for (int h = h0; h < h1;) {
            const int g = h / group, end = (g + 1) * group < h1 ? (g + 1) * group : h1;
            const size_t head = (size_t)(g - g0) * head_elems + (size_t)off * hd;
            K->attn_block(bk->kv_dtype, bk->q + (int64_t)t * bk->ld_q + h * hd, end - h,
                          cpu_kv_at(bk, base + k_off + head), cpu_kv_at(bk, base + v_off + head), n,
                          hd, scale, &m[h], &l[h], bk->attn + (int64_t)t * bk->ld_q + h * hd,
                          scores);
            h = end;
        }
        j += n;
    }
    for (int h = h0; h < h1; h++) {
        float *out = bk->attn + (int64_t)t * bk->ld_q + h * hd;
        float inv = 1.0f / l[h];
        for (int i = 0; i < hd; i++)
            out[i] *= inv;
    }
}

/* x (tokens, hidden) -> out (xn, or x itself after a post-norm residual
 * add): the model's norm of every token, one token per item. */
static void norm_tokens(cv_backend *bk, int phase, int n_tok, const float *weight,
                        const float *bias, float *out)
{
    for (int t = next_item(bk, phase); t < n_tok; t = next_item(bk, phase))
        norm_row(bk, bk->x + (int64_t)t * bk->ld_h, weight, bias, out + (int64_t)t * bk->ld_h);
    team_barrier(bk);
}

/* Pre-norm (Llama, OPT-125m, GPT-2): x += attn(norm(x)); x += mlp(norm(x)).
 * Post-norm (opt-350m): x = norm(x + attn(x)); x = norm(x + mlp(x)). */
static void layer_forward(cv_backend *bk, const cv_batch *b, int layer, int ith, int nth)
{
    const cv_model_config *c = &bk->cfg;
    const cpu_layer *L = &bk->layers[layer];
    const cv_layer_weights *W = &L->w;
    const int nt = b->n_tokens;
    const bool post = c->post_norm;
    const float *in = post ? bk->x : bk->xn; /* input of each sublayer */

    if (!post)
        norm_tokens(bk, layer_phase(layer, PH_ATTN_NORM), nt, L->attn_norm, L->attn_norm_b, bk->xn);
    const bool lora = bk->step_lora;
    static const cv_lora_target t_qkv[3] = {CV_LORA_Q, CV_LORA_K, CV_LORA_V};
    static const cv_lora_target t_o = CV_LORA_O, t_mlp[2] = {CV_LORA_GATE, CV_LORA_UP};
    static const cv_lora_target t_down = CV_LORA_DOWN;
    if (lora) lora_down(bk, layer_phase(layer, PH_LORA_QKV), layer, t_qkv, 3, in, bk->ld_h, nt);
    const mm_job qkv[3] = {
        {&W->wq, in, bk->ld_h, bk->q, bk->ld_q, false, L->bq, 1 + CV_LORA_Q, 0, layer},
        {&W->wk, in, bk->ld_h, bk->k, bk->ld_kv, false, L->bk, 1 + CV_LORA_K, 1, layer},
        {&W->wv, in, bk->ld_h, bk->v, bk->ld_kv, false, L->bv, 1 + CV_LORA_V, 2, layer},
    };
    run_jobs(bk, layer_phase(layer, PH_QKV), qkv, 3, nt);
    rope_and_store(bk, b, layer);
    team_barrier(bk);
    float *scratch = bk->attn_scratch + (size_t)ith * cpu_attn_scratch_floats(c, bk->block_size);
    /* Work items: a token's heads, all of them when the tokens alone keep
     * the threads busy (each block's K and V rows for the layer are then two
     * contiguous runs), else one kv group (the group's query heads share
     * each K and V row read), else, for a lone decode token, one query head. */
    const int group = c->n_heads / c->n_kv_heads;
    const int per_item = nt >= 4 * nth ? c->n_heads : nt * c->n_kv_heads >= 4 * nth ? group : 1;
    const int items_per_tok = c->n_heads / per_item, phase = layer_phase(layer, PH_ATTN);
    for (int item = next_item(bk, phase); item < nt * items_per_tok; item = next_item(bk, phase)) {
        const int h0 = item % items_per_tok * per_item;
        attend(bk, b, layer, item / items_per_tok, h0, h0 + per_item, scratch);
    }
    team_barrier(bk);
    if (lora) lora_down(bk, layer_phase(layer, PH_LORA_O), layer, &t_o, 1, bk->attn, bk->ld_q, nt);
    const mm_job wo = {&W->wo, bk->attn, bk->ld_q,      bk->x, bk->ld_h,
                       true,   L->bo,    1 + CV_LORA_O, 0,     layer};
    run_jobs(bk, layer_phase(layer, PH_WO), &wo, 1, nt);
    if (post)
        norm_tokens(bk, layer_phase(layer, PH_ATTN_NORM), nt, L->attn_norm, L->attn_norm_b, bk->x);
    else
        norm_tokens(bk, layer_phase(layer, PH_FFN_NORM), nt, L->ffn_norm, L->ffn_norm_b, bk->xn);
    if (lora) lora_down(bk, layer_phase(layer, PH_LORA_MLP), layer, t_mlp, 2, in, bk->ld_h, nt);
    run_mlp_in(bk, layer_phase(layer, PH_MLP), layer, L, in, nt);
    if (lora)
        lora_down(bk, layer_phase(layer, PH_LORA_DOWN), layer, &t_down, 1, bk->gate, bk->ld_f, nt);
    const mm_job down = {&W->w_down, bk->gate,  bk->ld_f,         bk->x, bk->ld_h,
                         true,       L->b_down, 1 + CV_LORA_DOWN, 0,     layer};
    run_jobs(bk, layer_phase(layer, PH_DOWN), &down, 1, nt);
    if (post)
        norm_tokens(bk, layer_phase(layer, PH_FFN_NORM), nt, L->ffn_norm, L->ffn_norm_b, bk->x);
}

/* Embedding rows (into xn when project_in reads them) plus learned
 * positions, the token -> sequence map and each token's RoPE angles. */
static void prologue(cv_backend *bk, const cv_batch *b, int phase)
{
    const cv_model_config *c = &bk->cfg;
    const cv_tensor *e = &bk->weights->embed;
    const int width = (int)e->shape[1], h = c->hidden_size, half = c->head_dim / 2;
    const size_t esz = cv_dtype_size(e->dtype);
    const bool proj = bk->project_in.data != NULL;
    for (int t = next_item(bk, phase); t < b->n_tokens; t = next_item(bk, phase)) {
        int lo = 0, hi = b->n_seqs - 1; /* the sequence s with query_start[s] <= t */
        while (lo < hi) {
            int mid = (lo + hi + 1) / 2;
            if (b->query_start[mid] <= t)
                lo = mid;
            else
                hi = mid - 1;
        }
        bk->tok_seq[t] = lo;
        const char *row = (const char *)e->data + (size_t)b->token_ids[t] * width * esz;
        float *x = bk->x + (int64_t)t * bk->ld_h;
        cpu_to_f32(e->dtype, row, proj ? bk->xn + (int64_t)t * bk->ld_h : x, width);
        if (bk->pos_embed) {
            /* HF: inputs_embeds + pos_embeds; with project_in the projection
             * is added to the position row by the PH_PROJ_IN matmul. */
            const float *pos = bk->pos_embed + (int64_t)(b->positions[t] + c->pos_offset) * h;
            for (int i = 0; i < h; i++)
                x[i] = proj ? pos[i] : x[i] + pos[i];
        } else if (proj) {
            memset(x, 0, (size_t)h * sizeof *x);
        }
        if (c->pos_type != CV_POS_ROPE) continue;
        /* HF: freqs = inv_freq * position in fp32, then cos / sin. */
        for (int i = 0; i < half; i++) {
            float angle = (float)b->positions[t] * bk->inv_freq[i];
            bk->rope_cos[(int64_t)t * bk->ld_r + i] = cosf(angle);
            bk->rope_sin[(int64_t)t * bk->ld_r + i] = sinf(angle);
        }
    }
}

static void forward_thread(cv_backend *bk, const cv_batch *b, float *logits, int ith, int nth)
{
    const cv_model_config *c = &bk->cfg;
    const int global = c->n_layers * PH_PER_LAYER;
    prologue(bk, b, global + PH_EMBED);
    team_barrier(bk);
    if (bk->project_in.data) {
        const mm_job in = {&bk->project_in, bk->xn, bk->ld_h, bk->x, bk->ld_h, true, NULL, 0, 0, 0};
        run_jobs(bk, global + PH_PROJ_IN, &in, 1, b->n_tokens);
    }
    for (int l = 0; l < c->n_layers; l++)
        layer_forward(bk, b, l, ith, nth);
    if (b->n_logits == 0) return;
    const int phase = global + PH_FINAL_NORM;
    for (int i = next_item(bk, phase); i < b->n_logits; i = next_item(bk, phase)) {
        const float *x = bk->x + (int64_t)b->logits_indices[i] * bk->ld_h;
        float *xl = bk->xl + (int64_t)i * bk->ld_h;
        if (bk->final_norm)
            norm_row(bk, x, bk->final_norm, bk->final_norm_b, xl);
        else
            memcpy(xl, x, (size_t)c->hidden_size * sizeof *xl);
    }
    team_barrier(bk);
    const float *head_in = bk->xl;
    if (bk->project_out.data) {
        const mm_job out = {
            &bk->project_out, bk->xl, bk->ld_h, bk->xp, bk->ld_h, false, NULL, 0, 0, 0};
        run_jobs(bk, global + PH_PROJ_OUT, &out, 1, b->n_logits);
        head_in = bk->xp;
    }
    const mm_job head = {&bk->lm_head, head_in, bk->ld_h, logits, c->vocab_size,
                         false,        NULL,    0,        0,      0};
    run_jobs(bk, global + PH_LM_HEAD, &head, 1, b->n_logits);
}

int cpu_forward_phases(const cv_model_config *cfg)
{
    return cfg->n_layers * PH_PER_LAYER + PH_GLOBAL;
}

void cpu_forward_run(cv_backend *bk, const cv_batch *batch, float *logits)
{
    for (int p = 0; p < cpu_forward_phases(&bk->cfg); p++)
        atomic_store(&bk->work_next[p], 0);
    const double madds = (double)batch->n_tokens * (double)bk->matrix_elems;
    const int n_threads = madds < bk->parallel_min_madds ? 1 : bk->n_threads;
#pragma omp parallel num_threads(n_threads)
    {
        /* The team may be smaller than asked for (OMP_THREAD_LIMIT). */
#pragma omp single
        {
            bk->barrier.n_threads = omp_get_num_threads();
            atomic_store(&bk->barrier.arrived, 0);
        }
        forward_thread(bk, batch, logits, omp_get_thread_num(), omp_get_num_threads());
    }
}

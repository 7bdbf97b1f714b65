/* CPU backend: construction, the paged KV pool, batch validation. The math of
 * one step is in forward.c, the SIMD kernels in kernels_*.c. */
#include <inttypes.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "backend/cpu/cpu_internal.h"

/* 64-byte aligned (one cache line, one zmm) allocation of n floats. */
static float *alloc_floats(size_t n)
{
    size_t bytes = (n * sizeof(float) + 63) & ~(size_t)63;
    return aligned_alloc(64, bytes ? bytes : 64);
}

static int check_tensor(const cv_tensor *t, const char *name, int layer, int64_t d0, int64_t d1,
                        bool optional, cv_error *err)
{
    char where[64];
    if (layer >= 0)
        snprintf(where, sizeof where, "layer %d %s", layer, name);
    else
        snprintf(where, sizeof where, "%s", name);
    if (!t->data) {
        if (optional) return 0;
        return cv_errorf(err, "cpu backend: weight %s is missing", where);
    }
    if (t->dtype != CV_DTYPE_F32 && t->dtype != CV_DTYPE_F16 && t->dtype != CV_DTYPE_BF16)
        return cv_errorf(err, "cpu backend: weight %s has unsupported dtype %d", where,
                         (int)t->dtype);
    int want_dims = d1 < 0 ? 1 : 2;
    if (t->n_dims != want_dims || t->shape[0] != d0 || (d1 >= 0 && t->shape[1] != d1))
        return cv_errorf(err,
                         "cpu backend: weight %s has shape (%" PRId64 ", %" PRId64
                         ") with %d dims, expected (%" PRId64 ", %" PRId64 ")",
                         where, t->shape[0], t->n_dims > 1 ? t->shape[1] : 0, t->n_dims, d0,
                         d1 < 0 ? 0 : d1);
    return 0;
}

/* fp32 copy of an optional vector; *out stays NULL when absent. */
static int widen(const cv_tensor *t, int64_t n, float **out, cv_error *err)
{
    *out = NULL;
    if (!t->data) return 0;
    *out = alloc_floats((size_t)n);
    if (!*out) return cv_errorf(err, "cpu backend: out of memory for %" PRId64 " floats", n);
    cpu_to_f32(t->dtype, t->data, *out, n);
    return 0;
}

static int check_config(const cv_model_config *c, cv_error *err)
{
    if (c->hidden_size <= 0 || c->intermediate_size <= 0 || c->n_layers <= 0 || c->n_heads <= 0 ||
        c->n_kv_heads <= 0 || c->head_dim <= 0 || c->vocab_size <= 0)
        return cv_errorf(err,
                         "cpu backend: config has a non-positive size (hidden %d, intermediate "
                         "%d, layers %d, heads %d, kv heads %d, head_dim %d, vocab %d)",
                         c->hidden_size, c->intermediate_size, c->n_layers, c->n_heads,
                         c->n_kv_heads, c->head_dim, c->vocab_size);
    if (c->n_heads % c->n_kv_heads != 0)
        return cv_errorf(err, "cpu backend: n_heads %d is not a multiple of n_kv_heads %d",
                         c->n_heads, c->n_kv_heads);
    if (c->pos_type == CV_POS_ROPE && c->head_dim % 2 != 0)
        return cv_errorf(err, "cpu backend: head_dim %d is odd (RoPE needs pairs)", c->head_dim);
    if (c->hidden_act != CV_ACT_SILU && c->hidden_act != CV_ACT_GELU_TANH &&
        c->hidden_act != CV_ACT_RELU)
        return cv_errorf(err, "cpu backend: unsupported activation %d", (int)c->hidden_act);
    if (c->hidden_act == CV_ACT_RELU && !c->plain_mlp)
        return cv_errorf(err, "cpu backend: relu is supported only in a non-gated MLP");
    if (c->pos_type == CV_POS_LEARNED && (c->max_position_embeddings <= 0 || c->pos_offset < 0))
        return cv_errorf(err,
                         "cpu backend: learned positions need max_position_embeddings %d > 0 and "
                         "pos_offset %d >= 0",
                         c->max_position_embeddings, c->pos_offset);
    return 0;
}

/* The global tensors: embedding, positions, projections, final norm, head. */
static int check_globals(const cv_model_config *c, const cv_model_weights *w, cv_error *err)
{
    const int64_t h = c->hidden_size, e = cv_config_embed_dim(c), p = c->proj_dim;
    const bool ln = c->norm_type == CV_NORM_LAYER, proj = p > 0;
    const bool final = !c->no_final_norm, learned = c->pos_type == CV_POS_LEARNED;
    return check_tensor(&w->embed, "embed", -1, c->vocab_size, e, false, err) ||
           check_tensor(&w->lm_head, "lm_head", -1, c->vocab_size, e, false, err) ||
           check_tensor(&w->final_norm, "final_norm", -1, h, -1, !final, err) ||
           check_tensor(&w->final_norm_b, "final_norm_b", -1, h, -1, !(final && ln), err) ||
           check_tensor(&w->pos_embed, "pos_embed", -1,
                        (int64_t)c->max_position_embeddings + c->pos_offset, h, !learned, err) ||
           check_tensor(&w->project_in, "project_in", -1, h, p, !proj, err) ||
           check_tensor(&w->project_out, "project_out", -1, p, h, !proj, err);
}

static int check_weights(const cv_model_config *c, const cv_model_weights *w, cv_error *err)
{
    const int64_t h = c->hidden_size, f = c->intermediate_size, hd = c->head_dim;
    const int64_t qd = (int64_t)c->n_heads * hd, kd = (int64_t)c->n_kv_heads * hd;
    const bool ln = c->norm_type == CV_NORM_LAYER;
    if (check_globals(c, w, err)) return -1;
    if (!w->layers) return cv_errorf(err, "cpu backend: weights have no layers");
    for (int l = 0; l < c->n_layers; l++) {
        const cv_layer_weights *L = &w->layers[l];
        if (check_tensor(&L->attn_norm, "attn_norm", l, h, -1, false, err) ||
            check_tensor(&L->attn_norm_b, "attn_norm_b", l, h, -1, !ln, err) ||
            check_tensor(&L->wq, "wq", l, qd, h, false, err) ||
            check_tensor(&L->wk, "wk", l, kd, h, false, err) ||
            check_tensor(&L->wv, "wv", l, kd, h, false, err) ||
            check_tensor(&L->bq, "bq", l, qd, -1, true, err) ||
            check_tensor(&L->bk, "bk", l, kd, -1, true, err) ||
            check_tensor(&L->bv, "bv", l, kd, -1, true, err) ||
            check_tensor(&L->q_norm, "q_norm", l, hd, -1, true, err) ||
            check_tensor(&L->k_norm, "k_norm", l, hd, -1, true, err) ||
            check_tensor(&L->wo, "wo", l, h, qd, false, err) ||
            check_tensor(&L->bo, "bo", l, h, -1, true, err) ||
            check_tensor(&L->ffn_norm, "ffn_norm", l, h, -1, false, err) ||
            check_tensor(&L->ffn_norm_b, "ffn_norm_b", l, h, -1, !ln, err) ||
            check_tensor(&L->w_gate, "w_gate", l, f, h, c->plain_mlp, err) ||
            check_tensor(&L->w_up, "w_up", l, f, h, false, err) ||
            check_tensor(&L->b_up, "b_up", l, f, -1, true, err) ||
            check_tensor(&L->w_down, "w_down", l, h, f, false, err) ||
            check_tensor(&L->b_down, "b_down", l, h, -1, true, err))
            return -1;
    }
    return 0;
}

static size_t padded(size_t bytes) /* keeps every copy 64-byte aligned */
{
    return (bytes + 63) & ~(size_t)63;
}

/* Slot i of the matrices copy_matrices moves: lm_head, project_in,
 * project_out, then 7 per layer; NULL past the last. A slot's tensor has no
 * data when the model lacks it (projections, the gate of a plain MLP). */
static cv_tensor *matrix_at(cv_backend *bk, int i)
{
    if (i < 3) return i == 0 ? &bk->lm_head : i == 1 ? &bk->project_in : &bk->project_out;
    i -= 3;
    if (i >= 7 * bk->cfg.n_layers) return NULL;
    cv_layer_weights *w = &bk->layers[i / 7].w;
    cv_tensor *mats[7] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->w_gate, &w->w_up, &w->w_down};
    return mats[i % 7];
}

/* Packs every matrix (cpu_pack), converted to dtype, into one 2 MiB-aligned
 * region advised for huge pages (see matrix_copy) and points the backend's
 * tensors at the copies. */
static int copy_matrices(cv_backend *bk, cv_dtype dtype, cv_error *err)
{
    const size_t huge = (size_t)2 << 20;
    size_t total = 0;
    cv_tensor *t;
    for (int i = 0; (t = matrix_at(bk, i)); i++)
        if (t->data)
            total +=
                padded((size_t)cpu_packed_elems(t->shape[0], t->shape[1]) * cv_dtype_size(dtype));
    total = (total + huge - 1) & ~(huge - 1);
    char *p = aligned_alloc(huge, total);
    if (!p) return cv_errorf(err, "cpu backend: out of memory for a %zu-byte weight copy", total);
    /* Only a hint: without transparent huge pages the copy still works. */
    (void)madvise(p, total, MADV_HUGEPAGE);
    bk->matrix_copy = p;
    for (int i = 0; (t = matrix_at(bk, i)); i++) {
        if (!t->data) continue;
        bk->matrix_elems += t->shape[0] * t->shape[1];
        cpu_pack(p, dtype, t->data, t->dtype, t->shape[0], t->shape[1]);
        t->data = p;
        t->dtype = dtype;
        p += padded((size_t)cpu_packed_elems(t->shape[0], t->shape[1]) * cv_dtype_size(dtype));
    }
    return 0;
}

cv_backend *cpu_backend_create_from(const cv_model_config *cfg, const cv_model_weights *weights,
                                    int n_threads, cv_dtype matrix_dtype, cv_error *err)
{
    if (check_config(cfg, err) || check_weights(cfg, weights, err)) return NULL;
    cv_backend *bk = calloc(1, sizeof *bk);
    if (!bk) {
        cv_errorf(err, "cpu backend: out of memory");
        return NULL;
    }
    bk->cfg = *cfg;
    bk->weights = weights;
    bk->kern = cpu_kernels_best();
    /* fp32 KV keeps F32 and BF16 models within 1e-5 of HF's fp32 compute; F16
     * models get F16 KV, as HF and vLLM ("auto") give them, which halves the
     * KV bytes batched decode reads. */
    bk->kv_dtype = matrix_dtype == CV_DTYPE_F16 ? CV_DTYPE_F16 : CV_DTYPE_F32;
    bk->n_threads = n_threads > 0 ? n_threads : omp_get_max_threads();
    bk->parallel_min_madds = 4e6;
    bk->layers = calloc((size_t)cfg->n_layers, sizeof *bk->layers);
    bk->inv_freq = alloc_floats((size_t)cfg->head_dim / 2);
    bk->work_next = calloc((size_t)cpu_forward_phases(cfg), sizeof *bk->work_next);
    if (!bk->layers || !bk->inv_freq || !bk->work_next) {
        cv_errorf(err, "cpu backend: out of memory");
        goto fail;
    }
    cv_rope_inv_freq(cfg, bk->inv_freq);
    const int64_t h = cfg->hidden_size, hd = cfg->head_dim;
    const int64_t qd = cfg->n_heads * hd, kd = cfg->n_kv_heads * hd;
    const int64_t f = cfg->intermediate_size;
    bk->n_pos_rows = weights->pos_embed.data ? (int)weights->pos_embed.shape[0] : 0;
    if (widen(&weights->final_norm, h, &bk->final_norm, err) ||
        widen(&weights->final_norm_b, h, &bk->final_norm_b, err) ||
        widen(&weights->pos_embed, bk->n_pos_rows * h, &bk->pos_embed, err))
        goto fail;
    for (int l = 0; l < cfg->n_layers; l++) {
        const cv_layer_weights *L = &weights->layers[l];
        cpu_layer *cl = &bk->layers[l];
        cl->w = *L;
        if (widen(&L->attn_norm, h, &cl->attn_norm, err) ||
            widen(&L->attn_norm_b, h, &cl->attn_norm_b, err) ||
            widen(&L->ffn_norm, h, &cl->ffn_norm, err) ||
            widen(&L->ffn_norm_b, h, &cl->ffn_norm_b, err) || widen(&L->bq, qd, &cl->bq, err) ||
            widen(&L->bk, kd, &cl->bk, err) || widen(&L->bv, kd, &cl->bv, err) ||
            widen(&L->q_norm, hd, &cl->q_norm, err) || widen(&L->k_norm, hd, &cl->k_norm, err) ||
            widen(&L->bo, h, &cl->bo, err) || widen(&L->b_up, f, &cl->b_up, err) ||
            widen(&L->b_down, h, &cl->b_down, err))
            goto fail;
    }
    bk->lm_head = weights->lm_head;
    bk->project_in = weights->project_in;
    bk->project_out = weights->project_out;
    if (copy_matrices(bk, matrix_dtype, err)) goto fail;
    return bk;
fail:
    cv_backend_destroy(bk);
    return NULL;
}

cv_backend *cv_backend_cpu_create(const cv_model *model, int n_threads, cv_error *err)
{
    if (!model) {
        cv_errorf(err, "cv_backend_cpu_create: model is NULL");
        return NULL;
    }
    return cv_backend_cpu_create_as(model, n_threads, cv_model_get_config(model)->dtype, err);
}

cv_backend *cv_backend_cpu_create_as(const cv_model *model, int n_threads, cv_dtype matrix_dtype,
                                     cv_error *err)
{
    if (!model) {
        cv_errorf(err, "cv_backend_cpu_create: model is NULL");
        return NULL;
    }
    if (matrix_dtype != CV_DTYPE_F32 && matrix_dtype != CV_DTYPE_F16 &&
        matrix_dtype != CV_DTYPE_BF16) {
        cv_errorf(err, "cv_backend_cpu_create: unsupported weight dtype %d", (int)matrix_dtype);
        return NULL;
    }
    return cpu_backend_create_from(cv_model_get_config(model), cv_model_get_weights(model),
                                   n_threads, matrix_dtype, err);
}

int cpu_backend_set_simd(cv_backend *backend, cpu_simd_level level, cv_error *err)
{
    const cpu_kernels *k = cpu_kernels_get(level);
    if (!k) return cv_errorf(err, "cpu backend: this CPU lacks SIMD level %d", (int)level);
    backend->kern = k;
    return 0;
}

int cv_backend_cpu_set_kv_dtype(cv_backend *backend, cv_dtype dtype, cv_error *err)
{
    if (backend->kv)
        return cv_errorf(err, "cv_backend_cpu_set_kv_dtype: the KV pool is already allocated");
    if (dtype != CV_DTYPE_F32 && dtype != CV_DTYPE_F16 && dtype != CV_DTYPE_BF16)
        return cv_errorf(err, "cv_backend_cpu_set_kv_dtype: unsupported dtype %d", (int)dtype);
    backend->kv_dtype = dtype;
    return 0;
}

size_t cv_backend_kv_block_bytes(const cv_backend *backend, int block_size)
{
    const cv_model_config *c = &backend->cfg;
    return (size_t)c->n_layers * 2 * (size_t)c->n_kv_heads * (size_t)block_size *
           (size_t)c->head_dim * cv_dtype_size(backend->kv_dtype);
}

int cv_backend_kv_alloc(cv_backend *backend, int n_blocks, int block_size, cv_error *err)
{
    if (n_blocks <= 0 || block_size <= 0)
        return cv_errorf(err, "cv_backend_kv_alloc: n_blocks %d and block_size %d must be > 0",
                         n_blocks, block_size);
    size_t block_bytes = cv_backend_kv_block_bytes(backend, block_size);
    const size_t huge = (size_t)2 << 20;
    if ((size_t)n_blocks > (SIZE_MAX - huge) / block_bytes)
        return cv_errorf(err, "cv_backend_kv_alloc: %d blocks of %zu bytes overflow size_t",
                         n_blocks, block_bytes);
    const cv_model_config *c = &backend->cfg;
    /* 2 MiB pages (a hint, as for the weights): a decode step reads every
     * sequence's blocks, scattered over the pool, and with 4 KiB pages each
     * block's rows of a layer would cost TLB misses of their own. */
    size_t pool_bytes = ((size_t)n_blocks * block_bytes + huge - 1) & ~(huge - 1);
    void *kv = aligned_alloc(huge, pool_bytes);
    if (kv) (void)madvise(kv, pool_bytes, MADV_HUGEPAGE);
    float *scratch =
        alloc_floats((size_t)backend->n_threads * cpu_attn_scratch_floats(c, block_size));
    if (!kv || !scratch) {
        free(kv);
        free(scratch);
        return cv_errorf(err, "cv_backend_kv_alloc: out of memory for %d blocks of %zu bytes",
                         n_blocks, block_bytes);
    }
    free(backend->kv);
    free(backend->attn_scratch);
    backend->kv = kv;
    backend->attn_scratch = scratch;
    backend->n_blocks = n_blocks;
    backend->block_size = block_size;
    backend->block_elems = block_bytes / cv_dtype_size(backend->kv_dtype);
    return 0;
}

int cv_backend_kv_copy(cv_backend *backend, const int32_t *src, const int32_t *dst, int n,
                       cv_error *err)
{
    if (!backend->kv) return cv_errorf(err, "cv_backend_kv_copy: KV pool not allocated");
    for (int i = 0; i < n; i++) {
        if (src[i] < 0 || src[i] >= backend->n_blocks || dst[i] < 0 || dst[i] >= backend->n_blocks)
            return cv_errorf(err, "cv_backend_kv_copy: pair %d (%d -> %d) is outside blocks 0..%d",
                             i, src[i], dst[i], backend->n_blocks - 1);
    }
    const size_t block_bytes = backend->block_elems * cv_dtype_size(backend->kv_dtype);
    for (int i = 0; i < n; i++) {
        if (src[i] != dst[i])
            memcpy(cpu_kv_at(backend, (size_t)dst[i] * backend->block_elems),
                   cpu_kv_at(backend, (size_t)src[i] * backend->block_elems), block_bytes);
    }
    return 0;
}

static int check_batch(const cv_backend *bk, const cv_batch *b, cv_error *err)
{
    const char *fn = "cv_backend_forward";
    if (!bk->kv) return cv_errorf(err, "%s: KV pool not allocated (call cv_backend_kv_alloc)", fn);
    if (b->n_tokens <= 0 || b->n_seqs <= 0 || b->n_seqs > b->n_tokens)
        return cv_errorf(err, "%s: n_tokens %d and n_seqs %d must satisfy 0 < n_seqs <= n_tokens",
                         fn, b->n_tokens, b->n_seqs);
    if (b->max_blocks_per_seq <= 0 || b->n_logits < 0)
        return cv_errorf(err, "%s: max_blocks_per_seq %d must be > 0 and n_logits %d >= 0", fn,
                         b->max_blocks_per_seq, b->n_logits);
    if (b->query_start[0] != 0 || b->query_start[b->n_seqs] != b->n_tokens)
        return cv_errorf(err, "%s: query_start must run from 0 to n_tokens %d (got %d .. %d)", fn,
                         b->n_tokens, b->query_start[0], b->query_start[b->n_seqs]);
    const int64_t n_slots = (int64_t)bk->n_blocks * bk->block_size;
    for (int s = 0; s < b->n_seqs; s++) {
        int qlen = b->query_start[s + 1] - b->query_start[s];
        if (qlen <= 0)
            return cv_errorf(err,
                             "%s: sequence %d has %d query tokens (query_start not "
                             "increasing)",
                             fn, s, qlen);
        int len = b->seq_lens[s];
        if (len < qlen || len > b->max_blocks_per_seq * bk->block_size)
            return cv_errorf(err, "%s: seq_lens[%d] = %d must be in %d..%d", fn, s, len, qlen,
                             b->max_blocks_per_seq * bk->block_size);
        const int32_t *table = b->block_tables + (int64_t)s * b->max_blocks_per_seq;
        for (int j = 0; j < (len + bk->block_size - 1) / bk->block_size; j++)
            if (table[j] < 0 || table[j] >= bk->n_blocks)
                return cv_errorf(err, "%s: block_tables[%d][%d] = %d is outside blocks 0..%d", fn,
                                 s, j, table[j], bk->n_blocks - 1);
    }
    for (int t = 0; t < b->n_tokens; t++) {
        if (b->token_ids[t] < 0 || b->token_ids[t] >= bk->cfg.vocab_size)
            return cv_errorf(err, "%s: token_ids[%d] = %d is outside the vocabulary 0..%d", fn, t,
                             b->token_ids[t], bk->cfg.vocab_size - 1);
        if (b->positions[t] < 0)
            return cv_errorf(err, "%s: positions[%d] = %d is negative", fn, t, b->positions[t]);
        if (bk->pos_embed && b->positions[t] >= bk->cfg.max_position_embeddings)
            return cv_errorf(err, "%s: positions[%d] = %d is past the model's %d learned positions",
                             fn, t, b->positions[t], bk->cfg.max_position_embeddings);
        if (b->slot_mapping[t] < 0 || b->slot_mapping[t] >= n_slots)
            return cv_errorf(err, "%s: slot_mapping[%d] = %" PRId64 " is outside slots 0..%" PRId64,
                             fn, t, b->slot_mapping[t], n_slots - 1);
    }
    for (int i = 0; i < b->n_logits; i++)
        if (b->logits_indices[i] < 0 || b->logits_indices[i] >= b->n_tokens)
            return cv_errorf(err, "%s: logits_indices[%d] = %d is outside tokens 0..%d", fn, i,
                             b->logits_indices[i], b->n_tokens - 1);
    return 0;
}

/* Grows the activation buffers when a batch is larger than any before. */
static int reserve(cv_backend *bk, int n_tokens, int n_logits, cv_error *err)
{
    if (n_tokens <= bk->cap_tokens && n_logits <= bk->cap_logits) return 0;
    int nt = n_tokens > bk->cap_tokens ? n_tokens : bk->cap_tokens;
    int nl = n_logits > bk->cap_logits ? n_logits : bk->cap_logits;
    nl = nl < 1 ? 1 : nl;
    const cv_model_config *c = &bk->cfg;
    /* Row widths rounded to 16 floats keep every row 64-byte aligned. */
#define ROUND16(n) ((((size_t)(n)) + 15) & ~(size_t)15)
    const int e = cv_config_embed_dim(c);
    size_t wh = ROUND16(c->hidden_size > e ? c->hidden_size : e),
           wq = ROUND16((size_t)c->n_heads * c->head_dim),
           wk = ROUND16((size_t)c->n_kv_heads * c->head_dim), wf = ROUND16(c->intermediate_size),
           wr = ROUND16(c->head_dim / 2);
    size_t per_tok = 2 * wh + 2 * wq + 2 * wk + 2 * wf + 2 * wr + 1;
    size_t total = (size_t)nt * per_tok + 2 * (size_t)nl * wh;
    float *act = alloc_floats(total);
    int32_t *tok_seq = malloc((size_t)nt * sizeof *tok_seq);
    if (!act || !tok_seq) {
        free(act);
        free(tok_seq);
        return cv_errorf(err, "cv_backend_forward: out of memory for activations of %d tokens", nt);
    }
    free(bk->act);
    free(bk->tok_seq);
    bk->act = act;
    bk->tok_seq = tok_seq;
    float *p = act;
    bk->x = p, p += (size_t)nt * wh;
    bk->xn = p, p += (size_t)nt * wh;
    bk->q = p, p += (size_t)nt * wq;
    bk->attn = p, p += (size_t)nt * wq;
    bk->k = p, p += (size_t)nt * wk;
    bk->v = p, p += (size_t)nt * wk;
    bk->gate = p, p += (size_t)nt * wf;
    bk->up = p, p += (size_t)nt * wf;
    bk->rope_cos = p, p += (size_t)nt * wr;
    bk->rope_sin = p, p += (size_t)nt * wr;
    bk->xl = p, p += (size_t)nl * wh;
    bk->xp = p;
#undef ROUND16
    bk->ld_h = (int)wh, bk->ld_q = (int)wq, bk->ld_kv = (int)wk, bk->ld_f = (int)wf;
    bk->ld_r = (int)wr;
    bk->cap_tokens = nt;
    bk->cap_logits = nl;
    return 0;
}

int cv_backend_forward(cv_backend *backend, const cv_batch *batch, float *logits, cv_error *err)
{
    if (!batch || (batch->n_logits > 0 && !logits))
        return cv_errorf(err, "cv_backend_forward: batch or logits buffer is NULL");
    if (check_batch(backend, batch, err) ||
        reserve(backend, batch->n_tokens, batch->n_logits, err) ||
        cpu_lora_prepare(backend, batch, err))
        return -1;
    cpu_forward_run(backend, batch, logits);
    return 0;
}

void cv_backend_destroy(cv_backend *backend)
{
    if (!backend) return;
    if (backend->layers) {
        for (int l = 0; l < backend->cfg.n_layers; l++) {
            cpu_layer *cl = &backend->layers[l];
            free(cl->attn_norm);
            free(cl->attn_norm_b);
            free(cl->ffn_norm);
            free(cl->ffn_norm_b);
            free(cl->bo);
            free(cl->b_up);
            free(cl->b_down);
            free(cl->bq);
            free(cl->bk);
            free(cl->bv);
            free(cl->q_norm);
            free(cl->k_norm);
        }
    }
    free(backend->layers);
    free(backend->matrix_copy);
    free(backend->final_norm);
    free(backend->final_norm_b);
    free(backend->pos_embed);
    free(backend->inv_freq);
    free(backend->work_next);
    free(backend->kv);
    free(backend->attn_scratch);
    free(backend->act);
    free(backend->tok_seq);
    cpu_lora_free(backend);
    free(backend);
}

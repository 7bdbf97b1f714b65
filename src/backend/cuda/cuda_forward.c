/* CUDA backend: one forward step. Validates the batch on the host, uploads
 * its arrays with one copy, then enqueues per layer
 *   RMSNorm -> QKV GEMM -> bias/q-k norm/RoPE/KV store -> paged attention
 *   -> O GEMM (+= residual) -> RMSNorm -> gate|up GEMM -> act(gate) * up
 *   -> down GEMM (+= residual)
 * and the final norm + LM head for the requested rows only. The residual
 * adds are the GEMMs' beta = 1. OPT and GPT-2 (LayerNorm, learned
 * positions, biases, a plain MLP, post-norm, project_in / project_out) take
 * the same steps with the kernels of kernels/norm_act.cu where their
 * config asks for them. Steps of 1..8 tokens on 16-bit weights run the
 * products as the GEMVs of kernels/gemv.h instead, with RoPE / KV store
 * (models without q/k norms) and act(gate) * up in their epilogues. A step
 * with LoRA adapters runs the same products into the same dtypes and adds
 * each adapter's delta right after its product (lora/cuda_lora.h); only the
 * two GEMV epilogues above, which consume the product before a delta could
 * land, are split into the GEMV's fp32 store and their own kernels. Decode
 * steps replay CUDA graphs (cuda_graph.c). */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/attn/attn.h"
#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/kernels/embed.h"
#include "backend/cuda/kernels/gemv.h"
#include "backend/cuda/kernels/greedy.h"
#include "backend/cuda/kernels/norm_act.h"
#include "backend/cuda/kernels/rope_kv.h"
#include "backend/cuda/lora/cuda_lora.h"

static const char *const phase_names[CV_CUDA_N_PHASES] = {"embed",
                                                          "rmsnorm",
                                                          "qkv_gemm",
                                                          "rope_kv_store",
                                                          "attention",
                                                          "o_gemm",
                                                          "gate_up_gemm",
                                                          "act_mul",
                                                          "down_gemm",
                                                          "final_norm_lm_head",
                                                          "batch_upload_logits_copy"};

static int check_batch(const cv_cuda_backend *b, const cv_batch *bt, cv_error *err)
{
    const char *fn = "cv_cuda_backend_forward";
    if (!b->kv)
        return cv_errorf(err, "%s: KV pool not allocated (call cv_cuda_backend_kv_alloc)", fn);
    if (bt->n_tokens <= 0 || bt->n_seqs <= 0 || bt->n_seqs > bt->n_tokens)
        return cv_errorf(err, "%s: n_tokens %d and n_seqs %d must satisfy 0 < n_seqs <= n_tokens",
                         fn, bt->n_tokens, bt->n_seqs);
    /* The decode work list packs a sequence and a partition in 16 bits each
     * (attn.h). */
    if (bt->n_seqs > 0xffff) return cv_errorf(err, "%s: n_seqs %d is over 65535", fn, bt->n_seqs);
    if (bt->max_blocks_per_seq <= 0 || bt->n_logits < 0)
        return cv_errorf(err, "%s: max_blocks_per_seq %d must be > 0 and n_logits %d >= 0", fn,
                         bt->max_blocks_per_seq, bt->n_logits);
    if (bt->query_start[0] != 0 || bt->query_start[bt->n_seqs] != bt->n_tokens)
        return cv_errorf(err, "%s: query_start must run from 0 to n_tokens %d (got %d .. %d)", fn,
                         bt->n_tokens, bt->query_start[0], bt->query_start[bt->n_seqs]);
    const int64_t n_slots = (int64_t)b->n_blocks * b->block_size;
    for (int s = 0; s < bt->n_seqs; s++) {
        const int qlen = bt->query_start[s + 1] - bt->query_start[s];
        if (qlen <= 0)
            return cv_errorf(err,
                             "%s: sequence %d has %d query tokens (query_start not "
                             "increasing)",
                             fn, s, qlen);
        const int len = bt->seq_lens[s];
        const int64_t most = (int64_t)bt->max_blocks_per_seq * b->block_size < CUDA_MAX_CONTEXT
                                 ? (int64_t)bt->max_blocks_per_seq * b->block_size
                                 : CUDA_MAX_CONTEXT;
        if (len < qlen || len > most)
            return cv_errorf(err, "%s: seq_lens[%d] = %d must be in %d..%lld", fn, s, len, qlen,
                             (long long)most);
        const int32_t *table = bt->block_tables + (int64_t)s * bt->max_blocks_per_seq;
        for (int j = 0; j < (len + b->block_size - 1) / b->block_size; j++)
            if (table[j] < 0 || table[j] >= b->n_blocks)
                return cv_errorf(err, "%s: block_tables[%d][%d] = %d is outside blocks 0..%d", fn,
                                 s, j, table[j], b->n_blocks - 1);
    }
    for (int t = 0; t < bt->n_tokens; t++) {
        if (bt->token_ids[t] < 0 || bt->token_ids[t] >= b->cfg.vocab_size)
            return cv_errorf(err, "%s: token_ids[%d] = %d is outside the vocabulary 0..%d", fn, t,
                             bt->token_ids[t], b->cfg.vocab_size - 1);
        if (bt->positions[t] < 0)
            return cv_errorf(err, "%s: positions[%d] = %d is negative", fn, t, bt->positions[t]);
        if (b->pos_embed && bt->positions[t] >= b->cfg.max_position_embeddings)
            return cv_errorf(err, "%s: positions[%d] = %d is past the model's %d learned positions",
                             fn, t, bt->positions[t], b->cfg.max_position_embeddings);
        if (bt->slot_mapping[t] < 0 || bt->slot_mapping[t] >= n_slots)
            return cv_errorf(err, "%s: slot_mapping[%d] = %" PRId64 " is outside slots 0..%" PRId64,
                             fn, t, bt->slot_mapping[t], n_slots - 1);
    }
    for (int i = 0; i < bt->n_logits; i++)
        if (bt->logits_indices[i] < 0 || bt->logits_indices[i] >= bt->n_tokens)
            return cv_errorf(err, "%s: logits_indices[%d] = %d is outside tokens 0..%d", fn, i,
                             bt->logits_indices[i], bt->n_tokens - 1);
    return 0;
}

static size_t align256(size_t n)
{
    return (n + 255) & ~(size_t)255;
}

/* Grows the device activations when a batch is larger than any before. */
static int reserve(cv_cuda_backend *b, int n_tokens, int n_logits, cv_error *err)
{
    if (n_tokens <= b->cap_tokens && n_logits <= b->cap_logits) return 0;
    const int nt = n_tokens > b->cap_tokens ? n_tokens : b->cap_tokens;
    int nl = n_logits > b->cap_logits ? n_logits : b->cap_logits;
    nl = nl < 1 ? 1 : nl;
    const cv_model_config *c = &b->cfg;
    /* GEMM operands: twice the rows (hi, lo) with split activations. */
    const size_t as = cv_dtype_size(b->wdtype) * (b->split_act ? 2 : 1);
    const size_t h = (size_t)c->hidden_size, f = (size_t)c->intermediate_size,
                 qd = (size_t)c->n_heads * c->head_dim, pd = (size_t)c->proj_dim;
    /* xn and xl also hold proj_dim-wide rows (OPT's project_in / _out). */
    const size_t hp = h > pd ? h : pd;
    size_t widest = hp > 2 * f ? hp : 2 * f;
    widest = widest > (size_t)b->qkv_dim ? widest : (size_t)b->qkv_dim;
    const size_t head_out = (size_t)c->vocab_size > pd ? (size_t)c->vocab_size : pd;
    size_t y2 =
        (size_t)nt * widest > (size_t)nl * head_out ? (size_t)nt * widest : (size_t)nl * head_out;
    y2 = b->split_act ? 2 * y2 * 4 : 0;
    const size_t sizes[11] = {
        (size_t)nt * h * 4,
        (size_t)nt * hp * as,
        (size_t)nt * b->qkv_dim * 4,
        (size_t)nt * qd * as,
        (size_t)nt * 2 * f * 4,
        (size_t)nt * f * as,
        (size_t)nl * hp * as,
        (size_t)nl * c->vocab_size * 4,
        y2,
        (size_t)nl * sizeof(cuda_greedy_out),
        (size_t)nl * pd * 4,
    };
    size_t total = 0;
    for (int i = 0; i < 11; i++)
        total += align256(sizes[i]);
    void *mem = NULL, *greedy_host = NULL;
    cudaError_t e = cudaMalloc(&mem, total);
    if (e == cudaSuccess) e = cudaMallocHost(&greedy_host, sizes[9]);
    if (e != cudaSuccess) {
        cudaFree(mem);
        return cv_errorf(err, "cv_cuda_backend_forward: %zu bytes of activations for %d tokens: %s",
                         total, nt, cudaGetErrorString(e));
    }
    cuda_graphs_clear(b); /* they point into the old buffers */
    cudaFree(b->act_mem);
    cudaFreeHost(b->greedy_host);
    b->act_mem = mem;
    b->greedy_host = greedy_host;
    char *p[11];
    p[0] = mem;
    for (int i = 1; i < 11; i++)
        p[i] = p[i - 1] + align256(sizes[i - 1]);
    b->x = (float *)p[0];
    b->xn = p[1];
    b->qkv = (float *)p[2];
    b->attn = p[3];
    b->gu = (float *)p[4];
    b->mlp = p[5];
    b->xl = p[6];
    b->logits = (float *)p[7];
    b->y2 = (float *)p[8];
    b->greedy_dev = (cuda_greedy_out *)p[9];
    b->xp = (float *)p[10];
    b->cap_tokens = nt;
    b->cap_logits = nl;
    return 0;
}

int cv_cuda_backend_reserve(cv_cuda_backend *b, int n_tokens, int n_logits, cv_error *err)
{
    CU(cudaSetDevice(b->device), "cudaSetDevice");
    return reserve(b, n_tokens, n_logits, err);
}

/* The staging layout of a step: the batch arrays, then the decode work
 * array (room for b->work_items_cap items), then the block tables. Every
 * address but the tables' end depends only on the token, sequence and
 * logits counts, so a graph captured for a batch size replays steps of any
 * table width. off[] and the total in bytes. */
enum {
    STAGE_SLOTS,
    STAGE_IDS,
    STAGE_POS,
    STAGE_TOK_SEQ,
    STAGE_QS,
    STAGE_LENS,
    STAGE_ROWS,
    STAGE_WORK,
    STAGE_TABLES,
    STAGE_N
};
static size_t stage_layout(const cv_cuda_backend *b, int n_tokens, int n_seqs, int n_logits,
                           int width, size_t off[STAGE_N])
{
    const size_t n = (size_t)n_tokens, ns = (size_t)n_seqs;
    const size_t bytes[STAGE_N] = {
        [STAGE_SLOTS] = n * 8,
        [STAGE_IDS] = n * 4,
        [STAGE_POS] = n * 4,
        [STAGE_TOK_SEQ] = n * 4,
        [STAGE_QS] = (ns + 1) * 4,
        [STAGE_LENS] = ns * 4,
        [STAGE_ROWS] = (size_t)n_logits * 4,
        [STAGE_WORK] = cuda_attn_work_ints(n_seqs, b->work_items_cap) * 4,
        [STAGE_TABLES] = ns * (size_t)width * 4,
    };
    size_t total = 0;
    for (int i = 0; i < STAGE_N; i++) {
        off[i] = total;
        total += (bytes[i] + 7) & ~(size_t)7; /* keeps the int64 slots aligned */
    }
    return total;
}

int cuda_stage_reserve(cv_cuda_backend *b, size_t bytes, cv_error *err)
{
    if (bytes <= b->stage_cap_bytes) return 0;
    cuda_graphs_clear(b); /* they read the old buffer */
    cudaFreeHost(b->stage_host);
    cudaFree(b->stage_dev);
    b->stage_host = b->stage_dev = NULL;
    b->stage_cap_bytes = 0;
    CU(cudaMallocHost(&b->stage_host, bytes), "pinned staging buffer");
    CU(cudaMalloc(&b->stage_dev, bytes), "device batch buffer");
    b->stage_cap_bytes = bytes;
    return 0;
}

size_t cuda_stage_bytes(const cv_cuda_backend *b, int n_tokens, int n_seqs, int n_logits, int width)
{
    size_t off[STAGE_N];
    return stage_layout(b, n_tokens, n_seqs, n_logits, width, off);
}

/* Packs the batch (each token's sequence index and the decode work list
 * with it) into the pinned staging buffer and enqueues one upload. */
static int upload_batch(cv_cuda_backend *b, const cv_batch *bt, const step_attn *sa, step_arrays *d,
                        cv_error *err)
{
    size_t off[STAGE_N];
    const size_t total =
        stage_layout(b, bt->n_tokens, bt->n_seqs, bt->n_logits, bt->max_blocks_per_seq, off);
    if (total > b->stage_cap_bytes && cuda_stage_reserve(b, total * 2, err)) return -1;
    char *h = b->stage_host;
    memcpy(h + off[STAGE_SLOTS], bt->slot_mapping, (size_t)bt->n_tokens * 8);
    memcpy(h + off[STAGE_IDS], bt->token_ids, (size_t)bt->n_tokens * 4);
    memcpy(h + off[STAGE_POS], bt->positions, (size_t)bt->n_tokens * 4);
    int32_t *tok_seq = (int32_t *)(h + off[STAGE_TOK_SEQ]);
    for (int s = 0; s < bt->n_seqs; s++)
        for (int t = bt->query_start[s]; t < bt->query_start[s + 1]; t++)
            tok_seq[t] = s;
    memcpy(h + off[STAGE_QS], bt->query_start, ((size_t)bt->n_seqs + 1) * 4);
    memcpy(h + off[STAGE_LENS], bt->seq_lens, (size_t)bt->n_seqs * 4);
    if (bt->n_logits > 0) memcpy(h + off[STAGE_ROWS], bt->logits_indices, (size_t)bt->n_logits * 4);
    if (sa->tensor_cores && sa->plan.has_decode)
        cuda_attn_work_fill(&sa->plan, bt->query_start, bt->seq_lens, bt->n_seqs,
                            bt->max_blocks_per_seq, (int32_t *)(h + off[STAGE_WORK]));
    memcpy(h + off[STAGE_TABLES], bt->block_tables,
           (size_t)bt->n_seqs * bt->max_blocks_per_seq * 4);
    CU(cudaMemcpyAsync(b->stage_dev, h, total, cudaMemcpyHostToDevice, b->stream), "batch upload");
    char *dv = b->stage_dev;
    d->slots = (const int64_t *)(dv + off[STAGE_SLOTS]);
    d->ids = (const int32_t *)(dv + off[STAGE_IDS]);
    d->positions = (const int32_t *)(dv + off[STAGE_POS]);
    d->tok_seq = (const int32_t *)(dv + off[STAGE_TOK_SEQ]);
    d->query_start = (const int32_t *)(dv + off[STAGE_QS]);
    d->seq_lens = (const int32_t *)(dv + off[STAGE_LENS]);
    d->logits_rows = (const int32_t *)(dv + off[STAGE_ROWS]);
    d->work = (const int32_t *)(dv + off[STAGE_WORK]);
    d->tables = (const int32_t *)(dv + off[STAGE_TABLES]);
    return 0;
}

/* Decode-size products (1..8 tokens, 16-bit weights) run as the GEMV of
 * kernels/gemv.h, which streams W near the copy bandwidth; larger ones and
 * f32 models as cuBLAS GEMMs. */
static bool use_gemv(const cv_cuda_backend *b, const void *w, int in, const void *x, int n_tok)
{
    return cuda_gemv_supported(b->wdtype, n_tok, in, w, x, b->split_act ? (size_t)n_tok * in : 0);
}

/* Y (n_tok, out) fp32 = X (n_tok, in) W^T + beta Y, W (out, in) row-major in
 * the weight dtype, X in the same dtype. cuBLAS is column-major: this is
 * Y^T = W^T(col-major (in, out))^T X^T. With split activations X has 2 n_tok
 * rows (hi, lo): one GEMM into y2, then y = y2[hi] + y2[lo] (+ y). */
static int gemm(cv_cuda_backend *b, const void *w, int out, int in, const void *x, int n_tok,
                float *y, float beta, cv_error *err)
{
    const float alpha = 1.0f, zero = 0.0f;
    if (use_gemv(b, w, in, x, n_tok)) {
        const cuda_gemv_args ga = {
            .dtype = b->wdtype,
            .w = w,
            .out = out,
            .in = in,
            .x = x,
            .x_lo_off = b->split_act ? (size_t)n_tok * in : 0,
            .n_tok = n_tok,
            .epilogue = beta != 0.0f ? CUDA_GEMV_ACCUMULATE : CUDA_GEMV_STORE,
            .y = y,
            .pdl = 1,
        };
        KL(cuda_gemv(&ga, b->stream), "gemv kernel");
    } else if (b->split_act) {
        const cudaDataType_t t = b->wdtype == CV_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
        CB(cublasGemmEx(b->blas, CUBLAS_OP_T, CUBLAS_OP_N, out, 2 * n_tok, in, &alpha, w, t, in, x,
                        t, in, &zero, b->y2, CUDA_R_32F, out, CUBLAS_COMPUTE_32F,
                        CUBLAS_GEMM_DEFAULT),
           "cublasGemmEx");
        KL(cuda_sum_halves(b->y2, (size_t)n_tok * out, y, beta != 0.0f, b->stream),
           "split-activation sum kernel");
    } else if (b->wdtype == CV_DTYPE_F32) {
        CB(cublasSgemm(b->blas, CUBLAS_OP_T, CUBLAS_OP_N, out, n_tok, in, &alpha, w, in, x, in,
                       &beta, y, out),
           "cublasSgemm");
    } else {
        const cudaDataType_t t = b->wdtype == CV_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
        CB(cublasGemmEx(b->blas, CUBLAS_OP_T, CUBLAS_OP_N, out, n_tok, in, &alpha, w, t, in, x, t,
                        in, &beta, y, CUDA_R_32F, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
           "cublasGemmEx");
    }
    return 0;
}

/* Y (n_tok, out) = X W^T into a Y of y_dtype: fp32 as gemm with beta 0, or
 * the weight dtype (fp32 accumulation): vLLM's numerics (its GEMMs return
 * the model's dtype), for products whose only reader widens them again, at
 * half the bytes of an fp32 Y (16-bit weights, no split activations). */
static int gemm_to(cv_cuda_backend *b, const void *w, int out, int in, const void *x, int n_tok,
                   void *y, cv_dtype y_dtype, cv_error *err)
{
    if (y_dtype == CV_DTYPE_F32) return gemm(b, w, out, in, x, n_tok, y, 0.0f, err);
    const float alpha = 1.0f, zero = 0.0f;
    const cudaDataType_t t = b->wdtype == CV_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    CB(cublasGemmEx(b->blas, CUBLAS_OP_T, CUBLAS_OP_N, out, n_tok, in, &alpha, w, t, in, x, t, in,
                    &zero, y, t, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
       "cublasGemmEx");
    return 0;
}

/* Records a profiling event closing a span of PHASE (no-op unless enabled). */
static int mark(cv_cuda_backend *b, int phase, cv_error *err)
{
    if (!b->prof || b->n_events >= b->max_events) return 0;
    CU(cudaEventRecord(b->events[b->n_events], b->stream), "cudaEventRecord");
    b->event_phase[b->n_events++] = phase;
    return 0;
}

/* Attention splits: a block handles one (token, kv head) and its keys one
 * after the other, so small batches (decode) get their contexts cut until
 * there are about 8 blocks per SM, with at least min_split_keys keys per
 * split (rounded to a power of two, so the count, part of a graph's shape,
 * changes rarely as contexts grow) and at most 32 splits. */
static int choose_splits(const cv_cuda_backend *b, const cv_batch *bt)
{
    const int work = bt->n_tokens * b->cfg.n_kv_heads, want = 8 * b->n_sms;
    if (work >= want) return 1;
    int max_ctx = 0;
    for (int s = 0; s < bt->n_seqs; s++)
        max_ctx = bt->seq_lens[s] > max_ctx ? bt->seq_lens[s] : max_ctx;
    const int by_len = (max_ctx + b->min_split_keys - 1) / b->min_split_keys;
    int splits = 1;
    while (splits < by_len && splits < 32)
        splits *= 2;
    const int by_work = (want + work - 1) / work;
    return splits < by_work ? splits : by_work;
}

/* out (n_rows, n) = the model's norm (RMSNorm, or LayerNorm with bias) of
 * rows of src (rows[r], or r when NULL); with w NULL the rows as they are. */
static int norm_rows(cv_cuda_backend *b, const float *src, const int32_t *rows, int n_rows,
                     const float *w, const float *bias, int n, cv_dtype out_dtype, void *out,
                     size_t lo_off, const char *what, cv_error *err)
{
    const cv_model_config *c = &b->cfg;
    if (w && c->norm_type == CV_NORM_RMS && cuda_rmsnorm_rows_supported(n_rows, n, src))
        /* Decode-size steps: the one-read kernel of kernels/gemv.h. */
        KL(cuda_rmsnorm_rows(src, rows, n_rows, w, n, c->rms_norm_eps, out_dtype, out, n, lo_off, 1,
                             b->stream),
           what);
    else if (w && c->norm_type == CV_NORM_RMS)
        KL(cuda_rmsnorm(src, rows, n_rows, w, n, c->rms_norm_eps, out_dtype, out, n, lo_off,
                        b->stream),
           what);
    else
        KL(cuda_layernorm(src, rows, n_rows, w, bias, n, c->rms_norm_eps, out_dtype, out, n, lo_off,
                          b->stream),
           what);
    return 0;
}

/* Pre-norm (Llama, OPT-125m, GPT-2): x += attn(norm(x)); x += mlp(norm(x)).
 * Post-norm (OPT with do_layer_norm_before false): each sublayer reads x
 * itself and x = norm(x + sublayer(x)). Biases (OPT, GPT-2) are added to
 * the GEMMs' results; the plain MLP is down(act(up x + b_up)) + b_down. */
static int layer_forward(cv_cuda_backend *b, const cv_batch *bt, const step_arrays *d, int l,
                         const step_attn *sa, cv_error *err)
{
    const cv_model_config *c = &b->cfg;
    const cuda_layer *L = &b->layers[l];
    const int nt = bt->n_tokens, h = c->hidden_size, f = c->intermediate_size;
    const int qd = c->n_heads * c->head_dim;
    const size_t layer_off = (size_t)l * 2 * c->n_kv_heads * b->block_size * c->head_dim;
    const size_t split = b->split_act ? 1 : 0; /* lo rows follow the nt hi rows */
    const bool post = c->post_norm;
    /* vLLM's numerics (16-bit weights, no split): GEMM results that only
     * elementwise kernels read leave the GEMM in the weight dtype, half the
     * bytes of fp32. q|k|v so only where the tensor-core attention reads q
     * (the scalar fallback reads fp32) and cuBLAS, not the GEMV, runs it.
     * A LoRA step keeps these dtypes: its expand adds the delta into the
     * 16-bit product in place (one more rounding, as vLLM's Punica expand
     * with add_inputs does), so the base products run as without adapters. */
    const cv_dtype act16 = split || b->wdtype == CV_DTYPE_F32 ? CV_DTYPE_F32 : b->wdtype;
    const cv_dtype qkv_dtype =
        sa->tensor_cores && !use_gemv(b, L->wqkv, h, b->xn, nt) ? act16 : CV_DTYPE_F32;
    const bool gu_gemv = !c->plain_mlp && use_gemv(b, L->wgu, h, b->xn, nt);

    if (norm_rows(b, b->x, NULL, nt, post ? NULL : L->attn_norm, L->attn_norm_b, h, b->wdtype,
                  b->xn, split * nt * h, "attention norm", err) ||
        mark(b, CV_CUDA_PHASE_NORM, err))
        return -1;
    /* Not in a LoRA step: the epilogue rotates q and k and stores k and v
     * from the GEMV's accumulators, before a delta could be added; such a
     * step runs the same GEMV with a plain fp32 store, the expand, then
     * cuda_qkv_post (one more launch, the same weight stream). */
    if (c->pos_type == CV_POS_ROPE && !L->q_norm && !L->k_norm && !b->lora_step &&
        use_gemv(b, L->wqkv, h, b->xn, nt)) {
        /* Biases, RoPE and the KV store in the GEMV's epilogue. */
        const cuda_gemv_args ga = {
            .dtype = b->wdtype,
            .w = L->wqkv,
            .out = b->qkv_dim,
            .in = h,
            .x = b->xn,
            .x_lo_off = split * nt * h,
            .n_tok = nt,
            .epilogue = CUDA_GEMV_ROPE_KV,
            .y = b->qkv,
            .rope =
                {
                    .n_heads = c->n_heads,
                    .n_kv_heads = c->n_kv_heads,
                    .head_dim = c->head_dim,
                    .block_size = b->block_size,
                    .bq = L->bq,
                    .bk = L->bk,
                    .bv = L->bv,
                    .inv_freq = b->inv_freq,
                    .positions = d->positions,
                    .slot_mapping = d->slots,
                    .kv = b->kv,
                    .kv_dtype = b->kv_dtype,
                    .block_elems = b->block_elems,
                    .layer_off = layer_off,
                },
            .pdl = 1,
        };
        KL(cuda_gemv(&ga, b->stream), "qkv gemv + rope/kv store kernel");
        if (mark(b, CV_CUDA_PHASE_QKV_GEMM, err)) return -1;
    } else {
        if (cuda_lora_begin(b, l, CUDA_LORA_QKV, b->xn, nt, err) ||
            gemm_to(b, L->wqkv, b->qkv_dim, h, b->xn, nt, b->qkv, qkv_dtype, err) ||
            cuda_lora_apply(b, l, CUDA_LORA_QKV, b->qkv, qkv_dtype, err) ||
            mark(b, CV_CUDA_PHASE_QKV_GEMM, err))
            return -1;
        const cuda_qkv_args qa = {
            .n_tokens = nt,
            .n_heads = c->n_heads,
            .n_kv_heads = c->n_kv_heads,
            .head_dim = c->head_dim,
            .block_size = b->block_size,
            .qkv = b->qkv,
            .qkv_dtype = qkv_dtype,
            .bq = L->bq,
            .bk = L->bk,
            .bv = L->bv,
            .q_norm = L->q_norm,
            .k_norm = L->k_norm,
            .eps = c->rms_norm_eps,
            .inv_freq = b->inv_freq,
            .positions = d->positions,
            .slot_mapping = d->slots,
            .kv = b->kv,
            .kv_dtype = b->kv_dtype,
            .block_elems = b->block_elems,
            .layer_off = layer_off,
        };
        KL(cuda_qkv_post(&qa, b->stream), "rope/kv store kernel");
    }
    if (mark(b, CV_CUDA_PHASE_ROPE_KV, err)) return -1;
    if (sa->tensor_cores) {
        const cuda_attn_paged pa = {
            .n_tokens = nt,
            .n_seqs = bt->n_seqs,
            .n_heads = c->n_heads,
            .n_kv_heads = c->n_kv_heads,
            .head_dim = c->head_dim,
            .block_size = b->block_size,
            .max_blocks_per_seq = bt->max_blocks_per_seq,
            .query_start = d->query_start,
            .seq_lens = d->seq_lens,
            .block_tables = d->tables,
            .decode_work = d->work,
            .q = b->qkv,
            .q_dtype = qkv_dtype,
            .ld_q = b->qkv_dim,
            .kv = b->kv,
            .kv_dtype = b->kv_dtype,
            .block_elems = b->block_elems,
            .layer_off = layer_off,
            .scale = 1.0f / sqrtf((float)c->head_dim),
            .out = b->attn,
            .out_dtype = b->wdtype,
            .ld_out = qd,
            .out_lo_off = split * nt * qd,
        };
        KL(cuda_attn_run(&pa, &sa->plan, b->partial, b->stream), "tensor-core attention");
    } else {
        const cuda_attn_args aa = {
            .n_tokens = nt,
            .n_heads = c->n_heads,
            .n_kv_heads = c->n_kv_heads,
            .head_dim = c->head_dim,
            .block_size = b->block_size,
            .max_blocks_per_seq = bt->max_blocks_per_seq,
            .tok_seq = d->tok_seq,
            .query_start = d->query_start,
            .seq_lens = d->seq_lens,
            .block_tables = d->tables,
            .qkv = b->qkv,
            .ld_qkv = b->qkv_dim,
            .kv = b->kv,
            .kv_dtype = b->kv_dtype,
            .block_elems = b->block_elems,
            .layer_off = layer_off,
            .scale = 1.0f / sqrtf((float)c->head_dim),
            .out = b->attn,
            .out_dtype = b->wdtype,
            .out_lo_off = split * nt * qd,
            .n_splits = sa->n_splits,
            .partial = b->partial,
        };
        KL(cuda_attention(&aa, b->stream), "attention kernel");
    }
    if (mark(b, CV_CUDA_PHASE_ATTN, err) || cuda_lora_begin(b, l, CUDA_LORA_O, b->attn, nt, err) ||
        gemm(b, L->wo, h, qd, b->attn, nt, b->x, 1.0f, err) ||
        cuda_lora_apply(b, l, CUDA_LORA_O, b->x, CV_DTYPE_F32, err) ||
        mark(b, CV_CUDA_PHASE_O_GEMM, err))
        return -1;
    if (L->bo) KL(cuda_add_bias(b->x, L->bo, nt, h, b->stream), "output bias kernel");
    if (post && norm_rows(b, b->x, NULL, nt, L->attn_norm, L->attn_norm_b, h, CV_DTYPE_F32, b->x, 0,
                          "attention norm", err))
        return -1;
    if (norm_rows(b, b->x, NULL, nt, post ? NULL : L->ffn_norm, L->ffn_norm_b, h, b->wdtype, b->xn,
                  split * nt * h, "mlp norm", err) ||
        mark(b, CV_CUDA_PHASE_NORM, err))
        return -1;
    if (c->plain_mlp) {
        if (gemm(b, L->wgu, f, h, b->xn, nt, b->gu, 0.0f, err) ||
            mark(b, CV_CUDA_PHASE_UPGATE_GEMM, err))
            return -1;
        KL(cuda_bias_act(c->hidden_act, b->gu, L->b_up, nt, f, b->wdtype, b->mlp, split * nt * f,
                         b->stream),
           "mlp activation kernel");
    } else if (!b->lora_step && gu_gemv) {
        /* act(gate) * up in the GEMV's epilogue: no fp32 gate|up buffer. */
        const cuda_gemv_args ga = {
            .dtype = b->wdtype,
            .w = L->wgu,
            .out = 2 * f,
            .in = h,
            .x = b->xn,
            .x_lo_off = split * nt * h,
            .n_tok = nt,
            .epilogue = CUDA_GEMV_GATED,
            .act = c->hidden_act,
            .act_out = b->mlp,
            .act_lo_off = split * nt * f,
            .pdl = 1,
        };
        KL(cuda_gemv(&ga, b->stream), "gated gemv kernel");
        if (mark(b, CV_CUDA_PHASE_UPGATE_GEMM, err)) return -1;
    } else {
        /* A LoRA step of GEMV size: the epilogue above would apply the
         * activation before a delta could be added, so the same GEMV
         * stores fp32 gate|up (what that epilogue reads), the expand adds
         * to it, and cuda_gated_act follows. */
        const cv_dtype gu_dtype = gu_gemv ? CV_DTYPE_F32 : act16;
        if (cuda_lora_begin(b, l, CUDA_LORA_GU, b->xn, nt, err) ||
            gemm_to(b, L->wgu, 2 * f, h, b->xn, nt, b->gu, gu_dtype, err) ||
            cuda_lora_apply(b, l, CUDA_LORA_GU, b->gu, gu_dtype, err) ||
            mark(b, CV_CUDA_PHASE_UPGATE_GEMM, err))
            return -1;
        KL(cuda_gated_act(c->hidden_act, gu_dtype, b->gu, nt, f, b->wdtype, b->mlp, split * nt * f,
                          b->stream),
           "gated activation kernel");
    }
    if (mark(b, CV_CUDA_PHASE_ACT, err) || cuda_lora_begin(b, l, CUDA_LORA_DOWN, b->mlp, nt, err) ||
        gemm(b, L->wdown, h, f, b->mlp, nt, b->x, 1.0f, err) ||
        cuda_lora_apply(b, l, CUDA_LORA_DOWN, b->x, CV_DTYPE_F32, err) ||
        mark(b, CV_CUDA_PHASE_DOWN_GEMM, err))
        return -1;
    if (L->b_down) KL(cuda_add_bias(b->x, L->b_down, nt, h, b->stream), "mlp bias kernel");
    if (post && norm_rows(b, b->x, NULL, nt, L->ffn_norm, L->ffn_norm_b, h, CV_DTYPE_F32, b->x, 0,
                          "mlp norm", err))
        return -1;
    return 0;
}

/* Adds the profiled spans of this step to the table (after the sync). */
static int profile_collect(cv_cuda_backend *b, cv_error *err)
{
    for (int i = 1; i < b->n_events; i++) {
        float ms = 0.0f;
        CU(cudaEventElapsedTime(&ms, b->events[i - 1], b->events[i]), "cudaEventElapsedTime");
        b->prof_ms[b->event_phase[i]] += ms;
    }
    b->n_events = 0;
    return 0;
}

int cuda_enqueue_step(cv_cuda_backend *b, const cv_batch *bt, const step_arrays *d,
                      const step_attn *sa, cv_error *err)
{
    const cv_model_config *c = &b->cfg;
    const int nt = bt->n_tokens, h = c->hidden_size, e = cv_config_embed_dim(c);
    const size_t split = b->split_act ? 1 : 0;
    if (b->project_in) {
        /* OPT: x = pos_embed + project_in(embedding rows), as HF adds them. */
        KL(cuda_gather_act(b->embed_dtype, b->embed, d->ids, nt, e, b->wdtype, b->xn,
                           split * nt * e, b->stream),
           "embedding kernel");
        CU(cudaMemsetAsync(b->x, 0, (size_t)nt * h * sizeof(float), b->stream),
           "clearing the residual stream");
    } else {
        KL(cuda_embed(b->embed_dtype, b->embed, d->ids, nt, h, b->x, b->stream),
           "embedding kernel");
    }
    if (b->pos_embed)
        KL(cuda_add_positions(b->x, b->pos_embed, d->positions, c->pos_offset, nt, h, b->stream),
           "position embedding kernel");
    if (b->project_in && gemm(b, b->project_in, h, e, b->xn, nt, b->x, 1.0f, err)) return -1;
    if (mark(b, CV_CUDA_PHASE_EMBED, err)) return -1;
    for (int l = 0; l < c->n_layers; l++)
        if (layer_forward(b, bt, d, l, sa, err)) return cv_error_prefix(err, "layer %d", l);
    if (bt->n_logits == 0) return 0;
    const int nl = bt->n_logits;
    /* No final norm (post-norm OPT): the rows as they are. */
    if (norm_rows(b, b->x, d->logits_rows, nl, b->final_norm, b->final_norm_b, h, b->wdtype, b->xl,
                  split * nl * h, "final norm", err))
        return -1;
    if (b->project_out && (gemm(b, b->project_out, e, h, b->xl, nl, b->xp, 0.0f, err) ||
                           norm_rows(b, b->xp, NULL, nl, NULL, NULL, e, b->wdtype, b->xl,
                                     split * nl * e, "project_out rows", err)))
        return -1;
    if (gemm(b, b->lm_head, c->vocab_size, e, b->xl, nl, b->logits, 0.0f, err)) return -1;
    /* Every row's greedy choice, whether or not the caller wants it: a few
     * microseconds, and the captured graph stays one per batch shape. */
    KL(cuda_greedy(b->logits, bt->n_logits, c->vocab_size, b->greedy_dev, b->stream),
       "greedy kernel");
    return mark(b, CV_CUDA_PHASE_HEAD, err);
}

/* Enqueues the downloads of a finished step: the greedy choices when asked
 * for, and the logits rows the caller did not reduce to a greedy choice or a
 * sampled token, one copy per run of consecutive rows. */
static int download(cv_cuda_backend *b, const cv_batch *bt, float *logits,
                    const cv_greedy_rows *greedy, cv_error *err)
{
    const size_t row_bytes = (size_t)b->cfg.vocab_size * sizeof(float);
    if (greedy)
        CU(cudaMemcpyAsync(b->greedy_host, b->greedy_dev,
                           (size_t)bt->n_logits * sizeof(cuda_greedy_out), cudaMemcpyDeviceToHost,
                           b->stream),
           "greedy download");
    for (int r = 0; r < bt->n_logits;) {
        if (greedy && greedy->want[r]) {
            r++;
            continue;
        }
        int end = r + 1;
        while (end < bt->n_logits && !(greedy && greedy->want[end]))
            end++;
        CU(cudaMemcpyAsync((char *)logits + (size_t)r * row_bytes,
                           (char *)b->logits + (size_t)r * row_bytes, (size_t)(end - r) * row_bytes,
                           cudaMemcpyDeviceToHost, b->stream),
           "logits download");
        r = end;
    }
    return 0;
}

int cuda_partial_reserve(cv_cuda_backend *b, size_t floats, cv_error *err)
{
    if (floats <= b->partial_cap_floats) return 0;
    cuda_graphs_clear(b); /* they read the old buffer */
    cudaFree(b->partial);
    b->partial = NULL;
    b->partial_cap_floats = 0;
    CU(cudaMalloc((void **)&b->partial, floats * sizeof(float)), "attention partials");
    b->partial_cap_floats = floats;
    return 0;
}

int cuda_forward_enqueue(cv_cuda_backend *b, const cv_batch *bt, bool graph, cv_error *err)
{
    const cv_model_config *c = &b->cfg;
    if (reserve(b, bt->n_tokens, bt->n_logits, err)) return -1;
    step_attn sa = {.tensor_cores = cuda_tensor_core_attention(b)};
    size_t need = 0;
    if (sa.tensor_cores) {
        cuda_attn_plan_make(&sa.plan, bt->query_start, bt->seq_lens, bt->n_seqs, c->n_heads,
                            c->n_kv_heads, c->head_dim, b->n_sms, 0, graph);
        need = sa.plan.ws_floats;
        if (sa.plan.n_items > b->work_items_cap) {
            cuda_graphs_clear(b); /* the staging layout moves */
            b->work_items_cap = 2 * sa.plan.n_items;
        }
    } else {
        sa.n_splits = choose_splits(b, bt);
        if (sa.n_splits > 1)
            need = (size_t)bt->n_tokens * c->n_heads * sa.n_splits * (c->head_dim + 2);
    }
    if (cuda_partial_reserve(b, need, err)) return -1;
    step_arrays d = {0};
    b->n_events = 0;
    if (mark(b, CV_CUDA_PHASE_COPY, err) || upload_batch(b, bt, &sa, &d, err) ||
        mark(b, CV_CUDA_PHASE_COPY, err))
        return -1;
    return graph ? cuda_graph_run(b, bt, &d, &sa, err) : cuda_enqueue_step(b, bt, &d, &sa, err);
}

bool cuda_tensor_core_attention(const cv_cuda_backend *b)
{
    const cv_model_config *c = &b->cfg;
    return b->kv_dtype != CV_DTYPE_F32 &&
           cuda_attn_supported(c->n_heads, c->n_kv_heads, c->head_dim, b->kv_dtype, CV_DTYPE_F32,
                               b->wdtype);
}

int cuda_forward_run(cv_cuda_backend *b, const cv_batch *user_bt, float *logits,
                     const cv_greedy_rows *greedy, cv_error *err)
{
    if (check_batch(b, user_bt, err) || cuda_lora_prepare(b, user_bt, err)) return -1;
    /* Steps a graph runs are padded to the ladder; the downloads below
     * still take the caller's rows only. */
    const bool graph = cuda_graph_step(b, user_bt);
    cv_batch padded = {0};
    if (graph && cuda_graph_pad_step(b, user_bt, &padded, err)) return -1;
    CU(cudaEventRecord(b->span_ev[0], b->stream), "cudaEventRecord");
    if (cuda_forward_enqueue(b, graph ? &padded : user_bt, graph, err)) return -1;
    if (greedy && cuda_sample_enqueue(b, user_bt->n_logits, greedy, err)) return -1;
    if (user_bt->n_logits > 0 &&
        (download(b, user_bt, logits, greedy, err) || mark(b, CV_CUDA_PHASE_COPY, err)))
        return -1;
    CU(cudaEventRecord(b->span_ev[1], b->stream), "cudaEventRecord");
    CU(cudaStreamSynchronize(b->stream), "forward step");
    CU(cudaGetLastError(), "forward step");
    float span_ms = 0.0f;
    CU(cudaEventElapsedTime(&span_ms, b->span_ev[0], b->span_ev[1]), "cudaEventElapsedTime");
    b->last_span_s = span_ms * 1e-3;
    for (int r = 0; greedy && r < user_bt->n_logits; r++) {
        if (!greedy->want[r]) continue;
        greedy->token[r] = b->greedy_host[r].token;
        greedy->logprob[r] = b->greedy_host[r].logprob;
        greedy->rank[r] = b->greedy_host[r].rank;
    }
    if (greedy) cuda_sample_collect(b, user_bt->n_logits, greedy);
    return b->prof ? profile_collect(b, err) : 0;
}

int cv_cuda_backend_forward_greedy(cv_cuda_backend *b, const cv_batch *batch, float *logits,
                                   const cv_greedy_rows *greedy, cv_error *err)
{
    if (!b || !batch || (batch->n_logits > 0 && !logits))
        return cv_errorf(err, "cv_cuda_backend_forward: backend, batch or logits buffer is NULL");
    CU(cudaSetDevice(b->device), "cudaSetDevice");
    return cuda_forward_run(b, batch, logits, greedy, err);
}

double cv_cuda_backend_last_step_device_s(const cv_cuda_backend *b)
{
    return b->last_span_s;
}

int cv_cuda_backend_forward(cv_cuda_backend *b, const cv_batch *batch, float *logits, cv_error *err)
{
    return cv_cuda_backend_forward_greedy(b, batch, logits, NULL, err);
}

void cv_cuda_backend_profile(cv_cuda_backend *b, int enable)
{
    memset(b->prof_ms, 0, sizeof b->prof_ms);
    b->prof = false;
    if (!enable) return;
    if (!b->events) {
        const int n = b->cfg.n_layers * 12 + 16;
        b->events = calloc((size_t)n, sizeof *b->events);
        b->event_phase = calloc((size_t)n, sizeof *b->event_phase);
        if (!b->events || !b->event_phase) return;
        cudaSetDevice(b->device);
        for (; b->max_events < n; b->max_events++)
            if (cudaEventCreate(&b->events[b->max_events]) != cudaSuccess) break;
    }
    b->prof = true;
}

int cv_cuda_backend_profile_read(const cv_cuda_backend *b, double *ms, const char **names)
{
    for (int i = 0; i < CV_CUDA_N_PHASES; i++) {
        ms[i] = b->prof_ms[i];
        names[i] = phase_names[i];
    }
    return CV_CUDA_N_PHASES;
}

/* CUDA backend: weight upload, the device KV pool, batch validation and the
 * step itself (cuBLAS GEMMs between the kernels of kernels/ and attn/).
 *
 * One step: the batch arrays are packed into one pinned staging buffer and
 * copied up with a single transfer; everything after runs asynchronously on
 * the backend's stream; the only synchronisation is the logits download. */
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/lora/cuda_lora.h"

int cv_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); /* clear the sticky "no device" error */
        return 0;
    }
    return n;
}

/* ---- construction ---------------------------------------------------------- */

static size_t tensor_bytes(const cv_tensor *t)
{
    return (size_t)cv_tensor_numel(t) * cv_dtype_size(t->dtype);
}

static int check_matrix(const cv_tensor *t, const char *name, int layer, int64_t rows, int64_t cols,
                        cv_dtype want, cv_error *err)
{
    char where[64];
    if (layer >= 0)
        snprintf(where, sizeof where, "layer %d %s", layer, name);
    else
        snprintf(where, sizeof where, "%s", name);
    if (!t->data || t->n_dims != 2 || t->shape[0] != rows || t->shape[1] != cols)
        return cv_errorf(err, "cuda backend: %s is missing or not (%" PRId64 ", %" PRId64 ")",
                         where, rows, cols);
    if (t->dtype != want)
        return cv_errorf(err, "cuda backend: %s is %s but lm_head is %s", where,
                         cv_dtype_name(t->dtype), cv_dtype_name(want));
    return 0;
}

static int check_config(const cv_model_config *c, cv_error *err)
{
    if (c->hidden_size <= 0 || c->intermediate_size <= 0 || c->n_layers <= 0 || c->n_heads <= 0 ||
        c->n_kv_heads <= 0 || c->head_dim <= 0 || c->vocab_size <= 0)
        return cv_errorf(err, "cuda backend: config has a non-positive size");
    if (c->n_heads % c->n_kv_heads != 0 || c->n_heads / c->n_kv_heads > CUDA_MAX_GROUP)
        return cv_errorf(err,
                         "cuda backend: n_heads %d / n_kv_heads %d must be a whole group of at "
                         "most %d",
                         c->n_heads, c->n_kv_heads, CUDA_MAX_GROUP);
    if (c->head_dim % 2 != 0 || c->head_dim > CUDA_MAX_HEAD_DIM)
        return cv_errorf(err, "cuda backend: head_dim %d must be even and at most %d", c->head_dim,
                         CUDA_MAX_HEAD_DIM);
    if (c->hidden_act != CV_ACT_SILU && c->hidden_act != CV_ACT_GELU_TANH &&
        c->hidden_act != CV_ACT_RELU)
        return cv_errorf(err, "cuda backend: unsupported activation %d", (int)c->hidden_act);
    /* The gated kernel knows SiLU and GELU only; relu comes with OPT's
     * plain MLP. */
    if (c->hidden_act == CV_ACT_RELU && !c->plain_mlp)
        return cv_errorf(err, "cuda backend: relu is supported only in a non-gated MLP");
    if (c->pos_type == CV_POS_LEARNED && (c->max_position_embeddings <= 0 || c->pos_offset < 0))
        return cv_errorf(err,
                         "cuda backend: learned positions need max_position_embeddings %d > 0 and "
                         "pos_offset %d >= 0",
                         c->max_position_embeddings, c->pos_offset);
    /* Refused rather than silently attending over the whole context. */
    if (c->sliding_window > 0)
        return cv_errorf_class(err, CV_ERR_UNSUPPORTED,
                               "cuda backend: sliding_window %d attention is not implemented (set "
                               "sliding_window to null in config.json for full attention)",
                               c->sliding_window);
    return 0;
}

/* Device copy of the concatenated rows of parts[0..n) (all the same dtype). */
static int upload_rows(const cv_tensor *const *parts, int n, void **dst, cv_error *err)
{
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += tensor_bytes(parts[i]);
    CU(cudaMalloc(dst, total), "cudaMalloc of a weight matrix");
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        CU(cudaMemcpy((char *)*dst + off, parts[i]->data, tensor_bytes(parts[i]),
                      cudaMemcpyHostToDevice),
           "weight upload");
        off += tensor_bytes(parts[i]);
    }
    return 0;
}

/* fp32 device copy of an optional vector of n elements; NULL when absent. */
static int upload_vector(const cv_tensor *t, int64_t n, const char *name, float **dst,
                         cv_error *err)
{
    *dst = NULL;
    if (!t->data) return 0;
    if (cv_tensor_numel(t) != n)
        return cv_errorf(err, "cuda backend: %s has %" PRId64 " elements, expected %" PRId64, name,
                         cv_tensor_numel(t), n);
    float *tmp = malloc((size_t)n * sizeof *tmp);
    if (!tmp) return cv_errorf(err, "cuda backend: out of memory");
    for (int64_t i = 0; i < n; i++)
        tmp[i] = cv_dtype_load(t->data, (size_t)i, t->dtype);
    cudaError_t e = cudaMalloc((void **)dst, (size_t)n * sizeof(float));
    if (e == cudaSuccess)
        e = cudaMemcpy(*dst, tmp, (size_t)n * sizeof(float), cudaMemcpyHostToDevice);
    free(tmp);
    if (e != cudaSuccess)
        return cv_errorf(err, "cuda backend: uploading %s: %s", name, cudaGetErrorString(e));
    return 0;
}

static int upload_layer(cv_cuda_backend *b, const cv_layer_weights *L, int l, cv_error *err)
{
    const cv_model_config *c = &b->cfg;
    const int64_t h = c->hidden_size, f = c->intermediate_size, hd = c->head_dim;
    const int64_t qd = c->n_heads * hd, kd = c->n_kv_heads * hd;
    cuda_layer *cl = &b->layers[l];
    if (check_matrix(&L->wq, "wq", l, qd, h, b->wdtype, err) ||
        check_matrix(&L->wk, "wk", l, kd, h, b->wdtype, err) ||
        check_matrix(&L->wv, "wv", l, kd, h, b->wdtype, err) ||
        check_matrix(&L->wo, "wo", l, h, qd, b->wdtype, err) ||
        (!c->plain_mlp && check_matrix(&L->w_gate, "w_gate", l, f, h, b->wdtype, err)) ||
        check_matrix(&L->w_up, "w_up", l, f, h, b->wdtype, err) ||
        check_matrix(&L->w_down, "w_down", l, h, f, b->wdtype, err))
        return -1;
    /* A plain MLP (OPT, GPT-2) has no gate: wgu is w_up alone. */
    const cv_tensor *qkv[3] = {&L->wq, &L->wk, &L->wv}, *o[1] = {&L->wo},
                    *gu[2] = {&L->w_gate, &L->w_up}, *up[1] = {&L->w_up}, *down[1] = {&L->w_down};
    if (!L->attn_norm.data || !L->ffn_norm.data)
        return cv_errorf(err, "cuda backend: layer %d lacks a norm weight", l);
    if (upload_rows(qkv, 3, &cl->wqkv, err) || upload_rows(o, 1, &cl->wo, err) ||
        (c->plain_mlp ? upload_rows(up, 1, &cl->wgu, err) : upload_rows(gu, 2, &cl->wgu, err)) ||
        upload_rows(down, 1, &cl->wdown, err) ||
        upload_vector(&L->attn_norm, h, "attn_norm", &cl->attn_norm, err) ||
        upload_vector(&L->ffn_norm, h, "ffn_norm", &cl->ffn_norm, err) ||
        upload_vector(&L->bq, qd, "bq", &cl->bq, err) ||
        upload_vector(&L->bk, kd, "bk", &cl->bk, err) ||
        upload_vector(&L->bv, kd, "bv", &cl->bv, err) ||
        upload_vector(&L->q_norm, hd, "q_norm", &cl->q_norm, err) ||
        upload_vector(&L->k_norm, hd, "k_norm", &cl->k_norm, err) ||
        upload_vector(&L->attn_norm_b, h, "attn_norm_b", &cl->attn_norm_b, err) ||
        upload_vector(&L->ffn_norm_b, h, "ffn_norm_b", &cl->ffn_norm_b, err) ||
        upload_vector(&L->bo, h, "bo", &cl->bo, err) ||
        upload_vector(&L->b_up, f, "b_up", &cl->b_up, err) ||
        upload_vector(&L->b_down, h, "b_down", &cl->b_down, err))
        return cv_error_prefix(err, "layer %d", l);
    return 0;
}

/* The OPT / GPT-2 globals: learned positions, project_in / project_out,
 * the final LayerNorm's bias (each NULL when the model has none). */
static int upload_structure(cv_cuda_backend *b, const cv_model_weights *w, cv_error *err)
{
    const cv_model_config *c = &b->cfg;
    const int64_t h = c->hidden_size, p = c->proj_dim;
    if (c->pos_type == CV_POS_LEARNED &&
        upload_vector(&w->pos_embed, ((int64_t)c->max_position_embeddings + c->pos_offset) * h,
                      "pos_embed", &b->pos_embed, err))
        return -1;
    if (c->pos_type == CV_POS_LEARNED && !b->pos_embed)
        return cv_errorf(err, "cuda backend: the model lacks pos_embed (learned positions)");
    if (p > 0) {
        const cv_tensor *in[1] = {&w->project_in}, *out[1] = {&w->project_out};
        if (check_matrix(&w->project_in, "project_in", -1, h, p, b->wdtype, err) ||
            check_matrix(&w->project_out, "project_out", -1, p, h, b->wdtype, err) ||
            upload_rows(in, 1, &b->project_in, err) || upload_rows(out, 1, &b->project_out, err))
            return -1;
    }
    return upload_vector(&w->final_norm_b, h, "final_norm_b", &b->final_norm_b, err);
}

static int create_on_device(cv_cuda_backend *b, const cv_model_weights *w, cv_error *err)
{
    const cv_model_config *c = &b->cfg;
    CU(cudaSetDevice(b->device), "cudaSetDevice");
    CU(cudaDeviceGetAttribute(&b->n_sms, cudaDevAttrMultiProcessorCount, b->device),
       "reading the multiprocessor count");
    /* The attention kernels' shared-memory limits, set before any graph
     * capture might launch them. */
    KL(cuda_attn_prepare(), "preparing the attention kernels");
    CU(cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking), "cudaStreamCreate");
    CU(cudaEventCreate(&b->span_ev[0]), "cudaEventCreate");
    CU(cudaEventCreate(&b->span_ev[1]), "cudaEventCreate");
    CB(cublasCreate(&b->blas), "cublasCreate");
    CB(cublasSetStream(b->blas, b->stream), "cublasSetStream");
    /* No TF32: f32 models must match HF's fp32 logits within 1e-4. */
    CB(cublasSetMathMode(b->blas, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    /* A fixed workspace, so that capturing a step into a graph never makes
     * cuBLAS allocate (32 MiB: NVIDIA's recommendation for Hopper). */
    const size_t ws_bytes = (size_t)32 << 20;
    CU(cudaMalloc(&b->blas_workspace, ws_bytes), "cuBLAS workspace");
    CB(cublasSetWorkspace(b->blas, b->blas_workspace, ws_bytes), "cublasSetWorkspace");

    if (!w->embed.data || !w->lm_head.data || (!w->final_norm.data && !c->no_final_norm) ||
        !w->layers)
        return cv_errorf(err, "cuda backend: the model lacks embed, lm_head, final_norm or layers");
    const int64_t h = c->hidden_size, e = cv_config_embed_dim(c);
    b->wdtype = w->lm_head.dtype;
    b->split_act = false; /* CV_CUDA_ACT_ROUND: vLLM's numerics */
    b->embed_dtype = w->embed.dtype;
    if (w->embed.shape[0] != c->vocab_size || w->embed.shape[1] != e)
        return cv_errorf(err, "cuda backend: embed is not (%d, %" PRId64 ")", c->vocab_size, e);
    if (check_matrix(&w->lm_head, "lm_head", -1, c->vocab_size, e, b->wdtype, err)) return -1;
    const cv_tensor *emb[1] = {&w->embed}, *head[1] = {&w->lm_head};
    if (upload_rows(emb, 1, &b->embed, err)) return -1;
    if (w->lm_head.data == w->embed.data)
        b->lm_head = b->embed;
    else if (upload_rows(head, 1, &b->lm_head, err))
        return -1;
    if (upload_vector(&w->final_norm, h, "final_norm", &b->final_norm, err) ||
        upload_structure(b, w, err))
        return -1;
    float inv_freq[CUDA_MAX_HEAD_DIM / 2] = {0};
    if (c->pos_type == CV_POS_ROPE) cv_rope_inv_freq(c, inv_freq);
    CU(cudaMalloc((void **)&b->inv_freq, sizeof inv_freq), "cudaMalloc");
    CU(cudaMemcpy(b->inv_freq, inv_freq, (size_t)c->head_dim / 2 * sizeof(float),
                  cudaMemcpyHostToDevice),
       "uploading inv_freq");
    b->layers = calloc((size_t)c->n_layers, sizeof *b->layers);
    if (!b->layers) return cv_errorf(err, "cuda backend: out of memory");
    for (int l = 0; l < c->n_layers; l++)
        if (upload_layer(b, &w->layers[l], l, err)) return -1;
    return 0;
}

cv_cuda_backend *cv_cuda_backend_create(const cv_model *model, int device, cv_error *err)
{
    if (!model) {
        cv_errorf(err, "cv_cuda_backend_create: model is NULL");
        return NULL;
    }
    const int n_dev = cv_cuda_device_count();
    if (device < 0 || device >= n_dev) {
        cv_errorf(err, "cv_cuda_backend_create: device %d does not exist (%d CUDA devices)", device,
                  n_dev);
        return NULL;
    }
    const cv_model_config *c = cv_model_get_config(model);
    if (check_config(c, err)) return NULL;
    cv_cuda_backend *b = calloc(1, sizeof *b);
    if (!b) {
        cv_errorf(err, "cv_cuda_backend_create: out of memory");
        return NULL;
    }
    b->cfg = *c;
    b->device = device;
    b->min_split_keys = 32;
    b->use_graphs = true;
    b->qkv_dim = (c->n_heads + 2 * c->n_kv_heads) * c->head_dim;
    b->kv_dtype = c->dtype; /* vLLM's kv_cache_dtype "auto" */
    if (create_on_device(b, cv_model_get_weights(model), err)) {
        cv_cuda_backend_destroy(b);
        return NULL;
    }
    return b;
}

/* ---- KV pool ----------------------------------------------------------------- */

int cv_cuda_backend_set_kv_dtype(cv_cuda_backend *b, cv_dtype dtype, cv_error *err)
{
    if (b->kv)
        return cv_errorf(err, "cv_cuda_backend_set_kv_dtype: the KV pool is already allocated");
    if (dtype != CV_DTYPE_F32 && dtype != CV_DTYPE_F16 && dtype != CV_DTYPE_BF16)
        return cv_errorf(err, "cv_cuda_backend_set_kv_dtype: unsupported dtype %d", (int)dtype);
    b->kv_dtype = dtype;
    return 0;
}

int cv_cuda_backend_set_act_mode(cv_cuda_backend *b, cv_cuda_act_mode mode, cv_error *err)
{
    if (mode != CV_CUDA_ACT_SPLIT && mode != CV_CUDA_ACT_ROUND)
        return cv_errorf(err, "cv_cuda_backend_set_act_mode: unknown mode %d", (int)mode);
    b->split_act = b->wdtype != CV_DTYPE_F32 && mode == CV_CUDA_ACT_SPLIT;
    /* The activation buffers' layout depends on the mode: regrow them. */
    b->cap_tokens = b->cap_logits = 0;
    cuda_graphs_clear(b);
    return 0;
}

void cv_cuda_backend_set_graphs(cv_cuda_backend *b, int enable)
{
    b->use_graphs = enable != 0;
}

void cv_cuda_backend_set_graph_limits(cv_cuda_backend *b, int max_seqs, int max_len)
{
    b->graph_max_seqs = max_seqs > 0 ? max_seqs : 0;
    b->graph_max_len = max_len > 0 ? max_len : 0;
}

size_t cv_cuda_backend_kv_block_bytes(const cv_cuda_backend *b, int block_size)
{
    const cv_model_config *c = &b->cfg;
    return (size_t)c->n_layers * 2 * (size_t)c->n_kv_heads * (size_t)block_size *
           (size_t)c->head_dim * cv_dtype_size(b->kv_dtype);
}

int cv_cuda_backend_memory(const cv_cuda_backend *b, size_t *free_bytes, size_t *total_bytes,
                           cv_error *err)
{
    CU(cudaSetDevice(b->device), "cudaSetDevice");
    CU(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
    return 0;
}

int cv_cuda_backend_kv_alloc(cv_cuda_backend *b, int n_blocks, int block_size, cv_error *err)
{
    if (n_blocks <= 0 || block_size <= 0)
        return cv_errorf(err, "cv_cuda_backend_kv_alloc: n_blocks %d and block_size %d must be > 0",
                         n_blocks, block_size);
    const size_t block_bytes = cv_cuda_backend_kv_block_bytes(b, block_size);
    if ((size_t)n_blocks > SIZE_MAX / block_bytes)
        return cv_errorf(err, "cv_cuda_backend_kv_alloc: %d blocks of %zu bytes overflow size_t",
                         n_blocks, block_bytes);
    CU(cudaSetDevice(b->device), "cudaSetDevice");
    void *kv = NULL;
    /* One block more than asked: the scratch block of padded graph steps. */
    cudaError_t e = cudaMalloc(&kv, ((size_t)n_blocks + 1) * block_bytes);
    if (e != cudaSuccess)
        return cv_errorf(err, "cv_cuda_backend_kv_alloc: %d blocks of %zu bytes: %s", n_blocks,
                         block_bytes, cudaGetErrorString(e));
    if (b->kv) cudaFree(b->kv);
    b->kv = kv;
    b->n_blocks = n_blocks;
    b->block_size = block_size;
    b->block_elems = block_bytes / cv_dtype_size(b->kv_dtype);
    cuda_graphs_clear(b); /* they wrote into the old pool */
    return cuda_graphs_capture_ladder(b, err);
}

int cv_cuda_backend_kv_copy(cv_cuda_backend *b, const int32_t *src, const int32_t *dst, int n,
                            cv_error *err)
{
    if (!b->kv) return cv_errorf(err, "cv_cuda_backend_kv_copy: KV pool not allocated");
    for (int i = 0; i < n; i++)
        if (src[i] < 0 || src[i] >= b->n_blocks || dst[i] < 0 || dst[i] >= b->n_blocks)
            return cv_errorf(err,
                             "cv_cuda_backend_kv_copy: pair %d (%d -> %d) is outside blocks 0..%d",
                             i, src[i], dst[i], b->n_blocks - 1);
    CU(cudaSetDevice(b->device), "cudaSetDevice");
    const size_t bytes = b->block_elems * cv_dtype_size(b->kv_dtype);
    for (int i = 0; i < n; i++)
        if (src[i] != dst[i])
            CU(cudaMemcpyAsync((char *)b->kv + (size_t)dst[i] * bytes,
                               (char *)b->kv + (size_t)src[i] * bytes, bytes,
                               cudaMemcpyDeviceToDevice, b->stream),
               "KV block copy");
    CU(cudaStreamSynchronize(b->stream), "KV block copy");
    return 0;
}

void cv_cuda_backend_destroy(cv_cuda_backend *b)
{
    if (!b) return;
    cudaSetDevice(b->device);
    if (b->stream) cudaStreamSynchronize(b->stream);
    if (b->layers) {
        for (int l = 0; l < b->cfg.n_layers; l++) {
            cuda_layer *cl = &b->layers[l];
            void *ptrs[] = {cl->wqkv,       cl->wo,       cl->wgu,    cl->wdown,
                            cl->attn_norm,  cl->ffn_norm, cl->bq,     cl->bk,
                            cl->bv,         cl->q_norm,   cl->k_norm, cl->attn_norm_b,
                            cl->ffn_norm_b, cl->bo,       cl->b_up,   cl->b_down};
            for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++)
                cudaFree(ptrs[i]);
        }
        free(b->layers);
    }
    if (b->lm_head != b->embed) cudaFree(b->lm_head);
    cudaFree(b->embed);
    cudaFree(b->final_norm);
    cudaFree(b->final_norm_b);
    cudaFree(b->pos_embed);
    cudaFree(b->project_in);
    cudaFree(b->project_out);
    cudaFree(b->inv_freq);
    cuda_graphs_clear(b);
    cuda_lora_free(b);
    cudaFree(b->kv);
    cudaFree(b->blas_workspace);
    cudaFree(b->act_mem);
    cudaFree(b->partial);
    cudaFree(b->stage_dev);
    cudaFreeHost(b->stage_host);
    cudaFreeHost(b->greedy_host);
    cuda_sample_free(b);
    for (int i = 0; i < 2; i++)
        if (b->span_ev[i]) cudaEventDestroy(b->span_ev[i]);
    for (int i = 0; i < b->max_events; i++)
        cudaEventDestroy(b->events[i]);
    free(b->events);
    free(b->event_phase);
    void *pads[] = {b->pad_ids,    b->pad_positions, b->pad_query_start, b->pad_seq_lens,
                    b->pad_tables, b->pad_rows,      b->pad_slots};
    for (size_t i = 0; i < sizeof pads / sizeof pads[0]; i++)
        free(pads[i]);
    if (b->blas) cublasDestroy(b->blas);
    if (b->stream) cudaStreamDestroy(b->stream);
    free(b);
}

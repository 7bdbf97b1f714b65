/* The CUDA backend's LoRA slot pool and per-step bookkeeping (cuda_lora.h):
 * layout of a slot, lora_init / lora_load, the step's segments, and the
 * launches of the gather kernels (lora_gather.cu) around each base
 * product. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/lora/cuda_lora.h"
#include "lora/lora.h"

/* Where one product's delta comes from: its input width, and its output
 * columns cut into the parts of the fused matrix (q | k | v, gate | up),
 * each with its adapter target. */
typedef struct lora_geom {
    int in;
    int n_parts;
    int part_end[3];
    cv_lora_target target[3];
} lora_geom;

struct cuda_lora {
    int n_slots, rank; /* max_loras, R */
    /* A and B's element type: the model's matrix dtype (vLLM keeps LoRA
     * weights in it), fp32 when lora_init found the exact (split
     * activation) mode on, so that mode stays as exact with adapters. */
    cv_dtype dtype;
    size_t esize;
    /* Element offsets of each module's A and B^T in a (slot, layer) block. */
    size_t off_a[CUDA_LORA_N_MODULES], off_b[CUDA_LORA_N_MODULES];
    size_t layer_elems, slot_elems;
    void *pool;   /* device: (n_slots, n_layers, layer_elems) */
    bool *loaded; /* (n_slots) */

    /* The step (cuda_lora_prepare). */
    int n_segs;
    int cap_tokens;          /* tokens the buffers below hold */
    void *stage_host;        /* pinned: token list then segments */
    void *stage_dev;         /* their device copy */
    int32_t *tok_dev;        /* (cap_tokens) in stage_dev */
    cuda_lora_seg *segs_dev; /* (cap_tokens) in stage_dev */
    int max_chunks;          /* input chunks of the widest product input */
    float *u;                /* device (max_chunks, cap_tokens, 3 R): partial u */

    /* The shrink's own stream (cuda_lora_begin): forked from and joined
     * back into the backend's stream by the two events. */
    cudaStream_t side;
    cudaEvent_t fork, join;
    int begun; /* 1 + l * CUDA_LORA_N_MODULES + m of the shrink in flight, 0: none */
};

static void lora_geometry(const cv_cuda_backend *b, cuda_lora_module m, lora_geom *g)
{
    const cv_model_config *c = &b->cfg;
    const int h = c->hidden_size, f = c->intermediate_size, qd = c->n_heads * c->head_dim;
    const int kd = c->n_kv_heads * c->head_dim;
    switch (m) {
    case CUDA_LORA_QKV:
        *g = (lora_geom){h, 3, {qd, qd + kd, qd + 2 * kd}, {CV_LORA_Q, CV_LORA_K, CV_LORA_V}};
        break;
    case CUDA_LORA_O:
        *g = (lora_geom){qd, 1, {h, 0, 0}, {CV_LORA_O, 0, 0}};
        break;
    case CUDA_LORA_GU:
        *g = (lora_geom){h, 2, {f, 2 * f, 0}, {CV_LORA_GATE, CV_LORA_UP, 0}};
        break;
    default:
        *g = (lora_geom){f, 1, {h, 0, 0}, {CV_LORA_DOWN, 0, 0}};
        break;
    }
}

/* Columns of the product's output (the last part's end). */
static int geom_out(const lora_geom *g)
{
    return g->part_end[g->n_parts - 1];
}

int cv_cuda_backend_lora_init(cv_cuda_backend *b, int n_slots, int max_rank, cv_error *err)
{
    const char *fn = "cv_cuda_backend_lora_init";
    if (b->lora) return cv_errorf(err, "%s: the LoRA slots are already reserved", fn);
    if (b->cfg.plain_mlp)
        return cv_errorf(err,
                         "%s: LoRA adapters target the Llama family's projections; this model's "
                         "MLP is not gated (OPT, GPT-2)",
                         fn);
    const cv_model_config *mc = &b->cfg;
    if (mc->hidden_size % 8 || mc->intermediate_size % 8 || (mc->n_heads * mc->head_dim) % 8)
        return cv_errorf(err,
                         "%s: the LoRA kernels read 8 inputs at a time; this model's widths "
                         "(hidden %d, intermediate %d, attention %d) are not all multiples of 8",
                         fn, mc->hidden_size, mc->intermediate_size, mc->n_heads * mc->head_dim);
    if (n_slots < 1 || max_rank < 1 || max_rank > CUDA_LORA_MAX_RANK)
        return cv_errorf(err, "%s: n_slots %d must be >= 1 and max_rank %d in 1..%d", fn, n_slots,
                         max_rank, CUDA_LORA_MAX_RANK);
    struct cuda_lora *lo = calloc(1, sizeof *lo);
    if (!lo || !(lo->loaded = calloc((size_t)n_slots, sizeof *lo->loaded))) {
        free(lo);
        return cv_errorf(err, "%s: out of memory", fn);
    }
    lo->n_slots = n_slots;
    lo->rank = max_rank;
    lo->dtype = b->split_act ? CV_DTYPE_F32 : b->wdtype;
    lo->esize = cv_dtype_size(lo->dtype);
    size_t off = 0;
    for (int m = 0; m < CUDA_LORA_N_MODULES; m++) {
        lora_geom g;
        lora_geometry(b, (cuda_lora_module)m, &g);
        /* 16-byte aligned matrices (8 elements of any dtype). */
        lo->off_a[m] = off;
        off += ((size_t)g.n_parts * max_rank * g.in + 7) & ~(size_t)7;
        lo->off_b[m] = off;
        off += ((size_t)max_rank * geom_out(&g) + 7) & ~(size_t)7;
    }
    lo->layer_elems = off;
    const cv_model_config *c = &b->cfg;
    int widest = c->hidden_size > c->intermediate_size ? c->hidden_size : c->intermediate_size;
    widest = widest > c->n_heads * c->head_dim ? widest : c->n_heads * c->head_dim;
    lo->max_chunks = (widest + CUDA_LORA_CHUNK - 1) / CUDA_LORA_CHUNK;
    lo->slot_elems = off * (size_t)b->cfg.n_layers;
    const size_t bytes = lo->slot_elems * (size_t)n_slots * lo->esize;
    cudaError_t e = cudaSetDevice(b->device);
    if (e == cudaSuccess) e = cudaMalloc(&lo->pool, bytes);
    if (e != cudaSuccess) {
        free(lo->loaded);
        free(lo);
        return cv_errorf(err, "%s: %zu bytes for %d LoRA slots of rank %d: %s", fn, bytes, n_slots,
                         max_rank, cudaGetErrorString(e));
    }
    b->lora = lo;
    e = cudaStreamCreateWithFlags(&lo->side, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&lo->fork, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&lo->join, cudaEventDisableTiming);
    if (e != cudaSuccess) {
        cuda_lora_free(b);
        return cv_errorf(err, "%s: the LoRA shrink's stream and events: %s", fn,
                         cudaGetErrorString(e));
    }
    return 0;
}

/* Writes adapter's layer l into the host image of one (slot, layer) block:
 * A rows per part, B transposed with the scale folded in; the rest stays
 * zero. */
static int fill_layer(const cv_cuda_backend *b, const cv_lora_adapter *ad, int l, void *dst,
                      cv_error *err)
{
    const struct cuda_lora *lo = b->lora;
    const int R = lo->rank;
    for (int m = 0; m < CUDA_LORA_N_MODULES; m++) {
        lora_geom g;
        lora_geometry(b, (cuda_lora_module)m, &g);
        const int out = geom_out(&g);
        for (int p = 0; p < g.n_parts; p++) {
            const cv_lora_target t = g.target[p];
            const cv_lora_weights *w = &ad->w[(size_t)l * CV_LORA_N_TARGETS + t];
            if (!w->a) continue;
            const int c0 = p ? g.part_end[p - 1] : 0, width = g.part_end[p] - c0;
            if (ad->in[t] != g.in || ad->out[t] != width)
                return cv_errorf(err,
                                 "cv_cuda_backend_lora_load: layer %d target %d is (%d, %d); "
                                 "the model's projection is (%d, %d)",
                                 l, (int)t, ad->out[t], ad->in[t], width, g.in);
            for (int r = 0; r < ad->rank; r++)
                for (int i = 0; i < g.in; i++)
                    cv_dtype_store(dst, lo->off_a[m] + ((size_t)p * R + r) * g.in + i, lo->dtype,
                                   w->a[(size_t)r * g.in + i]);
            for (int r = 0; r < ad->rank; r++)
                for (int o = 0; o < width; o++)
                    cv_dtype_store(dst, lo->off_b[m] + (size_t)r * out + c0 + o, lo->dtype,
                                   ad->scale * w->b[(size_t)o * ad->rank + r]);
        }
    }
    return 0;
}

int cv_cuda_backend_lora_load(cv_cuda_backend *b, int slot, const cv_lora_adapter *ad,
                              cv_error *err)
{
    const char *fn = "cv_cuda_backend_lora_load";
    struct cuda_lora *lo = b->lora;
    if (!lo) return cv_errorf(err, "%s: no LoRA slots (call lora_init first)", fn);
    if (slot < 0 || slot >= lo->n_slots)
        return cv_errorf(err, "%s: slot %d is outside slots 0..%d", fn, slot, lo->n_slots - 1);
    lo->loaded[slot] = false;
    if (!ad) return 0;
    if (ad->rank > lo->rank || ad->n_layers != b->cfg.n_layers)
        return cv_errorf(err,
                         "%s: adapter of rank %d over %d layers does not fit slots of rank %d for "
                         "%d layers",
                         fn, ad->rank, ad->n_layers, lo->rank, b->cfg.n_layers);
    /* One layer's image at a time: zeros where the adapter adds nothing. */
    const size_t layer_bytes = lo->layer_elems * lo->esize;
    void *host = malloc(layer_bytes);
    if (!host)
        return cv_errorf(err, "%s: out of memory for a %zu-byte layer image", fn, layer_bytes);
    CU(cudaSetDevice(b->device), "cudaSetDevice");
    for (int l = 0; l < b->cfg.n_layers; l++) {
        memset(host, 0, layer_bytes);
        if (fill_layer(b, ad, l, host, err)) {
            free(host);
            return -1;
        }
        const size_t at = ((size_t)slot * lo->slot_elems + (size_t)l * lo->layer_elems) * lo->esize;
        cudaError_t e = cudaMemcpyAsync((char *)lo->pool + at, host, layer_bytes,
                                        cudaMemcpyHostToDevice, b->stream);
        if (e == cudaSuccess) e = cudaStreamSynchronize(b->stream);
        if (e != cudaSuccess) {
            free(host);
            return cv_errorf(err, "%s: uploading slot %d: %s", fn, slot, cudaGetErrorString(e));
        }
    }
    free(host);
    lo->loaded[slot] = true;
    return 0;
}

/* Room for the step's token list, segments and u. */
static int grow(cv_cuda_backend *b, int n_tokens, cv_error *err)
{
    struct cuda_lora *lo = b->lora;
    if (n_tokens <= lo->cap_tokens) return 0;
    int cap = 256;
    while (cap < n_tokens)
        cap *= 2;
    cudaFreeHost(lo->stage_host);
    cudaFree(lo->stage_dev);
    cudaFree(lo->u);
    lo->stage_host = lo->stage_dev = NULL;
    lo->u = NULL;
    lo->cap_tokens = 0;
    const size_t tok_bytes = (size_t)cap * sizeof(int32_t);
    const size_t bytes = tok_bytes + (size_t)cap * sizeof(cuda_lora_seg);
    CU(cudaMallocHost(&lo->stage_host, bytes), "LoRA staging buffer");
    CU(cudaMalloc(&lo->stage_dev, bytes), "LoRA segment buffer");
    CU(cudaMalloc((void **)&lo->u, (size_t)lo->max_chunks * cap * 3 * lo->rank * sizeof(float)),
       "LoRA scratch");
    lo->tok_dev = lo->stage_dev;
    lo->segs_dev = (cuda_lora_seg *)((char *)lo->stage_dev + tok_bytes);
    lo->cap_tokens = cap;
    return 0;
}

int cuda_lora_prepare(cv_cuda_backend *b, const cv_batch *bt, cv_error *err)
{
    b->lora_step = false;
    if (!bt->lora_slots) return 0;
    struct cuda_lora *lo = b->lora;
    bool any = false;
    for (int s = 0; s < bt->n_seqs; s++) {
        const int k = bt->lora_slots[s];
        if (k < -1 || (k >= 0 && (!lo || k >= lo->n_slots || !lo->loaded[k])))
            return cv_errorf(
                err, "cv_cuda_backend_forward: lora_slots[%d] = %d is not a loaded slot", s, k);
        any |= k >= 0;
    }
    if (!any) return 0;
    if (grow(b, bt->n_tokens, err)) return -1;
    /* Tokens grouped by slot, in order within a slot; a segment never
     * spans two slots and holds at most CUDA_LORA_SEG_TOKENS tokens. */
    int32_t *tok = lo->stage_host;
    cuda_lora_seg *segs = (cuda_lora_seg *)(tok + lo->cap_tokens);
    int n = 0, n_segs = 0;
    for (int k = 0; k < lo->n_slots; k++)
        for (int s = 0; s < bt->n_seqs; s++) {
            if (bt->lora_slots[s] != k) continue;
            for (int t = bt->query_start[s]; t < bt->query_start[s + 1]; t++) {
                if (!n_segs || segs[n_segs - 1].slot != k ||
                    segs[n_segs - 1].count == CUDA_LORA_SEG_TOKENS)
                    segs[n_segs++] = (cuda_lora_seg){.slot = k, .start = n, .count = 0};
                tok[n++] = t;
                segs[n_segs - 1].count++;
            }
        }
    /* Empty segments (no token) up to a power of two: a graph captured for
     * one adapter mix serves the mixes with as many segments, rounded. */
    int padded = 1;
    while (padded < n_segs)
        padded *= 2;
    for (; n_segs < padded; n_segs++)
        segs[n_segs] = (cuda_lora_seg){.slot = 0, .start = 0, .count = 0};
    const size_t bytes = (size_t)lo->cap_tokens * sizeof(int32_t) + n_segs * sizeof(cuda_lora_seg);
    CU(cudaMemcpyAsync(lo->stage_dev, lo->stage_host, bytes, cudaMemcpyHostToDevice, b->stream),
       "LoRA segment upload");
    lo->n_segs = n_segs;
    b->lora_step = true;
    return 0;
}

cuda_lora_graph_key cuda_lora_graph_key_of(const cv_cuda_backend *b)
{
    const struct cuda_lora *lo = b->lora;
    if (!b->lora_step) return (cuda_lora_graph_key){0};
    return (cuda_lora_graph_key){.n_segs = lo->n_segs, .stage = lo->stage_dev, .u = lo->u};
}

/* Module m of layer l's launch over the step's segments; x and y NULL
 * where the kernel does not read them. */
static cuda_lora_launch lora_launch(const cv_cuda_backend *b, int l, cuda_lora_module m,
                                    const void *x, int n_tokens, void *y, cv_dtype y_dtype)
{
    const struct cuda_lora *lo = b->lora;
    lora_geom g;
    lora_geometry(b, m, &g);
    const size_t layer = (size_t)l * lo->layer_elems;
    return (cuda_lora_launch){
        .dtype = b->wdtype,
        .w_dtype = lo->dtype,
        .n_segs = lo->n_segs,
        .segs = lo->segs_dev,
        .tok = lo->tok_dev,
        .x = x,
        .x_lo_off = b->split_act ? (size_t)n_tokens * g.in : 0,
        .in = g.in,
        .a = (const char *)lo->pool + (layer + lo->off_a[m]) * lo->esize,
        .bt = (const char *)lo->pool + (layer + lo->off_b[m]) * lo->esize,
        .slot_elems = lo->slot_elems,
        .rank = lo->rank,
        .n_parts = g.n_parts,
        .part_end = {g.part_end[0], g.part_end[1], g.part_end[2]},
        .u = lo->u,
        .ld_u = 3 * lo->rank,
        .u_chunk_stride = (size_t)lo->cap_tokens * 3 * lo->rank,
        .y = y,
        .y_dtype = y_dtype,
        .ld_y = geom_out(&g),
    };
}

static const char *const module_names[CUDA_LORA_N_MODULES] = {"q|k|v", "o", "gate|up", "down"};

int cuda_lora_begin(cv_cuda_backend *b, int l, cuda_lora_module m, const void *x, int n_tokens,
                    cv_error *err)
{
    if (!b->lora_step) return 0;
    struct cuda_lora *lo = b->lora;
    const cuda_lora_launch p = lora_launch(b, l, m, x, n_tokens, NULL, CV_DTYPE_F32);
    CU(cudaEventRecord(lo->fork, b->stream), "LoRA shrink fork");
    CU(cudaStreamWaitEvent(lo->side, lo->fork, 0), "LoRA shrink fork");
    KL(cuda_lora_shrink(&p, lo->side), "LoRA shrink kernel");
    CU(cudaEventRecord(lo->join, lo->side), "LoRA shrink join");
    lo->begun = 1 + l * CUDA_LORA_N_MODULES + (int)m;
    return 0;
}

int cuda_lora_apply(cv_cuda_backend *b, int l, cuda_lora_module m, void *y, cv_dtype y_dtype,
                    cv_error *err)
{
    if (!b->lora_step) return 0;
    struct cuda_lora *lo = b->lora;
    if (lo->begun != 1 + l * CUDA_LORA_N_MODULES + (int)m)
        return cv_errorf(err, "cuda_lora_apply: layer %d's %s delta was not begun", l,
                         module_names[m]);
    lo->begun = 0;
    const cuda_lora_launch p = lora_launch(b, l, m, NULL, 0, y, y_dtype);
    CU(cudaStreamWaitEvent(b->stream, lo->join, 0), "LoRA shrink join");
    KL(cuda_lora_expand(&p, b->stream), "LoRA expand kernel");
    return 0;
}

void cuda_lora_free(cv_cuda_backend *b)
{
    struct cuda_lora *lo = b->lora;
    if (!lo) return;
    cudaFree(lo->pool);
    cudaFreeHost(lo->stage_host);
    cudaFree(lo->stage_dev);
    cudaFree(lo->u);
    if (lo->side) cudaStreamDestroy(lo->side);
    if (lo->fork) cudaEventDestroy(lo->fork);
    if (lo->join) cudaEventDestroy(lo->join);
    free(lo->loaded);
    free(lo);
    b->lora = NULL;
}

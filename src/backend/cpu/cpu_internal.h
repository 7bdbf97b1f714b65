/* Internals of the CPU backend shared by its files and its tests. */
#ifndef CV_BACKEND_CPU_INTERNAL_H
#define CV_BACKEND_CPU_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "backend/cpu/cpu_kernels.h"

/* Per-layer fp32 copies of the small vectors (norms, biases): converted once
 * at create so the forward never widens them. NULL where absent. */
typedef struct cpu_layer {
    cv_layer_weights w; /* the model's tensors, the matrices packed into matrix_copy */
    float *attn_norm;   /* (hidden) */
    float *attn_norm_b; /* (hidden) LayerNorm bias */
    float *ffn_norm;    /* (hidden) */
    float *ffn_norm_b;  /* (hidden) LayerNorm bias */
    float *bq;          /* (n_heads * head_dim) */
    float *bk;          /* (n_kv_heads * head_dim) */
    float *bv;          /* (n_kv_heads * head_dim) */
    float *q_norm;      /* (head_dim) */
    float *k_norm;      /* (head_dim) */
    float *bo;          /* (hidden) */
    float *b_up;        /* (intermediate) */
    float *b_down;      /* (hidden) */
} cpu_layer;

/* A sense-free counting barrier for the OpenMP team (forward.c). */
typedef struct cpu_barrier {
    int n_threads;
    atomic_int arrived;
    atomic_int phase;
} cpu_barrier;

struct cv_backend {
    cv_model_config cfg;
    const cv_model_weights *weights; /* borrowed: the embedding is read from it */
    cv_tensor lm_head;               /* (vocab, embed_dim) in matrix_copy */
    cv_tensor project_in;            /* (hidden, proj_dim) in matrix_copy, when proj_dim */
    cv_tensor project_out;           /* (proj_dim, hidden) in matrix_copy, when proj_dim */
    /* Every matrix of the model, packed once at create (cpu_pack) into
     * memory advised for 2 MiB pages: streamed from 4 KiB file pages the hardware
     * prefetcher stops at every page boundary and a decode step reads ~25%
     * slower on this project's machines. */
    void *matrix_copy;
    int64_t matrix_elems; /* weights of all matrices: multiply-adds per token */
    /* Steps with fewer multiply-adds run on one thread: a tiny model's
     * decode step takes microseconds on one core, and with more threads its
     * dozens of barriers cost more than the work (4e6; tests set 0 to force
     * the team). */
    double parallel_min_madds;
    const cpu_kernels *kern;
    int n_threads;
    cpu_layer *layers;   /* (n_layers) */
    float *final_norm;   /* (hidden); NULL when the model has none */
    float *final_norm_b; /* (hidden) LayerNorm bias */
    float *pos_embed;    /* (max_position + pos_offset, hidden) learned positions */
    int n_pos_rows;      /* rows of pos_embed */
    float *inv_freq;     /* (head_dim / 2) RoPE inverse frequencies, scaling applied */

    /* KV pool in kv_dtype: block b, layer l, k (0) or v (1), kv head g,
     * token j starts at element
     *   b * block_elems + ((l * 2 + kv) * n_kv_heads + g) * block_size * head_dim
     *   + j * head_dim:
     * one kv head's keys of a block are contiguous. */
    cv_dtype kv_dtype;
    void *kv;
    int n_blocks;
    int block_size;
    size_t block_elems;
    float *attn_scratch; /* (n_threads, cpu_attn_scratch_floats) */

    /* Activations, sized for cap_tokens tokens and cap_logits logits rows;
     * grown only when a batch exceeds every earlier one. */
    int cap_tokens;
    int cap_logits;
    float *act;       /* the one allocation the pointers below point into */
    float *x;         /* (tokens, hidden) residual stream */
    float *xn;        /* (tokens, hidden) normalized input of a sublayer */
    float *q;         /* (tokens, n_heads * head_dim) */
    float *k;         /* (tokens, n_kv_heads * head_dim) */
    float *v;         /* (tokens, n_kv_heads * head_dim) */
    float *attn;      /* (tokens, n_heads * head_dim) attention output */
    float *gate;      /* (tokens, intermediate) then act(gate) * up */
    float *up;        /* (tokens, intermediate) */
    float *rope_cos;  /* (tokens, head_dim / 2) */
    float *rope_sin;  /* (tokens, head_dim / 2) */
    float *xl;        /* (logits, hidden) final-normed rows that get logits */
    float *xp;        /* (logits, proj_dim) xl through project_out */
    int32_t *tok_seq; /* (tokens) sequence index of each token */
    /* Row strides (floats) of the buffers above, rounded to 16 so every row
     * starts 64-byte aligned. */
    int ld_h;  /* x, xn, xl, xp: the wider of hidden and embed_dim (xn holds
                * the embedding rows project_in reads) */
    int ld_q;  /* q, attn */
    int ld_kv; /* k, v */
    int ld_f;  /* gate, up */
    int ld_r;  /* rope_cos, rope_sin */
    /* LoRA (cpu_lora.c): the adapter of each slot, borrowed from the
     * caller (lora_load), applied per token from host memory. */
    const struct cv_lora_adapter **lora_slot; /* (n_lora_slots) NULL = empty */
    int n_lora_slots;
    int lora_rank;  /* max_rank: the stride of one target's A x in lora_u */
    bool step_lora; /* this step has adapters: the forward runs the LoRA phases */
    const struct cv_lora_adapter **tok_lora; /* (cap_lora_tokens) each token's adapter or NULL */
    float *lora_u; /* (cap_lora_tokens, 3 * lora_rank) A x of up to three targets */
    int cap_lora_tokens;
    cpu_barrier barrier;
    /* (cpu_forward_phases) next work item of each phase of a step */
    atomic_int *work_next;
};

/* Builds a backend from a configuration and weights the caller keeps alive
 * (cv_backend_cpu_create passes the model's; tests pass their own), its
 * matrices converted to matrix_dtype. */
cv_backend *cpu_backend_create_from(const cv_model_config *cfg, const cv_model_weights *weights,
                                    int n_threads, cv_dtype matrix_dtype, cv_error *err);

/* Address of KV element elem of the pool. */
static inline void *cpu_kv_at(const cv_backend *bk, size_t elem)
{
    return (char *)bk->kv + elem * cv_dtype_size(bk->kv_dtype);
}

/* Attention scratch of one thread: a kv group's scores over one block, then
 * the running max and sum of every query head. */
static inline size_t cpu_attn_scratch_floats(const cv_model_config *c, int block_size)
{
    return (size_t)(c->n_heads / c->n_kv_heads) * (size_t)block_size + 2 * (size_t)c->n_heads;
}

/* Forces one kernel table (tests compare them). -1 if the CPU lacks it. */
int cpu_backend_set_simd(cv_backend *backend, cpu_simd_level level, cv_error *err);

/* x (n) *= rsqrt(mean(x^2) + eps) * weight, written to out. */
void cpu_rmsnorm(const float *x, const float *weight, int n, float eps, float *out);

/* LayerNorm: (x - mean(x)) / sqrt(var(x) + eps) * weight + bias (biased
 * variance, as torch), written to out, which may be x. */
void cpu_layernorm(const float *x, const float *weight, const float *bias, int n, float eps,
                   float *out);

/* x[i] = act(x[i]) for the non-gated MLP (relu, gelu_new). */
void cpu_act(cv_activation act, float *x, int n);

/* Rotates one head in place (HF rotate_half layout). */
void cpu_rope_apply(float *head, const float *cos_t, const float *sin_t, int head_dim);

/* Number of work phases (counters in work_next) of one step. */
int cpu_forward_phases(const cv_model_config *cfg);

/* Checks batch->lora_slots against the loaded slots, fills tok_lora and
 * sizes lora_u; sets step_lora (cpu_lora.c). */
int cpu_lora_prepare(cv_backend *bk, const cv_batch *batch, cv_error *err);
void cpu_lora_free(cv_backend *bk);

/* Runs the forward; called after the batch was validated. */
void cpu_forward_run(cv_backend *bk, const cv_batch *batch, float *logits);

#endif

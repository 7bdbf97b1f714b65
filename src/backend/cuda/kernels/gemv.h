/* Decode-size kernels of the CUDA backend (kernels/gemv.cu): the matrix
 * product of a few tokens with a 16-bit weight matrix, streamed at the
 * card's memory bandwidth where cuBLAS's GEMMs are not, and an RMSNorm of a
 * few rows that costs one memory round trip.
 *
 * Both launch with programmatic dependent launch when asked (pdl): the
 * kernel may start while the previous kernel of the stream still runs,
 * reads what does not depend on it (weights) and waits for it before
 * touching its outputs, and it lets the next PDL launch start early in
 * turn. That hides the gap between kernels, under CUDA graphs too.
 *
 * Launchers return a cudaError_t as int, 0 on success; they enqueue on
 * STREAM and neither allocate nor synchronize (graph capture safe). */
#ifndef CV_BACKEND_CUDA_KERNELS_GEMV_H
#define CV_BACKEND_CUDA_KERNELS_GEMV_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Most tokens (rows of x) one GEMV handles: the tensor-core tile's width. */
enum { CUDA_GEMV_MAX_TOKENS = 8 };

typedef enum {
    CUDA_GEMV_STORE = 0,  /* y = x W^T */
    CUDA_GEMV_ACCUMULATE, /* y += x W^T (the residual add of o_proj / down_proj) */
    /* W is (2 f, in): gate rows then up rows (the backend's w_gate | w_up);
     * act_out (n_tok, f) = act(x W_gate^T) * (x W_up^T), rounded to dtype,
     * as cuda_gated_act would write it from an fp32 GEMM output. */
    CUDA_GEMV_GATED,
    /* W is the fused (n_heads + 2 n_kv_heads) * head_dim x in q | k | v
     * projection; per token, as cuda_qkv_post (kernels/rope_kv.h) without
     * q/k norms: biases added, RoPE on q and k, q written to y's q columns
     * (the k and v columns of y are not written), k and v stored into the
     * KV pool at the token's slot. */
    CUDA_GEMV_ROPE_KV,
} cuda_gemv_epilogue;

/* What CUDA_GEMV_ROPE_KV needs of the step (the fields of cuda_qkv_args;
 * KV pool layout in cuda_internal.h). */
typedef struct cuda_gemv_rope {
    int n_heads, n_kv_heads, head_dim, block_size;
    const float *bq, *bk, *bv;   /* optional biases, NULL when absent */
    const float *inv_freq;       /* (head_dim / 2) */
    const int32_t *positions;    /* (n_tok) */
    const int64_t *slot_mapping; /* (n_tok) */
    void *kv;
    cv_dtype kv_dtype;
    size_t block_elems, layer_off;
} cuda_gemv_rope;

typedef struct cuda_gemv_args {
    cv_dtype dtype; /* of w and x: CV_DTYPE_BF16 or CV_DTYPE_F16 */
    const void *w;  /* (out, in) row-major, 16-byte aligned */
    int out, in;
    const void *x; /* (n_tok, in) row-major, 16-byte aligned */
    /* Split activations (kernels/norm_act.h): x holds hi rows and, x_lo_off
     * elements further, lo rows; the product is taken with hi + lo. 0: none. */
    size_t x_lo_off;
    int n_tok; /* 1 .. CUDA_GEMV_MAX_TOKENS */
    cuda_gemv_epilogue epilogue;
    float *y;            /* STORE, ACCUMULATE, ROPE_KV: (n_tok, out) fp32 */
    cv_activation act;   /* GATED: CV_ACT_SILU or CV_ACT_GELU_TANH */
    void *act_out;       /* GATED: (n_tok, out / 2) in dtype */
    size_t act_lo_off;   /* GATED, split activations: lo rows' offset, else 0 */
    cuda_gemv_rope rope; /* ROPE_KV */
    int pdl;             /* launch with programmatic dependent launch */
} cuda_gemv_args;

/* Whether cuda_gemv runs this product: a 16-bit dtype, 1..8 tokens, in a
 * multiple of 8, w and x 16-byte aligned (x_lo_off a multiple of 8). */
int cuda_gemv_supported(cv_dtype dtype, int n_tok, int in, const void *w, const void *x,
                        size_t x_lo_off);

/* The product of a (see cuda_gemv_args); cudaErrorInvalidValue when
 * cuda_gemv_supported says no or the epilogue's arguments are missing. */
int cuda_gemv(const cuda_gemv_args *a, cudaStream_t stream);

/* As cuda_rmsnorm (kernels/norm_act.h) for at most CUDA_GEMV_MAX_TOKENS rows:
 * out row r = w * (x row * rsqrt(mean(x row^2) + eps)), fp32 inside, the
 * row held in registers (one read of x). Supported when n is a multiple of
 * 4 up to 16384 and x is 16-byte aligned. */
int cuda_rmsnorm_rows_supported(int n_rows, int n, const float *x);
int cuda_rmsnorm_rows(const float *x /* (*, n) */, const int32_t *rows, int n_rows, const float *w,
                      int n, float eps, cv_dtype out_dtype, void *out, int ld_out, size_t lo_off,
                      int pdl, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif

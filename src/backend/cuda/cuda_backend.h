/* CUDA backend: the backend contract of backend/backend.h on one NVIDIA GPU
 * (built for sm_90: H100, H200).
 *
 * The functions mirror cv_backend_* one for one, with the same batch and
 * logits semantics (see backend.h), under their own names so that both
 * backends can be linked into one program; a dispatch layer picks one.
 *
 * Numerics: weights live on the GPU in their stored dtype. F32 models run
 * fp32 GEMMs with TF32 off (within 1e-4 of HF's fp32 logits). F16/BF16
 * models run GEMMs on 16-bit tensor-core operands with fp32 accumulation and
 * fp32 outputs, the activations fed as cv_cuda_backend_set_act_mode says
 * (by default rounded to the weight dtype, as vLLM and HF run them); the
 * residual stream, norms, RoPE, softmax and attention are fp32. The KV cache
 * holds the model's dtype by default (vLLM's "auto").
 *
 * Steps of at most 256 tokens (decode, small chunks) run as CUDA graphs:
 * captured once per batch shape, replayed after.
 *
 * Thread safety: one host thread drives a backend at a time. The backend
 * selects its device on every call, so several backends on different devices
 * may be driven from different threads.
 * Ownership: the backend borrows the model only during create (the weights
 * are copied to the device); it owns its device memory and frees it in
 * destroy. */
#ifndef CV_BACKEND_CUDA_CUDA_BACKEND_H
#define CV_BACKEND_CUDA_CUDA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "base/error.h"
#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cv_cuda_backend cv_cuda_backend;

/* Number of CUDA devices the runtime sees; 0 when there is no GPU or no
 * driver (never an error: callers use it to skip GPU work). */
int cv_cuda_device_count(void);

/* Uploads the model's weights to DEVICE. On failure returns NULL and err
 * names the device, the tensor or the CUDA/cuBLAS call that failed; a model
 * this backend does not implement (sliding-window attention) fails with
 * class CV_ERR_UNSUPPORTED before touching the GPU. Every architecture of
 * model.h runs: the Llama family, OPT (pre- and post-norm, project_in/out)
 * and GPT-2. */
cv_cuda_backend *cv_cuda_backend_create(const cv_model *model, int device, cv_error *err);

/* Element type of the KV cache; call before cv_cuda_backend_kv_alloc.
 * Default: the model's dtype (vLLM's "auto": BF16 or F16 halves the bytes a
 * decode step reads per cached token against F32). F32 keeps 16-bit models
 * near HF's fp32 compute, with CV_CUDA_ACT_SPLIT. */
int cv_cuda_backend_set_kv_dtype(cv_cuda_backend *b, cv_dtype dtype, cv_error *err);

/* How F16/BF16 models feed activations to their GEMMs (F32 models: fp32).
 * CV_CUDA_ACT_SPLIT: each fp32 activation x goes in as two 16-bit
 *   values, hi = round(x) and lo = round(x - hi), as twice the GEMM columns,
 *   and the two products are summed: as accurate as fp32 operands (the
 *   CPU backend's numerics, ~1e-5 from HF's fp32 compute), the same weight
 *   bytes per decode step, twice the prefill FLOPs.
 * CV_CUDA_ACT_ROUND (default): activations rounded to the weight dtype
 *   (vLLM's and HF bf16's numerics): half the prefill FLOPs, ~1e-2 from fp32
 *   compute on the test fixtures, which can change greedy tokens. */
typedef enum { CV_CUDA_ACT_ROUND = 0, CV_CUDA_ACT_SPLIT } cv_cuda_act_mode;
int cv_cuda_backend_set_act_mode(cv_cuda_backend *b, cv_cuda_act_mode mode, cv_error *err);

/* CUDA graphs for steps of at most 256 tokens: on by default; 0 runs every
 * step as separate launches (benchmarks compare the two). */
void cv_cuda_backend_set_graphs(cv_cuda_backend *b, int enable);

/* With graphs on, cv_cuda_backend_kv_alloc then captures the decode graphs
 * of every batch size up to min(max_seqs, 256) (vLLM's capture at start;
 * with the tensor-core attention they serve any context up to max_len),
 * after sizing the per-step buffers for steps of up to max_seqs sequences
 * and max_len tokens of context, so that serving never recaptures them.
 * Not called: graphs are captured on first use. */
void cv_cuda_backend_set_graph_limits(cv_cuda_backend *b, int max_seqs, int max_len);

/* Allocates now the activations of a step of n_tokens tokens with n_logits
 * rows of logits (a forward grows them on demand otherwise), so that the
 * memory left afterwards can go to the KV pool. */
int cv_cuda_backend_reserve(cv_cuda_backend *b, int n_tokens, int n_logits, cv_error *err);

/* Free and total memory of the backend's device (cudaMemGetInfo). */
int cv_cuda_backend_memory(const cv_cuda_backend *b, size_t *free_bytes, size_t *total_bytes,
                           cv_error *err);

/* Bytes of device memory one KV block of block_size tokens costs. */
size_t cv_cuda_backend_kv_block_bytes(const cv_cuda_backend *b, int block_size);

/* Allocates the device KV pool once: n_blocks blocks of block_size tokens. */
int cv_cuda_backend_kv_alloc(cv_cuda_backend *b, int n_blocks, int block_size, cv_error *err);

/* Copies whole KV blocks src[i] -> dst[i] on the device. */
int cv_cuda_backend_kv_copy(cv_cuda_backend *b, const int32_t *src, const int32_t *dst, int n,
                            cv_error *err);

/* Runs one step (batch arrays in host memory); writes logits
 * (n_logits, vocab_size) fp32 into host memory. Returns when the logits
 * are in place. */
int cv_cuda_backend_forward(cv_cuda_backend *b, const cv_batch *batch, float *logits,
                            cv_error *err);

/* The same, except that the rows greedy->want marks are reduced on the GPU
 * to their greedy choice or sampled token (kernels/sample.h; returned in
 * greedy's arrays) and their logits rows are not downloaded. greedy NULL: as
 * cv_cuda_backend_forward. */
int cv_cuda_backend_forward_greedy(cv_cuda_backend *b, const cv_batch *batch, float *logits,
                                   const cv_greedy_rows *greedy, cv_error *err);
/* Seconds between the last forward's first command (its upload) and its
 * last (its downloads) on the GPU, by CUDA events: the GPU's share of the
 * forward's wall time. 0 before the first forward. */
double cv_cuda_backend_last_step_device_s(const cv_cuda_backend *b);

void cv_cuda_backend_destroy(cv_cuda_backend *b);

/* The backend function table over these calls (cuda_ops.c). */
extern const cv_backend_ops cv_cuda_backend_ops;

/* Per-phase GPU time of the forward, for benchmarks: while enabled, every
 * forward records CUDA events between its phases and adds their elapsed
 * times to a table (enabling clears it). The events cost a few microseconds
 * a step, so leave it off for timing whole steps. */
enum {
    CV_CUDA_PHASE_EMBED = 0,
    CV_CUDA_PHASE_NORM,     /* attention and MLP RMSNorms */
    CV_CUDA_PHASE_QKV_GEMM, /* fused q/k/v projection */
    CV_CUDA_PHASE_ROPE_KV,  /* biases, q/k norms, RoPE, KV store */
    CV_CUDA_PHASE_ATTN,     /* paged attention (and split combine) */
    CV_CUDA_PHASE_O_GEMM,   /* output projection + residual */
    CV_CUDA_PHASE_UPGATE_GEMM,
    CV_CUDA_PHASE_ACT,       /* act(gate) * up */
    CV_CUDA_PHASE_DOWN_GEMM, /* down projection + residual */
    CV_CUDA_PHASE_HEAD,      /* final norm, LM head GEMM */
    CV_CUDA_PHASE_COPY,      /* batch upload and logits download */
    CV_CUDA_N_PHASES
};
void cv_cuda_backend_profile(cv_cuda_backend *b, int enable);
/* Milliseconds per phase summed over the profiled forwards; names[i] (static
 * strings) say what each is. Returns the number of phases. */
int cv_cuda_backend_profile_read(const cv_cuda_backend *b, double *ms /* (CV_CUDA_N_PHASES) */,
                                 const char **names /* (CV_CUDA_N_PHASES) */);

#ifdef __cplusplus
}
#endif

#endif

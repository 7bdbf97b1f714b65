/* The backend of the device an engine runs on, behind the backend contract
 * of backend/backend.h: the CPU backend, or the CUDA backend where the build
 * has CUDA and a GPU is visible. Create picks one; every call after goes
 * through that backend's function table (cv_backend_ops), so the engine
 * never sees CUDA and this layer names a backend only where it creates it.
 *
 * Device names are vLLM's `device` engine argument: "auto" (GPU 0 when a
 * CUDA device is visible, else the CPU), "cpu", "cuda" (GPU 0; an error
 * without one).
 *
 * Thread safety and ownership as in backend.h: one thread drives a backend
 * at a time; the model must outlive it. */
#ifndef CV_BACKEND_DEVICE_DEVICE_H
#define CV_BACKEND_DEVICE_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "base/error.h"
#include "model/model.h"

typedef struct cv_device_backend cv_device_backend;

typedef struct cv_device_options {
    const char *device;      /* "auto", "cpu" or "cuda" */
    cv_dtype matrix_dtype;   /* the weights as this dtype (the CUDA backend keeps the stored one) */
    int n_threads;           /* CPU backend threads (<= 0: OpenMP's default) */
    size_t cpu_kv_bytes;     /* CPU: the KV pool's budget */
    double gpu_memory_share; /* CUDA: share of the GPU's memory cvllm may hold (vLLM's
                                gpu_memory_utilization) */
    int max_step_tokens;     /* CUDA: tokens and logits rows of the largest step, */
    int max_step_logits;     /*   whose activations are reserved before the KV pool */
    int max_model_len;       /* CUDA: longest context (the graphs captured at start serve it) */
    int kv_dtype;            /* a cv_dtype, or -1: the backend's default */
    bool fp32_activations;   /* CUDA, 16-bit models: fp32-exact GEMM inputs (split) */
    bool enforce_eager;      /* CUDA: no CUDA graphs */
} cv_device_options;

/* Creates the backend `o->device` names. On failure returns NULL and err
 * says which device and why. */
cv_device_backend *cv_device_backend_create(const cv_model *model, const cv_device_options *o,
                                            cv_error *err);

/* "cpu" or "cuda:0". */
const char *cv_device_backend_name(const cv_device_backend *b);

/* Bytes the KV pool may take: the CPU budget, or on a GPU what is left of
 * gpu_memory_share x its memory after the weights, the reserved activations
 * and a margin for cuBLAS and CUDA graphs. */
int cv_device_backend_kv_budget(cv_device_backend *b, size_t *bytes, cv_error *err);

size_t cv_device_backend_kv_block_bytes(const cv_device_backend *b, int block_size);
int cv_device_backend_kv_alloc(cv_device_backend *b, int n_blocks, int block_size, cv_error *err);
int cv_device_backend_kv_copy(cv_device_backend *b, const int32_t *src, const int32_t *dst, int n,
                              cv_error *err);
/* Runs one step. greedy (NULL: every row returned as logits) marks rows the
 * engine needs only the greedy choice or a sampled token of (backend.h's
 * CV_ROW_GREEDY / CV_ROW_SAMPLE); a backend that reduces rows itself (the
 * GPU's) fills their choice and leaves their logits unwritten,
 * the others return every row and the engine reduces them. Returns 1 when
 * greedy was filled, 0 when every row is in logits, -1 on error. */
int cv_device_backend_forward(cv_device_backend *b, const cv_batch *batch, float *logits,
                              const cv_greedy_rows *greedy, cv_error *err);
/* Seconds the device spent on the last forward by its own clock (first
 * command to last), or 0 where the backend does not time it apart from the
 * caller's wall time (the CPU's). */
double cv_device_backend_last_step_device_s(const cv_device_backend *b);
/* LoRA slots (backend.h's lora_init / lora_load). A backend without
 * them (the CUDA backend for now) answers an error saying LoRA is not yet
 * applied on the GPU. */
bool cv_device_backend_has_lora(const cv_device_backend *b);
int cv_device_backend_lora_init(cv_device_backend *b, int n_slots, int max_rank, cv_error *err);
int cv_device_backend_lora_load(cv_device_backend *b, int slot,
                                const struct cv_lora_adapter *adapter, cv_error *err);
void cv_device_backend_destroy(cv_device_backend *b);

#endif

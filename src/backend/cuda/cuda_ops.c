/* The CUDA backend behind the backend function table (backend.h). It
 * reduces greedy rows and samples the others on the GPU
 * (cv_cuda_backend_forward_greedy) and applies LoRA adapters from its slot
 * pool (lora/cuda_lora.h). */
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/lora/cuda_lora.h"

static size_t cuda_kv_block_bytes(const void *impl, int block_size)
{
    return cv_cuda_backend_kv_block_bytes(impl, block_size);
}

static int cuda_memory(const void *impl, size_t *free_bytes, size_t *total_bytes, cv_error *err)
{
    return cv_cuda_backend_memory(impl, free_bytes, total_bytes, err);
}

static int cuda_kv_alloc(void *impl, int n_blocks, int block_size, cv_error *err)
{
    return cv_cuda_backend_kv_alloc(impl, n_blocks, block_size, err);
}

static int cuda_kv_copy(void *impl, const int32_t *src, const int32_t *dst, int n, cv_error *err)
{
    return cv_cuda_backend_kv_copy(impl, src, dst, n, err);
}

static int cuda_forward(void *impl, const cv_batch *batch, float *logits,
                        const cv_greedy_rows *greedy, cv_error *err)
{
    if (cv_cuda_backend_forward_greedy(impl, batch, logits, greedy, err) < 0) return -1;
    return greedy != NULL;
}

static double cuda_last_step_device_s(const void *impl)
{
    return cv_cuda_backend_last_step_device_s(impl);
}

static int cuda_lora_init(void *impl, int n_slots, int max_rank, cv_error *err)
{
    return cv_cuda_backend_lora_init(impl, n_slots, max_rank, err);
}

static int cuda_lora_load(void *impl, int slot, const struct cv_lora_adapter *adapter,
                          cv_error *err)
{
    return cv_cuda_backend_lora_load(impl, slot, adapter, err);
}

static void cuda_destroy(void *impl)
{
    cv_cuda_backend_destroy(impl);
}

const cv_backend_ops cv_cuda_backend_ops = {
    .kv_block_bytes = cuda_kv_block_bytes,
    .memory = cuda_memory,
    .kv_alloc = cuda_kv_alloc,
    .kv_copy = cuda_kv_copy,
    .forward = cuda_forward,
    .last_step_device_s = cuda_last_step_device_s,
    .destroy = cuda_destroy,
    .lora_init = cuda_lora_init,
    .lora_load = cuda_lora_load,
};

/* The CPU backend behind the backend function table (backend.h). It returns
 * every logits row: the engine's sampler reduces them on the same cores. */
#include "backend/backend.h"

static size_t cpu_kv_block_bytes(const void *impl, int block_size)
{
    return cv_backend_kv_block_bytes(impl, block_size);
}

static int cpu_kv_alloc(void *impl, int n_blocks, int block_size, cv_error *err)
{
    return cv_backend_kv_alloc(impl, n_blocks, block_size, err);
}

static int cpu_kv_copy(void *impl, const int32_t *src, const int32_t *dst, int n, cv_error *err)
{
    return cv_backend_kv_copy(impl, src, dst, n, err);
}

static int cpu_forward(void *impl, const cv_batch *batch, float *logits,
                       const cv_greedy_rows *greedy, cv_error *err)
{
    (void)greedy;
    return cv_backend_forward(impl, batch, logits, err) < 0 ? -1 : 0;
}

static void cpu_destroy(void *impl)
{
    cv_backend_destroy(impl);
}

static int cpu_lora_init(void *impl, int n_slots, int max_rank, cv_error *err)
{
    return cv_backend_lora_init(impl, n_slots, max_rank, err);
}

static int cpu_lora_load(void *impl, int slot, const struct cv_lora_adapter *adapter, cv_error *err)
{
    return cv_backend_lora_load(impl, slot, adapter, err);
}

const cv_backend_ops cv_cpu_backend_ops = {
    .kv_block_bytes = cpu_kv_block_bytes,
    .memory = NULL,
    .kv_alloc = cpu_kv_alloc,
    .kv_copy = cpu_kv_copy,
    .forward = cpu_forward,
    .destroy = cpu_destroy,
    .lora_init = cpu_lora_init,
    .lora_load = cpu_lora_load,
};

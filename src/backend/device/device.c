/* The device dispatch: one of the two backends, chosen at create. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/device/device.h"
#ifdef CVLLM_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

struct cv_device_backend {
    cv_backend *cpu; /* exactly one of cpu and cuda is set */
#ifdef CVLLM_HAVE_CUDA
    cv_cuda_backend *cuda;
#endif
    cv_device_options opts;
    char name[16];
};

static int visible_gpus(void)
{
#ifdef CVLLM_HAVE_CUDA
    return cv_cuda_device_count();
#else
    return 0;
#endif
}

#ifdef CVLLM_HAVE_CUDA
static int create_cuda(cv_device_backend *b, const cv_model *model, cv_error *err)
{
    const cv_model_config *cfg = cv_model_get_config(model);
    if (b->opts.matrix_dtype != cfg->dtype)
        return cv_errorf(err,
                         "device 'cuda': dtype %s would cast the %s checkpoint, and the CUDA "
                         "backend runs the weights in their stored dtype (use dtype \"auto\")",
                         cv_dtype_name(b->opts.matrix_dtype), cv_dtype_name(cfg->dtype));
    if (!(b->cuda = cv_cuda_backend_create(model, 0, err))) return -1;
    snprintf(b->name, sizeof b->name, "cuda:0");
    cv_cuda_backend_set_graphs(b->cuda, !b->opts.enforce_eager);
    if ((b->opts.kv_dtype >= 0 && cv_cuda_backend_set_kv_dtype(b->cuda, b->opts.kv_dtype, err)) ||
        cv_cuda_backend_set_act_mode(
            b->cuda, b->opts.fp32_activations ? CV_CUDA_ACT_SPLIT : CV_CUDA_ACT_ROUND, err))
        return -1;
    return cv_cuda_backend_reserve(b->cuda, b->opts.max_step_tokens, b->opts.max_step_logits, err);
}
#endif

cv_device_backend *cv_device_backend_create(const cv_model *model, const cv_device_options *o,
                                            cv_error *err)
{
    if (strcmp(o->device, "auto") && strcmp(o->device, "cpu") && strcmp(o->device, "cuda")) {
        cv_errorf(err, "unknown device '%s' (expected auto, cpu or cuda)", o->device);
        return NULL;
    }
    cv_device_backend *b = calloc(1, sizeof *b);
    if (!b) {
        cv_errorf(err, "out of memory");
        return NULL;
    }
    b->opts = *o;
    const bool gpu = !strcmp(o->device, "cuda") || (!strcmp(o->device, "auto") && visible_gpus());
    int rc = 0;
    if (gpu) {
#ifdef CVLLM_HAVE_CUDA
        rc = visible_gpus() ? create_cuda(b, model, err)
                            : cv_errorf(err, "device 'cuda': no CUDA device is visible");
#else
        rc = cv_errorf(err, "device 'cuda': this build has no CUDA backend (nvcc was not found "
                            "when it was configured)");
#endif
    } else {
        b->cpu = cv_backend_cpu_create_as(model, o->n_threads, o->matrix_dtype, err);
        rc = b->cpu ? 0 : -1;
        if (rc == 0 && o->kv_dtype >= 0) rc = cv_backend_cpu_set_kv_dtype(b->cpu, o->kv_dtype, err);
        snprintf(b->name, sizeof b->name, "cpu");
    }
    if (rc < 0) {
        cv_device_backend_destroy(b);
        return NULL;
    }
    return b;
}

const char *cv_device_backend_name(const cv_device_backend *b)
{
    return b->name;
}

int cv_device_backend_kv_budget(cv_device_backend *b, size_t *bytes, cv_error *err)
{
#ifdef CVLLM_HAVE_CUDA
    if (b->cuda) {
        size_t free_b, total;
        if (cv_cuda_backend_memory(b->cuda, &free_b, &total, err) < 0) return -1;
        /* cuBLAS workspaces, CUDA graphs and attention partials allocate
         * after the pool: keep 256 MiB and 2% of the card for them. */
        const double allowed = b->opts.gpu_memory_share * (double)total;
        const double held = (double)(total - free_b) + (256.0 * (1 << 20)) + 0.02 * (double)total;
        if (allowed <= held)
            return cv_errorf(
                err,
                "No available memory for the cache blocks: %.2f GiB of %.2f GiB are "
                "in use after loading the model and gpu_memory_utilization is %.2f. "
                "Try increasing `gpu_memory_utilization` when initializing the engine.",
                (double)(total - free_b) / (1 << 30), (double)total / (1 << 30),
                b->opts.gpu_memory_share);
        *bytes = (size_t)(allowed - held);
        return 0;
    }
#endif
    (void)err;
    *bytes = b->opts.cpu_kv_bytes;
    return 0;
}

size_t cv_device_backend_kv_block_bytes(const cv_device_backend *b, int block_size)
{
#ifdef CVLLM_HAVE_CUDA
    if (b->cuda) return cv_cuda_backend_kv_block_bytes(b->cuda, block_size);
#endif
    return cv_backend_kv_block_bytes(b->cpu, block_size);
}

int cv_device_backend_kv_alloc(cv_device_backend *b, int n_blocks, int block_size, cv_error *err)
{
#ifdef CVLLM_HAVE_CUDA
    if (b->cuda) return cv_cuda_backend_kv_alloc(b->cuda, n_blocks, block_size, err);
#endif
    return cv_backend_kv_alloc(b->cpu, n_blocks, block_size, err);
}

int cv_device_backend_kv_copy(cv_device_backend *b, const int32_t *src, const int32_t *dst, int n,
                              cv_error *err)
{
#ifdef CVLLM_HAVE_CUDA
    if (b->cuda) return cv_cuda_backend_kv_copy(b->cuda, src, dst, n, err);
#endif
    return cv_backend_kv_copy(b->cpu, src, dst, n, err);
}

int cv_device_backend_forward(cv_device_backend *b, const cv_batch *batch, float *logits,
                              const cv_greedy_rows *greedy, cv_error *err)
{
#ifdef CVLLM_HAVE_CUDA
    if (b->cuda)
        return cv_cuda_backend_forward_greedy(b->cuda, batch, logits, greedy, err) < 0
                   ? -1
                   : (greedy != NULL);
#endif
    (void)greedy; /* the engine's own sampler reduces the CPU's rows */
    return cv_backend_forward(b->cpu, batch, logits, err) < 0 ? -1 : 0;
}

void cv_device_backend_destroy(cv_device_backend *b)
{
    if (!b) return;
#ifdef CVLLM_HAVE_CUDA
    cv_cuda_backend_destroy(b->cuda);
#endif
    if (b->cpu) cv_backend_destroy(b->cpu);
    free(b);
}

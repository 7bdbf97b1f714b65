/* The device dispatch: one of the backends, chosen at create, driven
 * through its function table (backend.h) from then on. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/device/device.h"
#include "base/log.h"
#ifdef CVLLM_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

struct cv_device_backend {
    const cv_backend_ops *ops;
    void *impl; /* the backend object ops belongs to */
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
    cv_cuda_backend *cuda = cv_cuda_backend_create(model, 0, err);
    if (!cuda) return -1;
    b->ops = &cv_cuda_backend_ops;
    b->impl = cuda;
    snprintf(b->name, sizeof b->name, "cuda:0");
    cv_cuda_backend_set_graphs(cuda, !b->opts.enforce_eager);
    cv_cuda_backend_set_graph_limits(cuda, b->opts.max_step_logits, b->opts.max_model_len);
    if ((b->opts.kv_dtype >= 0 && cv_cuda_backend_set_kv_dtype(cuda, b->opts.kv_dtype, err)) ||
        cv_cuda_backend_set_act_mode(
            cuda, b->opts.fp32_activations ? CV_CUDA_ACT_SPLIT : CV_CUDA_ACT_ROUND, err))
        return -1;
    return cv_cuda_backend_reserve(cuda, b->opts.max_step_tokens, b->opts.max_step_logits, err);
}
#endif

static int create_cpu(cv_device_backend *b, const cv_model *model, cv_error *err)
{
    const cv_device_options *o = &b->opts;
    cv_backend *cpu = cv_backend_cpu_create_as(model, o->n_threads, o->matrix_dtype, err);
    if (!cpu) return -1;
    b->ops = &cv_cpu_backend_ops;
    b->impl = cpu;
    snprintf(b->name, sizeof b->name, "cpu");
    return o->kv_dtype >= 0 ? cv_backend_cpu_set_kv_dtype(cpu, o->kv_dtype, err) : 0;
}

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
    int rc;
    if (gpu) {
#ifdef CVLLM_HAVE_CUDA
        rc = visible_gpus() ? create_cuda(b, model, err)
                            : cv_errorf(err, "device 'cuda': no CUDA device is visible");
        /* "auto" means the best device that runs the model: one the GPU
         * backend does not implement (sliding-window attention) runs on the
         * CPU, said once in the log, rather than not at all. */
        if (rc < 0 && err->cls == CV_ERR_UNSUPPORTED && !strcmp(o->device, "auto")) {
            cv_log_warn("device auto: %s; running the model on the CPU", err->msg);
            if (b->impl) b->ops->destroy(b->impl);
            b->impl = NULL;
            rc = create_cpu(b, model, err);
        }
#else
        rc = cv_errorf(err, "device 'cuda': this build has no CUDA backend (nvcc was not found "
                            "when it was configured)");
#endif
    } else {
        rc = create_cpu(b, model, err);
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
    if (!b->ops->memory) {
        *bytes = b->opts.cpu_kv_bytes;
        return 0;
    }
    size_t free_b, total;
    if (b->ops->memory(b->impl, &free_b, &total, err) < 0) return -1;
    /* cuBLAS workspaces, CUDA graphs and attention partials allocate after
     * the pool: keep 256 MiB and 2% of the card for them. */
    const double allowed = b->opts.gpu_memory_share * (double)total;
    const double held = (double)(total - free_b) + (256.0 * (1 << 20)) + 0.02 * (double)total;
    if (allowed <= held)
        return cv_errorf(err,
                         "No available memory for the cache blocks: %.2f GiB of %.2f GiB are "
                         "in use after loading the model and gpu_memory_utilization is %.2f. "
                         "Try increasing `gpu_memory_utilization` when initializing the engine.",
                         (double)(total - free_b) / (1 << 30), (double)total / (1 << 30),
                         b->opts.gpu_memory_share);
    *bytes = (size_t)(allowed - held);
    return 0;
}

size_t cv_device_backend_kv_block_bytes(const cv_device_backend *b, int block_size)
{
    return b->ops->kv_block_bytes(b->impl, block_size);
}

int cv_device_backend_kv_alloc(cv_device_backend *b, int n_blocks, int block_size, cv_error *err)
{
    return b->ops->kv_alloc(b->impl, n_blocks, block_size, err);
}

int cv_device_backend_kv_copy(cv_device_backend *b, const int32_t *src, const int32_t *dst, int n,
                              cv_error *err)
{
    return b->ops->kv_copy(b->impl, src, dst, n, err);
}

double cv_device_backend_last_step_device_s(const cv_device_backend *b)
{
    return b->ops->last_step_device_s ? b->ops->last_step_device_s(b->impl) : 0.0;
}

int cv_device_backend_forward(cv_device_backend *b, const cv_batch *batch, float *logits,
                              const cv_greedy_rows *greedy, cv_error *err)
{
    return b->ops->forward(b->impl, batch, logits, greedy, err);
}

bool cv_device_backend_has_lora(const cv_device_backend *b)
{
    return b->ops->lora_init && b->ops->lora_load;
}

static int no_lora(const cv_device_backend *b, cv_error *err)
{
    return cv_errorf(err, "the backend of device %s does not apply LoRA adapters", b->name);
}

int cv_device_backend_lora_init(cv_device_backend *b, int n_slots, int max_rank, cv_error *err)
{
    if (!cv_device_backend_has_lora(b)) return no_lora(b, err);
    return b->ops->lora_init(b->impl, n_slots, max_rank, err);
}

int cv_device_backend_lora_load(cv_device_backend *b, int slot,
                                const struct cv_lora_adapter *adapter, cv_error *err)
{
    if (!cv_device_backend_has_lora(b)) return no_lora(b, err);
    return b->ops->lora_load(b->impl, slot, adapter, err);
}

void cv_device_backend_destroy(cv_device_backend *b)
{
    if (!b) return;
    if (b->impl) b->ops->destroy(b->impl);
    free(b);
}

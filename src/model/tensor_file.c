/* The model module's tensor-file readers (safetensors, torch.save .bin)
 * behind a small public API, for files that are not a model checkpoint
 * (LoRA adapters, src/lora). */
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"

struct cv_tensor_file {
    cv_st_file f;
};

cv_tensor_file *cv_tensor_file_open(const char *path, cv_error *err)
{
    cv_tensor_file *tf = calloc(1, sizeof *tf);
    if (!tf) {
        cv_errorf(err, "%s: out of memory", path);
        return NULL;
    }
    const size_t n = strlen(path);
    const bool torch = n >= 4 && !strcmp(path + n - 4, ".bin");
    if ((torch ? cv_torch_open : cv_st_open)(&tf->f, path, err) < 0) {
        free(tf);
        return NULL;
    }
    return tf;
}

size_t cv_tensor_file_count(const cv_tensor_file *tf)
{
    return tf->f.n_tensors;
}

const char *cv_tensor_file_name(const cv_tensor_file *tf, size_t i)
{
    return tf->f.tensors[i].name;
}

const cv_tensor *cv_tensor_file_get(const cv_tensor_file *tf, size_t i, cv_error *err)
{
    const cv_st_tensor *t = &tf->f.tensors[i];
    if (!t->supported && t->why[0]) {
        cv_errorf(err, "%s: tensor '%s' %s", tf->f.path, t->name, t->why);
        return NULL;
    }
    if (!t->supported) {
        cv_errorf(err, "%s: tensor '%s' has dtype %s; supported dtypes are F32, F16, BF16",
                  tf->f.path, t->name, t->dtype_name);
        return NULL;
    }
    return &t->tensor;
}

void cv_tensor_file_close(cv_tensor_file *tf)
{
    if (!tf) return;
    cv_st_close(&tf->f);
    free(tf);
}

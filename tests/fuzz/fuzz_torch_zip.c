/* libFuzzer target: a whole pytorch_model.bin (zip reader, pickle, storage
 * binding) on arbitrary bytes, held in a buffer of exactly their size so
 * that any read past the file is caught. Every usable tensor's bytes are
 * read, and must lie inside the file or in a copy. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    char *path = strdup("fuzz.bin");
    if (!copy || !path) abort();
    memcpy(copy, data, size);
    cv_st_file f = {.path = path, .map = copy, .map_bytes = size};
    cv_error err = {.msg = ""};
    if (cv_torch_parse(&f, &err) == 0) {
        volatile uint8_t sum = 0;
        for (size_t i = 0; i < f.n_tensors; i++) {
            const cv_st_tensor *t = &f.tensors[i];
            if (!t->supported) continue;
            size_t bytes = (size_t)cv_tensor_numel(&t->tensor) * cv_dtype_size(t->tensor.dtype);
            for (size_t k = 0; k < bytes; k++)
                sum += ((const uint8_t *)t->tensor.data)[k];
        }
        (void)sum;
    } else if (!err.msg[0]) {
        abort();
    }
    f.map = NULL; /* ours, not a mapping */
    cv_st_close(&f);
    free(copy);
    return 0;
}

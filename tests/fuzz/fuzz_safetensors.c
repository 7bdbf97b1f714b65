/* libFuzzer target (issue 16): a model.safetensors file of arbitrary bytes
 * through cv_st_open, the reader the server maps weights with. The bytes
 * go to a memfd opened by its /proc path, so the real open, mmap and
 * header checks run. A file it accepts must have every supported tensor's
 * bytes inside the mapping (or in an aligned copy): they are all read. A
 * refusal must say why. */
#define _GNU_SOURCE /* memfd_create */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "model/model_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz.safetensors", MFD_CLOEXEC);
    if (fd < 0) abort();
    for (size_t off = 0; off < size;) {
        ssize_t n = write(fd, data + off, size - off);
        if (n <= 0) abort();
        off += (size_t)n;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    cv_st_file f;
    cv_error err = {.msg = ""};
    if (cv_st_open(&f, path, &err) == 0) {
        volatile uint8_t sum = 0;
        for (size_t i = 0; i < f.n_tensors; i++) {
            const cv_st_tensor *t = &f.tensors[i];
            if (!t->supported) continue;
            size_t bytes = (size_t)cv_tensor_numel(&t->tensor) * cv_dtype_size(t->tensor.dtype);
            for (size_t k = 0; k < bytes; k++)
                sum += ((const uint8_t *)t->tensor.data)[k];
        }
        (void)sum;
        cv_st_close(&f);
    } else if (!err.msg[0]) {
        abort();
    }
    close(fd);
    return 0;
}

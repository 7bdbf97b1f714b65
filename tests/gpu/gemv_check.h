/* What test_gpu_gemv.cu and test_gpu_gemv_bench.cu share: the CUDA error
 * check that ends the program on a failed runtime call, and the timing
 * mode's entry point. */
#ifndef CV_TESTS_GPU_GEMV_CHECK_H
#define CV_TESTS_GPU_GEMV_CHECK_H

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#define CK(call)                                                                                   \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

/* test_gpu_gemv --bench: prints the timings (test_gpu_gemv_bench.cu). */
void gemv_bench();

#endif

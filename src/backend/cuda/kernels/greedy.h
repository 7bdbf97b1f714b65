/* Greedy choice of rows of logits on the device (kernels/greedy.cu): only
 * the chosen token, its logprob and rank cross to the host. The launcher
 * enqueues on STREAM and returns the cudaError_t of the launch as an int, 0
 * on success; pointers are device memory the caller owns. */
#ifndef CV_BACKEND_CUDA_KERNELS_GREEDY_H
#define CV_BACKEND_CUDA_KERNELS_GREEDY_H

#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cuda_greedy_out {
    int32_t token; /* first index of the row's maximum */
    float logprob; /* its log-softmax value */
    int32_t rank;  /* tokens at least as likely, itself included */
} cuda_greedy_out;

/* out[r] = the greedy choice of row r of logits (n_rows, vocab). */
int cuda_greedy(const float *logits, int n_rows, int vocab, cuda_greedy_out *out,
                cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif

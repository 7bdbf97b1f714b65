/* Embedding rows on the GPU (kernels/embed.cu): token embeddings into the
 * residual stream or as a GEMM operand, learned positions added to it.
 *
 * Every launcher enqueues on STREAM and returns the cudaError_t of the
 * launch (cudaGetLastError) as an int, 0 on success; all pointers are
 * device memory the caller owns. */
#ifndef CV_BACKEND_CUDA_KERNELS_EMBED_H
#define CV_BACKEND_CUDA_KERNELS_EMBED_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* x (n_tok, hidden) fp32 = embed[ids[t]] widened. */
int cuda_embed(cv_dtype dtype, const void *embed /* (vocab, hidden) */, const int32_t *ids,
               int n_tok, int hidden, float *x, cudaStream_t stream);

/* out (n_tok, width) in out_dtype = embed[ids[t]] (embed_dtype): embedding
 * rows as a GEMM operand (OPT's project_in). lo_off: split activations, as
 * in kernels/norm_act.h. */
int cuda_gather_act(cv_dtype embed_dtype, const void *embed, const int32_t *ids, int n_tok,
                    int width, cv_dtype out_dtype, void *out, size_t lo_off, cudaStream_t stream);

/* x (n_tok, hidden) += pos_embed[positions[t] + offset] (learned positions;
 * pos_embed fp32). */
int cuda_add_positions(float *x, const float *pos_embed, const int32_t *positions, int offset,
                       int n_tok, int hidden, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif

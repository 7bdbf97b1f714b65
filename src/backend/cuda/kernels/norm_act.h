/* Norms and elementwise kernels between the GEMMs of the CUDA backend
 * (kernels/norm_act.cu): RMSNorm, LayerNorm, the MLP activations, bias adds
 * and the sum of a split-activation GEMM's halves. The decode-size RMSNorm
 * of a few rows is cuda_rmsnorm_rows (kernels/gemv.h).
 *
 * Activations that feed a GEMM are written in the weight dtype. With a
 * nonzero lo_off (split activations, 16-bit dtypes) each value v is written
 * as hi = round(v) at its place and lo = round(v - hi) lo_off elements
 * further, i.e. as a second block of rows below the first.
 *
 * Every launcher enqueues on STREAM and returns the cudaError_t of the
 * launch (cudaGetLastError) as an int, 0 on success; all pointers are
 * device memory the caller owns. */
#ifndef CV_BACKEND_CUDA_KERNELS_NORM_ACT_H
#define CV_BACKEND_CUDA_KERNELS_NORM_ACT_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out row r (dtype out_dtype, row stride ld_out elements) = RMSNorm of x row
 * rows[r] (or r when rows is NULL) with weight w: w * (x * rsqrt(mean(x^2) +
 * eps)), fp32 inside. */
int cuda_rmsnorm(const float *x /* (*, n) */, const int32_t *rows, int n_rows, const float *w,
                 int n, float eps, cv_dtype out_dtype, void *out, int ld_out, size_t lo_off,
                 cudaStream_t stream);

/* out row r (out_dtype, row stride ld_out; fp32 out may be x itself, in
 * place) = LayerNorm of x row rows[r] (or r when rows is NULL):
 * (x - mean) / sqrt(var + eps) * w + bias (bias NULL: 0). With w NULL the
 * row as it is (the input of a post-norm sublayer, a model without final
 * norm). lo_off as above. */
int cuda_layernorm(const float *x /* (*, n) */, const int32_t *rows, int n_rows, const float *w,
                   const float *bias, int n, float eps, cv_dtype out_dtype, void *out, int ld_out,
                   size_t lo_off, cudaStream_t stream);

/* out (n_tok, f) in out_dtype = act(gu[:, :f]) * gu[:, f:] for gu (n_tok, 2f)
 * in gu_dtype (fp32, or the 16-bit GEMM output of vLLM's numerics), fp32
 * inside. */
int cuda_gated_act(cv_activation act, cv_dtype gu_dtype, const void *gu, int n_tok, int f,
                   cv_dtype out_dtype, void *out, size_t lo_off, cudaStream_t stream);

/* out (n_rows, n) in out_dtype = act(in + bias) (bias NULL: 0): the
 * non-gated MLP's first half (OPT / GPT-2). */
int cuda_bias_act(cv_activation act, const float *in, const float *bias, int n_rows, int n,
                  cv_dtype out_dtype, void *out, size_t lo_off, cudaStream_t stream);

/* y (n_rows, n) += bias (n) on every row. */
int cuda_add_bias(float *y, const float *bias, int n_rows, int n, cudaStream_t stream);

/* y (n) = y2[:n] + y2[n:] (+ y when accumulate): the result of a GEMM over
 * split activations. */
int cuda_sum_halves(const float *y2 /* (2 n) */, size_t n, float *y, int accumulate,
                    cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif

/* SIMD kernels of the CPU backend, one table per instruction set.
 *
 * The build has no -march flags: each instruction set lives in its own file
 * whose functions carry __attribute__((target(...))), and cpu_kernels_best()
 * picks the widest one the running CPU supports (__builtin_cpu_supports).
 * Every table computes the same math with fp32 accumulation; within one
 * table the result of an output element never depends on how rows or tokens
 * are tiled, so batching and thread count do not change the numbers. The
 * matmuls of all tables compute each output as the same chain of fp32 fused
 * multiply-adds in input order, so they agree bit for bit. */
#ifndef CV_BACKEND_CPU_KERNELS_H
#define CV_BACKEND_CPU_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

#include "model/model.h"

typedef enum {
    CPU_SIMD_PORTABLE = 0,
    CPU_SIMD_AVX2,
    CPU_SIMD_AVX512,
    CPU_SIMD_COUNT
} cpu_simd_level;

typedef struct cpu_kernels {
    cpu_simd_level level;
    const char *name; /* "portable", "avx2", "avx512" */

    /* y[t * y_stride + o] = (accumulate ? y[...] : 0) + sum_i w(o, i) * x[t * x_stride + i]
     * for o in [o0, o1), t in [0, n_tok); the sum is one fp32 FMA chain over
     * i = 0, 1, ... in order. w: a (out, in) matrix in dtype wtype, packed by
     * cpu_pack. */
    void (*matmul)(cv_dtype wtype, const void *w, int in, const float *x, int x_stride, int n_tok,
                   float *y, int y_stride, int o0, int o1, bool accumulate);

    /* Online-softmax attention of n_q query heads that share one kv head
     * over n keys and values (rows of head_dim elements in kv_dtype). Head h
     * reads q + h * head_dim and updates out + h * head_dim, m[h] and l[h]:
     * s_j = scale * q . k_j, m' = max(m, s_j), out = out * e^(m - m') +
     * sum_j e^(s_j - m') v_j, l likewise; m and l carry the running max and
     * sum between calls (start at -inf and 0). scores: (n_q * n) scratch. */
    void (*attn_block)(cv_dtype kv_dtype, const float *q, int n_q, const void *k, const void *v,
                       int n, int head_dim, float scale, float *m, float *l, float *out,
                       float *scores);

    /* dst[i] = src[i] rounded to dtype (F16 or BF16) to nearest even, as
     * cpu_f32_to_f16 / cpu_f32_to_bf16 round (NaN stays NaN, its payload
     * aside), for i in [0, n): the KV cache stores. */
    void (*narrow)(cv_dtype dtype, const float *src, uint16_t *dst, int n);

    /* gate[i] = act(gate[i]) * up[i] */
    void (*gated_act)(cv_activation act, float *gate, const float *up, int n);
} cpu_kernels;

/* Weight matrices are packed for the matmuls in panels of CPU_PANEL rows:
 * panel p holds rows [p * CPU_PANEL, (p + 1) * CPU_PANEL) column by column,
 * element (row o, column i) at ((o / CPU_PANEL) * in + i) * CPU_PANEL +
 * o % CPU_PANEL, and the last panel is padded with zero rows. A kernel then
 * reads, for each input element, CPU_PANEL consecutive weights: one
 * sequential stream per panel, multiplied by one broadcast activation per
 * token and accumulated without any horizontal sums. */
enum { CPU_PANEL = 64 };

/* Elements of the packed form of an (out, in) matrix. */
static inline int64_t cpu_packed_elems(int64_t out, int64_t in)
{
    return (out + CPU_PANEL - 1) / CPU_PANEL * CPU_PANEL * in;
}

/* Packs the row-major (out, in) matrix src (dtype from) into dst as dtype
 * to (cpu_packed_elems(out, in) elements). */
void cpu_pack(void *dst, cv_dtype to, const void *src, cv_dtype from, int64_t out, int64_t in);

/* NULL when the CPU (or the compiler) lacks that instruction set. */
const cpu_kernels *cpu_kernels_get(cpu_simd_level level);
const cpu_kernels *cpu_kernels_best(void);

/* Converts n elements of src (dtype) to fp32: exact for F16 and BF16. */
void cpu_to_f32(cv_dtype dtype, const void *src, float *dst, int64_t n);
float cpu_f16_to_f32(uint16_t h);

/* Round-to-nearest-even narrowing (KV cache stores). */
uint16_t cpu_f32_to_f16(float f);
uint16_t cpu_f32_to_bf16(float f);

extern const cpu_kernels cpu_kernels_portable;
extern const cpu_kernels cpu_kernels_avx2;
extern const cpu_kernels cpu_kernels_avx512;

#endif

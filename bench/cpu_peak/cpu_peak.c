/* Peak fp32 FMA throughput of this CPU with AVX-512 (or AVX2) on 1..N
 * OpenMP threads: the compute ceiling that batched CPU decode and prefill
 * are measured against (bench/results/offline_throughput.md). Each thread
 * runs independent FMA chains on registers only (no memory traffic), enough
 * of them to cover the FMA latency. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/clock.h"

enum { CHAINS = 12, ITERS = 20 * 1000 * 1000 };

__attribute__((target("avx512f"))) static float fma_avx512(void)
{
    __m512 acc[CHAINS];
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (int c = 0; c < CHAINS; c++)
        acc[c] = _mm512_set1_ps((float)c);
    for (int i = 0; i < ITERS; i++)
#pragma GCC unroll 12
        for (int c = 0; c < CHAINS; c++)
            acc[c] = _mm512_fmadd_ps(acc[c], a, b);
    float sum = 0;
    for (int c = 0; c < CHAINS; c++)
        sum += _mm512_reduce_add_ps(acc[c]);
    return sum;
}

__attribute__((target("avx2,fma"))) static float fma_avx2(void)
{
    __m256 acc[CHAINS];
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (int c = 0; c < CHAINS; c++)
        acc[c] = _mm256_set1_ps((float)c);
    for (int i = 0; i < ITERS; i++)
#pragma GCC unroll 12
        for (int c = 0; c < CHAINS; c++)
            acc[c] = _mm256_fmadd_ps(acc[c], a, b);
    float out[8], sum = 0;
    for (int c = 0; c < CHAINS; c++) {
        _mm256_storeu_ps(out, acc[c]);
        for (int k = 0; k < 8; k++)
            sum += out[k];
    }
    return sum;
}

/* GFLOP/s of n_threads threads each running one kernel call. */
static double measure(int n_threads, int avx512)
{
    volatile float sink = 0;
    const int lanes = avx512 ? 16 : 8;
    uint64_t t0 = cv_now_ns();
#pragma omp parallel num_threads(n_threads)
    {
        float s = avx512 ? fma_avx512() : fma_avx2();
#pragma omp atomic
        sink += s;
    }
    double secs = cv_ns_to_s(cv_now_ns() - t0);
    (void)sink;
    return 2.0 * lanes * CHAINS * (double)ITERS * n_threads / secs * 1e-9;
}

int main(void)
{
    __builtin_cpu_init();
    const int avx512 = __builtin_cpu_supports("avx512f");
    const int max_threads = omp_get_max_threads();
    printf("| threads | ISA | fp32 GFLOP/s (best of 3) |\n|---|---|---|\n");
    for (int n = 1; n <= max_threads; n *= 2) {
        double best = 0;
        for (int rep = 0; rep < 3; rep++) {
            double g = measure(n, avx512);
            if (g > best) best = g;
        }
        printf("| %d | %s | %.1f |\n", n, avx512 ? "AVX-512" : "AVX2", best);
    }
    return 0;
}

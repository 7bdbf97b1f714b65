/* The timing mode of test_gpu_gemv (--bench), run on the GPU machine:
 * - GB/s of cuda_gemv per L8B-shaped bf16 matrix (qkv, o, gate_up with the
 *   gated epilogue, down, lm_head) at 1, 2, 4 and 8 tokens, one launch and
 *   back to back (the way a decode step runs them), against a 1 GiB
 *   device-to-device copy and cublasGemmEx (the backend's call) measured in
 *   the same run; weights rotate through copies that exceed L2;
 * - cuda_rmsnorm_rows against cuda_rmsnorm at 1 and 8 rows;
 * - a 32-layer L8B decode chain captured as a CUDA graph (see bench_chain):
 *   the GEMV path with and without PDL and the cuBLAS path, against the
 *   weight-read floor (weight bytes / copy bandwidth).
 * Medians of cudaEvent pairs; nothing here decides pass or fail. */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <algorithm>
#include <vector>

#include "backend/cuda/kernels/gemv.h"
#include "backend/cuda/kernels/norm_act.h"
#include "backend/cuda/kernels/rope_kv.h"
#include "gemv_check.h"

#define CKB(call)                                                                                  \
    do {                                                                                           \
        cublasStatus_t s_ = (call);                                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                         \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                          \
                    cublasGetStatusString(s_));                                                    \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

namespace
{

/* Fills n 16-bit values with a hash of their index in [-0.05, 0.05]. */
__global__ void fill16_kernel(uint16_t *p, size_t n, uint32_t seed, int bf16)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        const float v = ((float)(h & 0xffffu) / 65536.0f - 0.5f) * 0.1f;
        if (bf16) {
            const __nv_bfloat16_raw b = __float2bfloat16_rn(v);
            p[i] = b.x;
        } else {
            const __half_raw b = __float2half_rn(v);
            p[i] = b.x;
        }
    }
}

void fill16(void *p, size_t n, uint32_t seed)
{
    fill16_kernel<<<1024, 256>>>((uint16_t *)p, n, seed, 1);
    CK(cudaGetLastError());
}

double median(std::vector<float> v)
{
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

/* Median ms of one launch(i) over reps (after 3 warm-ups), each timed by
 * its own pair of events. */
template <typename F> double time_each(cudaStream_t s, int reps, F launch)
{
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::vector<float> ms;
    for (int r = -3; r < reps; r++) {
        CK(cudaEventRecord(e0, s));
        launch(r + 3);
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        float t = 0.0f;
        CK(cudaEventElapsedTime(&t, e0, e1));
        if (r >= 0) ms.push_back(t);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return median(ms);
}

/* ms per launch of reps launches back to back (the way a decode step runs
 * them), median of 5 such runs. */
template <typename F> double time_stream(cudaStream_t s, int reps, F launch)
{
    return time_each(s, 5,
                     [&](int) {
                         for (int r = 0; r < reps; r++)
                             launch(r);
                     }) /
           reps;
}

double copy_gbs()
{
    const size_t n = (size_t)1 << 30;
    void *a = nullptr, *b = nullptr;
    CK(cudaMalloc(&a, n));
    CK(cudaMalloc(&b, n));
    const double ms =
        time_each(0, 10, [&](int) { CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, 0)); });
    cudaFree(a);
    cudaFree(b);
    return 2.0 * n / (ms * 1e-3) / 1e9;
}

struct blas_ctx {
    cublasHandle_t h;
    void *ws;
};

blas_ctx blas_make(cudaStream_t s)
{
    blas_ctx b;
    CKB(cublasCreate(&b.h));
    CKB(cublasSetStream(b.h, s));
    CK(cudaMalloc(&b.ws, (size_t)32 << 20));
    CKB(cublasSetWorkspace(b.h, b.ws, (size_t)32 << 20));
    return b;
}

/* The backend's cuBLAS call (cuda_forward.c gemm(), default numerics). */
void blas_gemm(const blas_ctx &b, const void *w, int out, int in, const void *x, int n_tok,
               float *y, float beta)
{
    const float alpha = 1.0f;
    CKB(cublasGemmEx(b.h, CUBLAS_OP_T, CUBLAS_OP_N, out, n_tok, in, &alpha, w, CUDA_R_16BF, in, x,
                     CUDA_R_16BF, in, &beta, y, CUDA_R_32F, out, CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT));
}

void bench_shapes(double copy, cudaStream_t s, const blas_ctx &blas)
{
    struct shape {
        const char *name;
        int out, in;
        bool gated;
    } shapes[] = {
        {"qkv 6144x4096", 6144, 4096, false},         {"o 4096x4096", 4096, 4096, false},
        {"gate_up 28672x4096", 28672, 4096, true},    {"down 4096x14336", 4096, 14336, false},
        {"lm_head 128256x4096", 128256, 4096, false},
    };
    printf("\n%-22s %4s %22s %22s %22s\n", "shape (bf16)", "tok", "GEMV one launch",
           "GEMV back-to-back", "cuBLAS back-to-back");
    for (const shape &sh : shapes) {
        const size_t bytes = (size_t)sh.out * sh.in * 2;
        /* Copies rotated so that L2 (50-60 MB) never serves a repeat. */
        const int copies = (int)std::max<size_t>(1, (size_t)(400e6 / bytes) + 1);
        std::vector<void *> w(copies);
        for (int i = 0; i < copies; i++) {
            CK(cudaMalloc(&w[i], bytes));
            fill16(w[i], bytes / 2, 17u + i);
        }
        void *x = nullptr, *act = nullptr;
        float *y = nullptr;
        CK(cudaMalloc(&x, (size_t)8 * sh.in * 2));
        fill16(x, (size_t)8 * sh.in, 99u);
        CK(cudaMalloc((void **)&y, (size_t)8 * sh.out * 4));
        CK(cudaMalloc(&act, (size_t)8 * sh.out * 2));
        for (int n_tok : {1, 2, 4, 8}) {
            const auto gemv = [&](int i) {
                cuda_gemv_args a = {};
                a.dtype = CV_DTYPE_BF16;
                a.w = w[i % copies];
                a.out = sh.out;
                a.in = sh.in;
                a.x = x;
                a.n_tok = n_tok;
                a.epilogue = sh.gated ? CUDA_GEMV_GATED : CUDA_GEMV_STORE;
                a.y = y;
                a.act = CV_ACT_SILU;
                a.act_out = act;
                a.pdl = 1;
                CK((cudaError_t)cuda_gemv(&a, s));
            };
            const auto cublas = [&](int i) {
                blas_gemm(blas, w[i % copies], sh.out, sh.in, x, n_tok, y, 0.0f);
            };
            const double one = time_each(s, 30, gemv);
            const double b2b = time_stream(s, 20, gemv), ref = time_stream(s, 20, cublas);
            const auto gbs = [&](double ms) { return bytes / (ms * 1e-3) / 1e9; };
            printf("%-22s %4d %7.1f us %4.0f GB/s %7.1f us %4.0f%% copy %7.1f us %4.0f%% copy\n",
                   sh.name, n_tok, one * 1e3, gbs(one), b2b * 1e3, 100.0 * gbs(b2b) / copy,
                   ref * 1e3, 100.0 * gbs(ref) / copy);
        }
        for (void *p : w)
            cudaFree(p);
        cudaFree(x);
        cudaFree(y);
        cudaFree(act);
    }
}

/* 32 L8B-shaped layers' norms, products, RoPE / KV stores at n_tok tokens
 * (attention left out: not this file's kernels; o_proj reads a fixed input)
 * plus the final norm and lm_head, captured as one CUDA graph: the GEMV
 * path (PDL, fused epilogues) against the path the backend took before
 * (cuda_rmsnorm, cuBLAS, cuda_qkv_post, cuda_gated_act). */
void bench_chain(double copy, cudaStream_t s, const blas_ctx &blas, int n_tok)
{
    const int L = 32, h = 4096, f = 14336, qkv = 6144, vocab = 128256;
    const size_t per_layer = ((size_t)qkv * h + (size_t)h * h + (size_t)2 * f * h + (size_t)h * f);
    const size_t total = per_layer * L + (size_t)vocab * h;
    uint16_t *w = nullptr;
    if (cudaMalloc((void **)&w, total * 2) != cudaSuccess) {
        (void)cudaGetLastError();
        printf("decode chain: %.1f GB of weights do not fit; skipped\n", total * 2e-9);
        return;
    }
    fill16(w, total, 5u);
    float *x = nullptr, *nw = nullptr, *qkv_out = nullptr, *gu = nullptr, *logits = nullptr;
    void *xn = nullptr, *attn = nullptr, *mlp = nullptr;
    CK(cudaMalloc((void **)&x, (size_t)n_tok * h * 4));
    CK(cudaMalloc((void **)&nw, (size_t)h * 4));
    CK(cudaMalloc((void **)&qkv_out, (size_t)n_tok * qkv * 4));
    CK(cudaMalloc((void **)&gu, (size_t)n_tok * 2 * f * 4));
    CK(cudaMalloc((void **)&logits, (size_t)n_tok * vocab * 4));
    CK(cudaMalloc(&xn, (size_t)n_tok * h * 2));
    CK(cudaMalloc(&attn, (size_t)n_tok * h * 2));
    CK(cudaMalloc(&mlp, (size_t)n_tok * f * 2));
    std::vector<float> ones((size_t)n_tok * h, 0.5f);
    CK(cudaMemcpy(x, ones.data(), ones.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(nw, ones.data(), (size_t)h * 4, cudaMemcpyHostToDevice));
    fill16(attn, (size_t)n_tok * h, 7u);
    /* RoPE / KV store: token t at position 100 + t in slot t of a 16-token
     * block holding every layer (L8B: 32 q heads, 8 kv heads of 128). */
    const int nq = 32, nkv = 8, hd = 128, bs = 16;
    const size_t block_elems = (size_t)L * 2 * nkv * bs * hd;
    void *kv = nullptr;
    float *inv_freq = nullptr;
    int32_t *pos = nullptr;
    int64_t *slots = nullptr;
    CK(cudaMalloc(&kv, block_elems * 2));
    CK(cudaMalloc((void **)&inv_freq, hd / 2 * 4));
    CK(cudaMalloc((void **)&pos, (size_t)n_tok * 4));
    CK(cudaMalloc((void **)&slots, (size_t)n_tok * 8));
    {
        std::vector<float> fr(hd / 2);
        for (int e = 0; e < hd / 2; e++)
            fr[e] = 1.0f / powf(500000.0f, (float)(2 * e) / hd);
        std::vector<int32_t> ps(n_tok);
        std::vector<int64_t> sl(n_tok);
        for (int t = 0; t < n_tok; t++) {
            ps[t] = 100 + t;
            sl[t] = t;
        }
        CK(cudaMemcpy(inv_freq, fr.data(), fr.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(pos, ps.data(), ps.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(slots, sl.data(), sl.size() * 8, cudaMemcpyHostToDevice));
    }
    const auto rope_of = [&](int l) {
        cuda_gemv_rope r = {};
        r.n_heads = nq;
        r.n_kv_heads = nkv;
        r.head_dim = hd;
        r.block_size = bs;
        r.inv_freq = inv_freq;
        r.positions = pos;
        r.slot_mapping = slots;
        r.kv = kv;
        r.kv_dtype = CV_DTYPE_BF16;
        r.block_elems = block_elems;
        r.layer_off = (size_t)l * 2 * nkv * bs * hd;
        return r;
    };
    int layer_now = 0, pdl = 1;
    const auto product = [&](const uint16_t *wm, int out, int in, const void *xin, float *y,
                             cuda_gemv_epilogue epi, bool gemv) {
        if (!gemv) {
            blas_gemm(blas, wm, out, in, xin, n_tok, y, epi == CUDA_GEMV_ACCUMULATE ? 1.0f : 0.0f);
            return;
        }
        cuda_gemv_args a = {};
        a.dtype = CV_DTYPE_BF16;
        a.w = wm;
        a.out = out;
        a.in = in;
        a.x = xin;
        a.n_tok = n_tok;
        a.epilogue = epi;
        a.y = y;
        a.act = CV_ACT_SILU;
        a.act_out = mlp;
        a.rope = rope_of(layer_now);
        a.pdl = pdl;
        CK((cudaError_t)cuda_gemv(&a, s));
    };
    const auto norm = [&](bool gemv) {
        CK((cudaError_t)(gemv ? cuda_rmsnorm_rows(x, nullptr, n_tok, nw, h, 1e-5f, CV_DTYPE_BF16,
                                                  xn, h, 0, pdl, s)
                              : cuda_rmsnorm(x, nullptr, n_tok, nw, h, 1e-5f, CV_DTYPE_BF16, xn, h,
                                             0, s)));
    };
    const auto step = [&](bool gemv) {
        const uint16_t *p = w;
        for (int l = 0; l < L; l++) {
            layer_now = l;
            norm(gemv);
            product(p, qkv, h, xn, qkv_out, CUDA_GEMV_ROPE_KV, gemv);
            if (!gemv) {
                const cuda_gemv_rope r = rope_of(l);
                cuda_qkv_args qa = {};
                qa.n_tokens = n_tok;
                qa.n_heads = nq;
                qa.n_kv_heads = nkv;
                qa.head_dim = hd;
                qa.block_size = bs;
                qa.qkv = qkv_out;
                qa.qkv_dtype = CV_DTYPE_F32;
                qa.inv_freq = inv_freq;
                qa.positions = pos;
                qa.slot_mapping = slots;
                qa.kv = kv;
                qa.kv_dtype = CV_DTYPE_BF16;
                qa.block_elems = block_elems;
                qa.layer_off = r.layer_off;
                CK((cudaError_t)cuda_qkv_post(&qa, s));
            }
            p += (size_t)qkv * h;
            product(p, h, h, attn, x, CUDA_GEMV_ACCUMULATE, gemv);
            p += (size_t)h * h;
            norm(gemv);
            if (gemv) {
                product(p, 2 * f, h, xn, nullptr, CUDA_GEMV_GATED, true);
            } else {
                product(p, 2 * f, h, xn, gu, CUDA_GEMV_STORE, false);
                CK((cudaError_t)cuda_gated_act(CV_ACT_SILU, CV_DTYPE_F32, gu, n_tok, f,
                                               CV_DTYPE_BF16, mlp, 0, s));
            }
            p += (size_t)2 * f * h;
            product(p, h, f, mlp, x, CUDA_GEMV_ACCUMULATE, gemv);
            p += (size_t)h * f;
        }
        norm(gemv);
        product(p, vocab, h, xn, logits, CUDA_GEMV_STORE, gemv);
    };
    /* 0: cuBLAS path; 1: GEMV path with PDL; 2: GEMV path without. */
    double ms[3];
    for (int mode = 0; mode < 3; mode++) {
        cudaGraph_t g = nullptr;
        cudaGraphExec_t ge = nullptr;
        pdl = mode == 1;
        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
        step(mode != 0);
        CK(cudaStreamEndCapture(s, &g));
        CK(cudaGraphInstantiate(&ge, g, 0));
        ms[mode] = time_each(s, 20, [&](int) { CK(cudaGraphLaunch(ge, s)); });
        cudaGraphExecDestroy(ge);
        cudaGraphDestroy(g);
    }
    const double floor_ms = total * 2.0 / (copy * 1e9) * 1e3;
    printf("decode chain n_tok %d (%.2f GB of weights, graph): floor %.3f ms; GEMV path %.3f ms "
           "(%.2fx floor; %.3f ms without PDL); cuBLAS path %.3f ms (%.2fx floor)\n",
           n_tok, total * 2e-9, floor_ms, ms[1], ms[1] / floor_ms, ms[2], ms[0], ms[0] / floor_ms);
    cudaFree(w);
    void *bufs[] = {x, nw, qkv_out, gu, logits, xn, attn, mlp, kv, inv_freq, pos, slots};
    for (void *p : bufs)
        cudaFree(p);
}

void bench_norm(cudaStream_t s)
{
    float *x = nullptr, *w = nullptr;
    void *out = nullptr;
    CK(cudaMalloc((void **)&x, 8 * 4096 * 4));
    CK(cudaMalloc((void **)&w, 4096 * 4));
    CK(cudaMalloc(&out, 8 * 4096 * 2));
    CK(cudaMemset(x, 0, 8 * 4096 * 4));
    CK(cudaMemset(w, 0, 4096 * 4));
    for (int rows : {1, 8}) {
        const double old_ms = time_stream(s, 50, [&](int) {
            CK((cudaError_t)cuda_rmsnorm(x, nullptr, rows, w, 4096, 1e-5f, CV_DTYPE_BF16, out, 4096,
                                         0, s));
        });
        const double new_ms = time_stream(s, 50, [&](int) {
            CK((cudaError_t)cuda_rmsnorm_rows(x, nullptr, rows, w, 4096, 1e-5f, CV_DTYPE_BF16, out,
                                              4096, 0, 1, s));
        });
        printf("rmsnorm 4096, %d row(s), back-to-back: cuda_rmsnorm %.2f us, cuda_rmsnorm_rows "
               "(PDL) %.2f us\n",
               rows, old_ms * 1e3, new_ms * 1e3);
    }
    cudaFree(x);
    cudaFree(w);
    cudaFree(out);
}

void bench()
{
    const double copy = copy_gbs();
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("\n== timing on %s (%d SMs); copy bandwidth %.0f GB/s (read + write)\n", prop.name,
           prop.multiProcessorCount, copy);
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    const blas_ctx blas = blas_make(s);
    bench_shapes(copy, s, blas);
    bench_norm(s);
    for (int n_tok : {1, 8})
        bench_chain(copy, s, blas, n_tok);
    cublasDestroy(blas.h);
    cudaFree(blas.ws);
    cudaStreamDestroy(s);
}

} /* namespace */

void gemv_bench()
{
    bench();
}

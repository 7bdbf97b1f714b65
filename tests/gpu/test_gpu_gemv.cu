/* Correctness and timing of the decode-size kernels (src/backend/cuda/
 * kernels/gemv.h): cuda_gemv (y = x W^T for 1..8 tokens, 16-bit W, its
 * store / accumulate / gated / RoPE + KV-store epilogues, split
 * activations) and cuda_rmsnorm_rows; and the prefill-size elementwise
 * kernels beside them (kernels/norm_act.h): cuda_rmsnorm and cuda_gated_act.
 *
 *   test_gpu_gemv            correctness; exit 0 pass, 1 fail, 77 no GPU
 *   test_gpu_gemv --bench    also timing: GB/s per L8B shape against a
 *                            device-to-device copy and cuBLAS measured in
 *                            the same run, and a 32-layer batch-1 decode
 *                            chain (norms + GEMVs) against the weight-read
 *                            floor, GEMV vs cuBLAS path
 *   test_gpu_gemv SUBSTRING  only the cases whose names contain it
 *
 * Correctness: random W and x, exactly representable in the 16-bit type,
 * against an fp64 host reference. The products w x are exact in fp32, so
 * the only error is the fp32 accumulation: each output is held to
 * |y - ref| <= 1e-4 * sum_k |w_k x_k|. A warp's accumulator takes
 * in / (32 * warps) steps of two mmas (112 at in = 14336), each add off by
 * a few fp32 ulps at most (the tensor core truncates while aligning), plus
 * the 8-way sum of the warps: under 1e-5 of that sum; a wrong k, row or
 * token mapping is off by O(1) of it. Gated outputs are rounded to the
 * 16-bit type: half an ulp (at most 2^-8 of the value for bf16, 2^-11 for
 * f16) plus the propagated accumulation error; with split activations
 * hi + lo is held to 2^-16 instead. Outputs start as NaN and a guard
 * band past them must stay untouched (every element written, nothing
 * else). Shapes: in not a
 * multiple of 32 (the last step partial), out not a multiple of 16 (the
 * last tile partial), every n_tok 1..8, the L8B shapes, bf16 and f16, with
 * and without programmatic dependent launch (PDL). A chain of
 * norm -> gated GEMV -> accumulate GEMV launched with PDL, eagerly and as a
 * CUDA graph, must match the plain stream-ordered launches byte for byte.
 * Refusals: unsupported shapes and arguments return cudaErrorInvalidValue.
 * The timing mode lives in test_gpu_gemv_bench.cu.
 *
 * Build check record (nvcc 13.0, -arch sm_90, -Xptxas -v), registers per
 * thread of gemv_kernel<T, mode, split> (same for bf16 and f16): plain 115,
 * gated 117, RoPE 117, each 128 with split activations; 4 KB shared memory;
 * no spills; the RoPE ones have a 32-byte stack frame (cosf / sinf's slow
 * path for large angles). rmsnorm_rows_kernel: 22 / 31 / 50 registers
 * (1 / 2 / 4 float4 per thread), no spills. The PTX holds
 * mma.sync.m16n8k16, ld.global.nc.L1::no_allocate.v4 (W only) and
 * griddepcontrol. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "backend/cuda/kernels/gemv.h"
#include "backend/cuda/kernels/norm_act.h"
#include "gemv_check.h"

namespace
{

uint64_t rng_state = 0x243F6A8885A308D3ull;

uint32_t rng_u32()
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

/* Uniform in [-r, r]. */
float rng_val(float r)
{
    return r * ((float)rng_u32() / 4294967296.0f * 2.0f - 1.0f);
}

/* The 16-bit value nearest v, as bits, and back. */
uint16_t to16(cv_dtype t, float v)
{
    if (t == CV_DTYPE_BF16) {
        const __nv_bfloat16_raw r = __float2bfloat16_rn(v);
        return r.x;
    }
    const __half_raw r = __float2half_rn(v);
    return r.x;
}

double from16(cv_dtype t, uint16_t b)
{
    if (t == CV_DTYPE_BF16) {
        __nv_bfloat16_raw r;
        r.x = b;
        return (double)__bfloat162float(__nv_bfloat16(r));
    }
    __half_raw r;
    r.x = b;
    return (double)__half2float(__half(r));
}

const char *dtype_name(cv_dtype t)
{
    return t == CV_DTYPE_BF16 ? "bf16" : t == CV_DTYPE_F16 ? "f16" : "f32";
}

double act_ref(cv_activation act, double g)
{
    if (act == CV_ACT_SILU) return g / (1.0 + exp(-g));
    return 0.5 * g * (1.0 + tanh(0.7978845608028654 * (g + 0.044715 * g * g * g)));
}

template <typename T> T *dev_upload(const std::vector<T> &v)
{
    T *d = nullptr;
    CK(cudaMalloc((void **)&d, v.size() * sizeof(T) + 256));
    CK(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

template <typename T> std::vector<T> dev_download(const T *d, size_t n)
{
    std::vector<T> v(n);
    CK(cudaMemcpy(v.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
}

struct gemv_case {
    const char *name;
    cv_dtype dtype;
    int out, in, n_tok;
    cuda_gemv_epilogue epi;
    bool split;
    cv_activation act;
    int pdl;
};

constexpr int GUARD = 64; /* elements past every output that must stay as they were */
const float GUARD_F = 1234.5f;
const uint16_t GUARD_16 = 0x3c00;

/* Random W (out, in) and x (n_tok, in; with split hi rows then lo rows)
 * in dtype, and the fp64 products ref[t][r] = x_t . w_r (x_t = hi + lo)
 * with mag[t][r] = sum_k |w_rk x_tk|. */
struct product {
    std::vector<uint16_t> w, x;
    std::vector<double> ref, mag;
};

product make_product(cv_dtype t, int out, int in, int n_tok, bool split)
{
    product p;
    const size_t wn = (size_t)out * in, xn = (size_t)n_tok * in;
    p.w.resize(wn);
    p.x.resize(xn * (split ? 2 : 1));
    std::vector<double> xd(xn), val(65536); /* val: every 16-bit pattern's value */
    for (int b = 0; b < 65536; b++)
        val[b] = from16(t, (uint16_t)b);
    for (size_t i = 0; i < wn; i++)
        p.w[i] = to16(t, rng_val(1.0f));
    for (size_t i = 0; i < xn; i++) {
        const float v = rng_val(2.0f);
        p.x[i] = to16(t, v);
        xd[i] = from16(t, p.x[i]);
        if (split) {
            p.x[xn + i] = to16(t, v - (float)xd[i]);
            xd[i] += from16(t, p.x[xn + i]);
        }
    }
    p.ref.resize((size_t)n_tok * out);
    p.mag.resize((size_t)n_tok * out);
    for (int r = 0; r < out; r++) {
        const uint16_t *wr = &p.w[(size_t)r * in];
        for (int tk = 0; tk < n_tok; tk++) {
            const double *xr = &xd[(size_t)tk * in];
            double s = 0.0, m = 0.0;
            for (int k = 0; k < in; k++) {
                s += val[wr[k]] * xr[k];
                m += fabs(val[wr[k]] * xr[k]);
            }
            p.ref[(size_t)tk * out + r] = s;
            p.mag[(size_t)tk * out + r] = m;
        }
    }
    return p;
}

/* One cuda_gemv against the fp64 reference; returns the failure count (0 or 1). */
int check_gemv(const gemv_case &c)
{
    const cv_dtype t = c.dtype;
    const size_t xn = (size_t)c.n_tok * c.in;
    const product pr = make_product(t, c.out, c.in, c.n_tok, c.split);
    const std::vector<double> &ref = pr.ref, &mag = pr.mag;
    uint16_t *dw = dev_upload(pr.w), *dx = dev_upload(pr.x);
    cuda_gemv_args a = {};
    a.dtype = t;
    a.w = dw;
    a.out = c.out;
    a.in = c.in;
    a.x = dx;
    a.x_lo_off = c.split ? xn : 0;
    a.n_tok = c.n_tok;
    a.epilogue = c.epi;
    a.act = c.act;
    a.pdl = c.pdl;
    int bad = 0;
    double worst = 0.0;
    const double tol = 1e-4;
    if (c.epi != CUDA_GEMV_GATED) {
        const size_t yn = (size_t)c.n_tok * c.out;
        std::vector<float> y0(yn + GUARD, GUARD_F);
        for (size_t i = 0; i < yn; i++)
            y0[i] = c.epi == CUDA_GEMV_ACCUMULATE ? rng_val(4.0f) : NAN;
        float *dy = dev_upload(y0);
        a.y = dy;
        const int rc = cuda_gemv(&a, 0);
        CK(cudaDeviceSynchronize());
        const std::vector<float> y = dev_download(dy, yn + GUARD);
        cudaFree(dy);
        if (rc) {
            printf("FAIL %s: cuda_gemv returned %s\n", c.name, cudaGetErrorString((cudaError_t)rc));
            bad = 1;
        }
        for (size_t i = 0; i < yn && !bad; i++) {
            const double want = ref[i] + (c.epi == CUDA_GEMV_ACCUMULATE ? (double)y0[i] : 0.0);
            const double err = fabs((double)y[i] - want), lim = tol * (mag[i] + fabs(want) * 1e-3);
            worst = std::max(worst, err / (mag[i] > 0 ? mag[i] : 1.0));
            if (!(err <= lim)) {
                printf("FAIL %s: y[tok %zu][row %zu] = %.9g, want %.9g (|err| %.3g > %.3g)\n",
                       c.name, i / c.out, i % c.out, y[i], want, err, lim);
                bad = 1;
            }
        }
        for (int i = 0; i < GUARD && !bad; i++)
            if (y[yn + i] != GUARD_F) {
                printf("FAIL %s: wrote past the output (guard %d = %g)\n", c.name, i, y[yn + i]);
                bad = 1;
            }
    } else {
        const int f = c.out / 2;
        const size_t on = (size_t)c.n_tok * f, total = on * (c.split ? 2 : 1);
        std::vector<uint16_t> o0(total + GUARD, GUARD_16);
        std::fill(o0.begin(), o0.begin() + total, (uint16_t)0xffff); /* NaN */
        uint16_t *dout = dev_upload(o0);
        a.act_out = dout;
        a.act_lo_off = c.split ? on : 0;
        const int rc = cuda_gemv(&a, 0);
        CK(cudaDeviceSynchronize());
        const std::vector<uint16_t> o = dev_download(dout, total + GUARD);
        cudaFree(dout);
        if (rc) {
            printf("FAIL %s: cuda_gemv returned %s\n", c.name, cudaGetErrorString((cudaError_t)rc));
            bad = 1;
        }
        const double half_ulp = c.split              ? ldexp(1.0, -16)
                                : t == CV_DTYPE_BF16 ? ldexp(1.0, -8)
                                                     : ldexp(1.0, -11);
        for (size_t i = 0; i < on && !bad; i++) {
            const size_t tk = i / f, j = i % f;
            const size_t gi = tk * c.out + j, ui = tk * c.out + f + j;
            const double g = ref[gi], u = ref[ui];
            const double want = act_ref(c.act, g) * u;
            double got = from16(t, o[i]);
            if (c.split) got += from16(t, o[on + i]);
            /* act' <= 1.13 for SiLU and tanh-GELU, |act(g)| <= |g| + 0.2. */
            /* f16 values below 2^-14 are subnormal: half their ulp, 2^-25, absolute. */
            const double lim = half_ulp * fabs(want) * 1.01 + 1.2 * fabs(u) * tol * mag[gi] +
                               (fabs(g) + 0.2) * tol * mag[ui] +
                               (t == CV_DTYPE_F16 ? ldexp(1.0, -25) : 1e-30);
            const double err = fabs(got - want);
            worst = std::max(worst, err / (fabs(want) + 1e-30));
            if (!(err <= lim)) {
                printf("FAIL %s: out[tok %zu][%zu] = %.9g, want %.9g (|err| %.3g > %.3g)\n", c.name,
                       tk, j, got, want, err, lim);
                bad = 1;
            }
        }
        for (int i = 0; i < GUARD && !bad; i++)
            if (o[total + i] != GUARD_16) {
                printf("FAIL %s: wrote past the output (guard %d)\n", c.name, i);
                bad = 1;
            }
    }
    cudaFree(dw);
    cudaFree(dx);
    if (!bad) printf("ok   %-44s worst %.2e\n", c.name, worst);
    return bad;
}

struct rope_case {
    const char *name;
    cv_dtype dtype, kv_dtype;
    int n_heads, n_kv_heads, head_dim, block_size, in, n_tok;
    bool bias, split;
    int pdl;
};

/* CUDA_GEMV_ROPE_KV against fp64: per token, biases added, q and k rotated
 * by RoPE (the angle inv_freq[e] * pos rounded to fp32 as the kernel and HF
 * compute it, its cos / sin in fp64), q into y's q columns, k and v into
 * layer 1 of a 2-layer pool at distinct random slots. Bounds: the product's
 * accumulation bound on both rotated inputs, 2e-6 of them for fp32's
 * cosf / sinf and rotation, half an ulp of the pool dtype. The pool and y
 * start as NaN: everything else must stay NaN. */
int check_rope(const rope_case &c)
{
    const int hd = c.head_dim, half = hd / 2, nq = c.n_heads, nkv = c.n_kv_heads;
    const int items = nq + 2 * nkv, out = items * hd, n_layers = 2, layer = 1, n_blocks = 6;
    const product pr = make_product(c.dtype, out, c.in, c.n_tok, c.split);
    std::vector<float> bias(out), inv_freq(half);
    for (float &v : bias)
        v = rng_val(0.5f);
    for (int e = 0; e < half; e++)
        inv_freq[e] = 1.0f / powf(10000.0f, (float)(2 * e) / (float)hd);
    std::vector<int32_t> pos(c.n_tok);
    std::vector<int64_t> slots(c.n_tok);
    for (int tk = 0; tk < c.n_tok; tk++) {
        pos[tk] = (int32_t)(rng_u32() % 4096);
        bool fresh;
        do { /* distinct slots */
            slots[tk] = rng_u32() % (uint32_t)(n_blocks * c.block_size);
            fresh = true;
            for (int j = 0; j < tk; j++)
                fresh = fresh && slots[j] != slots[tk];
        } while (!fresh);
    }
    const size_t kv_esz = c.kv_dtype == CV_DTYPE_F32 ? 4 : 2;
    const size_t block_elems = (size_t)n_layers * 2 * nkv * c.block_size * hd;
    const size_t layer_off = (size_t)layer * 2 * nkv * c.block_size * hd;
    const size_t pool_elems = block_elems * n_blocks;
    std::vector<uint8_t> pool0(pool_elems * kv_esz, 0xff);
    std::vector<float> y0((size_t)c.n_tok * out, NAN);
    uint16_t *dw = dev_upload(pr.w), *dx = dev_upload(pr.x);
    float *dbias = dev_upload(bias), *dfreq = dev_upload(inv_freq), *dy = dev_upload(y0);
    int32_t *dpos = dev_upload(pos);
    int64_t *dslots = dev_upload(slots);
    uint8_t *dpool = dev_upload(pool0);
    cuda_gemv_args a = {};
    a.dtype = c.dtype;
    a.w = dw;
    a.out = out;
    a.in = c.in;
    a.x = dx;
    a.x_lo_off = c.split ? (size_t)c.n_tok * c.in : 0;
    a.n_tok = c.n_tok;
    a.epilogue = CUDA_GEMV_ROPE_KV;
    a.y = dy;
    a.pdl = c.pdl;
    cuda_gemv_rope &r = a.rope;
    r.n_heads = nq;
    r.n_kv_heads = nkv;
    r.head_dim = hd;
    r.block_size = c.block_size;
    r.bq = c.bias ? dbias : nullptr;
    r.bk = c.bias ? dbias + nq * hd : nullptr;
    r.bv = c.bias ? dbias + (nq + nkv) * hd : nullptr;
    r.inv_freq = dfreq;
    r.positions = dpos;
    r.slot_mapping = dslots;
    r.kv = dpool;
    r.kv_dtype = c.kv_dtype;
    r.block_elems = block_elems;
    r.layer_off = layer_off;
    const int rc = cuda_gemv(&a, 0);
    CK(cudaDeviceSynchronize());
    const std::vector<float> y = dev_download(dy, y0.size());
    const std::vector<uint8_t> pool = dev_download(dpool, pool0.size());
    void *bufs[] = {dw, dx, dbias, dfreq, dy, dpos, dslots, dpool};
    for (void *b : bufs)
        cudaFree(b);
    if (rc) {
        printf("FAIL %s: cuda_gemv returned %s\n", c.name, cudaGetErrorString((cudaError_t)rc));
        return 1;
    }
    const auto pool_at = [&](size_t i) {
        if (c.kv_dtype == CV_DTYPE_F32) {
            float v;
            memcpy(&v, &pool[i * 4], 4);
            return (double)v;
        }
        uint16_t b;
        memcpy(&b, &pool[i * 2], 2);
        return from16(c.kv_dtype, b);
    };
    const double kv_half_ulp = c.kv_dtype == CV_DTYPE_F32    ? 0.0
                               : c.kv_dtype == CV_DTYPE_BF16 ? ldexp(1.0, -8)
                                                             : ldexp(1.0, -11);
    std::vector<char> pool_written(pool_elems, 0), y_written(y.size(), 0);
    double worst = 0.0;
    for (int tk = 0; tk < c.n_tok; tk++) {
        for (int item = 0; item < items; item++) {
            const bool is_q = item < nq, is_k = !is_q && item < nq + nkv;
            const int idx = is_q ? item : is_k ? item - nq : item - nq - nkv;
            for (int e = 0; e < half; e++) {
                const size_t rl = (size_t)tk * out + item * hd + e, rh = rl + half;
                double lo = pr.ref[rl], hi = pr.ref[rh];
                if (c.bias) {
                    lo += bias[item * hd + e];
                    hi += bias[item * hd + e + half];
                }
                double w0 = lo, w1 = hi;
                if (item < nq + nkv) {
                    const float angle = inv_freq[e] * (float)pos[tk];
                    const double cs = cos((double)angle), sn = sin((double)angle);
                    w0 = lo * cs - hi * sn;
                    w1 = hi * cs + lo * sn;
                }
                const double base_lim = 1e-4 * (pr.mag[rl] + pr.mag[rh]) +
                                        2e-6 * (fabs(lo) + fabs(hi)) +
                                        (c.kv_dtype == CV_DTYPE_F16 ? ldexp(1.0, -25) : 1e-30);
                double g0, g1, ulp;
                if (is_q) {
                    g0 = y[rl];
                    g1 = y[rh];
                    y_written[rl] = y_written[rh] = 1;
                    ulp = 0.0;
                } else {
                    const size_t b = (size_t)(slots[tk] / c.block_size) * block_elems + layer_off +
                                     (size_t)(slots[tk] % c.block_size) * hd +
                                     (size_t)((is_k ? 0 : 1) * nkv + idx) * c.block_size * hd;
                    g0 = pool_at(b + e);
                    g1 = pool_at(b + e + half);
                    pool_written[b + e] = pool_written[b + e + half] = 1;
                    ulp = kv_half_ulp;
                }
                const double e0 = fabs(g0 - w0), e1 = fabs(g1 - w1);
                worst = std::max(worst, std::max(e0, e1) / (fabs(lo) + fabs(hi) + 1e-30));
                if (!(e0 <= base_lim + ulp * fabs(w0)) || !(e1 <= base_lim + ulp * fabs(w1))) {
                    printf("FAIL %s: token %d head item %d element %d: (%.9g, %.9g), want "
                           "(%.9g, %.9g)\n",
                           c.name, tk, item, e, g0, g1, w0, w1);
                    return 1;
                }
            }
        }
    }
    for (size_t i = 0; i < y.size(); i++)
        if (!y_written[i] && !isnan(y[i])) {
            printf("FAIL %s: wrote y element %zu outside the q columns\n", c.name, i);
            return 1;
        }
    for (size_t i = 0; i < pool_elems; i++)
        if (!pool_written[i] && !isnan(pool_at(i))) {
            printf("FAIL %s: wrote pool element %zu outside the tokens' k / v slots\n", c.name, i);
            return 1;
        }
    printf("ok   %-44s worst %.2e\n", c.name, worst);
    return 0;
}

std::vector<rope_case> rope_cases()
{
    const cv_dtype BF = CV_DTYPE_BF16, F16 = CV_DTYPE_F16, F32 = CV_DTYPE_F32;
    return {
        {"rope bf16 L8B 32/8 hd128 bs16 kv bf16 tok1", BF, BF, 32, 8, 128, 16, 4096, 1, false,
         false, 1},
        {"rope bf16 L8B 32/8 hd128 bs16 kv bf16 tok8", BF, BF, 32, 8, 128, 16, 4096, 8, false,
         false, 1},
        {"rope f16 4/2 hd64 bs12 kv f32 tok5 bias split", F16, F32, 4, 2, 64, 12, 520, 5, true,
         true, 1},
        {"rope bf16 8/8 hd16 bs8 kv f16 tok8 bias", BF, F16, 8, 8, 16, 8, 264, 8, true, false, 0},
        {"rope bf16 6/2 hd32 bs16 kv bf16 tok3 split", BF, BF, 6, 2, 32, 16, 1024, 3, false, true,
         1},
        {"rope f16 2/1 hd256 bs16 kv f16 tok2 bias", F16, F16, 2, 1, 256, 16, 256, 2, true, false,
         1},
    };
}

struct norm_case {
    const char *name;
    cv_dtype out_dtype;
    int n, n_rows, x_rows;
    bool use_rows, split;
    bool many; /* cuda_rmsnorm (any row count) instead of cuda_rmsnorm_rows */
};

/* Element idx of an activation output of type t read back from the device
 * bytes o (with hi + lo when lo_off, the split rows' offset, is nonzero). */
double out_value(const std::vector<uint8_t> &o, cv_dtype t, size_t idx, size_t lo_off)
{
    if (t == CV_DTYPE_F32) {
        float v;
        memcpy(&v, &o[idx * 4], 4);
        return v;
    }
    uint16_t hi, lo;
    memcpy(&hi, &o[idx * 2], 2);
    double v = from16(t, hi);
    if (lo_off) {
        memcpy(&lo, &o[(lo_off + idx) * 2], 2);
        v += from16(t, lo);
    }
    return v;
}

/* Relative tolerance of an fp32 result stored as t: half an ulp of t (hi +
 * lo: 2^-16) plus 1e-5 for the fp32 arithmetic before it. */
double out_rel(cv_dtype t, bool split)
{
    return t == CV_DTYPE_F32    ? 1e-5
           : split              ? ldexp(1.0, -16) + 1e-5
           : t == CV_DTYPE_BF16 ? ldexp(1.0, -8) + 1e-5
                                : ldexp(1.0, -11) + 1e-5;
}

/* cuda_rmsnorm_rows against fp64: out = w x / sqrt(mean(x^2) + eps), rounded
 * to the output type (fp32: 1e-5 relative, the accumulation of n squares). */
int check_norm(const norm_case &c)
{
    const float eps = 1e-5f;
    const int ld = c.n + 4; /* a row stride wider than the row */
    std::vector<float> x((size_t)c.x_rows * c.n), w(c.n);
    for (float &v : x)
        v = rng_val(3.0f);
    for (float &v : w)
        v = rng_val(1.5f);
    std::vector<int32_t> rows(c.n_rows);
    for (int r = 0; r < c.n_rows; r++)
        rows[r] = c.use_rows ? (c.x_rows - 1 - 2 * r + c.x_rows) % c.x_rows : r;
    const size_t esz = c.out_dtype == CV_DTYPE_F32 ? 4 : 2;
    const size_t on = (size_t)c.n_rows * ld, total = on * (c.split ? 2 : 1);
    std::vector<uint8_t> o0((total + GUARD) * esz, 0xff);
    float *dx = dev_upload(x), *dw = dev_upload(w);
    int32_t *drows = dev_upload(rows);
    uint8_t *dout = dev_upload(o0);
    const int rc = c.many ? cuda_rmsnorm(dx, c.use_rows ? drows : nullptr, c.n_rows, dw, c.n, eps,
                                         c.out_dtype, dout, ld, c.split ? on : 0, 0)
                          : cuda_rmsnorm_rows(dx, c.use_rows ? drows : nullptr, c.n_rows, dw, c.n,
                                              eps, c.out_dtype, dout, ld, c.split ? on : 0, 1, 0);
    CK(cudaDeviceSynchronize());
    const std::vector<uint8_t> o = dev_download(dout, (total + GUARD) * esz);
    cudaFree(dx);
    cudaFree(dw);
    cudaFree(drows);
    cudaFree(dout);
    if (rc) {
        printf("FAIL %s: the norm kernel returned %s\n", c.name,
               cudaGetErrorString((cudaError_t)rc));
        return 1;
    }
    const double rel = out_rel(c.out_dtype, c.split);
    double worst = 0.0;
    for (int r = 0; r < c.n_rows; r++) {
        const float *xr = &x[(size_t)rows[r] * c.n];
        double ss = 0.0;
        for (int i = 0; i < c.n; i++)
            ss += (double)xr[i] * xr[i];
        const double inv = 1.0 / sqrt(ss / c.n + eps);
        for (int i = 0; i < ld; i++) {
            const double got = out_value(o, c.out_dtype, (size_t)r * ld + i, c.split ? on : 0);
            if (i >= c.n) { /* the gap between rows: never written */
                if (!isnan(got)) {
                    printf("FAIL %s: wrote row %d's padding element %d\n", c.name, r, i);
                    return 1;
                }
                continue;
            }
            const double want = w[i] * (xr[i] * inv), err = fabs(got - want);
            worst = std::max(worst, err / (fabs(want) + 1e-30));
            const double abs_floor = c.out_dtype == CV_DTYPE_F16 ? ldexp(1.0, -25) : 1e-30;
            if (!(err <= rel * fabs(want) + abs_floor)) {
                printf("FAIL %s: out[%d][%d] = %.9g, want %.9g\n", c.name, r, i, got, want);
                return 1;
            }
        }
    }
    for (size_t i = total * esz; i < (total + GUARD) * esz; i++)
        if (o[i] != 0xff) {
            printf("FAIL %s: wrote past the output\n", c.name);
            return 1;
        }
    printf("ok   %-44s worst %.2e\n", c.name, worst);
    return 0;
}

/* Unsupported arguments are refused, never run. */
int check_refusals()
{
    int bad = 0;
    void *p = nullptr;
    CK(cudaMalloc(&p, 4096));
    const char *b = (const char *)p;
    const struct {
        const char *what;
        cv_dtype t;
        int n_tok, in;
        const void *w, *x;
        size_t lo;
    } no[] = {
        {"f32 weights", CV_DTYPE_F32, 1, 64, b, b, 0},
        {"0 tokens", CV_DTYPE_BF16, 0, 64, b, b, 0},
        {"9 tokens", CV_DTYPE_BF16, 9, 64, b, b, 0},
        {"in 60 (not a multiple of 8)", CV_DTYPE_BF16, 1, 60, b, b, 0},
        {"w misaligned", CV_DTYPE_BF16, 1, 64, b + 2, b, 0},
        {"x misaligned", CV_DTYPE_F16, 1, 64, b, b + 8, 0},
        {"lo offset 4", CV_DTYPE_BF16, 1, 64, b, b, 4},
    };
    for (const auto &n : no) {
        if (cuda_gemv_supported(n.t, n.n_tok, n.in, n.w, n.x, n.lo)) {
            printf("FAIL refusal: cuda_gemv_supported accepts %s\n", n.what);
            bad++;
        }
        cuda_gemv_args a = {};
        a.dtype = n.t;
        a.w = n.w;
        a.x = n.x;
        a.out = 16;
        a.in = n.in;
        a.n_tok = n.n_tok;
        a.x_lo_off = n.lo;
        a.y = (float *)p;
        if (cuda_gemv(&a, 0) != (int)cudaErrorInvalidValue) {
            printf("FAIL refusal: cuda_gemv runs %s\n", n.what);
            bad++;
        }
    }
    cuda_gemv_args a = {};
    a.dtype = CV_DTYPE_BF16;
    a.w = a.x = p;
    a.out = 16;
    a.in = 64;
    a.n_tok = 1;
    if (cuda_gemv(&a, 0) != (int)cudaErrorInvalidValue) {
        printf("FAIL refusal: cuda_gemv runs without y\n");
        bad++;
    }
    a.epilogue = CUDA_GEMV_GATED;
    a.act_out = p;
    a.out = 15;
    if (cuda_gemv(&a, 0) != (int)cudaErrorInvalidValue) {
        printf("FAIL refusal: gated cuda_gemv runs with an odd out\n");
        bad++;
    }
    a.out = 16;
    a.epilogue = CUDA_GEMV_ROPE_KV;
    a.y = (float *)p;
    a.rope.n_heads = 1;
    a.rope.n_kv_heads = 1;
    a.rope.head_dim = 8;
    a.rope.block_size = 16;
    a.rope.inv_freq = (const float *)p;
    a.rope.positions = (const int32_t *)p;
    a.rope.slot_mapping = (const int64_t *)p;
    a.rope.kv = p;
    a.rope.kv_dtype = CV_DTYPE_BF16;
    if (cuda_gemv(&a, 0) != (int)cudaErrorInvalidValue) {
        printf("FAIL refusal: RoPE cuda_gemv runs with out 16 for 3 heads of 8\n");
        bad++;
    }
    a.epilogue = CUDA_GEMV_GATED;
    a.act = CV_ACT_RELU;
    if (cuda_gemv(&a, 0) != (int)cudaErrorInvalidValue) {
        printf("FAIL refusal: gated cuda_gemv runs with ReLU\n");
        bad++;
    }
    if (cuda_rmsnorm_rows_supported(9, 4096, (const float *)p) ||
        cuda_rmsnorm_rows_supported(1, 4098, (const float *)p) ||
        cuda_rmsnorm_rows_supported(1, 16388, (const float *)p) ||
        cuda_rmsnorm_rows_supported(1, 4096, (const float *)(b + 4))) {
        printf("FAIL refusal: cuda_rmsnorm_rows_supported accepts 9 rows, n 4098, n 16388 or a "
               "misaligned x\n");
        bad++;
    }
    CK(cudaDeviceSynchronize());
    cudaFree(p);
    if (!bad) printf("ok   refusals\n");
    return bad;
}

/* A decoder-MLP-shaped chain, layers times: norm -> gated GEMV ->
 * accumulating GEMV back into the residual. Launched stream-ordered
 * without PDL (the reference), with PDL, and with PDL captured in a CUDA
 * graph: the three residuals must be identical bytes. */
int check_pdl_chain(cv_dtype t, int n_tok)
{
    const int h = 1024, f = 2048, layers = 12;
    std::vector<uint16_t> wgu((size_t)layers * 2 * f * h), wd((size_t)layers * h * f);
    for (uint16_t &v : wgu)
        v = to16(t, rng_val(0.06f));
    for (uint16_t &v : wd)
        v = to16(t, rng_val(0.04f));
    std::vector<float> x0((size_t)n_tok * h), nw(h);
    for (float &v : x0)
        v = rng_val(1.0f);
    for (float &v : nw)
        v = 1.0f + rng_val(0.2f);
    uint16_t *dgu = dev_upload(wgu), *ddown = dev_upload(wd);
    float *dnw = dev_upload(nw), *dx = dev_upload(x0);
    void *xn = nullptr, *mlp = nullptr;
    CK(cudaMalloc(&xn, (size_t)n_tok * h * 2));
    CK(cudaMalloc(&mlp, (size_t)n_tok * f * 2));
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    const auto enqueue = [&](int pdl) {
        int rc = 0;
        for (int l = 0; l < layers && !rc; l++) {
            rc = cuda_rmsnorm_rows(dx, nullptr, n_tok, dnw, h, 1e-5f, t, xn, h, 0, pdl, s);
            cuda_gemv_args g = {};
            g.dtype = t;
            g.w = dgu + (size_t)l * 2 * f * h;
            g.out = 2 * f;
            g.in = h;
            g.x = xn;
            g.n_tok = n_tok;
            g.epilogue = CUDA_GEMV_GATED;
            g.act = CV_ACT_SILU;
            g.act_out = mlp;
            g.pdl = pdl;
            if (!rc) rc = cuda_gemv(&g, s);
            cuda_gemv_args d = {};
            d.dtype = t;
            d.w = ddown + (size_t)l * h * f;
            d.out = h;
            d.in = f;
            d.x = mlp;
            d.n_tok = n_tok;
            d.epilogue = CUDA_GEMV_ACCUMULATE;
            d.y = dx;
            d.pdl = pdl;
            if (!rc) rc = cuda_gemv(&d, s);
        }
        return rc;
    };
    std::vector<std::vector<float>> res;
    int rc = 0;
    for (int mode = 0; mode < 3 && !rc; mode++) {
        CK(cudaMemcpy(dx, x0.data(), x0.size() * 4, cudaMemcpyHostToDevice));
        if (mode < 2) {
            rc = enqueue(mode);
        } else {
            cudaGraph_t g = nullptr;
            cudaGraphExec_t ge = nullptr;
            CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
            rc = enqueue(1);
            CK(cudaStreamEndCapture(s, &g));
            if (!rc) CK(cudaGraphInstantiate(&ge, g, 0));
            if (!rc) CK(cudaGraphLaunch(ge, s));
            CK(cudaStreamSynchronize(s));
            if (ge) cudaGraphExecDestroy(ge);
            cudaGraphDestroy(g);
        }
        CK(cudaStreamSynchronize(s));
        res.push_back(dev_download(dx, x0.size()));
    }
    cudaFree(dgu);
    cudaFree(ddown);
    cudaFree(dnw);
    cudaFree(dx);
    cudaFree(xn);
    cudaFree(mlp);
    cudaStreamDestroy(s);
    char name[64];
    snprintf(name, sizeof name, "pdl chain %s n_tok %d", dtype_name(t), n_tok);
    if (rc) {
        printf("FAIL %s: launch returned %s\n", name, cudaGetErrorString((cudaError_t)rc));
        return 1;
    }
    bool finite = true;
    for (float v : res[0])
        finite = finite && isfinite(v);
    if (!finite || memcmp(res[0].data(), res[1].data(), res[0].size() * 4) != 0 ||
        memcmp(res[0].data(), res[2].data(), res[0].size() * 4) != 0) {
        printf("FAIL %s: PDL eager / graph residuals differ from the stream-ordered run (or are "
               "not finite)\n",
               name);
        return 1;
    }
    printf("ok   %s\n", name);
    return 0;
}

std::vector<gemv_case> gemv_cases()
{
    const cv_dtype BF = CV_DTYPE_BF16, F16 = CV_DTYPE_F16;
    const cuda_gemv_epilogue ST = CUDA_GEMV_STORE, AC = CUDA_GEMV_ACCUMULATE, GA = CUDA_GEMV_GATED;
    const cv_activation SI = CV_ACT_SILU, GE = CV_ACT_GELU_TANH;
    std::vector<gemv_case> v = {
        {"bf16 48x64 tok1", BF, 48, 64, 1, ST, false, SI, 0},
        {"bf16 100x4104 tok3 (partial tile+step)", BF, 100, 4104, 3, ST, false, SI, 1},
        {"f16 37x8 tok8 (in 8)", F16, 37, 8, 8, ST, false, SI, 0},
        {"bf16 16x72 tok5", BF, 16, 72, 5, AC, false, SI, 1},
        {"bf16 qkv 6144x4096 tok1", BF, 6144, 4096, 1, ST, false, SI, 1},
        {"bf16 qkv 6144x4096 tok8", BF, 6144, 4096, 8, ST, false, SI, 1},
        {"bf16 o 4096x4096 tok1 acc", BF, 4096, 4096, 1, AC, false, SI, 1},
        {"bf16 down 4096x14336 tok2 acc", BF, 4096, 14336, 2, AC, false, SI, 1},
        {"f16 down 4096x14336 tok7 acc", F16, 4096, 14336, 7, AC, false, SI, 0},
        {"bf16 gate_up 2x14336x4096 tok1 silu", BF, 2 * 14336, 4096, 1, GA, false, SI, 1},
        {"bf16 gate_up 2x14336x4096 tok8 silu", BF, 2 * 14336, 4096, 8, GA, false, SI, 1},
        {"f16 gated 2x1000x520 tok4 gelu", F16, 2000, 520, 4, GA, false, GE, 1},
        {"bf16 gated 2x24x64 tok6 silu split", BF, 48, 64, 6, GA, true, SI, 0},
        {"bf16 split 300x4096 tok4", BF, 300, 4096, 4, ST, true, SI, 1},
        {"f16 split 4096x1032 tok1 acc", F16, 4096, 1032, 1, AC, true, SI, 1},
        {"bf16 lm_head 128256x4096 tok1", BF, 128256, 4096, 1, ST, false, SI, 1},
    };
    static char names[2 * 8][48];
    for (int tk = 1; tk <= 8; tk++) {
        char *n = names[tk - 1];
        snprintf(n, 48, "bf16 1040x2056 tok%d", tk);
        v.push_back({n, BF, 1040, 2056, tk, tk % 2 ? ST : AC, false, SI, tk % 3 != 0});
        n = names[8 + tk - 1];
        snprintf(n, 48, "f16 gated 2x520x1024 tok%d", tk);
        v.push_back({n, F16, 1040, 1024, tk, GA, tk == 5, tk % 2 ? SI : GE, 1});
    }
    return v;
}

std::vector<norm_case> norm_cases()
{
    return {
        {"norm bf16 n4096 1 row", CV_DTYPE_BF16, 4096, 1, 1, false, false, false},
        {"norm bf16 n4096 8 rows via rows[]", CV_DTYPE_BF16, 4096, 8, 11, true, false, false},
        {"norm f16 n5000 3 rows", CV_DTYPE_F16, 5000, 3, 3, false, false, false},
        {"norm bf16 n8192 2 rows split", CV_DTYPE_BF16, 8192, 2, 2, false, true, false},
        {"norm f32 n12288 4 rows", CV_DTYPE_F32, 12288, 4, 4, true, false, false},
        {"norm bf16 n64 5 rows", CV_DTYPE_BF16, 64, 5, 5, false, false, false},
        {"norm f16 n16384 1 row", CV_DTYPE_F16, 16384, 1, 1, false, false, false},
        /* cuda_rmsnorm: float4 loads (n % 4 == 0) and the scalar form. */
        {"wide norm bf16 n4096 300 rows", CV_DTYPE_BF16, 4096, 300, 300, false, false, true},
        {"wide norm bf16 n4096 40 rows via rows[] split", CV_DTYPE_BF16, 4096, 40, 57, true, true,
         true},
        {"wide norm f32 n4098 9 rows", CV_DTYPE_F32, 4098, 9, 9, false, false, true},
        {"wide norm f16 n100 17 rows", CV_DTYPE_F16, 100, 17, 17, false, false, true},
    };
}

struct gated_case {
    const char *name;
    cv_dtype in_dtype, out_dtype;
    int n_tok, f;
    bool split;
    cv_activation act;
};

/* cuda_gated_act against fp64 on the same (16-bit or fp32) inputs: out =
 * act(g) u, rounded to the output type (half an ulp; fp32: 1e-5 relative,
 * expf / tanhf's error), hi + lo to 2^-16 with split rows, plus GELU's
 * cancellation (below). The vector form
 * takes f % 8 == 0 without split rows, the scalar one the rest. */
int check_gated(const gated_case &c)
{
    const size_t n_in = (size_t)c.n_tok * 2 * c.f, n_out = (size_t)c.n_tok * c.f;
    const size_t isz = c.in_dtype == CV_DTYPE_F32 ? 4 : 2,
                 osz = c.out_dtype == CV_DTYPE_F32 ? 4 : 2;
    std::vector<double> in(n_in);
    std::vector<uint8_t> in_bytes(n_in * isz);
    for (size_t i = 0; i < n_in; i++) {
        const float v = rng_val(6.0f);
        if (isz == 4) {
            memcpy(&in_bytes[i * 4], &v, 4);
            in[i] = v;
        } else {
            const uint16_t h = to16(c.in_dtype, v);
            memcpy(&in_bytes[i * 2], &h, 2);
            in[i] = from16(c.in_dtype, h);
        }
    }
    const size_t total = n_out * (c.split ? 2 : 1);
    std::vector<uint8_t> o0((total + GUARD) * osz, 0xff);
    uint8_t *din = dev_upload(in_bytes), *dout = dev_upload(o0);
    const int rc = cuda_gated_act(c.act, c.in_dtype, din, c.n_tok, c.f, c.out_dtype, dout,
                                  c.split ? n_out : 0, 0);
    CK(cudaDeviceSynchronize());
    const std::vector<uint8_t> o = dev_download(dout, (total + GUARD) * osz);
    cudaFree(din);
    cudaFree(dout);
    if (rc) {
        printf("FAIL %s: cuda_gated_act returned %s\n", c.name,
               cudaGetErrorString((cudaError_t)rc));
        return 1;
    }
    const double rel = out_rel(c.out_dtype, c.split);
    double worst = 0.0;
    for (int t = 0; t < c.n_tok; t++)
        for (int j = 0; j < c.f; j++) {
            const size_t idx = (size_t)t * c.f + j;
            const double g = in[(size_t)t * 2 * c.f + j], u = in[(size_t)t * 2 * c.f + c.f + j];
            const double want = act_ref(c.act, g) * u;
            const double got = out_value(o, c.out_dtype, idx, c.split ? n_out : 0);
            const double err = fabs(got - want);
            worst = std::max(worst, err / (fabs(want) + 1e-30));
            /* GELU's 1 + tanh(z) cancels for large negative g: fp32's
             * ulp of 1 there is absolute, 2^-23 |g u| / 2 in the output. */
            const double abs_floor =
                (c.out_dtype == CV_DTYPE_F16 ? ldexp(1.0, -25) : 1e-30) + ldexp(fabs(g * u), -23);
            if (!(err <= rel * fabs(want) + abs_floor)) {
                printf("FAIL %s: out[%d][%d] = %.9g, want %.9g\n", c.name, t, j, got, want);
                return 1;
            }
        }
    for (size_t i = total * osz; i < (total + GUARD) * osz; i++)
        if (o[i] != 0xff) {
            printf("FAIL %s: wrote past the output\n", c.name);
            return 1;
        }
    printf("ok   %-44s worst %.2e\n", c.name, worst);
    return 0;
}

std::vector<gated_case> gated_cases()
{
    const cv_dtype BF = CV_DTYPE_BF16, F16 = CV_DTYPE_F16, F32 = CV_DTYPE_F32;
    return {
        {"gated bf16->bf16 silu 37x14336 (vector)", BF, BF, 37, 14336, false, CV_ACT_SILU},
        {"gated f32->bf16 silu 9x4104 (vector)", F32, BF, 9, 4104, false, CV_ACT_SILU},
        {"gated f16->f16 gelu 5x1000 (vector)", F16, F16, 5, 1000, false, CV_ACT_GELU_TANH},
        {"gated bf16->f32 silu 3x2052 (scalar)", BF, F32, 3, 2052, false, CV_ACT_SILU},
        {"gated f32->bf16 silu 4x1024 split (scalar)", F32, BF, 4, 1024, true, CV_ACT_SILU},
    };
}

} /* namespace */

/* test_gpu_gemv [--bench] [SUBSTRING]: SUBSTRING picks the correctness
 * cases whose names contain it (e.g. for compute-sanitizer). */
int main(int argc, char **argv)
{
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("test_gpu_gemv: no CUDA device; skipped\n");
        return 77;
    }
    bool timing = false;
    const char *filter = nullptr;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--bench") == 0)
            timing = true;
        else
            filter = argv[i];
    }
    int fails = 0;
    if (!filter || strstr("refusals", filter)) fails += check_refusals();
    for (const gemv_case &c : gemv_cases())
        if (!filter || strstr(c.name, filter)) fails += check_gemv(c);
    for (const rope_case &c : rope_cases())
        if (!filter || strstr(c.name, filter)) fails += check_rope(c);
    for (const norm_case &c : norm_cases())
        if (!filter || strstr(c.name, filter)) fails += check_norm(c);
    for (const gated_case &c : gated_cases())
        if (!filter || strstr(c.name, filter)) fails += check_gated(c);
    for (cv_dtype t : {CV_DTYPE_BF16, CV_DTYPE_F16})
        for (int n_tok : {1, 5, 8})
            if (!filter || strstr("pdl chain", filter)) fails += check_pdl_chain(t, n_tok);
    printf("%s: %d failing case(s)\n", fails ? "FAIL" : "PASS", fails);
    if (timing) gemv_bench();
    return fails ? 1 : 0;
}

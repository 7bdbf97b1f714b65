/* Sampling on the device: one thread block per row (see sample.h for the
 * order of operations, which is the CPU sampler's).
 *
 * Everything the CPU sampler does with a sort is done here by selecting a
 * key in the order "logit descending, then id ascending": an element's key
 * is (order-preserving bits of its logit) << 32 | (0xffffffff - id), so a
 * larger key comes first and keys are unique. A selection finds the first
 * element (largest key) at which a running total over the kept elements
 * crosses a target, by radix select: 11 bits of the key per pass over the
 * row, a 2048-bin histogram of count and mass (e^(y - max)) of the elements
 * whose key matches the digits chosen so far, until one element is left.
 * top_k selects by count, top_p and the draw by mass. A pass reads the row
 * once (513 KB for a 128K vocabulary); a selection takes 2-4 passes.
 *
 * Edits (masked ids, penalties) are made in the logits row itself after
 * the raw logprobs are taken and undone before the chosen token's rank is
 * counted, so the row needs no copy; a per-row count scratch (zero between
 * calls, cleared by the atomic exchange that elects each id's editor)
 * gives each id its output count and prompt flag. */
#include <limits.h>
#include <math.h>
#include <stdint.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "backend/cuda/kernels/sample.h"

namespace
{

constexpr int THREADS = 512;
constexpr int ITEMS = 4;       /* consecutive ids per thread in the id-order scan */
constexpr int RADIX_BITS = 11; /* key bits per selection pass */
constexpr int UNROLL = 8;      /* loads in flight per thread in a pass over a row */
constexpr int BINS_PER_THREAD = (1 << RADIX_BITS) / THREADS;
static_assert(BINS_PER_THREAD * THREADS == 1 << RADIX_BITS, "bins divide among the threads");
constexpr uint32_t PROMPT_BIT = 1u << 30, MASK_BIT = 1u << 29, COUNT_MASK = MASK_BIT - 1;
constexpr float SAMPLING_EPS = 1e-5f;    /* vLLM's _SAMPLING_EPS (engine_internal.h) */
constexpr float MIN_TEMPERATURE = 1e-2f; /* runner/sampler.h's CV_MIN_TEMPERATURE */

typedef unsigned long long u64;

/* Histogram masses are summed as 64-bit fixed point (e^(y - max) <= 1
 * times 2^40: 256K of them fit): integer sums are exact and independent of
 * the order the atomics land in, so a selection is the same run to run,
 * and finer than the 1/150K of the total a flat row's token weighs. */
constexpr double MASS_ONE = 1099511627776.0; /* 2^40 */

using reduce_f = cub::BlockReduce<float, THREADS>;
using reduce_d = cub::BlockReduce<double, THREADS>;
using reduce_i = cub::BlockReduce<int, THREADS>;
using reduce_u = cub::BlockReduce<u64, THREADS>;
using scan_d = cub::BlockScan<double, THREADS>;

struct shared {
    union {
        reduce_f::TempStorage f;
        reduce_d::TempStorage d;
        reduce_i::TempStorage i;
        reduce_u::TempStorage u;
        scan_d::TempStorage s;
    } tmp;
    float f;
    double d;
    int i, i2;
    u64 u;
    uint32_t hist_n[1 << RADIX_BITS];
    u64 hist_m[1 << RADIX_BITS]; /* fixed point, MASS_ONE = 1 */
};

struct max_f {
    __device__ float operator()(float a, float b) const
    {
        return b > a ? b : a;
    }
};
struct max_u {
    __device__ u64 operator()(u64 a, u64 b) const
    {
        return b > a ? b : a;
    }
};
struct min_i {
    __device__ int operator()(int a, int b) const
    {
        return b < a ? b : a;
    }
};
struct sum_i {
    __device__ int operator()(int a, int b) const
    {
        return a + b;
    }
};
struct max_i {
    __device__ int operator()(int a, int b) const
    {
        return b > a ? b : a;
    }
};

/* Block-wide results for every thread (the reductions leave them in thread 0). */
__device__ float all_max(shared &s, float v)
{
    v = reduce_f(s.tmp.f).Reduce(v, max_f());
    if (threadIdx.x == 0) s.f = v;
    __syncthreads();
    v = s.f;
    __syncthreads();
    return v;
}

__device__ double all_sum(shared &s, double v)
{
    v = reduce_d(s.tmp.d).Sum(v);
    if (threadIdx.x == 0) s.d = v;
    __syncthreads();
    v = s.d;
    __syncthreads();
    return v;
}

template <typename op> __device__ int all_int(shared &s, int v, op o)
{
    v = reduce_i(s.tmp.i).Reduce(v, o);
    if (threadIdx.x == 0) s.i = v;
    __syncthreads();
    v = s.i;
    __syncthreads();
    return v;
}

__device__ u64 all_max_u(shared &s, u64 v)
{
    v = reduce_u(s.tmp.u).Reduce(v, max_u());
    if (threadIdx.x == 0) s.u = v;
    __syncthreads();
    v = s.u;
    __syncthreads();
    return v;
}

/* The CPU sampler's stream (sampler.c's mix64 and sampler_uniform). */
__device__ uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

__device__ double uniform(uint64_t seed, uint64_t i)
{
    uint64_t x = mix64(mix64(seed) ^ mix64(i ^ 0x5851f42d4c957f2dULL));
    return (double)(x >> 11) * (1.0 / 9007199254740992.0);
}

/* Float bits whose unsigned order is the values' order; -0 counts as +0
 * (the CPU compares them equal, so their tie goes to the lower id). */
__device__ uint32_t ordered(float y)
{
    if (y == 0.0f) y = 0.0f;
    const uint32_t b = __float_as_uint(y);
    return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}

__device__ u64 key_of(float y, int i)
{
    return (u64)ordered(y) << 32 | (u64)(0xffffffffu - (uint32_t)i);
}

__device__ int id_of(u64 key)
{
    return (int)(0xffffffffu - (uint32_t)key);
}

/* f(x[i], i) for every i of the row, this thread's share: UNROLL loads
 * issued before any is used, so a block keeps enough reads in flight to
 * stream the row (one load at a time per thread would not). */
template <typename F> __device__ void each(const float *x, int vocab, F f)
{
    for (int base = threadIdx.x; base < vocab; base += THREADS * UNROLL) {
        float v[UNROLL];
#pragma unroll
        for (int j = 0; j < UNROLL; j++) {
            const int i = base + j * THREADS;
            v[j] = i < vocab ? x[i] : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < UNROLL; j++) {
            const int i = base + j * THREADS;
            if (i < vocab) f(v[j], i);
        }
    }
}

/* The sampling view of a row: y_i = x_i / t and the candidates that min_p
 * leaves (finite, y >= floor) with key >= lo. */
struct view {
    const float *x;
    int vocab;
    float t, mx, floor;
    u64 lo;
    __device__ float y(float xi) const
    {
        return __fdiv_rn(xi, t);
    }
    __device__ bool cand(float v) const
    {
        return v > -INFINITY && v >= floor;
    }
    __device__ bool kept(float v, int i) const
    {
        return cand(v) && key_of(v, i) >= lo;
    }
};

/* Count and mass (sum of e^(y - mx)) of the kept elements; last: the
 * largest kept id (-1: none). */
struct totals {
    int n, last;
    double mass;
};

__device__ totals kept_totals(shared &s, const view &v)
{
    int n = 0, last = -1;
    double mass = 0;
    each(v.x, v.vocab, [&](float xi, int i) {
        const float y = v.y(xi);
        if (!v.kept(y, i)) return;
        n++;
        last = i;
        mass += expf(y - v.mx);
    });
    totals t;
    t.n = all_int(s, n, sum_i());
    t.last = all_int(s, last, max_i());
    t.mass = all_sum(s, mass);
    return t;
}

/* The bin of a histogram pass where the running weight reaches target:
 * bins are visited from the highest digit down (key order), each thread
 * scanning BINS_PER_THREAD consecutive ones after a block scan of their
 * sums. Sets *sel (-1: every bin empty), *count (its elements) and *above
 * (the weight before it). When no bin reaches target (rounding), the last
 * non-empty bin. */
__device__ void pick_bin(shared &s, int n_bins, bool by_mass, double target, bool strict, int *sel,
                         int *count, double *above)
{
    const int q0 = threadIdx.x * BINS_PER_THREAD; /* positions; bin = n_bins - 1 - position */
    double w[BINS_PER_THREAD], mine = 0;
    for (int j = 0; j < BINS_PER_THREAD; j++) {
        const int b = n_bins - 1 - (q0 + j);
        w[j] = b < 0 ? 0.0 : by_mass ? (double)s.hist_m[b] * (1.0 / MASS_ONE) : (double)s.hist_n[b];
        mine += w[j];
    }
    double before, total;
    scan_d(s.tmp.s).ExclusiveSum(mine, before, total);
    __syncthreads();
    double pre[BINS_PER_THREAD], acc = *above + before;
    int hit = INT_MAX, last = -1;
    for (int j = 0; j < BINS_PER_THREAD; j++) {
        const int b = n_bins - 1 - (q0 + j);
        pre[j] = acc;
        if (b < 0 || s.hist_n[b] == 0) continue;
        acc += w[j];
        last = q0 + j;
        if (hit == INT_MAX && (strict ? acc > target : acc >= target)) hit = q0 + j;
    }
    const int first_hit = all_int(s, hit, min_i());
    const int last_any = all_int(s, last, max_i());
    const int q = first_hit != INT_MAX ? first_hit : last_any;
    if (q >= q0 && q < q0 + BINS_PER_THREAD) {
        const int b = n_bins - 1 - q;
        s.i = b;
        s.i2 = (int)s.hist_n[b];
        s.d = pre[q - q0];
    }
    __syncthreads();
    *sel = q < 0 ? -1 : s.i;
    *count = q < 0 ? 0 : s.i2;
    *above = q < 0 ? *above : s.d;
    __syncthreads();
}

/* The key of the first kept element (in key order, largest first) at which
 * the running count (by_mass false) or mass reaches target: total >= target,
 * or total > target when strict. When no element reaches it (rounding), the
 * last kept element; 0 when none is kept. Digits of RADIX_BITS: the first
 * (sign, exponent, 2 mantissa bits) spreads typical logits over dozens of
 * bins, so the shared-memory atomics of a warp seldom meet on one bin. */
__device__ u64 select_key(shared &s, const view &v, bool by_mass, double target, bool strict)
{
    u64 prefix = 0;
    double above = 0; /* weight of the kept elements before the prefix's */
    int shift = 64;
    while (shift > 0) {
        const int bits = shift < RADIX_BITS ? shift : RADIX_BITS;
        const int high = shift; /* the digits chosen so far are the key's bits >= high */
        shift -= bits;
        for (int b = threadIdx.x; b < (1 << RADIX_BITS); b += THREADS) {
            s.hist_n[b] = 0;
            s.hist_m[b] = 0;
        }
        __syncthreads();
        each(v.x, v.vocab, [&](float xi, int i) {
            const float y = v.y(xi);
            if (!v.kept(y, i)) return;
            const u64 k = key_of(y, i);
            if (high < 64 && (k >> high) != prefix) return;
            const int d = (int)(k >> shift & ((1u << bits) - 1));
            atomicAdd(&s.hist_n[d], 1u);
            if (by_mass)
                atomicAdd(&s.hist_m[d], __double2ull_rn((double)expf(y - v.mx) * MASS_ONE));
        });
        __syncthreads();
        int sel, count;
        pick_bin(s, 1 << bits, by_mass, target, strict, &sel, &count, &above);
        if (sel < 0) return 0;
        prefix = prefix << bits | (u64)sel;
        if (count == 1) break;
    }
    if (shift == 0) return prefix;
    /* One kept element has this prefix: find its key. */
    u64 found = 0;
    each(v.x, v.vocab, [&](float xi, int i) {
        const float y = v.y(xi);
        if (!v.kept(y, i)) return;
        const u64 k = key_of(y, i);
        if ((k >> shift) == prefix) found = k;
    });
    return all_max_u(s, found);
}

/* Without top_k and top_p the CPU draws over the candidates in id order:
 * the first whose running mass exceeds target, else the last candidate. */
__device__ int draw_id_order(shared &s, const view &v, double target, int last)
{
    double run = 0;
    for (int base = 0; base < v.vocab; base += THREADS * ITEMS) {
        const int first = base + threadIdx.x * ITEMS;
        double e[ITEMS], mine = 0;
        for (int j = 0; j < ITEMS; j++) {
            const int i = first + j;
            float y = i < v.vocab ? v.y(v.x[i]) : -INFINITY;
            e[j] = v.cand(y) ? (double)expf(y - v.mx) : -1.0;
            mine += e[j] > 0 ? e[j] : 0;
        }
        double before, total;
        scan_d(s.tmp.s).ExclusiveSum(mine, before, total);
        __syncthreads();
        int hit = INT_MAX;
        double acc = run + before;
        for (int j = 0; j < ITEMS && hit == INT_MAX; j++) {
            if (e[j] < 0) continue; /* not a candidate */
            acc += e[j];
            if (acc > target) hit = first + j;
        }
        hit = all_int(s, hit, min_i());
        if (hit != INT_MAX) return hit;
        run += total;
    }
    return last >= 0 ? last : 0;
}

/* The CPU sampler's penalties on one id (sampler.c's apply_penalties),
 * unfused so the float rounding is the same. */
__device__ float edited(float x, uint32_t c, const cuda_sample_row &p)
{
    if (c & MASK_BIT) return -INFINITY;
    float v = x;
    if (p.repetition_penalty != 1.0f)
        v = v > 0 ? __fdiv_rn(v, p.repetition_penalty) : __fmul_rn(v, p.repetition_penalty);
    const float n = (float)(c & COUNT_MASK);
    v = __fsub_rn(v, __fmul_rn(p.frequency_penalty, n));
    v = __fsub_rn(v, __fmul_rn(p.presence_penalty, n > 0 ? 1.0f : 0.0f));
    return v;
}

/* The sampled (or greedy) token of the edited row x. */
__device__ int choose(shared &s, const cuda_sample_row &p, const float *x, int vocab)
{
    if (p.temperature < SAMPLING_EPS) {
        /* First index of the maximum: the largest key. */
        u64 best = 0;
        each(x, vocab, [&](float xi, int i) {
            const u64 k = key_of(xi, i);
            best = k > best ? k : best;
        });
        return id_of(all_max_u(s, best));
    }
    view v = {
        x,         vocab,     p.temperature < MIN_TEMPERATURE ? MIN_TEMPERATURE : p.temperature,
        -INFINITY, -INFINITY, 0};
    float mx = -INFINITY;
    each(x, vocab, [&](float xi, int) {
        const float y = v.y(xi);
        mx = y > mx ? y : mx;
    });
    v.mx = all_max(s, mx);
    /* min_p: p_i < min_p * p_max  <=>  y_i - y_max < log(min_p). */
    if (p.min_p > 0.0f) v.floor = __fadd_rn(v.mx, logf(p.min_p));
    totals all = kept_totals(s, v);
    const bool use_k = p.top_k > 0 && p.top_k < all.n, use_p = p.top_p < 1.0f;
    const double u = uniform(p.seed, p.draw);
    if (!use_k && !use_p) return draw_id_order(s, v, u * all.mass, all.last);
    if (use_k) {
        /* Every candidate at least the k-th largest value stays. */
        const u64 kth = select_key(s, v, false, (double)p.top_k, false);
        v.lo = kth & 0xffffffff00000000ull;
        all = kept_totals(s, v);
    }
    if (use_p) {
        /* The CPU drops, from the least likely up, while the dropped mass
         * stays <= 1 - top_p: what stays is the prefix up to the first
         * element whose running mass reaches top_p of the total. */
        v.lo = select_key(s, v, true, (double)p.top_p * all.mass, false);
        all = kept_totals(s, v);
    }
    const u64 k = select_key(s, v, true, u * all.mass, true);
    return k ? id_of(k) : 0;
}

__global__ void __launch_bounds__(THREADS)
    sample_kernel(float *logits, int vocab, const cuda_sample_row *rows, const int32_t *ids,
                  cuda_sample_edit *saved, uint32_t *counts, cuda_sample_out *out)
{
    __shared__ shared s;
    const cuda_sample_row p = rows[blockIdx.x];
    float *x = logits + (size_t)p.row * vocab;

    /* The raw distribution: log-sum-exp as the CPU (float terms, double sum). */
    float mx = -INFINITY;
    each(x, vocab, [&](float xi, int) { mx = xi > mx ? xi : mx; });
    mx = all_max(s, mx);
    double sum = 0;
    each(x, vocab, [&](float xi, int) { sum += expf(xi - mx); });
    const double lse = (double)mx + log(all_sum(s, sum));

    /* The top list: each pass takes the largest key below the previous. */
    int n_top = p.n_top < CUDA_SAMPLE_MAX_TOP ? p.n_top : CUDA_SAMPLE_MAX_TOP;
    n_top = n_top < vocab ? n_top : vocab;
    u64 prev = ~0ull;
    for (int j = 0; j < n_top; j++) {
        u64 best = 0;
        each(x, vocab, [&](float xi, int i) {
            const u64 k = key_of(xi, i);
            if (k < prev && k > best) best = k;
        });
        prev = all_max_u(s, best);
        if (threadIdx.x == 0) {
            const int id = id_of(prev);
            out[blockIdx.x].top_ids[j] = id;
            out[blockIdx.x].top_logprobs[j] = (float)((double)x[id] - lse);
        }
    }

    /* Edits: masked ids to -inf, penalties; one editor per distinct id. */
    const int n_edit = p.n_tokens + p.n_masked;
    const int32_t *eid = ids + p.edits;
    cuda_sample_edit *ed = saved + p.edits;
    if (n_edit > 0) {
        uint32_t *cnt = counts + (size_t)p.counts * vocab;
        for (int j = threadIdx.x; j < n_edit; j += THREADS) {
            const int t = eid[j];
            if (t < 0 || t >= vocab) continue;
            if (j < p.n_prompt)
                atomicOr(&cnt[t], PROMPT_BIT);
            else if (j < p.n_tokens)
                atomicAdd(&cnt[t], 1u);
            else
                atomicOr(&cnt[t], MASK_BIT);
        }
        __syncthreads();
        for (int j = threadIdx.x; j < n_edit; j += THREADS) {
            const int t = eid[j];
            const uint32_t c = t >= 0 && t < vocab ? atomicExch(&cnt[t], 0u) : 0u;
            ed[j].owned = c != 0;
            if (c == 0) continue;
            ed[j].raw = x[t];
            x[t] = edited(x[t], c, p);
        }
        __syncthreads();
    }

    const int token = choose(s, p, x, vocab);

    if (n_edit > 0) {
        for (int j = threadIdx.x; j < n_edit; j += THREADS)
            if (ed[j].owned) x[eid[j]] = ed[j].raw;
        __syncthreads();
    }
    const float xt = x[token];
    int rank = 0;
    each(x, vocab, [&](float xi, int) { rank += xi >= xt; });
    rank = all_int(s, rank, sum_i());
    if (threadIdx.x == 0) {
        out[blockIdx.x].token = token;
        out[blockIdx.x].logprob = (float)((double)xt - lse);
        out[blockIdx.x].rank = rank;
        out[blockIdx.x].n_top = n_top;
    }
}

} // namespace

extern "C" int cuda_sample(float *logits, int vocab, const cuda_sample_row *rows, int n,
                           const int32_t *ids, cuda_sample_edit *saved, uint32_t *counts,
                           cuda_sample_out *out, cudaStream_t stream)
{
    if (n <= 0) return 0;
    sample_kernel<<<n, THREADS, 0, stream>>>(logits, vocab, rows, ids, saved, counts, out);
    return (int)cudaGetLastError();
}

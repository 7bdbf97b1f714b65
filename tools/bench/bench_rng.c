/* Seeded random numbers for reproducible benchmarks (splitmix64, whose
 * published outputs the tests check) and request arrival schedules. */
#include <math.h>

#include "bench.h"

void bench_rng_seed(bench_rng *r, uint64_t seed)
{
    r->state = seed;
}

uint64_t bench_rng_next(bench_rng *r)
{
    uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double bench_rng_uniform(bench_rng *r)
{
    return (double)(bench_rng_next(r) >> 11) * 0x1.0p-53;
}

int64_t bench_rng_int(bench_rng *r, int64_t lo, int64_t hi)
{
    if (hi <= lo) return lo;
    uint64_t span = (uint64_t)(hi - lo) + 1;
    /* Rejection keeps every value equally likely. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % span;
    uint64_t x;
    do
        x = bench_rng_next(r);
    while (x >= limit);
    return lo + (int64_t)(x % span);
}

double bench_rng_exponential(bench_rng *r, double rate)
{
    return -log1p(-bench_rng_uniform(r)) / rate;
}

static double normal(bench_rng *r)
{
    double u1 = bench_rng_uniform(r), u2 = bench_rng_uniform(r);
    return sqrt(-2.0 * log1p(-u1)) * cos(2.0 * M_PI * u2);
}

/* Marsaglia and Tsang (2000); shape 1 is the exponential distribution
 * drawn directly, so a Poisson schedule is exact and cheap. */
double bench_rng_gamma(bench_rng *r, double shape, double scale)
{
    if (shape == 1.0) return scale * -log1p(-bench_rng_uniform(r));
    if (shape < 1.0) {
        double u = bench_rng_uniform(r);
        return bench_rng_gamma(r, shape + 1.0, scale) * pow(1.0 - u, 1.0 / shape);
    }
    double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x = normal(r), v = 1.0 + c * x;
        if (v <= 0.0) continue;
        v = v * v * v;
        double u = bench_rng_uniform(r);
        if (u < 1.0 - 0.0331 * x * x * x * x) return d * v * scale;
        if (log(u) < 0.5 * x * x + d * (1.0 - v + log(v))) return d * v * scale;
    }
}

int bench_arrivals(double rate, double burstiness, uint64_t seed, size_t n, double *arrival_s,
                   cv_error *err)
{
    if (!(burstiness > 0.0) || isinf(burstiness))
        return cv_errorf(err, "burstiness must be a positive number, got %g", burstiness);
    if (isnan(rate)) return cv_errorf(err, "request rate is not a number");
    bool all_at_once = rate <= 0.0 || isinf(rate);
    bench_rng r;
    bench_rng_seed(&r, seed);
    /* Gamma(shape k, scale 1/(rate*k)) has mean 1/rate for every k. */
    double scale = 1.0 / (rate * burstiness), t = 0.0;
    for (size_t i = 0; i < n; i++) {
        arrival_s[i] = all_at_once ? 0.0 : t;
        if (!all_at_once) t += bench_rng_gamma(&r, burstiness, scale);
    }
    return 0;
}

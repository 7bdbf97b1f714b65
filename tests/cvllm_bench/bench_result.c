/* Checks of cvllm-bench's result JSON (contract in bench_result.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "bench_result.h"

double bench_num(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_number(v)) fail_msg("result JSON: '%s' is not a number", key);
    return json_number_value(v);
}

void bench_check_metric(json_t *o, const char *metric)
{
    char k[64];
    double v[4];
    const char *stats[] = {"mean", "median", "p90", "p99"};
    for (int i = 0; i < 4; i++) {
        snprintf(k, sizeof k, "%s_%s_ms", stats[i], metric);
        v[i] = bench_num(o, k);
        if (!(v[i] > 0)) fail_msg("%s = %g is not positive", k, v[i]);
    }
    if (!(v[1] <= v[2] && v[2] <= v[3]))
        fail_msg("%s: median %g, p90 %g, p99 %g not ordered", metric, v[1], v[2], v[3]);
}

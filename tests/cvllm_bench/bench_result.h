/* Checks shared by the tests that read cvllm-bench's --result-file JSON
 * (vLLM's benchmark_serving layout): a failed check fails the running
 * cmocka test with the key it found wrong. */
#ifndef CV_TESTS_BENCH_RESULT_H
#define CV_TESTS_BENCH_RESULT_H

#include <jansson.h>

/* o[key], which must be a number. */
double bench_num(json_t *o, const char *key);

/* mean, median, p90 and p99 of a metric (mean_<metric>_ms, ...): present,
 * positive, and median <= p90 <= p99. */
void bench_check_metric(json_t *o, const char *metric);

#endif

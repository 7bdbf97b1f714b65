/* Monotonic clock readings for latency metrics and benchmarks. */
#ifndef CV_BASE_CLOCK_H
#define CV_BASE_CLOCK_H

#include <stdint.h>

/* Nanoseconds from CLOCK_MONOTONIC. */
uint64_t cv_now_ns(void);

static inline double cv_ns_to_s(uint64_t ns)
{
    return (double)ns * 1e-9;
}

#endif

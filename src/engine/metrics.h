/* Engine metrics: the histograms of PROTOCOL.md's vLLM metrics table with
 * their exact bucket boundaries. The engine thread updates a
 * cv_engine_stats under its stats lock; readers copy it. */
#ifndef CV_ENGINE_METRICS_H
#define CV_ENGINE_METRICS_H

#include "cvllm/engine.h"

void metrics_init(cv_engine_stats *st, int max_model_len);
/* Counts v in the first bucket whose upper bound is >= v (Prometheus "le"). */
void hist_observe(cv_histogram *h, double v);

#endif

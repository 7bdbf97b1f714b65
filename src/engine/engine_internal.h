/* Declarations shared by the engine's files; nothing outside src/engine and
 * tests/engine includes this. */
#ifndef CV_ENGINE_ENGINE_INTERNAL_H
#define CV_ENGINE_ENGINE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "cvllm/engine.h"

#include "runner/sampler.h" /* CV_SAMPLING_EPS */

/* Appends out to q and wakes its waiters; q owns out afterwards. Returns -1
 * (out not taken) only when memory runs out. */
int output_queue_push(cv_output_queue *q, cv_request_output *out);

/* structured_params.c: structured_outputs and the older guided_* fields of
 * a sampling-parameters object (root is a json_t *; vLLM's checks and
 * messages). */
int structured_params_from_json(cv_sampling_params *p, const void *root, cv_error *err);
bool structured_params_is_field(const char *key);

/* Python repr() of a float32 value, for vLLM-worded messages. */
void fmt_pyfloat(char *buf, size_t size, float v);

#endif

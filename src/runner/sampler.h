/* Sampler: one token from one row of logits with vLLM V1's semantics.
 *
 * Order (vLLM V1 Sampler): logprobs of the raw model distribution are taken
 * first; then min_tokens masks the stop tokens (EOS and stop_token_ids);
 * repetition (prompt + output), frequency and presence (output) penalties;
 * greedy = argmax when temperature < 1e-5; otherwise temperature (at least
 * 0.01), min_p, top_k, top_p, and a draw from what remains.
 *
 * Randomness is a counter-based stream: the draw for output token i of a
 * sequence is a hash of (sequence seed, i), so a seeded request gives the
 * same tokens whatever else runs in the batch and after preemption. */
#ifndef CV_RUNNER_SAMPLER_H
#define CV_RUNNER_SAMPLER_H

#include <stdint.h>

#include "cvllm/engine.h"

/* vLLM's _SAMPLING_EPS: temperatures below it mean greedy. */
#define CV_SAMPLING_EPS 1e-5f
/* vLLM's _MAX_TEMP: positive temperatures are raised to at least this. */
#define CV_MIN_TEMPERATURE 1e-2f

typedef struct sampler sampler;

sampler *sampler_create(int vocab_size);
void sampler_destroy(sampler *s);

typedef struct sample_logprobs {
    int32_t token; /* the sampled (or given) token */
    float logprob; /* its raw log-probability */
    int rank;      /* tokens at least as likely, itself included (vLLM) */
    int n_top;
    int32_t top_ids[CV_MAX_LOGPROBS];    /* (n_top) most likely first */
    float top_logprobs[CV_MAX_LOGPROBS]; /* (n_top) */
} sample_logprobs;

typedef struct sample_request {
    const cv_sampling_params *params;
    const float *logits;   /* (vocab) raw model output */
    const int32_t *tokens; /* (n_tokens) prompt then output so far */
    int n_prompt, n_tokens;
    uint64_t seed;           /* this sequence's random stream */
    const int32_t *stop_ids; /* (n_stop_ids) masked while output < min_tokens */
    int n_stop_ids;
    const uint32_t *allowed; /* structured output: bit (id & 31) of word id >> 5 set for
                                the tokens that may come; NULL = all. Applied to the
                                logits first, so logprobs are of the masked
                                distribution (vLLM applies the grammar bitmask to the
                                logits before its sampler). */
} sample_request;

/* Returns the sampled token id; fills lp with its raw logprob and rank and,
 * when n_top > 0, the n_top most likely tokens. */
int32_t sampler_sample(sampler *s, const sample_request *r, int n_top, sample_logprobs *lp);

/* Raw log-softmax of logits at token, its rank and the n_top most likely
 * (prompt logprobs use this alone). */
void sampler_logprobs(sampler *s, const float *logits, int32_t token, int n_top,
                      sample_logprobs *lp);

/* The uniform [0, 1) draw for output token i of the stream seed. */
double sampler_uniform(uint64_t seed, uint64_t i);

#endif

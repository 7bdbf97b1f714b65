/* Sampling on the device (kernels/sample.cu): vLLM V1's sampler as the
 * engine's CPU sampler defines it (src/engine/sampler.h), one thread block
 * per row, so that a step's sampled rows send their chosen token and
 * requested logprobs to the host instead of vocab_size floats each.
 *
 * Per row, in the CPU sampler's order: the raw row's log-softmax (the chosen
 * token's logprob and rank, the top n_top list); min_tokens' masked ids to
 * -inf; repetition (prompt + output), frequency and presence (output)
 * penalties; greedy (first index of the maximum) when temperature < 1e-5,
 * else temperature (at least 0.01), min_p, top_k (ties of the k-th value
 * survive), top_p, and a draw from what remains. The draw uses the CPU
 * sampler's counter-based stream (sampler_uniform(seed, draw)) and its
 * order (token ids ascending without top_k/top_p, else logits descending
 * with ties by id), so a row's token depends on (seed, draw) only and equals
 * the CPU's except where the uniform falls within rounding of a boundary. */
#ifndef CV_BACKEND_CUDA_KERNELS_SAMPLE_H
#define CV_BACKEND_CUDA_KERNELS_SAMPLE_H

#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { CUDA_SAMPLE_MAX_TOP = 20 };

/* One row to sample. Its edit entries are ids[edits .. edits + n_tokens +
 * n_masked): the prompt (n_prompt) then the output ids the penalties count,
 * then the ids held at -inf. */
typedef struct cuda_sample_row {
    float temperature, top_p, min_p;
    float repetition_penalty, frequency_penalty, presence_penalty;
    int32_t top_k; /* <= 0: off */
    int32_t n_top; /* logprobs list length, 0..CUDA_SAMPLE_MAX_TOP */
    uint64_t seed; /* the sequence's random stream */
    uint64_t draw; /* its counter: the output position */
    int32_t row;   /* logits row; rows of one call are distinct */
    int32_t edits; /* first entry in ids / saved */
    int32_t n_prompt, n_tokens, n_masked;
    int32_t counts; /* row of the count scratch when it has entries, else -1 */
} cuda_sample_row;

/* An edit entry's raw logit while the row is edited in place. */
typedef struct cuda_sample_edit {
    float raw;
    int32_t owned; /* this entry is the one that edited (and restores) its id */
} cuda_sample_edit;

typedef struct cuda_sample_out {
    int32_t token;                           /* the chosen id */
    float logprob;                           /* its raw log-softmax value */
    int32_t rank;                            /* raw tokens at least as likely, itself included */
    int32_t n_top;                           /* min(n_top, vocab) */
    int32_t top_ids[CUDA_SAMPLE_MAX_TOP];    /* most likely first, ties by lower id */
    float top_logprobs[CUDA_SAMPLE_MAX_TOP]; /* raw */
} cuda_sample_out;

/* Samples rows[0..n) (device memory) from logits (device, (rows, vocab)
 * fp32): out[i] for rows[i]. ids (device) holds the edit entries, saved
 * (device, one per entry) is scratch, counts (device, (count rows, vocab))
 * must be zero and is left zero. The logits rows are edited during the
 * call and left as they were. Returns a cudaError_t. */
int cuda_sample(float *logits, int vocab, const cuda_sample_row *rows, int n, const int32_t *ids,
                cuda_sample_edit *saved, uint32_t *counts, cuda_sample_out *out,
                cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif

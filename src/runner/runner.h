/* The runner: how a scheduled step runs on a device (ARCHITECTURE.md's
 * runner layer, nano-vllm's model_runner written in C). The engine decides
 * what runs; the runner runs it and hands back token ids. It never sees
 * requests or text, only flat arrays.
 *
 * A step is the engine's flat batch (backend.h's cv_batch) plus, for each
 * logits row, what the engine needs of it (CV_ROW_*): its greedy choice,
 * a token sampled with vLLM's semantics (cv_sample_row), or the row itself.
 * The runner returns the chosen token with its logprobs for every GREEDY and
 * SAMPLE row, whoever chose it: a backend that reduces rows on the device
 * (the GPU's) or, for one that returns every row (the CPU's), the runner's
 * host sampler right after the forward. LOGITS rows (a grammar's mask, the
 * first token of an n > 1 request, prompt logprobs) come back as rows, and
 * the engine samples them with cv_runner_sample.
 *
 * Overlap (vLLM's async_scheduling). With overlap on, a worker thread runs
 * the steps: cv_runner_submit returns at once, so the engine schedules step
 * N+1 and hands out step N's outputs while the device computes: between
 * steps the device waits only for the worker to launch the next. Step N+1
 * may then be submitted before step N's tokens are known: its decode
 * inputs for those sequences, and the last entry of a penalized row's token
 * list, are placeholders (cv_step.fill_*) that the worker sets to the token
 * step N chose for the named row just before it runs step N+1, as vLLM V1's
 * GPU runner fills them on the device. Rows the engine samples itself
 * (LOGITS rows) can't feed a placeholder. Without overlap, cv_runner_wait
 * runs the step on the caller's thread.
 *
 * Thread safety: one thread (the engine's) calls the runner. The KV
 * operations run only while no step is outstanding and fail otherwise; a
 * LoRA load asked for while steps are outstanding is queued and runs before
 * the next step submitted, after those. Ownership: the runner owns the
 * device backend; it borrows the model, which must outlive it, and each
 * submitted step's arrays until cv_runner_wait returns that step. */
#ifndef CV_RUNNER_RUNNER_H
#define CV_RUNNER_RUNNER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/device/device.h"
#include "base/error.h"
#include "model/model.h"
#include "runner/sampler.h"

typedef struct cv_runner cv_runner;

typedef struct cv_runner_options {
    cv_device_options device;
    int n_samplers; /* host sampling threads per sampling site (<= 0: OpenMP's default) */
    bool overlap;   /* a worker thread runs the steps: submit returns at once */
} cv_runner_options;

/* Creates the device backend (device.h) and the host samplers. On failure
 * NULL, err saying why. */
cv_runner *cv_runner_create(const cv_model *model, const cv_runner_options *o, cv_error *err);
/* Waits for the step in flight, if any, and frees everything. */
void cv_runner_destroy(cv_runner *r);

/* "cpu" or "cuda:0". */
const char *cv_runner_device_name(const cv_runner *r);

/* The device backend's KV and LoRA operations (device.h). kv_alloc,
 * kv_copy and lora_init are refused while a step is outstanding;
 * lora_load then is queued: it runs before the next step submitted, so the
 * steps outstanding still see the slot's old adapter, which must stay
 * readable until they are waited for (a backend may read it in place). */
int cv_runner_kv_budget(cv_runner *r, size_t *bytes, cv_error *err);
size_t cv_runner_kv_block_bytes(const cv_runner *r, int block_size);
int cv_runner_kv_alloc(cv_runner *r, int n_blocks, int block_size, cv_error *err);
int cv_runner_kv_copy(cv_runner *r, const int32_t *src, const int32_t *dst, int n, cv_error *err);
bool cv_runner_has_lora(const cv_runner *r);
int cv_runner_lora_init(cv_runner *r, int n_slots, int max_rank, cv_error *err);
int cv_runner_lora_load(cv_runner *r, int slot, const struct cv_lora_adapter *adapter,
                        cv_error *err);

/* One step. The engine fills the inputs and provides the outputs' arrays
 * (n_logits rows each, top_* CV_SAMPLE_MAX_TOP per row); all stay the
 * engine's and must not be touched between submit and wait. */
typedef struct cv_step {
    cv_batch batch;
    const uint8_t *want;         /* (n_logits) CV_ROW_* of each row */
    const cv_sample_row *sample; /* (n_logits) the SAMPLE rows' requests */
    /* Placeholders: *fill_at[i] (an input of batch.token_ids, or an entry of
     * a sample row's tokens) is set to the token the previous step chose
     * for its row fill_row[i], a GREEDY or SAMPLE row. */
    int n_fill;
    int32_t *const *fill_at;
    const int32_t *fill_row;

    float *logits;       /* (n_logits, vocab) out: the LOGITS rows (others unspecified) */
    int32_t *token;      /* (n_logits) out: GREEDY and SAMPLE rows' choice */
    float *logprob;      /* (n_logits) out: its raw logprob */
    int32_t *rank;       /* (n_logits) out: its rank (vLLM's) */
    int32_t *top_ids;    /* (n_logits, CV_SAMPLE_MAX_TOP) out: SAMPLE rows' logprobs list */
    float *top_logprobs; /* (n_logits, CV_SAMPLE_MAX_TOP) out */
    double forward_s;    /* out: seconds the step took on the device, sampling included */
    double device_s;     /* out: of forward_s, the device's own span (0: not timed apart) */
} cv_step;

/* Queues step to run after the steps before it; at most two outstanding
 * (one running, one queued). */
int cv_runner_submit(cv_runner *r, cv_step *step, cv_error *err);
/* Waits for the oldest outstanding step, which must be step, and takes it
 * back. Once a step failed, every later one fails with its error. */
int cv_runner_wait(cv_runner *r, cv_step *step, cv_error *err);
/* Steps submitted and not yet waited for. */
int cv_runner_outstanding(const cv_runner *r);

/* Rows the engine samples on the host (its LOGITS rows), in parallel over
 * the host samplers when there are enough of them to pay for the threads. */
typedef struct cv_runner_draw {
    sample_request req;
    int n_top;          /* logprobs list wanted */
    int32_t token;      /* out */
    sample_logprobs lp; /* out */
} cv_runner_draw;
void cv_runner_sample(cv_runner *r, cv_runner_draw *draws, int n);
/* Raw logprob, rank and top list of token in one row (prompt logprobs). */
void cv_runner_logprobs(cv_runner *r, const float *row, int32_t token, int n_top,
                        sample_logprobs *lp);

#endif

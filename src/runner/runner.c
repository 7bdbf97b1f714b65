/* The runner (contract in runner.h): the device backend behind a queue of
 * at most two steps, an optional worker thread that runs them, and the
 * host samplers. */
#include <limits.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "runner/runner.h"

/* Host samplers of one sampling site: one per OpenMP thread. */
typedef struct sampler_set {
    sampler **s;
    int n;
} sampler_set;

struct cv_runner {
    cv_device_backend *dev;
    int vocab;
    bool overlap;
    /* work reduces rows after a forward (on the worker) while the engine
     * thread samples its LOGITS rows with host: no set is used by two
     * threads at once. */
    sampler_set work, host;

    /* Steps in a ring of two, counted since create: step i is slot[i % 2];
     * submitted >= started >= finished >= waited, submitted - waited <= 2. */
    struct {
        cv_step *step;
        int rc;
        cv_error err;
    } slot[2];
    int64_t submitted, started, finished, waited;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t changed; /* a step was queued or finished, or shutdown */
    bool shutdown;
    /* LoRA loads asked for while a step was outstanding: each runs on the
     * thread that runs steps, before step `before` (the first submitted
     * after it was asked), so that the steps before it still see the slot's
     * old adapter. Guarded by mu. */
    struct pending_load {
        int slot;
        const struct cv_lora_adapter *adapter;
        int64_t before;
    } * loads;
    int n_loads, cap_loads;

    /* Worker only (or the engine thread without overlap). */
    bool failed; /* a step failed: later ones fail with failure */
    cv_error failure;
    /* (cap_rows) reduce_rows' scratch: the host draws, their params, their rows */
    cv_runner_draw *row_draws;
    cv_sampling_params *row_params;
    int *row_of;
    int cap_rows;
    int32_t *last_token; /* (last_n) the previous step's choices, for its successor's fills */
    uint8_t *last_want;  /* (last_n) their CV_ROW_* */
    int last_n, cap_last;
};

static int sampler_set_init(sampler_set *set, int n, int vocab)
{
    set->s = calloc((size_t)n, sizeof(sampler *));
    if (!set->s) return -1;
    for (; set->n < n; set->n++)
        if (!(set->s[set->n] = sampler_create(vocab))) return -1;
    return 0;
}

static void sampler_set_free(sampler_set *set)
{
    for (int i = 0; i < set->n; i++)
        sampler_destroy(set->s[i]);
    free(set->s);
}

/* Threads pay off from this many rows: below it, waking the team and
 * waiting for its last thread costs more than the rows (milliseconds on a
 * host busy with clients). */
enum { PARALLEL_DRAWS = 8 };

static void sample_on(sampler_set *set, cv_runner_draw *draws, int n)
{
#pragma omp parallel for num_threads(set->n) schedule(dynamic, 2) if (n >= PARALLEL_DRAWS)
    for (int i = 0; i < n; i++)
        draws[i].token = sampler_sample(set->s[omp_get_thread_num()], &draws[i].req, draws[i].n_top,
                                        &draws[i].lp);
}

void cv_runner_sample(cv_runner *r, cv_runner_draw *draws, int n)
{
    sample_on(&r->host, draws, n);
}

void cv_runner_logprobs(cv_runner *r, const float *row, int32_t token, int n_top,
                        sample_logprobs *lp)
{
    sampler_logprobs(r->host.s[0], row, token, n_top, lp);
}

/* The sampler's request for a row a backend would have reduced: its
 * cv_sample_row (SAMPLE), or greedy with nothing masked (GREEDY). */
static void row_request(const cv_sample_row *q, bool sample, const float *logits,
                        cv_sampling_params *p, cv_runner_draw *d)
{
    *p = (cv_sampling_params){.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f};
    d->req = (sample_request){.params = p, .logits = logits};
    d->n_top = 0;
    if (!sample) return;
    *p = (cv_sampling_params){
        .temperature = q->temperature,
        .top_p = q->top_p,
        .min_p = q->min_p,
        .top_k = q->top_k,
        .repetition_penalty = q->repetition_penalty,
        .frequency_penalty = q->frequency_penalty,
        .presence_penalty = q->presence_penalty,
        /* The engine passes the masked ids only while they apply. */
        .min_tokens = q->n_masked > 0 ? INT_MAX : 0,
    };
    d->req = (sample_request){
        .params = p,
        .logits = logits,
        .tokens = q->tokens,
        .n_prompt = q->n_prompt,
        /* The draw counter is the output position; the tokens are read
         * only by the penalties, whose rows have all of them. */
        .n_tokens = q->n_prompt + (int)q->draw,
        .seed = q->seed,
        .stop_ids = q->masked,
        .n_stop_ids = q->n_masked,
    };
    d->n_top = q->n_top;
}

/* Reduces on the host the GREEDY and SAMPLE rows of a step whose backend
 * returned every row. */
static int reduce_rows(cv_runner *r, cv_step *st, cv_error *err)
{
    const int rows = st->batch.n_logits;
    int n = 0;
    for (int i = 0; i < rows; i++)
        n += st->want[i] != CV_ROW_LOGITS;
    if (n == 0) return 0;
    if (n > r->cap_rows) {
        cv_runner_draw *d = realloc(r->row_draws, (size_t)n * sizeof(*d));
        if (d) r->row_draws = d;
        cv_sampling_params *p = realloc(r->row_params, (size_t)n * sizeof(*p));
        if (p) r->row_params = p;
        int *o = realloc(r->row_of, (size_t)n * sizeof(int));
        if (o) r->row_of = o;
        if (!d || !p || !o) return cv_errorf(err, "runner: out of memory sampling %d rows", n);
        r->cap_rows = n;
    }
    cv_runner_draw *draws = r->row_draws;
    int *row_of = r->row_of;
    n = 0;
    for (int i = 0; i < rows; i++) {
        if (st->want[i] == CV_ROW_LOGITS) continue;
        row_request(&st->sample[i], st->want[i] == CV_ROW_SAMPLE, st->logits + (size_t)i * r->vocab,
                    &r->row_params[n], &draws[n]);
        row_of[n++] = i;
    }
    sample_on(&r->work, draws, n);
    for (int j = 0; j < n; j++) {
        const int i = row_of[j];
        const sample_logprobs *lp = &draws[j].lp;
        st->token[i] = draws[j].token;
        st->logprob[i] = lp->logprob;
        st->rank[i] = lp->rank;
        memcpy(st->top_ids + (size_t)i * CV_SAMPLE_MAX_TOP, lp->top_ids,
               (size_t)lp->n_top * sizeof(int32_t));
        memcpy(st->top_logprobs + (size_t)i * CV_SAMPLE_MAX_TOP, lp->top_logprobs,
               (size_t)lp->n_top * sizeof(float));
    }
    return 0;
}

/* Sets the placeholders from the previous step's choices. */
static int fill_inputs(cv_runner *r, cv_step *st, cv_error *err)
{
    for (int i = 0; i < st->n_fill; i++) {
        const int row = st->fill_row[i];
        if (row < 0 || row >= r->last_n || r->last_want[row] == CV_ROW_LOGITS)
            return cv_errorf(err,
                             "runner: placeholder %d of the step waits for row %d of the "
                             "previous step, which chose no token there",
                             i, row);
        *st->fill_at[i] = r->last_token[row];
    }
    return 0;
}

/* Keeps a step's choices for the fills of the next. */
static int remember_choices(cv_runner *r, const cv_step *st, cv_error *err)
{
    const int n = st->batch.n_logits;
    if (n > r->cap_last) {
        int32_t *t = realloc(r->last_token, (size_t)n * sizeof(int32_t));
        if (t) r->last_token = t;
        uint8_t *w = realloc(r->last_want, (size_t)n);
        if (w) r->last_want = w;
        if (!t || !w) return cv_errorf(err, "runner: out of memory keeping a step's tokens");
        r->cap_last = n;
    }
    r->last_n = n;
    if (n == 0) return 0; /* a prefill chunk with nothing to sample; no arrays yet */
    memcpy(r->last_token, st->token, (size_t)n * sizeof(int32_t));
    memcpy(r->last_want, st->want, (size_t)n);
    return 0;
}

/* Runs the LoRA loads due before step `index`, outside the lock (a GPU
 * slot load copies megabytes). */
static int run_loads(cv_runner *r, int64_t index, cv_error *err)
{
    pthread_mutex_lock(&r->mu);
    int n_due = 0;
    for (int i = 0; i < r->n_loads; i++)
        n_due += r->loads[i].before <= index;
    struct pending_load *due = n_due ? malloc((size_t)n_due * sizeof(*due)) : NULL;
    if (due) {
        int kept = 0, k = 0;
        for (int i = 0; i < r->n_loads; i++) {
            if (r->loads[i].before <= index)
                due[k++] = r->loads[i];
            else
                r->loads[kept++] = r->loads[i];
        }
        r->n_loads = kept;
    }
    pthread_mutex_unlock(&r->mu);
    if (n_due && !due) return cv_errorf(err, "runner: out of memory running queued LoRA loads");
    int rc = 0;
    for (int i = 0; rc == 0 && i < n_due; i++)
        rc = cv_device_backend_lora_load(r->dev, due[i].slot, due[i].adapter, err);
    free(due);
    return rc;
}

static int run_step(cv_runner *r, cv_step *st, int64_t index, cv_error *err)
{
    if (r->failed) {
        *err = r->failure;
        return -1;
    }
    const uint64_t t0 = cv_now_ns();
    if (run_loads(r, index, err) < 0) {
        r->failed = true;
        r->failure = *err;
        return -1;
    }
    const cv_greedy_rows rows = {.want = st->want,
                                 .token = st->token,
                                 .logprob = st->logprob,
                                 .rank = st->rank,
                                 .sample = st->sample,
                                 .top_ids = st->top_ids,
                                 .top_logprobs = st->top_logprobs};
    int rc = fill_inputs(r, st, err);
    if (rc == 0) rc = cv_device_backend_forward(r->dev, &st->batch, st->logits, &rows, err);
    if (rc == 0) rc = reduce_rows(r, st, err);
    if (rc >= 0) rc = remember_choices(r, st, err);
    st->forward_s = cv_ns_to_s(cv_now_ns() - t0);
    st->device_s = cv_device_backend_last_step_device_s(r->dev);
    if (rc < 0) {
        r->failed = true;
        r->failure = *err;
        return -1;
    }
    return 0;
}

/* The worker: runs the queued steps in order. */
static void *worker_main(void *arg)
{
    cv_runner *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->shutdown && r->started == r->submitted)
            pthread_cond_wait(&r->changed, &r->mu);
        if (r->started == r->submitted) break; /* shut down with nothing queued */
        const int64_t index = r->started++;
        const int k = (int)(index % 2);
        cv_step *st = r->slot[k].step;
        pthread_mutex_unlock(&r->mu);
        cv_error err = {0};
        const int rc = run_step(r, st, index, &err);
        pthread_mutex_lock(&r->mu);
        r->slot[k].rc = rc;
        r->slot[k].err = err;
        r->finished++;
        pthread_cond_broadcast(&r->changed);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

int cv_runner_submit(cv_runner *r, cv_step *step, cv_error *err)
{
    pthread_mutex_lock(&r->mu);
    const bool full = r->submitted - r->waited >= 2;
    if (!full) {
        r->slot[r->submitted % 2].step = step;
        r->submitted++;
        pthread_cond_broadcast(&r->changed);
    }
    pthread_mutex_unlock(&r->mu);
    if (full) return cv_errorf(err, "runner: two steps are outstanding already");
    return 0;
}

int cv_runner_wait(cv_runner *r, cv_step *step, cv_error *err)
{
    pthread_mutex_lock(&r->mu);
    const int k = (int)(r->waited % 2);
    if (r->waited == r->submitted || r->slot[k].step != step) {
        pthread_mutex_unlock(&r->mu);
        return cv_errorf(err, "runner: the step waited for is not the oldest outstanding one");
    }
    if (!r->overlap) {
        /* No worker: the step runs here, now. */
        const int64_t index = r->waited;
        pthread_mutex_unlock(&r->mu);
        const int rc = run_step(r, step, index, err);
        pthread_mutex_lock(&r->mu);
        r->started++;
        r->finished++;
        r->waited++;
        pthread_mutex_unlock(&r->mu);
        return rc;
    }
    while (r->finished <= r->waited)
        pthread_cond_wait(&r->changed, &r->mu);
    const int rc = r->slot[k].rc;
    if (rc < 0) *err = r->slot[k].err;
    r->waited++;
    pthread_mutex_unlock(&r->mu);
    return rc;
}

int cv_runner_outstanding(const cv_runner *r)
{
    cv_runner *m = (cv_runner *)r; /* the lock, not the state, changes */
    pthread_mutex_lock(&m->mu);
    const int n = (int)(r->submitted - r->waited);
    pthread_mutex_unlock(&m->mu);
    return n;
}

/* The device operations need the backend to themselves. */
static int idle_or_error(cv_runner *r, const char *what, cv_error *err)
{
    if (cv_runner_outstanding(r) == 0) return 0;
    return cv_errorf(err, "runner: %s while a step is outstanding", what);
}

cv_runner *cv_runner_create(const cv_model *model, const cv_runner_options *o, cv_error *err)
{
    cv_runner *r = calloc(1, sizeof *r);
    if (!r) {
        cv_errorf(err, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->changed, NULL);
    r->overlap = o->overlap;
    r->vocab = cv_model_get_config(model)->vocab_size;
    r->dev = cv_device_backend_create(model, &o->device, err);
    if (!r->dev) {
        cv_runner_destroy(r);
        return NULL;
    }
    const int n = o->n_samplers > 0 ? o->n_samplers : omp_get_max_threads();
    if (sampler_set_init(&r->work, n, r->vocab) < 0 ||
        sampler_set_init(&r->host, n, r->vocab) < 0) {
        cv_errorf(err, "out of memory creating %d samplers of a %d-token vocabulary", 2 * n,
                  r->vocab);
        cv_runner_destroy(r);
        return NULL;
    }
    if (r->overlap) {
        if (pthread_create(&r->thread, NULL, worker_main, r) != 0) {
            cv_errorf(err, "runner: cannot start its worker thread");
            cv_runner_destroy(r);
            return NULL;
        }
        r->thread_started = true;
    }
    return r;
}

void cv_runner_destroy(cv_runner *r)
{
    if (!r) return;
    if (r->thread_started) {
        pthread_mutex_lock(&r->mu);
        r->shutdown = true;
        pthread_cond_broadcast(&r->changed);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->thread, NULL);
    }
    sampler_set_free(&r->work);
    sampler_set_free(&r->host);
    cv_device_backend_destroy(r->dev);
    free(r->row_draws);
    free(r->row_params);
    free(r->row_of);
    free(r->last_token);
    free(r->last_want);
    free(r->loads);
    pthread_cond_destroy(&r->changed);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

const char *cv_runner_device_name(const cv_runner *r)
{
    return cv_device_backend_name(r->dev);
}

int cv_runner_kv_budget(cv_runner *r, size_t *bytes, cv_error *err)
{
    return cv_device_backend_kv_budget(r->dev, bytes, err);
}

size_t cv_runner_kv_block_bytes(const cv_runner *r, int block_size)
{
    return cv_device_backend_kv_block_bytes(r->dev, block_size);
}

int cv_runner_kv_alloc(cv_runner *r, int n_blocks, int block_size, cv_error *err)
{
    if (idle_or_error(r, "allocating the KV pool", err) < 0) return -1;
    return cv_device_backend_kv_alloc(r->dev, n_blocks, block_size, err);
}

int cv_runner_kv_copy(cv_runner *r, const int32_t *src, const int32_t *dst, int n, cv_error *err)
{
    if (idle_or_error(r, "copying KV blocks", err) < 0) return -1;
    return cv_device_backend_kv_copy(r->dev, src, dst, n, err);
}

bool cv_runner_has_lora(const cv_runner *r)
{
    return cv_device_backend_has_lora(r->dev);
}

int cv_runner_lora_init(cv_runner *r, int n_slots, int max_rank, cv_error *err)
{
    if (idle_or_error(r, "reserving LoRA slots", err) < 0) return -1;
    return cv_device_backend_lora_init(r->dev, n_slots, max_rank, err);
}

int cv_runner_lora_load(cv_runner *r, int slot, const struct cv_lora_adapter *adapter,
                        cv_error *err)
{
    if (!cv_device_backend_has_lora(r->dev))
        return cv_device_backend_lora_load(r->dev, slot, adapter, err); /* its error */
    pthread_mutex_lock(&r->mu);
    if (r->submitted == r->waited && r->n_loads == 0) {
        /* Nothing outstanding: the backend is this thread's now. */
        pthread_mutex_unlock(&r->mu);
        return cv_device_backend_lora_load(r->dev, slot, adapter, err);
    }
    int rc = 0;
    if (r->n_loads == r->cap_loads) {
        const int cap = r->cap_loads ? 2 * r->cap_loads : 8;
        struct pending_load *l = realloc(r->loads, (size_t)cap * sizeof(*l));
        if (l) {
            r->loads = l;
            r->cap_loads = cap;
        } else {
            rc = cv_errorf(err, "runner: out of memory queueing a LoRA load");
        }
    }
    if (rc == 0)
        r->loads[r->n_loads++] =
            (struct pending_load){.slot = slot, .adapter = adapter, .before = r->submitted};
    pthread_mutex_unlock(&r->mu);
    return rc;
}

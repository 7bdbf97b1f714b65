/* The engine's public API and its thread: requests come in through an
 * inbox (any thread), the engine thread admits them, runs steps while
 * anything is active and sleeps otherwise. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/log.h"
#include "engine_internal.h"
#include "engine_state.h"
#include "metrics.h"
#include "stop.h"

void cv_engine_args_default(cv_engine_args *args)
{
    memset(args, 0, sizeof(*args));
    snprintf(args->dtype, sizeof(args->dtype), "auto");
    snprintf(args->device, sizeof(args->device), "auto");
    snprintf(args->kv_cache_dtype, sizeof(args->kv_cache_dtype), "auto");
    args->gpu_memory_utilization = 0.9;
    args->block_size = 16;
    args->max_num_seqs = 256;
    args->enable_prefix_caching = true;
    args->max_loras = 1;
    args->max_lora_rank = 16;
    args->async_scheduling = true; /* vLLM's default since it became stable */
}

/* ---- Request lifecycle (engine thread) -------------------------------- */

enum { PROMPT_LOGPROBS_CHUNK = 64 };

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static void admit(cv_engine *e, request *req)
{
    req->next = e->active;
    e->active = req;
    cv_seq *seq = seq_create(e->next_seq_id++, req->prompt, req->n_prompt);
    if (!seq || sched_add(&e->sched, seq, false) < 0) {
        seq_free(seq);
        engine_count_finished(e, req);
        engine_emit_error(req, "out of memory admitting the request");
        engine_retire(e, req);
        return;
    }
    seq->owner = req;
    seq->lora_id = req->lora_id;
    seq->skip_prefix_cache = req->params.prompt_logprobs >= 0;
    /* Prompt logprobs need a logits row per prompt token: chunks of at most
     * PROMPT_LOGPROBS_CHUNK keep that buffer small (a 152K vocab row is
     * 600 KB). */
    if (seq->skip_prefix_cache) seq->max_chunk = PROMPT_LOGPROBS_CHUNK;
    req->seqs[0].seq = seq;
    for (int k = 0; k < req->n_seqs; k++) {
        seq_state *ss = &req->seqs[k];
        /* vLLM gives parallel sample k the seed seed + k. */
        ss->rng_seed = req->params.has_seed ? req->params.seed + (uint64_t)k
                                            : mix64(e->args.seed ^ mix64(req->id)) + (uint64_t)k;
        tok_stream_init(&ss->detok, e->tok, req->prompt, (size_t)req->n_prompt,
                        req->params.skip_special_tokens);
    }
    pthread_mutex_lock(&e->stats_mu);
    e->stats.prompt_tokens_total += (uint64_t)req->n_prompt;
    pthread_mutex_unlock(&e->stats_mu);
}

void engine_finish_seq(cv_engine *e, request *req, int k, cv_finish_reason reason)
{
    seq_state *ss = &req->seqs[k];
    if (ss->finish != CV_FINISH_NONE) return;
    ss->finish = reason;
    if (ss->seq) sched_remove(&e->sched, ss->seq);
    req->n_finished++;
    req->touched = true;
}

void engine_count_finished(cv_engine *e, request *req)
{
    uint64_t now = cv_now_ns();
    int n_gen = 0;
    for (int k = 0; k < req->n_seqs; k++)
        if (req->seqs[k].seq) n_gen += req->seqs[k].seq->n_tokens - req->seqs[k].seq->n_prompt;
    pthread_mutex_lock(&e->stats_mu);
    cv_engine_stats *st = &e->stats;
    st->requests_finished[req->seqs[0].finish]++;
    hist_observe(&st->e2e_request_latency_s, cv_ns_to_s(now - req->t_arrival_ns));
    hist_observe(&st->request_prompt_tokens, req->n_prompt);
    hist_observe(&st->request_generation_tokens, n_gen);
    hist_observe(&st->request_params_n, req->n_return);
    pthread_mutex_unlock(&e->stats_mu);
}

void engine_retire(cv_engine *e, request *req)
{
    for (request **link = &e->active; *link; link = &(*link)->next) {
        if (*link == req) {
            *link = req->next;
            break;
        }
    }
    request_free(req);
    /* Before n_active drops, so a cv_engine_wait_idle caller sees the
     * blocks of this request already free. */
    engine_update_gauges(e);
    pthread_mutex_lock(&e->mu);
    e->n_active--;
    pthread_cond_broadcast(&e->idle);
    pthread_mutex_unlock(&e->mu);
}

static void abort_request(cv_engine *e, request *req)
{
    for (int k = 0; k < req->n_seqs; k++)
        engine_finish_seq(e, req, k, CV_FINISH_ABORT);
    engine_count_finished(e, req);
    engine_emit(e, req, true);
    engine_retire(e, req);
}

static void fail_all(cv_engine *e, const char *msg)
{
    while (e->active) {
        request *req = e->active;
        for (int k = 0; k < req->n_seqs; k++)
            engine_finish_seq(e, req, k, CV_FINISH_ABORT);
        engine_count_finished(e, req);
        engine_emit_error(req, msg);
        engine_retire(e, req);
    }
}

static void *engine_main(void *arg)
{
    cv_engine *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        while (!e->inbox_head && e->n_aborts == 0 && !e->shutdown && !e->active)
            pthread_cond_wait(&e->wake, &e->mu);
        request *in = e->inbox_head;
        e->inbox_head = e->inbox_tail = NULL;
        uint64_t *aborts = e->aborts;
        int n_aborts = e->n_aborts;
        e->aborts = NULL;
        e->n_aborts = e->cap_aborts = 0;
        bool shutdown = e->shutdown, drain = e->drain;
        pthread_mutex_unlock(&e->mu);

        while (in) {
            request *next = in->next;
            admit(e, in);
            in = next;
        }
        /* Aborting frees requests: none may be in a step still running. */
        bool failed = (n_aborts > 0 || (shutdown && !drain)) && engine_finish_in_flight(e) < 0;
        for (int i = 0; i < n_aborts; i++) {
            for (request *r = e->active; r; r = r->next) {
                if (r->id == aborts[i]) {
                    abort_request(e, r);
                    break;
                }
            }
        }
        free(aborts);
        if (shutdown && !drain)
            while (e->active)
                abort_request(e, e->active);
        if (e->active) {
            if (failed || engine_step(e) < 0) {
                char msg[CV_ERROR_MSG_BYTES + 32];
                snprintf(msg, sizeof(msg), "engine step failed: %s",
                         e->step_err.msg[0] ? e->step_err.msg : "out of memory");
                cv_log_error("%s", msg);
                pthread_mutex_lock(&e->mu);
                e->unhealthy = true;
                pthread_mutex_unlock(&e->mu);
                (void)engine_finish_in_flight(e); /* it fails too, or its outputs go out */
                fail_all(e, msg);
            }
        } else if (shutdown) {
            break;
        }
    }
    return NULL;
}

/* ---- Creation and shutdown -------------------------------------------- */

static void engine_free(cv_engine *e)
{
    /* The runner first: its worker reads the step arrays and the adapters
     * of queued LoRA loads until it stops. */
    cv_runner_destroy(e->runner);
    free(e->jobs);
    free(e->draws);
    for (int i = 0; e->lora && i < 2; i++)
        engine_lora_drop_after(e, &e->steps[i]);
    engine_steps_free(e);
    engine_lora_free(e);
    sched_fini(&e->sched);
    bm_destroy(e->bm);
    if (e->tok) tok_free(e->tok);
    if (e->model) cv_model_free(e->model);
    free(e->aborts);
    so_prefetch_free(e->so_prefetch); /* before the grammars it may be using */
    so_cache_free(e->so_cache);
    so_vocab_free(e->so_vocab);
    pthread_mutex_destroy(&e->mu);
    pthread_mutex_destroy(&e->stats_mu);
    pthread_cond_destroy(&e->wake);
    pthread_cond_destroy(&e->idle);
    free(e);
}

/* The KV dtype the kv_cache_dtype engine argument names; -1 for "auto"
 * (the backend's default) and for a name that is none of these, which
 * check_args refuses. */
static int kv_dtype_from_arg(const char *name)
{
    if (!strcmp(name, "float32")) return CV_DTYPE_F32;
    if (!strcmp(name, "float16")) return CV_DTYPE_F16;
    if (!strcmp(name, "bfloat16")) return CV_DTYPE_BF16;
    return -1;
}

static int check_args(const cv_engine_args *a, cv_error *err)
{
    static const char *dtypes[] = {"", "auto", "float32", "float16", "bfloat16", "float", "half"};
    bool ok = false;
    for (size_t i = 0; i < sizeof(dtypes) / sizeof(dtypes[0]); i++)
        ok |= !strcmp(a->dtype, dtypes[i]);
    if (!ok) return cv_errorf(err, "engine argument 'dtype': unknown dtype '%s'", a->dtype);
    if (strcmp(a->kv_cache_dtype, "auto") && kv_dtype_from_arg(a->kv_cache_dtype) < 0)
        return cv_errorf(err,
                         "engine argument 'kv_cache_dtype': unknown dtype '%s' (auto, bfloat16, "
                         "float16, float32)",
                         a->kv_cache_dtype);
    if (!cv_engine_device_name_valid(a->device))
        return cv_errorf(err, "engine argument 'device': unknown device '%s' (auto, cpu, cuda)",
                         a->device);
    if (!(a->gpu_memory_utilization > 0 && a->gpu_memory_utilization <= 1))
        return cv_errorf(err, "engine argument 'gpu_memory_utilization' must be in (0, 1], got %g",
                         a->gpu_memory_utilization);
    if (a->block_size < 1 || a->block_size > 1024)
        return cv_errorf(err, "engine argument 'block_size' must be in [1, 1024], got %d",
                         a->block_size);
    if (a->max_num_seqs < 1)
        return cv_errorf(err, "engine argument 'max_num_seqs' must be at least 1, got %d",
                         a->max_num_seqs);
    if (a->max_num_batched_tokens < 0)
        return cv_errorf(err, "engine argument 'max_num_batched_tokens' must be positive, got %d",
                         a->max_num_batched_tokens);
    if (a->max_model_len < 0)
        return cv_errorf(err, "engine argument 'max_model_len' must be positive, got %d",
                         a->max_model_len);
    if (a->enable_lora && (a->max_loras < 1 || a->max_loras > 64))
        return cv_errorf(err, "engine argument 'max_loras' must be in [1, 64], got %d",
                         a->max_loras);
    if (a->enable_lora && a->max_lora_rank < 1)
        return cv_errorf(err, "engine argument 'max_lora_rank' must be at least 1, got %d",
                         a->max_lora_rank);
    if (a->enable_lora && a->max_cpu_loras && a->max_cpu_loras < a->max_loras)
        return cv_errorf(err, "max_cpu_loras (%d) must be >= max_loras (%d)", a->max_cpu_loras,
                         a->max_loras);
    if (a->max_queued_requests < 0)
        return cv_errorf(err, "engine argument 'max_queued_requests' must be positive, got %d",
                         a->max_queued_requests);
    return 0;
}

static int size_kv_pool(cv_engine *e, cv_error *err)
{
    size_t block_bytes = cv_runner_kv_block_bytes(e->runner, e->block_size);
    size_t budget = e->args.kv_cache_bytes;
    if (!budget && cv_runner_kv_budget(e->runner, &budget, err) < 0) return -1;
    /* A tiny model on a large GPU could count more blocks than an int. */
    const size_t fit =
        budget / block_bytes < (size_t)INT_MAX / 2 ? budget / block_bytes : (size_t)INT_MAX / 2;
    e->n_blocks = e->args.kv_blocks > 0 ? e->args.kv_blocks : (int)fit;
    long capacity = (long)e->n_blocks * e->block_size;
    if (capacity < e->max_model_len)
        return cv_errorf(err,
                         "The model's max seq len (%d) is larger than the maximum number of "
                         "tokens that can be stored in KV cache (%ld). Try increasing "
                         "kv_cache_bytes or decreasing max_model_len when initializing the "
                         "engine.",
                         e->max_model_len, capacity);
    return cv_runner_kv_alloc(e->runner, e->n_blocks, e->block_size, err);
}

/* The weight dtype the dtype engine argument asks for ("auto" and "": the
 * checkpoint's own, as vLLM). */
static cv_dtype dtype_from_arg(const char *name, cv_dtype stored)
{
    if (!name[0] || !strcmp(name, "auto")) return stored;
    if (!strcmp(name, "float32") || !strcmp(name, "float")) return CV_DTYPE_F32;
    if (!strcmp(name, "float16") || !strcmp(name, "half")) return CV_DTYPE_F16;
    return CV_DTYPE_BF16; /* "bfloat16": check_args admits nothing else */
}

static int engine_init(cv_engine *e, const cv_engine_args *a, cv_error *err)
{
    const uint64_t t_load = cv_now_ns();
    e->model = cv_model_load(a->model, err);
    if (!e->model) return -1;
    const uint64_t t_tok = cv_now_ns();
    const cv_model_config *cfg = cv_model_get_config(e->model);
    e->tok = tok_load(a->tokenizer[0] ? a->tokenizer : a->model, err);
    if (!e->tok) return -1;
    e->vocab = cfg->vocab_size;
    e->max_model_len = a->max_model_len ? a->max_model_len : cfg->max_position_embeddings;
    if (e->max_model_len > cfg->max_position_embeddings)
        return cv_errorf(err,
                         "User-specified max_model_len (%d) is greater than the derived "
                         "max_model_len (max_position_embeddings=%d in %s/config.json).",
                         e->max_model_len, cfg->max_position_embeddings, a->model);
    int max_batched = a->max_num_batched_tokens
                          ? a->max_num_batched_tokens
                          : (e->max_model_len > 2048 ? e->max_model_len : 2048);
    e->block_size = a->block_size;
    /* Back pressure (ARCHITECTURE.md): a bounded number of requests in
     * flight, so a flood of clients gets 503s instead of unbounded memory. */
    e->max_active = a->max_queued_requests
                        ? a->max_queued_requests
                        : (16 * a->max_num_seqs > 4096 ? 16 * a->max_num_seqs : 4096);
    e->building = &e->steps[0];
    const cv_runner_options ro = {
        .n_samplers = a->n_threads,
        .overlap = e->args.async_scheduling,
        .device = {
            .device = a->device,
            .matrix_dtype = dtype_from_arg(a->dtype, cfg->dtype),
            .n_threads = a->n_threads,
            .cpu_kv_bytes = (size_t)1 << 30,
            .gpu_memory_share = a->gpu_memory_utilization,
            .max_step_tokens = max_batched,
            .max_step_logits = a->max_num_seqs < max_batched ? a->max_num_seqs : max_batched,
            .max_model_len = e->max_model_len,
            .kv_dtype = kv_dtype_from_arg(a->kv_cache_dtype),
            .fp32_activations = a->fp32_activations,
            .enforce_eager = a->enforce_eager,
        }};
    const uint64_t t_backend = cv_now_ns();
    e->runner = cv_runner_create(e->model, &ro, err);
    if (!e->runner) return -1;
    /* LoRA slots before the KV pool: on a GPU the slot pool comes out of
     * the memory the pool is sized from, not after it. */
    if (engine_lora_init(e, a, err) < 0) return -1;
    const uint64_t t_kv = cv_now_ns();
    if (size_kv_pool(e, err) < 0) return -1;
    /* Where start-up time goes (a 16 GB model on a GPU must be ready in
     * seconds): one line per phase. */
    const uint64_t t_done = cv_now_ns();
    cv_log_info("engine: %s: model mapped in %.2f s, tokenizer %.2f s, backend %s created in "
                "%.2f s, KV pool of %d blocks x %d tokens (%.2f GiB) in %.2f s",
                a->model, cv_ns_to_s(t_tok - t_load), cv_ns_to_s(t_backend - t_tok),
                cv_runner_device_name(e->runner), cv_ns_to_s(t_kv - t_backend), e->n_blocks,
                e->block_size,
                (double)e->n_blocks * (double)cv_runner_kv_block_bytes(e->runner, e->block_size) /
                    (double)(1u << 30),
                cv_ns_to_s(t_done - t_kv));
    e->bm = bm_create(e->n_blocks, e->block_size, a->enable_prefix_caching);
    if (!e->bm || sched_init(&e->sched, e->bm, a->max_num_seqs, max_batched) < 0)
        return cv_errorf(err, "out of memory creating the engine (%d KV blocks)", e->n_blocks);
    for (int i = 0; i < cfg->n_eos_token_ids; i++)
        e->eos_ids[e->n_eos++] = cfg->eos_token_ids[i];
    int teos = tok_eos_id(e->tok);
    bool have = false;
    for (int i = 0; i < e->n_eos; i++)
        have |= e->eos_ids[i] == teos;
    if (teos >= 0 && !have) e->eos_ids[e->n_eos++] = teos;
    metrics_init(&e->stats, e->max_model_len);
    e->sched.max_loras = e->stats.max_lora = e->lora ? a->max_loras : 0;
    e->stats.kv_blocks_total = e->n_blocks;
    e->stats.kv_blocks_free = e->n_blocks;
    return 0;
}

cv_engine *cv_engine_create(const cv_engine_args *args, cv_error *err)
{
    if (check_args(args, err) < 0) return NULL;
    cv_engine *e = calloc(1, sizeof(*e));
    if (!e) {
        cv_errorf(err, "out of memory creating the engine");
        return NULL;
    }
    e->args = *args;
    /* Read by engine_init only: the caller's arrays need not outlive it. */
    e->args.lora_names = e->args.lora_paths = NULL;
    e->args.n_lora_modules = 0;
    e->next_request_id = 1;
    e->next_seq_id = 1;
    pthread_mutex_init(&e->mu, NULL);
    pthread_mutex_init(&e->stats_mu, NULL);
    pthread_cond_init(&e->wake, NULL);
    pthread_cond_init(&e->idle, NULL);
    if (engine_init(e, args, err) < 0) {
        engine_free(e);
        return NULL;
    }
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        cv_errorf(err, "cannot start the engine thread");
        engine_free(e);
        return NULL;
    }
    e->thread_started = true;
    cv_log_verbose("engine: %s on %s, %d KV blocks of %d tokens, max_model_len %d", args->model,
                   cv_runner_device_name(e->runner), e->n_blocks, e->block_size, e->max_model_len);
    return e;
}

void cv_engine_shutdown(cv_engine *e, bool drain)
{
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    e->shutdown = true;
    e->drain = drain;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->mu);
    if (e->thread_started) pthread_join(e->thread, NULL);
    engine_free(e);
}

/* ---- Requests (any thread) -------------------------------------------- */

static int tokenize_prompt(cv_engine *e, const cv_request_desc *d, request *r, cv_error *err)
{
    if (d->prompt) {
        size_t n = 0;
        int32_t *ids = NULL;
        if (tok_encode(e->tok, d->prompt, d->prompt_len, true, &ids, &n, err) < 0) return -1;
        r->prompt = ids;
        r->n_prompt = (int)n;
    } else {
        r->prompt = malloc((d->n_prompt_ids ? d->n_prompt_ids : 1) * sizeof(int32_t));
        if (!r->prompt) return cv_errorf(err, "out of memory copying the prompt");
        for (size_t i = 0; i < d->n_prompt_ids; i++) {
            if (d->prompt_ids[i] < 0 || d->prompt_ids[i] >= e->vocab)
                return cv_errorf(err, "Token id %d is out of vocabulary", d->prompt_ids[i]);
            r->prompt[i] = d->prompt_ids[i];
        }
        r->n_prompt = (int)d->n_prompt_ids;
    }
    if (r->n_prompt == 0) {
        /* An empty prompt means BOS alone; without a BOS there is nothing to run. */
        int bos = tok_bos_id(e->tok);
        if (bos < 0) return cv_errorf(err, "The decoder prompt cannot be empty");
        free(r->prompt);
        r->prompt = malloc(sizeof(int32_t));
        if (!r->prompt) return cv_errorf(err, "out of memory copying the prompt");
        r->prompt[0] = bos;
        r->n_prompt = 1;
    }
    if (r->n_prompt > e->max_model_len)
        return cv_errorf(err,
                         "The decoder prompt (length %d) is longer than the maximum model "
                         "length of %d.",
                         r->n_prompt, e->max_model_len);
    return 0;
}

static int setup_stops(cv_engine *e, request *r)
{
    const cv_sampling_params *p = &r->params;
    int cap = e->n_eos + p->n_stop_token_ids + 1;
    r->stop_ids = malloc((size_t)cap * sizeof(int32_t));
    r->mask_ids = malloc((size_t)cap * sizeof(int32_t));
    if (!r->stop_ids || !r->mask_ids) return -1;
    for (int i = 0; i < e->n_eos; i++) {
        r->mask_ids[r->n_mask_ids++] = e->eos_ids[i];
        if (!p->ignore_eos) r->stop_ids[r->n_stop_ids++] = e->eos_ids[i];
    }
    for (int i = 0; i < p->n_stop_token_ids; i++) {
        r->mask_ids[r->n_mask_ids++] = p->stop_token_ids[i];
        r->stop_ids[r->n_stop_ids++] = p->stop_token_ids[i];
    }
    r->holdback_chars = stop_holdback_chars(p->stop, p->n_stop, p->include_stop_str_in_output);
    return 0;
}

/* Compiles (or finds) the request's structured-output constraint and starts
 * every sequence at its initial state. The vocabulary's byte strings are
 * made once, with the first constrained request. */
static int attach_constraint(cv_engine *e, request *r, cv_error *err)
{
    pthread_mutex_lock(&e->mu);
    so_cache *cache = e->so_cache;
    pthread_mutex_unlock(&e->mu);
    if (!cache) {
        /* Built outside the engine's lock (a 150k vocab takes ~1 s); a
         * racing request's copy is dropped. */
        so_vocab *v = so_vocab_create(e->tok, e->eos_ids, e->n_eos, err);
        so_cache *c = v ? so_cache_create(v) : NULL;
        if (!c) {
            so_vocab_free(v);
            return v ? cv_errorf(err, "out of memory for structured outputs") : -1;
        }
        pthread_mutex_lock(&e->mu);
        if (!e->so_cache) {
            e->so_vocab = v;
            e->so_cache = c;
            v = NULL;
            c = NULL;
        }
        cache = e->so_cache;
        pthread_mutex_unlock(&e->mu);
        so_cache_free(c);
        so_vocab_free(v);
    }
    const cv_sampling_params *p = &r->params;
    const so_kind kind = (so_kind)(p->structured_kind - CV_STRUCTURED_CHOICE);
    r->grammar = so_cache_get(cache, kind, p->structured_text ? p->structured_text : "", err);
    if (!r->grammar) return cv_error_prefix(err, "structured_outputs '%s'", so_kind_name(kind));
    so_state start = so_start(r->grammar);
    if (so_done(r->grammar, start) && !so_accepting(r->grammar, start))
        return cv_errorf(err,
                         "structured_outputs '%s': no token of this model's vocabulary can "
                         "begin an output the constraint allows",
                         so_kind_name(kind));
    for (int k = 0; k < r->n_seqs; k++)
        r->seqs[k].so = start;
    return 0;
}

static request *make_request(cv_engine *e, const cv_request_desc *d, cv_error *err)
{
    if (!d->params || !d->sink) {
        cv_errorf(err, "request needs sampling params and an output queue");
        return NULL;
    }
    if (cv_sampling_params_validate(d->params, err) < 0) return NULL;
    /* One request's sequences are bounded like the requests in flight: a
     * client asking for n = 10^8 would otherwise take the memory and the
     * steps of everyone else. */
    /* validated: best_of is 0 (= n) or at least n */
    const int n_seqs = d->params->best_of > 0 ? d->params->best_of : d->params->n;
    if (n_seqs > e->max_active) {
        cv_errorf(err, "%s %d is more sequences than this engine runs for one request (%d)",
                  d->params->best_of > d->params->n ? "best_of" : "n", n_seqs, e->max_active);
        return NULL;
    }
    request *r = calloc(1, sizeof(*r));
    if (!r || cv_sampling_params_copy(&r->params, d->params) < 0) {
        free(r);
        cv_errorf(err, "out of memory copying the request");
        return NULL;
    }
    const cv_sampling_params *p = &r->params;
    r->n_return = p->n;
    r->n_seqs = n_seqs;
    if (d->stream && r->n_seqs != r->n_return) {
        cv_errorf(err, "best_of must equal n to use output_kind=DELTA");
        request_free(r);
        return NULL;
    }
    r->sink = d->sink;
    r->user_data = d->user_data;
    r->stream = d->stream;
    r->seqs = calloc((size_t)r->n_seqs, sizeof(seq_state));
    if (!r->seqs || tokenize_prompt(e, d, r, err) < 0 || setup_stops(e, r) < 0) {
        if (!err || !err->msg[0]) cv_errorf(err, "out of memory copying the request");
        request_free(r);
        return NULL;
    }
    int room = e->max_model_len - r->n_prompt;
    r->max_tokens = p->max_tokens == -1 || p->max_tokens > room ? room : p->max_tokens;
    if (r->max_tokens < 1)
        r->max_tokens = 1; /* a prompt of exactly max_model_len still yields one token */
    r->forked = r->n_seqs == 1;
    if (p->prompt_logprobs >= 0) {
        r->prompt_lps = calloc((size_t)r->n_prompt, sizeof(cv_token_logprobs));
        if (!r->prompt_lps) {
            cv_errorf(err, "out of memory for prompt logprobs");
            request_free(r);
            return NULL;
        }
        r->prompt_lps_done = 1;
    }
    if (engine_lora_resolve(e, p->lora_name, &r->lora_id, err) < 0 ||
        (p->structured_kind != CV_STRUCTURED_NONE && attach_constraint(e, r, err) < 0)) {
        request_free(r);
        return NULL;
    }
    r->t_arrival_ns = cv_now_ns();
    return r;
}

uint64_t cv_engine_add_request(cv_engine *e, const cv_request_desc *d, cv_error *err)
{
    if (err) err->msg[0] = '\0';
    request *r = make_request(e, d, err);
    if (!r) return 0;
    pthread_mutex_lock(&e->mu);
    if (e->shutdown || e->n_active >= e->max_active) {
        bool full = !e->shutdown;
        int n_active = e->n_active;
        pthread_mutex_unlock(&e->mu);
        request_free(r);
        if (full)
            cv_errorf(err,
                      "the engine's request queue is full (%d requests in flight); retry later",
                      n_active);
        else
            cv_errorf(err, "the engine is shutting down");
        if (err) err->cls = CV_ERR_UNAVAILABLE;
        return 0;
    }
    r->id = e->next_request_id++;
    if (e->inbox_tail)
        e->inbox_tail->next = r;
    else
        e->inbox_head = r;
    e->inbox_tail = r;
    e->n_active++;
    uint64_t id = r->id;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->mu);
    return id;
}

void cv_engine_abort(cv_engine *e, uint64_t request_id)
{
    pthread_mutex_lock(&e->mu);
    if (e->n_aborts == e->cap_aborts) {
        int cap = e->cap_aborts ? 2 * e->cap_aborts : 16;
        uint64_t *a = realloc(e->aborts, (size_t)cap * sizeof(uint64_t));
        if (!a) {
            pthread_mutex_unlock(&e->mu);
            cv_log_error("engine: out of memory queueing abort of request %llu",
                         (unsigned long long)request_id);
            return;
        }
        e->aborts = a;
        e->cap_aborts = cap;
    }
    e->aborts[e->n_aborts++] = request_id;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->mu);
}

bool cv_engine_is_healthy(cv_engine *e)
{
    pthread_mutex_lock(&e->mu);
    bool ok = !e->unhealthy;
    pthread_mutex_unlock(&e->mu);
    return ok;
}

void cv_engine_wait_idle(cv_engine *e)
{
    pthread_mutex_lock(&e->mu);
    while (e->n_active > 0)
        pthread_cond_wait(&e->idle, &e->mu);
    pthread_mutex_unlock(&e->mu);
}

void cv_engine_get_stats(cv_engine *e, cv_engine_stats *stats)
{
    pthread_mutex_lock(&e->stats_mu);
    *stats = e->stats;
    pthread_mutex_unlock(&e->stats_mu);
}

int cv_engine_vocab_size(const cv_engine *e)
{
    return e->vocab;
}

const cv_tokenizer *cv_engine_tokenizer(const cv_engine *e)
{
    return e->tok;
}

int cv_engine_max_model_len(const cv_engine *e)
{
    return e->max_model_len;
}

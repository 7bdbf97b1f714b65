/* Sends the benchmark's requests and records when each response arrives.
 *
 * The calling thread is the scheduler: it waits for each request's arrival
 * time and for a free concurrency slot, then issues the request. Triton
 * gRPC requests share one ModelStreamInfer stream whose responses a
 * receiver thread matches to requests by id; each HTTP request (Triton
 * generate_stream or OpenAI completions) runs in its own thread, as each
 * holds one streaming connection. In-process requests go to the engine
 * with one output queue per phase, drained by a receiver thread (as the
 * server's output thread drains its queue); each output is timed when the
 * receiver pops it. Completion frees the slot. */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "bench.h"
#include "client.h"
#include "cvllm/engine.h"

typedef struct phase {
    const bench_args *a;
    const cv_tokenizer *tok;
    const bench_dataset *d;
    bench_record *recs;
    const double *arrival_s;
    size_t n;
    const char *label; /* "warmup" or "benchmark", for the progress bar */
    char prefix;       /* request ids are prefix + index */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t in_flight, done;
    cvc_stream *stream;  /* gRPC only */
    cv_error stream_err; /* how the gRPC stream failed, "" if it did not */
    char http_url[512];  /* HTTP only */
    cv_engine *engine;   /* inprocess only */
    cv_output_queue *q;  /* inprocess only: every request's outputs */
    bool issuing_done;   /* inprocess: the scheduler issued all it will */
} phase;

static void progress(phase *p)
{
    if (!p->a->progress || !isatty(2)) return;
    enum { WIDTH = 40 };
    size_t fill = p->n ? p->done * WIDTH / p->n : WIDTH;
    char bar[WIDTH + 1];
    for (size_t i = 0; i < WIDTH; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[WIDTH] = '\0';
    fprintf(stderr, "\r%-9s [%s] %zu/%zu", p->label, bar, p->done, p->n);
    if (p->done == p->n) fputc('\n', stderr);
}

static int add_chunk(bench_record *r, uint64_t t)
{
    if (r->n_chunks == r->chunk_cap) {
        size_t cap = r->chunk_cap ? 2 * r->chunk_cap : 64;
        uint64_t *c = realloc(r->chunk_ns, cap * sizeof *c);
        if (!c) return -1;
        r->chunk_ns = c;
        r->chunk_cap = cap;
    }
    r->chunk_ns[r->n_chunks++] = t;
    return 0;
}

static int add_text(bench_record *r, const char *s, size_t n)
{
    char *t = realloc(r->text, r->text_len + n + 1);
    if (!t) return -1;
    memcpy(t + r->text_len, s, n);
    r->text_len += n;
    t[r->text_len] = '\0';
    r->text = t;
    return 0;
}

/* One streamed piece of a request: text (may be empty), the server's token
 * count for it (-1 when not sent). Called with p->mu held. */
static void record_piece(bench_record *r, const char *text, size_t len, int64_t n_out, int64_t n_in,
                         uint64_t t)
{
    if (n_in >= 0) r->input_tokens = n_in;
    if (n_out >= 0) {
        if (!r->server_counted_output) r->output_tokens = 0;
        r->server_counted_output = true;
        r->output_tokens += n_out;
    }
    bool oom = (len && add_text(r, text, len)) || ((len || n_out > 0) && add_chunk(r, t));
    if (oom && !r->error) r->error = strdup("out of memory recording the response");
}

static void set_error(bench_record *r, const char *msg)
{
    if (!r->error) r->error = strdup(msg);
}

/* Marks r finished (p->mu held): counts tokens the server did not, frees
 * the slot. */
static void finish_locked(phase *p, bench_record *r, uint64_t t)
{
    r->end_ns = t;
    r->success = r->error == NULL;
    if (!r->server_counted_output && p->tok && r->text_len) {
        int32_t *ids;
        size_t n_ids;
        cv_error err;
        if (tok_encode(p->tok, r->text, r->text_len, false, &ids, &n_ids, &err) == 0) {
            r->output_tokens = (int64_t)n_ids;
            free(ids);
        }
    }
    p->in_flight--;
    p->done++;
    progress(p);
    pthread_cond_broadcast(&p->cv);
}

static void init_record(phase *p, size_t i)
{
    bench_record *r = &p->recs[i];
    memset(r, 0, sizeof *r);
    snprintf(r->id, sizeof r->id, "%c%zu", p->prefix, i);
    r->prompt_len = p->d->items[i].prompt_len;
    r->expected_output_len = p->d->items[i].output_len;
    r->input_tokens = r->prompt_len;
}

/* ---- Triton gRPC --------------------------------------------------------- */

static bench_record *record_by_id(phase *p, const char *id)
{
    if (id[0] != p->prefix) return NULL;
    char *end;
    unsigned long i = strtoul(id + 1, &end, 10);
    if (!id[1] || *end || i >= p->n) return NULL;
    return &p->recs[i];
}

static void fail_unfinished(phase *p, const char *msg)
{
    uint64_t t = cv_now_ns();
    for (size_t i = 0; i < p->n; i++) {
        bench_record *r = &p->recs[i];
        if (r->start_ns && !r->end_ns) {
            set_error(r, msg);
            finish_locked(p, r, t);
        }
    }
}

static void *grpc_receiver(void *arg)
{
    phase *p = arg;
    for (;;) {
        cvc_response res;
        cv_error err;
        cvc_recv_status rs = cvc_stream_recv(p->stream, -1, &res, &err);
        if (rs == CVC_RECV_TIMEOUT) continue;
        pthread_mutex_lock(&p->mu);
        if (rs != CVC_RECV_RESPONSE) {
            if (rs == CVC_RECV_ERROR) p->stream_err = err;
            fail_unfinished(p, rs == CVC_RECV_END ? "stream ended before the final response"
                                                  : err.msg);
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        bench_record *r = record_by_id(p, res.id);
        if (r && !r->end_ns) {
            if (res.error_message) set_error(r, res.error_message);
            for (size_t i = 0; i < res.n_text; i++)
                record_piece(r, res.text[i], res.text_len[i], i == 0 ? res.num_output_tokens : -1,
                             res.num_input_tokens, res.arrival_ns);
            if (res.n_text == 0)
                record_piece(r, "", 0, res.num_output_tokens, res.num_input_tokens, res.arrival_ns);
            if (res.final || res.error_message) finish_locked(p, r, res.arrival_ns);
        }
        pthread_mutex_unlock(&p->mu);
        cvc_response_free(&res);
    }
}

static char *sampling_json(const bench_args *a, int max_tokens)
{
    json_t *j = json_pack("{s:i, s:f, s:b}", "max_tokens", max_tokens, "temperature", 0.0,
                          "ignore_eos", a->ignore_eos);
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    return s;
}

static int grpc_issue(phase *p, size_t i, cv_error *err)
{
    bench_record *r = &p->recs[i];
    char *sp = sampling_json(p->a, r->expected_output_len);
    if (!sp) return cv_errorf(err, "out of memory building request %s", r->id);
    cvc_request req;
    cvc_request_init(&req);
    req.model_name = p->a->model;
    req.id = r->id;
    req.text_input = p->d->items[i].text;
    req.text_input_len = strlen(req.text_input);
    req.stream = 1;
    req.exclude_input_in_output = 1;
    req.sampling_parameters = sp;
    req.return_num_input_tokens = true;
    req.return_num_output_tokens = true;
    int rc = cvc_stream_send(p->stream, &req, err);
    free(sp);
    return rc;
}

/* ---- in process (cv_engine) -------------------------------------------- */

/* The same sampling parameters as the gRPC request's, through the parser
 * the server uses for them. */
static int inproc_issue(phase *p, size_t i, cv_error *err)
{
    bench_record *r = &p->recs[i];
    char *sp = sampling_json(p->a, r->expected_output_len);
    if (!sp) return cv_errorf(err, "out of memory building request %s", r->id);
    cv_sampling_params params;
    cv_sampling_params_default(&params);
    int rc = cv_sampling_params_from_json(&params, sp, strlen(sp), err) ||
             cv_sampling_params_validate(&params, err);
    free(sp);
    if (rc == 0) {
        const char *text = p->d->items[i].text;
        cv_request_desc desc = {.prompt = text,
                                .prompt_len = strlen(text),
                                .params = &params,
                                .stream = true,
                                .sink = p->q,
                                .user_data = r};
        rc = cv_engine_add_request(p->engine, &desc, err) ? 0 : -1;
    }
    cv_sampling_params_free(&params);
    return rc;
}

static void *inproc_receiver(void *arg)
{
    phase *p = arg;
    for (;;) {
        /* The timeout only bounds how late the end is noticed: an output
         * wakes the wait at once. */
        cv_request_output *out = cv_output_queue_wait(p->q, 20);
        uint64_t t = cv_now_ns();
        pthread_mutex_lock(&p->mu);
        bench_record *r = out ? out->user_data : NULL;
        if (r && !r->end_ns) {
            if (out->error) set_error(r, out->error);
            for (int s = 0; s < out->n_seqs; s++)
                record_piece(r, out->seqs[s].text, out->seqs[s].text_len, out->seqs[s].n_tokens,
                             out->n_prompt_tokens, t);
            if (out->finished || out->error) finish_locked(p, r, t);
        }
        bool end = p->issuing_done && p->in_flight == 0;
        pthread_mutex_unlock(&p->mu);
        if (out) cv_request_output_free(out);
        if (end) return NULL;
    }
}

/* ---- HTTP (Triton generate_stream, OpenAI completions) ------------------- */

typedef struct http_job {
    phase *p;
    size_t i;
    pthread_t thread;
    bool started;
} http_job;

static int on_http_event(void *user, const char *data, size_t len, uint64_t t)
{
    http_job *job = user;
    phase *p = job->p;
    bench_record *r = &p->recs[job->i];
    if (len == 6 && !memcmp(data, "[DONE]", 6)) return 0; /* OpenAI's end marker */
    json_error_t jerr;
    json_t *j = json_loadb(data, len, 0, &jerr);
    pthread_mutex_lock(&p->mu);
    if (!j) {
        char msg[256];
        snprintf(msg, sizeof msg, "malformed event from the server: %s", jerr.text);
        set_error(r, msg);
    } else if (json_is_string(json_object_get(j, "error"))) {
        set_error(r, json_string_value(json_object_get(j, "error")));
    } else if (p->a->backend == BENCH_TRITON_HTTP) {
        json_t *text = json_object_get(j, "text_output");
        json_t *n_out = json_object_get(j, "num_output_tokens");
        json_t *n_in = json_object_get(j, "num_input_tokens");
        record_piece(r, json_string_value(text) ? json_string_value(text) : "",
                     json_string_length(text),
                     json_is_integer(n_out) ? json_integer_value(n_out) : -1,
                     json_is_integer(n_in) ? json_integer_value(n_in) : -1, t);
    } else {
        json_t *text = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text");
        json_t *usage = json_object_get(j, "usage");
        record_piece(r, json_string_value(text) ? json_string_value(text) : "",
                     json_string_length(text), -1, -1, t);
        /* The usage chunk (stream_options.include_usage) carries the counts. */
        if (json_is_object(usage)) {
            json_t *pt = json_object_get(usage, "prompt_tokens");
            json_t *ct = json_object_get(usage, "completion_tokens");
            if (json_is_integer(pt)) r->input_tokens = json_integer_value(pt);
            if (json_is_integer(ct)) {
                r->output_tokens = json_integer_value(ct);
                r->server_counted_output = true;
            }
        }
    }
    pthread_mutex_unlock(&p->mu);
    json_decref(j);
    return 0;
}

static char *http_body(const phase *p, size_t i)
{
    const bench_args *a = p->a;
    const bench_prompt *pr = &p->d->items[i];
    json_t *j;
    if (a->backend == BENCH_TRITON_HTTP)
        j = json_pack("{s:s, s:{s:b, s:b, s:b, s:b, s:i, s:f, s:b}}", "text_input", pr->text,
                      "parameters", "stream", 1, "exclude_input_in_output", 1,
                      "return_num_input_tokens", 1, "return_num_output_tokens", 1, "max_tokens",
                      pr->output_len, "temperature", 0.0, "ignore_eos", a->ignore_eos);
    else
        j = json_pack("{s:s, s:s, s:i, s:f, s:b, s:b, s:{s:b}}", "model", a->model, "prompt",
                      pr->text, "max_tokens", pr->output_len, "temperature", 0.0, "stream", 1,
                      "ignore_eos", a->ignore_eos, "stream_options", "include_usage", 1);
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    return s;
}

static void *http_request(void *arg)
{
    http_job *job = arg;
    phase *p = job->p;
    bench_record *r = &p->recs[job->i];
    char *body = http_body(p, job->i);
    cvc_http_result res;
    cv_error err = {.msg = ""};
    int rc = body ? cvc_http_post_sse(p->http_url, body, (long)(p->a->timeout_s * 1000.0),
                                      on_http_event, job, &res, &err)
                  : cv_errorf(&err, "out of memory building request %s", r->id);
    uint64_t t = cv_now_ns();
    pthread_mutex_lock(&p->mu);
    if (rc)
        set_error(r, err.msg);
    else if (res.status != 200) {
        char msg[512];
        snprintf(msg, sizeof msg, "HTTP %ld: %s", res.status, res.body ? res.body : "");
        set_error(r, msg);
    }
    finish_locked(p, r, t);
    pthread_mutex_unlock(&p->mu);
    if (body) cvc_http_result_free(&res);
    free(body);
    return NULL;
}

/* ---- scheduling ---------------------------------------------------------- */

static void sleep_until(uint64_t t_ns)
{
    uint64_t now = cv_now_ns();
    if (now >= t_ns) return;
    uint64_t d = t_ns - now;
    struct timespec ts = {.tv_sec = (time_t)(d / 1000000000u), .tv_nsec = (long)(d % 1000000000u)};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static int issue(phase *p, size_t i, http_job *jobs, cv_error *err)
{
    if (p->a->backend == BENCH_TRITON_GRPC) return grpc_issue(p, i, err);
    if (p->a->backend == BENCH_INPROCESS) return inproc_issue(p, i, err);
    jobs[i] = (http_job){.p = p, .i = i};
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    int rc = pthread_create(&jobs[i].thread, &attr, http_request, &jobs[i]);
    pthread_attr_destroy(&attr);
    if (rc) return cv_errorf(err, "cannot start a thread for request %zu", i);
    jobs[i].started = true;
    return 0;
}

static void target_of(const bench_args *a, phase *p, char *grpc_target, size_t cap)
{
    int port = a->port ? a->port : a->backend == BENCH_TRITON_GRPC ? 8001 : 8000;
    if (a->backend == BENCH_TRITON_GRPC) {
        if (a->url)
            snprintf(grpc_target, cap, "%s", a->url);
        else
            snprintf(grpc_target, cap, "%s:%d", a->host, port);
        return;
    }
    char base[384];
    if (a->url)
        snprintf(base, sizeof base, "%s", a->url);
    else
        snprintf(base, sizeof base, "http://%s:%d", a->host, port);
    size_t bl = strlen(base);
    if (bl && base[bl - 1] == '/') base[bl - 1] = '\0';
    if (a->backend == BENCH_TRITON_HTTP)
        snprintf(p->http_url, sizeof p->http_url, "%s/v2/models/%s/generate_stream", base,
                 a->model);
    else
        snprintf(p->http_url, sizeof p->http_url, "%s/v1/completions", base);
}

/* Runs one phase; returns its duration (first issue to last completion). */
static int run_phase(phase *p, double *duration_s, cv_error *err)
{
    const bench_args *a = p->a;
    char grpc_target[384] = "";
    target_of(a, p, grpc_target, sizeof grpc_target);
    http_job *jobs = calloc(p->n ? p->n : 1, sizeof *jobs);
    if (!jobs) return cv_errorf(err, "out of memory for %zu requests", p->n);
    pthread_t receiver;
    bool have_receiver = false;
    if (a->backend == BENCH_TRITON_GRPC) {
        p->stream = cvc_stream_open(grpc_target, a->timeout_s, err);
        if (!p->stream) {
            free(jobs);
            return -1;
        }
        if (pthread_create(&receiver, NULL, grpc_receiver, p)) {
            cvc_stream_free(p->stream);
            free(jobs);
            return cv_errorf(err, "cannot start the gRPC receiver thread");
        }
        have_receiver = true;
    } else if (a->backend == BENCH_INPROCESS) {
        if (!(p->q = cv_output_queue_create())) {
            free(jobs);
            return cv_errorf(err, "out of memory for the engine's output queue");
        }
        if (pthread_create(&receiver, NULL, inproc_receiver, p)) {
            cv_output_queue_destroy(p->q);
            free(jobs);
            return cv_errorf(err, "cannot start the output receiver thread");
        }
        have_receiver = true;
    }
    progress(p);
    uint64_t t0 = cv_now_ns();
    int rc = 0;
    for (size_t i = 0; i < p->n && rc == 0; i++) {
        sleep_until(t0 + (uint64_t)(p->arrival_s[i] * 1e9));
        pthread_mutex_lock(&p->mu);
        while (a->max_concurrency && p->in_flight >= a->max_concurrency)
            pthread_cond_wait(&p->cv, &p->mu);
        p->in_flight++;
        p->recs[i].start_ns = cv_now_ns();
        pthread_mutex_unlock(&p->mu);
        if (issue(p, i, jobs, err)) {
            /* A failed gRPC send means the stream is gone: stop issuing;
             * the receiver fails the request with the stream's status. */
            if (a->backend == BENCH_TRITON_GRPC) {
                rc = -1;
                break;
            }
            pthread_mutex_lock(&p->mu);
            set_error(&p->recs[i], err->msg);
            finish_locked(p, &p->recs[i], cv_now_ns());
            pthread_mutex_unlock(&p->mu);
        }
    }
    if (have_receiver && a->backend == BENCH_INPROCESS) {
        pthread_mutex_lock(&p->mu);
        p->issuing_done = true;
        pthread_mutex_unlock(&p->mu);
        pthread_join(receiver, NULL);
        cv_output_queue_destroy(p->q);
        p->q = NULL;
    } else if (have_receiver) {
        cv_error cerr;
        if (cvc_stream_close_send(p->stream, &cerr) && rc == 0) {
            *err = cerr;
            rc = -1;
        }
        pthread_join(receiver, NULL);
        cvc_stream_free(p->stream);
        p->stream = NULL;
        if (rc && p->stream_err.msg[0]) *err = p->stream_err;
    }
    for (size_t i = 0; i < p->n; i++)
        if (jobs[i].started) pthread_join(jobs[i].thread, NULL);
    uint64_t t_end = t0;
    for (size_t i = 0; i < p->n; i++)
        if (p->recs[i].end_ns > t_end) t_end = p->recs[i].end_ns;
    *duration_s = (double)(t_end - t0) * 1e-9;
    free(jobs);
    return rc;
}

static int phase_init(phase *p, const bench_args *a, cv_engine *engine, const cv_tokenizer *tok,
                      const bench_dataset *d, const char *label, char prefix, cv_error *err)
{
    memset(p, 0, sizeof *p);
    p->a = a;
    p->engine = engine;
    p->tok = tok;
    p->d = d;
    p->n = d->n;
    p->label = label;
    p->prefix = prefix;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->recs = calloc(p->n ? p->n : 1, sizeof *p->recs);
    if (!p->recs) return cv_errorf(err, "out of memory for %zu request records", p->n);
    for (size_t i = 0; i < p->n; i++)
        init_record(p, i);
    return 0;
}

static void phase_destroy(phase *p)
{
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
}

int bench_run_requests(const bench_args *a, cv_engine *engine, const bench_dataset *warmup,
                       const bench_dataset *d, const cv_tokenizer *tok, bench_run *run,
                       cv_error *err)
{
    memset(run, 0, sizeof *run);
    if ((a->backend == BENCH_INPROCESS) != (engine != NULL))
        return cv_errorf(err, "internal: an engine is for --backend inprocess only");
    if (warmup && warmup->n) {
        phase w;
        double dur;
        double *at = calloc(warmup->n, sizeof *at);
        int rc = at ? phase_init(&w, a, engine, tok, warmup, "warmup", 'w', err)
                    : cv_errorf(err, "out of memory for %zu warm-up requests", warmup->n);
        if (rc == 0) {
            w.arrival_s = at;
            rc = run_phase(&w, &dur, err);
            for (size_t i = 0; i < w.n; i++) {
                if (w.recs[i].success) {
                    run->warmup_completed++;
                    run->warmup_input_tokens += w.recs[i].input_tokens;
                    run->warmup_output_tokens += w.recs[i].output_tokens;
                }
                bench_record_free(&w.recs[i]);
            }
            free(w.recs);
            phase_destroy(&w);
        }
        free(at);
        if (rc) return cv_error_prefix(err, "warm-up");
    }
    phase p;
    double *at = calloc(d->n ? d->n : 1, sizeof *at);
    if (!at) return cv_errorf(err, "out of memory for %zu arrival times", d->n);
    if (bench_arrivals(a->request_rate, a->burstiness, a->seed, d->n, at, err) ||
        phase_init(&p, a, engine, tok, d, "benchmark", 'r', err)) {
        free(at);
        return -1;
    }
    p.arrival_s = at;
    bench_engine_phase before;
    if (engine) bench_engine_counters(engine, &before);
    int rc = run_phase(&p, &run->duration_s, err);
    if (engine) {
        /* The counters of a step are added before its outputs go out: the
         * last completion has seen its step counted. */
        bench_engine_phase *c = &run->engine;
        bench_engine_counters(engine, c);
        c->steps -= before.steps;
        c->steps_ahead -= before.steps_ahead;
        c->tokens -= before.tokens;
        c->forward_s -= before.forward_s;
        c->device_s -= before.device_s;
        run->has_engine = true;
    }
    run->recs = p.recs;
    run->n = p.n;
    phase_destroy(&p);
    free(at);
    return rc;
}

void bench_run_free(bench_run *run)
{
    for (size_t i = 0; i < run->n; i++)
        bench_record_free(&run->recs[i]);
    free(run->recs);
    memset(run, 0, sizeof *run);
}

/* Sampling features end to end on stories260K, each against values
 * computed independently: stop strings spanning tokens, stop_token_ids,
 * EOS, min_tokens, n = 3 and best_of, logprobs and prompt_logprobs (from a
 * log-softmax of the backend's own logits), rejected parameters, abort and
 * shutdown. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "../common/shared_data.h"
#include "engine_test_util.h"
#include "tokenizer/tokenizer.h"
#ifdef CV_TEST_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

static char stories[4096];
static cv_engine *eng;
static cv_tokenizer *tok;

static int setup(void **state)
{
    (void)state;
    cv_engine_args a;
    test_args(&a, stories);
    eng = test_engine(&a);
    cv_error err;
    tok = tok_load(stories, &err);
    if (!tok) fail_msg("tok_load: %s", err.msg);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    cv_engine_shutdown(eng, false);
    tok_free(tok);
    return 0;
}

static char *decode(const int32_t *ids, int n, bool skip)
{
    char *t;
    size_t len;
    cv_error err;
    if (tok_decode(tok, ids, (size_t)n, skip, &t, &len, &err) < 0)
        fail_msg("tok_decode: %s", err.msg);
    return t;
}

static void greedy(cv_sampling_params *p, int max_tokens)
{
    cv_sampling_params_default(p);
    p->temperature = 0;
    p->max_tokens = max_tokens;
}

static void test_stop_string_spanning_tokens(void **state)
{
    (void)state;
    greedy_case c;
    load_stories_case(0, &c);
    const char *stop = "little girl";
    /* The token that completes the stop string, and proof that it spans
     * tokens: the text before it already holds "little". */
    int k = 1;
    for (;; k++) {
        char *t = decode(c.output, k, true);
        bool found = strstr(t, stop) != NULL;
        free(t);
        if (found) break;
    }
    char *before = decode(c.output, k - 1, true);
    assert_non_null(strstr(before, "little"));
    free(before);
    char *stops[] = {"zzz", (char *)stop};
    for (int include = 0; include < 2; include++) {
        for (int stream = 0; stream < 2; stream++) {
            cv_sampling_params p;
            greedy(&p, 64);
            p.stop = stops;
            p.n_stop = 2;
            p.include_stop_str_in_output = include;
            req_result r;
            run_one(eng, &p, c.input, c.n_input, stream, &r);
            assert_string_equal(r.seqs[0].text, include
                                                    ? "Once upon a time, there was a little girl"
                                                    : "Once upon a time, there was a ");
            assert_int_equal(r.seqs[0].finish, CV_FINISH_STOP);
            assert_int_equal(r.seqs[0].n_ids, k);
            assert_memory_equal(r.seqs[0].ids, c.output, (size_t)k * sizeof(int32_t));
            result_free(&r);
        }
    }
}

static void test_stop_token_ids(void **state)
{
    (void)state;
    greedy_case c;
    load_stories_case(0, &c);
    int32_t stop_id = c.output[10];
    int j = 0;
    while (c.output[j] != stop_id)
        j++;
    cv_sampling_params p;
    greedy(&p, 64);
    p.stop_token_ids = &stop_id;
    p.n_stop_token_ids = 1;
    req_result r;
    run_one(eng, &p, c.input, c.n_input, true, &r);
    assert_int_equal(r.seqs[0].finish, CV_FINISH_STOP);
    assert_int_equal(r.seqs[0].n_ids, j + 1);
    assert_memory_equal(r.seqs[0].ids, c.output, (size_t)(j + 1) * sizeof(int32_t));
    char *want = decode(c.output, j, true); /* the stop token's text is left out */
    assert_string_equal(r.seqs[0].text, want);
    free(want);
    result_free(&r);
    /* The very first token stops: one id, no text. */
    stop_id = c.output[0];
    run_one(eng, &p, c.input, c.n_input, false, &r);
    assert_int_equal(r.seqs[0].finish, CV_FINISH_STOP);
    assert_int_equal(r.seqs[0].n_ids, 1);
    assert_int_equal(r.seqs[0].ids[0], stop_id);
    assert_string_equal(r.seqs[0].text, "");
    /* include_stop_str_in_output keeps the stop token's text. */
    p.include_stop_str_in_output = true;
    result_free(&r);
    run_one(eng, &p, c.input, c.n_input, false, &r);
    char *first = decode(c.output, 1, true);
    assert_string_equal(r.seqs[0].text, first);
    assert_true(first[0] != '\0');
    free(first);
    result_free(&r);
}

static void test_min_tokens(void **state)
{
    (void)state;
    greedy_case c;
    load_stories_case(0, &c);
    /* Token 261 (" a") is greedy at output 2 and recurs; with min_tokens 5
     * it is masked (as is EOS) for the first 5 tokens. */
    int32_t stop_id = 261;
    assert_int_equal(c.output[2], stop_id);
    enum { MIN = 5, MAX = 40 };
    ref_model ref;
    ref_open(&ref, stories);
    int32_t mask[2] = {stop_id, 2}, want[MAX];
    ref_greedy(&ref, c.input, c.n_input, MAX, mask, 2, MIN, want);
    ref_close(&ref);
    int end = MIN;
    while (end < MAX && want[end] != stop_id && want[end] != 2)
        end++;
    assert_true(end < MAX); /* the stop token does come after min_tokens */
    cv_sampling_params p;
    greedy(&p, MAX);
    p.min_tokens = MIN;
    p.stop_token_ids = &stop_id;
    p.n_stop_token_ids = 1;
    req_result r;
    run_one(eng, &p, c.input, c.n_input, false, &r);
    assert_int_equal(r.seqs[0].finish, CV_FINISH_STOP);
    assert_int_equal(r.seqs[0].n_ids, end + 1);
    assert_memory_equal(r.seqs[0].ids, want, (size_t)(end + 1) * sizeof(int32_t));
    assert_int_not_equal(r.seqs[0].ids[2], stop_id);
    result_free(&r);
}

static void test_eos_from_generation_config(void **state)
{
    (void)state;
    /* The mistral fixture's HF greedy run ends with EOS (2) after 15 tokens. */
    char dir[4096];
    source_path(dir, sizeof(dir), "tests/fixtures/models/mistral_f32");
    cv_engine_args a;
    test_args(&a, dir);
    snprintf(a.tokenizer, sizeof(a.tokenizer), "%s", stories);
    cv_engine *e = test_engine(&a);
    static const int32_t in[] = {1, 239, 179, 14, 112, 17, 149};
    static const int32_t want[] = {18, 177, 230, 233, 220, 251, 11, 77,
                                   98, 238, 238, 238, 233, 79,  2};
    cv_sampling_params p;
    greedy(&p, 40);
    req_result r;
    run_one(e, &p, in, 7, false, &r);
    assert_int_equal(r.seqs[0].finish, CV_FINISH_STOP);
    assert_int_equal(r.seqs[0].n_ids, 15);
    assert_memory_equal(r.seqs[0].ids, want, sizeof(want));
    result_free(&r);
    p.ignore_eos = true;
    run_one(e, &p, in, 7, false, &r);
    assert_int_equal(r.seqs[0].finish, CV_FINISH_LENGTH);
    assert_int_equal(r.seqs[0].n_ids, 40);
    assert_memory_equal(r.seqs[0].ids, want, sizeof(want));
    result_free(&r);
    cv_engine_shutdown(e, false);
}

static void test_n3_and_best_of(void **state)
{
    (void)state;
    greedy_case c;
    load_stories_case(0, &c);
    int32_t prompt[21]; /* one whole block and a partial one: the fork copies it */
    prompt[0] = 1;
    memcpy(prompt + 1, c.output, 20 * sizeof(int32_t));
    cv_sampling_params p;
    cv_sampling_params_default(&p);
    p.n = 3;
    p.has_seed = true;
    p.seed = 11;
    p.max_tokens = 16;
    p.ignore_eos = true;
    req_result r;
    run_one(eng, &p, prompt, 21, false, &r);
    assert_int_equal(r.n_seqs, 3);
    assert_int_equal(r.n_finals, 1);
    int best = 0;
    for (int k = 0; k < 3; k++) {
        assert_int_equal(r.seqs[k].index, k);
        /* vLLM: parallel sample k is the request with seed + k alone. */
        cv_sampling_params one = p;
        one.n = 1;
        one.seed = 11 + (uint64_t)k;
        req_result alone;
        run_one(eng, &one, prompt, 21, false, &alone);
        assert_int_equal(r.seqs[k].n_ids, 16);
        assert_memory_equal(r.seqs[k].ids, alone.seqs[0].ids, 16 * sizeof(int32_t));
        assert_string_equal(r.seqs[k].text, alone.seqs[0].text);
        assert_float_equal(r.seqs[k].cum_logprob, alone.seqs[0].cum_logprob, 1e-9);
        result_free(&alone);
        if (r.seqs[k].cum_logprob > r.seqs[best].cum_logprob) best = k;
    }
    assert_memory_not_equal(r.seqs[0].ids, r.seqs[1].ids, 16 * sizeof(int32_t));
    /* Streamed, the three sequences' deltas add up to the same outputs. */
    req_result st;
    run_one(eng, &p, prompt, 21, true, &st);
    assert_int_equal(st.n_seqs, 3);
    assert_true(st.n_outputs > 1);
    for (int k = 0; k < 3; k++) {
        assert_memory_equal(st.seqs[k].ids, r.seqs[k].ids, 16 * sizeof(int32_t));
        assert_string_equal(st.seqs[k].text, r.seqs[k].text);
    }
    result_free(&st);
    /* best_of 3, n 1: the sample of highest cumulative logprob. */
    p.n = 1;
    p.best_of = 3;
    req_result b;
    run_one(eng, &p, prompt, 21, false, &b);
    assert_int_equal(b.n_seqs, 1);
    assert_memory_equal(b.seqs[0].ids, r.seqs[best].ids, 16 * sizeof(int32_t));
    result_free(&b);
    result_free(&r);
}

static void log_softmax(const float *x, int n, double *out)
{
    double mx = x[0], s = 0;
    for (int i = 1; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    for (int i = 0; i < n; i++)
        s += exp(x[i] - mx);
    for (int i = 0; i < n; i++)
        out[i] = x[i] - mx - log(s);
}

/* chunk_budget > 0: an engine whose token budget splits the prompt into
 * chunks, so prompt logprobs come from several steps. */
static void check_logprobs(int chunk_budget)
{
    greedy_case c;
    load_stories_case(1, &c);
    enum { N = 8, V = 512 };
    cv_sampling_params p;
    greedy(&p, N);
    p.logprobs = 2;
    p.prompt_logprobs = 1;
    req_result r;
    cv_engine *engine = eng;
    if (chunk_budget) {
        cv_engine_args a;
        test_args(&a, stories);
        a.max_num_batched_tokens = chunk_budget;
        engine = test_engine(&a);
    }
    run_one(engine, &p, c.input, c.n_input, true, &r);
    if (engine != eng) cv_engine_shutdown(engine, false);
    assert_int_equal(r.seqs[0].n_lps, N);
    ref_model ref;
    ref_open(&ref, stories);
    int32_t ids[64];
    memcpy(ids, c.input, (size_t)c.n_input * sizeof(int32_t));
    memcpy(ids + c.n_input, r.seqs[0].ids, N * sizeof(int32_t));
    static float logits[64 * V];
    ref_logits(&ref, ids, c.n_input + N - 1, logits);
    double lp[V], cum = 0;
    for (int i = 0; i < N; i++) {
        log_softmax(logits + (size_t)(c.n_input - 1 + i) * V, V, lp);
        int top1 = 0, top2 = -1;
        for (int v = 1; v < V; v++)
            if (lp[v] > lp[top1]) top1 = v;
        for (int v = 0; v < V; v++)
            if (v != top1 && (top2 < 0 || lp[v] > lp[top2])) top2 = v;
        const cv_token_logprobs *e = &r.seqs[0].lps[i];
        /* Greedy: the chosen token is the top one, so two entries. */
        assert_int_equal(e->n, 2);
        assert_int_equal(e->entries[0].token_id, r.seqs[0].ids[i]);
        assert_int_equal(e->entries[0].token_id, top1);
        assert_int_equal(e->entries[0].rank, 1);
        assert_float_equal(e->entries[0].logprob, lp[top1], 1e-4);
        assert_int_equal(e->entries[1].token_id, top2);
        assert_int_equal(e->entries[1].rank, 2);
        assert_float_equal(e->entries[1].logprob, lp[top2], 1e-4);
        /* decoded_token: the lone token's decode, with the leading space
         * of a "▁" piece (SentencePiece) that decoding strips put back. */
        char *d = decode(&e->entries[1].token_id, 1, false);
        const char *piece = tok_id_to_token(tok, e->entries[1].token_id);
        bool spaced = !strncmp(piece, "\u2581", 3) && d[0] != ' ';
        char want[256];
        snprintf(want, sizeof want, "%s%s", spaced ? " " : "", d);
        assert_string_equal(e->entries[1].decoded_token, want);
        free(d);
        cum += lp[top1];
    }
    assert_float_equal(r.seqs[0].cum_logprob, cum, 1e-3);
    /* prompt_logprobs: none for the first token, then each prompt token
     * under the logits of the position before it. */
    assert_non_null(r.prompt_lps);
    assert_int_equal(r.prompt_lps[0].n, 0);
    for (int i = 1; i < c.n_input; i++) {
        log_softmax(logits + (size_t)(i - 1) * V, V, lp);
        int32_t t = c.input[i];
        int rank = 0, top1 = 0;
        for (int v = 0; v < V; v++) {
            rank += lp[v] >= lp[t];
            if (lp[v] > lp[top1]) top1 = v;
        }
        const cv_token_logprobs *e = &r.prompt_lps[i];
        assert_int_equal(e->n, t == top1 ? 1 : 2);
        assert_int_equal(e->entries[0].token_id, t);
        assert_int_equal(e->entries[0].rank, rank);
        assert_float_equal(e->entries[0].logprob, lp[t], 1e-4);
        if (e->n == 2) {
            assert_int_equal(e->entries[1].token_id, top1);
            assert_int_equal(e->entries[1].rank, 1);
        }
    }
    ref_close(&ref);
    result_free(&r);
}

/* max_num_seqs bounds the running sequences, the children of an n > 1
 * request included (issue 16): with max_num_seqs 4 an n = 8 request never
 * has more than 4 running, and all 8 samples still finish whole, each the
 * same as the request with seed + k alone. */
static void test_n_children_within_max_num_seqs(void **state)
{
    (void)state;
    cv_engine_args a;
    test_args(&a, stories);
    a.max_num_seqs = 4;
    cv_engine *e = test_engine(&a);
    cv_output_queue *q = cv_output_queue_create();
    cv_sampling_params p;
    cv_sampling_params_default(&p);
    p.n = 8;
    p.has_seed = true;
    p.seed = 5;
    p.max_tokens = 48;
    p.ignore_eos = true;
    int32_t prompt[3] = {1, 400, 300};
    req_result r;
    memset(&r, 0, sizeof r);
    submit(e, q, &p, prompt, 3, NULL, true, 0);
    int max_running = 0;
    for (bool done = false; !done;) {
        done = collect_next(q, &r);
        cv_engine_stats st;
        cv_engine_get_stats(e, &st);
        if (st.n_running > max_running) max_running = st.n_running;
    }
    assert_null(r.error);
    assert_int_equal(max_running, 4);
    assert_int_equal(r.n_seqs, 8);
    for (int k = 0; k < 8; k++) {
        assert_int_equal(r.seqs[k].n_ids, 48);
        cv_sampling_params one = p;
        one.n = 1;
        one.seed = 5 + (uint64_t)k;
        req_result alone;
        run_one(e, &one, prompt, 3, false, &alone);
        assert_memory_equal(r.seqs[k].ids, alone.seqs[0].ids, 48 * sizeof(int32_t));
        result_free(&alone);
    }
    result_free(&r);
    cv_engine_wait_idle(e);
    cv_engine_stats st;
    cv_engine_get_stats(e, &st);
    assert_int_equal(st.kv_blocks_free, st.kv_blocks_total);
    cv_engine_shutdown(e, false);
    cv_output_queue_destroy(q);
}

static void test_logprobs(void **state)
{
    (void)state;
    check_logprobs(0);
    check_logprobs(2); /* 5 prompt tokens in chunks of 2, 2, 1 */
}

static void expect_rejected(const cv_sampling_params *p, const int32_t *ids, int n, bool stream,
                            const char *msg)
{
    cv_output_queue *q = cv_output_queue_create();
    cv_request_desc d = {
        .prompt_ids = ids, .n_prompt_ids = (size_t)n, .params = p, .stream = stream, .sink = q};
    cv_error err;
    assert_int_equal(cv_engine_add_request(eng, &d, &err), 0);
    assert_string_equal(err.msg, msg);
    assert_null(cv_output_queue_pop(q));
    cv_output_queue_destroy(q);
}

static void test_rejected(void **state)
{
    (void)state;
    static int32_t ids[600];
    for (int i = 0; i < 600; i++)
        ids[i] = 1 + i % 500;
    cv_sampling_params p;
    cv_sampling_params_default(&p);
    p.temperature = -1;
    expect_rejected(&p, ids, 5, false, "temperature must be non-negative, got -1.0.");
    cv_sampling_params_default(&p);
    p.top_p = 1.5f;
    expect_rejected(&p, ids, 5, false, "top_p must be in (0, 1], got 1.5.");
    cv_sampling_params_default(&p);
    p.n = 0;
    expect_rejected(&p, ids, 5, false, "n must be at least 1, got 0.");
    cv_sampling_params_default(&p);
    expect_rejected(&p, ids, 600, false,
                    "The decoder prompt (length 600) is longer than the maximum model length "
                    "of 512.");
    int32_t bad = 512;
    expect_rejected(&p, &bad, 1, false, "Token id 512 is out of vocabulary");
    p.best_of = 2;
    expect_rejected(&p, ids, 5, true, "best_of must equal n to use output_kind=DELTA");
}

static void expect_create_error(const cv_engine_args *a, const char *msg)
{
    cv_error err;
    cv_engine *e = cv_engine_create(a, &err);
    if (e) cv_engine_shutdown(e, false);
    assert_null(e);
    assert_string_equal(err.msg, msg);
}

/* device "cuda": refused by name where it cannot run (no CUDA in the build,
 * or no GPU visible); where a GPU is, the engine comes up on it. */
static void test_device_cuda(void **state)
{
    (void)state;
    cv_engine_args a;
    test_args(&a, stories);
    snprintf(a.device, sizeof(a.device), "cuda");
#ifdef CV_TEST_HAVE_CUDA
    if (cv_cuda_device_count() > 0) {
        cv_engine *e = test_engine(&a);
        cv_engine_shutdown(e, false);
        return;
    }
    expect_create_error(&a, "device 'cuda': no CUDA device is visible");
#else
    expect_create_error(&a, "device 'cuda': this build has no CUDA backend (nvcc was not found "
                            "when it was configured)");
#endif
}

static void test_engine_args_rejected(void **state)
{
    (void)state;
    cv_engine_args a;
    test_args(&a, stories);
    snprintf(a.dtype, sizeof(a.dtype), "fp8");
    expect_create_error(&a, "engine argument 'dtype': unknown dtype 'fp8'");
    test_args(&a, stories);
    snprintf(a.device, sizeof(a.device), "tpu");
    expect_create_error(&a, "engine argument 'device': unknown device 'tpu' (auto, cpu, cuda)");
    test_args(&a, stories);
    snprintf(a.kv_cache_dtype, sizeof(a.kv_cache_dtype), "fp8");
    expect_create_error(&a,
                        "engine argument 'kv_cache_dtype': unknown dtype 'fp8' (auto, bfloat16, "
                        "float16, float32)");
    test_args(&a, stories);
    a.gpu_memory_utilization = 1.5;
    expect_create_error(&a, "engine argument 'gpu_memory_utilization' must be in (0, 1], got 1.5");
    test_args(&a, stories);
    a.block_size = 0;
    expect_create_error(&a, "engine argument 'block_size' must be in [1, 1024], got 0");
    test_args(&a, stories);
    a.max_num_seqs = 0;
    expect_create_error(&a, "engine argument 'max_num_seqs' must be at least 1, got 0");
    test_args(&a, stories);
    a.max_model_len = 600;
    char msg[8192];
    snprintf(msg, sizeof(msg),
             "User-specified max_model_len (600) is greater than the derived max_model_len "
             "(max_position_embeddings=512 in %s/config.json).",
             stories);
    expect_create_error(&a, msg);
    test_args(&a, stories);
    a.kv_blocks = 4;
    expect_create_error(&a, "The model's max seq len (512) is larger than the maximum number of "
                            "tokens that can be stored in KV cache (64). Try increasing "
                            "kv_cache_bytes or decreasing max_model_len when initializing the "
                            "engine.");
    /* kv_cache_bytes sizes the pool in the backend's block size. */
    ref_model ref;
    ref_open(&ref, stories);
    size_t block_bytes = cv_backend_kv_block_bytes(ref.backend, 16);
    ref_close(&ref);
    test_args(&a, stories);
    a.kv_blocks = 0;
    a.kv_cache_bytes = 40 * block_bytes + block_bytes / 2;
    cv_engine *e = test_engine(&a);
    cv_engine_stats st;
    cv_engine_get_stats(e, &st);
    assert_int_equal(st.kv_blocks_total, 40);
    assert_int_equal(st.kv_blocks_free, 40);
    cv_engine_shutdown(e, false);
    test_args(&a, "/nonexistent/model");
    cv_error err;
    assert_null(cv_engine_create(&a, &err));
    assert_non_null(strstr(err.msg, "/nonexistent/model"));
}

static void test_abort(void **state)
{
    (void)state;
    cv_output_queue *q = cv_output_queue_create();
    cv_sampling_params p;
    cv_sampling_params_default(&p);
    p.max_tokens = 500;
    p.ignore_eos = true;
    int32_t prompt[1] = {1};
    uint64_t id = submit(eng, q, &p, prompt, 1, NULL, true, 0);
    req_result r = {0};
    assert_false(collect_next(q, &r));
    cv_engine_abort(eng, id);
    cv_engine_abort(eng, 999999); /* unknown ids are ignored */
    collect(q, &r, 1);
    assert_int_equal(r.n_finals, 1);
    assert_int_equal(r.seqs[0].finish, CV_FINISH_ABORT);
    assert_true(r.seqs[0].n_ids < 499);
    result_free(&r);
    cv_engine_wait_idle(eng);
    cv_engine_stats st;
    cv_engine_get_stats(eng, &st);
    assert_int_equal(st.kv_blocks_free, st.kv_blocks_total);
    assert_true(st.requests_finished[CV_FINISH_ABORT] >= 1);
    cv_output_queue_destroy(q);
}

/* Back pressure: beyond max_queued_requests in flight a request is refused
 * as temporarily unavailable, and accepted again once one finishes. */
static void test_queue_bound(void **state)
{
    (void)state;
    cv_engine_args a;
    test_args(&a, stories);
    a.max_queued_requests = 2;
    cv_engine *e = test_engine(&a);
    cv_output_queue *q = cv_output_queue_create();
    cv_sampling_params p;
    cv_sampling_params_default(&p);
    p.max_tokens = 400;
    p.ignore_eos = true;
    int32_t prompt[1] = {1};
    cv_request_desc d = {.prompt_ids = prompt, .n_prompt_ids = 1, .params = &p, .sink = q};
    cv_error err;
    uint64_t first = cv_engine_add_request(e, &d, &err);
    assert_true(first > 0 && cv_engine_add_request(e, &d, &err) > 0);
    assert_int_equal(cv_engine_add_request(e, &d, &err), 0);
    assert_string_equal(err.msg,
                        "the engine's request queue is full (2 requests in flight); retry later");
    assert_int_equal(err.cls, CV_ERR_UNAVAILABLE);
    /* A caller error keeps its class while the queue is full. */
    p.temperature = -1.0f;
    assert_int_equal(cv_engine_add_request(e, &d, &err), 0);
    assert_int_equal(err.cls, CV_ERR_INVALID);
    p.temperature = 1.0f;
    cv_engine_abort(e, first);
    cv_request_output *o;
    do {
        o = cv_output_queue_wait(q, 60000);
        assert_non_null(o);
        bool done = o->finished && o->request_id == first;
        cv_request_output_free(o);
        if (done) break;
    } while (1);
    /* The slot frees just after the final output goes out: retry as a
     * refused client would. */
    uint64_t again = 0;
    for (int i = 0; i < 500 && !again; i++)
        if (!(again = cv_engine_add_request(e, &d, &err))) usleep(2000);
    assert_true(again > 0);
    cv_engine_shutdown(e, false);
    cv_output_queue_destroy(q);
}

static void test_shutdown(void **state)
{
    (void)state;
    for (int drain = 0; drain < 2; drain++) {
        cv_engine_args a;
        test_args(&a, stories);
        cv_engine *e = test_engine(&a);
        cv_output_queue *q = cv_output_queue_create();
        cv_sampling_params p;
        cv_sampling_params_default(&p);
        p.max_tokens = 400;
        p.ignore_eos = true;
        int32_t prompt[1] = {1};
        for (int i = 0; i < 4; i++)
            submit(e, q, &p, prompt, 1, NULL, false, i);
        cv_engine_shutdown(e, drain);
        req_result r[4] = {0};
        collect(q, r, 4);
        for (int i = 0; i < 4; i++) {
            assert_int_equal(r[i].n_finals, 1);
            assert_int_equal(r[i].seqs[0].finish, drain ? CV_FINISH_LENGTH : CV_FINISH_ABORT);
            if (drain) assert_int_equal(r[i].seqs[0].n_ids, 400);
            result_free(&r[i]);
        }
        assert_null(cv_output_queue_pop(q));
        cv_output_queue_destroy(q);
    }
}

int main(void)
{
    /* Checked against stories260K's HF references throughout (the shipped
     * model's run in tests/sample_model). */
    cv_test_need_shared("models/stories260K");
    shared_path(stories, sizeof(stories), "models/stories260K");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stop_string_spanning_tokens),
        cmocka_unit_test(test_stop_token_ids),
        cmocka_unit_test(test_device_cuda),
        cmocka_unit_test(test_min_tokens),
        cmocka_unit_test(test_eos_from_generation_config),
        cmocka_unit_test(test_n3_and_best_of),
        cmocka_unit_test(test_n_children_within_max_num_seqs),
        cmocka_unit_test(test_logprobs),
        cmocka_unit_test(test_rejected),
        cmocka_unit_test(test_engine_args_rejected),
        cmocka_unit_test(test_abort),
        cmocka_unit_test(test_queue_bound),
        cmocka_unit_test(test_shutdown),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

/* 1000 random operations (add, abort, wait for outputs) against an engine
 * with a pool small enough to preempt and a budget small enough to chunk:
 * afterwards every request got exactly one final output and nothing after
 * it, and every KV block is free. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine_test_util.h"

enum { N_OPS = 1000 };

static void test_random_ops(void **state)
{
    (void)state;
    char model[4096];
    source_path(model, sizeof(model), "samples/models/cvllm-kjv-4m"); /* shipped */
    cv_engine_args a;
    test_args(&a, model);
    a.kv_blocks = 10;
    a.max_model_len = 128;
    a.max_num_seqs = 8;
    a.max_num_batched_tokens = 32;
    cv_engine *e = test_engine(&a);
    cv_output_queue *q = cv_output_queue_create();
    static req_result res[N_OPS];
    uint64_t ids[N_OPS];
    memset(res, 0, sizeof(res));
    int n_req = 0, n_aborts = 0;
    char *stops[] = {"a", "the "};
    srand(12345);
    for (int op = 0; op < N_OPS; op++) {
        int kind = rand() % 10;
        if (kind < 5) {
            cv_sampling_params p;
            cv_sampling_params_default(&p);
            p.temperature = rand() % 2 ? 1.0f : 0.0f;
            p.n = p.temperature > 0 ? 1 + rand() % 3 : 1;
            p.max_tokens = 1 + rand() % 8;
            p.min_tokens = rand() % 2;
            p.logprobs = rand() % 3 - 1;
            p.prompt_logprobs = rand() % 5 == 0 ? 1 : -1;
            if (rand() % 4 == 0) {
                p.stop = stops;
                p.n_stop = 2;
            }
            int32_t prompt[40];
            int n = 1 + rand() % 40;
            prompt[0] = 1;
            for (int i = 1; i < n; i++)
                prompt[i] = 3 + rand() % 500;
            ids[n_req] = submit(e, q, &p, prompt, n, NULL, rand() % 2, n_req);
            n_req++;
        } else if (kind < 7 && n_req > 0) {
            cv_engine_abort(e, ids[rand() % n_req]);
            n_aborts++;
        } else {
            cv_request_output *o = cv_output_queue_wait(q, rand() % 3);
            for (; o; o = cv_output_queue_pop(q))
                merge_output(o, res);
        }
    }
    cv_engine_wait_idle(e);
    for (cv_request_output *o; (o = cv_output_queue_pop(q));)
        merge_output(o, res);
    cv_engine_stats st;
    cv_engine_get_stats(e, &st);
    uint64_t finished = 0;
    for (int r = 0; r < 4; r++)
        finished += st.requests_finished[r];
    assert_int_equal(finished, n_req);
    assert_true(st.preemptions_total > 0);
    assert_true(st.requests_finished[CV_FINISH_ABORT] > 0);
    assert_int_equal(st.kv_blocks_free, st.kv_blocks_total);
    assert_int_equal(st.n_running, 0);
    assert_int_equal(st.n_waiting, 0);
    for (int i = 0; i < n_req; i++) {
        if (res[i].n_finals != 1 || res[i].output_after_final || res[i].error)
            fail_msg("request %d: %d final outputs%s%s", i, res[i].n_finals,
                     res[i].output_after_final ? ", output after final" : "",
                     res[i].error ? res[i].error : "");
        assert_int_equal(res[i].id, ids[i]);
        result_free(&res[i]);
    }
    cv_output_queue_destroy(q);
    cv_engine_shutdown(e, false);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_ops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Scheduler: chunked prefill under the token budget, decodes mixed with
 * prefills, max_num_seqs, FCFS admission, preemption of the most recently
 * admitted sequence when the pool runs dry, and its recompute. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "engine/scheduler.h"

static cv_seq *make_seq(uint64_t id, int n)
{
    int32_t t[256];
    for (int i = 0; i < n; i++)
        t[i] = (int32_t)(id * 1000 + i);
    cv_seq *s = seq_create(id, t, n);
    assert_non_null(s);
    return s;
}

/* What the engine does after a forward: mark computed, sample when done. */
static void finish_step(block_manager *bm, const sched_output *o)
{
    for (int i = 0; i < o->n_entries; i++) {
        cv_seq *s = o->entries[i].seq;
        s->n_computed += o->entries[i].n_new;
        bm_cache_computed(bm, s);
        if (s->n_computed == s->n_tokens) assert_int_equal(seq_append_token(s, 7), 0);
    }
}

static int n_new_of(const sched_output *o, const cv_seq *s)
{
    for (int i = 0; i < o->n_entries; i++)
        if (o->entries[i].seq == s) return o->entries[i].n_new;
    return 0;
}

static void test_chunked_prefill_and_decode_mix(void **state)
{
    (void)state;
    block_manager *bm = bm_create(64, 4, false);
    scheduler s;
    sched_init(&s, bm, 8, 10);
    cv_seq *a = make_seq(1, 3), *b = make_seq(2, 25);
    sched_add(&s, a, false);
    sched_add(&s, b, false);
    sched_output o;
    assert_int_equal(sched_schedule(&s, &o), 0);
    assert_int_equal(o.n_entries, 2);
    assert_int_equal(n_new_of(&o, a), 3);
    assert_int_equal(n_new_of(&o, b), 7); /* chunk: what the budget leaves */
    assert_int_equal(o.n_tokens, 10);
    finish_step(bm, &o);
    assert_int_equal(a->n_tokens, 4);
    /* Next step: a decodes one token, b gets the other nine. */
    assert_int_equal(sched_schedule(&s, &o), 0);
    assert_int_equal(n_new_of(&o, a), 1);
    assert_int_equal(n_new_of(&o, b), 9);
    finish_step(bm, &o);
    assert_int_equal(sched_schedule(&s, &o), 0);
    assert_int_equal(n_new_of(&o, a), 1);
    assert_int_equal(n_new_of(&o, b), 9);
    finish_step(bm, &o);
    assert_int_equal(b->n_tokens, 26); /* 7 + 9 + 9 = 25 prompt tokens, then sampled */
    assert_int_equal(b->n_computed, 25);
    sched_remove(&s, a);
    sched_remove(&s, b);
    assert_int_equal(bm_n_free(bm), 64);
    sched_fini(&s);
    seq_free(a), seq_free(b);
    bm_destroy(bm);
}

/* max_loras: a waiting sequence whose adapter would make more distinct
 * adapters run than max_loras waits while later ones (base, or an adapter
 * already running) are admitted, as vLLM's scheduler does. */
static void test_max_loras(void **state)
{
    (void)state;
    block_manager *bm = bm_create(64, 4, false);
    scheduler s;
    sched_init(&s, bm, 8, 100);
    s.max_loras = 1;
    cv_seq *a = make_seq(1, 3), *b = make_seq(2, 3), *c = make_seq(3, 3), *d = make_seq(4, 3);
    a->lora_id = 1;
    b->lora_id = 2;
    c->lora_id = 1;
    d->lora_id = 0;
    sched_add(&s, a, false);
    sched_add(&s, b, false);
    sched_add(&s, c, false);
    sched_add(&s, d, false);
    sched_output o;
    assert_int_equal(sched_schedule(&s, &o), 0);
    assert_int_equal(o.n_entries, 3);
    assert_int_equal(n_new_of(&o, a), 3);
    assert_int_equal(n_new_of(&o, b), 0); /* adapter 2 waits */
    assert_int_equal(n_new_of(&o, c), 3);
    assert_int_equal(n_new_of(&o, d), 3);
    finish_step(bm, &o);
    /* Adapter 1 still runs: b keeps waiting; once a and c finish it runs. */
    assert_int_equal(sched_schedule(&s, &o), 0);
    assert_int_equal(n_new_of(&o, b), 0);
    finish_step(bm, &o);
    sched_remove(&s, a);
    sched_remove(&s, c);
    assert_int_equal(sched_schedule(&s, &o), 0);
    assert_int_equal(n_new_of(&o, b), 3);
    assert_int_equal(n_new_of(&o, d), 1);
    sched_remove(&s, b);
    sched_remove(&s, d);
    sched_fini(&s);
    seq_free(a), seq_free(b), seq_free(c), seq_free(d);
    bm_destroy(bm);
}

static void test_max_chunk(void **state)
{
    (void)state;
    block_manager *bm = bm_create(64, 4, false);
    scheduler s;
    sched_init(&s, bm, 8, 100);
    cv_seq *a = make_seq(1, 25), *b = make_seq(2, 25);
    a->max_chunk = 10; /* a prompt_logprobs request */
    sched_add(&s, a, false);
    sched_add(&s, b, false);
    sched_output o;
    static const int want_a[] = {10, 10, 5, 1};
    for (int step = 0; step < 4; step++) {
        sched_schedule(&s, &o);
        assert_int_equal(n_new_of(&o, a), want_a[step]);
        assert_int_equal(n_new_of(&o, b), step == 0 ? 25 : 1);
        finish_step(bm, &o);
    }
    sched_remove(&s, a);
    sched_remove(&s, b);
    sched_fini(&s);
    seq_free(a), seq_free(b);
    bm_destroy(bm);
}

static void test_max_num_seqs_fcfs(void **state)
{
    (void)state;
    block_manager *bm = bm_create(64, 4, false);
    scheduler s;
    sched_init(&s, bm, 2, 100);
    cv_seq *q[3];
    for (int i = 0; i < 3; i++) {
        q[i] = make_seq((uint64_t)i + 1, 5);
        sched_add(&s, q[i], false);
    }
    sched_output o;
    sched_schedule(&s, &o);
    assert_int_equal(o.n_entries, 2);
    assert_ptr_equal(o.entries[0].seq, q[0]);
    assert_ptr_equal(o.entries[1].seq, q[1]);
    assert_int_equal(q[2]->status, SEQ_WAITING);
    finish_step(bm, &o);
    sched_remove(&s, q[0]);
    sched_schedule(&s, &o);
    assert_int_equal(o.n_entries, 2);
    assert_int_equal(n_new_of(&o, q[1]), 1);
    assert_int_equal(n_new_of(&o, q[2]), 5);
    sched_remove(&s, q[1]);
    sched_remove(&s, q[2]);
    sched_fini(&s);
    for (int i = 0; i < 3; i++)
        seq_free(q[i]);
    bm_destroy(bm);
}

static void test_preemption_and_recompute(void **state)
{
    (void)state;
    /* 4 blocks of 4 tokens; two prompts of 6 take 2 blocks each. */
    block_manager *bm = bm_create(4, 4, true);
    scheduler s;
    sched_init(&s, bm, 8, 64);
    cv_seq *a = make_seq(1, 6), *b = make_seq(2, 6);
    sched_add(&s, a, false);
    sched_add(&s, b, false);
    sched_output o;
    sched_schedule(&s, &o);
    assert_int_equal(o.n_entries, 2);
    finish_step(bm, &o);    /* both at 7 tokens, 6 computed */
    sched_schedule(&s, &o); /* decode token 7 fits in block 2 of each */
    assert_int_equal(o.n_preempted, 0);
    finish_step(bm, &o);
    sched_schedule(&s, &o);
    finish_step(bm, &o); /* 8 computed each: both blocks full */
    /* Token 9 needs a third block each: a gets none either, so b (the last
     * admitted) is preempted and a proceeds alone. */
    assert_int_equal(bm_n_free(bm), 0);
    sched_schedule(&s, &o);
    assert_int_equal(o.n_preempted, 1);
    assert_int_equal(o.n_entries, 1);
    assert_ptr_equal(o.entries[0].seq, a);
    assert_int_equal(b->status, SEQ_WAITING);
    assert_int_equal(b->n_computed, 0);
    assert_int_equal(b->n_blocks, 0);
    assert_int_equal(b->n_tokens, 9); /* its output is kept */
    finish_step(bm, &o);
    sched_remove(&s, a);
    /* b comes back: both its full blocks were cached when it was
     * preempted, but a's third block evicted the second one (freed last, so
     * first in line), so its first block is a prefix hit. */
    sched_schedule(&s, &o);
    assert_int_equal(o.n_entries, 1);
    assert_ptr_equal(o.entries[0].seq, b);
    assert_int_equal(b->n_computed + o.entries[0].n_new, 9);
    assert_int_equal(o.cache_queried_tokens, 9);
    assert_int_equal(o.cache_hit_tokens, 4);
    assert_int_equal(b->n_computed, 4);
    sched_remove(&s, b);
    assert_int_equal(bm_n_free(bm), 4);
    sched_fini(&s);
    seq_free(a), seq_free(b);
    bm_destroy(bm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chunked_prefill_and_decode_mix),
        cmocka_unit_test(test_max_chunk),
        cmocka_unit_test(test_max_loras),
        cmocka_unit_test(test_max_num_seqs_fcfs),
        cmocka_unit_test(test_preemption_and_recompute),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Block manager: allocation, reference counts, prefix-cache hits on whole
 * blocks, LRU eviction order, fork with copy of the partial block. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "engine/block_manager.h"

static cv_seq *make_seq(int n, int32_t base)
{
    int32_t t[256];
    for (int i = 0; i < n; i++)
        t[i] = base + i;
    cv_seq *s = seq_create(1, t, n);
    assert_non_null(s);
    return s;
}

/* Allocates and "computes" the whole sequence, registering its blocks. */
static void compute_all(block_manager *bm, cv_seq *s)
{
    assert_int_equal(bm_allocate(bm, s, s->n_tokens), 0);
    s->n_computed = s->n_tokens;
    bm_cache_computed(bm, s);
}

static void test_alloc_free(void **state)
{
    (void)state;
    block_manager *bm = bm_create(8, 16, true);
    cv_seq *s = make_seq(40, 100);
    assert_int_equal(bm_blocks_needed(bm, s, 40), 3);
    assert_int_equal(bm_allocate(bm, s, 40), 0);
    assert_int_equal(s->n_blocks, 3);
    assert_int_equal(bm_n_free(bm), 5);
    assert_int_equal(bm_allocate(bm, s, 48), 0); /* still fits in 3 blocks */
    assert_int_equal(s->n_blocks, 3);
    assert_int_equal(bm_allocate(bm, s, 16 * 9), -1); /* needs 9 > 8 */
    assert_int_equal(s->n_blocks, 3);
    bm_free_seq(bm, s);
    assert_int_equal(bm_n_free(bm), 8);
    assert_int_equal(s->n_blocks, 0);
    seq_free(s);
    bm_destroy(bm);
}

/* Prefix-cache keys include the LoRA adapter: K/V computed with one adapter
 * is never reused by another, nor by the base model, nor the other way. */
static void test_prefix_per_adapter(void **state)
{
    (void)state;
    block_manager *bm = bm_create(16, 16, true);
    cv_seq *base = make_seq(40, 100), *a1 = make_seq(40, 100), *a2 = make_seq(40, 100);
    a1->lora_id = 1;
    a2->lora_id = 2;
    compute_all(bm, base);
    assert_int_equal(bm_attach_cached_prefix(bm, a1), 0);
    compute_all(bm, a1);
    assert_int_equal(bm_attach_cached_prefix(bm, a2), 0);
    cv_seq *again = make_seq(40, 100), *again1 = make_seq(40, 100);
    again1->lora_id = 1;
    assert_int_equal(bm_attach_cached_prefix(bm, again), 32);
    assert_int_equal(again->block_table[0], base->block_table[0]);
    assert_int_equal(bm_attach_cached_prefix(bm, again1), 32);
    assert_int_equal(again1->block_table[0], a1->block_table[0]);
    assert_int_not_equal(a1->block_table[0], base->block_table[0]);
    seq_free(base), seq_free(a1), seq_free(a2), seq_free(again), seq_free(again1);
    bm_destroy(bm);
}

static void test_prefix_hits(void **state)
{
    (void)state;
    block_manager *bm = bm_create(16, 16, true);
    cv_seq *a = make_seq(40, 100);
    compute_all(bm, a);
    assert_int_equal(a->n_hashed_blocks, 2);
    int32_t a0 = a->block_table[0], a1 = a->block_table[1];

    /* Same first 32 tokens, different tail: two blocks shared while a runs. */
    cv_seq *b = make_seq(40, 100);
    b->tokens[35] = 7;
    assert_int_equal(bm_attach_cached_prefix(bm, b), 32);
    assert_int_equal(b->n_computed, 32);
    assert_int_equal(b->block_table[0], a0);
    assert_int_equal(b->block_table[1], a1);
    assert_int_equal(bm_ref_count(bm, a0), 2);

    /* Exactly 32 tokens: the last one must still run, so one block only. */
    cv_seq *c = make_seq(32, 100);
    assert_int_equal(bm_attach_cached_prefix(bm, c), 16);

    /* A different first block: nothing. */
    cv_seq *d = make_seq(40, 101);
    assert_int_equal(bm_attach_cached_prefix(bm, d), 0);

    /* Freed blocks keep their contents for later hits. */
    bm_free_seq(bm, a);
    bm_free_seq(bm, b);
    bm_free_seq(bm, c);
    assert_int_equal(bm_ref_count(bm, a0), 0);
    cv_seq *e = make_seq(33, 100);
    assert_int_equal(bm_attach_cached_prefix(bm, e), 32);
    assert_int_equal(bm_n_free(bm), 14);
    bm_free_seq(bm, e);
    assert_int_equal(bm_n_free(bm), 16);

    /* Disabled caching never hits. */
    block_manager *nc = bm_create(16, 16, false);
    compute_all(nc, d);
    bm_free_seq(nc, d);
    assert_int_equal(bm_attach_cached_prefix(nc, d), 0);
    bm_destroy(nc);
    seq_free(a), seq_free(b), seq_free(c), seq_free(d), seq_free(e);
    bm_destroy(bm);
}

static void test_lru_eviction(void **state)
{
    (void)state;
    /* Pool of 4: a caches blocks 0 and 1, then is freed (tail block first,
     * so the free list is 2, 3, 1, 0). */
    block_manager *bm = bm_create(4, 4, true);
    cv_seq *a = make_seq(9, 0);
    compute_all(bm, a); /* 3 blocks: 0, 1 full, 2 partial */
    assert_int_equal(a->block_table[0], 0);
    assert_int_equal(a->block_table[1], 1);
    bm_free_seq(bm, a);

    /* Three new blocks take 3, then 2, then 1: block 1's cached K/V is
     * evicted, block 0 (the prefix) survives. */
    cv_seq *x = make_seq(12, 500);
    assert_int_equal(bm_allocate(bm, x, 12), 0);
    assert_int_equal(x->block_table[0], 3);
    assert_int_equal(x->block_table[1], 2);
    assert_int_equal(x->block_table[2], 1);
    cv_seq *again = make_seq(9, 0);
    assert_int_equal(bm_attach_cached_prefix(bm, again), 4);
    assert_int_equal(again->block_table[0], 0);
    bm_free_seq(bm, again);
    bm_free_seq(bm, x);
    /* Everything evicted by a full allocation: no hits. */
    cv_seq *big = make_seq(16, 900);
    assert_int_equal(bm_allocate(bm, big, 16), 0);
    bm_free_seq(bm, big);
    assert_int_equal(bm_attach_cached_prefix(bm, again), 0);
    seq_free(a), seq_free(x), seq_free(again), seq_free(big);
    bm_destroy(bm);
}

static void test_fork(void **state)
{
    (void)state;
    block_manager *bm = bm_create(8, 16, true);
    cv_seq *p = make_seq(20, 0);
    compute_all(bm, p);
    cv_seq *c = seq_clone(p, 2);
    int32_t src = -1, dst = -1;
    assert_int_equal(bm_fork(bm, p, c, &src, &dst), 1);
    assert_int_equal(c->n_blocks, 2);
    assert_int_equal(c->block_table[0], p->block_table[0]);
    assert_int_equal(bm_ref_count(bm, p->block_table[0]), 2);
    assert_int_equal(src, p->block_table[1]);
    assert_int_equal(dst, c->block_table[1]);
    assert_int_not_equal(dst, src);
    assert_int_equal(c->n_computed, 20);
    assert_int_equal(bm_n_free(bm), 5);

    /* A prompt of whole blocks shares everything and copies nothing. */
    cv_seq *q = make_seq(32, 50);
    compute_all(bm, q);
    cv_seq *qc = seq_clone(q, 3);
    assert_int_equal(bm_fork(bm, q, qc, &src, &dst), 0);
    assert_int_equal(qc->n_blocks, 2);

    bm_free_seq(bm, p), bm_free_seq(bm, c), bm_free_seq(bm, q), bm_free_seq(bm, qc);
    assert_int_equal(bm_n_free(bm), 8);
    for (int b = 0; b < 8; b++)
        assert_int_equal(bm_ref_count(bm, b), 0);
    seq_free(p), seq_free(c), seq_free(q), seq_free(qc);
    bm_destroy(bm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_free),
        cmocka_unit_test(test_prefix_hits),
        cmocka_unit_test(test_prefix_per_adapter),
        cmocka_unit_test(test_lru_eviction),
        cmocka_unit_test(test_fork),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

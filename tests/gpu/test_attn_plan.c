/* The host plan of the tensor-core attention (cuda_attn_plan_make,
 * cuda_attn_work_fill): which kernels a step launches, the prefill tile
 * height, the decode partition, work list, grid and workspace size, eager
 * and for a graph (fixed grid). Host code only: runs without a GPU. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "backend/cuda/attn/attn.h"

enum { N_SMS = 132 };

/* n one-token sequences (a decode step): query_start 0..n, every context
 * len (lens may then be edited). */
static void decodes(int32_t *qs, int32_t *lens, int n, int len)
{
    for (int s = 0; s <= n; s++)
        qs[s] = s;
    for (int s = 0; s < n; s++)
        lens[s] = len;
}

/* 256 decodes at 1.1k context: 256 items of 2048 keys already give every
 * SM 4 CTAs (with 8 kv heads), so one item per sequence: no workspace, no
 * reduce. A graph's grid is a CTA per sequence (more than the 66 per kv
 * head the target asks for), and it always merges (through the
 * workspace). */
static void test_decode_batch(void **state)
{
    (void)state;
    int32_t qs[257], lens[256];
    decodes(qs, lens, 256, 0);
    for (int s = 0; s < 256; s++)
        lens[s] = 1000 + s % 101;
    cuda_attn_plan p;
    cuda_attn_plan_make(&p, qs, lens, 256, 32, 8, 128, N_SMS, 0, 0);
    assert_int_equal(p.has_prefill, 0);
    assert_int_equal(p.has_decode, 1);
    assert_int_equal(p.max_seq_len, 1100);
    assert_int_equal(p.partition, 2048);
    assert_int_equal(p.n_items, 256);
    assert_int_equal(p.grid_x, 256);
    assert_int_equal(p.reduce, 0);
    assert_int_equal(p.ws_floats, 0);
    cuda_attn_plan_make(&p, qs, lens, 256, 32, 8, 128, N_SMS, 0, 1);
    assert_int_equal(p.partition, 2048);
    assert_int_equal(p.n_items, 256);
    assert_int_equal(p.grid_x, 256);
    /* 256 sequences, 256 * 1100 tokens: 256 + 138 + 2 x 66. */
    assert_int_equal(cuda_attn_max_items(256, 256L * 1100, 8, N_SMS), 526);
    assert_int_equal(p.reduce, 1);
    assert_int_equal(p.ws_floats, (size_t)256 * 32 * 130);
}

/* 64 decodes at 288 keys: eager halves the partition to 256 (128 items,
 * a CTA each); a graph's 66 CTAs per kv head take one item each, so its
 * partition stops at 512 (64 items) rather than give CTAs two. */
static void test_decode_graph_partition(void **state)
{
    (void)state;
    int32_t qs[65], lens[64];
    decodes(qs, lens, 64, 288);
    cuda_attn_plan p;
    cuda_attn_plan_make(&p, qs, lens, 64, 32, 8, 128, N_SMS, 0, 0);
    assert_int_equal(p.partition, 256);
    assert_int_equal(p.n_items, 128);
    assert_int_equal(p.grid_x, 128);
    cuda_attn_plan_make(&p, qs, lens, 64, 32, 8, 128, N_SMS, 0, 1);
    assert_int_equal(p.partition, 512);
    assert_int_equal(p.n_items, 64);
    assert_int_equal(p.grid_x, 66);
}

/* One sequence at 4k context: partitions are halved to 64 keys (64 items x
 * 8 kv heads = 512 CTAs, about 4 per SM); 16 at 4k stop at 512 keys. */
static void test_decode_partition(void **state)
{
    (void)state;
    const int32_t qs[2] = {0, 1}, lens[1] = {4096};
    cuda_attn_plan p;
    cuda_attn_plan_make(&p, qs, lens, 1, 32, 8, 128, N_SMS, 0, 0);
    assert_int_equal(p.partition, 64);
    assert_int_equal(p.n_items, 64);
    assert_int_equal(p.grid_x, 64);
    assert_int_equal(p.reduce, 1);
    assert_int_equal(p.ws_floats, (size_t)64 * 32 * 130);

    int32_t qs16[17], lens16[16];
    decodes(qs16, lens16, 16, 4096);
    cuda_attn_plan_make(&p, qs16, lens16, 16, 32, 8, 128, N_SMS, 0, 0);
    assert_int_equal(p.partition, 512);
    assert_int_equal(p.n_items, 128);
}

/* Short contexts fit one item each: no workspace, no reduce. */
static void test_decode_one_partition(void **state)
{
    (void)state;
    const int32_t qs[3] = {0, 1, 2}, lens[2] = {30, 7};
    cuda_attn_plan p;
    cuda_attn_plan_make(&p, qs, lens, 2, 4, 2, 32, N_SMS, 0, 0);
    assert_int_equal(p.partition, 64);
    assert_int_equal(p.n_items, 2);
    assert_int_equal(p.reduce, 0);
    assert_int_equal(p.ws_floats, 0);
}

/* The work array: header, each sequence's first item, the items in order
 * (a prefill sequence owns none). */
static void test_work_fill(void **state)
{
    (void)state;
    const int32_t qs[4] = {0, 1, 41, 42}, lens[3] = {130, 40, 7};
    cuda_attn_plan p;
    cuda_attn_plan_make(&p, qs, lens, 3, 4, 2, 32, N_SMS, 64, 0);
    assert_int_equal(p.has_prefill, 1);
    assert_int_equal(p.n_items, 4);
    assert_int_equal(p.reduce, 1);
    assert_int_equal(p.ws_floats, (size_t)4 * 4 * 34);
    assert_int_equal(cuda_attn_work_ints(3, 4), 3 + 4 + 4);
    int32_t work[11];
    cuda_attn_work_fill(&p, qs, lens, 3, 9, work);
    const int32_t want[11] = {64, 4, 9, 0, 3, 3, 4, 0, 1, 2, 2 << 16};
    assert_memory_equal(work, want, sizeof want);
}

/* Long prompts get 128-row tiles; short chunks, or too few CTAs to give
 * every SM two, get 64. A forced partition is kept. */
static void test_prefill_tiles(void **state)
{
    (void)state;
    const int32_t long_qs[3] = {0, 4096, 8192}, long_lens[2] = {4096, 5000};
    cuda_attn_plan p;
    cuda_attn_plan_make(&p, long_qs, long_lens, 2, 32, 8, 128, N_SMS, 256, 0);
    assert_int_equal(p.has_prefill, 1);
    assert_int_equal(p.has_decode, 0);
    assert_int_equal(p.tile_rows, 128);
    assert_int_equal(p.partition, 256);

    const int32_t short_qs[4] = {0, 40, 80, 120}, short_lens[3] = {40, 100, 60};
    cuda_attn_plan_make(&p, short_qs, short_lens, 3, 32, 8, 128, N_SMS, 0, 0);
    assert_int_equal(p.tile_rows, 64);

    /* 1024 tokens x 8 heads = 64 CTAs of 128 rows: too few. */
    const int32_t few_qs[2] = {0, 1024}, few_lens[1] = {1024};
    cuda_attn_plan_make(&p, few_qs, few_lens, 1, 8, 8, 128, N_SMS, 0, 0);
    assert_int_equal(p.tile_rows, 64);
}

/* A mixed step: both kernels; the decode partition and workspace follow
 * the decode sequences only, the tile height the prefill ones only. */
static void test_mixed_step(void **state)
{
    (void)state;
    int32_t qs[258], lens[257];
    decodes(qs, lens, 255, 1100);
    qs[256] = 255 + 4096;
    lens[255] = 4096;
    qs[257] = qs[256] + 1;
    lens[256] = 2000;
    cuda_attn_plan p;
    cuda_attn_plan_make(&p, qs, lens, 257, 32, 8, 128, N_SMS, 0, 0);
    assert_int_equal(p.has_prefill, 1);
    assert_int_equal(p.has_decode, 1);
    assert_int_equal(p.tile_rows, 128);
    assert_int_equal(p.max_seq_len, 2000);
    assert_int_equal(p.partition, 2048);
    assert_int_equal(p.n_items, 256);
    assert_int_equal(p.reduce, 0);
    assert_int_equal(p.ws_floats, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_batch),     cmocka_unit_test(test_decode_graph_partition),
        cmocka_unit_test(test_decode_partition), cmocka_unit_test(test_decode_one_partition),
        cmocka_unit_test(test_work_fill),        cmocka_unit_test(test_prefill_tiles),
        cmocka_unit_test(test_mixed_step),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

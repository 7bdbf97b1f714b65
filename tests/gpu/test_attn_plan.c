/* The host plan of the tensor-core attention (cuda_attn_plan_make,
 * cuda_attn_decode_partition, cuda_attn_decode_workspace_floats): which
 * kernels a step launches, the prefill tile height, the decode partition
 * and the workspace size. Host code only: runs without a GPU. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "backend/cuda/attn/attn.h"

enum { N_SMS = 132 };

/* 256 decodes at 1.1k context: 2048 CTAs already fill the GPU, so one
 * 2048-key partition per (sequence, kv head) and no workspace. */
static void test_decode_batch(void **state)
{
    (void)state;
    int32_t qs[257], lens[256];
    for (int s = 0; s <= 256; s++)
        qs[s] = s;
    for (int s = 0; s < 256; s++)
        lens[s] = 1000 + s % 101;
    cuda_attn_plan p;
    cuda_attn_plan_make(&p, qs, lens, 256, 32, 8, 128, N_SMS, 0);
    assert_int_equal(p.has_prefill, 0);
    assert_int_equal(p.has_decode, 1);
    assert_int_equal(p.max_seq_len, 1100);
    assert_int_equal(p.partition, 2048);
    assert_int_equal(p.n_parts, 1);
    assert_int_equal(p.ws_floats, 0);
}

/* One sequence at 4k context has 8 CTAs per partition row: partitions are
 * halved to 64 keys (64 x 8 = 512 CTAs, about 4 per SM). */
static void test_decode_single_sequence(void **state)
{
    (void)state;
    const int32_t qs[2] = {0, 1}, lens[1] = {4096};
    cuda_attn_plan p;
    cuda_attn_plan_make(&p, qs, lens, 1, 32, 8, 128, N_SMS, 0);
    assert_int_equal(p.partition, 64);
    assert_int_equal(p.n_parts, 64);
    assert_int_equal(cuda_attn_decode_partition(1, 8, 4096, N_SMS), 64);
    assert_int_equal(cuda_attn_decode_partition(64, 8, 4096, N_SMS), 2048);
    assert_int_equal(cuda_attn_decode_partition(16, 8, 4096, N_SMS), 512);
}

/* A short context fits one partition: no workspace, no reduce. */
static void test_decode_one_partition(void **state)
{
    (void)state;
    const int32_t qs[3] = {0, 1, 2}, lens[2] = {30, 7};
    cuda_attn_plan p;
    cuda_attn_plan_make(&p, qs, lens, 2, 4, 2, 32, N_SMS, 0);
    assert_int_equal(p.partition, 64);
    assert_int_equal(p.n_parts, 1);
    assert_int_equal(p.ws_floats, 0);
    cuda_attn_paged a = {.n_seqs = 2, .n_heads = 4, .head_dim = 32};
    assert_int_equal(cuda_attn_decode_workspace_floats(&a, 30, 64), 0);
    assert_int_equal(cuda_attn_decode_workspace_floats(&a, 130, 64), (size_t)2 * 4 * 3 * 34);
}

/* Long prompts get 128-row tiles; short chunks, or too few CTAs to give
 * every SM two, get 64. A forced partition is kept. */
static void test_prefill_tiles(void **state)
{
    (void)state;
    const int32_t long_qs[3] = {0, 4096, 8192}, long_lens[2] = {4096, 5000};
    cuda_attn_plan p;
    cuda_attn_plan_make(&p, long_qs, long_lens, 2, 32, 8, 128, N_SMS, 256);
    assert_int_equal(p.has_prefill, 1);
    assert_int_equal(p.has_decode, 0);
    assert_int_equal(p.tile_rows, 128);
    assert_int_equal(p.partition, 256);

    const int32_t short_qs[4] = {0, 40, 80, 120}, short_lens[3] = {40, 100, 60};
    cuda_attn_plan_make(&p, short_qs, short_lens, 3, 32, 8, 128, N_SMS, 0);
    assert_int_equal(p.tile_rows, 64);

    /* 1024 tokens x 8 heads = 64 CTAs of 128 rows: too few. */
    const int32_t few_qs[2] = {0, 1024}, few_lens[1] = {1024};
    cuda_attn_plan_make(&p, few_qs, few_lens, 1, 8, 8, 128, N_SMS, 0);
    assert_int_equal(p.tile_rows, 64);
}

/* A mixed step: both kernels; the decode partition and workspace follow
 * the decode sequences only, the tile height the prefill ones only. */
static void test_mixed_step(void **state)
{
    (void)state;
    int32_t qs[258], lens[257];
    for (int s = 0; s <= 255; s++)
        qs[s] = s;
    for (int s = 0; s < 255; s++)
        lens[s] = 1100;
    qs[256] = 255 + 4096;
    lens[255] = 4096;
    qs[257] = qs[256] + 1;
    lens[256] = 2000;
    cuda_attn_plan p;
    cuda_attn_plan_make(&p, qs, lens, 257, 32, 8, 128, N_SMS, 0);
    assert_int_equal(p.has_prefill, 1);
    assert_int_equal(p.has_decode, 1);
    assert_int_equal(p.tile_rows, 128);
    assert_int_equal(p.max_seq_len, 2000);
    assert_int_equal(p.partition, 2048);
    assert_int_equal(p.n_parts, 1);
    assert_int_equal(p.ws_floats, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_batch),         cmocka_unit_test(test_decode_single_sequence),
        cmocka_unit_test(test_decode_one_partition), cmocka_unit_test(test_prefill_tiles),
        cmocka_unit_test(test_mixed_step),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

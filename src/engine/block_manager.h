/* KV block manager: a fixed pool of n_blocks blocks of block_size tokens,
 * reference counted, with automatic prefix caching as vLLM does it.
 *
 * A full block whose K/V has been computed is registered under the chained
 * hash of (hash of the block before it, its token ids), the chain rooted
 * at the sequence's LoRA adapter (vLLM's extra keys: two adapters never
 * share a block); a new sequence whose leading blocks hash the same, with
 * the same adapter, reuses them instead of recomputing.
 * Blocks whose reference count drops to zero go to the tail of a free list;
 * allocation takes the head, so unreferenced cached blocks are evicted
 * least recently freed first and a freed block stays reusable until then.
 *
 * Only a sequence's last, partial block is ever written, and a partial
 * block is never shared except right after a fork (n > 1), which copies it
 * (copy-on-write done eagerly: both copies are about to be written). */
#ifndef CV_ENGINE_BLOCK_MANAGER_H
#define CV_ENGINE_BLOCK_MANAGER_H

#include <stdbool.h>
#include <stdint.h>

#include "sequence.h"

typedef struct block_manager block_manager;

block_manager *bm_create(int n_blocks, int block_size, bool enable_caching);
void bm_destroy(block_manager *bm);

/* Blocks with no reference (free or holding evictable cached K/V). */
int bm_n_free(const block_manager *bm);

/* For a sequence with no blocks: attaches the cached blocks matching the
 * longest prefix of its tokens (whole blocks, always leaving at least one
 * token to compute) and sets n_computed to their length. Returns the number
 * of tokens found. */
int bm_attach_cached_prefix(block_manager *bm, cv_seq *seq);

/* Blocks seq needs beyond those it holds to store n_total tokens. */
int bm_blocks_needed(const block_manager *bm, const cv_seq *seq, int n_total);

/* Grows seq's block table to hold n_total tokens. Returns -1 (seq
 * unchanged) when the pool lacks free blocks, or on allocation failure. */
int bm_allocate(block_manager *bm, cv_seq *seq, int n_total);

/* Registers seq's computed full blocks with the prefix cache. */
void bm_cache_computed(block_manager *bm, cv_seq *seq);

/* Drops seq's references; its cached blocks stay reusable until evicted.
 * Leaves seq with no blocks and n_computed = 0. */
void bm_free_seq(block_manager *bm, cv_seq *seq);

/* Makes child share parent's blocks. A partial last block is copied into a
 * fresh block: *copy_src -> *copy_dst is set and 1 returned (the caller
 * copies the K/V); 0 when nothing needs copying; -1 when no block is free
 * (child left without blocks). */
int bm_fork(block_manager *bm, const cv_seq *parent, cv_seq *child, int32_t *copy_src,
            int32_t *copy_dst);

/* The reference count of block b (tests). */
int bm_ref_count(const block_manager *bm, int b);

#endif

/* Block pool, free list (LRU eviction order) and prefix-cache hash table. */
#include <stdlib.h>
#include <string.h>

#include "block_manager.h"

typedef struct bm_block {
    int ref;
    bool cached; /* registered in the hash table under hash */
    uint64_t hash;
    int lora_id;    /* adapter whose K/V the block holds (0: none) */
    int prev, next; /* free-list links; -1 at the ends */
    bool in_free;
    int hnext; /* next block in the same hash bucket; -1 at the end */
} bm_block;

struct block_manager {
    int n_blocks, block_size;
    bool caching;
    bm_block *blocks;  /* (n_blocks) */
    int32_t *contents; /* (n_blocks, block_size) token ids of cached blocks */
    int free_head, free_tail, n_free;
    int *buckets;  /* (n_buckets) first block of each hash chain, -1 = empty */
    int n_buckets; /* power of two */
};

#define HASH_ROOT 0x243f6a8885a308d3ULL

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static uint64_t block_hash(uint64_t parent, const int32_t *tokens, int n)
{
    uint64_t h = mix64(parent);
    for (int i = 0; i < n; i++)
        h = mix64(h ^ (uint32_t)tokens[i]) + 0x9e3779b97f4a7c15ULL;
    return h;
}

/* The hash chain of a sequence starts from its adapter: K/V computed with
 * one adapter is never another's (nor the base model's) prefix. */
static uint64_t root_hash(const cv_seq *seq)
{
    return seq->lora_id ? mix64(HASH_ROOT ^ (uint64_t)seq->lora_id) : HASH_ROOT;
}

static void free_list_remove(block_manager *bm, int b)
{
    bm_block *k = &bm->blocks[b];
    if (k->prev >= 0)
        bm->blocks[k->prev].next = k->next;
    else
        bm->free_head = k->next;
    if (k->next >= 0)
        bm->blocks[k->next].prev = k->prev;
    else
        bm->free_tail = k->prev;
    k->prev = k->next = -1;
    k->in_free = false;
    bm->n_free--;
}

static void free_list_append(block_manager *bm, int b)
{
    bm_block *k = &bm->blocks[b];
    k->prev = bm->free_tail;
    k->next = -1;
    if (bm->free_tail >= 0)
        bm->blocks[bm->free_tail].next = b;
    else
        bm->free_head = b;
    bm->free_tail = b;
    k->in_free = true;
    bm->n_free++;
}

block_manager *bm_create(int n_blocks, int block_size, bool enable_caching)
{
    if (n_blocks <= 0 || block_size <= 0) return NULL;
    block_manager *bm = calloc(1, sizeof(*bm));
    if (!bm) return NULL;
    bm->n_blocks = n_blocks;
    bm->block_size = block_size;
    bm->caching = enable_caching;
    bm->n_buckets = 1;
    while (bm->n_buckets < 2 * n_blocks)
        bm->n_buckets *= 2;
    bm->blocks = calloc((size_t)n_blocks, sizeof(bm_block));
    bm->contents = malloc((size_t)n_blocks * (size_t)block_size * sizeof(int32_t));
    bm->buckets = malloc((size_t)bm->n_buckets * sizeof(int));
    if (!bm->blocks || !bm->contents || !bm->buckets) {
        bm_destroy(bm);
        return NULL;
    }
    for (int i = 0; i < bm->n_buckets; i++)
        bm->buckets[i] = -1;
    bm->free_head = bm->free_tail = -1;
    for (int b = 0; b < n_blocks; b++) {
        bm->blocks[b].hnext = -1;
        free_list_append(bm, b);
    }
    return bm;
}

void bm_destroy(block_manager *bm)
{
    if (!bm) return;
    free(bm->blocks);
    free(bm->contents);
    free(bm->buckets);
    free(bm);
}

int bm_n_free(const block_manager *bm)
{
    return bm->n_free;
}

int bm_ref_count(const block_manager *bm, int b)
{
    return bm->blocks[b].ref;
}

static int cache_find(const block_manager *bm, uint64_t hash, const int32_t *tokens, int lora_id)
{
    for (int b = bm->buckets[hash & (uint64_t)(bm->n_buckets - 1)]; b >= 0;
         b = bm->blocks[b].hnext) {
        /* Compare contents too, so a hash collision can never hand out
         * another prompt's K/V. */
        if (bm->blocks[b].hash == hash && bm->blocks[b].lora_id == lora_id &&
            !memcmp(bm->contents + (size_t)b * bm->block_size, tokens,
                    (size_t)bm->block_size * sizeof(int32_t)))
            return b;
    }
    return -1;
}

static void cache_remove(block_manager *bm, int b)
{
    int *link = &bm->buckets[bm->blocks[b].hash & (uint64_t)(bm->n_buckets - 1)];
    while (*link != b)
        link = &bm->blocks[*link].hnext;
    *link = bm->blocks[b].hnext;
    bm->blocks[b].hnext = -1;
    bm->blocks[b].cached = false;
}

static void cache_insert(block_manager *bm, int b, uint64_t hash, const int32_t *tokens,
                         int lora_id)
{
    bm_block *k = &bm->blocks[b];
    k->hash = hash;
    k->lora_id = lora_id;
    k->cached = true;
    memcpy(bm->contents + (size_t)b * bm->block_size, tokens,
           (size_t)bm->block_size * sizeof(int32_t));
    int *head = &bm->buckets[hash & (uint64_t)(bm->n_buckets - 1)];
    k->hnext = *head;
    *head = b;
}

static int table_reserve(cv_seq *seq, int n)
{
    if (n <= seq->cap_blocks) return 0;
    int cap = seq->cap_blocks ? seq->cap_blocks : 8;
    while (cap < n)
        cap *= 2;
    int32_t *t = realloc(seq->block_table, (size_t)cap * sizeof(int32_t));
    if (!t) return -1;
    seq->block_table = t;
    seq->cap_blocks = cap;
    return 0;
}

static void take_ref(block_manager *bm, int b)
{
    if (bm->blocks[b].in_free) free_list_remove(bm, b);
    bm->blocks[b].ref++;
}

int bm_attach_cached_prefix(block_manager *bm, cv_seq *seq)
{
    if (!bm->caching || seq->skip_prefix_cache || seq->n_blocks > 0) return 0;
    int max_blocks = (seq->n_tokens - 1) / bm->block_size;
    if (table_reserve(seq, max_blocks) < 0) return 0;
    uint64_t h = root_hash(seq);
    int n = 0;
    for (; n < max_blocks; n++) {
        const int32_t *toks = seq->tokens + (size_t)n * bm->block_size;
        uint64_t hn = block_hash(h, toks, bm->block_size);
        int b = cache_find(bm, hn, toks, seq->lora_id);
        if (b < 0) break;
        take_ref(bm, b);
        seq->block_table[n] = b;
        h = hn;
    }
    seq->n_blocks = n;
    seq->n_hashed_blocks = n;
    seq->last_hash = h;
    seq->n_computed = n * bm->block_size;
    return seq->n_computed;
}

int bm_blocks_needed(const block_manager *bm, const cv_seq *seq, int n_total)
{
    int need = (n_total + bm->block_size - 1) / bm->block_size - seq->n_blocks;
    return need > 0 ? need : 0;
}

static int alloc_block(block_manager *bm)
{
    int b = bm->free_head;
    free_list_remove(bm, b);
    if (bm->blocks[b].cached) cache_remove(bm, b); /* evict: its K/V is about to be overwritten */
    bm->blocks[b].ref = 1;
    return b;
}

int bm_allocate(block_manager *bm, cv_seq *seq, int n_total)
{
    int need = bm_blocks_needed(bm, seq, n_total);
    if (need == 0) return 0;
    if (need > bm->n_free || table_reserve(seq, seq->n_blocks + need) < 0) return -1;
    for (int i = 0; i < need; i++)
        seq->block_table[seq->n_blocks++] = alloc_block(bm);
    return 0;
}

void bm_cache_computed(block_manager *bm, cv_seq *seq)
{
    if (!bm->caching) return;
    /* A placeholder (async_scheduling) is computed before its id is known:
     * only blocks of known tokens can be keyed. */
    const int known = seq->n_computed < seq->n_tokens ? seq->n_computed : seq->n_tokens;
    while ((seq->n_hashed_blocks + 1) * bm->block_size <= known) {
        int i = seq->n_hashed_blocks;
        const int32_t *toks = seq->tokens + (size_t)i * bm->block_size;
        uint64_t h = block_hash(seq->n_hashed_blocks ? seq->last_hash : root_hash(seq), toks,
                                bm->block_size);
        int b = seq->block_table[i];
        /* A block computed twice (two identical prompts in flight) stays
         * registered once; the duplicate is freed as an ordinary block. */
        if (!bm->blocks[b].cached && cache_find(bm, h, toks, seq->lora_id) < 0)
            cache_insert(bm, b, h, toks, seq->lora_id);
        seq->last_hash = h;
        seq->n_hashed_blocks++;
    }
}

void bm_free_seq(block_manager *bm, cv_seq *seq)
{
    /* Last block first, so the tail of a sequence is evicted before the
     * prefix other requests are likelier to share. */
    for (int i = seq->n_blocks - 1; i >= 0; i--) {
        int b = seq->block_table[i];
        if (--bm->blocks[b].ref == 0) free_list_append(bm, b);
    }
    seq->n_blocks = 0;
    seq->n_computed = 0;
    seq->n_hashed_blocks = 0;
    seq->last_hash = 0;
}

int bm_fork(block_manager *bm, const cv_seq *parent, cv_seq *child, int32_t *copy_src,
            int32_t *copy_dst)
{
    int n_full = parent->n_computed / bm->block_size;
    bool partial = parent->n_blocks > n_full;
    if ((partial && bm->n_free == 0) || table_reserve(child, parent->n_blocks) < 0) {
        child->n_computed = 0;
        return -1;
    }
    for (int i = 0; i < n_full && i < parent->n_blocks; i++) {
        child->block_table[i] = parent->block_table[i];
        bm->blocks[parent->block_table[i]].ref++;
    }
    child->n_blocks = n_full < parent->n_blocks ? n_full : parent->n_blocks;
    child->n_hashed_blocks = parent->n_hashed_blocks;
    child->last_hash = parent->last_hash;
    child->n_computed = parent->n_computed;
    if (!partial) return 0;
    int dst = alloc_block(bm);
    child->block_table[child->n_blocks++] = dst;
    *copy_src = parent->block_table[n_full];
    *copy_dst = dst;
    return 1;
}

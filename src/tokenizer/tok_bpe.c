/* The BPE model: vocab and merge-rank hash tables, and the merge loop over
 * one pre-token (HF's Word::merge_all: repeatedly merge the adjacent pair
 * of lowest rank, leftmost first), with byte_fallback, unk/fuse_unk,
 * ignore_merges and a cache of recent words. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

enum { CHAR_TABLE = 65536, SCAN_MAX_SYMBOLS = 96 };

/* ---- lookups ------------------------------------------------------------ */

int32_t tok_bpe_lookup(const tok_bpe *m, const char *s, size_t n)
{
    uint64_t h = tok_hash(s, n);
    uint32_t tag = (uint32_t)(h >> 32);
    for (size_t i = h & m->vocab_map.mask;; i = (i + 1) & m->vocab_map.mask) {
        tok_strslot sl = m->vocab_map.slots[i];
        if (sl.id < 0) return -1;
        if (sl.tag == tag && m->vocab_len[sl.id] == n && !memcmp(m->vocab_str[sl.id], s, n))
            return sl.id;
    }
}

/* splitmix64's finalizer: every key bit reaches the low bits */
static inline size_t merge_slot(uint64_t key, size_t mask)
{
    key ^= key >> 30;
    key *= 0xbf58476d1ce4e5b9ull;
    key ^= key >> 27;
    key *= 0x94d049bb133111ebull;
    key ^= key >> 31;
    return (size_t)key & mask;
}

static inline const tok_merge_slot *merge_get(const tok_bpe *m, int32_t a, int32_t b)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t i = merge_slot(key, m->merge_mask);; i = (i + 1) & m->merge_mask) {
        const tok_merge_slot *s = &m->merges[i];
        if (s->key == key) return s;
        if (s->key == UINT64_MAX) return NULL;
    }
}

/* ---- the merge loop ------------------------------------------------------ */

typedef struct sym {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
    uint32_t rank;      /* rank of (this, next), UINT32_MAX when none */
    int32_t new_id;
} sym;

typedef struct word {
    sym *v;
    size_t n, cap;
    sym local[64];
} word;

static int word_add(word *w, int32_t id, cv_error *err)
{
    if (w->n == w->cap) {
        size_t cap = w->cap * 2;
        sym *v = w->v == w->local ? malloc(cap * sizeof *v) : realloc(w->v, cap * sizeof *v);
        if (!v) return cv_errorf(err, "tokenizer: out of memory (word of %zu symbols)", cap);
        if (w->v == w->local) memcpy(v, w->local, sizeof w->local);
        w->v = v;
        w->cap = cap;
    }
    int32_t i = (int32_t)w->n++;
    w->v[i] = (sym){id, i - 1, i + 1, UINT32_MAX, -1};
    return 0;
}

static void pair_rank(const tok_bpe *m, sym *v, int32_t i)
{
    v[i].rank = UINT32_MAX;
    if (v[i].next < 0) return;
    const tok_merge_slot *s = merge_get(m, v[i].id, v[v[i].next].id);
    if (s) {
        v[i].rank = s->rank;
        v[i].new_id = s->new_id;
    }
}

/* Merges symbol i with its successor (which disappears). */
static void merge_at(sym *v, int32_t i)
{
    int32_t j = v[i].next;
    v[i].id = v[i].new_id;
    v[i].next = v[j].next;
    if (v[j].next >= 0) v[v[j].next].prev = i;
    v[j].id = -1;
}

/* Short words: keep each pair's rank and scan for the minimum; only the
 * two pairs touching a merge are looked up again. */
static void merge_scan(const tok_bpe *m, sym *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        pair_rank(m, v, (int32_t)i);
    for (;;) {
        int32_t best = -1;
        uint32_t best_rank = UINT32_MAX;
        for (int32_t i = 0; i >= 0; i = v[i].next)
            if (v[i].rank < best_rank) {
                best_rank = v[i].rank;
                best = i;
            }
        if (best < 0) return;
        merge_at(v, best);
        pair_rank(m, v, best);
        if (v[best].prev >= 0) pair_rank(m, v, v[best].prev);
    }
}

/* Long words: a binary min-heap of (rank, position) candidates; stale
 * entries are dropped when popped, as HF does. */
typedef struct cand {
    uint32_t rank;
    int32_t pos, new_id;
} cand;

static bool cand_less(cand a, cand b)
{
    return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos;
}

static void heap_push(cand *h, size_t *n, cand c)
{
    size_t i = (*n)++;
    while (i && cand_less(c, h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = c;
}

static cand heap_pop(cand *h, size_t *n)
{
    cand top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && cand_less(h[c + 1], h[c])) c++;
        if (!cand_less(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

static void push_pair(const tok_bpe *m, sym *v, int32_t i, cand *h, size_t *nh)
{
    pair_rank(m, v, i);
    if (v[i].rank != UINT32_MAX) heap_push(h, nh, (cand){v[i].rank, i, v[i].new_id});
}

static int merge_heap(const tok_bpe *m, sym *v, size_t n, cv_error *err)
{
    /* each merge pushes at most two candidates and removes one symbol */
    cand *h = malloc(3 * n * sizeof *h);
    if (!h) return cv_errorf(err, "tokenizer: out of memory (word of %zu symbols)", n);
    size_t nh = 0;
    for (size_t i = 0; i < n; i++)
        push_pair(m, v, (int32_t)i, h, &nh);
    while (nh) {
        cand c = heap_pop(h, &nh);
        sym *s = &v[c.pos];
        if (s->id < 0 || s->next < 0) continue;
        const tok_merge_slot *ms = merge_get(m, s->id, v[s->next].id);
        if (!ms || ms->new_id != c.new_id) continue;
        s->new_id = ms->new_id;
        merge_at(v, c.pos);
        push_pair(m, v, c.pos, h, &nh);
        if (s->prev >= 0) push_pair(m, v, s->prev, h, &nh);
    }
    free(h);
    return 0;
}

/* ---- one word ------------------------------------------------------------ */

/* Initial symbols: one per character (with continuing_subword_prefix /
 * end_of_word_suffix), bytes through "<0xXX>" when byte_fallback, unknown
 * characters as unk (fused when fuse_unk). */
static int initial_symbols(const tok_bpe *m, const char *w, size_t n, word *wd, cv_error *err)
{
    bool plain = !m->prefix && !m->suffix;
    int32_t unk_pending = -1;
    char tmp[256];
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = (size_t)tok_utf8_next(w + i, n - i, &cp);
        int32_t id = -1;
        if (plain && cp < CHAR_TABLE) {
            id = m->char_id[cp];
        } else {
            const char *pre = i > 0 && m->prefix ? m->prefix : "";
            const char *suf = i + k == n && m->suffix ? m->suffix : "";
            size_t lp = strlen(pre), ls = strlen(suf);
            if (lp + k + ls <= sizeof tmp) {
                memcpy(tmp, pre, lp);
                memcpy(tmp + lp, w + i, k);
                memcpy(tmp + lp + k, suf, ls);
                id = tok_bpe_lookup(m, tmp, lp + k + ls);
            }
        }
        if (id >= 0) {
            if (unk_pending >= 0 && word_add(wd, unk_pending, err)) return -1;
            unk_pending = -1;
            if (word_add(wd, id, err)) return -1;
        } else {
            bool bytes_ok = m->byte_fallback;
            for (size_t b = 0; bytes_ok && b < k; b++)
                bytes_ok = m->byte_id[(unsigned char)w[i + b]] >= 0;
            if (bytes_ok) {
                /* as HF: a pending unk is not flushed before the bytes */
                for (size_t b = 0; b < k; b++)
                    if (word_add(wd, m->byte_id[(unsigned char)w[i + b]], err)) return -1;
            } else if (m->unk_id >= 0) {
                if (unk_pending >= 0 && !m->fuse_unk && word_add(wd, unk_pending, err)) return -1;
                unk_pending = m->unk_id;
            } else if (m->unk_missing) {
                return cv_errorf(err, "tokenizer: unk_token \"%s\" is not in the vocab",
                                 m->unk_missing);
            }
        }
        i += k;
    }
    if (unk_pending >= 0 && word_add(wd, unk_pending, err)) return -1;
    if (wd->n) {
        wd->v[0].prev = -1;
        wd->v[wd->n - 1].next = -1;
    }
    return 0;
}

static bool cache_get(tok_bpe *m, const char *w, size_t n, uint64_t h, tok_ids *out, int *rc,
                      cv_error *err)
{
    tok_cache_slot *s = &m->cache[h & (TOK_CACHE_SLOTS - 1)];
    int32_t ids[TOK_CACHE_IDS];
    size_t k = 0;
    bool hit = false;
    pthread_mutex_lock(&m->cache_lock);
    if (s->key_len == n && !memcmp(s->key, w, n)) {
        hit = true;
        k = s->n_ids;
        memcpy(ids, s->ids, k * sizeof *ids);
    }
    pthread_mutex_unlock(&m->cache_lock);
    *rc = 0;
    for (size_t i = 0; hit && i < k && !*rc; i++)
        *rc = tok_ids_push(out, ids[i], err);
    return hit;
}

static void cache_put(tok_bpe *m, const char *w, size_t n, uint64_t h, const int32_t *ids, size_t k)
{
    tok_cache_slot *s = &m->cache[h & (TOK_CACHE_SLOTS - 1)];
    pthread_mutex_lock(&m->cache_lock);
    s->key_len = (uint8_t)n;
    s->n_ids = (uint8_t)k;
    memcpy(s->key, w, n);
    memcpy(s->ids, ids, k * sizeof *ids);
    pthread_mutex_unlock(&m->cache_lock);
}

int tok_bpe_word(tok_bpe *m, const char *w, size_t n, tok_ids *out, cv_error *err)
{
    bool cacheable = m->cache && n > 0 && n <= TOK_CACHE_KEY_BYTES;
    uint64_t h = 0;
    int rc;
    if (cacheable) {
        h = tok_hash(w, n);
        if (cache_get(m, w, n, h, out, &rc, err)) return rc;
    }
    if (m->ignore_merges) {
        int32_t id = tok_bpe_lookup(m, w, n);
        if (id >= 0) return tok_ids_push(out, id, err);
    }
    word wd = {.v = NULL, .n = 0, .cap = 64};
    wd.v = wd.local;
    size_t start = out->n;
    rc = initial_symbols(m, w, n, &wd, err);
    if (!rc && wd.n > 1) {
        if (wd.n <= SCAN_MAX_SYMBOLS)
            merge_scan(m, wd.v, wd.n);
        else
            rc = merge_heap(m, wd.v, wd.n, err);
    }
    for (int32_t i = 0; !rc && wd.n && i >= 0; i = wd.v[i].next)
        rc = tok_ids_push(out, wd.v[i].id, err);
    if (wd.v != wd.local) free(wd.v);
    if (!rc && cacheable && out->n > start && out->n - start <= TOK_CACHE_IDS)
        cache_put(m, w, n, h, out->v + start, out->n - start);
    return rc;
}

/* ---- loading ------------------------------------------------------------ */

static int vocab_insert(tok_bpe *m, int32_t id)
{
    uint64_t h = tok_hash(m->vocab_str[id], m->vocab_len[id]);
    size_t i = h & m->vocab_map.mask;
    while (m->vocab_map.slots[i].id >= 0) {
        int32_t o = m->vocab_map.slots[i].id;
        if (m->vocab_len[o] == m->vocab_len[id] &&
            !memcmp(m->vocab_str[o], m->vocab_str[id], m->vocab_len[id]))
            return -1;
        i = (i + 1) & m->vocab_map.mask;
    }
    m->vocab_map.slots[i] = (tok_strslot){id, (uint32_t)(h >> 32)};
    return 0;
}

typedef struct vocab_entry {
    size_t off; /* into the arena */
    uint32_t len;
    int32_t id;
} vocab_entry;

typedef struct vocab_acc {
    tok_buf arena;
    vocab_entry *v;
    size_t n, cap;
    int32_t max_id;
} vocab_acc;

static int vocab_cb(void *ctx, const char *tok, size_t len, int32_t id, cv_error *err)
{
    vocab_acc *a = ctx;
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 1024;
        vocab_entry *v = realloc(a->v, cap * sizeof *v);
        if (!v) return cv_errorf(err, "tokenizer: out of memory (vocab)");
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = (vocab_entry){a->arena.len, (uint32_t)len, id};
    if (id > a->max_id) a->max_id = id;
    return tok_buf_put(&a->arena, tok, len, err) || tok_buf_put(&a->arena, "", 1, err);
}

static int load_vocab(tok_bpe *m, const tok_raw_model *raw, cv_error *err)
{
    if (!raw->vocab) return cv_errorf(err, "tokenizer.json: model has no \"vocab\"");
    vocab_acc a = {.max_id = -1};
    int rc = tok_parse_vocab(raw->vocab, raw->vocab_len, vocab_cb, &a, err);
    /* The id tables are dense: one far-out id (1e8 in a vocab of three)
     * would cost gigabytes and seconds before any other check speaks. */
    if (!rc && a.max_id >= 0 && (size_t)a.max_id >= TOK_MAX_ID_SPREAD * a.n + TOK_MAX_ID_SLACK)
        rc = cv_errorf(err,
                       "tokenizer.json: model.vocab id %d is far beyond its %zu entries (ids "
                       "must number the vocab densely)",
                       a.max_id, a.n);
    if (rc) a.max_id = -1;
    m->arena = a.arena.p;
    m->n_vocab = a.max_id + 1;
    size_t cap = 16;
    while (cap < 2 * (size_t)m->n_vocab)
        cap *= 2;
    if (!rc) {
        m->vocab_str = calloc((size_t)m->n_vocab + 1, sizeof *m->vocab_str);
        m->vocab_len = calloc((size_t)m->n_vocab + 1, sizeof *m->vocab_len);
        m->vocab_map.slots = malloc(cap * sizeof *m->vocab_map.slots);
        m->vocab_map.mask = cap - 1;
        if (!m->vocab_str || !m->vocab_len || !m->vocab_map.slots)
            rc = cv_errorf(err, "tokenizer: out of memory (vocab of %d)", m->n_vocab);
    }
    if (!rc) memset(m->vocab_map.slots, 0xff, cap * sizeof *m->vocab_map.slots);
    for (size_t i = 0; !rc && i < a.n; i++) {
        int32_t id = a.v[i].id;
        if (m->vocab_str[id])
            rc = cv_errorf(err, "tokenizer.json: model.vocab gives id %d twice", id);
        m->vocab_str[id] = m->arena + a.v[i].off;
        m->vocab_len[id] = a.v[i].len;
        if (!rc && vocab_insert(m, id))
            rc = cv_errorf(err, "tokenizer.json: model.vocab has \"%s\" twice", m->vocab_str[id]);
    }
    free(a.v);
    return rc;
}

typedef struct merge_acc {
    tok_bpe *m;
    tok_buf joined;
    tok_merge_slot *v; /* in rank order */
    size_t n, cap;
} merge_acc;

static int merge_cb(void *ctx, size_t idx, const char *a, size_t la, const char *b, size_t lb,
                    cv_error *err)
{
    merge_acc *acc = ctx;
    tok_bpe *m = acc->m;
    int32_t ia = tok_bpe_lookup(m, a, la), ib = tok_bpe_lookup(m, b, lb);
    /* the merged token drops the right part's continuing prefix */
    size_t lp = m->prefix ? strlen(m->prefix) : 0;
    size_t skip = lp && lb >= lp && !memcmp(b, m->prefix, lp) ? lp : 0;
    acc->joined.len = 0;
    if (tok_buf_put(&acc->joined, a, la, err) ||
        tok_buf_put(&acc->joined, b + skip, lb - skip, err))
        return -1;
    int32_t inew = tok_bpe_lookup(m, acc->joined.p, acc->joined.len);
    if (ia < 0 || ib < 0 || inew < 0)
        return cv_errorf(err,
                         "tokenizer.json: model.merges[%zu] (\"%.*s\" \"%.*s\") uses a token "
                         "missing from the vocab",
                         idx, (int)la, a, (int)lb, b);
    if (acc->n == acc->cap) {
        size_t cap = acc->cap ? acc->cap * 2 : 1024;
        tok_merge_slot *v = realloc(acc->v, cap * sizeof *v);
        if (!v) return cv_errorf(err, "tokenizer: out of memory (merges)");
        acc->v = v;
        acc->cap = cap;
    }
    acc->v[acc->n++] =
        (tok_merge_slot){((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib, (uint32_t)idx, inew};
    return 0;
}

static int load_merges(tok_bpe *m, const tok_raw_model *raw, cv_error *err)
{
    merge_acc acc = {.m = m};
    int rc = raw->merges ? tok_parse_merges(raw->merges, raw->merges_len, merge_cb, &acc, err) : 0;
    size_t cap = 16;
    while (cap < 2 * acc.n + 2)
        cap *= 2;
    if (!rc && !(m->merges = malloc(cap * sizeof *m->merges)))
        rc = cv_errorf(err, "tokenizer: out of memory (%zu merges)", acc.n);
    if (!rc) {
        memset(m->merges, 0xff, cap * sizeof *m->merges);
        m->merge_mask = cap - 1;
    }
    for (size_t r = 0; !rc && r < acc.n; r++) {
        uint64_t key = acc.v[r].key;
        size_t i = merge_slot(key, m->merge_mask);
        while (m->merges[i].key != UINT64_MAX && m->merges[i].key != key)
            i = (i + 1) & m->merge_mask;
        if (m->merges[i].key != key) /* a repeated pair keeps its first (best) rank */
            m->merges[i] = acc.v[r];
    }
    free(acc.v);
    tok_buf_free(&acc.joined);
    return rc;
}

static int opt_str(const json_t *model, const char *key, char **out, cv_error *err)
{
    const json_t *v = json_object_get(model, key);
    if (!json_is_string(v) || !json_string_length(v)) return 0; /* null and "" behave the same */
    *out = strdup(json_string_value(v));
    return *out ? 0 : cv_errorf(err, "tokenizer: out of memory");
}

int tok_bpe_load(tok_bpe *m, const json_t *model, const tok_raw_model *raw, cv_error *err)
{
    memset(m, 0, sizeof *m);
    m->unk_id = -1;
    const char *type = json_string_value(json_object_get(model, "type"));
    if (type && strcmp(type, "BPE"))
        return cv_errorf(err, "tokenizer.json: unknown model type \"%s\" (only BPE is supported)",
                         type);
    if (!type && !json_object_get(model, "merges"))
        return cv_errorf(err, "tokenizer.json: model has no \"type\" and no \"merges\"");
    if (json_is_number(json_object_get(model, "dropout")) &&
        json_number_value(json_object_get(model, "dropout")) > 0)
        return cv_errorf(err, "tokenizer.json: BPE dropout is not supported for inference");
    m->fuse_unk = json_is_true(json_object_get(model, "fuse_unk"));
    m->byte_fallback = json_is_true(json_object_get(model, "byte_fallback"));
    m->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
    if (opt_str(model, "continuing_subword_prefix", &m->prefix, err) ||
        opt_str(model, "end_of_word_suffix", &m->suffix, err) || load_vocab(m, raw, err) ||
        load_merges(m, raw, err))
        return -1;
    const char *unk = json_string_value(json_object_get(model, "unk_token"));
    if (unk) {
        m->unk_id = tok_bpe_lookup(m, unk, strlen(unk));
        if (m->unk_id < 0 && !(m->unk_missing = strdup(unk)))
            return cv_errorf(err, "tokenizer: out of memory");
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        m->byte_id[b] = tok_bpe_lookup(m, name, 6);
    }
    m->char_id = malloc(CHAR_TABLE * sizeof *m->char_id);
    m->cache = calloc(TOK_CACHE_SLOTS, sizeof *m->cache);
    if (!m->char_id || !m->cache) return cv_errorf(err, "tokenizer: out of memory");
    memset(m->char_id, 0xff, CHAR_TABLE * sizeof *m->char_id);
    m->metaspace_words = !m->prefix && !m->suffix && !m->ignore_merges;
    for (int32_t id = 0; id < m->n_vocab && m->metaspace_words; id++) {
        const char *t = m->vocab_str[id];
        for (uint32_t i = 1; t && i + 3 <= m->vocab_len[id]; i++)
            if (!memcmp(t + i, "\xE2\x96\x81", 3) &&
                (i < 3 || memcmp(t + i - 3, "\xE2\x96\x81", 3))) {
                m->metaspace_words = false;
                break;
            }
    }
    for (int32_t id = 0; id < m->n_vocab; id++) {
        uint32_t cp;
        if (m->vocab_str[id] && m->vocab_len[id] &&
            (uint32_t)tok_utf8_next(m->vocab_str[id], m->vocab_len[id], &cp) == m->vocab_len[id] &&
            cp < CHAR_TABLE)
            m->char_id[cp] = id;
    }
    pthread_mutex_init(&m->cache_lock, NULL);
    return 0;
}

void tok_bpe_free(tok_bpe *m)
{
    free(m->arena);
    free(m->vocab_str);
    free(m->vocab_len);
    free(m->vocab_map.slots);
    free(m->char_id);
    free(m->merges);
    free(m->prefix);
    free(m->suffix);
    free(m->unk_missing);
    if (m->cache) {
        free(m->cache);
        pthread_mutex_destroy(&m->cache_lock);
    }
}

/* The vocabulary trie, the lazily determinized DFA with its per-state token
 * masks, and the cache of compiled grammars (see structured.h). */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "so_internal.h"
#include "structured.h"

/* DFA states past this many are not created (the step leads nowhere): a
 * bound on memory for regexes whose subset construction explodes. */
enum { SO_MAX_DFA_STATES = 1 << 17 };

const char *so_kind_name(so_kind kind)
{
    static const char *const names[] = {"choice", "regex", "json_object", "json", "grammar"};
    return kind <= SO_GRAMMAR ? names[kind] : "?";
}

/* ---- Vocabulary ------------------------------------------------------------ */

/* The trie while it is built: children chained by sibling. */
typedef struct trie_node {
    int32_t child, sibling; /* first child, next sibling (-1 ends) */
    int32_t first_tok;      /* first token ending here (-1 none), chained by tok_next */
    uint8_t byte;           /* the edge into this node */
} trie_node;

/* A node of the walked trie, packed so a walk reads 8 bytes per node. */
typedef struct so_tnode {
    int32_t tok;    /* its first token, or the vocabulary size (a spare mask bit) when none */
    uint16_t depth; /* its prefix length (root 0) */
    uint8_t byte;   /* the edge into it */
    uint8_t more;   /* 1 when more tokens than tok end here (equal bytes): see t_tok */
} so_tnode;

/* The trie as used: nodes in preorder, so a mask walk reads the arrays
 * front to back and skips a dead subtree by one jump. Node 0 is the root
 * (the empty prefix). */
struct so_vocab {
    int n;
    uint8_t *bytes;   /* all tokens' bytes, back to back */
    int32_t *off;     /* (n + 1) token id's bytes are bytes[off[id] .. off[id+1]) */
    int32_t *end_ids; /* (n_end) the end ids, distinct */
    int n_end;
    int32_t n_nodes;
    so_tnode *t;     /* (n_nodes) */
    int32_t *t_skip; /* (n_nodes) the first node after its subtree */
    int32_t *t_tok;  /* (n_nodes + 1) its tokens are t_ids[t_tok[i] .. t_tok[i+1]) */
    int32_t *t_ids;  /* token ids with bytes, grouped by node */
    int max_depth;
};

/* GPT-2's bytes_to_unicode, inverted: code point -> byte, -1 if none. */
static int gpt2_byte(uint32_t cp)
{
    int n = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        if (printable && cp == (uint32_t)b) return b;
        if (!printable && cp == (uint32_t)(256 + n++)) return b;
    }
    return -1;
}

/* The bytes a vocab piece stands for when its decoded text is not whole
 * UTF-8 (a piece of a multibyte character): <0xNN>, or GPT-2's alphabet.
 * Returns the length, 0 when neither applies. */
static int piece_bytes(const char *piece, uint8_t *out, int cap)
{
    unsigned v;
    char close;
    if (strlen(piece) == 6 && sscanf(piece, "<0x%2X%c", &v, &close) == 2 && close == '>') {
        out[0] = (uint8_t)v;
        return 1;
    }
    int n = 0;
    for (const unsigned char *p = (const unsigned char *)piece; *p && n < cap;) {
        uint32_t cp;
        int len = *p < 0x80 ? 1 : *p < 0xE0 ? 2 : *p < 0xF0 ? 3 : 4;
        cp = len == 1 ? *p : (uint32_t)(*p & (0x7F >> len));
        for (int i = 1; i < len; i++) {
            if ((p[i] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (p[i] & 0x3F);
        }
        int b = gpt2_byte(cp);
        if (b < 0) return 0;
        out[n++] = (uint8_t)b;
        p += len;
    }
    return n;
}

typedef struct trie_build {
    trie_node *nodes;
    int32_t n_nodes, cap_nodes;
    int32_t *tok_next; /* (vocab) */
} trie_build;

static int32_t trie_child(trie_build *b, int32_t node, uint8_t byte)
{
    for (int32_t c = b->nodes[node].child; c >= 0; c = b->nodes[c].sibling)
        if (b->nodes[c].byte == byte) return c;
    if (b->n_nodes == b->cap_nodes) {
        int32_t cap = b->cap_nodes * 2;
        trie_node *p = realloc(b->nodes, (size_t)cap * sizeof(trie_node));
        if (!p) return -1;
        b->nodes = p;
        b->cap_nodes = cap;
    }
    int32_t c = b->n_nodes++;
    b->nodes[c] =
        (trie_node){.child = -1, .sibling = b->nodes[node].child, .first_tok = -1, .byte = byte};
    b->nodes[node].child = c;
    return c;
}

/* Lays the built trie out in preorder (an explicit stack: token byte
 * strings can be long enough to make recursion deep). */
static int trie_flatten(so_vocab *v, const trie_build *b)
{
    int32_t n = b->n_nodes;
    v->n_nodes = n;
    v->t = malloc((size_t)n * sizeof(so_tnode));
    v->t_skip = malloc((size_t)n * sizeof(int32_t));
    v->t_tok = malloc(((size_t)n + 1) * sizeof(int32_t));
    v->t_ids = malloc(((size_t)v->n + 1) * sizeof(int32_t));
    /* Built-trie node ids, and ~id once its children are pushed: each
     * node is on the stack at most twice. */
    int32_t *stack = malloc(2 * (size_t)n * sizeof(int32_t));
    int32_t *pos = malloc((size_t)n * sizeof(int32_t)); /* its preorder index */
    uint16_t *depth = malloc((size_t)n * sizeof(uint16_t));
    if (!v->t || !v->t_skip || !v->t_tok || !v->t_ids || !stack || !pos || !depth) {
        free(stack);
        free(pos);
        free(depth);
        return -1;
    }
    int32_t top = 0, next = 0, n_ids = 0;
    stack[top++] = 0;
    depth[0] = 0;
    v->max_depth = 0;
    while (top > 0) {
        int32_t x = stack[--top];
        if (x < 0) { /* the subtree of ~x is done */
            v->t_skip[pos[~x]] = next;
            continue;
        }
        int32_t i = next++;
        pos[x] = i;
        if (depth[x] > v->max_depth) v->max_depth = depth[x];
        v->t_tok[i] = n_ids;
        for (int32_t id = b->nodes[x].first_tok; id >= 0; id = b->tok_next[id])
            v->t_ids[n_ids++] = id;
        v->t[i] = (so_tnode){.tok = n_ids > v->t_tok[i] ? v->t_ids[v->t_tok[i]] : v->n,
                             .depth = depth[x],
                             .byte = b->nodes[x].byte,
                             .more = n_ids - v->t_tok[i] > 1};
        stack[top++] = ~x;
        for (int32_t c = b->nodes[x].child; c >= 0; c = b->nodes[c].sibling) {
            depth[c] = (uint16_t)(depth[x] + 1);
            stack[top++] = c;
        }
    }
    v->t_tok[n] = n_ids;
    free(stack);
    free(pos);
    free(depth);
    return 0;
}

/* Does text hold U+FFFD (what decoding puts for a partial character)? */
static bool has_replacement(const char *text, size_t n)
{
    for (size_t i = 0; i + 2 < n; i++)
        if (!memcmp(text + i, "\xEF\xBF\xBD", 3)) return true;
    return false;
}

/* Appends token id's bytes to buf (grown as needed). */
static int token_bytes(const cv_tokenizer *tok, int32_t id, uint8_t **buf, size_t *len, size_t *cap,
                       cv_error *err)
{
    if (tok_is_special(tok, id)) return 0;
    char *text = NULL;
    size_t tlen = 0;
    if (tok_decode_token(tok, id, &text, &tlen, err) < 0) return -1;
    uint8_t tmp[256];
    const uint8_t *src = (const uint8_t *)text;
    if (has_replacement(text, tlen)) {
        const char *piece = tok_id_to_token(tok, id);
        int n = piece ? piece_bytes(piece, tmp, (int)sizeof(tmp)) : 0;
        src = tmp;
        tlen = (size_t)n;
    }
    if (*len + tlen > *cap) {
        size_t c = *cap * 2 + tlen;
        uint8_t *p = realloc(*buf, c);
        if (!p) {
            free(text);
            return cv_errorf(err, "out of memory building the structured-output vocabulary");
        }
        *buf = p;
        *cap = c;
    }
    memcpy(*buf + *len, src, tlen);
    *len += tlen;
    free(text);
    return 0;
}

so_vocab *so_vocab_create(const cv_tokenizer *tok, const int32_t *eos_ids, int n_eos, cv_error *err)
{
    so_vocab *v = calloc(1, sizeof(*v));
    int n = tok_vocab_size(tok);
    trie_build b = {.cap_nodes = 1024};
    if (!v) goto oom;
    v->n = n;
    v->off = calloc((size_t)n + 1, sizeof(int32_t));
    v->end_ids = malloc(((size_t)n_eos + 1) * sizeof(int32_t));
    b.tok_next = malloc((size_t)n * sizeof(int32_t));
    b.nodes = malloc((size_t)b.cap_nodes * sizeof(trie_node));
    if (!v->off || !v->end_ids || !b.tok_next || !b.nodes) goto oom;
    b.nodes[0] = (trie_node){.child = -1, .sibling = -1, .first_tok = -1};
    b.n_nodes = 1;
    for (int i = 0; i < n_eos; i++) {
        bool seen = eos_ids[i] < 0 || eos_ids[i] >= n;
        for (int j = 0; j < v->n_end && !seen; j++)
            seen = v->end_ids[j] == eos_ids[i];
        if (!seen) v->end_ids[v->n_end++] = eos_ids[i];
    }
    size_t len = 0, cap = 4096;
    v->bytes = malloc(cap);
    if (!v->bytes) goto oom;
    for (int32_t id = 0; id < n; id++) {
        v->off[id] = (int32_t)len;
        if (token_bytes(tok, id, &v->bytes, &len, &cap, err) < 0) {
            free(b.nodes);
            free(b.tok_next);
            so_vocab_free(v);
            return NULL;
        }
    }
    v->off[n] = (int32_t)len;
    /* Tokens are chained in reverse so each node lists its ids ascending. */
    for (int32_t id = n - 1; id >= 0; id--) {
        b.tok_next[id] = -1;
        int32_t node = 0;
        if (v->off[id + 1] == v->off[id]) continue; /* no bytes: never a continuation */
        for (int32_t i = v->off[id]; i < v->off[id + 1] && node >= 0; i++)
            node = trie_child(&b, node, v->bytes[i]);
        if (node < 0) goto oom;
        b.tok_next[id] = b.nodes[node].first_tok;
        b.nodes[node].first_tok = id;
    }
    if (trie_flatten(v, &b) < 0) goto oom;
    free(b.nodes);
    free(b.tok_next);
    return v;
oom:
    free(b.nodes);
    free(b.tok_next);
    so_vocab_free(v);
    cv_errorf(err, "out of memory building the structured-output vocabulary");
    return NULL;
}

void so_vocab_free(so_vocab *v)
{
    if (!v) return;
    free(v->bytes);
    free(v->off);
    free(v->end_ids);
    free(v->t);
    free(v->t_skip);
    free(v->t_tok);
    free(v->t_ids);
    free(v);
}

int so_vocab_size(const so_vocab *v)
{
    return v->n;
}

const uint8_t *so_vocab_bytes(const so_vocab *v, int32_t id, int *n_bytes)
{
    if (id < 0 || id >= v->n || v->off[id + 1] == v->off[id]) {
        *n_bytes = 0;
        return NULL;
    }
    *n_bytes = v->off[id + 1] - v->off[id];
    return v->bytes + v->off[id];
}

/* ---- Lazy DFA ------------------------------------------------------------------ */

typedef struct dstate {
    int32_t *set; /* (n_set) sorted NFA nodes, epsilon-closed */
    int32_t n_set;
    uint64_t hash;
    bool accept;
    int8_t done;        /* no token can follow; -1 until known */
    int32_t trans[256]; /* next state per byte, -1 = not computed yet */
    uint32_t *mask;     /* ((vocab + 31) / 32) words, NULL until asked */
} dstate;

struct so_grammar {
    so_kind kind;
    char *text;
    const so_vocab *vocab;
    so_nfa nfa;
    int32_t accept_node;
    dstate **states; /* (n_states) 0 = the dead state (empty set) */
    int32_t n_states, cap_states;
    int32_t *htab; /* state index + 1 per slot, 0 = empty; size hmask + 1 */
    size_t hmask;
    uint32_t *mark;     /* (nfa nodes) generation marks for closure */
    uint8_t *important; /* (nfa nodes) has a byte edge, or is the accepting node */
    uint32_t gen;
    int32_t *stack, *buf;    /* (nfa nodes) scratch */
    const int32_t **walk_at; /* (vocab max_depth + 1) scratch of walk */
    int32_t *walk_id;        /* (vocab max_depth + 1) the states of walk_at */
    int32_t start;
    pthread_mutex_t mu;
    void *cache_entry; /* the cache's record of it (so_cache.c) */
};

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static uint64_t hash_set(const int32_t *s, int32_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (int32_t i = 0; i < n; i++)
        h = (h ^ (uint32_t)s[i]) * 1099511628211ULL;
    return h;
}

static int htab_grow(so_grammar *g)
{
    size_t size = g->hmask ? 2 * (g->hmask + 1) : 1024;
    int32_t *t = calloc(size, sizeof(int32_t));
    if (!t) return -1;
    for (int32_t i = 0; i < g->n_states; i++) {
        size_t h = g->states[i]->hash & (size - 1);
        while (t[h])
            h = (h + 1) & (size - 1);
        t[h] = i + 1;
    }
    free(g->htab);
    g->htab = t;
    g->hmask = size - 1;
    return 0;
}

/* The state for the closure of seeds[0..n) (in g->buf); -1 on failure. */
static int32_t intern_closure(so_grammar *g, int32_t n)
{
    const so_nfa *a = &g->nfa;
    if (++g->gen == 0) {
        memset(g->mark, 0, (size_t)a->n_nodes * sizeof(uint32_t));
        g->gen = 1;
    }
    int32_t n_out = 0, top = 0;
    for (int32_t i = 0; i < n; i++)
        if (g->mark[g->buf[i]] != g->gen) {
            g->mark[g->buf[i]] = g->gen;
            g->stack[top++] = g->buf[i];
        }
    while (top > 0) {
        int32_t x = g->stack[--top];
        /* Only nodes with byte edges (and the accepting node) decide what
         * a state does: keeping just those merges states that differ in
         * epsilon plumbing, so fewer states and fewer masks are made. */
        if (g->important[x]) g->buf[n_out++] = x;
        for (int32_t e = a->first[x]; e >= 0; e = a->edges[e].next)
            if (a->edges[e].eps && g->mark[a->edges[e].to] != g->gen) {
                g->mark[a->edges[e].to] = g->gen;
                g->stack[top++] = a->edges[e].to;
            }
    }
    qsort(g->buf, (size_t)n_out, sizeof(int32_t), cmp_i32);
    uint64_t h = hash_set(g->buf, n_out);
    for (size_t s = h & g->hmask; g->htab[s]; s = (s + 1) & g->hmask) {
        dstate *d = g->states[g->htab[s] - 1];
        if (d->hash == h && d->n_set == n_out &&
            !memcmp(d->set, g->buf, (size_t)n_out * sizeof(int32_t)))
            return g->htab[s] - 1;
    }
    if (g->n_states >= SO_MAX_DFA_STATES) return 0;
    if ((size_t)(g->n_states + 1) * 2 > g->hmask + 1 && htab_grow(g) < 0) return -1;
    if (g->n_states == g->cap_states) {
        int32_t cap = g->cap_states ? 2 * g->cap_states : 64;
        dstate **p = realloc(g->states, (size_t)cap * sizeof(dstate *));
        if (!p) return -1;
        g->states = p;
        g->cap_states = cap;
    }
    dstate *d = calloc(1, sizeof(*d));
    if (!d) return -1;
    d->set = malloc(((size_t)n_out + 1) * sizeof(int32_t));
    if (!d->set) {
        free(d);
        return -1;
    }
    memcpy(d->set, g->buf, (size_t)n_out * sizeof(int32_t));
    d->n_set = n_out;
    d->hash = h;
    d->done = -1;
    d->accept = bsearch(&g->accept_node, d->set, (size_t)n_out, sizeof(int32_t), cmp_i32) != NULL;
    memset(d->trans, 0xFF, sizeof(d->trans));
    int32_t id = g->n_states++;
    g->states[id] = d;
    size_t s = h & g->hmask;
    while (g->htab[s])
        s = (s + 1) & g->hmask;
    g->htab[s] = id + 1;
    return id;
}

/* The state after byte from state s, when the NFA targets of that byte are
 * the same for every byte of [lo, hi] (the dead state on failure: the
 * constraint then stops a sequence rather than letting it run free). */
static int32_t range_target(so_grammar *g, const dstate *d, uint8_t byte)
{
    const so_nfa *a = &g->nfa;
    /* Targets once each (marked), so at most n_nodes fit in buf. */
    if (++g->gen == 0) {
        memset(g->mark, 0, (size_t)a->n_nodes * sizeof(uint32_t));
        g->gen = 1;
    }
    int32_t n = 0;
    for (int32_t i = 0; i < d->n_set; i++)
        for (int32_t e = a->first[d->set[i]]; e >= 0; e = a->edges[e].next) {
            const so_edge *ed = &a->edges[e];
            if (!ed->eps && byte >= ed->lo && byte <= ed->hi && g->mark[ed->to] != g->gen) {
                g->mark[ed->to] = g->gen;
                g->buf[n++] = ed->to;
            }
        }
    int32_t next = n == 0 ? SO_DEAD : intern_closure(g, n);
    return next < 0 ? SO_DEAD : next;
}

/* One byte from state s. The first miss of a state fills all 256 of its
 * transitions: bytes between two consecutive edge-range bounds of its NFA
 * nodes lead to the same set, so each such run costs one closure (a byte
 * class, [^"] say, is a handful of runs instead of ~200 closures). */
static int32_t step(so_grammar *g, int32_t s, uint8_t byte)
{
    dstate *d = g->states[s];
    if (d->trans[byte] >= 0) return d->trans[byte];
    const so_nfa *a = &g->nfa;
    bool cut[257] = {false};
    cut[0] = cut[256] = true;
    for (int32_t i = 0; i < d->n_set; i++)
        for (int32_t e = a->first[d->set[i]]; e >= 0; e = a->edges[e].next)
            if (!a->edges[e].eps) {
                cut[a->edges[e].lo] = true;
                cut[a->edges[e].hi + 1] = true;
            }
    for (int lo = 0; lo < 256;) {
        int hi = lo + 1;
        while (!cut[hi])
            hi++;
        /* intern_closure may grow g->states, never move a dstate. */
        int32_t next = range_target(g, d, (uint8_t)lo);
        for (int x = lo; x < hi; x++)
            d->trans[x] = next;
        lo = hi;
    }
    return d->trans[byte];
}

/* Marks every token whose bytes keep state s alive: one pass over the
 * preorder trie, the state after each node's prefix kept per depth, a dead
 * prefix skipping its whole subtree. */
static void walk(so_grammar *g, int32_t s, uint32_t *mask)
{
    const so_vocab *v = g->vocab;
    /* at[d]: the transitions of the state after the current prefix's first
     * d bytes (a dstate never moves, so its table may be held across the
     * states that step creates). */
    const int32_t **at = g->walk_at;
    at[0] = g->states[s]->trans;
    g->walk_id[0] = s;
    for (int32_t i = 1; i < v->n_nodes;) {
        so_tnode node = v->t[i];
        int32_t to = at[node.depth - 1][node.byte];
        if (to < 0) to = step(g, g->walk_id[node.depth - 1], node.byte);
        if (to == SO_DEAD) {
            i = v->t_skip[i];
            continue;
        }
        at[node.depth] = g->states[to]->trans;
        g->walk_id[node.depth] = to;
        /* Unconditional: a node without tokens sets the spare bit. */
        mask[node.tok >> 5] |= 1u << (node.tok & 31);
        if (node.more)
            for (int32_t k = v->t_tok[i] + 1; k < v->t_tok[i + 1]; k++)
                mask[v->t_ids[k] >> 5] |= 1u << (v->t_ids[k] & 31);
        i++;
    }
    mask[v->n >> 5] &= ~(1u << (v->n & 31));
}

static const uint32_t *state_mask(so_grammar *g, so_state s)
{
    dstate *d = g->states[s];
    if (d->mask) return d->mask;
    const so_vocab *v = g->vocab;
    /* One spare bit past the vocabulary (see so_tnode). */
    size_t words = ((size_t)v->n + 32) / 32;
    uint32_t *mask = calloc(words, sizeof(uint32_t));
    if (!mask) return NULL;
    if (s != SO_DEAD) walk(g, s, mask);
    bool any = false;
    for (size_t w = 0; w < words && !any; w++)
        any = mask[w] != 0;
    d = g->states[s];
    if (d->accept)
        for (int i = 0; i < v->n_end; i++)
            mask[v->end_ids[i] >> 5] |= 1u << (v->end_ids[i] & 31);
    d->done = !any;
    d->mask = mask;
    return mask;
}

const uint32_t *so_mask(so_grammar *g, so_state s)
{
    pthread_mutex_lock(&g->mu);
    const uint32_t *m = state_mask(g, s);
    pthread_mutex_unlock(&g->mu);
    return m;
}

void so_grammar_stats(so_grammar *g, int *n_states, int *n_masks)
{
    pthread_mutex_lock(&g->mu);
    *n_states = g->n_states;
    *n_masks = 0;
    for (int32_t i = 0; i < g->n_states; i++)
        *n_masks += g->states[i]->mask != NULL;
    pthread_mutex_unlock(&g->mu);
}

so_state so_start(so_grammar *g)
{
    return g->start;
}

so_state so_advance_bytes(so_grammar *g, so_state s, const char *bytes, size_t n)
{
    pthread_mutex_lock(&g->mu);
    for (size_t i = 0; i < n && s != SO_DEAD; i++)
        s = step(g, s, (uint8_t)bytes[i]);
    pthread_mutex_unlock(&g->mu);
    return s;
}

so_state so_advance(so_grammar *g, so_state s, int32_t id)
{
    int n = 0;
    const uint8_t *b = so_vocab_bytes(g->vocab, id, &n);
    if (!b) return so_accepting(g, s) ? s : SO_DEAD;
    return so_advance_bytes(g, s, (const char *)b, (size_t)n);
}

bool so_accepting(so_grammar *g, so_state s)
{
    pthread_mutex_lock(&g->mu);
    bool acc = g->states[s]->accept;
    pthread_mutex_unlock(&g->mu);
    return acc;
}

/* Whether some token's bytes keep state s alive: the walk of walk(), ended
 * at the first such token. Most states allow a one-byte token, found among
 * the first nodes, so the engine's check after every token costs little
 * and leaves the full mask to the prefetch that overlaps the forward. */
static bool any_token(so_grammar *g, int32_t s)
{
    const so_vocab *v = g->vocab;
    const int32_t **at = g->walk_at;
    at[0] = g->states[s]->trans;
    g->walk_id[0] = s;
    for (int32_t i = 1; i < v->n_nodes;) {
        so_tnode node = v->t[i];
        int32_t to = at[node.depth - 1][node.byte];
        if (to < 0) to = step(g, g->walk_id[node.depth - 1], node.byte);
        if (to == SO_DEAD) {
            i = v->t_skip[i];
            continue;
        }
        if (node.tok != v->n) return true;
        at[node.depth] = g->states[to]->trans;
        g->walk_id[node.depth] = to;
        i++;
    }
    return false;
}

bool so_done(so_grammar *g, so_state s)
{
    pthread_mutex_lock(&g->mu);
    dstate *d = g->states[s];
    if (d->done < 0) d->done = s == SO_DEAD || !any_token(g, s);
    bool done = d->done;
    pthread_mutex_unlock(&g->mu);
    return done;
}

/* ---- Compilation and the cache --------------------------------------------- */

void so_grammar_destroy(so_grammar *g)
{
    if (!g) return;
    for (int32_t i = 0; i < g->n_states; i++) {
        free(g->states[i]->set);
        free(g->states[i]->mask);
        free(g->states[i]);
    }
    free(g->states);
    free(g->htab);
    free(g->mark);
    free(g->important);
    free(g->stack);
    free(g->buf);
    free(g->walk_at);
    free(g->walk_id);
    free(g->text);
    so_nfa_free(&g->nfa);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

/* choice: a JSON list of strings, each a literal alternative. */
static int compile_choice(so_nfa *a, const char *text, so_frag *out, cv_error *err)
{
    json_t *list = json_loads(text, JSON_DECODE_ANY, NULL);
    if (!json_is_array(list) || json_array_size(list) == 0) {
        json_decref(list);
        return cv_errorf(err, "structured_outputs 'choice' must be a non-empty list of strings");
    }
    so_frag f = {-1, -1};
    size_t i;
    json_t *s;
    json_array_foreach(list, i, s)
    {
        if (!json_is_string(s)) {
            json_decref(list);
            return cv_errorf(err,
                             "structured_outputs 'choice' must be a non-empty list of strings");
        }
        so_frag x = so_frag_lit(a, json_string_value(s), json_string_length(s));
        f = f.start < 0 ? x : so_frag_alt(a, f, x);
    }
    json_decref(list);
    *out = f;
    if (a->failed) return cv_errorf(err, "structured_outputs 'choice' is too large");
    return 0;
}

so_grammar *so_grammar_compile(const so_vocab *v, so_kind kind, const char *text, cv_error *err)
{
    so_grammar *g = calloc(1, sizeof(*g));
    if (!g) goto oom;
    g->kind = kind;
    g->vocab = v;
    pthread_mutex_init(&g->mu, NULL);
    g->text = strdup(text);
    if (!g->text) goto oom;
    so_frag f = {0, 0};
    int rc = 0;
    switch (kind) {
    case SO_CHOICE:
        rc = compile_choice(&g->nfa, text, &f, err);
        break;
    case SO_REGEX:
        rc = so_regex_compile(&g->nfa, text, strlen(text), &f, err);
        break;
    case SO_JSON_OBJECT:
        f = so_json_any(&g->nfa, SO_MAX_FREE_DEPTH);
        if (g->nfa.failed) rc = cv_errorf(err, "out of memory compiling json_object");
        break;
    case SO_JSON:
        rc = so_json_schema_compile(&g->nfa, text, &f, err);
        break;
    case SO_GRAMMAR:
        rc = so_gbnf_compile(&g->nfa, text, strlen(text), &f, err);
        break;
    }
    if (rc < 0) {
        so_grammar_destroy(g);
        return NULL;
    }
    g->accept_node = f.end;
    size_t nn = (size_t)g->nfa.n_nodes;
    g->mark = calloc(nn, sizeof(uint32_t));
    g->stack = malloc(nn * sizeof(int32_t));
    g->buf = malloc(nn * sizeof(int32_t));
    g->important = calloc(nn, 1);
    g->walk_at = malloc(((size_t)v->max_depth + 1) * sizeof(int32_t *));
    g->walk_id = malloc(((size_t)v->max_depth + 1) * sizeof(int32_t));
    if (!g->mark || !g->stack || !g->buf || !g->important || !g->walk_at || !g->walk_id ||
        htab_grow(g) < 0)
        goto oom;
    for (size_t x = 0; x < nn; x++)
        for (int32_t e = g->nfa.first[x]; e >= 0 && !g->important[x]; e = g->nfa.edges[e].next)
            g->important[x] = !g->nfa.edges[e].eps;
    g->important[g->accept_node] = 1;
    /* The dead state: the empty set, index 0. */
    if (intern_closure(g, 0) != SO_DEAD) goto oom;
    g->buf[0] = f.start;
    g->start = intern_closure(g, 1);
    if (g->start <= 0) goto oom;
    return g;
oom:
    so_grammar_destroy(g);
    cv_errorf(err, "out of memory compiling a structured-output constraint");
    return NULL;
}

void **so_grammar_cache_entry(so_grammar *g)
{
    return &g->cache_entry;
}

size_t so_grammar_bytes(so_grammar *g)
{
    pthread_mutex_lock(&g->mu);
    size_t mask_bytes = ((size_t)g->vocab->n + 32) / 32 * sizeof(uint32_t);
    size_t n = sizeof(*g) + (size_t)g->cap_states * sizeof(dstate *) +
               (g->hmask + 1) * sizeof(int32_t) +
               (size_t)g->nfa.cap_nodes * (sizeof(int32_t) * 4 + 1) +
               (size_t)g->nfa.cap_edges * sizeof(so_edge);
    for (int32_t i = 0; i < g->n_states; i++)
        n += sizeof(dstate) + (size_t)g->states[i]->n_set * sizeof(int32_t) +
             (g->states[i]->mask ? mask_bytes : 0);
    pthread_mutex_unlock(&g->mu);
    return n;
}

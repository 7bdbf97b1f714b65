/* Per-token cost of structured outputs (issue 14): builds the vocabulary
 * trie of a tokenizer (default Qwen3's 151k tokens from ../shared), compiles
 * a nested JSON schema, then walks random valid outputs token by token:
 * each step asks for the state's mask (cold: first visit computes it by the
 * trie walk; warm: cached) and advances by a random allowed token.
 *
 *   cvllm-bench-structured [tokenizer_dir] [n_walks]
 *
 * Times are this thread's CPU time. Prints the vocabulary build and compile times, the DFA states
 * made, and mean/max microseconds per token for masks (first ask of a step), cached masks and
 * advances, for walks that each compile the schema afresh and for walks sharing one grammar, with
 * the share of a GPU step. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "structured/structured.h"
#include "tokenizer/tokenizer.h"

static const char *const SCHEMA =
    "{\"type\":\"object\",\"properties\":{"
    "\"id\":{\"type\":\"integer\"},"
    "\"name\":{\"type\":\"string\",\"maxLength\":32},"
    "\"email\":{\"type\":\"string\"},"
    "\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"admin\",\"user\",\"guest\"]},"
    "\"maxItems\":5},"
    "\"address\":{\"type\":\"object\",\"properties\":{\"street\":{\"type\":\"string\"},"
    "\"city\":{\"type\":\"string\"},\"zip\":{\"type\":\"string\",\"maxLength\":10},"
    "\"geo\":{\"type\":\"object\",\"properties\":{\"lat\":{\"type\":\"number\"},"
    "\"lon\":{\"type\":\"number\"}},\"required\":[\"lat\",\"lon\"]}},"
    "\"required\":[\"street\",\"city\"]},"
    "\"active\":{\"type\":\"boolean\"},"
    "\"score\":{\"anyOf\":[{\"type\":\"number\"},{\"type\":\"null\"}]},"
    "\"meta\":{\"type\":\"object\"}},"
    "\"required\":[\"id\",\"name\",\"tags\",\"address\"]}";

/* This thread's CPU time: on a shared machine, wall time counts the
 * other processes' turns too. */
static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

typedef struct stat {
    double sum, max;
    long n;
} stat;

static void add(stat *s, double v)
{
    s->sum += v;
    s->n++;
    if (v > s->max) s->max = v;
}

static uint64_t rng = 88172645463325252ULL;

static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

typedef struct walk_stats {
    stat cold, warm, adv, done;
    long tokens;
} walk_stats;

/* One random valid output of g (at most 400 tokens), timing each step's
 * mask on its first ask (so_done needs it too: timed together), on a
 * second ask (cached), and the advance. */
static void walk_once(so_grammar *g, int vocab, int32_t eos, int32_t *allowed, walk_stats *ws)
{
    so_state s = so_start(g);
    for (int step = 0; step < 400; step++) {
        double a = now_us();
        bool done = so_done(g, s);
        double a2 = now_us();
        const uint32_t *m = so_mask(g, s);
        double b = now_us();
        add(&ws->done, a2 - a);
        (void)so_done(g, s);
        (void)so_mask(g, s);
        double c = now_us();
        add(&ws->cold, b - a);
        add(&ws->warm, c - b);
        if (done) break;
        int n = 0;
        for (int32_t id = 0; id < vocab; id++)
            if (m[id >> 5] >> (id & 31) & 1u && id != eos) allowed[n++] = id;
        if (n == 0) break;
        int32_t t = allowed[next_rand() % (uint64_t)n];
        double d = now_us();
        s = so_advance(g, s, t);
        add(&ws->adv, now_us() - d);
        ws->tokens++;
    }
}

/* The budget of issue 14: masks for 64 sequences within 5% of a 15 ms
 * GPU decode step, when computed one after another on one thread. */
static void print_share(const char *what, const walk_stats *ws)
{
    double mean = ws->cold.sum / (double)ws->cold.n;
    printf("%s: %ld tokens; mask mean %.1f us/token (max %.1f us) = %.1f%% of a 15 ms "
           "64-sequence step\n",
           what, ws->tokens, mean, ws->cold.max, 100.0 * 64.0 * mean / 15000.0);
}

/* A decode batch: 64 sequences advance together, each step asking every
 * live sequence's mask (one thread, one after another, as draw_all or the
 * prefetch thread does). grammars[k] is sequence k's; they may be one.
 * Prints the mean and worst step's mask time against a 15 ms step. */
static void batch_steps(const char *what, so_grammar **grammars, int vocab, int32_t eos,
                        int32_t *allowed)
{
    enum { SEQS = 64, STEPS = 400 };
    so_state st[SEQS];
    bool live[SEQS];
    for (int k = 0; k < SEQS; k++) {
        st[k] = so_start(grammars[k]);
        live[k] = true;
    }
    double sum = 0, worst = 0;
    int steps = 0;
    for (int step = 0; step < STEPS; step++) {
        const uint32_t *m[SEQS];
        int n_live = 0;
        double a = now_us();
        for (int k = 0; k < SEQS; k++)
            if (live[k]) {
                live[k] = !so_done(grammars[k], st[k]);
                m[k] = so_mask(grammars[k], st[k]);
                n_live += live[k];
            }
        double t = now_us() - a;
        if (n_live == 0) break;
        sum += t;
        if (t > worst) worst = t;
        steps++;
        for (int k = 0; k < SEQS; k++) {
            if (!live[k]) continue;
            int n = 0;
            for (int32_t id = 0; id < vocab; id++)
                if (m[k][id >> 5] >> (id & 31) & 1u && id != eos) allowed[n++] = id;
            st[k] = so_advance(grammars[k], st[k], allowed[next_rand() % (uint64_t)n]);
        }
    }
    printf("%s: %d steps; masks per step mean %.2f ms (%.1f%% of 15 ms), worst %.2f ms\n", what,
           steps, sum / steps / 1e3, 100.0 * sum / steps / 15000.0, worst / 1e3);
}

int main(int argc, char **argv)
{
    char dir[4096];
    const char *shared = getenv("CVLLM_SHARED");
    if (argc > 1)
        snprintf(dir, sizeof(dir), "%s", argv[1]);
    else
        snprintf(dir, sizeof(dir), "%s/tokenizers/qwen3", shared ? shared : "../shared");
    int n_walks = argc > 2 ? atoi(argv[2]) : 20;
    cv_error err;
    cv_tokenizer *tok = tok_load(dir, &err);
    if (!tok) {
        fprintf(stderr, "cvllm-bench-structured: %s (CVLLM_SHARED or argv[1])\n", err.msg);
        return 1;
    }
    int32_t eos = tok_eos_id(tok);
    double t0 = now_us();
    so_vocab *v = so_vocab_create(tok, &eos, eos >= 0 ? 1 : 0, &err);
    double t1 = now_us();
    if (!v) {
        fprintf(stderr, "cvllm-bench-structured: %s\n", err.msg);
        return 1;
    }
    int vocab = so_vocab_size(v);
    int32_t *allowed = malloc((size_t)vocab * sizeof(int32_t));
    /* Fresh: every walk compiles the schema anew (a new schema per
     * request: all first visits). Shared: walks reuse one grammar, as
     * requests with the same schema do. */
    walk_stats fresh = {0}, shared_ws = {0};
    double compile_us = 0;
    for (int w = 0; w < n_walks; w++) {
        so_cache *c = so_cache_create(v);
        double a = now_us();
        so_grammar *g = so_cache_get(c, SO_JSON, SCHEMA, &err);
        compile_us += now_us() - a;
        if (!g) {
            fprintf(stderr, "cvllm-bench-structured: %s\n", err.msg);
            return 1;
        }
        walk_once(g, vocab, eos, allowed, &fresh);
        so_cache_free(c);
    }
    so_cache *cache = so_cache_create(v);
    so_grammar *g = so_cache_get(cache, SO_JSON, SCHEMA, &err);
    for (int w = 0; w < n_walks; w++)
        walk_once(g, vocab, eos, allowed, &shared_ws);
    printf("tokenizer %s: vocab %d\n", dir, vocab);
    printf("vocab trie build: %.1f ms; schema compile: %.2f ms\n", (t1 - t0) / 1e3,
           compile_us / n_walks / 1e3);
    printf("%d walks each\n", n_walks);
    print_share("fresh grammar per walk", &fresh);
    print_share("one grammar for all walks", &shared_ws);
    /* 64 sequences with one new schema each (its own cache), then 64
     * sharing one new grammar. */
    so_cache *caches[64];
    so_grammar *gs[64];
    for (int k = 0; k < 64; k++) {
        caches[k] = so_cache_create(v);
        gs[k] = so_cache_get(caches[k], SO_JSON, SCHEMA, &err);
    }
    batch_steps("64-sequence batch, a new schema each", gs, vocab, eos, allowed);
    so_cache *one = so_cache_create(v);
    so_grammar *g1 = so_cache_get(one, SO_JSON, SCHEMA, &err);
    for (int k = 0; k < 64; k++)
        gs[k] = g1;
    batch_steps("64-sequence batch, one new schema for all", gs, vocab, eos, allowed);
    for (int k = 0; k < 64; k++)
        so_cache_free(caches[k]);
    so_cache_free(one);
    int n_states, n_masks;
    so_grammar_stats(g, &n_states, &n_masks);
    printf("shared grammar: DFA states made: %d, masks computed: %d (%.1f KiB each)\n", n_states,
           n_masks, (double)((vocab + 31) / 32 * 4) / 1024.0);
    printf("of which the done check alone (after each token, on the engine thread), fresh "
           "grammar: mean %.1f us, max %.1f us\n",
           fresh.done.sum / (double)fresh.done.n, fresh.done.max);
    printf("mask, cached: mean %.3f us; advance: mean %.2f us, max %.1f us\n",
           shared_ws.warm.sum / (double)shared_ws.warm.n,
           shared_ws.adv.sum / (double)shared_ws.adv.n, shared_ws.adv.max);
    free(allowed);
    so_cache_free(cache);
    so_vocab_free(v);
    tok_free(tok);
    return 0;
}

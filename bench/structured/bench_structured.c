/* Per-token cost of structured outputs (issue 14): builds the vocabulary
 * trie of a tokenizer (default Qwen3's 151k tokens from ../shared), compiles
 * a nested JSON schema, then walks random valid outputs token by token:
 * each step asks for the state's mask (cold: first visit computes it by the
 * trie walk; warm: cached) and advances by a random allowed token.
 *
 *   cvllm-bench-structured [tokenizer_dir] [n_walks]
 *
 * Prints the vocabulary build and compile times, the DFA states made, and
 * mean/max microseconds per token for cold masks, warm masks and advances. */
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

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
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
    so_cache *cache = so_cache_create(v);
    so_grammar *g = so_cache_get(cache, SO_JSON, SCHEMA, &err);
    double t2 = now_us();
    if (!g) {
        fprintf(stderr, "cvllm-bench-structured: %s\n", err.msg);
        return 1;
    }
    int vocab = so_vocab_size(v);
    int32_t *allowed = malloc((size_t)vocab * sizeof(int32_t));
    stat cold = {0}, warm = {0}, adv = {0};
    long tokens = 0;
    for (int w = 0; w < n_walks; w++) {
        so_state s = so_start(g);
        for (int step = 0; step < 400; step++) {
            /* so_done needs the mask too: time them together. */
            double a = now_us();
            bool done = so_done(g, s);
            const uint32_t *m = so_mask(g, s);
            double b = now_us();
            bool done2 = so_done(g, s);
            const uint32_t *m2 = so_mask(g, s);
            double c = now_us();
            (void)m2;
            (void)done2;
            add(&cold, b - a);
            add(&warm, c - b);
            if (done) break;
            int n = 0;
            for (int32_t id = 0; id < vocab; id++)
                if (m[id >> 5] >> (id & 31) & 1u && id != eos) allowed[n++] = id;
            if (n == 0) break;
            /* Favor short tokens less than uniform would: pick uniformly. */
            int32_t t = allowed[next_rand() % (uint64_t)n];
            double d = now_us();
            s = so_advance(g, s, t);
            add(&adv, now_us() - d);
            tokens++;
        }
    }
    printf("tokenizer %s: vocab %d\n", dir, vocab);
    printf("vocab trie build: %.1f ms; schema compile: %.2f ms\n", (t1 - t0) / 1e3,
           (t2 - t1) / 1e3);
    printf("%d walks, %ld tokens\n", n_walks, tokens);
    printf("mask, first ask of a step (computed on a state's first visit): mean %.1f us, max %.1f "
           "us\n",
           cold.sum / (double)cold.n, cold.max);
    int n_states, n_masks;
    so_grammar_stats(g, &n_states, &n_masks);
    printf("DFA states made: %d, masks computed: %d (%.1f KiB each)\n", n_states, n_masks,
           (double)((vocab + 31) / 32 * 4) / 1024.0);
    printf("mask, cached: mean %.3f us; advance: mean %.2f us, max %.1f us\n",
           warm.sum / (double)warm.n, adv.sum / (double)adv.n, adv.max);
    free(allowed);
    so_cache_free(cache);
    so_vocab_free(v);
    tok_free(tok);
    return 0;
}

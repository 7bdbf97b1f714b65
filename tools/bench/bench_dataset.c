/* Benchmark datasets: random prompts of exact token length, ShareGPT
 * conversations, a prompts file. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

void bench_dataset_free(bench_dataset *d)
{
    for (size_t i = 0; i < d->n; i++)
        free(d->items[i].text);
    free(d->items);
    d->items = NULL;
    d->n = 0;
}

static int alloc_items(bench_dataset *d, size_t n, cv_error *err)
{
    d->n = 0;
    d->items = calloc(n ? n : 1, sizeof *d->items);
    if (!d->items) return cv_errorf(err, "out of memory for %zu prompts", n);
    return 0;
}

/* Whether id decodes to text holding a NUL byte (a byte-level vocabulary's
 * piece for 0x00): prompts travel as C strings, which it would cut short. */
static int decodes_to_nul(const cv_tokenizer *tok, int32_t id, bool *nul, cv_error *err)
{
    char *t;
    size_t len;
    if (tok_decode(tok, &id, 1, false, &t, &len, err)) return -1;
    *nul = memchr(t, '\0', len) != NULL;
    free(t);
    return 0;
}

/* Token ids a random prompt may use: no special tokens, no byte-fallback
 * pieces (<0x..>), whose lone bytes would decode to U+FFFD, and none that
 * decodes to a NUL byte. */
static int usable_ids(const cv_tokenizer *tok, int32_t **ids, size_t *n, cv_error *err)
{
    int vocab = tok_vocab_size(tok);
    *ids = malloc((size_t)(vocab > 0 ? vocab : 1) * sizeof **ids);
    if (!*ids) return cv_errorf(err, "out of memory listing a vocabulary of %d", vocab);
    *n = 0;
    for (int32_t id = 0; id < vocab; id++) {
        const char *piece = tok_id_to_token(tok, id);
        if (!piece || tok_is_special(tok, id) || !strncmp(piece, "<0x", 3)) continue;
        bool nul;
        if (decodes_to_nul(tok, id, &nul, err)) {
            free(*ids);
            return -1;
        }
        if (!nul) (*ids)[(*n)++] = id;
    }
    if (*n == 0) {
        free(*ids);
        return cv_errorf(err, "tokenizer has no ordinary tokens to build random prompts from");
    }
    return 0;
}

/* Builds text that encodes (with special tokens) to exactly target ids:
 * decode random ids, re-encode, then drop or add ids by the difference
 * until the count settles (merges across token boundaries move it). */
static int exact_prompt(const cv_tokenizer *tok, const int32_t *pool, size_t n_pool, bench_rng *rng,
                        int target, char **text, cv_error *err)
{
    int32_t *none;
    size_t n_special;
    if (tok_encode(tok, "", 0, true, &none, &n_special, err)) return -1;
    free(none);
    if (target < (int)n_special + 1)
        return cv_errorf(err,
                         "random prompt of %d tokens is shorter than the %zu special tokens "
                         "plus one",
                         target, n_special);
    size_t cap = (size_t)target * 2 + 16;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return cv_errorf(err, "out of memory for a %d-token prompt", target);
    size_t n = (size_t)target - n_special;
    for (size_t i = 0; i < n; i++)
        ids[i] = pool[bench_rng_int(rng, 0, (int64_t)n_pool - 1)];
    for (int attempt = 0; attempt < 64; attempt++) {
        char *t;
        size_t t_len;
        if (tok_decode(tok, ids, n, true, &t, &t_len, err)) {
            free(ids);
            return -1;
        }
        int32_t *enc;
        size_t n_enc;
        if (tok_encode(tok, t, t_len, true, &enc, &n_enc, err)) {
            free(t);
            free(ids);
            return -1;
        }
        free(enc);
        if ((int)n_enc == target) {
            free(ids);
            *text = t;
            return 0;
        }
        free(t);
        if ((int)n_enc > target) {
            size_t drop = n_enc - (size_t)target;
            n = n > drop + 1 ? n - drop : 1;
        } else {
            size_t add = (size_t)target - n_enc;
            if (n + add > cap) add = cap - n;
            for (size_t i = 0; i < add; i++)
                ids[n++] = pool[bench_rng_int(rng, 0, (int64_t)n_pool - 1)];
        }
    }
    free(ids);
    return cv_errorf(err, "cannot build a random prompt of exactly %d tokens", target);
}

int bench_dataset_random(const cv_tokenizer *tok, size_t n, int input_len, int output_len,
                         double range_ratio, uint64_t seed, bench_dataset *out, cv_error *err)
{
    if (input_len < 1)
        return cv_errorf(err, "--random-input-len must be at least 1, got %d", input_len);
    if (output_len < 1)
        return cv_errorf(err, "--random-output-len must be at least 1, got %d", output_len);
    if (!(range_ratio >= 0.0 && range_ratio < 1.0))
        return cv_errorf(err, "--random-range-ratio must be in [0, 1), got %g", range_ratio);
    int32_t *pool;
    size_t n_pool;
    if (usable_ids(tok, &pool, &n_pool, err)) return -1;
    if (alloc_items(out, n, err)) {
        free(pool);
        return -1;
    }
    bench_rng rng;
    bench_rng_seed(&rng, seed);
    int in_lo = (int)floor(input_len * (1.0 - range_ratio)),
        in_hi = (int)floor(input_len * (1.0 + range_ratio));
    int out_lo = (int)floor(output_len * (1.0 - range_ratio)),
        out_hi = (int)floor(output_len * (1.0 + range_ratio));
    for (size_t i = 0; i < n; i++) {
        bench_prompt *p = &out->items[i];
        p->prompt_len = (int)bench_rng_int(&rng, in_lo, in_hi);
        p->output_len = (int)bench_rng_int(&rng, out_lo > 1 ? out_lo : 1, out_hi > 1 ? out_hi : 1);
        if (exact_prompt(tok, pool, n_pool, &rng, p->prompt_len, &p->text, err)) {
            free(pool);
            bench_dataset_free(out);
            return cv_error_prefix(err, "random prompt %zu", i);
        }
        out->n = i + 1;
    }
    free(pool);
    return 0;
}

static int count_tokens(const cv_tokenizer *tok, const char *s, bool special, int *n, cv_error *err)
{
    int32_t *ids;
    size_t n_ids;
    if (tok_encode(tok, s, strlen(s), special, &ids, &n_ids, err)) return -1;
    free(ids);
    *n = (int)n_ids;
    return 0;
}

int bench_dataset_sharegpt(const char *path, const cv_tokenizer *tok, size_t n,
                           int fixed_output_len, uint64_t seed, bench_dataset *out, cv_error *err)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) return cv_errorf(err, "%s:%d: %s", path, jerr.line, jerr.text);
    if (!json_is_array(root)) {
        json_decref(root);
        return cv_errorf(err, "%s: a ShareGPT dataset is a JSON list of conversations", path);
    }
    size_t total = json_array_size(root);
    size_t *order = malloc((total ? total : 1) * sizeof *order);
    if (!order || alloc_items(out, n, err)) {
        free(order);
        json_decref(root);
        return order ? -1 : cv_errorf(err, "out of memory reading %s", path);
    }
    for (size_t i = 0; i < total; i++)
        order[i] = i;
    bench_rng rng;
    bench_rng_seed(&rng, seed);
    for (size_t i = total; i > 1; i--) { /* Fisher-Yates */
        size_t j = (size_t)bench_rng_int(&rng, 0, (int64_t)i - 1);
        size_t t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
    int rc = 0;
    for (size_t k = 0; k < total && out->n < n; k++) {
        json_t *conv = json_object_get(json_array_get(root, order[k]), "conversations");
        const char *prompt = json_string_value(json_object_get(json_array_get(conv, 0), "value"));
        const char *completion =
            json_string_value(json_object_get(json_array_get(conv, 1), "value"));
        if (!prompt || !completion) continue;
        int plen, olen = fixed_output_len;
        if (count_tokens(tok, prompt, true, &plen, err) ||
            (fixed_output_len <= 0 && count_tokens(tok, completion, false, &olen, err))) {
            rc = -1;
            break;
        }
        if (fixed_output_len <= 0 && (plen < 4 || olen < 4)) continue;
        if (plen > 1024 || plen + olen > 2048) continue;
        bench_prompt *p = &out->items[out->n];
        p->text = strdup(prompt);
        if (!p->text) {
            rc = cv_errorf(err, "out of memory reading %s", path);
            break;
        }
        p->prompt_len = plen;
        p->output_len = olen;
        out->n++;
    }
    free(order);
    json_decref(root);
    if (rc == 0 && out->n < n)
        rc =
            cv_errorf(err, "%s: only %zu usable conversations, %zu prompts asked", path, out->n, n);
    if (rc) bench_dataset_free(out);
    return rc;
}

int bench_dataset_prompts(const char *path, const cv_tokenizer *tok, size_t n, int output_len,
                          bench_dataset *out, cv_error *err)
{
    FILE *f = fopen(path, "r");
    if (!f) return cv_errorf(err, "cannot open prompts file '%s'", path);
    char **lines = NULL, *line = NULL;
    size_t n_lines = 0, cap = 0;
    ssize_t len;
    int rc = 0;
    while ((len = getline(&line, &cap, f)) > 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0) continue;
        char **grown = realloc(lines, (n_lines + 1) * sizeof *lines);
        char *copy = grown ? strdup(line) : NULL;
        if (grown) lines = grown;
        if (!copy) {
            rc = cv_errorf(err, "out of memory reading '%s'", path);
            break;
        }
        lines[n_lines++] = copy;
    }
    free(line);
    fclose(f);
    if (rc == 0 && n_lines == 0) rc = cv_errorf(err, "prompts file '%s' has no prompts", path);
    if (rc == 0 && output_len < 1)
        rc = cv_errorf(err, "--prompts-output-len must be at least 1, got %d", output_len);
    if (rc == 0) rc = alloc_items(out, n, err);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        bench_prompt *p = &out->items[i];
        p->text = strdup(lines[i % n_lines]);
        if (!p->text) {
            rc = cv_errorf(err, "out of memory reading '%s'", path);
            break;
        }
        p->output_len = output_len;
        p->prompt_len = -1;
        out->n = i + 1;
        if (tok && count_tokens(tok, p->text, true, &p->prompt_len, err)) rc = -1;
    }
    for (size_t i = 0; i < n_lines; i++)
        free(lines[i]);
    free(lines);
    if (rc) bench_dataset_free(out);
    return rc;
}

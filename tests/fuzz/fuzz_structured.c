/* libFuzzer target for src/structured: the regex, JSON-schema and grammar
 * compilers and the lazy DFA with its masks. Input: byte 0 picks the kind
 * (choice, regex, json_object, json, grammar), the text up to the first NUL is the
 * constraint, the rest is fed through the automaton byte by byte, asking
 * for the mask and done-ness at every state. The vocabulary is the shipped
 * model's (samples/models/cvllm-kjv-4m under CVLLM_SOURCE_DIR, default the
 * source tree this was built from). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "structured/structured.h"
#include "tokenizer/tokenizer.h"

static so_vocab *vocab;

static so_vocab *load_vocab(void)
{
    const char *src = getenv("CVLLM_SOURCE_DIR");
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/samples/models/cvllm-kjv-4m", src ? src : CVLLM_SOURCE_DEFAULT);
    cv_error err;
    cv_tokenizer *tok = tok_load(dir, &err);
    if (!tok) {
        fprintf(stderr, "fuzz_structured: %s\n", err.msg);
        abort();
    }
    int32_t eos = tok_eos_id(tok);
    so_vocab *v = so_vocab_create(tok, &eos, 1, &err);
    tok_free(tok);
    if (!v) abort();
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    if (!vocab) vocab = load_vocab();
    so_kind kind = (so_kind)(data[0] % 5);
    const uint8_t *nul = memchr(data + 1, 0, size - 1);
    size_t text_len = nul ? (size_t)(nul - data - 1) : size - 1;
    char *text = malloc(text_len + 1);
    if (!text) return 0;
    memcpy(text, data + 1, text_len);
    text[text_len] = '\0';
    so_cache *cache = so_cache_create(vocab);
    cv_error err;
    so_grammar *g = so_cache_get(cache, kind, text, &err);
    if (g) {
        so_state s = so_start(g);
        const uint8_t *feed = nul ? nul + 1 : data + size;
        for (; feed < data + size && s != SO_DEAD; feed++) {
            if (!so_mask(g, s)) abort();
            (void)so_done(g, s);
            s = so_advance_bytes(g, s, (const char *)feed, 1);
        }
    }
    so_cache_free(cache);
    free(text);
    return 0;
}

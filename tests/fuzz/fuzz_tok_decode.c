/* libFuzzer target: tok_decode and tok_stream_next on arbitrary id lists
 * (3 bytes per id, some outside the vocab) with each tokenizer. Out-of-
 * range ids must be an error naming them, never a crash; decoded text must
 * be valid UTF-8. */
#include <string.h>

#include "fuzz_tok_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_load_all();
    return 0;
}

static bool valid_utf8(const cv_tokenizer *tok, const char *s, size_t n)
{
    /* encoding succeeds exactly on valid UTF-8 */
    cv_error err = {.msg = ""};
    int32_t *ids = NULL;
    size_t k = 0;
    bool ok = tok_encode(tok, s, n, false, &ids, &k, &err) == 0;
    free(ids);
    return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    cv_tokenizer *tok = fuzz_tok[data[0] % FUZZ_N_TOK];
    bool skip = data[0] & 0x80;
    size_t n = (size - 1) / 3;
    int32_t *ids = malloc((n + 1) * sizeof *ids);
    if (!ids) return 0;
    int vocab = tok_vocab_size(tok);
    bool in_range = true;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = data + 1 + 3 * i;
        int32_t v = (int32_t)(p[0] | p[1] << 8 | p[2] << 16);
        ids[i] = v % (vocab + 8) - 4; /* a few ids on each side of the range */
        in_range = in_range && ids[i] >= 0 && ids[i] < vocab;
    }
    cv_error err = {.msg = ""};
    char *text = NULL;
    size_t len = 0;
    int rc = tok_decode(tok, ids, n, skip, &text, &len, &err);
    if ((rc == 0) != in_range) abort();
    if (rc == 0 && (strlen(text) > len || !valid_utf8(tok, text, len))) abort();
    free(text);
    cv_tok_stream st;
    size_t prompt = n / 2;
    tok_stream_init(&st, tok, ids, prompt, skip);
    for (size_t end = prompt + 1; end <= n; end++) {
        char *delta = NULL;
        size_t dl = 0;
        if (tok_stream_next(&st, tok, ids, end, &delta, &dl, &err) || !valid_utf8(tok, delta, dl))
            abort();
        free(delta);
    }
    free(ids);
    return 0;
}

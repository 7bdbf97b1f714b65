/* libFuzzer target: tok_encode on arbitrary bytes with each tokenizer.
 * Invalid UTF-8 must be reported (never a crash); valid text must encode,
 * decode back without error, and for GPT-2 (byte-level, no normalizer)
 * round-trip exactly. For Qwen (NFC) the ids must equal those of the text
 * normalized by utf8proc in one piece, which checks the piecewise NFC fast
 * path. For TinyLlama the ids must equal those of BPE over the whole text
 * without the cut before U+2581 words. Streaming the ids must not fail. */
#include <string.h>
#include <utf8proc.h>

#include "fuzz_tok_common.h"
#include "tokenizer/tok_internal.h"

/* TinyLlama again, with the cut before U+2581 words switched off: the
 * reference for the cut. */
static cv_tokenizer *g_llama_whole;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_load_all();
    cv_error err = {.msg = ""};
    char dir[4096];
    const char *shared = getenv("CVLLM_SHARED");
    snprintf(dir, sizeof dir, "%s/tokenizers/llama2",
             shared && shared[0] ? shared : CVLLM_SHARED_DEFAULT);
    g_llama_whole = tok_load(dir, &err);
    if (!g_llama_whole || !g_llama_whole->bpe.metaspace_words) abort();
    g_llama_whole->bpe.metaspace_words = false;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int which = data[0] % FUZZ_N_TOK;
    bool add_special = data[0] & 0x80;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    cv_tokenizer *tok = fuzz_tok[which];
    cv_error err = {.msg = ""};
    int32_t *ids = NULL;
    size_t n = 0;
    if (tok_encode(tok, text, len, add_special, &ids, &n, &err)) {
        if (!strstr(err.msg, "invalid UTF-8")) abort(); /* only invalid input may fail */
        return 0;
    }
    if (which == 1) {
        int32_t *ids2 = NULL;
        size_t n2 = 0;
        if (tok_encode(g_llama_whole, text, len, add_special, &ids2, &n2, &err) || n2 != n ||
            memcmp(ids2, ids, n * sizeof *ids))
            abort();
        free(ids2);
    }
    if (which == 2) {
        utf8proc_uint8_t *nfc = NULL;
        utf8proc_ssize_t m = utf8proc_map((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len,
                                          &nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        int32_t *ids2 = NULL;
        size_t n2 = 0;
        if (m < 0 || tok_encode(tok, (const char *)nfc, (size_t)m, add_special, &ids2, &n2, &err) ||
            n2 != n || memcmp(ids2, ids, n * sizeof *ids))
            abort();
        free(ids2);
        free(nfc);
    }
    char *out = NULL;
    size_t out_len = 0;
    if (tok_decode(tok, ids, n, false, &out, &out_len, &err)) abort();
    if (which == 0 && !add_special && (out_len != len || memcmp(out, text, len)))
        abort(); /* GPT-2 is lossless on valid UTF-8 */
    /* streaming the ids after an empty prompt ends in the same text when
     * nothing is held back at the end */
    cv_tok_stream st;
    tok_stream_init(&st, tok, ids, 0, false);
    char *delta = NULL;
    size_t delta_len = 0;
    if (tok_stream_next(&st, tok, ids, n, &delta, &delta_len, &err)) abort();
    free(delta);
    free(out);
    free(ids);
    return 0;
}

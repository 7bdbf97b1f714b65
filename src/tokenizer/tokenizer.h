/* HuggingFace tokenizer.json, exactly as HF `tokenizers` encodes and decodes.
 *
 * A tokenizer directory holds tokenizer.json and optionally
 * tokenizer_config.json (bos/eos, add_bos_token, special tokens); or,
 * without tokenizer.json, the slow GPT-2-style files vocab.json + merges.txt
 * (+ tokenizer_config.json, special_tokens_map.json, added_tokens.json),
 * read as transformers' GPT2TokenizerFast converts them (OPT, old GPT-2).
 * Supported: the BPE model (byte_fallback, fuse_unk, ignore_merges, unk,
 * continuing_subword_prefix, end_of_word_suffix); normalizers NFC, NFKC,
 * NFD, NFKD, Lowercase, Strip, Prepend, Replace, Sequence; pre-tokenizers
 * ByteLevel, Split, Metaspace, Digits, WhitespaceSplit, Sequence; decoders
 * ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence;
 * post-processors TemplateProcessing, ByteLevel, Bert/RobertaProcessing,
 * Sequence; added tokens with all their flags. Anything else is a load
 * error naming it. tokenizer_config.json's add_bos_token/add_eos_token,
 * when present, replace the template (as transformers does).
 * All text is UTF-8; invalid UTF-8 input is an error naming the byte
 * offset, never a crash.
 * A loaded tokenizer is safe to use from many threads at once (its only
 * mutable state, a cache of recent words, is behind a mutex).
 * Ownership: arrays and strings returned through out-parameters are
 * malloc'ed and freed by the caller with free(); on error they are NULL. */
#ifndef CV_TOKENIZER_TOKENIZER_H
#define CV_TOKENIZER_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

typedef struct cv_tokenizer cv_tokenizer;

cv_tokenizer *tok_load(const char *dir, cv_error *err);
void tok_free(cv_tokenizer *tok);

/* text (len bytes) -> ids. add_special_tokens applies the post-processor
 * (e.g. BOS), as HF's encode(text, add_special_tokens=...). */
int tok_encode(const cv_tokenizer *tok, const char *text, size_t len, bool add_special_tokens,
               int32_t **ids, size_t *n_ids, cv_error *err);

/* ids -> text as HF's decode(ids, skip_special_tokens=...). *text is
 * NUL-terminated; *len excludes the NUL. An id outside the vocab is an
 * error naming it and its position (HF silently drops it). */
int tok_decode(const cv_tokenizer *tok, const int32_t *ids, size_t n_ids, bool skip_special_tokens,
               char **text, size_t *len, cv_error *err);

/* One token as vLLM's logprobs show it (decoded_token): decode([id]),
 * then, for SentencePiece-style tokenizers, the leading spaces that
 * decoding strips from a lone token restored from the marker characters
 * ("▁") the vocab piece starts with, so " there" and not "there" and the
 * decoded tokens of a sequence concatenate to its text. The marker is a
 * Metaspace pre-tokenizer's replacement (where vLLM reads it) or, in the
 * legacy Llama layout that writes the same scheme as normalizers, the
 * replacement of a Replace(" " -> marker) normalizer. Errors as
 * tok_decode's. */
int tok_decode_token(const cv_tokenizer *tok, int32_t id, char **text, size_t *len, cv_error *err);

/* Incremental detokenization for streaming, as vLLM's
 * detokenize_incrementally: the caller keeps one cv_tok_stream per sequence,
 * initialised with tok_stream_init over the prompt ids, and after appending
 * new ids to its id array calls tok_stream_next, which returns the new text
 * (possibly empty). New tokens are decoded in the context of the ones before
 * them, so leading spaces survive; text is held back while it would end in
 * an incomplete UTF-8 sequence. The concatenation of all deltas equals
 * tok_decode of the generated ids in context. Like vLLM, ids are taken one
 * at a time (several new ids per call are fine) and ids outside the vocab
 * decode as empty text instead of failing. */
typedef struct cv_tok_stream {
    size_t prefix_offset; /* start of the context window in ids */
    size_t read_offset;   /* ids before this have been emitted */
    bool skip_special_tokens;
    size_t n_seen; /* ids already processed (vLLM goes one new id at a time) */
} cv_tok_stream;

void tok_stream_init(cv_tok_stream *st, const cv_tokenizer *tok, const int32_t *prompt_ids,
                     size_t n_prompt, bool skip_special_tokens);
/* ids/n_ids: the whole sequence so far (prompt + generated). Appends the
 * delta to *out (malloc'ed, NUL-terminated, caller frees) and its length. */
int tok_stream_next(cv_tok_stream *st, const cv_tokenizer *tok, const int32_t *ids, size_t n_ids,
                    char **out, size_t *out_len, cv_error *err);

int tok_vocab_size(const cv_tokenizer *tok); /* including added tokens */
int tok_bos_id(const cv_tokenizer *tok);     /* -1 when none */
int tok_eos_id(const cv_tokenizer *tok);     /* -1 when none */
bool tok_is_special(const cv_tokenizer *tok, int32_t id);
/* The token's string as in the vocab (e.g. "Ġthe"), NULL when out of range. */
const char *tok_id_to_token(const cv_tokenizer *tok, int32_t id);
/* The id of a token string (added tokens first, then the vocab, as HF's
 * token_to_id), -1 when there is none. */
int32_t tok_token_to_id(const cv_tokenizer *tok, const char *token);

#endif

/* Internals of the tokenizer module: the loaded pipeline (normalizer,
 * pre-tokenizer, BPE model, post-processor, decoder, added tokens) as plain
 * data, and the helpers the stage files share. Nothing here is visible
 * outside src/tokenizer. */
#ifndef CV_TOKENIZER_TOK_INTERNAL_H
#define CV_TOKENIZER_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "tokenizer/tokenizer.h"

/* ---- growable byte buffer ---------------------------------------------- */

typedef struct tok_buf {
    char *p;
    size_t len, cap;
} tok_buf;

int tok_buf_reserve(tok_buf *b, size_t extra, cv_error *err);
int tok_buf_put(tok_buf *b, const void *data, size_t n, cv_error *err);
void tok_buf_free(tok_buf *b);

typedef struct tok_ids {
    int32_t *v;
    size_t n, cap;
} tok_ids;

int tok_ids_push(tok_ids *a, int32_t id, cv_error *err);

/* ---- UTF-8 and Unicode classes ----------------------------------------- */

/* Decodes the code point at s[0..n) (n >= 1, valid UTF-8 assumed) and
 * returns its byte length. */
/* Token ids index dense tables: the vocab's ids stay below
 * TOK_MAX_ID_SPREAD * entries + TOK_MAX_ID_SLACK, added tokens' ids below
 * that of the vocab plus TOK_MAX_ID_SPREAD * added + TOK_MAX_ID_SLACK. */
#define TOK_MAX_ID_SPREAD 2
#define TOK_MAX_ID_SLACK 1024

int tok_utf8_next(const char *s, size_t n, uint32_t *cp);
int tok_utf8_put(uint32_t cp, char out[4]);
/* Byte offset of the first invalid byte, or n when s[0..n) is valid. */
size_t tok_utf8_check(const char *s, size_t n);
/* Appends s with each maximal invalid subsequence replaced by U+FFFD
 * (Rust's String::from_utf8_lossy). */
int tok_utf8_lossy(tok_buf *out, const char *s, size_t n, cv_error *err);
size_t tok_utf8_count(const char *s, size_t n); /* code points */

bool tok_is_whitespace(uint32_t cp); /* Rust char::is_whitespace */
bool tok_is_alnum(uint32_t cp);      /* char::is_alphanumeric */
bool tok_is_numeric(uint32_t cp);    /* char::is_numeric */

/* ---- hash maps ---------------------------------------------------------- */

/* String -> id over strings stored elsewhere (strs[id], lens[id]). */
typedef struct tok_strslot {
    int32_t id;   /* -1 when empty */
    uint32_t tag; /* high hash bits: most misses never touch the string */
} tok_strslot;

typedef struct tok_strmap {
    tok_strslot *slots; /* size mask + 1 */
    size_t mask;
} tok_strmap;

uint64_t tok_hash(const void *data, size_t n);

typedef struct json_t json_t;

/* ---- the big members of tokenizer.json (tok_json_scan.c) ------------- */

/* model.vocab and model.merges as raw JSON text (malloc'ed copies, NULL
 * when absent). */
typedef struct tok_raw_model {
    char *vocab, *merges;
    size_t vocab_len, merges_len;
} tok_raw_model;

/* Finds model.vocab and model.merges in text[0..n), copies them into out
 * and cuts them out of text, leaving `{}`/`[]` with the same number of
 * newlines (valid JSON, same line numbers). Returns the new length; text
 * that is not a JSON object with a "model" object is left as is for
 * jansson to report what is wrong. */
size_t tok_scan_model(char *text, size_t n, tok_raw_model *out);
typedef int (*tok_vocab_fn)(void *ctx, const char *tok, size_t len, int32_t id, cv_error *err);
typedef int (*tok_merge_fn)(void *ctx, size_t idx, const char *a, size_t la, const char *b,
                            size_t lb, cv_error *err);
int tok_parse_vocab(const char *p, size_t n, tok_vocab_fn fn, void *ctx, cv_error *err);
int tok_parse_merges(const char *p, size_t n, tok_merge_fn fn, void *ctx, cv_error *err);

/* ---- patterns (literal string or PCRE2 regex) -------------------------- */

typedef struct tok_pattern {
    char *lit; /* literal pattern, NULL for a regex */
    size_t lit_len;
    pcre2_code *re;
} tok_pattern;

/* Calls back for every non-overlapping match [start, end) in s[0..n), left
 * to right; empty matches are skipped. */
typedef int (*tok_match_fn)(void *ctx, size_t start, size_t end, cv_error *err);
int tok_pattern_find(const tok_pattern *p, const char *s, size_t n, tok_match_fn fn, void *ctx,
                     cv_error *err);
int tok_regex_compile(tok_pattern *p, const char *regex, cv_error *err);
/* Reads j's "pattern": {"String": s} or {"Regex": r}; `what` names the
 * component in error messages. */
int tok_load_pattern(const json_t *j, const char *what, tok_pattern *p, cv_error *err);
void tok_pattern_free(tok_pattern *p);

/* ---- normalizers -------------------------------------------------------- */

typedef enum {
    TOK_NORM_NFC,
    TOK_NORM_NFKC,
    TOK_NORM_NFD,
    TOK_NORM_NFKD,
    TOK_NORM_LOWERCASE,
    TOK_NORM_STRIP,
    TOK_NORM_PREPEND,
    TOK_NORM_REPLACE,
    TOK_NORM_SEQUENCE,
} tok_norm_type;

typedef struct tok_normalizer {
    tok_norm_type type;
    char *text; /* Prepend: prefix; Replace: replacement */
    size_t text_len;
    tok_pattern pattern; /* Replace */
    bool strip_left, strip_right;
    struct tok_normalizer *items; /* Sequence */
    size_t n_items;
    uint8_t *inert; /* NF*: bitmap over the BMP of code points that neither
                       change nor interact with neighbours under the form */
} tok_normalizer;

/* in[0..n) -> *out (replaced). */
int tok_normalize(const tok_normalizer *nm, const char *in, size_t n, tok_buf *out, cv_error *err);

/* ---- pre-tokenizers ----------------------------------------------------- */

typedef enum {
    TOK_SPLIT_REMOVED,
    TOK_SPLIT_ISOLATED,
    TOK_SPLIT_MERGED_PREV,
    TOK_SPLIT_MERGED_NEXT,
    TOK_SPLIT_CONTIGUOUS,
} tok_split_behavior;

typedef enum {
    TOK_PRE_BYTELEVEL,
    TOK_PRE_SPLIT,
    TOK_PRE_METASPACE,
    TOK_PRE_DIGITS,
    TOK_PRE_WHITESPACE_SPLIT,
    TOK_PRE_SEQUENCE,
} tok_pre_type;

typedef enum { TOK_PREPEND_ALWAYS, TOK_PREPEND_FIRST, TOK_PREPEND_NEVER } tok_prepend_scheme;

typedef struct tok_pretok {
    tok_pre_type type;
    bool add_prefix_space, use_regex;  /* ByteLevel */
    tok_pattern pattern;               /* Split */
    tok_split_behavior behavior;       /* Split */
    bool invert;                       /* Split */
    char replacement[5];               /* Metaspace, UTF-8 */
    uint32_t replacement_cp;           /* Metaspace */
    tok_prepend_scheme prepend_scheme; /* Metaspace */
    bool split;                        /* Metaspace */
    bool individual_digits;            /* Digits */
    struct tok_pretok *items;          /* Sequence */
    size_t n_items;
} tok_pretok;

/* A list of pre-token spans over one text buffer. `first` marks the span
 * that starts at offset 0 of the original input (Metaspace "first"). */
typedef struct tok_span {
    uint32_t off, len;
    bool first;
} tok_span;

typedef struct tok_splits {
    tok_buf text;
    tok_span *v;
    size_t n, cap;
} tok_splits;

int tok_splits_push(tok_splits *s, size_t off, size_t len, bool first, cv_error *err);
void tok_splits_free(tok_splits *s);
/* Runs pre-tokenizer pt over *cur, using *tmp as scratch; the result is
 * left in *cur. */
int tok_pretokenize(const tok_pretok *pt, const pcre2_code *bytelevel_re, tok_splits *cur,
                    tok_splits *tmp, cv_error *err);

/* ---- BPE model ---------------------------------------------------------- */

typedef struct tok_merge_slot {
    uint64_t key;   /* (left id << 32) | right id; UINT64_MAX when empty */
    uint32_t rank;  /* position in the merges list */
    int32_t new_id; /* id of left+right */
} tok_merge_slot;

/* A small cache of whole pre-token -> ids results. Slots are direct-mapped
 * by hash; a mutex keeps the tokenizer shareable between threads. */
enum { TOK_CACHE_SLOTS = 1 << 15, TOK_CACHE_KEY_BYTES = 46, TOK_CACHE_IDS = 12 };
typedef struct tok_cache_slot {
    uint8_t key_len; /* 0 when empty */
    uint8_t n_ids;
    char key[TOK_CACHE_KEY_BYTES];
    int32_t ids[TOK_CACHE_IDS];
} tok_cache_slot;

typedef struct tok_bpe {
    int32_t n_vocab;     /* model vocab ids are [0, n_vocab) */
    char **vocab_str;    /* [n_vocab] NUL-terminated, into `arena`; NULL for holes */
    char *arena;         /* all vocab strings */
    uint32_t *vocab_len; /* [n_vocab] */
    tok_strmap vocab_map;
    int32_t *char_id;       /* [65536] id of the one-code-point token, or -1 */
    tok_merge_slot *merges; /* open addressing table, size merge_mask + 1 */
    size_t merge_mask;
    int32_t unk_id;        /* -1 when none */
    char *unk_missing;     /* unk_token named but absent from the vocab */
    char *prefix, *suffix; /* continuing_subword_prefix, end_of_word_suffix or NULL */
    bool fuse_unk, byte_fallback, ignore_merges;
    /* No vocab token has U+2581 right after another character (other
     * than U+2581): no merge can cross into a "\u2581word", so a whole
     * SentencePiece-style text may be cut there into independent words
     * (which then hit the cache). */
    bool metaspace_words;
    int32_t byte_id[256];  /* ids of "<0xXX>" for byte_fallback, -1 missing */
    tok_cache_slot *cache; /* [TOK_CACHE_SLOTS] or NULL */
    pthread_mutex_t cache_lock;
} tok_bpe;

int tok_bpe_load(tok_bpe *m, const json_t *model, const tok_raw_model *raw, cv_error *err);
void tok_bpe_free(tok_bpe *m);
int32_t tok_bpe_lookup(const tok_bpe *m, const char *s, size_t n);
/* Appends the ids of one pre-token to out. */
int tok_bpe_word(tok_bpe *m, const char *w, size_t n, tok_ids *out, cv_error *err);

/* ---- added tokens ------------------------------------------------------- */

typedef struct tok_added {
    int32_t id;
    char *content; /* as in tokenizer.json */
    size_t len;
    char *match; /* what is searched: content, normalized when `normalized` */
    size_t match_len;
    bool special, normalized, lstrip, rstrip, single_word;
} tok_added;

/* Added tokens searched in one text, grouped by first byte, longest first
 * within a group, so the first hit at a position is the leftmost-longest
 * match (HF's aho-corasick MatchKind::LeftmostLongest). */
typedef struct tok_added_set {
    const tok_added **v;
    size_t n;
    uint32_t start[257]; /* v[start[b] .. start[b + 1]) begin with byte b */
} tok_added_set;

/* ---- decoders ----------------------------------------------------------- */

typedef enum {
    TOK_DEC_BYTELEVEL,
    TOK_DEC_METASPACE,
    TOK_DEC_REPLACE,
    TOK_DEC_BYTEFALLBACK,
    TOK_DEC_FUSE,
    TOK_DEC_STRIP,
    TOK_DEC_SEQUENCE,
} tok_dec_type;

typedef struct tok_decoder {
    tok_dec_type type;
    tok_pattern pattern; /* Replace: literal or regex */
    char *text;          /* Replace: content */
    size_t text_len;
    uint32_t strip_cp; /* Strip: content */
    int strip_start, strip_stop;
    uint32_t replacement_cp; /* Metaspace */
    tok_prepend_scheme prepend_scheme;
    struct tok_decoder *items;
    size_t n_items;
} tok_decoder;

/* ---- the tokenizer ------------------------------------------------------ */

struct cv_tokenizer {
    tok_bpe bpe;
    tok_normalizer *normalizer; /* NULL when none */
    tok_pretok *pretok;         /* NULL when none */
    tok_decoder *decoder;       /* NULL: tokens joined with " " */
    pcre2_code *bytelevel_re;   /* GPT-2 split regex, compiled once */

    tok_added *added; /* [n_added] as listed in tokenizer.json */
    size_t n_added;
    tok_added_set added_raw;  /* normalized=false: matched on the input */
    tok_added_set added_norm; /* normalized=true: matched after the normalizer */

    int32_t n_ids;       /* 1 + largest id of vocab and added tokens */
    const char **id_str; /* [n_ids] token string, NULL for holes */
    uint32_t *id_len;    /* [n_ids] */
    uint8_t *id_special; /* [n_ids] 1 for special added tokens */

    int32_t *prefix_ids, *suffix_ids; /* post-processor, single sequence */
    size_t n_prefix, n_suffix;
    int32_t bos_id, eos_id;
};

/* The parsed tokenizer.json ROOT (with vocab and merges in RAW) into tok;
 * tokenizer_config.json's bos/eos and add_bos_token/add_eos_token from CFG;
 * then the id tables, once every token is known. tok_load.c and
 * tok_slow.c call them in this order. */
int tok_load_json(cv_tokenizer *tok, const json_t *root, const tok_raw_model *raw, cv_error *err);
int tok_load_config_json(cv_tokenizer *tok, const json_t *cfg, cv_error *err);
int tok_build_id_tables(cv_tokenizer *tok, cv_error *err);

/* DIR without tokenizer.json: vocab.json + merges.txt and the slow
 * tokenizer's side files, as transformers' GPT2TokenizerFast builds them
 * (tok_slow.c). */
cv_tokenizer *tok_load_slow(const char *dir, cv_error *err);

/* Component loaders, called by tok_load.c. */
int tok_load_normalizer(const json_t *j, tok_normalizer *out, cv_error *err);
int tok_load_pretok(const json_t *j, tok_pretok *out, cv_error *err);
int tok_load_decoder(const json_t *j, tok_decoder *out, cv_error *err);
void tok_normalizer_free(tok_normalizer *n);
void tok_pretok_free(tok_pretok *p);
void tok_decoder_free(tok_decoder *d);

/* GPT-2's pre-tokenization regex (ByteLevel use_regex). */
extern const char tok_gpt2_regex[];
/* ByteLevel byte <-> code point tables. */
extern const uint16_t tok_byte_to_cp[256];
int tok_cp_to_byte(uint32_t cp); /* -1 when cp is not a ByteLevel char */

/* Token strings -> text through the decoder chain (HF decoder.decode). */
typedef struct tok_strs {
    tok_buf text;
    uint32_t *off, *len;
    size_t n, cap;
} tok_strs;
int tok_strs_push(tok_strs *s, const char *p, size_t n, cv_error *err);
void tok_strs_free(tok_strs *s);
int tok_run_decoder(const cv_tokenizer *tok, tok_strs *in, tok_buf *out, cv_error *err);

#endif

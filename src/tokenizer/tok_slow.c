/* The slow-tokenizer files of a GPT-2-style tokenizer: vocab.json +
 * merges.txt, with tokenizer_config.json, special_tokens_map.json and
 * added_tokens.json beside them (OPT, old GPT-2 checkpoints). transformers
 * 4.x turns them into a GPT2TokenizerFast through GPT2Converter: byte-level
 * BPE with GPT-2's split regex, the ByteLevel decoder, BOS prepended when
 * add_bos_token (OPT), then PreTrainedTokenizerFast adds the added and
 * special tokens. Here the same steps write the tokenizer.json that
 * conversion yields, and tok_load.c's own loader reads it: one pipeline. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "tokenizer/tok_internal.h"

/* transformers' SPECIAL_TOKENS_ATTRIBUTES, in its order (the order the
 * special tokens are added in); additional_special_tokens follow. */
static const char *const slow_special_attrs[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                                 "pad_token", "cls_token", "mask_token"};
enum { SLOW_N_ATTRS = sizeof slow_special_attrs / sizeof slow_special_attrs[0] };

typedef struct slow_ctx {
    const char *dir;
    json_t *cfg;      /* tokenizer_config.json or {} */
    json_t *map;      /* special_tokens_map.json or NULL */
    json_t *vocab;    /* vocab.json, for lookups */
    json_t *added;    /* the added_tokens array being built */
    json_t *specials; /* attr -> token value (string or {"content", flags}) */
    json_int_t next_id;
} slow_ctx;

static char *slow_read(const char *dir, const char *name, size_t *len, cv_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        cv_errorf(err, "tokenizer: cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    char *text = cv_read_stream(f, len);
    fclose(f);
    if (!text) cv_errorf(err, "tokenizer: cannot read %s: %s", path, strerror(errno));
    return text;
}

/* DIR/NAME parsed, or *out NULL when the file does not exist. Configs
 * are read with JSON_DECODE_INT_AS_REAL (model_max_length is often
 * 1e30 written as an integer); files of ids are not. */
static int slow_json(const char *dir, const char *name, size_t flags, json_t **out, cv_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return errno == ENOENT
                   ? 0
                   : cv_errorf(err, "tokenizer: cannot open %s: %s", path, strerror(errno));
    json_error_t je;
    *out = json_loadf(f, flags, &je);
    fclose(f);
    if (!*out)
        return cv_errorf(err, "tokenizer: %s: malformed JSON at line %d column %d: %s", path,
                         je.line, je.column, je.text);
    if (!json_is_object(*out)) return cv_errorf(err, "tokenizer: %s: not a JSON object", path);
    return 0;
}

/* ---- merges.txt -> [["a", "b"], ...] --------------------------------------- */

static int slow_put_json_string(tok_buf *b, const char *s, size_t n, cv_error *err)
{
    if (tok_buf_put(b, "\"", 1, err)) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        int k = 0;
        if (c == '"' || c == '\\')
            k = snprintf(esc, sizeof esc, "\\%c", c);
        else if (c < 0x20)
            k = snprintf(esc, sizeof esc, "\\u%04x", c);
        if (k ? tok_buf_put(b, esc, (size_t)k, err) : tok_buf_put(b, s + i, 1, err)) return -1;
    }
    return tok_buf_put(b, "\"", 1, err);
}

/* What Python's str.split() splits on, within ASCII. */
static bool slow_space(char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

/* GPT2Tokenizer reads merges as text.split("\n")[1:-1]: the first line
 * (the "#version" header) and whatever follows the last newline are
 * dropped, each line is split on whitespace. Blank lines are skipped. */
static int slow_merges(const char *dir, tok_buf *out, cv_error *err)
{
    size_t n;
    char *text = slow_read(dir, "merges.txt", &n, err);
    if (!text) return -1;
    int rc = tok_buf_put(out, "[", 1, err);
    const char *p = memchr(text, '\n', n), *end = text + n;
    size_t line = 1, kept = 0;
    while (!rc && p && p < end) {
        const char *s = p + 1, *e = memchr(s, '\n', (size_t)(end - s));
        line++;
        if (!e) break; /* the last piece: dropped, as [1:-1] does */
        const char *w[3];
        size_t wl[3], nw = 0;
        for (const char *q = s; q < e;) {
            while (q < e && slow_space(*q))
                q++;
            if (q == e) break;
            const char *t = q;
            while (q < e && !slow_space(*q))
                q++;
            if (nw < 3) {
                w[nw] = t;
                wl[nw] = (size_t)(q - t);
            }
            nw++;
        }
        if (nw != 0 && nw != 2)
            rc = cv_errorf(err,
                           "tokenizer: %s/merges.txt: line %zu is not two tokens separated "
                           "by a space",
                           dir, line);
        if (!rc && nw == 2)
            rc = tok_buf_put(out, kept ? ",[" : "[", kept ? 2 : 1, err) ||
                 slow_put_json_string(out, w[0], wl[0], err) || tok_buf_put(out, ",", 1, err) ||
                 slow_put_json_string(out, w[1], wl[1], err) || tok_buf_put(out, "]", 1, err);
        kept += nw == 2;
        p = e;
    }
    free(text);
    return rc || tok_buf_put(out, "]", 1, err) ? -1 : 0;
}

/* ---- added and special tokens ----------------------------------------------- */

/* A special token's text: a string, or an AddedToken dict's "content";
 * "" when neither. */
static const char *slow_content(const json_t *v)
{
    if (json_is_object(v)) v = json_object_get(v, "content");
    return json_is_string(v) ? json_string_value(v) : "";
}

static bool slow_flag(const json_t *flags, const char *key, bool dflt)
{
    const json_t *v = json_is_object(flags) ? json_object_get(flags, key) : NULL;
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static bool slow_is_special(const slow_ctx *c, const char *content)
{
    const char *attr;
    json_t *v;
    json_object_foreach(c->specials, attr, v)
    {
        if (json_is_array(v)) {
            for (size_t i = 0; i < json_array_size(v); i++)
                if (!strcmp(slow_content(json_array_get(v, i)), content)) return true;
        } else if (!strcmp(slow_content(v), content)) {
            return true;
        }
    }
    return false;
}

/* tokenizers' AddedVocabulary::add_tokens: a token already in the vocab
 * keeps its id, a new one gets the next id after the vocab and the tokens
 * added so far (any id a file lists is not used); adding the same content
 * again updates its flags. FLAGS: an AddedToken dict or NULL. */
static int slow_add(slow_ctx *c, const char *content, const json_t *flags, bool special,
                    cv_error *err)
{
    if (!content || !*content) return 0;
    size_t at = json_array_size(c->added);
    for (size_t i = 0; i < json_array_size(c->added); i++)
        if (!strcmp(json_string_value(json_object_get(json_array_get(c->added, i), "content")),
                    content))
            at = i;
    json_int_t id;
    const json_t *in_vocab = json_object_get(c->vocab, content);
    if (at < json_array_size(c->added))
        id = json_integer_value(json_object_get(json_array_get(c->added, at), "id"));
    else if (json_is_integer(in_vocab))
        id = json_integer_value(in_vocab);
    else
        id = c->next_id++;
    json_t *t =
        json_pack("{s:I,s:s,s:b,s:b,s:b,s:b,s:b}", "id", id, "content", content, "single_word",
                  slow_flag(flags, "single_word", false), "lstrip",
                  slow_flag(flags, "lstrip", false), "rstrip", slow_flag(flags, "rstrip", false),
                  "normalized", slow_flag(flags, "normalized", !special), "special", special);
    int rc = !t                               ? -1
             : at < json_array_size(c->added) ? json_array_set_new(c->added, at, t)
                                              : json_array_append_new(c->added, t);
    return rc ? cv_errorf(err, "tokenizer: out of memory") : 0;
}

/* The special tokens: tokenizer_config.json's; without added_tokens_decoder
 * there (the legacy layout) special_tokens_map.json's override them, as
 * transformers' _from_pretrained does. bos, eos and unk that neither file
 * mentions (not even as null) are GPT2TokenizerFast's default,
 * "<|endoftext|>". */
static int slow_collect_specials(slow_ctx *c, cv_error *err)
{
    c->specials = json_object();
    if (!c->specials) return cv_errorf(err, "tokenizer: out of memory");
    bool legacy = !json_object_get(c->cfg, "added_tokens_decoder");
    for (int pass = 0; pass < 2; pass++) {
        const json_t *src = pass == 0 ? c->cfg : legacy ? c->map : NULL;
        for (int i = 0; src && i <= SLOW_N_ATTRS; i++) {
            const char *attr =
                i < SLOW_N_ATTRS ? slow_special_attrs[i] : "additional_special_tokens";
            json_t *v = json_object_get(src, attr);
            if ((json_is_string(v) || json_is_object(v) || json_is_array(v)) &&
                json_object_set(c->specials, attr, v))
                return cv_errorf(err, "tokenizer: out of memory");
        }
    }
    for (int i = 0; i < 3; i++) { /* bos_token, eos_token, unk_token */
        const char *attr = slow_special_attrs[i];
        if (json_object_get(c->cfg, attr) || (legacy && json_object_get(c->map, attr))) continue;
        if (json_object_set_new(c->specials, attr, json_string("<|endoftext|>")))
            return cv_errorf(err, "tokenizer: out of memory");
    }
    return 0;
}

/* added_tokens_decoder {"id": {AddedToken}} in id order, or the legacy
 * added_tokens.json {"content": id} in id order. */
static int slow_add_listed(slow_ctx *c, cv_error *err)
{
    json_t *listed = json_object_get(c->cfg, "added_tokens_decoder"), *legacy = NULL;
    if (!listed) {
        if (slow_json(c->dir, "added_tokens.json", 0, &legacy, err)) return -1;
        listed = legacy;
    }
    size_t n = json_object_size(listed);
    struct item {
        json_int_t id;
        const char *key;
        json_t *v;
    } *items = calloc(n + 1, sizeof *items);
    if (!items) {
        json_decref(legacy);
        return cv_errorf(err, "tokenizer: out of memory");
    }
    size_t k = 0;
    const char *key;
    json_t *v;
    json_object_foreach(listed, key, v)
    {
        items[k] = (struct item){legacy ? json_integer_value(v) : strtoll(key, NULL, 10), key, v};
        k++;
    }
    /* insertion sort: these lists are short */
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && items[j].id < items[j - 1].id; j--) {
            struct item t = items[j];
            items[j] = items[j - 1];
            items[j - 1] = t;
        }
    int rc = 0;
    for (size_t i = 0; !rc && i < n; i++) {
        const char *content = legacy ? items[i].key : slow_content(items[i].v);
        const json_t *flags = legacy ? NULL : items[i].v;
        bool special = slow_flag(flags, "special", false) || slow_is_special(c, content);
        rc = slow_add(c, content, flags, special, err);
    }
    free(items);
    json_decref(legacy);
    return rc;
}

static int slow_add_specials(slow_ctx *c, cv_error *err)
{
    for (int i = 0; i <= SLOW_N_ATTRS; i++) {
        const char *attr = i < SLOW_N_ATTRS ? slow_special_attrs[i] : "additional_special_tokens";
        json_t *v = json_object_get(c->specials, attr);
        size_t n = json_is_array(v) ? json_array_size(v) : 1;
        for (size_t k = 0; v && k < n; k++) {
            const json_t *t = json_is_array(v) ? json_array_get(v, k) : v;
            const char *content = slow_content(t);
            bool known = false;
            for (size_t j = 0; j < json_array_size(c->added); j++)
                known |= !strcmp(content, json_string_value(json_object_get(
                                              json_array_get(c->added, j), "content")));
            if (!known && slow_add(c, content, json_is_object(t) ? t : NULL, true, err)) return -1;
        }
    }
    return 0;
}

/* ---- the tokenizer.json GPT2Converter would write ---------------------------- */

static json_t *slow_root(slow_ctx *c)
{
    bool prefix_space = json_is_true(json_object_get(c->cfg, "add_prefix_space"));
    return json_pack("{s:{s:s,s:n,s:n,s:s,s:s,s:b,s:b},s:n,s:{s:s,s:b,s:b,s:b},"
                     "s:{s:s,s:b,s:b,s:b},s:{s:s,s:b,s:b,s:b},s:O}",
                     "model", "type", "BPE", "dropout", "unk_token", "continuing_subword_prefix",
                     "", "end_of_word_suffix", "", "fuse_unk", 0, "byte_fallback", 0, "normalizer",
                     "pre_tokenizer", "type", "ByteLevel", "add_prefix_space", prefix_space,
                     "trim_offsets", 1, "use_regex", 1, "post_processor", "type", "ByteLevel",
                     "add_prefix_space", 1, "trim_offsets", 0, "use_regex", 1, "decoder", "type",
                     "ByteLevel", "add_prefix_space", 1, "trim_offsets", 1, "use_regex", 1,
                     "added_tokens", c->added);
}

/* bos/eos and add_bos_token for tok_load_config_json. GPT2Converter
 * prepends BOS when add_bos_token and knows no add_eos_token. */
static json_t *slow_config(const slow_ctx *c)
{
    json_t *cfg = json_object();
    const char *bos = slow_content(json_object_get(c->specials, "bos_token"));
    const char *eos = slow_content(json_object_get(c->specials, "eos_token"));
    bos = *bos ? bos : NULL;
    eos = *eos ? eos : NULL;
    const json_t *add_bos = json_object_get(c->cfg, "add_bos_token");
    if (!cfg || (bos && json_object_set_new(cfg, "bos_token", json_string(bos))) ||
        (eos && json_object_set_new(cfg, "eos_token", json_string(eos))) ||
        (json_is_boolean(add_bos) && json_object_set(cfg, "add_bos_token", (json_t *)add_bos))) {
        json_decref(cfg);
        return NULL;
    }
    return cfg;
}

static int slow_build(cv_tokenizer *tok, slow_ctx *c, tok_raw_model *raw, cv_error *err)
{
    tok_buf merges = {0};
    if (slow_json(c->dir, "tokenizer_config.json", JSON_DECODE_INT_AS_REAL, &c->cfg, err) ||
        slow_json(c->dir, "special_tokens_map.json", JSON_DECODE_INT_AS_REAL, &c->map, err) ||
        slow_json(c->dir, "vocab.json", 0, &c->vocab, err))
        return -1;
    if (!c->vocab)
        return cv_errorf(err, "tokenizer: %s/vocab.json: cannot open: %s", c->dir,
                         strerror(ENOENT));
    if (!c->cfg && !(c->cfg = json_object())) return cv_errorf(err, "tokenizer: out of memory");
    c->added = json_array();
    c->next_id = (json_int_t)json_object_size(c->vocab);
    if (!c->added) return cv_errorf(err, "tokenizer: out of memory");
    if (slow_merges(c->dir, &merges, err)) {
        tok_buf_free(&merges);
        return -1;
    }
    raw->merges = merges.p;
    raw->merges_len = merges.len;
    if (!(raw->vocab = slow_read(c->dir, "vocab.json", &raw->vocab_len, err)) ||
        slow_collect_specials(c, err) || slow_add_listed(c, err) || slow_add_specials(c, err))
        return -1;
    json_t *root = slow_root(c), *cfg = slow_config(c);
    int rc = !root || !cfg ? cv_errorf(err, "tokenizer: out of memory")
                           : tok_load_json(tok, root, raw, err);
    if (rc) cv_error_prefix(err, "tokenizer %s (vocab.json + merges.txt)", c->dir);
    rc = rc || tok_load_config_json(tok, cfg, err) || tok_build_id_tables(tok, err);
    json_decref(root);
    json_decref(cfg);
    return rc ? -1 : 0;
}

cv_tokenizer *tok_load_slow(const char *dir, cv_error *err)
{
    cv_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) {
        cv_errorf(err, "tokenizer: out of memory");
        return NULL;
    }
    tok->bos_id = tok->eos_id = -1;
    slow_ctx c = {.dir = dir};
    tok_raw_model raw = {0};
    int rc = slow_build(tok, &c, &raw, err);
    json_decref(c.cfg);
    json_decref(c.map);
    json_decref(c.vocab);
    json_decref(c.added);
    json_decref(c.specials);
    free(raw.vocab);
    free(raw.merges);
    if (rc) {
        tok_free(tok);
        return NULL;
    }
    return tok;
}

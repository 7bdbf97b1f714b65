/* tok_load: tokenizer.json (model, normalizer, pre_tokenizer, decoder,
 * post_processor, added_tokens) and tokenizer_config.json (bos/eos,
 * add_bos_token/add_eos_token) into a cv_tokenizer (without tokenizer.json,
 * tok_slow.c reads vocab.json + merges.txt); tok_free; and the small
 * accessors of the public header. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/file.h"
#include "tokenizer/tok_internal.h"

int32_t tok_token_to_id(const cv_tokenizer *tok, const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].len == n && !memcmp(tok->added[i].content, s, n)) return tok->added[i].id;
    return tok_bpe_lookup(&tok->bpe, s, n);
}

/* ---- added tokens -------------------------------------------------------- */

static int load_added(cv_tokenizer *tok, const json_t *arr, cv_error *err)
{
    if (!arr || json_is_null(arr)) return 0;
    if (!json_is_array(arr))
        return cv_errorf(err, "tokenizer.json: \"added_tokens\" must be an array");
    tok->added = calloc(json_array_size(arr) + 1, sizeof *tok->added);
    if (!tok->added) return cv_errorf(err, "tokenizer: out of memory");
    for (size_t i = 0; i < json_array_size(arr); i++) {
        const json_t *e = json_array_get(arr, i);
        const json_t *id = json_object_get(e, "id"), *content = json_object_get(e, "content");
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= INT32_MAX / 2 || !json_is_string(content) ||
            !json_string_length(content))
            return cv_errorf(err,
                             "tokenizer.json: added_tokens[%zu] needs an \"id\" and a "
                             "non-empty \"content\"",
                             i);
        size_t max_id =
            (size_t)tok->bpe.n_vocab + TOK_MAX_ID_SPREAD * json_array_size(arr) + TOK_MAX_ID_SLACK;
        if ((size_t)json_integer_value(id) >= max_id)
            return cv_errorf(err,
                             "tokenizer.json: added_tokens[%zu] id %lld is far beyond the vocab "
                             "of %d and %zu added tokens (ids must be dense)",
                             i, (long long)json_integer_value(id), tok->bpe.n_vocab,
                             json_array_size(arr));
        tok_added *a = &tok->added[tok->n_added++];
        a->len = json_string_length(content);
        a->content = malloc(a->len + 1);
        if (!a->content) return cv_errorf(err, "tokenizer: out of memory");
        memcpy(a->content, json_string_value(content), a->len + 1);
        /* HF gives a token already in the model vocab the vocab's id,
         * whatever id tokenizer.json lists */
        int32_t vocab_id = tok_bpe_lookup(&tok->bpe, a->content, a->len);
        a->id = vocab_id >= 0 ? vocab_id : (int32_t)json_integer_value(id);
        a->special = json_is_true(json_object_get(e, "special"));
        a->normalized = json_is_true(json_object_get(e, "normalized"));
        a->lstrip = json_is_true(json_object_get(e, "lstrip"));
        a->rstrip = json_is_true(json_object_get(e, "rstrip"));
        a->single_word = json_is_true(json_object_get(e, "single_word"));
        /* normalized tokens are searched in normalized text, so their
         * pattern is the normalized content (HF refresh_added_tokens) */
        tok_buf m = {0};
        if (a->normalized && tok->normalizer) {
            if (tok_normalize(tok->normalizer, a->content, a->len, &m, err)) return -1;
        } else if (tok_buf_put(&m, a->content, a->len, err)) {
            return -1;
        }
        a->match = m.p;
        a->match_len = m.len;
    }
    return 0;
}

static int added_cmp(const void *pa, const void *pb)
{
    const tok_added *a = *(const tok_added *const *)pa, *b = *(const tok_added *const *)pb;
    unsigned char fa = a->match_len ? (unsigned char)a->match[0] : 0;
    unsigned char fb = b->match_len ? (unsigned char)b->match[0] : 0;
    if (fa != fb) return fa < fb ? -1 : 1;
    if (a->match_len != b->match_len) return a->match_len > b->match_len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id; /* same text twice: first id wins */
}

static int build_set(const cv_tokenizer *tok, bool normalized, tok_added_set *set, cv_error *err)
{
    set->v = calloc(tok->n_added + 1, sizeof *set->v);
    if (!set->v) return cv_errorf(err, "tokenizer: out of memory");
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].normalized == normalized && tok->added[i].match_len)
            set->v[set->n++] = &tok->added[i];
    qsort(set->v, set->n, sizeof *set->v, added_cmp);
    size_t k = 0;
    for (int b = 0; b <= 256; b++) {
        while (k < set->n && (unsigned char)set->v[k]->match[0] < b)
            k++;
        set->start[b] = (uint32_t)k;
    }
    return 0;
}

/* ---- post-processor ------------------------------------------------------ */

static int push_ids(int32_t **v, size_t *n, const int32_t *ids, size_t k, bool front, cv_error *err)
{
    if (!k) return 0;
    int32_t *nv = realloc(*v, (*n + k + 1) * sizeof *nv);
    if (!nv) return cv_errorf(err, "tokenizer: out of memory");
    if (front) {
        memmove(nv + k, nv, *n * sizeof *nv);
        memcpy(nv, ids, k * sizeof *nv);
    } else {
        memcpy(nv + *n, ids, k * sizeof *nv);
    }
    *v = nv;
    *n += k;
    return 0;
}

/* TemplateProcessing "single": the special tokens before and after $A. */
static int load_template(cv_tokenizer *tok, const json_t *pp, tok_ids *pre, tok_ids *post,
                         cv_error *err)
{
    const json_t *single = json_object_get(pp, "single");
    const json_t *specials = json_object_get(pp, "special_tokens");
    if (!json_is_array(single))
        return cv_errorf(err, "tokenizer.json: TemplateProcessing needs a \"single\" array");
    bool after = false;
    for (size_t i = 0; i < json_array_size(single); i++) {
        const json_t *piece = json_array_get(single, i);
        if (json_object_get(piece, "Sequence")) {
            after = true;
            continue;
        }
        const char *name =
            json_string_value(json_object_get(json_object_get(piece, "SpecialToken"), "id"));
        const json_t *ids = json_object_get(json_object_get(specials, name ? name : ""), "ids");
        if (!name || !json_is_array(ids))
            return cv_errorf(err,
                             "tokenizer.json: TemplateProcessing piece %zu names no known "
                             "special token",
                             i);
        for (size_t k = 0; k < json_array_size(ids); k++)
            if (tok_ids_push(after ? post : pre,
                             (int32_t)json_integer_value(json_array_get(ids, k)), err))
                return -1;
    }
    return 0;
}

/* A processor wraps what the ones before it produced. */
static int load_post(cv_tokenizer *tok, const json_t *pp, cv_error *err)
{
    if (!pp || json_is_null(pp)) return 0;
    const char *type = json_string_value(json_object_get(pp, "type"));
    if (!type) return cv_errorf(err, "tokenizer.json: post_processor without a \"type\"");
    if (!strcmp(type, "ByteLevel")) return 0; /* only trims offsets */
    if (!strcmp(type, "Sequence")) {
        const json_t *arr = json_object_get(pp, "processors");
        for (size_t i = 0; i < json_array_size(arr); i++)
            if (load_post(tok, json_array_get(arr, i), err)) return -1;
        return 0;
    }
    tok_ids pre = {0}, post = {0};
    int rc = 0;
    if (!strcmp(type, "TemplateProcessing")) {
        rc = load_template(tok, pp, &pre, &post, err);
    } else if (!strcmp(type, "BertProcessing") || !strcmp(type, "RobertaProcessing")) {
        const json_t *cls = json_object_get(pp, "cls"), *sep = json_object_get(pp, "sep");
        if (!json_is_integer(json_array_get(cls, 1)) || !json_is_integer(json_array_get(sep, 1)))
            rc = cv_errorf(err, "tokenizer.json: %s needs \"cls\" and \"sep\"", type);
        else
            rc = tok_ids_push(&pre, (int32_t)json_integer_value(json_array_get(cls, 1)), err) ||
                 tok_ids_push(&post, (int32_t)json_integer_value(json_array_get(sep, 1)), err);
    } else {
        rc = cv_errorf(err, "tokenizer.json: unknown post_processor type \"%s\"", type);
    }
    if (!rc)
        rc = push_ids(&tok->prefix_ids, &tok->n_prefix, pre.v, pre.n, true, err) ||
             push_ids(&tok->suffix_ids, &tok->n_suffix, post.v, post.n, false, err);
    free(pre.v);
    free(post.v);
    return rc ? -1 : 0;
}

/* ---- tokenizer_config.json ------------------------------------------------ */

static const char *config_token(const json_t *cfg, const char *key)
{
    const json_t *v = json_object_get(cfg, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    return json_string_value(v);
}

int tok_load_config_json(cv_tokenizer *tok, const json_t *cfg, cv_error *err)
{
    const char *bos = config_token(cfg, "bos_token"), *eos = config_token(cfg, "eos_token");
    tok->bos_id = bos ? tok_token_to_id(tok, bos) : -1;
    tok->eos_id = eos ? tok_token_to_id(tok, eos) : -1;
    /* transformers rebuilds the template from these flags (Llama-style
     * tokenizers); when present they override tokenizer.json's template */
    const json_t *ab = json_object_get(cfg, "add_bos_token"),
                 *ae = json_object_get(cfg, "add_eos_token");
    int rc = 0;
    if (json_is_boolean(ab) || json_is_boolean(ae)) {
        tok->n_prefix = tok->n_suffix = 0;
        if (json_is_true(ab) && tok->bos_id >= 0)
            rc = push_ids(&tok->prefix_ids, &tok->n_prefix, &tok->bos_id, 1, false, err);
        if (!rc && json_is_true(ae) && tok->eos_id >= 0)
            rc = push_ids(&tok->suffix_ids, &tok->n_suffix, &tok->eos_id, 1, false, err);
    }
    return rc;
}

static int load_config(cv_tokenizer *tok, const char *dir, cv_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    struct stat st;
    if (stat(path, &st) != 0) return 0; /* optional */
    json_error_t je;
    json_t *cfg = json_load_file(path, JSON_DECODE_INT_AS_REAL, &je);
    if (!cfg)
        return cv_errorf(err, "tokenizer: %s: malformed JSON at line %d column %d: %s", path,
                         je.line, je.column, je.text);
    int rc = tok_load_config_json(tok, cfg, err);
    json_decref(cfg);
    return rc;
}

/* ---- id tables ----------------------------------------------------------- */

int tok_build_id_tables(cv_tokenizer *tok, cv_error *err)
{
    int32_t n = tok->bpe.n_vocab;
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].id >= n) n = tok->added[i].id + 1;
    tok->n_ids = n;
    tok->id_str = calloc((size_t)n + 1, sizeof *tok->id_str);
    tok->id_len = calloc((size_t)n + 1, sizeof *tok->id_len);
    tok->id_special = calloc((size_t)n + 1, 1);
    if (!tok->id_str || !tok->id_len || !tok->id_special)
        return cv_errorf(err, "tokenizer: out of memory");
    for (int32_t i = 0; i < tok->bpe.n_vocab; i++) {
        tok->id_str[i] = tok->bpe.vocab_str[i];
        tok->id_len[i] = tok->bpe.vocab_len[i];
    }
    for (size_t i = 0; i < tok->n_added; i++) {
        tok_added *a = &tok->added[i];
        tok->id_str[a->id] = a->content;
        tok->id_len[a->id] = (uint32_t)a->len;
        tok->id_special[a->id] = a->special;
    }
    for (size_t i = 0; i < tok->n_prefix + tok->n_suffix; i++) {
        int32_t id = i < tok->n_prefix ? tok->prefix_ids[i] : tok->suffix_ids[i - tok->n_prefix];
        if (id < 0 || id >= n)
            return cv_errorf(err,
                             "tokenizer.json: post_processor adds id %d, outside the vocab "
                             "of %d",
                             id, n);
    }
    return 0;
}

/* ---- load / free ----------------------------------------------------------- */

static int load_component(const json_t *root, const char *key, size_t size, void **out,
                          int (*load)(const json_t *, void *, cv_error *), cv_error *err)
{
    const json_t *j = json_object_get(root, key);
    if (!j || json_is_null(j)) return 0;
    *out = calloc(1, size);
    if (!*out) return cv_errorf(err, "tokenizer: out of memory");
    return load(j, *out, err);
}

static int load_norm_cb(const json_t *j, void *o, cv_error *e)
{
    return tok_load_normalizer(j, o, e);
}
static int load_pre_cb(const json_t *j, void *o, cv_error *e)
{
    return tok_load_pretok(j, o, e);
}
static int load_dec_cb(const json_t *j, void *o, cv_error *e)
{
    return tok_load_decoder(j, o, e);
}

int tok_load_json(cv_tokenizer *tok, const json_t *root, const tok_raw_model *raw, cv_error *err)
{
    if (!json_is_object(root) || !json_is_object(json_object_get(root, "model")))
        return cv_errorf(err, "tokenizer.json: no \"model\" object");
    if (tok_bpe_load(&tok->bpe, json_object_get(root, "model"), raw, err) ||
        load_component(root, "normalizer", sizeof(tok_normalizer), (void **)&tok->normalizer,
                       load_norm_cb, err) ||
        load_component(root, "pre_tokenizer", sizeof(tok_pretok), (void **)&tok->pretok,
                       load_pre_cb, err) ||
        load_component(root, "decoder", sizeof(tok_decoder), (void **)&tok->decoder, load_dec_cb,
                       err) ||
        load_post(tok, json_object_get(root, "post_processor"), err) ||
        load_added(tok, json_object_get(root, "added_tokens"), err) ||
        build_set(tok, false, &tok->added_raw, err) || build_set(tok, true, &tok->added_norm, err))
        return -1;
    tok_pattern re = {0};
    if (tok_regex_compile(&re, tok_gpt2_regex, err)) return -1;
    tok->bytelevel_re = re.re;
    return 0;
}

static char *read_file(const char *path, size_t *len, cv_error *err)
{
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

cv_tokenizer *tok_load(const char *dir, cv_error *err)
{
    char path[4096], slow[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    snprintf(slow, sizeof slow, "%s/vocab.json", dir);
    struct stat st;
    if (stat(path, &st) != 0 && stat(slow, &st) == 0) return tok_load_slow(dir, err);
    size_t len = 0;
    char *text = read_file(path, &len, err);
    if (!text) return NULL;
    /* vocab and merges are parsed by tok_json_scan.c; jansson gets the rest */
    tok_raw_model raw;
    len = tok_scan_model(text, len, &raw);
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    free(text);
    cv_tokenizer *tok = root ? calloc(1, sizeof *tok) : NULL;
    if (!root)
        cv_errorf(err, "tokenizer: %s: malformed JSON at line %d column %d: %s", path, je.line,
                  je.column, je.text);
    else if (!tok)
        cv_errorf(err, "tokenizer: out of memory");
    int rc = -1;
    if (tok) {
        tok->bos_id = tok->eos_id = -1;
        rc = tok_load_json(tok, root, &raw, err);
        if (rc)
            cv_error_prefix(err, "tokenizer %s", dir);
        else
            rc = load_config(tok, dir, err) || tok_build_id_tables(tok, err);
    }
    json_decref(root);
    free(raw.vocab);
    free(raw.merges);
    if (rc) {
        tok_free(tok);
        return NULL;
    }
    return tok;
}

void tok_free(cv_tokenizer *tok)
{
    if (!tok) return;
    tok_bpe_free(&tok->bpe);
    if (tok->normalizer) tok_normalizer_free(tok->normalizer);
    if (tok->pretok) tok_pretok_free(tok->pretok);
    if (tok->decoder) tok_decoder_free(tok->decoder);
    free(tok->normalizer);
    free(tok->pretok);
    free(tok->decoder);
    if (tok->bytelevel_re) pcre2_code_free(tok->bytelevel_re);
    for (size_t i = 0; i < tok->n_added; i++) {
        free(tok->added[i].content);
        free(tok->added[i].match);
    }
    free(tok->added);
    free(tok->added_raw.v);
    free(tok->added_norm.v);
    free(tok->id_str);
    free(tok->id_len);
    free(tok->id_special);
    free(tok->prefix_ids);
    free(tok->suffix_ids);
    free(tok);
}

/* ---- accessors ------------------------------------------------------------- */

int tok_vocab_size(const cv_tokenizer *tok)
{
    return tok->n_ids;
}
int tok_bos_id(const cv_tokenizer *tok)
{
    return tok->bos_id;
}
int tok_eos_id(const cv_tokenizer *tok)
{
    return tok->eos_id;
}

bool tok_is_special(const cv_tokenizer *tok, int32_t id)
{
    return id >= 0 && id < tok->n_ids && tok->id_special[id];
}

const char *tok_id_to_token(const cv_tokenizer *tok, int32_t id)
{
    return id >= 0 && id < tok->n_ids ? tok->id_str[id] : NULL;
}

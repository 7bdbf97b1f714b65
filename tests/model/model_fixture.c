/* Test model directories; see model_fixture.h. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "model_fixture.h"

void fx_mkdtemp(char *out, size_t n)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(out, n, "%s/cvllm-model-test-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(out));
}

int fx_setup_tmpdir(void **state)
{
    char *dir = malloc(4096);
    if (!dir) return -1;
    fx_mkdtemp(dir, 4096);
    *state = dir;
    return 0;
}

int fx_teardown_tmpdir(void **state)
{
    fx_rmtree(*state);
    free(*state);
    return 0;
}

void fx_rmtree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
            fx_rmtree(path);
        else
            unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

cv_model_config fx_config(const char *arch)
{
    cv_model_config c;
    memset(&c, 0, sizeof c);
    snprintf(c.architecture, sizeof c.architecture, "%s", arch);
    c.hidden_size = 16;
    c.intermediate_size = 32;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 4;
    c.vocab_size = 32;
    c.max_position_embeddings = 64;
    c.rms_norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.tie_word_embeddings = false;
    c.bos_token_id = 1;
    c.n_eos_token_ids = 1;
    c.eos_token_ids[0] = 2;
    return c;
}

float fx_value(size_t t, size_t i)
{
    return (float)((int)((t * 7 + i) % 33) - 16) / 8.0f;
}

static int fx_fill(void *ctx, size_t index, void *dst, size_t offset, size_t n, cv_error *err)
{
    const cv_safetensors_entry *entries = ctx;
    for (size_t i = 0; i < n; i++)
        cv_dtype_store(dst, i, entries[index].tensor.dtype, fx_value(index, offset + i));
    return 0;
}

/* One shard: the entries with index % n_shards == shard, filled with the
 * values of their index in the full list. */
typedef struct fx_shard_ctx {
    const cv_safetensors_entry *all;
    const size_t *index; /* shard entry -> full-list index */
} fx_shard_ctx;

static int fx_fill_shard(void *vctx, size_t index, void *dst, size_t offset, size_t n,
                         cv_error *err)
{
    fx_shard_ctx *ctx = vctx;
    size_t t = ctx->index[index];
    for (size_t i = 0; i < n; i++) {
        float x = fx_value(t, offset + i);
        switch (ctx->all[t].tensor.dtype) {
        case CV_DTYPE_F32:
            ((float *)dst)[i] = x;
            break;
        case CV_DTYPE_F16:
            ((uint16_t *)dst)[i] = cv_f32_to_f16(x);
            break;
        case CV_DTYPE_BF16:
            ((uint16_t *)dst)[i] = cv_f32_to_bf16(x);
            break;
        }
    }
    return 0;
}

static void fx_write_shards(const char *dir, const cv_safetensors_entry *all, size_t n,
                            int n_shards)
{
    json_t *map = json_object();
    cv_safetensors_entry *part = calloc(n, sizeof *part);
    size_t *index = calloc(n, sizeof *index);
    assert_non_null(map);
    assert_non_null(part);
    assert_non_null(index);
    for (int s = 0; s < n_shards; s++) {
        char name[64], path[4096];
        snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        size_t m = 0;
        for (size_t i = (size_t)s; i < n; i += (size_t)n_shards) {
            part[m] = all[i];
            index[m++] = i;
            json_object_set_new(map, all[i].name, json_string(name));
        }
        fx_shard_ctx ctx = {all, index};
        cv_error err = {.msg = ""};
        if (cv_safetensors_write(path, part, m, fx_fill_shard, &ctx, &err)) fail_msg("%s", err.msg);
    }
    free(part);
    free(index);
    json_t *root = json_pack("{s:{s:i},s:o}", "metadata", "total_size", 0, "weight_map", map);
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    assert_int_equal(json_dump_file(root, path, JSON_INDENT(2)), 0);
    json_decref(root);
}

void fx_write_model(const char *dir, const cv_model_config *cfg, cv_dtype dtype, int n_shards)
{
    cv_error err = {.msg = ""};
    cv_model_config c = *cfg;
    c.dtype = dtype;
    if (cv_model_write_config(dir, &c, &err)) fail_msg("%s", err.msg);
    cv_safetensors_entry *entries;
    size_t n;
    if (cv_model_tensor_list(&c, dtype, &entries, &n, &err)) fail_msg("%s", err.msg);
    if (n_shards == 1) {
        char path[4096];
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (cv_safetensors_write(path, entries, n, fx_fill, entries, &err)) fail_msg("%s", err.msg);
    } else {
        fx_write_shards(dir, entries, n, n_shards);
    }
    cv_model_free_tensor_list(entries, n);
}

void fx_json_set(const char *dir, const char *file, const char *key, json_t *value)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) fail_msg("%s: %s", path, jerr.text);
    if (value)
        json_object_set_new(root, key, value);
    else
        json_object_del(root, key);
    assert_int_equal(json_dump_file(root, path, JSON_INDENT(2)), 0);
    json_decref(root);
}

void fx_write_file(const char *dir, const char *file, const void *data, size_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(data, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

static char *fx_read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    *len = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *buf = malloc(*len + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, *len, fp), *len);
    fclose(fp);
    return buf;
}

void fx_patch_header(const char *dir, const char *file, const char *old, const char *new_text,
                     size_t pad_to)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    size_t len;
    char *buf = fx_read_file(path, &len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | (uint8_t)buf[i];
    char *header = strndup(buf + 8, (size_t)hlen);
    char *hit = strstr(header, old);
    if (!hit) fail_msg("'%s' not in the header of %s", old, path);
    size_t new_len = hlen - strlen(old) + strlen(new_text);
    size_t padded = (8 + new_len + pad_to - 1) / pad_to * pad_to - 8;
    char *out = malloc(8 + padded + (len - 8 - hlen));
    assert_non_null(out);
    for (int i = 0; i < 8; i++)
        out[i] = (char)((uint64_t)padded >> (8 * i));
    size_t head = (size_t)(hit - header);
    memcpy(out + 8, header, head);
    memcpy(out + 8 + head, new_text, strlen(new_text));
    memcpy(out + 8 + head + strlen(new_text), hit + strlen(old), hlen - head - strlen(old));
    memset(out + 8 + new_len, ' ', padded - new_len);
    memcpy(out + 8 + padded, buf + 8 + hlen, len - 8 - hlen);
    fx_write_file(dir, file, out, 8 + padded + (len - 8 - hlen));
    free(out);
    free(header);
    free(buf);
}

void fx_assert_load_error(const char *dir, const char *expected_fmt, ...)
{
    char expected[2048];
    va_list ap;
    va_start(ap, expected_fmt);
    vsnprintf(expected, sizeof expected, expected_fmt, ap);
    va_end(ap);
    cv_error err = {.msg = ""};
    cv_model *m = cv_model_load(dir, &err);
    if (m) {
        cv_model_free(m);
        fail_msg("loaded %s, expected the error: %s", dir, expected);
    }
    assert_string_equal(err.msg, expected);
}

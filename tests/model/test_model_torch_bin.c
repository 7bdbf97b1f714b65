/* pytorch_model.bin: the fixtures tests/fixtures/torch_bin/make_torch_bin.py
 * writes with the Python stdlib as torch.save does (dtypes, shared storages,
 * zip64, protocol 4, unaligned data, a malicious pickle, compressed entries,
 * a Llama model as .bin, sharded .bin and safetensors), corrupt copies made
 * here, and hand-written pickles for the interpreter's own errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "model/model_internal.h"
#include "model/torch_internal.h"
#include "model_fixture.h"

static void fixture_path(char *out, size_t n, const char *name)
{
    const char *src = getenv("CVLLM_SOURCE_DIR");
    snprintf(out, n, "%s/tests/fixtures/torch_bin/%s", src ? src : ".", name);
}

static void open_fixture(cv_st_file *f, const char *name)
{
    char path[4096];
    fixture_path(path, sizeof path, name);
    cv_error err = {.msg = ""};
    if (cv_torch_open(f, path, &err)) fail_msg("%s", err.msg);
}

static const cv_st_tensor *find(const cv_st_file *f, const char *name)
{
    const cv_st_tensor *t = cv_st_find(f, name);
    if (!t) fail_msg("%s: no tensor '%s'", f->path, name);
    return t;
}

static bool in_map(const cv_st_file *f, const void *p)
{
    return (const char *)p >= (const char *)f->map &&
           (const char *)p < (const char *)f->map + f->map_bytes;
}

static void check_f32(const cv_st_tensor *t, const float *want, size_t n)
{
    assert_true(t->supported);
    assert_int_equal(t->tensor.dtype, CV_DTYPE_F32);
    assert_int_equal(cv_tensor_numel(&t->tensor), n);
    for (size_t i = 0; i < n; i++)
        assert_true(((const float *)t->tensor.data)[i] == want[i]);
}

/* What dtypes_state() in the generator stores. */
static void check_dtypes(const cv_st_file *f, bool mapped)
{
    const cv_st_tensor *t = find(f, "f32");
    assert_int_equal(t->tensor.n_dims, 2);
    assert_int_equal(t->tensor.shape[0], 2);
    assert_int_equal(t->tensor.shape[1], 3);
    check_f32(t, (const float[]){-1, -0.5f, 0, 0.5f, 1, 1.5f}, 6);
    assert_true(in_map(f, t->tensor.data) == mapped);

    t = find(f, "f16");
    assert_true(t->supported);
    assert_int_equal(t->tensor.dtype, CV_DTYPE_F16);
    const float f16[] = {0.25f, -2.0f, 65504.0f, 1.0f / 1024};
    for (int i = 0; i < 4; i++)
        assert_true(cv_f16_to_f32(((const uint16_t *)t->tensor.data)[i]) == f16[i]);

    t = find(f, "bf16");
    assert_true(t->supported);
    assert_int_equal(t->tensor.dtype, CV_DTYPE_BF16);
    const float bf16[] = {1.0f, -0.5f, 3.0f, 256.0f};
    for (int i = 0; i < 4; i++)
        assert_true(cv_bf16_to_f32(((const uint16_t *)t->tensor.data)[i]) == bf16[i]);

    t = find(f, "i64");
    assert_false(t->supported);
    assert_string_equal(t->dtype_name, "I64");
    assert_string_equal(t->why, "");

    /* two views of one storage: offsets 2 and 6 elements into it */
    const cv_st_tensor *a = find(f, "shared_a"), *b = find(f, "shared_b");
    check_f32(a, (const float[]){2, 3, 4, 5}, 4);
    check_f32(b, (const float[]){6, 7, 8, 9}, 4);
    if (mapped) assert_ptr_equal((const float *)a->tensor.data + 4, b->tensor.data);

    t = find(f, "transposed");
    assert_false(t->supported);
    assert_string_equal(t->why, "is a non-contiguous view (stride [1, 3]); only contiguous "
                                "tensors are read");

    t = find(f, "column"); /* stride of the size-1 dimension does not matter */
    assert_int_equal(t->tensor.n_dims, 2);
    check_f32(t, (const float[]){1, 2, 3}, 3);

    t = find(f, "scalar");
    assert_int_equal(t->tensor.n_dims, 0);
    check_f32(t, (const float[]){42}, 1);

    check_f32(find(f, "param"), (const float[]){-1.5f, 2.5f}, 2);
    assert_null(cv_st_find(f, "step")); /* not a tensor */
    assert_int_equal(f->n_tensors, 10);
}

static void test_dtypes_and_views(void **state)
{
    (void)state;
    static const char *const names[] = {"dtypes.bin", "zip64.bin", "protocol4.bin"};
    for (size_t i = 0; i < 3; i++) {
        cv_st_file f;
        open_fixture(&f, names[i]);
        check_dtypes(&f, true);
        assert_int_equal(f.n_copies, 0);
        cv_st_close(&f);
    }
}

/* A zip tool that does not align entries: the tensors are copied. */
static void test_unaligned_copied(void **state)
{
    (void)state;
    cv_st_file f;
    open_fixture(&f, "unaligned.bin");
    check_dtypes(&f, false);
    assert_true(f.n_copies > 0);
    cv_st_close(&f);
}

static void assert_open_error(const char *path, const char *want)
{
    cv_st_file f;
    cv_error err = {.msg = ""};
    assert_int_equal(cv_torch_open(&f, path, &err), -1);
    assert_string_equal(err.msg, want);
    assert_null(f.map);
    assert_null(f.tensors);
}

static void assert_fixture_error(const char *name, const char *fmt)
{
    char path[4096], want[8192];
    fixture_path(path, sizeof path, name);
    snprintf(want, sizeof want, fmt, path);
    assert_open_error(path, want);
}

static void test_malicious_refused(void **state)
{
    (void)state;
    assert_fixture_error("malicious.bin", "refusing to load %s: it references the global "
                                          "'posix.system'; only tensors are read");
    assert_fixture_error("malicious_p4.bin", "refusing to load %s: it references the global "
                                             "'posix.system'; only tensors are read");
}

static void test_compressed_refused(void **state)
{
    (void)state;
    assert_fixture_error("compressed.bin",
                         "%s: zip entry 'archive/data.pkl' is compressed (method 8); torch.save "
                         "stores entries uncompressed, and only such archives are read");
}

static void test_missing_storage(void **state)
{
    (void)state;
    assert_fixture_error("missing_storage.bin",
                         "%s: tensor 'f16': its storage '1' has no zip entry");
}

/* ---- corrupt copies -------------------------------------------------------- */

static unsigned char *read_fixture(const char *name, size_t *n)
{
    char path[4096];
    fixture_path(path, sizeof path, name);
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    *n = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *b = malloc(*n);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, *n, fp), *n);
    fclose(fp);
    return b;
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Writes B[0..N) as DIR/NAME and checks the load error (FMT: %s = path). */
static void assert_bytes_error(const char *dir, const unsigned char *b, size_t n, const char *fmt)
{
    char path[4096], want[8192];
    fx_write_file(dir, "bad.bin", b, n);
    snprintf(path, sizeof path, "%s/bad.bin", dir);
    snprintf(want, sizeof want, fmt, path);
    assert_open_error(path, want);
}

static void test_corrupt_zips(void **state)
{
    const char *dir = *state;
    size_t n;
    unsigned char *b = read_fixture("dtypes.bin", &n);
    const char *no_eocd = "%s: not a zip archive (no end of central directory record): "
                          "truncated, or the legacy torch format from before torch 1.6, which "
                          "is not read (re-save it with a newer torch or convert it to "
                          "safetensors)";
    assert_bytes_error(dir, b, n - 10, no_eocd);
    assert_bytes_error(dir, (const unsigned char *)"\x80\x02}q\x00.", 6,
                       "%s: not a zip archive (6 bytes, too short); torch.save writes zip "
                       "archives since torch 1.6");
    assert_bytes_error(dir, b, 0,
                       "%s: not a zip archive (0 bytes, too short); torch.save writes zip "
                       "archives since torch 1.6");
    /* a prefix that keeps the first entries but not the directory */
    assert_bytes_error(dir, b, n / 2, no_eocd);

    /* the end record: 22 bytes at the end (no comment) */
    unsigned char *eocd = b + n - 22;
    uint32_t cd_off = get32(eocd + 16);
    put32(eocd + 16, 0x7fffffff);
    assert_bytes_error(dir, b, n,
                       "%s: corrupt or truncated zip: central directory (671 bytes at "
                       "2147483647) runs past its end record at 2567");
    put32(eocd + 16, cd_off);

    /* first central directory entry: local header offset past the end */
    unsigned char *cd = b + cd_off;
    put32(cd + 42, (uint32_t)n + 100);
    assert_bytes_error(dir, b, n,
                       "%s: corrupt or truncated zip: no local header for entry "
                       "'dtypes/data.pkl' at offset 2689");
    put32(cd + 42, 0);
    /* its size: larger than the file */
    put32(cd + 20, 1u << 30);
    put32(cd + 24, 1u << 30);
    assert_bytes_error(dir, b, n,
                       "%s: truncated: zip entry 'dtypes/data.pkl' needs bytes [64, 1073741888) "
                       "but the file has 2589");
    put32(cd + 24, 5);
    assert_bytes_error(dir, b, n,
                       "%s: corrupt zip: stored entry 'dtypes/data.pkl' has size 5 but "
                       "1073741824 stored bytes");
    put32(cd + 20, 5);
    assert_bytes_error(dir, b, n, "%s: data.pkl byte 2: truncated pickle");
    free(b);
}

/* ---- the pickle interpreter ------------------------------------------------- */

static void assert_pickle_error(const char *p, size_t n, const char *want)
{
    cv_pkl_state st;
    cv_error err = {.msg = ""};
    assert_int_equal(cv_pkl_load((const uint8_t *)p, n, "x.bin", &st, &err), -1);
    assert_string_equal(err.msg, want);
    assert_null(st.tensors);
}

#define PKL(lit) lit, sizeof(lit) - 1

static void test_pickle_errors(void **state)
{
    (void)state;
    assert_pickle_error(PKL("\x80\x02]."), "x.bin: data.pkl holds a list, not a state dict of "
                                           "tensors");
    assert_pickle_error(PKL("\x80\x02}\x81."),
                        "x.bin: data.pkl byte 3: opcode 0x81 is not one torch.save writes");
    assert_pickle_error(PKL("\x80\x07}."), "x.bin: data.pkl byte 0: unsupported pickle protocol");
    assert_pickle_error(PKL("\x80\x02}h\x05."), "x.bin: data.pkl byte 3: memo index not set");
    assert_pickle_error(PKL("\x80\x02}s."), "x.bin: data.pkl byte 3: stack underflow");
    assert_pickle_error(PKL("\x80\x02}}"), "x.bin: data.pkl byte 4: truncated pickle");
    assert_pickle_error(PKL("\x80\x02}}."),
                        "x.bin: data.pkl byte 4: STOP with other than one value on the stack");
    assert_pickle_error(PKL("\x80\x02"
                            "cbuiltins\neval\n."),
                        "refusing to load x.bin: it references the global 'builtins.eval'; only "
                        "tensors are read");
    assert_pickle_error(PKL("\x80\x02\x8c\x08"
                            "builtins\x8c\x04"
                            "exec\x93."),
                        "refusing to load x.bin: it references the global 'builtins.exec'; only "
                        "tensors are read");
    assert_pickle_error(PKL("\x80\x02"
                            "ctorch\nFloatStorage\n)R."),
                        "x.bin: data.pkl byte 23: a storage type called as a function; only "
                        "torch.save's storage references are read");
    assert_pickle_error(PKL("\x80\x02(X\x07\x00\x00\x00storageK\x01K\x02K\x03K\x04tQ."),
                        "x.bin: data.pkl byte 24: persistent id is not ('storage', storage "
                        "type, key, location, numel)");
    assert_pickle_error(PKL("\x80\x02"
                            "ctorch._utils\n_rebuild_tensor_v2\n)R."),
                        "x.bin: data.pkl byte 36: _rebuild_tensor_v2 takes 6 or 7 arguments");
    assert_pickle_error(PKL("\x80\x02]}b."),
                        "x.bin: data.pkl byte 4: BUILD on something other than a dict");
    assert_pickle_error(PKL("\x80\x02\x8a\x09\x01\x02\x03\x04\x05\x06\x07\x08\x09."),
                        "x.bin: data.pkl byte 2: integer wider than 64 bits");
}

/* A storage type given as a dtype global (torch.float32), hooks as None,
 * stride of a 1-D tensor: what a hand-written torch.save-like pickle may
 * hold. */
static void test_pickle_dtype_global(void **state)
{
    (void)state;
    static const char p[] = "\x80\x02}(X\x01\x00\x00\x00"
                            "a"
                            "ctorch._utils\n_rebuild_tensor_v2\n"
                            "((X\x07\x00\x00\x00storage"
                            "ctorch\nfloat32\n"
                            "X\x01\x00\x00\x00"
                            "0X\x03\x00\x00\x00"
                            "cpuK\x02tQK\x01K\x01\x85K\x01\x85\x89NtRu.";
    cv_pkl_state st;
    cv_error err = {.msg = ""};
    if (cv_pkl_load((const uint8_t *)p, sizeof p - 1, "x.bin", &st, &err)) fail_msg("%s", err.msg);
    assert_int_equal(st.n_tensors, 1);
    assert_string_equal(st.tensors[0].name, "a");
    assert_string_equal(st.tensors[0].storage_key, "0");
    assert_string_equal(st.tensors[0].dtype->name, "F32");
    assert_int_equal(st.tensors[0].storage_numel, 2);
    assert_int_equal(st.tensors[0].offset, 1);
    assert_int_equal(st.tensors[0].n_dims, 1);
    assert_int_equal(st.tensors[0].size[0], 1);
    cv_pkl_free(&st);
}

/* ---- whole models ------------------------------------------------------------- */

static cv_model *load_model(const char *name)
{
    char dir[4096];
    fixture_path(dir, sizeof dir, name);
    cv_error err = {.msg = ""};
    cv_model *m = cv_model_load(dir, &err);
    if (!m) fail_msg("%s", err.msg);
    return m;
}

static void assert_same_tensor(const cv_tensor *a, const cv_tensor *b)
{
    assert_int_equal(a->dtype, b->dtype);
    assert_int_equal(a->n_dims, b->n_dims);
    for (int d = 0; d < a->n_dims; d++)
        assert_int_equal(a->shape[d], b->shape[d]);
    assert_true((a->data == NULL) == (b->data == NULL));
    if (a->data)
        assert_memory_equal(a->data, b->data, (size_t)cv_tensor_numel(a) * cv_dtype_size(a->dtype));
}

/* Every tensor of the two models bitwise equal (cv_layer_weights holds
 * only cv_tensors). */
static void assert_same_weights(const cv_model *a, const cv_model *b)
{
    const cv_model_weights *wa = cv_model_get_weights(a), *wb = cv_model_get_weights(b);
    assert_same_tensor(&wa->embed, &wb->embed);
    assert_same_tensor(&wa->final_norm, &wb->final_norm);
    assert_same_tensor(&wa->lm_head, &wb->lm_head);
    size_t per_layer = sizeof(cv_layer_weights) / sizeof(cv_tensor);
    for (int l = 0; l < cv_model_get_config(a)->n_layers; l++)
        for (size_t i = 0; i < per_layer; i++)
            assert_same_tensor((const cv_tensor *)&wa->layers[l] + i,
                               (const cv_tensor *)&wb->layers[l] + i);
}

static void test_model_bin_equals_safetensors(void **state)
{
    (void)state;
    cv_model *st = load_model("model_st");
    static const char *const others[] = {"model_bin", "model_bin_sharded", "model_both"};
    for (size_t i = 0; i < 3; i++) {
        cv_model *m = load_model(others[i]);
        assert_int_equal(cv_model_get_config(m)->n_layers, 2);
        assert_same_weights(st, m);
        cv_model_free(m);
    }
    const cv_model_weights *w = cv_model_get_weights(st);
    assert_true(((const float *)w->embed.data)[0] == -0.75f);
    cv_model_free(st);
}

/* ---- real torch.save output (tests/fixtures/models, made with torch) ---------- */

/* Every tensor of the torch.save files BINS (NULL-terminated, under
 * tests/fixtures/models/BIN_DIR) must equal, bitwise, the tensor of
 * ST_DIR/model.safetensors that save_pretrained wrote for the same weights,
 * found under its name or with PREFIX prepended (the .bin files use the
 * hub's key names). Tensors of other dtypes (GPT-2's bool attention masks)
 * exist only in the .bin. Returns how many tensors were compared. */
static size_t compare_real(const char *bin_dir, const char *const *bins, const char *st_dir,
                           const char *prefix)
{
    const char *src = getenv("CVLLM_SOURCE_DIR");
    char path[4096];
    cv_error err = {.msg = ""};
    cv_st_file st;
    snprintf(path, sizeof path, "%s/tests/fixtures/models/%s/model.safetensors", src ? src : ".",
             st_dir);
    if (cv_st_open(&st, path, &err)) fail_msg("%s", err.msg);
    size_t compared = 0;
    for (size_t b = 0; bins[b]; b++) {
        cv_st_file f;
        snprintf(path, sizeof path, "%s/tests/fixtures/models/%s/%s", src ? src : ".", bin_dir,
                 bins[b]);
        if (cv_torch_open(&f, path, &err)) fail_msg("%s", err.msg);
        assert_int_equal(f.n_copies, 0); /* torch aligns every storage */
        for (size_t i = 0; i < f.n_tensors; i++) {
            const cv_st_tensor *t = &f.tensors[i];
            if (!t->supported) {
                assert_string_equal(t->dtype_name, "BOOL");
                continue;
            }
            assert_true(in_map(&f, t->tensor.data));
            char name[512];
            snprintf(name, sizeof name, "%s%s", prefix, t->name);
            const cv_st_tensor *w = cv_st_find(&st, t->name);
            if (!w) w = cv_st_find(&st, name);
            if (!w) fail_msg("%s: tensor '%s' not in %s", path, t->name, st.path);
            assert_same_tensor(&t->tensor, &w->tensor);
            compared++;
        }
        cv_st_close(&f);
    }
    cv_st_close(&st);
    return compared;
}

static bool have_real(const char *dir)
{
    const char *src = getenv("CVLLM_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/models/%s", src ? src : ".", dir);
    FILE *fp = fopen(path, "r");
    if (fp) fclose(fp);
    if (!fp) printf("no %s (make_fixtures_opt_gpt2.py writes it)\n", path);
    return fp != NULL;
}

static void test_real_torch_save(void **state)
{
    (void)state;
    if (!have_real("opt_bin_f32") || !have_real("gpt2_bin_sharded")) skip();
    /* OPT without lm_head (tied), GPT-2 with its masks: every other tensor */
    size_t n = compare_real("opt_bin_f32", (const char *const[]){"pytorch_model.bin", NULL},
                            "opt_f32", "model.");
    assert_true(n >= 20);
    n = compare_real("gpt2_bin_sharded",
                     (const char *const[]){"pytorch_model-00001-of-00002.bin",
                                           "pytorch_model-00002-of-00002.bin", NULL},
                     "gpt2_f32", "transformer.");
    assert_true(n >= 20);
}

/* TMP gets model_bin's config.json and fixture BIN as its pytorch_model.bin. */
static void model_dir_with(const char *tmp, const char *bin)
{
    size_t n;
    unsigned char *b = read_fixture("model_bin/config.json", &n);
    fx_write_file(tmp, "config.json", b, n);
    free(b);
    b = read_fixture(bin, &n);
    fx_write_file(tmp, "pytorch_model.bin", b, n);
    free(b);
}

static void test_model_errors(void **state)
{
    const char *dir = *state;
    model_dir_with(dir, "malicious.bin");
    fx_assert_load_error(dir,
                         "refusing to load %s/pytorch_model.bin: it references the global "
                         "'posix.system'; only tensors are read",
                         dir);
    model_dir_with(dir, "noncontig_embed.bin");
    fx_assert_load_error(dir,
                         "%s/pytorch_model.bin: tensor 'model.embed_tokens.weight' is a "
                         "non-contiguous view (stride [1, 16]); only contiguous tensors are read",
                         dir);
    model_dir_with(dir, "dtypes.bin");
    fx_assert_load_error(dir, "%s/pytorch_model.bin: tensor 'model.embed_tokens.weight' missing",
                         dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtypes_and_views),
        cmocka_unit_test(test_unaligned_copied),
        cmocka_unit_test(test_malicious_refused),
        cmocka_unit_test(test_compressed_refused),
        cmocka_unit_test(test_missing_storage),
        cmocka_unit_test_setup_teardown(test_corrupt_zips, fx_setup_tmpdir, fx_teardown_tmpdir),
        cmocka_unit_test(test_pickle_errors),
        cmocka_unit_test(test_pickle_dtype_global),
        cmocka_unit_test(test_model_bin_equals_safetensors),
        cmocka_unit_test_setup_teardown(test_model_errors, fx_setup_tmpdir, fx_teardown_tmpdir),
        cmocka_unit_test(test_real_torch_save),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

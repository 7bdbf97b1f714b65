/* Builds small model directories at test time (in a fresh temp dir) with the
 * model module's own writers, and breaks them on purpose: the loader tests
 * start from a valid model and change one thing. */
#ifndef CV_TESTS_MODEL_FIXTURE_H
#define CV_TESTS_MODEL_FIXTURE_H

#include <jansson.h>

#include "model/model.h"

/* A fresh directory under $TMPDIR (or /tmp); fx_rmtree removes it with
 * everything below it. */
void fx_mkdtemp(char *out, size_t n);
void fx_rmtree(const char *dir);
/* cmocka setup and teardown: *state is a fresh directory (malloc'd path),
 * removed with its contents afterwards. */
int fx_setup_tmpdir(void **state);
int fx_teardown_tmpdir(void **state);

/* A small config for ARCH: hidden 16, intermediate 32, 2 layers, 4 heads,
 * 2 KV heads, head_dim 4, vocab 32, untied, bos 1, eos 2. */
cv_model_config fx_config(const char *arch);

/* The value fx_write_model stores at element I of tensor number T (in
 * cv_model_tensor_list order): small multiples of 1/8, exact in F16/BF16. */
float fx_value(size_t t, size_t i);

/* Writes config.json, generation_config.json and the weights of CFG in
 * DTYPE into DIR: model.safetensors when N_SHARDS is 1, else N_SHARDS files
 * model-0000K-of-0000N.safetensors (tensors dealt round-robin) and
 * model.safetensors.index.json. Fails the test on error. */
void fx_write_model(const char *dir, const cv_model_config *cfg, cv_dtype dtype, int n_shards);

/* Sets KEY of DIR/FILE (a JSON object) to VALUE (stolen); NULL VALUE
 * deletes KEY. */
void fx_json_set(const char *dir, const char *file, const char *key, json_t *value);

/* Writes LEN bytes of DATA to DIR/FILE. */
void fx_write_file(const char *dir, const char *file, const void *data, size_t len);

/* In the safetensors file DIR/FILE, replaces the first occurrence of OLD in
 * the JSON header by NEW, re-padding the header to PAD_TO bytes (8 keeps
 * tensors aligned; 1 means no padding). The data region is unchanged. */
void fx_patch_header(const char *dir, const char *file, const char *old, const char *new_text,
                     size_t pad_to);

/* Loads DIR and asserts it fails with exactly EXPECTED (a printf format
 * whose %s arguments follow, usually DIR). */
void fx_assert_load_error(const char *dir, const char *expected_fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif

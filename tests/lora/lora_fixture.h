/* LoRA test data made on the spot, without torch: PEFT adapter directories
 * with random A and B for a fixture model, and the merged-weights copy of
 * that model (W + scale * B A, computed in double here, independently of
 * the backend's LoRA path) that an adapter's outputs must match. */
#ifndef CV_TESTS_LORA_LORA_FIXTURE_H
#define CV_TESTS_LORA_LORA_FIXTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct lora_spec {
    int rank;
    double alpha;
    bool rslora;
    unsigned targets; /* bit k: cv_lora_target k */
    uint64_t seed;
} lora_spec;

/* A fresh directory under $TMPDIR (or /tmp) into out. */
void lf_mkdtemp(char *out, size_t n);
/* Removes dir and the files in it (one level of subdirectories). */
void lf_rmtree(const char *dir);
/* Writes a PEFT adapter for the model in model_dir into adapter_dir
 * (created): adapter_config.json (extra_json, e.g. "\"use_dora\": true",
 * is added to its keys when not NULL) and adapter_model.safetensors. */
void lf_write_adapter(const char *model_dir, const char *adapter_dir, const lora_spec *spec,
                      const char *extra_json);
/* Writes out_dir (created): model_dir's config.json and its weights with the
 * adapter merged in. model_dir must hold one F32 model.safetensors. */
void lf_write_merged(const char *model_dir, const lora_spec *spec, const char *out_dir);
/* Writes a file with the given text. */
void lf_write_text(const char *path, const char *text);
/* $CVLLM_SOURCE_DIR/tests/fixtures/models/name into out. */
void lf_model_path(char *out, size_t n, const char *name);

#endif

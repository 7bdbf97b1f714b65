/* Triton's model configuration (config.pbtxt) as cvllm reads it: the
 * ModelConfig fields a vLLM model uses, parsed from protobuf text format,
 * auto-completed for backend "vllm" the way the Triton vLLM backend does
 * (max_batch_size 0, decoupled transaction policy, its inputs and outputs)
 * and rendered as Triton's JSON for GET /v2/models/{m}/config. */
#ifndef CV_SERVER_MODEL_CONFIG_H
#define CV_SERVER_MODEL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "base/error.h"

/* Values are Triton's DataType enum (model_config.proto). */
typedef enum {
    CV_TYPE_INVALID = 0,
    CV_TYPE_BOOL = 1,
    CV_TYPE_UINT8 = 2,
    CV_TYPE_UINT16 = 3,
    CV_TYPE_UINT32 = 4,
    CV_TYPE_UINT64 = 5,
    CV_TYPE_INT8 = 6,
    CV_TYPE_INT16 = 7,
    CV_TYPE_INT32 = 8,
    CV_TYPE_INT64 = 9,
    CV_TYPE_FP16 = 10,
    CV_TYPE_FP32 = 11,
    CV_TYPE_FP64 = 12,
    CV_TYPE_STRING = 13,
    CV_TYPE_BF16 = 14,
} cv_data_type;

/* Values are Triton's ModelInstanceGroup.Kind. */
typedef enum {
    CV_KIND_AUTO = 0,
    CV_KIND_GPU = 1,
    CV_KIND_CPU = 2,
    CV_KIND_MODEL = 3
} cv_instance_kind;

enum {
    CV_MAX_TENSORS = 24,
    CV_MAX_DIMS = 8,
    CV_MAX_GROUPS = 8,
    CV_MAX_PARAMS = 32,
    CV_MAX_VERSIONS = 16,
};

typedef struct cv_tensor_config {
    char name[128];
    cv_data_type data_type;
    int n_dims;
    int64_t dims[CV_MAX_DIMS]; /* -1 = variable */
    bool optional;
} cv_tensor_config;

typedef struct cv_instance_group {
    char name[128];
    cv_instance_kind kind;
    int count;
    int n_gpus;
    int gpus[16];
} cv_instance_group;

typedef struct cv_model_param {
    char key[128];
    char value[1024]; /* ModelParameter.string_value */
} cv_model_param;

typedef enum { CV_VERSIONS_LATEST = 0, CV_VERSIONS_ALL, CV_VERSIONS_SPECIFIC } cv_version_policy;

typedef struct cv_model_config {
    char name[256];
    char platform[64];
    char backend[64];
    cv_version_policy version_policy;
    int latest_num_versions; /* CV_VERSIONS_LATEST: how many (1) */
    int n_specific;
    int64_t specific[CV_MAX_VERSIONS]; /* CV_VERSIONS_SPECIFIC */
    bool has_max_batch_size;
    int max_batch_size;
    int n_inputs;
    cv_tensor_config inputs[CV_MAX_TENSORS];
    int n_outputs;
    cv_tensor_config outputs[CV_MAX_TENSORS];
    int n_groups;
    cv_instance_group groups[CV_MAX_GROUPS];
    int n_params;
    cv_model_param params[CV_MAX_PARAMS];
    bool has_decoupled; /* model_transaction_policy given */
    bool decoupled;
} cv_model_config;

/* Parses config.pbtxt text. Unknown fields, wrong value types and
 * out-of-range enums are errors "<file>:<line>: ...". A model of another
 * backend (backend: "python", ...), another platform or an ensemble
 * (platform: "ensemble", ensemble_scheduling) is refused first, with
 * class CV_ERR_UNSUPPORTED: "<file>: <what> is not served: cvllm serves
 * models of the vllm backend only". */
int cv_model_config_parse(cv_model_config *cfg, const char *text, size_t len, const char *file,
                          cv_error *err);
/* Reads <model_dir>/config.pbtxt and parses it; the name defaults to
 * model_name (the directory name) and must match it when given. */
int cv_model_config_load(cv_model_config *cfg, const char *model_dir, const char *model_name,
                         cv_error *err);
/* The vLLM backend's auto-completion and its load-time checks (decoupled
 * policy required, max_batch_size 0). */
int cv_model_config_autocomplete_vllm(cv_model_config *cfg, cv_error *err);

/* The string_value of parameter `key`, or NULL. */
const char *cv_model_config_param(const cv_model_config *cfg, const char *key);
/* True when parameter `key` is the string "true" (case-insensitive). */
bool cv_model_config_param_true(const cv_model_config *cfg, const char *key);
const cv_tensor_config *cv_model_config_input(const cv_model_config *cfg, const char *name);

/* "TYPE_STRING" etc. and the KServe names ("BYTES" for STRING). */
const char *cv_data_type_name(cv_data_type t);
const char *cv_data_type_kserve(cv_data_type t);
const char *cv_instance_kind_name(cv_instance_kind k);

/* Triton's JSON rendering of the configuration (new reference). */
json_t *cv_model_config_to_json(const cv_model_config *cfg);

#endif

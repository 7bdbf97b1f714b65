/* 1/model.json (vLLM engine arguments) -> cv_engine_args, with HuggingFace
 * hub ids resolved (and downloaded) by src/hub. */
#ifndef CV_SERVER_MODEL_JSON_H
#define CV_SERVER_MODEL_JSON_H

#include <stdbool.h>
#include <stddef.h>

#include "base/error.h"
#include "cvllm/engine.h"

enum { CV_MAX_LORAS = 16 };

/* model.json keys that the server, not the engine, acts on. */
typedef struct cv_model_json_extra {
    int tensor_parallel_size;   /* 1 */
    int pipeline_parallel_size; /* 1 */
    bool enable_lora;
    bool disable_log_stats;
    char chat_template[8192];  /* "" or a template file path or the template text */
    char tool_call_parser[32]; /* "" (none), "hermes" or "llama3_json" */
    int n_loras;               /* from multi_lora.json */
    char lora_names[CV_MAX_LORAS][128];
    char lora_paths[CV_MAX_LORAS][4096];
    const char *lora_name_ptrs[CV_MAX_LORAS]; /* what args->lora_names points to */
    const char *lora_path_ptrs[CV_MAX_LORAS]; /* args->lora_paths */
} cv_model_json_extra;

/* Reads <version_dir>/model.json (and multi_lora.json when present) into
 * args (initialized with cv_engine_args_default by the caller) and extra.
 * `model_dir` is named in the missing-file message, which is the Triton
 * vLLM backend's: "'model.json' containing vllm engine args must be provided
 * in '<model_dir>/<version>'". Unknown keys and invalid values fail with
 * "<path>: key '<key>': <why>". Relative "model"/"tokenizer" paths resolve
 * against the working directory, then version_dir; other values of the form
 * org/name are hub ids given to cv_hub_resolve with "revision" /
 * "tokenizer_revision" (which defaults to "revision") and "download_dir"
 * (the model's cache; the tokenizer, when another id, uses the HF cache),
 * as vLLM reads them. A hub download happens here, so this may take as long
 * as the download. */
int cv_model_json_load(const char *model_dir, const char *version, cv_engine_args *args,
                       cv_model_json_extra *extra, cv_error *err);

/* Same, from JSON text; `path` names the file in messages and
 * `version_dir` anchors relative paths. */
int cv_model_json_parse(const char *text, size_t len, const char *path, const char *version_dir,
                        cv_engine_args *args, cv_model_json_extra *extra, cv_error *err);

#endif

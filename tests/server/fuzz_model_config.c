/* libFuzzer target: config.pbtxt text through the parser, ModelConfig
 * mapping and vLLM auto-completion (user-written input; must never crash,
 * leak or read out of bounds). Built with CVLLM_FUZZ (clang). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "server/model_config.h"
#include "server/model_json.h"

/* A hub id in the input must never reach the network. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    setenv("HF_HUB_OFFLINE", "1", 1);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cv_model_config cfg;
    cv_error err;
    if (cv_model_config_parse(&cfg, (const char *)data, size, "fuzz/config.pbtxt", &err) == 0 &&
        cv_model_config_autocomplete_vllm(&cfg, &err) == 0) {
        json_t *j = cv_model_config_to_json(&cfg);
        json_decref(j);
    }
    cv_engine_args args = {0};
    cv_model_json_extra extra;
    cv_model_json_parse((const char *)data, size, "fuzz/model.json", "/nonexistent", &args, &extra,
                        &err);
    return 0;
}

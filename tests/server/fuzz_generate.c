/* libFuzzer target (issue 16): /generate and /generate_stream request
 * bodies (client bytes) through what the HTTP frontend does with them
 * before tokenizing: the JSON parse, cv_infer_set_json against the vllm
 * model's completed configuration (the sample repository's config.pbtxt),
 * cv_infer_check, and the sampling parameters and their checks
 * (cv_infer_sampling). Every refusal must say why. Built with CVLLM_FUZZ
 * (clang); infer.c's engine and repository calls are never reached (they
 * are bound to address 0 in this binary: see tests/server/CMakeLists.txt). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "server/infer.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The model as a load makes it, without an engine. */
static cv_model g_model;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    static const char pbtxt[] =
        "backend: \"vllm\"\n"
        "parameters: { key: \"REPORT_CUSTOM_METRICS\" value: { string_value: \"true\" } }\n"
        "instance_group [ { count: 1 kind: KIND_MODEL } ]\n";
    cv_error err = {.msg = ""};
    snprintf(g_model.name, sizeof g_model.name, "kjv");
    if (cv_model_config_parse(&g_model.cfg, pbtxt, sizeof pbtxt - 1, "config.pbtxt", &err) < 0 ||
        cv_model_config_autocomplete_vllm(&g_model.cfg, &err) < 0) {
        fprintf(stderr, "fuzz_generate: %s\n", err.msg);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t je;
    json_t *body = json_loadb((const char *)data, size, 0, &je);
    if (!body) return 0;
    if (!json_is_object(body)) {
        json_decref(body);
        return 0;
    }
    cv_infer_request ir;
    cv_infer_request_init(&ir);
    cv_error err = {.msg = ""};
    int rc = cv_infer_set_json(&ir, &g_model, body, &err);
    json_decref(body);
    if (rc == 0) rc = cv_infer_check(&ir, &g_model, &err);
    if (rc == 0) rc = cv_infer_sampling(&ir, &g_model, &err);
    if (rc < 0 && !err.msg[0]) abort();
    cv_infer_request_free(&ir);
    return 0;
}

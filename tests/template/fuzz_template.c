/* libFuzzer target: arbitrary bytes as a chat template (attacker-chosen via
 * a request's chat_template), compiled and, when that succeeds, rendered
 * with a conversation that has tools, tool calls and non-ASCII text. Must
 * never crash, leak, hang or read out of bounds; every failure must come
 * back as an error message. Built with CVLLM_FUZZ (clang). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "template/template.h"

static json_t *g_ctx;

static const char k_context[] =
    "{\"messages\": ["
    "{\"role\": \"system\", \"content\": \"You are helpful.\"},"
    "{\"role\": \"user\", \"content\": \"Gr\\u00fc\\u00dfe \\u4f60\\u597d \\ud83d\\ude00\\n  x  \"},"
    "{\"role\": \"assistant\", \"content\": \"<think>\\nr\\n</think>\\n\\nok\", \"tool_calls\": ["
    "{\"id\": \"abcDEF123\", \"type\": \"function\", \"function\": {\"name\": \"get_weather\","
    " \"arguments\": {\"city\": \"Z\\u00fcrich\", \"n\": 1.5e-7, \"ok\": true, \"none\": null}}}]},"
    "{\"role\": \"tool\", \"tool_call_id\": \"abcDEF123\", \"content\": \"{\\\"t\\\": 21}\"},"
    "{\"role\": \"user\", \"content\": \"\"}],"
    "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"d\","
    " \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}},"
    " \"required\": [\"city\"]}}}],"
    "\"documents\": null, \"add_generation_prompt\": true, \"bos_token\": \"<s>\","
    " \"eos_token\": \"</s>\", \"enable_thinking\": false}";

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    g_ctx = json_loads(k_context, 0, NULL);
    if (!g_ctx) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cv_error err = {.msg = ""};
    cv_template *t = cv_template_compile((const char *)data, size, &err);
    if (!t) {
        if (!err.msg[0]) abort(); /* a failure always says why */
        return 0;
    }
    char *out = cv_template_render(t, g_ctx, &err);
    if (!out && !err.msg[0]) abort();
    free(out);
    cv_template_free(t);
    return 0;
}

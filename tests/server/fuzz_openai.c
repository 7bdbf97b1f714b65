/* libFuzzer target: /v1/completions and /v1/chat/completions request
 * bodies (client input; must never crash, leak or read out of bounds)
 * through their parsers, then synthetic engine outputs through the
 * streamed and whole response builders; for chat the output text is the
 * input itself, through a tool-call parser picked by its length. Built
 * with CVLLM_FUZZ (clang). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/openai.h"
#include "server/openai_chat.h"
#include "server/openai_chat_internal.h"

static void fuzz_completions(const uint8_t *data, size_t size)
{
    cv_openai_request r;
    cv_error err;
    if (cv_openai_parse((const char *)data, size, 1, &r, &err) < 0) return;
    r.echo = false; /* echo decodes with the model's tokenizer, which is not here */
    if (r.sp.n > 4096 || r.n_prompts > 64 || cv_openai_begin(&r, NULL, &err) < 0) {
        cv_openai_request_free(&r);
        return;
    }
    cv_top_logprob top[2] = {{.token_id = 5, .logprob = -0.5f, .rank = 1, .decoded_token = "a"},
                             {.token_id = 6, .logprob = -1.5f, .rank = 2, .decoded_token = "b"}};
    cv_token_logprobs lp = {.n = 2, .entries = top};
    int32_t ids[1] = {5};
    cv_seq_output seq = {.index = 0,
                         .token_ids = ids,
                         .n_tokens = 1,
                         .text = "a",
                         .text_len = 1,
                         .logprobs = r.sp.logprobs >= 0 ? &lp : NULL,
                         .finish_reason = CV_FINISH_LENGTH,
                         .n_output_tokens_total = 1};
    cv_request_output out = {.n_prompt_tokens = 3, .n_seqs = 1, .seqs = &seq, .finished = true};
    json_decref(cv_openai_chunk(&r, 0, &out));
    json_decref(cv_openai_usage_chunk(&r));
    if (cv_openai_accumulate(&r, 0, &out) == 0) json_decref(cv_openai_response(&r));
    cv_openai_request_free(&r);
}

static void fuzz_chat(const uint8_t *data, size_t size)
{
    cv_openai_request r;
    cv_error err;
    if (cv_chat_parse((const char *)data, size, 1, &r, &err) < 0) return;
    ((cv_chat_state *)r.chat_state)->parser = (cv_tool_parser)(size % 3);
    if (r.sp.n > 64 || cv_openai_begin(&r, NULL, &err) < 0) {
        cv_openai_request_free(&r);
        return;
    }
    char *text = malloc(size + 1);
    if (!text) {
        cv_openai_request_free(&r);
        return;
    }
    memcpy(text, data, size);
    text[size] = '\0';
    size_t half = strlen(text) / 2;
    cv_seq_output seq[2] = {{.text = text, .text_len = half, .n_tokens = 1},
                            {.text = text + half,
                             .text_len = strlen(text + half),
                             .n_tokens = 1,
                             .finish_reason = CV_FINISH_STOP}};
    char saved = text[half];
    json_decref(cv_chat_start_chunks(&r));
    for (int i = 0; i < 2; i++) {
        text[half] = i == 0 ? '\0' : saved; /* each delta NUL-terminated */
        cv_request_output out = {
            .n_prompt_tokens = 3, .n_seqs = 1, .seqs = &seq[i], .finished = i == 1};
        json_decref(cv_chat_chunk(&r, 0, &out));
        cv_chat_accumulate(&r, 0, &out);
    }
    json_decref(cv_chat_usage_chunk(&r));
    json_decref(cv_chat_response(&r));
    free(text);
    cv_openai_request_free(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_completions(data, size);
    fuzz_chat(data, size);
    return 0;
}

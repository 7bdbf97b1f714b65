/* libFuzzer target: /v1/completions request bodies (client input; must
 * never crash, leak or read out of bounds) through the parser, then a
 * synthetic engine output through the streamed and whole response
 * builders. Built with CVLLM_FUZZ (clang). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "server/openai.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cv_openai_request r;
    cv_error err;
    if (cv_openai_parse((const char *)data, size, 1, &r, &err) < 0) return 0;
    r.echo = false; /* echo decodes with the model's tokenizer, which is not here */
    if (r.sp.n > 4096 || r.n_prompts > 64 || cv_openai_begin(&r, NULL, &err) < 0) {
        cv_openai_request_free(&r);
        return 0;
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
    return 0;
}

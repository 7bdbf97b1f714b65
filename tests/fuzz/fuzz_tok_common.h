/* Shared by the tokenizer fuzz targets: the four tokenizers of
 * ../shared, loaded once per process; the first input byte picks one. */
#ifndef CV_TESTS_FUZZ_TOK_COMMON_H
#define CV_TESTS_FUZZ_TOK_COMMON_H

#include <stdio.h>
#include <stdlib.h>

#include "tokenizer/tokenizer.h"

enum { FUZZ_N_TOK = 4 };
static cv_tokenizer *fuzz_tok[FUZZ_N_TOK];

/* CVLLM_SHARED at run time, else the path CMake found at configure time. */
static void fuzz_load_all(void)
{
    const char *shared = getenv("CVLLM_SHARED");
    if (!shared || !shared[0]) shared = CVLLM_SHARED_DEFAULT;
    const char *rel[FUZZ_N_TOK] = {"tokenizers/gpt2", "tokenizers/llama2", "tokenizers/qwen3",
                                   "models/stories260K"};
    for (int i = 0; i < FUZZ_N_TOK; i++) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/%s", shared, rel[i]);
        cv_error err = {.msg = ""};
        fuzz_tok[i] = tok_load(dir, &err);
        if (!fuzz_tok[i]) {
            fprintf(stderr, "fuzz: %s\n", err.msg);
            abort();
        }
    }
}

#endif

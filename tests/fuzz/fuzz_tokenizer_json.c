/* libFuzzer target (issue 16): tokenizer.json of arbitrary bytes through
 * tok_load, the loader every model's tokenizer goes through (a vocab id of
 * 1e8 once took 6 s and 2.2 GB). The bytes are written as tokenizer.json in
 * a directory of the fuzzer's own; a tokenizer it accepts must encode and
 * decode a short text without crashing, and a refusal must say why. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tokenizer/tokenizer.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char g_dir[64];
static char g_file[96];

static void remove_dir(void)
{
    unlink(g_file);
    rmdir(g_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(g_dir, sizeof g_dir, "/tmp/fuzz_tokjson_XXXXXX");
    if (!mkdtemp(g_dir)) abort();
    snprintf(g_file, sizeof g_file, "%s/tokenizer.json", g_dir);
    atexit(remove_dir);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FILE *fp = fopen(g_file, "wb");
    if (!fp || fwrite(data, 1, size, fp) != size || fclose(fp) != 0) abort();
    cv_error err = {.msg = ""};
    cv_tokenizer *tok = tok_load(g_dir, &err);
    if (!tok) {
        if (!err.msg[0]) abort();
        return 0;
    }
    static const char text[] = "Hello, world! \xc3\xa9t\xc3\xa9 <s> 123";
    int32_t *ids = NULL;
    size_t n = 0;
    if (tok_encode(tok, text, sizeof text - 1, true, &ids, &n, &err) == 0) {
        char *back = NULL;
        size_t len = 0;
        if (tok_decode(tok, ids, n, false, &back, &len, &err) == 0) free(back);
        free(ids);
    }
    tok_free(tok);
    return 0;
}

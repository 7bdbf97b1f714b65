/* cvllm-tokenize: encode stdin to ids, or decode ids to text.
 *
 *   cvllm-tokenize --tokenizer DIR [--add-special-tokens] [--decode]
 *                  [--skip-special-tokens]
 *
 * Encoding reads the whole of stdin as one UTF-8 text (nothing added or
 * removed) and prints the ids separated by single spaces and a newline.
 * --decode reads whitespace-separated ids and prints the text as is.
 * Errors go to stderr with exit status 1. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "tokenizer/tokenizer.h"

static int usage(void)
{
    fprintf(stderr, "usage: cvllm-tokenize --tokenizer DIR [--add-special-tokens] [--decode] "
                    "[--skip-special-tokens]\n");
    return 1;
}

/* Parses whitespace-separated decimal ids. */
static int parse_ids(char *s, int32_t **ids, size_t *n)
{
    size_t cap = 64;
    *n = 0;
    *ids = malloc(cap * sizeof **ids);
    for (char *tok = strtok(s, " \t\r\n"); *ids && tok; tok = strtok(NULL, " \t\r\n")) {
        char *end;
        errno = 0;
        long v = strtol(tok, &end, 10);
        if (*end || errno || v < INT32_MIN || v > INT32_MAX) {
            fprintf(stderr, "cvllm-tokenize: \"%s\" is not a token id\n", tok);
            return -1;
        }
        if (*n == cap) {
            int32_t *nv = realloc(*ids, 2 * cap * sizeof *nv);
            if (!nv) break;
            *ids = nv;
            cap *= 2;
        }
        (*ids)[(*n)++] = (int32_t)v;
    }
    if (!*ids) {
        fprintf(stderr, "cvllm-tokenize: out of memory\n");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *dir = NULL;
    bool add_special = false, decode = false, skip_special = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--add-special-tokens"))
            add_special = true;
        else if (!strcmp(argv[i], "--decode"))
            decode = true;
        else if (!strcmp(argv[i], "--skip-special-tokens"))
            skip_special = true;
        else
            return usage();
    }
    if (!dir) return usage();
    cv_error err = {.msg = ""};
    cv_tokenizer *tok = tok_load(dir, &err);
    if (!tok) {
        fprintf(stderr, "cvllm-tokenize: %s\n", err.msg);
        return 1;
    }
    size_t len = 0;
    char *in = cv_read_stream(stdin, &len);
    if (!in) {
        fprintf(stderr, "cvllm-tokenize: cannot read stdin\n");
        tok_free(tok);
        return 1;
    }
    int status = 0;
    if (decode) {
        int32_t *ids = NULL;
        size_t n = 0;
        char *text = NULL;
        size_t tlen = 0;
        if (parse_ids(in, &ids, &n))
            status = 1;
        else if (tok_decode(tok, ids, n, skip_special, &text, &tlen, &err)) {
            fprintf(stderr, "cvllm-tokenize: %s\n", err.msg);
            status = 1;
        } else {
            fwrite(text, 1, tlen, stdout);
        }
        free(ids);
        free(text);
    } else {
        int32_t *ids = NULL;
        size_t n = 0;
        if (tok_encode(tok, in, len, add_special, &ids, &n, &err)) {
            fprintf(stderr, "cvllm-tokenize: %s\n", err.msg);
            status = 1;
        } else {
            for (size_t i = 0; i < n; i++)
                printf(i ? " %d" : "%d", ids[i]);
            printf("\n");
        }
        free(ids);
    }
    free(in);
    tok_free(tok);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "cvllm-tokenize: cannot write stdout\n");
        return 1;
    }
    return status;
}

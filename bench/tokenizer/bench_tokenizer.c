/* cvllm-bench-tokenizer: encode throughput of cvllm's tokenizer on a
 * corpus of NUL-separated documents (bench/tokenizer/make_corpus.py).
 *
 *   cvllm-bench-tokenizer CORPUS NAME=DIR [NAME=DIR ...]
 *
 * For each tokenizer: load time, then every document encoded once with
 * tok_encode (add_special_tokens=false, one thread), reported as MB/s of
 * UTF-8 input (wall clock, and CPU time of this thread, which differ on a
 * shared machine); then the ids decoded back. The ids checksum
 * (sum of (i + 1) * (id + 1) mod 2^64 over the ids of all documents in
 * order) lets bench_hf.py confirm HF produced the very same ids. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "tokenizer/tokenizer.h"

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

static uint64_t checksum(uint64_t h, size_t base, const int32_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h += (uint64_t)(base + i + 1) * (uint64_t)((int64_t)ids[i] + 1);
    return h;
}

static uint64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int bench_one(const char *name, const char *dir, const char *corpus, size_t len)
{
    cv_error err = {.msg = ""};
    uint64_t t0 = cv_now_ns();
    cv_tokenizer *tok = tok_load(dir, &err);
    uint64_t t1 = cv_now_ns();
    if (!tok) {
        fprintf(stderr, "cvllm-bench-tokenizer: %s\n", err.msg);
        return 1;
    }
    size_t docs = 0, tokens = 0;
    uint64_t h = 0, enc_ns = 0, enc_cpu_ns = 0, dec_ns = 0;
    for (size_t pos = 0; pos <= len;) {
        const char *doc = corpus + pos;
        size_t n = strlen(doc);
        int32_t *ids;
        size_t n_ids;
        uint64_t a = cv_now_ns(), ca = cpu_ns();
        if (tok_encode(tok, doc, n, false, &ids, &n_ids, &err)) {
            fprintf(stderr, "cvllm-bench-tokenizer: document %zu: %s\n", docs, err.msg);
            tok_free(tok);
            return 1;
        }
        uint64_t b = cv_now_ns();
        enc_cpu_ns += cpu_ns() - ca;
        char *text;
        size_t tlen;
        if (tok_decode(tok, ids, n_ids, false, &text, &tlen, &err)) {
            fprintf(stderr, "cvllm-bench-tokenizer: document %zu: %s\n", docs, err.msg);
            free(ids);
            tok_free(tok);
            return 1;
        }
        dec_ns += cv_now_ns() - b;
        enc_ns += b - a;
        free(text);
        h = checksum(h, tokens, ids, n_ids);
        tokens += n_ids;
        free(ids);
        docs++;
        pos += n + 1;
    }
    printf("| cvllm | %s | %.0f | %zu | %zu | %zu | %.3f | %.2f | %.2f | %.2f | %016llx |\n", name,
           cv_ns_to_s(t1 - t0) * 1e3, docs, len, tokens, cv_ns_to_s(enc_ns),
           (double)len / 1e6 / cv_ns_to_s(enc_ns), (double)len / 1e6 / cv_ns_to_s(enc_cpu_ns),
           (double)len / 1e6 / cv_ns_to_s(dec_ns), (unsigned long long)h);
    fflush(stdout);
    tok_free(tok);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: cvllm-bench-tokenizer CORPUS NAME=DIR [NAME=DIR ...]\n");
        return 1;
    }
    size_t len;
    char *corpus = read_file(argv[1], &len);
    if (!corpus) {
        fprintf(stderr, "cvllm-bench-tokenizer: cannot read %s\n", argv[1]);
        return 1;
    }
    printf("| impl | tokenizer | load ms | docs | bytes | tokens | encode s | encode MB/s | "
           "encode MB/s (CPU time) | decode MB/s | ids checksum |\n"
           "|---|---|---|---|---|---|---|---|---|---|---|\n");
    int rc = 0;
    for (int i = 2; i < argc && !rc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) {
            fprintf(stderr, "cvllm-bench-tokenizer: expected NAME=DIR, got %s\n", argv[i]);
            rc = 1;
            break;
        }
        *eq = '\0';
        rc = bench_one(argv[i], eq + 1, corpus, len);
    }
    free(corpus);
    return rc;
}

/* cvllm-generate: text from a HuggingFace model directory through the
 * engine. One prompt streams its text to stdout as it is generated; a
 * prompts file runs every line at once (continuous batching) and prints the
 * outputs in input order. Timing goes to stderr. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/log.h"
#include "cvllm/engine.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: cvllm-generate --model DIR (--prompt TEXT | --prompts-file FILE) [options]\n"
               "\n"
               "Prints only the generated text to stdout (as vLLM returns it: the new tokens\n"
               "decoded in the context of the prompt, special tokens skipped); timing goes to\n"
               "stderr. An empty prompt means BOS alone.\n"
               "\n"
               "  --model DIR                HuggingFace model directory\n"
               "  --tokenizer DIR            tokenizer directory (default: the model's)\n"
               "  --prompt TEXT              one prompt; its text is streamed, then a newline\n"
               "  --prompts-file FILE        one prompt per line, all run through the engine at\n"
               "                             once; each output is printed in input order,\n"
               "                             followed by an empty line (\"\\n\\n\")\n"
               "  --max-tokens N             tokens to generate (16)\n"
               "  --temperature T            0 = greedy (1.0)\n"
               "  --top-p P                  (1.0)\n"
               "  --top-k K                  0 = off (0)\n"
               "  --min-p P                  (0)\n"
               "  --seed S                   per-request seed (none)\n"
               "  --ignore-eos               keep generating past EOS\n"
               "  --max-model-len N          (the model's max_position_embeddings)\n"
               "  --max-num-seqs N           sequences per step (256)\n"
               "  --max-num-batched-tokens N token budget per step (max(2048, max_model_len))\n"
               "  --block-size N             KV block size in tokens (16)\n"
               "  --kv-cache-bytes B         KV pool size in bytes (1 GiB)\n"
               "  --no-prefix-caching        disable automatic prefix caching\n"
               "  --threads N                CPU backend threads (all cores)\n"
               "  --device D                 auto, cpu or cuda (auto: a CUDA GPU if visible)\n"
               "  -v, --verbose              engine log on stderr\n");
}

static int parse_long(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "cvllm-generate: %s expects an integer in [%ld, %ld], got '%s'\n", opt, lo,
                hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_float(const char *opt, const char *s, float *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end) {
        fprintf(stderr, "cvllm-generate: %s expects a number, got '%s'\n", opt, s);
        return -1;
    }
    *out = (float)v;
    return 0;
}

typedef struct prompts {
    char **lines;
    int n;
} prompts;

static int read_prompts(const char *path, prompts *p)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "cvllm-generate: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int cap_lines = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        if (len > 0 && line[len - 1] == '\n') line[--len] = '\0';
        if (p->n == cap_lines) {
            cap_lines = cap_lines ? 2 * cap_lines : 16;
            char **l = realloc(p->lines, (size_t)cap_lines * sizeof(char *));
            if (!l) break;
            p->lines = l;
        }
        if (!(p->lines[p->n] = strdup(line))) break;
        p->n++;
    }
    bool ok = feof(f);
    free(line);
    fclose(f);
    if (!ok) fprintf(stderr, "cvllm-generate: cannot read %s\n", path);
    return ok ? 0 : -1;
}

static int run_one(cv_engine *e, const char *prompt, const cv_sampling_params *sp)
{
    cv_output_queue *q = cv_output_queue_create();
    if (!q) return -1;
    cv_request_desc d = {
        .prompt = prompt, .prompt_len = strlen(prompt), .params = sp, .stream = true, .sink = q};
    cv_error err;
    uint64_t t0 = cv_now_ns(), t_first = 0;
    if (cv_engine_add_request(e, &d, &err) == 0) {
        fprintf(stderr, "cvllm-generate: %s\n", err.msg);
        cv_output_queue_destroy(q);
        return -1;
    }
    int n_prompt = 0, n_gen = 0, rc = 0;
    for (;;) {
        cv_request_output *o = cv_output_queue_wait(q, -1);
        if (o->error) {
            fprintf(stderr, "cvllm-generate: %s\n", o->error);
            rc = -1;
        } else if (o->n_seqs > 0) {
            if (!t_first && o->seqs[0].n_output_tokens_total > 0) t_first = cv_now_ns();
            fwrite(o->seqs[0].text, 1, o->seqs[0].text_len, stdout);
            fflush(stdout);
            n_gen = o->seqs[0].n_output_tokens_total;
        }
        n_prompt = o->n_prompt_tokens;
        bool done = o->finished;
        cv_request_output_free(o);
        if (done) break;
    }
    fputc('\n', stdout);
    double s = cv_ns_to_s(cv_now_ns() - t0);
    double decode_s = t_first ? cv_ns_to_s(cv_now_ns() - t_first) : 0;
    fprintf(stderr,
            "prompt %d tokens, generated %d tokens in %.3f s (%.1f tok/s; TTFT %.1f ms, "
            "decode %.1f tok/s)\n",
            n_prompt, n_gen, s, n_gen / s, t_first ? cv_ns_to_s(t_first - t0) * 1e3 : 0.0,
            decode_s > 0 && n_gen > 1 ? (n_gen - 1) / decode_s : 0.0);
    cv_output_queue_destroy(q);
    return rc;
}

static int run_batch(cv_engine *e, const prompts *p, const cv_sampling_params *sp)
{
    cv_output_queue *q = cv_output_queue_create();
    char **texts = calloc((size_t)p->n + 1, sizeof(char *));
    if (!q || !texts) {
        cv_output_queue_destroy(q);
        free(texts);
        return -1;
    }
    uint64_t t0 = cv_now_ns();
    int submitted = 0, rc = 0;
    cv_error err;
    for (int i = 0; i < p->n; i++) {
        cv_request_desc d = {.prompt = p->lines[i],
                             .prompt_len = strlen(p->lines[i]),
                             .params = sp,
                             .stream = false,
                             .sink = q,
                             .user_data = (void *)(intptr_t)i};
        if (cv_engine_add_request(e, &d, &err) == 0) {
            fprintf(stderr, "cvllm-generate: line %d: %s\n", i + 1, err.msg);
            rc = -1;
            continue;
        }
        submitted++;
    }
    long n_gen = 0;
    for (int done = 0; done < submitted;) {
        cv_request_output *o = cv_output_queue_wait(q, -1);
        int i = (int)(intptr_t)o->user_data;
        if (o->error) {
            fprintf(stderr, "cvllm-generate: line %d: %s\n", i + 1, o->error);
            rc = -1;
        } else if (o->n_seqs > 0) {
            texts[i] = strdup(o->seqs[0].text);
            n_gen += o->seqs[0].n_output_tokens_total;
        }
        done += o->finished;
        cv_request_output_free(o);
    }
    double s = cv_ns_to_s(cv_now_ns() - t0);
    for (int i = 0; i < p->n; i++) {
        fputs(texts[i] ? texts[i] : "", stdout);
        fputs("\n\n", stdout);
        free(texts[i]);
    }
    fprintf(stderr, "%d prompts, generated %ld tokens in %.3f s (%.1f tok/s)\n", p->n, n_gen, s,
            n_gen / s);
    free(texts);
    cv_output_queue_destroy(q);
    return rc;
}

int main(int argc, char **argv)
{
    cv_engine_args args;
    cv_engine_args_default(&args);
    cv_sampling_params sp;
    cv_sampling_params_default(&sp);
    const char *prompt = NULL, *prompts_file = NULL, *model = NULL, *tokenizer = NULL;
    enum {
        O_MODEL = 256,
        O_TOK,
        O_PROMPT,
        O_FILE,
        O_MAXTOK,
        O_TEMP,
        O_TOPP,
        O_TOPK,
        O_MINP,
        O_SEED,
        O_EOS,
        O_MML,
        O_MNS,
        O_MNBT,
        O_BS,
        O_KV,
        O_NOPC,
        O_THREADS,
        O_DEVICE
    };
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL},
        {"tokenizer", required_argument, 0, O_TOK},
        {"prompt", required_argument, 0, O_PROMPT},
        {"prompts-file", required_argument, 0, O_FILE},
        {"max-tokens", required_argument, 0, O_MAXTOK},
        {"temperature", required_argument, 0, O_TEMP},
        {"top-p", required_argument, 0, O_TOPP},
        {"top-k", required_argument, 0, O_TOPK},
        {"min-p", required_argument, 0, O_MINP},
        {"seed", required_argument, 0, O_SEED},
        {"ignore-eos", no_argument, 0, O_EOS},
        {"max-model-len", required_argument, 0, O_MML},
        {"max-num-seqs", required_argument, 0, O_MNS},
        {"max-num-batched-tokens", required_argument, 0, O_MNBT},
        {"block-size", required_argument, 0, O_BS},
        {"kv-cache-bytes", required_argument, 0, O_KV},
        {"no-prefix-caching", no_argument, 0, O_NOPC},
        {"threads", required_argument, 0, O_THREADS},
        {"device", required_argument, 0, O_DEVICE},
        {"verbose", no_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    cv_log_set_level(CV_LOG_WARN);
    int c;
    long v;
    while ((c = getopt_long(argc, argv, "vh", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case O_MODEL:
            model = optarg;
            break;
        case O_TOK:
            tokenizer = optarg;
            break;
        case O_PROMPT:
            prompt = optarg;
            break;
        case O_FILE:
            prompts_file = optarg;
            break;
        case O_MAXTOK:
            bad = parse_long("--max-tokens", optarg, 1, 1 << 30, &v);
            sp.max_tokens = (int)v;
            break;
        case O_TEMP:
            bad = parse_float("--temperature", optarg, &sp.temperature);
            break;
        case O_TOPP:
            bad = parse_float("--top-p", optarg, &sp.top_p);
            break;
        case O_TOPK:
            bad = parse_long("--top-k", optarg, -1, 1 << 30, &v);
            sp.top_k = (int)v;
            break;
        case O_MINP:
            bad = parse_float("--min-p", optarg, &sp.min_p);
            break;
        case O_SEED:
            bad = parse_long("--seed", optarg, 0, 0x7fffffffL, &v);
            sp.seed = (uint64_t)v;
            sp.has_seed = true;
            break;
        case O_EOS:
            sp.ignore_eos = true;
            break;
        case O_MML:
            bad = parse_long("--max-model-len", optarg, 1, 1 << 30, &v);
            args.max_model_len = (int)v;
            break;
        case O_MNS:
            bad = parse_long("--max-num-seqs", optarg, 1, 1 << 20, &v);
            args.max_num_seqs = (int)v;
            break;
        case O_MNBT:
            bad = parse_long("--max-num-batched-tokens", optarg, 1, 1 << 30, &v);
            args.max_num_batched_tokens = (int)v;
            break;
        case O_BS:
            bad = parse_long("--block-size", optarg, 1, 1024, &v);
            args.block_size = (int)v;
            break;
        case O_KV:
            bad = parse_long("--kv-cache-bytes", optarg, 1, 0x7fffffffffffffffL, &v);
            args.kv_cache_bytes = (size_t)v;
            break;
        case O_NOPC:
            args.enable_prefix_caching = false;
            break;
        case O_THREADS:
            bad = parse_long("--threads", optarg, 0, 4096, &v);
            args.n_threads = (int)v;
            break;
        case O_DEVICE:
            if (!cv_engine_device_name_valid(optarg)) {
                fprintf(stderr, "--device: expected auto, cpu or cuda, got '%s'\n", optarg);
                bad = -1;
            } else {
                snprintf(args.device, sizeof args.device, "%s", optarg);
            }
            break;
        case 'v':
            cv_log_set_level(CV_LOG_INFO);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
        if (bad) return 2;
    }
    if (!model || (!prompt == !prompts_file) || optind < argc) {
        fprintf(stderr,
                "cvllm-generate: need --model and exactly one of --prompt, --prompts-file\n");
        usage(stderr);
        return 2;
    }
    if (strlen(model) >= sizeof(args.model) ||
        (tokenizer && strlen(tokenizer) >= sizeof(args.tokenizer))) {
        fprintf(stderr, "cvllm-generate: path too long\n");
        return 2;
    }
    snprintf(args.model, sizeof(args.model), "%s", model);
    if (tokenizer) snprintf(args.tokenizer, sizeof(args.tokenizer), "%s", tokenizer);
    cv_error err;
    if (cv_sampling_params_validate(&sp, &err) < 0) {
        fprintf(stderr, "cvllm-generate: %s\n", err.msg);
        return 2;
    }
    prompts p = {0};
    if (prompts_file && read_prompts(prompts_file, &p) < 0) return 1;
    uint64_t t0 = cv_now_ns();
    cv_engine *e = cv_engine_create(&args, &err);
    if (!e) {
        fprintf(stderr, "cvllm-generate: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "loaded %s in %.3f s\n", model, cv_ns_to_s(cv_now_ns() - t0));
    int rc = prompt ? run_one(e, prompt, &sp) : run_batch(e, &p, &sp);
    cv_engine_shutdown(e, false);
    for (int i = 0; i < p.n; i++)
        free(p.lines[i]);
    free(p.lines);
    return rc < 0 ? 1 : 0;
}

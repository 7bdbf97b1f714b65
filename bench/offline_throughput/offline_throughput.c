/* offline_throughput: continuous batching gain on the CPU, vLLM's
 * benchmark_throughput shape. In one process and one engine: a single
 * request of IN random prompt tokens and OUT output tokens (ignore_eos)
 * alone, then N such requests submitted at once. Prints a markdown table:
 * output tok/s of each phase, their ratio, and where the engine's time went
 * (inside the backend's forward vs. the rest of each step).
 *
 *   offline_throughput --model DIR [--n 64] [--in 128] [--out 128]
 *                      [--threads 2] [--max-num-seqs 256]
 *                      [--max-num-batched-tokens 2048] [--seed 0]
 *                      [--sweep 8,16,32]   (more batch sizes between 1 and N) */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "cvllm/engine.h"

typedef struct phase {
    double wall_s;       /* first submit to last final output */
    double ttft_s;       /* mean time to first token */
    double last_first_s; /* until the last request's first token: the prefill phase */
    long out_tokens;
    double forward_s; /* steps on the device (forward and the runner's sampling) */
    double step_s;    /* the engine thread's work on steps (overlaps forward_s with
                         async_scheduling) */
    uint64_t steps;
} phase;

static int run_phase(cv_engine *e, int n, int in_len, int out_len, int vocab, unsigned seed,
                     phase *ph)
{
    cv_output_queue *q = cv_output_queue_create();
    int32_t *ids = malloc((size_t)in_len * sizeof(int32_t));
    uint64_t *first = calloc((size_t)n, sizeof(uint64_t));
    if (!q || !ids || !first) return -1;
    cv_sampling_params p;
    cv_sampling_params_default(&p);
    p.temperature = 0;
    p.max_tokens = out_len;
    p.ignore_eos = true;
    srand(seed);
    cv_engine_stats s0, s1;
    cv_engine_get_stats(e, &s0);
    uint64_t t0 = cv_now_ns();
    for (int i = 0; i < n; i++) {
        ids[0] = 1;
        for (int k = 1; k < in_len; k++)
            ids[k] = 3 + rand() % (vocab - 3); /* random tokens, as vLLM's random dataset */
        cv_request_desc d = {.prompt_ids = ids,
                             .n_prompt_ids = (size_t)in_len,
                             .params = &p,
                             .stream = true,
                             .sink = q,
                             .user_data = (void *)(intptr_t)i};
        cv_error err;
        if (!cv_engine_add_request(e, &d, &err)) {
            fprintf(stderr, "offline_throughput: %s\n", err.msg);
            return -1;
        }
    }
    memset(ph, 0, sizeof(*ph));
    for (int done = 0; done < n;) {
        cv_request_output *o = cv_output_queue_wait(q, -1);
        uint64_t now = cv_now_ns();
        int i = (int)(intptr_t)o->user_data;
        if (o->error) {
            fprintf(stderr, "offline_throughput: %s\n", o->error);
            return -1;
        }
        if (!first[i] && o->n_seqs && o->seqs[0].n_tokens > 0) {
            first[i] = now;
            ph->ttft_s += cv_ns_to_s(now - t0);
            ph->last_first_s = cv_ns_to_s(now - t0);
        }
        if (o->finished) {
            done++;
            ph->out_tokens += o->seqs[0].n_output_tokens_total;
        }
        cv_request_output_free(o);
    }
    ph->wall_s = cv_ns_to_s(cv_now_ns() - t0);
    ph->ttft_s /= n;
    cv_engine_wait_idle(e);
    cv_engine_get_stats(e, &s1);
    ph->forward_s = s1.forward_s_total - s0.forward_s_total;
    ph->step_s = s1.step_s_total - s0.step_s_total;
    ph->steps = s1.steps_total - s0.steps_total;
    free(ids);
    free(first);
    cv_output_queue_destroy(q);
    return 0;
}

static void print_header(void)
{
    printf("| requests | in/out | wall s | output tok/s | vs 1 | mean TTFT s | last first "
           "token s | output tok/s after it | steps | device s | engine thread s |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
}

static void print_row(const phase *ph, int n, int in_len, int out_len, double single_tps)
{
    double tps = ph->out_tokens / ph->wall_s;
    printf("| %d | %d/%d | %.2f | %.1f | %.2fx | %.3f | %.3f | %.1f | %llu | %.2f | %.2f |\n", n,
           in_len, out_len, ph->wall_s, tps, tps / single_tps, ph->ttft_s, ph->last_first_s,
           (ph->out_tokens - n) / (ph->wall_s - ph->last_first_s), (unsigned long long)ph->steps,
           ph->forward_s, ph->step_s);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    cv_engine_args a;
    cv_engine_args_default(&a);
    snprintf(a.device, sizeof a.device, "cpu"); /* a CPU benchmark on any machine */
    a.n_threads = 2;
    int n = 64, in_len = 128, out_len = 128;
    unsigned seed = 0;
    const char *sweep = "";
    static const struct option opts[] = {
        {"sweep", required_argument, 0, 'w'},
        {"model", required_argument, 0, 'm'},
        {"n", required_argument, 0, 'n'},
        {"in", required_argument, 0, 'i'},
        {"out", required_argument, 0, 'o'},
        {"threads", required_argument, 0, 't'},
        {"max-num-seqs", required_argument, 0, 's'},
        {"max-num-batched-tokens", required_argument, 0, 'b'},
        {"seed", required_argument, 0, 'r'},
        {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            snprintf(a.model, sizeof(a.model), "%s", optarg);
            break;
        case 'n':
            n = atoi(optarg);
            break;
        case 'i':
            in_len = atoi(optarg);
            break;
        case 'o':
            out_len = atoi(optarg);
            break;
        case 't':
            a.n_threads = atoi(optarg);
            break;
        case 's':
            a.max_num_seqs = atoi(optarg);
            break;
        case 'b':
            a.max_num_batched_tokens = atoi(optarg);
            break;
        case 'r':
            seed = (unsigned)atoi(optarg);
            break;
        case 'w':
            sweep = optarg;
            break;
        default:
            fprintf(stderr, "usage: offline_throughput --model DIR [--n N] [--in T] [--out T] "
                            "[--threads N] [--max-num-seqs N] [--max-num-batched-tokens N] "
                            "[--seed S] [--sweep N1,N2,...]\n");
            return 2;
        }
    }
    if (!a.model[0] || n < 1 || in_len < 2 || out_len < 2) {
        fprintf(stderr, "offline_throughput: --model is required; --n >= 1, --in, --out >= 2\n");
        return 2;
    }
    /* Every sequence fits at once, so the batch phase never preempts. */
    a.max_model_len = in_len + out_len;
    cv_error err;
    cv_engine *e = cv_engine_create(&a, &err);
    if (!e) {
        fprintf(stderr, "offline_throughput: %s\n", err.msg);
        return 1;
    }
    int vocab = cv_engine_vocab_size(e);
    phase warm, one, many;
    if (run_phase(e, 1, in_len, 8, vocab, seed + 99, &warm) < 0 ||
        run_phase(e, 1, in_len, out_len, vocab, seed, &one) < 0) {
        cv_engine_shutdown(e, false);
        return 1;
    }
    double single_tps = one.out_tokens / one.wall_s;
    print_header();
    print_row(&one, 1, in_len, out_len, single_tps);
    for (const char *p = sweep; *p;) {
        int k = (int)strtol(p, (char **)&p, 10);
        if (*p == ',') p++;
        phase ph;
        if (k > 1 && k < n && run_phase(e, k, in_len, out_len, vocab, seed + 2, &ph) == 0)
            print_row(&ph, k, in_len, out_len, single_tps);
    }
    if (run_phase(e, n, in_len, out_len, vocab, seed + 1, &many) < 0) {
        cv_engine_shutdown(e, false);
        return 1;
    }
    print_row(&many, n, in_len, out_len, single_tps);
    cv_engine_stats st;
    cv_engine_get_stats(e, &st);
    cv_engine_shutdown(e, false);
    printf("\naggregate (%d requests) / single-stream output tok/s: **%.2fx** (threads %d, "
           "max_num_seqs %d, max_num_batched_tokens %d, preemptions %llu)\n",
           n, (many.out_tokens / many.wall_s) / single_tps, a.n_threads, a.max_num_seqs,
           a.max_num_batched_tokens ? a.max_num_batched_tokens : 2048,
           (unsigned long long)st.preemptions_total);
    return 0;
}

/* cvllm-client: the seed's samples/client.py in C. Sends every prompt of a
 * file (times --iterations) over one gRPC ModelStreamInfer stream, gathers
 * the text of the responses per request id, writes them to the results file
 * (each request's text followed by "\n\n=========\n\n") and prints
 * "PASS: vLLM example", or "FAIL: vLLM example" when a response was an
 * error. Flags, defaults and messages follow client.py. */
#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"

typedef struct options {
    const char *model, *url, *input_prompts, *results_file, *lora_name;
    bool verbose, streaming, exclude_inputs;
    double stream_timeout_s; /* 0: none */
    long offset, iterations;
} options;

typedef struct result_slot {
    char id[32];
    char *text; /* concatenated text_output elements, NUL-terminated */
    size_t len;
} result_slot;

typedef struct run_state {
    const options *opt;
    cvc_stream *stream;
    char **prompts;
    size_t n_prompts;
    result_slot *slots; /* n_prompts * iterations, in request order */
    size_t n_slots;
    char *sampling_json;
    cv_error send_err;
    int send_rc;
} run_state;

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: cvllm-client [-h] [-m MODEL] [-v] [-u URL] [-t STREAM_TIMEOUT] [--offset OFFSET]\n"
        "                    [--input-prompts INPUT_PROMPTS] [--results-file RESULTS_FILE]\n"
        "                    [--iterations ITERATIONS] [-s] [--exclude-inputs-in-outputs]\n"
        "                    [-l LORA_NAME]\n");
}

static int arg_error(const char *fmt, const char *a, const char *b)
{
    usage(stderr);
    fprintf(stderr, "cvllm-client: error: ");
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, "\n");
    return 2;
}

static bool parse_long(const char *s, long *v)
{
    char *end;
    *v = strtol(s, &end, 10);
    return *s && !*end;
}

static bool parse_double(const char *s, double *v)
{
    char *end;
    *v = strtod(s, &end);
    return *s && !*end;
}

static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.model = "vllm_model",
                   .url = "localhost:8001",
                   .input_prompts = "prompts.txt",
                   .results_file = "results.txt",
                   .iterations = 1};
    enum { OPT_OFFSET = 256, OPT_INPUT, OPT_RESULTS, OPT_ITER, OPT_EXCLUDE };
    static const struct option longs[] = {
        {"help", no_argument, NULL, 'h'},
        {"model", required_argument, NULL, 'm'},
        {"verbose", no_argument, NULL, 'v'},
        {"url", required_argument, NULL, 'u'},
        {"stream-timeout", required_argument, NULL, 't'},
        {"offset", required_argument, NULL, OPT_OFFSET},
        {"input-prompts", required_argument, NULL, OPT_INPUT},
        {"results-file", required_argument, NULL, OPT_RESULTS},
        {"iterations", required_argument, NULL, OPT_ITER},
        {"streaming-mode", no_argument, NULL, 's'},
        {"exclude-inputs-in-outputs", no_argument, NULL, OPT_EXCLUDE},
        {"lora-name", required_argument, NULL, 'l'},
        {NULL, 0, NULL, 0}};
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":hm:vu:t:sl:", longs, NULL)) != -1) {
        switch (c) {
        case 'h':
            usage(stdout);
            return 1;
        case 'm':
            o->model = optarg;
            break;
        case 'v':
            o->verbose = true;
            break;
        case 'u':
            o->url = optarg;
            break;
        case 't':
            if (!parse_double(optarg, &o->stream_timeout_s))
                return arg_error("argument -t/--stream-timeout: invalid float value: '%s'%s",
                                 optarg, "");
            break;
        case OPT_OFFSET:
            if (!parse_long(optarg, &o->offset))
                return arg_error("argument --offset: invalid int value: '%s'%s", optarg, "");
            break;
        case OPT_INPUT:
            o->input_prompts = optarg;
            break;
        case OPT_RESULTS:
            o->results_file = optarg;
            break;
        case OPT_ITER:
            if (!parse_long(optarg, &o->iterations))
                return arg_error("argument --iterations: invalid int value: '%s'%s", optarg, "");
            break;
        case 's':
            o->streaming = true;
            break;
        case OPT_EXCLUDE:
            o->exclude_inputs = true;
            break;
        case 'l':
            o->lora_name = optarg;
            break;
        case ':':
            return arg_error("argument %s: expected one argument%s", argv[optind - 1], "");
        default:
            return arg_error("unrecognized arguments: %s%s", argv[optind - 1], "");
        }
    }
    if (optind < argc) return arg_error("unrecognized arguments: %s%s", argv[optind], "");
    if (o->iterations < 0) o->iterations = 0;
    return 0;
}

/* Lines of the prompts file, each with its line end (as Python's
 * readlines keeps it). */
static int read_prompts(const char *path, run_state *st)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "cvllm-client: cannot open prompts file '%s'\n", path);
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        char **p = realloc(st->prompts, (st->n_prompts + 1) * sizeof *p);
        char *copy = p ? strndup(line, (size_t)n) : NULL;
        if (p) st->prompts = p;
        if (!copy) {
            fprintf(stderr, "cvllm-client: out of memory reading '%s'\n", path);
            rc = -1;
            break;
        }
        st->prompts[st->n_prompts++] = copy;
    }
    free(line);
    fclose(f);
    return rc;
}

/* The sampling parameters client.py sends, as json.dumps writes them. */
static char *sampling_json(const options *o)
{
    json_t *j = json_object();
    if (!j) return NULL;
    json_object_set_new(j, "temperature", json_string("0.1"));
    json_object_set_new(j, "top_p", json_string("0.95"));
    json_object_set_new(j, "max_tokens", json_string("100"));
    if (o->lora_name) json_object_set_new(j, "lora_name", json_string(o->lora_name));
    char *s = json_dumps(j, JSON_PRESERVE_ORDER);
    json_decref(j);
    return s;
}

static void *send_all(void *arg)
{
    run_state *st = arg;
    const options *o = st->opt;
    static const char *const outputs[] = {"text_output"};
    cvc_param params[4];
    size_t n_params = 0;
    params[n_params++] = (cvc_param){.key = "temperature", .kind = CVC_PARAM_STRING, .s = "0.1"};
    params[n_params++] = (cvc_param){.key = "top_p", .kind = CVC_PARAM_STRING, .s = "0.95"};
    params[n_params++] = (cvc_param){.key = "max_tokens", .kind = CVC_PARAM_STRING, .s = "100"};
    if (o->lora_name)
        params[n_params++] =
            (cvc_param){.key = "lora_name", .kind = CVC_PARAM_STRING, .s = o->lora_name};
    for (size_t k = 0; k < st->n_slots; k++) {
        cvc_request r;
        cvc_request_init(&r);
        r.model_name = o->model;
        r.id = st->slots[k].id;
        r.text_input = st->prompts[k % st->n_prompts];
        r.text_input_len = strlen(r.text_input);
        r.stream = o->streaming;
        r.sampling_parameters = st->sampling_json;
        /* client.py always sends the flag; sending "false" with stream=true
         * is refused by the backend, so the tensor goes only when set (an
         * absent tensor means the same for non-streamed requests). */
        if (o->exclude_inputs) r.exclude_input_in_output = 1;
        r.params = params;
        r.n_params = n_params;
        r.outputs = outputs;
        r.n_outputs = 1;
        if (o->verbose) printf("stream_infer(request id %s)\n", r.id);
        if (cvc_stream_send(st->stream, &r, &st->send_err)) {
            st->send_rc = -1;
            break;
        }
    }
    cv_error err;
    if (cvc_stream_close_send(st->stream, &err) && st->send_rc == 0) {
        st->send_err = err;
        st->send_rc = -1;
    }
    return NULL;
}

static result_slot *find_slot(run_state *st, const char *id)
{
    for (size_t k = 0; k < st->n_slots; k++)
        if (!strcmp(st->slots[k].id, id)) return &st->slots[k];
    return NULL;
}

static int append_text(result_slot *s, const char *t, size_t n)
{
    char *p = realloc(s->text, s->len + n + 1);
    if (!p) return -1;
    memcpy(p + s->len, t, n);
    s->len += n;
    p[s->len] = '\0';
    s->text = p;
    return 0;
}

/* Reads responses until the server ends the stream. Returns 0 and sets
 * *success, or -1 when the stream itself failed (message printed). */
static int receive_all(run_state *st, bool *success)
{
    *success = true;
    for (;;) {
        cvc_response r;
        cv_error err;
        cvc_recv_status rs = cvc_stream_recv(st->stream, -1, &r, &err);
        if (rs == CVC_RECV_END) return 0;
        if (rs == CVC_RECV_ERROR) {
            printf("%s\n", err.msg);
            return -1;
        }
        if (rs != CVC_RECV_RESPONSE) continue;
        if (st->opt->verbose) printf("response id %s%s\n", r.id, r.final ? " (final)" : "");
        if (r.error_message) {
            printf("Encountered error while processing: %s\n", r.error_message);
            *success = false;
        } else {
            result_slot *slot = find_slot(st, r.id);
            for (size_t i = 0; slot && i < r.n_text; i++)
                if (append_text(slot, r.text[i], r.text_len[i])) {
                    printf("cvllm-client: out of memory gathering results\n");
                    cvc_response_free(&r);
                    return -1;
                }
            if (!slot && r.n_text) {
                printf("Encountered error while processing: response for unknown id '%s'\n", r.id);
                *success = false;
            }
        }
        cvc_response_free(&r);
    }
}

static int write_results(const run_state *st)
{
    const char *path = st->opt->results_file;
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "cvllm-client: cannot write results file '%s'\n", path);
        return -1;
    }
    for (size_t k = 0; k < st->n_slots; k++) {
        if (st->slots[k].len) fwrite(st->slots[k].text, 1, st->slots[k].len, f);
        fputs("\n\n=========\n\n", f);
    }
    if (fclose(f)) {
        fprintf(stderr, "cvllm-client: error writing '%s'\n", path);
        return -1;
    }
    printf("Storing results into `%s`...\n", path);
    if (st->opt->verbose) {
        printf("\nContents of `%s` ===>\n", path);
        for (size_t k = 0; k < st->n_slots; k++)
            printf("%s\n\n=========\n\n", st->slots[k].text ? st->slots[k].text : "");
        printf("\n");
    }
    return 0;
}

static void free_state(run_state *st)
{
    for (size_t i = 0; i < st->n_prompts; i++)
        free(st->prompts[i]);
    free(st->prompts);
    for (size_t k = 0; k < st->n_slots; k++)
        free(st->slots[k].text);
    free(st->slots);
    free(st->sampling_json);
    cvc_stream_free(st->stream);
}

int main(int argc, char **argv)
{
    options o;
    int rc = parse_args(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;
    run_state st = {.opt = &o};
    printf("Loading inputs from `%s`...\n", o.input_prompts);
    fflush(stdout);
    if (read_prompts(o.input_prompts, &st)) return 1;
    st.n_slots = st.n_prompts * (size_t)o.iterations;
    st.slots = calloc(st.n_slots ? st.n_slots : 1, sizeof *st.slots);
    st.sampling_json = sampling_json(&o);
    if (!st.slots || !st.sampling_json) {
        fprintf(stderr, "cvllm-client: out of memory\n");
        free_state(&st);
        return 1;
    }
    for (size_t k = 0; k < st.n_slots; k++)
        snprintf(st.slots[k].id, sizeof st.slots[k].id, "%ld", o.offset + (long)k);
    cv_error err;
    st.stream = cvc_stream_open(o.url, o.stream_timeout_s, &err);
    if (!st.stream) {
        printf("%s\n", err.msg);
        free_state(&st);
        return 1;
    }
    pthread_t sender;
    if (pthread_create(&sender, NULL, send_all, &st)) {
        fprintf(stderr, "cvllm-client: cannot start the sender thread\n");
        free_state(&st);
        return 1;
    }
    bool success;
    int recv_rc = receive_all(&st, &success);
    if (recv_rc) cvc_stream_cancel(st.stream); /* unblocks a sender stuck in flow control */
    pthread_join(sender, NULL);
    if (recv_rc == 0 && st.send_rc) {
        printf("%s\n", st.send_err.msg);
        recv_rc = -1;
    }
    if (recv_rc || write_results(&st)) {
        free_state(&st);
        return 1;
    }
    printf(success ? "PASS: vLLM example\n" : "FAIL: vLLM example\n");
    free_state(&st);
    return 0;
}

/* cvllm-server over HTTP on real loopback sockets: health, metadata,
 * config, /generate text equal to cvllm-generate's, SSE deltas, every
 * documented error with its status and message, explicit load/unload,
 * client disconnect -> engine abort, exact vllm:* metrics, two servers side
 * by side, SIGTERM drain with exit status 0. */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "harness.h"

static test_server srv;

static const char *url(const char *path)
{
    return th_url(&srv, path);
}

static void expect(const char *method, const char *path, const char *body, long status,
                   const char *want_body)
{
    th_expect(method, url(path), body, status, want_body);
}

static int setup(void **state)
{
    (void)state;
    curl_global_init(CURL_GLOBAL_ALL);
    const char *repo = th_make_repo();
    th_add_model(repo, "coupled",
                 "backend: \"vllm\"\nmodel_transaction_policy { decoupled: false }\n",
                 th_model_json());
    th_add_model(repo, "nojson", "backend: \"vllm\"\n", NULL);
    const char *extra[] = {"--model-control-mode=explicit", "--load-model=kjv", NULL};
    if (!th_start(&srv, repo, extra)) return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    int rc = th_stop(&srv);
    curl_global_cleanup();
    return rc == 0 ? 0 : -1;
}

static void test_health_and_metadata(void **state)
{
    (void)state;
    expect("GET", "/v2/health/live", NULL, 200, "");
    expect("GET", "/v2/health/ready", NULL, 200, "");
    expect("GET", "/v2/models/kjv/ready", NULL, 200, "");
    expect("GET", "/v2/models/kjv/versions/1/ready", NULL, 200, "");
    expect("GET", "/v2/models/kjv/versions/2/ready", NULL, 400, "");
    expect("GET", "/v2/models/nope/ready", NULL, 400, "");
    expect("GET", "/v2", NULL, 200,
           "{\"name\":\"cvllm\",\"version\":\"0.1.0\",\"extensions\":[\"model_repository\","
           "\"model_configuration\",\"statistics\",\"parameters\",\"generate\",\"metrics\"]}");
    expect("GET", "/v2/models/kjv", NULL, 200,
           "{\"name\":\"kjv\",\"versions\":[\"1\"],\"platform\":\"vllm\",\"inputs\":["
           "{\"name\":\"text_input\",\"datatype\":\"BYTES\",\"shape\":[1]},"
           "{\"name\":\"stream\",\"datatype\":\"BOOL\",\"shape\":[1]},"
           "{\"name\":\"sampling_parameters\",\"datatype\":\"BYTES\",\"shape\":[1]},"
           "{\"name\":\"exclude_input_in_output\",\"datatype\":\"BOOL\",\"shape\":[1]},"
           "{\"name\":\"return_finish_reason\",\"datatype\":\"BOOL\",\"shape\":[1]},"
           "{\"name\":\"return_cumulative_logprob\",\"datatype\":\"BOOL\",\"shape\":[1]},"
           "{\"name\":\"return_logprobs\",\"datatype\":\"BOOL\",\"shape\":[1]},"
           "{\"name\":\"return_num_input_tokens\",\"datatype\":\"BOOL\",\"shape\":[1]},"
           "{\"name\":\"return_num_output_tokens\",\"datatype\":\"BOOL\",\"shape\":[1]}],"
           "\"outputs\":["
           "{\"name\":\"text_output\",\"datatype\":\"BYTES\",\"shape\":[-1]},"
           "{\"name\":\"finish_reason\",\"datatype\":\"BYTES\",\"shape\":[-1]},"
           "{\"name\":\"cumulative_logprob\",\"datatype\":\"FP32\",\"shape\":[-1]},"
           "{\"name\":\"logprobs\",\"datatype\":\"BYTES\",\"shape\":[-1]},"
           "{\"name\":\"num_input_tokens\",\"datatype\":\"UINT32\",\"shape\":[1]},"
           "{\"name\":\"num_output_tokens\",\"datatype\":\"UINT32\",\"shape\":[-1]}]}");
    char *resp = NULL;
    assert_int_equal(th_http("GET", url("/v2/models/kjv/config"), NULL, &resp), 200);
    json_t *cfg = json_loads(resp, 0, NULL);
    assert_non_null(cfg);
    assert_string_equal(json_string_value(json_object_get(cfg, "backend")), "vllm");
    assert_int_equal(json_integer_value(json_object_get(cfg, "max_batch_size")), 0);
    assert_true(json_is_true(
        json_object_get(json_object_get(cfg, "model_transaction_policy"), "decoupled")));
    assert_int_equal(json_array_size(json_object_get(cfg, "input")), 9);
    assert_string_equal(
        json_string_value(json_object_get(
            json_object_get(json_object_get(cfg, "parameters"), "REPORT_CUSTOM_METRICS"),
            "string_value")),
        "true");
    json_decref(cfg);
    free(resp);
}

/* Concatenation of field `key` over the SSE events of body. */
static char *sse_concat(const char *events, const char *key, int *n_events, char *last_finish)
{
    size_t cap = strlen(events) + 1, len = 0;
    char *out = calloc(1, cap);
    *n_events = 0;
    for (const char *p = events; (p = strstr(p, "data: "));) {
        p += 6;
        const char *end = strstr(p, "\n\n");
        assert_non_null(end);
        json_t *ev = json_loadb(p, (size_t)(end - p), 0, NULL);
        assert_non_null(ev);
        const char *s = json_string_value(json_object_get(ev, key));
        assert_non_null(s);
        memcpy(out + len, s, strlen(s));
        len += strlen(s);
        const char *fr = json_string_value(json_object_get(ev, "finish_reason"));
        if (fr && last_finish) snprintf(last_finish, 16, "%s", fr);
        json_decref(ev);
        (*n_events)++;
        p = end + 2;
    }
    return out;
}

static void test_generate_matches_cvllm_generate(void **state)
{
    (void)state;
    char *ref = th_greedy_text("Once upon a time", 32);
    char *resp = NULL;
    assert_int_equal(th_http("POST", url("/v2/models/kjv/generate"),
                             "{\"text_input\": \"Once upon a time\", \"parameters\": "
                             "{\"max_tokens\": 32, \"temperature\": 0}}",
                             &resp),
                     200);
    json_t *j = json_loads(resp, 0, NULL);
    assert_non_null(j);
    char want[2048];
    snprintf(want, sizeof want, "Once upon a time%s", ref);
    assert_string_equal(json_string_value(json_object_get(j, "text_output")), want);
    assert_string_equal(json_string_value(json_object_get(j, "model_name")), "kjv");
    assert_string_equal(json_string_value(json_object_get(j, "model_version")), "1");
    json_decref(j);
    free(resp);

    /* exclude_input_in_output drops the prompt. */
    assert_int_equal(th_http("POST", url("/v2/models/kjv/generate"),
                             "{\"text_input\": \"Once upon a time\", \"exclude_input_in_output\": "
                             "true, \"parameters\": {\"max_tokens\": 32, \"temperature\": 0}}",
                             &resp),
                     200);
    j = json_loads(resp, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "text_output")), ref);
    json_decref(j);
    free(resp);

    /* Streamed deltas concatenate to the same text, one event per token. */
    char *events = NULL;
    assert_int_equal(th_sse(url("/v2/models/kjv/generate_stream"),
                            "{\"text_input\": \"Once upon a time\", \"stream\": true, "
                            "\"parameters\": {\"max_tokens\": 32, \"temperature\": 0, "
                            "\"return_finish_reason\": true}}",
                            0, &events),
                     200);
    int n_events;
    char finish[16] = "";
    char *cat = sse_concat(events, "text_output", &n_events, finish);
    assert_string_equal(cat, ref);
    assert_true(n_events > 1);
    assert_string_equal(finish, "length");
    free(cat);
    free(events);
    free(ref);
}

static void test_output_tensors(void **state)
{
    (void)state;
    char *resp = NULL;
    assert_int_equal(th_http("POST", url("/v2/models/kjv/generate"),
                             "{\"text_input\": \"Once upon a time\", \"parameters\": {"
                             "\"max_tokens\": 8, \"temperature\": 0, \"ignore_eos\": true, "
                             "\"return_finish_reason\": true, \"return_num_input_tokens\": true, "
                             "\"return_num_output_tokens\": true, \"return_cumulative_logprob\": "
                             "true, \"return_logprobs\": true}}",
                             &resp),
                     200);
    json_t *j = json_loads(resp, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "finish_reason")), "length");
    assert_int_equal(json_integer_value(json_object_get(j, "num_output_tokens")), 8);
    assert_true(json_integer_value(json_object_get(j, "num_input_tokens")) > 1);
    assert_true(json_is_real(json_object_get(j, "cumulative_logprob")));
    assert_true(json_real_value(json_object_get(j, "cumulative_logprob")) <= 0);
    /* not asked for per-token logprobs: "null" */
    assert_string_equal(json_string_value(json_object_get(j, "logprobs")), "null");
    json_decref(j);
    free(resp);

    /* n=2 with sampling_parameters given as the input tensor: two texts. */
    assert_int_equal(th_http("POST", url("/v2/models/kjv/generate"),
                             "{\"text_input\": \"Once\", \"sampling_parameters\": "
                             "\"{\\\"n\\\": 2, \\\"max_tokens\\\": \\\"4\\\", \\\"seed\\\": 3, "
                             "\\\"temperature\\\": \\\"1.0\\\"}\"}",
                             &resp),
                     200);
    j = json_loads(resp, 0, NULL);
    assert_int_equal(json_array_size(json_object_get(j, "text_output")), 2);
    json_decref(j);
    free(resp);
}

static void test_documented_errors(void **state)
{
    (void)state;
    expect("POST", "/v2/models/nope/generate", "{\"text_input\": \"x\"}", 404,
           "{\"error\":\"Request for unknown model: 'nope' is not found\"}");
    /* Errors the backend raises for a request are its first and only
     * response: Triton answers with the status of its class (INTERNAL:
     * 500) and, on /generate_stream, as a server-sent event. */
    expect("POST", "/v2/models/kjv/generate_stream",
           "{\"text_input\": \"x\", \"stream\": true, \"exclude_input_in_output\": false}", 500,
           "data: {\"error\":\"Error generating stream: When streaming, "
           "`exclude_input_in_output` = False is not allowed.\"}\n\n");
    assert_string_equal(th_last_content_type(), "text/event-stream; charset=utf-8");
    expect("POST", "/v2/models/kjv/generate_stream",
           "{\"text_input\": \"x\", \"parameters\": {\"stream\": true, \"bogus_field\": 1}}", 500,
           "data: {\"error\":\"Error generating stream: unknown sampling parameter "
           "'bogus_field'\"}\n\n");
    assert_string_equal(th_last_content_type(), "text/event-stream; charset=utf-8");
    expect("POST", "/v2/models/kjv/generate_stream",
           "{\"text_input\": \"x\", \"parameters\": {\"lora_name\": \"sql\"}}", 500,
           "data: {\"error\":\"LoRA feature is not enabled.\"}\n\n");
    expect("POST", "/v2/models/kjv/generate",
           "{\"text_input\": \"x\", \"parameters\": {\"bogus_field\": 1}}", 500,
           "{\"error\":\"Error generating stream: unknown sampling parameter 'bogus_field'\"}");
    assert_string_equal(th_last_content_type(), "application/json");
    expect("POST", "/v2/models/kjv/generate",
           "{\"text_input\": \"x\", \"parameters\": {\"temperature\": \"hot\"}}", 500,
           "{\"error\":\"Error generating stream: sampling parameter 'temperature' must be a "
           "number, got \\\"hot\\\"\"}");
    /* Errors of Triton's own checks stay JSON with their status. */
    expect("POST", "/v2/models/kjv/generate_stream", "{\"stream\": true}", 400,
           "{\"error\":\"expected number of inputs between 1 and 9 but got 1 inputs for model "
           "'kjv'\"}");
    assert_string_equal(th_last_content_type(), "application/json");
    expect("POST", "/v2/models/kjv/generate", "{\"text_input\": ", 400,
           "{\"error\":\"failed to parse the request JSON buffer: unexpected token near end of "
           "file at 15\"}");
    expect("POST", "/v2/models/kjv/infer", "{\"inputs\": []}", 501,
           "{\"error\":\"HTTP end point doesn't support models with decoupled transaction "
           "policy\"}");
    expect("POST", "/v2/models/kjv/versions/1/infer", "{}", 501,
           "{\"error\":\"HTTP end point doesn't support models with decoupled transaction "
           "policy\"}");
    expect("POST", "/v2/models/kjv/generate",
           "{\"text_input\": \"Once\", \"stream\": true, \"parameters\": {\"max_tokens\": 4, "
           "\"ignore_eos\": true}}",
           400,
           "{\"error\":\"generate expects model to produce exactly 1 response, use generate "
           "stream for model that generates various number of responses\"}");
    expect("POST", "/v2/models/kjv/generate",
           "{\"text_input\": \"x\", \"parameters\": {\"lora_name\": \"sql\"}}", 500,
           "{\"error\":\"LoRA feature is not enabled.\"}");
    /* vLLM's message: -1 is not "unlimited" (null is). */
    expect("POST", "/v2/models/kjv/generate",
           "{\"text_input\": \"x\", \"parameters\": {\"max_tokens\": -1}}", 500,
           "{\"error\":\"Error generating stream: max_tokens must be at least 1, got -1.\"}");
    expect("POST", "/v2/models/kjv/generate", "{\"text_input\": 3}", 400,
           "{\"error\":\"unable to parse 'text_input': expected a string\"}");
    expect("POST", "/v2/models/kjv/generate", "{\"stream\": false}", 400,
           "{\"error\":\"expected number of inputs between 1 and 9 but got 1 inputs for model "
           "'kjv'\"}");
    expect("GET", "/v2/models/kjv/versions/7", NULL, 404,
           "{\"error\":\"Request for unknown model: 'kjv' version 7 is not found\"}");
}

static void test_repository_explicit_mode(void **state)
{
    (void)state;
    expect("POST", "/v2/repository/index", "", 200,
           "[{\"name\":\"coupled\"},{\"name\":\"kjv\",\"version\":\"1\",\"state\":"
           "\"READY\"},{\"name\":\"nojson\"}]");
    expect("POST", "/v2/repository/models/coupled/load", "", 400,
           "{\"error\":\"failed to load 'coupled', vLLM Triton backend must be configured to "
           "use decoupled model transaction policy\"}");
    char want[1024];
    snprintf(want, sizeof want,
             "{\"error\":\"failed to load 'nojson', 'model.json' containing vllm engine args "
             "must be provided in '%s/nojson/1'\"}",
             srv.repo);
    expect("POST", "/v2/repository/models/nojson/load", "", 400, want);
    expect("POST", "/v2/repository/models/ghost/load", "", 500,
           "{\"error\":\"failed to load 'ghost', failed to poll from model repository\"}");
    expect("POST", "/v2/repository/index", "{\"ready\": true}", 200,
           "[{\"name\":\"kjv\",\"version\":\"1\",\"state\":\"READY\"}]");
    /* A failed model makes a strict server not ready. */
    expect("GET", "/v2/health/ready", NULL, 400, "");
    expect("POST", "/v2/repository/models/kjv/unload", "", 200, "");
    expect("GET", "/v2/models/kjv/ready", NULL, 400, "");
    expect("POST", "/v2/models/kjv/generate", "{\"text_input\": \"x\"}", 503,
           "{\"error\":\"Request for unknown model: 'kjv' has no available versions\"}");
    expect("POST", "/v1/completions", "{\"model\": \"kjv\", \"prompt\": \"x\"}", 503,
           "{\"error\":{\"message\":\"Request for unknown model: 'kjv' has no "
           "available versions\",\"type\":\"ServiceUnavailableError\",\"param\":null,"
           "\"code\":503}}");
    expect("POST", "/v2/repository/models/kjv/load", "{}", 200, "");
    expect("GET", "/v2/models/kjv/ready", NULL, 200, "");
    /* Two models in one server, each with its own engine. */
    th_add_model(srv.repo, "kjv_b", "backend: \"vllm\"\n", th_model_json());
    expect("POST", "/v2/repository/models/kjv_b/load", "", 200, "");
    char *a = NULL, *b = NULL;
    const char *body = "{\"text_input\": \"Once upon a time\", \"exclude_input_in_output\": "
                       "true, \"parameters\": {\"max_tokens\": 6, \"temperature\": 0}}";
    assert_int_equal(th_http("POST", url("/v2/models/kjv/generate"), body, &a), 200);
    assert_int_equal(th_http("POST", url("/v2/models/kjv_b/generate"), body, &b), 200);
    assert_non_null(strstr(b, "\"model_name\":\"kjv_b\""));
    json_t *ja = json_loads(a, 0, NULL), *jb = json_loads(b, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(ja, "text_output")),
                        json_string_value(json_object_get(jb, "text_output")));
    json_decref(ja);
    json_decref(jb);
    free(a);
    free(b);
    expect("POST", "/v2/repository/models/kjv_b/unload", "", 200, "");
    expect("POST", "/v2/repository/models/coupled/unload", "", 200, "");
    expect("POST", "/v2/repository/models/nojson/unload", "", 200, "");
}

static void test_parallel_sizes(void **state)
{
    (void)state;
    char json[1200], want[1400];

    snprintf(json, sizeof json, "{\"model\": \"%s\", \"tensor_parallel_size\": 2}", th_model_dir());
    th_add_model(srv.repo, "tp_gpu",
                 "backend: \"vllm\"\ninstance_group [ { count: 1 kind: KIND_GPU } ]\n", json);
    th_add_model(srv.repo, "tp_model",
                 "backend: \"vllm\"\ninstance_group [ { count: 1 kind: KIND_MODEL } ]\n", json);
    expect("POST", "/v2/repository/models/tp_gpu/load", "", 400,
           "{\"error\":\"failed to load 'tp_gpu', KIND_GPU is currently for single-GPU models, "
           "please specify KIND_MODEL in the model's config.pbtxt for multi-GPU models\"}");
    snprintf(want, sizeof want,
             "{\"error\":\"failed to load 'tp_model', %s/tp_model/1/model.json: "
             "tensor_parallel_size 2, pipeline_parallel_size 1: cvllm's CPU engine runs a single "
             "rank\"}",
             srv.repo);
    expect("POST", "/v2/repository/models/tp_model/load", "", 400, want);
    expect("POST", "/v2/repository/models/tp_gpu/unload", "", 200, "");
    expect("POST", "/v2/repository/models/tp_model/unload", "", 200, "");
}

/* ENABLE_VLLM_HEALTH_CHECK on a healthy engine: the model is ready and
 * serves. (An engine only turns unhealthy when a step fails, which a CPU
 * backend given valid batches does not do, so the 503 path has no test.) */
static void test_health_check_on(void **state)
{
    (void)state;
    th_add_model(srv.repo, "checked",
                 "backend: \"vllm\"\n"
                 "parameters: { key: \"ENABLE_VLLM_HEALTH_CHECK\" value: { string_value: "
                 "\"true\" } }\n"
                 "instance_group [ { count: 1 kind: KIND_MODEL } ]\n",
                 th_model_json());
    expect("POST", "/v2/repository/models/checked/load", "", 200, "");
    expect("GET", "/v2/models/checked/ready", NULL, 200, "");
    expect("POST", "/v2/models/checked/generate",
           "{\"text_input\": \"Once upon a time\", \"parameters\": {\"max_tokens\": 4, "
           "\"temperature\": 0, \"return_num_output_tokens\": true}}",
           200, NULL);
    expect("POST", "/v2/repository/models/checked/unload", "", 200, "");
    expect("GET", "/v2/models/checked/ready", NULL, 400, "");
}

static void test_lora_names(void **state)
{
    (void)state;
    char json[1200], path[400];

    snprintf(json, sizeof json,
             "{\"model\": \"%s\", \"enable_lora\": true, "
             "\"max_lora_rank\": 8}",
             th_model_dir());
    th_add_model(srv.repo, "lora", "backend: \"vllm\"\n", json);
    snprintf(path, sizeof path, "%s/lora/1/multi_lora.json", srv.repo);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"sql\": \"/adapters/sql\", \"chat\": \"/adapters/chat\"}", f);
    fclose(f);
    expect("POST", "/v2/repository/models/lora/load", "", 200, "");
    expect("POST", "/v2/models/lora/generate",
           "{\"text_input\": \"x\", \"parameters\": {\"lora_name\": \"doc\"}}", 500,
           "{\"error\":\"LoRA doc is not supported, we currently support ['sql', 'chat']\"}");
    expect("POST", "/v2/models/lora/generate",
           "{\"text_input\": \"x\", \"sampling_parameters\": \"{\\\"lora_name\\\": "
           "\\\"sql\\\"}\"}",
           500,
           "{\"error\":\"Error generating stream: LoRA sql: /adapters/sql/adapter_config.json: "
           "unable to open /adapters/sql/adapter_config.json: No such file or directory\"}");
    expect("POST", "/v2/repository/models/lora/unload", "", 200, "");
}

static void test_disconnect_aborts_request(void **state)
{
    (void)state;
    char *events = NULL;
    th_sse(url("/v2/models/kjv/generate_stream"),
           "{\"text_input\": \"Once upon a time\", \"stream\": true, \"parameters\": "
           "{\"max_tokens\": 400, \"ignore_eos\": true}}",
           1, &events);
    assert_non_null(strstr(events, "data: "));
    free(events);
    /* The abort's final output reaches the server within a few steps. */
    bool cancelled = false;
    for (int i = 0; i < 200 && !cancelled; i++) {
        char *log = th_log(&srv);
        cancelled = strstr(log, "[vllm] Successfully cancelled the request") != NULL;
        free(log);
        usleep(20000);
    }
    assert_true(cancelled);
    char *log = th_log(&srv);
    assert_non_null(strstr(log, "[vllm] Cancelling the request"));
    free(log);
    /* Its KV blocks are free again and nothing runs. */
    char u[128], *text = NULL;
    snprintf(u, sizeof u, "http://127.0.0.1:%d/metrics", srv.metrics_port);
    bool idle = false;
    for (int i = 0; i < 250 && !idle; i++) {
        free(text);
        assert_int_equal(th_http("GET", u, NULL, &text), 200);
        idle = th_metric(text, "vllm:num_requests_running{model=\"kjv\",version=\"1\"}") == 0 &&
               th_metric(text, "vllm:gpu_cache_usage_perc{model=\"kjv\",version=\"1\"}") == 0;
        if (!idle) usleep(20000);
    }
    free(text);
    assert_true(idle);
}

static double metric(const char *name)
{
    char u[128], *text = NULL;
    snprintf(u, sizeof u, "http://127.0.0.1:%d/metrics", srv.metrics_port);
    assert_int_equal(th_http("GET", u, NULL, &text), 200);
    double v = th_metric(text, name);
    free(text);
    return v;
}

/* The "le" values of histogram `name` in the metrics text, space-separated. */
static void bucket_bounds(const char *text, const char *name, char *out, size_t cap)
{
    char prefix[160];
    snprintf(prefix, sizeof prefix, "%s_bucket{model=\"kjv\",version=\"1\",le=\"", name);
    out[0] = '\0';
    size_t len = 0;
    for (const char *p = text; (p = strstr(p, prefix)); p++) {
        const char *v = p + strlen(prefix), *q = strchr(v, '"');
        len += (size_t)snprintf(out + len, cap - len, "%s%.*s", len ? " " : "", (int)(q - v), v);
    }
}

/* Bucket boundaries as PROTOCOL.md lists them (request token counts go
 * 1 2 5 10 ... up to max_model_len, 512 for the shipped model). */
static void test_metrics_buckets(void **state)
{
    (void)state;
    char u[128], *text = NULL, got[512];
    snprintf(u, sizeof u, "http://127.0.0.1:%d/metrics", srv.metrics_port);
    assert_int_equal(th_http("GET", u, NULL, &text), 200);
    static const struct {
        const char *name, *bounds;
    } want[] = {
        {"vllm:time_to_first_token_seconds",
         "0.001 0.005 0.01 0.02 0.04 0.06 0.08 0.1 0.25 0.5 0.75 1 2.5 5 7.5 10 +Inf"},
        {"vllm:time_per_output_token_seconds",
         "0.01 0.025 0.05 0.075 0.1 0.15 0.2 0.3 0.4 0.5 0.75 1 2.5 +Inf"},
        {"vllm:e2e_request_latency_seconds", "1 2.5 5 10 15 20 30 40 50 60 +Inf"},
        {"vllm:request_prompt_tokens", "1 2 5 10 20 50 100 200 500 +Inf"},
        {"vllm:request_generation_tokens", "1 2 5 10 20 50 100 200 500 +Inf"},
        {"vllm:request_params_n", "1 2 5 10 20 +Inf"},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        bucket_bounds(text, want[i].name, got, sizeof got);
        assert_string_equal(got, want[i].bounds);
    }
    assert_non_null(strstr(text, "# TYPE vllm:time_to_first_token_seconds histogram\n"));
    assert_non_null(strstr(text, "# TYPE vllm:prompt_tokens_total counter\n"));
    assert_non_null(strstr(text, "# TYPE nv_inference_request_success counter\n"));
    free(text);
}

static void test_metrics_exact(void **state)
{
    (void)state;
    /* Reload for fresh engine counters. */
    expect("POST", "/v2/repository/models/kjv/load", "", 200, "");
    const char *L = "{model=\"kjv\",version=\"1\"}";
    char n_prompt[128], n_gen[128], n_ttft[128], n_ok[128];
    snprintf(n_prompt, sizeof n_prompt, "vllm:prompt_tokens_total%s", L);
    snprintf(n_gen, sizeof n_gen, "vllm:generation_tokens_total%s", L);
    snprintf(n_ttft, sizeof n_ttft, "vllm:time_to_first_token_seconds_count%s", L);
    snprintf(n_ok, sizeof n_ok, "nv_inference_request_success%s", L);
    assert_true(metric(n_prompt) == 0);
    static const char *prompts[] = {"Once upon a time", "the little dog", "Lily",
                                    "Once upon a time there was"};
    static const int max_tokens[] = {5, 9, 3, 12};
    long sum_in = 0, sum_out = 0;
    for (int i = 0; i < 4; i++) {
        char body[512], *resp = NULL;
        snprintf(body, sizeof body,
                 "{\"text_input\": \"%s\", \"parameters\": {\"max_tokens\": %d, \"ignore_eos\": "
                 "true, \"return_num_input_tokens\": true}}",
                 prompts[i], max_tokens[i]);
        assert_int_equal(th_http("POST", url("/v2/models/kjv/generate"), body, &resp), 200);
        json_t *j = json_loads(resp, 0, NULL);
        sum_in += (long)json_integer_value(json_object_get(j, "num_input_tokens"));
        sum_out += max_tokens[i];
        json_decref(j);
        free(resp);
    }
    assert_true(sum_in > 4);
    /* The engine records a request's metrics before its final output goes
     * out, so a scrape right after the responses counts them all. */
    char n_e2e[128];
    snprintf(n_e2e, sizeof n_e2e, "vllm:e2e_request_latency_seconds_count%s", L);
    assert_int_equal((long)metric(n_e2e), 4);
    assert_int_equal((long)metric(n_prompt), sum_in);
    assert_int_equal((long)metric(n_gen), sum_out);
    assert_int_equal((long)metric(n_ttft), 4);
    assert_int_equal((long)metric(n_ok), 4);
    /* Triton's compute input / output counters: present, and 0 (no phase
     * apart from the engine's). */
    char n_cin[128], n_cout[128];
    snprintf(n_cin, sizeof n_cin, "nv_inference_compute_input_duration_us%s", L);
    snprintf(n_cout, sizeof n_cout, "nv_inference_compute_output_duration_us%s", L);
    assert_true(metric(n_cin) == 0);
    assert_true(metric(n_cout) == 0);
    char buckets[160];
    snprintf(buckets, sizeof buckets,
             "vllm:time_to_first_token_seconds_bucket{model=\"kjv\",version=\"1\",le=\"+Inf\"}");
    assert_int_equal((long)metric(buckets), 4);
    snprintf(buckets, sizeof buckets,
             "vllm:e2e_request_latency_seconds_bucket{model=\"kjv\",version=\"1\",le=\"60\"}");
    assert_int_equal((long)metric(buckets), 4);

    /* The statistics extension counts the same four requests. */
    char *resp = NULL;
    assert_int_equal(th_http("GET", url("/v2/models/kjv/stats"), NULL, &resp), 200);
    json_t *j = json_loads(resp, 0, NULL);
    json_t *st = json_array_get(json_object_get(j, "model_stats"), 0);
    assert_string_equal(json_string_value(json_object_get(st, "name")), "kjv");
    assert_string_equal(json_string_value(json_object_get(st, "version")), "1");
    assert_int_equal(json_integer_value(json_object_get(st, "inference_count")), 4);
    assert_int_equal(json_integer_value(json_object_get(st, "execution_count")), 4);
    json_t *is = json_object_get(st, "inference_stats");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(is, "success"), "count")),
                     4);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(is, "fail"), "count")), 0);
    assert_true(json_integer_value(json_object_get(json_object_get(is, "success"), "ns")) > 0);
    assert_true(json_integer_value(json_object_get(st, "last_inference")) > 1700000000000);
    json_decref(j);
    free(resp);
    expect("GET", "/v2/models/nope/stats", NULL, 404,
           "{\"error\":\"Request for unknown model: 'nope' is not found\"}");
}

static void test_two_servers_side_by_side(void **state)
{
    (void)state;
    const char *repo2 = th_make_repo();
    test_server s2;
    const char *extra[] = {"--backend-config=python,shm-region-prefix-name=prefix2",
                           "--allow-metrics=false", NULL};
    assert_true(th_start(&s2, repo2, extra));
    /* A third server on ports already taken fails to start. */
    test_server s3;
    char a_grpc[40], want[120];
    snprintf(a_grpc, sizeof a_grpc, "--grpc-port=%d", s2.grpc_port);
    const char *clash[] = {a_grpc, "--allow-http=false", NULL};
    assert_false(th_start(&s3, repo2, clash));
    char *log3 = th_log(&s3);
    snprintf(want, sizeof want,
             "error: creating server: failed to start GRPC service: cannot bind 0.0.0.0:%d\n",
             s2.grpc_port);
    assert_non_null(strstr(log3, want));
    free(log3);
    /* --allow-metrics=false: nothing listens on the metrics port. */
    char mu[128], *mresp = NULL;
    snprintf(mu, sizeof mu, "http://127.0.0.1:%d/metrics", s2.metrics_port);
    assert_int_equal(th_http("GET", mu, NULL, &mresp), 0);
    free(mresp);
    char u[128], *resp = NULL;
    snprintf(u, sizeof u, "http://127.0.0.1:%d/v2/models/kjv/generate", s2.http_port);
    const char *body = "{\"text_input\": \"Once upon a time\", \"parameters\": {\"max_tokens\": "
                       "6, \"temperature\": 0}}";
    assert_int_equal(th_http("POST", u, body, &resp), 200);
    char *resp1 = NULL;
    assert_int_equal(th_http("POST", url("/v2/models/kjv/generate"), body, &resp1), 200);
    assert_string_equal(resp, resp1);
    free(resp);
    free(resp1);
    assert_int_equal(th_stop(&s2), 0);
}

typedef struct sse_job {
    const char *url;
    char *events;
    long status;
} sse_job;

static void *sse_thread(void *arg)
{
    sse_job *j = arg;
    j->status = th_sse(j->url,
                       "{\"text_input\": \"Once upon a time\", \"stream\": true, \"parameters\": "
                       "{\"max_tokens\": 48, \"ignore_eos\": true, \"return_finish_reason\": "
                       "true}}",
                       0, &j->events);
    return NULL;
}

static void test_sigterm_drains_and_exits_zero(void **state)
{
    (void)state;
    const char *repo3 = th_make_repo();
    test_server s3;
    assert_true(th_start(&s3, repo3, NULL));
    char u[128];
    snprintf(u, sizeof u, "http://127.0.0.1:%d/v2/models/kjv/generate_stream", s3.http_port);
    sse_job job = {.url = u};
    pthread_t t;
    pthread_create(&t, NULL, sse_thread, &job);
    /* Wait until the request is in the engine, then ask the server to stop. */
    for (int i = 0; i < 500; i++) {
        char *log = th_log(&s3);
        bool started = strstr(log, "Started GRPCInferenceService") != NULL;
        free(log);
        if (started) break;
        usleep(10000);
    }
    usleep(200000);
    kill(s3.pid, SIGTERM);
    pthread_join(t, NULL);
    int status;
    waitpid(s3.pid, &status, 0);
    s3.pid = 0;
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(job.status, 200);
    int n;
    char finish[16] = "";
    char *cat = sse_concat(job.events, "text_output", &n, finish);
    assert_string_equal(finish, "length");
    assert_int_equal(n, 48);
    free(cat);
    free(job.events);
}

/* stderr and exit status of cvllm-server with args (no server comes up). */
static void expect_cli(const char *args, const char *want)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "sh -c '%s/cvllm-server %s >/dev/null 2>/tmp/cvllm_cli_err.$$; rc=$?; "
             "head -1 /tmp/cvllm_cli_err.$$; rm -f /tmp/cvllm_cli_err.$$; echo rc=$rc'",
             getenv("CVLLM_BIN_DIR"), args);
    char *out = th_run(cmd);
    assert_string_equal(out, want);
    free(out);
}

static void test_command_line_errors(void **state)
{
    (void)state;
    expect_cli("--http-port=8000", "cvllm-server: --model-repository must be specified\nrc=2\n");
    expect_cli("--model-repository=/tmp --no-such-flag=1",
               "cvllm-server: unknown option '--no-such-flag'\nrc=2\n");
    expect_cli(
        "--model-repository=/tmp --log-format=json",
        "cvllm-server: invalid argument for --log-format: 'json' (default, ISO8601)\nrc=2\n");
    expect_cli("--model-repository=/tmp --cuda-memory-pool-byte-size=1024",
               "cvllm-server: --cuda-memory-pool-byte-size: invalid value '1024'\nrc=2\n");
    expect_cli("--model-repository=/tmp --model-load-thread-count=four",
               "cvllm-server: --model-load-thread-count: invalid value 'four'\nrc=2\n");
    expect_cli("--model-repository=/tmp --log-info=maybe",
               "cvllm-server: --log-info: invalid boolean 'maybe'\nrc=2\n");
    expect_cli("--model-repository=/tmp --log-file=/nonexistent-dir/log",
               "cvllm-server: --log-file: cannot open '/nonexistent-dir/log': No such file or "
               "directory\nrc=2\n");
    expect_cli("--model-repository=/tmp --load-model=x",
               "cvllm-server: --load-model is allowed only with --model-control-mode=explicit\n"
               "rc=2\n");
    expect_cli("--model-repository=/tmp --http-port=70000",
               "cvllm-server: --http-port: invalid value '70000' (expected 0..65535)\nrc=2\n");
    expect_cli("--model-repository=/tmp --model-control-mode=auto",
               "cvllm-server: --model-control-mode: unknown mode 'auto' (none, explicit, poll)\n"
               "rc=2\n");
    expect_cli("--model-repository=/tmp --backend-config=python",
               "cvllm-server: --backend-config: expected BACKEND,KEY=VALUE, got 'python'\nrc=2\n");
    expect_cli("--model-repository=/nonexistent-repo",
               "error: creating server: --model-repository '/nonexistent-repo' is not a "
               "directory\nrc=1\n");
}

/* Polls url until it answers `status`, up to ~10 s. */
static bool wait_status(const char *u, long status)
{
    for (int i = 0; i < 200; i++) {
        char *resp = NULL;
        long st = th_http("GET", u, NULL, &resp);
        free(resp);
        if (st == status) return true;
        usleep(50000);
    }
    return false;
}

static void test_poll_mode(void **state)
{
    (void)state;
    const char *repo = th_make_repo();
    test_server s;
    const char *poll[] = {"--model-control-mode=poll", "--repository-poll-secs=1", NULL};
    assert_true(th_start(&s, repo, poll));
    /* Load / unload outside explicit mode: Triton's UNAVAILABLE, so 503
     * here and UNAVAILABLE over gRPC (grpc_client_test.py). */
    const char refused[] =
        "{\"error\":\"explicit model load / unload is not allowed if polling is enabled\"}";
    th_expect("POST", th_url(&s, "/v2/repository/models/kjv/load"), "", 503, refused);
    th_expect("POST", th_url(&s, "/v2/repository/models/kjv/unload"), "", 503, refused);
    char u[160], p[400];
    snprintf(u, sizeof u, "http://127.0.0.1:%d/v2/models/late/ready", s.http_port);
    assert_true(wait_status(u, 400));
    /* A model directory that appears is loaded. */
    th_add_model(repo, "late", "backend: \"vllm\"\n", th_model_json());
    assert_true(wait_status(u, 200));
    /* A changed config.pbtxt reloads the model with it. */
    snprintf(p, sizeof p, "%s/late/config.pbtxt", repo);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs("backend: \"vllm\"\nparameters: { key: \"X\" value: { string_value: \"1\" } }\n", f);
    fclose(f);
    snprintf(u, sizeof u, "http://127.0.0.1:%d/v2/models/late/config", s.http_port);
    bool reloaded = false;
    for (int i = 0; i < 200 && !reloaded; i++) {
        char *resp = NULL;
        th_http("GET", u, NULL, &resp);
        reloaded = strstr(resp, "\"X\":{\"string_value\":\"1\"}") != NULL;
        free(resp);
        if (!reloaded) usleep(50000);
    }
    assert_true(reloaded);
    /* A model directory that goes away is unloaded. */
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s/kjv'", repo);
    assert_int_equal(system(cmd), 0);
    snprintf(u, sizeof u, "http://127.0.0.1:%d/v2/models/kjv/ready", s.http_port);
    assert_true(wait_status(u, 400));
    assert_int_equal(th_stop(&s), 0);
}

static void test_exit_on_error_and_readiness(void **state)
{
    (void)state;
    const char *repo = th_make_repo();
    th_add_model(repo, "coupled",
                 "backend: \"vllm\"\nmodel_transaction_policy { decoupled: false }\n",
                 th_model_json());
    /* tritonserver's default --exit-on-error=true: a failed model at start
     * is fatal, exit status 1. */
    test_server s;
    assert_false(th_start(&s, repo, NULL));
    char *log = th_log(&s);
    assert_non_null(strstr(log, "E cvllm: failed to load 'coupled': vLLM Triton backend must be "
                                "configured to use decoupled model transaction policy\n"));
    assert_non_null(strstr(log, "error: creating server: failed to load all models (1 failed; "
                                "see the log above)\n"));
    free(log);
    const char *keep_going[] = {"--exit-on-error=false", NULL};
    assert_true(th_start(&s, repo, keep_going));
    char u[128], *resp = NULL;
    snprintf(u, sizeof u, "http://127.0.0.1:%d/v2/health/ready", s.http_port);
    assert_int_equal(th_http("GET", u, NULL, &resp), 400); /* strict: a model failed */
    free(resp);
    snprintf(u, sizeof u, "http://127.0.0.1:%d/v2/models/kjv/ready", s.http_port);
    assert_int_equal(th_http("GET", u, NULL, &resp), 200);
    free(resp);
    assert_int_equal(th_stop(&s), 0);
    const char *lax[] = {"--exit-on-error=false", "--strict-readiness=false", NULL};
    assert_true(th_start(&s, repo, lax));
    snprintf(u, sizeof u, "http://127.0.0.1:%d/v2/health/ready", s.http_port);
    assert_int_equal(th_http("GET", u, NULL, &resp), 200);
    free(resp);
    assert_int_equal(th_stop(&s), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_health_and_metadata),
        cmocka_unit_test(test_generate_matches_cvllm_generate),
        cmocka_unit_test(test_output_tensors),
        cmocka_unit_test(test_documented_errors),
        cmocka_unit_test(test_repository_explicit_mode),
        cmocka_unit_test(test_lora_names),
        cmocka_unit_test(test_health_check_on),
        cmocka_unit_test(test_parallel_sizes),
        cmocka_unit_test(test_disconnect_aborts_request),
        cmocka_unit_test(test_metrics_exact),
        cmocka_unit_test(test_metrics_buckets),
        cmocka_unit_test(test_two_servers_side_by_side),
        cmocka_unit_test(test_sigterm_drains_and_exits_zero),
        cmocka_unit_test(test_exit_on_error_and_readiness),
        cmocka_unit_test(test_command_line_errors),
        cmocka_unit_test(test_poll_mode),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

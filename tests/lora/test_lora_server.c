/* A LoRA adapter served end to end by a real cvllm-server on loopback (the
 * shipped cvllm-kjv-4m model, device cpu): "vllm_model" serves adapter
 * "kjv_lora" (multi_lora.json), "merged" serves the merged weights
 * W + scale B A (made by lora_fixture.c). The seed's client (cvllm-client
 * -l over gRPC) and HTTP /generate with lora_name give the merged model's
 * answer, not the base model's; OpenAI /v1/models lists the adapter with
 * its parent and model "kjv_lora" selects it; /metrics has
 * vllm:lora_requests_info. Needs nothing from ../shared. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>
#include <jansson.h>

#include "../client/server_fixture.h"
#include "client.h"
#include "lora/lora.h"
#include "lora_fixture.h"

static test_server srv;
static char kjv[4200];

static const lora_spec spec = {.rank = 8,
                               .alpha = 1,
                               .targets = 1u << CV_LORA_Q | 1u << CV_LORA_V | 1u << CV_LORA_O |
                                          1u << CV_LORA_DOWN,
                               .seed = 7};

static void add_model(const char *name, const char *model_json, const char *multi_lora)
{
    char path[600];
    snprintf(path, sizeof path, "%s/repo/%s", srv.dir, name);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(path, sizeof path, "%s/repo/%s/1", srv.dir, name);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(path, sizeof path, "%s/repo/%s/config.pbtxt", srv.dir, name);
    lf_write_text(path, "backend: \"vllm\"\n"
                        "instance_group [{ count: 1, kind: KIND_MODEL }]\n"
                        "parameters: { key: \"REPORT_CUSTOM_METRICS\" value: { string_value: "
                        "\"true\" } }\n");
    snprintf(path, sizeof path, "%s/repo/%s/1/model.json", srv.dir, name);
    lf_write_text(path, model_json);
    if (multi_lora) {
        snprintf(path, sizeof path, "%s/repo/%s/1/multi_lora.json", srv.dir, name);
        lf_write_text(path, multi_lora);
    }
}

static int setup(void **state)
{
    (void)state;
    cv_error err;
    if (cvc_http_global_init(&err)) return -1;
    const char *src = getenv("CVLLM_SOURCE_DIR");
    snprintf(kjv, sizeof kjv, "%s/samples/models/cvllm-kjv-4m", src && *src ? src : ".");
    snprintf(srv.dir, sizeof srv.dir, "/tmp/cvllm-lora-server-XXXXXX");
    if (!mkdtemp(srv.dir)) return -1;
    char path[600], json[9000], merged[600], adapter[600];
    snprintf(path, sizeof path, "%s/repo", srv.dir);
    mkdir(path, 0755);
    snprintf(adapter, sizeof adapter, "%s/kjv_lora", srv.dir);
    snprintf(merged, sizeof merged, "%s/merged", srv.dir);
    lf_write_adapter(kjv, adapter, &spec, NULL);
    lf_write_merged(kjv, &spec, merged);
    snprintf(json, sizeof json,
             "{\"model\": \"%s\", \"seed\": 0, \"device\": \"cpu\", \"enable_lora\": true, "
             "\"max_lora_rank\": 8, \"max_loras\": 1}\n",
             kjv);
    char multi[700];
    snprintf(multi, sizeof multi, "{\"kjv_lora\": \"%s\"}\n", adapter);
    add_model("vllm_model", json, multi);
    snprintf(json, sizeof json,
             "{\"model\": \"%s\", \"tokenizer\": \"%s\", \"seed\": 0, \"device\": \"cpu\"}\n",
             merged, kjv);
    add_model("merged", json, NULL);
    test_server_spawn(&srv);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    test_server_stop(&srv);
    cvc_http_global_cleanup();
    return 0;
}

/* POST body to path on the HTTP port; returns the body, asserts the status. */
static char *post(const char *path, const char *body, long want_status)
{
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", srv.http_port, path);
    cvc_http_result res;
    cv_error err = {.msg = ""};
    if (cvc_http_post_sse(url, body, 60000, NULL, NULL, &res, &err)) fail_msg("%s", err.msg);
    if (res.status != want_status)
        fail_msg("POST %s: status %ld: %s", path, res.status, res.body ? res.body : "");
    char *out = res.body ? res.body : strdup("");
    res.body = NULL;
    cvc_http_result_free(&res);
    return out;
}

/* text_output of a greedy /generate on model (with lora_name when given). */
static char *generate(const char *model, const char *lora)
{
    char path[128], body[512];
    snprintf(path, sizeof path, "/v2/models/%s/generate", model);
    snprintf(body, sizeof body,
             "{\"text_input\": \"In the beginning\", \"parameters\": {\"max_tokens\": 24, "
             "\"temperature\": 0%s%s%s}}",
             lora ? ", \"lora_name\": \"" : "", lora ? lora : "", lora ? "\"" : "");
    char *out = post(path, body, 200);
    json_t *j = json_loads(out, 0, NULL);
    assert_non_null(j);
    char *text = strdup(json_string_value(json_object_get(j, "text_output")));
    json_decref(j);
    free(out);
    return text;
}

static void test_generate(void **state)
{
    (void)state;
    char *base = generate("vllm_model", NULL), *merged = generate("merged", NULL);
    char *lora = generate("vllm_model", "kjv_lora");
    assert_string_equal(lora, merged);
    assert_string_not_equal(lora, base);
    free(base);
    free(merged);
    free(lora);
    char *err = post("/v2/models/merged/generate",
                     "{\"text_input\": \"x\", \"parameters\": {\"lora_name\": \"kjv_lora\"}}", 500);
    assert_string_equal(err, "{\"error\":\"LoRA feature is not enabled.\"}");
    free(err);
    err = post("/v2/models/vllm_model/generate",
               "{\"text_input\": \"x\", \"parameters\": {\"lora_name\": \"sql\"}}", 500);
    assert_string_equal(
        err, "{\"error\":\"LoRA sql is not supported, we currently support ['kjv_lora']\"}");
    free(err);
}

/* cvllm-client (the seed's client.py) over gRPC on one prompt; returns its
 * results file. */
static char *run_client(const char *model, const char *lora)
{
    char exe[512], url[64], prompts[700], results[700], out[700];
    const char *bin = getenv("CVLLM_BIN_DIR");
    snprintf(exe, sizeof exe, "%s/cvllm-client", bin ? bin : "build/bin");
    snprintf(url, sizeof url, "127.0.0.1:%d", srv.grpc_port);
    snprintf(prompts, sizeof prompts, "%s/prompts.txt", srv.dir);
    lf_write_text(prompts, "The capital of France is\n");
    snprintf(results, sizeof results, "%s/results_%s%s.txt", srv.dir, model, lora ? "_lora" : "");
    snprintf(out, sizeof out, "%s/client.out", srv.dir);
    char *argv[16] = {
        exe, "-u", url, "-m", (char *)model, "--input-prompts", prompts, "--results-file", results};
    int argc = 9;
    if (lora) {
        argv[argc++] = "-l";
        argv[argc++] = (char *)lora;
    }
    argv[argc] = NULL;
    int rc = test_run(argv, out);
    char *log = test_read_file(out);
    if (rc != 0 || !strstr(log, "PASS: vLLM example")) fail_msg("cvllm-client: %s", log);
    free(log);
    return test_read_file(results);
}

/* The seed's client over gRPC naming an adapter the model does not serve:
 * the backend's message reaches it and it reports FAIL. */
static void test_client_unknown_adapter(void **state)
{
    (void)state;
    char exe[512], url[64], prompts[700], results[700], out[700];
    const char *bin = getenv("CVLLM_BIN_DIR");
    snprintf(exe, sizeof exe, "%s/cvllm-client", bin ? bin : "build/bin");
    snprintf(url, sizeof url, "127.0.0.1:%d", srv.grpc_port);
    snprintf(prompts, sizeof prompts, "%s/prompts.txt", srv.dir);
    lf_write_text(prompts, "The capital of France is\n");
    snprintf(results, sizeof results, "%s/results_unknown.txt", srv.dir);
    snprintf(out, sizeof out, "%s/client_unknown.out", srv.dir);
    char *argv[] = {exe,  "-u",     url, "--input-prompts", prompts, "--results-file", results,
                    "-l", "nosuch", NULL};
    assert_int_equal(test_run(argv, out), 0); /* as client.py: FAIL is printed, not an exit code */
    char *log = test_read_file(out);
    if (!strstr(log, "LoRA nosuch is not supported, we currently support ['kjv_lora']") ||
        !strstr(log, "FAIL: vLLM example"))
        fail_msg("cvllm-client: %s", log);
    free(log);
}

static void test_client(void **state)
{
    (void)state;
    /* The first request of each engine: the same sampling seed (engine seed
     * 0, request 1), so temperature 0.1 draws the same way on equal logits. */
    char *merged = run_client("merged", NULL);
    char *lora = run_client("vllm_model", "kjv_lora");
    char *base = run_client("vllm_model", NULL);
    assert_string_equal(lora, merged);
    assert_string_not_equal(lora, base);
    free(merged);
    free(lora);
    free(base);
}

static void test_openai_and_metrics(void **state)
{
    (void)state;
    char *models = test_http_get(srv.http_port, "/v1/models");
    json_t *j = json_loads(models, 0, NULL);
    assert_non_null(j);
    json_t *data = json_object_get(j, "data");
    bool found = false;
    for (size_t i = 0; i < json_array_size(data); i++) {
        json_t *m = json_array_get(data, i);
        if (strcmp(json_string_value(json_object_get(m, "id")), "kjv_lora")) continue;
        found = true;
        assert_string_equal(json_string_value(json_object_get(m, "parent")), "vllm_model");
        assert_string_equal(json_string_value(json_object_get(m, "object")), "model");
    }
    assert_true(found);
    json_decref(j);
    free(models);
    const char *body = "{\"model\": \"%s\", \"prompt\": \"In the beginning\", \"max_tokens\": "
                       "24, \"temperature\": 0}";
    char req[256];
    char *texts[2];
    const char *names[2] = {"kjv_lora", "merged"};
    for (int i = 0; i < 2; i++) {
        snprintf(req, sizeof req, body, names[i]);
        char *out = post("/v1/completions", req, 200);
        json_t *c = json_loads(out, 0, NULL);
        assert_non_null(c);
        assert_string_equal(json_string_value(json_object_get(c, "model")), names[i]);
        texts[i] = strdup(json_string_value(
            json_object_get(json_array_get(json_object_get(c, "choices"), 0), "text")));
        json_decref(c);
        free(out);
    }
    assert_string_equal(texts[0], texts[1]);
    free(texts[0]);
    free(texts[1]);
    char *metrics = test_http_get(srv.metrics_port, "/metrics");
    assert_non_null(strstr(metrics, "# TYPE vllm:lora_requests_info gauge\n"));
    assert_non_null(strstr(metrics, "vllm:lora_requests_info{model=\"vllm_model\",version=\"1\","
                                    "max_lora=\"1\",running_lora_adapters=\"\","
                                    "waiting_lora_adapters=\"\"} "));
    /* A model without enable_lora has no such sample. */
    assert_null(strstr(metrics, "vllm:lora_requests_info{model=\"merged\""));
    assert_true(test_metric(metrics, "vllm:lora_requests_info") > 1e9); /* a timestamp */
    free(metrics);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_client),
        cmocka_unit_test(test_client_unknown_adapter),
        cmocka_unit_test(test_generate),
        cmocka_unit_test(test_openai_and_metrics),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

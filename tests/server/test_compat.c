/* What real Triton clients and the upstream vLLM backend tests meet
 * (issue 15), each against a cvllm-server of its own on loopback ports:
 * tritonserver's deployment flags, model.json written with string values
 * and disable_log_stats, and a repository with an ensemble and a
 * python-backend model beside the vllm one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "harness.h"

/* model.json as the upstream multi-LoRA test writes it (values as
 * strings), and disable_log_stats: the backend's rule turns the vllm:*
 * metrics off even with REPORT_CUSTOM_METRICS on; Triton's own counters
 * stay. */
static void test_model_json_strings_and_log_stats(void **state)
{
    (void)state;
    test_server s;
    const char *explicit_mode[] = {"--model-control-mode=explicit", "--load-model=kjv", NULL};
    assert_true(th_start(&s, th_make_repo(), explicit_mode));
    char json[4600], path[400];
    snprintf(json, sizeof json,
             "{\"model\": \"%s\", \"enable_lora\": \"true\", \"max_lora_rank\": \"8\", "
             "\"max_model_len\": \"256\", \"gpu_memory_utilization\": \"0.5\", "
             "\"disable_log_stats\": \"true\"}",
             th_model_dir());
    th_add_model(
        s.repo, "quiet",
        "backend: \"vllm\"\n"
        "parameters: { key: \"REPORT_CUSTOM_METRICS\" value: { string_value: \"true\" } }\n",
        json);
    snprintf(path, sizeof path, "%s/quiet/1/multi_lora.json", s.repo);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"sql\": \"/adapters/sql\"}", f);
    fclose(f);
    th_expect("POST", th_url(&s, "/v2/repository/models/quiet/load"), "", 200, "");
    /* enable_lora "true" took effect: the adapter list is checked. */
    th_expect("POST", th_url(&s, "/v2/models/quiet/generate"),
              "{\"text_input\": \"x\", \"parameters\": {\"lora_name\": \"doc\"}}", 500,
              "{\"error\":\"LoRA doc is not supported, we currently support ['sql']\"}");
    char *resp = NULL;
    assert_int_equal(th_http("POST", th_url(&s, "/v2/models/quiet/generate"),
                             "{\"text_input\": \"In the beginning\", \"parameters\": "
                             "{\"max_tokens\": 2}}",
                             &resp),
                     200);
    free(resp);
    char u[128], *text = NULL;
    snprintf(u, sizeof u, "http://127.0.0.1:%d/metrics", s.metrics_port);
    assert_int_equal(th_http("GET", u, NULL, &text), 200);
    assert_true(th_metric(text, "nv_inference_request_success{model=\"quiet\",version=\"1\"}") ==
                1);
    assert_true(th_metric(text, "nv_inference_request_failure{model=\"quiet\",version=\"1\"}") ==
                1);
    /* kjv (REPORT_CUSTOM_METRICS, stats on) has vllm:* lines, quiet none. */
    assert_true(th_metric(text, "vllm:num_requests_running{model=\"kjv\",version=\"1\"}") == 0);
    for (const char *p = text; (p = strstr(p, "vllm:")); p++) {
        const char *eol = strchr(p, '\n');
        const char *q = strstr(p, "model=\"quiet\"");
        assert_true(!q || (eol && q > eol));
    }
    free(text);
    assert_int_equal(th_stop(&s), 0);
}

/* A repository as the upstream vLLM backend tests lay it out, with an
 * ensemble and a python-backend model beside the vllm one: those two are
 * UNAVAILABLE with a clear reason, the server starts under tritonserver's
 * default flags, is ready, and serves the vllm model. */
static void test_unserved_models_beside(void **state)
{
    (void)state;
    const char *repo = th_make_repo();
    th_add_model(repo, "ensemble_model",
                 "name: \"ensemble_model\"\nplatform: \"ensemble\"\nmax_batch_size: 1\n"
                 "input [ { name: \"text_input\" data_type: TYPE_STRING dims: [ -1 ] } ]\n"
                 "output [ { name: \"text_output\" data_type: TYPE_STRING dims: [ -1 ] } ]\n"
                 "ensemble_scheduling { step [ { model_name: \"kjv\" model_version: -1 "
                 "input_map { key: \"text_input\" value: \"text_input\" } "
                 "output_map { key: \"text_output\" value: \"text_output\" } } ] }\n",
                 NULL);
    th_add_model(repo, "pre", "backend: \"python\"\nmax_batch_size: 8\ndynamic_batching { }\n",
                 NULL);
    test_server s;
    assert_true(th_start(&s, repo, NULL));
    th_expect("GET", th_url(&s, "/v2/health/ready"), NULL, 200, "");
    th_expect("GET", th_url(&s, "/v2/models/kjv/ready"), NULL, 200, "");
    th_expect("GET", th_url(&s, "/v2/models/ensemble_model/ready"), NULL, 400, "");
    char want[2048];
    snprintf(want, sizeof want,
             "[{\"name\":\"ensemble_model\",\"state\":\"UNAVAILABLE\",\"reason\":\"%s/"
             "ensemble_model/config.pbtxt: the ensemble (platform \\\"ensemble\\\") is not "
             "served: cvllm serves models of the vllm backend only\"},{\"name\":\"kjv\","
             "\"version\":\"1\",\"state\":\"READY\"},{\"name\":\"pre\",\"state\":"
             "\"UNAVAILABLE\",\"reason\":\"%s/pre/config.pbtxt: backend \\\"python\\\" is not "
             "served: cvllm serves models of the vllm backend only\"}]",
             repo, repo);
    th_expect("POST", th_url(&s, "/v2/repository/index"), "", 200, want);
    th_expect("GET", th_url(&s, "/v2/models/ensemble_model"), NULL, 503,
              "{\"error\":\"Request for unknown model: 'ensemble_model' has no available "
              "versions\"}");
    char *resp = NULL;
    assert_int_equal(th_http("POST", th_url(&s, "/v2/models/kjv/generate"),
                             "{\"text_input\": \"In the beginning\", \"parameters\": "
                             "{\"max_tokens\": 2}}",
                             &resp),
                     200);
    free(resp);
    assert_int_equal(th_stop(&s), 0);
    /* Loaded explicitly: the same reason, UNSUPPORTED (501). */
    const char *explicit_mode[] = {"--model-control-mode=explicit", NULL};
    assert_true(th_start(&s, repo, explicit_mode));
    snprintf(want, sizeof want,
             "{\"error\":\"failed to load 'pre', %s/pre/config.pbtxt: backend \\\"python\\\" is "
             "not served: cvllm serves models of the vllm backend only\"}",
             repo);
    th_expect("POST", th_url(&s, "/v2/repository/models/pre/load"), "", 501, want);
    assert_int_equal(th_stop(&s), 0);
}

/* The flags a tritonserver deployment script passes (the upstream vLLM
 * backend tests pass --backend-directory to every server): the bind
 * addresses and the log flags take effect, the rest are accepted and
 * logged as not applicable. */
static void test_tritonserver_flags(void **state)
{
    (void)state;
    const char *repo = th_make_repo();
    char log_arg[320], log_path[300];
    snprintf(log_path, sizeof log_path, "%s/triton.log", repo);
    snprintf(log_arg, sizeof log_arg, "--log-file=%s", log_path);
    const char *flags[] = {"--backend-directory=/opt/tritonserver/backends",
                           "--http-address=127.0.0.1",
                           "--grpc-address=127.0.0.1",
                           "--metrics-address=127.0.0.1",
                           log_arg,
                           "--log-info=true",
                           "--log-warning=true",
                           "--log-error=true",
                           "--log-format=ISO8601",
                           "--model-load-thread-count=2",
                           "--disable-auto-complete-config",
                           "--grpc-infer-allocation-pool-size=8",
                           "--cuda-memory-pool-byte-size=0:67108864",
                           "--pinned-memory-pool-byte-size=268435456",
                           NULL};
    test_server s;
    assert_true(th_start(&s, repo, flags));
    th_expect("GET", th_url(&s, "/v2/models/kjv/ready"), NULL, 200, "");
    assert_int_equal(th_stop(&s), 0);
    /* Everything went to --log-file, nothing to stderr. */
    char *err = th_log(&s);
    assert_string_equal(err, "");
    free(err);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "cat '%s'", log_path);
    char *log = th_run(cmd);
    static const char *const want[] = {
        "I cvllm: --disable-auto-complete-config: accepted, not applicable: cvllm completes the "
        "vllm model's configuration as the backend does\n",
        "I cvllm: --backend-directory: accepted, not applicable: the vllm backend is built into "
        "cvllm-server\n",
        "I cvllm: --log-format: accepted, not applicable: cvllm's log lines have one format\n",
        "I cvllm: --model-load-thread-count: accepted, not applicable: cvllm loads models one at "
        "a time\n",
        "I cvllm: --grpc-infer-allocation-pool-size: accepted, not applicable: cvllm allocates "
        "each stream's request state as it comes\n",
        "I cvllm: --cuda-memory-pool-byte-size: accepted, not applicable: cvllm sizes GPU memory "
        "from model.json's gpu_memory_utilization\n",
        "I cvllm: --pinned-memory-pool-byte-size: accepted, not applicable: cvllm does not stage "
        "tensors in pinned memory\n",
        "I cvllm: Started HTTPService at 127.0.0.1:",
        "I cvllm: Started GRPCInferenceService at 127.0.0.1:",
        "I cvllm: Started Metrics Service at 127.0.0.1:",
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        assert_non_null(strstr(log, want[i]));
    free(log);
    /* --log-info=false: the info lines are gone, the server serves. */
    const char *quiet[] = {log_arg, "--log-info=false", NULL};
    assert_int_equal(truncate(log_path, 0), 0);
    assert_true(th_start(&s, repo, quiet));
    th_expect("GET", th_url(&s, "/v2/models/kjv/ready"), NULL, 200, "");
    assert_int_equal(th_stop(&s), 0);
    log = th_run(cmd);
    assert_null(strstr(log, "I cvllm:"));
    free(log);
}

static int setup(void **state)
{
    (void)state;
    return curl_global_init(CURL_GLOBAL_ALL) == CURLE_OK ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    curl_global_cleanup();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tritonserver_flags),
        cmocka_unit_test(test_model_json_strings_and_log_stats),
        cmocka_unit_test(test_unserved_models_beside),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

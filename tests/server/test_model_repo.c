/* config.pbtxt parsing and vLLM auto-completion, model.json engine
 * arguments and hub-id resolution: exact results and exact messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "server/model_config.h"
#include "server/model_json.h"

static const char seed_config[] = "backend: \"vllm\"\n"
                                  "\n"
                                  "# The usage of device is deferred to the vLLM engine\n"
                                  "instance_group [\n"
                                  "  {\n"
                                  "    count: 1\n"
                                  "    kind: KIND_MODEL\n"
                                  "  }\n"
                                  "]\n";

static void test_seed_config_autocompletes(void **state)
{
    (void)state;
    cv_model_config cfg;
    cv_error err = {.msg = ""};
    assert_int_equal(
        cv_model_config_parse(&cfg, seed_config, strlen(seed_config), "config.pbtxt", &err), 0);
    snprintf(cfg.name, sizeof cfg.name, "vllm_model");
    assert_int_equal(cv_model_config_autocomplete_vllm(&cfg, &err), 0);
    assert_string_equal(cfg.backend, "vllm");
    assert_int_equal(cfg.max_batch_size, 0);
    assert_true(cfg.decoupled);
    assert_int_equal(cfg.n_inputs, 9);
    assert_int_equal(cfg.n_outputs, 6);
    assert_string_equal(cfg.inputs[0].name, "text_input");
    assert_int_equal(cfg.inputs[0].data_type, CV_TYPE_STRING);
    assert_false(cfg.inputs[0].optional);
    assert_true(cv_model_config_input(&cfg, "stream")->optional);
    assert_int_equal(cfg.groups[0].kind, CV_KIND_MODEL);

    json_t *j = cv_model_config_to_json(&cfg);
    char *s = json_dumps(json_object_get(j, "output"), JSON_COMPACT);
    json_t *first = json_array_get(json_object_get(j, "input"), 1);
    char *in1 = json_dumps(first, JSON_COMPACT | JSON_SORT_KEYS);
    assert_string_equal(in1, "{\"allow_ragged_batch\":false,\"data_type\":\"TYPE_BOOL\","
                             "\"dims\":[1],\"format\":\"FORMAT_NONE\",\"is_shape_tensor\":false,"
                             "\"name\":\"stream\",\"optional\":true}");
    assert_non_null(strstr(s, "{\"name\":\"text_output\",\"data_type\":\"TYPE_STRING\","
                              "\"dims\":[-1]"));
    assert_string_equal(json_string_value(json_object_get(j, "backend")), "vllm");
    assert_true(
        json_is_true(json_object_get(json_object_get(j, "model_transaction_policy"), "decoupled")));
    free(s);
    free(in1);
    json_decref(j);
}

static void test_parameters_and_lists(void **state)
{
    (void)state;
    const char *t =
        "name: 'm' backend: \"vllm\"\n"
        "parameters: { key: \"REPORT_CUSTOM_METRICS\" value: { string_value: \"true\" } }\n"
        "parameters [ { key: \"A\", value < string_value: 'x' 'y' > } ]\n"
        "model_transaction_policy { decoupled: True }\n"
        "version_policy: { specific: { versions: [1, 3] } }\n";
    cv_model_config cfg;
    cv_error err = {.msg = ""};
    assert_int_equal(cv_model_config_parse(&cfg, t, strlen(t), "c.pbtxt", &err), 0);
    assert_string_equal(cfg.name, "m");
    assert_true(cv_model_config_param_true(&cfg, "REPORT_CUSTOM_METRICS"));
    assert_string_equal(cv_model_config_param(&cfg, "A"), "xy");
    assert_null(cv_model_config_param(&cfg, "B"));
    assert_int_equal(cfg.version_policy, CV_VERSIONS_SPECIFIC);
    assert_int_equal(cfg.n_specific, 2);
    assert_int_equal(cfg.specific[1], 3);
    assert_true(cfg.has_decoupled && cfg.decoupled);
}

static void expect_config_error(const char *text, const char *msg)
{
    cv_model_config cfg;
    cv_error err = {.msg = ""};
    int rc = cv_model_config_parse(&cfg, text, strlen(text), "m/config.pbtxt", &err);
    if (rc == 0) rc = cv_model_config_autocomplete_vllm(&cfg, &err);
    assert_int_equal(rc, -1);
    assert_string_equal(err.msg, msg);
}

static void test_config_errors(void **state)
{
    (void)state;
    expect_config_error("backend: \"vllm\"\nmodel_transaction_policy { decoupled: false }\n",
                        "vLLM Triton backend must be configured to use decoupled model "
                        "transaction policy");
    expect_config_error("backend: \"vllm\"\n\ninstance_group [ { count: 1 kind: KIND_TPU } ]\n",
                        "m/config.pbtxt:3: field 'kind': unknown enum value 'KIND_TPU'");
    expect_config_error("backend: \"vllm\"\nbogus: 3\n", "m/config.pbtxt:2: unknown field 'bogus'");
    expect_config_error("backend: vllm\n", "m/config.pbtxt:1: field 'backend': expected a quoted "
                                           "string");
    expect_config_error("instance_group [ { count: 1 }\n",
                        "m/config.pbtxt:2: expected ',' or ']' in a list");
    expect_config_error("backend: \"vllm\n\"", "m/config.pbtxt:1: newline inside a string literal");
    expect_config_error("max_batch_size: 8\n",
                        "model '': max_batch_size must be 0 for the vLLM backend (the engine "
                        "batches continuously), got 8");
}

/* Models of other backends and ensembles: one clear refusal, classed
 * UNSUPPORTED so that the repository serves the others. */
static void test_unserved_models(void **state)
{
    (void)state;
    static const struct {
        const char *pbtxt, *msg;
    } cases[] = {
        {"name: \"ensemble_model\"\nplatform: \"ensemble\"\nmax_batch_size: 1\n"
         "input [ { name: \"text_input\" data_type: TYPE_STRING dims: [ -1 ] } ]\n"
         "ensemble_scheduling { step [ { model_name: \"vllm_opt\" model_version: -1 "
         "input_map { key: \"text_input\" value: \"text_input\" } } ] }\n",
         "m/config.pbtxt: the ensemble (platform \"ensemble\") is not served: cvllm serves "
         "models of the vllm backend only"},
        {"ensemble_scheduling { step [ ] }\n",
         "m/config.pbtxt: the ensemble (platform \"ensemble\") is not served: cvllm serves "
         "models of the vllm backend only"},
        {"backend: \"python\"\nmax_batch_size: 8\ndynamic_batching { }\n",
         "m/config.pbtxt: backend \"python\" is not served: cvllm serves models of the vllm "
         "backend only"},
        {"platform: \"onnxruntime_onnx\"\n",
         "m/config.pbtxt: platform \"onnxruntime_onnx\" is not served: cvllm serves models of "
         "the vllm backend only"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cv_model_config cfg;
        cv_error err = {.msg = ""};
        assert_int_equal(cv_model_config_parse(&cfg, cases[i].pbtxt, strlen(cases[i].pbtxt),
                                               "m/config.pbtxt", &err),
                         -1);
        assert_string_equal(err.msg, cases[i].msg);
        assert_int_equal(err.cls, CV_ERR_UNSUPPORTED);
    }
    /* The vllm backend named with a platform is still served. */
    const char *ok = "backend: \"vllm\"\nplatform: \"vllm\"\n";
    cv_model_config cfg;
    cv_error err = {.msg = ""};
    assert_int_equal(cv_model_config_parse(&cfg, ok, strlen(ok), "m/config.pbtxt", &err), 0);
}

static void test_model_json(void **state)
{
    (void)state;
    /* The model the repository ships, so that a lone clone tests. */
    const char *src = getenv("CVLLM_SOURCE_DIR");
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/samples/models/cvllm-kjv-4m", src ? src : ".");
    char text[4400];
    snprintf(text, sizeof text,
             "{\"model\": \"%s\", \"gpu_memory_utilization\": 0.5, "
             "\"enforce_eager\": true, \"max_model_len\": 256, \"dtype\": \"half\", "
             "\"block_size\": 8, \"enable_prefix_caching\": false, \"seed\": 7, "
             "\"device\": \"cpu\"}",
             dir);
    cv_engine_args args;
    memset(&args, 0, sizeof args);
    cv_model_json_extra extra;
    cv_error err = {.msg = ""};
    assert_int_equal(
        cv_model_json_parse(text, strlen(text), "r/m/1/model.json", "r/m/1", &args, &extra, &err),
        0);
    assert_string_equal(args.model, dir);
    assert_int_equal(args.max_model_len, 256);
    assert_int_equal(args.block_size, 8);
    assert_string_equal(args.dtype, "float16");
    assert_false(args.enable_prefix_caching);
    assert_int_equal(args.seed, 7);
    assert_string_equal(args.device, "cpu");
    assert_true(args.gpu_memory_utilization == 0.5);
    assert_int_equal(extra.tensor_parallel_size, 1);

    static const struct {
        const char *json, *msg;
    } bad[] = {
        {"{\"model\": \"/\", \"bogus\": 1}", "p/model.json: key 'bogus': unknown engine argument"},
        {"{\"model\": \"/\", \"max_model_len\": \"x\"}",
         "p/model.json: key 'max_model_len': expected an integer"},
        {"{\"model\": \"/\", \"gpu_memory_utilization\": 1.5}",
         "p/model.json: key 'gpu_memory_utilization': must be in (0, 1]"},
        {"{\"model\": \"/\", \"gpu_memory_utilization\": \"half\"}",
         "p/model.json: key 'gpu_memory_utilization': expected a number"},
        {"{\"model\": \"/\", \"device\": \"tpu\"}",
         "p/model.json: key 'device': expected one of auto, cpu, cuda"},
        {"{\"model\": \"/\", \"enforce_eager\": 1}",
         "p/model.json: key 'enforce_eager': expected true or false"},
        {"{\"model\": \"/\", \"kv_cache_dtype\": \"fp8\"}",
         "p/model.json: key 'kv_cache_dtype': expected one of auto, bfloat16, float16, float32 "
         "(cvllm has no fp8 KV cache)"},
        {"{\"model\": \"/\", \"fp32_activations\": 2}",
         "p/model.json: key 'fp32_activations': expected true or false"},
        {"{\"model\": \"/\", \"dtype\": \"int4\"}",
         "p/model.json: key 'dtype': expected one of auto, float32, float, float16, half, "
         "bfloat16"},
        {"{\"dtype\": \"auto\"}",
         "p/model.json: key 'model': missing (the HuggingFace model directory or hub id)"},
        {"{\"model\": 3}", "p/model.json: key 'model': expected a string"},
        {"{\"model\": \"/\", \"tool_call_parser\": \"mistral\"}",
         "p/model.json: key 'tool_call_parser': cvllm parses \"hermes\" or \"llama3_json\" tool "
         "calls"},
        {"{\"model\": \"/\", \"chat_template\": 1}",
         "p/model.json: key 'chat_template': expected a string"},
        {"[1]", "p/model.json: expected a JSON object of engine arguments"},
        {"{\"model\": \"/\",}", "p/model.json:1: invalid JSON: string or '}' expected near '}'"},
        {"{\"model\": \"/\", \"revision\": 3}", "p/model.json: key 'revision': expected a string"},
        {"{\"model\": \"/\", \"download_dir\": []}",
         "p/model.json: key 'download_dir': expected a string"},
        {"{\"model\": \"/\", \"tokenizer_revision\": 1}",
         "p/model.json: key 'tokenizer_revision': expected a string"},
        {"{\"model\": null}", "p/model.json: key 'model': expected a string"},
        {"{\"model\": \"no-such-dir\"}",
         "p/model.json: key 'model': 'no-such-dir' is not a local directory nor a hub id of the "
         "form org/name"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cv_error e = {.msg = ""};
        assert_int_equal(cv_model_json_parse(bad[i].json, strlen(bad[i].json), "p/model.json", "p",
                                             &args, &extra, &e),
                         -1);
        assert_string_equal(e.msg, bad[i].msg);
    }
}

/* Values as strings, as the upstream multi-LoRA test writes model.json
 * ("enable_lora": "true") and as vLLM's argument parser reads numbers. */
static void test_model_json_strings(void **state)
{
    (void)state;
    const char *text = "{\"model\": \"/\", \"enable_lora\": \"True\", \"max_model_len\": \"256\", "
                       "\"gpu_memory_utilization\": \"0.25\", \"disable_log_stats\": \"true\", "
                       "\"enforce_eager\": \"FALSE\", \"swap_space\": \"4.5\", "
                       "\"max_lora_rank\": \"8\", \"seed\": \"11\"}";
    cv_engine_args args;
    memset(&args, 0, sizeof args);
    cv_model_json_extra extra;
    cv_error err = {.msg = ""};
    assert_int_equal(cv_model_json_parse(text, strlen(text), "p/model.json", "/nonexistent", &args,
                                         &extra, &err),
                     0);
    assert_true(extra.enable_lora);
    assert_true(extra.disable_log_stats);
    assert_int_equal(args.max_model_len, 256);
    assert_int_equal(args.seed, 11);
    assert_true(args.gpu_memory_utilization == 0.25);
    assert_true(args.enable_lora);
    assert_int_equal(args.max_lora_rank, 8);
    static const struct {
        const char *json, *msg;
    } bad[] = {
        {"{\"model\": \"/\", \"enable_lora\": \"yes\"}",
         "p/model.json: key 'enable_lora': expected true or false"},
        {"{\"model\": \"/\", \"max_model_len\": \"25.5\"}",
         "p/model.json: key 'max_model_len': expected an integer"},
        {"{\"model\": \"/\", \"block_size\": \"0\"}",
         "p/model.json: key 'block_size': value 0 out of range [1, 1024]"},
        {"{\"model\": \"/\", \"max_num_seqs\": \" 8\"}",
         "p/model.json: key 'max_num_seqs': expected an integer"},
        {"{\"model\": \"/\", \"swap_space\": \"4 GiB\"}",
         "p/model.json: key 'swap_space': expected a number"},
        {"{\"model\": \"/\", \"gpu_memory_utilization\": \"nan\"}",
         "p/model.json: key 'gpu_memory_utilization': expected a number"},
        {"{\"model\": \"/\", \"max_loras\": 0}",
         "p/model.json: key 'max_loras': value 0 out of range [1, 64]"},
        {"{\"model\": \"/\", \"max_cpu_loras\": \"two\"}",
         "p/model.json: key 'max_cpu_loras': expected an integer"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cv_error e = {.msg = ""};
        assert_int_equal(cv_model_json_parse(bad[i].json, strlen(bad[i].json), "p/model.json", "p",
                                             &args, &extra, &e),
                         -1);
        assert_string_equal(e.msg, bad[i].msg);
    }
}

/* multi_lora.json: names and adapter directories (relative ones that are
 * not there from the working directory: under the version directory) reach
 * the engine arguments. */
static void test_model_json_loras(void **state)
{
    (void)state;
    char dir[] = "/tmp/cv_lora_json_XXXXXX", path[600];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/multi_lora.json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"sql\": \"adapters/sql\", \"chat\": \"/abs/chat\"}", f);
    fclose(f);
    const char *text = "{\"model\": \"/\", \"enable_lora\": true, \"max_loras\": 2, "
                       "\"max_cpu_loras\": 4}";
    cv_engine_args args;
    memset(&args, 0, sizeof args);
    args.max_lora_rank = 16; /* cv_engine_args_default's, as the repository sets it */
    cv_model_json_extra extra;
    cv_error err = {.msg = ""};
    assert_int_equal(
        cv_model_json_parse(text, strlen(text), "p/model.json", dir, &args, &extra, &err), 0);
    assert_int_equal(args.max_loras, 2);
    assert_int_equal(args.max_cpu_loras, 4);
    assert_int_equal(args.max_lora_rank, 16); /* unchanged: model.json does not set it */
    assert_int_equal(args.n_lora_modules, 2);
    assert_string_equal(args.lora_names[0], "sql");
    assert_string_equal(args.lora_names[1], "chat");
    char want[600];
    snprintf(want, sizeof want, "%s/adapters/sql", dir);
    assert_string_equal(args.lora_paths[0], want);
    assert_string_equal(args.lora_paths[1], "/abs/chat");
    unlink(path);
    rmdir(dir);
}

static void test_model_json_missing(void **state)
{
    (void)state;
    cv_engine_args args;
    cv_model_json_extra extra;
    cv_error err = {.msg = ""};
    assert_int_equal(cv_model_json_load("/nonexistent/vllm_model", "1", &args, &extra, &err), -1);
    assert_string_equal(err.msg, "'model.json' containing vllm engine args must be provided in "
                                 "'/nonexistent/vllm_model/1'");
}

static void test_hf_cache_resolution(void **state)
{
    (void)state;
    char root[] = "/tmp/cv_hf_XXXXXX";
    assert_non_null(mkdtemp(root));
    char p[2048];
    snprintf(p, sizeof p, "%s/hub", root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/hub/models--facebook--opt-125m", root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/hub/models--facebook--opt-125m/refs", root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/hub/models--facebook--opt-125m/snapshots", root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/hub/models--facebook--opt-125m/snapshots/27dcfa74", root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/hub/models--facebook--opt-125m/refs/main", root);
    FILE *fp = fopen(p, "w");
    assert_non_null(fp);
    fputs("27dcfa74", fp);
    fclose(fp);

    /* src/hub resolves the id; offline, so that no test touches the network */
    setenv("HF_HOME", root, 1);
    unsetenv("HF_HUB_CACHE");
    setenv("HF_HUB_OFFLINE", "1", 1);
    char want[1024];
    snprintf(want, sizeof want, "%s/hub/models--facebook--opt-125m/snapshots/27dcfa74", root);
    snprintf(p, sizeof p, "%s/config.json", want);
    fp = fopen(p, "w");
    assert_non_null(fp);
    fputs("{}", fp);
    fclose(fp);
    cv_error err = {.msg = ""};
    const char *mj = "{\"model\": \"facebook/opt-125m\", \"disable_log_requests\": true}";
    cv_engine_args args;
    memset(&args, 0, sizeof args);
    cv_model_json_extra extra;
    assert_int_equal(
        cv_model_json_parse(mj, strlen(mj), "model.json", "/nonexistent", &args, &extra, &err), 0);
    assert_string_equal(args.model, want);

    const char *missing = "{\"model\": \"facebook/opt-350m\"}";
    assert_int_equal(cv_model_json_parse(missing, strlen(missing), "model.json", "/nonexistent",
                                         &args, &extra, &err),
                     -1);
    char msg[1024];
    snprintf(msg, sizeof msg,
             "model.json: key 'model': hub: model 'facebook/opt-350m' (revision 'main') is not in "
             "the cache %s/hub/models--facebook--opt-350m and HF_HUB_OFFLINE=1 forbids "
             "downloading it; unset HF_HUB_OFFLINE, or fill the cache on a machine with network "
             "access",
             root);
    assert_string_equal(err.msg, msg);
    unsetenv("HF_HUB_OFFLINE");
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seed_config_autocompletes),
        cmocka_unit_test(test_parameters_and_lists),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_unserved_models),
        cmocka_unit_test(test_model_json),
        cmocka_unit_test(test_model_json_strings),
        cmocka_unit_test(test_model_json_loras),
        cmocka_unit_test(test_model_json_missing),
        cmocka_unit_test(test_hf_cache_resolution),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

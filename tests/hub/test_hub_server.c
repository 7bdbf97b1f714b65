/* The real server with a model.json naming a hub id: cvllm-server, with
 * HF_ENDPOINT at the test hub serving samples/models/cvllm-kjv-4m as
 * test-org/kjv and an empty HF_HOME, downloads the model at load, answers
 * /generate exactly as cvllm-generate does on the local directory, and a
 * second start with HF_HUB_OFFLINE=1 and no hub loads from the cache. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "../server/harness.h"
#include "hub_harness.h"

static const char *const load_flags[] = {"--model-control-mode=explicit", "--load-model=kjv_hub",
                                         NULL};

static char *greedy_local(const char *prompt, int max_tokens)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "%s/cvllm-generate --model samples/models/cvllm-kjv-4m --prompt '%s' "
             "--max-tokens %d --temperature 0 --threads 1 2>/dev/null",
             getenv("CVLLM_BIN_DIR"), prompt, max_tokens);
    char *out = th_run(cmd);
    size_t n = strlen(out);
    assert_true(n > 0 && out[n - 1] == '\n');
    out[n - 1] = '\0';
    return out;
}

static void expect_generate(const test_server *s, const char *ref)
{
    char *resp = NULL;
    assert_int_equal(th_http("POST", th_url(s, "/v2/models/kjv_hub/generate"),
                             "{\"text_input\": \"And God said,\", \"parameters\": "
                             "{\"max_tokens\": 16, \"temperature\": 0}}",
                             &resp),
                     200);
    json_t *j = json_loads(resp, 0, NULL);
    assert_non_null(j);
    char want[2048];
    snprintf(want, sizeof want, "And God said,%s", ref);
    assert_string_equal(json_string_value(json_object_get(j, "text_output")), want);
    json_decref(j);
    free(resp);
}

static void test_model_json_hub_id(void **state)
{
    (void)state;
    char repo[] = "/tmp/cv_hub_srv_XXXXXX";
    assert_non_null(mkdtemp(repo));
    char home[300];
    snprintf(home, sizeof home, "%s/hf_home", repo);
    setenv("HF_HOME", home, 1);
    setenv("NO_PROXY", "127.0.0.1,localhost", 1); /* the loopback hub, never a proxy */
    unsetenv("HF_HUB_CACHE");
    unsetenv("HF_HUB_OFFLINE");
    unsetenv("HF_TOKEN");
    th_add_model(repo, "kjv_hub", "backend: \"vllm\"\n",
                 "{\"model\": \"test-org/kjv\", \"disable_log_requests\": true, "
                 "\"enforce_eager\": true, \"device\": \"cpu\"}");
    th_hub hub;
    const char *args[] = {"--repo", "test-org/kjv=samples/models/cvllm-kjv-4m", NULL};
    assert_true(th_hub_start(&hub, repo, args));
    setenv("HF_ENDPOINT", hub.endpoint, 1);

    char *ref = greedy_local("And God said,", 16);
    test_server s;
    assert_true(th_start(&s, repo, load_flags));
    expect_generate(&s, ref);
    assert_int_equal(th_stop(&s), 0);
    char *log = th_log(&s);
    assert_non_null(strstr(log, "hub: test-org/kjv: model.safetensors"));
    free(log);
    assert_int_equal(th_hub_count(&hub, "GET", "/lfs/", NULL), 1);
    th_hub_stop(&hub);

    setenv("HF_HUB_OFFLINE", "1", 1);
    assert_true(th_start(&s, repo, load_flags));
    expect_generate(&s, ref);
    assert_int_equal(th_stop(&s), 0);
    free(ref);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", repo);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    if (system("python3 -c pass 2>/dev/null") != 0) {
        printf("test_hub_server: python3 (the test hub) not found; skipped\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_json_hub_id),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

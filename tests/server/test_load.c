/* Load over SSE: 64 concurrent /generate_stream clients, every third one
 * disconnecting after its second event. The server keeps serving, every
 * completed stream carries exactly the text of the same request run alone,
 * and afterwards no request is running or waiting and every KV block is
 * free (read from /metrics). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "harness.h"

enum { N_STREAMS = 64, N_PROMPTS = 4, MAX_TOKENS = 24 };

static const char *const prompts[N_PROMPTS] = {"Once upon a time", "Lily", "the little dog",
                                               "Once upon a time there was"};

typedef struct client {
    char *data;
    size_t len;
    bool hang_up; /* disconnects after its second event */
    int events;
} client;

static size_t on_data(char *ptr, size_t size, size_t n, void *arg)
{
    client *c = arg;
    size_t add = size * n;
    char *nd = realloc(c->data, c->len + add + 1);
    if (!nd) return 0;
    c->data = nd;
    memcpy(c->data + c->len, ptr, add);
    c->len += add;
    c->data[c->len] = '\0';
    c->events = 0;
    for (const char *p = c->data; (p = strstr(p, "\n\n")); p += 2)
        c->events++;
    return c->hang_up && c->events >= 2 ? 0 : add;
}

/* Concatenated text_output of the events, and the last finish_reason. */
static char *concat(const char *events, char *finish)
{
    char *out = calloc(1, strlen(events) + 1);
    size_t len = 0;
    for (const char *p = events; (p = strstr(p, "data: "));) {
        p += 6;
        const char *end = strstr(p, "\n\n");
        assert_non_null(end);
        json_t *ev = json_loadb(p, (size_t)(end - p), 0, NULL);
        assert_non_null(ev);
        const char *s = json_string_value(json_object_get(ev, "text_output"));
        assert_non_null(s);
        memcpy(out + len, s, strlen(s));
        len += strlen(s);
        snprintf(finish, 16, "%s", json_string_value(json_object_get(ev, "finish_reason")));
        json_decref(ev);
        p = end + 2;
    }
    return out;
}

static void body_for(int prompt, char *body, size_t cap, bool stream)
{
    snprintf(body, cap,
             "{\"text_input\": \"%s\", \"stream\": %s, \"exclude_input_in_output\": true, "
             "\"parameters\": {\"max_tokens\": %d, \"temperature\": 0, \"ignore_eos\": true, "
             "\"return_finish_reason\": true}}",
             prompts[prompt], stream ? "true" : "false", MAX_TOKENS);
}

static void test_64_streams_with_disconnects(void **state)
{
    (void)state;
    curl_global_init(CURL_GLOBAL_ALL);
    test_server srv;
    assert_true(th_start(&srv, th_make_repo(), NULL));
    char gen[128], stream_url[128], metrics_url[128];
    snprintf(gen, sizeof gen, "http://127.0.0.1:%d/v2/models/kjv/generate", srv.http_port);
    snprintf(stream_url, sizeof stream_url, "http://127.0.0.1:%d/v2/models/kjv/generate_stream",
             srv.http_port);
    snprintf(metrics_url, sizeof metrics_url, "http://127.0.0.1:%d/metrics", srv.metrics_port);

    /* References: each prompt alone, not streamed. */
    char *ref[N_PROMPTS];
    for (int i = 0; i < N_PROMPTS; i++) {
        char body[512], *resp = NULL;
        body_for(i, body, sizeof body, false);
        assert_int_equal(th_http("POST", gen, body, &resp), 200);
        json_t *j = json_loads(resp, 0, NULL);
        ref[i] = strdup(json_string_value(json_object_get(j, "text_output")));
        json_decref(j);
        free(resp);
    }

    static client clients[N_STREAMS];
    static char bodies[N_STREAMS][512];
    CURLM *multi = curl_multi_init();
    CURL *easy[N_STREAMS];
    for (int i = 0; i < N_STREAMS; i++) {
        clients[i] = (client){.data = calloc(1, 1), .hang_up = i % 3 == 0};
        body_for(i % N_PROMPTS, bodies[i], sizeof bodies[i], true);
        easy[i] = curl_easy_init();
        curl_easy_setopt(easy[i], CURLOPT_URL, stream_url);
        curl_easy_setopt(easy[i], CURLOPT_POSTFIELDS, bodies[i]);
        curl_easy_setopt(easy[i], CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(easy[i], CURLOPT_WRITEDATA, &clients[i]);
        curl_easy_setopt(easy[i], CURLOPT_TIMEOUT, 240L);
        curl_multi_add_handle(multi, easy[i]);
    }
    int running = N_STREAMS;
    while (running > 0) {
        curl_multi_perform(multi, &running);
        if (running > 0) curl_multi_poll(multi, NULL, 0, 100, NULL);
    }
    int done = 0, hung_up = 0;
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(multi, &left))) {
        for (int i = 0; i < N_STREAMS; i++) {
            if (msg->easy_handle != easy[i]) continue;
            if (clients[i].hang_up) {
                assert_int_equal(msg->data.result, CURLE_WRITE_ERROR);
                hung_up++;
            } else {
                assert_int_equal(msg->data.result, CURLE_OK);
                char finish[16] = "";
                char *text = concat(clients[i].data, finish);
                assert_string_equal(text, ref[i % N_PROMPTS]);
                assert_string_equal(finish, "length");
                free(text);
                done++;
            }
        }
    }
    assert_int_equal(done, N_STREAMS - (N_STREAMS + 2) / 3);
    assert_int_equal(hung_up, (N_STREAMS + 2) / 3);
    for (int i = 0; i < N_STREAMS; i++) {
        curl_multi_remove_handle(multi, easy[i]);
        curl_easy_cleanup(easy[i]);
        free(clients[i].data);
    }
    curl_multi_cleanup(multi);

    /* The server still serves, and then nothing is left in the engine. */
    char body[512], *resp = NULL;
    body_for(0, body, sizeof body, false);
    assert_int_equal(th_http("POST", gen, body, &resp), 200);
    json_t *j = json_loads(resp, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "text_output")), ref[0]);
    json_decref(j);
    free(resp);
    char *metrics = NULL;
    bool idle = false;
    for (int tries = 0; tries < 100 && !idle; tries++) {
        free(metrics);
        assert_int_equal(th_http("GET", metrics_url, NULL, &metrics), 200);
        idle = th_metric(metrics, "vllm:num_requests_running{model=\"kjv\",version=\"1\"}") == 0 &&
               th_metric(metrics, "vllm:num_requests_waiting{model=\"kjv\",version=\"1\"}") == 0 &&
               th_metric(metrics, "vllm:gpu_cache_usage_perc{model=\"kjv\",version=\"1\"}") == 0 &&
               th_metric(metrics,
                         "nv_inference_pending_request_count{model=\"kjv\",version=\"1\"}") == 0;
        if (!idle) usleep(50000);
    }
    if (!idle) fprintf(stderr, "%s\n", metrics);
    assert_true(idle);
    /* Every request ended: the successful ones are the completed streams,
     * the references and the last request. */
    assert_int_equal(
        (long)th_metric(metrics, "nv_inference_request_success{model=\"kjv\",version=\"1\"}") +
            (long)th_metric(metrics, "nv_inference_request_failure{model=\"kjv\","
                                     "version=\"1\"}"),
        N_STREAMS + N_PROMPTS + 1);
    free(metrics);
    for (int i = 0; i < N_PROMPTS; i++)
        free(ref[i]);
    assert_int_equal(th_stop(&srv), 0);
    curl_global_cleanup();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_64_streams_with_disconnects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

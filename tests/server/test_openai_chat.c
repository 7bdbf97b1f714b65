/* vLLM's chat API on cvllm-server over loopback: /v1/chat/completions
 * whole and streamed (the same text; role chunk first, finish chunk,
 * usage chunk, [DONE]), greedy chat text equal to /v1/completions on the
 * rendered prompt's ids, exact usage, n / stop / max_completion_tokens /
 * seed / logprobs, vLLM's template options (add_generation_prompt,
 * continue_final_message with echo, chat_template, chat_template_kwargs),
 * /tokenize and /detokenize, tools rendered into the prompt and the tool
 * parser on the output path, vLLM's tool_choice checks, cancellation, metrics, and vLLM's error
 * object for every refused request. The model is the shipped
 * samples/models/cvllm-kjv-4m (a lone clone runs this test) with a ChatML
 * template of the test's own (model.json chat_template), as the shipped
 * model has none; "plain" is the same model without one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "harness.h"

static test_server srv;
static char scratch[256]; /* tokenizer dirs and a template file (not served) */

/* ChatML, rendering tool calls the Hermes way. */
static const char CHATML[] =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] %}{{ message['content'] }}{% endif %}"
    "{% if message['tool_calls'] %}{% for call in message['tool_calls'] %}"
    "{{ '<tool_call>\\n' + (call['function'] | tojson) + '\\n</tool_call>' }}{% endfor %}"
    "{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if tools %}{{ '<|im_start|>tools\\n' + (tools | tojson) + '<|im_end|>\\n' }}{% endif %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

static const char *url(const char *path)
{
    return th_url(&srv, path);
}

static void expect(const char *path, const char *body, long status, const char *want_body)
{
    th_expect("POST", url(path), body, status, want_body);
}

/* The body of vLLM's error object with a 400. */
static char *bad(const char *msg)
{
    static char buf[2048];
    json_t *e = json_pack("{s:{s:s, s:s, s:n, s:i}}", "error", "message", msg, "type",
                          "BadRequestError", "param", "code", 400);
    char *t = json_dumps(e, JSON_COMPACT);
    snprintf(buf, sizeof buf, "%s", t);
    free(t);
    json_decref(e);
    return buf;
}

/* The shipped model's directory (absolute). */
static const char *kjv_dir(void)
{
    static char dir[512];
    const char *src = getenv("CVLLM_SOURCE_DIR");
    snprintf(dir, sizeof dir, "%s/samples/models/cvllm-kjv-4m", src ? src : ".");
    return dir;
}

/* model.json for the shipped model plus `extra` keys (static buffer). */
static const char *kjv_json(const char *extra)
{
    static char mj[4096];
    snprintf(mj, sizeof mj, "{\"model\": \"%.512s\", \"enforce_eager\": true%.2048s}", kjv_dir(),
             extra);
    return mj;
}

/* A repository with the shipped model as "plain" only (th_make_repo's
 * "kjv" replaced, so that /tokenize without a model name finds one). */
static const char *plain_repo(void)
{
    const char *repo = th_make_repo();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s/kjv'", repo);
    assert_int_equal(system(cmd), 0);
    th_add_model(repo, "plain", "backend: \"vllm\"\n", kjv_json(""));
    return repo;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* A tokenizer directory <scratch>/<name>: the shipped model's tokenizer.json
 * (linked) with the given tokenizer_config.json and chat_template.jinja
 * (NULL = none); returns the model.json of a model using it (static). */
static const char *tokenizer_dir(const char *name, const char *config, const char *jinja)
{
    char dir[512], p[600], target[600], extra[600];
    snprintf(dir, sizeof dir, "%s/%s", scratch, name);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(target, sizeof target, "%s/tokenizer.json", kjv_dir());
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    assert_int_equal(symlink(target, p), 0);
    snprintf(p, sizeof p, "%s/tokenizer_config.json", dir);
    write_text(p, config);
    if (jinja) {
        snprintf(p, sizeof p, "%s/chat_template.jinja", dir);
        write_text(p, jinja);
    }
    snprintf(extra, sizeof extra, ", \"tokenizer\": \"%s\"", dir);
    return kjv_json(extra);
}

static int setup(void **state)
{
    (void)state;
    curl_global_init(CURL_GLOBAL_ALL);
    snprintf(scratch, sizeof scratch, "%s", th_make_repo());
    const char *repo = plain_repo();
    /* tokenizer_config.json's named templates; chat_template.jinja over
     * tokenizer_config.json's */
    th_add_model(repo, "tplcfg", "backend: \"vllm\"\n",
                 tokenizer_dir("tok_cfg",
                               "{\"bos_token\": \"<s>\", \"eos_token\": {\"content\": \"</s>\"}, "
                               "\"chat_template\": [{\"name\": \"default\", \"template\": \"D:{{ "
                               "messages[0].content }}{{ eos_token }}\"}, {\"name\": \"tool_use\", "
                               "\"template\": \"T:{{ tools[0].function.name }}\"}]}",
                               NULL));
    th_add_model(repo, "tpljinja", "backend: \"vllm\"\n",
                 tokenizer_dir("tok_jinja", "{\"bos_token\": \"<s>\", \"chat_template\": \"CFG\"}",
                               "J:{{ bos_token }}{{ messages[0].content }}"));
    char path[512], mj[2048];
    snprintf(path, sizeof path, "%s/chatml.jinja", repo);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(CHATML, f);
    fclose(f);
    snprintf(mj, sizeof mj, ", \"chat_template\": \"%s\", \"tool_call_parser\": \"hermes\"", path);
    th_add_model(
        repo, "chat",
        "backend: \"vllm\"\n"
        "parameters: { key: \"REPORT_CUSTOM_METRICS\" value: { string_value: \"true\" } }\n",
        kjv_json(mj));
    return th_start(&srv, repo, NULL) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    int rc = th_stop(&srv);
    curl_global_cleanup();
    return rc == 0 ? 0 : -1;
}

static json_t *post(const char *path, const char *body)
{
    char *resp = NULL;
    long status = th_http("POST", url(path), body, &resp);
    if (status != 200) fprintf(stderr, "%s %s -> %ld %s\n", path, body, status, resp);
    assert_int_equal(status, 200);
    json_t *j = json_loads(resp, 0, NULL);
    assert_non_null(j);
    free(resp);
    return j;
}

static const json_t *choice(const json_t *j, size_t i)
{
    return json_array_get(json_object_get(j, "choices"), i);
}

static const char *content_of(const json_t *j, size_t i)
{
    return json_string_value(json_object_get(json_object_get(choice(j, i), "message"), "content"));
}

static int usage_of(const json_t *j, const char *key)
{
    return (int)json_integer_value(json_object_get(json_object_get(j, "usage"), key));
}

/* A streamed chat: per choice the concatenated content and finish
 * reason; asserts each choice's role chunk comes before its content,
 * a single [DONE] last. Returns the usage chunk's completion tokens (-1
 * when none). */
static int stream_chat(const char *body, char content[4][2048], char finish[4][16])
{
    char *events = NULL;
    assert_int_equal(th_sse(url("/v1/chat/completions"), body, 0, &events), 200);
    bool role[4] = {false}, done = false;
    int usage = -1;
    memset(content, 0, 4 * 2048);
    memset(finish, 0, 4 * 16);
    for (const char *p = events; (p = strstr(p, "data: "));) {
        p += 6;
        const char *end = strstr(p, "\n\n");
        assert_non_null(end);
        assert_false(done);
        if (end - p == 6 && !strncmp(p, "[DONE]", 6)) {
            done = true;
            p = end + 2;
            continue;
        }
        json_t *ev = json_loadb(p, (size_t)(end - p), 0, NULL);
        assert_non_null(ev);
        assert_string_equal(json_string_value(json_object_get(ev, "object")),
                            "chat.completion.chunk");
        size_t i;
        json_t *ch;
        json_array_foreach(json_object_get(ev, "choices"), i, ch)
        {
            json_int_t idx = json_integer_value(json_object_get(ch, "index"));
            assert_true(idx >= 0 && idx < 4);
            json_t *delta = json_object_get(ch, "delta");
            if (json_object_get(delta, "role")) {
                assert_false(role[idx]);
                assert_string_equal(json_string_value(json_object_get(delta, "role")), "assistant");
                role[idx] = true;
            }
            assert_true(role[idx]);
            const char *c = json_string_value(json_object_get(delta, "content"));
            if (c) strncat(content[idx], c, 2047 - strlen(content[idx]));
            if (json_is_string(json_object_get(ch, "finish_reason")))
                snprintf(finish[idx], 16, "%s",
                         json_string_value(json_object_get(ch, "finish_reason")));
        }
        if (json_object_get(ev, "usage")) {
            assert_int_equal(json_array_size(json_object_get(ev, "choices")), 0);
            usage = usage_of(ev, "completion_tokens");
        }
        json_decref(ev);
        p = end + 2;
    }
    assert_true(done);
    free(events);
    return usage;
}

#define USER_MSG "\"messages\": [{\"role\": \"user\", \"content\": \"Once upon a time\"}]"
#define CITY_TOOLS                                                                                 \
    "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", "              \
    "\"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\", "    \
    "\"enum\": [\"Paris\", \"Rome\"]}}, \"required\": [\"city\"]}}}]"
#define NAMED "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\"}}"

/* Whole and streamed give the same text; greedy chat equals
 * /v1/completions on the ids /tokenize gives for the conversation; usage
 * is exact. */
static void test_chat_whole_stream_completions(void **state)
{
    (void)state;
    json_t *tok = post("/tokenize", "{\"model\": \"chat\", " USER_MSG "}");
    const int n_prompt = (int)json_integer_value(json_object_get(tok, "count"));
    assert_true(n_prompt > 10);
    assert_int_equal(json_integer_value(json_object_get(tok, "max_model_len")), 512);
    json_t *whole = post("/v1/chat/completions", "{\"model\": \"chat\", " USER_MSG
                                                 ", \"max_tokens\": 24, \"temperature\": 0}");
    assert_string_equal(json_string_value(json_object_get(whole, "object")), "chat.completion");
    assert_int_equal(strncmp(json_string_value(json_object_get(whole, "id")), "chatcmpl-", 9), 0);
    const json_t *msg = json_object_get(choice(whole, 0), "message");
    assert_string_equal(json_string_value(json_object_get(msg, "role")), "assistant");
    assert_int_equal(json_array_size(json_object_get(msg, "tool_calls")), 0);
    assert_string_equal(json_string_value(json_object_get(choice(whole, 0), "finish_reason")),
                        "length");
    assert_int_equal(usage_of(whole, "prompt_tokens"), n_prompt);
    assert_int_equal(usage_of(whole, "completion_tokens"), 24);
    assert_int_equal(usage_of(whole, "total_tokens"), n_prompt + 24);
    const char *text = content_of(whole, 0);
    assert_true(strlen(text) > 0);

    char content[4][2048], finish[4][16];
    int usage = stream_chat("{\"model\": \"chat\", " USER_MSG ", \"max_tokens\": 24, "
                            "\"temperature\": 0, \"stream\": true, \"stream_options\": "
                            "{\"include_usage\": true}}",
                            content, finish);
    assert_string_equal(content[0], text);
    assert_string_equal(finish[0], "length");
    assert_int_equal(usage, 24);
    /* No usage chunk unless asked. */
    usage = stream_chat("{\"model\": \"chat\", " USER_MSG
                        ", \"max_tokens\": 24, \"temperature\": 0, \"stream\": true}",
                        content, finish);
    assert_int_equal(usage, -1);
    assert_string_equal(content[0], text);

    /* The same ids through /v1/completions. */
    char *ids = json_dumps(json_object_get(tok, "tokens"), JSON_COMPACT), body[4096];
    snprintf(body, sizeof body,
             "{\"model\": \"chat\", \"prompt\": %s, \"max_tokens\": 24, \"temperature\": 0}", ids);
    json_t *cmpl = post("/v1/completions", body);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(cmpl, "choices"), 0), "text")),
                        text);
    assert_int_equal(usage_of(cmpl, "prompt_tokens"), n_prompt);
    /* /detokenize gives the rendered prompt back (the tokenizer's
     * round trip) and /tokenize of that text without special tokens the
     * same ids. */
    snprintf(body, sizeof body, "{\"model\": \"chat\", \"tokens\": %s}", ids);
    json_t *detok = post("/detokenize", body);
    const char *prompt = json_string_value(json_object_get(detok, "prompt"));
    assert_non_null(strstr(prompt, "<|im_start|>user\nOnce upon a time<|im_end|>\n"));
    free(ids);
    json_decref(detok);
    json_decref(cmpl);
    json_decref(whole);
    json_decref(tok);
}

/* n, stop, max_completion_tokens over max_tokens, seed, penalties,
 * logprobs in the chat format. */
static void test_chat_sampling(void **state)
{
    (void)state;
    json_t *ref = post("/v1/chat/completions", "{\"model\": \"chat\", " USER_MSG
                                               ", \"max_tokens\": 24, \"temperature\": 0}");
    const char *text = content_of(ref, 0);
    json_t *j = post("/v1/chat/completions",
                     "{\"model\": \"chat\", " USER_MSG ", \"max_tokens\": 24, \"temperature\": 1, "
                     "\"top_k\": 1, \"n\": 2}");
    assert_int_equal(json_array_size(json_object_get(j, "choices")), 2);
    assert_string_equal(content_of(j, 0), text);
    assert_string_equal(content_of(j, 1), text);
    assert_int_equal(json_integer_value(json_object_get(choice(j, 1), "index")), 1);
    assert_int_equal(usage_of(j, "completion_tokens"), 48);
    json_decref(j);

    char content[4][2048], finish[4][16];
    stream_chat("{\"model\": \"chat\", " USER_MSG ", \"max_tokens\": 24, \"temperature\": 1, "
                "\"top_k\": 1, \"n\": 2, \"stream\": true}",
                content, finish);
    assert_string_equal(content[0], text);
    assert_string_equal(content[1], text);

    /* stop: the text up to the first "a" of the greedy text, finish stop. */
    const char *a = strchr(text, 'a');
    assert_non_null(a);
    j = post("/v1/chat/completions",
             "{\"model\": \"chat\", " USER_MSG
             ", \"max_tokens\": 24, \"temperature\": 0, \"stop\": [\"a\"]}");
    assert_int_equal(strlen(content_of(j, 0)), (size_t)(a - text));
    assert_int_equal(strncmp(content_of(j, 0), text, (size_t)(a - text)), 0);
    assert_string_equal(json_string_value(json_object_get(choice(j, 0), "finish_reason")), "stop");
    json_decref(j);

    j = post("/v1/chat/completions",
             "{\"model\": \"chat\", " USER_MSG ", \"max_tokens\": 3, \"max_completion_tokens\": 5, "
             "\"temperature\": 0}");
    assert_int_equal(usage_of(j, "completion_tokens"), 5);
    json_decref(j);

    const char *seeded = "{\"model\": \"chat\", " USER_MSG ", \"max_tokens\": 16, \"temperature\": "
                         "1, \"top_p\": 0.9, \"seed\": 7, \"presence_penalty\": 0.5, "
                         "\"frequency_penalty\": 0.5}";
    json_t *s1 = post("/v1/chat/completions", seeded), *s2 = post("/v1/chat/completions", seeded);
    assert_string_equal(content_of(s1, 0), content_of(s2, 0));
    json_decref(s1);
    json_decref(s2);

    j = post("/v1/chat/completions", "{\"model\": \"chat\", " USER_MSG
                                     ", \"max_tokens\": 6, \"temperature\": 0, \"logprobs\": true, "
                                     "\"top_logprobs\": 2}");
    json_t *lp = json_object_get(json_object_get(choice(j, 0), "logprobs"), "content");
    assert_int_equal(json_array_size(lp), 6);
    size_t i;
    json_t *e;
    json_array_foreach(lp, i, e)
    {
        const char *t = json_string_value(json_object_get(e, "token"));
        json_t *bytes = json_object_get(e, "bytes");
        assert_int_equal(json_array_size(bytes), strlen(t));
        for (size_t k = 0; k < strlen(t); k++)
            assert_int_equal(json_integer_value(json_array_get(bytes, k)), (unsigned char)t[k]);
        assert_true(json_real_value(json_object_get(e, "logprob")) <= 0);
        json_t *tops = json_object_get(e, "top_logprobs");
        assert_int_equal(json_array_size(tops), 2);
        assert_string_equal(json_string_value(json_object_get(json_array_get(tops, 0), "token")),
                            t);
    }
    json_decref(j);
    j = post("/v1/chat/completions",
             "{\"model\": \"chat\", " USER_MSG ", \"max_tokens\": 2, \"temperature\": 0}");
    assert_true(json_is_null(json_object_get(choice(j, 0), "logprobs")));
    json_decref(j);
    json_decref(ref);
}

/* Token ids of a text without special tokens, as a JSON text (malloc'd). */
static char *ids_of(const char *text)
{
    json_t *req =
        json_pack("{s:s, s:s, s:b}", "model", "chat", "prompt", text, "add_special_tokens", 0);
    char *body = json_dumps(req, JSON_COMPACT);
    json_t *j = post("/tokenize", body);
    char *ids = json_dumps(json_object_get(j, "tokens"), JSON_COMPACT);
    json_decref(j);
    free(body);
    json_decref(req);
    return ids;
}

static char *tokenize_ids(const char *body)
{
    json_t *j = post("/tokenize", body);
    char *ids = json_dumps(json_object_get(j, "tokens"), JSON_COMPACT);
    json_decref(j);
    return ids;
}

/* The template's inputs: add_generation_prompt both ways, a per-request
 * chat_template with chat_template_kwargs, tools and a tool-result turn
 * (the assistant's arguments string parsed back into an object), and
 * continue_final_message with echo. Checked through /tokenize against
 * the expected prompt text. */
static void test_chat_template_options(void **state)
{
    (void)state;
    char *want = ids_of("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    char *got = tokenize_ids(
        "{\"model\": \"chat\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}");
    assert_string_equal(got, want);
    free(want);
    free(got);
    want = ids_of("<|im_start|>user\nHi<|im_end|>\n");
    got = tokenize_ids("{\"model\": \"chat\", \"messages\": [{\"role\": \"user\", \"content\": "
                       "[{\"type\": \"text\", "
                       "\"text\": \"Hi\"}]}], \"add_generation_prompt\": false}");
    assert_string_equal(got, want);
    free(want);
    free(got);
    want = ids_of("Hello Ann: Hi");
    got = tokenize_ids(
        "{\"model\": \"chat\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], "
        "\"chat_template\": \"{{ greeting }} {{ name }}: {{ messages[0].content "
        "}}\", \"chat_template_kwargs\": {\"greeting\": \"Hello\", \"name\": "
        "\"Ann\"}}");
    assert_string_equal(got, want);
    free(want);
    free(got);

    /* A tool-call round trip: the tool list, the assistant's call and the
     * tool's result all reach the prompt. */
    want = ids_of("<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"
                  "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
                  "\"Paris\"}}\n</tool_call><|im_end|>\n<|im_start|>tool\n{\"temp\": "
                  "21}<|im_end|>\n<|im_start|>tools\n[{\"type\": \"function\", \"function\": "
                  "{\"name\": \"get_weather\"}}]<|im_end|>\n<|im_start|>assistant\n");
    const char *turns =
        "\"messages\": [{\"role\": \"user\", \"content\": \"Weather in Paris?\"}, {\"role\": "
        "\"assistant\", \"content\": null, \"tool_calls\": [{\"id\": \"call_1\", \"type\": "
        "\"function\", \"function\": {\"name\": \"get_weather\", \"arguments\": "
        "\"{\\\"city\\\": \\\"Paris\\\"}\"}}]}, {\"role\": \"tool\", \"tool_call_id\": "
        "\"call_1\", \"content\": \"{\\\"temp\\\": 21}\"}], \"tools\": [{\"type\": "
        "\"function\", \"function\": {\"name\": \"get_weather\"}}]";
    char body[2048];
    snprintf(body, sizeof body, "{\"model\": \"chat\", %s}", turns);
    got = tokenize_ids(body);
    assert_string_equal(got, want);
    free(want);
    free(got);
    /* The same turn as a chat completion: the hermes parser reads the
     * output (plain text from this model: no calls, all content), whole
     * and streamed alike. */
    snprintf(body, sizeof body, "{\"model\": \"chat\", %s, \"max_tokens\": 12, \"temperature\": 0}",
             turns);
    json_t *j = post("/v1/chat/completions", body);
    assert_int_equal(
        json_array_size(json_object_get(json_object_get(choice(j, 0), "message"), "tool_calls")),
        0);
    assert_string_equal(json_string_value(json_object_get(choice(j, 0), "finish_reason")),
                        "length");
    char content[4][2048], finish[4][16];
    snprintf(body, sizeof body,
             "{\"model\": \"chat\", %s, \"max_tokens\": 12, \"temperature\": 0, \"stream\": true}",
             turns);
    stream_chat(body, content, finish);
    assert_string_equal(content[0], content_of(j, 0));
    json_decref(j);

    /* continue_final_message: the prompt ends inside the assistant's
     * message; echo puts that message's text before the continuation. */
#define CONT_TURNS                                                                                 \
    "\"model\": \"chat\", \"messages\": [{\"role\": \"user\", \"content\": \"Tell me\"}, "         \
    "{\"role\": \"assistant\", \"content\": \"Once upon\"}], \"add_generation_prompt\": false, "   \
    "\"continue_final_message\": true"
    const char *cont = "{" CONT_TURNS ", \"max_tokens\": 8, \"temperature\": 0%s}";
    want = ids_of("<|im_start|>user\nTell me<|im_end|>\n<|im_start|>assistant\nOnce upon");
    got = tokenize_ids("{" CONT_TURNS "}");
    assert_string_equal(got, want);
    snprintf(body, sizeof body, cont, "");
    json_t *plain = post("/v1/chat/completions", body);
    snprintf(body, sizeof body, cont, ", \"echo\": true");
    json_t *echo = post("/v1/chat/completions", body);
    char joined[1024];
    snprintf(joined, sizeof joined, "Once upon%s", content_of(plain, 0));
    assert_string_equal(content_of(echo, 0), joined);
    snprintf(body, sizeof body, cont, ", \"echo\": true, \"stream\": true");
    stream_chat(body, content, finish);
    assert_string_equal(content[0], joined);
    json_decref(plain);
    json_decref(echo);
    free(want);
    free(got);
}

/* Where the template comes from: tokenizer_config.json (its "default"
 * template, or "tool_use" when tools are given), chat_template.jinja over
 * it, the server's --chat-template for models without one; and Qwen3's
 * real template with chat_template_kwargs {"enable_thinking": false}. */
static void test_chat_template_sources(void **state)
{
    (void)state;
    char *want = ids_of("D:Hi</s>");
    char *got = tokenize_ids("{\"model\": \"tplcfg\", \"messages\": [{\"role\": \"user\", "
                             "\"content\": \"Hi\"}]}");
    assert_string_equal(got, want);
    free(want);
    free(got);
    want = ids_of("T:f");
    got = tokenize_ids("{\"model\": \"tplcfg\", \"messages\": [{\"role\": \"user\", "
                       "\"content\": \"Hi\"}], \"tools\": [{\"type\": \"function\", "
                       "\"function\": {\"name\": \"f\"}}]}");
    assert_string_equal(got, want);
    free(want);
    free(got);
    want = ids_of("J:<s>Hi");
    got = tokenize_ids("{\"model\": \"tpljinja\", \"messages\": [{\"role\": \"user\", "
                       "\"content\": \"Hi\"}]}");
    assert_string_equal(got, want);
    free(want);
    free(got);

    /* --chat-template on a server whose model has no template. */
    char path[512], flag[600];
    snprintf(path, sizeof path, "%s/flag.jinja", scratch);
    write_text(path, "F:{{ messages[0].content }}");
    snprintf(flag, sizeof flag, "--chat-template=%s", path);
    const char *extra[] = {flag, NULL};
    test_server s2;
    assert_true(th_start(&s2, plain_repo(), extra));
    char *resp = NULL;
    assert_int_equal(th_http("POST", th_url(&s2, "/tokenize"),
                             "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}", &resp),
                     200);
    json_t *j = json_loads(resp, 0, NULL);
    got = json_dumps(json_object_get(j, "tokens"), JSON_COMPACT);
    want = ids_of("F:Hi");
    assert_string_equal(got, want);
    free(want);
    free(got);
    json_decref(j);
    free(resp);
    assert_int_equal(th_stop(&s2), 0);

    /* Qwen3's template, thinking off. */
    char cfg[512];
    const char *shared = getenv("CVLLM_SHARED");
    snprintf(cfg, sizeof cfg, "%s/tokenizers/qwen3/tokenizer_config.json",
             shared ? shared : "../shared");
    json_t *qwen3 = json_load_file(cfg, 0, NULL);
    if (!qwen3) {
        printf("skipping Qwen3's template: %s is missing (set CVLLM_SHARED)\n", cfg);
        return;
    }
    json_t *req =
        json_pack("{s:s, s:[{s:s, s:s}], s:O, s:{s:b}}", "model", "chat", "messages", "role",
                  "user", "content", "Hi", "chat_template", json_object_get(qwen3, "chat_template"),
                  "chat_template_kwargs", "enable_thinking", 0);
    char *body = json_dumps(req, JSON_COMPACT);
    got = tokenize_ids(body);
    want = ids_of("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
    assert_string_equal(got, want);
    free(want);
    free(got);
    free(body);
    json_decref(req);
    json_decref(qwen3);
}

/* A client that leaves mid-stream aborts its request; the chat requests
 * count in Triton's metrics like the others. */
static void test_chat_cancel_and_metrics(void **state)
{
    (void)state;
    char u[128], *text = NULL;
    snprintf(u, sizeof u, "http://127.0.0.1:%d/metrics", srv.metrics_port);
    assert_int_equal(th_http("GET", u, NULL, &text), 200);
    double ok0 = th_metric(text, "nv_inference_request_success{model=\"chat\",version=\"1\"}");
    free(text);
    json_decref(post("/v1/chat/completions",
                     "{\"model\": \"chat\", " USER_MSG ", \"max_tokens\": 2, \"temperature\": 0}"));
    assert_int_equal(th_http("GET", u, NULL, &text), 200);
    assert_true(th_metric(text, "nv_inference_request_success{model=\"chat\",version=\"1\"}") ==
                ok0 + 1);
    free(text);

    char *events = NULL;
    th_sse(url("/v1/chat/completions"),
           "{\"model\": \"chat\", " USER_MSG ", \"max_tokens\": 400, \"ignore_eos\": true, "
           "\"stream\": true}",
           3, &events);
    free(events);
    bool cancelled = false;
    for (int i = 0; i < 200 && !cancelled; i++) {
        char *log = th_log(&srv);
        cancelled = strstr(log, "[vllm] Successfully cancelled the request") != NULL;
        free(log);
        usleep(20000);
    }
    assert_true(cancelled);
    bool idle = false;
    for (int i = 0; i < 250 && !idle; i++) {
        assert_int_equal(th_http("GET", u, NULL, &text), 200);
        idle = th_metric(text, "vllm:num_requests_running{model=\"chat\",version=\"1\"}") == 0;
        free(text);
        if (!idle) usleep(20000);
    }
    assert_true(idle);
}

static void test_chat_errors(void **state)
{
    (void)state;
    const char *p = "/v1/chat/completions";
    expect(p, "{\"model\": \"chat\", " USER_MSG ", \"response_format\": {\"type\": \"xml\"}}", 400,
           bad("response_format type 'xml' is not supported (text, json_object, json_schema)"));
    expect(p, "{\"model\": \"chat\", " USER_MSG ", \"top_logprobs\": 2}", 400,
           bad("when using `top_logprobs`, `logprobs` must be set to true."));
    expect(p, "{\"model\": \"chat\", " USER_MSG ", \"logprobs\": true, \"top_logprobs\": -1}", 400,
           bad("`top_logprobs` must be a positive value."));
    expect(p, "{\"model\": \"chat\", " USER_MSG ", \"logprobs\": 2}", 400,
           bad("'logprobs': expected true or false"));
    expect(p, "{\"model\": \"chat\", " USER_MSG ", \"continue_final_message\": true}", 400,
           bad("Cannot set both `continue_final_message` and `add_generation_prompt` to True."));
    expect(p, "{\"model\": \"chat\"}", 400, bad("'messages' is required"));
    expect(p, "{\"model\": \"chat\", " USER_MSG ", \"stream_options\": {\"include_usage\": true}}",
           400, bad("Stream options can only be defined when `stream=True`."));
    expect(p, "{" USER_MSG "}", 400, bad("'model' is required"));
    expect(p, "{\"model\": \"chat\", \"messages\": []}", 400,
           bad("'messages': expected a non-empty list of messages"));
    expect(p, "{\"model\": \"chat\", \"messages\": [{\"content\": \"x\"}]}", 400,
           bad("'messages'[0]: expected an object with a string 'role'"));
    expect(p,
           "{\"model\": \"chat\", \"messages\": [{\"role\": \"user\", \"content\": [{\"type\": "
           "\"image_url\", \"image_url\": {\"url\": \"x\"}}]}]}",
           400,
           bad("'messages'[0].content[0]: only {\"type\": \"text\", \"text\": ...} parts are "
               "supported (cvllm serves text models)"));
    /* tool_choice as vLLM checks it */
    expect(p, "{\"model\": \"chat\", " USER_MSG ", \"tool_choice\": \"required\"}", 400,
           bad("When using `tool_choice`, `tools` must be set."));
    expect(p, "{\"model\": \"chat\", " USER_MSG ", \"tool_choice\": " NAMED "}", 400,
           bad("When using `tool_choice`, `tools` must be set."));
    expect(p, "{\"model\": \"chat\", " USER_MSG ", " CITY_TOOLS ", \"tool_choice\": \"any\"}", 400,
           bad("Invalid value for `tool_choice`: any! Only named tools, \"none\", \"auto\" or "
               "\"required\" are supported."));
    expect(p,
           "{\"model\": \"chat\", " USER_MSG ", " CITY_TOOLS
           ", \"tool_choice\": {\"type\": \"function\", \"function\": {\"name\": \"f\"}}}",
           400,
           bad("The tool specified in `tool_choice` does not match any of the specified "
               "`tools`"));
    expect(p,
           "{\"model\": \"chat\", " USER_MSG ", " CITY_TOOLS
           ", \"tool_choice\": {\"type\": \"function\"}}",
           400,
           bad("Invalid value for `function`: `None` in `tool_choice`! Correct usage: "
               "`{\"type\": \"function\", \"function\": {\"name\": \"my_function\"}}`"));
    expect(p,
           "{\"model\": \"chat\", " USER_MSG ", " CITY_TOOLS
           ", \"tool_choice\": {\"function\": {}}}",
           400,
           bad("Expected field `name` in `function` in `tool_choice`! Correct usage: "
               "`{\"type\": \"function\", \"function\": {\"name\": \"my_function\"}}`"));
    expect(p,
           "{\"model\": \"chat\", " USER_MSG ", " CITY_TOOLS
           ", \"tool_choice\": {\"function\": {\"name\": \"\"}}}",
           400,
           bad("Invalid `name` in `function`: `` in `tool_choice`! Correct usage: "
               "`{\"type\": \"function\", \"function\": {\"name\": \"my_function\"}}`"));
    expect(p,
           "{\"model\": \"chat\", " USER_MSG ", " CITY_TOOLS ", \"tool_choice\": " NAMED
           ", \"guided_regex\": \"a\"}",
           400, bad("You can only either use guided decoding or tools, not both."));
    /* "required" with no tools is "none" (OpenAI): no tool parser needed */
    json_decref(post(p, "{\"model\": \"plain\", " USER_MSG ", \"chat_template\": \"x\", "
                        "\"tools\": [], \"tool_choice\": \"required\", \"max_tokens\": 2}"));
    expect(p, "{\"model\": \"chat\", " USER_MSG ", \"tools\": [{\"type\": \"function\"}]}", 400,
           bad("'tools'[0]: expected {\"type\": \"function\", \"function\": {\"name\": ...}}"));
    expect(p, "{\"model\": \"chat\", " USER_MSG ", \"foo\": 1}", 400,
           bad("unknown sampling parameter 'foo'"));
    expect(p, "{\"model\": \"chat\", " USER_MSG ", \"logit_bias\": {\"5\": 1}}", 400,
           bad("'logit_bias' is not supported"));
    expect(p, "{\"model\": \"chat\", " USER_MSG ", \"temperature\": 0, \"n\": 2}", 400,
           bad("n must be 1 when using greedy sampling, got 2."));
    expect(p, "{\"model\": \"chat\", " USER_MSG ", \"chat_template\": \"{{ x \"}", 400,
           bad("chat template line 1: unexpected end of template, expected '}}'"));
    expect(p, "[1]", 400, bad("the request body must be a JSON object"));
    expect(p, "{\"model\": \"nope\", " USER_MSG "}", 404,
           "{\"error\":{\"message\":\"The model `nope` does not exist.\",\"type\":"
           "\"NotFoundError\",\"param\":null,\"code\":404}}");
    /* plain has no chat template, nor a tool parser. */
    expect(p, "{\"model\": \"plain\", " USER_MSG "}", 400,
           bad("As of transformers v4.44, default chat template is no longer allowed, so you "
               "must provide a chat template if the tokenizer does not define one."));
    expect(p,
           "{\"model\": \"plain\", " USER_MSG ", \"chat_template\": \"x\", \"tools\": "
           "[{\"type\": \"function\", \"function\": {\"name\": \"f\"}}]}",
           400,
           bad("\"auto\" tool choice requires a tool_call_parser (hermes or llama3_json) in the "
               "model's model.json"));
    /* tool_choice none: no parser needed. */
    json_decref(post(p, "{\"model\": \"plain\", " USER_MSG
                        ", \"chat_template\": \"x\", \"tool_choice\": \"none\", \"tools\": "
                        "[{\"type\": \"function\", \"function\": {\"name\": \"f\"}}], "
                        "\"max_tokens\": 2}"));

    expect("/tokenize", "{\"model\": \"chat\", \"prompt\": \"x\", \"foo\": 1}", 400,
           bad("unknown field 'foo'"));
    expect("/tokenize", "{\"model\": \"chat\"}", 400,
           bad("expected either 'prompt' (a string) or 'messages'"));
    expect("/tokenize", "{\"model\": \"chat\", \"prompt\": \"x\", \"add_special_tokens\": 3}", 400,
           bad("'add_special_tokens': expected true or false"));
    expect("/tokenize", "{\"prompt\": \"x\"}", 400,
           bad("'model' is required when the server serves several models"));
    expect("/tokenize", "nonsense", 400,
           bad("failed to parse the request JSON: '[' or '{' expected near 'nonsense'"));
    expect("/detokenize", "{\"model\": \"chat\", \"tokens\": [1, 4096]}", 400,
           bad("'tokens'[1]: expected a token id below the vocabulary size 4096"));
    expect("/detokenize", "{\"model\": \"chat\", \"tokens\": \"x\"}", 400,
           bad("'tokens': expected a list of token ids"));
    json_t *j = post("/tokenize", "{\"model\": \"chat\", \"prompt\": \"Once upon\", "
                                  "\"return_token_strs\": true}");
    assert_string_equal(json_string_value(json_array_get(json_object_get(j, "token_strs"), 0)),
                        "<s>");
    assert_int_equal(json_array_size(json_object_get(j, "token_strs")),
                     json_array_size(json_object_get(j, "tokens")));
    char *ids = json_dumps(json_object_get(j, "tokens"), JSON_COMPACT), body[512];
    snprintf(body, sizeof body, "{\"model\": \"chat\", \"tokens\": %s}", ids);
    json_t *d = post("/detokenize", body);
    assert_string_equal(json_string_value(json_object_get(d, "prompt")), "<s>Once upon");
    free(ids);
    json_decref(d);
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_whole_stream_completions),
        cmocka_unit_test(test_chat_sampling),
        cmocka_unit_test(test_chat_template_options),
        cmocka_unit_test(test_chat_template_sources),
        cmocka_unit_test(test_chat_cancel_and_metrics),
        cmocka_unit_test(test_chat_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

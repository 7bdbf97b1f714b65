/* Chat requests: /v1/chat/completions bodies, the chat template's
 * rendering and tokenization, and /tokenize and /detokenize (see
 * openai_chat.h). */
#include "server/openai_chat.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/openai_chat_internal.h"
#include "template/template.h"
#include "tokenizer/tokenizer.h"

/* transformers' message when there is no template (vLLM passes it on). */
#define NO_TEMPLATE_MSG                                                                            \
    "As of transformers v4.44, default chat template is no longer allowed, so you must provide "   \
    "a chat template if the tokenizer does not define one."

static void chat_state_free(void *p)
{
    cv_chat_state *st = p;
    if (!st) return;
    json_decref(st->messages);
    json_decref(st->tools);
    json_decref(st->documents);
    json_decref(st->kwargs);
    json_decref(st->tool_choice_v);
    free(st->tool_name);
    free(st->chat_template);
    free(st->echo);
    for (int i = 0; st->streams && i < st->n_streams; i++)
        cv_tool_stream_free(&st->streams[i]);
    free(st->streams);
    free(st);
}

/* ---- requests ----------------------------------------------------------- */

/* An optional boolean field (absent or null: *out unchanged). */
static int get_bool(const char *k, json_t *v, bool *out, cv_error *err)
{
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return cv_errorf(err, "'%s': expected true or false", k);
    *out = json_is_true(v);
    return 0;
}

/* The messages as the template sees them (vLLM's "string" content
 * format): text parts joined by newlines, tool-call arguments parsed
 * from their JSON strings. A new array. */
static json_t *normalize_messages(const json_t *in, cv_error *err)
{
    if (!json_is_array(in) || json_array_size(in) == 0) {
        cv_errorf(err, "'messages': expected a non-empty list of messages");
        return NULL;
    }
    json_t *out = json_deep_copy(in);
    size_t i;
    json_t *m;
    json_array_foreach(out, i, m)
    {
        if (!json_is_object(m) || !json_is_string(json_object_get(m, "role"))) {
            cv_errorf(err, "'messages'[%zu]: expected an object with a string 'role'", i);
            goto fail;
        }
        json_t *c = json_object_get(m, "content");
        if (json_is_array(c)) {
            size_t j, total = 0;
            json_t *part;
            json_array_foreach(c, j, part)
            {
                json_t *text = json_object_get(part, "text");
                const char *type = json_string_value(json_object_get(part, "type"));
                if (!type || strcmp(type, "text") || !json_is_string(text)) {
                    cv_errorf(err,
                              "'messages'[%zu].content[%zu]: only {\"type\": \"text\", \"text\": "
                              "...} parts are supported (cvllm serves text models)",
                              i, j);
                    goto fail;
                }
                total += json_string_length(text) + 1;
            }
            char *joined = malloc(total + 1), *w = joined;
            if (!joined) goto oom;
            json_array_foreach(c, j, part)
            {
                json_t *text = json_object_get(part, "text");
                if (j) *w++ = '\n';
                memcpy(w, json_string_value(text), json_string_length(text));
                w += json_string_length(text);
            }
            json_object_set_new(m, "content", json_stringn(joined, (size_t)(w - joined)));
            free(joined);
        } else if (c && !json_is_string(c) && !json_is_null(c)) {
            cv_errorf(err, "'messages'[%zu].content: expected a string or a list of parts", i);
            goto fail;
        }
        size_t j;
        json_t *call;
        json_array_foreach(json_object_get(m, "tool_calls"), j, call)
        {
            json_t *fn = json_object_get(call, "function");
            json_t *args = json_object_get(fn, "arguments");
            json_t *parsed = json_is_string(args)
                                 ? json_loads(json_string_value(args), JSON_DECODE_ANY, NULL)
                                 : NULL;
            if (parsed) json_object_set_new(fn, "arguments", parsed);
        }
    }
    return out;
oom:
    cv_errorf(err, "out of memory");
fail:
    json_decref(out);
    return NULL;
}

static int check_tools(json_t *v, cv_error *err)
{
    size_t i;
    json_t *t;
    if (!json_is_array(v)) return cv_errorf(err, "'tools': expected a list of tools");
    json_array_foreach(v, i, t)
    {
        json_t *fn = json_object_get(t, "function");
        if (!json_is_object(t) || !json_is_string(json_object_get(fn, "name")))
            return cv_errorf(err,
                             "'tools'[%zu]: expected {\"type\": \"function\", \"function\": "
                             "{\"name\": ...}}",
                             i);
    }
    return 0;
}

/* The chat fields that are not sampling parameters. 1 handled, 0 not
 * one of them, -1 bad value. */
static int chat_field(cv_openai_request *r, cv_chat_state *st, const char *k, json_t *v,
                      json_t *sampling, cv_error *err)
{
    if (!strcmp(k, "model")) {
        if (!json_is_string(v) || json_string_length(v) >= sizeof r->model)
            return cv_errorf(err, "'model': expected the name of a served model");
        snprintf(r->model, sizeof r->model, "%s", json_string_value(v));
    } else if (!strcmp(k, "messages")) {
        if (!(st->messages = normalize_messages(v, err))) return -1;
    } else if (!strcmp(k, "stream")) {
        return get_bool(k, v, &r->stream, err) < 0 ? -1 : 1;
    } else if (!strcmp(k, "stream_options")) {
        return cv_openai_stream_options(r, v, err) < 0 ? -1 : 1;
    } else if (!strcmp(k, "echo")) {
        return get_bool(k, v, &r->echo, err) < 0 ? -1 : 1;
    } else if (!strcmp(k, "add_generation_prompt")) {
        return get_bool(k, v, &st->add_generation_prompt, err) < 0 ? -1 : 1;
    } else if (!strcmp(k, "continue_final_message")) {
        return get_bool(k, v, &st->continue_final_message, err) < 0 ? -1 : 1;
    } else if (!strcmp(k, "add_special_tokens")) {
        return get_bool(k, v, &st->add_special_tokens, err) < 0 ? -1 : 1;
    } else if (!strcmp(k, "logprobs")) {
        return get_bool(k, v, &st->logprobs, err) < 0 ? -1 : 1;
    } else if (!strcmp(k, "parallel_tool_calls")) {
        bool ignored;
        return get_bool(k, v, &ignored, err) < 0 ? -1 : 1;
    } else if (!strcmp(k, "top_logprobs")) {
        if (json_is_null(v)) return 1;
        if (!json_is_integer(v)) return cv_errorf(err, "'top_logprobs': expected an integer");
        if (json_integer_value(v) < 0)
            return cv_errorf(err, "`top_logprobs` must be a positive value.");
        st->top_logprobs = json_integer_value(v) > INT_MAX ? INT_MAX : (int)json_integer_value(v);
    } else if (!strcmp(k, "max_completion_tokens") || !strcmp(k, "max_tokens")) {
        /* max_completion_tokens wins (vLLM) */
        if (!json_is_null(v) &&
            (!strcmp(k, "max_completion_tokens") || !json_object_get(sampling, "max_tokens")))
            return json_object_set(sampling, "max_tokens", v) < 0 ? cv_errorf(err, "out of memory")
                                                                  : 1;
    } else if (!strcmp(k, "tools")) {
        if (json_is_null(v)) return 1;
        if (check_tools(v, err) < 0) return -1;
        st->tools = json_incref(v);
    } else if (!strcmp(k, "tool_choice")) {
        if (!json_is_null(v)) st->tool_choice_v = json_incref(v); /* checked with tools */
    } else if (!strcmp(k, "chat_template")) {
        if (json_is_null(v)) return 1;
        if (!json_is_string(v)) return cv_errorf(err, "'chat_template': expected a string");
        if (!(st->chat_template = strdup(json_string_value(v))))
            return cv_errorf(err, "out of memory");
    } else if (!strcmp(k, "chat_template_kwargs")) {
        if (json_is_null(v)) return 1;
        if (!json_is_object(v)) return cv_errorf(err, "'chat_template_kwargs': expected an object");
        st->kwargs = json_incref(v);
    } else if (!strcmp(k, "documents")) {
        if (json_is_null(v)) return 1;
        if (!json_is_array(v)) return cv_errorf(err, "'documents': expected a list");
        st->documents = json_incref(v);
    } else if (!strcmp(k, "logit_bias")) {
        if (!json_is_null(v)) return cv_errorf(err, "'logit_bias' is not supported");
    } else if (!strcmp(k, "user")) {
        if (!json_is_string(v) && !json_is_null(v))
            return cv_errorf(err, "'user': expected a string");
    } else {
        return 0;
    }
    return 1;
}

/* A value as Python's str() shows it in vLLM's messages. malloc'd. */
static char *py_str(const json_t *v)
{
    if (!v || json_is_null(v)) return strdup("None");
    if (json_is_string(v)) return strdup(json_string_value(v));
    if (json_is_boolean(v)) return strdup(json_is_true(v) ? "True" : "False");
    return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

#define TOOL_CHOICE_USAGE                                                                          \
    "Correct usage: `{\"type\": \"function\", \"function\": {\"name\": \"my_function\"}}`"

/* A tool_choice naming a function: its checks as vLLM's (the tools are
 * there); *fn is the tool's function object. */
static int named_choice(const json_t *choice, const json_t *tools, const json_t **fn, cv_error *err)
{
    const json_t *function = json_object_get(choice, "function");
    const json_t *type = json_object_get(choice, "type");
    char *shown = NULL;
    int rc = 0;
    if (!json_is_object(function)) {
        shown = py_str(function);
        rc = cv_errorf(err, "Invalid value for `function`: `%s` in `tool_choice`! %s",
                       shown ? shown : "?", TOOL_CHOICE_USAGE);
    } else if (!json_object_get(function, "name")) {
        rc = cv_errorf(err, "Expected field `name` in `function` in `tool_choice`! %s",
                       TOOL_CHOICE_USAGE);
    } else if (!json_is_string(json_object_get(function, "name")) ||
               json_string_length(json_object_get(function, "name")) == 0) {
        shown = py_str(json_object_get(function, "name"));
        rc = cv_errorf(err, "Invalid `name` in `function`: `%s` in `tool_choice`! %s",
                       shown ? shown : "?", TOOL_CHOICE_USAGE);
    } else if (type && !json_is_null(type) &&
               (!json_is_string(type) || strcmp(json_string_value(type), "function"))) {
        rc = cv_errorf(err, "'tool_choice'.type: expected \"function\"");
    }
    free(shown);
    if (rc < 0) return -1;
    const char *name = json_string_value(json_object_get(function, "name"));
    size_t i;
    const json_t *t;
    json_array_foreach(tools, i, t)
    {
        const json_t *f = json_object_get(t, "function");
        if (!strcmp(json_string_value(json_object_get(f, "name")), name)) {
            *fn = f;
            return 0;
        }
    }
    return cv_errorf(err, "The tool specified in `tool_choice` does not match any of the "
                          "specified `tools`");
}

/* tool_choice, checked as vLLM's ChatCompletionRequest does; "required"
 * and a named function constrain the output with structured outputs (a
 * json schema put in sampling), as vLLM's _get_guided_json_from_tool. */
static int resolve_tool_choice(cv_chat_state *st, json_t *sampling, cv_error *err)
{
    static const char *const structured[] = {"structured_outputs", "guided_json",
                                             "guided_regex",       "guided_choice",
                                             "guided_grammar",     "guided_json_object"};
    const json_t *v = st->tool_choice_v;
    const char *s = json_string_value(v);
    st->tool_choice = v && s && !strcmp(s, "none") ? CV_CHOICE_NONE : CV_CHOICE_AUTO;
    if (!v || st->tool_choice == CV_CHOICE_NONE) return 0;
    if (!st->tools) return cv_errorf(err, "When using `tool_choice`, `tools` must be set.");
    if (s && !strcmp(s, "auto")) return 0;
    if (!json_is_object(v) && !(s && !strcmp(s, "required"))) {
        char *shown = py_str(v);
        cv_errorf(err,
                  "Invalid value for `tool_choice`: %s! Only named tools, \"none\", \"auto\" or "
                  "\"required\" are supported.",
                  shown ? shown : "?");
        free(shown);
        return -1;
    }
    json_t *schema = NULL;
    if (s) {                                   /* required */
        if (json_array_size(st->tools) == 0) { /* OpenAI: as "none", without tools */
            st->tool_choice = CV_CHOICE_NONE;
            json_decref(st->tools);
            st->tools = NULL;
            return 0;
        }
        st->tool_choice = CV_CHOICE_REQUIRED;
        if (!(schema = cv_tools_required_schema(st->tools, err))) return -1;
    } else {
        const json_t *fn = NULL;
        if (named_choice(v, st->tools, &fn, err) < 0) return -1;
        st->tool_choice = CV_CHOICE_NAMED;
        if (!(st->tool_name = strdup(json_string_value(json_object_get(fn, "name")))))
            return cv_errorf(err, "out of memory");
        /* vLLM constrains to the parameters schema; a tool without one
         * gets {} as "required" gives it (vLLM would leave it free) */
        json_t *params = json_object_get(fn, "parameters");
        schema = json_is_object(params) && json_object_size(params) > 0
                     ? json_incref(params)
                     : json_pack("{s:s, s:{}}", "type", "object", "properties");
    }
    bool guided = false;
    for (size_t i = 0; i < sizeof structured / sizeof *structured; i++)
        guided = guided || json_object_get(sampling, structured[i]) != NULL; /* nulls left out */
    const char *rf =
        json_string_value(json_object_get(json_object_get(sampling, "response_format"), "type"));
    if (guided || (rf && strcmp(rf, "text"))) {
        json_decref(schema);
        return cv_errorf(err, "You can only either use guided decoding or tools, not both.");
    }
    if (json_object_set_new(sampling, "structured_outputs", json_pack("{s:o}", "json", schema)) < 0)
        return cv_errorf(err, "out of memory");
    return 0;
}

static int parse_fields(cv_openai_request *r, cv_chat_state *st, json_t *root, cv_error *err)
{
    if (!json_is_object(root)) return cv_errorf(err, "the request body must be a JSON object");
    json_t *sampling = json_object();
    if (!sampling) return cv_errorf(err, "out of memory");
    int rc = 0;
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v)
    {
        int handled = chat_field(r, st, k, v, sampling, err);
        if (handled < 0) rc = -1;
        if (handled == 0 && !json_is_null(v) && json_object_set(sampling, k, v) < 0)
            rc = cv_errorf(err, "out of memory");
        if (rc < 0) break;
    }
    if (rc == 0 && !r->model[0]) rc = cv_errorf(err, "'model' is required");
    if (rc == 0 && !st->messages) rc = cv_errorf(err, "'messages' is required");
    if (rc == 0 && r->stream_options && !r->stream)
        rc = cv_errorf(err, CV_OPENAI_STREAM_OPTIONS_MSG);
    if (rc == 0 && st->top_logprobs > 0 && !st->logprobs)
        rc = cv_errorf(err, "when using `top_logprobs`, `logprobs` must be set to true.");
    if (rc == 0 && st->continue_final_message && st->add_generation_prompt)
        rc = cv_errorf(err,
                       "Cannot set both `continue_final_message` and `add_generation_prompt` to "
                       "True.");
    if (rc == 0) rc = resolve_tool_choice(st, sampling, err);
    if (rc == 0 && st->logprobs &&
        json_object_set_new(sampling, "logprobs", json_integer(st->top_logprobs)) < 0)
        rc = cv_errorf(err, "out of memory");
    if (rc == 0) rc = cv_openai_sampling(r, sampling, err);
    json_decref(sampling);
    return rc;
}

int cv_chat_parse(const char *body, size_t len, uint64_t serial, cv_openai_request *r,
                  cv_error *err)
{
    memset(r, 0, sizeof *r);
    cv_sampling_params_default(&r->sp);
    r->sp.max_tokens = -1; /* vLLM's chat default: up to the context length */
    r->chat = true;
    cv_chat_state *st = calloc(1, sizeof *st);
    r->prompts = calloc(1, sizeof *r->prompts);
    if (!st || !r->prompts) {
        free(st);
        cv_openai_request_free(r);
        return cv_errorf(err, "out of memory");
    }
    r->n_prompts = 1;
    r->chat_state = st;
    r->chat_state_free = chat_state_free;
    st->add_generation_prompt = true;
    json_error_t je;
    json_t *root = json_loadb(body, len, 0, &je);
    int rc = root ? parse_fields(r, st, root, err)
                  : cv_errorf(err, "failed to parse the request JSON: %s", je.text);
    json_decref(root);
    if (rc < 0) {
        cv_openai_request_free(r);
        return -1;
    }
    snprintf(r->id, sizeof r->id, "chatcmpl-%016" PRIx64,
             (uint64_t)(serial * 0x9e3779b97f4a7c15ull));
    r->created = (int64_t)time(NULL);
    st->tool_seq = serial << 20;
    return 0;
}

/* ---- templates ---------------------------------------------------------- */

/* A whole file (malloc'd, NUL-terminated), or NULL with errno set. */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0, got;
    do {
        if (n + 4096 + 1 > cap) {
            cap = (n + 4096 + 1) * 2;
            char *b = realloc(buf, cap);
            if (!b) {
                free(buf);
                fclose(f);
                errno = ENOMEM;
                return NULL;
            }
            buf = b;
        }
        got = fread(buf + n, 1, 4096, f);
        n += got;
    } while (got > 0);
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* A template given as a setting: the text itself when it holds a brace
 * or newline (vLLM), else a file. */
static char *setting_template(const char *v, cv_error *err)
{
    if (strpbrk(v, "{}\n")) {
        char *s = strdup(v);
        if (!s) cv_errorf(err, "out of memory");
        return s;
    }
    size_t len;
    char *s = read_file(v, &len);
    if (!s) cv_errorf(err, "the chat template file '%s' cannot be read: %s", v, strerror(errno));
    return s;
}

static char *template_source(const cv_chat_model *m, const cv_chat_render_args *a,
                             const json_t *cfg, cv_error *err)
{
    if (a->chat_template) { /* a request's is always the text (vLLM) */
        char *t = strdup(a->chat_template);
        if (!t) cv_errorf(err, "out of memory");
        return t;
    }
    if (m->chat_template && m->chat_template[0]) return setting_template(m->chat_template, err);
    char path[4200];
    size_t len;
    snprintf(path, sizeof path, "%s/chat_template.jinja", m->tokenizer_dir);
    char *s = read_file(path, &len);
    if (s) return s;
    json_t *t = json_object_get(cfg, "chat_template");
    if (json_is_array(t)) { /* [{"name","template"}...] */
        json_t *pick = NULL, *e;
        size_t i;
        json_array_foreach(t, i, e)
        {
            const char *name = json_string_value(json_object_get(e, "name"));
            if (name && !strcmp(name, "default") && !pick) pick = e;
            if (name && !strcmp(name, "tool_use") && a->tools) pick = e;
        }
        t = json_object_get(pick, "template");
    }
    if (!json_is_string(t)) {
        cv_errorf(err, NO_TEMPLATE_MSG);
        return NULL;
    }
    if (!(s = strdup(json_string_value(t)))) cv_errorf(err, "out of memory");
    return s;
}

/* tokenizer_config.json (an empty object when absent). */
static json_t *tokenizer_config(const cv_chat_model *m)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", m->tokenizer_dir);
    json_t *cfg = json_load_file(path, 0, NULL);
    return cfg ? cfg : json_object();
}

static json_t *render_context(const cv_chat_render_args *a, const json_t *messages,
                              const json_t *cfg)
{
    json_t *ctx = json_pack("{s:O, s:O, s:O, s:b}", "messages", messages, "tools",
                            a->tools ? a->tools : json_null(), "documents",
                            a->documents ? a->documents : json_null(), "add_generation_prompt",
                            a->add_generation_prompt);
    static const char *const special[] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    for (size_t i = 0; ctx && i < sizeof special / sizeof *special; i++) {
        json_t *t = json_object_get(cfg, special[i]);
        if (json_is_object(t)) t = json_object_get(t, "content"); /* AddedToken */
        if (json_is_string(t)) json_object_set(ctx, special[i], t);
    }
    if (ctx && a->kwargs) json_object_update(ctx, (json_t *)a->kwargs);
    return ctx;
}

/* transformers' continue_final_message: the text up to the end of the
 * final message's (stripped) content, so the model continues it. */
static int cut_after_final(char *out, const json_t *messages, cv_error *err)
{
    json_t *last = json_array_get(messages, json_array_size(messages) - 1);
    const char *c = json_string_value(json_object_get(last, "content"));
    if (!c)
        return cv_errorf(err, "continue_final_message is set but we could not find any text to "
                              "continue in the final message!");
    size_t n = strlen(c);
    while (n && strchr(" \t\n\r\f\v", c[0])) {
        c++;
        n--;
    }
    while (n && strchr(" \t\n\r\f\v", c[n - 1]))
        n--;
    char *needle = malloc(n + 1), *hit = NULL;
    if (!needle) return cv_errorf(err, "out of memory");
    memcpy(needle, c, n);
    needle[n] = '\0';
    if (n == 0) hit = out + strlen(out);
    for (char *p = out; n && (p = strstr(p, needle)); p++) /* the last occurrence */
        hit = p;
    free(needle);
    if (!hit)
        return cv_errorf(err,
                         "continue_final_message is set but the final message does not appear "
                         "in the chat after applying the chat template! This can happen if the "
                         "chat template deletes portions of the final message. Please verify the "
                         "chat template and final message in your chat to ensure they are "
                         "compatible.");
    hit[n] = '\0';
    return 0;
}

char *cv_chat_render(const cv_chat_model *m, const cv_chat_render_args *a, cv_error *err)
{
    if (a->continue_final_message && a->add_generation_prompt) {
        cv_errorf(err, "Cannot set both `continue_final_message` and `add_generation_prompt` to "
                       "True.");
        return NULL;
    }
    json_t *messages = normalize_messages(a->messages, err);
    if (!messages) return NULL;
    json_t *cfg = tokenizer_config(m);
    char *src = cfg ? template_source(m, a, cfg, err) : NULL;
    cv_template *t = src ? cv_template_compile(src, strlen(src), err) : NULL;
    json_t *ctx = t ? render_context(a, messages, cfg) : NULL;
    char *out = ctx ? cv_template_render(t, ctx, err) : NULL;
    if (t && !ctx) cv_errorf(err, "out of memory");
    if (out && a->continue_final_message && cut_after_final(out, messages, err) < 0) {
        free(out);
        out = NULL;
    }
    json_decref(ctx);
    cv_template_free(t);
    free(src);
    json_decref(cfg);
    json_decref(messages);
    return out;
}

int cv_chat_prepare(cv_openai_request *r, const cv_chat_model *m, cv_error *err)
{
    cv_chat_state *st = r->chat_state;
    if (st->tools && st->tool_choice == CV_CHOICE_AUTO) {
        st->parser = cv_tool_parser_named(m->tool_call_parser);
        if (st->parser == CV_TOOLS_NONE)
            return cv_errorf(err, "\"auto\" tool choice requires a tool_call_parser (hermes or "
                                  "llama3_json) in the model's model.json");
        /* the tool-call markers may be special tokens (vLLM's hermes parser) */
        r->sp.skip_special_tokens = false;
    }
    cv_chat_render_args a = {
        .messages = st->messages,
        .tools = st->tools,
        .documents = st->documents,
        .kwargs = st->kwargs,
        .chat_template = st->chat_template,
        .add_generation_prompt = st->add_generation_prompt,
        .continue_final_message = st->continue_final_message,
    };
    char *text = cv_chat_render(m, &a, err);
    if (!text) return -1;
    cv_openai_prompt *p = &r->prompts[0];
    int rc =
        tok_encode(m->tok, text, strlen(text), st->add_special_tokens, &p->ids, &p->n_ids, err);
    free(text);
    if (rc < 0) return -1;
    if (p->n_ids == 0) return cv_errorf(err, "the rendered chat prompt is empty");
    json_t *last = json_array_get(st->messages, json_array_size(st->messages) - 1);
    const char *role = json_string_value(json_object_get(last, "role"));
    json_t *content = json_object_get(last, "content");
    /* vLLM's echo: the final message's content when it is the assistant's */
    if (r->echo && role && !strcmp(role, "assistant") && json_is_string(content)) {
        st->echo_len = json_string_length(content);
        if (!(st->echo = strdup(json_string_value(content))))
            return cv_errorf(err, "out of memory");
    }
    return 0;
}

/* ---- /tokenize and /detokenize ------------------------------------------ */

static int check_keys(const json_t *body, const char *const *allowed, cv_error *err)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)body, k, v)
    {
        bool ok = false;
        for (int i = 0; allowed[i] && !ok; i++)
            ok = !strcmp(k, allowed[i]);
        if (!ok) return cv_errorf(err, "unknown field '%s'", k);
    }
    return 0;
}

json_t *cv_openai_tokenize(const cv_chat_model *m, const json_t *body, cv_error *err)
{
    static const char *const keys[] = {"model",
                                       "prompt",
                                       "messages",
                                       "add_special_tokens",
                                       "add_generation_prompt",
                                       "continue_final_message",
                                       "return_token_strs",
                                       "tools",
                                       "chat_template",
                                       "chat_template_kwargs",
                                       "documents",
                                       NULL};
    if (check_keys(body, keys, err) < 0) return NULL;
    json_t *prompt = json_object_get(body, "prompt"), *messages = json_object_get(body, "messages");
    if (!json_is_string(prompt) == !messages) {
        cv_errorf(err, "expected either 'prompt' (a string) or 'messages'");
        return NULL;
    }
    bool add_special = !messages, add_gen = true, cont = false, strs = false;
    if (get_bool("add_special_tokens", json_object_get(body, "add_special_tokens"), &add_special,
                 err) < 0 ||
        get_bool("add_generation_prompt", json_object_get(body, "add_generation_prompt"), &add_gen,
                 err) < 0 ||
        get_bool("continue_final_message", json_object_get(body, "continue_final_message"), &cont,
                 err) < 0 ||
        get_bool("return_token_strs", json_object_get(body, "return_token_strs"), &strs, err) < 0)
        return NULL;
    json_t *tools = json_object_get(body, "tools"),
           *kwargs = json_object_get(body, "chat_template_kwargs");
    json_t *tpl = json_object_get(body, "chat_template");
    if ((json_is_null(tools) ? 0 : tools && check_tools(tools, err)) < 0) return NULL;
    if (kwargs && !json_is_null(kwargs) && !json_is_object(kwargs)) {
        cv_errorf(err, "'chat_template_kwargs': expected an object");
        return NULL;
    }
    if (tpl && !json_is_null(tpl) && !json_is_string(tpl)) {
        cv_errorf(err, "'chat_template': expected a string");
        return NULL;
    }
    char *text = NULL;
    if (messages) {
        cv_chat_render_args a = {
            .messages = messages,
            .tools = json_is_array(tools) ? tools : NULL,
            .documents = json_is_array(json_object_get(body, "documents"))
                             ? json_object_get(body, "documents")
                             : NULL,
            .kwargs = json_is_object(kwargs) ? kwargs : NULL,
            .chat_template = json_string_value(tpl),
            .add_generation_prompt = add_gen,
            .continue_final_message = cont,
        };
        if (!(text = cv_chat_render(m, &a, err))) return NULL;
    }
    const char *src = text ? text : json_string_value(prompt);
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tok_encode(m->tok, src, strlen(src), add_special, &ids, &n, err);
    free(text);
    if (rc < 0) return NULL;
    json_t *tokens = json_array(), *token_strs = strs ? json_array() : json_null();
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(tokens, json_integer(ids[i]));
        const char *s = tok_id_to_token(m->tok, ids[i]);
        if (strs) json_array_append_new(token_strs, json_string(s ? s : ""));
    }
    free(ids);
    return json_pack("{s:i, s:i, s:o, s:o}", "count", (int)n, "max_model_len", m->max_model_len,
                     "tokens", tokens, "token_strs", token_strs);
}

json_t *cv_openai_detokenize(const cv_chat_model *m, const json_t *body, cv_error *err)
{
    static const char *const keys[] = {"model", "tokens", NULL};
    if (check_keys(body, keys, err) < 0) return NULL;
    json_t *tokens = json_object_get(body, "tokens");
    if (!json_is_array(tokens)) {
        cv_errorf(err, "'tokens': expected a list of token ids");
        return NULL;
    }
    size_t n = json_array_size(tokens);
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids) {
        cv_errorf(err, "out of memory");
        return NULL;
    }
    const int vocab = tok_vocab_size(m->tok);
    for (size_t i = 0; i < n; i++) {
        json_t *id = json_array_get(tokens, i);
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= vocab) {
            free(ids);
            cv_errorf(err, "'tokens'[%zu]: expected a token id below the vocabulary size %d", i,
                      vocab);
            return NULL;
        }
        ids[i] = (int32_t)json_integer_value(id);
    }
    char *text = NULL;
    size_t len = 0;
    int rc = tok_decode(m->tok, ids, n, false, &text, &len, err);
    free(ids);
    if (rc < 0) return NULL;
    json_t *out = json_pack("{s:s%}", "prompt", text ? text : "", text ? len : 0);
    free(text);
    return out;
}

/* Protocol-independent vllm-model requests and responses (see infer.h). */
#include "server/infer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cv_infer_request_init(cv_infer_request *r)
{
    memset(r, 0, sizeof *r);
    r->exclude_input = -1;
}

void cv_infer_request_free(cv_infer_request *r)
{
    free(r->prompt);
    free(r->sampling_json);
    json_decref(r->params);
    if (r->sp_ready) cv_sampling_params_free(&r->sp);
    cv_infer_request_init(r);
}

static int check_input(const cv_model *m, const char *name, cv_data_type given, cv_error *err)
{
    const cv_tensor_config *t = cv_model_config_input(&m->cfg, name);
    if (!t) return cv_errorf(err, "unexpected inference input '%s' for model '%s'", name, m->name);
    if (t->data_type != given)
        return cv_errorf(err, "inference input '%s' data-type is '%s', but model '%s' expects '%s'",
                         name, cv_data_type_kserve(given), m->name,
                         cv_data_type_kserve(t->data_type));
    return 0;
}

int cv_infer_set_bool(cv_infer_request *r, const cv_model *m, const char *name, bool v,
                      cv_error *err)
{
    if (check_input(m, name, CV_TYPE_BOOL, err) < 0) return -1;
    r->n_inputs++;
    if (!strcmp(name, "stream"))
        r->stream = v;
    else if (!strcmp(name, "exclude_input_in_output"))
        r->exclude_input = v;
    else if (!strcmp(name, "return_finish_reason"))
        r->ret_finish_reason = v;
    else if (!strcmp(name, "return_cumulative_logprob"))
        r->ret_cumulative_logprob = v;
    else if (!strcmp(name, "return_logprobs"))
        r->ret_logprobs = v;
    else if (!strcmp(name, "return_num_input_tokens"))
        r->ret_num_input_tokens = v;
    else if (!strcmp(name, "return_num_output_tokens"))
        r->ret_num_output_tokens = v;
    return 0;
}

int cv_infer_set_bytes(cv_infer_request *r, const cv_model *m, const char *name, const char *data,
                       size_t len, cv_error *err)
{
    if (check_input(m, name, CV_TYPE_STRING, err) < 0) return -1;
    char **dst = !strcmp(name, "text_input")            ? &r->prompt
                 : !strcmp(name, "sampling_parameters") ? &r->sampling_json
                                                        : NULL;
    r->n_inputs++;
    if (!dst) return 0;
    char *copy = malloc(len + 1);
    if (!copy) return cv_errorf(err, "out of memory copying input '%s' (%zu bytes)", name, len);
    memcpy(copy, data, len);
    copy[len] = '\0';
    free(*dst);
    *dst = copy;
    if (dst == &r->prompt) {
        r->prompt_len = len;
        r->has_prompt = true;
    }
    return 0;
}

int cv_infer_set_param(cv_infer_request *r, const char *key, json_t *value, cv_error *err)
{
    if (!r->params && !(r->params = json_object())) {
        json_decref(value);
        return cv_errorf(err, "out of memory");
    }
    if (json_object_set_new(r->params, key, value) < 0)
        return cv_errorf(err, "invalid request parameter name '%s'", key);
    return 0;
}

/* Request parameters that Triton itself consumes; never sampling fields. */
static bool reserved_param(const char *key)
{
    static const char *const names[] = {"sequence_id",        "sequence_start", "sequence_end",
                                        "priority",           "timeout",        "headers",
                                        "binary_data_output", "binary_data"};
    if (!strncmp(key, "triton_", 7)) return true;
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!strcmp(key, names[i])) return true;
    return false;
}

static int check_lora(const cv_model *m, const char *lora, cv_error *err)
{
    if (!m->extra.enable_lora) return cv_errorf(err, "LoRA feature is not enabled.");
    char list[1024] = "";
    size_t off = 0;
    for (int i = 0; i < m->extra.n_loras; i++) {
        if (!strcmp(m->extra.lora_names[i], lora)) return 0; /* the engine applies it */
        off += (size_t)snprintf(list + off, off < sizeof list ? sizeof list - off : 0, "%s'%s'",
                                i ? ", " : "", m->extra.lora_names[i]);
        if (off >= sizeof list) off = sizeof list - 1;
    }
    return cv_errorf(err, "LoRA %s is not supported, we currently support [%s]", lora, list);
}

/* ---- the JSON body of /generate ------------------------------------------ */

/* One JSON value into input `name` of the model (a scalar to shape [1]). */
static int set_input(cv_infer_request *ir, const cv_model *m, const char *name, json_t *v,
                     cv_error *err)
{
    const cv_tensor_config *t = cv_model_config_input(&m->cfg, name);
    if (t->data_type == CV_TYPE_BOOL) {
        if (!json_is_boolean(v))
            return cv_errorf(err, "unable to parse '%s': expected a boolean", name);
        return cv_infer_set_bool(ir, m, name, json_is_true(v), err);
    }
    if (!json_is_string(v)) return cv_errorf(err, "unable to parse '%s': expected a string", name);
    return cv_infer_set_bytes(ir, m, name, json_string_value(v), json_string_length(v), err);
}

int cv_infer_set_json(cv_infer_request *ir, const cv_model *m, json_t *body, cv_error *err)
{
    const char *k;
    json_t *v;
    json_object_foreach(body, k, v)
    {
        if (!strcmp(k, "parameters")) {
            if (!json_is_object(v))
                return cv_errorf(err, "unable to parse 'parameters': expected an object");
            const char *pk;
            json_t *pv;
            json_object_foreach(v, pk, pv)
            {
                int rc = cv_model_config_input(&m->cfg, pk)
                             ? set_input(ir, m, pk, pv, err)
                             : cv_infer_set_param(ir, pk, json_incref(pv), err);
                if (rc < 0) return -1;
            }
        } else if (cv_model_config_input(&m->cfg, k)) {
            if (set_input(ir, m, k, v, err) < 0) return -1;
        } else if (cv_infer_set_param(ir, k, json_incref(v), err) < 0) {
            return -1;
        }
    }
    return 0;
}

int cv_infer_check(const cv_infer_request *r, const cv_model *m, cv_error *err)
{
    if (!r->has_prompt)
        return cv_errorf(err,
                         "expected number of inputs between 1 and %d but got %d inputs for "
                         "model '%s'",
                         m->cfg.n_inputs, r->n_inputs, m->name);
    return 0;
}

/* An error the backend raises inside its generate loop: the class of
 * pb_utils.TritonError and the loop's message prefix. */
static int generate_error(cv_error *err)
{
    char msg[CV_ERROR_MSG_BYTES];
    snprintf(msg, sizeof msg, "%s", err->msg);
    return cv_errorf_class(err, CV_ERR_INTERNAL, "Error generating stream: %s", msg);
}

int cv_infer_prepare(cv_infer_request *r, const cv_model *m, cv_error *err)
{
    if (!cv_model_healthy(m))
        return cv_errorf_class(err, CV_ERR_UNAVAILABLE, CV_MODEL_UNHEALTHY_MSG);
    if (r->stream && r->exclude_input == 0) {
        cv_errorf(err, "When streaming, `exclude_input_in_output` = False is not allowed.");
        return generate_error(err);
    }
    return cv_infer_sampling(r, m, err);
}

int cv_infer_sampling(cv_infer_request *r, const cv_model *m, cv_error *err)
{
    json_t *obj;
    if (r->sampling_json) {
        json_error_t je;
        obj = json_loads(r->sampling_json, 0, &je);
        if (!obj || !json_is_object(obj)) {
            json_decref(obj);
            cv_errorf(err, "sampling_parameters: expected a JSON object: %s",
                      obj ? "not an object" : je.text);
            return generate_error(err);
        }
    } else {
        obj = json_object();
        if (!obj) return cv_errorf(err, "out of memory");
        const char *k;
        json_t *v;
        json_object_foreach(r->params, k, v)
        {
            if (!reserved_param(k)) json_object_set(obj, k, v);
        }
    }
    json_t *lora = json_object_get(obj, "lora_name");
    if (lora && !json_is_string(lora)) {
        json_decref(obj);
        cv_errorf(err, "lora_name: expected a string");
        return generate_error(err);
    }
    /* The backend answers LoRA errors before its generate loop: no prefix. */
    if (lora && check_lora(m, json_string_value(lora), err) < 0) {
        json_decref(obj);
        err->cls = CV_ERR_INTERNAL;
        return -1;
    }
    char *text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (!text) return cv_errorf(err, "out of memory");
    if (r->sp_ready) cv_sampling_params_free(&r->sp);
    cv_sampling_params_default(&r->sp);
    r->sp_ready = true;
    int rc = cv_sampling_params_from_json(&r->sp, text, strlen(text), err);
    free(text);
    if (rc == 0) rc = cv_sampling_params_validate(&r->sp, err);
    return rc < 0 ? generate_error(err) : 0;
}

uint64_t cv_infer_submit(cv_infer_request *r, cv_model *m, cv_output_queue *sink, void *user_data,
                         cv_error *err)
{
    cv_request_desc d = {
        .prompt = r->prompt,
        .prompt_len = r->prompt_len,
        .params = &r->sp,
        .stream = r->stream,
        .sink = sink,
        .user_data = user_data,
    };
    uint64_t id = cv_engine_add_request(m->engine, &d, err);
    if (id)
        atomic_fetch_add(&m->counters.pending, 1);
    else if (err && err->cls != CV_ERR_UNAVAILABLE)
        generate_error(err);
    return id;
}

/* ---- responses ---------------------------------------------------------- */

static cv_out_tensor *add_tensor(cv_infer_response *resp, const char *name, cv_data_type type,
                                 int n)
{
    cv_out_tensor *t = &resp->t[resp->n_tensors++];
    memset(t, 0, sizeof *t);
    t->name = name;
    t->type = type;
    t->n = n;
    if (type == CV_TYPE_STRING) {
        t->bytes = calloc((size_t)n, sizeof *t->bytes);
        t->lens = calloc((size_t)n, sizeof *t->lens);
        return t->bytes && t->lens ? t : NULL;
    }
    if (type == CV_TYPE_FP32) return (t->f32 = calloc((size_t)n, sizeof *t->f32)) ? t : NULL;
    return (t->u32 = calloc((size_t)n, sizeof *t->u32)) ? t : NULL;
}

static char *dup_bytes(const char *a, size_t na, const char *b, size_t nb)
{
    char *s = malloc(na + nb + 1);
    if (!s) return NULL;
    if (na) memcpy(s, a, na);
    if (nb) memcpy(s + na, b, nb);
    s[na + nb] = '\0';
    return s;
}

/* vLLM's logprobs output: a JSON list, one object per new token, mapping
 * each candidate token id to {"logprob","rank","decoded_token"}. */
static char *logprobs_json(const cv_seq_output *s)
{
    if (!s->logprobs) return strdup("null");
    json_t *arr = json_array();
    for (int i = 0; arr && i < s->n_tokens; i++) {
        json_t *pos = json_object();
        const cv_token_logprobs *lp = &s->logprobs[i];
        for (int j = 0; pos && j < lp->n; j++) {
            const cv_top_logprob *e = &lp->entries[j];
            char id[16];
            snprintf(id, sizeof id, "%d", e->token_id);
            json_object_set_new(pos, id,
                                json_pack("{s:f, s:i, s:s}", "logprob", (double)e->logprob, "rank",
                                          e->rank, "decoded_token",
                                          e->decoded_token ? e->decoded_token : ""));
        }
        json_array_append_new(arr, pos);
    }
    char *text = arr ? json_dumps(arr, JSON_COMPACT) : NULL;
    json_decref(arr);
    return text;
}

int cv_infer_response_build(const cv_infer_request *r, const cv_request_output *out,
                            cv_infer_response *resp, cv_error *err)
{
    memset(resp, 0, sizeof *resp);
    int n = out->n_seqs;
    /* Non-streamed text carries the prompt unless exclude_input_in_output. */
    bool prepend = !r->stream && r->exclude_input != 1;
    cv_out_tensor *t = add_tensor(resp, "text_output", CV_TYPE_STRING, n);
    for (int i = 0; t && i < n; i++) {
        const cv_seq_output *s = &out->seqs[i];
        t->lens[i] = (prepend ? r->prompt_len : 0) + s->text_len;
        if (!(t->bytes[i] = dup_bytes(prepend ? r->prompt : "", prepend ? r->prompt_len : 0,
                                      s->text ? s->text : "", s->text_len)))
            t = NULL;
    }
    if (t && r->ret_finish_reason && (t = add_tensor(resp, "finish_reason", CV_TYPE_STRING, n))) {
        for (int i = 0; t && i < n; i++) {
            const char *name = cv_finish_reason_name(out->seqs[i].finish_reason);
            t->lens[i] = strlen(name);
            if (!(t->bytes[i] = strdup(name))) t = NULL;
        }
    }
    if (t && r->ret_cumulative_logprob &&
        (t = add_tensor(resp, "cumulative_logprob", CV_TYPE_FP32, n))) {
        for (int i = 0; i < n; i++)
            t->f32[i] = (float)out->seqs[i].cumulative_logprob;
    }
    if (t && r->ret_logprobs && (t = add_tensor(resp, "logprobs", CV_TYPE_STRING, n))) {
        for (int i = 0; t && i < n; i++) {
            if (!(t->bytes[i] = logprobs_json(&out->seqs[i])))
                t = NULL;
            else
                t->lens[i] = strlen(t->bytes[i]);
        }
    }
    if (t && r->ret_num_input_tokens &&
        (t = add_tensor(resp, "num_input_tokens", CV_TYPE_UINT32, 1)))
        t->u32[0] = (uint32_t)out->n_prompt_tokens;
    if (t && r->ret_num_output_tokens &&
        (t = add_tensor(resp, "num_output_tokens", CV_TYPE_UINT32, n))) {
        for (int i = 0; i < n; i++)
            t->u32[i] = (uint32_t)out->seqs[i].n_tokens;
    }
    if (!t) {
        cv_infer_response_free(resp);
        return cv_errorf(err, "out of memory building the response");
    }
    return 0;
}

void cv_infer_response_free(cv_infer_response *resp)
{
    for (int i = 0; i < resp->n_tensors; i++) {
        cv_out_tensor *t = &resp->t[i];
        for (int j = 0; t->bytes && j < t->n; j++)
            free(t->bytes[j]);
        free(t->bytes);
        free(t->lens);
        free(t->f32);
        free(t->u32);
    }
    memset(resp, 0, sizeof *resp);
}

static json_t *element_json(const cv_out_tensor *t, int i)
{
    if (t->type == CV_TYPE_STRING) return json_stringn_nocheck(t->bytes[i], t->lens[i]);
    if (t->type == CV_TYPE_FP32) return json_real(t->f32[i]);
    return json_integer(t->u32[i]);
}

json_t *cv_infer_response_json(const cv_infer_response *resp, const char *model,
                               const char *version)
{
    json_t *o = json_pack("{s:s, s:s}", "model_name", model, "model_version", version);
    for (int i = 0; o && i < resp->n_tensors; i++) {
        const cv_out_tensor *t = &resp->t[i];
        json_t *v;
        if (t->n == 1) {
            v = element_json(t, 0);
        } else {
            v = json_array();
            for (int j = 0; v && j < t->n; j++)
                json_array_append_new(v, element_json(t, j));
        }
        json_object_set_new(o, t->name, v);
    }
    return o;
}

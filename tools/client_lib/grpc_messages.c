/* ModelInferRequest encoding and ModelStreamInferResponse decoding with the
 * protobuf-c classes of proto/grpc_service.proto. Inputs travel as
 * raw_input_contents (one entry per input tensor, in tensor order), as
 * tritonclient sends them; outputs are read from raw_output_contents or,
 * for servers that fill them, from the typed contents fields. */
#include "client.h"

#include <stdlib.h>
#include <string.h>

#include "grpc_service.pb-c.h"

void cvc_request_init(cvc_request *r)
{
    memset(r, 0, sizeof *r);
    r->stream = -1;
    r->exclude_input_in_output = -1;
}

enum { MAX_INPUTS = 8 };

/* Request under construction: tensors and their raw contents, all owned. */
typedef struct req_builder {
    Inference__ModelInferRequest__InferInputTensor tensors[MAX_INPUTS];
    Inference__ModelInferRequest__InferInputTensor *tensor_ptrs[MAX_INPUTS];
    ProtobufCBinaryData raw[MAX_INPUTS];
    int64_t shape_one;
    size_t n;
} req_builder;

static int add_input(req_builder *b, const char *name, const char *datatype, uint8_t *raw,
                     size_t raw_len)
{
    Inference__ModelInferRequest__InferInputTensor init =
        INFERENCE__MODEL_INFER_REQUEST__INFER_INPUT_TENSOR__INIT;
    b->tensors[b->n] = init;
    b->tensors[b->n].name = (char *)name;
    b->tensors[b->n].datatype = (char *)datatype;
    b->tensors[b->n].n_shape = 1;
    b->tensors[b->n].shape = &b->shape_one;
    b->tensor_ptrs[b->n] = &b->tensors[b->n];
    b->raw[b->n].data = raw;
    b->raw[b->n].len = raw_len;
    b->n++;
    return 0;
}

static int add_bytes(req_builder *b, const char *name, const char *text, size_t len, cv_error *err)
{
    uint8_t *raw = NULL;
    size_t raw_len = 0;
    if (cvc_bytes_append(&raw, &raw_len, text, len, err))
        return cv_error_prefix(err, "input '%s'", name);
    return add_input(b, name, "BYTES", raw, raw_len);
}

static int add_bool(req_builder *b, const char *name, bool v, cv_error *err)
{
    uint8_t *raw = malloc(1);
    if (!raw) return cv_errorf(err, "out of memory encoding input '%s'", name);
    raw[0] = cvc_bool_encode(v);
    return add_input(b, name, "BOOL", raw, 1);
}

static int build_inputs(req_builder *b, const cvc_request *req, cv_error *err)
{
    if (add_bytes(b, "text_input", req->text_input, req->text_input_len, err)) return -1;
    if (req->stream >= 0 && add_bool(b, "stream", req->stream != 0, err)) return -1;
    if (req->sampling_parameters && add_bytes(b, "sampling_parameters", req->sampling_parameters,
                                              strlen(req->sampling_parameters), err))
        return -1;
    if (req->exclude_input_in_output >= 0 &&
        add_bool(b, "exclude_input_in_output", req->exclude_input_in_output != 0, err))
        return -1;
    if (req->return_num_input_tokens && add_bool(b, "return_num_input_tokens", true, err))
        return -1;
    if (req->return_num_output_tokens && add_bool(b, "return_num_output_tokens", true, err))
        return -1;
    if (req->return_finish_reason && add_bool(b, "return_finish_reason", true, err)) return -1;
    return 0;
}

int cvc_request_encode(const cvc_request *req, uint8_t **buf, size_t *len, cv_error *err)
{
    *buf = NULL;
    *len = 0;
    if (!req->model_name || !req->model_name[0])
        return cv_errorf(err, "request without a model name");
    if (!req->text_input)
        return cv_errorf(err, "request '%s' without text_input", req->id ? req->id : "");
    req_builder b = {.shape_one = 1};
    Inference__ModelInferRequest__ParametersEntry *entries = NULL, **entry_ptrs = NULL;
    Inference__InferParameter *values = NULL;
    Inference__ModelInferRequest__InferRequestedOutputTensor *outs = NULL, **out_ptrs = NULL;
    int rc = -1;
    if (build_inputs(&b, req, err)) goto out;
    if (req->n_params) {
        entries = calloc(req->n_params, sizeof *entries);
        entry_ptrs = calloc(req->n_params, sizeof *entry_ptrs);
        values = calloc(req->n_params, sizeof *values);
        if (!entries || !entry_ptrs || !values) {
            cv_errorf(err, "out of memory encoding request parameters");
            goto out;
        }
    }
    for (size_t i = 0; i < req->n_params; i++) {
        const cvc_param *p = &req->params[i];
        Inference__ModelInferRequest__ParametersEntry e =
            INFERENCE__MODEL_INFER_REQUEST__PARAMETERS_ENTRY__INIT;
        Inference__InferParameter v = INFERENCE__INFER_PARAMETER__INIT;
        switch (p->kind) {
        case CVC_PARAM_BOOL:
            v.parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM;
            v.bool_param = p->b;
            break;
        case CVC_PARAM_INT64:
            v.parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_INT64_PARAM;
            v.int64_param = p->i;
            break;
        case CVC_PARAM_STRING:
            v.parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_STRING_PARAM;
            v.string_param = (char *)(p->s ? p->s : "");
            break;
        case CVC_PARAM_DOUBLE:
            v.parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_DOUBLE_PARAM;
            v.double_param = p->d;
            break;
        }
        values[i] = v;
        entries[i] = e;
        entries[i].key = (char *)p->key;
        entries[i].value = &values[i];
        entry_ptrs[i] = &entries[i];
    }
    if (req->n_outputs) {
        outs = calloc(req->n_outputs, sizeof *outs);
        out_ptrs = calloc(req->n_outputs, sizeof *out_ptrs);
        if (!outs || !out_ptrs) {
            cv_errorf(err, "out of memory encoding requested outputs");
            goto out;
        }
    }
    for (size_t i = 0; i < req->n_outputs; i++) {
        Inference__ModelInferRequest__InferRequestedOutputTensor o =
            INFERENCE__MODEL_INFER_REQUEST__INFER_REQUESTED_OUTPUT_TENSOR__INIT;
        outs[i] = o;
        outs[i].name = (char *)req->outputs[i];
        out_ptrs[i] = &outs[i];
    }
    Inference__ModelInferRequest msg = INFERENCE__MODEL_INFER_REQUEST__INIT;
    msg.model_name = (char *)req->model_name;
    if (req->model_version) msg.model_version = (char *)req->model_version;
    if (req->id) msg.id = (char *)req->id;
    msg.n_parameters = req->n_params;
    msg.parameters = entry_ptrs;
    msg.n_inputs = b.n;
    msg.inputs = b.tensor_ptrs;
    msg.n_outputs = req->n_outputs;
    msg.outputs = out_ptrs;
    msg.n_raw_input_contents = b.n;
    msg.raw_input_contents = b.raw;
    size_t n = inference__model_infer_request__get_packed_size(&msg);
    *buf = malloc(n ? n : 1);
    if (!*buf) {
        cv_errorf(err, "out of memory serializing request '%s' (%zu bytes)", msg.id, n);
        goto out;
    }
    *len = inference__model_infer_request__pack(&msg, *buf);
    rc = 0;
out:
    for (size_t i = 0; i < b.n; i++)
        free(b.raw[i].data);
    free(entries);
    free(entry_ptrs);
    free(values);
    free(outs);
    free(out_ptrs);
    return rc;
}

void cvc_response_free(cvc_response *r)
{
    free(r->id);
    free(r->error_message);
    for (size_t i = 0; i < r->n_text; i++)
        free(r->text[i]);
    free(r->text);
    free(r->text_len);
    free(r->finish_reason);
    memset(r, 0, sizeof *r);
    r->num_input_tokens = -1;
    r->num_output_tokens = -1;
}

static char *dup_n(const void *s, size_t n)
{
    char *d = malloc(n + 1);
    if (!d) return NULL;
    if (n) memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

/* Element 0 of an integer tensor as int64; raw is little-endian. */
static int read_int(const Inference__ModelInferResponse__InferOutputTensor *t, const uint8_t *raw,
                    size_t raw_len, bool has_raw, int64_t *v, cv_error *err)
{
    const char *dt = t->datatype;
    size_t width = (!strcmp(dt, "UINT32") || !strcmp(dt, "INT32"))   ? 4
                   : (!strcmp(dt, "UINT64") || !strcmp(dt, "INT64")) ? 8
                                                                     : 0;
    if (!width) return cv_errorf(err, "output '%s': unexpected datatype '%s'", t->name, dt);
    if (has_raw) {
        if (raw_len < width)
            return cv_errorf(err, "output '%s': %zu raw bytes, a %s needs %zu", t->name, raw_len,
                             dt, width);
        uint64_t u = 0;
        for (size_t i = 0; i < width; i++)
            u |= (uint64_t)raw[i] << (8 * i);
        *v = dt[0] == 'I' && width == 4 ? (int64_t)(int32_t)(uint32_t)u : (int64_t)u;
        return 0;
    }
    const Inference__InferTensorContents *c = t->contents;
    if (c && c->n_uint_contents)
        *v = c->uint_contents[0];
    else if (c && c->n_int_contents)
        *v = c->int_contents[0];
    else if (c && c->n_uint64_contents)
        *v = (int64_t)c->uint64_contents[0];
    else if (c && c->n_int64_contents)
        *v = c->int64_contents[0];
    else
        return cv_errorf(err, "output '%s' has no contents", t->name);
    return 0;
}

/* BYTES output as an element list (pointers into the message). */
static int read_bytes(const Inference__ModelInferResponse__InferOutputTensor *t, const uint8_t *raw,
                      size_t raw_len, bool has_raw, const uint8_t ***elems, size_t **lens,
                      size_t *n, cv_error *err)
{
    if (has_raw) {
        if (cvc_bytes_decode(raw, raw_len, elems, lens, n, err))
            return cv_error_prefix(err, "output '%s'", t->name);
        return 0;
    }
    const Inference__InferTensorContents *c = t->contents;
    *n = c ? c->n_bytes_contents : 0;
    *elems = calloc(*n ? *n : 1, sizeof **elems);
    *lens = calloc(*n ? *n : 1, sizeof **lens);
    if (!*elems || !*lens) {
        free(*elems);
        free(*lens);
        return cv_errorf(err, "out of memory decoding output '%s'", t->name);
    }
    for (size_t i = 0; i < *n; i++) {
        (*elems)[i] = c->bytes_contents[i].data;
        (*lens)[i] = c->bytes_contents[i].len;
    }
    return 0;
}

static int decode_output(const Inference__ModelInferResponse *m, size_t k, cvc_response *out,
                         cv_error *err)
{
    const Inference__ModelInferResponse__InferOutputTensor *t = m->outputs[k];
    bool has_raw = m->n_raw_output_contents == m->n_outputs;
    const uint8_t *raw = has_raw ? m->raw_output_contents[k].data : NULL;
    size_t raw_len = has_raw ? m->raw_output_contents[k].len : 0;
    if (!strcmp(t->name, "num_input_tokens"))
        return read_int(t, raw, raw_len, has_raw, &out->num_input_tokens, err);
    if (!strcmp(t->name, "num_output_tokens"))
        return read_int(t, raw, raw_len, has_raw, &out->num_output_tokens, err);
    bool is_text = !strcmp(t->name, "text_output");
    if (!is_text && strcmp(t->name, "finish_reason")) return 0; /* outputs we do not use */
    const uint8_t **elems;
    size_t *lens, n;
    if (read_bytes(t, raw, raw_len, has_raw, &elems, &lens, &n, err)) return -1;
    int rc = 0;
    if (is_text) {
        out->text = calloc(n ? n : 1, sizeof *out->text);
        out->text_len = calloc(n ? n : 1, sizeof *out->text_len);
        if (!out->text || !out->text_len) rc = cv_errorf(err, "out of memory decoding text_output");
        for (size_t i = 0; rc == 0 && i < n; i++) {
            out->text[i] = dup_n(elems[i], lens[i]);
            if (!out->text[i]) rc = cv_errorf(err, "out of memory decoding text_output");
            out->text_len[i] = lens[i];
            out->n_text = i + 1;
        }
    } else if (n > 0) {
        out->finish_reason = dup_n(elems[0], lens[0]);
        if (!out->finish_reason) rc = cv_errorf(err, "out of memory decoding finish_reason");
    }
    free(elems);
    free(lens);
    return rc;
}

int cvc_response_decode(const uint8_t *buf, size_t len, cvc_response *out, cv_error *err)
{
    memset(out, 0, sizeof *out);
    out->num_input_tokens = -1;
    out->num_output_tokens = -1;
    Inference__ModelStreamInferResponse *msg =
        inference__model_stream_infer_response__unpack(NULL, len, buf);
    if (!msg) return cv_errorf(err, "malformed ModelStreamInferResponse (%zu bytes)", len);
    int rc = -1;
    const Inference__ModelInferResponse *m = msg->infer_response;
    out->id = strdup(m && m->id ? m->id : "");
    if (!out->id) goto oom;
    if (msg->error_message && msg->error_message[0]) {
        out->error_message = strdup(msg->error_message);
        if (!out->error_message) goto oom;
    }
    for (size_t i = 0; m && i < m->n_parameters; i++) {
        const Inference__ModelInferResponse__ParametersEntry *e = m->parameters[i];
        if (e->value && !strcmp(e->key, "triton_final_response") &&
            e->value->parameter_choice_case ==
                INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM)
            out->final = e->value->bool_param;
    }
    for (size_t k = 0; m && k < m->n_outputs; k++)
        if (decode_output(m, k, out, err)) goto fail;
    rc = 0;
    goto done;
oom:
    cv_errorf(err, "out of memory decoding a ModelStreamInferResponse");
fail:
    cvc_response_free(out);
done:
    inference__model_stream_infer_response__free_unpacked(msg, NULL);
    return rc;
}

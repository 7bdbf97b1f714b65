/* protobuf-c messages of inference.GRPCInferenceService <-> cvllm: the
 * unary RPCs and the ModelInferRequest / ModelStreamInferResponse codec
 * (raw tensors: BYTES elements as a 4-byte little-endian length and the
 * bytes, BOOL one byte, FP32/UINT32 little-endian). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "health.pb-c.h"
#include "server/grpc_internal.h"

#define METHOD_PREFIX "/inference.GRPCInferenceService/"

/* Packs any message into a malloc'd buffer. */
static uint8_t *pack(const ProtobufCMessage *msg, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(*len ? *len : 1);
    if (buf) protobuf_c_message_pack(msg, buf);
    return buf;
}

/* ---- ModelConfig -------------------------------------------------------- */

typedef struct config_pb {
    Inference__ModelConfig c;
    Inference__ModelVersionPolicy vp;
    Inference__ModelVersionPolicy__Latest latest;
    Inference__ModelVersionPolicy__All all;
    Inference__ModelVersionPolicy__Specific specific;
    Inference__ModelTransactionPolicy tp;
    Inference__ModelInput in[CV_MAX_TENSORS], *in_p[CV_MAX_TENSORS];
    Inference__ModelOutput out[CV_MAX_TENSORS], *out_p[CV_MAX_TENSORS];
    Inference__ModelInstanceGroup g[CV_MAX_GROUPS], *g_p[CV_MAX_GROUPS];
    int32_t gpus[CV_MAX_GROUPS][16];
    Inference__ModelConfig__ParametersEntry pe[CV_MAX_PARAMS], *pe_p[CV_MAX_PARAMS];
    Inference__ModelParameter pv[CV_MAX_PARAMS];
} config_pb;

static void config_to_pb(const cv_model_config *cfg, config_pb *p)
{
    memset(p, 0, sizeof *p);
    inference__model_config__init(&p->c);
    p->c.name = (char *)cfg->name;
    p->c.platform = (char *)cfg->platform;
    p->c.backend = (char *)cfg->backend;
    p->c.max_batch_size = cfg->max_batch_size;
    inference__model_version_policy__init(&p->vp);
    if (cfg->version_policy == CV_VERSIONS_ALL) {
        inference__model_version_policy__all__init(&p->all);
        p->vp.policy_choice_case = INFERENCE__MODEL_VERSION_POLICY__POLICY_CHOICE_ALL;
        p->vp.all = &p->all;
    } else if (cfg->version_policy == CV_VERSIONS_SPECIFIC) {
        inference__model_version_policy__specific__init(&p->specific);
        p->specific.n_versions = (size_t)cfg->n_specific;
        p->specific.versions = (int64_t *)cfg->specific;
        p->vp.policy_choice_case = INFERENCE__MODEL_VERSION_POLICY__POLICY_CHOICE_SPECIFIC;
        p->vp.specific = &p->specific;
    } else {
        inference__model_version_policy__latest__init(&p->latest);
        p->latest.num_versions = (uint32_t)cfg->latest_num_versions;
        p->vp.policy_choice_case = INFERENCE__MODEL_VERSION_POLICY__POLICY_CHOICE_LATEST;
        p->vp.latest = &p->latest;
    }
    p->c.version_policy = &p->vp;
    for (int i = 0; i < cfg->n_inputs; i++) {
        inference__model_input__init(&p->in[i]);
        p->in[i].name = (char *)cfg->inputs[i].name;
        p->in[i].data_type = (Inference__DataType)cfg->inputs[i].data_type;
        p->in[i].n_dims = (size_t)cfg->inputs[i].n_dims;
        p->in[i].dims = (int64_t *)cfg->inputs[i].dims;
        p->in[i].optional = cfg->inputs[i].optional;
        p->in_p[i] = &p->in[i];
    }
    p->c.n_input = (size_t)cfg->n_inputs;
    p->c.input = p->in_p;
    for (int i = 0; i < cfg->n_outputs; i++) {
        inference__model_output__init(&p->out[i]);
        p->out[i].name = (char *)cfg->outputs[i].name;
        p->out[i].data_type = (Inference__DataType)cfg->outputs[i].data_type;
        p->out[i].n_dims = (size_t)cfg->outputs[i].n_dims;
        p->out[i].dims = (int64_t *)cfg->outputs[i].dims;
        p->out_p[i] = &p->out[i];
    }
    p->c.n_output = (size_t)cfg->n_outputs;
    p->c.output = p->out_p;
    for (int i = 0; i < cfg->n_groups; i++) {
        inference__model_instance_group__init(&p->g[i]);
        p->g[i].name = (char *)cfg->groups[i].name;
        p->g[i].kind = (Inference__ModelInstanceGroup__Kind)cfg->groups[i].kind;
        p->g[i].count = cfg->groups[i].count;
        for (int j = 0; j < cfg->groups[i].n_gpus; j++)
            p->gpus[i][j] = cfg->groups[i].gpus[j];
        p->g[i].n_gpus = (size_t)cfg->groups[i].n_gpus;
        p->g[i].gpus = p->gpus[i];
        p->g_p[i] = &p->g[i];
    }
    p->c.n_instance_group = (size_t)cfg->n_groups;
    p->c.instance_group = p->g_p;
    for (int i = 0; i < cfg->n_params; i++) {
        inference__model_config__parameters_entry__init(&p->pe[i]);
        inference__model_parameter__init(&p->pv[i]);
        p->pv[i].string_value = (char *)cfg->params[i].value;
        p->pe[i].key = (char *)cfg->params[i].key;
        p->pe[i].value = &p->pv[i];
        p->pe_p[i] = &p->pe[i];
    }
    p->c.n_parameters = (size_t)cfg->n_params;
    p->c.parameters = p->pe_p;
    inference__model_transaction_policy__init(&p->tp);
    p->tp.decoupled = cfg->decoupled;
    p->c.model_transaction_policy = &p->tp;
}

/* ---- unary RPCs --------------------------------------------------------- */

typedef struct unary_ctx {
    cv_server *s;
    uint8_t **out;
    size_t *out_len;
    char *msg;
    size_t msg_cap;
} unary_ctx;

static grpc_status_code fail(unary_ctx *u, grpc_status_code code, const char *msg)
{
    snprintf(u->msg, u->msg_cap, "%s", msg);
    return code;
}

static grpc_status_code reply(unary_ctx *u, const ProtobufCMessage *msg)
{
    *u->out = pack(msg, u->out_len);
    return *u->out ? GRPC_STATUS_OK : fail(u, GRPC_STATUS_INTERNAL, "out of memory");
}

/* An error of the server core, its code from its class. */
static grpc_status_code fail_core(unary_ctx *u, const cv_error *err)
{
    return fail(u, (grpc_status_code)cv_error_status(err->cls).grpc, err->msg);
}

static cv_model *acquire(unary_ctx *u, const char *name, const char *version,
                         grpc_status_code *code)
{
    cv_error err = {.msg = ""};
    cv_model *m = cv_server_acquire(u->s, name, version, &err);
    if (!m) *code = fail_core(u, &err);
    return m;
}

static grpc_status_code model_metadata(unary_ctx *u, const Inference__ModelMetadataRequest *rq)
{
    cv_model_metadata md;
    cv_error err = {.msg = ""};
    if (cv_server_model_metadata(u->s, rq->name, rq->version, &md, &err) < 0)
        return fail_core(u, &err);
    Inference__ModelMetadataResponse r = INFERENCE__MODEL_METADATA_RESPONSE__INIT;
    Inference__ModelMetadataResponse__TensorMetadata t[2][CV_MAX_TENSORS], *tp[2][CV_MAX_TENSORS];
    for (int k = 0; k < 2; k++) {
        const cv_tensor_meta *list = k ? md.outputs : md.inputs;
        int n = k ? md.n_outputs : md.n_inputs;
        for (int i = 0; i < n; i++) {
            inference__model_metadata_response__tensor_metadata__init(&t[k][i]);
            t[k][i].name = (char *)list[i].name;
            t[k][i].datatype = (char *)list[i].datatype;
            t[k][i].n_shape = (size_t)list[i].n_dims;
            t[k][i].shape = (int64_t *)list[i].dims;
            tp[k][i] = &t[k][i];
        }
    }
    char *versions[1] = {(char *)md.version};
    r.name = (char *)md.name;
    r.n_versions = 1;
    r.versions = versions;
    r.platform = (char *)md.platform;
    r.n_inputs = (size_t)md.n_inputs;
    r.inputs = tp[0];
    r.n_outputs = (size_t)md.n_outputs;
    r.outputs = tp[1];
    grpc_status_code rc = reply(u, &r.base);
    cv_model_release(md.model);
    return rc;
}

static grpc_status_code model_config(unary_ctx *u, const Inference__ModelConfigRequest *rq)
{
    grpc_status_code code;
    cv_model *m = acquire(u, rq->name, rq->version, &code);
    if (!m) return code;
    config_pb *p = malloc(sizeof *p);
    if (!p) {
        cv_model_release(m);
        return fail(u, GRPC_STATUS_INTERNAL, "out of memory");
    }
    config_to_pb(&m->cfg, p);
    Inference__ModelConfigResponse r = INFERENCE__MODEL_CONFIG_RESPONSE__INIT;
    r.config = &p->c;
    grpc_status_code rc = reply(u, &r.base);
    free(p);
    cv_model_release(m);
    return rc;
}

static grpc_status_code repository_index(unary_ctx *u, const Inference__RepositoryIndexRequest *rq)
{
    json_t *idx = cv_repository_index(u->s->repo, rq->ready);
    size_t n = json_array_size(idx);
    Inference__RepositoryIndexResponse r = INFERENCE__REPOSITORY_INDEX_RESPONSE__INIT;
    Inference__RepositoryIndexResponse__ModelIndex *mi = calloc(n ? n : 1, sizeof *mi);
    Inference__RepositoryIndexResponse__ModelIndex **mp = calloc(n ? n : 1, sizeof *mp);
    grpc_status_code rc;
    if (!idx || !mi || !mp) {
        rc = fail(u, GRPC_STATUS_INTERNAL, "out of memory");
    } else {
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_array_get(idx, i);
            inference__repository_index_response__model_index__init(&mi[i]);
            const char *v;
            mi[i].name = (char *)json_string_value(json_object_get(e, "name"));
            if ((v = json_string_value(json_object_get(e, "version")))) mi[i].version = (char *)v;
            if ((v = json_string_value(json_object_get(e, "state")))) mi[i].state = (char *)v;
            if ((v = json_string_value(json_object_get(e, "reason")))) mi[i].reason = (char *)v;
            mp[i] = &mi[i];
        }
        r.n_models = n;
        r.models = mp;
        rc = reply(u, &r.base);
    }
    free(mi);
    free(mp);
    json_decref(idx);
    return rc;
}

static grpc_status_code unload(unary_ctx *u, const char *name)
{
    cv_error err = {.msg = ""};
    if (cv_server_unload(u->s, name, &err) < 0) return fail_core(u, &err);
    Inference__RepositoryModelUnloadResponse r = INFERENCE__REPOSITORY_MODEL_UNLOAD_RESPONSE__INIT;
    return reply(u, &r.base);
}

static grpc_status_code model_statistics(unary_ctx *u, const Inference__ModelStatisticsRequest *rq)
{
    cv_model_stats *st;
    cv_error err = {.msg = ""};
    int n = cv_server_model_stats(u->s, rq->name, rq->version, &st, &err);
    if (n < 0) return fail_core(u, &err);
    Inference__ModelStatistics *ms = calloc((size_t)n + 1, sizeof *ms);
    Inference__ModelStatistics **mp = calloc((size_t)n + 1, sizeof *mp);
    Inference__InferStatistics *is = calloc((size_t)n + 1, sizeof *is);
    Inference__StatisticDuration *d = calloc((size_t)n * 8 + 1, sizeof *d);
    grpc_status_code rc;
    if (!ms || !mp || !is || !d) {
        rc = fail(u, GRPC_STATUS_INTERNAL, "out of memory");
    } else {
        for (int i = 0; i < n; i++) {
            const cv_model_stats *x = &st[i];
            Inference__StatisticDuration *di = &d[i * 8];
            for (int k = 0; k < 8; k++)
                inference__statistic_duration__init(&di[k]);
            di[0].count = x->success_count; /* success */
            di[0].ns = x->success_ns;
            di[1].count = x->fail_count; /* fail */
            di[1].ns = x->fail_ns;
            di[2].count = x->success_count; /* queue */
            di[2].ns = x->queue_ns;
            di[4] = di[0]; /* compute_infer: the whole request */
            inference__infer_statistics__init(&is[i]);
            is[i].success = &di[0];
            is[i].fail = &di[1];
            is[i].queue = &di[2];
            is[i].compute_input = &di[3];
            is[i].compute_infer = &di[4];
            is[i].compute_output = &di[5];
            is[i].cache_hit = &di[6];
            is[i].cache_miss = &di[7];
            inference__model_statistics__init(&ms[i]);
            ms[i].name = (char *)x->name;
            ms[i].version = (char *)x->version;
            ms[i].last_inference = x->last_inference_ms;
            ms[i].inference_count = x->inference_count;
            ms[i].execution_count = x->execution_count;
            ms[i].inference_stats = &is[i];
            mp[i] = &ms[i];
        }
        Inference__ModelStatisticsResponse r = INFERENCE__MODEL_STATISTICS_RESPONSE__INIT;
        r.n_model_stats = (size_t)n;
        r.model_stats = mp;
        rc = reply(u, &r.base);
    }
    free(ms);
    free(mp);
    free(is);
    free(d);
    free(st);
    return rc;
}

/* Unpacks `in` as `desc`, runs the handler, frees the request. */
#define UNPACK(type, var)                                                                          \
    type *var = (type *)protobuf_c_message_unpack(desc, NULL, in_len, in);                         \
    if (!var) return fail(&u, GRPC_STATUS_INVALID_ARGUMENT, "cannot parse the request message");   \
    cv_error var##_err = {.msg = ""};                                                              \
    if (cv_grpc_check_strings(desc, in, in_len, &var##_err) < 0) {                                 \
        protobuf_c_message_free_unpacked(&var->base, NULL);                                        \
        return fail(&u, GRPC_STATUS_INVALID_ARGUMENT, var##_err.msg);                              \
    }

grpc_status_code cv_grpc_unary(cv_server *s, const char *method, const uint8_t *in, size_t in_len,
                               uint8_t **out, size_t *out_len, char *msg, size_t msg_cap)
{
    unary_ctx u = {s, out, out_len, msg, msg_cap};
    *out = NULL;
    *out_len = 0;
    if (!strcmp(method, "/grpc.health.v1.Health/Check")) {
        /* One status for the whole server, whatever service is named. */
        Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
        r.status = cv_server_ready(s)
                       ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                       : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
        return reply(&u, &r.base);
    }
    if (strncmp(method, METHOD_PREFIX, strlen(METHOD_PREFIX)))
        return fail(&u, GRPC_STATUS_UNIMPLEMENTED, "unknown service");
    const char *rpc = method + strlen(METHOD_PREFIX);
    const ProtobufCMessageDescriptor *desc = NULL;
    grpc_status_code rc;
    if (!strcmp(rpc, "ServerLive")) {
        Inference__ServerLiveResponse r = INFERENCE__SERVER_LIVE_RESPONSE__INIT;
        r.live = cv_server_live(s);
        return reply(&u, &r.base);
    }
    if (!strcmp(rpc, "ServerReady")) {
        Inference__ServerReadyResponse r = INFERENCE__SERVER_READY_RESPONSE__INIT;
        r.ready = cv_server_ready(s);
        return reply(&u, &r.base);
    }
    if (!strcmp(rpc, "ServerMetadata")) {
        Inference__ServerMetadataResponse r = INFERENCE__SERVER_METADATA_RESPONSE__INIT;
        r.name = "cvllm";
        r.version = (char *)cv_server_version;
        r.n_extensions = (size_t)cv_server_n_extensions;
        r.extensions = (char **)cv_server_extensions;
        return reply(&u, &r.base);
    }
    if (!strcmp(rpc, "ModelReady")) {
        desc = &inference__model_ready_request__descriptor;
        UNPACK(Inference__ModelReadyRequest, rq);
        Inference__ModelReadyResponse r = INFERENCE__MODEL_READY_RESPONSE__INIT;
        r.ready = cv_server_model_ready(s, rq->name, rq->version);
        protobuf_c_message_free_unpacked(&rq->base, NULL);
        return reply(&u, &r.base);
    }
    if (!strcmp(rpc, "ModelMetadata")) {
        desc = &inference__model_metadata_request__descriptor;
        UNPACK(Inference__ModelMetadataRequest, rq);
        rc = model_metadata(&u, rq);
        protobuf_c_message_free_unpacked(&rq->base, NULL);
        return rc;
    }
    if (!strcmp(rpc, "ModelConfig")) {
        desc = &inference__model_config_request__descriptor;
        UNPACK(Inference__ModelConfigRequest, rq);
        rc = model_config(&u, rq);
        protobuf_c_message_free_unpacked(&rq->base, NULL);
        return rc;
    }
    if (!strcmp(rpc, "ModelStatistics")) {
        desc = &inference__model_statistics_request__descriptor;
        UNPACK(Inference__ModelStatisticsRequest, rq);
        rc = model_statistics(&u, rq);
        protobuf_c_message_free_unpacked(&rq->base, NULL);
        return rc;
    }
    if (!strcmp(rpc, "RepositoryIndex")) {
        desc = &inference__repository_index_request__descriptor;
        UNPACK(Inference__RepositoryIndexRequest, rq);
        rc = repository_index(&u, rq);
        protobuf_c_message_free_unpacked(&rq->base, NULL);
        return rc;
    }
    if (!strcmp(rpc, "RepositoryModelUnload")) {
        desc = &inference__repository_model_unload_request__descriptor;
        UNPACK(Inference__RepositoryModelUnloadRequest, rq);
        rc = unload(&u, rq->model_name);
        protobuf_c_message_free_unpacked(&rq->base, NULL);
        return rc;
    }
    if (!strcmp(rpc, "ModelInfer")) {
        desc = &inference__model_infer_request__descriptor;
        UNPACK(Inference__ModelInferRequest, rq);
        grpc_status_code code;
        cv_model *m = acquire(&u, rq->model_name, rq->model_version, &code);
        protobuf_c_message_free_unpacked(&rq->base, NULL);
        if (!m) return code;
        cv_model_release(m);
        cv_error err = {.msg = ""};
        cv_errorf_class(&err, CV_ERR_UNSUPPORTED,
                        "ModelInfer RPC doesn't support models with decoupled transaction policy");
        return fail_core(&u, &err);
    }
    return fail(&u, GRPC_STATUS_UNIMPLEMENTED, "unknown method");
}

char *cv_grpc_load_request_name(const uint8_t *in, size_t len, cv_error *err)
{
    Inference__RepositoryModelLoadRequest *rq =
        inference__repository_model_load_request__unpack(NULL, len, in);
    if (!rq) {
        cv_errorf(err, "cannot parse the request message");
        return NULL;
    }
    if (cv_grpc_check_strings(&inference__repository_model_load_request__descriptor, in, len, err) <
        0) {
        inference__repository_model_load_request__free_unpacked(rq, NULL);
        return NULL;
    }
    char *name = strdup(rq->model_name);
    if (!name) cv_errorf(err, "out of memory");
    inference__repository_model_load_request__free_unpacked(rq, NULL);
    return name;
}

grpc_status_code cv_grpc_load_reply(int rc, const cv_error *err, uint8_t **out, size_t *out_len,
                                    char *msg, size_t msg_cap)
{
    unary_ctx u = {NULL, out, out_len, msg, msg_cap};
    *out = NULL;
    *out_len = 0;
    if (rc < 0) return fail_core(&u, err);
    Inference__RepositoryModelLoadResponse r = INFERENCE__REPOSITORY_MODEL_LOAD_RESPONSE__INIT;
    return reply(&u, &r.base);
}

/* ---- ModelInferRequest -> cv_infer_request ------------------------------ */

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int set_param(cv_infer_request *ir, const char *key, const Inference__InferParameter *p,
                     cv_error *err)
{
    json_t *v;
    switch (p ? p->parameter_choice_case : INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE__NOT_SET) {
    case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM:
        v = json_boolean(p->bool_param);
        break;
    case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_INT64_PARAM:
        v = json_integer(p->int64_param);
        break;
    case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_STRING_PARAM:
        v = json_string(p->string_param);
        break;
    case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_DOUBLE_PARAM:
        v = json_real(p->double_param);
        break;
    case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_UINT64_PARAM:
        /* JSON integers are int64: 2^64-1 must not wrap to -1 (unlimited). */
        if (p->uint64_param > INT64_MAX)
            return cv_errorf(err, "parameter '%s': uint64_param %" PRIu64 " is out of range", key,
                             p->uint64_param);
        v = json_integer((json_int_t)p->uint64_param);
        break;
    default:
        return cv_errorf(err, "parameter '%s' has no value", key);
    }
    if (!v) return cv_errorf(err, "parameter '%s': invalid value", key);
    return cv_infer_set_param(ir, key, v, err);
}

int cv_grpc_parse_infer(const Inference__ModelInferRequest *rq, const cv_model *m,
                        cv_infer_request *ir, cv_error *err)
{
    for (size_t i = 0; i < rq->n_parameters; i++)
        if (set_param(ir, rq->parameters[i]->key, rq->parameters[i]->value, err) < 0) return -1;
    bool raw = rq->n_raw_input_contents > 0;
    if (raw && rq->n_raw_input_contents != rq->n_inputs)
        return cv_errorf(err, "expected %zu raw_input_contents entries (one per input), got %zu",
                         rq->n_inputs, rq->n_raw_input_contents);
    for (size_t i = 0; i < rq->n_inputs; i++) {
        const Inference__ModelInferRequest__InferInputTensor *t = rq->inputs[i];
        int64_t elems = 1;
        for (size_t d = 0; d < t->n_shape; d++)
            elems *= t->shape[d];
        if (elems != 1)
            return cv_errorf(err, "input '%s': expected shape [1], got %lld elements", t->name,
                             (long long)elems);
        const cv_tensor_config *tc = cv_model_config_input(&m->cfg, t->name);
        if (tc && strcmp(t->datatype, cv_data_type_kserve(tc->data_type)))
            return cv_errorf(err,
                             "inference input '%s' data-type is '%s', but model '%s' "
                             "expects '%s'",
                             t->name, t->datatype, m->name, cv_data_type_kserve(tc->data_type));
        bool is_bool = !strcmp(t->datatype, "BOOL");
        if (raw) {
            const ProtobufCBinaryData *b = &rq->raw_input_contents[i];
            if (is_bool) {
                if (b->len != 1)
                    return cv_errorf(err, "input '%s': BOOL raw content must be 1 byte, got %zu",
                                     t->name, b->len);
                if (cv_infer_set_bool(ir, m, t->name, b->data[0] != 0, err) < 0) return -1;
            } else {
                if (b->len < 4 || le32(b->data) != b->len - 4)
                    return cv_errorf(err,
                                     "input '%s': BYTES raw content must be a 4-byte "
                                     "little-endian length followed by that many bytes",
                                     t->name);
                if (cv_infer_set_bytes(ir, m, t->name, (const char *)b->data + 4, b->len - 4, err) <
                    0)
                    return -1;
            }
        } else if (t->contents && is_bool && t->contents->n_bool_contents == 1) {
            if (cv_infer_set_bool(ir, m, t->name, t->contents->bool_contents[0], err) < 0)
                return -1;
        } else if (t->contents && !is_bool && t->contents->n_bytes_contents == 1) {
            const ProtobufCBinaryData *b = &t->contents->bytes_contents[0];
            if (cv_infer_set_bytes(ir, m, t->name, (const char *)b->data, b->len, err) < 0)
                return -1;
        } else {
            return cv_errorf(err, "input '%s': expected one %s element in contents", t->name,
                             t->datatype);
        }
    }
    return 0;
}

/* ---- cv_infer_response -> ModelStreamInferResponse ---------------------- */

static bool wanted_output(const char *name, char *const *wanted, size_t n)
{
    if (n == 0) return true;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(wanted[i], name)) return true;
    return false;
}

static uint8_t *raw_tensor(const cv_out_tensor *t, size_t *len)
{
    size_t n = 0;
    for (int i = 0; i < t->n; i++)
        n += t->type == CV_TYPE_STRING ? 4 + t->lens[i] : 4;
    uint8_t *buf = malloc(n ? n : 1), *p = buf;
    if (!buf) return NULL;
    for (int i = 0; i < t->n; i++) {
        uint32_t v;
        if (t->type == CV_TYPE_STRING)
            v = (uint32_t)t->lens[i];
        else if (t->type == CV_TYPE_FP32)
            memcpy(&v, &t->f32[i], 4);
        else
            v = t->u32[i];
        p[0] = (uint8_t)v;
        p[1] = (uint8_t)(v >> 8);
        p[2] = (uint8_t)(v >> 16);
        p[3] = (uint8_t)(v >> 24);
        p += 4;
        if (t->type == CV_TYPE_STRING) {
            memcpy(p, t->bytes[i], t->lens[i]);
            p += t->lens[i];
        }
    }
    *len = n;
    return buf;
}

uint8_t *cv_grpc_pack_stream_response(const cv_infer_response *resp, char *const *wanted,
                                      size_t n_wanted, const char *model, const char *version,
                                      const char *id, bool final, const char *error, size_t *len)
{
    Inference__ModelInferResponse r = INFERENCE__MODEL_INFER_RESPONSE__INIT;
    r.model_name = (char *)model;
    r.model_version = (char *)version;
    r.id = (char *)(id ? id : "");
    Inference__InferParameter fp = INFERENCE__INFER_PARAMETER__INIT;
    fp.parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM;
    fp.bool_param = final;
    Inference__ModelInferResponse__ParametersEntry pe =
        INFERENCE__MODEL_INFER_RESPONSE__PARAMETERS_ENTRY__INIT;
    pe.key = "triton_final_response";
    pe.value = &fp;
    Inference__ModelInferResponse__ParametersEntry *pep = &pe;
    r.n_parameters = 1;
    r.parameters = &pep;

    Inference__ModelInferResponse__InferOutputTensor ot[CV_MAX_OUT_TENSORS],
        *otp[CV_MAX_OUT_TENSORS];
    ProtobufCBinaryData raw[CV_MAX_OUT_TENSORS];
    int64_t shapes[CV_MAX_OUT_TENSORS];
    size_t n = 0;
    uint8_t *buf = NULL;
    bool oom = false;
    for (int i = 0; resp && i < resp->n_tensors; i++) {
        const cv_out_tensor *t = &resp->t[i];
        if (!wanted_output(t->name, wanted, n_wanted)) continue;
        inference__model_infer_response__infer_output_tensor__init(&ot[n]);
        ot[n].name = (char *)t->name;
        ot[n].datatype = (char *)cv_data_type_kserve(t->type);
        shapes[n] = t->n;
        ot[n].n_shape = 1;
        ot[n].shape = &shapes[n];
        otp[n] = &ot[n];
        raw[n].data = raw_tensor(t, &raw[n].len);
        oom |= raw[n].data == NULL;
        n++;
    }
    r.n_outputs = n;
    r.outputs = otp;
    r.n_raw_output_contents = n;
    r.raw_output_contents = raw;
    Inference__ModelStreamInferResponse s = INFERENCE__MODEL_STREAM_INFER_RESPONSE__INIT;
    s.error_message = (char *)(error ? error : "");
    s.infer_response = &r;
    if (!oom) buf = pack(&s.base, len);
    for (size_t i = 0; i < n; i++)
        free(raw[i].data);
    return buf;
}

/* cv_client encodings: raw BYTES/BOOL tensors, the SSE parser, and the
 * ModelInferRequest / ModelStreamInferResponse messages checked against
 * protobuf-c's own parser of proto/grpc_service.proto. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "grpc_service.pb-c.h"

static void test_bytes_append_little_endian(void **state)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    cv_error err = {.msg = ""};
    assert_int_equal(cvc_bytes_append(&buf, &len, "Hello", 5, &err), 0);
    assert_int_equal(cvc_bytes_append(&buf, &len, "", 0, &err), 0);
    static const uint8_t want[] = {5, 0, 0, 0, 'H', 'e', 'l', 'l', 'o', 0, 0, 0, 0};
    assert_int_equal(len, sizeof want);
    assert_memory_equal(buf, want, sizeof want);
    free(buf);

    /* A 300-byte element: length 0x012c little-endian. */
    char big[300];
    memset(big, 'x', sizeof big);
    buf = NULL;
    len = 0;
    assert_int_equal(cvc_bytes_append(&buf, &len, big, sizeof big, &err), 0);
    assert_int_equal(len, 304);
    assert_int_equal(buf[0], 0x2c);
    assert_int_equal(buf[1], 0x01);
    assert_int_equal(buf[2], 0);
    assert_int_equal(buf[3], 0);
    free(buf);
}

static void test_bytes_decode(void **state)
{
    static const uint8_t raw[] = {3, 0, 0, 0, 'a', 'b', 'c', 0, 0, 0, 0, 2, 0, 0, 0, 0xc3, 0xa9};
    const uint8_t **elems;
    size_t *lens, n;
    cv_error err = {.msg = ""};
    assert_int_equal(cvc_bytes_decode(raw, sizeof raw, &elems, &lens, &n, &err), 0);
    assert_int_equal(n, 3);
    assert_int_equal(lens[0], 3);
    assert_memory_equal(elems[0], "abc", 3);
    assert_int_equal(lens[1], 0);
    assert_int_equal(lens[2], 2);
    assert_memory_equal(elems[2], "\xc3\xa9", 2);
    free(elems);
    free(lens);

    assert_int_equal(cvc_bytes_decode(raw, 0, &elems, &lens, &n, &err), 0);
    assert_int_equal(n, 0);
    free(elems);
    free(lens);
}

static void test_bytes_decode_errors(void **state)
{
    const uint8_t **elems;
    size_t *lens, n;
    cv_error err = {.msg = ""};
    static const uint8_t truncated_prefix[] = {1, 0, 0, 0, 'a', 9, 0};
    assert_int_equal(
        cvc_bytes_decode(truncated_prefix, sizeof truncated_prefix, &elems, &lens, &n, &err), -1);
    assert_string_equal(err.msg, "BYTES tensor element 1: truncated length prefix (2 of 4 bytes)");
    assert_null(elems);
    static const uint8_t overrun[] = {9, 0, 0, 0, 'a', 'b'};
    assert_int_equal(cvc_bytes_decode(overrun, sizeof overrun, &elems, &lens, &n, &err), -1);
    assert_string_equal(err.msg,
                        "BYTES tensor element 0: length 9 runs past the end (2 bytes left)");
}

static void test_bool(void **state)
{
    assert_int_equal(cvc_bool_encode(true), 1);
    assert_int_equal(cvc_bool_encode(false), 0);
    static const uint8_t raw[] = {0, 1, 7};
    bool v = true;
    cv_error err = {.msg = ""};
    assert_int_equal(cvc_bool_decode(raw, 3, 0, &v, &err), 0);
    assert_false(v);
    assert_int_equal(cvc_bool_decode(raw, 3, 1, &v, &err), 0);
    assert_true(v);
    assert_int_equal(cvc_bool_decode(raw, 3, 2, &v, &err), 0);
    assert_true(v);
    assert_int_equal(cvc_bool_decode(raw, 3, 3, &v, &err), -1);
    assert_string_equal(err.msg, "BOOL tensor has 3 elements, element 3 asked");
}

/* ---- SSE ---- */

typedef struct events {
    char got[16][128];
    int n;
    int stop_after; /* 0: never */
} events;

static int on_event(void *user, const char *data, size_t len)
{
    events *e = user;
    assert_true(e->n < 16);
    assert_int_equal(strlen(data), len);
    snprintf(e->got[e->n], sizeof e->got[e->n], "%s", data);
    e->n++;
    return e->stop_after && e->n >= e->stop_after;
}

static void feed_all(cvc_sse_parser *p, const char *s, size_t chunk)
{
    cv_error err = {.msg = ""};
    size_t len = strlen(s);
    for (size_t off = 0; off < len; off += chunk) {
        size_t n = len - off < chunk ? len - off : chunk;
        assert_int_equal(cvc_sse_feed(p, s + off, n, &err), 0);
    }
}

static const char *stream_text = ": comment line\n"
                                 "data: {\"text_output\":\"Once\"}\n\n"
                                 "event: message\r\n"
                                 "data:{\"a\":1}\r\n"
                                 "id: 7\r\n\r\n"
                                 "data: first\rdata: second\r\r"
                                 "data\n\n"
                                 "retry: 10\n\n"
                                 "data: tail-without-blank-line\n";

static void check_stream(const events *e)
{
    assert_int_equal(e->n, 4);
    assert_string_equal(e->got[0], "{\"text_output\":\"Once\"}");
    assert_string_equal(e->got[1], "{\"a\":1}");
    assert_string_equal(e->got[2], "first\nsecond");
    assert_string_equal(e->got[3], "");
}

static void test_sse_whole_and_split(void **state)
{
    /* Every chunking, including a CRLF split between chunks, gives the same
     * events; the unterminated last event is never reported. */
    for (size_t chunk = 1; chunk <= strlen(stream_text); chunk++) {
        events e = {0};
        cvc_sse_parser p;
        cvc_sse_init(&p, on_event, &e);
        feed_all(&p, stream_text, chunk);
        check_stream(&e);
        cvc_sse_free(&p);
    }
}

static void test_sse_handler_stops(void **state)
{
    events e = {.stop_after = 1};
    cvc_sse_parser p;
    cvc_sse_init(&p, on_event, &e);
    cv_error err = {.msg = ""};
    const char *s = "data: a\n\ndata: b\n\n";
    assert_int_equal(cvc_sse_feed(&p, s, strlen(s), &err), -1);
    assert_string_equal(err.msg, "server-sent event handler stopped the stream");
    assert_int_equal(e.n, 1);
    cvc_sse_free(&p);
}

/* ---- gRPC messages ---- */

static void test_request_encode(void **state)
{
    cvc_request r;
    cvc_request_init(&r);
    r.model_name = "vllm_model";
    r.id = "42";
    r.text_input = "The capital of France is\n";
    r.text_input_len = strlen(r.text_input);
    r.stream = 1;
    r.sampling_parameters = "{\"max_tokens\": \"100\"}";
    r.exclude_input_in_output = 1;
    r.return_num_output_tokens = true;
    cvc_param params[] = {{.key = "temperature", .kind = CVC_PARAM_STRING, .s = "0.1"},
                          {.key = "max_tokens", .kind = CVC_PARAM_INT64, .i = 7},
                          {.key = "ignore_eos", .kind = CVC_PARAM_BOOL, .b = true}};
    r.params = params;
    r.n_params = 3;
    static const char *const outs[] = {"text_output"};
    r.outputs = outs;
    r.n_outputs = 1;
    uint8_t *buf;
    size_t len;
    cv_error err = {.msg = ""};
    assert_int_equal(cvc_request_encode(&r, &buf, &len, &err), 0);
    Inference__ModelInferRequest *m = inference__model_infer_request__unpack(NULL, len, buf);
    assert_non_null(m);
    assert_string_equal(m->model_name, "vllm_model");
    assert_string_equal(m->model_version, "");
    assert_string_equal(m->id, "42");
    assert_int_equal(m->n_inputs, 5);
    assert_int_equal(m->n_raw_input_contents, 5);
    static const char *names[] = {"text_input", "stream", "sampling_parameters",
                                  "exclude_input_in_output", "return_num_output_tokens"};
    static const char *types[] = {"BYTES", "BOOL", "BYTES", "BOOL", "BOOL"};
    for (size_t i = 0; i < 5; i++) {
        assert_string_equal(m->inputs[i]->name, names[i]);
        assert_string_equal(m->inputs[i]->datatype, types[i]);
        assert_int_equal(m->inputs[i]->n_shape, 1);
        assert_int_equal(m->inputs[i]->shape[0], 1);
    }
    assert_int_equal(m->raw_input_contents[0].len, 4 + 25);
    assert_memory_equal(m->raw_input_contents[0].data, "\x19\0\0\0The capital of France is\n", 29);
    assert_int_equal(m->raw_input_contents[1].len, 1);
    assert_int_equal(m->raw_input_contents[1].data[0], 1);
    assert_memory_equal(m->raw_input_contents[2].data, "\x15\0\0\0{\"max_tokens\": \"100\"}", 25);
    assert_int_equal(m->n_outputs, 1);
    assert_string_equal(m->outputs[0]->name, "text_output");
    assert_int_equal(m->n_parameters, 3);
    for (size_t i = 0; i < 3; i++) {
        const Inference__InferParameter *v = m->parameters[i]->value;
        if (!strcmp(m->parameters[i]->key, "temperature")) {
            assert_int_equal(v->parameter_choice_case,
                             INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_STRING_PARAM);
            assert_string_equal(v->string_param, "0.1");
        } else if (!strcmp(m->parameters[i]->key, "max_tokens")) {
            assert_int_equal(v->parameter_choice_case,
                             INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_INT64_PARAM);
            assert_int_equal(v->int64_param, 7);
        } else {
            assert_string_equal(m->parameters[i]->key, "ignore_eos");
            assert_int_equal(v->parameter_choice_case,
                             INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM);
            assert_true(v->bool_param);
        }
    }
    inference__model_infer_request__free_unpacked(m, NULL);
    free(buf);
}

static void test_request_encode_errors(void **state)
{
    cvc_request r;
    cvc_request_init(&r);
    uint8_t *buf;
    size_t len;
    cv_error err = {.msg = ""};
    r.id = "3";
    r.text_input = "x";
    assert_int_equal(cvc_request_encode(&r, &buf, &len, &err), -1);
    assert_string_equal(err.msg, "request without a model name");
    r.model_name = "m";
    r.text_input = NULL;
    assert_int_equal(cvc_request_encode(&r, &buf, &len, &err), -1);
    assert_string_equal(err.msg, "request '3' without text_input");
}

/* Builds a response the way a Triton server does (raw_output_contents). */
static uint8_t *pack_response(bool raw, size_t *len)
{
    Inference__ModelInferResponse__InferOutputTensor t[4];
    Inference__ModelInferResponse__InferOutputTensor *tp[4];
    const char *names[] = {"text_output", "finish_reason", "num_output_tokens", "num_input_tokens"};
    const char *types[] = {"BYTES", "BYTES", "UINT32", "UINT32"};
    int64_t shape = 1;
    uint8_t *text_raw = NULL, *fr_raw = NULL;
    size_t text_len = 0, fr_len = 0;
    assert_int_equal(cvc_bytes_append(&text_raw, &text_len, " Paris", 6, NULL), 0);
    assert_int_equal(cvc_bytes_append(&fr_raw, &fr_len, "length", 6, NULL), 0);
    uint8_t n_out[4] = {3, 0, 0, 0}, n_in[4] = {0x2c, 0x01, 0, 0};
    ProtobufCBinaryData raws[4] = {{text_len, text_raw}, {fr_len, fr_raw}, {4, n_out}, {4, n_in}};
    Inference__InferTensorContents contents[4];
    ProtobufCBinaryData text_elem = {6, (uint8_t *)" Paris"}, fr_elem = {6, (uint8_t *)"length"};
    uint32_t u_out = 3, u_in = 300;
    for (int i = 0; i < 4; i++) {
        Inference__ModelInferResponse__InferOutputTensor init =
            INFERENCE__MODEL_INFER_RESPONSE__INFER_OUTPUT_TENSOR__INIT;
        Inference__InferTensorContents cinit = INFERENCE__INFER_TENSOR_CONTENTS__INIT;
        t[i] = init;
        contents[i] = cinit;
        t[i].name = (char *)names[i];
        t[i].datatype = (char *)types[i];
        t[i].n_shape = 1;
        t[i].shape = &shape;
        if (!raw) t[i].contents = &contents[i];
        tp[i] = &t[i];
    }
    contents[0].n_bytes_contents = 1;
    contents[0].bytes_contents = &text_elem;
    contents[1].n_bytes_contents = 1;
    contents[1].bytes_contents = &fr_elem;
    contents[2].n_uint_contents = 1;
    contents[2].uint_contents = &u_out;
    contents[3].n_uint_contents = 1;
    contents[3].uint_contents = &u_in;
    Inference__InferParameter final = INFERENCE__INFER_PARAMETER__INIT;
    final.parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM;
    final.bool_param = true;
    Inference__ModelInferResponse__ParametersEntry e =
        INFERENCE__MODEL_INFER_RESPONSE__PARAMETERS_ENTRY__INIT;
    e.key = "triton_final_response";
    e.value = &final;
    Inference__ModelInferResponse__ParametersEntry *ep = &e;
    Inference__ModelInferResponse m = INFERENCE__MODEL_INFER_RESPONSE__INIT;
    m.model_name = "vllm_model";
    m.id = "7";
    m.n_parameters = 1;
    m.parameters = &ep;
    m.n_outputs = 4;
    m.outputs = tp;
    if (raw) {
        m.n_raw_output_contents = 4;
        m.raw_output_contents = raws;
    }
    Inference__ModelStreamInferResponse s = INFERENCE__MODEL_STREAM_INFER_RESPONSE__INIT;
    s.infer_response = &m;
    *len = inference__model_stream_infer_response__get_packed_size(&s);
    uint8_t *buf = malloc(*len);
    assert_non_null(buf);
    inference__model_stream_infer_response__pack(&s, buf);
    free(text_raw);
    free(fr_raw);
    return buf;
}

static void test_response_decode(void **state)
{
    for (int raw = 0; raw <= 1; raw++) {
        size_t len;
        uint8_t *buf = pack_response(raw, &len);
        cvc_response r;
        cv_error err = {.msg = ""};
        assert_int_equal(cvc_response_decode(buf, len, &r, &err), 0);
        assert_string_equal(r.id, "7");
        assert_null(r.error_message);
        assert_true(r.final);
        assert_int_equal(r.n_text, 1);
        assert_string_equal(r.text[0], " Paris");
        assert_int_equal(r.text_len[0], 6);
        assert_string_equal(r.finish_reason, "length");
        assert_int_equal(r.num_output_tokens, 3);
        assert_int_equal(r.num_input_tokens, 300);
        cvc_response_free(&r);
        free(buf);
    }
}

static void test_response_decode_error(void **state)
{
    Inference__ModelInferResponse m = INFERENCE__MODEL_INFER_RESPONSE__INIT;
    m.id = "9";
    Inference__ModelStreamInferResponse s = INFERENCE__MODEL_STREAM_INFER_RESPONSE__INIT;
    s.error_message = "LoRA feature is not enabled.";
    s.infer_response = &m;
    uint8_t buf[256];
    size_t len = inference__model_stream_infer_response__pack(&s, buf);
    cvc_response r;
    cv_error err = {.msg = ""};
    assert_int_equal(cvc_response_decode(buf, len, &r, &err), 0);
    assert_string_equal(r.id, "9");
    assert_string_equal(r.error_message, "LoRA feature is not enabled.");
    assert_false(r.final);
    assert_int_equal(r.n_text, 0);
    assert_int_equal(r.num_output_tokens, -1);
    cvc_response_free(&r);

    static const uint8_t garbage[] = {0x0a, 0xff};
    assert_int_equal(cvc_response_decode(garbage, sizeof garbage, &r, &err), -1);
    assert_string_equal(err.msg, "malformed ModelStreamInferResponse (2 bytes)");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bytes_append_little_endian),
        cmocka_unit_test(test_bytes_decode),
        cmocka_unit_test(test_bytes_decode_errors),
        cmocka_unit_test(test_bool),
        cmocka_unit_test(test_sse_whole_and_split),
        cmocka_unit_test(test_sse_handler_stops),
        cmocka_unit_test(test_request_encode),
        cmocka_unit_test(test_request_encode_errors),
        cmocka_unit_test(test_response_decode),
        cmocka_unit_test(test_response_decode_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

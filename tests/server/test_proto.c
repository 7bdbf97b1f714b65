/* cv_proto: the generated messages carry Triton's field numbers. Asserts the
 * exact wire bytes of a ModelInferRequest and a stream response, so a
 * renumbered field in proto/ fails here before any client notices. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "grpc_service.pb-c.h"

static void test_infer_request_wire_bytes(void **state)
{
    (void)state;
    Inference__ModelInferRequest req = INFERENCE__MODEL_INFER_REQUEST__INIT;
    req.model_name = "m";
    req.model_version = "1";
    req.id = "7";
    Inference__InferParameter p = INFERENCE__INFER_PARAMETER__INIT;
    p.parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM;
    p.bool_param = 1;
    Inference__ModelInferRequest__ParametersEntry e =
        INFERENCE__MODEL_INFER_REQUEST__PARAMETERS_ENTRY__INIT;
    e.key = "k";
    e.value = &p;
    Inference__ModelInferRequest__ParametersEntry *ep = &e;
    req.n_parameters = 1;
    req.parameters = &ep;
    Inference__ModelInferRequest__InferInputTensor in =
        INFERENCE__MODEL_INFER_REQUEST__INFER_INPUT_TENSOR__INIT;
    in.name = "t";
    in.datatype = "BYTES";
    int64_t shape[1] = {1};
    in.n_shape = 1;
    in.shape = shape;
    Inference__ModelInferRequest__InferInputTensor *inp = &in;
    req.n_inputs = 1;
    req.inputs = &inp;
    ProtobufCBinaryData raw = {.len = 2, .data = (uint8_t *)"ab"};
    req.n_raw_input_contents = 1;
    req.raw_input_contents = &raw;

    uint8_t buf[128];
    size_t n = inference__model_infer_request__pack(&req, buf);
    static const uint8_t want[] = {
        0x0a, 1,  'm',                                /* model_name = 1 */
        0x12, 1,  '1',                                /* model_version = 2 */
        0x1a, 1,  '7',                                /* id = 3 */
        0x22, 7,  0x0a, 1,   'k', 0x12, 2,   0x08, 1, /* parameters = 4: {k: bool_param=1 true} */
        0x2a, 13, 0x0a, 1,   't',                     /* inputs = 5: name = 1 */
        0x12, 5,  'B',  'Y', 'T', 'E',  'S',          /* datatype = 2 */
        0x1a, 1,  1,                                  /* shape = 3 (packed) */
        0x3a, 2,  'a',  'b',                          /* raw_input_contents = 7 */
    };
    assert_int_equal(n, sizeof want);
    assert_memory_equal(buf, want, sizeof want);

    Inference__ModelInferRequest *back = inference__model_infer_request__unpack(NULL, n, buf);
    assert_non_null(back);
    assert_string_equal(back->id, "7");
    assert_int_equal(back->n_raw_input_contents, 1);
    assert_memory_equal(back->raw_input_contents[0].data, "ab", 2);
    inference__model_infer_request__free_unpacked(back, NULL);
}

static void test_stream_response_wire_bytes(void **state)
{
    (void)state;
    Inference__ModelInferResponse r = INFERENCE__MODEL_INFER_RESPONSE__INIT;
    r.id = "x";
    ProtobufCBinaryData raw = {.len = 1, .data = (uint8_t *)"z"};
    r.n_raw_output_contents = 1;
    r.raw_output_contents = &raw;
    Inference__ModelStreamInferResponse s = INFERENCE__MODEL_STREAM_INFER_RESPONSE__INIT;
    s.error_message = "e";
    s.infer_response = &r;
    uint8_t buf[64];
    size_t n = inference__model_stream_infer_response__pack(&s, buf);
    static const uint8_t want[] = {
        0x0a, 1, 'e', /* error_message = 1 */
        0x12, 6,      /* infer_response = 2 */
        0x1a, 1, 'x', /*   id = 3 */
        0x32, 1, 'z', /*   raw_output_contents = 6 */
    };
    assert_int_equal(n, sizeof want);
    assert_memory_equal(buf, want, sizeof want);
}

static void test_model_config_field_numbers(void **state)
{
    (void)state;
    Inference__ModelTransactionPolicy pol = INFERENCE__MODEL_TRANSACTION_POLICY__INIT;
    pol.decoupled = 1;
    Inference__ModelConfig c = INFERENCE__MODEL_CONFIG__INIT;
    c.backend = "vllm";
    c.model_transaction_policy = &pol;
    uint8_t buf[64];
    size_t n = inference__model_config__pack(&c, buf);
    static const uint8_t want[] = {
        0x8a, 0x01, 4, 'v',  'l', 'l', 'm', /* backend = 17 */
        0x9a, 0x01, 2, 0x08, 1,             /* model_transaction_policy = 19 */
    };
    assert_int_equal(n, sizeof want);
    assert_memory_equal(buf, want, sizeof want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_infer_request_wire_bytes),
        cmocka_unit_test(test_stream_response_wire_bytes),
        cmocka_unit_test(test_model_config_field_numbers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* The server core's one mapping from error class to HTTP status and gRPC
 * code (src/server/core.h), checked against Triton's: http_server.cc
 * HttpCodeFromError and grpc_utils.cc's TRITONSERVER error -> grpc code. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <grpc/status.h>

#include "server/core.h"

static void test_error_status(void **state)
{
    (void)state;
    const struct {
        cv_error_class cls;
        int http, grpc;
    } want[] = {
        {CV_ERR_INVALID, 400, GRPC_STATUS_INVALID_ARGUMENT},
        {CV_ERR_NOT_FOUND, 404, GRPC_STATUS_NOT_FOUND},
        {CV_ERR_UNAVAILABLE, 503, GRPC_STATUS_UNAVAILABLE},
        {CV_ERR_UNSUPPORTED, 501, GRPC_STATUS_UNIMPLEMENTED},
        {CV_ERR_INTERNAL, 500, GRPC_STATUS_INTERNAL},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        cv_protocol_status st = cv_error_status(want[i].cls);
        assert_int_equal(st.http, want[i].http);
        assert_int_equal(st.grpc, want[i].grpc);
    }
}

static void test_errorf_class(void **state)
{
    (void)state;
    cv_error err = {.msg = ""};
    assert_int_equal(cv_errorf_class(&err, CV_ERR_NOT_FOUND, "model '%s' is not found", "m"), -1);
    assert_string_equal(err.msg, "model 'm' is not found");
    assert_int_equal(err.cls, CV_ERR_NOT_FOUND);
    /* cv_errorf resets the class to INVALID. */
    cv_errorf(&err, "bad");
    assert_int_equal(err.cls, CV_ERR_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_status),
        cmocka_unit_test(test_errorf_class),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

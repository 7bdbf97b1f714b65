/* cv_output_queue: FIFO order, an fd readable exactly while outputs are
 * pending, timed and cross-thread waits. */
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/clock.h"
#include "cvllm/engine.h"
#include "engine/engine_internal.h"

static cv_request_output *make(uint64_t id)
{
    cv_request_output *o = calloc(1, sizeof(*o));
    assert_non_null(o);
    o->request_id = id;
    return o;
}

static bool readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) == 1;
}

static void test_fifo_and_fd(void **state)
{
    (void)state;
    cv_output_queue *q = cv_output_queue_create();
    assert_non_null(q);
    assert_false(readable(cv_output_queue_fd(q)));
    assert_null(cv_output_queue_pop(q));
    assert_int_equal(output_queue_push(q, make(1)), 0);
    assert_int_equal(output_queue_push(q, make(2)), 0);
    assert_true(readable(cv_output_queue_fd(q)));
    cv_request_output *o = cv_output_queue_pop(q);
    assert_int_equal(o->request_id, 1);
    cv_request_output_free(o);
    assert_true(readable(cv_output_queue_fd(q)));
    o = cv_output_queue_pop(q);
    assert_int_equal(o->request_id, 2);
    cv_request_output_free(o);
    assert_false(readable(cv_output_queue_fd(q)));
    /* Pending outputs are freed with the queue. */
    assert_int_equal(output_queue_push(q, make(3)), 0);
    cv_output_queue_destroy(q);
}

static void *pusher(void *arg)
{
    usleep(20000);
    output_queue_push(arg, make(9));
    return NULL;
}

static void test_wait(void **state)
{
    (void)state;
    cv_output_queue *q = cv_output_queue_create();
    uint64_t t0 = cv_now_ns();
    assert_null(cv_output_queue_wait(q, 30));
    assert_true(cv_now_ns() - t0 >= 29000000ULL);
    assert_null(cv_output_queue_wait(q, 0));
    pthread_t th;
    pthread_create(&th, NULL, pusher, q);
    cv_request_output *o = cv_output_queue_wait(q, -1);
    assert_non_null(o);
    assert_int_equal(o->request_id, 9);
    cv_request_output_free(o);
    pthread_join(th, NULL);
    cv_output_queue_destroy(q);
}

static void test_finish_reason_names(void **state)
{
    (void)state;
    assert_string_equal(cv_finish_reason_name(CV_FINISH_NONE), "None");
    assert_string_equal(cv_finish_reason_name(CV_FINISH_STOP), "stop");
    assert_string_equal(cv_finish_reason_name(CV_FINISH_LENGTH), "length");
    assert_string_equal(cv_finish_reason_name(CV_FINISH_ABORT), "abort");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fifo_and_fd),
        cmocka_unit_test(test_wait),
        cmocka_unit_test(test_finish_reason_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

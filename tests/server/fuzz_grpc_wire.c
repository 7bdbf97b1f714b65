/* libFuzzer target: gRPC request messages as they come off the wire (client
 * input; must never crash, leak or read out of bounds): protobuf-c decode
 * of a ModelInferRequest and a RepositoryModelLoadRequest, then the proto3
 * string checks of grpc_wire.c on the same bytes. A message that decodes
 * and passes the checks has only valid UTF-8, NUL-free strings. Built with
 * CVLLM_FUZZ (clang). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/utf8.h"
#include "server/grpc_internal.h"

static void check_name(const char *s)
{
    if (cv_utf8_valid_prefix((const uint8_t *)s, strlen(s)) != strlen(s)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cv_error err;
    Inference__ModelInferRequest *rq = inference__model_infer_request__unpack(NULL, size, data);
    if (rq) {
        if (cv_grpc_check_strings(&inference__model_infer_request__descriptor, data, size, &err) ==
            0) {
            check_name(rq->model_name);
            check_name(rq->id);
            for (size_t i = 0; i < rq->n_inputs; i++)
                check_name(rq->inputs[i]->name);
        }
        inference__model_infer_request__free_unpacked(rq, NULL);
    }
    Inference__RepositoryModelLoadRequest *lr =
        inference__repository_model_load_request__unpack(NULL, size, data);
    if (lr) {
        if (cv_grpc_check_strings(&inference__repository_model_load_request__descriptor, data, size,
                                  &err) == 0)
            check_name(lr->model_name);
        inference__repository_model_load_request__free_unpacked(lr, NULL);
    }
    return 0;
}

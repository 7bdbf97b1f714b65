/* gRPC message handling shared by grpc.c (transport: completion queue,
 * calls, streams) and grpc_codec.c (protobuf-c messages <-> cvllm). */
#ifndef CV_SERVER_GRPC_INTERNAL_H
#define CV_SERVER_GRPC_INTERNAL_H

#include <grpc/status.h>
#include <stddef.h>
#include <stdint.h>

#include "grpc_service.pb-c.h"
#include "server/server_internal.h"

/* Handles one unary RPC (method is the full path
 * "/inference.GRPCInferenceService/X"). On OK *out is the packed response
 * (malloc'd); otherwise msg holds the status details. */
grpc_status_code cv_grpc_unary(cv_server *s, const char *method, const uint8_t *in, size_t in_len,
                               uint8_t **out, size_t *out_len, char *msg, size_t msg_cap);

/* RepositoryModelLoad, answered apart because the load runs on a thread
 * of the core: the model name of the packed request (malloc'd; NULL with
 * err when it does not parse or a string field is not valid UTF-8), and
 * the reply once the load ended with rc / err. */
char *cv_grpc_load_request_name(const uint8_t *in, size_t len, cv_error *err);
grpc_status_code cv_grpc_load_reply(int rc, const cv_error *err, uint8_t **out, size_t *out_len,
                                    char *msg, size_t msg_cap);

/* Inputs and parameters of one ModelInferRequest into ir. */
int cv_grpc_parse_infer(const Inference__ModelInferRequest *rq, const cv_model *m,
                        cv_infer_request *ir, cv_error *err);

/* A packed ModelStreamInferResponse: outputs of resp (NULL = none) filtered
 * by the requested names (n_wanted 0 = all), parameter
 * triton_final_response, and error_message when error != NULL. */
uint8_t *cv_grpc_pack_stream_response(const cv_infer_response *resp, char *const *wanted,
                                      size_t n_wanted, const char *model, const char *version,
                                      const char *id, bool final, const char *error, size_t *len);

/* 0 when every string field of the packed message `in` (a desc, nested
 * messages included) is valid UTF-8 without NUL; otherwise -1 with err
 * naming the field (answer INVALID_ARGUMENT). */
int cv_grpc_check_strings(const ProtobufCMessageDescriptor *desc, const uint8_t *in, size_t len,
                          cv_error *err);

#endif

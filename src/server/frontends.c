/* The frontends of cvllm-server, in start order: the only place that
 * names them (each defines its cv_frontend_ops in its own file). HTTP
 * starts first and gRPC last, and they stop in the reverse order, so gRPC
 * streams drain while the HTTP loop still runs. */
#include "server/server_internal.h"

extern const cv_frontend_ops cv_http_frontend;    /* http.c */
extern const cv_frontend_ops cv_metrics_frontend; /* metrics.c */
extern const cv_frontend_ops cv_grpc_frontend;    /* grpc.c */

const cv_frontend_ops *const cv_server_frontends[] = {&cv_http_frontend, &cv_metrics_frontend,
                                                      &cv_grpc_frontend, NULL};

/* The test hub (tests/hub/hub_server.py) from C tests: started on a free
 * loopback port, its request log read back, stopped. Reusable by any test
 * that needs a HuggingFace hub on loopback (e.g. the seed's vllm_model with
 * a fixture served as facebook/opt-125m). */
#ifndef CV_TEST_HUB_HARNESS_H
#define CV_TEST_HUB_HARNESS_H

#include <stdbool.h>
#include <sys/types.h>

typedef struct th_hub {
    pid_t pid;
    int port;
    char endpoint[64]; /* "http://127.0.0.1:<port>" */
    char log[512];     /* its request log: one JSON object per line */
} th_hub;

/* Starts python3 tests/hub/hub_server.py --port <free> --log <log_dir>/hub-<port>.log
 * followed by args (NULL-terminated, e.g. "--repo", "org/name=DIR", NULL)
 * and waits until it accepts connections. Returns false when python3 is
 * missing or the hub did not come up. Run from the source root. */
bool th_hub_start(th_hub *h, const char *log_dir, const char *const *args);
/* SIGTERM and wait. */
void th_hub_stop(th_hub *h);
/* How many logged requests had this method and a path containing
 * path_part (and, unless NULL, exactly this Range header; "" = none). */
int th_hub_count(const th_hub *h, const char *method, const char *path_part, const char *range);
/* How many logged requests had a path containing path_part and exactly
 * this Authorization header (NULL = none). */
int th_hub_count_auth(const th_hub *h, const char *path_part, const char *auth);
/* A loopback endpoint where nothing listens ("http://127.0.0.1:<port>",
 * static buffer). */
const char *th_hub_down_endpoint(void);

#endif

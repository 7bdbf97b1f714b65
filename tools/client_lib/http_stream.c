/* HTTP requests over libcurl: streaming POSTs whose text/event-stream answer
 * is parsed as it arrives (each event stamped with its arrival time, which
 * is what TTFT and inter-token latency are measured from), and plain GETs. */
#include "client.h"

#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"

int cvc_http_global_init(cv_error *err)
{
    CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);
    if (rc != CURLE_OK) return cv_errorf(err, "curl_global_init: %s", curl_easy_strerror(rc));
    return 0;
}

void cvc_http_global_cleanup(void)
{
    curl_global_cleanup();
}

void cvc_http_result_free(cvc_http_result *res)
{
    free(res->body);
    memset(res, 0, sizeof *res);
}

typedef struct http_ctx {
    CURL *curl;
    bool checked_type; /* content type looked at (first body bytes) */
    bool is_sse;
    cvc_sse_parser sse;
    cvc_http_event_fn on_event;
    void *user;
    uint64_t chunk_ns; /* arrival time of the chunk being parsed */
    cvc_http_result *res;
    bool oom;
    cv_error sse_err;
} http_ctx;

static int on_sse_event(void *user, const char *data, size_t len)
{
    http_ctx *c = user;
    return c->on_event(c->user, data, len, c->chunk_ns);
}

static int append_body(http_ctx *c, const char *data, size_t len)
{
    char *b = realloc(c->res->body, c->res->body_len + len + 1);
    if (!b) return -1;
    memcpy(b + c->res->body_len, data, len);
    c->res->body_len += len;
    b[c->res->body_len] = '\0';
    c->res->body = b;
    return 0;
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *user)
{
    http_ctx *c = user;
    size_t len = size * nmemb;
    uint64_t now = cv_now_ns();
    if (!c->checked_type) {
        char *type = NULL;
        long status = 0;
        curl_easy_getinfo(c->curl, CURLINFO_CONTENT_TYPE, &type);
        curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &status);
        /* Only a successful event stream is parsed; error bodies are kept. */
        c->is_sse =
            c->on_event && status == 200 && type && strncmp(type, "text/event-stream", 17) == 0;
        c->checked_type = true;
    }
    if (!c->is_sse) {
        if (append_body(c, data, len)) {
            c->oom = true;
            return 0;
        }
        return len;
    }
    c->chunk_ns = now;
    if (cvc_sse_feed(&c->sse, data, len, &c->sse_err)) return 0;
    return len;
}

static int perform(CURL *curl, http_ctx *c, const char *url, long timeout_ms, cv_error *err)
{
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L); /* safe in threads */
    curl_easy_setopt(curl, CURLOPT_TCP_NODELAY, 1L);
    if (timeout_ms > 0) curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms);
    CURLcode rc = curl_easy_perform(curl);
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &c->res->status);
    if (c->oom) return cv_errorf(err, "%s: out of memory reading the response", url);
    if (rc == CURLE_WRITE_ERROR && c->sse_err.msg[0])
        return cv_errorf(err, "%s: %s", url, c->sse_err.msg);
    if (rc != CURLE_OK) return cv_errorf(err, "%s: %s", url, curl_easy_strerror(rc));
    return 0;
}

int cvc_http_post_sse(const char *url, const char *json_body, long timeout_ms,
                      cvc_http_event_fn on_event, void *user, cvc_http_result *res, cv_error *err)
{
    memset(res, 0, sizeof *res);
    CURL *curl = curl_easy_init();
    if (!curl) return cv_errorf(err, "%s: curl_easy_init failed", url);
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    struct curl_slist *h2 =
        headers ? curl_slist_append(headers, "Accept: text/event-stream") : NULL;
    if (!h2) {
        curl_slist_free_all(headers);
        curl_easy_cleanup(curl);
        return cv_errorf(err, "%s: out of memory building headers", url);
    }
    headers = h2;
    http_ctx c = {.curl = curl, .on_event = on_event, .user = user, .res = res};
    cvc_sse_init(&c.sse, on_sse_event, &c);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, json_body);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)strlen(json_body));
    int rc = perform(curl, &c, url, timeout_ms, err);
    cvc_sse_free(&c.sse);
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);
    return rc;
}

int cvc_http_get(const char *url, long timeout_ms, cvc_http_result *res, cv_error *err)
{
    memset(res, 0, sizeof *res);
    CURL *curl = curl_easy_init();
    if (!curl) return cv_errorf(err, "%s: curl_easy_init failed", url);
    http_ctx c = {.curl = curl, .res = res};
    int rc = perform(curl, &c, url, timeout_ms, err);
    curl_easy_cleanup(curl);
    return rc;
}

/* Incremental text/event-stream parser (see client.h). Only the "data"
 * field matters to inference streams; the rest of the EventSource grammar
 * (comments, event/id/retry fields, the three line-end forms) is parsed so
 * that any compliant server works. */
#include "client.h"

#include <stdlib.h>
#include <string.h>

void cvc_sse_init(cvc_sse_parser *p, cvc_sse_event_fn on_event, void *user)
{
    memset(p, 0, sizeof *p);
    p->on_event = on_event;
    p->user = user;
}

void cvc_sse_free(cvc_sse_parser *p)
{
    free(p->line);
    free(p->data);
    memset(p, 0, sizeof *p);
}

static int grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 256;
    while (c < need)
        c *= 2;
    char *b = realloc(*buf, c);
    if (!b) return -1;
    *buf = b;
    *cap = c;
    return 0;
}

/* Ends the current event: reports it when it had data, then resets. */
static int dispatch(cvc_sse_parser *p, cv_error *err)
{
    if (!p->has_data) return 0;
    if (grow(&p->data, &p->data_cap, p->data_len + 1))
        return cv_errorf(err, "out of memory parsing a server-sent event");
    p->data[p->data_len] = '\0';
    size_t len = p->data_len;
    p->data_len = 0;
    p->has_data = false;
    if (p->on_event(p->user, p->data, len))
        return cv_errorf(err, "server-sent event handler stopped the stream");
    return 0;
}

static int process_line(cvc_sse_parser *p, const char *line, size_t len, cv_error *err)
{
    if (len == 0) return dispatch(p, err);
    if (line[0] == ':') return 0; /* comment */
    const char *colon = memchr(line, ':', len);
    size_t name_len = colon ? (size_t)(colon - line) : len;
    if (name_len != 4 || memcmp(line, "data", 4) != 0) return 0;
    const char *value = colon ? colon + 1 : line + len;
    size_t value_len = (size_t)(line + len - value);
    if (value_len && value[0] == ' ') {
        value++;
        value_len--;
    }
    /* Several data lines in one event are joined with '\n'. */
    size_t need = p->data_len + (p->has_data ? 1 : 0) + value_len + 1;
    if (grow(&p->data, &p->data_cap, need))
        return cv_errorf(err, "out of memory parsing a server-sent event");
    if (p->has_data) p->data[p->data_len++] = '\n';
    memcpy(p->data + p->data_len, value, value_len);
    p->data_len += value_len;
    p->has_data = true;
    return 0;
}

int cvc_sse_feed(cvc_sse_parser *p, const char *bytes, size_t len, cv_error *err)
{
    size_t i = 0;
    if (p->last_was_cr && len > 0) {
        if (bytes[0] == '\n') i = 1; /* the LF of a CRLF split across chunks */
        p->last_was_cr = false;
    }
    size_t start = i;
    for (; i < len; i++) {
        char c = bytes[i];
        if (c != '\n' && c != '\r') continue;
        const char *line = bytes + start;
        size_t line_len = i - start;
        if (p->line_len) { /* the line began in an earlier chunk */
            if (grow(&p->line, &p->line_cap, p->line_len + line_len))
                return cv_errorf(err, "out of memory parsing a server-sent event");
            memcpy(p->line + p->line_len, line, line_len);
            line = p->line;
            line_len += p->line_len;
            p->line_len = 0;
        }
        if (process_line(p, line, line_len, err)) return -1;
        if (c == '\r') {
            if (i + 1 < len) {
                if (bytes[i + 1] == '\n') i++;
            } else {
                p->last_was_cr = true;
            }
        }
        start = i + 1;
    }
    if (start < len) {
        size_t rest = len - start;
        if (grow(&p->line, &p->line_cap, p->line_len + rest))
            return cv_errorf(err, "out of memory parsing a server-sent event");
        memcpy(p->line + p->line_len, bytes + start, rest);
        p->line_len += rest;
    }
    return 0;
}

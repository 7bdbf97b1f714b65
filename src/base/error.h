/* Errors as values: a function that can fail returns 0 on success and -1 on
 * failure, after writing a message into the caller's cv_error. The message
 * names the input that was wrong (file, key, field, value) so it can be shown
 * to a user as is. */
#ifndef CV_BASE_ERROR_H
#define CV_BASE_ERROR_H

#include <stddef.h>

enum { CV_ERROR_MSG_BYTES = 1024 };

/* What kind of failure, for frontends that map errors to a status code
 * (src/server: cv_error_status, the one place that maps them):
 * CV_ERR_INVALID is the caller's fault (400 / INVALID_ARGUMENT),
 * CV_ERR_UNAVAILABLE a temporary refusal worth retrying (503 / UNAVAILABLE),
 * CV_ERR_NOT_FOUND an unknown name (404 / NOT_FOUND), CV_ERR_UNSUPPORTED an
 * operation not offered (501 / UNIMPLEMENTED), CV_ERR_INTERNAL a failure that
 * is not the caller's (500 / INTERNAL). Triton's error codes, by another name. */
typedef enum {
    CV_ERR_INVALID = 0,
    CV_ERR_UNAVAILABLE,
    CV_ERR_NOT_FOUND,
    CV_ERR_UNSUPPORTED,
    CV_ERR_INTERNAL,
} cv_error_class;

typedef struct cv_error {
    char msg[CV_ERROR_MSG_BYTES]; /* NUL-terminated; "" when no error */
    cv_error_class cls;           /* set to CV_ERR_INVALID by cv_errorf */
} cv_error;

/* Formats the message into err (which may be NULL), sets its class to
 * CV_ERR_INVALID and returns -1, so callers can write
 * `return cv_errorf(err, "...", ...);`. */
int cv_errorf(cv_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* cv_errorf with class cls. */
int cv_errorf_class(cv_error *err, cv_error_class cls, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "prefix: " to an existing message (for adding context such as the
 * file name on the way up). Returns -1. */
int cv_error_prefix(cv_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif

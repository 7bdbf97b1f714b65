/* Errors as values: a function that can fail returns 0 on success and -1 on
 * failure, after writing a message into the caller's cv_error. The message
 * names the input that was wrong (file, key, field, value) so it can be shown
 * to a user as is. */
#ifndef CV_BASE_ERROR_H
#define CV_BASE_ERROR_H

#include <stddef.h>

enum { CV_ERROR_MSG_BYTES = 1024 };

typedef struct cv_error {
    char msg[CV_ERROR_MSG_BYTES]; /* NUL-terminated; "" when no error */
} cv_error;

/* Formats the message into err (which may be NULL) and returns -1, so callers
 * can write `return cv_errorf(err, "...", ...);`. */
int cv_errorf(cv_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prepends "prefix: " to an existing message (for adding context such as the
 * file name on the way up). Returns -1. */
int cv_error_prefix(cv_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif

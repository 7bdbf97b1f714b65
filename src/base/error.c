/* Error messages as values; see error.h. */
#include "base/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int cv_errorf(cv_error *err, const char *fmt, ...)
{
    if (err) {
        err->cls = CV_ERR_INVALID;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int cv_errorf_class(cv_error *err, cv_error_class cls, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->cls = cls;
    }
    return -1;
}

int cv_error_prefix(cv_error *err, const char *fmt, ...)
{
    if (!err) return -1;
    char old[CV_ERROR_MSG_BYTES];
    memcpy(old, err->msg, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    /* Append ": old", truncating the old message if the whole does not fit. */
    size_t used = strlen(err->msg);
    if (used + 3 <= sizeof err->msg) {
        memcpy(err->msg + used, ": ", 2);
        used += 2;
        size_t room = sizeof err->msg - used - 1;
        size_t old_len = strnlen(old, room);
        memcpy(err->msg + used, old, old_len);
        err->msg[used + old_len] = '\0';
    }
    return -1;
}

/* Leveled logging; see log.h. */
#include "base/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdatomic.h>

static _Atomic int log_level = CV_LOG_INFO;
static _Atomic unsigned log_off; /* bit per level turned off */

void cv_log_set_level(cv_log_level level)
{
    atomic_store(&log_level, (int)level);
}

cv_log_level cv_log_get_level(void)
{
    return (cv_log_level)atomic_load(&log_level);
}

void cv_log_enable(cv_log_level level, int on)
{
    if (on)
        atomic_fetch_and(&log_off, ~(1u << level));
    else
        atomic_fetch_or(&log_off, 1u << level);
}

void cv_log(cv_log_level level, const char *fmt, ...)
{
    if ((int)level > atomic_load(&log_level) || (atomic_load(&log_off) >> level & 1u)) return;
    static const char tag[] = {'E', 'W', 'I', 'V'};
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* A single call keeps concurrent lines from interleaving. */
    fprintf(stderr, "%c cvllm: %s\n", tag[level], line);
}

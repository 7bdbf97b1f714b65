/* Leveled logging to stderr, thread-safe (one fprintf per line). The level is
 * process-wide: tritonserver's --log-verbose=N maps onto it. */
#ifndef CV_BASE_LOG_H
#define CV_BASE_LOG_H

typedef enum { CV_LOG_ERROR = 0, CV_LOG_WARN, CV_LOG_INFO, CV_LOG_VERBOSE } cv_log_level;

void cv_log_set_level(cv_log_level level);
cv_log_level cv_log_get_level(void);
/* Turns one level's lines off or on again beside the threshold
 * (tritonserver's --log-info/--log-warning/--log-error=false). */
void cv_log_enable(cv_log_level level, int on);
void cv_log(cv_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define cv_log_error(...) cv_log(CV_LOG_ERROR, __VA_ARGS__)
#define cv_log_warn(...) cv_log(CV_LOG_WARN, __VA_ARGS__)
#define cv_log_info(...) cv_log(CV_LOG_INFO, __VA_ARGS__)
#define cv_log_verbose(...) cv_log(CV_LOG_VERBOSE, __VA_ARGS__)

#endif

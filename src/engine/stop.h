/* Stop strings over the incrementally detokenized output, as vLLM's
 * StopChecker.check_stop_strings and IncrementalDetokenizer do it. */
#ifndef CV_ENGINE_STOP_H
#define CV_ENGINE_STOP_H

#include <stdbool.h>
#include <stddef.h>

/* Looks for the stop strings, in list order, in the last new_bytes of text
 * (and the stop_len - 1 bytes before them, so a match spanning tokens is
 * found). On a match returns its index in stops and sets *new_len to the
 * length text must be cut to: the start of the stop string, or its end
 * when include is true. Returns -1 when none matches. */
int stop_find(const char *text, size_t len, size_t new_bytes, char *const *stops, int n_stops,
              bool include, size_t *new_len);

/* How many characters of not yet finished output must be held back from
 * the stream because a stop string could still begin in them: the longest
 * stop string's length in characters minus one, 0 when include is true. */
int stop_holdback_chars(char *const *stops, int n_stops, bool include);

/* The byte length of text once its last n_chars UTF-8 characters are held
 * back (never cutting a character). */
size_t stop_emit_limit(const char *text, size_t len, int n_chars);

#endif

/* Stop-string search and stream hold-back. */
#include <string.h>

#include "stop.h"

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

int stop_find(const char *text, size_t len, size_t new_bytes, char *const *stops, int n_stops,
              bool include, size_t *new_len)
{
    if (new_bytes == 0) return -1;
    for (int i = 0; i < n_stops; i++) {
        size_t sl = strlen(stops[i]);
        if (sl == 0 || sl > len) continue;
        size_t from = len > new_bytes + sl - 1 ? len - new_bytes - sl + 1 : 0;
        for (size_t at = from; at + sl <= len; at++) {
            if (memcmp(text + at, stops[i], sl) == 0) {
                *new_len = include ? at + sl : at;
                return i;
            }
        }
    }
    return -1;
}

int stop_holdback_chars(char *const *stops, int n_stops, bool include)
{
    if (include) return 0;
    size_t longest = 0;
    for (int i = 0; i < n_stops; i++) {
        size_t c = utf8_chars(stops[i]);
        if (c > longest) longest = c;
    }
    return longest > 0 ? (int)longest - 1 : 0;
}

size_t stop_emit_limit(const char *text, size_t len, int n_chars)
{
    size_t end = len;
    for (int c = 0; c < n_chars && end > 0; c++) {
        end--;
        while (end > 0 && ((unsigned char)text[end] & 0xC0) == 0x80)
            end--;
    }
    return end;
}

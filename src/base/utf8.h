/* UTF-8 validation of text that arrives from outside (model names, proto3
 * string fields) before it is used as a C string or echoed into JSON or
 * protobuf, both of which require valid UTF-8. */
#ifndef CV_BASE_UTF8_H
#define CV_BASE_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Length of the longest prefix of s[0, n) that is valid UTF-8 (no overlong
 * forms, no UTF-16 surrogates, nothing beyond U+10FFFF) and holds no NUL;
 * n when all of it is. */
size_t cv_utf8_valid_prefix(const uint8_t *s, size_t n);

#endif

/* Triton's raw tensor encoding (see client.h): BYTES elements carry a 4-byte
 * little-endian length prefix, BOOL is one byte per element. */
#include "client.h"

#include <stdlib.h>
#include <string.h>

int cvc_bytes_append(uint8_t **buf, size_t *buf_len, const void *data, size_t len, cv_error *err)
{
    if (len > UINT32_MAX)
        return cv_errorf(err, "BYTES element of %zu bytes exceeds the 4-byte length prefix", len);
    uint8_t *grown = realloc(*buf, *buf_len + 4 + len);
    if (!grown) return cv_errorf(err, "out of memory encoding a BYTES element of %zu bytes", len);
    uint8_t *p = grown + *buf_len;
    /* Written byte by byte so the encoding is little-endian on any host. */
    p[0] = (uint8_t)(len & 0xff);
    p[1] = (uint8_t)((len >> 8) & 0xff);
    p[2] = (uint8_t)((len >> 16) & 0xff);
    p[3] = (uint8_t)((len >> 24) & 0xff);
    if (len) memcpy(p + 4, data, len);
    *buf = grown;
    *buf_len += 4 + len;
    return 0;
}

int cvc_bytes_decode(const uint8_t *raw, size_t raw_len, const uint8_t ***elems, size_t **lens,
                     size_t *n, cv_error *err)
{
    *elems = NULL;
    *lens = NULL;
    *n = 0;
    size_t cap = 0, off = 0;
    while (off < raw_len) {
        if (raw_len - off < 4) {
            free(*elems);
            free(*lens);
            *elems = NULL;
            *lens = NULL;
            return cv_errorf(err,
                             "BYTES tensor element %zu: truncated length prefix (%zu of 4 bytes)",
                             *n, raw_len - off);
        }
        uint32_t len = (uint32_t)raw[off] | (uint32_t)raw[off + 1] << 8 |
                       (uint32_t)raw[off + 2] << 16 | (uint32_t)raw[off + 3] << 24;
        off += 4;
        if (len > raw_len - off) {
            free(*elems);
            free(*lens);
            *elems = NULL;
            *lens = NULL;
            return cv_errorf(
                err, "BYTES tensor element %zu: length %u runs past the end (%zu bytes left)", *n,
                len, raw_len - off);
        }
        if (*n == cap) {
            cap = cap ? 2 * cap : 4;
            const uint8_t **e = realloc(*elems, cap * sizeof *e);
            if (e) *elems = e;
            size_t *l = e ? realloc(*lens, cap * sizeof *l) : NULL;
            if (l) *lens = l;
            if (!e || !l) {
                free(*elems);
                free(*lens);
                *elems = NULL;
                *lens = NULL;
                return cv_errorf(err, "out of memory decoding a BYTES tensor");
            }
        }
        (*elems)[*n] = raw + off;
        (*lens)[*n] = len;
        (*n)++;
        off += len;
    }
    return 0;
}

uint8_t cvc_bool_encode(bool v)
{
    return v ? 1 : 0;
}

int cvc_bool_decode(const uint8_t *raw, size_t raw_len, size_t i, bool *v, cv_error *err)
{
    if (i >= raw_len)
        return cv_errorf(err, "BOOL tensor has %zu elements, element %zu asked", raw_len, i);
    *v = raw[i] != 0;
    return 0;
}

/* proto3 string checks on a received gRPC message, which protobuf-c does not
 * make: every string field (nested messages and map entries included) must
 * be valid UTF-8, as protobuf's own parsers require, and hold no NUL byte,
 * since cvllm reads them as C strings. Without this an invalid model name
 * was echoed into response string fields (the client then fails to decode
 * the whole stream) and "kjv\0evil" was read as "kjv". */
#include <stdio.h>

#include "base/utf8.h"
#include "server/grpc_internal.h"

enum { WIRE_MAX_DEPTH = 32 };

static bool read_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return true;
    }
    return false;
}

static int check_message(const ProtobufCMessageDescriptor *desc, const uint8_t *p,
                         const uint8_t *end, int depth, cv_error *err)
{
    if (depth > WIRE_MAX_DEPTH)
        return cv_errorf(err, "%s: messages nested deeper than %d", desc->name, WIRE_MAX_DEPTH);
    while (p < end) {
        uint64_t tag, n;
        if (!read_varint(&p, end, &tag)) return cv_errorf(err, "%s: truncated tag", desc->name);
        switch (tag & 7) {
        case 0:
            if (!read_varint(&p, end, &n)) return cv_errorf(err, "%s: bad varint", desc->name);
            continue;
        case 1:
        case 5: {
            size_t w = (tag & 7) == 1 ? 8 : 4;
            if ((size_t)(end - p) < w) return cv_errorf(err, "%s: truncated field", desc->name);
            p += w;
            continue;
        }
        case 2:
            break;
        default:
            return cv_errorf(err, "%s: unsupported wire type %u", desc->name, (unsigned)(tag & 7));
        }
        if (!read_varint(&p, end, &n) || n > (uint64_t)(end - p))
            return cv_errorf(err, "%s: truncated field", desc->name);
        const ProtobufCFieldDescriptor *f =
            tag >> 3 <= UINT32_MAX
                ? protobuf_c_message_descriptor_get_field(desc, (unsigned)(tag >> 3))
                : NULL;
        if (f && f->type == PROTOBUF_C_TYPE_STRING) {
            size_t ok = cv_utf8_valid_prefix(p, (size_t)n);
            if (ok < n && !p[ok])
                return cv_errorf(err, "field '%s' of %s holds a NUL byte (byte %zu)", f->name,
                                 desc->name, ok);
            if (ok < n)
                return cv_errorf(err, "field '%s' of %s is not valid UTF-8 (byte %zu)", f->name,
                                 desc->name, ok);
        } else if (f && f->type == PROTOBUF_C_TYPE_MESSAGE &&
                   check_message(f->descriptor, p, p + n, depth + 1, err) < 0) {
            return -1;
        }
        p += n;
    }
    return 0;
}

int cv_grpc_check_strings(const ProtobufCMessageDescriptor *desc, const uint8_t *in, size_t len,
                          cv_error *err)
{
    return check_message(desc, in, in + len, 0, err);
}

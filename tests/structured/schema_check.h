/* Test helper: whether a JSON value validates against a JSON schema of the
 * subset the structured-output tests use (type, properties, required,
 * enum, const, anyOf, oneOf, $ref to $defs/definitions, items,
 * min/maxItems, min/maxLength, pattern as POSIX ERE over the whole value,
 * format date, time, date-time, uuid, ipv4). Only properties a schema lists
 * may appear. Not thread-safe. */
#ifndef CV_TESTS_STRUCTURED_SCHEMA_CHECK_H
#define CV_TESTS_STRUCTURED_SCHEMA_CHECK_H

#include <stdbool.h>

#include <jansson.h>

bool schema_check(const json_t *v, const json_t *schema);

#endif

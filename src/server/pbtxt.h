/* Protobuf text format (config.pbtxt) parsed into a schema-free tree.
 *
 * The parser knows the syntax only: `name: value`, `name { ... }`,
 * `name: { ... }`, `name < ... >`, lists `name: [ v, v ]` and
 * `name [ { ... }, { ... } ]` (a list becomes repeated fields of the same
 * name), '#' comments, single- or double-quoted strings with C escapes and
 * adjacent-literal concatenation. model_config.c maps the tree onto
 * Triton's ModelConfig fields. Errors name the file and line. */
#ifndef CV_SERVER_PBTXT_H
#define CV_SERVER_PBTXT_H

#include <stdbool.h>
#include <stddef.h>

#include "base/error.h"

typedef struct cv_pbtxt_msg cv_pbtxt_msg;

typedef struct cv_pbtxt_field {
    char *name;        /* owned */
    int line;          /* 1-based line of the field name */
    cv_pbtxt_msg *msg; /* non-NULL: a message value (owned) */
    char *value;       /* scalar text, unescaped when quoted (owned); NULL for messages */
    size_t value_len;  /* strings may hold NUL bytes */
    bool quoted;       /* the scalar was a string literal */
} cv_pbtxt_field;

struct cv_pbtxt_msg {
    int n_fields;
    cv_pbtxt_field *fields; /* (n_fields) in file order, owned */
};

/* Parses text (len bytes). `file` only names the source in messages. Returns
 * a tree the caller frees with cv_pbtxt_free, or NULL with err set to
 * "<file>:<line>: <what>". */
cv_pbtxt_msg *cv_pbtxt_parse(const char *text, size_t len, const char *file, cv_error *err);
void cv_pbtxt_free(cv_pbtxt_msg *msg);

#endif

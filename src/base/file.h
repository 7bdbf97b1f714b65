/* Whole-file reads for the small text files cvllm parses (config.pbtxt,
 * model.json, tokenizer.json, stdin of the CLI tools). */
#ifndef CV_BASE_FILE_H
#define CV_BASE_FILE_H

#include <stddef.h>
#include <stdio.h>

/* Reads the rest of f into a malloc'ed buffer with a NUL after the data;
 * *len excludes the NUL. Returns NULL on a read error or when memory runs
 * out, with errno saying which. The caller frees the buffer and closes f. */
char *cv_read_stream(FILE *f, size_t *len);

#endif

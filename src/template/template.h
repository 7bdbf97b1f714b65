/* Chat templates: a Jinja interpreter for the chat_template of
 * tokenizer_config.json, rendering exactly as transformers'
 * apply_chat_template(tokenize=False) does.
 *
 * The environment is transformers': jinja2's ImmutableSandboxedEnvironment
 * with trim_blocks, lstrip_blocks, the loopcontrols extension (break,
 * continue), autoescape off, jinja2's default Undefined (printing an
 * undefined value prints nothing; an attribute of an undefined value is an
 * error), transformers' `tojson` filter, and the globals
 * `raise_exception(msg)` (rendering fails with msg) and
 * `strftime_now(fmt)` (the local clock).
 * Supported: text, {{ }}, {% %}, {# #}, whitespace control (-); for (else,
 * loop.*, unpacking, loop over dict items, filter), if/elif/else, set and
 * block set, macros (default args) and call, namespace(), break/continue;
 * the expressions, tests, filters and string/dict methods real chat
 * templates use. Anything else is a compile or render error.
 *
 * Errors name the template line: "chat template line 12: unknown filter
 * 'foo'". Limits (recursion depth, loop iterations, output size) turn
 * runaway templates into errors, never into a crash.
 *
 * A compiled template is immutable: render it from many threads at once.
 * Ownership: cv_template_compile's result is freed with cv_template_free;
 * cv_template_render's string is malloc'ed and freed by the caller with
 * free(). On error both return NULL and fill err. */
#ifndef CV_TEMPLATE_TEMPLATE_H
#define CV_TEMPLATE_TEMPLATE_H

#include <jansson.h>
#include <stddef.h>

#include "base/error.h"

typedef struct cv_template cv_template;

/* Parses source (len bytes of UTF-8, need not be NUL-terminated). */
cv_template *cv_template_compile(const char *source, size_t len, cv_error *err);

/* Renders t with the variables of context, a JSON object (typically
 * messages, tools, add_generation_prompt, bos_token, eos_token and the
 * request's chat_template_kwargs). context is only read. Returns the
 * NUL-terminated text. */
char *cv_template_render(const cv_template *t, const json_t *context, cv_error *err);

void cv_template_free(cv_template *t);

#endif

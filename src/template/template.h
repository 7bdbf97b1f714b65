/* Chat templates: a Jinja interpreter for the chat_template of
 * tokenizer_config.json, rendering exactly as transformers'
 * apply_chat_template(tokenize=False) does.
 *
 * The environment is transformers': jinja2's ImmutableSandboxedEnvironment
 * with trim_blocks, lstrip_blocks, the loopcontrols extension (break,
 * continue), autoescape off, jinja2's default Undefined (printing an
 * undefined value prints nothing; an attribute of an undefined value is an
 * error), transformers' `tojson` (json.dumps with ensure_ascii=False and its
 * indent/separators/sort_keys), the {% generation %} tag, and the globals
 * `raise_exception(msg)` and `strftime_now(fmt)` (the local clock).
 * Supported: text, {{ }}, {% %}, {# #}, whitespace control (- and +), raw;
 * for (else, loop.*, unpacking, loop over dict items, inline if filter),
 * if/elif/else, set and block set, namespace(), macros (default and
 * keyword arguments, closures over their scope) and call blocks with
 * caller(), filter blocks, break/continue; jinja2's Markup from safe/escape
 * (+ HTML-escapes the other side); Python's operators,
 * truthiness, str()/repr() printing and float formatting; the filters,
 * tests, str/dict methods and globals real chat templates use. Anything
 * else (include, extends, blocks, recursive loops, chained comparisons)
 * is a compile error naming it. Lists print like Python
 * lists; tuples (e.g. dict items) also print as lists, not as (a, b).
 *
 * The context: transformers passes messages, tools (None when the request
 * has none, so pass "tools": null, not nothing: templates test `tools is
 * none` and `tools is defined`), documents (null), add_generation_prompt,
 * the tokenizer's special tokens that are set (bos_token, eos_token; leave
 * out those the tokenizer lacks) and the chat_template_kwargs merged in.
 *
 * Errors name the template line: "chat template line 12: unknown filter
 * 'foo'". A template's own raise_exception(msg) fails the render with msg
 * exactly (as transformers' TemplateError reads), no prefix; an empty msg
 * gets a line-numbered message instead. Limits
 * (expression and block nesting, macro depth, loop iterations, list and
 * string sizes, total work) turn runaway templates into such errors, never
 * into a crash or a hang. Template source must be UTF-8.
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

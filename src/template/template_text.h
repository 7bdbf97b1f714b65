/* String operations shared by the filters and the str methods of the
 * chat-template engine (Python's str semantics over UTF-8). */
#ifndef CV_TEMPLATE_TEMPLATE_TEXT_H
#define CV_TEMPLATE_TEMPLATE_TEXT_H

#include "template/template_internal.h"

typedef enum {
    TEXT_LOWER,
    TEXT_UPPER,
    TEXT_TITLE,
    TEXT_JINJA_TITLE,
    TEXT_CAPITALIZE
} tpl_text_case_mode;

/* v must be a string for all of these. */
int tpl_text_case(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v, tpl_text_case_mode mode,
                  tpl_val *out);
/* str.strip/lstrip/rstrip; chars NULL or none means whitespace. */
int tpl_text_strip(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v, const tpl_val *chars,
                   bool left, bool right, tpl_val *out);
/* str.replace(old, new, count); count < 0 means all. */
bool tpl_is_space(uint32_t cp); /* Python's str.isspace() */
int tpl_text_replace(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v, const tpl_val *old,
                     const tpl_val *new_, json_int_t count, tpl_val *out);

#endif

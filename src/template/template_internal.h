/* Internals of the chat-template engine shared by its files: tokens (lexer),
 * the syntax tree (parser), runtime values, and the render state the
 * evaluator and the builtins (filters, tests, methods, globals) share. */
#ifndef CV_TEMPLATE_TEMPLATE_INTERNAL_H
#define CV_TEMPLATE_TEMPLATE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "template/template.h"

/* Runaway templates become errors instead of crashes or hangs. */
enum {
    TPL_MAX_NESTING = 200,            /* parser: nested expressions/blocks */
    TPL_MAX_CALL_DEPTH = 100,         /* render: nested macro calls */
    TPL_MAX_ITERATIONS = 1000000,     /* render: loop iterations in all */
    TPL_MAX_STEPS = 20000000,         /* render: work units (see tpl_work) */
    TPL_MAX_OUTPUT_BYTES = 64u << 20, /* render: size of any one string */
    TPL_MAX_LIST_ITEMS = 1000000,     /* render: size of any one list */
    TPL_MAX_VALUE_DEPTH = 1000,       /* render: lists/dicts nested by set */
    TPL_MAX_HEIGHT = 400,             /* parser: depth of one expression tree */
    TPL_MAX_EVAL_DEPTH = 2000,        /* render: nested evaluations in all (stack) */
};

/* ---- tokens ---------------------------------------------------------- */

typedef enum {
    TK_DATA,        /* template text between tags, whitespace control applied */
    TK_VAR_BEGIN,   /* {{ */
    TK_VAR_END,     /* }} */
    TK_BLOCK_BEGIN, /* {% */
    TK_BLOCK_END,   /* %} */
    TK_NAME,
    TK_STRING, /* text holds the decoded literal */
    TK_INT,
    TK_FLOAT,
    TK_OP, /* text holds the operator, e.g. "//" */
    TK_EOF,
} tpl_tok_kind;

typedef struct tpl_tok {
    tpl_tok_kind kind;
    int line;
    char *text; /* malloc'ed, NUL-terminated; len excludes the NUL */
    size_t len;
    int64_t ival;
    double fval;
} tpl_tok;

/* Splits source into tokens, applying newline normalisation, the dropped
 * trailing newline, trim_blocks, lstrip_blocks and -/+ whitespace control as
 * jinja2's lexer does. Comments produce no token. */
int tpl_lex(const char *src, size_t len, tpl_tok **toks, size_t *n_toks, cv_error *err);
void tpl_toks_free(tpl_tok *toks, size_t n);

/* ---- syntax tree ------------------------------------------------------- */

typedef enum {
    /* expressions */
    N_CONST,  /* value */
    N_NAME,   /* name */
    N_LIST,   /* args: items (tuples are lists) */
    N_DICT,   /* args: key, value, key, value... */
    N_ATTR,   /* a.name */
    N_ITEM,   /* a[b] */
    N_SLICE,  /* a[b:c:d], each of b c d may be NULL */
    N_CALL,   /* a(args) */
    N_FILTER, /* a | name(args) */
    N_TEST,   /* a is [not] name(args); op != 0 when negated */
    N_NOT,    /* not a */
    N_NEG,    /* -a */
    N_POS,    /* +a */
    N_BINOP,  /* a op b, op a tpl_binop */
    N_AND,
    N_OR,
    N_COND, /* b if a else c (c may be NULL) */
    /* statements */
    N_TEXT,     /* text */
    N_OUTPUT,   /* {{ a }} */
    N_IF,       /* if a: body else else_body */
    N_FOR,      /* for names in a [if b]: body else else_body */
    N_SET,      /* names = b, or name.attr = b when attr is set */
    N_SETBLOCK, /* set name: body */
    N_MACRO,    /* macro name(names = args defaults): body */
    N_BREAK,
    N_CONTINUE,
    N_BODY,       /* body: a list of statements (generation blocks too) */
    N_FILTERBLOCK /* filter a (an N_FILTER on N_BODY) */
} tpl_node_kind;

typedef enum {
    OP_ADD,
    OP_SUB,
    OP_MUL,
    OP_DIV,
    OP_FLOORDIV,
    OP_MOD,
    OP_POW,
    OP_CONCAT,
    OP_EQ,
    OP_NE,
    OP_LT,
    OP_LE,
    OP_GT,
    OP_GE,
    OP_IN,
    OP_NOTIN,
} tpl_binop;

typedef struct tpl_node tpl_node;
typedef struct tpl_nodes {
    tpl_node **v;
    size_t n;
} tpl_nodes;

struct tpl_node {
    tpl_node_kind kind;
    int line;
    int op;
    int height;    /* of the expression tree under this node */
    char *name;    /* NAME, ATTR, FILTER, TEST, SET/SETBLOCK/MACRO target */
    char *attr;    /* SET: the attribute of name.attr */
    char *text;    /* TEXT */
    size_t len;    /* TEXT */
    json_t *value; /* CONST (owned) */
    tpl_node *a, *b, *c, *d;
    tpl_nodes args;  /* LIST/DICT items, CALL/FILTER/TEST args, MACRO defaults */
    char **argnames; /* per arg: keyword name or NULL */
    char **names;    /* FOR/SET targets, MACRO parameters */
    size_t n_names;
    tpl_nodes body, else_body;
};

struct cv_template {
    tpl_node *root; /* N_BODY */
};

tpl_node *tpl_parse(tpl_tok *toks, size_t n_toks, cv_error *err);
void tpl_node_free(tpl_node *n);

/* ---- values ---------------------------------------------------------------- */

typedef enum {
    TV_UNDEF,  /* jinja2's Undefined; name says what was missing */
    TV_JSON,   /* j: none, bool, int, float, str, list, dict */
    TV_NS,     /* namespace(): j is its (mutable) attribute object */
    TV_MACRO,  /* macro: node */
    TV_FUNC,   /* a global function: name */
    TV_METHOD, /* name bound to receiver j */
} tpl_vkind;

typedef struct tpl_val {
    tpl_vkind kind;
    json_t *j;            /* owned reference (JSON, NS, METHOD) */
    const char *name;     /* UNDEF, FUNC, METHOD; points into the tree or a literal */
    const tpl_node *node; /* MACRO */
} tpl_val;

typedef struct tpl_buf {
    char *p;
    size_t len, cap;
    bool oom; /* over TPL_MAX_OUTPUT_BYTES or out of memory */
} tpl_buf;

/* The work counter of the render running on this thread (NULL outside a
 * render): evaluation steps plus 1 per 16 bytes written and 1 per list item
 * copied or visited, so that no template can run for long or allocate
 * without bound; tpl_eval stops the render past TPL_MAX_STEPS. */
extern _Thread_local size_t *tpl_work;
static inline void tpl_charge(size_t units)
{
    if (tpl_work) *tpl_work += units;
}

void tpl_buf_put(tpl_buf *b, const char *s, size_t n);
void tpl_buf_puts(tpl_buf *b, const char *s);
void tpl_buf_putc(tpl_buf *b, char c);

tpl_val tpl_undef(const char *name);
tpl_val tpl_json(json_t *j); /* takes the reference */
tpl_val tpl_str(const char *s, size_t n);
tpl_val tpl_copy(const tpl_val *v);
void tpl_drop(tpl_val *v);

bool tpl_is_str(const tpl_val *v);
bool tpl_is_num(const tpl_val *v); /* int, float or bool, as Python's numbers */
bool tpl_is_int(const tpl_val *v); /* int or bool */
bool tpl_truthy(const tpl_val *v);
bool tpl_equal(const tpl_val *a, const tpl_val *b);
bool tpl_json_equal(const json_t *a, const json_t *b);
const char *tpl_type_name(const tpl_val *v); /* Python's name: 'str', 'dict'... */
double tpl_num(const json_t *j);

/* str(v) as Python prints it (repr inside containers). */
void tpl_str_of(tpl_buf *b, const tpl_val *v);
void tpl_repr_json(tpl_buf *b, const json_t *j);
void tpl_float_repr(tpl_buf *b, double d);

/* json.dumps(j, ensure_ascii, indent, separators, sort_keys). indent NULL
 * for none; item_sep/key_sep NULL for json.dumps' defaults. */
void tpl_tojson(tpl_buf *b, const json_t *j, bool ensure_ascii, const char *indent,
                const char *item_sep, const char *key_sep, bool sort_keys);

/* UTF-8: the byte offset of each code point of s plus the end offset;
 * returns the number of code points. */
size_t tpl_utf8_offsets(const char *s, size_t n, size_t **offs);
size_t tpl_utf8_count(const char *s, size_t n);

/* ---- render state ------------------------------------------------------------ */

typedef struct tpl_var {
    const char *name;
    tpl_val val;
} tpl_var;

typedef struct tpl_frame {
    tpl_var *vars;
    size_t n, cap;
    bool barrier; /* a macro's frame: lookups skip to the top level from here */
} tpl_frame;

typedef struct tpl_ctx {
    const json_t *context; /* the caller's variables */
    tpl_frame *frames;     /* frames[0] is the template's top level */
    size_t n_frames, cap_frames;
    tpl_buf *out;
    size_t steps, iterations;
    int call_depth;
    int eval_depth; /* nested tpl_eval/statement calls, for the stack */
    int ctl;        /* pending loop control: 0, CTL_BREAK or CTL_CONTINUE */
    cv_error *err;
} tpl_ctx;

enum { CTL_BREAK = 1, CTL_CONTINUE = 2 };

typedef struct tpl_args {
    tpl_val *v;
    char **names; /* per value: keyword name or NULL */
    size_t n;
} tpl_args;

/* Formats "chat template line N: ..." into ctx->err; returns -1. */
int tpl_fail(tpl_ctx *ctx, const tpl_node *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The positional argument pos or the keyword name, or NULL. */
const tpl_val *tpl_arg(const tpl_args *a, size_t pos, const char *name);

int tpl_eval(tpl_ctx *ctx, const tpl_node *n, tpl_val *out);
int tpl_exec_body(tpl_ctx *ctx, const tpl_nodes *body);
int tpl_eval_slice(tpl_ctx *ctx, const tpl_node *n, tpl_val *out); /* N_SLICE */
int tpl_getattr(tpl_ctx *ctx, const tpl_node *at, const tpl_val *obj, const char *name,
                tpl_val *out);
int tpl_getitem(tpl_ctx *ctx, const tpl_node *at, const tpl_val *obj, const tpl_val *key,
                tpl_val *out);
int tpl_call_value(tpl_ctx *ctx, const tpl_node *at, const tpl_val *fn, tpl_args *args,
                   tpl_val *out);
int tpl_binop_eval(tpl_ctx *ctx, const tpl_node *at, int op, const tpl_val *a, const tpl_val *b,
                   tpl_val *out);
/* Items of an iterable: list items, dict keys, string characters. */
int tpl_iterate(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v, json_t **items);
int tpl_ensure_json(tpl_ctx *ctx, const tpl_node *at, const tpl_val *v);

/* builtins (template_filters.c, template_tests.c, template_methods.c) */
static inline bool tpl_name_in(const char *const *list, const char *name)
{
    for (size_t i = 0; list[i]; i++)
        if (!strcmp(list[i], name)) return true;
    return false;
}
int tpl_filter(tpl_ctx *ctx, const tpl_node *at, const char *name, const tpl_val *v, tpl_args *args,
               tpl_val *out);
bool tpl_filter_exists(const char *name);
int tpl_test(tpl_ctx *ctx, const tpl_node *at, const char *name, const tpl_val *v, tpl_args *args,
             bool *out);
bool tpl_test_exists(const char *name);
bool tpl_is_method(const tpl_val *recv, const char *name);
int tpl_method(tpl_ctx *ctx, const tpl_node *at, const tpl_val *recv, const char *name,
               tpl_args *args, tpl_val *out);
int tpl_global_call(tpl_ctx *ctx, const tpl_node *at, const char *name, tpl_args *args,
                    tpl_val *out);
bool tpl_is_global(const char *name);

#endif

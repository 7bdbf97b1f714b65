/* Internals of src/structured: the byte NFA every constraint compiles to,
 * its fragment builders (Thompson construction), and the two front ends
 * (regex, JSON schema) that drive them. Nothing here is visible outside
 * src/structured. */
#ifndef CV_STRUCTURED_SO_INTERNAL_H
#define CV_STRUCTURED_SO_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "structured.h"

/* Bounds a compiled constraint, so a hostile {1000}{1000} or a deep schema
 * fails with a message instead of exhausting memory. */
enum { SO_MAX_NODES = 1 << 20 };

typedef struct so_edge {
    int32_t to, next; /* target node; next edge of the same node (-1 ends) */
    uint8_t lo, hi;   /* byte range, when !eps */
    bool eps;
} so_edge;

typedef struct so_nfa {
    int32_t *first; /* (n_nodes) first edge of each node, -1 = none */
    int32_t n_nodes, cap_nodes;
    so_edge *edges; /* (n_edges) */
    int32_t n_edges, cap_edges;
    bool failed; /* out of memory or over SO_MAX_NODES: every builder is a no-op */
} so_nfa;

/* A sub-automaton from start to end; end has no edges yet. */
typedef struct so_frag {
    int32_t start, end;
} so_frag;

void so_nfa_free(so_nfa *a);
int32_t so_nfa_node(so_nfa *a);
void so_nfa_eps(so_nfa *a, int32_t from, int32_t to);
void so_nfa_range(so_nfa *a, int32_t from, int32_t to, uint8_t lo, uint8_t hi);
so_frag so_frag_empty(so_nfa *a);
so_frag so_frag_lit(so_nfa *a, const char *s, size_t n);
so_frag so_frag_cat(so_nfa *a, so_frag x, so_frag y);
so_frag so_frag_alt(so_nfa *a, so_frag x, so_frag y);
so_frag so_frag_opt(so_nfa *a, so_frag x);
so_frag so_frag_star(so_nfa *a, so_frag x);
so_frag so_frag_plus(so_nfa *a, so_frag x);
/* One character: an ASCII byte b where ascii[b], or (when multibyte) any
 * well-formed UTF-8 sequence of 2-4 bytes (no surrogates, <= U+10FFFF). */
so_frag so_frag_char(so_nfa *a, const bool ascii[128], bool multibyte);

/* Compiles a regex (re, n bytes) into a; err names the position and what
 * is wrong there. */
int so_regex_compile(so_nfa *a, const char *re, size_t n, so_frag *out, cv_error *err);
/* Compiles a JSON schema text; err names the keyword that is refused. */
int so_json_schema_compile(so_nfa *a, const char *schema, so_frag *out, cv_error *err);
/* Compiles a GBNF grammar (text, n bytes) into a; err names the line and
 * what is wrong there, or the recursive rule. */
int so_gbnf_compile(so_nfa *a, const char *text, size_t n, so_frag *out, cv_error *err);
/* Any JSON value, containers nested at most depth deep. */
so_frag so_json_any(so_nfa *a, int depth);

/* Grammars for the cache (so_cache.c): compiled (NULL with err naming the
 * bad input), destroyed, their memory in bytes now, and a slot where the
 * cache keeps its record of each. */
so_grammar *so_grammar_compile(const so_vocab *v, so_kind kind, const char *text, cv_error *err);
void so_grammar_destroy(so_grammar *g);
size_t so_grammar_bytes(so_grammar *g);
void **so_grammar_cache_entry(so_grammar *g);

#endif

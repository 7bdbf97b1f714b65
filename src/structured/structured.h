/* Structured outputs: constraints on generated text (vLLM's
 * structured_outputs) compiled once into an automaton over bytes, and the
 * set of vocabulary tokens each automaton state allows.
 *
 * Every kind compiles to one byte-level NFA (Thompson construction) that is
 * determinized lazily: a DFA state is the epsilon-closed set of NFA nodes,
 * created the first time a byte leads to it. The allowed-token mask of a DFA
 * state is computed once, by walking a trie of the vocabulary's token byte
 * strings from that state (tokens sharing a prefix share the walk), and kept.
 *
 * Kinds and their limits:
 * - SO_CHOICE: text is a JSON array of strings; the output is one of them.
 * - SO_REGEX: literals, [...] with ranges and ^negation (ASCII ranges;
 *   non-ASCII characters as single members), \d \w \s \D \W \S, escapes
 *   (\n \t \r \f \v \xHH and escaped punctuation), '.', groups (?:...),
 *   '|', '?', '*', '+', {m}, {m,}, {m,n}; ^ and $ at the ends are accepted
 *   (the whole output always matches). '.' and negated classes match one
 *   whole UTF-8 character. Backreferences, lookaround and other escapes are
 *   refused naming them.
 * - SO_JSON_OBJECT: any JSON value (text is ignored).
 * - SO_JSON: text is a JSON schema: type (string, number, integer, boolean,
 *   null, object, array, or a list of them), properties with required,
 *   additionalProperties false, enum, const, items, minItems, maxItems,
 *   minLength, maxLength, anyOf, oneOf (generated as anyOf), $ref to
 *   #/$defs/NAME or #/definitions/NAME (not recursive: a schema nests at
 *   most 32 levels), pattern (a regex of the SO_REGEX subset that the whole
 *   string value matches, as in xgrammar; bytes JSON must escape are
 *   spelled as escapes), format date, time, date-time, uuid, ipv4, email,
 *   hostname (other formats are annotations: any string; pattern and format
 *   exclude minLength/maxLength), plus the annotations title, description,
 *   default, examples and $schema. Any other keyword is refused naming it.
 * - SO_GRAMMAR: text is a GBNF grammar (llama.cpp's and xgrammar's
 *   dialect): rules "name ::= ...", root the start, | sequences ( ) * + ?
 *   {m,n}, "literals", [classes] (ASCII ranges, non-ASCII single members),
 *   '.', escapes \n \r \t \xHH \uHHHH \UHHHHHHHH, # comments. Only
 *   regular grammars fit the finite automaton: a rule may refer to itself
 *   only as the last item of some of its alternatives and the first of
 *   others (R ::= a R | R c | b, a loop); other recursion is refused
 *   naming the rule.
 * Generated JSON: properties in schema order, at most one space where JSON
 * allows whitespace, strings of UTF-8 characters with the escapes \" \\ \/
 * \b \f \n \r \t (no \u), integers of at most 16 digits, numbers with at
 * most 16 fraction digits and a 2-digit exponent (a double never overflows). Values left free by
 * the schema (json_object, or an object/array/value without properties, items or type) nest at most
 * SO_MAX_FREE_DEPTH containers deep: a regular approximation of JSON's pushdown language that stays
 * a finite automaton.
 *
 * Threads: a grammar may be used from any thread; its lazily built states
 * are guarded by its own mutex. Ownership: the cache owns every grammar it
 * returns; a grammar stays valid while its caller holds the reference
 * so_cache_get gave (until so_grammar_release or so_cache_free); masks
 * belong to their grammar. */
#ifndef CV_STRUCTURED_STRUCTURED_H
#define CV_STRUCTURED_STRUCTURED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"
#include "tokenizer/tokenizer.h"

enum { SO_MAX_FREE_DEPTH = 4 };

typedef enum { SO_CHOICE = 0, SO_REGEX, SO_JSON_OBJECT, SO_JSON, SO_GRAMMAR } so_kind;

/* "choice", "regex", "json_object", "json", "grammar" */
const char *so_kind_name(so_kind kind);

/* The vocabulary as byte strings: a token's bytes are its decoded text
 * (tok_decode_token), or, where that is not whole UTF-8, the bytes its
 * vocab piece stands for (<0xNN>, or GPT-2's byte-to-unicode alphabet).
 * Special tokens have no bytes: only the end ids are ever allowed, and only
 * where the constraint accepts. */
typedef struct so_vocab so_vocab;

/* eos_ids (n_eos): the ids that end a sequence (copied). */
so_vocab *so_vocab_create(const cv_tokenizer *tok, const int32_t *eos_ids, int n_eos,
                          cv_error *err);
void so_vocab_free(so_vocab *v);
int so_vocab_size(const so_vocab *v);
/* The bytes of token id (n_bytes; NULL for special tokens). */
const uint8_t *so_vocab_bytes(const so_vocab *v, int32_t id, int *n_bytes);

typedef struct so_grammar so_grammar;

/* Compiled grammars keyed by (kind, text); the cache borrows vocab, which
 * must outlive it. Grammars nobody holds stay cached until together they
 * outgrow the idle budget (default SO_CACHE_IDLE_MIB); the least recently
 * released go first. */
typedef struct so_cache so_cache;

enum { SO_CACHE_IDLE_MIB = 512 };

so_cache *so_cache_create(const so_vocab *vocab);
/* Frees every grammar, held or not. */
void so_cache_free(so_cache *c);
void so_cache_set_idle_budget(so_cache *c, size_t bytes);
/* The grammar for (kind, text), compiled on first use, with a reference
 * for the caller (so_grammar_release gives it back). NULL with err naming
 * the bad input (the schema keyword, the regex position, ...). */
so_grammar *so_cache_get(so_cache *c, so_kind kind, const char *text, cv_error *err);
/* Gives back a reference from so_cache_get (NULL: nothing); g may be freed
 * then. */
void so_grammar_release(so_grammar *g);

/* A matcher state: the DFA state reached by the bytes so far. */
typedef int32_t so_state;
enum { SO_DEAD = 0 };

so_state so_start(so_grammar *g);
/* Bitmask over the vocabulary: bit (id & 31) of word id >> 5 is set when
 * token id may come next: its bytes keep the state alive, or it is an end
 * id and the state accepts. Owned by g; NULL only when out of memory. */
const uint32_t *so_mask(so_grammar *g, so_state s);
/* The state after token id (SO_DEAD when the mask did not allow it). End
 * ids and other special tokens leave an accepting state as is. */
so_state so_advance(so_grammar *g, so_state s, int32_t id);
/* The bytes so far are a whole match (an end token may come). */
bool so_accepting(so_grammar *g, so_state s);
/* No token other than an end id can follow: generation is over. */
bool so_done(so_grammar *g, so_state s);
/* What g has built so far (benchmarks): DFA states, of which with a mask. */
void so_grammar_stats(so_grammar *g, int *n_states, int *n_masks);
/* Byte-level matching, for tests: the state after bytes s[0..n). */
so_state so_advance_bytes(so_grammar *g, so_state s, const char *bytes, size_t n);

/* Mask prefetch: worker threads that compute masks ahead, e.g. those a
 * decode step will sample with, while its forward pass runs (masks of
 * different grammars in parallel). The grammars must outlive the batch
 * (so_prefetch_wait, or so_prefetch_free, ends it). */
typedef struct so_prefetch so_prefetch;

/* n_threads workers (at least 1); NULL when out of memory or threads. */
so_prefetch *so_prefetch_create(int n_threads);
void so_prefetch_free(so_prefetch *p); /* waits for the batch asked */
/* Asks for so_mask(g[i], s[i]), i < n (the arrays are copied), after the
 * previous batch; returns at once (-1: out of memory, nothing asked). */
int so_prefetch_start(so_prefetch *p, so_grammar *const *g, const so_state *s, int n);
/* Returns once the last batch asked is computed. */
void so_prefetch_wait(so_prefetch *p);

#endif

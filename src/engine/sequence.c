/* Sequence storage: growable token and block-table arrays. */
#include <stdlib.h>
#include <string.h>

#include "sequence.h"

cv_seq *seq_create(uint64_t id, const int32_t *prompt, int n_prompt)
{
    cv_seq *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->id = id;
    s->cap_tokens = n_prompt + 16;
    s->tokens = malloc((size_t)s->cap_tokens * sizeof(int32_t));
    if (!s->tokens) {
        free(s);
        return NULL;
    }
    memcpy(s->tokens, prompt, (size_t)n_prompt * sizeof(int32_t));
    s->n_tokens = n_prompt;
    s->n_prompt = n_prompt;
    return s;
}

void seq_free(cv_seq *seq)
{
    if (!seq) return;
    free(seq->tokens);
    free(seq->block_table);
    free(seq);
}

int seq_append_token(cv_seq *seq, int32_t token)
{
    if (seq->n_tokens == seq->cap_tokens) {
        int cap = seq->cap_tokens * 2;
        int32_t *t = realloc(seq->tokens, (size_t)cap * sizeof(int32_t));
        if (!t) return -1;
        seq->tokens = t;
        seq->cap_tokens = cap;
    }
    seq->tokens[seq->n_tokens++] = token;
    return 0;
}

cv_seq *seq_clone(const cv_seq *parent, uint64_t id)
{
    cv_seq *s = seq_create(id, parent->tokens, parent->n_tokens);
    if (!s) return NULL;
    s->n_prompt = parent->n_prompt;
    s->n_computed = parent->n_computed;
    s->owner = parent->owner;
    s->skip_prefix_cache = parent->skip_prefix_cache;
    s->max_chunk = parent->max_chunk;
    s->lora_id = parent->lora_id;
    return s;
}

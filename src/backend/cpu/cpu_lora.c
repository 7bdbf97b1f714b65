/* The CPU backend's LoRA slots: which adapter each slot holds (borrowed,
 * read in place from host memory) and the per-step preparation the forward's
 * LoRA phases (forward.c) read: each token's adapter and room for A x. */
#include <stdlib.h>

#include "backend/cpu/cpu_internal.h"
#include "lora/lora.h"

int cv_backend_lora_init(cv_backend *bk, int n_slots, int max_rank, cv_error *err)
{
    if (bk->lora_slot)
        return cv_errorf(err, "cv_backend_lora_init: the LoRA slots are already reserved");
    if (n_slots < 1 || max_rank < 1)
        return cv_errorf(err, "cv_backend_lora_init: n_slots %d and max_rank %d must be >= 1",
                         n_slots, max_rank);
    bk->lora_slot = calloc((size_t)n_slots, sizeof *bk->lora_slot);
    if (!bk->lora_slot) return cv_errorf(err, "cv_backend_lora_init: out of memory");
    bk->n_lora_slots = n_slots;
    bk->lora_rank = max_rank;
    return 0;
}

int cv_backend_lora_load(cv_backend *bk, int slot, const cv_lora_adapter *a, cv_error *err)
{
    if (slot < 0 || slot >= bk->n_lora_slots)
        return cv_errorf(err, "cv_backend_lora_load: slot %d is outside slots 0..%d", slot,
                         bk->n_lora_slots - 1);
    if (a && (a->rank > bk->lora_rank || a->n_layers != bk->cfg.n_layers))
        return cv_errorf(err,
                         "cv_backend_lora_load: adapter of rank %d over %d layers does not fit "
                         "slots of rank %d for %d layers",
                         a->rank, a->n_layers, bk->lora_rank, bk->cfg.n_layers);
    bk->lora_slot[slot] = a;
    return 0;
}

int cpu_lora_prepare(cv_backend *bk, const cv_batch *b, cv_error *err)
{
    bk->step_lora = false;
    if (!b->lora_slots) return 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const int k = b->lora_slots[s];
        if (k < -1 || k >= bk->n_lora_slots || (k >= 0 && !bk->lora_slot[k]))
            return cv_errorf(err, "cv_backend_forward: lora_slots[%d] = %d is not a loaded slot", s,
                             k);
        if (k >= 0) bk->step_lora = true;
    }
    if (!bk->step_lora) return 0;
    if (b->n_tokens > bk->cap_lora_tokens) {
        const cv_lora_adapter **tl = malloc((size_t)b->n_tokens * sizeof *tl);
        float *u = malloc((size_t)b->n_tokens * 3 * (size_t)bk->lora_rank * sizeof *u);
        if (!tl || !u) {
            free(tl);
            free(u);
            return cv_errorf(err, "cv_backend_forward: out of memory for LoRA of %d tokens",
                             b->n_tokens);
        }
        free(bk->tok_lora);
        free(bk->lora_u);
        bk->tok_lora = tl;
        bk->lora_u = u;
        bk->cap_lora_tokens = b->n_tokens;
    }
    for (int s = 0; s < b->n_seqs; s++) {
        const int k = b->lora_slots[s];
        for (int t = b->query_start[s]; t < b->query_start[s + 1]; t++)
            bk->tok_lora[t] = k >= 0 ? bk->lora_slot[k] : NULL;
    }
    return 0;
}

void cpu_lora_free(cv_backend *bk)
{
    free(bk->lora_slot);
    free(bk->tok_lora);
    free(bk->lora_u);
}

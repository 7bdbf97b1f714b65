/* LoRA adapters as vLLM serves them: PEFT adapter directories read into
 * host memory, a registry of the adapters a model serves (multi_lora.json)
 * with an LRU of at most max_cpu_loras loaded in host memory, and the
 * assignment of adapters to the max_loras slots a backend holds them in.
 *
 * An adapter adds, after each targeted projection y = W x of a Llama-family
 * model (q/k/v/o_proj, gate/up/down_proj), scale * B (A x): A is (r, in),
 * B is (out, r), scale = lora_alpha / r, or lora_alpha / sqrt(r) with
 * use_rslora. The backend applies it per token (backend.h: cv_batch's
 * lora_slots and the lora_* operations of cv_backend_ops).
 *
 * Thread safety: an adapter is immutable once loaded; the registry locks
 * itself (any thread); cv_lora_slots belongs to one thread (the engine's).
 * Ownership: the registry owns the adapters it loads; an acquired adapter
 * stays valid until released. */
#ifndef CV_LORA_LORA_H
#define CV_LORA_LORA_H

#include <stdbool.h>
#include <stdint.h>

#include "base/error.h"
#include "model/model.h"

/* The projections an adapter may target, in PEFT's module names. */
typedef enum {
    CV_LORA_Q = 0, /* q_proj */
    CV_LORA_K,     /* k_proj */
    CV_LORA_V,     /* v_proj */
    CV_LORA_O,     /* o_proj */
    CV_LORA_GATE,  /* gate_proj */
    CV_LORA_UP,    /* up_proj */
    CV_LORA_DOWN,  /* down_proj */
    CV_LORA_N_TARGETS
} cv_lora_target;

/* One targeted projection of one layer, fp32 row-major. */
typedef struct cv_lora_weights {
    const float *a; /* (rank, in); NULL where the adapter does not target it */
    const float *b; /* (out, rank) */
} cv_lora_weights;

typedef struct cv_lora_adapter {
    int rank;
    float scale; /* lora_alpha / rank, or lora_alpha / sqrt(rank) with use_rslora */
    int n_layers;
    int in[CV_LORA_N_TARGETS], out[CV_LORA_N_TARGETS]; /* each target's projection shape */
    cv_lora_weights *w; /* (n_layers * CV_LORA_N_TARGETS): layer l, target k at l * N + k */
    float *data;        /* owned: every A and B */
} cv_lora_adapter;

/* Reads the PEFT adapter directory DIR (adapter_config.json, and
 * adapter_model.safetensors or else adapter_model.bin) for a model of
 * configuration CFG. Refuses, with a message naming DIR and the key or
 * tensor, what it cannot apply: peft_type other than LORA, use_dora,
 * modules_to_save, bias other than "none", rank_pattern / alpha_pattern,
 * layers_to_transform, embedding or lm_head adapters, target modules other
 * than the seven above, r > max_rank (vLLM's words), tensors whose shape
 * does not match the model. On success *out is the caller's to free. */
int cv_lora_adapter_load(const char *dir, const cv_model_config *cfg, int max_rank,
                         cv_lora_adapter **out, cv_error *err);
void cv_lora_adapter_free(cv_lora_adapter *a);

/* The in / out features of target's projection in a model of cfg. */
void cv_lora_target_dims(const cv_model_config *cfg, cv_lora_target target, int *in, int *out);

/* ---- Registry: the adapters one model serves ----------------------------- */

typedef struct cv_lora_registry cv_lora_registry;

/* names[i] is served from directory paths[i] (strings copied). Adapter ids
 * are 1..n in this order; 0 means no adapter. Nothing is read until an
 * adapter is first acquired (vLLM loads adapters on their first request).
 * max_cpu_loras: adapters kept loaded in host memory (LRU). */
cv_lora_registry *cv_lora_registry_create(const cv_model_config *cfg, const char *const *names,
                                          const char *const *paths, int n, int max_rank,
                                          int max_cpu_loras, cv_error *err);
void cv_lora_registry_destroy(cv_lora_registry *r);
int cv_lora_registry_count(const cv_lora_registry *r);
/* Name of adapter id (1..count). */
const char *cv_lora_registry_name(const cv_lora_registry *r, int id);
/* The id of NAME, or 0 when the registry has no such adapter. */
int cv_lora_registry_find(const cv_lora_registry *r, const char *name);
/* Adapter id, read from its directory unless already loaded, and marked
 * most recently used; the caller holds a reference until
 * cv_lora_registry_release. Loading one more than max_cpu_loras evicts the
 * least recently used adapter nobody holds. NULL with err on a load error
 * (the message names the adapter and its directory). */
const cv_lora_adapter *cv_lora_registry_acquire(cv_lora_registry *r, int id, cv_error *err);
void cv_lora_registry_release(cv_lora_registry *r, int id);
/* Adapters loaded in host memory now (tests watch the LRU). */
int cv_lora_registry_loaded(cv_lora_registry *r);

/* ---- Slots: which adapter each backend slot holds ------------------------ */

typedef struct cv_lora_slots {
    int n;          /* max_loras */
    int *id;        /* (n) adapter id held, 0 = empty */
    uint64_t *used; /* (n) step that last used the slot */
    uint64_t clock;
} cv_lora_slots;

int cv_lora_slots_init(cv_lora_slots *s, int n_slots);
void cv_lora_slots_fini(cv_lora_slots *s);
/* Gives each of the n distinct adapter ids a slot for one step: an id
 * already resident keeps its slot; the others take empty slots, then the
 * least recently used slots holding none of ids. slot_of[i] is the slot of
 * ids[i]; load[k] is the id slot k must be loaded with before the step (0:
 * it keeps its contents). -1 with err when n exceeds the slots. */
int cv_lora_slots_assign(cv_lora_slots *s, const int *ids, int n, int *slot_of, int *load,
                         cv_error *err);

#endif

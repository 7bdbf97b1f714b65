/* The engine's LoRA side: the adapter registry and backend slots made from
 * the engine arguments, a request's lora_name checked and resolved (vLLM's
 * messages), each step's adapters put into slots, and the adapter names of
 * the running and waiting queues for vllm:lora_requests_info. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_state.h"

int engine_lora_init(cv_engine *e, const cv_engine_args *a, cv_error *err)
{
    if (!a->enable_lora) return 0;
    e->lora = cv_lora_registry_create(cv_model_get_config(e->model), a->lora_names, a->lora_paths,
                                      a->n_lora_modules, a->max_lora_rank,
                                      a->max_cpu_loras ? a->max_cpu_loras : a->max_loras, err);
    if (!e->lora) return -1;
    const int n = a->max_loras;
    if (cv_lora_slots_init(&e->lora_slots, n) < 0 ||
        !(e->lora_step_ids = calloc((size_t)n, sizeof(int))) ||
        !(e->lora_slot_of = calloc((size_t)n, sizeof(int))) ||
        !(e->lora_load = calloc((size_t)n, sizeof(int))) ||
        !(e->lora_holds = calloc((size_t)n, sizeof(int))) ||
        !(e->lora_slot_held = calloc((size_t)n, sizeof(int))))
        return cv_errorf(err, "out of memory for %d LoRA slots", n);
    /* A backend without LoRA operations still serves the base
     * model; requests naming an adapter are refused (engine_lora_resolve). */
    if (cv_runner_has_lora(e->runner) &&
        cv_runner_lora_init(e->runner, n, a->max_lora_rank, err) < 0)
        return -1;
    return 0;
}

void engine_lora_free(cv_engine *e)
{
    for (int k = 0; e->lora_slot_held && k < e->lora_slots.n; k++)
        if (e->lora_slot_held[k]) cv_lora_registry_release(e->lora, e->lora_slot_held[k]);
    cv_lora_slots_fini(&e->lora_slots);
    free(e->lora_step_ids);
    free(e->lora_slot_of);
    free(e->lora_load);
    free(e->lora_holds);
    free(e->lora_fail_reqs);
    free(e->lora_slot_held);
    cv_lora_registry_destroy(e->lora);
}

int engine_lora_resolve(cv_engine *e, const char *name, int *id, cv_error *err)
{
    *id = 0;
    if (!name[0]) return 0;
    if (!e->lora) return cv_errorf(err, "LoRA feature is not enabled.");
    *id = cv_lora_registry_find(e->lora, name);
    if (!*id) {
        char list[2048];
        size_t len = 0;
        list[0] = '\0';
        for (int i = 1; i <= cv_lora_registry_count(e->lora) && len < sizeof list; i++) {
            int w = snprintf(list + len, sizeof list - len, "%s'%s'", i > 1 ? ", " : "",
                             cv_lora_registry_name(e->lora, i));
            if (w > 0) len += (size_t)w;
        }
        return cv_errorf(err, "LoRA %s is not supported, we currently support [%s]", name, list);
    }
    if (!cv_runner_has_lora(e->runner))
        return cv_errorf(err, "LoRA %s: the backend of device %s does not apply LoRA adapters",
                         name, cv_runner_device_name(e->runner));
    /* Read now (into the host LRU), so that an adapter cvllm cannot apply
     * fails its request with the reason instead of a later step. */
    if (!cv_lora_registry_acquire(e->lora, *id, err)) return -1;
    cv_lora_registry_release(e->lora, *id);
    return 0;
}

const char *cv_engine_lora_name(const cv_engine *e, int i)
{
    return i >= 0 && i < cv_lora_registry_count(e->lora) ? cv_lora_registry_name(e->lora, i + 1)
                                                         : NULL;
}

/* Fails every request of the step that uses adapter id (their entries
 * leave the step) with msg. */
static void fail_adapter_requests(cv_engine *e, sched_output *so, int id, const char *msg)
{
    int kept = 0, n_req = 0;
    request **reqs = (request **)e->lora_fail_reqs;
    for (int i = 0; i < so->n_entries; i++) {
        const sched_entry *en = &so->entries[i];
        if (en->seq->lora_id != id) {
            so->entries[kept++] = *en;
            continue;
        }
        so->n_tokens -= en->n_new;
        request *req = en->seq->owner;
        bool seen = false;
        for (int j = 0; j < n_req && !seen; j++)
            seen = reqs[j] == req;
        if (!seen) reqs[n_req++] = req;
    }
    so->n_entries = kept;
    for (int j = 0; j < n_req; j++) {
        for (int k = 0; k < reqs[j]->n_seqs; k++)
            engine_finish_seq(e, reqs[j], k, CV_FINISH_ABORT);
        engine_count_finished(e, reqs[j]);
        engine_emit_error(reqs[j], msg);
        reqs[j]->touched = false; /* its last output is out */
        /* The step in flight may still compute for it (async_scheduling):
         * then it is retired once that step is handed out. */
        if (reqs[j]->n_in_steps > 0)
            reqs[j]->retire_deferred = true;
        else
            engine_retire(e, reqs[j]);
    }
}

int engine_lora_hold(cv_engine *e, sched_output *so)
{
    e->n_lora_holds = 0;
    if (!e->lora) return 0;
    if (so->n_entries > e->cap_lora_fail) {
        void *p = realloc(e->lora_fail_reqs, (size_t)so->n_entries * sizeof(request *));
        if (!p) return -1;
        e->lora_fail_reqs = p;
        e->cap_lora_fail = so->n_entries;
    }
    for (int i = 0; i < so->n_entries; i++) {
        const int id = so->entries[i].seq->lora_id;
        bool held = false;
        for (int j = 0; j < e->n_lora_holds && !held; j++)
            held = e->lora_holds[j] == id;
        if (!id || held) continue;
        cv_error err = {0};
        if (e->n_lora_holds < e->lora_slots.n && cv_lora_registry_acquire(e->lora, id, &err)) {
            e->lora_holds[e->n_lora_holds++] = id;
            continue;
        }
        if (!err.msg[0])
            cv_errorf(&err, "more than max_loras %d adapters in one step", e->lora_slots.n);
        fail_adapter_requests(e, so, id, err.msg);
        i = -1; /* the entries moved: look again from the start */
    }
    return 0;
}

void engine_lora_release_step(cv_engine *e)
{
    for (int j = 0; j < e->n_lora_holds; j++)
        cv_lora_registry_release(e->lora, e->lora_holds[j]);
    e->n_lora_holds = 0;
}

/* The host reference a slot held on adapter id, given up: now, or, while
 * a step runs (async_scheduling), once it is handed out: the load into the
 * slot waits for that step in the runner, and the CPU backend reads the
 * adapter in place until then. */
static int drop_reference(cv_engine *e, int id)
{
    step_buf *sb = e->in_flight;
    if (!sb) {
        cv_lora_registry_release(e->lora, id);
        return 0;
    }
    if (sb->n_lora_drop == sb->cap_lora_drop) {
        const int cap = sb->cap_lora_drop ? 2 * sb->cap_lora_drop : 8;
        int *d = realloc(sb->lora_drop, (size_t)cap * sizeof(int));
        if (!d) return cv_errorf(&e->step_err, "out of memory releasing a LoRA adapter");
        sb->lora_drop = d;
        sb->cap_lora_drop = cap;
    }
    sb->lora_drop[sb->n_lora_drop++] = id;
    return 0;
}

void engine_lora_drop_after(cv_engine *e, step_buf *sb)
{
    for (int i = 0; i < sb->n_lora_drop; i++)
        cv_lora_registry_release(e->lora, sb->lora_drop[i]);
    sb->n_lora_drop = 0;
}

/* Puts the adapters of this step's entries into backend slots (loading
 * those not resident from the registry's host LRU) and fills slots.
 * Returns whether any entry has an adapter. The scheduler admits at most
 * max_loras distinct adapters, so they always fit. */
int engine_lora_assign(cv_engine *e, const sched_output *so, int32_t *slots, bool *any)
{
    *any = false;
    if (!e->lora) return 0;
    int n = 0;
    for (int i = 0; i < so->n_entries; i++) {
        const int id = so->entries[i].seq->lora_id;
        bool seen = false;
        for (int j = 0; j < n && !seen; j++)
            seen = e->lora_step_ids[j] == id;
        if (id && !seen) {
            if (n == e->lora_slots.n)
                return cv_errorf(&e->step_err, "more than max_loras %d adapters in one step",
                                 e->lora_slots.n);
            e->lora_step_ids[n++] = id;
        }
    }
    if (n == 0) return 0;
    *any = true;
    if (cv_lora_slots_assign(&e->lora_slots, e->lora_step_ids, n, e->lora_slot_of, e->lora_load,
                             &e->step_err) < 0)
        return -1;
    for (int k = 0; k < e->lora_slots.n; k++) {
        if (!e->lora_load[k]) continue;
        /* The slot's new adapter in, then the old one's host reference out
         * (it may be evicted from host memory later). */
        const cv_lora_adapter *a = cv_lora_registry_acquire(e->lora, e->lora_load[k], &e->step_err);
        if (!a) {
            e->lora_slots.id[k] = 0;
            return -1;
        }
        if (cv_runner_lora_load(e->runner, k, a, &e->step_err) < 0) {
            cv_lora_registry_release(e->lora, e->lora_load[k]);
            e->lora_slots.id[k] = 0;
            return -1;
        }
        if (e->lora_slot_held[k] && drop_reference(e, e->lora_slot_held[k]) < 0) return -1;
        e->lora_slot_held[k] = e->lora_load[k];
    }
    for (int i = 0; i < so->n_entries; i++) {
        const int id = so->entries[i].seq->lora_id;
        slots[i] = -1;
        for (int j = 0; j < n; j++)
            if (e->lora_step_ids[j] == id) slots[i] = e->lora_slot_of[j];
    }
    return 0;
}

/* Comma-separated names of the distinct adapters of list (vLLM's label
 * values of vllm:lora_requests_info). */
void engine_lora_names(const cv_engine *e, const seq_list *list, char *buf, size_t size)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < list->n; i++) {
        const int id = list->items[i]->lora_id;
        bool seen = false;
        for (int j = 0; j < i && !seen; j++)
            seen = list->items[j]->lora_id == id;
        if (!id || seen) continue;
        int w = snprintf(buf + len, size - len, "%s%s", len ? "," : "",
                         cv_lora_registry_name(e->lora, id));
        if (w < 0 || (size_t)w >= size - len) {
            buf[len] = '\0'; /* a name that does not fit is left out */
            break;
        }
        len += (size_t)w;
    }
}

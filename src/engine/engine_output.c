/* Building cv_request_output deltas from a request's state. Streaming
 * requests get what is new since their last output; others get everything
 * once, with best_of reduced to the n sequences of highest cumulative
 * logprob. Text still inside a possible stop string is held back until the
 * sequence finishes or the stop string can no longer match. */
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "engine_internal.h"
#include "engine_state.h"
#include "stop.h"

static void free_lps_entries(cv_token_logprobs *lp, int n)
{
    if (!lp) return;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < lp[i].n; j++)
            free(lp[i].entries[j].decoded_token);
        free(lp[i].entries);
    }
}

void request_free(request *req)
{
    if (!req) return;
    for (int k = 0; req->seqs && k < req->n_seqs; k++) {
        seq_state *ss = &req->seqs[k];
        seq_free(ss->seq);
        free(ss->text);
        free_lps_entries(ss->lps, ss->n_lps);
        free(ss->lps);
    }
    free(req->seqs);
    if (req->prompt_lps) {
        free_lps_entries(req->prompt_lps, req->n_prompt);
        free(req->prompt_lps);
    }
    so_grammar_release(req->grammar);
    cv_sampling_params_free(&req->params);
    free(req->prompt);
    free(req->stop_ids);
    free(req->mask_ids);
    free(req);
}

int engine_make_logprobs(cv_engine *e, const sample_logprobs *lp, cv_token_logprobs *out)
{
    out->n = 0;
    out->entries = calloc((size_t)lp->n_top + 1, sizeof(cv_top_logprob));
    if (!out->entries) return -1;
    /* The chosen token first, then the top ones; one entry per token id,
     * as vLLM's {token_id: Logprob} dict has. */
    int32_t ids[CV_MAX_LOGPROBS + 1];
    float lps[CV_MAX_LOGPROBS + 1];
    int ranks[CV_MAX_LOGPROBS + 1];
    int n = 0;
    ids[n] = lp->token, lps[n] = lp->logprob, ranks[n++] = lp->rank;
    for (int j = 0; j < lp->n_top; j++) {
        if (lp->top_ids[j] == lp->token) continue;
        ids[n] = lp->top_ids[j], lps[n] = lp->top_logprobs[j], ranks[n++] = j + 1;
    }
    for (int j = 0; j < n; j++) {
        cv_top_logprob *t = &out->entries[j];
        t->token_id = ids[j];
        t->logprob = lps[j];
        t->rank = ranks[j];
        size_t len;
        cv_error err;
        if (tok_decode_token(e->tok, ids[j], &t->decoded_token, &len, &err) < 0) {
            t->decoded_token = strdup("");
            if (!t->decoded_token) {
                out->n = j;
                return -1;
            }
        }
        out->n = j + 1;
    }
    return 0;
}

void engine_emit_error(request *req, const char *msg)
{
    cv_request_output *out = calloc(1, sizeof(*out));
    if (!out) return;
    out->request_id = req->id;
    out->user_data = req->user_data;
    out->n_prompt_tokens = req->n_prompt;
    out->finished = true;
    out->error = strdup(msg);
    if (!out->error || output_queue_push(req->sink, out) < 0) {
        cv_log_error("engine: cannot deliver error of request %llu: %s",
                     (unsigned long long)req->id, msg);
        cv_request_output_free(out);
    }
}

/* Fills o with seq_state ss's undelivered part and marks it delivered.
 * Returns 1 when o carries something new, 0 when not, -1 on OOM. */
static int fill_seq(request *req, seq_state *ss, int index, cv_seq_output *o)
{
    o->index = index;
    o->finish_reason = ss->finish;
    o->cumulative_logprob = ss->cum_logprob;
    int n_out = ss->seq ? ss->seq->n_tokens - ss->seq->n_prompt : 0;
    o->n_output_tokens_total = n_out;
    int n_new = n_out - ss->tokens_sent;
    size_t limit =
        ss->finish != CV_FINISH_NONE
            ? ss->text_len
            : stop_emit_limit(ss->text ? ss->text : "", ss->text_len, req->holdback_chars);
    if (limit < ss->text_sent) limit = ss->text_sent;
    size_t n_text = limit - ss->text_sent;
    o->token_ids = malloc((size_t)(n_new > 0 ? n_new : 1) * sizeof(int32_t));
    o->text = malloc(n_text + 1);
    if (!o->token_ids || !o->text) return -1;
    if (n_new > 0)
        memcpy(o->token_ids, ss->seq->tokens + ss->seq->n_prompt + ss->tokens_sent,
               (size_t)n_new * sizeof(int32_t));
    o->n_tokens = n_new;
    if (n_text) memcpy(o->text, ss->text + ss->text_sent, n_text);
    o->text[n_text] = '\0';
    o->text_len = n_text;
    if (req->params.logprobs >= 0 && n_new > 0) {
        o->logprobs = calloc((size_t)n_new, sizeof(cv_token_logprobs));
        if (!o->logprobs) return -1;
        /* Ownership of the entries moves to the output; each goes out once. */
        int avail = ss->n_lps - ss->tokens_sent;
        int n_move = avail < n_new ? avail : n_new;
        if (n_move > 0) {
            memcpy(o->logprobs, ss->lps + ss->tokens_sent, (size_t)n_move * sizeof(*o->logprobs));
            memset(ss->lps + ss->tokens_sent, 0, (size_t)n_move * sizeof(*ss->lps));
        }
    }
    ss->tokens_sent = n_out;
    ss->text_sent = limit;
    return n_new > 0 || n_text > 0;
}

void engine_emit(cv_engine *e, request *req, bool finished)
{
    (void)e;
    if (!req->stream && !finished) return;
    int order[256];
    int *idx = req->n_seqs <= 256 ? order : malloc((size_t)req->n_seqs * sizeof(int));
    if (!idx) return;
    for (int k = 0; k < req->n_seqs; k++)
        idx[k] = k;
    int n_out = req->n_seqs;
    if (!req->stream && req->n_return < req->n_seqs) {
        /* best_of: the n of highest cumulative logprob (insertion sort, stable). */
        for (int i = 1; i < req->n_seqs; i++)
            for (int j = i;
                 j > 0 && req->seqs[idx[j]].cum_logprob > req->seqs[idx[j - 1]].cum_logprob; j--) {
                int t = idx[j];
                idx[j] = idx[j - 1];
                idx[j - 1] = t;
            }
        n_out = req->n_return;
    }
    cv_request_output *out = calloc(1, sizeof(*out));
    bool ok = out != NULL;
    bool news = finished;
    if (ok) {
        out->request_id = req->id;
        out->user_data = req->user_data;
        out->n_prompt_tokens = req->n_prompt;
        out->finished = finished;
        out->seqs = calloc(n_out > 0 ? (size_t)n_out : 1, sizeof(cv_seq_output));
        ok = out->seqs != NULL;
    }
    for (int j = 0; ok && j < n_out; j++) {
        int r = fill_seq(req, &req->seqs[idx[j]], j, &out->seqs[j]);
        out->n_seqs = j + 1;
        ok = r >= 0;
        news |= r > 0;
    }
    if (ok && req->prompt_lps && !req->prompt_lps_sent &&
        (req->prompt_lps_done == req->n_prompt || finished)) {
        out->prompt_logprobs = req->prompt_lps;
        req->prompt_lps = NULL;
        req->prompt_lps_sent = true;
        news = true;
    }
    if (idx != order) free(idx);
    if (!ok) {
        cv_request_output_free(out);
        engine_emit_error(req, "out of memory building the request output");
        return;
    }
    if (!news) {
        cv_request_output_free(out);
        return;
    }
    if (output_queue_push(req->sink, out) < 0) {
        cv_log_error("engine: cannot deliver output of request %llu", (unsigned long long)req->id);
        cv_request_output_free(out);
    }
}

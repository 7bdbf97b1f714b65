/* The CPU backend on the OPT and GPT-2 structures against a plain
 * double-precision forward written from the HF modeling code: pre- and
 * post-norm, word_embed_proj_dim projections, enable_bias false, untied
 * heads, F32/F16/BF16 weights (variants the HF fixtures of
 * tests/fixtures/models do not all cover). Models are written at test time
 * through the model module's writers and loaded by cv_model_load; logits of
 * every position must be within 1e-5 (relative to the largest) of the
 * reference, a mixed batch must give the alone run's logits bit for bit, and
 * the backend's refusals name what is wrong. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backend/cpu/cpu_internal.h"
#include "../common/seq_runner.h"
#include "../model/model_fixture.h"

enum { HIDDEN = 16, INTER = 24, VOCAB = 40, MAX_POS = 32, N_IDS = 19, MAX_W = 48 };

/* 7 and 19 tokens: the lengths runner_feed_mixed's plan feeds. */
static const int n_ids[2] = {7, 19};
static const int32_t prompt_ids[2][N_IDS] = {
    {2, 7, 13, 5, 31, 8, 21}, {2, 30, 1, 9, 9, 22, 14, 3, 36, 11, 27, 39, 0, 17, 4, 25, 6, 33, 12}};

typedef struct variant {
    const char *arch;
    bool post_norm;
    int proj_dim;
    bool bias, tied;
    cv_dtype dtype;
} variant;

static const variant variants[] = {
    {"OPTForCausalLM", false, 0, true, true, CV_DTYPE_F32},    /* opt-125m */
    {"OPTForCausalLM", true, 8, true, true, CV_DTYPE_BF16},    /* opt-350m */
    {"OPTForCausalLM", false, 8, false, false, CV_DTYPE_F16},  /* projected, pre-norm */
    {"GPT2LMHeadModel", false, 0, true, true, CV_DTYPE_F32},   /* gpt2 */
    {"GPT2LMHeadModel", false, 0, true, false, CV_DTYPE_BF16}, /* untied */
};

static cv_model_config variant_config(const variant *v)
{
    cv_model_config c;
    memset(&c, 0, sizeof c);
    snprintf(c.architecture, sizeof c.architecture, "%s", v->arch);
    c.hidden_size = HIDDEN;
    c.intermediate_size = INTER;
    c.n_layers = 2;
    c.n_heads = c.n_kv_heads = 4;
    c.head_dim = 4;
    c.vocab_size = VOCAB;
    c.max_position_embeddings = MAX_POS;
    c.rms_norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.bos_token_id = 2;
    c.n_eos_token_ids = 1;
    c.eos_token_ids[0] = 2;
    c.norm_type = CV_NORM_LAYER;
    c.pos_type = CV_POS_LEARNED;
    c.plain_mlp = true;
    const bool opt = strcmp(v->arch, "OPTForCausalLM") == 0;
    c.pos_offset = opt ? 2 : 0;
    c.hidden_act = opt ? CV_ACT_RELU : CV_ACT_GELU_TANH;
    c.post_norm = c.no_final_norm = v->post_norm;
    c.proj_dim = v->proj_dim;
    c.linear_bias = v->bias;
    c.tie_word_embeddings = v->tied;
    c.dtype = v->dtype;
    return c;
}

/* Weights uniform in [-0.4, 0.4] from a hash of (tensor, element); norm
 * weights 1 + that / 2. */
static int fill(void *ctx, size_t index, void *dst, size_t off, size_t n, cv_error *err)
{
    (void)err;
    const cv_safetensors_entry *e = ctx;
    const bool norm = strstr(e[index].name, "norm.weight") || strstr(e[index].name, ".ln_");
    for (size_t i = 0; i < n; i++) {
        uint32_t r = (uint32_t)(off + i) * 2246822519u ^ (uint32_t)index * 2654435761u;
        r ^= r >> 13;
        r *= 3266489917u;
        r ^= r >> 16;
        float x = ((float)(r % 2001) - 1000.0f) / 2500.0f;
        if (norm && strstr(e[index].name, "weight")) x = 1.0f + x / 2;
        cv_dtype_store(dst, i, e[index].tensor.dtype, x);
    }
    return 0;
}

static cv_model *write_and_load(const char *dir, const cv_model_config *cfg)
{
    cv_error err = {.msg = ""};
    if (cv_model_write_config(dir, cfg, &err)) fail_msg("%s", err.msg);
    cv_safetensors_entry *e;
    size_t n;
    if (cv_model_tensor_list(cfg, cfg->dtype, &e, &n, &err)) fail_msg("%s", err.msg);
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (cv_safetensors_write(path, e, n, fill, e, &err)) fail_msg("%s", err.msg);
    cv_model_free_tensor_list(e, n);
    cv_model *m = cv_model_load(dir, &err);
    if (!m) fail_msg("%s", err.msg);
    return m;
}

/* ---- the reference: one sequence, no cache, doubles ------------------- */

static double at(const cv_tensor *t, int64_t i)
{
    return cv_dtype_load(t->data, (size_t)i, t->dtype);
}

/* y = W x (+ b): W (out, in). */
static void ref_linear(const cv_tensor *w, const cv_tensor *b, const double *x, double *y)
{
    const int64_t out = w->shape[0], in = w->shape[1];
    for (int64_t o = 0; o < out; o++) {
        double s = b && b->data ? at(b, o) : 0.0;
        for (int64_t i = 0; i < in; i++)
            s += at(w, o * in + i) * x[i];
        y[o] = s;
    }
}

static void ref_layernorm(double *x, const cv_tensor *w, const cv_tensor *b, int n, double eps)
{
    double mean = 0.0, var = 0.0;
    for (int i = 0; i < n; i++)
        mean += x[i] / n;
    for (int i = 0; i < n; i++)
        var += (x[i] - mean) * (x[i] - mean) / n;
    for (int i = 0; i < n; i++)
        x[i] = (x[i] - mean) / sqrt(var + eps) * at(w, i) + at(b, i);
}

static double ref_act(cv_activation act, double v)
{
    if (act == CV_ACT_RELU) return v > 0 ? v : 0;
    return 0.5 * v * (1.0 + tanh(sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
}

/* Logits (n, VOCAB) of ids at positions 0..n-1, as HF's OPTForCausalLM and
 * GPT2LMHeadModel compute them. */
static void ref_forward(const cv_model *m, const int32_t *ids, int n, double *logits)
{
    const cv_model_config *c = cv_model_get_config(m);
    const cv_model_weights *w = cv_model_get_weights(m);
    const int h = c->hidden_size, e = cv_config_embed_dim(c), hd = c->head_dim;
    static double x[N_IDS][MAX_W], q[N_IDS][MAX_W], k[N_IDS][MAX_W], v[N_IDS][MAX_W],
        o[N_IDS][MAX_W];
    double in[MAX_W], t1[MAX_W], t2[MAX_W];
    for (int t = 0; t < n; t++) {
        for (int i = 0; i < e; i++)
            in[i] = at(&w->embed, (int64_t)ids[t] * e + i);
        if (c->proj_dim)
            ref_linear(&w->project_in, NULL, in, x[t]);
        else
            memcpy(x[t], in, sizeof in);
        for (int i = 0; i < h; i++)
            x[t][i] += at(&w->pos_embed, (int64_t)(t + c->pos_offset) * h + i);
    }
    for (int l = 0; l < c->n_layers; l++) {
        const cv_layer_weights *L = &w->layers[l];
        for (int t = 0; t < n; t++) {
            memcpy(in, x[t], sizeof in);
            if (!c->post_norm)
                ref_layernorm(in, &L->attn_norm, &L->attn_norm_b, h, c->rms_norm_eps);
            ref_linear(&L->wq, &L->bq, in, q[t]);
            ref_linear(&L->wk, &L->bk, in, k[t]);
            ref_linear(&L->wv, &L->bv, in, v[t]);
        }
        for (int t = 0; t < n; t++) {
            for (int hh = 0; hh < c->n_heads; hh++) {
                double s[N_IDS], mx = -INFINITY, z = 0.0;
                for (int j = 0; j <= t; j++) {
                    s[j] = 0.0;
                    for (int d = 0; d < hd; d++)
                        s[j] += q[t][hh * hd + d] * k[j][hh * hd + d];
                    s[j] /= sqrt((double)hd);
                    mx = fmax(mx, s[j]);
                }
                for (int j = 0; j <= t; j++)
                    z += s[j] = exp(s[j] - mx);
                for (int d = 0; d < hd; d++) {
                    t1[hh * hd + d] = 0.0;
                    for (int j = 0; j <= t; j++)
                        t1[hh * hd + d] += s[j] / z * v[j][hh * hd + d];
                }
            }
            ref_linear(&L->wo, &L->bo, t1, o[t]);
        }
        for (int t = 0; t < n; t++) {
            for (int i = 0; i < h; i++)
                x[t][i] += o[t][i];
            if (c->post_norm)
                ref_layernorm(x[t], &L->attn_norm, &L->attn_norm_b, h, c->rms_norm_eps);
            memcpy(in, x[t], sizeof in);
            if (!c->post_norm) ref_layernorm(in, &L->ffn_norm, &L->ffn_norm_b, h, c->rms_norm_eps);
            ref_linear(&L->w_up, &L->b_up, in, t1);
            for (int i = 0; i < c->intermediate_size; i++)
                t1[i] = ref_act(c->hidden_act, t1[i]);
            ref_linear(&L->w_down, &L->b_down, t1, t2);
            for (int i = 0; i < h; i++)
                x[t][i] += t2[i];
            if (c->post_norm) ref_layernorm(x[t], &L->ffn_norm, &L->ffn_norm_b, h, c->rms_norm_eps);
        }
    }
    for (int t = 0; t < n; t++) {
        if (w->final_norm.data)
            ref_layernorm(x[t], &w->final_norm, &w->final_norm_b, h, c->rms_norm_eps);
        if (c->proj_dim)
            ref_linear(&w->project_out, NULL, x[t], in);
        else
            memcpy(in, x[t], sizeof in);
        ref_linear(&w->lm_head, NULL, in, logits + (size_t)t * VOCAB);
    }
}

/* ---- tests ------------------------------------------------------------- */

static cv_backend *backend(const cv_model *m, int n_threads, cpu_simd_level level)
{
    cv_error err = {.msg = ""};
    cv_backend *bk = cv_backend_cpu_create(m, n_threads, &err);
    if (!bk) fail_msg("%s", err.msg);
    if (cpu_backend_set_simd(bk, level, &err)) fail_msg("%s", err.msg);
    /* fp32 KV for the F16 variant too: the comparison is of the arithmetic. */
    assert_int_equal(cv_backend_cpu_set_kv_dtype(bk, CV_DTYPE_F32, &err), 0);
    bk->parallel_min_madds = 0.0; /* the team, not one thread */
    return bk;
}

static void test_against_reference(void **state)
{
    for (size_t vi = 0; vi < sizeof variants / sizeof variants[0]; vi++) {
        const cv_model_config cfg = variant_config(&variants[vi]);
        cv_model *m = write_and_load(*state, &cfg);
        double ref[2][N_IDS * VOCAB];
        for (int p = 0; p < 2; p++)
            ref_forward(m, prompt_ids[p], n_ids[p], ref[p]);
        for (int l = 0; l < CPU_SIMD_COUNT; l++) {
            if (!cpu_kernels_get((cpu_simd_level)l)) continue;
            float alone[2][N_IDS * VOCAB], mixed[2][N_IDS * VOCAB];
            cv_error err = {.msg = ""};
            for (int p = 0; p < 2; p++) {
                cv_backend *bk = backend(m, 2, (cpu_simd_level)l);
                runner r;
                assert_int_equal(runner_init(&r, &runner_cpu_ops, bk, 4, 1, &err), 0);
                r.seqs[0].ids = prompt_ids[p];
                r.seqs[0].n_ids = n_ids[p];
                int chunk[1] = {n_ids[p]};
                assert_int_equal(runner_step(&r, chunk, alone[p], &err), n_ids[p]);
                cv_backend_destroy(bk);
                double num = 0.0, den = 0.0;
                for (int i = 0; i < n_ids[p] * VOCAB; i++) {
                    num = fmax(num, fabs(alone[p][i] - ref[p][i]));
                    den = fmax(den, fabs(ref[p][i]));
                }
                print_message("%s post %d proj %d bias %d tied %d %s, %s: rel err %.2e\n",
                              cfg.architecture, cfg.post_norm, cfg.proj_dim, cfg.linear_bias,
                              cfg.tie_word_embeddings, cv_dtype_name(cfg.dtype),
                              cpu_kernels_get((cpu_simd_level)l)->name, num / den);
                assert_true(num / den <= 1e-5);
            }
            cv_backend *bk = backend(m, 2, (cpu_simd_level)l);
            runner r;
            assert_int_equal(runner_init(&r, &runner_cpu_ops, bk, 4, 2, &err), 0);
            for (int p = 0; p < 2; p++) {
                r.seqs[p].ids = prompt_ids[p];
                r.seqs[p].n_ids = n_ids[p];
            }
            runner_feed_mixed(&r, VOCAB, (float *const[2]){mixed[0], mixed[1]});
            for (int p = 0; p < 2; p++)
                assert_memory_equal(mixed[p], alone[p], (size_t)n_ids[p] * VOCAB * sizeof(float));
            cv_backend_destroy(bk);
        }
        cv_model_free(m);
    }
}

/* A position past the learned table is refused, not read out of bounds. */
static void test_position_past_table(void **state)
{
    const cv_model_config cfg = variant_config(&variants[0]);
    cv_model *m = write_and_load(*state, &cfg);
    cv_backend *bk = backend(m, 1, cpu_kernels_best()->level);
    cv_error err = {.msg = ""};
    assert_int_equal(cv_backend_kv_alloc(bk, 16, 4, &err), 0);
    const int32_t ids[1] = {5}, pos[1] = {MAX_POS}, qs[2] = {0, 1}, lens[1] = {MAX_POS + 1},
                  table[9] = {0, 1, 2, 3, 4, 5, 6, 7, 8}, idx[1] = {0};
    const int64_t slots[1] = {MAX_POS};
    const cv_batch b = {.n_tokens = 1,
                        .token_ids = ids,
                        .positions = pos,
                        .slot_mapping = slots,
                        .n_seqs = 1,
                        .query_start = qs,
                        .seq_lens = lens,
                        .block_tables = table,
                        .max_blocks_per_seq = 9,
                        .n_logits = 1,
                        .logits_indices = idx};
    float logits[VOCAB];
    assert_int_equal(cv_backend_forward(bk, &b, logits, &err), -1);
    assert_string_equal(err.msg,
                        "cv_backend_forward: positions[0] = 32 is past the model's 32 learned "
                        "positions");
    cv_backend_destroy(bk);
    cv_model_free(m);
}

/* Weights and configs that do not fit the structure are refused at create. */
static void test_bad_structure(void **state)
{
    const cv_model_config good = variant_config(&variants[1]);
    cv_model *m = write_and_load(*state, &good);
    const cv_model_weights *mw = cv_model_get_weights(m);
    cv_error err = {.msg = ""};
    cv_model_config c = good;
    cv_model_weights w = *mw;
    w.pos_embed.data = NULL;
    assert_null(cpu_backend_create_from(&c, &w, 1, CV_DTYPE_F32, &err));
    assert_string_equal(err.msg, "cpu backend: weight pos_embed is missing");
    w = *mw;
    w.project_out.data = NULL;
    assert_null(cpu_backend_create_from(&c, &w, 1, CV_DTYPE_F32, &err));
    assert_string_equal(err.msg, "cpu backend: weight project_out is missing");
    w = *mw;
    c.no_final_norm = false; /* a final norm the weights lack */
    assert_null(cpu_backend_create_from(&c, &w, 1, CV_DTYPE_F32, &err));
    assert_string_equal(err.msg, "cpu backend: weight final_norm is missing");
    c = good;
    c.plain_mlp = false; /* relu in a gated MLP, and no gate */
    assert_null(cpu_backend_create_from(&c, &w, 1, CV_DTYPE_F32, &err));
    assert_string_equal(err.msg, "cpu backend: relu is supported only in a non-gated MLP");
    c.hidden_act = CV_ACT_SILU;
    assert_null(cpu_backend_create_from(&c, &w, 1, CV_DTYPE_F32, &err));
    assert_string_equal(err.msg, "cpu backend: weight layer 0 w_gate is missing");
    c = good;
    cv_layer_weights layers[2] = {mw->layers[0], mw->layers[1]};
    layers[1].ffn_norm_b.data = NULL;
    w.layers = layers;
    assert_null(cpu_backend_create_from(&c, &w, 1, CV_DTYPE_F32, &err));
    assert_string_equal(err.msg, "cpu backend: weight layer 1 ffn_norm_b is missing");
    cv_model_free(m);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, fx_setup_tmpdir, fx_teardown_tmpdir)
    const struct CMUnitTest tests[] = {
        T(test_against_reference),
        T(test_position_past_table),
        T(test_bad_structure),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* LoRA test data: random PEFT adapters and merged-weights models (see
 * lora_fixture.h). Failures end the running cmocka test. */
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "lora/lora.h"
#include "lora_fixture.h"
#include "model/model.h"

static const char *const modules[CV_LORA_N_TARGETS] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

void lf_mkdtemp(char *out, size_t n)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(out, n, "%s/cvllm-lora-test-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(out));
}

void lf_rmtree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[4600];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(p, &st) == 0 && S_ISDIR(st.st_mode))
            lf_rmtree(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

void lf_write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

void lf_model_path(char *out, size_t n, const char *name)
{
    const char *src = getenv("CVLLM_SOURCE_DIR");
    snprintf(out, n, "%s/tests/fixtures/models/%s", src && *src ? src : ".", name);
}

/* Uniform in [-0.35, 0.35] (std 0.2, as the fixture models' weights), from
 * a 64-bit LCG: the same numbers on every machine. */
static float next_rand(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)(((double)(*s >> 11) / 9007199254740992.0 - 0.5) * 0.7);
}

static void load_cfg(const char *model_dir, cv_model **m)
{
    cv_error err = {0};
    *m = cv_model_load(model_dir, &err);
    if (!*m) fail_msg("%s", err.msg);
}

/* A and B of every targeted projection, in the order lf_write_adapter
 * writes them: layer, then target, A then B. */
typedef struct ab_set {
    float *a[64][CV_LORA_N_TARGETS], *b[64][CV_LORA_N_TARGETS];
    int in[CV_LORA_N_TARGETS], out[CV_LORA_N_TARGETS];
} ab_set;

static void make_ab(const cv_model_config *cfg, const lora_spec *spec, ab_set *s)
{
    uint64_t st = spec->seed * 2654435761ULL + 12345;
    memset(s, 0, sizeof *s);
    assert_true(cfg->n_layers <= 64);
    for (int k = 0; k < CV_LORA_N_TARGETS; k++)
        cv_lora_target_dims(cfg, (cv_lora_target)k, &s->in[k], &s->out[k]);
    for (int l = 0; l < cfg->n_layers; l++)
        for (int k = 0; k < CV_LORA_N_TARGETS; k++) {
            if (!(spec->targets >> k & 1)) continue;
            const int r = spec->rank;
            s->a[l][k] = malloc((size_t)r * s->in[k] * sizeof(float));
            s->b[l][k] = malloc((size_t)s->out[k] * r * sizeof(float));
            for (int i = 0; i < r * s->in[k]; i++)
                s->a[l][k][i] = next_rand(&st);
            for (int i = 0; i < s->out[k] * r; i++)
                s->b[l][k][i] = next_rand(&st);
        }
}

static void free_ab(ab_set *s)
{
    for (int l = 0; l < 64; l++)
        for (int k = 0; k < CV_LORA_N_TARGETS; k++) {
            free(s->a[l][k]);
            free(s->b[l][k]);
        }
}

void lf_write_adapter(const char *model_dir, const char *adapter_dir, const lora_spec *spec,
                      const char *extra_json)
{
    cv_model *m;
    load_cfg(model_dir, &m);
    const cv_model_config *cfg = cv_model_get_config(m);
    ab_set s;
    make_ab(cfg, spec, &s);
    mkdir(adapter_dir, 0755);
    char path[4600], targets[512] = "", json[2048];
    for (int k = 0; k < CV_LORA_N_TARGETS; k++)
        if (spec->targets >> k & 1)
            snprintf(targets + strlen(targets), sizeof targets - strlen(targets), "%s\"%s\"",
                     targets[0] ? ", " : "", strchr(modules[k], '.') + 1);
    snprintf(json, sizeof json,
             "{\"peft_type\": \"LORA\", \"task_type\": \"CAUSAL_LM\", \"r\": %d, "
             "\"lora_alpha\": %g, \"lora_dropout\": 0.0, \"target_modules\": [%s], "
             "\"use_rslora\": %s, \"fan_in_fan_out\": false, \"bias\": \"none\", "
             "\"modules_to_save\": null, \"use_dora\": false%s%s}\n",
             spec->rank, spec->alpha, targets, spec->rslora ? "true" : "false",
             extra_json ? ", " : "", extra_json ? extra_json : "");
    snprintf(path, sizeof path, "%s/adapter_config.json", adapter_dir);
    lf_write_text(path, json);
    cv_safetensors_entry e[64 * CV_LORA_N_TARGETS * 2];
    static char names[64 * CV_LORA_N_TARGETS * 2][160];
    size_t n = 0;
    for (int l = 0; l < cfg->n_layers; l++)
        for (int k = 0; k < CV_LORA_N_TARGETS; k++) {
            if (!s.a[l][k]) continue;
            for (int ab = 0; ab < 2; ab++, n++) {
                snprintf(names[n], sizeof names[n],
                         "base_model.model.model.layers.%d.%s.lora_%c.weight", l, modules[k],
                         ab ? 'B' : 'A');
                e[n].name = names[n];
                e[n].tensor =
                    (cv_tensor){.dtype = CV_DTYPE_F32,
                                .n_dims = 2,
                                .shape = {ab ? s.out[k] : spec->rank, ab ? spec->rank : s.in[k]},
                                .data = ab ? s.b[l][k] : s.a[l][k]};
            }
        }
    cv_error err = {0};
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", adapter_dir);
    if (cv_safetensors_write(path, e, n, NULL, NULL, &err) < 0) fail_msg("%s", err.msg);
    free_ab(&s);
    cv_model_free(m);
}

static void copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    fclose(out);
}

void lf_write_merged(const char *model_dir, const lora_spec *spec, const char *out_dir)
{
    cv_model *m;
    load_cfg(model_dir, &m);
    const cv_model_config *cfg = cv_model_get_config(m);
    ab_set s;
    make_ab(cfg, spec, &s);
    const double scale = spec->rslora ? spec->alpha / sqrt(spec->rank) : spec->alpha / spec->rank;
    char path[4600], to[4600];
    mkdir(out_dir, 0755);
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    snprintf(to, sizeof to, "%s/config.json", out_dir);
    copy_file(path, to);
    snprintf(path, sizeof path, "%s/generation_config.json", model_dir);
    snprintf(to, sizeof to, "%s/generation_config.json", out_dir);
    if (access(path, R_OK) == 0) copy_file(path, to);
    snprintf(path, sizeof path, "%s/model.safetensors", model_dir);
    cv_error err = {0};
    cv_tensor_file *tf = cv_tensor_file_open(path, &err);
    if (!tf) fail_msg("%s", err.msg);
    const size_t n = cv_tensor_file_count(tf);
    cv_safetensors_entry *e = calloc(n, sizeof *e);
    float **owned = calloc(n, sizeof *owned);
    for (size_t i = 0; i < n; i++) {
        const cv_tensor *t = cv_tensor_file_get(tf, i, &err);
        assert_non_null(t);
        e[i].name = cv_tensor_file_name(tf, i);
        e[i].tensor = *t;
        for (int l = 0; l < cfg->n_layers; l++)
            for (int k = 0; k < CV_LORA_N_TARGETS; k++) {
                char want[160];
                snprintf(want, sizeof want, "model.layers.%d.%s.weight", l, modules[k]);
                if (!s.a[l][k] || strcmp(e[i].name, want)) continue;
                assert_int_equal(t->dtype, CV_DTYPE_F32);
                const int in = s.in[k], out = s.out[k], r = spec->rank;
                const float *w = t->data;
                float *mw = owned[i] = malloc((size_t)in * out * sizeof(float));
                for (int o = 0; o < out; o++)
                    for (int c = 0; c < in; c++) {
                        double d = 0.0;
                        for (int j = 0; j < r; j++)
                            d += (double)s.b[l][k][o * r + j] * s.a[l][k][j * in + c];
                        mw[o * in + c] = (float)((double)w[o * in + c] + scale * d);
                    }
                e[i].tensor.data = mw;
            }
    }
    snprintf(to, sizeof to, "%s/model.safetensors", out_dir);
    if (cv_safetensors_write(to, e, n, NULL, NULL, &err) < 0) fail_msg("%s", err.msg);
    for (size_t i = 0; i < n; i++)
        free(owned[i]);
    free(owned);
    free(e);
    cv_tensor_file_close(tf);
    free_ab(&s);
    cv_model_free(m);
}

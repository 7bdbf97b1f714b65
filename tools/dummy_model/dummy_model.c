/* cvllm-dummy-model: writes a HuggingFace model directory (config.json,
 * generation_config.json, model.safetensors and optionally a tokenizer) with
 * deterministic random weights for the benchmark shapes of
 * docs/PERFORMANCE.md, so benchmarks need no downloaded checkpoint.
 *
 *   cvllm-dummy-model --shape L125M|L8B|Q0.5B|O125M|tiny --dtype f32|f16|bf16
 *                     [--seed S] [--tokenizer DIR] --out DIR
 *
 * Weights are normal(0, 0.02) (HF's initializer_range), norm weights 1.0,
 * LayerNorm biases 0.
 * Each value is a hash of (seed, tensor index, element index), so the bytes
 * depend only on the seed, shape and dtype, and threads fill in parallel. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "base/clock.h"
#include "model/model.h"

typedef struct dm_shape {
    const char *name;
    const char *architecture;
    int hidden, intermediate, layers, heads, kv_heads, vocab, max_position;
    float rope_theta, rms_norm_eps;
    bool tied;
    int bos, eos;
} dm_shape;

static const dm_shape dm_shapes[] = {
    /* SmolLM2-135M geometry with the Llama-2 tokenizer's vocabulary. */
    {"L125M", "LlamaForCausalLM", 576, 1536, 30, 9, 3, 32000, 2048, 10000.0f, 1e-5f, true, 1, 2},
    /* Llama-3-8B. */
    {"L8B", "LlamaForCausalLM", 4096, 14336, 32, 32, 8, 128256, 8192, 500000.0f, 1e-5f, false,
     128000, 128001},
    /* Qwen2.5-0.5B (q/k/v biases come from the architecture). */
    {"Q0.5B", "Qwen2ForCausalLM", 896, 4864, 24, 14, 2, 151936, 32768, 1000000.0f, 1e-6f, true,
     151643, 151643},
    /* OPT-125M (facebook/opt-125m, the seed's sample): LayerNorm, learned
     * positions, ReLU MLP with biases; rope_theta unused. */
    {"O125M", "OPTForCausalLM", 768, 3072, 12, 12, 12, 50272, 2048, 0.0f, 1e-5f, true, 2, 2},
    /* A few hundred KB; vocab 512 matches stories260K's tokenizer. */
    {"tiny", "LlamaForCausalLM", 64, 192, 2, 4, 2, 512, 512, 10000.0f, 1e-5f, true, 1, 2},
};
enum { DM_N_SHAPES = sizeof dm_shapes / sizeof dm_shapes[0] };

/* ---- deterministic normal(0, 0.02) weights ------------------------------- */

/* splitmix64's finalizer: a bijective 64-bit mix. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Elements 2P and 2P+1 of a tensor whose key is KEY: counter-based (a hash
 * of the position, no generator state), so chunks and threads can fill any
 * range in any order and the bytes stay the same. Box-Muller on two 24-bit
 * uniforms from one hash gives the pair. */
static void dm_normal_pair(uint64_t key, uint64_t p, float out[2])
{
    uint64_t bits = mix64(key + p * 0x9e3779b97f4a7c15ull);
    float u1 = ((float)(bits >> 40) + 1.0f) * 0x1p-24f; /* (0, 1]: log stays finite */
    float u2 = (float)((bits >> 16) & 0xffffff) * 0x1p-24f;
    float radius = sqrtf(-2.0f * logf(u1));
    float angle = 6.28318530718f * u2;
    out[0] = radius * cosf(angle);
    out[1] = radius * sinf(angle);
}

typedef struct dm_fill_ctx {
    const cv_safetensors_entry *entries;
    uint64_t seed;
} dm_fill_ctx;

static bool ends_with(const char *name, const char *suffix)
{
    size_t n = strlen(name), k = strlen(suffix);
    return n >= k && strcmp(name + n - k, suffix) == 0;
}

static int dm_fill(void *vctx, size_t index, void *dst, size_t offset_elems, size_t n_elems,
                   cv_error *err)
{
    dm_fill_ctx *ctx = vctx;
    cv_dtype dtype = ctx->entries[index].tensor.dtype;
    /* Norm weights (input_layernorm, model.norm, q_norm, OPT's
     * self_attn_layer_norm...) are the ones whose HF names end in
     * "norm.weight"; a LayerNorm's bias ends in "norm.bias". */
    const char *name = ctx->entries[index].name;
    const bool norm = ends_with(name, "norm.weight"), norm_bias = ends_with(name, "norm.bias");
    uint64_t key = mix64(ctx->seed ^ mix64(index + 1));
    /* Pairs of absolute element indices [2p, 2p + 1] overlapping the chunk;
     * parallel because L8B is 8 billion draws, dynamic because the cores
     * may be shared. */
    uint64_t first = offset_elems / 2, end = (offset_elems + n_elems + 1) / 2;
#pragma omp parallel for schedule(dynamic, 4096)
    for (uint64_t p = first; p < end; p++) {
        float x[2] = {1.0f, 1.0f};
        if (norm_bias) {
            x[0] = x[1] = 0.0f;
        } else if (!norm) {
            dm_normal_pair(key, p, x);
            x[0] *= 0.02f;
            x[1] *= 0.02f;
        }
        for (int k = 0; k < 2; k++) {
            uint64_t e = 2 * p + (uint64_t)k;
            if (e >= offset_elems && e < offset_elems + n_elems)
                cv_dtype_store(dst, (size_t)(e - offset_elems), dtype, x[k]);
        }
    }
    return 0;
}

/* ---- tokenizer ----------------------------------------------------------- */

/* The highest token id tokenizer.json defines (vocab and added tokens), so a
 * tokenizer that does not fit the shape's vocabulary is refused. */
static int dm_max_token_id(const char *path, long long *max_id, cv_error *err)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) return cv_errorf(err, "%s: %s", path, jerr.text);
    *max_id = -1;
    const char *key;
    json_t *v;
    json_object_foreach(json_object_get(json_object_get(root, "model"), "vocab"), key, v)
    {
        if (json_integer_value(v) > *max_id) *max_id = json_integer_value(v);
    }
    size_t i;
    json_array_foreach(json_object_get(root, "added_tokens"), i, v)
    {
        long long id = json_integer_value(json_object_get(v, "id"));
        if (id > *max_id) *max_id = id;
    }
    json_decref(root);
    return 0;
}

static int dm_copy(const char *from, const char *to, cv_error *err)
{
    FILE *in = fopen(from, "rb");
    if (!in) return cv_errorf(err, "%s: cannot open: %s", from, strerror(errno));
    FILE *out = fopen(to, "wb");
    if (!out) {
        fclose(in);
        return cv_errorf(err, "%s: cannot create: %s", to, strerror(errno));
    }
    char buf[1 << 16];
    size_t n;
    int rc = 0;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) rc = cv_errorf(err, "%s: write failed", to);
    if (ferror(in)) rc = cv_errorf(err, "%s: read failed", from);
    fclose(in);
    if (fclose(out) != 0 && rc == 0) rc = cv_errorf(err, "%s: write failed", to);
    return rc;
}

static int dm_tokenizer(const char *tok_dir, const char *out, int vocab, cv_error *err)
{
    char from[4096], to[4096];
    snprintf(from, sizeof from, "%s/tokenizer.json", tok_dir);
    long long max_id = -1;
    if (dm_max_token_id(from, &max_id, err)) return -1;
    if (max_id >= vocab)
        return cv_errorf(err, "%s: token id %lld does not fit the shape's vocab_size %d", from,
                         max_id, vocab);
    snprintf(to, sizeof to, "%s/tokenizer.json", out);
    if (dm_copy(from, to, err)) return -1;
    snprintf(from, sizeof from, "%s/tokenizer_config.json", tok_dir);
    snprintf(to, sizeof to, "%s/tokenizer_config.json", out);
    struct stat st;
    if (stat(from, &st) != 0) return 0; /* optional in HF directories */
    return dm_copy(from, to, err);
}

/* ---- main ---------------------------------------------------------------- */

static int dm_mkdirs(const char *dir, cv_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s", dir);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            return cv_errorf(err, "%s: cannot create: %s", path, strerror(errno));
        *p = '/';
    }
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return cv_errorf(err, "%s: cannot create: %s", path, strerror(errno));
    return 0;
}

static void dm_config(const dm_shape *s, cv_dtype dtype, cv_model_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->architecture, sizeof c->architecture, "%s", s->architecture);
    c->hidden_size = s->hidden;
    c->intermediate_size = s->intermediate;
    c->n_layers = s->layers;
    c->n_heads = s->heads;
    c->n_kv_heads = s->kv_heads;
    c->head_dim = s->hidden / s->heads;
    c->vocab_size = s->vocab;
    c->max_position_embeddings = s->max_position;
    c->rms_norm_eps = s->rms_norm_eps;
    c->rope_theta = s->rope_theta;
    c->tie_word_embeddings = s->tied;
    c->bos_token_id = s->bos;
    c->n_eos_token_ids = 1;
    c->eos_token_ids[0] = s->eos;
    c->dtype = dtype;
    c->hidden_act = CV_ACT_SILU;
    if (strcmp(s->architecture, "OPTForCausalLM") == 0) {
        /* What config_legacy.c reads an OPTConfig as (pre-norm, biases). */
        c->norm_type = CV_NORM_LAYER;
        c->pos_type = CV_POS_LEARNED;
        c->pos_offset = 2;
        c->plain_mlp = true;
        c->linear_bias = true;
        c->hidden_act = CV_ACT_RELU;
    }
}

static int dm_write(const dm_shape *s, cv_dtype dtype, uint64_t seed, const char *tok_dir,
                    const char *out, cv_error *err)
{
    cv_model_config cfg;
    dm_config(s, dtype, &cfg);
    if (dm_mkdirs(out, err) || cv_model_write_config(out, &cfg, err)) return -1;
    if (tok_dir && dm_tokenizer(tok_dir, out, cfg.vocab_size, err)) return -1;
    cv_safetensors_entry *entries;
    size_t n;
    if (cv_model_tensor_list(&cfg, dtype, &entries, &n, err)) return -1;
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    dm_fill_ctx ctx = {.entries = entries, .seed = seed};
    int rc = cv_safetensors_write(path, entries, n, dm_fill, &ctx, err);
    cv_model_free_tensor_list(entries, n);
    return rc;
}

static int usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s --shape L125M|L8B|Q0.5B|O125M|tiny --dtype f32|f16|bf16 [--seed S] "
            "[--tokenizer DIR] --out DIR\n",
            argv0);
    return 2;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"shape", required_argument, NULL, 's'},
        {"dtype", required_argument, NULL, 'd'},
        {"seed", required_argument, NULL, 'r'},
        {"tokenizer", required_argument, NULL, 't'},
        {"out", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *shape_name = NULL, *dtype_name = NULL, *tok_dir = NULL, *out = NULL;
    unsigned long long seed = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 's':
            shape_name = optarg;
            break;
        case 'd':
            dtype_name = optarg;
            break;
        case 't':
            tok_dir = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 'r':
            errno = 0;
            seed = strtoull(optarg, &end, 10);
            if (errno || *end || !*optarg) {
                fprintf(stderr, "%s: --seed '%s' is not a non-negative integer\n", argv[0], optarg);
                return 2;
            }
            break;
        default:
            return usage(argv[0]);
        }
    }
    if (!shape_name || !dtype_name || !out || optind != argc) return usage(argv[0]);
    const dm_shape *shape = NULL;
    for (int i = 0; i < DM_N_SHAPES; i++)
        if (strcmp(dm_shapes[i].name, shape_name) == 0) shape = &dm_shapes[i];
    cv_dtype dtype;
    if (strcmp(dtype_name, "f32") == 0)
        dtype = CV_DTYPE_F32;
    else if (strcmp(dtype_name, "f16") == 0)
        dtype = CV_DTYPE_F16;
    else if (strcmp(dtype_name, "bf16") == 0)
        dtype = CV_DTYPE_BF16;
    else {
        fprintf(stderr, "%s: --dtype '%s': expected f32, f16 or bf16\n", argv[0], dtype_name);
        return 2;
    }
    if (!shape) {
        fprintf(stderr, "%s: --shape '%s': expected L125M, L8B, Q0.5B, O125M or tiny\n", argv[0],
                shape_name);
        return 2;
    }
    cv_error err = {.msg = ""};
    uint64_t t0_ns = cv_now_ns();
    if (dm_write(shape, dtype, seed, tok_dir, out, &err)) {
        fprintf(stderr, "%s: %s\n", argv[0], err.msg);
        return 1;
    }
    fprintf(stderr, "%s: wrote %s (%s, %s) in %.2f s\n", argv[0], out, shape->name, dtype_name,
            cv_ns_to_s(cv_now_ns() - t0_ns));
    return 0;
}

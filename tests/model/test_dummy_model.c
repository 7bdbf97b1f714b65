/* cvllm-dummy-model end to end: runs the built binary ($CVLLM_BIN_DIR),
 * loads what it wrote with cv_model_load, and checks the weights'
 * initialization, determinism, dtypes, the tokenizer copy and the errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "model_fixture.h"
#include "../common/shared_data.h"

static const char *bin_dir(void)
{
    const char *b = getenv("CVLLM_BIN_DIR");
    return b ? b : "build/bin";
}

static const char *shared_dir(void)
{
    const char *s = getenv("CVLLM_SHARED");
    return s ? s : "../shared";
}

/* Runs the tool with ARGS, stderr into DIR/stderr.txt (read back into
 * MSG); returns its exit status. */
static int run_tool(const char *dir, char *msg, size_t msg_len, const char *args_fmt, ...)
{
    char args[2048], cmd[4096];
    va_list ap;
    va_start(ap, args_fmt);
    vsnprintf(args, sizeof args, args_fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s/cvllm-dummy-model %s 2>%s/stderr.txt", bin_dir(), args, dir);
    /* "b" is written by one thread, "a" by the default team: same bytes. */
    if (strstr(args, "/b"))
        snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 %s/cvllm-dummy-model %s 2>%s/stderr.txt",
                 bin_dir(), args, dir);
    int status = system(cmd);
    assert_true(WIFEXITED(status));
    snprintf(cmd, sizeof cmd, "%s/stderr.txt", dir);
    FILE *fp = fopen(cmd, "r");
    assert_non_null(fp);
    size_t n = fread(msg, 1, msg_len - 1, fp);
    msg[n] = '\0';
    fclose(fp);
    return WEXITSTATUS(status);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) fail_msg("cannot open %s", path);
    fseek(fp, 0, SEEK_END);
    *len = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *buf = malloc(*len ? *len : 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, *len, fp), *len);
    fclose(fp);
    return buf;
}

static uint64_t fnv1a(const char *buf, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)buf[i]) * 0x100000001b3ull;
    return h;
}

static cv_model *load_sub(const char *dir, const char *sub)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, sub);
    cv_error err = {.msg = ""};
    cv_model *m = cv_model_load(path, &err);
    if (!m) fail_msg("%s", err.msg);
    return m;
}

static double tensor_std(const cv_tensor *t)
{
    const float *x = t->data;
    int64_t n = cv_tensor_numel(t);
    double sum = 0, sq = 0;
    for (int64_t i = 0; i < n; i++) {
        sum += x[i];
        sq += (double)x[i] * x[i];
    }
    double mean = sum / (double)n;
    return sqrt(sq / (double)n - mean * mean);
}

static void test_tiny_f32(void **state)
{
    if (!cv_test_have_shared("models/stories260K")) skip(); /* its 512-id tokenizer */
    const char *dir = *state;
    char msg[1024];
    assert_int_equal(run_tool(dir, msg, sizeof msg,
                              "--shape tiny --dtype f32 --seed 0 --tokenizer "
                              "%s/models/stories260K --out %s/a",
                              shared_dir(), dir),
                     0);
    cv_model *m = load_sub(dir, "a");
    const cv_model_config *c = cv_model_get_config(m);
    assert_string_equal(c->architecture, "LlamaForCausalLM");
    assert_int_equal(c->hidden_size, 64);
    assert_int_equal(c->intermediate_size, 192);
    assert_int_equal(c->n_layers, 2);
    assert_int_equal(c->vocab_size, 512);
    assert_true(c->tie_word_embeddings);
    assert_int_equal(c->dtype, CV_DTYPE_F32);
    const cv_model_weights *w = cv_model_get_weights(m);
    for (int i = 0; i < 64; i++) {
        assert_true(((const float *)w->final_norm.data)[i] == 1.0f);
        assert_true(((const float *)w->layers[1].ffn_norm.data)[i] == 1.0f);
    }
    /* 32768 draws from normal(0, 0.02): the sample std is within 2%. */
    double sd = tensor_std(&w->embed);
    assert_true(sd > 0.0196 && sd < 0.0204);
    sd = tensor_std(&w->layers[1].w_down);
    assert_true(sd > 0.0196 && sd < 0.0204);
    cv_model_free(m);

    /* The tokenizer is copied byte for byte. */
    char a[4096], b[4096];
    size_t la, lb;
    snprintf(a, sizeof a, "%s/models/stories260K/tokenizer.json", shared_dir());
    snprintf(b, sizeof b, "%s/a/tokenizer.json", dir);
    char *x = slurp(a, &la), *y = slurp(b, &lb);
    assert_int_equal(la, lb);
    assert_memory_equal(x, y, la);
    free(x);
    free(y);

    /* The generator is pinned: bench inputs must not change silently. */
    snprintf(b, sizeof b, "%s/a/model.safetensors", dir);
    x = slurp(b, &la);
    assert_int_equal(la, 527640);
    assert_int_equal(fnv1a(x, la), 0xa9b92e23329c3042ull);
    free(x);
}

static void test_seed_and_dtypes(void **state)
{
    const char *dir = *state;
    char msg[1024];
    const char *runs[][3] = {
        {"a", "f32", "5"},   {"b", "f32", "5"},     {"c", "f32", "6"},
        {"f16", "f16", "5"}, {"bf16", "bf16", "5"},
    };
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(run_tool(dir, msg, sizeof msg,
                                  "--shape tiny --dtype %s --seed %s --out %s/%s", runs[i][1],
                                  runs[i][2], dir, runs[i][0]),
                         0);
    char path_a[4096], path_b[4096];
    snprintf(path_a, sizeof path_a, "%s/a/model.safetensors", dir);
    snprintf(path_b, sizeof path_b, "%s/b/model.safetensors", dir);
    size_t la, lb;
    char *fa = slurp(path_a, &la), *fb = slurp(path_b, &lb);
    assert_int_equal(la, lb);
    assert_memory_equal(fa, fb, la);
    free(fa);
    free(fb);
    cv_model *a = load_sub(dir, "a"), *b = load_sub(dir, "b"), *c = load_sub(dir, "c");
    cv_model *h = load_sub(dir, "f16"), *bf = load_sub(dir, "bf16");
    const cv_tensor *ta = &cv_model_get_weights(a)->layers[0].wq;
    const cv_tensor *tb = &cv_model_get_weights(b)->layers[0].wq;
    const cv_tensor *tc = &cv_model_get_weights(c)->layers[0].wq;
    const cv_tensor *th = &cv_model_get_weights(h)->layers[0].wq;
    const cv_tensor *tbf = &cv_model_get_weights(bf)->layers[0].wq;
    assert_int_equal(th->dtype, CV_DTYPE_F16);
    assert_int_equal(tbf->dtype, CV_DTYPE_BF16);
    assert_int_equal(cv_model_get_config(bf)->dtype, CV_DTYPE_BF16);
    size_t n = (size_t)cv_tensor_numel(ta), same_seed6 = 0;
    for (size_t i = 0; i < n; i++) {
        float x = ((const float *)ta->data)[i];
        assert_true(x == ((const float *)tb->data)[i]);
        same_seed6 += x == ((const float *)tc->data)[i];
        /* Same seed, other dtype: the same draws, rounded. */
        assert_int_equal(((const uint16_t *)th->data)[i], cv_f32_to_f16(x));
        assert_int_equal(((const uint16_t *)tbf->data)[i], cv_f32_to_bf16(x));
    }
    assert_int_equal(same_seed6, 0);
    cv_model_free(a);
    cv_model_free(b);
    cv_model_free(c);
    cv_model_free(h);
    cv_model_free(bf);
}

/* The OPT-125M shape (the seed's facebook/opt-125m geometry) is written as
 * an OPTConfig that loads back as OPT: LayerNorm weights 1 and biases 0,
 * learned positions with OPT's offset of 2, ReLU MLP with biases. */
static void test_opt125m(void **state)
{
    const char *dir = *state;
    char msg[1024];
    assert_int_equal(
        run_tool(dir, msg, sizeof msg, "--shape O125M --dtype bf16 --seed 1 --out %s/o", dir), 0);
    cv_model *m = load_sub(dir, "o");
    const cv_model_config *c = cv_model_get_config(m);
    assert_string_equal(c->architecture, "OPTForCausalLM");
    assert_int_equal(c->hidden_size, 768);
    assert_int_equal(c->intermediate_size, 3072);
    assert_int_equal(c->n_layers, 12);
    assert_int_equal(c->n_kv_heads, 12);
    assert_int_equal(c->vocab_size, 50272);
    assert_int_equal(c->norm_type, CV_NORM_LAYER);
    assert_int_equal(c->pos_type, CV_POS_LEARNED);
    assert_int_equal(c->pos_offset, 2);
    assert_int_equal(c->hidden_act, CV_ACT_RELU);
    assert_true(c->plain_mlp && c->linear_bias && c->tie_word_embeddings && !c->post_norm);
    const cv_model_weights *w = cv_model_get_weights(m);
    assert_int_equal(w->pos_embed.shape[0], 2048 + 2);
    for (int i = 0; i < 768; i++) {
        assert_true(cv_dtype_load(w->layers[11].attn_norm.data, (size_t)i, CV_DTYPE_BF16) == 1.0f);
        assert_true(cv_dtype_load(w->layers[11].attn_norm_b.data, (size_t)i, CV_DTYPE_BF16) ==
                    0.0f);
        assert_true(cv_dtype_load(w->final_norm_b.data, (size_t)i, CV_DTYPE_BF16) == 0.0f);
    }
    assert_non_null(w->layers[0].b_up.data);
    cv_model_free(m);
}

static void test_errors(void **state)
{
    if (!cv_test_have_shared("tokenizers/llama2")) skip();
    const char *dir = *state;
    char msg[1024], want[2048];
    assert_int_equal(run_tool(dir, msg, sizeof msg, "--shape L9B --dtype f32 --out %s/a", dir), 2);
    snprintf(want, sizeof want,
             "%s/cvllm-dummy-model: --shape 'L9B': expected L125M, L8B, Q0.5B, O125M or tiny\n",
             bin_dir());
    assert_string_equal(msg, want);
    assert_int_equal(run_tool(dir, msg, sizeof msg, "--shape tiny --dtype f8 --out %s/a", dir), 2);
    snprintf(want, sizeof want, "%s/cvllm-dummy-model: --dtype 'f8': expected f32, f16 or bf16\n",
             bin_dir());
    assert_string_equal(msg, want);
    /* The Llama-2 tokenizer (32000 ids) does not fit tiny's vocab of 512. */
    assert_int_equal(run_tool(dir, msg, sizeof msg,
                              "--shape tiny --dtype f32 --tokenizer %s/tokenizers/llama2 --out "
                              "%s/a",
                              shared_dir(), dir),
                     1);
    snprintf(want, sizeof want,
             "%s/cvllm-dummy-model: %s/tokenizers/llama2/tokenizer.json: token id 31999 does "
             "not fit the shape's vocab_size 512\n",
             bin_dir(), shared_dir());
    assert_string_equal(msg, want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tiny_f32, fx_setup_tmpdir, fx_teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_seed_and_dtypes, fx_setup_tmpdir, fx_teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_opt125m, fx_setup_tmpdir, fx_teardown_tmpdir),
        cmocka_unit_test_setup_teardown(test_errors, fx_setup_tmpdir, fx_teardown_tmpdir),
    };
    return cv_test_exit(cmocka_run_group_tests(tests, NULL, NULL));
}

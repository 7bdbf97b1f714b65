/* Sliding-window attention (Mistral's sliding_window) on the CPU backend.
 *
 * With one layer, keys and values are functions of each token's embedding
 * alone and RoPE makes scores depend only on relative positions, so the
 * logits of the last of N tokens under a window of W equal the logits of
 * running the last W tokens on their own. The model is the HF mistral_f32
 * fixture cut to one layer (its layer-1 tensors are simply not read). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "backend/backend.h"
#include "../common/seq_runner.h"

enum { N_IDS = 11, WINDOW = 3, VOCAB = 256 };

static const int32_t ids[N_IDS] = {1, 17, 200, 33, 91, 5, 250, 64, 128, 7, 42};

/* A one-layer copy of the mistral_f32 fixture with the given window
 * ("null" or a number) in a temp dir; returns the loaded model. */
static cv_model *one_layer_mistral(const char *window, char *dir, size_t dir_len)
{
    const char *src = getenv("CVLLM_SOURCE_DIR");
    snprintf(dir, dir_len, "/tmp/cvllm_sliding_XXXXXX");
    assert_non_null(mkdtemp(dir));
    char path[512], target[512];
    snprintf(target, sizeof target, "%s/tests/fixtures/models/mistral_f32/model.safetensors",
             src ? src : ".");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_int_equal(symlink(target, path), 0);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "{\"architectures\": [\"MistralForCausalLM\"], \"head_dim\": 16, "
            "\"hidden_act\": \"silu\", \"hidden_size\": 64, \"intermediate_size\": 128, "
            "\"max_position_embeddings\": 128, \"num_attention_heads\": 4, "
            "\"num_hidden_layers\": 1, \"num_key_value_heads\": 2, \"rms_norm_eps\": 1e-06, "
            "\"rope_theta\": 1000000.0, \"sliding_window\": %s, \"tie_word_embeddings\": false, "
            "\"vocab_size\": %d, \"bos_token_id\": 1, \"eos_token_id\": 2}",
            window, VOCAB);
    fclose(f);
    cv_error err = {.msg = ""};
    cv_model *m = cv_model_load(dir, &err);
    if (!m) fail_msg("%s", err.msg);
    return m;
}

static void remove_dir(const char *dir)
{
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
}

/* Logits of the last token of ids[first..n) fed as chunks of `chunk`
 * tokens through blocks of `block_size`. */
static void last_logits(cv_model *m, int first, int n, int chunk, int block_size,
                        float *out /* (VOCAB) */)
{
    cv_error err = {.msg = ""};
    cv_backend *bk = cv_backend_cpu_create(m, 1, &err);
    if (!bk) fail_msg("%s", err.msg);
    runner r;
    assert_int_equal(runner_init(&r, &runner_cpu_ops, bk, block_size, 1, &err), 0);
    r.seqs[0].ids = ids + first;
    r.seqs[0].n_ids = n - first;
    float *rows = malloc(sizeof(float) * VOCAB * N_IDS);
    assert_non_null(rows);
    int rows_out = 0;
    while (r.seqs[0].n_done < r.seqs[0].n_ids) {
        int left = r.seqs[0].n_ids - r.seqs[0].n_done;
        int step[1] = {left < chunk ? left : chunk};
        rows_out = runner_step(&r, step, rows, &err);
        if (rows_out < 0) fail_msg("%s", err.msg);
    }
    memcpy(out, rows + (size_t)(rows_out - 1) * VOCAB, sizeof(float) * VOCAB);
    free(rows);
    cv_backend_destroy(bk);
}

static double rel_err(const float *a, const float *b)
{
    double num = 0, den = 0;
    for (int i = 0; i < VOCAB; i++) {
        num = fmax(num, fabs((double)a[i] - b[i]));
        den = fmax(den, fabs((double)b[i]));
    }
    return num / den;
}

static void test_window_equals_truncated_context(void **state)
{
    (void)state;
    char dir[64], full_dir[64];
    cv_model *windowed = one_layer_mistral("3", dir, sizeof dir);
    cv_model *full = one_layer_mistral("null", full_dir, sizeof full_dir);
    float alone[VOCAB], prefill[VOCAB], decode[VOCAB], unwindowed[VOCAB];

    last_logits(full, N_IDS - WINDOW, N_IDS, N_IDS, 4, alone);
    last_logits(windowed, 0, N_IDS, N_IDS, 4, prefill);
    /* Chunks of 2 through blocks of 4: windows that start inside a block
     * and span two blocks. */
    last_logits(windowed, 0, N_IDS, 2, 4, decode);
    last_logits(full, 0, N_IDS, N_IDS, 4, unwindowed);

    assert_true(rel_err(prefill, alone) <= 1e-5);
    assert_true(rel_err(decode, alone) <= 1e-5);
    /* The window changes the answer, so the check above can fail. */
    assert_true(rel_err(unwindowed, alone) > 1e-3);

    cv_model_free(windowed);
    cv_model_free(full);
    remove_dir(dir);
    remove_dir(full_dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window_equals_truncated_context),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

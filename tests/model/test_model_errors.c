/* Every bad input the loader refuses, with the exact message: each test
 * writes a valid model into a fresh temp dir, breaks one thing, and checks
 * that the message names the file and what was wrong. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "model_fixture.h"

/* state: the temp dir, holding a valid 2-layer F32 Llama (fx_config). */
static int setup_model(void **state)
{
    char *dir = malloc(4096);
    if (!dir) return -1;
    fx_mkdtemp(dir, 4096);
    cv_model_config cfg = fx_config("LlamaForCausalLM");
    fx_write_model(dir, &cfg, CV_DTYPE_F32, 1);
    *state = dir;
    return 0;
}

static int teardown_model(void **state)
{
    fx_rmtree(*state);
    free(*state);
    return 0;
}

static void unlink_in(const char *dir, const char *file)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    assert_int_equal(unlink(path), 0);
}

static void truncate_in(const char *dir, const char *file, long drop_bytes)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long len = ftell(fp);
    fclose(fp);
    assert_int_equal(truncate(path, len - drop_bytes), 0);
}

static void test_missing_config(void **state)
{
    unlink_in(*state, "config.json");
    fx_assert_load_error(*state, "%s/config.json: cannot open: No such file or directory",
                         (char *)*state);
}

static void test_malformed_config(void **state)
{
    const char text[] = "{\"architectures\": [\"LlamaForCausalLM\"],\n \"hidden_size\": 16,,}";
    fx_write_file(*state, "config.json", text, sizeof text - 1);
    fx_assert_load_error(*state,
                         "%s/config.json: malformed JSON at line 2 column 20: string or '}' "
                         "expected near ','",
                         (char *)*state);
}

static void test_unknown_architecture(void **state)
{
    fx_json_set(*state, "config.json", "architectures", json_pack("[s]", "FalconForCausalLM"));
    fx_assert_load_error(*state,
                         "%s/config.json: unknown architecture 'FalconForCausalLM' (supported: "
                         "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
                         "Qwen3ForCausalLM, OPTForCausalLM, GPT2LMHeadModel)",
                         (char *)*state);
}

static void test_missing_config_key(void **state)
{
    fx_json_set(*state, "config.json", "hidden_size", NULL);
    fx_assert_load_error(*state, "%s/config.json: missing key 'hidden_size'", (char *)*state);
}

static void test_unsupported_rope(void **state)
{
    fx_json_set(*state, "config.json", "rope_scaling",
                json_pack("{s:s,s:f}", "rope_type", "yarn", "factor", 4.0));
    fx_assert_load_error(*state,
                         "%s/config.json: unsupported rope type 'yarn' (supported: default, "
                         "linear, llama3)",
                         (char *)*state);
}

static void test_unsupported_activation(void **state)
{
    fx_json_set(*state, "config.json", "hidden_act", json_string("relu"));
    fx_assert_load_error(*state,
                         "%s/config.json: unsupported hidden_act 'relu' (supported: silu, "
                         "gelu_pytorch_tanh)",
                         (char *)*state);
}

static void test_malformed_generation_config(void **state)
{
    fx_write_file(*state, "generation_config.json", "{\"eos_token_id\": [2, \"x\"]}", 26);
    fx_assert_load_error(*state, "%s/generation_config.json: eos_token_id[1] is not a token id",
                         (char *)*state);
}

static void test_no_weights(void **state)
{
    unlink_in(*state, "model.safetensors");
    fx_assert_load_error(*state,
                         "%s: no model.safetensors, model.safetensors.index.json, "
                         "pytorch_model.bin or pytorch_model.bin.index.json",
                         (char *)*state);
}

/* The data region holds 22848 bytes (embed, norm, lm_head, 2 x 9344 per
 * layer); dropping 100 cuts into the last tensor, layer 1's down_proj
 * ([16, 32] F32 = 2048 bytes). */
static void test_truncated_safetensors(void **state)
{
    truncate_in(*state, "model.safetensors", 100);
    fx_assert_load_error(*state,
                         "%s/model.safetensors: truncated: tensor "
                         "'model.layers.1.mlp.down_proj.weight' needs data bytes [20800, 22848) "
                         "but the file holds only 22748 data bytes",
                         (char *)*state);
}

static void test_shorter_than_header_length(void **state)
{
    fx_write_file(*state, "model.safetensors", "\x10\0\0", 3);
    fx_assert_load_error(*state,
                         "%s/model.safetensors: truncated: 3 bytes, the 8-byte header length is "
                         "missing",
                         (char *)*state);
}

static void test_header_past_end(void **state)
{
    const char bytes[16] = {0, 0, 0, 0, 0, 1, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '};
    fx_write_file(*state, "model.safetensors", bytes, sizeof bytes);
    fx_assert_load_error(*state,
                         "%s/model.safetensors: header length 1099511627776 runs past the end "
                         "of the file (16 bytes)",
                         (char *)*state);
}

static void test_malformed_header(void **state)
{
    fx_patch_header(*state, "model.safetensors", "\"__metadata__\"", "\"__metadata__\",", 8);
    fx_assert_load_error(*state,
                         "%s/model.safetensors: malformed JSON header at header byte 16: ':' "
                         "expected near ','",
                         (char *)*state);
}

static void test_offsets_disagree_with_shape(void **state)
{
    fx_patch_header(*state, "model.safetensors", "\"shape\":[32,16]", "\"shape\":[32,15]", 8);
    fx_assert_load_error(*state,
                         "%s/model.safetensors: tensor 'model.embed_tokens.weight': shape and "
                         "dtype F32 need 1920 bytes but data_offsets [0, 2048] hold 2048",
                         (char *)*state);
}

static void test_tensor_missing(void **state)
{
    fx_patch_header(*state, "model.safetensors", "model.layers.1.self_attn.v_proj.weight",
                    "model.layers.1.self_attn.v_proj.weigh", 8);
    fx_assert_load_error(*state,
                         "%s/model.safetensors: tensor 'model.layers.1.self_attn.v_proj.weight' "
                         "missing",
                         (char *)*state);
}

/* lm_head.weight is required once tie_word_embeddings is off. */
static void test_untied_lm_head_missing(void **state)
{
    fx_patch_header(*state, "model.safetensors", "\"lm_head.weight\"", "\"lm_head.weigh\"", 8);
    fx_assert_load_error(*state, "%s/model.safetensors: tensor 'lm_head.weight' missing",
                         (char *)*state);
}

static void test_shape_mismatch(void **state)
{
    fx_json_set(*state, "config.json", "intermediate_size", json_integer(48));
    fx_assert_load_error(*state,
                         "%s/model.safetensors: tensor 'model.layers.0.mlp.gate_proj.weight' "
                         "has shape [32, 16], config.json implies [48, 16]",
                         (char *)*state);
}

/* The same bytes relabelled: 2048 bytes of I8 [128, 16] and of F64 [16, 16]. */
static void test_dtype_i8(void **state)
{
    fx_patch_header(*state, "model.safetensors", "\"dtype\":\"F32\",\"shape\":[32,16]",
                    "\"dtype\":\"I8\",\"shape\":[128,16]", 8);
    fx_assert_load_error(*state,
                         "%s/model.safetensors: tensor 'model.embed_tokens.weight' has dtype "
                         "I8; supported dtypes are F32, F16, BF16",
                         (char *)*state);
}

static void test_dtype_f64(void **state)
{
    fx_patch_header(*state, "model.safetensors", "\"dtype\":\"F32\",\"shape\":[32,16]",
                    "\"dtype\":\"F64\",\"shape\":[16,16]", 8);
    fx_assert_load_error(*state,
                         "%s/model.safetensors: tensor 'model.embed_tokens.weight' has dtype "
                         "F64; supported dtypes are F32, F16, BF16",
                         (char *)*state);
}

static void test_dtype_unknown(void **state)
{
    fx_patch_header(*state, "model.safetensors", "\"dtype\":\"F32\"", "\"dtype\":\"Q4\"", 8);
    fx_assert_load_error(*state,
                         "%s/model.safetensors: tensor 'model.embed_tokens.weight': unknown "
                         "dtype 'Q4'",
                         (char *)*state);
}

static void test_missing_shard(void **state)
{
    cv_model_config cfg = fx_config("LlamaForCausalLM");
    unlink_in(*state, "model.safetensors");
    fx_write_model(*state, &cfg, CV_DTYPE_F32, 3);
    unlink_in(*state, "model-00002-of-00003.safetensors");
    fx_assert_load_error(*state,
                         "%s/model-00002-of-00003.safetensors: cannot open: No such file or "
                         "directory",
                         (char *)*state);
}

static void test_weight_map_lacks_tensor(void **state)
{
    cv_model_config cfg = fx_config("LlamaForCausalLM");
    unlink_in(*state, "model.safetensors");
    fx_write_model(*state, &cfg, CV_DTYPE_F32, 2);
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", (char *)*state);
    json_t *index = json_load_file(path, 0, NULL);
    assert_non_null(index);
    json_object_del(json_object_get(index, "weight_map"), "model.norm.weight");
    assert_int_equal(json_dump_file(index, path, 0), 0);
    json_decref(index);
    fx_assert_load_error(*state,
                         "%s/model.safetensors.index.json: tensor 'model.norm.weight' missing "
                         "from weight_map",
                         (char *)*state);
}

static void test_shard_name_escapes_dir(void **state)
{
    cv_model_config cfg = fx_config("LlamaForCausalLM");
    unlink_in(*state, "model.safetensors");
    fx_write_model(*state, &cfg, CV_DTYPE_F32, 2);
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", (char *)*state);
    json_t *index = json_load_file(path, 0, NULL);
    assert_non_null(index);
    json_object_set_new(json_object_get(index, "weight_map"), "model.norm.weight",
                        json_string("../x.safetensors"));
    assert_int_equal(json_dump_file(index, path, 0), 0);
    json_decref(index);
    fx_assert_load_error(*state,
                         "%s/model.safetensors.index.json: weight_map entry for "
                         "'model.norm.weight' is not a file name",
                         (char *)*state);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup_model, teardown_model)
    const struct CMUnitTest tests[] = {
        T(test_missing_config),
        T(test_malformed_config),
        T(test_unknown_architecture),
        T(test_missing_config_key),
        T(test_unsupported_rope),
        T(test_unsupported_activation),
        T(test_malformed_generation_config),
        T(test_no_weights),
        T(test_truncated_safetensors),
        T(test_shorter_than_header_length),
        T(test_header_past_end),
        T(test_malformed_header),
        T(test_offsets_disagree_with_shape),
        T(test_tensor_missing),
        T(test_untied_lm_head_missing),
        T(test_shape_mismatch),
        T(test_dtype_i8),
        T(test_dtype_f64),
        T(test_dtype_unknown),
        T(test_missing_shard),
        T(test_weight_map_lacks_tensor),
        T(test_shard_name_escapes_dir),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}

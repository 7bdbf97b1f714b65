/* Every entry of ../shared/tokenizers/conformance (HF transformers 4.57.1
 * baselines for gpt2, TinyLlama and Qwen2.5 over inputs.json) must match
 * exactly: input_ids (encode with special tokens), decoded_with_special
 * and decoded_skip_special. */
#include "tok_test_util.h"
#include "../common/shared_data.h"

static void run_baseline(const char *tok_name, const char *baseline)
{
    cv_tokenizer *tok = tt_load(tt_path("%s/tokenizers/%s", tt_shared(), tok_name));
    json_t *inputs = tt_json(tt_path("%s/tokenizers/conformance/inputs.json", tt_shared()));
    json_t *base = tt_json(tt_path("%s/tokenizers/conformance/%s", tt_shared(), baseline));
    const json_t *entries = json_object_get(base, "entries");
    const json_t *list = json_object_get(inputs, "inputs");
    size_t checked = 0;
    for (size_t i = 0; i < json_array_size(list); i++) {
        const json_t *in = json_array_get(list, i);
        const char *id = json_string_value(json_object_get(in, "id"));
        const json_t *text = json_object_get(in, "text");
        const json_t *e = json_object_get(entries, id);
        if (!e) fail_msg("%s: no baseline for input \"%s\"", baseline, id);
        size_t n;
        int32_t *want = tt_ids(json_object_get(e, "input_ids"), &n);
        const char *what = tt_path("%s/%s", tok_name, id);
        tt_check_encode(tok, json_string_value(text), json_string_length(text), true, want, n,
                        what);
        tt_check_decode(tok, want, n, false,
                        json_string_value(json_object_get(e, "decoded_with_special")), what);
        tt_check_decode(tok, want, n, true,
                        json_string_value(json_object_get(e, "decoded_skip_special")), what);
        free(want);
        checked++;
    }
    assert_int_equal(checked, json_object_size(entries));
    assert_true(checked >= 30);
    json_decref(inputs);
    json_decref(base);
    tok_free(tok);
}

static void test_gpt2(void **state)
{
    (void)state;
    run_baseline("gpt2", "openai-community__gpt2.json");
}

static void test_tinyllama(void **state)
{
    (void)state;
    run_baseline("llama2", "TinyLlama__TinyLlama-1.1B-Chat-v1.0.json");
}

static void test_qwen25(void **state)
{
    (void)state;
    run_baseline("qwen3", "Qwen__Qwen2.5-0.5B.json");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt2),
        cmocka_unit_test(test_tinyllama),
        cmocka_unit_test(test_qwen25),
    };
    cv_test_need_shared("tokenizers/conformance");
    return cmocka_run_group_tests_name("tokenizer_conformance", tests, NULL, NULL);
}

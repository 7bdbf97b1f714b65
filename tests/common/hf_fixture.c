/* HF reference fixtures for the backend tests; see hf_fixture.h. */
#include "hf_fixture.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* Loads the model in DIR and the JSON reference at PATH. */
static void load(hf_fixture *f, const char *dir, const char *path)
{
    cv_error err = {.msg = ""};
    f->model = cv_model_load(dir, &err);
    if (!f->model) fail_msg("loading %s: %s", dir, err.msg);
    json_error_t jerr;
    f->ref = json_load_file(path, 0, &jerr);
    if (!f->ref) fail_msg("%s: %s", path, jerr.text);
    f->cfg = cv_model_get_config(f->model);
    const json_t *dtype = json_object_get(f->ref, "weights_dtype");
    f->bf16 = dtype && strcmp(json_string_value(dtype), "bfloat16") == 0;
}

void hf_fixture_load(hf_fixture *f, const char *name)
{
    const char *src = getenv("CVLLM_SOURCE_DIR");
    char dir[1024], path[1100];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/%s", src ? src : ".", name);
    snprintf(path, sizeof path, "%s/reference.json", dir);
    load(f, dir, path);
}

void hf_fixture_load_stories(hf_fixture *f)
{
    const char *shared = getenv("CVLLM_SHARED");
    const char *src = getenv("CVLLM_SOURCE_DIR");
    char dir[1024], path[1024];
    snprintf(dir, sizeof dir, "%s/models/stories260K", shared ? shared : "../shared");
    snprintf(path, sizeof path, "%s/tests/fixtures/stories260K_greedy.json", src ? src : ".");
    load(f, dir, path);
}

void hf_fixture_free(hf_fixture *f)
{
    json_decref(f->ref);
    cv_model_free(f->model);
}

int hf_ids_from_json(const json_t *arr, int32_t *ids, int max_ids)
{
    const size_t n = json_array_size(arr);
    assert_true(n <= (size_t)max_ids);
    for (size_t i = 0; i < n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return (int)n;
}

double hf_rel_err(const float *ours, const json_t *rows, int row0, int n_rows, int vocab)
{
    double max_diff = 0.0, max_ref = 0.0;
    for (int r = row0; r < row0 + n_rows; r++) {
        const json_t *row = json_array_get(rows, (size_t)r);
        assert_int_equal(json_array_size(row), vocab);
        for (int v = 0; v < vocab; v++) {
            const double ref = json_number_value(json_array_get(row, (size_t)v));
            const double d = fabs(ours[(size_t)(r - row0) * vocab + v] - ref);
            max_diff = d > max_diff || isnan(d) ? d : max_diff;
            max_ref = fabs(ref) > max_ref ? fabs(ref) : max_ref;
        }
    }
    return max_diff / max_ref;
}

int hf_argmax(const float *row, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (row[i] > row[best]) best = i;
    return best;
}

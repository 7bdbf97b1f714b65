/* Parses the sample model's HF greedy fixture with jansson. */
#include "sample_fixture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

static const char *source_dir(void)
{
    const char *d = getenv("CVLLM_SOURCE_DIR");
    return d && *d ? d : ".";
}

void sample_model_dir(char *buf, size_t size)
{
    snprintf(buf, size, "%s/samples/models/cvllm-kjv-4m", source_dir());
}

static int read_ids(json_t *arr, int32_t **ids, size_t *n, const char *path, size_t i,
                    const char *key, cv_error *err)
{
    if (!json_is_array(arr))
        return cv_errorf(err, "%s: cases[%zu].%s is not an array", path, i, key);
    *n = json_array_size(arr);
    *ids = malloc((*n ? *n : 1) * sizeof **ids);
    if (!*ids) return cv_errorf(err, "%s: out of memory reading cases[%zu].%s", path, i, key);
    for (size_t j = 0; j < *n; j++) {
        json_t *v = json_array_get(arr, j);
        if (!json_is_integer(v))
            return cv_errorf(err, "%s: cases[%zu].%s[%zu] is not an integer", path, i, key, j);
        (*ids)[j] = (int32_t)json_integer_value(v);
    }
    return 0;
}

static int read_str(json_t *c, const char *key, char **out, const char *path, size_t i,
                    cv_error *err)
{
    const char *s = json_string_value(json_object_get(c, key));
    if (!s) return cv_errorf(err, "%s: cases[%zu].%s is not a string", path, i, key);
    *out = strdup(s);
    if (!*out) return cv_errorf(err, "%s: out of memory reading cases[%zu].%s", path, i, key);
    return 0;
}

static int read_case(json_t *c, sample_case *sc, const char *path, size_t i, cv_error *err)
{
    json_t *max_new = json_object_get(c, "max_new_tokens");
    if (!json_is_integer(max_new))
        return cv_errorf(err, "%s: cases[%zu].max_new_tokens is not an integer", path, i);
    sc->max_new_tokens = (int)json_integer_value(max_new);
    if (read_str(c, "prompt", &sc->prompt, path, i, err) ||
        read_str(c, "text", &sc->text, path, i, err) ||
        read_str(c, "text_incremental", &sc->text_incremental, path, i, err))
        return -1;
    if (read_ids(json_object_get(c, "input_ids"), &sc->input_ids, &sc->n_input, path, i,
                 "input_ids", err) ||
        read_ids(json_object_get(c, "output_ids"), &sc->output_ids, &sc->n_output, path, i,
                 "output_ids", err))
        return -1;
    return 0;
}

int sample_fixture_load(sample_fixture *fx, cv_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/sample_model_greedy.json", source_dir());
    memset(fx, 0, sizeof *fx);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) return cv_errorf(err, "%s:%d: %s", path, jerr.line, jerr.text);
    json_t *cases = json_object_get(root, "cases");
    int rc = 0;
    if (!json_is_array(cases) || json_array_size(cases) == 0) {
        rc = cv_errorf(err, "%s: \"cases\" is not a non-empty array", path);
        goto out;
    }
    fx->cases = calloc(json_array_size(cases), sizeof *fx->cases);
    if (!fx->cases) {
        rc = cv_errorf(err, "%s: out of memory", path);
        goto out;
    }
    fx->n_cases = json_array_size(cases);
    for (size_t i = 0; i < fx->n_cases && rc == 0; i++)
        rc = read_case(json_array_get(cases, i), &fx->cases[i], path, i, err);
out:
    json_decref(root);
    if (rc) sample_fixture_free(fx);
    return rc;
}

void sample_fixture_free(sample_fixture *fx)
{
    for (size_t i = 0; i < fx->n_cases; i++) {
        sample_case *c = &fx->cases[i];
        free(c->prompt);
        free(c->input_ids);
        free(c->output_ids);
        free(c->text);
        free(c->text_incremental);
    }
    free(fx->cases);
    memset(fx, 0, sizeof *fx);
}

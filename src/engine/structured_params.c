/* The structured-output fields of SamplingParams: vLLM's structured_outputs
 * object ({"json"|"regex"|"choice"|"json_object"|"grammar": ...}) and the
 * older request fields guided_json / guided_regex / guided_choice /
 * guided_grammar / guided_json_object, and OpenAI's response_format, with
 * vLLM's checks and wording. The
 * constraint itself is compiled (and refused when malformed) by the engine
 * through src/structured when the request is added. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cvllm/engine.h"
#include "engine_internal.h"

static const char *const guided_fields[] = {"guided_json", "guided_regex", "guided_choice",
                                            "guided_grammar", "guided_json_object"};

bool structured_params_is_field(const char *key)
{
    if (!strcmp(key, "structured_outputs") || !strcmp(key, "response_format")) return true;
    for (size_t i = 0; i < sizeof(guided_fields) / sizeof(guided_fields[0]); i++)
        if (!strcmp(key, guided_fields[i])) return true;
    return false;
}

static int set_text(cv_sampling_params *p, cv_structured_kind kind, const char *text, cv_error *err)
{
    char *t = strdup(text);
    if (!t) return cv_errorf(err, "out of memory parsing structured_outputs");
    free(p->structured_text);
    p->structured_text = t;
    p->structured_kind = kind;
    return 0;
}

static bool truthy(const json_t *v)
{
    return json_is_true(v) || (json_is_string(v) && !strcasecmp(json_string_value(v), "true"));
}

/* One constraint kind named `field` (for messages) with value v. */
static int set_kind(cv_sampling_params *p, const char *kind, const char *field, const json_t *v,
                    cv_error *err)
{
    if (!strcmp(kind, "json")) {
        if (json_is_string(v)) return set_text(p, CV_STRUCTURED_JSON, json_string_value(v), err);
        if (!json_is_object(v) && !json_is_boolean(v))
            return cv_errorf(err, "%s must be a JSON schema (an object or its JSON text)", field);
        char *text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        int rc = text ? set_text(p, CV_STRUCTURED_JSON, text, err)
                      : cv_errorf(err, "out of memory parsing %s", field);
        free(text);
        return rc;
    }
    if (!strcmp(kind, "regex")) {
        if (!json_is_string(v)) return cv_errorf(err, "%s must be a string", field);
        return set_text(p, CV_STRUCTURED_REGEX, json_string_value(v), err);
    }
    if (!strcmp(kind, "choice")) {
        bool ok = json_is_array(v) && json_array_size(v) > 0;
        for (size_t i = 0; ok && i < json_array_size(v); i++)
            ok = json_is_string(json_array_get(v, i));
        if (!ok) return cv_errorf(err, "%s must be a non-empty list of strings", field);
        char *text = json_dumps(v, JSON_COMPACT);
        int rc = text ? set_text(p, CV_STRUCTURED_CHOICE, text, err)
                      : cv_errorf(err, "out of memory parsing %s", field);
        free(text);
        return rc;
    }
    if (!strcmp(kind, "json_object")) {
        if (!json_is_boolean(v) && !json_is_string(v))
            return cv_errorf(err, "%s must be a boolean", field);
        return truthy(v) ? set_text(p, CV_STRUCTURED_JSON_OBJECT, "", err) : 0;
    }
    if (!strcmp(kind, "grammar")) {
        if (!json_is_string(v)) return cv_errorf(err, "%s must be a string", field);
        return set_text(p, CV_STRUCTURED_GRAMMAR, json_string_value(v), err);
    }
    return cv_errorf(err,
                     "%s is not supported yet (supported: json, regex, choice, grammar, "
                     "json_object)",
                     field);
}

static int multiple(const json_t *so, const char *verb, cv_error *err)
{
    char *dump = json_dumps(so, JSON_COMPACT);
    cv_errorf(err, "You %s one kind of structured outputs constraint but %s specified: %.600s",
              verb, !strcmp(verb, "must use") ? "none are" : "multiple are", dump ? dump : "?");
    free(dump);
    return -1;
}

static int from_object(cv_sampling_params *p, const json_t *so, cv_error *err)
{
    static const char *const kinds[] = {"json",    "regex",          "choice",
                                        "grammar", "structural_tag", "json_object"};
    static const char *const options[] = {"disable_any_whitespace", "disable_fallback",
                                          "disable_additional_properties", "backend"};
    const char *key;
    const json_t *v;
    const char *kind = NULL;
    const json_t *kv = NULL;
    int count = 0;
    json_object_foreach((json_t *)so, key, v)
    {
        bool known = false;
        for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
            if (!strcmp(key, kinds[i])) {
                known = true;
                if (!json_is_null(v)) {
                    count++;
                    kind = kinds[i];
                    kv = v;
                }
            }
        for (size_t i = 0; i < sizeof(options) / sizeof(options[0]); i++)
            known = known || !strcmp(key, options[i]);
        if (!strcmp(key, "whitespace_pattern")) {
            if (json_is_null(v)) continue;
            return cv_errorf(err, "structured_outputs 'whitespace_pattern' is not supported");
        }
        if (!known) return cv_errorf(err, "unknown structured_outputs field '%s'", key);
    }
    if (count > 1) return multiple(so, "can only use", err);
    if (count == 0) return multiple(so, "must use", err);
    char field[64];
    snprintf(field, sizeof(field), "structured_outputs '%s'", kind);
    return set_kind(p, kind, field, kv, err);
}

/* OpenAI's response_format: {"type": "text"}, {"type": "json_object"} or
 * {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}.
 * Sets *kind and *value (borrowed) to the structured_outputs equivalent;
 * kind stays NULL for "text". */
static int response_format(const json_t *rf, const char **kind, const json_t **value, cv_error *err)
{
    const char *type = json_string_value(json_object_get(rf, "type"));
    if (!json_is_object(rf) || !type)
        return cv_errorf(err, "response_format must be an object with a 'type'");
    if (!strcmp(type, "text")) return 0;
    if (!strcmp(type, "json_object")) {
        *kind = "json_object";
        *value = NULL;
        return 0;
    }
    if (!strcmp(type, "json_schema")) {
        const json_t *schema = json_object_get(json_object_get(rf, "json_schema"), "schema");
        if (!json_is_object(schema))
            return cv_errorf(err, "response_format 'json_schema' must carry a 'schema' object");
        *kind = "json";
        *value = schema;
        return 0;
    }
    return cv_errorf(
        err, "response_format type '%s' is not supported (text, json_object, json_schema)", type);
}

int structured_params_from_json(cv_sampling_params *p, const void *root_v, cv_error *err)
{
    const json_t *root = root_v;
    const json_t *so = json_object_get(root, "structured_outputs");
    json_t *parsed = NULL;
    if (json_is_string(so)) {
        /* Triton's parameters may carry the object as JSON text. */
        parsed = json_loads(json_string_value(so), 0, NULL);
        if (!json_is_object(parsed)) {
            json_decref(parsed);
            return cv_errorf(err, "sampling parameter 'structured_outputs' must be an object");
        }
        so = parsed;
    }
    const char *guided = NULL;
    const json_t *gv = NULL;
    int n_guided = 0;
    for (size_t i = 0; i < sizeof(guided_fields) / sizeof(guided_fields[0]); i++) {
        const json_t *v = json_object_get(root, guided_fields[i]);
        if (!v || json_is_null(v)) continue;
        n_guided++;
        guided = guided_fields[i];
        gv = v;
    }
    const json_t *rf = json_object_get(root, "response_format");
    const char *rf_kind = NULL;
    const json_t *rf_value = NULL;
    if (rf && !json_is_null(rf) && response_format(rf, &rf_kind, &rf_value, err) < 0) {
        json_decref(parsed);
        return -1;
    }
    if (rf_kind && n_guided == 0) {
        /* Counted like one more guided field, named as vLLM's protocol does. */
        n_guided = 1;
        guided = "response_format";
        gv = rf_value;
    } else if (rf_kind) {
        n_guided++;
    }
    int rc = 0;
    if (n_guided > 1) {
        rc = cv_errorf(err, "You can only use one kind of guided decoding (`guided_json`, "
                            "`guided_regex` or `guided_choice`).");
    } else if (so && !json_is_null(so) && n_guided) {
        rc = cv_errorf(err,
                       "You can only use one kind of structured outputs constraint but multiple "
                       "are specified: structured_outputs and %s",
                       guided);
    } else if (so && !json_is_null(so)) {
        rc = json_is_object(so)
                 ? from_object(p, so, err)
                 : cv_errorf(err, "sampling parameter 'structured_outputs' must be an object");
    } else if (n_guided) {
        if (!strcmp(guided, "response_format"))
            rc = !strcmp(rf_kind, "json_object") ? set_text(p, CV_STRUCTURED_JSON_OBJECT, "", err)
                                                 : set_kind(p, rf_kind, guided, gv, err);
        else
            rc = set_kind(p, guided + strlen("guided_"), guided, gv, err);
    }
    json_decref(parsed);
    return rc;
}

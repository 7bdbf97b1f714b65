/* Hub id -> snapshot directory (see hub.h): the environment, the cache
 * lookups, the revision API and the choice of the files a model needs, as
 * snapshot_download with vLLM's allow patterns would make it. */
#include "hub/hub.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/log.h"
#include "hub/hub_internal.h"

/* ---- ids, environment, cache root ---------------------------------------- */

static bool valid_part(const char *s, size_t n)
{
    if (n == 0 || n > 96 || s[0] == '-' || s[0] == '.' || s[n - 1] == '-' || s[n - 1] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              ch == '-' || ch == '_' || ch == '.'))
            return false;
        if (i > 0 && (ch == '-' || ch == '.') && s[i - 1] == ch) return false;
    }
    return true;
}

bool cv_hub_is_repo_id(const char *s)
{
    const char *slash = strchr(s, '/');
    if (!slash) return false;
    return valid_part(s, (size_t)(slash - s)) && valid_part(slash + 1, strlen(slash + 1));
}

static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* huggingface_hub's truthy values for boolean variables. */
static bool env_true(const char *name)
{
    const char *v = env(name);
    return v && (!strcasecmp(v, "1") || !strcasecmp(v, "on") || !strcasecmp(v, "yes") ||
                 !strcasecmp(v, "true"));
}

/* $HF_HOME, else $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface. */
static void hf_home(char *out, size_t cap)
{
    const char *v;
    if ((v = env("HF_HOME")))
        snprintf(out, cap, "%s", v);
    else if ((v = env("XDG_CACHE_HOME")))
        snprintf(out, cap, "%s/huggingface", v);
    else
        snprintf(out, cap, "%s/.cache/huggingface", env("HOME") ? env("HOME") : "");
}

static void cache_root(const cv_hub_opts *o, char *out, size_t cap)
{
    const char *v;
    if (o->cache_dir && *o->cache_dir) {
        snprintf(out, cap, "%s", o->cache_dir);
    } else if ((v = env("HF_HUB_CACHE")) || (v = env("HUGGINGFACE_HUB_CACHE"))) {
        snprintf(out, cap, "%s", v);
    } else {
        char home[HUB_PATH - 8];
        hf_home(home, sizeof home);
        snprintf(out, cap, "%s/hub", home);
    }
}

static void trim(char *s)
{
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
    size_t lead = strspn(s, " \t");
    memmove(s, s + lead, n - lead + 1);
}

/* HF_TOKEN, else the token file ($HF_TOKEN_PATH or $HF_HOME/token) that
 * `huggingface-cli login` writes. */
static void read_token(hub_ctx *c)
{
    const char *v = env("HF_TOKEN");
    if (v) {
        snprintf(c->token, sizeof c->token, "%s", v);
        snprintf(c->token_src, sizeof c->token_src, "HF_TOKEN");
        trim(c->token);
        return;
    }
    char path[HUB_PATH];
    if ((v = env("HF_TOKEN_PATH"))) {
        snprintf(path, sizeof path, "%s", v);
    } else {
        char home[HUB_PATH - 8];
        hf_home(home, sizeof home);
        snprintf(path, sizeof path, "%s/token", home);
    }
    FILE *f = fopen(path, "r");
    if (!f) return;
    if (!fgets(c->token, sizeof c->token, f)) c->token[0] = '\0';
    fclose(f);
    trim(c->token);
    snprintf(c->token_src, sizeof c->token_src, "%s", path);
}

static bool is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static bool is_commit(const char *s)
{
    if (strlen(s) != 40) return false;
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f'))) return false;
    return true;
}

/* ---- the cache ----------------------------------------------------------- */

/* The cached snapshot of revision rev (a commit, or refs/<rev>), when it
 * holds what `want` needs to start: config.json for a model, the directory
 * for a tokenizer. */
static bool cached_snapshot(const hub_ctx *c, const char *rev, cv_hub_want want, char *out,
                            size_t cap)
{
    char commit[128] = "", path[HUB_PATH + 128];
    if (is_commit(rev)) {
        snprintf(commit, sizeof commit, "%s", rev);
    } else {
        snprintf(path, sizeof path, "%s/refs/%s", c->repo_dir, rev);
        FILE *f = fopen(path, "r");
        if (!f) return false;
        if (!fgets(commit, sizeof commit, f)) commit[0] = '\0';
        fclose(f);
        trim(commit);
        if (!commit[0] || strchr(commit, '/')) return false;
    }
    if (snprintf(out, cap, "%s/snapshots/%s", c->repo_dir, commit) >= (int)cap) return false;
    snprintf(path, sizeof path, "%s/config.json", out);
    return want == CV_HUB_MODEL ? is_file(path) : is_dir(out);
}

static int write_ref(const hub_ctx *c, const char *rev, const char *commit, cv_error *err)
{
    char path[HUB_PATH + 128], tmp[HUB_PATH + 160], dir[HUB_PATH + 128];
    snprintf(path, sizeof path, "%s/refs/%s", c->repo_dir, rev);
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = '\0';
    if (hub_mkdirs(dir) < 0)
        return cv_errorf(err, "hub: cannot create %s: %s", dir, strerror(errno));
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f || fputs(commit, f) < 0 || fclose(f) != 0) {
        if (f) unlink(tmp);
        return cv_errorf(err, "hub: cannot write %s: %s", tmp, strerror(errno));
    }
    if (rename(tmp, path) < 0)
        return cv_errorf(err, "hub: cannot write %s: %s", path, strerror(errno));
    return 0;
}

/* ---- which files ----------------------------------------------------------- */

static const char *const tokenizer_files[] = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "merges.txt",     "added_tokens.json",     "chat_template.jinja",
};

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static bool name_in(const char *name, json_t *names)
{
    size_t i;
    json_t *v;
    json_array_foreach(names, i, v)
    {
        if (json_is_string(v) && !strcmp(json_string_value(v), name)) return true;
    }
    return false;
}

/* The shard names of a downloaded index's weight_map (a JSON array). */
static json_t *index_shards(const char *snapshot, const char *index, cv_error *err)
{
    char path[HUB_PATH + 128];
    snprintf(path, sizeof path, "%s/%s", snapshot, index);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    json_t *map = root ? json_object_get(root, "weight_map") : NULL;
    if (!json_is_object(map)) {
        json_decref(root);
        cv_errorf(err, "hub: %s: expected an object with \"weight_map\"", path);
        return NULL;
    }
    json_t *out = json_array();
    const char *k;
    json_t *v;
    json_object_foreach(map, k, v)
    {
        if (json_is_string(v) && !name_in(json_string_value(v), out))
            json_array_append_new(out, json_string(json_string_value(v)));
    }
    json_decref(root);
    return out;
}

/* Adds to `list` the repository files `want` needs, in download order
 * (config first, then the tokenizer, then the weights), fetching a weights
 * index first where one decides the shards, as vLLM prefers safetensors
 * and keeps only the shards its index names. */
static int pick_files(const hub_ctx *c, const char *commit, json_t *siblings, cv_hub_want want,
                      const char *snapshot, json_t *list, cv_error *err)
{
    if (want == CV_HUB_MODEL && !name_in("config.json", siblings))
        return cv_errorf(err,
                         "hub: model '%s' (commit %s) has no config.json; it is not a "
                         "transformers model repository",
                         c->id, commit);
    const char *fixed[] = {"config.json", "generation_config.json"};
    for (size_t i = 0; i < (want == CV_HUB_MODEL ? 2u : 1u); i++)
        if (name_in(fixed[i], siblings)) json_array_append_new(list, json_string(fixed[i]));
    for (size_t i = 0; i < sizeof tokenizer_files / sizeof *tokenizer_files; i++)
        if (name_in(tokenizer_files[i], siblings))
            json_array_append_new(list, json_string(tokenizer_files[i]));
    if (want != CV_HUB_MODEL) return 0;

    bool has_st = false;
    size_t i;
    json_t *v;
    json_array_foreach(siblings, i, v)
    {
        const char *n = json_string_value(v);
        has_st |= !strchr(n, '/') && ends_with(n, ".safetensors");
    }
    const char *index = has_st ? "model.safetensors.index.json" : "pytorch_model.bin.index.json";
    size_t n_weights = 0;
    if (name_in(index, siblings)) {
        if (hub_fetch_file(c, commit, index, err) < 0) return -1;
        json_array_append_new(list, json_string(index));
        json_t *shards = index_shards(snapshot, index, err);
        if (!shards) return -1;
        json_array_foreach(shards, i, v)
        {
            if (!name_in(json_string_value(v), siblings)) continue;
            json_array_append(list, v);
            n_weights++;
        }
        json_decref(shards);
    } else {
        json_array_foreach(siblings, i, v)
        {
            const char *n = json_string_value(v);
            if (strchr(n, '/')) continue;
            if (has_st ? ends_with(n, ".safetensors")
                       : !strncmp(n, "pytorch_model", 13) && ends_with(n, ".bin")) {
                json_array_append(list, v);
                n_weights++;
            }
        }
    }
    if (n_weights == 0)
        return cv_errorf(err,
                         "hub: model '%s' (commit %s) has no weights: neither *.safetensors nor "
                         "pytorch_model*.bin",
                         c->id, commit);
    return 0;
}

/* ---- resolution ---------------------------------------------------------- */

/* The revision API's answer -> commit and file names, checked so that
 * nothing the hub sends can name a path outside the cache. */
static int parse_revision(const hub_ctx *c, const char *rev, const char *body, char *commit,
                          size_t cap, json_t **names, cv_error *err)
{
    json_error_t je;
    json_t *root = json_loads(body, 0, &je);
    json_t *sha = root ? json_object_get(root, "sha") : NULL;
    json_t *sib = root ? json_object_get(root, "siblings") : NULL;
    if (!json_is_string(sha) || !is_commit(json_string_value(sha)) || !json_is_array(sib)) {
        json_decref(root);
        return cv_errorf(err,
                         "hub: %s/api/models/%s/revision/%s: expected {\"sha\": <40 hex digits>, "
                         "\"siblings\": [...]}",
                         c->endpoint, c->id, rev);
    }
    snprintf(commit, cap, "%s", json_string_value(sha));
    *names = json_array();
    size_t i;
    json_t *v;
    json_array_foreach(sib, i, v)
    {
        const char *n = json_string_value(json_object_get(v, "rfilename"));
        if (!n || !n[0] || n[0] == '/' || strstr(n, "..") || strlen(n) > 1000) continue;
        json_array_append_new(*names, json_string(n));
    }
    json_decref(root);
    return 0;
}

static int init_ctx(hub_ctx *c, const char *id, const cv_hub_opts *o, cv_error *err)
{
    memset(c, 0, sizeof *c);
    c->id = id;
    if (!cv_hub_is_repo_id(id))
        return cv_errorf(err, "'%s' is not a local directory nor a hub id of the form org/name",
                         id);
    const char *ep = env("HF_ENDPOINT");
    snprintf(c->endpoint, sizeof c->endpoint, "%s", ep ? ep : "https://huggingface.co");
    size_t n = strlen(c->endpoint);
    while (n && c->endpoint[n - 1] == '/')
        c->endpoint[--n] = '\0';
    read_token(c);
    cache_root(o, c->cache, sizeof c->cache);
    snprintf(c->folder, sizeof c->folder, "models--%s", id);
    for (char *p = c->folder; *p; p++)
        if (*p == '/') {
            memmove(p + 2, p + 1, strlen(p + 1) + 1);
            p[0] = p[1] = '-';
        }
    if (snprintf(c->repo_dir, sizeof c->repo_dir, "%s/%s", c->cache, c->folder) >=
        (int)sizeof c->repo_dir)
        return cv_errorf(err, "hub: cache path too long for '%s'", id);
    return 0;
}

static int copy_out(const char *path, char *out, size_t cap, const char *id, cv_error *err)
{
    if (strlen(path) >= cap) return cv_errorf(err, "hub: snapshot path of '%s' too long", id);
    memcpy(out, path, strlen(path) + 1);
    return 0;
}

/* GET the revision API. Returns 1 with commit and names set when the hub
 * answered; 0 with snap set when it did not and the cache holds the
 * revision's snapshot (as snapshot_download falls back); -1 with err set. */
static int ask_revision(const hub_ctx *c, const char *rev, cv_hub_want want, char *commit,
                        size_t commit_cap, json_t **names, char *snap, size_t snap_cap,
                        cv_error *err)
{
    char *esc_rev = hub_escape(rev);
    if (!esc_rev) return cv_errorf(err, "hub: out of memory");
    char url[HUB_PATH];
    snprintf(url, sizeof url, "%s/api/models/%s/revision/%s", c->endpoint, c->id, esc_rev);
    free(esc_rev);
    hub_response r;
    hub_http_get(c, url, &r);
    if (r.status == 200) {
        int rc = parse_revision(c, rev, r.body, commit, commit_cap, names, err);
        free(r.body);
        return rc < 0 ? -1 : 1;
    }
    free(r.body);
    bool revision_gone = r.status == 404 && !strcmp(r.error_code, "RevisionNotFound");
    if (!revision_gone && cached_snapshot(c, rev, want, snap, snap_cap)) {
        if (r.status)
            cv_log_warn("hub: %s: %s answered HTTP %ld for revision '%s'; using the cached %s",
                        c->id, c->endpoint, r.status, rev, snap);
        else
            cv_log_warn("hub: %s: cannot reach %s (%s); using the cached %s", c->id, c->endpoint,
                        r.curl_msg, snap);
        return 0;
    }
    if (r.status == 0)
        return cv_errorf(err,
                         "hub: cannot reach %s for model '%s' (%s) and it is not in the cache "
                         "%s; check the network and HF_ENDPOINT, or fill the cache on a machine "
                         "with network access",
                         c->endpoint, c->id, r.curl_msg, c->repo_dir);
    char what[300];
    snprintf(what, sizeof what, "revision '%s'", rev);
    return hub_status_error(c, what, &r, err);
}

int cv_hub_resolve(const char *id, const cv_hub_opts *opts, char *out, size_t cap, cv_error *err)
{
    static const cv_hub_opts defaults = {0};
    const cv_hub_opts *o = opts ? opts : &defaults;
    const char *rev = o->revision && *o->revision ? o->revision : "main";
    hub_ctx c;
    if (init_ctx(&c, id, o, err) < 0) return -1;
    if (strstr(rev, "..") || rev[0] == '/')
        return cv_errorf(err, "hub: model '%s': revision '%s' is not a branch, tag or commit", id,
                         rev);
    char snap[HUB_PATH + 128];
    if (env_true("HF_HUB_OFFLINE")) {
        if (cached_snapshot(&c, rev, o->want, snap, sizeof snap))
            return copy_out(snap, out, cap, id, err);
        return cv_errorf(err,
                         "hub: model '%s' (revision '%s') is not in the cache %s and "
                         "HF_HUB_OFFLINE=1 forbids downloading it; unset HF_HUB_OFFLINE, or fill "
                         "the cache on a machine with network access",
                         id, rev, c.repo_dir);
    }
    char commit[64];
    json_t *names = NULL;
    int rc = ask_revision(&c, rev, o->want, commit, sizeof commit, &names, snap, sizeof snap, err);
    if (rc <= 0) return rc < 0 ? -1 : copy_out(snap, out, cap, id, err);

    snprintf(snap, sizeof snap, "%s/snapshots/%s", c.repo_dir, commit);
    json_t *list = json_array();
    rc = pick_files(&c, commit, names, o->want, snap, list, err);
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v)
    {
        if (rc < 0) break;
        rc = hub_fetch_file(&c, commit, json_string_value(v), err);
    }
    json_decref(list);
    json_decref(names);
    /* refs/<rev> last: an interrupted download never names a snapshot
     * that lacks files. */
    if (rc == 0 && strcmp(rev, commit)) rc = write_ref(&c, rev, commit, err);
    if (rc < 0) return -1;
    cv_log_info("hub: %s: revision '%s' is commit %s, in %s", id, rev, commit, snap);
    return copy_out(snap, out, cap, id, err);
}

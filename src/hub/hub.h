/* HuggingFace hub ids -> local snapshot directories, as huggingface_hub's
 * snapshot_download and vLLM's weight download do it.
 *
 * The cache is huggingface_hub's own layout, so a cache filled by Python is
 * used as is and the other way round:
 *   <cache>/models--<org>--<name>/refs/<revision>          the commit id
 *   <cache>/models--<org>--<name>/blobs/<etag>             file contents
 *   <cache>/models--<org>--<name>/snapshots/<commit>/<file> -> ../../blobs/<etag>
 *   <cache>/.locks/models--<org>--<name>/<etag>.lock       flock(2) while downloading
 * <cache> is the caller's cache_dir (model.json's download_dir), else
 * $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub,
 * else ~/.cache/huggingface/hub.
 *
 * Online (the default), one request GET {endpoint}/api/models/{id}/revision/{rev}
 * names the commit and the repository's files; the files a model needs that
 * the snapshot lacks are fetched from {endpoint}/{id}/resolve/{commit}/{file}
 * (HEAD for X-Repo-Commit, X-Linked-Etag | ETag, X-Linked-Size |
 * Content-Length and the CDN Location, then GET). A dropped transfer resumes
 * from blobs/<etag>.incomplete with a Range request; the size and the etag
 * (the sha256 of an LFS file, the git blob sha1 of another) are checked
 * before the blob is moved in place. When the hub cannot be reached the cached snapshot of the revision
 * is used (with a warning). With HF_HUB_OFFLINE=1 the network is never
 * touched.
 *
 * Environment: HF_ENDPOINT (https://huggingface.co), HF_TOKEN (else the file
 * $HF_TOKEN_PATH, else $HF_HOME/token) sent as "Authorization: Bearer" to the
 * endpoint only, HF_HUB_OFFLINE, HF_HUB_CACHE, HF_HOME. */
#ifndef CV_HUB_HUB_H
#define CV_HUB_HUB_H

#include <stdbool.h>
#include <stddef.h>

#include "base/error.h"

/* What a snapshot must hold. */
typedef enum {
    /* config.json, generation_config.json, the weights (every *.safetensors,
     * or the shards model.safetensors.index.json names, when the repository
     * has safetensors; else pytorch_model*.bin and its index) and the
     * tokenizer files. */
    CV_HUB_MODEL = 0,
    /* The tokenizer files (tokenizer.json, tokenizer_config.json,
     * special_tokens_map.json, vocab.json, merges.txt, added_tokens.json,
     * chat_template.jinja) and config.json. */
    CV_HUB_TOKENIZER,
} cv_hub_want;

typedef struct cv_hub_opts {
    const char *revision;  /* branch, tag or commit; NULL or "" = "main" */
    const char *cache_dir; /* NULL or "" = the HF cache above */
    cv_hub_want want;
} cv_hub_opts;

/* True when s has the form of a hub repository id "org/name": letters,
 * digits, '-', '_', '.', no "--" or "..", at most 96 characters each side.
 * Legacy ids without an org ("gpt2") are written with the org the hub
 * redirects them to ("openai-community/gpt2"), so that a mistyped local
 * directory name is never looked up on the network. */
bool cv_hub_is_repo_id(const char *s);

/* Resolves hub id `id` to the snapshot directory holding the files `opts`
 * asks for, downloading what is missing (see above), and writes its path
 * into out (cap bytes). Returns 0, or -1 with err naming the id and saying
 * what to do: not found (HTTP 404: the id or the revision), gated or private
 * (HTTP 401/403: set HF_TOKEN), the hub unreachable with nothing cached,
 * HF_HUB_OFFLINE=1 with nothing cached, a failed size or hash check, a
 * write that failed, a repository without config.json or weights. Progress is logged at info
 * level, at most one line per file every few seconds. Safe to call from
 * several processes at once on one cache: each blob is downloaded once. */
int cv_hub_resolve(const char *id, const cv_hub_opts *opts, char *out, size_t cap, cv_error *err);

#endif

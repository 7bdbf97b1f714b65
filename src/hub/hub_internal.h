/* Shared between hub.c (what to fetch) and fetch.c (HTTP and the cache's
 * blobs, locks and symlinks). */
#ifndef CV_HUB_INTERNAL_H
#define CV_HUB_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "base/error.h"

enum { HUB_PATH = 4096 };

/* One resolution: where the hub is, who we are, where the cache is. */
typedef struct hub_ctx {
    const char *id;           /* "org/name" */
    char endpoint[1024];      /* $HF_ENDPOINT without a trailing '/' */
    char token[1024];         /* "" = anonymous */
    char token_src[HUB_PATH]; /* "HF_TOKEN" or the token file, for messages */
    char cache[HUB_PATH];     /* the cache root */
    char repo_dir[HUB_PATH];  /* <cache>/models--org--name */
    char folder[512];         /* models--org--name */
} hub_ctx;

/* One HTTP exchange. status 0 = no answer (transport error in curl_msg). */
typedef struct hub_response {
    long status;
    char curl_msg[256];
    char etag[160];        /* ETag, raw */
    char linked_etag[160]; /* X-Linked-Etag, raw */
    char commit[160];      /* X-Repo-Commit */
    char error_code[64];   /* X-Error-Code (RepoNotFound, RevisionNotFound, GatedRepo, ...) */
    char location[2048];   /* Location */
    long long content_length, linked_size; /* -1 when absent */
    char *body;                            /* GET into memory: malloc'd, NUL-terminated */
    size_t body_len;
} hub_response;

/* GET url into r->body (the caller frees it), following redirects; the
 * token goes to the endpoint's host only. Returns r->status. */
long hub_http_get(const hub_ctx *c, const char *url, hub_response *r);

/* Downloads `file` of commit `commit` into the cache unless its snapshot
 * pointer exists: HEAD, then blobs/<etag> under the etag's lock (resumed
 * from blobs/<etag>.incomplete, size and sha256 checked), then the relative
 * symlink snapshots/<commit>/<file>. */
int hub_fetch_file(const hub_ctx *c, const char *commit, const char *file, cv_error *err);

/* The message for a hub answer that is not a success: 401/403 (gated or
 * private), 404 (no such model / revision / file), 5xx, or no answer. */
int hub_status_error(const hub_ctx *c, const char *what, const hub_response *r, cv_error *err);

/* s with every byte but [A-Za-z0-9-._~] %-escaped (malloc'd; NULL when
 * memory runs out). */
char *hub_escape(const char *s);

/* mkdir -p; 0 or -1 with errno. */
int hub_mkdirs(const char *path);

#endif

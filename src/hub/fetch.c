/* The hub's HTTP side (libcurl) and the cache's blobs: HEAD for a file's
 * etag, size and location, a resumable GET into blobs/<etag>.incomplete
 * under the etag's flock, the size and hash checks, the snapshot symlink.
 * The steps follow huggingface_hub's _hf_hub_download_to_cache_dir so that
 * Python and cvllm can share one cache, even while both are downloading. */
#include "hub/hub_internal.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/log.h"

enum {
    HUB_ATTEMPTS = 6,         /* GETs per file before a dropped transfer is an error */
    HUB_PROGRESS_EVERY_S = 5, /* at most one progress line per file this often */
    HUB_STALL_S = 60,         /* a transfer below 1 byte/s this long is dropped */
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

int hub_mkdirs(const char *path)
{
    char p[HUB_PATH];
    if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = '\0';
        if (mkdir(p, 0755) < 0 && errno != EEXIST) return -1;
        *s = '/';
    }
    return mkdir(p, 0755) < 0 && errno != EEXIST ? -1 : 0;
}

char *hub_escape(const char *s)
{
    pthread_once(&curl_once, curl_init);
    char *e = curl_easy_escape(NULL, s, 0);
    char *copy = e ? strdup(e) : NULL;
    curl_free(e);
    return copy;
}

/* ---- HTTP ---------------------------------------------------------------- */

static void copy_value(char *dst, size_t cap, const char *v, size_t n)
{
    while (n && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' '))
        n--;
    if (n >= cap) n = cap - 1;
    memcpy(dst, v, n);
    dst[n] = '\0';
}

static size_t on_header(char *line, size_t size, size_t nitems, void *ud)
{
    hub_response *r = ud;
    size_t n = size * nitems;
    /* A new status line starts a new response (a redirect was followed). */
    if (n > 5 && !strncmp(line, "HTTP/", 5)) {
        r->etag[0] = r->linked_etag[0] = r->commit[0] = r->error_code[0] = r->location[0] = 0;
        r->content_length = r->linked_size = -1;
        return n;
    }
    const char *colon = memchr(line, ':', n);
    if (!colon) return n;
    size_t klen = (size_t)(colon - line);
    const char *v = colon + 1;
    while (v < line + n && *v == ' ')
        v++;
    size_t vlen = (size_t)(line + n - v);
    static const struct {
        const char *name;
        size_t off, cap;
    } keys[] = {
        {"etag", offsetof(hub_response, etag), sizeof((hub_response *)0)->etag},
        {"x-linked-etag", offsetof(hub_response, linked_etag),
         sizeof((hub_response *)0)->linked_etag},
        {"x-repo-commit", offsetof(hub_response, commit), sizeof((hub_response *)0)->commit},
        {"x-error-code", offsetof(hub_response, error_code), sizeof((hub_response *)0)->error_code},
        {"location", offsetof(hub_response, location), sizeof((hub_response *)0)->location},
    };
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (strlen(keys[i].name) == klen && !strncasecmp(line, keys[i].name, klen))
            copy_value((char *)r + keys[i].off, keys[i].cap, v, vlen);
    if (klen == 14 && !strncasecmp(line, "content-length", klen))
        r->content_length = strtoll(v, NULL, 10);
    if (klen == 13 && !strncasecmp(line, "x-linked-size", klen))
        r->linked_size = strtoll(v, NULL, 10);
    return n;
}

static size_t on_body_mem(char *data, size_t size, size_t nmemb, void *ud)
{
    hub_response *r = ud;
    size_t n = size * nmemb;
    if (r->body_len + n > (64u << 20)) return 0; /* API answers are small */
    char *b = realloc(r->body, r->body_len + n + 1);
    if (!b) return 0;
    memcpy(b + r->body_len, data, n);
    r->body = b;
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return n;
}

/* The endpoint's scheme://host[:port], for relative redirects and for
 * deciding where the token may go. */
static size_t origin_len(const char *url)
{
    const char *p = strstr(url, "://");
    if (!p) return strlen(url);
    const char *slash = strchr(p + 3, '/');
    return slash ? (size_t)(slash - url) : strlen(url);
}

static bool same_origin(const char *endpoint, const char *url)
{
    size_t n = origin_len(endpoint);
    return !strncmp(endpoint, url, n) && (url[n] == '/' || url[n] == '\0');
}

static CURL *new_handle(const hub_ctx *c, const char *url, hub_response *r,
                        struct curl_slist **hdrs)
{
    pthread_once(&curl_once, curl_init);
    CURL *h = curl_easy_init();
    if (!h) return NULL;
    memset(r, 0, sizeof *r);
    r->content_length = r->linked_size = -1;
    *hdrs = curl_slist_append(NULL, "Accept-Encoding: identity");
    if (c->token[0] && same_origin(c->endpoint, url)) {
        char auth[1100];
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->token);
        *hdrs = curl_slist_append(*hdrs, auth);
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, *hdrs);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "cvllm/0.1 (huggingface_hub cache layout)");
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    return h;
}

static long finish(CURL *h, CURLcode rc, hub_response *r, struct curl_slist *hdrs)
{
    if (rc == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
    else
        snprintf(r->curl_msg, sizeof r->curl_msg, "%s", curl_easy_strerror(rc));
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    return r->status;
}

long hub_http_get(const hub_ctx *c, const char *url, hub_response *r)
{
    struct curl_slist *hdrs;
    CURL *h = new_handle(c, url, r, &hdrs);
    if (!h) {
        snprintf(r->curl_msg, sizeof r->curl_msg, "curl_easy_init failed");
        return 0;
    }
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body_mem);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    return finish(h, curl_easy_perform(h), r, hdrs);
}

/* HEAD url, following relative redirects only (a renamed repository) as
 * huggingface_hub does: an absolute one points at the CDN, whose URL is the
 * download location while the hub's headers describe the file. */
static long http_head(const hub_ctx *c, const char *url, hub_response *r, char *final_url,
                      size_t cap)
{
    snprintf(final_url, cap, "%s", url);
    for (int hop = 0; hop < 5; hop++) {
        struct curl_slist *hdrs;
        CURL *h = new_handle(c, final_url, r, &hdrs);
        if (!h) {
            snprintf(r->curl_msg, sizeof r->curl_msg, "curl_easy_init failed");
            return 0;
        }
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
        curl_easy_setopt(h, CURLOPT_TIMEOUT, 30L);
        if (finish(h, curl_easy_perform(h), r, hdrs) / 100 != 3 || r->location[0] != '/')
            return r->status;
        snprintf(final_url, cap, "%.*s%s", (int)origin_len(c->endpoint), c->endpoint, r->location);
    }
    return r->status;
}

int hub_status_error(const hub_ctx *c, const char *what, const hub_response *r, cv_error *err)
{
    if (r->status == 0)
        return cv_errorf(err, "hub: cannot reach %s for %s of model '%s' (%s)", c->endpoint, what,
                         c->id, r->curl_msg);
    if (r->status == 401 || r->status == 403) {
        if (c->token[0])
            return cv_errorf(err,
                             "hub: model '%s' at %s: HTTP %ld for %s: the token from %s has no "
                             "access to this gated or private model; request access on the "
                             "model's page, or set HF_TOKEN to a token that has it",
                             c->id, c->endpoint, r->status, what, c->token_src);
        return cv_errorf(err,
                         "hub: model '%s' at %s: HTTP %ld for %s: the model is gated or private "
                         "(or does not exist); set HF_TOKEN to a HuggingFace token with access",
                         c->id, c->endpoint, r->status, what);
    }
    if (r->status == 404) {
        if (!strcmp(r->error_code, "RevisionNotFound"))
            return cv_errorf(err, "hub: model '%s' at %s has no %s (HTTP 404); check the revision",
                             c->id, c->endpoint, what);
        if (!strcmp(r->error_code, "EntryNotFound"))
            return cv_errorf(err, "hub: model '%s' at %s has no %s (HTTP 404)", c->id, c->endpoint,
                             what);
        return cv_errorf(err, "hub: no model '%s' at %s (HTTP 404 for %s); check the model id",
                         c->id, c->endpoint, what);
    }
    return cv_errorf(err, "hub: model '%s' at %s: HTTP %ld for %s; try again later", c->id,
                     c->endpoint, r->status, what);
}

/* ---- one blob -------------------------------------------------------------- */

typedef struct sink {
    const hub_ctx *c;
    const char *file;
    CURL *h;
    int fd;
    bool checked;    /* the status was looked at (first body bytes) */
    bool writing;    /* the status is 200/206: bytes go to the file */
    long long have;  /* bytes in the .incomplete file */
    long long total; /* expected size, -1 unknown */
    int write_errno; /* a failed write (disk full): not worth a retry */
    uint64_t last_log_ns;
} sink;

static size_t on_body_file(char *data, size_t size, size_t nmemb, void *ud)
{
    sink *s = ud;
    size_t n = size * nmemb;
    if (!s->checked) {
        long code = 0;
        curl_easy_getinfo(s->h, CURLINFO_RESPONSE_CODE, &code);
        s->checked = true;
        s->writing = code == 200 || code == 206;
        /* A server that ignores Range answers 200 with the whole file. */
        if (code == 200 && s->have > 0) {
            if (ftruncate(s->fd, 0) < 0 || lseek(s->fd, 0, SEEK_SET) < 0) {
                s->write_errno = errno;
                return 0;
            }
            s->have = 0;
        }
    }
    if (!s->writing) return n;
    for (size_t done = 0; done < n;) {
        ssize_t w = write(s->fd, data + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            s->write_errno = w < 0 ? errno : EIO;
            return 0;
        }
        done += (size_t)w;
    }
    s->have += (long long)n;
    uint64_t now = cv_now_ns();
    if (now - s->last_log_ns >= (uint64_t)HUB_PROGRESS_EVERY_S * 1000000000ull) {
        s->last_log_ns = now;
        if (s->total > 0)
            cv_log_info("hub: %s: %s %.1f/%.1f MB (%d%%)", s->c->id, s->file, s->have / 1e6,
                        s->total / 1e6, (int)(100 * s->have / s->total));
    }
    return n;
}

/* One GET of url from byte `s->have` on. Returns the HTTP status, 0 when
 * the transfer broke (r->curl_msg says how). */
static long get_range(const hub_ctx *c, const char *url, sink *s, hub_response *r)
{
    struct curl_slist *hdrs;
    CURL *h = new_handle(c, url, r, &hdrs);
    if (!h) {
        snprintf(r->curl_msg, sizeof r->curl_msg, "curl_easy_init failed");
        return 0;
    }
    char range[64];
    if (s->have > 0) {
        snprintf(range, sizeof range, "%lld-", s->have);
        curl_easy_setopt(h, CURLOPT_RANGE, range);
    }
    s->h = h;
    s->checked = s->writing = false;
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, (long)HUB_STALL_S);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body_file);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, s);
    return finish(h, curl_easy_perform(h), r, hdrs);
}

/* The hex digest of a file, after `prefix` (git hashes "blob <size>\0"
 * before the contents). */
static int digest_file(const char *path, const EVP_MD *kind, const char *prefix, size_t prefix_len,
                       char *hex)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int rc = md && EVP_DigestInit_ex(md, kind, NULL) == 1 &&
                     EVP_DigestUpdate(md, prefix, prefix_len) == 1
                 ? 0
                 : -1;
    static __thread unsigned char buf[1 << 16];
    ssize_t n;
    while (rc == 0 && (n = read(fd, buf, sizeof buf)) != 0) {
        if (n < 0) {
            if (errno == EINTR) continue;
            rc = -1;
            break;
        }
        if (EVP_DigestUpdate(md, buf, (size_t)n) != 1) rc = -1;
    }
    unsigned char dig[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (rc == 0 && EVP_DigestFinal_ex(md, dig, &len) != 1) rc = -1;
    EVP_MD_CTX_free(md);
    close(fd);
    for (unsigned i = 0; rc == 0 && i < len; i++)
        snprintf(hex + 2 * i, 3, "%02x", dig[i]);
    return rc;
}

static bool is_hex(const char *s, size_t n)
{
    if (strlen(s) != n) return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return true;
}

/* Downloads url into blob (under the caller's lock), resuming the
 * .incomplete file a dropped transfer, or an earlier process, left. */
static int download_blob(const hub_ctx *c, const char *file, const char *url, const char *etag,
                         long long size, const char *blob, cv_error *err)
{
    char part[HUB_PATH + 300];
    snprintf(part, sizeof part, "%s.incomplete", blob);
    int fd = open(part, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) return cv_errorf(err, "hub: cannot write %s: %s", part, strerror(errno));
    sink s = {.c = c, .file = file, .fd = fd, .total = size, .last_log_ns = cv_now_ns()};
    struct stat st;
    s.have = fstat(fd, &st) == 0 ? (long long)st.st_size : 0;
    if (size >= 0 && s.have > size) {
        if (ftruncate(fd, 0) < 0) {
            close(fd);
            return cv_errorf(err, "hub: cannot truncate %s: %s", part, strerror(errno));
        }
        s.have = 0;
    }
    if (s.have > 0)
        cv_log_info("hub: %s: resuming %s at %.1f MB", c->id, file, (double)s.have / 1e6);
    uint64_t t0 = cv_now_ns();
    long long start = s.have;
    hub_response r = {0};
    int rc = -1;
    bool reported = false; /* err already says why */
    for (int attempt = 0; attempt < HUB_ATTEMPTS; attempt++) {
        if (size >= 0 && s.have == size) {
            rc = 0;
            break;
        }
        long code = get_range(c, url, &s, &r);
        if (code == 200 || code == 206) {
            rc = 0;
            break;
        }
        if (code == 416 && ftruncate(fd, 0) == 0) { /* the partial file is not this blob's */
            s.have = 0;
            continue;
        }
        if (s.write_errno) {
            cv_errorf(err, "hub: cannot write %s: %s", part, strerror(s.write_errno));
            reported = true;
            break;
        }
        if (code != 0) {
            char what[600];
            snprintf(what, sizeof what, "file '%s'", file);
            hub_status_error(c, what, &r, err);
            reported = true;
            break;
        }
        cv_log_warn("hub: %s: transfer of %s broke at %.1f MB (%s); resuming", c->id, file,
                    (double)s.have / 1e6, r.curl_msg);
        long ms = 200L << (attempt < 3 ? attempt : 3);
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    close(fd);
    if (rc < 0 && !reported)
        return cv_errorf(err,
                         "hub: download of '%s' of model '%s' from %s failed (%s); %.1f MB are "
                         "kept in %s and the next start resumes from there",
                         file, c->id, c->endpoint, r.curl_msg, (double)s.have / 1e6, part);
    if (rc < 0) return rc;
    if (size >= 0 && s.have != size) {
        unlink(part);
        return cv_errorf(err,
                         "hub: '%s' of model '%s' has %lld bytes, the hub announced %lld; "
                         "removed, try again",
                         file, c->id, s.have, size);
    }
    /* An LFS file's etag is its sha256, a git file's the sha1 of its git
     * blob object ("blob <size>\0" + contents): both are checked. */
    bool lfs = is_hex(etag, 64);
    if (lfs || is_hex(etag, 40)) {
        char hex[2 * EVP_MAX_MD_SIZE + 1], prefix[40];
        int plen = snprintf(prefix, sizeof prefix, "blob %lld", s.have) + 1;
        if (digest_file(part, lfs ? EVP_sha256() : EVP_sha1(), prefix, lfs ? 0 : (size_t)plen,
                        hex) < 0)
            return cv_errorf(err, "hub: cannot read %s: %s", part, strerror(errno));
        if (strcmp(hex, etag)) {
            unlink(part);
            return cv_errorf(err,
                             "hub: '%s' of model '%s' failed its %s check (expected %s, got "
                             "%s); removed, try again",
                             file, c->id, lfs ? "sha256" : "git sha1", etag, hex);
        }
    }
    if (rename(part, blob) < 0)
        return cv_errorf(err, "hub: cannot move %s to %s: %s", part, blob, strerror(errno));
    /* One line per file of a megabyte or more; small files only when verbose. */
    cv_log(s.have >= 1000000 ? CV_LOG_INFO : CV_LOG_VERBOSE, "hub: %s: %s %.1f MB in %.1f s", c->id,
           file, (double)(s.have - start) / 1e6, cv_ns_to_s(cv_now_ns() - t0));
    return 0;
}

/* snapshots/<commit>/<file> -> ../../blobs/<etag> (one "../" more per
 * directory level of file), as huggingface_hub links them. */
static int link_pointer(const char *pointer, const char *file, const char *etag, cv_error *err)
{
    char target[HUB_PATH] = "../../";
    for (const char *p = file; *p; p++)
        if (*p == '/') strncat(target, "../", sizeof target - strlen(target) - 1);
    strncat(target, "blobs/", sizeof target - strlen(target) - 1);
    strncat(target, etag, sizeof target - strlen(target) - 1);
    if (symlink(target, pointer) == 0) return 0;
    char have[HUB_PATH];
    ssize_t n = errno == EEXIST ? readlink(pointer, have, sizeof have - 1) : -1;
    if (n >= 0) {
        have[n] = '\0';
        if (!strcmp(have, target)) return 0; /* another process linked it */
    }
    return cv_errorf(err, "hub: cannot link %s -> %s: %s", pointer, target,
                     n >= 0 ? "a different file is there" : strerror(errno));
}

static void dir_of(const char *path, char *out, size_t cap)
{
    snprintf(out, cap, "%s", path);
    char *slash = strrchr(out, '/');
    if (slash) *slash = '\0';
}

/* A file name or etag that becomes a path component under the cache. */
static bool safe_etag(const char *e)
{
    if (!e[0] || !strcmp(e, ".") || !strcmp(e, "..")) return false;
    for (; *e; e++)
        if (!((*e >= '0' && *e <= '9') || (*e >= 'a' && *e <= 'z') || (*e >= 'A' && *e <= 'Z') ||
              *e == '-' || *e == '_' || *e == '.'))
            return false;
    return true;
}

static void normalize_etag(const char *raw, char *out, size_t cap)
{
    if (!strncmp(raw, "W/", 2)) raw += 2;
    size_t n = strlen(raw);
    if (n >= 2 && raw[0] == '"' && raw[n - 1] == '"') {
        raw++;
        n -= 2;
    }
    copy_value(out, cap, raw, n);
}

/* Escapes every character of file but '/' for the resolve URL. */
static int escape_path(const char *file, char *out, size_t cap)
{
    char *e = curl_easy_escape(NULL, file, 0);
    if (!e) return -1;
    size_t o = 0;
    for (const char *p = e; *p && o + 1 < cap; p++) {
        if (!strncmp(p, "%2F", 3)) {
            out[o++] = '/';
            p += 2;
        } else {
            out[o++] = *p;
        }
    }
    out[o] = '\0';
    curl_free(e);
    return 0;
}

int hub_fetch_file(const hub_ctx *c, const char *commit, const char *file, cv_error *err)
{
    char pointer[HUB_PATH], dir[2 * HUB_PATH], url[HUB_PATH], esc[2048];
    if (snprintf(pointer, sizeof pointer, "%s/snapshots/%s/%s", c->repo_dir, commit, file) >=
        (int)sizeof pointer)
        return cv_errorf(err, "hub: cache path too long for '%s'", file);
    struct stat st;
    if (stat(pointer, &st) == 0) return 0;
    if (escape_path(file, esc, sizeof esc) < 0)
        return cv_errorf(err, "hub: cannot escape file name '%s'", file);
    snprintf(url, sizeof url, "%s/%s/resolve/%s/%s", c->endpoint, c->id, commit, esc);

    hub_response r;
    char head_url[HUB_PATH], what[600];
    snprintf(what, sizeof what, "file '%s'", file);
    long code = http_head(c, url, &r, head_url, sizeof head_url);
    if (code / 100 != 2 && code / 100 != 3) return hub_status_error(c, what, &r, err);
    char etag[160];
    normalize_etag(r.linked_etag[0] ? r.linked_etag : r.etag, etag, sizeof etag);
    long long size = r.linked_size >= 0 ? r.linked_size : r.content_length;
    if (!safe_etag(etag))
        return cv_errorf(err, "hub: %s at %s gave '%s' of model '%s' no usable ETag ('%s')",
                         head_url, c->endpoint, file, c->id, etag);
    const char *location = code / 100 == 3 && r.location[0] ? r.location : head_url;

    char blob[HUB_PATH + 256], lock[2 * HUB_PATH];
    snprintf(blob, sizeof blob, "%s/blobs/%s", c->repo_dir, etag);
    snprintf(lock, sizeof lock, "%s/.locks/%s/%s.lock", c->cache, c->folder, etag);
    dir_of(pointer, dir, sizeof dir);
    if (hub_mkdirs(dir) < 0)
        return cv_errorf(err, "hub: cannot create %s: %s", dir, strerror(errno));
    dir_of(blob, dir, sizeof dir);
    if (hub_mkdirs(dir) < 0)
        return cv_errorf(err, "hub: cannot create %s: %s", dir, strerror(errno));
    dir_of(lock, dir, sizeof dir);
    if (hub_mkdirs(dir) < 0)
        return cv_errorf(err, "hub: cannot create %s: %s", dir, strerror(errno));

    /* The lock file stays (huggingface_hub's WeakFileLock leaves it too):
     * removing it would let a third process lock a fresh inode. */
    int lfd = open(lock, O_RDWR | O_CREAT, 0644);
    if (lfd < 0) return cv_errorf(err, "hub: cannot open %s: %s", lock, strerror(errno));
    if (flock(lfd, LOCK_EX | LOCK_NB) < 0) {
        cv_log_info("hub: %s: waiting for another process downloading %s", c->id, file);
        while (flock(lfd, LOCK_EX) < 0 && errno == EINTR) {
        }
    }
    int rc = 0;
    if (stat(blob, &st) != 0) rc = download_blob(c, file, location, etag, size, blob, err);
    if (rc == 0 && lstat(pointer, &st) != 0) rc = link_pointer(pointer, file, etag, err);
    close(lfd); /* releases the flock */
    return rc;
}

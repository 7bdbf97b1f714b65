/* A minimal zip reader for torch checkpoints: the end of central directory
 * record (and its zip64 form), the central directory, and the local header
 * of each entry read. torch.save writes every entry STORED with its data
 * 64-byte aligned, so an entry's bytes are used in place inside the mapped
 * file; compressed or encrypted entries are refused, never inflated. CRCs
 * are not checked: that would read every weight at load time, and the
 * mapping is meant to stay lazy. */
#include <stdlib.h>
#include <string.h>

#include "model/torch_internal.h"

enum {
    ZIP_EOCD_SIG = 0x06054b50,
    ZIP_EOCD_BYTES = 22,
    ZIP64_LOCATOR_SIG = 0x07064b50,
    ZIP64_LOCATOR_BYTES = 20,
    ZIP64_EOCD_SIG = 0x06064b50,
    ZIP64_EOCD_BYTES = 56,
    ZIP_CDIR_SIG = 0x02014b50,
    ZIP_CDIR_BYTES = 46,
    ZIP_LOCAL_SIG = 0x04034b50,
    ZIP_LOCAL_BYTES = 30,
    ZIP_MAX_COMMENT = 0xffff,
};

static uint64_t rd(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

void cv_zip_close(cv_zip *z)
{
    free(z->entries);
    memset(z, 0, sizeof *z);
}

const cv_zip_entry *cv_zip_find(const cv_zip *z, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < z->n_entries; i++)
        if (z->entries[i].name_len == len && memcmp(z->entries[i].name, name, len) == 0)
            return &z->entries[i];
    return NULL;
}

/* The zip64 extra field (id 1) holds, in this order, the 64-bit values of
 * those of size, compressed size and header offset whose 32-bit field is
 * 0xffffffff. */
static int zip_read_zip64_extra(const cv_zip *z, cv_zip_entry *e, const uint8_t *extra, size_t n,
                                size_t index, cv_error *err)
{
    uint64_t *fields[3] = {&e->size, &e->comp_size, &e->header_off};
    size_t i = 0;
    while (i + 4 <= n) {
        size_t id = (size_t)rd(extra + i, 2), len = (size_t)rd(extra + i + 2, 2);
        if (i + 4 + len > n) break;
        if (id == 1) {
            size_t at = 0;
            for (int k = 0; k < 3; k++) {
                if (*fields[k] != 0xffffffffu) continue;
                if (at + 8 > len)
                    return cv_errorf(err, "%s: zip entry %zu: zip64 extra field too short", z->what,
                                     index);
                *fields[k] = rd(extra + i + 4 + at, 8);
                at += 8;
            }
            return 0;
        }
        i += 4 + len;
    }
    for (int k = 0; k < 3; k++)
        if (*fields[k] == 0xffffffffu)
            return cv_errorf(err,
                             "%s: zip entry %zu: 32-bit field 0xffffffff without a zip64 "
                             "extra field",
                             z->what, index);
    return 0;
}

/* Finds the end of central directory record: the last one in the final
 * 64 KiB + 22 bytes (the comment may hold anything). */
static int zip_find_eocd(const cv_zip *z, size_t *pos, cv_error *err)
{
    if (z->n_bytes < ZIP_EOCD_BYTES)
        return cv_errorf(err,
                         "%s: not a zip archive (%zu bytes, too short); torch.save writes "
                         "zip archives since torch 1.6",
                         z->what, z->n_bytes);
    size_t lo = z->n_bytes - ZIP_EOCD_BYTES > ZIP_MAX_COMMENT
                    ? z->n_bytes - ZIP_EOCD_BYTES - ZIP_MAX_COMMENT
                    : 0;
    for (size_t p = z->n_bytes - ZIP_EOCD_BYTES + 1; p-- > lo;)
        if (rd(z->base + p, 4) == ZIP_EOCD_SIG) {
            *pos = p;
            return 0;
        }
    return cv_errorf(err,
                     "%s: not a zip archive (no end of central directory record): truncated, "
                     "or the legacy torch format from before torch 1.6, which is not read "
                     "(re-save it with a newer torch or convert it to safetensors)",
                     z->what);
}

static int zip_read_directory(cv_zip *z, uint64_t *cd_off, uint64_t *cd_bytes, uint64_t *count,
                              cv_error *err)
{
    size_t eocd = 0;
    if (zip_find_eocd(z, &eocd, err)) return -1;
    const uint8_t *e = z->base + eocd;
    *count = rd(e + 10, 2);
    *cd_bytes = rd(e + 12, 4);
    *cd_off = rd(e + 16, 4);
    if (eocd >= ZIP64_LOCATOR_BYTES &&
        rd(z->base + eocd - ZIP64_LOCATOR_BYTES, 4) == ZIP64_LOCATOR_SIG) {
        uint64_t off = rd(z->base + eocd - ZIP64_LOCATOR_BYTES + 8, 8);
        if (off > eocd - ZIP64_LOCATOR_BYTES ||
            eocd - ZIP64_LOCATOR_BYTES - off < ZIP64_EOCD_BYTES ||
            rd(z->base + off, 4) != ZIP64_EOCD_SIG)
            return cv_errorf(err,
                             "%s: corrupt zip: the zip64 end of central directory record "
                             "is not where its locator says",
                             z->what);
        const uint8_t *e64 = z->base + off;
        *count = rd(e64 + 32, 8);
        *cd_bytes = rd(e64 + 40, 8);
        *cd_off = rd(e64 + 48, 8);
        eocd = (size_t)off;
    }
    if (*cd_off > eocd || *cd_bytes > eocd - *cd_off)
        return cv_errorf(err,
                         "%s: corrupt or truncated zip: central directory (%llu bytes at "
                         "%llu) runs past its end record at %zu",
                         z->what, (unsigned long long)*cd_bytes, (unsigned long long)*cd_off, eocd);
    if (*count > *cd_bytes / ZIP_CDIR_BYTES)
        return cv_errorf(err,
                         "%s: corrupt zip: %llu entries cannot fit a central directory of "
                         "%llu bytes",
                         z->what, (unsigned long long)*count, (unsigned long long)*cd_bytes);
    return 0;
}

int cv_zip_open(cv_zip *z, const char *what, const uint8_t *base, size_t n_bytes, cv_error *err)
{
    memset(z, 0, sizeof *z);
    z->what = what;
    z->base = base;
    z->n_bytes = n_bytes;
    uint64_t off, bytes, count;
    if (zip_read_directory(z, &off, &bytes, &count, err)) return -1;
    z->entries = calloc((size_t)count + 1, sizeof *z->entries);
    if (!z->entries) return cv_errorf(err, "%s: out of memory", what);
    const uint8_t *p = base + off, *end = base + off + bytes;
    for (size_t i = 0; i < count; i++) {
        if ((size_t)(end - p) < ZIP_CDIR_BYTES || rd(p, 4) != ZIP_CDIR_SIG) {
            cv_zip_close(z);
            return cv_errorf(err, "%s: corrupt zip: central directory entry %zu is malformed", what,
                             i);
        }
        cv_zip_entry *e = &z->entries[i];
        e->flags = (uint16_t)rd(p + 8, 2);
        e->method = (uint16_t)rd(p + 10, 2);
        e->comp_size = rd(p + 20, 4);
        e->size = rd(p + 24, 4);
        size_t name_len = (size_t)rd(p + 28, 2), extra_len = (size_t)rd(p + 30, 2),
               comment_len = (size_t)rd(p + 32, 2);
        e->header_off = rd(p + 42, 4);
        if ((size_t)(end - p) - ZIP_CDIR_BYTES < name_len + extra_len + comment_len) {
            cv_zip_close(z);
            return cv_errorf(err,
                             "%s: corrupt zip: central directory entry %zu runs past the "
                             "directory",
                             what, i);
        }
        e->name = (const char *)p + ZIP_CDIR_BYTES;
        e->name_len = name_len;
        z->n_entries = i + 1;
        if (zip_read_zip64_extra(z, e, p + ZIP_CDIR_BYTES + name_len, extra_len, i, err)) {
            cv_zip_close(z);
            return -1;
        }
        p += ZIP_CDIR_BYTES + name_len + extra_len + comment_len;
    }
    return 0;
}

int cv_zip_data(const cv_zip *z, const cv_zip_entry *e, const uint8_t **data, cv_error *err)
{
    int nl = e->name_len > 200 ? 200 : (int)e->name_len;
    if (e->flags & 1)
        return cv_errorf(err, "%s: zip entry '%.*s' is encrypted", z->what, nl, e->name);
    if (e->method != 0)
        return cv_errorf(err,
                         "%s: zip entry '%.*s' is compressed (method %u); torch.save stores "
                         "entries uncompressed, and only such archives are read",
                         z->what, nl, e->name, e->method);
    if (e->comp_size != e->size)
        return cv_errorf(err,
                         "%s: corrupt zip: stored entry '%.*s' has size %llu but %llu "
                         "stored bytes",
                         z->what, nl, e->name, (unsigned long long)e->size,
                         (unsigned long long)e->comp_size);
    if (e->header_off > z->n_bytes || z->n_bytes - e->header_off < ZIP_LOCAL_BYTES ||
        rd(z->base + e->header_off, 4) != ZIP_LOCAL_SIG)
        return cv_errorf(err,
                         "%s: corrupt or truncated zip: no local header for entry '%.*s' "
                         "at offset %llu",
                         z->what, nl, e->name, (unsigned long long)e->header_off);
    const uint8_t *h = z->base + e->header_off;
    uint64_t start = e->header_off + ZIP_LOCAL_BYTES + rd(h + 26, 2) + rd(h + 28, 2);
    if (start > z->n_bytes || z->n_bytes - start < e->size)
        return cv_errorf(err,
                         "%s: truncated: zip entry '%.*s' needs bytes [%llu, %llu) but the "
                         "file has %zu",
                         z->what, nl, e->name, (unsigned long long)start,
                         (unsigned long long)(start + e->size), z->n_bytes);
    *data = z->base + start;
    return 0;
}

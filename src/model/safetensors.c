/* The safetensors format: an 8-byte little-endian header length N, N bytes
 * of JSON ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
 * "__metadata__": {...}}), then the data region that the offsets index.
 * Reading maps the file and points tensors into the mapping; writing streams
 * tensors out one chunk at a time. Both share the dtype table below. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/model_internal.h"

/* The reference implementation refuses headers above 100 MB; so do we, which
 * also bounds what a corrupt length can make us parse. */
enum { CV_ST_MAX_HEADER_BYTES = 100 * 1000 * 1000 };

static const struct {
    const char *name;
    size_t bytes;
    int dtype; /* cv_dtype, or -1 when stored but not supported */
} st_dtypes[] = {
    {"F32", 4, CV_DTYPE_F32},
    {"F16", 2, CV_DTYPE_F16},
    {"BF16", 2, CV_DTYPE_BF16},
    {"F64", 8, -1},
    {"I64", 8, -1},
    {"U64", 8, -1},
    {"I32", 4, -1},
    {"U32", 4, -1},
    {"I16", 2, -1},
    {"U16", 2, -1},
    {"I8", 1, -1},
    {"U8", 1, -1},
    {"BOOL", 1, -1},
    {"F8_E4M3", 1, -1},
    {"F8_E5M2", 1, -1},
};
enum { CV_ST_N_DTYPES = sizeof st_dtypes / sizeof st_dtypes[0] };

json_t *cv_json_load(const char *path, cv_error *err)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        cv_errorf(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    json_error_t jerr;
    json_t *root = json_loadf(fp, JSON_REJECT_DUPLICATES, &jerr);
    fclose(fp);
    if (!root) {
        cv_errorf(err, "%s: malformed JSON at line %d column %d: %s", path, jerr.line, jerr.column,
                  jerr.text);
        return NULL;
    }
    return root;
}

/* ---- reading ------------------------------------------------------------ */

void cv_st_close(cv_st_file *f)
{
    for (size_t i = 0; i < f->n_tensors; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    for (size_t i = 0; i < f->n_copies; i++)
        free(f->copies[i]);
    free(f->copies);
    if (f->map) munmap(f->map, f->map_bytes);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const cv_st_tensor *cv_st_find(const cv_st_file *f, const char *name)
{
    for (size_t i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

/* A tensor whose absolute file offset is not a multiple of its element size
 * would be a misaligned pointer into the mapping (undefined behaviour for the
 * backends' float loads): such a tensor gets an aligned heap copy. Writers
 * that pad the header to 8 bytes, as the reference one does, never need it. */
int cv_st_align(cv_st_file *f, cv_st_tensor *t, size_t bytes, cv_error *err)
{
    if ((uintptr_t)t->tensor.data % cv_dtype_size(t->tensor.dtype) == 0) return 0;
    void **copies = realloc(f->copies, (f->n_copies + 1) * sizeof *copies);
    if (!copies) return cv_errorf(err, "%s: out of memory", f->path);
    f->copies = copies;
    void *copy = malloc(bytes ? bytes : 1);
    if (!copy) return cv_errorf(err, "%s: out of memory copying tensor '%s'", f->path, t->name);
    memcpy(copy, t->tensor.data, bytes);
    f->copies[f->n_copies++] = copy;
    t->tensor.data = copy;
    return 0;
}

static int st_parse_entry(cv_st_file *f, const char *name, json_t *entry, const uint8_t *data,
                          uint64_t data_bytes, cv_error *err)
{
    const char *path = f->path;
    cv_st_tensor *t = &f->tensors[f->n_tensors];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) return cv_errorf(err, "%s: out of memory", path);
    f->n_tensors++;

    json_t *jdtype = json_object_get(entry, "dtype");
    json_t *jshape = json_object_get(entry, "shape");
    json_t *joffs = json_object_get(entry, "data_offsets");
    if (!json_is_object(entry) || !json_is_string(jdtype) || !json_is_array(jshape) ||
        !json_is_array(joffs) || json_array_size(joffs) != 2)
        return cv_errorf(err,
                         "%s: tensor '%s': header entry needs dtype, shape and "
                         "data_offsets [begin, end]",
                         path, name);

    const char *dname = json_string_value(jdtype);
    int k = 0;
    while (k < CV_ST_N_DTYPES && strcmp(st_dtypes[k].name, dname) != 0)
        k++;
    if (k == CV_ST_N_DTYPES)
        return cv_errorf(err, "%s: tensor '%s': unknown dtype '%s'", path, name, dname);
    snprintf(t->dtype_name, sizeof t->dtype_name, "%s", dname);

    size_t n_dims = json_array_size(jshape);
    if (n_dims > 4)
        return cv_errorf(err, "%s: tensor '%s': %zu dimensions, at most 4 supported", path, name,
                         n_dims);
    t->tensor.n_dims = (int)n_dims;
    /* numel * element size must not overflow: every dimension is bounded by
     * the data region, and so is the running product. */
    uint64_t bytes = st_dtypes[k].bytes;
    for (size_t i = 0; i < n_dims; i++) {
        json_t *d = json_array_get(jshape, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return cv_errorf(err, "%s: tensor '%s': shape[%zu] is not a non-negative integer", path,
                             name, i);
        uint64_t dim = (uint64_t)json_integer_value(d);
        t->tensor.shape[i] = (int64_t)dim;
        if (dim != 0 && bytes > UINT64_MAX / dim)
            return cv_errorf(err, "%s: tensor '%s': shape too large", path, name);
        bytes *= dim;
    }

    json_t *jb = json_array_get(joffs, 0), *je = json_array_get(joffs, 1);
    if (!json_is_integer(jb) || !json_is_integer(je) || json_integer_value(jb) < 0 ||
        json_integer_value(je) < json_integer_value(jb))
        return cv_errorf(err, "%s: tensor '%s': data_offsets must be integers 0 <= begin <= end",
                         path, name);
    uint64_t begin = (uint64_t)json_integer_value(jb), end = (uint64_t)json_integer_value(je);
    if (end > data_bytes)
        return cv_errorf(err,
                         "%s: truncated: tensor '%s' needs data bytes [%llu, %llu) but the file "
                         "holds only %llu data bytes",
                         path, name, (unsigned long long)begin, (unsigned long long)end,
                         (unsigned long long)data_bytes);
    if (end - begin != bytes)
        return cv_errorf(err,
                         "%s: tensor '%s': shape and dtype %s need %llu bytes but data_offsets "
                         "[%llu, %llu] hold %llu",
                         path, name, dname, (unsigned long long)bytes, (unsigned long long)begin,
                         (unsigned long long)end, (unsigned long long)(end - begin));

    t->tensor.data = data + begin;
    if (st_dtypes[k].dtype < 0) return 0; /* kept for the message if it is needed */
    t->supported = true;
    t->tensor.dtype = (cv_dtype)st_dtypes[k].dtype;
    return cv_st_align(f, t, (size_t)bytes, err);
}

static int st_parse_header(cv_st_file *f, cv_error *err)
{
    const uint8_t *base = f->map;
    uint64_t header_bytes = 0;
    for (int i = 7; i >= 0; i--)
        header_bytes = header_bytes << 8 | base[i];
    if (header_bytes > f->map_bytes - 8)
        return cv_errorf(err, "%s: header length %llu runs past the end of the file (%zu bytes)",
                         f->path, (unsigned long long)header_bytes, f->map_bytes);
    if (header_bytes > CV_ST_MAX_HEADER_BYTES)
        return cv_errorf(err, "%s: header length %llu above the 100 MB limit", f->path,
                         (unsigned long long)header_bytes);

    json_error_t jerr;
    json_t *root =
        json_loadb((const char *)base + 8, (size_t)header_bytes, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return cv_errorf(err, "%s: malformed JSON header at header byte %d: %s", f->path,
                         jerr.position, jerr.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return cv_errorf(err, "%s: header is not a JSON object", f->path);
    }
    f->tensors = calloc(json_object_size(root) + 1, sizeof *f->tensors);
    if (!f->tensors) {
        json_decref(root);
        return cv_errorf(err, "%s: out of memory", f->path);
    }
    const uint8_t *data = base + 8 + header_bytes;
    uint64_t data_bytes = f->map_bytes - 8 - header_bytes;
    const char *name;
    json_t *entry;
    int rc = 0;
    json_object_foreach(root, name, entry)
    {
        if (strcmp(name, "__metadata__") == 0) continue;
        rc = st_parse_entry(f, name, entry, data, data_bytes, err);
        if (rc) break;
    }
    json_decref(root);
    return rc;
}

int cv_st_map(cv_st_file *f, const char *path, cv_error *err)
{
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return cv_errorf(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return cv_errorf(err, "%s: cannot stat: %s", path, strerror(e));
    }
    f->path = strdup(path);
    if (!f->path) {
        close(fd);
        return cv_errorf(err, "%s: out of memory", path);
    }
    f->map_bytes = (size_t)st.st_size;
    if (f->map_bytes == 0) { /* mmap refuses empty files; there is nothing to map */
        close(fd);
        return 0;
    }
    void *map = mmap(NULL, f->map_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED) {
        cv_st_close(f);
        return cv_errorf(err, "%s: cannot mmap: %s", path, strerror(e));
    }
    f->map = map;
    return 0;
}

int cv_st_open(cv_st_file *f, const char *path, cv_error *err)
{
    if (cv_st_map(f, path, err)) return -1;
    if (f->map_bytes < 8) {
        cv_errorf(err, "%s: truncated: %zu bytes, the 8-byte header length is missing", path,
                  f->map_bytes);
        cv_st_close(f);
        return -1;
    }
    if (st_parse_header(f, err)) {
        cv_st_close(f);
        return -1;
    }
    return 0;
}

/* ---- writing ------------------------------------------------------------ */

static char *st_header_json(const cv_safetensors_entry *entries, size_t n, cv_error *err,
                            const char *path)
{
    json_t *root = json_object();
    json_t *meta = json_pack("{s:s}", "format", "pt");
    if (!root || !meta || json_object_set_new(root, "__metadata__", meta)) goto oom;
    uint64_t offset = 0;
    for (size_t i = 0; i < n; i++) {
        const cv_tensor *t = &entries[i].tensor;
        json_t *shape = json_array();
        if (!shape) goto oom;
        for (int d = 0; d < t->n_dims; d++)
            if (json_array_append_new(shape, json_integer(t->shape[d]))) {
                json_decref(shape);
                goto oom;
            }
        uint64_t bytes = (uint64_t)cv_tensor_numel(t) * cv_dtype_size(t->dtype);
        json_t *e = json_pack("{s:s,s:o,s:[I,I]}", "dtype", cv_dtype_name(t->dtype), "shape", shape,
                              "data_offsets", (json_int_t)offset, (json_int_t)(offset + bytes));
        if (!e || json_object_set_new(root, entries[i].name, e)) goto oom;
        offset += bytes;
    }
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!text) cv_errorf(err, "%s: out of memory", path);
    return text;
oom:
    json_decref(root);
    cv_errorf(err, "%s: out of memory building the header", path);
    return NULL;
}

/* Chunk of elements handed to fill(): large enough to amortize the call,
 * small enough to stay in cache-friendly territory (4 MB of F32). */
enum { CV_ST_FILL_CHUNK_ELEMS = 1 << 20 };

static int st_write_data(FILE *fp, const char *path, const cv_safetensors_entry *entries, size_t n,
                         cv_safetensors_fill_fn fill, void *ctx, cv_error *err)
{
    void *chunk = NULL;
    for (size_t i = 0; i < n; i++) {
        const cv_tensor *t = &entries[i].tensor;
        size_t esize = cv_dtype_size(t->dtype);
        size_t numel = (size_t)cv_tensor_numel(t);
        if (t->data) {
            if (fwrite(t->data, esize, numel, fp) != numel) goto io;
            continue;
        }
        if (!fill) {
            free(chunk);
            return cv_errorf(err, "%s: tensor '%s' has no data and no fill function", path,
                             entries[i].name);
        }
        if (!chunk && !(chunk = malloc((size_t)CV_ST_FILL_CHUNK_ELEMS * 4))) {
            return cv_errorf(err, "%s: out of memory", path);
        }
        for (size_t off = 0; off < numel; off += CV_ST_FILL_CHUNK_ELEMS) {
            size_t m = numel - off < CV_ST_FILL_CHUNK_ELEMS ? numel - off : CV_ST_FILL_CHUNK_ELEMS;
            if (fill(ctx, i, chunk, off, m, err)) {
                free(chunk);
                return -1;
            }
            if (fwrite(chunk, esize, m, fp) != m) goto io;
        }
    }
    free(chunk);
    return 0;
io:
    free(chunk);
    return cv_errorf(err, "%s: write failed: %s", path, strerror(errno));
}

int cv_safetensors_write(const char *path, const cv_safetensors_entry *entries, size_t n_entries,
                         cv_safetensors_fill_fn fill, void *ctx, cv_error *err)
{
    char *header = st_header_json(entries, n_entries, err, path);
    if (!header) return -1;
    /* Pad with spaces so the data region starts 8-byte aligned, as the
     * reference writer does; then every tensor is aligned when mapped. */
    size_t len = strlen(header);
    size_t padded = (8 + len + 7) / 8 * 8 - 8;
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        free(header);
        return cv_errorf(err, "%s: cannot create: %s", path, strerror(errno));
    }
    uint8_t len_le[8];
    for (int i = 0; i < 8; i++)
        len_le[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    int rc = 0;
    if (fwrite(len_le, 1, 8, fp) != 8 || fwrite(header, 1, len, fp) != len)
        rc = cv_errorf(err, "%s: write failed: %s", path, strerror(errno));
    for (size_t i = len; rc == 0 && i < padded; i++)
        if (fputc(' ', fp) == EOF)
            rc = cv_errorf(err, "%s: write failed: %s", path, strerror(errno));
    free(header);
    if (rc == 0) rc = st_write_data(fp, path, entries, n_entries, fill, ctx, err);
    if (fclose(fp) != 0 && rc == 0)
        rc = cv_errorf(err, "%s: write failed: %s", path, strerror(errno));
    return rc;
}

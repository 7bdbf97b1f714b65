/* pytorch_model.bin: the zip archive torch.save writes since torch 1.6.
 * Its entries sit under one top directory (named after the file, or
 * "archive"): data.pkl, the pickled state dict whose tensors reference
 * storages by key; data/<key>, each storage's raw bytes; byteorder;
 * version. The tensors become cv_st_tensors pointing into the mapped
 * storages, so model.c finds them exactly as it finds safetensors ones. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_internal.h"
#include "model/torch_internal.h"

/* "<prefix>/<rest>" into out; the prefix is the first entry's top
 * directory, which is how torch's own reader finds it. */
static int torch_entry_name(char *out, size_t n, const cv_zip *z, const char *rest)
{
    const cv_zip_entry *first = &z->entries[0];
    const char *slash = memchr(first->name, '/', first->name_len);
    if (!slash) return -1;
    int plen = (int)(slash - first->name);
    return (size_t)snprintf(out, n, "%.*s/%s", plen, first->name, rest) < n ? 0 : -1;
}

static const cv_zip_entry *torch_find(const cv_zip *z, const char *rest)
{
    char name[1024];
    if (torch_entry_name(name, sizeof name, z, rest)) return NULL;
    return cv_zip_find(z, name);
}

static void dims_str(char *buf, size_t n, int n_dims, const int64_t *v)
{
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < n_dims && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%lld", i ? ", " : "", (long long)v[i]);
    if (used < n) snprintf(buf + used, n - used, "]");
}

/* Checks that p's view lies inside its storage and, when it is usable,
 * points t at it. */
static int torch_bind(cv_st_file *f, const cv_zip *z, const cv_pkl_tensor *p, cv_st_tensor *t,
                      cv_error *err)
{
    char rest[512];
    snprintf(rest, sizeof rest, "data/%s", p->storage_key);
    const cv_zip_entry *e = torch_find(z, rest);
    if (!e)
        return cv_errorf(err, "%s: tensor '%s': its storage '%s' has no zip entry", f->path,
                         t->name, p->storage_key);
    const uint8_t *storage;
    if (cv_zip_data(z, e, &storage, err)) return -1;
    size_t esize = p->dtype->bytes;
    if (p->storage_numel > e->size / esize)
        return cv_errorf(err,
                         "%s: storage '%s' holds %llu bytes, data.pkl says %llu elements of %s",
                         f->path, p->storage_key, (unsigned long long)e->size,
                         (unsigned long long)p->storage_numel, p->dtype->name);
    /* The view's elements (saturating: a huge product fails the extent
     * check), and whether they are row-major; torch ignores the stride of a
     * dimension of size 1, and an empty tensor is contiguous. */
    uint64_t numel = 1;
    bool contiguous = true;
    for (int d = p->n_dims - 1; d >= 0; d--) {
        uint64_t size = (uint64_t)p->size[d];
        if (size != 1 && (uint64_t)p->stride[d] != numel) contiguous = false;
        numel = size != 0 && numel > UINT64_MAX / size ? UINT64_MAX : numel * size;
    }
    for (int d = 0; d < p->n_dims; d++)
        if (p->size[d] == 0) numel = 0;
    if (numel == 0) contiguous = true;
    if (numel != 0 && contiguous &&
        (p->offset > p->storage_numel || numel > p->storage_numel - p->offset))
        return cv_errorf(err,
                         "%s: tensor '%s': elements [%llu, %llu) lie outside its storage '%s' of "
                         "%llu elements",
                         f->path, t->name, (unsigned long long)p->offset,
                         (unsigned long long)(p->offset + numel), p->storage_key,
                         (unsigned long long)p->storage_numel);
    snprintf(t->dtype_name, sizeof t->dtype_name, "%s", p->dtype->name);
    t->tensor.n_dims = p->n_dims > 4 ? 4 : p->n_dims;
    for (int d = 0; d < t->tensor.n_dims; d++)
        t->tensor.shape[d] = p->size[d];
    if (!contiguous) {
        char st[128];
        dims_str(st, sizeof st, p->n_dims, p->stride);
        snprintf(t->why, sizeof t->why,
                 "is a non-contiguous view (stride %s); only contiguous tensors are read", st);
        return 0;
    }
    if (p->n_dims > 4) {
        snprintf(t->why, sizeof t->why, "has %d dimensions; at most 4 are read", p->n_dims);
        return 0;
    }
    if (p->dtype->cv_dtype < 0) return 0; /* model.c names the dtype if it is needed */
    t->supported = true;
    t->tensor.dtype = (cv_dtype)p->dtype->cv_dtype;
    t->tensor.data = storage + (numel ? p->offset * esize : 0);
    return cv_st_align(f, t, (size_t)numel * esize, err);
}

static int torch_read(cv_st_file *f, const cv_zip *z, cv_error *err)
{
    if (z->n_entries == 0) return cv_errorf(err, "%s: empty zip archive", f->path);
    const cv_zip_entry *pkl = torch_find(z, "data.pkl");
    if (!pkl)
        return cv_errorf(
            err, "%s: a zip archive without <dir>/data.pkl: not a torch.save checkpoint", f->path);
    const uint8_t *bytes, *pkl_bytes;
    if (cv_zip_data(z, pkl, &pkl_bytes, err)) return -1;
    const cv_zip_entry *order = torch_find(z, "byteorder");
    if (order) {
        if (cv_zip_data(z, order, &bytes, err)) return -1;
        if (order->size != 6 || memcmp(bytes, "little", 6) != 0)
            return cv_errorf(err,
                             "%s: byteorder is not 'little'; big-endian checkpoints are "
                             "not read",
                             f->path);
    }
    cv_pkl_state st;
    if (cv_pkl_load(pkl_bytes, (size_t)pkl->size, f->path, &st, err)) return -1;
    int rc = 0;
    f->tensors = calloc(st.n_tensors + 1, sizeof *f->tensors);
    if (!f->tensors) rc = cv_errorf(err, "%s: out of memory", f->path);
    for (size_t i = 0; rc == 0 && i < st.n_tensors; i++) {
        cv_st_tensor *t = &f->tensors[f->n_tensors++];
        t->name = st.tensors[i].name; /* ownership moves to f */
        st.tensors[i].name = NULL;
        rc = torch_bind(f, z, &st.tensors[i], t, err);
    }
    cv_pkl_free(&st);
    return rc;
}

int cv_torch_parse(cv_st_file *f, cv_error *err)
{
    cv_zip z;
    if (cv_zip_open(&z, f->path, f->map, f->map_bytes, err)) return -1;
    int rc = torch_read(f, &z, err);
    cv_zip_close(&z);
    return rc;
}

int cv_torch_open(cv_st_file *f, const char *path, cv_error *err)
{
    if (cv_st_map(f, path, err)) return -1;
    if (cv_torch_parse(f, err)) {
        cv_st_close(f);
        return -1;
    }
    return 0;
}

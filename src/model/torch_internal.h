/* Internals of the pytorch_model.bin reader: a minimal zip reader over a
 * mapped file (torch_zip.c) and a pickle interpreter that only rebuilds a
 * state dict of tensors (torch_pickle.c). torch_bin.c joins them into a
 * cv_st_file. Split out so the fuzz targets can reach each part. */
#ifndef CV_MODEL_TORCH_INTERNAL_H
#define CV_MODEL_TORCH_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

/* ---- zip ---------------------------------------------------------------- */

typedef struct cv_zip_entry {
    const char *name; /* into the mapping, name_len bytes, not NUL-terminated */
    size_t name_len;
    uint16_t method;     /* 0 stored, 8 deflate, ... */
    uint16_t flags;      /* general purpose bit flags (bit 0: encrypted) */
    uint64_t size;       /* uncompressed bytes */
    uint64_t comp_size;  /* bytes stored in the archive */
    uint64_t header_off; /* offset of the local file header */
} cv_zip_entry;

typedef struct cv_zip {
    const char *what; /* file name for messages (not owned) */
    const uint8_t *base;
    size_t n_bytes;
    cv_zip_entry *entries; /* (n_entries) central directory order, owned */
    size_t n_entries;
} cv_zip;

/* Reads the central directory of the archive BASE[0..N_BYTES) (zip64 where
 * present). Entries are not checked until cv_zip_data. On failure z is
 * left empty and err names WHAT. */
int cv_zip_open(cv_zip *z, const char *what, const uint8_t *base, size_t n_bytes, cv_error *err);
void cv_zip_close(cv_zip *z);
/* The entry named NAME (exact bytes), or NULL. */
const cv_zip_entry *cv_zip_find(const cv_zip *z, const char *name);
/* Points *data at E's bytes inside the mapping (e->size of them): only
 * stored, unencrypted entries whose local header and data lie inside the
 * file are read. */
int cv_zip_data(const cv_zip *z, const cv_zip_entry *e, const uint8_t **data, cv_error *err);

/* ---- pickle -------------------------------------------------------------- */

enum { CV_PKL_MAX_DIMS = 8 };

/* Element types of torch storages, by their torch name. */
typedef struct cv_pkl_dtype {
    const char *storage; /* "FloatStorage" */
    const char *dtype;   /* "float32" (torch.float32) */
    const char *name;    /* "F32", as safetensors names it, for messages */
    size_t bytes;
    int cv_dtype; /* cv_dtype, or -1 when not a weight dtype */
} cv_pkl_dtype;

/* One entry of the pickled state dict: tensor NAME views storage KEY
 * (archive entry data/KEY) from element OFFSET with SIZE and STRIDE. */
typedef struct cv_pkl_tensor {
    char *name;        /* owned */
    char *storage_key; /* owned */
    const cv_pkl_dtype *dtype;
    uint64_t storage_numel; /* elements the storage holds, as pickled */
    uint64_t offset;        /* storage_offset, in elements */
    int n_dims;
    int64_t size[CV_PKL_MAX_DIMS];
    int64_t stride[CV_PKL_MAX_DIMS];
} cv_pkl_tensor;

typedef struct cv_pkl_state {
    cv_pkl_tensor *tensors; /* (n_tensors) in pickle order, owned */
    size_t n_tensors;
} cv_pkl_state;

/* Interprets the pickle P[0..N) as torch.save writes a state dict: the
 * opcodes of protocols 2 to 4 that build dicts, tuples, lists, ints,
 * floats, strings, persistent storage ids and REDUCE calls, with globals
 * only from a whitelist (torch._utils._rebuild_tensor_v2 and
 * _rebuild_parameter, collections.OrderedDict, torch storage types and
 * dtypes). Any other global is refused with an error naming it: loading a
 * checkpoint never runs code. The result is the top-level dict's tensor
 * entries (others are skipped). Errors name WHAT. */
int cv_pkl_load(const uint8_t *p, size_t n, const char *what, cv_pkl_state *out, cv_error *err);
void cv_pkl_free(cv_pkl_state *s);

#endif

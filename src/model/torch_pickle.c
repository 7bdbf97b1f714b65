/* The pickle subset torch.save writes for a state dict, interpreted without
 * running anything: a value stack, a memo, and REDUCE only for the handful
 * of whitelisted callables that rebuild tensors. Every other global, and
 * every opcode torch.save does not emit, is an error naming it; so is any
 * value of the wrong type where a tensor's pieces are expected. Values live
 * until the end of the load (all of them are on one list), so sharing
 * through the memo needs no reference counts, and nothing recurses. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "model/torch_internal.h"

/* Every storage type torch.save names (torch.storage's dtype map), so that a
 * checkpoint holding, say, an int64 buffer still loads; only the first three
 * are weights the backends read. */
static const cv_pkl_dtype pkl_dtypes[] = {
    {"FloatStorage", "float32", "F32", 4, CV_DTYPE_F32},
    {"HalfStorage", "float16", "F16", 2, CV_DTYPE_F16},
    {"BFloat16Storage", "bfloat16", "BF16", 2, CV_DTYPE_BF16},
    {"DoubleStorage", "float64", "F64", 8, -1},
    {"LongStorage", "int64", "I64", 8, -1},
    {"IntStorage", "int32", "I32", 4, -1},
    {"ShortStorage", "int16", "I16", 2, -1},
    {"CharStorage", "int8", "I8", 1, -1},
    {"ByteStorage", "uint8", "U8", 1, -1},
    {"BoolStorage", "bool", "BOOL", 1, -1},
    {"ComplexFloatStorage", "complex64", "C64", 8, -1},
    {"ComplexDoubleStorage", "complex128", "C128", 16, -1},
    {"QInt8Storage", "qint8", "QI8", 1, -1},
    {"QUInt8Storage", "quint8", "QU8", 1, -1},
    {"QInt32Storage", "qint32", "QI32", 4, -1},
    {"UntypedStorage", NULL, "U8", 1, -1},
};
enum { PKL_N_DTYPES = sizeof pkl_dtypes / sizeof pkl_dtypes[0] };

typedef enum {
    G_REBUILD_TENSOR, /* torch._utils._rebuild_tensor_v2 */
    G_REBUILD_PARAM,  /* torch._utils._rebuild_parameter */
    G_ORDERED_DICT,   /* collections.OrderedDict */
    G_STORAGE,        /* torch.FloatStorage, ..., or a dtype such as torch.float32 */
} pkl_global;

typedef enum {
    PV_MARK,
    PV_NONE,
    PV_BOOL,
    PV_INT,
    PV_FLOAT,
    PV_STR,
    PV_TUPLE,
    PV_LIST,
    PV_DICT,
    PV_GLOBAL,
    PV_STORAGE,
    PV_TENSOR,
} pv_kind;

static const char *const pv_names[] = {"mark",  "None", "bool", "int",    "float",   "str",
                                       "tuple", "list", "dict", "global", "storage", "tensor"};

typedef struct pv {
    pv_kind kind;
    int64_t i;     /* BOOL, INT; STORAGE: numel */
    const char *s; /* STR (into the pickle); STORAGE: key */
    size_t s_len;
    struct pv **items; /* TUPLE, LIST: n items; DICT: n / 2 (key, value) pairs */
    size_t n, cap;
    pkl_global g;              /* GLOBAL */
    const cv_pkl_dtype *dtype; /* GLOBAL G_STORAGE; STORAGE */
    struct pv *storage;        /* TENSOR */
    cv_pkl_tensor t;           /* TENSOR: offset and dims */
} pv;

typedef struct pk {
    const uint8_t *p;
    size_t n, pos, op_pos;
    const char *what;
    cv_error *err;
    pv **stack;
    size_t sp, stack_cap;
    pv **memo; /* [memo_cap], NULL where unset */
    size_t memo_cap, memo_count;
    pv **all; /* every value made, for freeing */
    size_t n_all, all_cap;
} pk;

static int pk_fail(pk *k, const char *msg)
{
    return cv_errorf(k->err, "%s: data.pkl byte %zu: %s", k->what, k->op_pos, msg);
}

static int pk_grow(void **v, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap * 2 : 16;
    while (c < need)
        c *= 2;
    void *nv = realloc(*v, c * elem);
    if (!nv) return -1;
    *v = nv;
    *cap = c;
    return 0;
}

static pv *pk_new(pk *k, pv_kind kind)
{
    pv *v = calloc(1, sizeof *v);
    if (!v || pk_grow((void **)&k->all, &k->all_cap, k->n_all + 1, sizeof *k->all)) {
        free(v);
        pk_fail(k, "out of memory");
        return NULL;
    }
    k->all[k->n_all++] = v;
    v->kind = kind;
    return v;
}

static int pk_push(pk *k, pv *v)
{
    if (!v) return -1;
    if (pk_grow((void **)&k->stack, &k->stack_cap, k->sp + 1, sizeof *k->stack))
        return pk_fail(k, "out of memory");
    k->stack[k->sp++] = v;
    return 0;
}

static pv *pk_pop(pk *k)
{
    if (k->sp == 0 || k->stack[k->sp - 1]->kind == PV_MARK) {
        pk_fail(k, "stack underflow");
        return NULL;
    }
    return k->stack[--k->sp];
}

static pv *pk_top(pk *k)
{
    if (k->sp == 0 || k->stack[k->sp - 1]->kind == PV_MARK) {
        pk_fail(k, "stack underflow");
        return NULL;
    }
    return k->stack[k->sp - 1];
}

/* Pops everything above the topmost mark, and the mark: *items points at
 * them (valid until the next push). */
static int pk_pop_mark(pk *k, pv ***items, size_t *n)
{
    size_t m = k->sp;
    while (m > 0 && k->stack[m - 1]->kind != PV_MARK)
        m--;
    if (m == 0) return pk_fail(k, "no mark on the stack");
    *items = k->stack + m;
    *n = k->sp - m;
    k->sp = m - 1;
    return 0;
}

static int pv_append(pk *k, pv *c, pv *const *items, size_t n)
{
    if (n == 0) return 0;
    if (pk_grow((void **)&c->items, &c->cap, c->n + n, sizeof *c->items))
        return pk_fail(k, "out of memory");
    memcpy(c->items + c->n, items, n * sizeof *items);
    c->n += n;
    return 0;
}

static pv *pk_tuple(pk *k, pv *const *items, size_t n)
{
    pv *t = pk_new(k, PV_TUPLE);
    if (t && pv_append(k, t, items, n)) return NULL;
    return t;
}

static const uint8_t *pk_take(pk *k, size_t bytes)
{
    if (k->n - k->pos < bytes) {
        pk_fail(k, "truncated pickle");
        return NULL;
    }
    const uint8_t *at = k->p + k->pos;
    k->pos += bytes;
    return at;
}

static int pk_uint(pk *k, int bytes, uint64_t *v)
{
    const uint8_t *b = pk_take(k, (size_t)bytes);
    if (!b) return -1;
    *v = 0;
    for (int i = bytes - 1; i >= 0; i--)
        *v = *v << 8 | b[i];
    return 0;
}

/* ---- globals and calls ----------------------------------------------------- */

static int pk_global(pk *k, const char *mod, size_t ml, const char *name, size_t nl)
{
    pkl_global g = G_STORAGE;
    const cv_pkl_dtype *dtype = NULL;
#define IS(s, l, lit) ((l) == sizeof(lit) - 1 && memcmp((s), (lit), (l)) == 0)
    if (IS(mod, ml, "torch._utils") && IS(name, nl, "_rebuild_tensor_v2")) {
        g = G_REBUILD_TENSOR;
    } else if (IS(mod, ml, "torch._utils") && IS(name, nl, "_rebuild_parameter")) {
        g = G_REBUILD_PARAM;
    } else if (IS(mod, ml, "collections") && IS(name, nl, "OrderedDict")) {
        g = G_ORDERED_DICT;
    } else if (IS(mod, ml, "torch")) {
        for (int i = 0; i < PKL_N_DTYPES && !dtype; i++) {
            const cv_pkl_dtype *d = &pkl_dtypes[i];
            if ((strlen(d->storage) == nl && memcmp(d->storage, name, nl) == 0) ||
                (d->dtype && strlen(d->dtype) == nl && memcmp(d->dtype, name, nl) == 0))
                dtype = d;
        }
    }
#undef IS
    if (g == G_STORAGE && !dtype)
        return cv_errorf(k->err,
                         "refusing to load %s: it references the global '%.*s.%.*s'; only "
                         "tensors are read",
                         k->what, (int)(ml > 100 ? 100 : ml), mod, (int)(nl > 100 ? 100 : nl),
                         name);
    pv *v = pk_new(k, PV_GLOBAL);
    if (!v) return -1;
    v->g = g;
    v->dtype = dtype;
    return pk_push(k, v);
}

/* torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
 * requires_grad, backward_hooks[, metadata]) */
static pv *pk_rebuild_tensor(pk *k, const pv *args)
{
    if (args->n != 6 && args->n != 7) {
        pk_fail(k, "_rebuild_tensor_v2 takes 6 or 7 arguments");
        return NULL;
    }
    pv *storage = args->items[0], *offset = args->items[1];
    pv *size = args->items[2], *stride = args->items[3];
    if (storage->kind != PV_STORAGE || offset->kind != PV_INT || offset->i < 0 ||
        size->kind != PV_TUPLE || stride->kind != PV_TUPLE || size->n != stride->n) {
        pk_fail(k, "_rebuild_tensor_v2 needs (storage, offset >= 0, size, stride) with size "
                   "and stride tuples of one length");
        return NULL;
    }
    if (size->n > CV_PKL_MAX_DIMS) {
        pk_fail(k, "tensor with more than 8 dimensions");
        return NULL;
    }
    pv *t = pk_new(k, PV_TENSOR);
    if (!t) return NULL;
    t->storage = storage;
    t->t.offset = (uint64_t)offset->i;
    t->t.n_dims = (int)size->n;
    for (size_t d = 0; d < size->n; d++) {
        const pv *sz = size->items[d], *st = stride->items[d];
        if (sz->kind != PV_INT || st->kind != PV_INT || sz->i < 0 || st->i < 0) {
            pk_fail(k, "tensor size and stride must be non-negative integers");
            return NULL;
        }
        t->t.size[d] = sz->i;
        t->t.stride[d] = st->i;
    }
    return t;
}

static int pk_reduce(pk *k)
{
    pv *args = pk_pop(k), *fn = args ? pk_pop(k) : NULL;
    if (!fn) return -1;
    if (fn->kind != PV_GLOBAL || args->kind != PV_TUPLE)
        return pk_fail(k, "REDUCE needs a whitelisted global and an argument tuple");
    pv *r = NULL;
    switch (fn->g) {
    case G_REBUILD_TENSOR:
        r = pk_rebuild_tensor(k, args);
        break;
    case G_REBUILD_PARAM:
        if (args->n < 1 || args->items[0]->kind != PV_TENSOR)
            return pk_fail(k, "_rebuild_parameter needs a tensor");
        r = args->items[0];
        break;
    case G_ORDERED_DICT:
        if (args->n != 0) return pk_fail(k, "OrderedDict called with arguments");
        r = pk_new(k, PV_DICT);
        break;
    case G_STORAGE:
        return pk_fail(k, "a storage type called as a function; only torch.save's storage "
                          "references are read");
    }
    return r ? pk_push(k, r) : -1;
}

/* BINPERSID ('storage', storage_type, key, location, numel) */
static int pk_persid(pk *k)
{
    pv *pid = pk_pop(k);
    if (!pid) return -1;
    if (pid->kind != PV_TUPLE || pid->n != 5 || pid->items[0]->kind != PV_STR ||
        pid->items[0]->s_len != 7 || memcmp(pid->items[0]->s, "storage", 7) != 0 ||
        pid->items[1]->kind != PV_GLOBAL || pid->items[1]->g != G_STORAGE ||
        pid->items[2]->kind != PV_STR || pid->items[4]->kind != PV_INT || pid->items[4]->i < 0)
        return pk_fail(k, "persistent id is not ('storage', storage type, key, location, "
                          "numel)");
    pv *s = pk_new(k, PV_STORAGE);
    if (!s) return -1;
    s->dtype = pid->items[1]->dtype;
    s->s = pid->items[2]->s;
    s->s_len = pid->items[2]->s_len;
    s->i = pid->items[4]->i;
    return pk_push(k, s);
}

/* ---- the opcode loop --------------------------------------------------------- */

static int pk_string(pk *k, int len_bytes)
{
    uint64_t len;
    if (pk_uint(k, len_bytes, &len)) return -1;
    if (len > k->n - k->pos) return pk_fail(k, "truncated pickle");
    pv *v = pk_new(k, PV_STR);
    if (!v) return -1;
    v->s = (const char *)pk_take(k, (size_t)len);
    v->s_len = (size_t)len;
    return pk_push(k, v);
}

static int pk_int(pk *k, int64_t i, pv_kind kind)
{
    pv *v = pk_new(k, kind);
    if (!v) return -1;
    v->i = i;
    return pk_push(k, v);
}

static int pk_long1(pk *k)
{
    uint64_t n, u;
    if (pk_uint(k, 1, &n)) return -1;
    if (n > 8) return pk_fail(k, "integer wider than 64 bits");
    if (n == 0) return pk_int(k, 0, PV_INT);
    if (pk_uint(k, (int)n, &u)) return -1;
    if (n < 8 && (u >> (8 * n - 1) & 1)) u |= ~(uint64_t)0 << (8 * n); /* sign-extend */
    return pk_int(k, (int64_t)u, PV_INT);
}

/* A float is never part of a tensor's layout: only its kind is kept. */
static int pk_float(pk *k)
{
    return pk_take(k, 8) ? pk_push(k, pk_new(k, PV_FLOAT)) : -1;
}

static int pk_line(pk *k, const char **s, size_t *len)
{
    const uint8_t *nl = memchr(k->p + k->pos, '\n', k->n - k->pos);
    if (!nl) return pk_fail(k, "truncated pickle");
    *s = (const char *)k->p + k->pos;
    *len = (size_t)(nl - (k->p + k->pos));
    k->pos += *len + 1;
    return 0;
}

static int pk_memo_put(pk *k, uint64_t idx)
{
    pv *top = pk_top(k);
    if (!top) return -1;
    /* every memo slot costs at least two pickle bytes */
    if (idx > k->n) return pk_fail(k, "memo index out of range");
    size_t old = k->memo_cap;
    if (pk_grow((void **)&k->memo, &k->memo_cap, (size_t)idx + 1, sizeof *k->memo))
        return pk_fail(k, "out of memory");
    memset(k->memo + old, 0, (k->memo_cap - old) * sizeof *k->memo);
    if (!k->memo[idx]) k->memo_count++;
    k->memo[idx] = top;
    return 0;
}

static int pk_memo_get(pk *k, uint64_t idx)
{
    if (idx >= k->memo_cap || !k->memo[idx]) return pk_fail(k, "memo index not set");
    return pk_push(k, k->memo[idx]);
}

static int pk_setitems(pk *k, pv *const *items, size_t n)
{
    pv *d = pk_top(k);
    if (!d) return -1;
    if (d->kind != PV_DICT || n % 2) return pk_fail(k, "SETITEM(S) needs a dict and pairs");
    return pv_append(k, d, items, n);
}

static int pk_appends(pk *k, pv *const *items, size_t n)
{
    pv *l = pk_top(k);
    if (!l) return -1;
    if (l->kind != PV_LIST) return pk_fail(k, "APPEND(S) needs a list");
    return pv_append(k, l, items, n);
}

/* One opcode; *stop set at STOP. */
static int pk_step(pk *k, bool *stop)
{
    k->op_pos = k->pos;
    const uint8_t *opp = pk_take(k, 1);
    if (!opp) return -1;
    uint64_t u = 0;
    pv **items = NULL, *a, *b;
    size_t n = 0;
    switch (*opp) {
    case 0x80: /* PROTO */
        if (pk_uint(k, 1, &u)) return -1;
        return u >= 2 && u <= 5 ? 0 : pk_fail(k, "unsupported pickle protocol");
    case 0x95: /* FRAME: the framed opcodes follow inline */
        return pk_uint(k, 8, &u);
    case '.':
        *stop = true;
        return 0;
    case '(':
        return pk_push(k, pk_new(k, PV_MARK));
    case '}':
        return pk_push(k, pk_new(k, PV_DICT));
    case ']':
        return pk_push(k, pk_new(k, PV_LIST));
    case ')':
        return pk_push(k, pk_new(k, PV_TUPLE));
    case 'N':
        return pk_push(k, pk_new(k, PV_NONE));
    case 0x88: /* NEWTRUE */
    case 0x89: /* NEWFALSE */
        return pk_int(k, *opp == 0x88, PV_BOOL);
    case 'K': /* BININT1 */
    case 'M': /* BININT2 */
        if (pk_uint(k, *opp == 'K' ? 1 : 2, &u)) return -1;
        return pk_int(k, (int64_t)u, PV_INT);
    case 'J': /* BININT: signed 32-bit */
        if (pk_uint(k, 4, &u)) return -1;
        return pk_int(k, (int64_t)(int32_t)(uint32_t)u, PV_INT);
    case 0x8a: /* LONG1 */
        return pk_long1(k);
    case 'G': /* BINFLOAT */
        return pk_float(k);
    case 'X': /* BINUNICODE */
    case 'B': /* BINBYTES */
        return pk_string(k, 4);
    case 0x8c: /* SHORT_BINUNICODE */
    case 'C':  /* SHORT_BINBYTES */
        return pk_string(k, 1);
    case 0x8d: /* BINUNICODE8 */
        return pk_string(k, 8);
    case 't': /* TUPLE */
        if (pk_pop_mark(k, &items, &n)) return -1;
        return pk_push(k, pk_tuple(k, items, n));
    case 0x85: /* TUPLE1 .. TUPLE3 */
    case 0x86:
    case 0x87:
        n = (size_t)(*opp - 0x84);
        if (k->sp < n) return pk_fail(k, "stack underflow");
        for (size_t i = 0; i < n; i++)
            if (k->stack[k->sp - 1 - i]->kind == PV_MARK) return pk_fail(k, "stack underflow");
        k->sp -= n;
        return pk_push(k, pk_tuple(k, k->stack + k->sp, n));
    case 'l': /* LIST */
    case 'd': /* DICT */
        if (pk_pop_mark(k, &items, &n)) return -1;
        a = pk_new(k, *opp == 'l' ? PV_LIST : PV_DICT);
        if (!a || (*opp == 'd' && n % 2)) return a ? pk_fail(k, "DICT needs pairs") : -1;
        return pv_append(k, a, items, n) || pk_push(k, a);
    case 'q': /* BINPUT */
    case 'r': /* LONG_BINPUT */
        return pk_uint(k, *opp == 'q' ? 1 : 4, &u) || pk_memo_put(k, u);
    case 0x94: /* MEMOIZE */
        return pk_memo_put(k, k->memo_count);
    case 'h': /* BINGET */
    case 'j': /* LONG_BINGET */
        return pk_uint(k, *opp == 'h' ? 1 : 4, &u) || pk_memo_get(k, u);
    case '0': /* POP */
        if (k->sp == 0) return pk_fail(k, "stack underflow");
        k->sp--;
        return 0;
    case '1': /* POP_MARK */
        return pk_pop_mark(k, &items, &n);
    case '2': /* DUP */
        a = pk_top(k);
        return a ? pk_push(k, a) : -1;
    case 's': /* SETITEM */
        if (!(b = pk_pop(k)) || !(a = pk_pop(k))) return -1;
        return pk_setitems(k, (pv *[]){a, b}, 2);
    case 'u': /* SETITEMS */
        return pk_pop_mark(k, &items, &n) || pk_setitems(k, items, n);
    case 'a': /* APPEND */
        if (!(a = pk_pop(k))) return -1;
        return pk_appends(k, &a, 1);
    case 'e': /* APPENDS */
        return pk_pop_mark(k, &items, &n) || pk_appends(k, items, n);
    case 'c': { /* GLOBAL module\nname\n */
        const char *mod = NULL, *name = NULL;
        size_t ml = 0, nl = 0;
        return pk_line(k, &mod, &ml) || pk_line(k, &name, &nl) || pk_global(k, mod, ml, name, nl);
    }
    case 0x93: /* STACK_GLOBAL */
        if (!(b = pk_pop(k)) || !(a = pk_pop(k))) return -1;
        if (a->kind != PV_STR || b->kind != PV_STR)
            return pk_fail(k, "STACK_GLOBAL needs two strings");
        return pk_global(k, a->s, a->s_len, b->s, b->s_len);
    case 'R':
        return pk_reduce(k);
    case 'Q':
        return pk_persid(k);
    case 'b': /* BUILD: only the _metadata state of a state dict, dropped */
        if (!(b = pk_pop(k)) || !(a = pk_top(k))) return -1;
        return a->kind == PV_DICT ? 0 : pk_fail(k, "BUILD on something other than a dict");
    default: {
        char msg[96];
        snprintf(msg, sizeof msg, "opcode 0x%02x is not one torch.save writes", *opp);
        return pk_fail(k, msg);
    }
    }
}

/* ---- result ------------------------------------------------------------------ */

static char *pk_strdup(const char *s, size_t n)
{
    char *c = malloc(n + 1);
    if (c) {
        memcpy(c, s, n);
        c[n] = 0;
    }
    return c;
}

static int pk_collect(pk *k, const pv *root, cv_pkl_state *out)
{
    if (root->kind != PV_DICT)
        return cv_errorf(k->err, "%s: data.pkl holds a %s, not a state dict of tensors", k->what,
                         pv_names[root->kind]);
    out->tensors = calloc(root->n / 2 + 1, sizeof *out->tensors);
    if (!out->tensors) return cv_errorf(k->err, "%s: out of memory", k->what);
    for (size_t i = 0; i + 1 < root->n; i += 2) {
        const pv *key = root->items[i], *val = root->items[i + 1];
        if (key->kind != PV_STR || val->kind != PV_TENSOR || memchr(key->s, 0, key->s_len))
            continue;
        cv_pkl_tensor *t = NULL;
        for (size_t j = 0; j < out->n_tensors && !t; j++)
            if (strlen(out->tensors[j].name) == key->s_len &&
                memcmp(out->tensors[j].name, key->s, key->s_len) == 0)
                t = &out->tensors[j]; /* a repeated key: the last value wins, as in Python */
        if (t) {
            free(t->name);
            free(t->storage_key);
        } else {
            t = &out->tensors[out->n_tensors++];
        }
        *t = val->t;
        t->dtype = val->storage->dtype;
        t->storage_numel = (uint64_t)val->storage->i;
        t->name = pk_strdup(key->s, key->s_len);
        t->storage_key = pk_strdup(val->storage->s, val->storage->s_len);
        if (!t->name || !t->storage_key) return cv_errorf(k->err, "%s: out of memory", k->what);
    }
    return 0;
}

void cv_pkl_free(cv_pkl_state *s)
{
    for (size_t i = 0; s->tensors && i < s->n_tensors; i++) {
        free(s->tensors[i].name);
        free(s->tensors[i].storage_key);
    }
    free(s->tensors);
    memset(s, 0, sizeof *s);
}

int cv_pkl_load(const uint8_t *p, size_t n, const char *what, cv_pkl_state *out, cv_error *err)
{
    memset(out, 0, sizeof *out);
    pk k = {.p = p, .n = n, .what = what, .err = err};
    bool stop = false;
    int rc = 0;
    while (!rc && !stop)
        rc = pk_step(&k, &stop);
    if (!rc) {
        if (k.sp != 1 || k.stack[0]->kind == PV_MARK)
            rc = pk_fail(&k, "STOP with other than one value on the stack");
        else
            rc = pk_collect(&k, k.stack[0], out);
    }
    for (size_t i = 0; i < k.n_all; i++) {
        free(k.all[i]->items);
        free(k.all[i]);
    }
    free(k.all);
    free(k.stack);
    free(k.memo);
    if (rc) cv_pkl_free(out);
    return rc ? -1 : 0;
}

/*
 * gguf.c - GGUF v3: the writer (metadata, tensor infos, aligned data, streamed into one atomic file) and a
 * bounded reader of a file held in memory.
 *
 * defines: lt_gguf_writer_*, lt_gguf_set_*, lt_gguf_add_tensor, lt_gguf_write, lt_gguf_parse,
 *          lt_gguf_file_free, lt_gguf_find_kv, lt_gguf_find_tensor, lt_ggml_type_name, lt_ggml_nbytes,
 *          lt_ggml_from_f32, lt_ggml_to_f32
 *
 * The byte layout is docs/spec/gguf.md (checked against ggml/src/gguf.cpp and gguf-py of the pinned
 * llama.cpp). Everything is little-endian; this file assumes a little-endian host (as ggml does).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "formats/gguf.h"

/* ---- tensor types ------------------------------------------------------------------------------- */

const char *lt_ggml_type_name(int type) {
    switch (type) {
    case LT_GGML_F32: return "F32";
    case LT_GGML_F16: return "F16";
    case LT_GGML_Q8_0: return "Q8_0";
    case LT_GGML_BF16: return "BF16";
    default: return "?";
    }
}

uint64_t lt_ggml_nbytes(int type, uint64_t n) {
    switch (type) {
    case LT_GGML_F32: return 4 * n;
    case LT_GGML_F16:
    case LT_GGML_BF16: return 2 * n;
    case LT_GGML_Q8_0: return n / LT_Q8_0_BLOCK * (2 + LT_Q8_0_BLOCK);
    default: return 0;
    }
}

void lt_ggml_from_f32(int type, const float *src, void *dst, size_t n) {
    uint8_t *d = dst;
    switch (type) {
    case LT_GGML_F32: memcpy(dst, src, n * sizeof(float)); break;
    case LT_GGML_F16:
        for (size_t i = 0; i < n; i++) {
            const uint16_t h = lt_f32_to_f16(src[i]);
            memcpy(d + 2 * i, &h, 2);
        }
        break;
    case LT_GGML_BF16:
        for (size_t i = 0; i < n; i++) {
            const uint16_t h = lt_f32_to_bf16(src[i]);
            memcpy(d + 2 * i, &h, 2);
        }
        break;
    case LT_GGML_Q8_0: /* ggml's quantize_row_q8_0_ref: d = amax / 127 (stored as f16), q = roundf(x / d) */
        for (size_t b = 0; b < n / LT_Q8_0_BLOCK; b++, d += 2 + LT_Q8_0_BLOCK) {
            const float *x = src + b * LT_Q8_0_BLOCK;
            float amax = 0.0f;
            for (int j = 0; j < LT_Q8_0_BLOCK; j++) amax = fmaxf(amax, fabsf(x[j]));
            const float scale = amax / 127.0f, id = scale != 0.0f ? 1.0f / scale : 0.0f;
            const uint16_t h = lt_f32_to_f16(scale);
            memcpy(d, &h, 2);
            for (int j = 0; j < LT_Q8_0_BLOCK; j++) d[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
        }
        break;
    default: break;
    }
}

int lt_ggml_to_f32(int type, const void *src, float *dst, size_t n) {
    const uint8_t *s = src;
    switch (type) {
    case LT_GGML_F32: memcpy(dst, src, n * sizeof(float)); return 0;
    case LT_GGML_F16: return lt_convert_to_f32(dst, src, LT_DT_F16, n);
    case LT_GGML_BF16: return lt_convert_to_f32(dst, src, LT_DT_BF16, n);
    case LT_GGML_Q8_0:
        for (size_t b = 0; b < n / LT_Q8_0_BLOCK; b++, s += 2 + LT_Q8_0_BLOCK) {
            uint16_t h;
            memcpy(&h, s, 2);
            const float scale = lt_f16_to_f32(h);
            for (int j = 0; j < LT_Q8_0_BLOCK; j++) dst[b * LT_Q8_0_BLOCK + j] = scale * (float)(int8_t)s[2 + j];
        }
        return 0;
    default: return -1;
    }
}

/* ---- writing ------------------------------------------------------------------------------------ */

typedef struct wtensor {
    char *name;
    int n_dims;
    uint64_t ne[LT_GGUF_MAX_DIMS]; /* ggml order */
    int type;
    uint64_t numel, nbytes, offset;
} wtensor;

struct lt_gguf_writer {
    uint8_t *kv; /* serialized metadata */
    size_t kv_n, kv_cap;
    char **keys;
    int64_t n_kv;
    wtensor *t;
    int64_t n_t, cap_t;
    uint64_t data_bytes; /* the data section, aligned */
};

lt_gguf_writer *lt_gguf_writer_new(void) { return calloc(1, sizeof(lt_gguf_writer)); }

void lt_gguf_writer_free(lt_gguf_writer *w) {
    if (!w) return;
    for (int64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    for (int64_t i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->keys);
    free(w->t);
    free(w->kv);
    free(w);
}

static int put(lt_gguf_writer *w, const void *p, size_t n) {
    if (w->kv_n + n > w->kv_cap) {
        size_t cap = w->kv_cap ? 2 * w->kv_cap : 4096;
        while (cap < w->kv_n + n) cap *= 2;
        uint8_t *q = realloc(w->kv, cap);
        if (!q) return -1;
        w->kv = q;
        w->kv_cap = cap;
    }
    memcpy(w->kv + w->kv_n, p, n);
    w->kv_n += n;
    return 0;
}
static int put_u32(lt_gguf_writer *w, uint32_t v) { return put(w, &v, 4); }
static int put_u64(lt_gguf_writer *w, uint64_t v) { return put(w, &v, 8); }
static int put_str(lt_gguf_writer *w, const char *s) {
    const uint64_t n = strlen(s);
    return put_u64(w, n) || put(w, s, n);
}

/* A new key: unique, then (key, type) serialized. On failure the metadata is left as it was. */
static lt_status begin_kv(lt_gguf_writer *w, const char *key, lt_gguf_type type, size_t *mark, lt_error *err) {
    if (!w || !key) return lt_fail(err, LT_ERR_ARGUMENT, "gguf: NULL writer or key");
    for (int64_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->keys[i], key)) return lt_fail(err, LT_ERR_ARGUMENT, "gguf: metadata key %s set twice", key);
    *mark = w->kv_n;
    if (put_str(w, key) || put_u32(w, (uint32_t)type)) {
        w->kv_n = *mark;
        return lt_fail(err, LT_ERR_NOMEM, "gguf: out of memory");
    }
    return LT_OK;
}
static lt_status end_kv(lt_gguf_writer *w, const char *key, int failed, size_t mark, lt_error *err) {
    char **k = failed ? NULL : realloc(w->keys, (size_t)(w->n_kv + 1) * sizeof *k);
    char *dup = k ? strdup(key) : NULL;
    if (!dup) {
        if (k) w->keys = k;
        w->kv_n = mark;
        return lt_fail(err, LT_ERR_NOMEM, "gguf: out of memory");
    }
    w->keys = k;
    w->keys[w->n_kv++] = dup;
    return LT_OK;
}

static lt_status set_scalar(lt_gguf_writer *w, const char *key, lt_gguf_type type, const void *v, size_t n,
                            lt_error *err) {
    size_t mark;
    lt_status st = begin_kv(w, key, type, &mark, err);
    return st != LT_OK ? st : end_kv(w, key, put(w, v, n), mark, err);
}
lt_status lt_gguf_set_u32(lt_gguf_writer *w, const char *key, uint32_t v, lt_error *err) {
    return set_scalar(w, key, LT_GGUF_U32, &v, 4, err);
}
lt_status lt_gguf_set_i32(lt_gguf_writer *w, const char *key, int32_t v, lt_error *err) {
    return set_scalar(w, key, LT_GGUF_I32, &v, 4, err);
}
lt_status lt_gguf_set_f32(lt_gguf_writer *w, const char *key, float v, lt_error *err) {
    return set_scalar(w, key, LT_GGUF_F32, &v, 4, err);
}
lt_status lt_gguf_set_bool(lt_gguf_writer *w, const char *key, int v, lt_error *err) {
    const uint8_t b = v != 0;
    return set_scalar(w, key, LT_GGUF_BOOL, &b, 1, err);
}
lt_status lt_gguf_set_str(lt_gguf_writer *w, const char *key, const char *v, lt_error *err) {
    if (!v) return lt_fail(err, LT_ERR_ARGUMENT, "gguf: NULL value for %s", key ? key : "?");
    size_t mark;
    lt_status st = begin_kv(w, key, LT_GGUF_STRING, &mark, err);
    return st != LT_OK ? st : end_kv(w, key, put_str(w, v), mark, err);
}
lt_status lt_gguf_set_arr_str(lt_gguf_writer *w, const char *key, const char *const *v, size_t n, lt_error *err) {
    size_t mark;
    lt_status st = begin_kv(w, key, LT_GGUF_ARRAY, &mark, err);
    if (st != LT_OK) return st;
    int bad = put_u32(w, LT_GGUF_STRING) || put_u64(w, n);
    for (size_t i = 0; i < n && !bad; i++) bad = put_str(w, v[i] ? v[i] : "");
    return end_kv(w, key, bad, mark, err);
}

static size_t scalar_size(lt_gguf_type t) {
    switch (t) {
    case LT_GGUF_U8:
    case LT_GGUF_I8:
    case LT_GGUF_BOOL: return 1;
    case LT_GGUF_U16:
    case LT_GGUF_I16: return 2;
    case LT_GGUF_U32:
    case LT_GGUF_I32:
    case LT_GGUF_F32: return 4;
    case LT_GGUF_U64:
    case LT_GGUF_I64:
    case LT_GGUF_F64: return 8;
    default: return 0; /* string, array */
    }
}

lt_status lt_gguf_set_arr(lt_gguf_writer *w, const char *key, lt_gguf_type elem, const void *v, size_t n,
                          lt_error *err) {
    const size_t es = scalar_size(elem);
    if (!es) return lt_fail(err, LT_ERR_ARGUMENT, "gguf: %s: an array of type %d is not a scalar array", key, elem);
    size_t mark;
    lt_status st = begin_kv(w, key, LT_GGUF_ARRAY, &mark, err);
    if (st != LT_OK) return st;
    return end_kv(w, key, put_u32(w, elem) || put_u64(w, n) || put(w, v, n * es), mark, err);
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

lt_status lt_gguf_add_tensor(lt_gguf_writer *w, const char *name, int ndim, const int64_t *shape, lt_ggml_type type,
                             lt_error *err) {
    if (!w || !name || !shape || ndim < 1 || ndim > LT_GGUF_MAX_DIMS)
        return lt_fail(err, LT_ERR_ARGUMENT, "gguf: tensor %s: bad arguments (ndim %d)", name ? name : "?", ndim);
    for (int64_t i = 0; i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name)) return lt_fail(err, LT_ERR_ARGUMENT, "gguf: tensor %s added twice", name);
    wtensor t = {.n_dims = ndim, .type = type, .numel = 1};
    for (int d = 0; d < ndim; d++) {
        if (shape[d] <= 0)
            return lt_fail(err, LT_ERR_SHAPE, "gguf: tensor %s has a dimension %lld", name, (long long)shape[d]);
        t.ne[d] = (uint64_t)shape[ndim - 1 - d]; /* PyTorch's last dimension is ggml's ne[0] */
        t.numel *= (uint64_t)shape[d];
    }
    if (type == LT_GGML_Q8_0 && t.ne[0] % LT_Q8_0_BLOCK)
        return lt_fail(err, LT_ERR_SHAPE, "gguf: tensor %s: Q8_0 needs rows of a multiple of 32 values, not %llu", name,
                       (unsigned long long)t.ne[0]);
    if (!(t.nbytes = lt_ggml_nbytes(type, t.numel))) return lt_fail(err, LT_ERR_DTYPE, "gguf: tensor type %d", type);
    if (w->n_t == w->cap_t) {
        int64_t cap = w->cap_t ? 2 * w->cap_t : 64;
        wtensor *q = realloc(w->t, (size_t)cap * sizeof *q);
        if (!q) return lt_fail(err, LT_ERR_NOMEM, "gguf: out of memory");
        w->t = q;
        w->cap_t = cap;
    }
    if (!(t.name = strdup(name))) return lt_fail(err, LT_ERR_NOMEM, "gguf: out of memory");
    t.offset = w->data_bytes;
    w->data_bytes = align_up(t.offset + t.nbytes, LT_GGUF_ALIGNMENT);
    w->t[w->n_t++] = t;
    return LT_OK;
}

lt_status lt_gguf_write(lt_gguf_writer *w, const char *path, lt_gguf_fill_fn fill, void *user, lt_error *err) {
    if (!w || !path || (w->n_t && !fill)) return lt_fail(err, LT_ERR_ARGUMENT, "gguf: NULL writer, path or fill");
    /* header + metadata + tensor infos, in one buffer: the metadata bytes followed by the infos */
    const size_t kv_end = w->kv_n;
    int bad = 0;
    for (int64_t i = 0; i < w->n_t && !bad; i++) {
        const wtensor *t = &w->t[i];
        bad = put_str(w, t->name) || put_u32(w, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims && !bad; d++) bad = put_u64(w, t->ne[d]);
        bad = bad || put_u32(w, (uint32_t)t->type) || put_u64(w, t->offset);
    }
    uint8_t head[24] = {'G', 'G', 'U', 'F'};
    const uint32_t version = LT_GGUF_VERSION;
    const uint64_t nt = (uint64_t)w->n_t, nkv = (uint64_t)w->n_kv;
    memcpy(head + 4, &version, 4);
    memcpy(head + 8, &nt, 8);
    memcpy(head + 16, &nkv, 8);
    const uint64_t meta = sizeof head + w->kv_n, pad = align_up(meta, LT_GGUF_ALIGNMENT) - meta;
    size_t max_bytes = 0, max_numel = 0;
    for (int64_t i = 0; i < w->n_t; i++) {
        if (w->t[i].nbytes > max_bytes) max_bytes = w->t[i].nbytes;
        if (w->t[i].numel > max_numel) max_numel = w->t[i].numel;
    }
    float *f = bad ? NULL : malloc(max_numel * sizeof *f + 1);
    uint8_t *conv = f ? malloc(max_bytes + LT_GGUF_ALIGNMENT) : NULL;
    lt_status st = LT_OK;
    if (!conv) {
        w->kv_n = kv_end;
        free(f);
        return lt_fail(err, LT_ERR_NOMEM, "gguf: out of memory writing %s", path);
    }
    lt_atomic_file af;
    st = lt_atomic_open(&af, path, err);
    static const uint8_t zeros[LT_GGUF_ALIGNMENT];
    if (st == LT_OK) st = lt_atomic_write(&af, head, sizeof head, err);
    if (st == LT_OK) st = lt_atomic_write(&af, w->kv, w->kv_n, err);
    if (st == LT_OK) st = lt_atomic_write(&af, zeros, pad, err);
    for (int64_t i = 0; i < w->n_t && st == LT_OK; i++) {
        const wtensor *t = &w->t[i];
        st = fill(user, (int)i, f, t->numel, err);
        if (st != LT_OK) {
            lt_atomic_abort(&af);
            break;
        }
        lt_ggml_from_f32(t->type, f, conv, t->numel);
        const uint64_t end = i + 1 < w->n_t ? w->t[i + 1].offset : w->data_bytes;
        memset(conv + t->nbytes, 0, end - t->offset - t->nbytes);
        st = lt_atomic_write(&af, conv, end - t->offset, err);
    }
    if (st == LT_OK) st = lt_atomic_commit(&af, err);
    w->kv_n = kv_end; /* the infos were appended for this write only */
    free(f);
    free(conv);
    return st;
}

/* ---- reading ------------------------------------------------------------------------------------ */

typedef struct cursor {
    const uint8_t *p;
    size_t n, off;
    lt_error *err;
} cursor;

static lt_status need(cursor *c, uint64_t k, const char *what) {
    if (k > c->n - c->off)
        return lt_fail(c->err, LT_ERR_TRUNCATED, "gguf: the file ends inside %s (offset %zu, %llu bytes needed)", what,
                       c->off, (unsigned long long)k);
    return LT_OK;
}
static lt_status get(cursor *c, void *dst, size_t k, const char *what) {
    lt_status st = need(c, k, what);
    if (st == LT_OK) {
        memcpy(dst, c->p + c->off, k);
        c->off += k;
    }
    return st;
}
/* a string: u64 length, then the bytes; *s points into the buffer */
static lt_status get_str(cursor *c, const uint8_t **s, uint64_t *len, const char *what) {
    lt_status st = get(c, len, 8, what);
    if (st == LT_OK) st = need(c, *len, what);
    if (st == LT_OK) {
        *s = c->p + c->off;
        c->off += *len;
    }
    return st;
}

/* A bump allocator for the reader's copies, sized by a first pass (so nothing is allocated for a count
 * that the buffer cannot hold: every count is bounded by the bytes left before it is used). */
typedef struct arena {
    uint8_t *p;
    size_t n, off;
} arena;
static void *take(arena *a, size_t k) {
    k = (k + 7) & ~(size_t)7;
    if (k > a->n - a->off) return NULL;
    void *r = a->p + a->off;
    a->off += k;
    return r;
}
static char *take_str(arena *a, const uint8_t *s, uint64_t len) {
    char *r = take(a, (size_t)len + 1);
    if (r) {
        memcpy(r, s, (size_t)len);
        r[len] = 0;
    }
    return r;
}

/* One pass over the file: with a == NULL it validates and counts the bytes of copies (*need_bytes);
 * with an arena it fills f. */
static lt_status walk(cursor *c, lt_gguf_file *f, arena *a, size_t *need_bytes) {
    uint8_t magic[4];
    uint32_t version;
    uint64_t nt, nkv;
    size_t bytes = 0;
    lt_status st = get(c, magic, 4, "the magic");
    if (st != LT_OK) return st;
    if (memcmp(magic, "GGUF", 4)) return lt_fail(c->err, LT_ERR_FORMAT, "gguf: not a GGUF file (bad magic)");
    if ((st = get(c, &version, 4, "the version")) != LT_OK) return st;
    if (version != 2 && version != 3)
        return lt_fail(c->err, LT_ERR_FORMAT, "gguf: version %u is not supported (2 and 3 are)", version);
    if ((st = get(c, &nt, 8, "the tensor count")) != LT_OK || (st = get(c, &nkv, 8, "the metadata count")) != LT_OK)
        return st;
    /* every metadata entry takes at least 12 bytes and every tensor info at least 24: bound the counts */
    if (nkv > (c->n - c->off) / 12 || nt > (c->n - c->off) / 24)
        return lt_fail(c->err, LT_ERR_TRUNCATED, "gguf: %llu metadata entries and %llu tensors cannot fit in %zu bytes",
                       (unsigned long long)nkv, (unsigned long long)nt, c->n);
    f->version = version;
    f->n_kv = (int64_t)nkv;
    f->n_tensors = (int64_t)nt;
    f->alignment = LT_GGUF_ALIGNMENT;
    bytes += nkv * sizeof(lt_gguf_kv) + nt * sizeof(lt_gguf_tensor) + 16;
    if (a && (!(f->kv = take(a, nkv * sizeof *f->kv)) || !(f->tensors = take(a, nt * sizeof *f->tensors))))
        return lt_fail(c->err, LT_ERR_INTERNAL, "gguf: arena too small");
    for (uint64_t i = 0; i < nkv; i++) {
        const uint8_t *ks;
        uint64_t klen;
        uint32_t type, elem = 0;
        uint64_t count = 1;
        if ((st = get_str(c, &ks, &klen, "a metadata key")) != LT_OK) return st;
        if ((st = get(c, &type, 4, "a metadata type")) != LT_OK) return st;
        if (type >= LT_GGUF_TYPE_COUNT) return lt_fail(c->err, LT_ERR_FORMAT, "gguf: metadata value type %u", type);
        if (type == LT_GGUF_ARRAY) {
            if ((st = get(c, &elem, 4, "an array type")) != LT_OK ||
                (st = get(c, &count, 8, "an array count")) != LT_OK)
                return st;
            if (elem >= LT_GGUF_TYPE_COUNT || elem == LT_GGUF_ARRAY)
                return lt_fail(c->err, LT_ERR_FORMAT, "gguf: metadata %.*s: array element type %u is not supported",
                               (int)(klen < 200 ? klen : 200), (const char *)ks, elem);
        } else {
            elem = type;
        }
        const size_t es = scalar_size((lt_gguf_type)elem);
        lt_gguf_kv *kv = a ? &f->kv[i] : NULL;
        bytes += klen + 16;
        if (kv) {
            kv->key = take_str(a, ks, klen);
            kv->type = (lt_gguf_type)type;
            kv->elem = (lt_gguf_type)elem;
            kv->n = count;
        }
        if (elem == LT_GGUF_STRING) {
            if (count > (c->n - c->off) / 8) return need(c, count * 8, "a string array");
            bytes += count * (sizeof(char *) + sizeof(uint64_t)) + 16;
            if (kv && (!(kv->strs = take(a, count * sizeof(char *))) || !(kv->str_lens = take(a, count * 8))))
                return lt_fail(c->err, LT_ERR_INTERNAL, "gguf: arena too small");
            for (uint64_t j = 0; j < count; j++) {
                const uint8_t *s;
                uint64_t len;
                if ((st = get_str(c, &s, &len, "a metadata string")) != LT_OK) return st;
                bytes += len + 8;
                if (kv) {
                    ((const char **)kv->strs)[j] = take_str(a, s, len);
                    ((uint64_t *)kv->str_lens)[j] = len;
                }
            }
        } else {
            if (count > (c->n - c->off) / es) return need(c, count * es, "a metadata array");
            if (kv) kv->data = c->p + c->off;
            c->off += count * es;
        }
        if (kv && type == LT_GGUF_U32 && !strcmp(kv->key, "general.alignment")) {
            uint32_t al;
            memcpy(&al, kv->data, 4);
            if (al == 0 || (al & (al - 1))) return lt_fail(c->err, LT_ERR_FORMAT, "gguf: general.alignment %u", al);
            f->alignment = al;
        }
    }
    for (uint64_t i = 0; i < nt; i++) {
        const uint8_t *ns;
        uint64_t nlen;
        uint32_t nd, type;
        uint64_t ne[LT_GGUF_MAX_DIMS] = {1, 1, 1, 1}, off, numel = 1;
        if ((st = get_str(c, &ns, &nlen, "a tensor name")) != LT_OK) return st;
        if ((st = get(c, &nd, 4, "a tensor's dimension count")) != LT_OK) return st;
        if (nd < 1 || nd > LT_GGUF_MAX_DIMS)
            return lt_fail(c->err, LT_ERR_FORMAT, "gguf: a tensor with %u dimensions", nd);
        for (uint32_t d = 0; d < nd; d++) {
            if ((st = get(c, &ne[d], 8, "a tensor shape")) != LT_OK) return st;
            if (ne[d] == 0 || ne[d] > INT64_MAX || lt_mul_overflow_u64(numel, ne[d], &numel))
                return lt_fail(c->err, LT_ERR_FORMAT, "gguf: tensor %.*s has a bad shape",
                               (int)(nlen < 200 ? nlen : 200), (const char *)ns);
        }
        if ((st = get(c, &type, 4, "a tensor type")) != LT_OK || (st = get(c, &off, 8, "a tensor offset")) != LT_OK)
            return st;
        bytes += nlen + 16;
        if (!a) continue;
        lt_gguf_tensor *t = &f->tensors[i];
        t->name = take_str(a, ns, nlen);
        t->n_dims = (int)nd;
        for (int d = 0; d < LT_GGUF_MAX_DIMS; d++) t->ne[d] = (int64_t)ne[d];
        t->type = (int)type;
        t->offset = off;
        if ((type == LT_GGML_Q8_0 && ne[0] % LT_Q8_0_BLOCK) || numel > UINT64_MAX / 4 ||
            !(t->nbytes = lt_ggml_nbytes((int)type, numel)))
            return lt_fail(c->err, LT_ERR_DTYPE, "gguf: tensor %s: type %u (%s) with ne[0] = %llu is not supported",
                           t->name, type, lt_ggml_type_name((int)type), (unsigned long long)ne[0]);
        if (off % f->alignment)
            return lt_fail(c->err, LT_ERR_FORMAT, "gguf: tensor %s: offset %llu is not a multiple of %llu", t->name,
                           (unsigned long long)off, (unsigned long long)f->alignment);
    }
    f->data_offset = align_up(c->off, f->alignment);
    if (a)
        for (int64_t i = 0; i < f->n_tensors; i++) { /* inside the buffer */
            lt_gguf_tensor *t = &f->tensors[i];
            if (f->data_offset > c->n || t->offset > c->n - f->data_offset ||
                t->nbytes > c->n - f->data_offset - t->offset)
                return lt_fail(c->err, LT_ERR_TRUNCATED, "gguf: tensor %s lies outside the file", t->name);
            t->data = c->p + f->data_offset + t->offset;
        }
    if (need_bytes) *need_bytes = bytes;
    return LT_OK;
}

/* Unique keys and tensor names, tensors that do not overlap: sorted copies, O(n log n) on any input. */
static int cmp_kv(const void *x, const void *y) {
    return strcmp((*(const lt_gguf_kv *const *)x)->key, (*(const lt_gguf_kv *const *)y)->key);
}
static int cmp_name(const void *x, const void *y) {
    return strcmp((*(const lt_gguf_tensor *const *)x)->name, (*(const lt_gguf_tensor *const *)y)->name);
}
static int cmp_off(const void *x, const void *y) {
    const uint64_t a = (*(const lt_gguf_tensor *const *)x)->offset, b = (*(const lt_gguf_tensor *const *)y)->offset;
    return a < b ? -1 : a > b;
}
static lt_status check_unique(const lt_gguf_file *f, lt_error *err) {
    const size_t n = (size_t)(f->n_kv > f->n_tensors ? f->n_kv : f->n_tensors);
    const void **v = malloc((n ? n : 1) * sizeof *v);
    if (!v) return lt_fail(err, LT_ERR_NOMEM, "gguf: out of memory");
    lt_status st = LT_OK;
    for (int64_t i = 0; i < f->n_kv; i++) v[i] = &f->kv[i];
    qsort(v, (size_t)f->n_kv, sizeof *v, cmp_kv);
    for (int64_t i = 1; i < f->n_kv && st == LT_OK; i++)
        if (!cmp_kv(&v[i - 1], &v[i]))
            st = lt_fail(err, LT_ERR_FORMAT, "gguf: metadata key %s appears twice", ((const lt_gguf_kv *)v[i])->key);
    for (int64_t i = 0; i < f->n_tensors; i++) v[i] = &f->tensors[i];
    qsort(v, (size_t)f->n_tensors, sizeof *v, cmp_name);
    for (int64_t i = 1; i < f->n_tensors && st == LT_OK; i++)
        if (!cmp_name(&v[i - 1], &v[i]))
            st = lt_fail(err, LT_ERR_FORMAT, "gguf: tensor %s appears twice", ((const lt_gguf_tensor *)v[i])->name);
    qsort(v, (size_t)f->n_tensors, sizeof *v, cmp_off);
    for (int64_t i = 1; i < f->n_tensors && st == LT_OK; i++) {
        const lt_gguf_tensor *p = v[i - 1], *t = v[i];
        if (t->offset < p->offset + p->nbytes)
            st = lt_fail(err, LT_ERR_FORMAT, "gguf: tensors %s and %s overlap", p->name, t->name);
    }
    free(v);
    return st;
}

lt_status lt_gguf_parse(const void *buf, size_t len, lt_gguf_file **out, lt_error *err) {
    if (!out || (!buf && len)) return lt_fail(err, LT_ERR_ARGUMENT, "lt_gguf_parse: NULL argument");
    *out = NULL;
    lt_gguf_file probe = {0};
    cursor c = {buf, len, 0, err};
    size_t bytes = 0;
    lt_status st = walk(&c, &probe, NULL, &bytes);
    if (st != LT_OK) return st;
    lt_gguf_file *f = calloc(1, sizeof *f);
    arena a = {malloc(bytes), bytes, 0};
    if (!f || !a.p) {
        free(f);
        free(a.p);
        return lt_fail(err, LT_ERR_NOMEM, "gguf: out of memory reading %zu bytes of metadata", bytes);
    }
    memset(a.p, 0, bytes);
    f->arena = a.p;
    c.off = 0;
    st = walk(&c, f, &a, NULL);
    if (st == LT_OK) st = check_unique(f, err);
    if (st != LT_OK) {
        lt_gguf_file_free(f);
        return st;
    }
    *out = f;
    return LT_OK;
}

void lt_gguf_file_free(lt_gguf_file *f) {
    if (!f) return;
    free(f->arena);
    free(f);
}

const lt_gguf_kv *lt_gguf_find_kv(const lt_gguf_file *f, const char *key) {
    for (int64_t i = 0; f && i < f->n_kv; i++)
        if (!strcmp(f->kv[i].key, key)) return &f->kv[i];
    return NULL;
}

const lt_gguf_tensor *lt_gguf_find_tensor(const lt_gguf_file *f, const char *name) {
    for (int64_t i = 0; f && i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

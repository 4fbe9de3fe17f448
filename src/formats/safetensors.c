/*
 * safetensors.c - safetensors reader (validating), model-directory sets (sharded or not), writers.
 * defines: everything declared in safetensors.h
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <jansson.h>

#include "formats/safetensors.h"

#define ST_INDEX_NAME "model.safetensors.index.json"
#define ST_SINGLE_NAME "model.safetensors"
#define ST_IO_CHUNK ((size_t)1 << 30)

/* ---- small helpers ----------------------------------------------------------------------------- */

static char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* Join dir/name into a malloc'd string. */
static char *path_join_alloc(const char *dir, const char *name) {
    size_t len = strlen(dir) + strlen(name) + 2;
    char *p = malloc(len);
    if (p && lt_path_join(p, len, dir, name) != 0) {
        free(p);
        p = NULL;
    }
    return p;
}

static int pread_all(int fd, void *buf, size_t n, uint64_t off) {
    unsigned char *p = (unsigned char *)buf;
    while (n > 0) {
        size_t chunk = n > ST_IO_CHUNK ? ST_IO_CHUNK : n;
        ssize_t r = pread(fd, p, chunk, (off_t)off);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) {
            errno = EIO; /* the file shrank under us */
            return -1;
        }
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const lt_st_tensor *)a)->name, ((const lt_st_tensor *)b)->name);
}

/* numel of a shape with checked multiplication; -1 on overflow past INT64_MAX. */
static int checked_numel(const int64_t *shape, int ndim, int64_t *out) {
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (lt_mul_overflow_u64(n, (uint64_t)shape[i], &n)) return -1;
    }
    if (n > (uint64_t)INT64_MAX) return -1;
    *out = (int64_t)n;
    return 0;
}

/* ---- one file ---------------------------------------------------------------------------------- */

struct lt_st_file {
    char *path;
    void *map; /* the whole file (use_mmap) */
    size_t map_len;
    int fd;    /* use_mmap: the file, kept open for lt_st_reader; else -1 */
    void *buf; /* the data buffer (no mmap) */
    int n;
    lt_st_tensor *tensors; /* sorted by name */
    void **owned;          /* per tensor: an aligned private copy, or NULL */
    int n_meta;
    char **meta; /* key0, value0, key1, value1, ... */
};

/* Scratch per entry while validating. */
typedef struct st_entry_info {
    const char *name;
    uint64_t begin, end;
} st_entry_info;

static int cmp_entry_offsets(const void *a, const void *b) {
    const st_entry_info *x = (const st_entry_info *)a, *y = (const st_entry_info *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

void lt_st_close(lt_st_file *f) {
    if (!f) return;
    if (f->tensors) {
        for (int i = 0; i < f->n; i++) {
            free((char *)f->tensors[i].name);
            if (f->owned) free(f->owned[i]);
        }
    }
    free(f->tensors);
    free(f->owned);
    if (f->meta) {
        for (int i = 0; i < 2 * f->n_meta; i++) free(f->meta[i]);
    }
    free(f->meta);
    if (f->map) munmap(f->map, f->map_len);
    if (f->fd >= 0) close(f->fd);
    free(f->buf);
    free(f->path);
    free(f);
}

const char *lt_st_path(const lt_st_file *f) { return f ? f->path : NULL; }
int lt_st_count(const lt_st_file *f) { return f ? f->n : 0; }
const lt_st_tensor *lt_st_tensors(const lt_st_file *f) { return f ? f->tensors : NULL; }

const lt_st_tensor *lt_st_find(const lt_st_file *f, const char *name) {
    if (!f || !name || f->n == 0) return NULL;
    lt_st_tensor key;
    memset(&key, 0, sizeof key);
    key.name = name;
    return bsearch(&key, f->tensors, (size_t)f->n, sizeof *f->tensors, cmp_tensor_name);
}

const char *lt_st_metadata(const lt_st_file *f, const char *key) {
    if (!f || !key) return NULL;
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta[2 * i], key) == 0) return f->meta[2 * i + 1];
    return NULL;
}

int lt_st_metadata_count(const lt_st_file *f) { return f ? f->n_meta : 0; }

int lt_st_metadata_at(const lt_st_file *f, int i, const char **key, const char **value) {
    if (!f || i < 0 || i >= f->n_meta) return -1;
    if (key) *key = f->meta[2 * i];
    if (value) *value = f->meta[2 * i + 1];
    return 0;
}

static lt_status parse_metadata(lt_st_file *f, json_t *meta, lt_error *err) {
    if (!json_is_object(meta)) return lt_fail(err, LT_ERR_FORMAT, "%s: \"__metadata__\" is not a JSON object", f->path);
    size_t n = json_object_size(meta);
    f->meta = calloc(2 * n + 1, sizeof *f->meta);
    if (!f->meta) return lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", f->path);
    const char *key;
    json_t *val;
    json_object_foreach(meta, key, val) {
        if (!json_is_string(val))
            return lt_fail(err, LT_ERR_FORMAT, "%s: \"__metadata__\" value of \"%s\" is not a string", f->path, key);
        char *k = xstrdup(key), *v = xstrdup(json_string_value(val));
        if (!k || !v) {
            free(k);
            free(v);
            return lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", f->path);
        }
        f->meta[2 * f->n_meta] = k;
        f->meta[2 * f->n_meta + 1] = v;
        f->n_meta++;
    }
    return LT_OK;
}

/* Fill t (name already set) and info from one header entry. */
static lt_status parse_entry(const char *path, const char *name, json_t *v, lt_st_tensor *t, st_entry_info *info,
                             lt_error *err) {
    if (!json_is_object(v))
        return lt_fail(err, LT_ERR_FORMAT, "%s: tensor '%s': header entry is not a JSON object", path, name);
    json_t *jd = json_object_get(v, "dtype");
    json_t *js = json_object_get(v, "shape");
    json_t *jo = json_object_get(v, "data_offsets");
    if (!jd || !js || !jo)
        return lt_fail(err, LT_ERR_FORMAT, "%s: tensor '%s': entry lacks \"%s\"", path, name,
                       !jd   ? "dtype"
                       : !js ? "shape"
                             : "data_offsets");
    if (!json_is_string(jd))
        return lt_fail(err, LT_ERR_FORMAT, "%s: tensor '%s': \"dtype\" is not a string", path, name);
    if (lt_dtype_from_name(json_string_value(jd), &t->dtype) != 0)
        return lt_fail(err, LT_ERR_DTYPE, "%s: tensor '%s': unknown dtype '%s'", path, name, json_string_value(jd));

    if (!json_is_array(js))
        return lt_fail(err, LT_ERR_FORMAT, "%s: tensor '%s': \"shape\" is not an array", path, name);
    size_t nd = json_array_size(js);
    if (nd > LT_ST_MAX_DIMS)
        return lt_fail(err, LT_ERR_SHAPE, "%s: tensor '%s': %zu dimensions (at most %d supported)", path, name, nd,
                       LT_ST_MAX_DIMS);
    t->ndim = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d))
            return lt_fail(err, LT_ERR_FORMAT, "%s: tensor '%s': shape[%zu] is not an integer", path, name, i);
        if (json_integer_value(d) < 0)
            return lt_fail(err, LT_ERR_SHAPE, "%s: tensor '%s': shape[%zu] = %lld is negative", path, name, i,
                           (long long)json_integer_value(d));
        t->shape[i] = (int64_t)json_integer_value(d);
    }
    for (size_t i = nd; i < LT_ST_MAX_DIMS; i++) t->shape[i] = 0;

    if (!json_is_array(jo) || json_array_size(jo) != 2 || !json_is_integer(json_array_get(jo, 0)) ||
        !json_is_integer(json_array_get(jo, 1)))
        return lt_fail(err, LT_ERR_FORMAT, "%s: tensor '%s': \"data_offsets\" is not [BEGIN, END]", path, name);
    json_int_t b = json_integer_value(json_array_get(jo, 0));
    json_int_t e = json_integer_value(json_array_get(jo, 1));
    if (b < 0 || e < 0)
        return lt_fail(err, LT_ERR_FORMAT, "%s: tensor '%s': negative data_offsets [%lld, %lld]", path, name,
                       (long long)b, (long long)e);
    if (e < b)
        return lt_fail(err, LT_ERR_FORMAT, "%s: tensor '%s': data_offsets END %lld < BEGIN %lld", path, name,
                       (long long)e, (long long)b);

    uint64_t nbytes;
    if (checked_numel(t->shape, t->ndim, &t->numel) != 0 ||
        lt_mul_overflow_u64((uint64_t)t->numel, lt_dtype_size(t->dtype), &nbytes))
        return lt_fail(err, LT_ERR_SHAPE, "%s: tensor '%s': the byte count of its shape overflows", path, name);
    if ((uint64_t)(e - b) != nbytes)
        return lt_fail(err, LT_ERR_SHAPE,
                       "%s: tensor '%s': data_offsets span %llu bytes but a %s tensor of %lld elements needs %llu",
                       path, name, (unsigned long long)(e - b), lt_dtype_name(t->dtype), (long long)t->numel,
                       (unsigned long long)nbytes);
    t->nbytes = nbytes;
    info->name = name;
    info->begin = (uint64_t)b;
    info->end = (uint64_t)e;
    return LT_OK;
}

/*
 * Parse and validate the header. On success f->tensors[0..n) hold everything but data, offsets[i] is
 * the BEGIN of f->tensors[i] (malloc'd) and *data_size is the length of the data buffer.
 */
static lt_status parse_header(lt_st_file *f, const char *hdr, uint64_t hlen, uint64_t file_size, uint64_t **offsets,
                              uint64_t *data_size, lt_error *err) {
    const char *path = f->path;
    json_error_t jerr;
    json_t *root = json_loadb(hdr, (size_t)hlen, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (json_error_code(&jerr) == json_error_duplicate_key)
            return lt_fail(err, LT_ERR_FORMAT, "%s: header names a tensor twice: %s", path, jerr.text);
        return lt_fail(err, LT_ERR_JSON, "%s: header is not valid JSON: %s (byte %d)", path, jerr.text, jerr.position);
    }
    lt_status st = LT_OK;
    st_entry_info *infos = NULL;
    if (!json_is_object(root)) {
        st = lt_fail(err, LT_ERR_FORMAT, "%s: header is not a JSON object", path);
        goto done;
    }
    if (hdr[0] != '{') {
        st = lt_fail(err, LT_ERR_FORMAT, "%s: header does not start with '{'", path);
        goto done;
    }
    size_t n_keys = json_object_size(root);
    f->tensors = calloc(n_keys + 1, sizeof *f->tensors);
    f->owned = calloc(n_keys + 1, sizeof *f->owned);
    infos = calloc(n_keys + 1, sizeof *infos);
    if (!f->tensors || !f->owned || !infos) {
        st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if ((st = parse_metadata(f, val, err)) != LT_OK) goto done;
            continue;
        }
        lt_st_tensor *t = &f->tensors[f->n];
        if (!(t->name = xstrdup(key))) {
            st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", path);
            goto done;
        }
        f->n++; /* f owns the name from here on */
        if ((st = parse_entry(path, t->name, val, t, &infos[f->n - 1], err)) != LT_OK) goto done;
    }

    /* Sorted by offset, the entries must tile [0, END) exactly. */
    qsort(infos, (size_t)f->n, sizeof *infos, cmp_entry_offsets);
    uint64_t expect = 0;
    for (int i = 0; i < f->n; i++) {
        const st_entry_info *in = &infos[i];
        if (in->begin == expect) {
            expect = in->end;
            continue;
        }
        if (i == 0)
            st = lt_fail(err, LT_ERR_FORMAT,
                         "%s: tensor '%s' comes first in the data buffer but starts at byte %llu, not 0", path,
                         in->name, (unsigned long long)in->begin);
        else if (in->begin > expect)
            st = lt_fail(err, LT_ERR_FORMAT,
                         "%s: hole of %llu bytes in the data buffer between tensor '%s' (ends at %llu) and "
                         "tensor '%s' (starts at %llu)",
                         path, (unsigned long long)(in->begin - expect), infos[i - 1].name, (unsigned long long)expect,
                         in->name, (unsigned long long)in->begin);
        else
            st =
                lt_fail(err, LT_ERR_FORMAT, "%s: tensors '%s' [%llu, %llu) and '%s' [%llu, %llu) overlap", path,
                        infos[i - 1].name, (unsigned long long)infos[i - 1].begin, (unsigned long long)infos[i - 1].end,
                        in->name, (unsigned long long)in->begin, (unsigned long long)in->end);
        goto done;
    }
    const char *last = f->n ? infos[f->n - 1].name : NULL;
    uint64_t need = 8 + hlen + expect; /* hlen <= 1e8 and expect < 2^63: no overflow */
    if (need > file_size) {
        st = lt_fail(err, LT_ERR_TRUNCATED,
                     "%s: truncated: %llu bytes, but the header describes %llu (8 + %llu header + %llu data, "
                     "last tensor '%s')",
                     path, (unsigned long long)file_size, (unsigned long long)need, (unsigned long long)hlen,
                     (unsigned long long)expect, last ? last : "(none)");
        goto done;
    }
    if (need < file_size) {
        st = lt_fail(err, LT_ERR_FORMAT,
                     "%s: %llu unexpected bytes after the data buffer (the header describes %llu of %llu bytes, "
                     "last tensor '%s')",
                     path, (unsigned long long)(file_size - need), (unsigned long long)need,
                     (unsigned long long)file_size, last ? last : "(none)");
        goto done;
    }
    *offsets = calloc((size_t)f->n + 1, sizeof **offsets);
    if (!*offsets) {
        st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    /* the file keeps its tensors sorted by name (for lt_st_find); names are unique */
    qsort(f->tensors, (size_t)f->n, sizeof *f->tensors, cmp_tensor_name);
    for (int i = 0; i < f->n; i++) {
        const lt_st_tensor *t = lt_st_find(f, infos[i].name);
        (*offsets)[t - f->tensors] = infos[i].begin;
    }
    *data_size = expect;
done:
    free(infos);
    json_decref(root);
    return st;
}

lt_status lt_st_open(const char *path, int use_mmap, lt_st_file **out, lt_error *err) {
    if (!path || !out) return lt_fail(err, LT_ERR_ARGUMENT, "lt_st_open: NULL argument");
    *out = NULL;
    lt_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = xstrdup(path))) {
        free(f);
        return lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", path);
    }
    f->fd = -1;
    lt_status st = LT_OK;
    char *hbuf = NULL;
    uint64_t *offsets = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        st = lt_fail(err, LT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st = lt_fail(err, LT_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = lt_fail(err, LT_ERR_IO, "%s: not a regular file", path);
        goto fail;
    }
    uint64_t fsize = (uint64_t)sb.st_size;
    if (fsize < 8) {
        st = lt_fail(err, LT_ERR_TRUNCATED, "%s: truncated: %llu bytes, a safetensors file has at least 8", path,
                     (unsigned long long)fsize);
        goto fail;
    }
    if (use_mmap) {
        if (fsize > (uint64_t)SIZE_MAX) {
            st = lt_fail(err, LT_ERR_IO, "%s: too large to map", path);
            goto fail;
        }
        void *m = mmap(NULL, (size_t)fsize, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            st = lt_fail(err, LT_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
            goto fail;
        }
        f->map = m;
        f->map_len = (size_t)fsize;
    }
    unsigned char lenb[8];
    if (f->map) {
        memcpy(lenb, f->map, 8);
    } else if (pread_all(fd, lenb, 8, 0) != 0) {
        st = lt_fail(err, LT_ERR_IO, "%s: read failed: %s", path, strerror(errno));
        goto fail;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | lenb[i];
    if (hlen > fsize - 8) {
        st = lt_fail(err, LT_ERR_TRUNCATED, "%s: truncated: the header length is %llu bytes but only %llu follow", path,
                     (unsigned long long)hlen, (unsigned long long)(fsize - 8));
        goto fail;
    }
    if (hlen > LT_ST_MAX_HEADER) {
        st = lt_fail(err, LT_ERR_FORMAT, "%s: header length %llu exceeds the limit of %llu bytes", path,
                     (unsigned long long)hlen, (unsigned long long)LT_ST_MAX_HEADER);
        goto fail;
    }
    if (hlen == 0) {
        st = lt_fail(err, LT_ERR_FORMAT, "%s: empty header (a safetensors header is a JSON object)", path);
        goto fail;
    }
    const char *hdr;
    if (f->map) {
        hdr = (const char *)f->map + 8;
    } else {
        if (!(hbuf = malloc((size_t)hlen))) {
            st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory for a %llu-byte header", path, (unsigned long long)hlen);
            goto fail;
        }
        if (pread_all(fd, hbuf, (size_t)hlen, 8) != 0) {
            st = lt_fail(err, LT_ERR_IO, "%s: read failed: %s", path, strerror(errno));
            goto fail;
        }
        hdr = hbuf;
    }
    uint64_t data_size = 0;
    if ((st = parse_header(f, hdr, hlen, fsize, &offsets, &data_size, err)) != LT_OK) goto fail;

    const unsigned char *base;
    if (f->map) {
        base = (const unsigned char *)f->map + 8 + hlen;
    } else {
        if (data_size > (uint64_t)SIZE_MAX - 64 || posix_memalign(&f->buf, 64, (size_t)data_size + 64) != 0) {
            f->buf = NULL;
            st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory reading %llu bytes of tensor data", path,
                         (unsigned long long)data_size);
            goto fail;
        }
        if (pread_all(fd, f->buf, (size_t)data_size, 8 + hlen) != 0) {
            st = lt_fail(err, LT_ERR_IO, "%s: read failed: %s", path, strerror(errno));
            goto fail;
        }
        base = (const unsigned char *)f->buf;
    }
    for (int i = 0; i < f->n; i++) {
        lt_st_tensor *t = &f->tensors[i];
        const unsigned char *p = base + offsets[i];
        size_t align = lt_dtype_size(t->dtype);
        if (((uintptr_t)p % align) != 0) {
            /* misaligned in the file: give this tensor an aligned private copy */
            if (posix_memalign(&f->owned[i], 64, t->nbytes ? (size_t)t->nbytes : 1) != 0) {
                f->owned[i] = NULL;
                st = lt_fail(err, LT_ERR_NOMEM, "%s: tensor '%s': out of memory", path, t->name);
                goto fail;
            }
            memcpy(f->owned[i], p, (size_t)t->nbytes);
            p = (const unsigned char *)f->owned[i];
        }
        t->data = p;
    }
    free(offsets);
    free(hbuf);
    if (f->map) f->fd = fd; /* lt_st_reader reads from it */
    else close(fd);
    *out = f;
    return LT_OK;

fail:
    free(offsets);
    free(hbuf);
    if (fd >= 0) close(fd);
    lt_st_close(f);
    return st;
}

/* ---- a model directory ------------------------------------------------------------------------- */

typedef struct st_set_item {
    const lt_st_tensor *t;
    int file;
} st_set_item;

struct lt_st_set {
    int n_files;
    lt_st_file **files;
    int n;
    st_set_item *items; /* sorted by name */
};

static int cmp_set_item(const void *a, const void *b) {
    const st_set_item *x = (const st_set_item *)a, *y = (const st_set_item *)b;
    return strcmp(x->t->name, y->t->name);
}

static int cmp_set_key(const void *key, const void *item) {
    return strcmp((const char *)key, ((const st_set_item *)item)->t->name);
}

static int cmp_cstr(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

void lt_st_set_close(lt_st_set *set) {
    if (!set) return;
    for (int i = 0; i < set->n_files; i++) lt_st_close(set->files[i]);
    free(set->files);
    free(set->items);
    free(set);
}

static const st_set_item *set_lookup(const lt_st_set *set, const char *name) {
    if (!set || !name || set->n == 0) return NULL;
    return bsearch(name, set->items, (size_t)set->n, sizeof *set->items, cmp_set_key);
}

const lt_st_tensor *lt_st_set_find(const lt_st_set *set, const char *name) {
    const st_set_item *it = set_lookup(set, name);
    return it ? it->t : NULL;
}

const lt_st_file *lt_st_set_file_of(const lt_st_set *set, const char *name) {
    const st_set_item *it = set_lookup(set, name);
    return it ? set->files[it->file] : NULL;
}

int lt_st_set_count(const lt_st_set *set) { return set ? set->n : 0; }

const lt_st_tensor *lt_st_set_tensor_at(const lt_st_set *set, int i) {
    if (!set || i < 0 || i >= set->n) return NULL;
    return set->items[i].t;
}

int lt_st_set_n_files(const lt_st_set *set) { return set ? set->n_files : 0; }

const lt_st_file *lt_st_set_file(const lt_st_set *set, int i) {
    if (!set || i < 0 || i >= set->n_files) return NULL;
    return set->files[i];
}

/* Build the sorted item list of all files; no tensor may be in two files. */
static lt_status set_build_items(lt_st_set *set, lt_error *err) {
    size_t total = 0;
    for (int i = 0; i < set->n_files; i++) total += (size_t)lt_st_count(set->files[i]);
    if (total > (size_t)INT32_MAX) return lt_fail(err, LT_ERR_FORMAT, "too many tensors (%zu)", total);
    set->items = calloc(total + 1, sizeof *set->items);
    if (!set->items) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    for (int i = 0; i < set->n_files; i++) {
        const lt_st_tensor *ts = lt_st_tensors(set->files[i]);
        for (int k = 0; k < lt_st_count(set->files[i]); k++) {
            set->items[set->n].t = &ts[k];
            set->items[set->n].file = i;
            set->n++;
        }
    }
    qsort(set->items, (size_t)set->n, sizeof *set->items, cmp_set_item);
    for (int i = 1; i < set->n; i++) {
        if (strcmp(set->items[i - 1].t->name, set->items[i].t->name) == 0)
            return lt_fail(err, LT_ERR_FORMAT, "tensor '%s' appears in two shards: %s and %s", set->items[i].t->name,
                           lt_st_path(set->files[set->items[i - 1].file]), lt_st_path(set->files[set->items[i].file]));
    }
    return LT_OK;
}

/* A shard name from an index must be a plain file name inside the directory. */
static int shard_name_ok(const char *s) {
    return s[0] != '\0' && strchr(s, '/') == NULL && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static lt_status set_open_index(lt_st_set *set, const char *dir, const char *index_path, int use_mmap, lt_error *err) {
    char *text = NULL;
    size_t len = 0;
    lt_status st = lt_read_file(index_path, &text, &len, err);
    if (st != LT_OK) return st;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root) return lt_fail(err, LT_ERR_JSON, "%s: not valid JSON: %s (line %d)", index_path, jerr.text, jerr.line);
    const char **names = NULL;
    char *shard_path = NULL;
    if (!json_is_object(root)) {
        st = lt_fail(err, LT_ERR_JSON, "%s: not a JSON object", index_path);
        goto done;
    }
    json_t *wm = json_object_get(root, "weight_map");
    if (!wm || json_is_null(wm)) {
        st = lt_fail(err, LT_ERR_MISSING, "%s: no \"weight_map\"", index_path);
        goto done;
    }
    if (!json_is_object(wm)) {
        st = lt_fail(err, LT_ERR_JSON, "%s: \"weight_map\" is not a JSON object", index_path);
        goto done;
    }
    /* the distinct shard names, sorted */
    size_t nw = json_object_size(wm);
    names = calloc(nw + 1, sizeof *names);
    if (!names) {
        st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", index_path);
        goto done;
    }
    size_t nn = 0;
    const char *key;
    json_t *val;
    json_object_foreach(wm, key, val) {
        if (!json_is_string(val)) {
            st = lt_fail(err, LT_ERR_JSON, "%s: weight_map entry for tensor '%s' is not a string", index_path, key);
            goto done;
        }
        const char *s = json_string_value(val);
        if (!shard_name_ok(s)) {
            st = lt_fail(err, LT_ERR_FORMAT, "%s: weight_map names shard '%s' for tensor '%s': not a file name in %s",
                         index_path, s, key, dir);
            goto done;
        }
        names[nn++] = s;
    }
    qsort(names, nn, sizeof *names, cmp_cstr);
    size_t nu = 0;
    for (size_t i = 0; i < nn; i++)
        if (nu == 0 || strcmp(names[nu - 1], names[i]) != 0) names[nu++] = names[i];

    set->files = calloc(nu + 1, sizeof *set->files);
    if (!set->files) {
        st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", index_path);
        goto done;
    }
    for (size_t i = 0; i < nu; i++) {
        if (!(shard_path = path_join_alloc(dir, names[i]))) {
            st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", index_path);
            goto done;
        }
        struct stat sb;
        if (stat(shard_path, &sb) != 0 && errno == ENOENT) {
            /* name one tensor that lives there, for the message */
            const char *who = "?";
            json_object_foreach(wm, key, val) {
                if (strcmp(json_string_value(val), names[i]) == 0) {
                    who = key;
                    break;
                }
            }
            st = lt_fail(err, LT_ERR_MISSING, "%s: shard '%s' (holding tensor '%s' and maybe others) does not exist",
                         index_path, shard_path, who);
            goto done;
        }
        if ((st = lt_st_open(shard_path, use_mmap, &set->files[set->n_files], err)) != LT_OK) goto done;
        set->n_files++;
        free(shard_path);
        shard_path = NULL;
    }
    if ((st = set_build_items(set, err)) != LT_OK) {
        lt_fail_prefix(err, "%s", index_path);
        goto done;
    }
    /* every tensor of the map must be in the shard the map names */
    json_object_foreach(wm, key, val) {
        const char *shard = json_string_value(val);
        const st_set_item *it = set_lookup(set, key);
        if (!it) {
            st = lt_fail(err, LT_ERR_MISSING, "%s: tensor '%s' is not in shard '%s'", index_path, key, shard);
            goto done;
        }
        const char *p = lt_st_path(set->files[it->file]);
        size_t pl = strlen(p), sl = strlen(shard);
        if (pl < sl || strcmp(p + pl - sl, shard) != 0 || (pl > sl && p[pl - sl - 1] != '/')) {
            st = lt_fail(err, LT_ERR_MISSING, "%s: tensor '%s' is not in shard '%s' (it is in %s)", index_path, key,
                         shard, p);
            goto done;
        }
    }
done:
    free(shard_path);
    free(names);
    json_decref(root);
    return st;
}

void lt_st_set_release_pages(const lt_st_set *set) {
    if (!set) return;
    for (int i = 0; i < set->n_files; i++) {
        const lt_st_file *f = set->files[i];
        if (f && f->map) (void)madvise(f->map, f->map_len, MADV_DONTNEED); /* a hint: failure changes nothing */
    }
}

void lt_st_set_advise(const lt_st_set *set, const lt_st_tensor *t, uint64_t off, uint64_t len, int release) {
    if (!set || !t || off >= t->nbytes || !len) return;
    if (len > t->nbytes - off) len = t->nbytes - off;
    const uintptr_t p = (uintptr_t)t->data + off;
    for (int i = 0; i < set->n_files; i++) {
        const lt_st_file *f = set->files[i];
        const uintptr_t m0 = (uintptr_t)f->map, m1 = m0 + f->map_len;
        if (!f->map || p < m0 || p + len > m1) continue; /* not in this mapping (or a private copy) */
        /* whole pages around the range: a page shared with a neighbour is read again from the file
         * if the neighbour needs it (the mapping is read-only, so a dropped page is never lost) */
        const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
        const uintptr_t a = p & ~(pg - 1), b = (p + len + pg - 1) & ~(pg - 1);
        (void)madvise((void *)a, (b < m1 ? b : m1) - a, release ? MADV_DONTNEED : MADV_WILLNEED); /* a hint */
        return;
    }
}

/* ---- reading a set's tensors ahead (the streamed loader) ---------------------------------------- */

/*
 * The pipeline: one thread reads ahead, the caller converts what was read. A tensor's file bytes are read
 * in pieces: the cells [k ST_PIECE, (k + 1) ST_PIECE) of its file, cut to the tensor's bytes widened to
 * whole ST_ALIGN blocks (so O_DIRECT can read them) and to the file's end. lt_st_reader_get gives the
 * caller the piece holding the bytes it asks for and names the next ST_SLOTS - 1 pieces of the same
 * tensor to the thread, which reads them while the caller works on the current one. Each of the
 * ST_SLOTS buffers is owned according to its slot's state, which changes only under the mutex:
 *   FREE     nobody's
 *   WANTED   named for reading; waits for the thread
 *   READING  the thread's: it writes the buffer, holding no lock
 *   READY    read (or failed: err); kept until reclaimed for another piece, the oldest first
 *   HELD     the caller's: the pointer lt_st_reader_get returned stays valid until its next call
 * The thread takes the oldest WANTED slot; the caller never reclaims a READING one. At most one slot is
 * READING (one thread), so a caller always finds a slot to name its piece in.
 */
#define ST_PIECE ((uint64_t)LT_ST_READ_PIECE)
#define ST_SLOTS LT_ST_READ_SLOTS
#define ST_ALIGN 4096 /* O_DIRECT: offset, length and buffer aligned to this */
#define ST_SHORT (-1) /* a slot's err: the file ended early */

enum { ST_FREE, ST_WANTED, ST_READING, ST_READY, ST_HELD };

typedef struct st_slot {
    unsigned char *buf; /* ST_PIECE bytes, ST_ALIGN-aligned */
    int state;          /* ST_FREE .. ST_HELD */
    int file;           /* the piece: bytes [start, end) of set->files[file] */
    uint64_t start, end;
    uint64_t used; /* when last named (the caller's counter; 0: FREE): read and reclaimed oldest first */
    int err;       /* READY: 0, an errno or ST_SHORT */
} st_slot;

struct lt_st_reader {
    const lt_st_set *set;
    int *dfd; /* per file: the file opened with O_DIRECT, or -1 (buffered reads); the thread's after create */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* a slot changed state, or quit: both sides wait on it */
    int quit;
    uint64_t clock; /* counts namings: st_slot.used */
    st_slot *held;  /* the caller's slot, or NULL */
    st_slot slot[ST_SLOTS];
};

/* buf = bytes [start, end) of file fi: its whole ST_ALIGN blocks with O_DIRECT (the device writes into
 * buf: no page-cache pages to fill, copy and drop), the rest (the file's last partial block, or all of it
 * when the file system refuses O_DIRECT: EINVAL, then never again for this file) with a buffered pread
 * whose pages are dropped after. 0, an errno, or ST_SHORT. */
static int read_failed(const lt_st_file *f, uint64_t end) {
    struct stat sb;
    const int e = errno;
    return e == EIO && fstat(f->fd, &sb) == 0 && (uint64_t)sb.st_size < end ? ST_SHORT : e;
}
static int read_piece(lt_st_reader *r, int fi, uint64_t start, uint64_t end, unsigned char *buf) {
    const lt_st_file *f = r->set->files[fi];
    uint64_t done = 0;
    const uint64_t whole = (end - start) & ~(uint64_t)(ST_ALIGN - 1);
    if (r->dfd[fi] >= 0 && whole) {
        if (pread_all(r->dfd[fi], buf, (size_t)whole, start) == 0) {
            done = whole;
        } else if (errno == EINVAL) {
            close(r->dfd[fi]);
            r->dfd[fi] = -1;
        } else {
            return read_failed(f, end);
        }
    }
    if (done == end - start) return 0;
    if (pread_all(f->fd, buf + done, (size_t)(end - start - done), start + done) != 0) return read_failed(f, end);
    (void)posix_fadvise(f->fd, (off_t)(start + done), (off_t)(end - start - done), POSIX_FADV_DONTNEED); /* a hint */
    return 0;
}

static void *reader_main(void *arg) {
    lt_st_reader *r = arg;
    pthread_mutex_lock(&r->mu);
    while (!r->quit) {
        st_slot *s = NULL;
        for (int i = 0; i < ST_SLOTS; i++)
            if (r->slot[i].state == ST_WANTED && (!s || r->slot[i].used < s->used)) s = &r->slot[i];
        if (!s) {
            pthread_cond_wait(&r->cv, &r->mu);
            continue;
        }
        s->state = ST_READING;
        const int fi = s->file;
        const uint64_t a = s->start, b = s->end;
        pthread_mutex_unlock(&r->mu);
        const int e = read_piece(r, fi, a, b, s->buf);
        pthread_mutex_lock(&r->mu);
        s->err = e;
        s->state = ST_READY;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* the reader's buffers, descriptors and itself (its thread joined, or never started) */
static void reader_release(lt_st_reader *r) {
    for (int i = 0; i < ST_SLOTS; i++) free(r->slot[i].buf);
    for (int i = 0; r->dfd && i < r->set->n_files; i++)
        if (r->dfd[i] >= 0) close(r->dfd[i]);
    free(r->dfd);
    free(r);
}

void lt_st_reader_free(lt_st_reader *r) {
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    r->quit = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL); /* after the read it may be doing */
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    reader_release(r);
}

lt_status lt_st_reader_create(const lt_st_set *set, int direct, lt_st_reader **out, lt_error *err) {
    *out = NULL;
    lt_st_reader *r = calloc(1, sizeof *r);
    if (!r) return lt_fail(err, LT_ERR_NOMEM, "out of memory for a file reader");
    r->set = set;
    int ok = (r->dfd = malloc((size_t)(set->n_files ? set->n_files : 1) * sizeof *r->dfd)) != NULL;
    for (int i = 0; ok && i < set->n_files; i++) /* a file system without O_DIRECT refuses the open: buffered */
        r->dfd[i] = direct && set->files[i]->fd >= 0 ? open(set->files[i]->path, O_RDONLY | O_DIRECT | O_CLOEXEC) : -1;
    for (int i = 0; ok && i < ST_SLOTS; i++)
        ok = posix_memalign((void **)&r->slot[i].buf, ST_ALIGN, (size_t)ST_PIECE) == 0;
    if (!ok) {
        reader_release(r);
        return lt_fail(err, LT_ERR_NOMEM, "out of memory for %d read buffers of %llu bytes", ST_SLOTS,
                       (unsigned long long)ST_PIECE);
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    const int e = pthread_create(&r->thread, NULL, reader_main, r);
    if (e != 0) {
        pthread_cond_destroy(&r->cv);
        pthread_mutex_destroy(&r->mu);
        reader_release(r);
        return lt_fail(err, LT_ERR_NOMEM, "cannot start the file reading thread: %s", strerror(e));
    }
    *out = r;
    return LT_OK;
}

/* [*start, *end) = the piece of file f holding byte `at` of a tensor whose bytes are [t0, t1) of f */
static void piece_at(const lt_st_file *f, uint64_t at, uint64_t t0, uint64_t t1, uint64_t *start, uint64_t *end) {
    const uint64_t lo = t0 & ~(uint64_t)(ST_ALIGN - 1), hi = (t1 + ST_ALIGN - 1) & ~(uint64_t)(ST_ALIGN - 1);
    const uint64_t a = at / ST_PIECE * ST_PIECE, b = a + ST_PIECE;
    *start = a > lo ? a : lo;
    *end = b < hi ? b : hi;
    if (*end > f->map_len) *end = f->map_len;
}

/* The slot of piece [start, end) of file fi, named now (under the mutex): the one holding it, or a slot
 * reclaimed for it and WANTED: a FREE one (used 0) first, then the one named longest ago, but never a READING or HELD
 * one nor one named since `since` (in this call). NULL when no slot can be reclaimed. */
static st_slot *name_piece(lt_st_reader *r, int fi, uint64_t start, uint64_t end, uint64_t since) {
    st_slot *s = NULL;
    for (int i = 0; i < ST_SLOTS && !s; i++) {
        st_slot *c = &r->slot[i];
        if (c->state != ST_FREE && c->file == fi && c->start == start && c->end == end) s = c;
    }
    for (int i = 0; i < ST_SLOTS && !s; i++) {
        st_slot *c = &r->slot[i];
        if (c->state == ST_READING || c->state == ST_HELD || c->used >= since) continue;
        if (!s || c->used < s->used) s = c;
    }
    if (!s) return NULL;
    if (s->file != fi || s->start != start || s->end != end || s->state == ST_FREE)
        *s = (st_slot){.buf = s->buf, .state = ST_WANTED, .file = fi, .start = start, .end = end};
    s->used = ++r->clock;
    return s;
}

lt_status lt_st_reader_get(lt_st_reader *r, const lt_st_tensor *t, uint64_t off, uint64_t len, const void **p,
                           uint64_t *n, lt_error *err) {
    *p = NULL;
    *n = 0;
    if (off > t->nbytes || len > t->nbytes - off)
        return lt_fail(err, LT_ERR_INTERNAL, "tensor \"%s\": bytes [%llu, +%llu) are past its %llu", t->name,
                       (unsigned long long)off, (unsigned long long)len, (unsigned long long)t->nbytes);
    if (!len) return LT_OK;
    int fi = -1;
    const lt_st_file *f = NULL;
    for (int i = 0; i < r->set->n_files && fi < 0; i++) {
        f = r->set->files[i];
        const uintptr_t m0 = (uintptr_t)f->map, d = (uintptr_t)t->data;
        if (f->map && f->fd >= 0 && d >= m0 && d - m0 <= f->map_len && t->nbytes <= f->map_len - (d - m0)) fi = i;
    }
    if (fi < 0) return LT_OK; /* not in a mapping: a private copy, or use_mmap 0 */
    const uint64_t t0 = (uint64_t)((uintptr_t)t->data - (uintptr_t)f->map), t1 = t0 + t->nbytes, at = t0 + off;
    uint64_t a, b;
    piece_at(f, at, t0, t1, &a, &b);
    pthread_mutex_lock(&r->mu);
    if (r->held) r->held->state = ST_READY; /* kept: the next chunk may start in it */
    r->held = NULL;
    for (int i = 0; i < ST_SLOTS; i++) /* not begun: named again below if still wanted, after this call's piece */
        if (r->slot[i].state == ST_WANTED) r->slot[i] = (st_slot){.buf = r->slot[i].buf, .state = ST_FREE};
    const uint64_t since = r->clock + 1;
    st_slot *cur = name_piece(r, fi, a, b, since);                   /* never NULL: at most one slot is READING */
    for (uint64_t next = b, k = 1; k < ST_SLOTS && next < t1; k++) { /* the next pieces of the tensor, read ahead */
        uint64_t a2, b2;
        piece_at(f, next, t0, t1, &a2, &b2);
        if (!name_piece(r, fi, a2, b2, since)) break;
        next = b2;
    }
    pthread_cond_broadcast(&r->cv);
    while (cur->state != ST_READY) pthread_cond_wait(&r->cv, &r->mu);
    const int e = cur->err;
    if (e) {
        *cur = (st_slot){.buf = cur->buf, .state = ST_FREE};
    } else {
        cur->state = ST_HELD;
        r->held = cur;
    }
    pthread_mutex_unlock(&r->mu);
    if (e == ST_SHORT)
        return lt_fail(err, LT_ERR_IO, "%s: the file ends before byte %llu (was it truncated after it was opened?)",
                       f->path, (unsigned long long)b);
    if (e)
        return lt_fail(err, LT_ERR_IO, "%s: reading bytes [%llu, %llu) failed: %s", f->path, (unsigned long long)a,
                       (unsigned long long)b, strerror(e));
    *p = cur->buf + (at - a);
    *n = (b < at + len ? b : at + len) - at;
    return LT_OK;
}

lt_status lt_st_set_open_dir(const char *dir, int use_mmap, lt_st_set **out, lt_error *err) {
    if (!dir || !out) return lt_fail(err, LT_ERR_ARGUMENT, "lt_st_set_open_dir: NULL argument");
    *out = NULL;
    lt_st_set *set = calloc(1, sizeof *set);
    char *index_path = path_join_alloc(dir, ST_INDEX_NAME);
    char *single_path = path_join_alloc(dir, ST_SINGLE_NAME);
    lt_status st = LT_OK;
    if (!set || !index_path || !single_path) {
        st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", dir);
        goto done;
    }
    struct stat sb;
    if (stat(index_path, &sb) == 0) {
        st = set_open_index(set, dir, index_path, use_mmap, err);
    } else if (stat(single_path, &sb) == 0) {
        set->files = calloc(1, sizeof *set->files);
        if (!set->files) {
            st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", dir);
            goto done;
        }
        if ((st = lt_st_open(single_path, use_mmap, &set->files[0], err)) != LT_OK) goto done;
        set->n_files = 1;
        st = set_build_items(set, err);
    } else {
        st = lt_fail(err, LT_ERR_MISSING, "%s: no weights: neither %s nor %s exists", dir, ST_SINGLE_NAME,
                     ST_INDEX_NAME);
    }
done:
    free(index_path);
    free(single_path);
    if (st != LT_OK) {
        lt_st_set_close(set);
        return st;
    }
    *out = set;
    return LT_OK;
}

/* ---- writing ----------------------------------------------------------------------------------- */

/* The safetensors crate's Dtype order (increasing alignment); the writer sorts by it, descending. */
static int dtype_rank(lt_dtype dt) {
    switch (dt) {
    case LT_DT_BOOL: return 0;
    case LT_DT_U8: return 1;
    case LT_DT_I8: return 2;
    case LT_DT_F8_E5M2: return 3;
    case LT_DT_F8_E4M3: return 4;
    case LT_DT_I16: return 5;
    case LT_DT_U16: return 6;
    case LT_DT_F16: return 7;
    case LT_DT_BF16: return 8;
    case LT_DT_I32: return 9;
    case LT_DT_U32: return 10;
    case LT_DT_F32: return 11;
    case LT_DT_F64: return 12;
    case LT_DT_I64: return 13;
    case LT_DT_U64: return 14;
    default: return -1;
    }
}

typedef struct st_witem {
    const lt_st_entry *e;
    uint64_t nbytes;
} st_witem;

static int cmp_witem(const void *a, const void *b) {
    const st_witem *x = (const st_witem *)a, *y = (const st_witem *)b;
    int rx = dtype_rank(x->e->dtype), ry = dtype_rank(y->e->dtype);
    if (rx != ry) return rx > ry ? -1 : 1;
    return strcmp(x->e->name, y->e->name);
}

static lt_status check_entry(const char *path, const lt_st_entry *e, int i, uint64_t *nbytes, lt_error *err) {
    if (!e->name || !e->name[0]) return lt_fail(err, LT_ERR_ARGUMENT, "%s: entry %d has no name", path, i);
    if (strcmp(e->name, "__metadata__") == 0)
        return lt_fail(err, LT_ERR_ARGUMENT, "%s: a tensor may not be called \"__metadata__\"", path);
    if ((unsigned)e->dtype >= LT_DT_COUNT)
        return lt_fail(err, LT_ERR_DTYPE, "%s: tensor '%s': invalid dtype %d", path, e->name, (int)e->dtype);
    if (e->ndim < 0 || e->ndim > LT_ST_MAX_DIMS)
        return lt_fail(err, LT_ERR_SHAPE, "%s: tensor '%s': ndim %d out of range [0, %d]", path, e->name, e->ndim,
                       LT_ST_MAX_DIMS);
    int64_t numel;
    if (checked_numel(e->shape, e->ndim, &numel) != 0 ||
        lt_mul_overflow_u64((uint64_t)numel, lt_dtype_size(e->dtype), nbytes))
        return lt_fail(err, LT_ERR_SHAPE, "%s: tensor '%s': negative dimension or byte count overflow", path, e->name);
    if (*nbytes > 0 && !e->data) return lt_fail(err, LT_ERR_ARGUMENT, "%s: tensor '%s': NULL data", path, e->name);
    return LT_OK;
}

/* Build the padded header; items already sorted. */
static lt_status build_header(const char *path, const st_witem *items, int n, const char *const *kv, char **out,
                              size_t *out_len, lt_error *err) {
    lt_status st = LT_OK;
    json_t *root = json_object(), *meta = json_object();
    char *text = NULL;
    if (!root || !meta) {
        json_decref(meta);
        st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    int has_format = 0;
    for (int i = 0; kv && kv[i]; i += 2) {
        if (!kv[i + 1]) {
            json_decref(meta);
            st = lt_fail(err, LT_ERR_ARGUMENT, "%s: metadata key '%s' has no value", path, kv[i]);
            goto done;
        }
        if (strcmp(kv[i], "format") == 0) has_format = 1;
        if (json_object_set_new(meta, kv[i], json_string(kv[i + 1])) != 0) {
            json_decref(meta);
            st = lt_fail(err, LT_ERR_ARGUMENT, "%s: metadata '%s' is not valid UTF-8", path, kv[i]);
            goto done;
        }
    }
    if (!has_format && json_object_set_new(meta, "format", json_string("pt")) != 0) {
        json_decref(meta);
        st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    if (json_object_set_new(root, "__metadata__", meta) != 0) {
        st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const lt_st_entry *e = items[i].e;
        if (json_object_get(root, e->name)) {
            st = lt_fail(err, LT_ERR_ARGUMENT, "%s: tensor '%s' given twice", path, e->name);
            goto done;
        }
        json_t *shape = json_array();
        json_t *offs = json_pack("[II]", (json_int_t)off, (json_int_t)(off + items[i].nbytes));
        json_t *ent = json_object();
        int bad = !shape || !offs || !ent;
        for (int d = 0; !bad && d < e->ndim; d++) bad = json_array_append_new(shape, json_integer(e->shape[d])) != 0;
        if (!bad) bad = json_object_set_new(ent, "dtype", json_string(lt_dtype_name(e->dtype))) != 0;
        if (!bad) bad = json_object_set(ent, "shape", shape) != 0;
        if (!bad) bad = json_object_set(ent, "data_offsets", offs) != 0;
        json_decref(shape);
        json_decref(offs);
        if (bad) {
            json_decref(ent);
            st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", path);
            goto done;
        }
        if (json_object_set_new(root, e->name, ent) != 0) {
            st = lt_fail(err, LT_ERR_ARGUMENT, "%s: tensor name '%s' is not valid UTF-8", path, e->name);
            goto done;
        }
        off += items[i].nbytes;
    }
    text = json_dumps(root, JSON_COMPACT);
    if (!text) {
        st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    size_t len = strlen(text);
    size_t padded = (len + 7) & ~(size_t)7;
    if (padded > LT_ST_MAX_HEADER) {
        st = lt_fail(err, LT_ERR_ARGUMENT, "%s: header of %zu bytes exceeds the 100,000,000-byte limit", path, padded);
        goto done;
    }
    char *buf = malloc(padded + 1);
    if (!buf) {
        st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    memcpy(buf, text, len);
    memset(buf + len, ' ', padded - len);
    buf[padded] = '\0';
    *out = buf;
    *out_len = padded;
done:
    free(text);
    json_decref(root);
    return st;
}

lt_status lt_st_write(const char *path, const lt_st_entry *entries, int n, const char *const *metadata_kv,
                      lt_error *err) {
    if (!path || n < 0 || (n > 0 && !entries)) return lt_fail(err, LT_ERR_ARGUMENT, "lt_st_write: bad argument");
    lt_status st = LT_OK;
    st_witem *items = calloc((size_t)n + 1, sizeof *items);
    char *header = NULL;
    if (!items) return lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", path);
    for (int i = 0; i < n; i++) {
        items[i].e = &entries[i];
        if ((st = check_entry(path, &entries[i], i, &items[i].nbytes, err)) != LT_OK) goto done;
    }
    qsort(items, (size_t)n, sizeof *items, cmp_witem);
    size_t hlen = 0;
    if ((st = build_header(path, items, n, metadata_kv, &header, &hlen, err)) != LT_OK) goto done;

    lt_atomic_file f;
    if ((st = lt_atomic_open(&f, path, err)) != LT_OK) goto done;
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    if ((st = lt_atomic_write(&f, lenb, 8, err)) != LT_OK || (st = lt_atomic_write(&f, header, hlen, err)) != LT_OK)
        goto done;
    for (int i = 0; i < n; i++)
        if (items[i].nbytes && (st = lt_atomic_write(&f, items[i].e->data, (size_t)items[i].nbytes, err)) != LT_OK)
            goto done;
    st = lt_atomic_commit(&f, err);
done:
    free(header);
    free(items);
    return st;
}

/* "model-DDDDD-of-DDDDD.safetensors", "model.safetensors" or the index: files a save owns. */
static int is_weight_file_name(const char *s) {
    if (strcmp(s, ST_SINGLE_NAME) == 0 || strcmp(s, ST_INDEX_NAME) == 0) return 1;
    static const char pat[] = "model-#####-of-#####.safetensors";
    if (strlen(s) != sizeof pat - 1) return 0;
    for (size_t i = 0; pat[i]; i++) {
        if (pat[i] == '#' ? (s[i] < '0' || s[i] > '9') : s[i] != pat[i]) return 0;
    }
    return 1;
}

/* Remove weight files of an earlier save that are not in keep[0..nkeep). Best effort. */
static void remove_stale(const char *dir, char **keep, int nkeep) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!is_weight_file_name(de->d_name)) continue;
        int kept = 0;
        for (int i = 0; i < nkeep && !kept; i++) kept = strcmp(keep[i], de->d_name) == 0;
        if (kept) continue;
        char *p = path_join_alloc(dir, de->d_name);
        if (p) {
            unlink(p);
            free(p);
        }
    }
    closedir(d);
}

lt_status lt_st_write_sharded(const char *dir, const lt_st_entry *entries, int n, uint64_t max_shard_bytes,
                              lt_error *err) {
    if (!dir || n < 0 || (n > 0 && !entries)) return lt_fail(err, LT_ERR_ARGUMENT, "lt_st_write_sharded: bad argument");
    lt_status st = lt_mkdir_p(dir, err);
    if (st != LT_OK) return st;
    if (max_shard_bytes == 0) max_shard_bytes = UINT64_MAX;

    int *shard_of = calloc((size_t)n + 1, sizeof *shard_of);
    lt_st_entry *sub = calloc((size_t)n + 1, sizeof *sub);
    char **names = NULL;
    char *path = NULL;
    json_t *index = NULL;
    char *text = NULL;
    int n_shards = 0;
    uint64_t total = 0;
    if (!shard_of || !sub) {
        st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", dir);
        goto done;
    }
    /* names must be unique across all shards */
    {
        const char **nm = calloc((size_t)n + 1, sizeof *nm);
        if (!nm) {
            st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", dir);
            goto done;
        }
        for (int i = 0; i < n; i++) nm[i] = entries[i].name ? entries[i].name : "";
        qsort(nm, (size_t)n, sizeof *nm, cmp_cstr);
        for (int i = 1; i < n && st == LT_OK; i++)
            if (nm[i][0] && strcmp(nm[i - 1], nm[i]) == 0)
                st = lt_fail(err, LT_ERR_ARGUMENT, "%s: tensor '%s' given twice", dir, nm[i]);
        free(nm);
        if (st != LT_OK) goto done;
    }
    /* Assign shards in the given order exactly as huggingface_hub's split_state_dict_into_shards:
     * a tensor larger than the limit gets a shard of its own, appended at once; otherwise a tensor
     * that would push the open shard past the limit closes (appends) it first. Shards are numbered
     * in the order they are appended. */
    {
        int *prov = calloc((size_t)n + 1, sizeof *prov);         /* provisional shard id per entry */
        int *final_id = calloc((size_t)n + 1, sizeof *final_id); /* provisional id -> number */
        if (!prov || !final_id) {
            free(prov);
            free(final_id);
            st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", dir);
            goto done;
        }
        uint64_t cur = 0;
        int n_prov = 0, open_id = -1;
        for (int i = 0; i < n && st == LT_OK; i++) {
            uint64_t nb = 0;
            if ((st = check_entry(dir, &entries[i], i, &nb, err)) != LT_OK) break;
            total += nb;
            if (nb > max_shard_bytes) {
                prov[i] = n_prov++;
                final_id[prov[i]] = n_shards++;
                continue;
            }
            if (open_id >= 0 && cur + nb > max_shard_bytes) {
                final_id[open_id] = n_shards++;
                open_id = -1;
                cur = 0;
            }
            if (open_id < 0) open_id = n_prov++;
            prov[i] = open_id;
            cur += nb;
        }
        if (open_id >= 0) final_id[open_id] = n_shards++;
        for (int i = 0; i < n && st == LT_OK; i++) shard_of[i] = final_id[prov[i]];
        free(prov);
        free(final_id);
        if (st != LT_OK) goto done;
    }
    if (n_shards <= 1) {
        if (!(path = path_join_alloc(dir, ST_SINGLE_NAME))) {
            st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", dir);
            goto done;
        }
        if ((st = lt_st_write(path, entries, n, NULL, err)) != LT_OK) goto done;
        char *keep[1] = {(char *)ST_SINGLE_NAME};
        remove_stale(dir, keep, 1);
        lt_fsync_dir(dir);
        goto done;
    }
    names = calloc((size_t)n_shards + 1, sizeof *names);
    index = json_object();
    json_t *wm = json_object();
    if (!names || !index || !wm ||
        json_object_set_new(index, "metadata", json_pack("{s:I}", "total_size", (json_int_t)total)) != 0 ||
        json_object_set_new(index, "weight_map", wm) != 0) {
        st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", dir);
        goto done;
    }
    for (int s = 0; s < n_shards; s++) {
        char name[64];
        snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        if (!(names[s] = xstrdup(name))) {
            st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", dir);
            goto done;
        }
        int m = 0;
        for (int i = 0; i < n; i++) {
            if (shard_of[i] != s) continue;
            sub[m++] = entries[i];
            if (json_object_set_new(wm, entries[i].name, json_string(name)) != 0) {
                st = lt_fail(err, LT_ERR_ARGUMENT, "%s: tensor name '%s' is not valid UTF-8", dir, entries[i].name);
                goto done;
            }
        }
        free(path);
        if (!(path = path_join_alloc(dir, name))) {
            st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", dir);
            goto done;
        }
        if ((st = lt_st_write(path, sub, m, NULL, err)) != LT_OK) goto done;
    }
    text = json_dumps(index, JSON_INDENT(2) | JSON_SORT_KEYS);
    free(path);
    path = path_join_alloc(dir, ST_INDEX_NAME);
    if (!text || !path) {
        st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", dir);
        goto done;
    }
    {
        size_t tl = strlen(text);
        char *t2 = realloc(text, tl + 2);
        if (!t2) {
            st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", dir);
            goto done;
        }
        text = t2;
        text[tl] = '\n';
        text[tl + 1] = '\0';
        if ((st = lt_write_file_atomic(path, text, tl + 1, err)) != LT_OK) goto done;
    }
    names[n_shards] = (char *)ST_INDEX_NAME; /* not freed: see below */
    remove_stale(dir, names, n_shards + 1);
    names[n_shards] = NULL;
    lt_fsync_dir(dir);
done:
    if (names) {
        for (int s = 0; s < n_shards; s++) free(names[s]);
        free(names);
    }
    free(text);
    json_decref(index);
    free(path);
    free(sub);
    free(shard_of);
    return st;
}

/*
 * util.c - the helpers declared in core.h: error records, dtype tables, f16/bf16 conversions,
 * whole-file reads and atomic writes, paths, a monotonic clock.
 * defines: lt_fail, lt_fail_prefix, lt_error_clear, lt_thread_error, lt_dtype_name, lt_dtype_from_name,
 *          lt_dtype_size, lt_convert_to_f32, lt_f32_to_bf16, lt_f32_to_f16, lt_f16_to_f32,
 *          lt_write_file_atomic, lt_read_file, lt_path_join, lt_mkdir_p, lt_now_seconds
 * (lt_log is in context.c; lt_bf16_to_f32 in backend/bf16.h.)
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "backend/backend.h"
#include "core/core.h"

/* ---- errors ------------------------------------------------------------------------------------ */

lt_status lt_fail(lt_error *err, lt_status status, const char *fmt, ...) {
    if (err) {
        err->status = status;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return status;
}

lt_status lt_backend_sync(lt_backend *be, lt_error *err, const char *doing) {
    const lt_status st = be->ops->sync(be);
    if (st == LT_OK) return st;
    return lt_fail(err, st, "backend %s failed %s: %s", be->ops->name, doing, be->ops->error_message(be));
}

lt_status lt_fail_prefix(lt_error *err, const char *fmt, ...) {
    if (!err) return LT_ERR_INTERNAL;
    char old[sizeof err->msg];
    memcpy(old, err->msg, sizeof old);
    old[sizeof old - 1] = '\0';
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    size_t used = n < 0 ? 0 : (size_t)n;
    if (used > sizeof err->msg - 1) used = sizeof err->msg - 1;
    const char sep[] = ": ";
    size_t parts[2] = {sizeof sep - 1, strlen(old)};
    const char *src[2] = {sep, old};
    for (int i = 0; i < 2; i++) {
        size_t room = sizeof err->msg - 1 - used;
        size_t k = parts[i] < room ? parts[i] : room;
        memcpy(err->msg + used, src[i], k);
        used += k;
    }
    err->msg[used] = '\0';
    return err->status;
}

void lt_error_clear(lt_error *err) {
    if (!err) return;
    err->status = LT_OK;
    err->msg[0] = '\0';
}

lt_error *lt_thread_error(void) {
    static _Thread_local lt_error e;
    return &e;
}

/* ---- dtypes ------------------------------------------------------------------------------------ */

static const struct {
    const char *name;
    size_t size;
} k_dtypes[LT_DT_COUNT] = {
    [LT_DT_BOOL] = {"BOOL", 1}, [LT_DT_U8] = {"U8", 1},           [LT_DT_I8] = {"I8", 1},
    [LT_DT_I16] = {"I16", 2},   [LT_DT_U16] = {"U16", 2},         [LT_DT_F16] = {"F16", 2},
    [LT_DT_BF16] = {"BF16", 2}, [LT_DT_I32] = {"I32", 4},         [LT_DT_U32] = {"U32", 4},
    [LT_DT_F32] = {"F32", 4},   [LT_DT_F64] = {"F64", 8},         [LT_DT_I64] = {"I64", 8},
    [LT_DT_U64] = {"U64", 8},   [LT_DT_F8_E5M2] = {"F8_E5M2", 1}, [LT_DT_F8_E4M3] = {"F8_E4M3", 1},
};

const char *lt_dtype_name(lt_dtype dt) {
    if ((unsigned)dt >= LT_DT_COUNT) return "?";
    return k_dtypes[dt].name;
}

int lt_dtype_from_name(const char *name, lt_dtype *out) {
    if (!name) return -1;
    for (int i = 0; i < LT_DT_COUNT; i++) {
        if (strcmp(name, k_dtypes[i].name) == 0) {
            if (out) *out = (lt_dtype)i;
            return 0;
        }
    }
    return -1;
}

size_t lt_dtype_size(lt_dtype dt) {
    if ((unsigned)dt >= LT_DT_COUNT) return 0;
    return k_dtypes[dt].size;
}

/* ---- conversions ------------------------------------------------------------------------------- */

static inline float bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t f32_to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Same rounding as c10::BFloat16 (round_to_nearest_even): NaN -> 0x7FC0. */
uint16_t lt_f32_to_bf16(float f) {
    uint32_t u = f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    uint32_t bias = ((u >> 16) & 1u) + 0x7fffu;
    return (uint16_t)((u + bias) >> 16);
}

/* Round to nearest even, as numpy's astype(float16) and ggml's fp32 -> fp16: overflow to inf, subnormals
 * kept, NaN stays a (quiet) NaN. */
uint16_t lt_f32_to_f16(float f) {
    const uint32_t u = f32_to_bits(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to inf (and inf itself) */
    if (a < 0x38800000u) {                                   /* below 2^-14: an f16 subnormal (or 0) */
        float v;
        memcpy(&v, &a, sizeof v);
        return (uint16_t)(sign | (uint32_t)rintf(v * 16777216.0f)); /* units of 2^-24, exact scaling */
    }
    uint32_t h = ((a >> 23) - 112u) << 10 | ((a >> 13) & 0x3ffu), rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; /* a carry into the exponent is right */
    return (uint16_t)(sign | h);
}

float lt_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13); /* inf, or NaN with its payload */
    } else if (exp != 0) {
        u = sign | ((exp + 112u) << 23) | (man << 13); /* 127 - 15 = 112 */
    } else if (man == 0) {
        u = sign; /* +-0 */
    } else {
        /* subnormal: value = man * 2^-24; normalise */
        int e = -1;
        do {
            e++;
            man <<= 1;
        } while ((man & 0x400u) == 0);
        man &= 0x3ffu;
        u = sign | ((uint32_t)(112 - e) << 23) | (man << 13);
    }
    return bits_to_f32(u);
}

int lt_convert_to_f32(float *dst, const void *src, lt_dtype dt, size_t n) {
    const unsigned char *s = (const unsigned char *)src;
    switch (dt) {
    case LT_DT_F32:
        if (n) memmove(dst, src, n * sizeof(float));
        return 0;
    case LT_DT_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = lt_f16_to_f32(h);
        }
        return 0;
    case LT_DT_BF16: { /* the upper half of an f32: a loop of shifts the compiler vectorizes */
        typedef uint16_t u16_any __attribute__((aligned(1)));
        typedef uint32_t u32_any __attribute__((aligned(1)));
        const u16_any *h = (const u16_any *)src;
        u32_any *d = (u32_any *)dst;
        for (size_t i = 0; i < n; i++) d[i] = (uint32_t)h[i] << 16;
        return 0;
    }
    default: return -1;
    }
}

size_t lt_first_nonfinite(const float *x, size_t n) {
    enum { BLOCK = 4096 };
    for (size_t b = 0; b < n; b += BLOCK) {
        const size_t e = n - b < BLOCK ? n : b + BLOCK;
        uint32_t hit = 0; /* an exponent of all ones is Inf or NaN; or-ing the tests vectorizes */
        for (size_t i = b; i < e; i++) hit |= (f32_to_bits(x[i]) & 0x7f800000u) == 0x7f800000u;
        if (hit)
            for (size_t i = b; i < e; i++)
                if ((f32_to_bits(x[i]) & 0x7f800000u) == 0x7f800000u) return i;
    }
    return n;
}

size_t lt_convert_to_f32_finite(float *dst, const void *src, lt_dtype dt, size_t n) {
    enum { BLOCK = 16384 };
    const size_t es = lt_dtype_size(dt);
    for (size_t b = 0; b < n; b += BLOCK) {
        const size_t k = n - b < BLOCK ? n - b : BLOCK;
        if (lt_convert_to_f32(dst + b, (const unsigned char *)src + b * es, dt, k) != 0) return (size_t)-1;
        const size_t bad = lt_first_nonfinite(dst + b, k);
        if (bad < k) return b + bad;
    }
    return n;
}

/* ---- files ------------------------------------------------------------------------------------- */

static int write_all(int fd, const void *data, size_t n) {
    const unsigned char *p = (const unsigned char *)data;
    while (n > 0) {
        size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        ssize_t w = write(fd, p, chunk);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

void lt_fill_struct(void *dst, size_t dst_size, const void *defaults, size_t def_size) {
    if (!dst || dst_size < sizeof(size_t)) return;
    size_t n = dst_size < def_size ? dst_size : def_size;
    memcpy(dst, defaults, n);
    if (dst_size > n) memset((char *)dst + n, 0, dst_size - n);
    memcpy(dst, &n, sizeof n);
}

lt_status lt_read_struct(void *dst, size_t dst_size, const void *src, size_t min_size, const char *fn, const char *init,
                         lt_error *err) {
    if (!src) return LT_OK;
    size_t size;
    memcpy(&size, src, sizeof size); /* every params struct begins with its size */
    if (size < min_size || size > dst_size)
        return lt_fail(err, LT_ERR_ARGUMENT, "%s: params->size %zu is not a size this library knows (call %s)", fn,
                       size, init);
    memcpy(dst, src, size);
    return LT_OK;
}

void lt_fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

/* fsync the directory holding path (best effort). */
static void fsync_parent_dir(const char *path) {
    size_t len = strlen(path);
    char *copy = malloc(len + 1);
    if (!copy) return;
    memcpy(copy, path, len + 1);
    lt_fsync_dir(dirname(copy));
    free(copy);
}

lt_status lt_atomic_open(lt_atomic_file *f, const char *path, lt_error *err) {
    f->fd = -1;
    f->path = f->tmp = NULL;
    if (!path) return lt_fail(err, LT_ERR_ARGUMENT, "lt_atomic_open: path is NULL");
    size_t len = strlen(path) + 32;
    f->path = malloc(len);
    f->tmp = malloc(len);
    if (!f->path || !f->tmp) {
        lt_atomic_abort(f);
        return lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", path);
    }
    memcpy(f->path, path, strlen(path) + 1);
    snprintf(f->tmp, len, "%s.tmp.%ld", path, (long)getpid());
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f->fd < 0) {
        int e = errno;
        free(f->tmp);
        f->tmp = NULL; /* nothing to remove */
        lt_atomic_abort(f);
        return lt_fail(err, LT_ERR_IO, "%s: cannot create temporary file: %s", path, strerror(e));
    }
    return LT_OK;
}

void lt_atomic_abort(lt_atomic_file *f) {
    if (f->fd >= 0) close(f->fd);
    if (f->tmp) unlink(f->tmp);
    free(f->tmp);
    free(f->path);
    f->fd = -1;
    f->tmp = f->path = NULL;
}

lt_status lt_atomic_write(lt_atomic_file *f, const void *data, size_t n, lt_error *err) {
    if (write_all(f->fd, data, n) == 0) return LT_OK;
    int e = errno;
    lt_status st = lt_fail(err, LT_ERR_IO, "%s: write failed: %s", f->path, strerror(e));
    lt_atomic_abort(f);
    return st;
}

lt_status lt_atomic_commit(lt_atomic_file *f, lt_error *err) {
    const char *what = NULL;
    int e = 0;
    if (fsync(f->fd) != 0) {
        e = errno;
        what = "fsync";
    }
    if (close(f->fd) != 0 && !what) {
        e = errno;
        what = "close";
    }
    f->fd = -1;
    if (!what && rename(f->tmp, f->path) != 0) {
        e = errno;
        what = "rename";
    }
    if (what) {
        lt_status st = lt_fail(err, LT_ERR_IO, "%s: %s failed: %s", f->path, what, strerror(e));
        lt_atomic_abort(f);
        return st;
    }
    fsync_parent_dir(f->path);
    free(f->tmp);
    free(f->path);
    f->tmp = f->path = NULL;
    return LT_OK;
}

lt_status lt_write_file_atomic(const char *path, const void *data, size_t n, lt_error *err) {
    if (!path || (!data && n > 0)) return lt_fail(err, LT_ERR_ARGUMENT, "lt_write_file_atomic: NULL argument");
    lt_atomic_file f;
    lt_status st = lt_atomic_open(&f, path, err);
    if (st == LT_OK) st = lt_atomic_write(&f, data, n, err);
    if (st == LT_OK) st = lt_atomic_commit(&f, err);
    return st;
}

lt_status lt_read_file(const char *path, char **data, size_t *n, lt_error *err) {
    if (!path || !data) return lt_fail(err, LT_ERR_ARGUMENT, "lt_read_file: NULL argument");
    *data = NULL;
    if (n) *n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return lt_fail(err, LT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return lt_fail(err, LT_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return lt_fail(err, LT_ERR_IO, "%s: not a regular file", path);
    }
    size_t cap = (size_t)st.st_size;
    char *buf = malloc(cap + 1);
    if (!buf) {
        close(fd);
        return lt_fail(err, LT_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, cap);
    }
    size_t got = 0;
    for (;;) {
        if (got == cap) { /* the file may have grown since fstat */
            size_t ncap = cap ? cap * 2 : 4096;
            char *nb = realloc(buf, ncap + 1);
            if (!nb) {
                free(buf);
                close(fd);
                return lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", path);
            }
            buf = nb;
            cap = ncap;
        }
        size_t want = cap - got;
        if (want > ((size_t)1 << 30)) want = (size_t)1 << 30;
        ssize_t r = read(fd, buf + got, want);
        if (r < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            free(buf);
            close(fd);
            return lt_fail(err, LT_ERR_IO, "%s: read failed: %s", path, strerror(e));
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    *data = buf;
    if (n) *n = got;
    return LT_OK;
}

int lt_path_join(char *buf, size_t len, const char *dir, const char *name) {
    if (!buf || len == 0 || !name) return -1;
    int w;
    if (!dir || !dir[0]) {
        w = snprintf(buf, len, "%s", name);
    } else {
        size_t dl = strlen(dir);
        const char *sep = dir[dl - 1] == '/' ? "" : "/";
        w = snprintf(buf, len, "%s%s%s", dir, sep, name);
    }
    if (w < 0 || (size_t)w >= len) {
        buf[0] = '\0';
        return -1;
    }
    return 0;
}

lt_status lt_mkdir_p(const char *dir, lt_error *err) {
    if (!dir || !dir[0]) return lt_fail(err, LT_ERR_ARGUMENT, "lt_mkdir_p: empty path");
    size_t len = strlen(dir);
    char *p = malloc(len + 1);
    if (!p) return lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", dir);
    memcpy(p, dir, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (p[i] != '/' && p[i] != '\0') continue;
        if (p[i - 1] == '/') continue; /* repeated slashes */
        char saved = p[i];
        p[i] = '\0';
        if (mkdir(p, 0755) != 0) {
            int e = errno;
            struct stat st;
            if (e != EEXIST || stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) {
                lt_status s = lt_fail(err, LT_ERR_IO, "%s: cannot create directory %s: %s", dir, p,
                                      e == EEXIST ? "exists and is not a directory" : strerror(e));
                free(p);
                return s;
            }
        }
        p[i] = saved;
    }
    free(p);
    return LT_OK;
}

/* ---- time -------------------------------------------------------------------------------------- */

double lt_now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/*
 * core.h - conventions shared by every folder of the library above the backends: error records,
 * dtypes, params structs, checked arithmetic, files, logging, time (defined in core/util.c and
 * core/context.c). Not installed; not part of the ABI.
 */
#ifndef LT_CORE_H
#define LT_CORE_H

#include "backend/bf16.h" /* lt_bf16_to_f32 */
#include "loratune.h"
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define LT_HIDDEN __attribute__((visibility("hidden")))

/* ---- errors -------------------------------------------------------------------------------------
 * Every handle embeds an lt_error. Internal functions that can fail take an lt_error * and return
 * lt_fail(err, STATUS, "fmt", ...), which records the status and message and returns the status.
 * Messages name the thing that is wrong (file, tensor, field) and the problem.
 */
typedef struct lt_error {
    lt_status status;
    char msg[1024];
} lt_error;

lt_status lt_fail(lt_error *err, lt_status status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Prefix an existing message: "ctx: <old message>" (keeps the status). */
lt_status lt_fail_prefix(lt_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Wait for the backend's queued work. A failure is reported here, where the backend can say what went wrong
 * (a GPU's error text): "backend <name> failed <doing>: <its message>". */
struct lt_backend;
lt_status lt_backend_sync(struct lt_backend *be, lt_error *err, const char *doing);
void lt_error_clear(lt_error *err);
/* The per-thread error of creation functions (lt_last_error()). */
lt_error *lt_thread_error(void);

/* ---- dtypes (safetensors names) ----------------------------------------------------------------- */
typedef enum lt_dtype {
    LT_DT_BOOL,
    LT_DT_U8,
    LT_DT_I8,
    LT_DT_I16,
    LT_DT_U16,
    LT_DT_F16,
    LT_DT_BF16,
    LT_DT_I32,
    LT_DT_U32,
    LT_DT_F32,
    LT_DT_F64,
    LT_DT_I64,
    LT_DT_U64,
    LT_DT_F8_E5M2,
    LT_DT_F8_E4M3,
    LT_DT_COUNT
} lt_dtype;

const char *lt_dtype_name(lt_dtype dt);
/* Returns 0 and sets *out for a known name; -1 otherwise. */
int lt_dtype_from_name(const char *name, lt_dtype *out);
size_t lt_dtype_size(lt_dtype dt);

/* Conversions to and from f32 (F32, F16, BF16 supported; returns -1 for other dtypes). */
int lt_convert_to_f32(float *dst, const void *src, lt_dtype dt, size_t n);
/* The index of the first element of x[0, n) that is NaN or Inf, or n when all are finite. */
size_t lt_first_nonfinite(const float *x, size_t n);
/* lt_convert_to_f32, checking the result as it is made (block by block, while in cache): returns the
 * index of the first element that is not finite, n when all are, (size_t)-1 for an unsupported dtype. */
size_t lt_convert_to_f32_finite(float *dst, const void *src, lt_dtype dt, size_t n);
uint16_t lt_f32_to_bf16(float f); /* round to nearest even, NaN kept (lt_bf16_round flushes subnormals) */
uint16_t lt_f32_to_f16(float f);  /* round to nearest even (numpy's astype(float16)), overflow to inf */
float lt_f16_to_f32(uint16_t h);

/* ---- params structs ----------------------------------------------------------------------------
 * Copy library defaults into a caller's struct of dst_size bytes (its sizeof, from the header it was
 * built with): min(dst_size, def_size) bytes are copied, any bytes beyond are zeroed, and the leading
 * size field is set to the number of bytes the library knows. An older, smaller caller struct is
 * never written past its end. */
void lt_fill_struct(void *dst, size_t dst_size, const void *defaults, size_t def_size);
/* The other way: a caller's params struct src (NULL: dst keeps its defaults) copied over dst, which holds the
 * library's defaults in dst_size bytes. Any size from min_size (the struct's first released version) up to
 * dst_size is taken, so a caller built with an older header gets the defaults of the fields it lacks; any
 * other is LT_ERR_ARGUMENT naming fn and init, the _params_init function the caller should have called. */
lt_status lt_read_struct(void *dst, size_t dst_size, const void *src, size_t min_size, const char *fn, const char *init,
                         lt_error *err);

/* ---- checked arithmetic ------------------------------------------------------------------------- */
static inline int lt_mul_overflow_u64(uint64_t a, uint64_t b, uint64_t *out) {
    return __builtin_mul_overflow(a, b, out);
}

/* ---- files -------------------------------------------------------------------------------------- */
/* Atomic file writing, streamed: open creates <path>.tmp.<pid>; commit fsyncs, renames it over path
 * and fsyncs the directory; abort (or any failed call) removes the temporary file. A reader of path
 * sees the old file or the whole new one, never a part. */
typedef struct lt_atomic_file {
    int fd;
    char *path, *tmp;
} lt_atomic_file;
lt_status lt_atomic_open(lt_atomic_file *f, const char *path, lt_error *err);
lt_status lt_atomic_write(lt_atomic_file *f, const void *data, size_t n, lt_error *err); /* aborts on failure */
lt_status lt_atomic_commit(lt_atomic_file *f, lt_error *err);                            /* aborts on failure */
void lt_atomic_abort(lt_atomic_file *f);
/* The whole file in one call. */
lt_status lt_write_file_atomic(const char *path, const void *data, size_t n, lt_error *err);
/* fsync a directory so that renames in it survive a crash (best effort). */
void lt_fsync_dir(const char *dir);
/* Read a whole file into a NUL-terminated malloc'd buffer. */
lt_status lt_read_file(const char *path, char **data, size_t *n, lt_error *err);
/* Join dir and name into buf; returns 0, or -1 if too long. */
int lt_path_join(char *buf, size_t len, const char *dir, const char *name);
/* mkdir -p */
lt_status lt_mkdir_p(const char *dir, lt_error *err);

/* ---- saves: a directory written whole -----------------------------------------------------------
 * Every save (adapter, checkpoint, merged or quantized model) is one directory, published in one step
 * so that a reader, or a process killed at any moment, sees the previous save or the new one, never a
 * mix of the two and never nothing:
 *   lt_save_begin(&s, DIR)  refuses (LT_ERR_IO, nothing touched) unless DIR is absent, an empty
 *                           directory, or an earlier save of ours holding only what it wrote; then
 *                           creates the staging directory s.stage = DIR.tmp-<pid>-<6 chars> beside DIR;
 *   ... the caller writes its files (regular files only) into s.stage ...
 *   lt_save_commit(&s)      records the entries in the marker s.stage/.loratune-save, fsyncs, then
 *                           renames s.stage to DIR (DIR absent) or swaps the two atomically
 *                           (renameat2 RENAME_EXCHANGE) and removes the previous save, which is ours.
 *                           Where the file system cannot exchange, the previous save is first renamed
 *                           to DIR.old-<pid>-<6 chars> (a crash between the two renames leaves no DIR:
 *                           lt_save_resolve finds the data). Then the temporaries of our naming left
 *                           beside DIR by processes that are gone are removed. On failure: as abort;
 *   lt_save_abort(&s)       removes the staging directory.
 * Nothing is ever removed that a save of ours did not write: a directory goes only when its marker
 * lists every entry it holds, and only the listed entries are unlinked. (core/save.c) */
typedef struct lt_save {
    char *dir, *parent, *base; /* the target, the directory holding it, its last component */
    char *stage;               /* where the caller writes */
} lt_save;
lt_status lt_save_begin(lt_save *s, const char *dir, lt_error *err);
lt_status lt_save_commit(lt_save *s, lt_error *err);
void lt_save_abort(lt_save *s);
/* For a reader of a save: out = dir when it exists; when it does not (a crash between the two renames
 * of the fallback), the newest complete save of ours among dir.tmp-* / dir.old-*, which it names in a
 * LT_LOG_WARN message through ctx. LT_ERR_NOMEM is the only failure. */
struct lt_context;
lt_status lt_save_resolve(const struct lt_context *ctx, const char *dir, char *out, size_t len);

/* ---- logging ------------------------------------------------------------------------------------ */
struct lt_context;
void lt_log(const struct lt_context *ctx, lt_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- time --------------------------------------------------------------------------------------- */
double lt_now_seconds(void);

#endif /* LT_CORE_H */

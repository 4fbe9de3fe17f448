/*
 * gguf.h - GGUF v3, the file format of llama.cpp and Ollama: a writer and a bounded reader (internal).
 * defines: lt_gguf_writer (typed metadata, tensor infos, aligned data, one atomic file),
 *          lt_gguf_parse (a file in memory -> its metadata and tensors; hostile input gives a status)
 *
 * Layout (docs/spec/gguf.md): little-endian; "GGUF", u32 version 3, u64 tensor count, u64 metadata
 * count; each metadata entry is (string key, u32 value type, value); a string is u64 length + bytes (no
 * NUL); an array is (u32 element type, u64 count, elements). Then per tensor: name, u32 n_dims,
 * u64 ne[n_dims] (ne[0] the fastest dimension: a PyTorch shape reversed), u32 ggml type, u64 offset
 * into the data section. The data section starts at the next multiple of general.alignment (32 when
 * absent) after the tensor infos, and every tensor's offset is a multiple of it.
 */
#ifndef LT_GGUF_H
#define LT_GGUF_H

#include "core/core.h"
#include <stdint.h>

#define LT_GGUF_VERSION 3
#define LT_GGUF_ALIGNMENT 32
#define LT_GGUF_MAX_DIMS 4 /* ggml's GGML_MAX_DIMS */

/* metadata value types (gguf_type) */
typedef enum lt_gguf_type {
    LT_GGUF_U8 = 0,
    LT_GGUF_I8 = 1,
    LT_GGUF_U16 = 2,
    LT_GGUF_I16 = 3,
    LT_GGUF_U32 = 4,
    LT_GGUF_I32 = 5,
    LT_GGUF_F32 = 6,
    LT_GGUF_BOOL = 7,
    LT_GGUF_STRING = 8,
    LT_GGUF_ARRAY = 9,
    LT_GGUF_U64 = 10,
    LT_GGUF_I64 = 11,
    LT_GGUF_F64 = 12,
    LT_GGUF_TYPE_COUNT
} lt_gguf_type;

/* tensor types written here (ggml_type numbers) */
typedef enum lt_ggml_type { LT_GGML_F32 = 0, LT_GGML_F16 = 1, LT_GGML_Q8_0 = 8, LT_GGML_BF16 = 30 } lt_ggml_type;
#define LT_Q8_0_BLOCK 32 /* elements per Q8_0 block: f16 scale d + 32 int8, x = d * q */

const char *lt_ggml_type_name(int type); /* "F32", ...; "?" for a type this file does not know */
/* Bytes of n elements (n a multiple of the block size for Q8_0); 0 for an unknown type. */
uint64_t lt_ggml_nbytes(int type, uint64_t n);
/* Convert n f32 values to `type` (Q8_0: n % 32 == 0; ggml's quantize_row_q8_0_ref, bit for bit). */
void lt_ggml_from_f32(int type, const float *src, void *dst, size_t n);
/* And back (F32, F16, BF16, Q8_0); -1 for another type. */
int lt_ggml_to_f32(int type, const void *src, float *dst, size_t n);

/* ---- writing ------------------------------------------------------------------------------------ */
typedef struct lt_gguf_writer lt_gguf_writer;

/* The data of tensor `index` as n f32 values (the writer converts them to the tensor's type). */
typedef lt_status (*lt_gguf_fill_fn)(void *user, int index, float *dst, size_t n, lt_error *err);

lt_gguf_writer *lt_gguf_writer_new(void); /* NULL when out of memory */
void lt_gguf_writer_free(lt_gguf_writer *w);
/* Metadata, in the order written. A key set twice is LT_ERR_ARGUMENT (GGUF keys are unique). */
lt_status lt_gguf_set_str(lt_gguf_writer *w, const char *key, const char *value, lt_error *err);
lt_status lt_gguf_set_u32(lt_gguf_writer *w, const char *key, uint32_t value, lt_error *err);
lt_status lt_gguf_set_i32(lt_gguf_writer *w, const char *key, int32_t value, lt_error *err);
lt_status lt_gguf_set_f32(lt_gguf_writer *w, const char *key, float value, lt_error *err);
lt_status lt_gguf_set_bool(lt_gguf_writer *w, const char *key, int value, lt_error *err);
/* Arrays: strings (n NUL-terminated), or n elements of a scalar type (values as that type's C type). */
lt_status lt_gguf_set_arr_str(lt_gguf_writer *w, const char *key, const char *const *values, size_t n, lt_error *err);
lt_status lt_gguf_set_arr(lt_gguf_writer *w, const char *key, lt_gguf_type elem, const void *values, size_t n,
                          lt_error *err);
/* A tensor of a PyTorch shape (ndim 1..4, row-major) stored as `type`; its data is asked for when the
 * file is written, in the order of the calls, from fill(user, index). */
lt_status lt_gguf_add_tensor(lt_gguf_writer *w, const char *name, int ndim, const int64_t *shape, lt_ggml_type type,
                             lt_error *err);
/* Write the whole file atomically (<path>.tmp.<pid>, fsync, rename): peak memory one tensor. */
lt_status lt_gguf_write(lt_gguf_writer *w, const char *path, lt_gguf_fill_fn fill, void *user, lt_error *err);

/* ---- reading ------------------------------------------------------------------------------------ */
typedef struct lt_gguf_kv {
    const char *key; /* NUL-terminated copies */
    lt_gguf_type type;
    lt_gguf_type elem; /* arrays: the element type */
    uint64_t n;        /* arrays: the count (1 otherwise) */
    const void *data;  /* scalars and arrays of scalars: the little-endian values in the buffer */
    const char **strs; /* strings and arrays of strings: n NUL-terminated copies */
    const uint64_t *str_lens;
} lt_gguf_kv;

typedef struct lt_gguf_tensor {
    const char *name;
    int n_dims;
    int64_t ne[LT_GGUF_MAX_DIMS]; /* ggml order */
    int type;
    uint64_t offset, nbytes; /* in the data section */
    const void *data;        /* into the buffer */
} lt_gguf_tensor;

typedef struct lt_gguf_file {
    uint32_t version;
    uint64_t alignment, data_offset;
    int64_t n_kv, n_tensors;
    lt_gguf_kv *kv;
    lt_gguf_tensor *tensors;
    void *arena; /* every copy above */
} lt_gguf_file;

/*
 * Parse a GGUF file held in buf[0..len): every count, length and offset is checked against what is
 * left of the buffer before anything is allocated for it, so hostile input gives LT_ERR_TRUNCATED /
 * LT_ERR_FORMAT (bad magic, version, type, duplicate key or tensor, nested arrays, misaligned or
 * overlapping data, a tensor outside the buffer) and never reads out of bounds. Tensor data must
 * lie inside buf (the data pointers point into it). Free with lt_gguf_file_free.
 */
lt_status lt_gguf_parse(const void *buf, size_t len, lt_gguf_file **out, lt_error *err);
void lt_gguf_file_free(lt_gguf_file *f);
const lt_gguf_kv *lt_gguf_find_kv(const lt_gguf_file *f, const char *key);
const lt_gguf_tensor *lt_gguf_find_tensor(const lt_gguf_file *f, const char *name);

#endif /* LT_GGUF_H */

/*
 * safetensors.h - read and write safetensors files and Hugging Face model directories (internal).
 * defines: lt_st_file (one file), lt_st_set (a model directory, sharded or not), lt_st_write,
 *          lt_st_write_sharded
 *
 * Reading validates every rule of docs/spec/formats.md: header length <= 100,000,000 and inside the
 * file, a JSON object starting with '{', known dtypes, shapes of at most 8 non-negative dims,
 * END - BEGIN == numel * dtype size (checked arithmetic), entries that tile the data buffer exactly
 * (first at 0, no hole, no overlap) and a buffer that ends exactly at the end of the file.
 * Every lt_st_tensor::data is aligned to its dtype size: a tensor that would not be (a header whose
 * length is not a multiple of 8, a writer that did not order by alignment) is copied.
 */
#ifndef LT_SAFETENSORS_H
#define LT_SAFETENSORS_H

#include "core/core.h"
#include <stdint.h>

#define LT_ST_MAX_DIMS 8
#define LT_ST_MAX_HEADER 100000000ULL

typedef struct lt_st_tensor {
    const char *name;
    lt_dtype dtype;
    int ndim;
    int64_t shape[LT_ST_MAX_DIMS];
    uint64_t nbytes;  /* numel * dtype size */
    const void *data; /* into the mapping (use_mmap) or a malloc'd copy; never NULL */
    int64_t numel;    /* 1 for a scalar (ndim 0) */
} lt_st_tensor;

/* ---- one file ---------------------------------------------------------------------------------- */
typedef struct lt_st_file lt_st_file;

/* Open and validate. use_mmap = 1: map the file read-only; 0: read the data into memory. */
lt_status lt_st_open(const char *path, int use_mmap, lt_st_file **out, lt_error *err);
void lt_st_close(lt_st_file *f); /* accepts NULL */
const char *lt_st_path(const lt_st_file *f);
/* Tensors sorted by name (strcmp); the array lives as long as the file. */
int lt_st_count(const lt_st_file *f);
const lt_st_tensor *lt_st_tensors(const lt_st_file *f);
const lt_st_tensor *lt_st_find(const lt_st_file *f, const char *name); /* NULL if absent */
/* The "__metadata__" map: value of key or NULL; iteration by index (i < lt_st_metadata_count). */
const char *lt_st_metadata(const lt_st_file *f, const char *key);
int lt_st_metadata_count(const lt_st_file *f);
int lt_st_metadata_at(const lt_st_file *f, int i, const char **key, const char **value);

/* ---- a model directory ------------------------------------------------------------------------- */
typedef struct lt_st_set lt_st_set;

/*
 * model.safetensors.index.json when present (each shard opened once; every tensor of the weight_map
 * must be in the shard it names, LT_ERR_MISSING; no tensor in two shards, LT_ERR_FORMAT), otherwise
 * model.safetensors; LT_ERR_MISSING when neither exists.
 */
lt_status lt_st_set_open_dir(const char *dir, int use_mmap, lt_st_set **out, lt_error *err);
/* Drop the resident pages of every read-only file mapping of the set (madvise MADV_DONTNEED): the data
 * stays valid and is read from the file again on the next access. For a model whose weights were copied
 * (full fine-tuning), so that memory does not hold the base twice. */
void lt_st_set_release_pages(const lt_st_set *set);
/* Reading a tensor once, front to back (the streamed loader, model/model.c): bytes [off, off + len) of
 * tensor t of the set are requested ahead from the file (release 0: MADV_WILLNEED, so the kernel reads
 * them while the caller works on the previous part) or their pages dropped (release 1: MADV_DONTNEED,
 * so a consumed tensor stops counting in the process's memory; read again from the file if touched).
 * A no-op when t is not in a file mapping (use_mmap 0, or a misaligned tensor's private copy). */
void lt_st_set_advise(const lt_st_set *set, const lt_st_tensor *t, uint64_t off, uint64_t len, int release);
/* A reader of a set's tensors from their files, front to back (the streamed loader, model/load.c), with one
 * thread that reads the next pieces of the tensor (8 MiB, 3 buffers: 24 MiB) while the caller converts the
 * one it has (the pipeline: safetensors.c). direct 1: with O_DIRECT where the file system allows it (the
 * device writes into the reader's buffer; no page cache filled, copied and dropped); else, and for a
 * file's last partial block, buffered reads whose pages are dropped after. The set outlives the reader;
 * one caller thread at a time. Free joins the thread. */
typedef struct lt_st_reader lt_st_reader;
#define LT_ST_READ_PIECE ((size_t)8 << 20) /* bytes of one read */
#define LT_ST_READ_SLOTS 3                 /* buffers: one the caller's, two read ahead */
lt_status lt_st_reader_create(const lt_st_set *set, int direct, lt_st_reader **out, lt_error *err);
void lt_st_reader_free(lt_st_reader *r); /* accepts NULL */
/* *p = bytes [off, off + *n) of tensor t, 1 <= *n <= len (the rest: call again from off + *n), valid until the
 * next call; the following pieces of t are read meanwhile. LT_OK with *p NULL when t is not in a file mapping
 * of the set (use_mmap 0, or a misaligned tensor's private copy: read t->data) or len is 0; LT_ERR_IO naming
 * the file and the bytes on a read error (a file shortened since it was opened: "ends before byte");
 * LT_ERR_INTERNAL for bytes past the tensor's. */
lt_status lt_st_reader_get(lt_st_reader *r, const lt_st_tensor *t, uint64_t off, uint64_t len, const void **p,
                           uint64_t *n, lt_error *err);
void lt_st_set_close(lt_st_set *set);                                       /* accepts NULL */
const lt_st_tensor *lt_st_set_find(const lt_st_set *set, const char *name); /* NULL if absent */
/* The file holding a tensor (for messages), or NULL. */
const lt_st_file *lt_st_set_file_of(const lt_st_set *set, const char *name);
/* All tensors of all files, sorted by name: i in [0, lt_st_set_count). */
int lt_st_set_count(const lt_st_set *set);
const lt_st_tensor *lt_st_set_tensor_at(const lt_st_set *set, int i);
int lt_st_set_n_files(const lt_st_set *set);
const lt_st_file *lt_st_set_file(const lt_st_set *set, int i);

/* ---- writing ----------------------------------------------------------------------------------- */
typedef struct lt_st_entry {
    const char *name;
    lt_dtype dtype;
    int ndim;
    int64_t shape[LT_ST_MAX_DIMS];
    const void *data; /* numel * dtype size bytes (may be NULL when that is 0) */
} lt_st_entry;

/*
 * Write one file atomically (<path>.tmp.<pid>, fsync, rename), streaming the data. metadata_kv is
 * key, value, key, value, ..., NULL (or NULL for none); "format":"pt" is added unless given.
 * Tensors are laid out by dtype alignment (descending, the safetensors crate's order) then name;
 * the header is padded with spaces to a multiple of 8, so every tensor is naturally aligned.
 */
lt_status lt_st_write(const char *path, const lt_st_entry *entries, int n, const char *const *metadata_kv,
                      lt_error *err);

/*
 * Write a model directory (created if needed) as transformers does: tensors go to shards in the
 * given order, a new shard starting when the next tensor would push the current one past
 * max_shard_bytes (a tensor larger than that gets a shard of its own); one shard is written as
 * model.safetensors, several as model-0000K-of-0000N.safetensors plus model.safetensors.index.json
 * ({"metadata":{"total_size":BYTES},"weight_map":{...}}). max_shard_bytes = 0: no limit.
 * Weight files of a previous save in dir that this save did not write are removed afterwards.
 */
lt_status lt_st_write_sharded(const char *dir, const lt_st_entry *entries, int n, uint64_t max_shard_bytes,
                              lt_error *err);

#endif /* LT_SAFETENSORS_H */

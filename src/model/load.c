/*
 * load.c - the streamed loader: a Hugging Face model directory (or random values) into backend weights,
 * one tensor at a time and a chunk of it at a time; quantizing a loaded model.
 *
 * defines: lt_model_params_init, lt_model_load, lt_model_load_chunked, lt_model_create_random(_params),
 *          lt_model_quantize
 *
 * Every frozen tensor goes from a source to a sink through one small f32 buffer (LT_LOAD_CHUNK floats):
 *   sources  a checkpoint tensor (F32 / F16 / BF16: its file read by formats/safetensors.c's reader, whose
 *            thread reads the next pieces while this one converts the last; O_DIRECT where the file system
 *            allows it, so no page cache), random values (lt_model_create_random), or f32 weights already
 *            loaded (lt_model_quantize);
 *   sinks    f32 backend memory (or the mapped f32 bytes themselves, used in place), the packed bf16
 *            layout (base_dtype LT_BASE_BF16: a block of 16 rows at a time), or a blockwise-quantized
 *            tensor (NF4 / FP4 / int8, + double quantization: whole blocks at a time, the double
 *            quantization once the tensor's absmax values are all in).
 * So the memory of a load is what the model keeps plus one chunk and the reader's buffers (24 MiB; and,
 * for a quantized tensor on a backend not in host memory, its host codes until they are copied over): a
 * 16 GB bf16 checkpoint quantized to NF4 never exists in f32, and its file pages do not stay resident.
 * The bytes are those of converting the whole tensor first (conversion and packing work element by
 * element; quantization block by block, and formats/quant.c's lt_qtensor_quantize_part gives the
 * whole-tensor bytes): tests/test_stream.c.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "formats/quant.h"
#include "loratune_experimental.h"
#include "model/model.h"

#define LT_LOAD_CHUNK ((size_t)1 << 20) /* floats of the conversion buffer: 4 MiB */
#define LT_LOAD_BLOCK 16384             /* elements a thread converts at a time: 64 KiB of f32 */

/* ---- owned backend memory ----------------------------------------------------------------------- */

static lt_status track(lt_model *m, void *p, lt_error *err) {
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? 2 * m->cap_owned : 64;
        void **o = realloc(m->owned, (size_t)cap * sizeof *o);
        if (!o) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
        m->owned = o;
        m->cap_owned = cap;
    }
    m->owned[m->n_owned++] = p;
    return LT_OK;
}

/* a tracked backend allocation of `bytes` (freed with the model) */
static lt_status alloc_owned(lt_model *m, size_t bytes, const char *what, void **out, lt_error *err) {
    void *d = m->be->ops->alloc(m->be, bytes ? bytes : 1);
    if (!d) return lt_fail(err, LT_ERR_NOMEM, "%s: cannot allocate %zu bytes for %s", m->dir, bytes, what);
    lt_status st = track(m, d, err);
    if (st != LT_OK) {
        m->be->ops->free(m->be, d);
        return st;
    }
    *out = d;
    return LT_OK;
}

/* remove p from the owned list and free it (f32 weights replaced by their quantized form) */
static void untrack_free(lt_model *m, void *p) {
    for (int i = 0; i < m->n_owned; i++)
        if (m->owned[i] == p) {
            m->owned[i] = m->owned[--m->n_owned];
            m->be->ops->free(m->be, p);
            return;
        }
}

/* A NaN or Inf in a checkpoint tensor: refused at load (m->check_finite), naming it, rather than
 * noticed as a non-finite loss at the first step. index: the element of the stored tensor. */
static lt_status nonfinite_weight(const lt_model *m, const char *name, int64_t index, float value, lt_error *err) {
    return lt_fail(err, LT_ERR_NUMERIC,
                   "%s: tensor \"%s\" holds %g at element %lld: the checkpoint is corrupt (NaN / Inf weights give "
                   "NaN losses); lt_model_params.skip_finite_check = 1 loads it anyway",
                   m->dir, name, (double)value, (long long)index);
}

/* ---- sources: the values of one tensor, front to back ------------------------------------------- */

/* Exactly one of t, host, dev is set, or none: random values. */
typedef struct wsrc {
    const lt_st_tensor *t; /* a checkpoint tensor                                           */
    const float *host;     /* f32 values in host memory                                     */
    const float *dev;      /* f32 values in backend memory                                  */
    int64_t off;           /* first element (a projection of a fused module: its row block) */
    uint64_t stream;       /* random: the tensor's counter stream                            */
    float std, one;        /* random: N(0, std^2), or all `one` when std == 0 (norms)        */
} wsrc;

/* What a load (or a quantization) keeps while it runs. */
typedef struct loader {
    lt_model *m;
    const lt_model_params *p;
    float *buf; /* conversion buffer, cap floats */
    size_t cap, chunk;
    uint64_t seed;    /* random models */
    float init_std;   /* random models; 0: a checkpoint */
    uint64_t n_rand;  /* random tensors so far (each gets its own stream) */
    int in_place;     /* f32 tensors used from the mapping (the files stay open) */
    lt_st_reader *rd; /* a checkpoint's files, read ahead (made at the first read, freed before they close) */
} loader;

/* the buffer holds at least n floats */
static lt_status need_buf(loader *ld, size_t n, lt_error *err) {
    if (n <= ld->cap) return LT_OK;
    float *b = realloc(ld->buf, n * sizeof *b);
    if (!b) return lt_fail(err, LT_ERR_NOMEM, "%s: out of memory for a %zu-float load buffer", ld->m->dir, n);
    ld->buf = b;
    ld->cap = n;
    return LT_OK;
}

/* N(0, std^2) values of a counter-based generator: pair j of stream s is made from hashes of
 * (seed, s, j, k), k = 0, 1, ... until Marsaglia's polar method accepts one (u, v) (78.5% the first
 * time), so any chunk can be made on its own and in parallel, with one logf and one sqrtf per pair. */
static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static void random_values(float *dst, uint64_t seed, const wsrc *s, int64_t i0, int64_t n) {
    if (s->std == 0.0f) {
        for (int64_t i = 0; i < n; i++) dst[i] = s->one;
        return;
    }
    const uint64_t key = mix64(seed ^ mix64(s->stream + 0x9E3779B97F4A7C15ull));
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = i0 & ~(int64_t)1; i < i0 + n; i += 2) {
        float u, v, q;
        uint64_t k = 0;
        do { /* (u, v) uniform in the square (-1, 1)^2 until it falls inside the unit disc */
            const uint64_t h = mix64(key + 0x9E3779B97F4A7C15ull * (uint64_t)(i / 2 + 1) + 0xD1B54A32D192ED03ull * k++);
            u = (float)(int32_t)(uint32_t)h * (1.0f / 2147483648.0f);
            v = (float)(int32_t)(uint32_t)(h >> 32) * (1.0f / 2147483648.0f);
            q = u * u + v * v;
        } while (!(q > 0.0f && q < 1.0f));
        const float f = s->std * sqrtf(-2.0f * logf(q) / q);
        if (i >= i0) dst[i - i0] = u * f;
        if (i + 1 < i0 + n) dst[i + 1 - i0] = v * f;
    }
}

/* dst (n) = elements [i0, i0 + n) of the source as f32. A checkpoint tensor's values, with m->check_finite,
 * are checked for NaN / Inf block by block as they are converted, while in cache (no second pass over the
 * weights): LT_ERR_NUMERIC naming the tensor and the first such element; a read error: LT_ERR_IO naming
 * the tensor and its file. The other sources are finite by construction (random) or were checked when
 * loaded (a loaded model's f32 weights). */
static lt_status src_read(loader *ld, const wsrc *s, float *dst, int64_t i0, int64_t n, lt_error *err) {
    lt_model *m = ld->m;
    if (s->host) {
        memcpy(dst, s->host + s->off + i0, (size_t)n * sizeof(float));
    } else if (s->dev) {
        m->be->ops->download(m->be, dst, s->dev + s->off + i0, (size_t)n * sizeof(float));
    } else if (!s->t) {
        random_values(dst, ld->seed, s, s->off + i0, n);
    } else {
        /* The file's bytes come from the reader (formats/safetensors.c: its thread reads the next pieces
         * of the tensor while these are converted, here by the OpenMP team), a piece at a time. */
        const size_t es = lt_dtype_size(s->t->dtype);
        const uint64_t b0 = (uint64_t)(s->off + i0) * es;
        const int check = m->check_finite;
        lt_status st = ld->rd ? LT_OK : lt_st_reader_create(m->st, 1, &ld->rd, err);
        int64_t bad = n; /* the first non-finite element of the chunk */
        for (int64_t k0 = 0; st == LT_OK && k0 < n && bad == n;) {
            const void *piece;
            uint64_t got;
            if ((st = lt_st_reader_get(ld->rd, s->t, b0 + (uint64_t)k0 * es, (uint64_t)(n - k0) * es, &piece, &got,
                                       err)) != LT_OK)
                break;
            if (!piece) { /* not in a file: a private copy in memory */
                piece = (const unsigned char *)s->t->data + b0 + (uint64_t)k0 * es;
                got = (uint64_t)(n - k0) * es;
            }
            const unsigned char *src = piece;
            float *out = dst + k0;
            const int64_t cnt = (int64_t)(got / es);
#pragma omp parallel for schedule(static) reduction(min : bad) if (cnt > 65536)
            for (int64_t k = 0; k < cnt; k += LT_LOAD_BLOCK) {
                const int64_t e = k + LT_LOAD_BLOCK < cnt ? k + LT_LOAD_BLOCK : cnt;
                if (!check) {
                    lt_convert_to_f32(out + k, src + (size_t)k * es, s->t->dtype, (size_t)(e - k));
                    continue;
                }
                const int64_t b =
                    (int64_t)lt_convert_to_f32_finite(out + k, src + (size_t)k * es, s->t->dtype, (size_t)(e - k));
                if (b < e - k && k0 + k + b < bad) bad = k0 + k + b;
            }
            k0 += cnt;
        }
        if (st != LT_OK) return lt_fail_prefix(err, "%s: tensor \"%s\"", m->dir, s->t->name);
        if (bad < n) return nonfinite_weight(m, s->t->name, s->off + i0 + bad, dst[bad], err);
    }
    return LT_OK;
}

/* ---- sinks -------------------------------------------------------------------------------------- */

/* 1 if what src_read gives is known to be finite: a checkpoint's values checked as they were converted
 * (m->check_finite), or random values; a loaded model's weights (host, dev) are checked again by whoever
 * needs them finite (the quantizer), as their model may have skipped the check. */
static int src_finite(const lt_model *m, const wsrc *s) { return s->t ? m->check_finite : !s->host && !s->dev; }

/* *out = n f32 values of the source in backend memory: the mapped bytes themselves when the backend
 * shares host memory, the tensor is f32 and aligned and use_mmap allows it; else a converted copy. */
static lt_status sink_f32(loader *ld, const wsrc *s, int64_t n, const char *name, float **out, lt_error *err) {
    lt_model *m = ld->m;
    const lt_backend_ops *ops = m->be->ops;
    m->n_params += n;
    m->weight_bytes += n * (int64_t)sizeof(float);
    if (s->t && ops->host_memory && ld->p->use_mmap && s->t->dtype == LT_DT_F32 && s->off == 0 && s->t->numel == n &&
        ((uintptr_t)s->t->data & 3) == 0) {
        /* read-only use: the mapping is private. The scan is the first read of these pages; the forward
         * then finds them in the page cache. */
        const float *f = (const float *)s->t->data;
        const size_t bad = m->check_finite ? lt_first_nonfinite(f, (size_t)n) : (size_t)n;
        if (bad < (size_t)n) return nonfinite_weight(m, s->t->name, (int64_t)bad, f[bad], err);
        *out = (float *)(uintptr_t)s->t->data;
        ld->in_place = 1;
        return LT_OK;
    }
    float *dst;
    lt_status st = alloc_owned(m, (size_t)n * sizeof(float), name, (void **)&dst, err);
    if (st != LT_OK) return st;
    if (!ops->host_memory && (st = need_buf(ld, ld->chunk, err)) != LT_OK) return st;
    for (int64_t i0 = 0; i0 < n && st == LT_OK; i0 += (int64_t)ld->chunk) {
        const int64_t k = n - i0 < (int64_t)ld->chunk ? n - i0 : (int64_t)ld->chunk;
        if (ops->host_memory) {
            st = src_read(ld, s, dst + i0, i0, k, err); /* straight into place */
        } else if ((st = src_read(ld, s, ld->buf, i0, k, err)) == LT_OK) {
            ops->upload(m->be, dst + i0, ld->buf, (size_t)k * sizeof(float));
        }
    }
    if (st == LT_OK) *out = dst; /* else dst is freed with the model */
    return st;
}

/* *W = the (out, in) source in the backend's packed bf16 layout, 16 rows (a block of the layout) at a
 * time or more: the packed rows [r0, ..) of a block boundary r0 start at bf16_weight_bytes(r0, in). */
static lt_status sink_bf16(loader *ld, const wsrc *s, int out, int in, const char *name, lt_weight *W, lt_error *err) {
    lt_model *m = ld->m;
    const lt_backend_ops *ops = m->be->ops;
    const size_t bytes = ops->bf16_weight_bytes(m->be, out, in);
    int rows = (int)(ld->chunk / (size_t)in) / 16 * 16;
    if (rows < 16) rows = 16;
    if (rows > out) rows = out;
    char *dst;
    lt_status st = need_buf(ld, (size_t)rows * in, err);
    if (st == LT_OK) st = alloc_owned(m, bytes, name, (void **)&dst, err);
    if (st != LT_OK) return st;
    for (int r0 = 0; r0 < out && st == LT_OK; r0 += rows) {
        const int k = out - r0 < rows ? out - r0 : rows;
        if ((st = src_read(ld, s, ld->buf, (int64_t)r0 * in, (int64_t)k * in, err)) == LT_OK)
            ops->bf16_weight_pack(m->be, dst + ops->bf16_weight_bytes(m->be, r0, in), ld->buf, k, in);
    }
    if (st != LT_OK) return st; /* dst is freed with the model */
    *W = (lt_weight){.format = LT_WEIGHT_BF16, .bf16 = dst};
    m->n_params += (int64_t)out * in;
    m->weight_bytes += (int64_t)bytes;
    return LT_OK;
}

/* the 8-bit map of double quantization, once per model on the backend */
static lt_status model_code8(lt_model *m, lt_error *err) {
    if (m->code8) return LT_OK;
    lt_status st = alloc_owned(m, 256 * sizeof(float), "the 8-bit code map", (void **)&m->code8, err);
    if (st == LT_OK) m->be->ops->upload(m->be, m->code8, lt_quant_code8(), 256 * sizeof(float));
    return st;
}

/* The bytes of the one backend allocation of a quantized weight: its f32 part first (absmax, or absmax2
 * with double quantization: aligned at the start), then the u8 codes of the absmax (double quantization),
 * then the codes of the weights. */
static void qweight_parts(const lt_qtensor *q, size_t *na, size_t *nq, size_t *nd) {
    *na = q->double_quant ? (size_t)q->n_blocks2 * 4 : (size_t)q->n_blocks * 4;
    *nq = q->double_quant ? (size_t)q->n_blocks : 0;
    *nd = lt_qtensor_data_bytes(q);
}

/* W = the quantized weight of shape and format q whose parts are in backend block blk (qweight_parts) */
static void set_qweight(lt_model *m, lt_weight *W, const lt_qtensor *q, char *blk) {
    size_t na, nq, nd;
    qweight_parts(q, &na, &nq, &nd);
    lt_qdesc d = lt_qtensor_desc(q);
    d.data = (const uint8_t *)(blk + na + nq);
    if (q->double_quant) {
        d.absmax2 = (const float *)blk;
        d.qabsmax = (const uint8_t *)(blk + na);
        d.code8 = m->code8;
    } else {
        d.absmax = (const float *)blk;
    }
    *W = (lt_weight){.format = LT_WEIGHT_QUANT, .q = d, .double_quant = q->double_quant};
    m->weight_bytes += lt_qtensor_bytes(q);
    m->quant_bytes += lt_qtensor_bytes(q);
    m->quant_params += q->numel;
    m->quant = q->format;
    m->quant_blocksize = q->blocksize;
    m->quant_double = q->double_quant;
}

/* a tracked backend block for quantized weight q (and the 8-bit map of double quantization) */
static lt_status alloc_qweight(lt_model *m, const lt_qtensor *q, char **blk, lt_error *err) {
    size_t na, nq, nd;
    qweight_parts(q, &na, &nq, &nd);
    lt_status st = q->double_quant ? model_code8(m, err) : LT_OK;
    return st != LT_OK ? st : alloc_owned(m, na + nq + nd, "quantized weights", (void **)blk, err);
}

/* Point W at a backend copy of the parts of host tensor q (rows = out) */
static lt_status weight_from_qtensor(lt_model *m, lt_weight *W, const lt_qtensor *q, lt_error *err) {
    size_t na, nq, nd;
    qweight_parts(q, &na, &nq, &nd);
    char *blk = NULL;
    lt_status st = alloc_qweight(m, q, &blk, err);
    if (st != LT_OK) return st;
    m->be->ops->upload(m->be, blk, q->double_quant ? (const void *)q->absmax2 : (const void *)q->absmax, na);
    if (nq) m->be->ops->upload(m->be, blk + na, q->qabsmax, nq);
    m->be->ops->upload(m->be, blk + na + nq, q->data, nd);
    set_qweight(m, W, q, blk);
    return LT_OK;
}

/* *W = the (out, in) source quantized as ld->p says, whole blocks at a time through the buffer. On a
 * backend in host memory the codes are written straight into the model's allocation (a view: q's parts
 * point into it): no host copy to move over, and its pages are first touched once, by the quantizer. */
static lt_status sink_quant(loader *ld, const wsrc *s, int out, int in, const char *name, lt_weight *W, lt_error *err) {
    lt_model *m = ld->m;
    const lt_model_params *p = ld->p;
    const int64_t shape[2] = {out, in}, n = (int64_t)out * in;
    const int direct = m->be->ops->host_memory;
    lt_qtensor view, *q = NULL;
    char *blk = NULL; /* direct: the model's block (freed with the model on failure) */
    float *am = NULL;
    int named = 0;
    lt_status st;
    if (direct) {
        st = lt_qtensor_layout(&view, shape, 2, p->quantization, p->quant_blocksize, p->double_quant, err);
        if (st == LT_OK) st = alloc_qweight(m, &view, &blk, err);
        if (st == LT_OK) {
            size_t na, nq, nd;
            qweight_parts(&view, &na, &nq, &nd);
            q = &view;
            q->data = (uint8_t *)(blk + na + nq);
            if (q->double_quant) {
                q->absmax2 = (float *)blk;
                q->qabsmax = (uint8_t *)(blk + na);
            } else {
                q->absmax = (float *)blk;
            }
        }
    } else {
        st = lt_qtensor_alloc(shape, 2, p->quantization, p->quant_blocksize, p->double_quant, &q, err);
    }
    const int64_t step = ld->chunk >= (size_t)p->quant_blocksize
                             ? (int64_t)ld->chunk / p->quant_blocksize * p->quant_blocksize
                             : p->quant_blocksize;
    if (st == LT_OK) st = need_buf(ld, (size_t)step, err);
    if (st == LT_OK && !(am = q->double_quant ? malloc((size_t)q->n_blocks * sizeof *am) : q->absmax))
        st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
    for (int64_t i0 = 0; st == LT_OK && i0 < n; i0 += step) {
        const int64_t k = n - i0 < step ? n - i0 : step;
        if ((st = src_read(ld, s, ld->buf, i0, k, err)) != LT_OK) {
            named = 1; /* a non-finite weight: the message names the checkpoint tensor */
            break;
        }
        st = lt_qtensor_quantize_part(q, ld->buf, i0, k, src_finite(m, s), am, err);
    }
    if (st == LT_OK) {
        lt_qtensor_quantize_finish(q, am, NULL);
        if (direct) set_qweight(m, W, q, blk);
        else st = weight_from_qtensor(m, W, q, err);
        if (st == LT_OK) m->n_params += n;
    } else if (q && !named) {
        lt_fail_prefix(err, "%s: quantizing \"%s\"", m->dir, name);
    }
    if (q && q->double_quant) free(am);
    if (!direct) lt_qtensor_free(q);
    return st;
}

/* ---- tensors of a checkpoint (or of a random model) ---------------------------------------------- */

/* *s = the source of tensor `name` of shape sh (ndim <= 3): checked against the checkpoint (present, that
 * shape, a float dtype), or random values (norm: all 1) */
static lt_status find_src_nd(loader *ld, const char *name, int ndim, const int64_t *sh, int norm, wsrc *s,
                             lt_error *err) {
    lt_model *m = ld->m;
    memset(s, 0, sizeof *s);
    if (ld->init_std > 0) {
        s->stream = ld->n_rand++;
        s->std = norm ? 0.0f : ld->init_std;
        s->one = 1.0f;
        return LT_OK;
    }
    const lt_st_tensor *t = lt_st_set_find(m->st, name);
    if (!t) return lt_fail(err, LT_ERR_MISSING, "%s: tensor \"%s\" is missing from the checkpoint", m->dir, name);
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == sh[i];
    if (!ok) {
        char got[128] = "", want[128] = "", *g = got, *w = want;
        for (int i = 0; i < t->ndim && g < got + sizeof got - 24; i++)
            g += sprintf(g, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        for (int i = 0; i < ndim; i++) w += sprintf(w, "%s%lld", i ? ", " : "", (long long)sh[i]);
        return lt_fail(err, LT_ERR_SHAPE, "%s: tensor \"%s\" has shape [%s], expected [%s] from config.json", m->dir,
                       name, got, want);
    }
    if (t->dtype != LT_DT_F32 && t->dtype != LT_DT_F16 && t->dtype != LT_DT_BF16)
        return lt_fail(err, LT_ERR_DTYPE, "%s: tensor \"%s\" has dtype %s; weights must be F32, F16 or BF16", m->dir,
                       name, lt_dtype_name(t->dtype));
    s->t = t;
    return LT_OK;
}

/* find_src_nd of shape (d0) or (d0, d1) (d1 > 0) */
static lt_status find_src(loader *ld, const char *name, int64_t d0, int64_t d1, int norm, wsrc *s, lt_error *err) {
    const int64_t sh[2] = {d0, d1};
    return find_src_nd(ld, name, d1 > 0 ? 2 : 1, sh, norm, s, err);
}

/* an f32 tensor (embeddings of an f32 base, norms, biases, f32 projections) */
static lt_status load_f32(loader *ld, const char *name, int64_t d0, int64_t d1, int norm, float **out, lt_error *err) {
    wsrc s;
    lt_status st = find_src(ld, name, d0, d1, norm, &s, err);
    return st != LT_OK ? st : sink_f32(ld, &s, d0 * (d1 > 0 ? d1 : 1), name, out, err);
}

/* A norm weight (C): *file gets the checkpoint tensor, *compute what the forward multiplies by:
 * the same pointer, or a copy holding norm_offset + w (Gemma's (1 + w) RMSNorm). */
static lt_status load_norm(loader *ld, const char *name, int64_t C, float **compute, float **file, lt_error *err) {
    lt_model *m = ld->m;
    lt_status st = load_f32(ld, name, C, 0, 1, file, err);
    if (st != LT_OK) return st;
    *compute = *file;
    if (m->cfg.norm_offset == 0.0f) return LT_OK;
    float *h = malloc((size_t)C * sizeof *h), *d = NULL;
    st = h ? alloc_owned(m, (size_t)C * sizeof(float), name, (void **)&d, err)
           : lt_fail(err, LT_ERR_NOMEM, "out of memory");
    if (st == LT_OK) {
        m->be->ops->download(m->be, h, *file, (size_t)C * sizeof(float));
        for (int64_t i = 0; i < C; i++) h[i] = m->cfg.norm_offset + h[i]; /* fp32, as transformers' 1.0 + w.float() */
        m->be->ops->upload(m->be, d, h, (size_t)C * sizeof(float));
        *compute = d;
    }
    free(h);
    return st;
}

/* bitsandbytes 4-bit serialization of weight `name` (transformers' Linear4bit state dict):
 *   name (U8 packed, any shape), name.absmax (F32, or U8 with nested), name.quant_map (F32 16),
 *   name.nested_absmax (F32), name.nested_quant_map (F32 256), name.quant_state.bitsandbytes__nf4|fp4
 *   (U8: JSON {quant_type, blocksize, dtype, shape, nested_blocksize, nested_dtype, nested_offset}).
 * The parts are copied as stored and their file pages dropped. Returns LT_ERR_MISSING (without a
 * message) when name is not stored that way. */
static lt_status load_bnb_weight(loader *ld, const char *name, int out, int in, lt_weight *W, lt_error *err) {
    lt_model *m = ld->m;
    if (ld->init_std > 0) return LT_ERR_MISSING;
    char key[320];
    const lt_st_tensor *qs = NULL;
    const char *qtype = NULL;
    static const char *const types[] = {"nf4", "fp4"};
    for (int i = 0; i < 2 && !qs; i++) {
        snprintf(key, sizeof key, "%s.quant_state.bitsandbytes__%s", name, types[i]);
        if ((qs = lt_st_set_find(m->st, key))) qtype = types[i];
    }
    if (!qs) return LT_ERR_MISSING;
    json_error_t je;
    json_t *js = json_loadb(qs->data, (size_t)qs->nbytes, 0, &je);
    if (!js) return lt_fail(err, LT_ERR_JSON, "%s: %s does not parse: %s", m->dir, key, je.text);
    lt_status st = LT_OK;
    json_t *bs = json_object_get(js, "blocksize"), *shape = json_object_get(js, "shape");
    json_t *noff = json_object_get(js, "nested_offset"), *nbs = json_object_get(js, "nested_blocksize");
    if (!json_is_integer(bs) || !json_is_array(shape) || json_array_size(shape) != 2 ||
        json_integer_value(json_array_get(shape, 0)) != out || json_integer_value(json_array_get(shape, 1)) != in) {
        st = lt_fail(err, LT_ERR_SHAPE, "%s: %s: blocksize or shape missing, or shape is not [%d, %d]", m->dir, key,
                     out, in);
    } else if (noff && nbs && json_integer_value(nbs) != LT_NESTED_BLOCK) {
        st = lt_fail(err, LT_ERR_UNSUPPORTED, "%s: %s: nested_blocksize %lld (only 256 is supported)", m->dir, key,
                     (long long)json_integer_value(nbs));
    }
    const int dq = noff != NULL;
    lt_qtensor *q = NULL;
    const int64_t sh[2] = {out, in};
    if (st == LT_OK)
        st = lt_qtensor_alloc(sh, 2, !strcmp(qtype, "nf4") ? LT_QUANT_NF4 : LT_QUANT_FP4, (int)json_integer_value(bs),
                              dq, &q, err);
    if (st == LT_OK && dq) q->offset = (float)json_number_value(noff);
    json_decref(js);
    /* the parts, each checked for dtype and byte count */
    struct {
        const char *suffix;
        lt_dtype dt;
        void *dst;
        size_t bytes;
        const void *expect;
    } parts[] = {
        {"", LT_DT_U8, q ? q->data : NULL, q ? lt_qtensor_data_bytes(q) : 0, NULL},
        {".absmax", dq ? LT_DT_U8 : LT_DT_F32, q ? (dq ? (void *)q->qabsmax : (void *)q->absmax) : NULL,
         q ? (size_t)q->n_blocks * (dq ? 1 : 4) : 0, NULL},
        {".quant_map", LT_DT_F32, NULL, 64, q ? lt_quant_code4(q->format) : NULL},
        {".nested_absmax", LT_DT_F32, q ? q->absmax2 : NULL, q ? (size_t)q->n_blocks2 * 4 : 0, NULL},
        {".nested_quant_map", LT_DT_F32, NULL, 1024, lt_quant_code8()},
    };
    for (int i = 0; st == LT_OK && i < (dq ? 5 : 3); i++) {
        snprintf(key, sizeof key, "%s%s", name, parts[i].suffix);
        const lt_st_tensor *t = lt_st_set_find(m->st, key);
        if (!t)
            st = lt_fail(err, LT_ERR_MISSING, "%s: tensor \"%s\" of a bitsandbytes %s weight is missing", m->dir, key,
                         qtype);
        else if (t->dtype != parts[i].dt || t->nbytes != parts[i].bytes)
            st = lt_fail(err, LT_ERR_SHAPE, "%s: tensor \"%s\" is %s with %llu bytes, expected %s with %zu", m->dir,
                         key, lt_dtype_name(t->dtype), (unsigned long long)t->nbytes, lt_dtype_name(parts[i].dt),
                         parts[i].bytes);
        else if (parts[i].expect && memcmp(t->data, parts[i].expect, parts[i].bytes))
            st = lt_fail(err, LT_ERR_UNSUPPORTED, "%s: tensor \"%s\" is not the standard bitsandbytes %s code", m->dir,
                         key, i == 2 ? qtype : "dynamic 8-bit");
        else if (parts[i].dst) memcpy(parts[i].dst, t->data, parts[i].bytes);
        if (t) lt_st_set_advise(m->st, t, 0, t->nbytes, 1);
    }
    if (st == LT_OK && m->check_finite) { /* the statistics: a NaN absmax makes its whole block NaN */
        const float *f = dq ? q->absmax2 : q->absmax;
        const size_t nf = dq ? (size_t)q->n_blocks2 : (size_t)q->n_blocks, bad = lt_first_nonfinite(f, nf);
        snprintf(key, sizeof key, "%s%s", name, dq ? ".nested_absmax" : ".absmax");
        if (bad < nf) st = nonfinite_weight(m, key, (int64_t)bad, f[bad], err);
        else if (dq && !isfinite(q->offset))
            st = lt_fail(err, LT_ERR_NUMERIC,
                         "%s: the nested_offset of \"%s\" is %g: the checkpoint is corrupt; "
                         "lt_model_params.skip_finite_check = 1 loads it anyway",
                         m->dir, name, (double)q->offset);
    }
    if (st == LT_OK) {
        m->n_params += (int64_t)out * in;
        st = weight_from_qtensor(m, W, q, err);
    }
    lt_qtensor_free(q);
    return st;
}

/* A frozen (out, in) weight of a given source in the model's storage: quantized when the params ask for
 * it (quantize: projections, or a quantize_lm_head head), else bf16 for a bf16 base, else f32. */
static lt_status sink_weight(loader *ld, const wsrc *s, int out, int in, int quantize, const char *name, lt_weight *W,
                             lt_error *err) {
    if (quantize) return sink_quant(ld, s, out, in, name, W, err);
    if (ld->m->base_dtype == LT_BASE_BF16) return sink_bf16(ld, s, out, in, name, W, err);
    *W = (lt_weight){.format = LT_WEIGHT_F32};
    return sink_f32(ld, s, (int64_t)out * in, name, &W->f32, err);
}

/* The projections of module mod of layer L: a pre-quantized bitsandbytes weight as stored, else the
 * checkpoint tensor (a fused module such as Phi-3's qkv_proj holds several projections as row blocks),
 * each projection quantized or packed on its own; f32 projections point at the row blocks of one
 * f32 module weight. */
static lt_status load_module(loader *ld, lt_layer *L, int l, const lt_module *mod, lt_error *err) {
    lt_model *m = ld->m;
    char name[256];
    int in, out;
    lt_module_dims(&m->cfg, mod, &in, &out);
    snprintf(name, sizeof name, "model.layers.%d.%s.%s.weight", l, mod->parent, mod->name);
    lt_status st;
    if (mod->count == 1) { /* a pre-quantized (bitsandbytes) checkpoint stores it quantized */
        st = load_bnb_weight(ld, name, out, in, &L->w[mod->first], err);
        if (st != LT_ERR_MISSING) return st;
    }
    wsrc s;
    if ((st = find_src(ld, name, out, in, 0, &s, err)) != LT_OK) return st;
    const int quantize = ld->p->quantization != LT_QUANT_NONE;
    if (!quantize && m->base_dtype == LT_BASE_F32) {
        float *w;
        if ((st = sink_f32(ld, &s, (int64_t)out * in, name, &w, err)) != LT_OK) return st;
        for (int q = mod->first; q < mod->first + mod->count; q++) {
            int pi, po;
            lt_proj_dims(&m->cfg, (lt_proj)q, &pi, &po);
            L->w[q] = (lt_weight){.format = LT_WEIGHT_F32, .f32 = w};
            w += (size_t)po * pi;
        }
        return LT_OK;
    }
    for (int q = mod->first; q < mod->first + mod->count && st == LT_OK; q++) {
        int pi, po;
        lt_proj_dims(&m->cfg, (lt_proj)q, &pi, &po);
        st = sink_weight(ld, &s, po, pi, quantize, name, &L->w[q], err);
        s.off += (int64_t)po * pi;
    }
    return st;
}

/* The router (E,H) and the experts of MoE layer l, under the family's checkpoint names (lt_moe_parent).
 * The experts are most of an MoE's bytes and are stored like the projections (sink_weight): quantized
 * when the params ask for it (QLoRA on experts), else bf16 for a bf16 base, else f32. The router (small,
 * and the top-k choice is sensitive to it) stays f32. */
static lt_status load_moe(loader *ld, lt_layer *L, int l, lt_error *err) {
    lt_model *m = ld->m;
    const lt_model_config *c = &m->cfg;
    const int E = (int)c->num_experts, H = (int)c->hidden_size, MI = (int)c->moe_intermediate_size;
    const int quantize = ld->p->quantization != LT_QUANT_NONE;
    char name[256];
    snprintf(name, sizeof name, "model.layers.%d.%s.gate.weight", l, lt_moe_parent(c));
    lt_status st = load_f32(ld, name, E, H, 0, &L->router, err);
    if (st == LT_OK && !(L->experts = calloc((size_t)E * 3, sizeof *L->experts)))
        st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
    for (int e = 0; st == LT_OK && e < E; e++)
        for (int k = 0; st == LT_OK && k < 3; k++) {
            const int out = k == 2 ? H : MI, in = k == 2 ? MI : H;
            lt_weight *W = &L->experts[3 * e + k];
            wsrc s;
            snprintf(name, sizeof name, "model.layers.%d.%s.experts.%d.%s.weight", l, lt_moe_parent(c), e,
                     lt_moe_proj_name(c, k));
            if ((st = find_src(ld, name, out, in, 0, &s, err)) == LT_OK)
                st = sink_weight(ld, &s, out, in, quantize, name, W, err);
        }
    return st;
}

/* ---- gpt-oss's experts (docs/spec/gpt_oss.md) ------------------------------------------------------- */

/* The value of each 4-bit MXFP4 code (e2m1: sign, 2 exponent bits, 1 mantissa bit), transformers'
 * FP4_VALUES (integrations/mxfp4.py). */
static const float k_mxfp4[16] = {+0.0f, +0.5f, +1.0f, +1.5f, +2.0f, +3.0f, +4.0f, +6.0f,
                                  -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

/* An expert tensor `name` of gpt-oss stored as MXFP4 (the release checkpoints): name_blocks U8 (E, out,
 * in/32, 16), two codes a byte (the low nibble first), and name_scales U8 (E, out, in/32), the power of two
 * of each group of 32 as exponent + 127. LT_OK with *blocks, *scales set, or NULL when neither is stored;
 * anything else malformed: a status naming the tensor. */
static lt_status find_mxfp4(loader *ld, const char *name, int64_t E, int64_t out, int64_t in,
                            const lt_st_tensor **blocks, const lt_st_tensor **scales, lt_error *err) {
    lt_model *m = ld->m;
    char key[300];
    *blocks = *scales = NULL;
    if (ld->init_std > 0) return LT_OK;
    snprintf(key, sizeof key, "%s_blocks", name);
    const lt_st_tensor *b = lt_st_set_find(m->st, key);
    snprintf(key, sizeof key, "%s_scales", name);
    const lt_st_tensor *sc = lt_st_set_find(m->st, key);
    if (!b && !sc) return LT_OK;
    if (in % 32 != 0)
        return lt_fail(err, LT_ERR_SHAPE, "%s: MXFP4 tensor \"%s\": its input size %lld is not a multiple of 32",
                       m->dir, name, (long long)in);
    const int64_t G = in / 32;
    if (!b || !sc)
        return lt_fail(err, LT_ERR_MISSING, "%s: MXFP4 tensor \"%s\" has %s but no %s", m->dir, name,
                       b ? "_blocks" : "_scales", b ? "_scales" : "_blocks");
    const int ok_b = b->dtype == LT_DT_U8 && b->ndim == 4 && b->shape[0] == E && b->shape[1] == out &&
                     b->shape[2] == G && b->shape[3] == 16;
    const int ok_s =
        sc->dtype == LT_DT_U8 && sc->ndim == 3 && sc->shape[0] == E && sc->shape[1] == out && sc->shape[2] == G;
    if (!ok_b || !ok_s)
        return lt_fail(err, LT_ERR_SHAPE,
                       "%s: MXFP4 tensor \"%s\": expected %s_blocks U8 [%lld, %lld, %lld, 16] and %s_scales U8 "
                       "[%lld, %lld, %lld] from config.json (got %s with %d dimensions, %s with %d)",
                       m->dir, name, name, (long long)E, (long long)out, (long long)G, name, (long long)E,
                       (long long)out, (long long)G, lt_dtype_name(b->dtype), b->ndim, lt_dtype_name(sc->dtype),
                       sc->ndim);
    *blocks = b;
    *scales = sc;
    return LT_OK;
}

/* w (out, in) = expert e of an MXFP4 tensor: code * 2^(scale - 127) (transformers' ldexp, exact in f32;
 * a scale past the float range gives Inf, refused by the finite check when it is on). */
static lt_status mxfp4_expert(loader *ld, const char *name, const lt_st_tensor *blocks, const lt_st_tensor *scales,
                              int64_t e, int64_t out, int64_t in, float *w, lt_error *err) {
    const int64_t G = in / 32;
    const unsigned char *bp = (const unsigned char *)blocks->data + (size_t)e * out * G * 16;
    const unsigned char *sp = (const unsigned char *)scales->data + (size_t)e * out * G;
    for (int64_t r = 0; r < out; r++)
        for (int64_t g = 0; g < G; g++) {
            const float f = ldexpf(1.0f, (int)sp[r * G + g] - 127);
            const unsigned char *q = bp + (r * G + g) * 16;
            float *o = w + r * in + g * 32;
            for (int j = 0; j < 16; j++) {
                o[2 * j] = k_mxfp4[q[j] & 15] * f;
                o[2 * j + 1] = k_mxfp4[q[j] >> 4] * f;
            }
        }
    if (ld->m->check_finite) {
        const size_t bad = lt_first_nonfinite(w, (size_t)out * in);
        if (bad < (size_t)out * in) return nonfinite_weight(ld->m, name, e * out * in + (int64_t)bad, w[bad], err);
    }
    return LT_OK;
}

/* gpt-oss: the experts of layer l are fused 3-D tensors stored (in, out),
 *   mlp.experts.gate_up_proj (E, H, 2 MI)  gate and up in alternate columns (gate_up[..., ::2], [..., 1::2])
 *   mlp.experts.down_proj    (E, MI, H)
 * or as MXFP4 (find_mxfp4: (out, in) blocks, dequantized on load), with biases gate_up_proj_bias (E, 2 MI)
 * (alternating too) and down_proj_bias (E, H); the router is mlp.router.weight (E, H) and .bias (E).
 * Expert e's slice is read whole into host memory as (out, in), its gate / up rows split, and stored like
 * any expert projection (sink_weight of a host source): quantizing on load and a bf16 base work as for
 * the other families. */
static lt_status load_moe_gpt_oss(loader *ld, lt_layer *L, int l, lt_error *err) {
    lt_model *m = ld->m;
    const lt_model_config *c = &m->cfg;
    const int64_t E = c->num_experts, H = c->hidden_size, MI = c->moe_intermediate_size;
    const int quantize = ld->p->quantization != LT_QUANT_NONE;
    char name[256], bname[272];
    lt_status st;
    snprintf(name, sizeof name, "model.layers.%d.mlp.router.weight", l);
    if ((st = load_f32(ld, name, E, H, 0, &L->router, err)) != LT_OK) return st;
    snprintf(name, sizeof name, "model.layers.%d.mlp.router.bias", l);
    if ((st = load_f32(ld, name, E, 0, 0, &L->router_bias, err)) != LT_OK) return st;
    if (!(L->experts = calloc((size_t)E * 3, sizeof *L->experts))) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    const size_t slice = (size_t)H * 2 * MI; /* the larger of the two slices */
    float *raw = malloc(slice * sizeof *raw), *w = malloc(slice * sizeof *w);
    float *hb = malloc((size_t)E * (2 * MI + H) * sizeof *hb); /* the biases in lt_layer.expert_bias order */
    if (!raw || !w || !hb) st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory for the experts of layer %d", m->dir, l);
    for (int k = 0; st == LT_OK && k < 2; k++) { /* 0: gate_up, 1: down */
        const int64_t in = k == 0 ? H : MI, out = k == 0 ? 2 * MI : H;
        const int64_t sh[3] = {E, in, out}, bsh[2] = {E, out};
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%s", l, k == 0 ? "gate_up_proj" : "down_proj");
        snprintf(bname, sizeof bname, "%s_bias", name);
        const lt_st_tensor *qb = NULL, *qs = NULL;
        wsrc s, sb;
        st = find_mxfp4(ld, name, E, out, in, &qb, &qs, err);
        if (st == LT_OK && !qb) st = find_src_nd(ld, name, 3, sh, 0, &s, err);
        if (st == LT_OK) st = find_src_nd(ld, bname, 2, bsh, 0, &sb, err);
        for (int64_t e = 0; st == LT_OK && e < E; e++) {
            if (qb) { /* (out, in) already */
                if ((st = mxfp4_expert(ld, name, qb, qs, e, out, in, raw, err)) != LT_OK) break;
            } else {
                if ((st = src_read(ld, &s, w, e * in * out, in * out, err)) != LT_OK) break;
                for (int64_t o = 0; o < out; o++) /* (in, out) -> (out, in) */
                    for (int64_t i = 0; i < in; i++) raw[o * in + i] = w[i * out + o];
            }
            /* gate_up's output 2i is gate row i, 2i + 1 up row i */
            for (int64_t o = 0; o < out; o++)
                memcpy(w + (k == 1 ? o : (o % 2) * MI + o / 2) * in, raw + o * in, (size_t)in * sizeof *w);
            for (int part = 0; st == LT_OK && part < (k == 0 ? 2 : 1); part++) {
                const wsrc hs = {.host = w + (size_t)part * MI * H};
                st = sink_weight(ld, &hs, (int)(k == 0 ? MI : H), (int)in, quantize, name,
                                 &L->experts[3 * e + (k == 0 ? part : 2)], err);
            }
            if (st == LT_OK) st = src_read(ld, &sb, raw, e * out, out, err);
            for (int64_t o = 0; st == LT_OK && o < out; o++)
                if (k == 0) hb[e * 2 * MI + (o % 2) * MI + o / 2] = raw[o];
                else hb[E * 2 * MI + e * H + o] = raw[o];
        }
        if (qb) { /* the pages of the codes are not needed again */
            lt_st_set_advise(m->st, qb, 0, qb->nbytes, 1);
            lt_st_set_advise(m->st, qs, 0, qs->nbytes, 1);
        }
    }
    const wsrc bs = {.host = hb};
    if (st == LT_OK) st = sink_f32(ld, &bs, E * (2 * MI + H), "the experts' biases", &L->expert_bias, err);
    free(raw);
    free(w);
    free(hb);
    return st;
}

/* Embeddings and LM head. A bf16 base keeps the embedding table in bf16 (the layout of the bf16
 * products: the lookup reads rows of it, a tied head multiplies by it); an untied head is stored like
 * the projections of that base, or quantized (quantize_lm_head), or as the checkpoint's bnb weight. */
static lt_status load_embeddings(loader *ld, lt_error *err) {
    lt_model *m = ld->m;
    const lt_model_config *c = &m->cfg;
    const int64_t V = c->vocab_size, H = c->hidden_size;
    lt_status st;
    wsrc s;
    if (m->base_dtype == LT_BASE_BF16) {
        lt_weight e;
        if ((st = find_src(ld, "model.embed_tokens.weight", V, H, 0, &s, err)) != LT_OK ||
            (st = sink_bf16(ld, &s, (int)V, (int)H, "model.embed_tokens.weight", &e, err)) != LT_OK)
            return st;
        m->embed_bf16 = e.bf16;
    } else if ((st = load_f32(ld, "model.embed_tokens.weight", V, H, 0, &m->embed, err)) != LT_OK) {
        return st;
    }
    if (c->tie_word_embeddings) {
        m->lm_head = m->embed; /* NULL with a bf16 base: the head is the bf16 table */
        if (m->embed_bf16) m->lm_head_q = (lt_weight){.format = LT_WEIGHT_BF16, .bf16 = m->embed_bf16};
        return LT_OK;
    }
    if ((st = load_bnb_weight(ld, "lm_head.weight", (int)V, (int)H, &m->lm_head_q, err)) != LT_ERR_MISSING)
        return st; /* a pre-quantized LM head (or a broken one) */
    if ((st = find_src(ld, "lm_head.weight", V, H, 0, &s, err)) != LT_OK) {
        if (st == LT_ERR_MISSING) lt_fail_prefix(err, "config.json has tie_word_embeddings false");
        return st;
    }
    const int quantize = ld->p->quantization != LT_QUANT_NONE && ld->p->quantize_lm_head;
    lt_weight h;
    if ((st = sink_weight(ld, &s, (int)V, (int)H, quantize, "lm_head.weight", &h, err)) != LT_OK) return st;
    if (h.format == LT_WEIGHT_F32) m->lm_head = h.f32;
    else m->lm_head_q = h;
    return LT_OK;
}

static lt_status load_layer(loader *ld, int l, lt_error *err) {
    lt_model *m = ld->m;
    const lt_model_config *c = &m->cfg;
    lt_layer *L = &m->layers[l];
    char name[256];
    lt_status st;
#define NAME(...) (snprintf(name, sizeof name, __VA_ARGS__), name)
    lt_layer_norm norms[LT_MAX_LAYER_NORMS];
    const int n_norms = lt_layer_norms(c, norms);
    for (int k = 0; k < n_norms; k++)
        if ((st = load_norm(ld, NAME("model.layers.%d.%s.weight", l, norms[k].name), norms[k].dim,
                            lt_layer_norm_at(L, norms[k].compute), lt_layer_norm_at(L, norms[k].file), err)))
            return st;
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(c, mods);
    for (int k = 0; k < n_mods; k++) {
        if (c->layer_moe[l] && mods[k].first >= P_GATE) continue; /* the experts replace the MLP */
        if ((st = load_module(ld, L, l, &mods[k], err))) return st;
    }
    if (c->layer_moe[l] &&
        (st = c->arch == LT_ARCH_GPT_OSS ? load_moe_gpt_oss(ld, L, l, err) : load_moe(ld, L, l, err)))
        return st;
    if (c->attn_sinks &&
        (st = load_f32(ld, NAME("model.layers.%d.self_attn.sinks", l), c->num_attention_heads, 0, 0, &L->sinks, err)))
        return st;
    for (int q = 0; q < P_COUNT; q++) {
        int in, out;
        lt_proj_dims(c, (lt_proj)q, &in, &out);
        if (c->layer_moe[l] && q >= P_GATE) continue;
        if ((c->bias_mask & (1u << q)) &&
            (st = load_f32(ld, NAME("model.layers.%d.%s.%s.bias", l, lt_proj_parent[q], lt_proj_names[q]), out, 0, 0,
                           &L->bias[q], err)))
            return st;
    }
#undef NAME
    return LT_OK;
}

/* The model's RoPE tables on the backend: inv_freq, longrope's long factors (and the attention factor),
 * Gemma 3's local table. */
static lt_status load_rope(lt_model *m, lt_error *err) {
    const lt_model_config *c = &m->cfg;
    m->rot_dim = c->rot_dim;
    m->rope_mscale =
        c->rope_type == LT_ROPE_LONGROPE || c->rope_type == LT_ROPE_YARN ? (float)c->rope_attention_factor : 1.0f;
    if (m->rot_dim <= 0)
        return lt_fail(err, LT_ERR_FORMAT, "%s: rotary dimension %d is not positive", m->dir, m->rot_dim);
    const int n = m->rot_dim / 2;
    float *inv = malloc((size_t)n * sizeof(float));
    if (!inv) return lt_fail(err, LT_ERR_NOMEM, "out of memory");
    const struct {
        int (*fn)(const lt_model_config *, float *, int);
        float **dst;
        int wanted;
    } tables[] = {{lt_rope_inv_freq, &m->inv_freq, 1},
                  {lt_rope_inv_freq_long, &m->inv_freq_long, c->rope_type == LT_ROPE_LONGROPE},
                  {lt_rope_inv_freq_local, &m->inv_freq_local, c->rope_local_theta > 0}};
    lt_status st = LT_OK;
    for (size_t i = 0; st == LT_OK && i < sizeof tables / sizeof tables[0]; i++) {
        if (!tables[i].wanted) continue;
        if (tables[i].fn(c, inv, n) != n)
            st = lt_fail(err, LT_ERR_UNSUPPORTED, "%s: cannot compute the RoPE frequencies for this config", m->dir);
        if (st == LT_OK)
            st = alloc_owned(m, (size_t)n * sizeof(float), "RoPE frequencies", (void **)tables[i].dst, err);
        if (st == LT_OK) m->be->ops->upload(m->be, *tables[i].dst, inv, (size_t)n * sizeof(float));
    }
    free(inv);
    return st;
}

/* every tensor, then the RoPE tables; a checkpoint's files are closed at the end unless f32 weights are
 * used from their mapping */
static lt_status load_all(loader *ld, lt_error *err) {
    lt_model *m = ld->m;
    const lt_model_config *c = &m->cfg;
    const lt_model_params *p = ld->p;
    if (p->quantization != LT_QUANT_NONE) {
        lt_quant_params qp = {.size = sizeof qp,
                              .format = p->quantization,
                              .blocksize = p->quant_blocksize,
                              .double_quant = p->double_quant};
        if (lt_quant_check_params(&qp, err) != LT_OK) return lt_fail_prefix(err, "lt_model_load");
        if (p->quantize_lm_head && c->tie_word_embeddings)
            return lt_fail(err, LT_ERR_UNSUPPORTED,
                           "lt_model_load: quantize_lm_head: the LM head is tied to the "
                           "embeddings, which stay unquantized (the lookup needs them)");
    }
    lt_status st = load_embeddings(ld, err);
    if (st == LT_OK) st = load_norm(ld, "model.norm.weight", c->hidden_size, &m->final_norm, &m->final_norm_file, err);
    if (st == LT_OK && !(m->layers = calloc((size_t)c->num_hidden_layers, sizeof *m->layers)))
        st = lt_fail(err, LT_ERR_NOMEM, "out of memory");
    for (int l = 0; st == LT_OK && l < c->num_hidden_layers; l++) st = load_layer(ld, l, err);
    if (st == LT_OK) st = load_rope(m, err);
    lt_st_reader_free(ld->rd);
    ld->rd = NULL;
    if (st == LT_OK && m->st && !ld->in_place) { /* nothing points into the files any more */
        lt_st_set_close(m->st);
        m->st = NULL;
    }
    return st == LT_OK ? lt_backend_sync(m->be, err, "loading the model") : st;
}

/* ---- the entry points --------------------------------------------------------------------------- */

LT_API void lt_model_params_init(lt_model_params *out, size_t size) {
    lt_model_params d, *p = &d;
    memset(p, 0, sizeof *p);
    p->size = sizeof *p;
    p->use_mmap = 1;
    p->quantization = LT_QUANT_NONE;
    p->double_quant = 1;
    p->quant_blocksize = 64;
    p->quantize_lm_head = 0;
    lt_fill_struct(out, size, p, sizeof *p);
}

/* *p = the caller's params over the defaults, checked; fn names the entry point in messages */
static lt_status model_params(const char *fn, const lt_model_params *params, lt_model_params *p, lt_error *err) {
    lt_model_params_init(p, sizeof *p);
    if (params) {
        if (params->size < sizeof(size_t) || params->size > sizeof *p)
            return lt_fail(err, LT_ERR_ARGUMENT,
                           "%s: params->size %zu is not a size this library knows (call lt_model_params_init)", fn,
                           params->size);
        memcpy(p, params, params->size);
    }
    if (p->base_dtype != LT_BASE_F32 && p->base_dtype != LT_BASE_BF16)
        return lt_fail(err, LT_ERR_ARGUMENT, "%s: base_dtype %d is neither LT_BASE_F32 (0) nor LT_BASE_BF16 (1)", fn,
                       p->base_dtype);
    if (p->base_dtype == LT_BASE_BF16 && p->quantization == LT_QUANT_INT8)
        return lt_fail(err, LT_ERR_UNSUPPORTED,
                       "%s: int8 weights are multiplied in f32; base_dtype LT_BASE_BF16 goes with nf4 or fp4 "
                       "(or no quantization)",
                       fn);
    return LT_OK;
}

/* A new model from a directory (dir) or random values (config_json, init_std > 0); chunk: floats of
 * the conversion buffer (0: LT_LOAD_CHUNK). */
static lt_status model_create(lt_context *ctx, const char *fn, const char *dir, const char *config_json, uint64_t seed,
                              float init_std, const lt_model_params *params, size_t chunk, lt_model **out) {
    lt_error *err = lt_thread_error();
    lt_error_clear(err);
    if (!out) return lt_fail(err, LT_ERR_ARGUMENT, "%s: out is NULL", fn);
    *out = NULL;
    lt_model_params p;
    lt_status st = model_params(fn, params, &p, err);
    if (st != LT_OK) return st;
    lt_model *m = calloc(1, sizeof *m);
    if (!m) return lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", fn);
    m->ctx = ctx;
    m->be = ctx->be;
    m->base_dtype = p.base_dtype;
    m->check_finite = !p.skip_finite_check;
    snprintf(m->dir, sizeof m->dir, "%s", dir ? dir : "(random)");
    loader ld = {.m = m, .p = &p, .chunk = chunk ? chunk : LT_LOAD_CHUNK, .seed = seed, .init_std = init_std};
    const double t0 = lt_now_seconds();
    if (dir) {
        char path[4200];
        lt_path_join(path, sizeof path, dir, "config.json");
        st = lt_config_load(path, &m->cfg, err);
        /* always mapped: the loader reads each tensor once; use_mmap 0 only forbids using f32 bytes in place */
        if (st == LT_OK && (st = lt_st_set_open_dir(dir, 1, &m->st, err)) == LT_ERR_IO && strstr(err->msg, "mmap")) {
            lt_error_clear(err); /* a file system that cannot map: read the files into memory */
            st = lt_st_set_open_dir(dir, 0, &m->st, err);
        }
        const lt_st_tensor *e = st == LT_OK ? lt_st_set_find(m->st, "model.embed_tokens.weight") : NULL;
        snprintf(m->file_dtype, sizeof m->file_dtype, "%s", e ? lt_dtype_name(e->dtype) : "F32");
    } else {
        st = lt_config_parse(config_json, strlen(config_json), "config", &m->cfg, err);
        snprintf(m->file_dtype, sizeof m->file_dtype, "F32");
        const lt_model_config *c = &m->cfg;
        if (st == LT_OK && (c->fused_proj || c->rope_type == LT_ROPE_LONGROPE || c->norm_offset != 0.0f))
            st = lt_fail(err, LT_ERR_UNSUPPORTED, "%s: %s is not supported here", fn, c->architecture);
    }
    if (st == LT_OK) st = load_all(&ld, err);
    free(ld.buf);
    lt_st_reader_free(ld.rd); /* load_all's early returns */
    if (st != LT_OK) {
        lt_model_free(m);
        return st;
    }
    lt_log(ctx, LT_LOG_INFO, "loaded %s (%s, %lld parameters) in %.2f s", m->dir, m->cfg.architecture,
           (long long)m->n_params, lt_now_seconds() - t0);
    *out = m;
    return LT_OK;
}

lt_status lt_model_load_chunked(lt_context *ctx, const char *dir, const lt_model_params *params, size_t chunk,
                                lt_model **out) {
    if (!ctx || !dir) {
        if (out) *out = NULL;
        return lt_fail(lt_thread_error(), LT_ERR_ARGUMENT, "lt_model_load: ctx and dir must not be NULL");
    }
    if (strlen(dir) >= sizeof(((lt_model *)0)->dir)) {
        if (out) *out = NULL;
        return lt_fail(lt_thread_error(), LT_ERR_ARGUMENT, "lt_model_load: path too long");
    }
    return model_create(ctx, "lt_model_load", dir, NULL, 0, 0.0f, params, chunk, out);
}

LT_API lt_status lt_model_load(lt_context *ctx, const char *dir, const lt_model_params *params, lt_model **out) {
    return lt_model_load_chunked(ctx, dir, params, 0, out);
}

LT_API lt_status lt_model_create_random(lt_context *ctx, const char *config_json, uint64_t seed, float init_std,
                                        lt_model **out) {
    return lt_model_create_random_params(ctx, config_json, seed, init_std, NULL, out);
}

LT_API lt_status lt_model_create_random_params(lt_context *ctx, const char *config_json, uint64_t seed, float init_std,
                                               const lt_model_params *params, lt_model **out) {
    if (!ctx || !config_json) {
        if (out) *out = NULL;
        return lt_fail(lt_thread_error(), LT_ERR_ARGUMENT, "lt_model_create_random: ctx and config_json are required");
    }
    if (!(init_std > 0)) {
        if (out) *out = NULL;
        return lt_fail(lt_thread_error(), LT_ERR_ARGUMENT, "lt_model_create_random: init_std must be positive");
    }
    return model_create(ctx, "lt_model_create_random", NULL, config_json, seed, init_std, params, 0, out);
}

/* ---- quantizing a loaded model ------------------------------------------------------------------ */

LT_API lt_status lt_model_quantize(lt_model *m, const lt_quant_params *params) {
    if (!m) return LT_ERR_ARGUMENT;
    lt_error *err = lt_model_error(m);
    lt_quant_params qp;
    lt_quant_params_init(&qp, sizeof qp);
    if (params) {
        if (params->size < sizeof(size_t) || params->size > sizeof qp)
            return lt_fail(err, LT_ERR_ARGUMENT, "lt_model_quantize: params->size %zu is not a size this library knows",
                           params->size);
        memcpy(&qp, params, params->size);
    }
    lt_status st = lt_quant_check_params(&qp, err);
    if (st != LT_OK) return lt_fail_prefix(err, "lt_model_quantize");
    if (m->n_merged) return lt_fail(err, LT_ERR_STATE, "lt_model_quantize: an adapter is merged into the weights");
    if (m->base_dtype == LT_BASE_BF16)
        return lt_fail(err, LT_ERR_STATE,
                       "lt_model_quantize: the model keeps its projections in bf16; load it with "
                       "LT_BASE_F32 to quantize (or quantize on load)");
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    mp.quantization = qp.format;
    mp.quant_blocksize = qp.blocksize;
    mp.double_quant = qp.double_quant;
    loader ld = {.m = m, .p = &mp, .chunk = LT_LOAD_CHUNK};
    char name[256];
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(&m->cfg, mods);
    for (int l = 0; st == LT_OK && l < m->cfg.num_hidden_layers; l++)
        for (int k = 0; st == LT_OK && k < n_mods; k++) {
            lt_layer *L = &m->layers[l];
            float *w = L->w[mods[k].first].f32; /* a fused module's first block starts its f32 weight */
            if (L->w[mods[k].first].format != LT_WEIGHT_F32 || !w) continue; /* !w: an MoE layer's MLP */
            snprintf(name, sizeof name, "model.layers.%d.%s.%s.weight", l, mods[k].parent, mods[k].name);
            wsrc s = {.host = m->be->ops->host_memory ? w : NULL, .dev = m->be->ops->host_memory ? NULL : w};
            for (int q = mods[k].first; st == LT_OK && q < mods[k].first + mods[k].count; q++) {
                int pi, po;
                lt_proj_dims(&m->cfg, (lt_proj)q, &pi, &po);
                lt_weight W;
                if ((st = sink_quant(&ld, &s, po, pi, name, &W, err)) != LT_OK) break;
                L->w[q] = W;
                m->weight_bytes -= (int64_t)po * pi * (int64_t)sizeof(float);
                m->n_params -= (int64_t)po * pi; /* sink_quant counted them again */
                s.off += (int64_t)po * pi;
            }
            if (st == LT_OK) untrack_free(m, w); /* a no-op for weights used in place from the mapping */
        }
    for (int l = 0; st == LT_OK && l < m->cfg.num_hidden_layers; l++) /* the experts of MoE layers */
        for (int i = 0; st == LT_OK && m->layers[l].experts && i < 3 * m->cfg.num_experts; i++) {
            lt_weight *W = &m->layers[l].experts[i];
            const int H = (int)m->cfg.hidden_size, MI = (int)m->cfg.moe_intermediate_size, down = i % 3 == 2;
            const int out = down ? H : MI, in = down ? MI : H;
            if (W->format != LT_WEIGHT_F32) continue;
            float *w = W->f32;
            snprintf(name, sizeof name, "model.layers.%d.%s.experts.%d.%s.weight", l, lt_moe_parent(&m->cfg), i / 3,
                     lt_moe_proj_name(&m->cfg, i % 3));
            wsrc s = {.host = m->be->ops->host_memory ? w : NULL, .dev = m->be->ops->host_memory ? NULL : w};
            if ((st = sink_quant(&ld, &s, out, in, name, W, err)) != LT_OK) break;
            m->weight_bytes -= (int64_t)out * in * (int64_t)sizeof(float);
            m->n_params -= (int64_t)out * in;
            untrack_free(m, w);
        }
    free(ld.buf);
    return st == LT_OK ? lt_backend_sync(m->be, err, "loading the model") : st;
}

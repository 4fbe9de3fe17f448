/*
 * quant.c - quantized tensors: NF4 / FP4 (+ double quantization) and int8, in the bitsandbytes layouts.
 *
 * defines: lt_quant_params_init, lt_qtensor_quantize, lt_qtensor_free, lt_qtensor_last_error,
 *          lt_qtensor_get_info, lt_qtensor_dequantize, lt_qtensor_dequantize_bf16, lt_qtensor_part,
 *          and the internal helpers of quant.h.
 * The algorithm, step by step, is described in quant.h. Every value is computed in fp32 in the order
 * bitsandbytes computes it (this file is built with -ffp-contract=off: no fused multiply-adds).
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "formats/quant.h"

const char *lt_quant_format_name(lt_quant_format f) {
    switch (f) {
    case LT_QUANT_NF4: return "nf4";
    case LT_QUANT_FP4: return "fp4";
    case LT_QUANT_INT8: return "int8";
    default: return "none";
    }
}

int lt_quant_format_from_name(const char *name, lt_quant_format *out) {
    static const lt_quant_format all[] = {LT_QUANT_NONE, LT_QUANT_NF4, LT_QUANT_FP4, LT_QUANT_INT8};
    for (size_t i = 0; name && i < sizeof all / sizeof *all; i++)
        if (!strcmp(name, lt_quant_format_name(all[i]))) {
            *out = all[i];
            return 0;
        }
    return -1;
}

/* The 15 decision points of a 4-bit code book: midpoints of the sorted code in fp32, and for each
 * sorted position the code index (a stable sort: FP4's +0 (index 0) sorts before -0 (index 8)). */
typedef struct code4_bounds {
    float mid[15];
    uint8_t order[16];
} code4_bounds;

static void code4_bounds_make(const float *code, code4_bounds *b) {
    for (int i = 0; i < 16; i++) b->order[i] = (uint8_t)i;
    for (int i = 1; i < 16; i++) /* stable insertion sort of the indices by value */
        for (int j = i; j > 0 && code[b->order[j - 1]] > code[b->order[j]]; j--) {
            uint8_t t = b->order[j];
            b->order[j] = b->order[j - 1];
            b->order[j - 1] = t;
        }
    for (int i = 0; i < 15; i++) b->mid[i] = (code[b->order[i]] + code[b->order[i + 1]]) / 2.0f;
}

/* torch.bucketize(v, mid) (right=False): the number of midpoints strictly below v, as a code index */
static inline uint8_t code4_index(const code4_bounds *b, float v) {
    int k = 0;
    for (int i = 0; i < 15; i++) k += b->mid[i] < v;
    return b->order[k];
}

/* ---- torch's fp32 sum (the mean behind the double-quantization offset) -------------------------
 * bitsandbytes takes offset = absmax.mean(), which torch computes on the CPU as an fp32 "cascade" sum
 * divided by n. Reproducing its order gives the same offset bit for bit, and so the same nested
 * statistics (checked against torch 2.x on random lengths and the goldens). Past 32768 values torch
 * splits the sum over its threads: there we follow the one-thread order and can differ from a
 * multi-threaded torch in the last bits of the offset (bitsandbytes' own result then depends on
 * the machine's thread count). */

static int64_t ceil_log2(int64_t x) {
    if (x <= 2) return 1;
    int64_t f = 63 - __builtin_clzll((unsigned long long)(x - 1)); /* floor(log2(x - 1)) */
    return f + 1;
}

/* sum of `size` rows of 4 items (an item is w lanes; item k of row i at data + (i*4 + k)*w), kept
 * per item and lane in 4 levels of partial sums (torch's multi_row_sum) */
static void multi_row_sum(const float *data, int64_t size, int w, float out[4][16]) {
    const int64_t lp = ceil_log2(size) / 4 > 4 ? ceil_log2(size) / 4 : 4;
    const int64_t step = (int64_t)1 << lp, mask = step - 1;
    float acc[4][4][16];
    memset(acc, 0, sizeof acc);
    int64_t i = 0;
    while (i + step <= size) {
        for (int64_t j = 0; j < step; j++, i++)
            for (int k = 0; k < 4; k++)
                for (int l = 0; l < w; l++) acc[0][k][l] += data[(i * 4 + k) * w + l];
        for (int j = 1; j < 4; j++) {
            for (int k = 0; k < 4; k++)
                for (int l = 0; l < w; l++) {
                    acc[j][k][l] += acc[j - 1][k][l];
                    acc[j - 1][k][l] = 0;
                }
            if (i & (mask << (j * lp))) break;
        }
    }
    for (; i < size; i++)
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < w; l++) acc[0][k][l] += data[(i * 4 + k) * w + l];
    for (int j = 1; j < 4; j++)
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < w; l++) acc[0][k][l] += acc[j][k][l];
    memcpy(out, acc[0], sizeof acc[0]);
}

/* n items of w lanes, 4 interleaved partial sums (torch's row_sum); result per lane in out[w] */
static void row_sum(const float *data, int64_t n, int w, float *out) {
    float part[4][16];
    const int64_t size_ilp = n / 4;
    multi_row_sum(data, size_ilp, w, part);
    for (int64_t i = size_ilp * 4; i < n; i++)
        for (int l = 0; l < w; l++) part[0][l] += data[i * w + l];
    for (int k = 1; k < 4; k++)
        for (int l = 0; l < w; l++) part[0][l] += part[k][l];
    memcpy(out, part[0], (size_t)w * sizeof(float));
}

static float torch_sum_f32(const float *x, int64_t n) {
    const int W = 8; /* torch's vector of floats here (measured: 8 lanes even on AVX-512 machines) */
    float lanes[16], acc = 0.0f;
    if (n < W) { /* too short for a vector: the scalar cascade */
        row_sum(x, n, 1, lanes);
        return 0.0f + lanes[0];
    }
    const int64_t nv = n / W;
    row_sum(x, nv, W, lanes);
    for (int64_t k = nv * W; k < n; k++) acc += x[k];
    for (int l = 0; l < W; l++) acc += lanes[l];
    return 0.0f + acc;
}

/* ---- params ------------------------------------------------------------------------------------ */

LT_API void lt_quant_params_init(lt_quant_params *out, size_t size) {
    lt_quant_params d;
    memset(&d, 0, sizeof d);
    d.size = sizeof d;
    d.format = LT_QUANT_NF4;
    d.blocksize = 64;
    d.double_quant = 1;
    lt_fill_struct(out, size, &d, sizeof d);
}

lt_status lt_quant_check_params(const lt_quant_params *p, lt_error *err) {
    if (p->format != LT_QUANT_NF4 && p->format != LT_QUANT_FP4 && p->format != LT_QUANT_INT8)
        return lt_fail(err, LT_ERR_ARGUMENT, "quantization format %d is not nf4 (1), fp4 (2) or int8 (3)",
                       (int)p->format);
    int bs = p->blocksize;
    if (bs < 64 || bs > 4096 || (bs & (bs - 1)))
        return lt_fail(err, LT_ERR_ARGUMENT, "quantization blocksize %d is not a power of two in 64..4096", bs);
    return LT_OK;
}

/* ---- allocation -------------------------------------------------------------------------------- */

size_t lt_qtensor_data_bytes(const lt_qtensor *q) {
    return q->format == LT_QUANT_INT8 ? (size_t)q->numel : (size_t)(q->numel + 1) / 2;
}

int64_t lt_qtensor_bytes(const lt_qtensor *q) {
    int64_t b = (int64_t)lt_qtensor_data_bytes(q);
    if (q->double_quant) b += q->n_blocks + q->n_blocks2 * 4 + 4; /* codes, scales, offset */
    else b += q->n_blocks * 4;
    return b;
}

lt_status lt_qtensor_layout(lt_qtensor *q, const int64_t *shape, int ndim, lt_quant_format f, int blocksize,
                            int double_quant, lt_error *err) {
    memset(q, 0, sizeof *q);
    if (!shape || ndim < 1 || ndim > LT_QMAX_DIMS)
        return lt_fail(err, LT_ERR_SHAPE, "quantize: ndim %d is not in 1..%d", ndim, LT_QMAX_DIMS);
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || lt_mul_overflow_u64(n, (uint64_t)shape[i], &n) || n > ((uint64_t)1 << 50))
            return lt_fail(err, LT_ERR_SHAPE,
                           "quantize: dimension %d (%lld) is negative or the element count "
                           "overflows",
                           i, (long long)shape[i]);
    }
    if (n == 0) return lt_fail(err, LT_ERR_SHAPE, "quantize: the tensor is empty");
    lt_quant_params p = {.size = sizeof p, .format = f, .blocksize = blocksize, .double_quant = double_quant};
    lt_status st = lt_quant_check_params(&p, err);
    if (st != LT_OK) return st;
    q->format = f;
    q->blocksize = blocksize;
    q->double_quant = f != LT_QUANT_INT8 && double_quant;
    q->ndim = ndim;
    memcpy(q->shape, shape, (size_t)ndim * sizeof *shape);
    q->numel = (int64_t)n;
    q->n_blocks = (q->numel + blocksize - 1) / blocksize;
    q->n_blocks2 = q->double_quant ? (q->n_blocks + LT_NESTED_BLOCK - 1) / LT_NESTED_BLOCK : 0;
    return LT_OK;
}

lt_status lt_qtensor_alloc(const int64_t *shape, int ndim, lt_quant_format f, int blocksize, int double_quant,
                           lt_qtensor **out, lt_error *err) {
    *out = NULL;
    lt_qtensor *q = calloc(1, sizeof *q);
    if (!q) return lt_fail(err, LT_ERR_NOMEM, "quantize: out of memory");
    lt_status st = lt_qtensor_layout(q, shape, ndim, f, blocksize, double_quant, err);
    if (st != LT_OK) {
        free(q);
        return st;
    }
    q->data = calloc(lt_qtensor_data_bytes(q), 1);
    if (q->double_quant) {
        q->qabsmax = calloc((size_t)q->n_blocks, 1);
        q->absmax2 = calloc((size_t)q->n_blocks2, sizeof(float));
    } else {
        q->absmax = calloc((size_t)q->n_blocks, sizeof(float));
    }
    if (!q->data || (q->double_quant ? !q->qabsmax || !q->absmax2 : !q->absmax)) {
        const long long bytes = (long long)lt_qtensor_bytes(q);
        lt_qtensor_free(q);
        return lt_fail(err, LT_ERR_NOMEM, "quantize: cannot allocate %lld bytes", bytes);
    }
    *out = q;
    return LT_OK;
}

LT_API void lt_qtensor_free(lt_qtensor *q) {
    if (!q) return;
    free(q->data);
    free(q->absmax);
    free(q->qabsmax);
    free(q->absmax2);
    free(q);
}

/* ---- quantization ------------------------------------------------------------------------------ */

/* One full block of a 4-bit format with AVX-512: the same fp32 operations as the scalar loop of
 * quantize_4bit (max of |x|, x * (1 / absmax), clamp to [-1, 1], the count of midpoints below the value
 * by a binary search over the sorted midpoints, the code index of that count), so the same bytes. */
#if defined(__x86_64__)
#include <immintrin.h>
#define LT_Q4_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))
LT_Q4_AVX512 static void q4_block_avx512(const float *x, int bs, const code4_bounds *cb, uint8_t *data, float *absmax) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    __m512 m = _mm512_setzero_ps();
    for (int i = 0; i < bs; i += 16) m = _mm512_max_ps(m, _mm512_andnot_ps(sign, _mm512_loadu_ps(x + i)));
    const float am = _mm512_reduce_max_ps(m); /* exact: a max does not round */
    const float amc = am < 1e-38f ? 1e-38f : am, inv = 1.0f / amc;
    *absmax = am;
    float mids[16];
    memcpy(mids, cb->mid, sizeof cb->mid);
    mids[15] = INFINITY; /* never below a clamped value: the search stays within the 15 midpoints */
    int32_t order[16];
    for (int i = 0; i < 16; i++) order[i] = cb->order[i];
    const __m512 vmid = _mm512_loadu_ps(mids), vinv = _mm512_set1_ps(inv);
    const __m512 one = _mm512_set1_ps(1.0f), mone = _mm512_set1_ps(-1.0f);
    const __m512i vorder = _mm512_loadu_si512(order);
    for (int i = 0; i < bs; i += 16) {
        __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + i), vinv);
        v = _mm512_min_ps(_mm512_max_ps(v, mone), one);
        __m512i k = _mm512_setzero_si512(); /* number of midpoints strictly below v: k += s while mid[k+s-1] < v */
        for (int s = 8; s >= 1; s /= 2) {
            const __m512i j = _mm512_add_epi32(k, _mm512_set1_epi32(s - 1));
            const __mmask16 lt = _mm512_cmp_ps_mask(_mm512_permutexvar_ps(j, vmid), v, _CMP_LT_OQ);
            k = _mm512_mask_add_epi32(k, lt, k, _mm512_set1_epi32(s));
        }
        const __m512i c = _mm512_permutexvar_epi32(k, vorder);
        /* element 2j in the high nibble of byte j: per 64-bit lane (c_even | c_odd << 32) */
        const __m512i byte = _mm512_or_si512(_mm512_slli_epi64(c, 4), _mm512_srli_epi64(c, 32));
        _mm_storel_epi64((__m128i *)(data + i / 2), _mm512_cvtepi64_epi8(byte));
    }
}
static int q4_avx512_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}
#endif

/* 4-bit codes and f32 absmax of every block of x (n values starting a block: a whole tensor, or a
 * chunk of one; quantize_4bit, CPU = bitsandbytes' torch kernel) */
static void quantize_4bit(const float *x, int64_t n, int bs, lt_quant_format f, uint8_t *data, float *absmax) {
    code4_bounds cb;
    code4_bounds_make(lt_quant_code4(f), &cb);
    const int64_t nb = (n + bs - 1) / bs;
    const uint8_t pad = code4_index(&cb, 0.0f); /* the padding value of an odd count is 0.0 */
#if defined(__x86_64__)
    const int fast = q4_avx512_available();
#else
    const int fast = 0;
#endif
#pragma omp parallel for schedule(static) if (nb > 64)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t s = b * bs, e = s + bs < n ? s + bs : n;
        const int full = e - s == bs;
#if defined(__x86_64__)
        if (fast && full) {
            q4_block_avx512(x + s, bs, &cb, data + s / 2, absmax + b);
            continue;
        }
#endif
        (void)fast;
        float am = 0.0f;
        for (int64_t i = s; i < e; i++) am = fmaxf(am, fabsf(x[i]));
        const float amc = am < 1e-38f ? 1e-38f : am; /* absmax.clamp(min=1e-38) */
        const float inv = 1.0f / amc;
        absmax[b] = full ? am : amc; /* the partial block stores the clamped value */
        /* blocks start at even indices (bs is even), so a block owns whole bytes */
        for (int64_t i = s; i < e; i += 2) {
            uint8_t c[2];
            for (int k = 0; k < 2; k++) {
                if (i + k >= e) {
                    c[k] = pad;
                    continue;
                }
                float v = full ? x[i + k] * inv : x[i + k] / amc;
                v = fminf(fmaxf(v, -1.0f), 1.0f);
                c[k] = code4_index(&cb, v);
            }
            data[i >> 1] = (uint8_t)(c[0] << 4 | c[1]);
        }
    }
}

/* bitsandbytes' CPU quantize_blockwise with the dynamic map: a (n) in blocks of bs; codes and absmax */
static void quantize_blockwise8(const float *a, int64_t n, int bs, uint8_t *codes, float *absmax) {
    const float *code = lt_quant_code8();
    const int64_t nb = (n + bs - 1) / bs;
#pragma omp parallel for schedule(static) if (nb > 256)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t s = b * bs, e = s + bs < n ? s + bs : n;
        float am = -FLT_MAX;
        for (int64_t i = s; i < e; i++) am = fmaxf(am, fabsf(a[i]));
        absmax[b] = am;
        /* bitsandbytes' kernel is built to multiply by the reciprocal (which overflows to inf for a
         * subnormal absmax, giving the end codes: we do the same) */
        const float inv = 1.0f / am;
        for (int64_t i = s; i < e; i++) {
            const float v = a[i] * inv;
            int idx;
            if (v != v) {
                idx = 0; /* 0 * inf (an all-zero block): bitsandbytes stores code 0 (decodes to -0.99 * 0) */
            } else {
                /* the largest idx with code[idx] <= v, or 0 below code[0]: a binary search without
                 * branches (the comparisons of consecutive values are unpredictable) */
                idx = 0;
                for (int s = 128; s >= 1; s /= 2) idx += code[idx + s] <= v ? s : 0;
                if (idx < 255 && fabsf(v - code[idx + 1]) < fabsf(v - code[idx])) idx++;
            }
            codes[i] = (uint8_t)idx;
        }
    }
}

/* int8: q = round_half_even(x * (127 / absmax)) per block */
static void quantize_int8(const float *x, int64_t n, int bs, int8_t *data, float *absmax) {
    const int64_t nb = (n + bs - 1) / bs;
#pragma omp parallel for schedule(static) if (nb > 64)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t s = b * bs, e = s + bs < n ? s + bs : n;
        float am = 0.0f;
        for (int64_t i = s; i < e; i++) am = fmaxf(am, fabsf(x[i]));
        absmax[b] = am;
        const float scale = 127.0f / am;
        for (int64_t i = s; i < e; i++) data[i] = am > 0 ? (int8_t)rintf(x[i] * scale) : 0;
    }
}

lt_status lt_qtensor_quantize_part(lt_qtensor *q, const float *x, int64_t i0, int64_t n, int finite, float *absmax,
                                   lt_error *err) {
    if (i0 < 0 || n < 0 || i0 % q->blocksize || i0 + n > q->numel || (i0 + n < q->numel && n % q->blocksize))
        return lt_fail(err, LT_ERR_INTERNAL, "quantize: part [%lld, %lld) of %lld values does not cut whole blocks",
                       (long long)i0, (long long)(i0 + n), (long long)q->numel);
    const int64_t bad = finite ? n : (int64_t)lt_first_nonfinite(x, (size_t)n);
    if (bad < n)
        return lt_fail(err, LT_ERR_NUMERIC, "quantize: element %lld is %s; only finite values can be quantized",
                       (long long)(i0 + bad), isnan(x[bad]) ? "NaN" : "infinite");
    const int64_t b0 = i0 / q->blocksize;
    if (q->format == LT_QUANT_INT8) quantize_int8(x, n, q->blocksize, (int8_t *)q->data + i0, q->absmax + b0);
    else quantize_4bit(x, n, q->blocksize, q->format, q->data + i0 / 2, absmax + b0);
    return LT_OK;
}

void lt_qtensor_quantize_finish(lt_qtensor *q, float *absmax, const float *forced_offset) {
    if (!q->double_quant) return;
    /* offset = mean(absmax) as torch computes it (fp32 cascade sum / n) */
    q->offset = forced_offset ? *forced_offset : torch_sum_f32(absmax, q->n_blocks) / (float)q->n_blocks;
    for (int64_t b = 0; b < q->n_blocks; b++) absmax[b] -= q->offset;
    quantize_blockwise8(absmax, q->n_blocks, LT_NESTED_BLOCK, q->qabsmax, q->absmax2);
}

lt_status lt_qtensor_quantize_ex(const float *x, const int64_t *shape, int ndim, const lt_quant_params *p,
                                 const float *forced_offset, lt_qtensor **out, lt_error *err) {
    *out = NULL;
    if (!x) return lt_fail(err, LT_ERR_ARGUMENT, "quantize: data is NULL");
    lt_qtensor *q;
    lt_status st = lt_qtensor_alloc(shape, ndim, p->format, p->blocksize, p->double_quant, &q, err);
    if (st != LT_OK) return st;
    float *am = q->double_quant ? malloc((size_t)q->n_blocks * sizeof(float)) : q->absmax;
    if (!am) st = lt_fail(err, LT_ERR_NOMEM, "quantize: out of memory");
    if (st == LT_OK) st = lt_qtensor_quantize_part(q, x, 0, q->numel, 0, am, err);
    if (st == LT_OK) lt_qtensor_quantize_finish(q, am, forced_offset);
    if (q->double_quant) free(am);
    if (st != LT_OK) {
        lt_qtensor_free(q);
        return st;
    }
    *out = q;
    return LT_OK;
}

LT_API lt_status lt_qtensor_quantize(const float *data, const int64_t *shape, int ndim, const lt_quant_params *params,
                                     lt_qtensor **out) {
    lt_error *err = lt_thread_error();
    lt_error_clear(err);
    if (!out) return lt_fail(err, LT_ERR_ARGUMENT, "lt_qtensor_quantize: out is NULL");
    *out = NULL;
    lt_quant_params p;
    lt_quant_params_init(&p, sizeof p);
    if (params) {
        if (params->size < sizeof(size_t) || params->size > sizeof p)
            return lt_fail(err, LT_ERR_ARGUMENT,
                           "lt_qtensor_quantize: params->size %zu is not a size this library "
                           "knows (call lt_quant_params_init)",
                           params->size);
        memcpy(&p, params, params->size);
    }
    return lt_qtensor_quantize_ex(data, shape, ndim, &p, NULL, out, err);
}

/* ---- dequantization ---------------------------------------------------------------------------- */

lt_qdesc lt_qtensor_desc(const lt_qtensor *q) {
    lt_qdesc d;
    memset(&d, 0, sizeof d);
    d.format = (int)q->format;
    d.blocksize = q->blocksize;
    d.rows = q->shape[0];
    d.cols = q->numel / (q->shape[0] ? q->shape[0] : 1);
    d.data = q->data;
    d.absmax = q->absmax;
    d.qabsmax = q->qabsmax;
    d.absmax2 = q->absmax2;
    d.code8 = q->double_quant ? lt_quant_code8() : NULL;
    d.offset = q->offset;
    return d;
}

void lt_qdesc_dequantize_range(const lt_qdesc *q, float *out, int64_t i0, int64_t i1) {
    const int bs = q->blocksize;
    const float *code = q->format == LT_QF_NF4 ? lt_nf4_code : lt_fp4_code;
    for (int64_t i = i0; i < i1;) {
        const int64_t b = i / bs, e = (b + 1) * bs < i1 ? (b + 1) * bs : i1;
        const float am = lt_qdesc_absmax(q, b);
        if (q->format == LT_QF_INT8) {
            for (; i < e; i++) out[i - i0] = ((float)(int8_t)q->data[i] * am) * LT_INT8_INV127;
        } else {
            for (; i < e; i++) {
                const uint8_t byte = q->data[i >> 1];
                out[i - i0] = code[(i & 1) ? byte & 15 : byte >> 4] * am;
            }
        }
    }
}

LT_API const char *lt_qtensor_last_error(const lt_qtensor *q) {
    return q ? q->err.msg : "lt_qtensor_last_error: tensor is NULL";
}

LT_API lt_status lt_qtensor_get_info(const lt_qtensor *q, lt_qtensor_info *info) {
    if (!q) return LT_ERR_ARGUMENT;
    lt_error *err = (lt_error *)&q->err; /* the message slot is not part of the tensor's value */
    lt_error_clear(err);
    if (!info || info->size < sizeof(size_t))
        return lt_fail(err, LT_ERR_ARGUMENT, "lt_qtensor_get_info: info is NULL or info->size is not set");
    lt_qtensor_info o;
    memset(&o, 0, sizeof o);
    o.size = sizeof o;
    o.format = q->format;
    o.blocksize = q->blocksize;
    o.double_quant = q->double_quant;
    o.ndim = q->ndim;
    memcpy(o.shape, q->shape, (size_t)q->ndim * sizeof *q->shape);
    o.numel = q->numel;
    o.n_blocks = q->n_blocks;
    o.bytes = lt_qtensor_bytes(q);
    o.nested_offset = q->offset;
    size_t n = info->size < sizeof o ? info->size : sizeof o;
    memcpy(info, &o, n);
    info->size = n;
    return LT_OK;
}

LT_API lt_status lt_qtensor_dequantize(const lt_qtensor *q, float *out, size_t count) {
    if (!q) return LT_ERR_ARGUMENT;
    lt_error *err = (lt_error *)&q->err;
    lt_error_clear(err);
    if (!out || count < (size_t)q->numel)
        return lt_fail(err, LT_ERR_ARGUMENT, "lt_qtensor_dequantize: out is NULL or holds %zu < %lld values", count,
                       (long long)q->numel);
    lt_qdesc d = lt_qtensor_desc(q);
    lt_qdesc_dequantize_range(&d, out, 0, q->numel);
    return LT_OK;
}

LT_API lt_status lt_qtensor_dequantize_bf16(const lt_qtensor *q, uint16_t *out, size_t count) {
    if (!q) return LT_ERR_ARGUMENT;
    lt_error *err = (lt_error *)&q->err;
    lt_error_clear(err);
    if (!out || count < (size_t)q->numel)
        return lt_fail(err, LT_ERR_ARGUMENT, "lt_qtensor_dequantize_bf16: out is NULL or holds %zu < %lld values",
                       count, (long long)q->numel);
    lt_qdesc d = lt_qtensor_desc(q);
    float tmp[256];
    for (int64_t i = 0; i < q->numel; i += 256) {
        int64_t e = i + 256 < q->numel ? i + 256 : q->numel;
        lt_qdesc_dequantize_range(&d, tmp, i, e);
        for (int64_t k = i; k < e; k++) out[k] = lt_f32_to_bf16(tmp[k - i]);
    }
    return LT_OK;
}

LT_API lt_status lt_qtensor_part(const lt_qtensor *q, lt_qpart part, const void **data, size_t *bytes) {
    if (!q) return LT_ERR_ARGUMENT;
    lt_error *err = (lt_error *)&q->err;
    lt_error_clear(err);
    if (!data || !bytes) return lt_fail(err, LT_ERR_ARGUMENT, "lt_qtensor_part: NULL output");
    *data = NULL;
    *bytes = 0;
    switch (part) {
    case LT_QPART_DATA:
        *data = q->data;
        *bytes = lt_qtensor_data_bytes(q);
        break;
    case LT_QPART_ABSMAX:
        if (q->double_quant) {
            *data = q->qabsmax;
            *bytes = (size_t)q->n_blocks;
        } else {
            *data = q->absmax;
            *bytes = (size_t)q->n_blocks * 4;
        }
        break;
    case LT_QPART_NESTED_ABSMAX:
        if (q->double_quant) {
            *data = q->absmax2;
            *bytes = (size_t)q->n_blocks2 * 4;
        }
        break;
    case LT_QPART_QUANT_MAP:
        if (q->format != LT_QUANT_INT8) {
            *data = lt_quant_code4(q->format);
            *bytes = 16 * 4;
        }
        break;
    case LT_QPART_NESTED_QUANT_MAP:
        if (q->double_quant) {
            *data = lt_quant_code8();
            *bytes = 256 * 4;
        }
        break;
    default: return lt_fail(err, LT_ERR_ARGUMENT, "lt_qtensor_part: unknown part %d", (int)part);
    }
    if (!*data)
        return lt_fail(err, LT_ERR_MISSING, "lt_qtensor_part: a %s tensor%s has no part %d",
                       lt_quant_format_name(q->format), q->double_quant ? "" : " without double quantization",
                       (int)part);
    return LT_OK;
}

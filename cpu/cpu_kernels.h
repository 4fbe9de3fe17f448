/*
 * cpu_kernels.h - the fast CPU kernels behind the CPU backend, one table per instruction set.
 *
 * defines: lt_cpu_kernels (single-threaded kernels working on a slice: the backend's OpenMP regions
 * split the work and call them), lt_cpu_kernels_get (run-time ISA selection),
 * lt_cpu_backend_create_isa (a CPU backend pinned to one ISA, for tests and benchmarks),
 * LT_ATT_* attention tile sizes and lt_cpu_att_item_floats (the backward scratch layout).
 *
 * Kernels come from cpu/simd.h, compiled three times by cpu_backend.c: AVX-512 (F/BW/VL/DQ),
 * AVX2+FMA and a generic build (GCC vector extensions, no target flags: portable).
 */
#ifndef LT_CPU_KERNELS_H
#define LT_CPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"

typedef enum lt_cpu_isa {
    LT_CPU_ISA_AUTO = 0,    /* the best one this CPU supports */
    LT_CPU_ISA_GENERIC = 1, /* portable: GCC vector extensions, baseline target */
    LT_CPU_ISA_AVX2 = 2,    /* AVX2 + FMA */
    LT_CPU_ISA_AVX512 = 3   /* AVX-512 F, BW, VL, DQ */
} lt_cpu_isa;

/* Attention tiles: LT_ATT_QT queries x LT_ATT_KB keys, the same for every ISA. The forward uses
 * taller query tiles (LT_ATT_QT_FWD) to amortise the transposition of each key tile. */
#define LT_ATT_QT 32
#define LT_ATT_KB 32
#ifndef LT_ATT_QT_FWD
#define LT_ATT_QT_FWD 128
#endif
/* The tiled forward keeps a (head_dim x KB) transposed key tile on the stack; larger heads use the
 * reference kernel (parallel over heads) instead. */
#define LT_ATT_MAX_HD 256

static inline size_t lt_cpu_round16(size_t n) { return (n + 15) & ~(size_t)15; }

/* Attention backward scratch, in floats, for one (b, h) head; the backward needs B*NH of them.
 * Layout of one head (each part rounded up to 16 floats, i.e. 64 bytes):
 *   D   (T)        rowsum(dout * out) of every query
 *   Kt  (HD, KB)   transposed key tile
 *   Vt  (HD, KB)   transposed value tile
 *   P   (QT, KB)   probabilities of a tile
 *   dS  (QT, KB)   score gradients of a tile
 *   dK  (T, HD)    this query head's share of dk (grouped-query attention only: the heads of a group
 *   dV  (T, HD)    are summed into dk, dv afterwards; with NKV == NH they are written directly) */
static inline size_t lt_cpu_att_item_floats(int T, int HD) {
    return lt_cpu_round16((size_t)T) + 2 * lt_cpu_round16((size_t)HD * LT_ATT_KB) +
           2 * lt_cpu_round16((size_t)LT_ATT_QT * LT_ATT_KB) + 2 * lt_cpu_round16((size_t)T * HD);
}
#define LT_ATT_OFF_KT(T, HD) (lt_cpu_round16((size_t)(T)))
#define LT_ATT_OFF_VT(T, HD) (LT_ATT_OFF_KT(T, HD) + lt_cpu_round16((size_t)(HD)*LT_ATT_KB))
#define LT_ATT_OFF_P(T, HD) (LT_ATT_OFF_VT(T, HD) + lt_cpu_round16((size_t)(HD)*LT_ATT_KB))
#define LT_ATT_OFF_DS(T, HD) (LT_ATT_OFF_P(T, HD) + lt_cpu_round16((size_t)LT_ATT_QT * LT_ATT_KB))
#define LT_ATT_OFF_DK(T, HD) (LT_ATT_OFF_DS(T, HD) + lt_cpu_round16((size_t)LT_ATT_QT * LT_ATT_KB))
#define LT_ATT_OFF_DV(T, HD) (LT_ATT_OFF_DK(T, HD) + lt_cpu_round16((size_t)(T) * (HD)))

typedef struct lt_cpu_kernels {
    const char *isa;
    /* elementwise on a slice */
    void (*axpy)(size_t n, float a, const float *x, float *y);
    void (*scale)(size_t n, float a, float *x);
    double (*sumsq)(size_t n, const float *x);
    int (*all_finite)(size_t n, const float *x);
    /* rows [n0, n1) of (N, C) arrays */
    void (*rmsnorm_fwd)(float *out, float *rstd, const float *inp, const float *weight, int n0, int n1, int C,
                        float eps);
    void (*rmsnorm_bwd)(float *dinp, const float *dout, const float *inp, const float *weight, const float *rstd,
                        int n0, int n1, int C);
    /* columns [c0, c1) of dweight, summing over all N rows in a fixed order */
    void (*rmsnorm_dw)(float *dweight, const float *dout, const float *inp, const float *rstd, int N, int C, int c0,
                       int c1);
    /* rows [n0, n1); inverse = 1 rotates by -angle (backward) */
    void (*rope)(float *x, const int32_t *pos, const float *inv_freq, int n0, int n1, int n_heads, int head_dim,
                 int rot_dim, int inverse);
    void (*swiglu_fwd)(float *out, const float *gate, const float *up, size_t n);
    void (*swiglu_bwd)(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n);
    /* one row of cross_entropy */
    void (*ce_row)(float *logits, float *loss, int32_t target, int V, float grad_scale);
    /* elements [0, n) of a mask starting at counter `offset` */
    void (*dropout)(float *out, const float *inp, size_t n, float p, uint64_t seed, uint64_t offset);
    void (*adamw)(float *param, const float *grad, float *m, float *v, size_t n, float step_size, float beta1,
                  float beta2, float eps, float bc2_sqrt, float decay);
    /* attention forward of queries [t0, t1) of head (b, h); requires HD <= LT_ATT_MAX_HD */
    void (*att_fwd_tile)(float *out, float *lse, const float *q, const float *k, const float *v,
                         const int32_t *kv_start, int T, int NH, int NKV, int HD, float scale, int b, int h, int t0,
                         int t1);
    /* attention backward of head (b, h): dq rows of the head (assigned); dk_h, dv_h: row t of this
     * head's key/value gradient at dk_h + t*ld_kv (assigned); ws: lt_cpu_att_item_floats(T, HD). */
    void (*att_bwd_head)(float *dq, float *dk_h, float *dv_h, size_t ld_kv, const float *dout, const float *q,
                         const float *k, const float *v, const float *out, const float *lse, const int32_t *kv_start,
                         int T, int NH, int NKV, int HD, float scale, int b, int h, float *ws);
    /* attention_decode of head (b, h): out, q (B,NH,HD); kcache, vcache (B,S_cap,NKV,HD); keys 0..len-1 */
    void (*att_decode_head)(float *out, const float *q, const float *kcache, const float *vcache, int S_cap, int len,
                            int NH, int NKV, int HD, float scale, int b, int h);
} lt_cpu_kernels;

/* The kernels of an ISA, NULL if this CPU (or this build) lacks it. AUTO picks the best. */
const lt_cpu_kernels *lt_cpu_kernels_get(lt_cpu_isa isa);

/* lt_cpu_backend_create with the kernels of one ISA (LT_ERR_UNSUPPORTED if the CPU lacks it). */
lt_status lt_cpu_backend_create_isa(int n_threads, lt_cpu_isa isa, lt_backend **out, char *err, size_t errlen);

#endif /* LT_CPU_KERNELS_H */

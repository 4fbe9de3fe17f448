/*
 * cpu_kernels.h - the fast CPU kernels behind the CPU backend, one table per instruction set: the one
 * ISA-dispatch mechanism of the CPU backend.
 *
 * defines: lt_cpu_isa (the instruction sets), lt_cpu_kernels (every ISA-specific kernel: elementwise,
 * norms, RoPE, attention, the 8-bit AdamW block and the bf16 GEMM micro-kernel; single-threaded
 * kernels working on a slice: the backend's OpenMP regions split the work and call them),
 * lt_cpu_kernels_get (run-time selection, with the LT_CPU_ISA override), lt_cpu_backend_create_isa
 * (a CPU backend pinned to one ISA, for tests and benchmarks), LT_ATT_* attention tile sizes and
 * lt_cpu_att_item_floats (the backward scratch layout).
 *
 * How an ISA-specific kernel is built: it is written once (GCC vector extensions or intrinsics) in a
 * kernel file (simd.h, opt8_simd.h, gemm_bf16_simd.h) that cpu/isa_each.h compiles once per
 * instruction set, inside that set's target region (isa_each.h is the only place naming compiler
 * targets). cpu/cpu_isa.c detects the CPU and holds the tables, one per ISA, each naming the compiled
 * kernels it uses.
 */
#ifndef LT_CPU_KERNELS_H
#define LT_CPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"

/* The instruction sets, lowest first; each includes the ones below it. The numbers are macros so that
 * kernel files can test them in #if (LT_ISA_LEVEL, set by isa_each.h). */
#define LT_ISA_GENERIC 1     /* portable: GCC vector extensions, baseline target  */
#define LT_ISA_AVX2 2        /* AVX2 + FMA                                         */
#define LT_ISA_AVX512 3      /* AVX-512 F, BW, VL, DQ (+ AVX2, FMA)                */
#define LT_ISA_AVX512_BF16 4 /* AVX-512 + BF16 conversions (vcvtneps2bf16)         */
#define LT_ISA_COUNT 5
typedef enum lt_cpu_isa {
    LT_CPU_ISA_AUTO = 0, /* LT_CPU_ISA from the environment if set, else the best this CPU supports */
    LT_CPU_ISA_GENERIC = LT_ISA_GENERIC,
    LT_CPU_ISA_AVX2 = LT_ISA_AVX2,
    LT_CPU_ISA_AVX512 = LT_ISA_AVX512,
    LT_CPU_ISA_AVX512_BF16 = LT_ISA_AVX512_BF16
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

/* The 8-bit AdamW block kernel (cpu/opt8_simd.h, bit for bit lt_ref_adamw8bit_block): blocks [b0, b1)
 * of one tensor of n elements; the arguments of backend.h adamw8bit_step, plus the code-book tables
 * (cpu_opt8.h). */
struct lt_opt8_lut;
typedef void lt_opt8_blocks_fn(float *param, const float *grad, uint8_t *c1, uint8_t *c2, float *absmax1,
                               float *absmax2, size_t n, size_t b0, size_t b1, const float *qmap1, const float *qmap2,
                               const struct lt_opt8_lut *lut1, const struct lt_opt8_lut *lut2, float beta1, float beta2,
                               float eps_c2, float step_size, float decay);

/* The two parts of the bf16-weight GEMM that differ per ISA (cpu/gemm_bf16_simd.h; the blocking around
 * them is cpu/gemm_bf16.c). LT_BF16_MR rows x LT_BF16_NR 16-column vectors of C per micro-kernel call.
 *  pack_a: rows [0, mr) of A (lda floats apart), k in [k0, k1), rounded to bf16 and kept as fp32 values
 *          into a (mr, 2 kcp), with zeros past k1 (an odd K leaves half a pair). fp32, not bf16 bits:
 *          the kernel broadcasts them straight into fp32 FMAs.
 *  kernel: C (mr, ncols) ldc (+)= a (mr, 2 kcp) x a packed B block (ncols <= NR*16 columns, the
 *          16-column vectors bs apart); first: C = result, else C += result. Per pair of k the sum is
 *          (c + a[2p] b[2p]) + a[2p+1] b[2p+1], each product exact in fp32 (two bf16 values): every
 *          ISA gives the same bits. */
#define LT_BF16_MR 8
#define LT_BF16_NR 3
typedef void lt_bf16_pack_a_fn(float *a, int kcp, const float *A, size_t lda, int mr, int k0, int k1);
typedef void lt_bf16_kernel_fn(int mr, int ncols, int kcp, const float *a, const uint16_t *b, size_t bs, float *C,
                               size_t ldc, int first);
/*  pack_b: a B block of the products whose B is packed per block (the backward of a packed bf16
 *          weight; both products of a 4-bit weight, dequantized): columns [c0, c0 + 16 nb) and pairs
 *          [q0, q0 + kcp) of k of B into dst[cb][q][16][2] (the kernel's layout), zero past the edges
 *          of B. W: the packed bf16 weight or an lt_qdesc; in, out: the weight's shape. The AVX512_BF16
 *          4-bit packers need a shape condition that gemm_bf16.c checks (else it takes the portable one).
 *  pack_w16: 16 rows x 16 pairs of an f32 weight (rows `in` floats apart), rounded to bf16, into the
 *          16 vectors (dstride apart) of the packed layout (backend/bf16.h). */
typedef void lt_bf16_pack_b_fn(uint16_t *dst, const void *W, int in, int out, int c0, int nb, int q0, int kcp);
typedef void lt_bf16_pack_w16_fn(uint16_t *dst, size_t dstride, const float *W, size_t in);

typedef struct lt_cpu_kernels {
    const char *isa; /* "generic", "avx2", "avx512", "avx512bf16" (the names LT_CPU_ISA takes) */
    lt_cpu_isa level;
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
    /* 8-bit AdamW blocks (above) */
    lt_opt8_blocks_fn *opt8_blocks;
    /* bf16-weight GEMM (above) */
    lt_bf16_pack_a_fn *bf16_pack_a;
    lt_bf16_kernel_fn *bf16_kernel;
    lt_bf16_pack_b_fn *bf16_repack_bwd, *bf16_q4_pack_fwd, *bf16_q4_pack_bwd;
    lt_bf16_pack_w16_fn *bf16_pack_w16;
} lt_cpu_kernels;

/* The kernels of an ISA; NULL if this CPU (or this build) lacks it, with a message in err (err may be
 * NULL). AUTO: the ISA named by the environment variable LT_CPU_ISA (generic, avx2, avx512,
 * avx512bf16; unset, empty or "auto": no override), else the best this CPU supports. */
const lt_cpu_kernels *lt_cpu_kernels_get(lt_cpu_isa isa, char *err, size_t errlen);

/* lt_cpu_backend_create with the kernels of one ISA (LT_ERR_UNSUPPORTED if the CPU lacks it, or if
 * AUTO meets an LT_CPU_ISA this CPU lacks or that names no ISA). */
lt_status lt_cpu_backend_create_isa(int n_threads, lt_cpu_isa isa, lt_backend **out, char *err, size_t errlen);

#endif /* LT_CPU_KERNELS_H */

/*
 * gemm_bf16.c - bf16-weight GEMM with fp32 accumulation (see gemm_bf16.h): the packed layout and the
 * blocking; the row packer and micro-kernel are per ISA (cpu/gemm_bf16_simd.h: AVX512_BF16 and
 * portable), taken from the CPU backend's kernel table (cpu_kernels.h).
 *
 * defines: lt_gemm_bf16_forward, lt_gemm_bf16_backward, lt_gemm_q4_forward, lt_gemm_q4_backward,
 *          lt_bf16_pack, and the per-ISA parts named by cpu/cpu_isa.c (lt_bf16_pack_a_<isa>,
 *          lt_bf16_kernel_<isa>, lt_bf16_repack_bwd_<isa>, lt_bf16_q4_pack_fwd/bwd_<isa>, lt_bf16_pack_w16_<isa>)
 *
 * Both products are C (M, NC) (+)= A (M, K) B with A the fp32 activations (x or dy, rows of K) and
 * B (K, NC) a bf16 panel: per block of 16 columns, per pair of k, 16 columns x 2 k = one 64-byte
 * vector (the layout of vdpbf16ps). A is rounded to bf16 (kept as fp32 values) when it is packed.
 * The micro-kernel keeps MR x NR = 8 x 3 fp32 vectors of C in registers; each step loads 3 vectors of
 * B, widens each to its even-k and odd-k halves in fp32 (a shift and a mask), and folds in 16
 * broadcasts of A with 48 fp32 FMAs. Not vdpbf16ps: on the Xeons we measured it retires half an
 * instruction per cycle against two FMAs (docs/BENCHMARKS.md), so two FMAs per pair are 2x its rate;
 * both products are exact in fp32, so the bits are those of the portable kernel.
 * Blocking (GotoBLAS-style, one thread's share of C, stack buffers only):
 *   forward (B = W^T is the packed weight itself, nothing to pack per call):
 *     for KC_BLK pairs of k, for MC_BLK rows: round A once (128 KB, L2);
 *       for each NR*16-column panel of B (24 KB, L1): every MR-row tile of the block
 *   backward (B = W, re-packed from the packed weight: 2x2 transposes):
 *     for NC_BLK columns, for KC_BLK pairs: re-pack the B block once (96 KB, L2);
 *       for MR rows: round that slice of A (8 KB, L1); every NR*16-column tile
 * C tiles are loaded and stored once per KC_BLK pairs of k.
 * A 4-bit quantized weight (NF4 / FP4, + double quantization: lt_qdesc) goes through the backward's
 * blocking in both products: its B block is dequantized straight into the kernel's bf16 layout while
 * it is packed (the value bitsandbytes dequantizes, code * absmax in fp32, rounded to bf16), once per
 * NC_BLK columns x KC_BLK pairs, and serves every row of A; no f32 copy of the weight exists.
 * Threads: the CPU backend's scheme (one OpenMP team, C split into one block per thread along
 * whole units of 16): here along columns when there are enough of them (every thread then packs
 * only its own columns), else along rows.
 */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <omp.h>
#include <string.h>

#include "backend/codebook.h"
#include "cpu/cpu_kernels.h"
#include "cpu/gemm_bf16.h"

#define MR LT_BF16_MR /* rows of the micro-kernel                        */
#define NR LT_BF16_NR /* 16-column vectors of the micro-kernel            */
#ifndef KC_BLK
#define KC_BLK 128 /* pairs of k per block (256 values of k)           */
#endif
#ifndef MC_BLK
#define MC_BLK 128 /* rows per block of A (forward)                  */
#endif
#ifndef NC_BLK
#define NC_BLK 192 /* columns per block of B (backward; a multiple of NR*16) */
#endif

/* Backward B block: columns [c0, c0 + 16*nb) of W (i), pairs [q0, q0 + kcp) of rows (o), into
 * dst[cb][q][16][2] = (W[2q][i], W[2q+1][i]) for i = c0 + 16 cb + lane. Each 2x2 block of W
 * (o,o+1) x (i,i+1) is 8 contiguous bytes (a b c d) = (W[o][i], W[o][i+1], W[o+1][i], W[o+1][i+1])
 * of Wp and becomes (a c b d) in dst. Columns past `in` are zero. */
static void repack_bwd_c(uint16_t *dst, const void *W, int in, int out, int c0, int nb, int q0, int kcp) {
    const uint16_t *Wp = W;
    const int P = lt_bf16w_pairs(in);
    (void)out;
    for (int cb = 0; cb < nb; cb++)
        for (int q = 0; q < kcp; q++) {
            uint16_t *d = dst + ((size_t)cb * kcp + q) * 32;
            const int o = 2 * (q0 + q); /* even: o and o+1 share a 16-row block */
            const uint16_t *src = Wp + (size_t)(o / 16) * P * 32 + (o % 16) * 2;
            for (int l = 0; l < 16; l += 2) {
                const int i = c0 + cb * 16 + l; /* even */
                if (i >= in) {
                    memset(d + 2 * l, 0, (size_t)(32 - 2 * l) * sizeof *d);
                    break;
                }
                const uint16_t *s = src + (size_t)(i / 2) * 32;
                d[2 * l + 0] = s[0];
                d[2 * l + 1] = s[2];
                d[2 * l + 2] = s[1];
                d[2 * l + 3] = s[3];
            }
        }
}

/* ---- B blocks of a 4-bit quantized weight ------------------------------------------------------- */

/* element idx (row-major) of a 4-bit weight in bf16: bitsandbytes' fp32 value code * absmax, rounded */
static inline uint16_t q4_get(const lt_qdesc *q, const float *code, int64_t idx) {
    const uint8_t byte = q->data[idx >> 1];
    return lt_bf16_round(code[idx & 1 ? byte & 15 : byte >> 4] * lt_qdesc_absmax(q, idx / q->blocksize));
}
static inline const float *q4_code(const lt_qdesc *q) { return q->format == LT_QF_NF4 ? lt_nf4_code : lt_fp4_code; }

/* dst[cb][q][l] = the pair (e = 0, 1) of a 4-bit weight's values for column j = c0 + 16 cb + l of B and
 * k pair p = q0 + q, as bf16 (zero past the weight):
 *   forward  (y = x W^T): B = W^T, (W[j][2p], W[j][2p+1]): B's columns are W's rows
 *   backward (dx = dy W): B = W,   (W[2p][j], W[2p+1][j]): B's k pairs are pairs of W's rows */
static void q4_pack_c(int bwd, uint16_t *dst, const lt_qdesc *q, int in, int out, int c0, int nb, int q0, int kcp) {
    const float *code = q4_code(q);
    for (int cb = 0; cb < nb; cb++)
        for (int k = 0; k < kcp; k++) {
            uint16_t *d = dst + ((size_t)cb * kcp + k) * 32;
            for (int l = 0; l < 16; l++)
                for (int e = 0; e < 2; e++) {
                    const int j = c0 + 16 * cb + l, kk = 2 * (q0 + k) + e;
                    const int o = bwd ? kk : j, i = bwd ? j : kk;
                    d[2 * l + e] = o < out && i < in ? q4_get(q, code, (int64_t)o * in + i) : 0;
                }
        }
}
static void q4_pack_fwd_c(uint16_t *dst, const void *W, int in, int out, int c0, int nb, int q0, int kcp) {
    q4_pack_c(0, dst, W, in, out, c0, nb, q0, kcp);
}
static void q4_pack_bwd_c(uint16_t *dst, const void *W, int in, int out, int c0, int nb, int q0, int kcp) {
    q4_pack_c(1, dst, W, in, out, c0, nb, q0, kcp);
}

/* pairs [p0, p1) of the block of rows ob*16 .. ob*16+15 of W (out,in) into the packed layout (bf16.h) */
static void pack_pairs_c(uint16_t *dst, const float *W, int out, int in, int ob, int p0, int p1) {
    const int P = lt_bf16w_pairs(in);
    for (int p = p0; p < p1; p++) {
        uint16_t *v = dst + ((size_t)ob * P + p) * 32;
        for (int r = 0; r < 16; r++)
            for (int e = 0; e < 2; e++) {
                const int o = ob * 16 + r, i = 2 * p + e;
                v[r * 2 + e] = o < out && i < in ? lt_bf16_round(W[(size_t)o * in + i]) : 0;
            }
    }
}

/* ---- the per-ISA packer and micro-kernel (cpu/gemm_bf16_simd.h), once per instruction set ------- */

#define LT_ISA_BODY "cpu/gemm_bf16_simd.h"
#include "cpu/isa_each.h"

/* ---- the blocked product on one thread's share of C --------------------------------------------- */

/* Forward: C rows [r0, r1) x columns [c0, c1) (c0 a multiple of 16) of C (M, cols) row-major,
 * A (M, K), B = W^T straight from the packed weight (K = in). Per KC_BLK pairs of k and MC_BLK rows,
 * A is rounded once (128 KB, stays in L2); each NR*16-column panel of B (24 KB) then serves all
 * MC_BLK/MR row tiles from L1. */
static void bf16_block_fwd(const lt_cpu_kernels *k, float *C, int cols, const float *A, int K, const uint16_t *Wp,
                           int in, int r0, int r1, int c0, int c1, int accumulate) {
    _Alignas(64) float abuf[MC_BLK * 2 * KC_BLK]; /* 128 KB */
    const int KP = lt_bf16w_pairs(K), PW = lt_bf16w_pairs(in);
    for (int pc = 0; pc < KP; pc += KC_BLK) {
        const int kcp = KP - pc < KC_BLK ? KP - pc : KC_BLK;
        const int first = pc == 0 && !accumulate;
        const int k0 = 2 * pc, k1 = 2 * (pc + kcp) < K ? 2 * (pc + kcp) : K;
        for (int ic = r0; ic < r1; ic += MC_BLK) {
            const int mc = r1 - ic < MC_BLK ? r1 - ic : MC_BLK;
            k->bf16_pack_a(abuf, kcp, A + (size_t)ic * K, (size_t)K, mc, k0, k1);
            for (int jr = c0; jr < c1; jr += NR * 16) {
                const int nc = c1 - jr < NR * 16 ? c1 - jr : NR * 16;
                const uint16_t *b = Wp + ((size_t)(jr / 16) * PW + pc) * 32;
                const size_t bs = (size_t)PW * 32;
                for (int ir = 0; ir < mc; ir += MR)
                    k->bf16_kernel(mc - ir < MR ? mc - ir : MR, nc, kcp, abuf + (size_t)ir * 2 * kcp, b, bs,
                                   C + (size_t)(ic + ir) * cols + jr, (size_t)cols, first);
            }
        }
    }
}

/* The product with B packed per block (the backward of a bf16 weight: re-packed from the packed
 * weight; either product of a 4-bit weight: dequantized): the packing is what costs here, so it is
 * done once per block of NC_BLK columns x KC_BLK pairs (96 KB) and the block serves every row (A is
 * rounded again for each column block). K: the contraction (out for the backward, in for the forward). */
static void bf16_block_packed(const lt_cpu_kernels *k, lt_bf16_pack_b_fn *pack_b, float *C, int cols, const float *A,
                              int K, const void *W, int in, int out, int r0, int r1, int c0, int c1, int accumulate) {
    _Alignas(64) float abuf[MR * 2 * KC_BLK];
    _Alignas(64) uint16_t bbuf[NC_BLK * 2 * KC_BLK]; /* 96 KB */
    const int KP = lt_bf16w_pairs(K);
    for (int jc = c0; jc < c1; jc += NC_BLK) {
        const int jend = jc + NC_BLK < c1 ? jc + NC_BLK : c1;
        for (int pc = 0; pc < KP; pc += KC_BLK) {
            const int kcp = KP - pc < KC_BLK ? KP - pc : KC_BLK;
            pack_b(bbuf, W, in, out, jc, lt_bf16w_blocks(jend - jc), pc, kcp);
            const size_t bs = (size_t)kcp * 32;
            const int first = pc == 0 && !accumulate;
            const int k0 = 2 * pc, k1 = 2 * (pc + kcp) < K ? 2 * (pc + kcp) : K;
            for (int ir = r0; ir < r1; ir += MR) {
                const int mr = r1 - ir < MR ? r1 - ir : MR;
                k->bf16_pack_a(abuf, kcp, A + (size_t)ir * K, (size_t)K, mr, k0, k1);
                for (int jr = jc; jr < jend; jr += NR * 16) {
                    const int nc = jend - jr < NR * 16 ? jend - jr : NR * 16;
                    k->bf16_kernel(mr, nc, kcp, abuf, bbuf + (size_t)((jr - jc) / 16) * bs, bs,
                                   C + (size_t)ir * cols + jr, (size_t)cols, first);
                }
            }
        }
    }
}

/* the frozen weight of a product: packed bf16 (backend/bf16.h) or 4-bit quantized */
typedef struct bweight {
    const uint16_t *packed;
    const lt_qdesc *q;
} bweight;

/* the B-block packer of a product with a 4-bit weight: the ISA's where its conditions hold (AVX512_BF16
 * forward: rows of whole blocks, byte offsets within 31 bits; backward: in % 16 == 0), else portable */
static lt_bf16_pack_b_fn *q4_packer(const lt_cpu_kernels *k, int bwd, const lt_qdesc *q) {
    const int64_t in = q->cols, n = q->rows * q->cols;
    if (bwd) return in % 16 == 0 ? k->bf16_q4_pack_bwd : q4_pack_bwd_c;
    return in % q->blocksize == 0 && n / 2 + in < ((int64_t)1 << 31) ? k->bf16_q4_pack_fwd : q4_pack_fwd_c;
}

static void bf16_block(const lt_cpu_kernels *k, int bwd, float *C, int cols, const float *A, int K, const bweight *w,
                       int in, int out, int r0, int r1, int c0, int c1, int accumulate) {
    if (w->q) bf16_block_packed(k, q4_packer(k, bwd, w->q), C, cols, A, K, w->q, in, out, r0, r1, c0, c1, accumulate);
    else if (bwd)
        bf16_block_packed(k, k->bf16_repack_bwd, C, cols, A, K, w->packed, in, out, r0, r1, c0, c1, accumulate);
    else bf16_block_fwd(k, C, cols, A, K, w->packed, in, r0, r1, c0, c1, accumulate);
}

/* C (M, cols) (+)= A (M, K) B over up to n_threads threads. */
static void bf16_gemm(const lt_cpu_kernels *k, int n_threads, int bwd, float *C, const float *A, const bweight *w,
                      int M, int in, int out, int accumulate) {
    const int cols = bwd ? in : out, K = bwd ? out : in;
    if (M <= 0 || cols <= 0) return;
    if (K <= 0) {
        if (!accumulate) memset(C, 0, (size_t)M * cols * sizeof *C);
        return;
    }
    int nt = n_threads > 0 ? n_threads : 1;
    if (nt > 1 && (double)M * cols * K < 2.0e6) nt = 1;
    /* columns when each thread gets at least one unit of 16 (no duplicated packing), else rows */
    const int ucols = lt_bf16w_blocks(cols), urows = lt_bf16w_blocks(M);
    const int split_cols = ucols >= nt || ucols >= urows;
    const int units = split_cols ? ucols : urows;
    if (nt > units) nt = units;
    if (nt <= 1) {
        bf16_block(k, bwd, C, cols, A, K, w, in, out, 0, M, 0, cols, accumulate);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        const int u0 = (int)((long)units * t / n), u1 = (int)((long)units * (t + 1) / n);
        const int len = split_cols ? cols : M;
        const int lo = u0 * 16, hi = u1 * 16 < len ? u1 * 16 : len;
        if (hi > lo) {
            if (split_cols) bf16_block(k, bwd, C, cols, A, K, w, in, out, 0, M, lo, hi, accumulate);
            else bf16_block(k, bwd, C, cols, A, K, w, in, out, lo, hi, 0, cols, accumulate);
        }
    }
}

void lt_gemm_bf16_forward(const lt_cpu_kernels *k, int n_threads, float *y, const float *x, const uint16_t *Wp, int N,
                          int in, int out) {
    const bweight w = {.packed = Wp};
    bf16_gemm(k, n_threads, 0, y, x, &w, N, in, out, 0);
}

void lt_gemm_bf16_backward(const lt_cpu_kernels *k, int n_threads, float *dx, const float *dy, const uint16_t *Wp,
                           int N, int in, int out, int accumulate) {
    const bweight w = {.packed = Wp};
    bf16_gemm(k, n_threads, 1, dx, dy, &w, N, in, out, accumulate);
}

void lt_gemm_q4_forward(const lt_cpu_kernels *k, int n_threads, float *y, const float *x, const lt_qdesc *q, int N,
                        int in, int out) {
    const bweight w = {.q = q};
    bf16_gemm(k, n_threads, 0, y, x, &w, N, in, out, 0);
}

void lt_gemm_q4_backward(const lt_cpu_kernels *k, int n_threads, float *dx, const float *dy, const lt_qdesc *q, int N,
                         int in, int out, int accumulate) {
    const bweight w = {.q = q};
    bf16_gemm(k, n_threads, 1, dx, dy, &w, N, in, out, accumulate);
}

/* ---- packing a weight (bf16_weight_pack) ------------------------------------------------------- */

void lt_bf16_pack(const lt_cpu_kernels *k, uint16_t *dst, const float *W, int out, int in) {
    const int P = lt_bf16w_pairs(in), OB = lt_bf16w_blocks(out);
    for (int ob = 0; ob < OB; ob++) {
        int p = 0;
        if (ob * 16 + 16 <= out) /* whole 16 x 16 blocks through the ISA's transposer */
            for (; 2 * (p + 16) <= in; p += 16)
                k->bf16_pack_w16(dst + ((size_t)ob * P + p) * 32, 32, W + (size_t)ob * 16 * in + 2 * p, (size_t)in);
        pack_pairs_c(dst, W, out, in, ob, p, P);
    }
}

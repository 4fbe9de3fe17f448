/*
 * gemm_bf16.c - bf16-weight GEMM with fp32 accumulation: AVX512_BF16 and portable (see gemm_bf16.h).
 *
 * defines: lt_bf16_avx512_available, lt_gemm_bf16_forward, lt_gemm_bf16_backward
 *
 * Both products are C (M, NC) (+)= A (M, K) B with A the fp32 activations (x or dy, rows of K) and
 * B (K, NC) a bf16 panel in the layout vdpbf16ps wants: per block of 16 columns, per pair of k,
 * 16 columns x 2 k = one 64-byte vector. The micro-kernel keeps MR x NR = 8 x 3 fp32 vectors of C in
 * registers; each step is 3 vector loads of B and 8 broadcasts of a bf16 pair of A folded into 24
 * vdpbf16ps. Blocking (GotoBLAS-style, one thread's share of C, stack buffers only):
 *   forward (B = W^T is the packed weight itself, nothing to pack per call):
 *     for KC_BLK pairs of k, for MC_BLK rows: round A once (64 KB, L2);
 *       for each NR*16-column panel of B (24 KB, L1): every MR-row tile of the block
 *   backward (B = W, re-packed from the packed weight: 2x2 transposes):
 *     for NC_BLK columns, for KC_BLK pairs: re-pack the B block once (96 KB, L2);
 *       for MR rows: round that slice of A (4 KB, L1); every NR*16-column tile
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
#define LT_BF16_X86 1
#endif
#include <omp.h>
#include <string.h>

#include "backend/codebook.h"
#include "cpu/gemm_bf16.h"

#define MR 8 /* rows of the micro-kernel                        */
#define NR 3 /* 16-column vectors of the micro-kernel            */
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
static void repack_bwd(uint16_t *dst, const void *W, int in, int out, int c0, int nb, int q0, int kcp) {
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

/* A B-block packer: columns [c0, c0 + 16*nb) and pairs [q0, q0 + kcp) of k of the product's B into
 * dst[cb][q][16][2] (the kernel's layout), zero past the edges of B. W: the packed bf16 weight or an
 * lt_qdesc; in, out: the weight's shape. */
typedef void (*pack_b_fn)(uint16_t *dst, const void *W, int in, int out, int c0, int nb, int q0, int kcp);

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

/* ---- one implementation = a row packer and a micro-kernel -------------------------------------- */

/* Rows [0, mr) of A (lda floats apart), k in [k0, k1), rounded to bf16 into a (mr, 2*kcp) with zeros
 * past k1 (an odd K leaves half a pair). */
typedef void (*pack_a_fn)(uint16_t *a, int kcp, const float *A, size_t lda, int mr, int k0, int k1);
/* C (mr, ncols) ldc (+)= a (mr, 2 kcp) x B block (ncols <= NR*16 columns at b, b + bs, ...).
 * first: C = result (else C += result). */
typedef void (*kernel_fn)(int mr, int ncols, int kcp, const uint16_t *a, const uint16_t *b, size_t bs, float *C,
                          size_t ldc, int first);

typedef struct bf16_impl {
    pack_a_fn pack_a;
    kernel_fn kernel;
    pack_b_fn q4_fwd, q4_bwd; /* B blocks of a 4-bit weight for the forward and the backward */
    pack_b_fn repack;         /* B blocks of the backward of a packed bf16 weight */
} bf16_impl;

/* portable */

static void pack_a_c(uint16_t *a, int kcp, const float *A, size_t lda, int mr, int k0, int k1) {
    for (int r = 0; r < mr; r++) {
        const float *src = A + (size_t)r * lda;
        uint16_t *d = a + (size_t)r * 2 * kcp;
        for (int k = 0; k < 2 * kcp; k++) d[k] = k0 + k < k1 ? lt_bf16_round(src[k0 + k]) : 0;
    }
}

static void kernel_c(int mr, int ncols, int kcp, const uint16_t *a, const uint16_t *b, size_t bs, float *C, size_t ldc,
                     int first) {
    float acc[MR][NR * 16];
    memset(acc, 0, sizeof acc);
    const int nz = (ncols + 15) / 16;
    for (int p = 0; p < kcp; p++)
        for (int r = 0; r < mr; r++) {
            const float a0 = lt_bf16_to_f32(a[(size_t)r * 2 * kcp + 2 * p]);
            const float a1 = lt_bf16_to_f32(a[(size_t)r * 2 * kcp + 2 * p + 1]);
            for (int z = 0; z < nz; z++) {
                const uint16_t *v = b + z * bs + (size_t)p * 32;
                for (int l = 0; l < 16; l++) /* products of bf16 values are exact in fp32 */
                    acc[r][z * 16 + l] =
                        (acc[r][z * 16 + l] + a0 * lt_bf16_to_f32(v[2 * l])) + a1 * lt_bf16_to_f32(v[2 * l + 1]);
            }
        }
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < ncols; j++) C[r * ldc + j] = first ? acc[r][j] : C[r * ldc + j] + acc[r][j];
}

static const bf16_impl impl_portable = {pack_a_c, kernel_c, q4_pack_fwd_c, q4_pack_bwd_c, repack_bwd};

/* AVX512_BF16 */

#ifdef LT_BF16_X86
#define LT_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

LT_BF16_TARGET static void pack_a_avx512(uint16_t *a, int kcp, const float *A, size_t lda, int mr, int k0, int k1) {
    for (int r = 0; r < mr; r++) {
        const float *src = A + (size_t)r * lda + k0;
        uint16_t *d = a + (size_t)r * 2 * kcp;
        const int n = k1 - k0;
        for (int k = 0; k < 2 * kcp; k += 32) {
            int n0 = n - k, n1 = n - k - 16;
            __mmask16 m0 = n0 >= 16 ? 0xffff : n0 > 0 ? (__mmask16)((1u << n0) - 1) : 0;
            __mmask16 m1 = n1 >= 16 ? 0xffff : n1 > 0 ? (__mmask16)((1u << n1) - 1) : 0;
            __m512 lo = _mm512_maskz_loadu_ps(m0, src + k), hi = _mm512_maskz_loadu_ps(m1, src + k + 16);
            __m512bh v = _mm512_cvtne2ps_pbh(hi, lo); /* RNE; low half from lo */
            _mm512_storeu_si512((void *)(d + k), (__m512i)v);
        }
    }
}

/* MR_ x NZ_ register tile; constants after inlining, so acc[][] lives in registers. */
LT_BF16_TARGET static inline __attribute__((always_inline)) void
kernel_avx512_tile(const int MR_, const int NZ_, int ncols, int kcp, const uint16_t *a, const uint16_t *b, size_t bs,
                   float *C, size_t ldc, int first) {
    __m512 acc[MR][NR];
#pragma GCC unroll 8
    for (int r = 0; r < MR_; r++)
#pragma GCC unroll 3
        for (int z = 0; z < NZ_; z++) acc[r][z] = _mm512_setzero_ps();
    const size_t lda = (size_t)2 * kcp;
    for (int p = 0; p < kcp; p++) {
        __m512bh bv[NR];
#pragma GCC unroll 3
        for (int z = 0; z < NZ_; z++) bv[z] = (__m512bh)_mm512_loadu_si512((const void *)(b + z * bs + (size_t)p * 32));
#pragma GCC unroll 8
        for (int r = 0; r < MR_; r++) {
            int32_t pair;
            memcpy(&pair, a + r * lda + 2 * p, sizeof pair);
            __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 3
            for (int z = 0; z < NZ_; z++) acc[r][z] = _mm512_dpbf16_ps(acc[r][z], av, bv[z]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR_; r++)
#pragma GCC unroll 3
        for (int z = 0; z < NZ_; z++) {
            int left = ncols - 16 * z;
            __mmask16 m = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
            float *c = C + r * ldc + 16 * z;
            __m512 v = first ? acc[r][z] : _mm512_add_ps(_mm512_maskz_loadu_ps(m, c), acc[r][z]);
            _mm512_mask_storeu_ps(c, m, v);
        }
}

#define LT_TILE(mr_, nz_) \
    case (mr_)*4 + (nz_): kernel_avx512_tile(mr_, nz_, ncols, kcp, a, b, bs, C, ldc, first); return;

LT_BF16_TARGET static void kernel_avx512(int mr, int ncols, int kcp, const uint16_t *a, const uint16_t *b, size_t bs,
                                         float *C, size_t ldc, int first) {
    const int nz = (ncols + 15) / 16;
    /* one case per line and tile: clang-format cannot lay out statement macros */
    /* clang-format off */
    switch (mr * 4 + nz) {
        LT_TILE(8, 3) LT_TILE(8, 2) LT_TILE(8, 1)
        LT_TILE(7, 3) LT_TILE(7, 2) LT_TILE(7, 1)
        LT_TILE(6, 3) LT_TILE(6, 2) LT_TILE(6, 1)
        LT_TILE(5, 3) LT_TILE(5, 2) LT_TILE(5, 1)
        LT_TILE(4, 3) LT_TILE(4, 2) LT_TILE(4, 1)
        LT_TILE(3, 3) LT_TILE(3, 2) LT_TILE(3, 1)
        LT_TILE(2, 3) LT_TILE(2, 2) LT_TILE(2, 1)
        LT_TILE(1, 3) LT_TILE(1, 2) LT_TILE(1, 1)
    default: return;
    }
    /* clang-format on */
}
#undef LT_TILE

/* 16 lanes of bytes base[idx[l]] (valid under m): each from the aligned dword around it, so a read
 * never passes the 4-byte group of a byte that exists (nor its page) */
LT_BF16_TARGET static inline __m512i gather_u8(const uint8_t *base, __m512i idx, __mmask16 m) {
    const uintptr_t mis = (uintptr_t)base & 3; /* aligned addresses are relative to an aligned base */
    const __m512i a = _mm512_add_epi32(idx, _mm512_set1_epi32((int)mis));
    const __m512i w =
        _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, _mm512_andnot_si512(_mm512_set1_epi32(3), a),
                                    (const int *)(const void *)(base - mis), 1);
    return _mm512_and_si512(_mm512_srlv_epi32(w, _mm512_slli_epi32(_mm512_and_si512(a, _mm512_set1_epi32(3)), 3)),
                            _mm512_set1_epi32(0xff));
}

/* 16 weight values (f32 lanes) to bf16 (lt_bf16_round: vcvtneps2bf16 rounds alike) widened to 32 bits */
LT_BF16_TARGET static inline __m512i bf16_lanes(__m512 v) {
    return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v));
}

/* absmax of block b of each lane (b (16 lanes of int32) valid under mask m) */
LT_BF16_TARGET static inline __m512 q4_absmax16(const lt_qdesc *q, __mmask16 m, __m512i b) {
    if (q->absmax) return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, b, q->absmax, 4);
    /* double quantization: code8[qabsmax[b]] * absmax2[b / 256] + offset, without fused multiply-add */
    const __m512i qa = gather_u8(q->qabsmax, b, m);
    const __m512 c8 = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, qa, q->code8, 4);
    const __m512 a2 = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, _mm512_srli_epi32(b, 8), q->absmax2, 4);
    return _mm512_add_ps(_mm512_mul_ps(c8, a2), _mm512_set1_ps(q->offset));
}

/* q4_pack_fwd_c for a weight whose rows are whole blocks (in % blocksize == 0) and whose byte offsets
 * fit 31 bits: each 64-byte vector of the block is 16 rows (lanes) x one pair of columns = one byte of
 * each row, gathered; the absmax of each lane changes every blocksize/2 pairs. */
LT_BF16_TARGET static void q4_pack_fwd_avx512(uint16_t *dst, const void *W, int in, int out, int c0, int nb, int q0,
                                              int kcp) {
    const lt_qdesc *q = W;
    const __m512 code = _mm512_loadu_ps(q4_code(q));
    const int bs = q->blocksize, bpr = in / bs, ppb = bs / 2;
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    for (int cb = 0; cb < nb; cb++) {
        const int o0 = c0 + 16 * cb, rows = out - o0;
        const __mmask16 m = rows >= 16 ? 0xffff : rows > 0 ? (__mmask16)((1u << rows) - 1) : 0;
        const __m512i o = _mm512_add_epi32(_mm512_set1_epi32(o0), lane);
        const __m512i rowbyte = _mm512_mullo_epi32(o, _mm512_set1_epi32(in / 2)); /* byte of (o, 0) */
        const __m512i rowblk = _mm512_mullo_epi32(o, _mm512_set1_epi32(bpr));     /* block of (o, 0) */
        __m512 am = _mm512_setzero_ps();
        for (int k = 0; k < kcp; k++) {
            const int p = q0 + k;
            if (k == 0 || p % ppb == 0) am = q4_absmax16(q, m, _mm512_add_epi32(rowblk, _mm512_set1_epi32(p / ppb)));
            const __m512i byte = gather_u8(q->data, _mm512_add_epi32(rowbyte, _mm512_set1_epi32(p)), m); /* (o, 2p) */
            const __m512 v0 = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(byte, 4), code), am);
            const __m512 v1 =
                _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_and_si512(byte, _mm512_set1_epi32(15)), code), am);
            const __m512i pair = _mm512_or_si512(bf16_lanes(v0), _mm512_slli_epi32(bf16_lanes(v1), 16));
            _mm512_storeu_si512((void *)(dst + ((size_t)cb * kcp + k) * 32), _mm512_maskz_mov_epi32(m, pair));
        }
    }
}

/* values (o, i0 .. i0 + n - 1) of a 4-bit weight, idx = o * in + i0 even and in one block, n <= 16,
 * as f32 lanes (zero past n) */
LT_BF16_TARGET static inline __m512 q4_row16(const lt_qdesc *q, __m512 code, int64_t idx, int n) {
    const __mmask16 m = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
    const __m128i b8 = _mm_maskz_loadu_epi8((__mmask16)((1u << ((n + 1) / 2)) - 1), q->data + (idx >> 1));
    const __m512i b = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(b8, b8)); /* byte j in lanes 2j and 2j+1 */
    const __m512i nib = _mm512_and_si512(
        _mm512_srlv_epi32(b, _mm512_set_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4)), _mm512_set1_epi32(15));
    return _mm512_maskz_mul_ps(m, _mm512_permutexvar_ps(nib, code),
                               _mm512_set1_ps(lt_qdesc_absmax(q, idx / q->blocksize)));
}

/* q4_pack_bwd_c for a weight with in % 16 == 0: per k pair, 16 columns of two rows (8 bytes each) */
LT_BF16_TARGET static void q4_pack_bwd_avx512(uint16_t *dst, const void *W, int in, int out, int c0, int nb, int q0,
                                              int kcp) {
    const lt_qdesc *q = W;
    const __m512 code = _mm512_loadu_ps(q4_code(q));
    for (int cb = 0; cb < nb; cb++) {
        const int i0 = c0 + 16 * cb, n = in - i0 < 16 ? in - i0 : 16;
        for (int k = 0; k < kcp; k++) {
            const int o = 2 * (q0 + k);
            __m512i pair = _mm512_setzero_si512();
            if (n > 0 && o < out) {
                pair = bf16_lanes(q4_row16(q, code, (int64_t)o * in + i0, n));
                if (o + 1 < out)
                    pair = _mm512_or_si512(
                        pair, _mm512_slli_epi32(bf16_lanes(q4_row16(q, code, (int64_t)(o + 1) * in + i0, n)), 16));
            }
            _mm512_storeu_si512((void *)(dst + ((size_t)cb * kcp + k) * 32), pair);
        }
    }
}

/* repack_bwd with a gather: the 16 columns of a block are 8 column pairs, each an 8-byte group
 * (W[o][i], W[o][i+1], W[o+1][i], W[o+1][i+1]) 64 bytes after the previous one; a byte shuffle puts
 * each group in the (W[o][i], W[o+1][i], W[o][i+1], W[o+1][i+1]) order of the kernel. Blocks that end
 * past `in` take the C path. */
LT_BF16_TARGET static void repack_bwd_avx512(uint16_t *dst, const void *W, int in, int out, int c0, int nb, int q0,
                                             int kcp) {
    const uint16_t *Wp = W;
    const int P = lt_bf16w_pairs(in);
    const __m512i idx = _mm512_set_epi64(7 * 64, 6 * 64, 5 * 64, 4 * 64, 3 * 64, 2 * 64, 64, 0);
    const __m512i swap = _mm512_broadcast_i32x4(_mm_set_epi8(15, 14, 11, 10, 13, 12, 9, 8, 7, 6, 3, 2, 5, 4, 1, 0));
    for (int cb = 0; cb < nb; cb++) {
        const int i0 = c0 + cb * 16;
        if (i0 + 16 > in) {
            repack_bwd(dst + (size_t)cb * kcp * 32, W, in, out, i0, 1, q0, kcp);
            continue;
        }
        for (int q = 0; q < kcp; q++) {
            const int o = 2 * (q0 + q);
            const uint16_t *src = Wp + (size_t)(o / 16) * P * 32 + (o % 16) * 2 + (size_t)(i0 / 2) * 32;
            const __m512i g = _mm512_i64gather_epi64(idx, (const void *)src, 1);
            _mm512_storeu_si512((void *)(dst + ((size_t)cb * kcp + q) * 32), _mm512_shuffle_epi8(g, swap));
        }
    }
}

static const bf16_impl impl_avx512 = {pack_a_avx512, kernel_avx512, q4_pack_fwd_avx512, q4_pack_bwd_avx512,
                                      repack_bwd_avx512};
#endif

int lt_bf16_avx512_available(void) {
#ifdef LT_BF16_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

static const bf16_impl *pick(int impl) {
#ifdef LT_BF16_X86
    if (impl != LT_BF16_PORTABLE && lt_bf16_avx512_available()) return &impl_avx512;
#endif
    (void)impl;
    return &impl_portable;
}

/* ---- packing a weight (bf16_weight_pack) ------------------------------------------------------- */

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

#ifdef LT_BF16_X86
/* 16 pairs of 16 rows: each row's 32 values rounded (vcvtne2ps2bf16 rounds as lt_bf16_round) into 16
 * dwords (pair j = (value 2j, value 2j+1)), then a 16 x 16 transpose of dwords gives the layout's 16
 * vectors (pair j: the 16 rows) */
LT_BF16_TARGET static void pack_16x16_avx512(uint16_t *dst, size_t dstride, const float *W, size_t in) {
    __m512i r[16], a[16];
    for (int i = 0; i < 16; i++) {
        const float *w = W + (size_t)i * in;
        r[i] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(w + 16), _mm512_loadu_ps(w));
    }
    for (int k = 0; k < 8; k++) {
        a[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
        a[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
    }
    for (int m = 0; m < 4; m++) { /* r[4m + c], lane L: column 4L + c of rows 4m .. 4m+3 */
        r[4 * m + 0] = _mm512_unpacklo_epi64(a[4 * m], a[4 * m + 2]);
        r[4 * m + 1] = _mm512_unpackhi_epi64(a[4 * m], a[4 * m + 2]);
        r[4 * m + 2] = _mm512_unpacklo_epi64(a[4 * m + 1], a[4 * m + 3]);
        r[4 * m + 3] = _mm512_unpackhi_epi64(a[4 * m + 1], a[4 * m + 3]);
    }
    for (int c = 0; c < 4; c++) { /* a 4 x 4 transpose of 128-bit lanes: column 4L + c = lane L of r[4m + c] */
        const __m512i t0 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x44), t1 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xEE);
        const __m512i t2 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x44);
        const __m512i t3 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xEE);
        _mm512_storeu_si512((void *)(dst + (size_t)(c + 0) * dstride), _mm512_shuffle_i32x4(t0, t2, 0x88));
        _mm512_storeu_si512((void *)(dst + (size_t)(c + 4) * dstride), _mm512_shuffle_i32x4(t0, t2, 0xDD));
        _mm512_storeu_si512((void *)(dst + (size_t)(c + 8) * dstride), _mm512_shuffle_i32x4(t1, t3, 0x88));
        _mm512_storeu_si512((void *)(dst + (size_t)(c + 12) * dstride), _mm512_shuffle_i32x4(t1, t3, 0xDD));
    }
}
#endif

void lt_bf16_pack(int impl, uint16_t *dst, const float *W, int out, int in) {
    const int P = lt_bf16w_pairs(in), OB = lt_bf16w_blocks(out);
#ifdef LT_BF16_X86
    const int fast = pick(impl) == &impl_avx512;
#else
    const int fast = 0;
    (void)impl;
#endif
    for (int ob = 0; ob < OB; ob++) {
        int p = 0;
#ifdef LT_BF16_X86
        if (fast && ob * 16 + 16 <= out)
            for (; 2 * (p + 16) <= in; p += 16)
                pack_16x16_avx512(dst + ((size_t)ob * P + p) * 32, 32, W + (size_t)ob * 16 * in + 2 * p, (size_t)in);
#endif
        (void)fast;
        pack_pairs_c(dst, W, out, in, ob, p, P);
    }
}

/* ---- the blocked product on one thread's share of C --------------------------------------------- */

/* Forward: C rows [r0, r1) x columns [c0, c1) (c0 a multiple of 16) of C (M, cols) row-major,
 * A (M, K), B = W^T straight from the packed weight (K = in). Per KC_BLK pairs of k and MC_BLK rows,
 * A is rounded once (64 KB, stays in L2); each NR*16-column panel of B (24 KB) then serves all
 * MC_BLK/MR row tiles from L1. */
static void bf16_block_fwd(const bf16_impl *im, float *C, int cols, const float *A, int K, const uint16_t *Wp, int in,
                           int r0, int r1, int c0, int c1, int accumulate) {
    _Alignas(64) uint16_t abuf[MC_BLK * 2 * KC_BLK]; /* 64 KB */
    const int KP = lt_bf16w_pairs(K), PW = lt_bf16w_pairs(in);
    for (int pc = 0; pc < KP; pc += KC_BLK) {
        const int kcp = KP - pc < KC_BLK ? KP - pc : KC_BLK;
        const int first = pc == 0 && !accumulate;
        const int k0 = 2 * pc, k1 = 2 * (pc + kcp) < K ? 2 * (pc + kcp) : K;
        for (int ic = r0; ic < r1; ic += MC_BLK) {
            const int mc = r1 - ic < MC_BLK ? r1 - ic : MC_BLK;
            im->pack_a(abuf, kcp, A + (size_t)ic * K, (size_t)K, mc, k0, k1);
            for (int jr = c0; jr < c1; jr += NR * 16) {
                const int nc = c1 - jr < NR * 16 ? c1 - jr : NR * 16;
                const uint16_t *b = Wp + ((size_t)(jr / 16) * PW + pc) * 32;
                const size_t bs = (size_t)PW * 32;
                for (int ir = 0; ir < mc; ir += MR)
                    im->kernel(mc - ir < MR ? mc - ir : MR, nc, kcp, abuf + (size_t)ir * 2 * kcp, b, bs,
                               C + (size_t)(ic + ir) * cols + jr, (size_t)cols, first);
            }
        }
    }
}

/* The product with B packed per block (the backward of a bf16 weight: re-packed from the packed
 * weight; either product of a 4-bit weight: dequantized): the packing is what costs here, so it is
 * done once per block of NC_BLK columns x KC_BLK pairs (96 KB) and the block serves every row (A is
 * rounded again for each column block). K: the contraction (out for the backward, in for the forward). */
static void bf16_block_packed(const bf16_impl *im, pack_b_fn pack_b, float *C, int cols, const float *A, int K,
                              const void *W, int in, int out, int r0, int r1, int c0, int c1, int accumulate) {
    _Alignas(64) uint16_t abuf[MR * 2 * KC_BLK];
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
                im->pack_a(abuf, kcp, A + (size_t)ir * K, (size_t)K, mr, k0, k1);
                for (int jr = jc; jr < jend; jr += NR * 16) {
                    const int nc = jend - jr < NR * 16 ? jend - jr : NR * 16;
                    im->kernel(mr, nc, kcp, abuf, bbuf + (size_t)((jr - jc) / 16) * bs, bs, C + (size_t)ir * cols + jr,
                               (size_t)cols, first);
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

/* the B-block packer of a product with a 4-bit weight: AVX-512 where its conditions hold (forward:
 * rows of whole blocks, byte offsets within 31 bits; backward: in % 16 == 0), else portable */
static pack_b_fn q4_packer(const bf16_impl *im, int bwd, const lt_qdesc *q) {
    const int64_t in = q->cols, n = q->rows * q->cols;
    if (bwd) return in % 16 == 0 ? im->q4_bwd : impl_portable.q4_bwd;
    return in % q->blocksize == 0 && n / 2 + in < ((int64_t)1 << 31) ? im->q4_fwd : impl_portable.q4_fwd;
}

static void bf16_block(const bf16_impl *im, int bwd, float *C, int cols, const float *A, int K, const bweight *w,
                       int in, int out, int r0, int r1, int c0, int c1, int accumulate) {
    if (w->q) bf16_block_packed(im, q4_packer(im, bwd, w->q), C, cols, A, K, w->q, in, out, r0, r1, c0, c1, accumulate);
    else if (bwd) bf16_block_packed(im, im->repack, C, cols, A, K, w->packed, in, out, r0, r1, c0, c1, accumulate);
    else bf16_block_fwd(im, C, cols, A, K, w->packed, in, r0, r1, c0, c1, accumulate);
}

/* C (M, cols) (+)= A (M, K) B over up to n_threads threads. */
static void bf16_gemm(int impl, int n_threads, int bwd, float *C, const float *A, const bweight *w, int M, int in,
                      int out, int accumulate) {
    const int cols = bwd ? in : out, K = bwd ? out : in;
    if (M <= 0 || cols <= 0) return;
    if (K <= 0) {
        if (!accumulate) memset(C, 0, (size_t)M * cols * sizeof *C);
        return;
    }
    const bf16_impl *im = pick(impl);
    int nt = n_threads > 0 ? n_threads : 1;
    if (nt > 1 && (double)M * cols * K < 2.0e6) nt = 1;
    /* columns when each thread gets at least one unit of 16 (no duplicated packing), else rows */
    const int ucols = lt_bf16w_blocks(cols), urows = lt_bf16w_blocks(M);
    const int split_cols = ucols >= nt || ucols >= urows;
    const int units = split_cols ? ucols : urows;
    if (nt > units) nt = units;
    if (nt <= 1) {
        bf16_block(im, bwd, C, cols, A, K, w, in, out, 0, M, 0, cols, accumulate);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        const int u0 = (int)((long)units * t / n), u1 = (int)((long)units * (t + 1) / n);
        const int len = split_cols ? cols : M;
        const int lo = u0 * 16, hi = u1 * 16 < len ? u1 * 16 : len;
        if (hi > lo) {
            if (split_cols) bf16_block(im, bwd, C, cols, A, K, w, in, out, 0, M, lo, hi, accumulate);
            else bf16_block(im, bwd, C, cols, A, K, w, in, out, lo, hi, 0, cols, accumulate);
        }
    }
}

void lt_gemm_bf16_forward(int impl, int n_threads, float *y, const float *x, const uint16_t *Wp, int N, int in,
                          int out) {
    const bweight w = {.packed = Wp};
    bf16_gemm(impl, n_threads, 0, y, x, &w, N, in, out, 0);
}

void lt_gemm_bf16_backward(int impl, int n_threads, float *dx, const float *dy, const uint16_t *Wp, int N, int in,
                           int out, int accumulate) {
    const bweight w = {.packed = Wp};
    bf16_gemm(impl, n_threads, 1, dx, dy, &w, N, in, out, accumulate);
}

void lt_gemm_q4_forward(int impl, int n_threads, float *y, const float *x, const lt_qdesc *q, int N, int in, int out) {
    const bweight w = {.q = q};
    bf16_gemm(impl, n_threads, 0, y, x, &w, N, in, out, 0);
}

void lt_gemm_q4_backward(int impl, int n_threads, float *dx, const float *dy, const lt_qdesc *q, int N, int in, int out,
                         int accumulate) {
    const bweight w = {.q = q};
    bf16_gemm(impl, n_threads, 1, dx, dy, &w, N, in, out, accumulate);
}

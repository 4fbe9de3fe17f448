/*
 * gemm_bf16_simd.h - the per-ISA parts of the bf16-weight GEMM (cpu/gemm_bf16.c): the row packer and the
 * micro-kernel (cpu_kernels.h lt_bf16_pack_a_fn, lt_bf16_kernel_fn), compiled by gemm_bf16.c through
 * cpu/isa_each.h (no include guard). Two copies:
 *   generic      portable C (any CPU; the AVX2 and AVX512 tables name it too: without BF16 dot
 *                products there is nothing faster to do here than this)
 *   avx512bf16   vcvtneps2bf16 to round the activations; the products in fp32 FMAs on the B vectors
 *                widened in registers (cpu/gemm_bf16.c says why not vdpbf16ps)
 * Both round the activations like lt_bf16_round and sum exact products (of two bf16 values) in fp32, in
 * the same order: the same bits.
 * The B-block packers (4-bit weights dequantized into bf16 panels, the backward's re-pack of a bf16
 * weight) and the whole-block weight packer: in the generic copy, gemm_bf16.c's portable C; in the
 * avx512bf16 copy, gathers, byte shuffles and register transposes (vcvtneps2bf16 rounds as
 * lt_bf16_round), bit for bit the portable bytes.
 * defines: lt_bf16_pack_a_<LT_ISA>, lt_bf16_kernel_<LT_ISA>, lt_bf16_repack_bwd_<LT_ISA>,
 * lt_bf16_q4_pack_fwd_<LT_ISA>, lt_bf16_q4_pack_bwd_<LT_ISA>, lt_bf16_pack_w16_<LT_ISA> (named by
 * cpu/cpu_isa.c's tables).
 */
#define LT_CAT2_(a, b) a##_##b
#define LT_CAT2(a, b) LT_CAT2_(a, b)
#define F(name) LT_CAT2(name, LT_ISA)

#if LT_ISA_LEVEL == LT_ISA_GENERIC

void F(lt_bf16_pack_a)(float *a, int kcp, const float *A, size_t lda, int mr, int k0, int k1) {
    for (int r = 0; r < mr; r++) {
        const float *src = A + (size_t)r * lda;
        float *d = a + (size_t)r * 2 * kcp;
        for (int k = 0; k < 2 * kcp; k++) d[k] = k0 + k < k1 ? lt_bf16_to_f32(lt_bf16_round(src[k0 + k])) : 0.0f;
    }
}

void F(lt_bf16_kernel)(int mr, int ncols, int kcp, const float *a, const uint16_t *b, size_t bs, float *C, size_t ldc,
                       int first) {
    float acc[LT_BF16_MR][LT_BF16_NR * 16];
    memset(acc, 0, sizeof acc);
    const int nz = (ncols + 15) / 16;
    for (int p = 0; p < kcp; p++)
        for (int r = 0; r < mr; r++) {
            const float a0 = a[(size_t)r * 2 * kcp + 2 * p], a1 = a[(size_t)r * 2 * kcp + 2 * p + 1];
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

/* the B-block packers: gemm_bf16.c's portable ones */
void F(lt_bf16_repack_bwd)(uint16_t *dst, const void *W, int in, int out, int c0, int nb, int q0, int kcp) {
    repack_bwd_c(dst, W, in, out, c0, nb, q0, kcp);
}
void F(lt_bf16_q4_pack_fwd)(uint16_t *dst, const void *W, int in, int out, int c0, int nb, int q0, int kcp) {
    q4_pack_fwd_c(dst, W, in, out, c0, nb, q0, kcp);
}
void F(lt_bf16_q4_pack_bwd)(uint16_t *dst, const void *W, int in, int out, int c0, int nb, int q0, int kcp) {
    q4_pack_bwd_c(dst, W, in, out, c0, nb, q0, kcp);
}

/* 16 rows x 16 pairs of W (rows `in` floats apart) into 16 vectors of the packed layout, dstride apart */
void F(lt_bf16_pack_w16)(uint16_t *dst, size_t dstride, const float *W, size_t in) {
    for (int j = 0; j < 16; j++)
        for (int r = 0; r < 16; r++)
            for (int e = 0; e < 2; e++)
                dst[(size_t)j * dstride + 2 * r + e] = lt_bf16_round(W[(size_t)r * in + 2 * j + e]);
}

#elif LT_ISA_LEVEL == LT_ISA_AVX512_BF16

void F(lt_bf16_pack_a)(float *a, int kcp, const float *A, size_t lda, int mr, int k0, int k1) {
    for (int r = 0; r < mr; r++) {
        const float *src = A + (size_t)r * lda + k0;
        float *d = a + (size_t)r * 2 * kcp;
        const int n = k1 - k0;
        for (int k = 0; k < 2 * kcp; k += 16) {
            const int left = n - k;
            const __mmask16 m = left >= 16 ? 0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
            const __m256i h = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + k)); /* RNE */
            _mm512_storeu_ps(d + k, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
        }
    }
}

/* MR_ x NZ_ register tile; constants after inlining, so acc[][] lives in registers. */
static inline __attribute__((always_inline)) void bf16_kernel_tile(const int MR_, const int NZ_, int ncols, int kcp,
                                                                   const float *a, const uint16_t *b, size_t bs,
                                                                   float *C, size_t ldc, int first) {
    __m512 acc[LT_BF16_MR][LT_BF16_NR];
#pragma GCC unroll 8
    for (int r = 0; r < MR_; r++)
#pragma GCC unroll 3
        for (int z = 0; z < NZ_; z++) acc[r][z] = _mm512_setzero_ps();
    const size_t lda = (size_t)2 * kcp;
    const __m512i hi_half = _mm512_set1_epi32((int)0xffff0000u);
    for (int p = 0; p < kcp; p++) {
        __m512 b_even[LT_BF16_NR], b_odd[LT_BF16_NR]; /* B's k = 2p and 2p+1 rows, widened to fp32 */
#pragma GCC unroll 3
        for (int z = 0; z < NZ_; z++) {
            const __m512i v = _mm512_loadu_si512((const void *)(b + z * bs + (size_t)p * 32));
            b_even[z] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
            b_odd[z] = _mm512_castsi512_ps(_mm512_and_si512(v, hi_half));
        }
#pragma GCC unroll 8
        for (int r = 0; r < MR_; r++) {
            const __m512 a_even = _mm512_set1_ps(a[r * lda + 2 * p]), a_odd = _mm512_set1_ps(a[r * lda + 2 * p + 1]);
#pragma GCC unroll 3
            for (int z = 0; z < NZ_; z++) acc[r][z] = _mm512_fmadd_ps(a_even, b_even[z], acc[r][z]);
#pragma GCC unroll 3
            for (int z = 0; z < NZ_; z++) acc[r][z] = _mm512_fmadd_ps(a_odd, b_odd[z], acc[r][z]);
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

/* one case per line and tile: clang-format cannot lay out statement macros */
/* clang-format off */
#define LT_TILE(mr_, nz_) \
    case (mr_)*4 + (nz_): bf16_kernel_tile(mr_, nz_, ncols, kcp, a, b, bs, C, ldc, first); return;

void F(lt_bf16_kernel)(int mr, int ncols, int kcp, const float *a, const uint16_t *b, size_t bs, float *C,
                       size_t ldc, int first) {
    const int nz = (ncols + 15) / 16;
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
}
/* clang-format on */
#undef LT_TILE

/* 16 lanes of bytes base[idx[l]] (valid under m): each from the aligned dword around it, so a read
 * never passes the 4-byte group of a byte that exists (nor its page) */
static inline __m512i gather_u8(const uint8_t *base, __m512i idx, __mmask16 m) {
    const uintptr_t mis = (uintptr_t)base & 3; /* aligned addresses are relative to an aligned base */
    const __m512i a = _mm512_add_epi32(idx, _mm512_set1_epi32((int)mis));
    const __m512i w =
        _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, _mm512_andnot_si512(_mm512_set1_epi32(3), a),
                                    (const int *)(const void *)(base - mis), 1);
    return _mm512_and_si512(_mm512_srlv_epi32(w, _mm512_slli_epi32(_mm512_and_si512(a, _mm512_set1_epi32(3)), 3)),
                            _mm512_set1_epi32(0xff));
}

/* 16 weight values (f32 lanes) to bf16 (lt_bf16_round: vcvtneps2bf16 rounds alike) widened to 32 bits */
static inline __m512i bf16_lanes(__m512 v) { return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v)); }

/* absmax of block b of each lane (b (16 lanes of int32) valid under mask m) */
static inline __m512 q4_absmax16(const lt_qdesc *q, __mmask16 m, __m512i b) {
    if (q->absmax) return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, b, q->absmax, 4);
    /* double quantization: code8[qabsmax[b]] * absmax2[b / 256] + offset, without fused multiply-add */
    const __m512i qa = gather_u8(q->qabsmax, b, m);
    const __m512 c8 = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, qa, q->code8, 4);
    const __m512 a2 = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, _mm512_srli_epi32(b, 8), q->absmax2, 4);
    return _mm512_add_ps(_mm512_mul_ps(c8, a2), _mm512_set1_ps(q->offset));
}

/* q4_pack_fwd_c (gemm_bf16.c) for a weight whose rows are whole blocks (in % blocksize == 0) and whose byte offsets
 * fit 31 bits: each 64-byte vector of the block is 16 rows (lanes) x one pair of columns = one byte of
 * each row, gathered; the absmax of each lane changes every blocksize/2 pairs. */
void F(lt_bf16_q4_pack_fwd)(uint16_t *dst, const void *W, int in, int out, int c0, int nb, int q0, int kcp) {
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
static inline __m512 q4_row16(const lt_qdesc *q, __m512 code, int64_t idx, int n) {
    const __mmask16 m = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
    const __m128i b8 = _mm_maskz_loadu_epi8((__mmask16)((1u << ((n + 1) / 2)) - 1), q->data + (idx >> 1));
    const __m512i b = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(b8, b8)); /* byte j in lanes 2j and 2j+1 */
    const __m512i nib = _mm512_and_si512(
        _mm512_srlv_epi32(b, _mm512_set_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4)), _mm512_set1_epi32(15));
    return _mm512_maskz_mul_ps(m, _mm512_permutexvar_ps(nib, code),
                               _mm512_set1_ps(lt_qdesc_absmax(q, idx / q->blocksize)));
}

/* q4_pack_bwd_c for a weight with in % 16 == 0: per k pair, 16 columns of two rows (8 bytes each) */
void F(lt_bf16_q4_pack_bwd)(uint16_t *dst, const void *W, int in, int out, int c0, int nb, int q0, int kcp) {
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

/* repack_bwd_c (gemm_bf16.c) with a gather: the 16 columns of a block are 8 column pairs, each an 8-byte group
 * (W[o][i], W[o][i+1], W[o+1][i], W[o+1][i+1]) 64 bytes after the previous one; a byte shuffle puts
 * each group in the (W[o][i], W[o+1][i], W[o][i+1], W[o+1][i+1]) order of the kernel. Blocks that end
 * past `in` take the C path. */
void F(lt_bf16_repack_bwd)(uint16_t *dst, const void *W, int in, int out, int c0, int nb, int q0, int kcp) {
    const uint16_t *Wp = W;
    const int P = lt_bf16w_pairs(in);
    const __m512i idx = _mm512_set_epi64(7 * 64, 6 * 64, 5 * 64, 4 * 64, 3 * 64, 2 * 64, 64, 0);
    const __m512i swap = _mm512_broadcast_i32x4(_mm_set_epi8(15, 14, 11, 10, 13, 12, 9, 8, 7, 6, 3, 2, 5, 4, 1, 0));
    for (int cb = 0; cb < nb; cb++) {
        const int i0 = c0 + cb * 16;
        if (i0 + 16 > in) {
            repack_bwd_c(dst + (size_t)cb * kcp * 32, W, in, out, i0, 1, q0, kcp);
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

/* 16 pairs of 16 rows: each row's 32 values rounded (vcvtne2ps2bf16 rounds as lt_bf16_round) into 16
 * dwords (pair j = (value 2j, value 2j+1)), then a 16 x 16 transpose of dwords gives the layout's 16
 * vectors (pair j: the 16 rows) */
void F(lt_bf16_pack_w16)(uint16_t *dst, size_t dstride, const float *W, size_t in) {
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

#undef F
#undef LT_CAT2
#undef LT_CAT2_

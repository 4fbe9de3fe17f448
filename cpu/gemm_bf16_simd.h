/*
 * gemm_bf16_simd.h - the per-ISA parts of the bf16-weight GEMM (cpu/gemm_bf16.c): the row packer and the
 * micro-kernel (cpu_kernels.h lt_bf16_pack_a_fn, lt_bf16_kernel_fn), compiled by gemm_bf16.c through
 * cpu/isa_each.h (no include guard). Two copies:
 *   generic      portable C (any CPU; the AVX2 and AVX512 tables name it too: without BF16 dot
 *                products there is nothing faster to do here than this)
 *   avx512bf16   vcvtne2ps2bf16 to round the activations, vdpbf16ps for the products
 * Both round the activations like lt_bf16_round and sum exact products (of two bf16 values) in fp32.
 * defines: lt_bf16_pack_a_<LT_ISA>, lt_bf16_kernel_<LT_ISA> (named by cpu/cpu_isa.c's tables).
 */
#define LT_CAT2_(a, b) a##_##b
#define LT_CAT2(a, b) LT_CAT2_(a, b)
#define F(name) LT_CAT2(name, LT_ISA)

#if LT_ISA_LEVEL == LT_ISA_GENERIC

void F(lt_bf16_pack_a)(uint16_t *a, int kcp, const float *A, size_t lda, int mr, int k0, int k1) {
    for (int r = 0; r < mr; r++) {
        const float *src = A + (size_t)r * lda;
        uint16_t *d = a + (size_t)r * 2 * kcp;
        for (int k = 0; k < 2 * kcp; k++) d[k] = k0 + k < k1 ? lt_bf16_round(src[k0 + k]) : 0;
    }
}

void F(lt_bf16_kernel)(int mr, int ncols, int kcp, const uint16_t *a, const uint16_t *b, size_t bs, float *C,
                       size_t ldc, int first) {
    float acc[LT_BF16_MR][LT_BF16_NR * 16];
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

#elif LT_ISA_LEVEL == LT_ISA_AVX512_BF16

void F(lt_bf16_pack_a)(uint16_t *a, int kcp, const float *A, size_t lda, int mr, int k0, int k1) {
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
static inline __attribute__((always_inline)) void bf16_kernel_tile(const int MR_, const int NZ_, int ncols, int kcp,
                                                                   const uint16_t *a, const uint16_t *b, size_t bs,
                                                                   float *C, size_t ldc, int first) {
    __m512 acc[LT_BF16_MR][LT_BF16_NR];
#pragma GCC unroll 8
    for (int r = 0; r < MR_; r++)
#pragma GCC unroll 3
        for (int z = 0; z < NZ_; z++) acc[r][z] = _mm512_setzero_ps();
    const size_t lda = (size_t)2 * kcp;
    for (int p = 0; p < kcp; p++) {
        __m512bh bv[LT_BF16_NR];
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

/* one case per line and tile: clang-format cannot lay out statement macros */
/* clang-format off */
#define LT_TILE(mr_, nz_) \
    case (mr_)*4 + (nz_): bf16_kernel_tile(mr_, nz_, ncols, kcp, a, b, bs, C, ldc, first); return;

void F(lt_bf16_kernel)(int mr, int ncols, int kcp, const uint16_t *a, const uint16_t *b, size_t bs, float *C,
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

#endif

#undef F
#undef LT_CAT2
#undef LT_CAT2_

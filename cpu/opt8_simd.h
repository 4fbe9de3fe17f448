/*
 * opt8_simd.h - the 8-bit AdamW block kernel (cpu_kernels.h lt_opt8_blocks_fn), written once over GCC
 * vector extensions and compiled once per instruction set by cpu_opt8.c through cpu/isa_each.h (no
 * include guard, like simd.h): LT_ISA (name suffix), LT_W (floats per vector: 16, 8, 4).
 * defines: lt_opt8_blocks_<LT_ISA> (named by cpu_isa.c's tables; none at AVX512_BF16, whose table
 * names the AVX512 kernel).
 *
 * Bit for bit lt_ref_adamw8bit_block: the same float operations in the same order (cpu_opt8.c is
 * compiled with -ffp-contract=off, so no multiply-add is fused), the sign and NaN rules lane by lane,
 * and the remainder of a partial block through the scalar expressions of the reference.
 */

#if LT_ISA_LEVEL != LT_ISA_AVX512_BF16

#define LT_CAT2_(a, b) a##_##b
#define LT_CAT2(a, b) LT_CAT2_(a, b)
#define F(name) LT_CAT2(name, LT_ISA)
#define LT_AI static inline __attribute__((always_inline))

#define vf F(o8vf)
#define vi F(o8vi)
#define vu F(o8vu)
typedef float vf __attribute__((vector_size(LT_W * 4)));
typedef int32_t vi __attribute__((vector_size(LT_W * 4)));
typedef uint32_t vu __attribute__((vector_size(LT_W * 4)));

LT_AI vf F(o8_ld)(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
LT_AI void F(o8_st)(float *p, vf v) { memcpy(p, &v, sizeof v); }
/* m lanes are 0 or -1 (a vector comparison) */
LT_AI vf F(o8_sel)(vi m, vf a, vf b) { return (vf)(((vi)a & m) | ((vi)b & ~m)); }
LT_AI vi F(o8_seli)(vi m, vi a, vi b) { return (a & m) | (b & ~m); }

LT_AI vf F(o8_sqrt)(vf a) {
#if LT_W == 16
    return _mm512_sqrt_ps(a);
#elif LT_W == 8
    return _mm256_sqrt_ps(a);
#else
    for (int i = 0; i < LT_W; i++) a[i] = sqrtf(a[i]);
    return a;
#endif
}

/* the largest lane (no lane is NaN here) */
LT_AI float F(o8_hmax)(vf v) {
    float m = v[0];
    for (int i = 1; i < LT_W; i++) m = v[i] > m ? v[i] : m;
    return m;
}

/* W bytes -> W int32 lanes */
LT_AI vi F(o8_ldb)(const uint8_t *p) {
#if LT_W == 16
    return (vi)_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
#elif LT_W == 8
    return (vi)_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
#else
    vi r;
    for (int i = 0; i < LT_W; i++) r[i] = p[i];
    return r;
#endif
}

/* the low byte of each lane -> W bytes (the (uint8_t) cast of the reference) */
LT_AI void F(o8_stb)(uint8_t *p, vi q) {
#if LT_W == 16
    _mm_storeu_si128((__m128i *)p, _mm512_cvtepi32_epi8((__m512i)q));
#else
    for (int i = 0; i < LT_W; i++) p[i] = (uint8_t)q[i];
#endif
}

/* t[idx] (t a float table) */
LT_AI vf F(o8_gather)(const float *t, vi idx) {
#if LT_W == 16
    return _mm512_i32gather_ps((__m512i)idx, t, 4);
#elif LT_W == 8
    return _mm256_i32gather_ps(t, (__m256i)idx, 4);
#else
    vf r;
    for (int i = 0; i < LT_W; i++) r[i] = t[idx[i]];
    return r;
#endif
}

/* t[idx] (t a byte table, readable 3 bytes past every index: a 32-bit gather, low byte kept) */
LT_AI vi F(o8_gatherb)(const uint8_t *t, vi idx) {
#if LT_W == 16
    return (vi)_mm512_i32gather_epi32((__m512i)idx, t, 1) & 0xff;
#elif LT_W == 8
    return (vi)_mm256_i32gather_epi32((const int *)t, (__m256i)idx, 1) & 0xff;
#else
    vi r;
    for (int i = 0; i < LT_W; i++) r[i] = t[idx[i]];
    return r;
#endif
}

/* lt_opt8_nearest lane by lane: the bucket's lower bound, maxfix threshold steps, NaN -> 0 */
LT_AI vi F(o8_nearest)(const lt_opt8_lut *lut, vf x) {
    vi b = (vi)x;
    vi k = b ^ ((b >> 31) & 0x7fffffff);
    const vi kmin = (vi){0} + lut->kmin, kmax = (vi){0} + lut->kmax;
    k = F(o8_seli)(k < kmin, kmin, k);
    k = F(o8_seli)(k > kmax, kmax, k);
    vi lo = F(o8_gatherb)(lut->tab, (vi)(((vu)k - (uint32_t)lut->kmin) >> lut->shift));
    for (int s = 0; s < lut->maxfix; s++) lo -= (vi)(F(o8_gather)(lut->thr, lo) <= x); /* true = -1 */
    return lo & (vi)(x == x); /* NaN -> 0 (a negative NaN, x86's default, already counts 0) */
}

/* blocks [b0, b1) of a tensor of n elements (cpu_kernels.h lt_opt8_blocks_fn) */
void F(lt_opt8_blocks)(float *param, const float *grad, uint8_t *c1, uint8_t *c2, float *absmax1, float *absmax2,
                       size_t n, size_t b0, size_t b1, const float *qmap1, const float *qmap2, const lt_opt8_lut *lut1,
                       const lt_opt8_lut *lut2, float beta1, float beta2, float eps_c2, float step_size, float decay) {
    const float ob1 = 1.0f - beta1, ob2 = 1.0f - beta2, keep = 1.0f - decay;
    float m[LT_OPT8_BLOCK], v[LT_OPT8_BLOCK]; /* the block's updated fp32 m, v */
    for (size_t b = b0; b < b1; b++) {
        const size_t i0 = b * LT_OPT8_BLOCK, i1 = i0 + LT_OPT8_BLOCK < n ? i0 + LT_OPT8_BLOCK : n;
        const float a1 = absmax1[b], a2 = absmax2[b];
        /* pass 1: dequantize, update m, v and the parameter (finite g only), block absmax */
        vf acc1 = (vf){0} - FLT_MAX, acc2 = acc1;
        size_t i = i0;
        for (; i + LT_W <= i1; i += LT_W) {
            const vf g = F(o8_ld)(grad + i);
            const vi fin = ((vi)g & 0x7f800000) != 0x7f800000;
            vf mi = F(o8_gather)(qmap1, F(o8_ldb)(c1 + i)) * a1;
            mi = mi * beta1 + ob1 * g;
            vf vv = F(o8_gather)(qmap2, F(o8_ldb)(c2 + i)) * a2;
            vv = vv * beta2 + ob2 * g * g;
            const vf p = F(o8_ld)(param + i);
            vf pn = p + step_size * (mi / (F(o8_sqrt)(vv) + eps_c2));
            if (decay > 0.0f) pn = pn * keep;
            F(o8_st)(param + i, F(o8_sel)(fin, pn, p));
            mi = F(o8_sel)(fin, mi, (vf){0});
            vv = F(o8_sel)(fin, vv, (vf){0});
            F(o8_st)(m + (i - i0), mi);
            F(o8_st)(v + (i - i0), vv);
            const vf am = (vf)((vi)mi & 0x7fffffff), av = (vf)((vi)vv & 0x7fffffff); /* NaN stays NaN */
            acc1 = F(o8_sel)(am > acc1, am, acc1);                                   /* fmaxf: a NaN never wins */
            acc2 = F(o8_sel)(av > acc2, av, acc2);
        }
        float am1 = F(o8_hmax)(acc1), am2 = F(o8_hmax)(acc2);
        for (; i < i1; i++) { /* the reference, verbatim */
            const float g = grad[i];
            float mi = 0.0f, vi_ = 0.0f;
            if (isfinite(g)) {
                mi = qmap1[c1[i]] * a1;
                mi = mi * beta1 + (1.0f - beta1) * g;
                vi_ = qmap2[c2[i]] * a2;
                vi_ = vi_ * beta2 + (1.0f - beta2) * g * g;
                param[i] = param[i] + step_size * (mi / (sqrtf(vi_) + eps_c2));
                if (decay > 0.0f) param[i] = param[i] * (1.0f - decay);
            }
            m[i - i0] = mi;
            v[i - i0] = vi_;
            am1 = fmaxf(am1, fabsf(mi));
            am2 = fmaxf(am2, fabsf(vi_));
        }
        absmax1[b] = am1;
        absmax2[b] = am2;
        /* pass 2: requantize (an all-zero block stores m = v = 0) */
        const vi nneg = (vi){0} + lut1->nneg;
        for (i = i0; i + LT_W <= i1; i += LT_W) {
            const vf mi = F(o8_ld)(m + (i - i0));
            const vf x1 = am1 > 0.0f ? mi / am1 : (vf){0};
            vi q1 = F(o8_nearest)(lut1, x1);
            /* m keeps its sign: a code of the other sign moves one code towards m's sign */
            const vi differ = (q1 < nneg) ^ ((vi)mi < 0);
            q1 += differ & (((vi)(mi > (vf){0}) & 2) - 1);
            F(o8_stb)(c1 + i, q1);
            const vf x2 = am2 > 0.0f ? F(o8_ld)(v + (i - i0)) / am2 : (vf){0};
            F(o8_stb)(c2 + i, F(o8_nearest)(lut2, x2));
        }
        for (; i < i1; i++) {
            const float mi = m[i - i0], x1 = am1 > 0.0f ? mi / am1 : 0.0f;
            const float x2 = am2 > 0.0f ? v[i - i0] / am2 : 0.0f;
            int q1 = lt_opt8_nearest(lut1, x1);
            if (signbit(qmap1[q1]) != signbit(mi)) q1 += mi > 0.0f ? 1 : -1;
            c1[i] = (uint8_t)q1;
            c2[i] = (uint8_t)lt_opt8_nearest(lut2, x2);
        }
    }
}

#undef vf
#undef vi
#undef vu
#undef F
#undef LT_AI
#undef LT_CAT2
#undef LT_CAT2_

#endif /* LT_ISA_LEVEL != LT_ISA_AVX512_BF16 */

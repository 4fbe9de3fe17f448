/*
 * cpu_opt8.h - the fast CPU 8-bit AdamW block (backend.h adamw8bit_step), bit for bit
 * lt_ref_adamw8bit_block.
 *
 * defines: lt_opt8_lut (a code book prepared for a search without binary search),
 * lt_opt8_lut_build, lt_opt8_luts, lt_opt8_nearest (scalar). The block kernel itself is cpu/opt8_simd.h,
 * compiled once per instruction set by cpu/cpu_opt8.c; the CPU backend finds it in its ISA's table
 * (cpu_kernels.h opt8_blocks).
 *
 * The nearest code. The reference takes lo = the largest index with code[lo] <= x, then moves to
 * lo + 1 when |x - code[lo+1]| < |x - code[lo]| (in float). Within [code[i], code[i+1]) that test is
 * monotone in x (float rounding is monotone), so there is one threshold thr[i], the smallest float with
 * the test true, and nearest(x) = #{i < 255 : thr[i] <= x} for every non-NaN x (NaN gives 0). The
 * thresholds are found once per code book by bisection over float bit patterns, evaluating the very
 * expression of the reference; ties therefore fall where the reference puts them.
 * Counting: floats map to ordered int32 keys; a table over key >> shift gives the count at each
 * bucket's smallest key (a lower bound), then at most maxfix steps `while (thr[lo] <= x) lo++`.
 */
#ifndef LT_CPU_OPT8_H
#define LT_CPU_OPT8_H

#include <stddef.h>
#include <stdint.h>

#define LT_OPT8_LUT_MAX 8192 /* buckets: 8 KiB per code book, the shift chosen to fit */

typedef struct lt_opt8_lut {
    int32_t kmin, kmax;               /* ordered keys of code[0] and code[255] (keys outside are clamped) */
    int shift;                        /* bucket = (key - kmin) >> shift */
    int maxfix;                       /* fix-up steps that make every bucket's lower bound exact */
    int nneg;                         /* codes with the sign bit set: exactly code[0 .. nneg) */
    float thr[256];                   /* thr[0..254]; thr[255] = NaN stops the count */
    uint8_t tab[LT_OPT8_LUT_MAX + 4]; /* + 4: the 32-bit gathers read 3 bytes past an entry */
} lt_opt8_lut;

/* 1 when code (256 floats) is strictly increasing and finite (all the backend's code books are),
 * else 0 (the caller then uses the reference). */
int lt_opt8_lut_build(lt_opt8_lut *lut, const float *code);

/* *lut1, *lut2 = the tables of qmap1, qmap2 (the library's code books: built once per process; other
 * books: built into scratch). 0 when a book is not strictly increasing and finite. */
int lt_opt8_luts(const float *qmap1, const float *qmap2, lt_opt8_lut scratch[2], const lt_opt8_lut **lut1,
                 const lt_opt8_lut **lut2);

/* the float -> ordered int32 key map (monotone; -0.0 just below +0.0) and back */
static inline int32_t lt_opt8_key(float x) {
    union {
        float f;
        int32_t i;
    } u = {.f = x};
    return u.i ^ ((u.i >> 31) & 0x7fffffff);
}

/* the reference's nearest code (code_nearest in cpu/ref_ops.c) */
static inline int lt_opt8_nearest(const lt_opt8_lut *lut, float x) {
    if (x != x) return 0;
    int32_t k = lt_opt8_key(x);
    k = k < lut->kmin ? lut->kmin : k > lut->kmax ? lut->kmax : k;
    int lo = lut->tab[((uint32_t)k - (uint32_t)lut->kmin) >> lut->shift];
    while (lut->thr[lo] <= x) lo++;
    return lo;
}

#endif /* LT_CPU_OPT8_H */

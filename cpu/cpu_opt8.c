/*
 * cpu_opt8.c - the fast CPU 8-bit AdamW block (cpu_opt8.h): the code-book preparation and the block
 * kernel of cpu/opt8_simd.h compiled once per instruction set (cpu/isa_each.h).
 *
 * defines: lt_opt8_lut_build, lt_opt8_luts, lt_opt8_blocks_<isa> (named by cpu/cpu_isa.c's tables).
 *
 * This file is compiled with -ffp-contract=off (CMakeLists.txt), like cpu/ref_ops.c: the result must
 * be the reference's bytes, and a fused multiply-add would round differently.
 */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "backend/codebook.h"
#include "cpu/cpu_kernels.h"
#include "cpu/cpu_opt8.h"
#include "cpu/ref_ops.h"

/* the float whose ordered key is k */
static float key_float(int32_t k) {
    const int32_t i = k ^ ((k >> 31) & 0x7fffffff);
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}

/* the reference's test for moving from code c0 up to c1 (code_nearest in ref_ops.c), in float */
static int moves_up(float x, float c0, float c1) { return fabsf(x - c1) < fabsf(x - c0); }

int lt_opt8_lut_build(lt_opt8_lut *lut, const float *code) {
    for (int i = 0; i < 256; i++)
        if (!isfinite(code[i]) || (i > 0 && !(code[i - 1] < code[i]))) return 0;
    /* strictly increasing: the codes with the sign bit set come first */
    lut->nneg = 0;
    while (lut->nneg < 256 && signbit(code[lut->nneg])) lut->nneg++;
    /* thr[i]: the smallest float in (code[i], code[i+1]] that the reference sends to i + 1; the test
     * is false at code[i] and true at code[i+1] (distinct codes), monotone between: bisect on keys */
    for (int i = 0; i < 255; i++) {
        int64_t lo = lt_opt8_key(code[i]), hi = lt_opt8_key(code[i + 1]);
        while (hi - lo > 1) {
            const int64_t mid = lo + (hi - lo) / 2;
            if (moves_up(key_float((int32_t)mid), code[i], code[i + 1])) hi = mid;
            else lo = mid;
        }
        lut->thr[i] = key_float((int32_t)hi);
    }
    lut->thr[255] = NAN; /* never <= x: the count stops at 255 */
    lut->kmin = lt_opt8_key(code[0]);
    lut->kmax = lt_opt8_key(code[255]);
    const int64_t span = (int64_t)lut->kmax - lut->kmin;
    lut->shift = 0;
    while ((span >> lut->shift) + 1 > LT_OPT8_LUT_MAX) lut->shift++;
    const int64_t nbk = (span >> lut->shift) + 1;
    /* tab[b] = the count at the bucket's smallest key; maxfix = the most the count grows inside a bucket */
    int c = 0, cmax = 0;
    lut->maxfix = 0;
    for (int64_t b = 0; b < nbk; b++) {
        const int64_t k0 = lut->kmin + (b << lut->shift), k1 = k0 + ((int64_t)1 << lut->shift) - 1;
        const float f0 = key_float((int32_t)k0), f1 = key_float((int32_t)(k1 < lut->kmax ? k1 : lut->kmax));
        while (c < 255 && lut->thr[c] <= f0) c++;
        while (cmax < 255 && lut->thr[cmax] <= f1) cmax++;
        lut->tab[b] = (uint8_t)c;
        if (cmax - c > lut->maxfix) lut->maxfix = cmax - c;
    }
    memset(lut->tab + nbk, 0, sizeof lut->tab - (size_t)nbk);
    return 1;
}

/* The tables of the library's two code books, built once per process (~60 us each) and read-only after:
 * the optimizer passes those books on every call (like backend/codebook.c's maps, a pthread_once). */
static lt_opt8_lut book_luts[2];
static int book_luts_ok;
static pthread_once_t book_luts_once = PTHREAD_ONCE_INIT;
static void book_luts_init(void) {
    book_luts_ok =
        lt_opt8_lut_build(&book_luts[0], lt_quant_code8()) && lt_opt8_lut_build(&book_luts[1], lt_quant_code8u());
}

int lt_opt8_luts(const float *qmap1, const float *qmap2, lt_opt8_lut scratch[2], const lt_opt8_lut **lut1,
                 const lt_opt8_lut **lut2) {
    pthread_once(&book_luts_once, book_luts_init);
    if (book_luts_ok && !memcmp(qmap1, lt_quant_code8(), 256 * sizeof(float)) &&
        !memcmp(qmap2, lt_quant_code8u(), 256 * sizeof(float))) {
        *lut1 = &book_luts[0];
        *lut2 = &book_luts[1];
        return 1;
    }
    if (!lt_opt8_lut_build(&scratch[0], qmap1) || !lt_opt8_lut_build(&scratch[1], qmap2)) return 0;
    *lut1 = &scratch[0];
    *lut2 = &scratch[1];
    return 1;
}

/* ---- the kernel, once per instruction set ---------------------------------------------------------- */

#define LT_ISA_BODY "cpu/opt8_simd.h"
#include "cpu/isa_each.h"

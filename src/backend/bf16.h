/*
 * bf16.h - bf16 rounding and the packed bf16 weight layout (base_dtype LT_BASE_BF16), shared by the CPU
 * and CUDA backends and their reference kernels so that every one rounds and lays out weights alike.
 * defines: lt_bf16_round, lt_bf16_to_f32, lt_bf16w_pairs, lt_bf16w_blocks, lt_bf16w_elems, lt_bf16w_pack,
 *          lt_bf16w_get
 *
 * Packed layout (prepared once, at load): W is cut into blocks of 16 output rows; inside a block,
 * for each pair of input columns (2p, 2p+1), 16 rows x 2 columns = 32 bf16 = one 64-byte vector:
 *   Wp[((o/16) * P + i/2) * 32 + (o%16) * 2 + (i%2)] = bf16(W[o][i]),   P = ceil(in/2)
 * zero-padded to whole blocks and pairs. That is exactly the B panel of the CPU kernel (cpu/gemm_bf16.c) for the
 * forward (16 output columns per vector, pairs along the contraction). The backward contracts over o, so it re-packs a
 * cache-sized panel at a time (each 2x2 block (o,o+1)x(i,i+1) is 8 contiguous bytes of Wp: the re-pack is a 2x2
 * transpose per block) into a stack buffer; W is stored once (half the memory of f32).
 */
#ifndef LT_BF16_H
#define LT_BF16_H

#include <stddef.h>
#include <stdint.h>

#include "backend/hostdev.h"

/* fp32 -> bf16, round to nearest even; NaN stays a (quiet) NaN; subnormal inputs give a signed zero
 * (what vcvtne2ps2bf16 does, so both implementations round inputs identically). The CUDA kernels call
 * it on the device. */
static inline LT_HOST_DEVICE uint16_t lt_bf16_round(float f) {
    union {
        float f;
        uint32_t u;
    } v = {f};
    uint32_t u = v.u;
    if ((u & 0x7f800000u) == 0x7f800000u) /* inf or NaN */
        return (uint16_t)((u >> 16) | ((u & 0x007fffffu) ? 0x0040u : 0u));
    if ((u & 0x7f800000u) == 0) return (uint16_t)((u >> 16) & 0x8000u); /* zero or subnormal */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline LT_HOST_DEVICE float lt_bf16_to_f32(uint16_t h) {
    union {
        uint32_t u;
        float f;
    } v = {(uint32_t)h << 16};
    return v.f;
}

/* Pairs of input columns and blocks of 16 output rows of the layout. */
static inline int lt_bf16w_pairs(int n) { return (n + 1) / 2; }
static inline int lt_bf16w_blocks(int n) { return (n + 15) / 16; }

/* Elements (uint16_t) of the packed layout of W (out,in). */
size_t lt_bf16w_elems(int out, int in);
/* dst (lt_bf16w_elems) = packed bf16(W (out,in)), row-major f32 source. */
void lt_bf16w_pack(uint16_t *dst, const float *W, int out, int in);
/* Element (o,i) of a packed weight, as float. */
float lt_bf16w_get(const uint16_t *Wp, int out, int in, int o, int i);

#endif /* LT_BF16_H */

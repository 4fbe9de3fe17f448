/*
 * gemm_bf16.h - products with a frozen weight stored in bf16, fp32 accumulation (CPU).
 *
 * defines: the packed bf16 weight layout (lt_bf16w_*), bf16 rounding (lt_bf16_round), and the two
 * products of a linear layer with a frozen weight W (out,in):
 *   forward   y  (N,out)  = x  (N,in)  W^T
 *   backward  dx (N,in) (+)= dy (N,out) W
 * Inputs x / dy are rounded to bf16 (round to nearest even) while they are packed, products of two
 * bf16 values are exact in fp32, sums are fp32. Two implementations give results within the same
 * bound (see lt_gemm_bf16_forward): AVX512_BF16 (vdpbf16ps) and portable C (any CPU); which one runs
 * is the caller's kernel table (cpu_kernels.h: the CPU backend's ISA, LT_CPU_ISA_AVX512_BF16 or not).
 *
 * Packed layout (prepared once, at load): W is cut into blocks of 16 output rows; inside a block,
 * for each pair of input columns (2p, 2p+1), 16 rows x 2 columns = 32 bf16 = one 64-byte vector:
 *   Wp[((o/16) * P + i/2) * 32 + (o%16) * 2 + (i%2)] = bf16(W[o][i]),   P = ceil(in/2)
 * zero-padded to whole blocks and pairs. That is exactly the B panel vdpbf16ps wants for the forward
 * (16 output columns per vector, pairs along the contraction). The backward contracts over o, so it
 * re-packs a cache-sized panel at a time (each 2x2 block (o,o+1)x(i,i+1) is 8 contiguous bytes of
 * Wp: the re-pack is a 2x2 transpose per block) into a stack buffer; W is stored once (half the
 * memory of f32).
 */
#ifndef LT_GEMM_BF16_H
#define LT_GEMM_BF16_H

#include <stddef.h>
#include <stdint.h>

struct lt_cpu_kernels; /* cpu_kernels.h: the ISA's packer and micro-kernel */

/* fp32 -> bf16, round to nearest even; NaN stays a (quiet) NaN; subnormal inputs give a signed zero
 * (what vcvtne2ps2bf16 does, so both implementations round inputs identically). */
static inline uint16_t lt_bf16_round(float f) {
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

static inline float lt_bf16_to_f32(uint16_t h) {
    union {
        uint32_t u;
        float f;
    } v = {(uint32_t)h << 16};
    return v.f;
}

/* Elements (uint16_t) of the packed layout of W (out,in). */
size_t lt_bf16w_elems(int out, int in);
/* dst (lt_bf16w_elems) = packed bf16(W (out,in)), row-major f32 source. */
void lt_bf16w_pack(uint16_t *dst, const float *W, int out, int in);
/* Element (o,i) of a packed weight, as float. */
float lt_bf16w_get(const uint16_t *Wp, int out, int in, int o, int i);

/*
 * y (N,out) = bf16(x) (N,in) W^T, W packed. Threads: up to n_threads (OpenMP), split as the CPU
 * backend's gemm does; every output element is computed the same way whatever the thread count.
 * Error bound (rounding of the fp32 sums only; inputs are taken as rounded): for every element,
 * |y - exact| <= (K + 2) * 2^-24 * sum_k |x_k w_k|, K = in (any summation order of exact products).
 */
void lt_gemm_bf16_forward(const struct lt_cpu_kernels *k, int n_threads, float *y, const float *x, const uint16_t *Wp,
                          int N, int in, int out);
/* dx (N,in) = (accumulate ? dx : 0) + bf16(dy) (N,out) W; same bound with K = out. */
void lt_gemm_bf16_backward(const struct lt_cpu_kernels *k, int n_threads, float *dx, const float *dy,
                           const uint16_t *Wp, int N, int in, int out, int accumulate);

#endif /* LT_GEMM_BF16_H */

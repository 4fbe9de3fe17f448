/*
 * gemm_bf16.h - products with a frozen weight stored in bf16, fp32 accumulation (CPU).
 *
 * defines: the two products of a linear layer with a frozen weight W (out,in):
 *   forward   y  (N,out)  = x  (N,in)  W^T
 *   backward  dx (N,in) (+)= dy (N,out) W
 * Inputs x / dy are rounded to bf16 (round to nearest even) while they are packed, products of two
 * bf16 values are exact in fp32, sums are fp32. Two implementations give results within the same
 * bound (see lt_gemm_bf16_forward): AVX512_BF16 (vdpbf16ps) and portable C (any CPU); which one runs
 * is the caller's kernel table (cpu_kernels.h: the CPU backend's ISA, LT_CPU_ISA_AVX512_BF16 or not).
 *
 * The packed weight layout and bf16 rounding live below both backends: backend/bf16.h.
 */
#ifndef LT_GEMM_BF16_H
#define LT_GEMM_BF16_H

#include <stddef.h>
#include <stdint.h>

#include "backend/bf16.h"

struct lt_cpu_kernels; /* cpu_kernels.h: the ISA's packer and micro-kernel */

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

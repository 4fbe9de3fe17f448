/*
 * gemm_bf16.h - products with a frozen weight stored in bf16, fp32 accumulation (CPU).
 *
 * defines: the two products of a linear layer with a frozen weight W (out,in):
 *   forward   y  (N,out)  = x  (N,in)  W^T
 *   backward  dx (N,in) (+)= dy (N,out) W
 * Inputs x / dy are rounded to bf16 (round to nearest even) while they are packed, products of two
 * bf16 values are exact in fp32, sums are fp32. Two implementations give the same bits: AVX-512 FMAs on
 * the bf16 weight widened in registers (CPUs with AVX512_BF16) and portable C (any CPU); which one runs
 * is the caller's kernel table (cpu_kernels.h: the CPU backend's ISA, LT_CPU_ISA_AVX512_BF16 or not).
 *
 * The packed weight layout and bf16 rounding live below both backends: backend/bf16.h.
 */
#ifndef LT_GEMM_BF16_H
#define LT_GEMM_BF16_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h" /* lt_qdesc */
#include "backend/bf16.h"

struct lt_cpu_kernels; /* cpu_kernels.h: the ISA's packer and micro-kernel */

/* dst = W (out,in) in the packed layout of backend/bf16.h, the same bytes as lt_bf16w_pack (whole
 * blocks of 16 rows x 16 pairs through the ISA's transposer: AVX-512 registers on AVX512_BF16). */
void lt_bf16_pack(const struct lt_cpu_kernels *k, uint16_t *dst, const float *W, int out, int in);

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

/*
 * The same two products with a 4-bit quantized weight W (NF4 / FP4, + double quantization; q->rows =
 * out, q->cols = in): each value of W is bitsandbytes' dequantized fp32 value (code * absmax) rounded
 * to bf16 (lt_bf16_round), produced while the kernel's panels are packed; then as above (same bound).
 */
void lt_gemm_q4_forward(const struct lt_cpu_kernels *k, int n_threads, float *y, const float *x, const lt_qdesc *q,
                        int N, int in, int out);
void lt_gemm_q4_backward(const struct lt_cpu_kernels *k, int n_threads, float *dx, const float *dy, const lt_qdesc *q,
                         int N, int in, int out, int accumulate);

#endif /* LT_GEMM_BF16_H */

/*
 * gemm_bf16.h - products with a frozen weight stored in bf16, fp32 accumulation (CPU).
 *
 * defines: the two products of a linear layer with a frozen weight W (out,in):
 *   forward   y  (N,out)  = x  (N,in)  W^T
 *   backward  dx (N,in) (+)= dy (N,out) W
 * Inputs x / dy are rounded to bf16 (round to nearest even) while they are packed, products of two
 * bf16 values are exact in fp32, sums are fp32. Two implementations give results within the same
 * bound (see lt_gemm_bf16_forward): AVX512_BF16 (vdpbf16ps, chosen at run time when the CPU has it)
 * and portable C (any CPU).
 *
 * The packed weight layout and bf16 rounding live below both backends: backend/bf16.h.
 */
#ifndef LT_GEMM_BF16_H
#define LT_GEMM_BF16_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h" /* lt_qdesc */
#include "backend/bf16.h"

/* Which implementation runs: AUTO (AVX512_BF16 when the CPU has it, else portable); the others
 * force one (for tests and benchmarks). Forcing AVX512 on a CPU without it runs the portable one. */
enum { LT_BF16_AUTO = 0, LT_BF16_AVX512 = 1, LT_BF16_PORTABLE = 2 };

/* 1 if this CPU (and OS) can run the AVX512_BF16 kernels. */
int lt_bf16_avx512_available(void);

/* dst = W (out,in) in the packed layout of backend/bf16.h, the same bytes as lt_bf16w_pack (whole
 * blocks of 16 rows x 16 pairs transposed in AVX-512 registers). */
void lt_bf16_pack(int impl, uint16_t *dst, const float *W, int out, int in);

/*
 * y (N,out) = bf16(x) (N,in) W^T, W packed. Threads: up to n_threads (OpenMP), split as the CPU
 * backend's gemm does; every output element is computed the same way whatever the thread count.
 * Error bound (rounding of the fp32 sums only; inputs are taken as rounded): for every element,
 * |y - exact| <= (K + 2) * 2^-24 * sum_k |x_k w_k|, K = in (any summation order of exact products).
 */
void lt_gemm_bf16_forward(int impl, int n_threads, float *y, const float *x, const uint16_t *Wp, int N, int in,
                          int out);
/* dx (N,in) = (accumulate ? dx : 0) + bf16(dy) (N,out) W; same bound with K = out. */
void lt_gemm_bf16_backward(int impl, int n_threads, float *dx, const float *dy, const uint16_t *Wp, int N, int in,
                           int out, int accumulate);

/*
 * The same two products with a 4-bit quantized weight W (NF4 / FP4, + double quantization; q->rows =
 * out, q->cols = in): each value of W is bitsandbytes' dequantized fp32 value (code * absmax) rounded
 * to bf16 (lt_bf16_round), produced while the kernel's panels are packed; then as above (same bound).
 */
void lt_gemm_q4_forward(int impl, int n_threads, float *y, const float *x, const lt_qdesc *q, int N, int in, int out);
void lt_gemm_q4_backward(int impl, int n_threads, float *dx, const float *dy, const lt_qdesc *q, int N, int in, int out,
                         int accumulate);

#endif /* LT_GEMM_BF16_H */

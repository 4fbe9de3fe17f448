/*
 * isa_each.h - compiles a kernel file once per CPU instruction set, each copy inside that set's target
 * region. This is the only place that names the instruction sets' compiler targets (cpu_kernels.h
 * lists the sets; cpu/cpu_isa.c detects them and holds the tables).
 *
 * No include guard: a translation unit includes it once per kernel file, after
 *   #define LT_ISA_BODY "simd.h"        (the kernel file, as an include string)
 * and each copy of the kernel file sees
 *   LT_ISA        the name suffix of the copy: avx512bf16, avx512, avx2, generic
 *   LT_ISA_LEVEL  its lt_cpu_isa number (LT_ISA_GENERIC .. LT_ISA_AVX512_BF16, usable in #if)
 *   LT_W          floats per vector: 16, 16, 8, 4
 * A kernel file emits nothing for a set where it has no specific code; the tables then name another
 * set's copy (simd.h and opt8_simd.h are the same code at AVX512 and AVX512_BF16, compiled once, at
 * AVX512; gemm_bf16_simd.h has a portable copy and an AVX512_BF16 one).
 * Non-x86 builds compile the generic copy only.
 */
#ifndef LT_ISA_BODY
#error "define LT_ISA_BODY (the kernel file to compile per instruction set) before including isa_each.h"
#endif

#if defined(__x86_64__) || defined(__i386__)
#define LT_ISA avx512bf16
#define LT_ISA_LEVEL LT_ISA_AVX512_BF16
#define LT_W 16
#define LT_ISA_TARGET "avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"
#include "cpu/isa_one.h"

#define LT_ISA avx512
#define LT_ISA_LEVEL LT_ISA_AVX512
#define LT_W 16
#define LT_ISA_TARGET "avx2,fma,avx512f,avx512bw,avx512vl,avx512dq"
#include "cpu/isa_one.h"

#define LT_ISA avx2
#define LT_ISA_LEVEL LT_ISA_AVX2
#define LT_W 8
#define LT_ISA_TARGET "avx2,fma"
#include "cpu/isa_one.h"
#endif

#define LT_ISA generic
#define LT_ISA_LEVEL LT_ISA_GENERIC
#define LT_W 4
#include "cpu/isa_one.h" /* no LT_ISA_TARGET: the baseline target */

#undef LT_ISA_BODY

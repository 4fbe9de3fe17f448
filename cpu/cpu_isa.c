/*
 * cpu_isa.c - which instruction set the CPU backend runs: detection, the LT_CPU_ISA override, and
 * the kernel tables, one per ISA (cpu_kernels.h).
 *
 * defines: lt_cpu_kernels_get; compiles cpu/simd.h once per instruction set (cpu/isa_each.h). The other
 * ISA-specific kernels come compiled from their own files, through the same isa_each.h: the 8-bit
 * AdamW block from cpu_opt8.c (which needs -ffp-contract=off) and the bf16 GEMM micro-kernel from
 * gemm_bf16.c.
 */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LT_HAVE_X86 1
#endif
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "cpu/cpu_kernels.h"
#include "cpu/ref_ops.h"

/* ---- the kernels of cpu/simd.h, once per instruction set ------------------------------------------- */

#define LT_ISA_BODY "cpu/simd.h"
#include "cpu/isa_each.h"

/* ---- the kernels compiled in other files ------------------------------------------------------------ */

extern lt_opt8_blocks_fn lt_opt8_blocks_generic;
extern lt_bf16_pack_a_fn lt_bf16_pack_a_generic;
extern lt_bf16_kernel_fn lt_bf16_kernel_generic;
extern lt_bf16_pack_b_fn lt_bf16_repack_bwd_generic, lt_bf16_q4_pack_fwd_generic, lt_bf16_q4_pack_bwd_generic;
extern lt_bf16_pack_w16_fn lt_bf16_pack_w16_generic;
#ifdef LT_HAVE_X86
extern lt_opt8_blocks_fn lt_opt8_blocks_avx2, lt_opt8_blocks_avx512;
extern lt_bf16_pack_a_fn lt_bf16_pack_a_avx512bf16;
extern lt_bf16_kernel_fn lt_bf16_kernel_avx512bf16;
extern lt_bf16_pack_b_fn lt_bf16_repack_bwd_avx512bf16, lt_bf16_q4_pack_fwd_avx512bf16, lt_bf16_q4_pack_bwd_avx512bf16;
extern lt_bf16_pack_w16_fn lt_bf16_pack_w16_avx512bf16;
#endif

/* ---- the tables ------------------------------------------------------------------------------------ */

/* The table of ISA `name`: the simd.h and opt8_simd.h kernels compiled for `vec`, the bf16 GEMM
 * micro-kernel compiled for `bf16`. */
#define LT_KERNEL_TABLE(name, level_, vec, bf16)                                                                  \
    {                                                                                                             \
        .isa = #name, .level = level_, .axpy = k_axpy_##vec, .scale = k_scale_##vec, .sumsq = k_sumsq_##vec,      \
        .all_finite = k_all_finite_##vec, .rmsnorm_fwd = k_rmsnorm_fwd_##vec, .rmsnorm_bwd = k_rmsnorm_bwd_##vec, \
        .rmsnorm_dw = k_rmsnorm_dw_##vec, .rope = k_rope_##vec, .swiglu_fwd = k_swiglu_fwd_##vec,                 \
        .swiglu_bwd = k_swiglu_bwd_##vec, .ce_row = k_ce_row_##vec, .dropout = k_dropout_##vec,                   \
        .adamw = k_adamw_##vec, .att_fwd_tile = k_att_fwd_tile_##vec, .att_bwd_head = k_att_bwd_head_##vec,       \
        .att_decode_head = k_att_decode_head_##vec, .opt8_blocks = lt_opt8_blocks_##vec,                          \
        .bf16_pack_a = lt_bf16_pack_a_##bf16, .bf16_kernel = lt_bf16_kernel_##bf16,                               \
        .bf16_repack_bwd = lt_bf16_repack_bwd_##bf16, .bf16_q4_pack_fwd = lt_bf16_q4_pack_fwd_##bf16,             \
        .bf16_q4_pack_bwd = lt_bf16_q4_pack_bwd_##bf16, .bf16_pack_w16 = lt_bf16_pack_w16_##bf16                  \
    }

/* Indexed by lt_cpu_isa; an ISA this build does not compile has no entry (isa == NULL). */
static const lt_cpu_kernels tables[LT_ISA_COUNT] = {
    [LT_ISA_GENERIC] = LT_KERNEL_TABLE(generic, LT_CPU_ISA_GENERIC, generic, generic),
#ifdef LT_HAVE_X86
    [LT_ISA_AVX2] = LT_KERNEL_TABLE(avx2, LT_CPU_ISA_AVX2, avx2, generic),
    [LT_ISA_AVX512] = LT_KERNEL_TABLE(avx512, LT_CPU_ISA_AVX512, avx512, generic),
    [LT_ISA_AVX512_BF16] = LT_KERNEL_TABLE(avx512bf16, LT_CPU_ISA_AVX512_BF16, avx512, avx512bf16),
#endif
};

/* ---- detection ------------------------------------------------------------------------------------- */

/* 1 if this CPU (and OS: libgcc checks the saved register state) can run the kernels of isa. */
static int isa_supported(int isa) {
    if (isa == LT_ISA_GENERIC) return 1;
#ifdef LT_HAVE_X86
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                       __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    switch (isa) {
    case LT_ISA_AVX2: return avx2;
    case LT_ISA_AVX512: return avx512;
    case LT_ISA_AVX512_BF16: return avx512 && __builtin_cpu_supports("avx512bf16");
    }
#endif
    return 0;
}

static void set_err(char *err, size_t errlen, const char *fmt, const char *a) {
    if (err && errlen) snprintf(err, errlen, fmt, a);
}

const lt_cpu_kernels *lt_cpu_kernels_get(lt_cpu_isa isa, char *err, size_t errlen) {
    if (isa == LT_CPU_ISA_AUTO) {
        const char *env = getenv("LT_CPU_ISA");
        if (env && *env && strcmp(env, "auto") != 0) {
            for (int i = 1; i < LT_ISA_COUNT; i++)
                if (tables[i].isa && !strcmp(env, tables[i].isa)) {
                    if (isa_supported(i)) return &tables[i];
                    set_err(err, errlen,
                            "cpu backend: LT_CPU_ISA=%s, but this CPU does not support that instruction set", env);
                    return NULL;
                }
            set_err(err, errlen,
                    "cpu backend: LT_CPU_ISA=%s names no instruction set of this build "
                    "(generic, avx2, avx512, avx512bf16 on x86; auto)",
                    env);
            return NULL;
        }
        for (int i = LT_ISA_COUNT - 1; i >= 1; i--)
            if (tables[i].isa && isa_supported(i)) return &tables[i];
        return &tables[LT_ISA_GENERIC];
    }
    if ((int)isa < 1 || (int)isa >= LT_ISA_COUNT || !tables[isa].isa) {
        set_err(err, errlen, "%s", "cpu backend: that instruction set is not compiled into this build");
        return NULL;
    }
    if (!isa_supported((int)isa)) {
        set_err(err, errlen, "cpu backend: this CPU does not support the instruction set %s", tables[isa].isa);
        return NULL;
    }
    return &tables[isa];
}

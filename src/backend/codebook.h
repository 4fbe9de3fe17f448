/*
 * codebook.h - the code books of the quantized formats, shared by every backend and by the host
 * quantization (formats/quant.c): NF4 and FP4 (16 values, index = nibble) and bitsandbytes' signed
 * and unsigned 8-bit dynamic maps (double quantization, 8-bit AdamW states).
 * defines: lt_nf4_code, lt_fp4_code, lt_quant_code4, lt_quant_code8, lt_quant_code8u
 */
#ifndef LT_CODEBOOK_H
#define LT_CODEBOOK_H

#include "loratune.h"

/* NF4 (normal-float) and FP4 code books, index = nibble. FP4 is bitsandbytes' list / 12 in fp32 (its
 * "-0" at index 8 is a Python int: +0.0). The values are written once, as initializers, so that the CUDA
 * backend's __constant__ copies (cuda/quant.cu) are the same numbers. */
#define LT_NF4_CODE_INIT                                                                                    \
    {                                                                                                       \
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,    \
            -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f, \
            0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,          \
            0.7229568362236023f, 1.0f                                                                       \
    }
#define LT_FP4_CODE_INIT                                                                                               \
    {                                                                                                                  \
        0.0f / 12.0f, 0.0625f / 12.0f, 8.0f / 12.0f, 12.0f / 12.0f, 4.0f / 12.0f, 6.0f / 12.0f, 2.0f / 12.0f,          \
            3.0f / 12.0f, 0.0f / 12.0f, -0.0625f / 12.0f, -8.0f / 12.0f, -12.0f / 12.0f, -4.0f / 12.0f, -6.0f / 12.0f, \
            -2.0f / 12.0f, -3.0f / 12.0f                                                                               \
    }
static const float lt_nf4_code[16] = LT_NF4_CODE_INIT;
static const float lt_fp4_code[16] = LT_FP4_CODE_INIT;

/* The 16-entry code book of a 4-bit format (NULL for others). */
const float *lt_quant_code4(lt_quant_format f);
/* The signed 8-bit dynamic map (bitsandbytes create_dynamic_map(signed=True)), 256 sorted values. */
const float *lt_quant_code8(void);
/* The unsigned 8-bit dynamic map (create_dynamic_map(signed=False)), 256 sorted values in [0, 1]. */
const float *lt_quant_code8u(void);

#endif /* LT_CODEBOOK_H */

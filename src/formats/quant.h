/*
 * quant.h - blockwise quantization in the bitsandbytes layouts (internal).
 *
 * The algorithms are bitsandbytes' CPU path (0.50), step for step in fp32, so that our bytes equal
 * theirs for the same input (tests/python/make_quant_goldens.py checks it against bitsandbytes):
 *  4-bit (NF4/FP4), per block of `blocksize` elements of the flattened tensor:
 *    absmax = max |x|; full blocks scale by x * (1 / max(absmax, 1e-38)), the partial last block by
 *    x / max(absmax, 1e-38) (and stores the clamped absmax); clamp to [-1, 1]; the code is the number
 *    of midpoints of the sorted code book strictly below the value (torch.bucketize), mapped back to
 *    the code's index (FP4 is not sorted); an odd count is padded with one 0.0 value; element 2j goes
 *    into the high nibble of byte j.
 *  Double quantization: offset = mean(absmax); absmax - offset quantized blockwise (256) with the
 *    signed 8-bit dynamic map: absmax2 = max |a|, v = a * (1 / absmax2), code = the nearest map entry (ties to
 *    the lower one; code 0 for an all-zero block, where v = 0 * inf).
 *  INT8: absmax per block; q = round_half_even(x * (127 / absmax)), 0 for an all-zero block.
 */
#ifndef LT_QUANT_H
#define LT_QUANT_H

#include "backend/backend.h"
#include "backend/codebook.h"
#include "core/core.h"

#define LT_QMAX_DIMS 8
#define LT_NESTED_BLOCK 256

struct lt_qtensor {
    lt_error err;
    lt_quant_format format;
    int blocksize, double_quant;
    int ndim;
    int64_t shape[LT_QMAX_DIMS];
    int64_t numel, n_blocks, n_blocks2;
    uint8_t *data;    /* 4-bit: ceil(numel/2) bytes; int8: numel                 */
    float *absmax;    /* (n_blocks), when !double_quant                         */
    uint8_t *qabsmax; /* (n_blocks), double quantization                        */
    float *absmax2;   /* (n_blocks2), double quantization                       */
    float offset;
};

const char *lt_quant_format_name(lt_quant_format f);                   /* "nf4", "fp4", "int8", "none" */
int lt_quant_format_from_name(const char *name, lt_quant_format *out); /* 0 ok, -1 unknown */

/* Validate format / blocksize; fills err. */
lt_status lt_quant_check_params(const lt_quant_params *p, lt_error *err);

/*
 * Quantize n values into a new host tensor of shape (shape, ndim). If forced_offset != NULL it is used
 * as the double-quantization offset instead of our mean (tests pin bitsandbytes' torch mean with it).
 */
lt_status lt_qtensor_quantize_ex(const float *x, const int64_t *shape, int ndim, const lt_quant_params *p,
                                 const float *forced_offset, lt_qtensor **out, lt_error *err);

/*
 * The same a part at a time (a checkpoint streamed through a small buffer): quantize elements
 * [i0, i0 + n) of q (allocated by lt_qtensor_alloc) from x (n values). i0 is a multiple of the blocksize,
 * and n too unless the part ends the tensor. absmax receives the f32 absmax of the part's blocks at
 * [i0 / blocksize, ...): q->absmax without double quantization (int8: always q->absmax), else a
 * caller's array of q->n_blocks floats, which lt_qtensor_quantize_finish then double-quantizes once
 * every part is in (it overwrites it). The bytes equal lt_qtensor_quantize_ex's for the whole tensor.
 * finite 1: the caller has checked x (the loader, as it converted it): not read a second time, serially;
 * 0: a NaN or Inf gives LT_ERR_NUMERIC naming the element.
 */
lt_status lt_qtensor_quantize_part(lt_qtensor *q, const float *x, int64_t i0, int64_t n, int finite, float *absmax,
                                   lt_error *err);
void lt_qtensor_quantize_finish(lt_qtensor *q, float *absmax, const float *forced_offset);

/* *q = the shape, format and block counts of a tensor, with no parts (all NULL): the caller points
 * them at memory of its own (the streamed loader quantizes straight into the model's allocation) and
 * never passes q to lt_qtensor_free. */
lt_status lt_qtensor_layout(lt_qtensor *q, const int64_t *shape, int ndim, lt_quant_format f, int blocksize,
                            int double_quant, lt_error *err);

/* Allocate an empty tensor (parts zeroed) to be filled by a reader. */
lt_status lt_qtensor_alloc(const int64_t *shape, int ndim, lt_quant_format f, int blocksize, int double_quant,
                           lt_qtensor **out, lt_error *err);

/* Bytes of each part. */
size_t lt_qtensor_data_bytes(const lt_qtensor *q);
int64_t lt_qtensor_bytes(const lt_qtensor *q);

/* A host descriptor of q viewed as (rows, cols) = (shape[0], numel/shape[0]). */
lt_qdesc lt_qtensor_desc(const lt_qtensor *q);

/* Dequantize elements [i0, i1) of a host descriptor (any block alignment) into out (i1-i0 floats). */
void lt_qdesc_dequantize_range(const lt_qdesc *q, float *out, int64_t i0, int64_t i1);

#endif /* LT_QUANT_H */

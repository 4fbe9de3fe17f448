/*
 * quant.cu - dequantization of a row range of a blockwise-quantized weight (backend.h lt_qdesc).
 *
 * One thread per element in a grid-stride loop. Every product and sum is rounded on its own
 * (__fmul_rn / __fadd_rn: no fused multiply-add) so the values equal bitsandbytes' and the CPU's bit
 * for bit. Compiled in CI; not yet run on a GPU.
 */
#include "backend/codebook.h"
#include "cuda/cuda_common.cuh"

/* the code books of backend/codebook.h, in constant memory */
__constant__ float nf4_code_dev[16] = LT_NF4_CODE_INIT;
__constant__ float fp4_code_dev[16] = LT_FP4_CODE_INIT;

/* out (n) = elements i0 .. i0+n-1 of the quantized tensor */
__global__ void dequantize_kernel(float *out, lt_qdesc q, int64_t i0, int64_t n) {
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n; k += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = i0 + k, b = i / q.blocksize;
        float am;
        if (q.absmax) am = q.absmax[b];
        else am = __fadd_rn(__fmul_rn(q.code8[q.qabsmax[b]], q.absmax2[b / 256]), q.offset);
        float v;
        if (q.format == LT_QF_INT8) {
            v = __fmul_rn(__fmul_rn((float)(int8_t)q.data[i], am), LT_INT8_INV127);
        } else {
            const uint8_t byte = q.data[i >> 1];
            const int nib = (i & 1) ? (byte & 15) : (byte >> 4);
            v = __fmul_rn(q.format == LT_QF_NF4 ? nf4_code_dev[nib] : fp4_code_dev[nib], am);
        }
        out[k] = v;
    }
}

extern "C" void lt_cuda_dequantize_rows(lt_backend *be, float *out, const lt_qdesc *q, int64_t r0, int64_t r1) {
    lt_cuda_enter(be);
    const int64_t n = (r1 - r0) * q->cols;
    if (n <= 0) return;
    dequantize_kernel<<<lt_grid_1d((size_t)n, 256), 256, 0, lt_cuda(be)->stream>>>(out, *q, r0 * q->cols, n);
    lt_cuda_check(be, "dequantize_rows");
}

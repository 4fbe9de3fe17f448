/*
 * cuda_bf16.h of the CUDA emulation (tests/cuda_emu). The backend rounds to bf16 with its own
 * lt_bf16_round (backend/bf16.h) on the host and the device alike, and stores the bits as uint16_t;
 * nothing of the real header is used, so this one is empty.
 */
#ifndef LT_CUDA_EMU_BF16_H
#define LT_CUDA_EMU_BF16_H
#endif

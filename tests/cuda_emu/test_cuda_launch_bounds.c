/*
 * test_cuda_launch_bounds.c - the launch configurations the CUDA backend computes at the bench-8b
 * shapes (Llama-3-8B: hidden 4096, intermediate 14336, 32 heads, 8 kv heads, head_dim 128, vocab
 * 128256; T = 4096 and 8192; LoRA r 16), checked against the grid, block and shared-memory limits of
 * the emulated H100 (sm_90), A100 (sm_80) and 99 KiB (sm_86/89) devices, on the host: the emulation's
 * dry run (cuda_emu_control.h) records every launch and cuBLAS call and rejects one outside the
 * device's limits, without running a kernel. The device pointers are never dereferenced.
 * Also: the attention backward at head_dim 128 takes the tiled kernels on H100 and A100 and the
 * row-wise ones on the 99 KiB part (docs/CUDA.md, "Launch configurations at bench-8b shapes").
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "cuda/cuda_backend.h"
#include "cuda_emu_control.h"

static int failures;

#define FAKE(T, i) ((T *)(uintptr_t)(((uintptr_t)(i) + 1) << 32)) /* distinct, never read */

static void run_shapes(lt_backend *be, int T) {
    const lt_backend_ops *o = be->ops;
    const int H = 4096, I = 14336, NH = 32, NKV = 8, HD = 128, V = 128256, r = 16, chunk = 32;
    const float sc = 0.08838834764f;
    float *a = FAKE(float, 1), *b = FAKE(float, 2), *c = FAKE(float, 3), *d = FAKE(float, 4), *e = FAKE(float, 5);
    float *f = FAKE(float, 6), *g = FAKE(float, 7), *h = FAKE(float, 8), *s = FAKE(float, 9), *w = FAKE(float, 10);
    int32_t *ids = FAKE(int32_t, 11);
    o->embedding_forward(be, a, ids, w, T, H);
    o->embedding_backward(be, w, ids, a, T, H);
    o->rmsnorm_forward(be, a, b, c, w, T, H, 1e-5f);
    o->rmsnorm_backward(be, a, w, b, c, w, d, T, H);
    o->rope_forward(be, a, ids, w, T, NH, HD, HD);
    o->rope_backward(be, a, ids, w, T, NKV, HD, HD);
    o->attention_forward(be, a, b, c, d, e, ids, 1, T, NH, NKV, HD, sc);
    o->attention_backward(be, a, b, c, d, e, f, g, h, s, ids, 1, T, NH, NKV, HD, sc, w);
    o->attention_decode(be, a, b, c, d, ids, ids, 1, T, NH, NKV, HD, sc);
    o->attention_softcap_decode(be, a, b, c, d, ids, ids, 1, T, NH, NKV, HD, sc, 50.0f);
    o->scatter_rows(be, c, ids, a, 1, NKV * HD); /* the new token's keys into the cache */
    o->embedding_forward_bf16(be, a, ids, w, T, H);
    /* QLoRA in bf16: down_proj (in I, out H) through a tile of 256 rows */
    const lt_qdesc q = {LT_QF_NF4, 64, H, I, FAKE(uint8_t, 12), NULL, FAKE(uint8_t, 13), f, g, 0.0f};
    o->gemm_q4_forward(be, a, b, &q, T, I, H, s, 256);
    o->gemm_q4_backward(be, a, b, &q, T, I, H, 0, s, 256);
    o->gemm_bf16_forward(be, a, b, w, T, H, I); /* gate / up */
    o->gemm_bf16_forward(be, a, b, w, T, I, H); /* down */
    o->gemm_bf16_backward(be, a, b, w, T, I, H, 1);
    o->gemm(be, 0, 1, T, r, I, 1.0f, a, I, b, I, 0.0f, c, r); /* LoRA A of down_proj */
    o->gemm(be, 1, 0, r, I, T, 1.0f, a, r, b, I, 0.0f, c, I); /* its gradient */
    o->swiglu_forward(be, a, b, c, (size_t)T * I);
    o->swiglu_backward(be, a, b, c, d, e, (size_t)T * I);
    o->cross_entropy(be, a, b, ids, chunk, V, 1.0f);
    o->cross_entropy(be, a, b, ids, T, V, 1.0f);
    o->adamw_step(be, a, b, c, d, (size_t)7 * 32 * r * (H + I), 1e-4f, 0.9f, 0.999f, 1e-8f, 1.0f, 0.0f);
    /* full fine-tuning's largest tensor: the 525M-element embedding */
    o->adamw8bit_step(be, a, b, c, d, e, f, (size_t)V * H, g, h, 0.9f, 0.999f, 1e-8f, -1e-4f, 0.0f);
    o->axpy(be, (size_t)V * H, 1.0f, a, b);
}

int main(void) {
    const int devices[3] = {0, 1, 2}, Ts[2] = {4096, 8192};
    for (int di = 0; di < 3; di++) {
        const lt_cuda_emu_device *dev = lt_cuda_emu_device_info(devices[di]);
        char env[8], err[256] = "";
        snprintf(env, sizeof env, "%d", devices[di]);
        setenv("LT_CUDA_DEVICE", env, 1);
        lt_backend *be = NULL;
        lt_status st = lt_cuda_backend_create(1, &be, err, sizeof err);
        if (st != LT_OK) {
            fprintf(stderr, "%s: the backend cannot be created: %s\n", dev->name, err);
            return EXIT_FAILURE;
        }
        for (int ti = 0; ti < 2; ti++) {
            lt_cuda_emu_log_clear();
            lt_cuda_emu_set_dry_run(1);
            run_shapes(be, Ts[ti]);
            lt_cuda_emu_set_dry_run(0);
            st = be->ops->sync(be);
            size_t n = lt_cuda_emu_log_count(), smem_max = 0;
            int rowwise = 0, tiled_bwd = 0;
            for (size_t i = 0; i < n; i++) {
                const lt_cuda_emu_launch *l = lt_cuda_emu_log_get(i);
                if (!l->ok) {
                    fprintf(stderr, "%s T=%d: %s rejected: %s\n", dev->name, Ts[ti], l->name, l->error);
                    failures++;
                }
                if (l->smem > smem_max) smem_max = l->smem;
                if (strstr(l->name, "att_bwd") && strstr(l->name, "rowwise")) rowwise = 1;
                if (strstr(l->name, "att_bwd_kv_kernel")) tiled_bwd = 1;
                if (getenv("LT_TEST_VERBOSE"))
                    printf("  %-28s grid (%u,%u,%u) block (%u,%u,%u) smem %zu\n", l->name, l->grid[0], l->grid[1],
                           l->grid[2], l->block[0], l->block[1], l->block[2], l->smem);
            }
            if (st != LT_OK) {
                fprintf(stderr, "%s T=%d: sync reported %d: %s\n", dev->name, Ts[ti], (int)st,
                        be->ops->error_message(be));
                failures++;
            }
            if (n < 20) {
                fprintf(stderr, "%s T=%d: only %zu launches recorded\n", dev->name, Ts[ti], n);
                failures++;
            }
            /* head_dim 128: tiled on H100 / A100 (113 KiB kv kernel), row-wise on the 99 KiB part */
            const int want_tiled = dev->smem_optin >= 114 * 1024;
            if (want_tiled ? (!tiled_bwd || rowwise) : (tiled_bwd || !rowwise)) {
                fprintf(stderr, "%s T=%d: the attention backward took the %s kernels\n", dev->name, Ts[ti],
                        tiled_bwd ? "tiled" : "row-wise");
                failures++;
            }
            printf("%s T=%d: %zu launches within the limits, the most dynamic shared memory %.1f KiB, attention "
                   "backward %s\n",
                   dev->name, Ts[ti], n, smem_max / 1024.0, tiled_bwd ? "tiled" : "row-wise");
        }
        be->ops->destroy(be);
    }
    unsetenv("LT_CUDA_DEVICE");
    return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}

/*
 * cuda_emu_control.h - what a test may ask of the CUDA emulation (tests/cuda_emu) beyond the CUDA API:
 * which emulated device is which, launches that are only checked (dry run), the record of the
 * launches, a fault injected into a device. C; defined in emu_runtime.cpp. Only the test programs
 * linked with the emulated backend (the *_cuda_emu targets of tests/CMakeLists.txt) may use it.
 *
 * The emulated devices (cudaGetDeviceCount gives LT_CUDA_EMU_DEVICES; LT_CUDA_DEVICE picks one for
 * the backend, as on real hardware):
 *   0  "H100 (sm_90)": 227 KiB opt-in shared memory, 132 SMs, memory pools;
 *   1  "A100 (sm_80)": 163 KiB, 108 SMs, memory pools;
 *   2  "99 KiB part (sm_86/sm_89)": 99 KiB, 84 SMs, memory pools (the attention backward with
 *      head_dim 65-128 does not fit its tiled kernels: row-wise);
 *   3  "48 KiB opt-in, no memory pools": no tiled attention kernel fits (every attention op takes the
 *      row-wise kernels), and alloc / free take the cudaMalloc / cudaFree path.
 */
#ifndef LT_CUDA_EMU_CONTROL_H
#define LT_CUDA_EMU_CONTROL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LT_CUDA_EMU_DEVICES 4

typedef struct lt_cuda_emu_device {
    const char *name;
    int cc_major, cc_minor;
    int sm_count;
    size_t smem_optin;    /* bytes of dynamic + static shared memory a block may opt in to */
    size_t smem_default;  /* without cudaFuncSetAttribute (48 KiB) */
    int max_threads;      /* per block */
    unsigned max_grid[3]; /* grid limits */
    int pools;            /* cudaDevAttrMemoryPoolsSupported */
    size_t memory;        /* device memory (bytes): larger allocations fail */
} lt_cuda_emu_device;

const lt_cuda_emu_device *lt_cuda_emu_device_info(int device);

/* The calling thread's current device (cudaSetDevice / cudaGetDevice for a test that does not include
 * the CUDA headers). */
int lt_cuda_emu_set_device(int device);
int lt_cuda_emu_get_device(void);

/* Dry run, for the calling thread: launches and cuBLAS calls are checked against the device's limits
 * and recorded, but not executed; copies and memsets do nothing. */
void lt_cuda_emu_set_dry_run(int on);

/* The record of the calling thread's launches (kernels and cuBLAS calls) since lt_cuda_emu_log_clear. */
typedef struct lt_cuda_emu_launch {
    char name[64]; /* the kernel as written (att_fwd_kernel<128>), or cublasSgemm / cublasGemmEx */
    int device;
    unsigned grid[3], block[3];
    size_t smem;      /* dynamic shared memory; cuBLAS: 0 */
    long long mnk[3]; /* cuBLAS: m, n, k */
    int ok;           /* 0: the launch was rejected (its error is in `error`) */
    char error[160];
} lt_cuda_emu_launch;
void lt_cuda_emu_log_clear(void);
size_t lt_cuda_emu_log_count(void);
const lt_cuda_emu_launch *lt_cuda_emu_log_get(size_t i);

/* A fault in device `device`, as an illegal address inside a kernel gives: every later call that
 * touches the device returns cudaErrorIllegalAddress. lt_cuda_emu_reset_device clears it (tests only:
 * on a GPU only a new process recovers). */
void lt_cuda_emu_inject_fault(int device);
void lt_cuda_emu_reset_device(int device);

/* Bytes allocated on a device now, and the most since the process started. */
size_t lt_cuda_emu_bytes_in_use(int device);

#ifdef __cplusplus
}
#endif

#endif /* LT_CUDA_EMU_CONTROL_H */

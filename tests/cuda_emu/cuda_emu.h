/*
 * cuda_emu.h - what a CUDA source of cuda/ needs to compile as C++ and run on the CPU (tests/cuda_emu).
 * The build includes it first in every file cuda_emu.py produced from a .cu file of cuda/; the sources themselves
 * are not changed.
 *
 * The execution model (emu_runtime.cpp): a launch runs at once on the calling host thread, block after
 * block; the threads of a block are fibers (each its own stack) switched cooperatively at every
 * barrier, so __syncthreads, __syncwarp and the shuffles have their real meaning, exactly:
 *   - __syncthreads / __syncthreads_or: every thread of the block that has not exited arrives;
 *   - a warp operation (__syncwarp, __shfl_*_sync): every lane of its mask arrives at the same kind
 *     of operation; a lane that has exited, is missing (a partial warp) or waits at a block barrier
 *     instead is a fault of the kernel (on a GPU: undefined, usually a hang), reported, not hidden;
 *   - __shared__ variables are one allocation per block and declaration, dynamic shared memory one
 *     per block of exactly the launch's size, both filled with NaN bytes (0xff) before the block runs,
 *     so that a read before a write shows;
 *   - threadIdx, blockIdx, blockDim, gridDim are the running fiber's.
 * Arithmetic is the host's, with -ffp-contract=off (no fused multiply-add): __fmul_rn and friends are
 * plain operations; libm gives expf, logf, tanhf, sincosf (not the GPU's, whose ulps differ).
 */
#ifndef LT_CUDA_EMU_H
#define LT_CUDA_EMU_H

#ifndef __cplusplus
#error "cuda_emu.h is for the C++ translation of the .cu files of cuda/"
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <tuple>
#include <type_traits>
#include <utility>

#include "include/cuda_runtime.h"

/* ---- keywords ---------------------------------------------------------------------------------- */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __constant__
#define __launch_bounds__(...)

/* ---- the running thread's coordinates ------------------------------------------------------------ */
struct lt_emu_ids {
    uint3 tid, bid;  /* threadIdx, blockIdx */
    dim3 bdim, gdim; /* blockDim, gridDim */
};
extern __thread const lt_emu_ids *lt_emu_cur; /* the fiber running on this host thread */
#define threadIdx (lt_emu_cur->tid)
#define blockIdx (lt_emu_cur->bid)
#define blockDim (lt_emu_cur->bdim)
#define gridDim (lt_emu_cur->gdim)
#define warpSize 32

/* ---- barriers and warp operations (emu_runtime.cpp) ---------------------------------------------- */
enum { LT_EMU_SHFL_XOR = 1, LT_EMU_SHFL_DOWN, LT_EMU_SHFL_UP, LT_EMU_SHFL_IDX };
void lt_emu_block_barrier(int is_or, int *pred);
void lt_emu_warp_sync(unsigned mask);
uint64_t lt_emu_shfl(int kind, unsigned mask, uint64_t bits, int arg, int width);

static inline void __syncthreads(void) { lt_emu_block_barrier(0, nullptr); }
static inline int __syncthreads_or(int p) {
    lt_emu_block_barrier(1, &p);
    return p;
}
static inline void __syncwarp(unsigned mask = 0xffffffffu) { lt_emu_warp_sync(mask); }

template <typename T>
static inline T lt_emu_shfl_t(int kind, unsigned mask, T v, int arg, int width) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a register value");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    bits = lt_emu_shfl(kind, mask, bits, arg, width);
    T r;
    memcpy(&r, &bits, sizeof r);
    return r;
}
template <typename T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return lt_emu_shfl_t(LT_EMU_SHFL_XOR, mask, v, lane_mask, width);
}
template <typename T>
static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return lt_emu_shfl_t(LT_EMU_SHFL_DOWN, mask, v, (int)delta, width);
}
template <typename T>
static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return lt_emu_shfl_t(LT_EMU_SHFL_UP, mask, v, (int)delta, width);
}
template <typename T>
static inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    return lt_emu_shfl_t(LT_EMU_SHFL_IDX, mask, v, src_lane, width);
}

/* ---- shared memory (cuda_emu.py rewrites the declarations into these) ---------------------------- */
void *lt_emu_shared_alloc(const void *key, size_t bytes);
void *lt_emu_dynamic_shared_ptr(void);
template <typename T>
static inline T &lt_emu_shared(const void *key) {
    return *static_cast<T *>(lt_emu_shared_alloc(key, sizeof(T)));
}
template <typename T>
static inline T *lt_emu_dynamic_shared(void) {
    return static_cast<T *>(lt_emu_dynamic_shared_ptr());
}

/* ---- atomics (blocks may run on several host threads: real atomics) ------------------------------ */
static inline int atomicMin(int *a, int v) {
    int old = __atomic_load_n(a, __ATOMIC_RELAXED);
    while (v < old && !__atomic_compare_exchange_n(a, &old, v, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    return old;
}
static inline int atomicMax(int *a, int v) {
    int old = __atomic_load_n(a, __ATOMIC_RELAXED);
    while (v > old && !__atomic_compare_exchange_n(a, &old, v, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    return old;
}
static inline int atomicAdd(int *a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
static inline unsigned atomicAdd(unsigned *a, unsigned v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
static inline int atomicExch(int *a, int v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }
static inline int atomicCAS(int *a, int cmp, int v) {
    __atomic_compare_exchange_n(a, &cmp, v, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return cmp;
}

/* ---- arithmetic intrinsics: IEEE operations rounded one at a time (no contraction in this build) -- */
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline float __frcp_rn(float a) { return 1.0f / a; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }
static inline float __saturatef(float a) { return a < 0.0f ? 0.0f : a > 1.0f ? 1.0f : a; }

/* CUDA's integer min / max overloads */
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
static inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
static inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
static inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
static inline long min(long a, long b) { return a < b ? a : b; }
static inline long max(long a, long b) { return a > b ? a : b; }

/* ---- launches (cuda_emu.py rewrites k<<<g, b, smem, stream>>>(args) into lt_emu_launch) ----------- */
/* Runs fn(ctx) once per thread of the grid on the calling host thread (or only checks and records the
 * configuration: lt_cuda_emu_set_dry_run); errors go where a failed launch's go (cudaGetLastError,
 * or the device's sticky error for a fault inside the kernel). */
void lt_emu_run(const char *name, const void *kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                void (*fn)(void *), void *ctx);

/* The arguments are converted to the kernel's parameter types once, at the launch, as CUDA does; each
 * thread then calls the kernel with copies of them. */
template <typename... P, typename... A>
static inline void lt_emu_launch(const char *name, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem,
                                 cudaStream_t stream, A &&...args) {
    static_assert(sizeof...(P) == sizeof...(A), "a kernel launched with the wrong number of arguments");
    struct ctx_t {
        void (*kernel)(P...);
        std::tuple<std::decay_t<P>...> params;
    } ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    lt_emu_run(
        name, (const void *)kernel, grid, block, smem, stream,
        [](void *p) {
            ctx_t *c = static_cast<ctx_t *>(p);
            std::apply(c->kernel, c->params);
        },
        &ctx);
}

#endif /* LT_CUDA_EMU_H */

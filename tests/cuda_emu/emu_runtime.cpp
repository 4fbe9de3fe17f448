/*
 * emu_runtime.cpp - the CPU side of the CUDA emulation (tests/cuda_emu): the runtime API of
 * cuda_runtime.h, the cuBLAS calls of cublas_v2.h, the block scheduler that runs the kernels of
 * the .cu files of cuda/ (translated by cuda_emu.py, compiled with cuda_emu.h first), and the test controls of
 * cuda_emu_control.h. Test code: built only into the *_cuda_emu test programs, never into the library.
 *
 * A block's threads are fibers on stacks of their own; a thread runs until it reaches a barrier or a
 * warp operation, or exits. The scheduler runs one warp's lanes until every lane waits or is done,
 * resolves a warp operation when every lane of its mask waits at it, and so on for each warp; when
 * every live thread of the block waits at __syncthreads, the barrier opens. Anything else (a lane
 * that exited or waits at a block barrier while the others of its mask wait at a shuffle, two kinds
 * of operation at once) is a fault of the kernel: reported on stderr and turned into the device's
 * sticky cudaErrorLaunchFailure, as a kernel fault is on a GPU.
 *
 * The switch between fibers is a few instructions of assembly (x86-64; elsewhere ucontext, slower),
 * told to AddressSanitizer through its fiber interface, so that the kernels run under ASan with
 * their real stacks.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_emu.h"
#include "cuda_emu_control.h"
#include "include/cublas_v2.h"

#if defined(__SANITIZE_ADDRESS__)
#define LT_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LT_EMU_ASAN 1
#endif
#endif
#ifdef LT_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

/* ================================================================================================ */
/* devices                                                                                          */
/* ================================================================================================ */

static const lt_cuda_emu_device devices[LT_CUDA_EMU_DEVICES] = {
    {"H100 (sm_90)", 9, 0, 132, 232448, 49152, 1024, {2147483647u, 65535u, 65535u}, 1, (size_t)80 << 30},
    {"A100 (sm_80)", 8, 0, 108, 166912, 49152, 1024, {2147483647u, 65535u, 65535u}, 1, (size_t)80 << 30},
    {"99 KiB part (sm_86/sm_89)", 8, 9, 84, 101376, 49152, 1024, {2147483647u, 65535u, 65535u}, 1, (size_t)24 << 30},
    {"48 KiB opt-in, no memory pools",
     6,
     1,
     28,
     49152,
     49152,
     1024,
     {2147483647u, 65535u, 65535u},
     0,
     (size_t)16 << 30},
};

struct device_state {
    std::atomic<int> sticky{cudaSuccess};   /* a fault: every later call fails with it */
    std::atomic<size_t> in_use{0}, peak{0}; /* bytes allocated */
};
static device_state dstate[LT_CUDA_EMU_DEVICES];

static std::mutex func_mu; /* cudaFuncSetAttribute: (device, kernel) -> largest dynamic shared memory */
static std::map<std::pair<int, const void *>, int> func_smem;

static __thread int cur_device;         /* cudaSetDevice, per host thread */
static __thread cudaError_t last_error; /* cudaGetLastError, per host thread */
static __thread int dry_run;            /* lt_cuda_emu_set_dry_run */
static __thread std::vector<lt_cuda_emu_launch> *launch_log;
__thread const lt_emu_ids *lt_emu_cur;

static cudaError_t set_error(cudaError_t e) {
    if (e != cudaSuccess) last_error = e;
    return e;
}
static cudaError_t sticky_of(int dev) { return (cudaError_t)dstate[dev].sticky.load(); }
static void fault(int dev, cudaError_t e, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fault(int dev, cudaError_t e, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "cuda-emu: device %d: %s -> %s (sticky)\n", dev, msg, cudaGetErrorName(e));
    int expected = cudaSuccess;
    dstate[dev].sticky.compare_exchange_strong(expected, (int)e);
    set_error(sticky_of(dev));
}

/* ================================================================================================ */
/* errors                                                                                           */
/* ================================================================================================ */

extern "C" const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    }
    return "cudaErrorUnknown";
}

/* the real runtime's texts */
extern "C" const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotSupported: return "operation not supported";
    }
    return "unknown error";
}

/* A sticky error stays: every call reports it again (as after a fault on a GPU). */
extern "C" cudaError_t cudaGetLastError(void) {
    cudaError_t e = last_error;
    last_error = sticky_of(cur_device);
    return e != cudaSuccess ? e : sticky_of(cur_device);
}
extern "C" cudaError_t cudaPeekAtLastError(void) {
    return last_error != cudaSuccess ? last_error : sticky_of(cur_device);
}

/* ================================================================================================ */
/* devices, attributes                                                                              */
/* ================================================================================================ */

extern "C" cudaError_t cudaGetDeviceCount(int *count) {
    *count = LT_CUDA_EMU_DEVICES;
    return cudaSuccess;
}
extern "C" cudaError_t cudaGetDevice(int *device) {
    *device = cur_device;
    return cudaSuccess;
}
extern "C" cudaError_t cudaSetDevice(int device) {
    if (device < 0 || device >= LT_CUDA_EMU_DEVICES) return set_error(cudaErrorInvalidDevice);
    cur_device = device;
    return cudaSuccess;
}
extern "C" cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device) {
    if (device < 0 || device >= LT_CUDA_EMU_DEVICES) return set_error(cudaErrorInvalidDevice);
    const lt_cuda_emu_device *d = &devices[device];
    switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = d->max_threads; break;
    case cudaDevAttrMaxGridDimX: *value = (int)d->max_grid[0]; break;
    case cudaDevAttrMaxGridDimY: *value = (int)d->max_grid[1]; break;
    case cudaDevAttrMaxGridDimZ: *value = (int)d->max_grid[2]; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = (int)d->smem_default; break;
    case cudaDevAttrMultiProcessorCount: *value = d->sm_count; break;
    case cudaDevAttrComputeCapabilityMajor: *value = d->cc_major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = d->cc_minor; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = (int)d->smem_optin; break;
    case cudaDevAttrMemoryPoolsSupported: *value = d->pools; break;
    default: return set_error(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}
extern "C" cudaError_t cudaDeviceSynchronize(void) { return set_error(sticky_of(cur_device)); }
extern "C" cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    const size_t total = devices[cur_device].memory, used = dstate[cur_device].in_use.load();
    *free_bytes = used < total ? total - used : 0;
    *total_bytes = total;
    return set_error(sticky_of(cur_device));
}

extern "C" cudaError_t lt_emu_func_set_attribute(const void *func, enum cudaFuncAttribute attr, int value) {
    if (cudaError_t s = sticky_of(cur_device)) return set_error(s);
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
        (size_t)value > devices[cur_device].smem_optin)
        return set_error(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> g(func_mu);
    func_smem[{cur_device, func}] = value;
    return cudaSuccess;
}

/* ================================================================================================ */
/* memory                                                                                           */
/* ================================================================================================ */

struct allocation {
    size_t size;
    int device;
};
static std::mutex mem_mu;
static std::map<uintptr_t, allocation> allocations;

/* the allocation holding [p, p + n), or NULL */
static const allocation *find_range(const void *p, size_t n, uintptr_t *base = nullptr) {
    const uintptr_t a = (uintptr_t)p;
    auto it = allocations.upper_bound(a);
    if (it == allocations.begin()) return nullptr;
    --it;
    if (a < it->first || a - it->first > it->second.size || n > it->second.size - (a - it->first)) return nullptr;
    if (base) *base = it->first;
    return &it->second;
}
static bool is_device_range(const void *p, size_t n) {
    std::lock_guard<std::mutex> g(mem_mu);
    return find_range(p, n) != nullptr;
}
static bool is_device_pointer(const void *p) { return is_device_range(p, 1); }

static cudaError_t device_alloc(void **ptr, size_t size, int dev) {
    *ptr = nullptr;
    if (cudaError_t s = sticky_of(dev)) return set_error(s);
    device_state &d = dstate[dev];
    if (size > devices[dev].memory - d.in_use.load()) return set_error(cudaErrorMemoryAllocation);
    const size_t n = size ? (size + 255) & ~(size_t)255 : 256;
    void *p = aligned_alloc(256, n);
    if (!p) return set_error(cudaErrorMemoryAllocation);
    memset(p, 0xff, n); /* device memory starts as garbage: NaN bytes, so that a read before a write shows */
    {
        std::lock_guard<std::mutex> g(mem_mu);
        allocations[(uintptr_t)p] = {size, dev};
    }
    size_t now = d.in_use += size, peak = d.peak.load();
    while (now > peak && !d.peak.compare_exchange_weak(peak, now)) {}
    *ptr = p;
    return cudaSuccess;
}

static cudaError_t device_free(void *ptr) {
    if (!ptr) return cudaSuccess;
    allocation a;
    {
        std::lock_guard<std::mutex> g(mem_mu);
        auto it = allocations.find((uintptr_t)ptr);
        if (it == allocations.end()) return set_error(cudaErrorInvalidValue);
        a = it->second;
        allocations.erase(it);
    }
    dstate[a.device].in_use -= a.size;
    free(ptr);
    return cudaSuccess;
}

struct lt_emu_stream {
    int device;
};
struct lt_emu_mempool {
    int device;
    bool owned; /* made by cudaMemPoolCreate */
    unsigned long long release_threshold;
};
static lt_emu_mempool default_pools[LT_CUDA_EMU_DEVICES] = {{0, false, 0}, {1, false, 0}, {2, false, 0}, {3, false, 0}};

/* the device of a stream (the legacy default stream: the current device) */
static int stream_device(cudaStream_t s) { return s ? s->device : cur_device; }

extern "C" cudaError_t cudaMalloc(void **ptr, size_t size) { return device_alloc(ptr, size, cur_device); }
extern "C" cudaError_t cudaFree(void *ptr) {
    if (cudaError_t s = sticky_of(cur_device)) return set_error(s);
    return device_free(ptr);
}
extern "C" cudaError_t cudaMallocAsync(void **ptr, size_t size, cudaStream_t stream) {
    const int dev = stream_device(stream);
    if (!devices[dev].pools) return set_error(cudaErrorNotSupported);
    return device_alloc(ptr, size, dev);
}
extern "C" cudaError_t cudaFreeAsync(void *ptr, cudaStream_t stream) {
    const int dev = stream_device(stream);
    if (!devices[dev].pools) return set_error(cudaErrorNotSupported);
    if (cudaError_t s = sticky_of(dev)) return set_error(s);
    return device_free(ptr);
}
extern "C" cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t *pool, int device) {
    if (device < 0 || device >= LT_CUDA_EMU_DEVICES) return set_error(cudaErrorInvalidDevice);
    if (!devices[device].pools) return set_error(cudaErrorNotSupported);
    *pool = &default_pools[device];
    return cudaSuccess;
}
extern "C" cudaError_t cudaMemPoolCreate(cudaMemPool_t *pool, const struct cudaMemPoolProps *p) {
    const int dev = p->location.id;
    if (p->allocType != cudaMemAllocationTypePinned || p->location.type != cudaMemLocationTypeDevice || dev < 0 ||
        dev >= LT_CUDA_EMU_DEVICES)
        return set_error(cudaErrorInvalidValue);
    if (!devices[dev].pools) return set_error(cudaErrorNotSupported);
    if (cudaError_t s = sticky_of(dev)) return set_error(s);
    *pool = new lt_emu_mempool{dev, true, 0};
    return cudaSuccess;
}
extern "C" cudaError_t cudaMemPoolDestroy(cudaMemPool_t pool) {
    if (!pool || !pool->owned) return set_error(cudaErrorInvalidValue);
    delete pool;
    return cudaSuccess;
}
extern "C" cudaError_t cudaMallocFromPoolAsync(void **ptr, size_t size, cudaMemPool_t pool, cudaStream_t stream) {
    if (!pool) return set_error(cudaErrorInvalidValue);
    (void)stream;
    return device_alloc(ptr, size, pool->device);
}
extern "C" cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, enum cudaMemPoolAttr attr, void *value) {
    if (!pool || attr != cudaMemPoolAttrReleaseThreshold) return set_error(cudaErrorInvalidValue);
    pool->release_threshold = *(unsigned long long *)value;
    return cudaSuccess;
}
extern "C" cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, enum cudaMemPoolAttr attr, void *value) {
    if (!pool || attr != cudaMemPoolAttrReleaseThreshold) return set_error(cudaErrorInvalidValue);
    *(unsigned long long *)value = pool->release_threshold;
    return cudaSuccess;
}

/* Copies run at once, in call order (every op of the backend is on one stream or waits for it). A
 * range that is not inside one allocation of the side the kind names, or overlapping ranges (undefined
 * for cudaMemcpy), is an error: on a GPU it would be garbage or a fault. */
extern "C" cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind,
                                       cudaStream_t stream) {
    const int dev = stream_device(stream);
    if (cudaError_t s = sticky_of(dev)) return set_error(s);
    if (!n || dry_run) return cudaSuccess;
    const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    if (kind == cudaMemcpyHostToHost || kind == cudaMemcpyDefault || is_device_range(src, n) != src_dev ||
        is_device_range(dst, n) != dst_dev) {
        fprintf(stderr,
                "cuda-emu: cudaMemcpy (kind %d) of %zu bytes %p -> %p: the source must be %s memory, the "
                "destination %s memory (each inside one allocation)\n",
                (int)kind, n, src, dst, src_dev ? "device" : "host", dst_dev ? "device" : "host");
        return set_error(cudaErrorInvalidValue);
    }
    const char *s = (const char *)src;
    char *d = (char *)dst;
    if (s < d + n && d < s + n) {
        fprintf(stderr, "cuda-emu: cudaMemcpy of overlapping ranges (%p -> %p, %zu bytes) is undefined\n", src, dst, n);
        return set_error(cudaErrorInvalidValue);
    }
    memcpy(dst, src, n);
    return cudaSuccess;
}
extern "C" cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind) {
    return cudaMemcpyAsync(dst, src, n, kind, nullptr);
}
extern "C" cudaError_t cudaMemsetAsync(void *dst, int value, size_t n, cudaStream_t stream) {
    const int dev = stream_device(stream);
    if (cudaError_t s = sticky_of(dev)) return set_error(s);
    if (!n || dry_run) return cudaSuccess;
    if (!is_device_range(dst, n)) {
        fprintf(stderr, "cuda-emu: cudaMemset of %zu bytes at %p: not inside one device allocation\n", n, dst);
        return set_error(cudaErrorInvalidValue);
    }
    memset(dst, value, n);
    return cudaSuccess;
}
extern "C" cudaError_t cudaMemset2DAsync(void *dst, size_t pitch, int value, size_t width, size_t height,
                                         cudaStream_t stream) {
    if (width > pitch && height > 1) return set_error(cudaErrorInvalidValue);
    for (size_t r = 0; r < height; r++)
        if (cudaError_t e = cudaMemsetAsync((char *)dst + r * pitch, value, width, stream)) return e;
    return cudaSuccess;
}
extern "C" cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *at, const void *p) {
    memset(at, 0, sizeof *at);
    std::lock_guard<std::mutex> g(mem_mu);
    uintptr_t base;
    const allocation *a = find_range(p, 1, &base);
    if (a) {
        at->type = cudaMemoryTypeDevice;
        at->device = a->device;
        at->devicePointer = (void *)p;
    } else {
        at->type = cudaMemoryTypeUnregistered; /* plain host memory (CUDA 11 and later: not an error) */
        at->device = -2;
        at->hostPointer = (void *)p;
    }
    return cudaSuccess;
}

extern "C" cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags) {
    if (cudaError_t s = sticky_of(cur_device)) return set_error(s);
    (void)flags;
    *stream = new lt_emu_stream{cur_device};
    return cudaSuccess;
}
extern "C" cudaError_t cudaStreamCreate(cudaStream_t *stream) { return cudaStreamCreateWithFlags(stream, 0); }
extern "C" cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    return set_error(sticky_of(stream_device(stream)));
}
extern "C" cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    delete stream;
    return cudaSuccess;
}

/* ================================================================================================ */
/* fibers                                                                                           */
/* ================================================================================================ */

#if defined(__x86_64__)
/* lt_emu_swap(&save_sp, load_sp): save the callee-saved registers, the SSE and x87 control words and
 * the stack pointer of the running context in *save_sp; continue the one whose stack pointer is
 * load_sp. A new fiber's stack is made to look like a suspended one whose return address is
 * lt_emu_trampoline, which calls r13(r12). */
extern "C" void lt_emu_swap(void **save_sp, void *load_sp);
extern "C" void lt_emu_trampoline(void);
asm(R"(
    .text
    .p2align 4
    .globl lt_emu_swap
    .hidden lt_emu_swap
    .type lt_emu_swap,@function
lt_emu_swap:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size lt_emu_swap,.-lt_emu_swap

    .p2align 4
    .globl lt_emu_trampoline
    .hidden lt_emu_trampoline
    .type lt_emu_trampoline,@function
lt_emu_trampoline:
    movq %r12, %rdi
    andq $-16, %rsp
    callq *%r13
    ud2
    .size lt_emu_trampoline,.-lt_emu_trampoline
)");
#endif

struct emu_block;

/* a fiber's stack, with a guard page below it */
struct fiber_stack {
    char *lo;
    size_t size;
};

/* one emulated CUDA thread */
struct emu_thread {
    lt_emu_ids ids;
    enum { NOT_STARTED, READY, WAIT_BLOCK, WAIT_WARP, DONE } state;
    int linear, lane, warp;
    /* what it waits at */
    int bar_or, pred;   /* block barrier: __syncthreads_or and its predicate */
    int op, arg, width; /* warp operation: LT_EMU_SHFL_* or 0 for __syncwarp */
    unsigned mask;
    uint64_t in, out; /* shuffle value in, result out */
    /* the fiber it runs on while it is started and not done */
    fiber_stack stack;
#if defined(__x86_64__)
    void *sp;
#else
    ucontext_t uc;
#endif
    emu_block *block;
};

/* the block being run by this host thread */
struct shared_var {
    const void *key;
    void *ptr;
};
struct emu_block {
    emu_thread *th;
    int n, next; /* threads, and the first that has not started */
    uint3 bid;
    dim3 bdim, gdim;
    void (*fn)(void *);
    void *ctx;
    void *dyn;
    size_t dyn_size, static_size, smem_limit;
    std::vector<shared_var> shared;
    bool fault;
    char msg[256];
    emu_thread *faulty;
};

/* per host thread: the scheduler's context and the fiber stacks not in use */
struct worker {
#if defined(__x86_64__)
    void *sched_sp = nullptr;
#else
    ucontext_t sched_uc;
#endif
    const void *sched_bottom = nullptr;
    size_t sched_size = 0;
    std::vector<emu_thread> th;
    std::vector<fiber_stack> free_stacks, all_stacks;
    emu_block *block = nullptr;
    emu_thread *cur = nullptr;
    fiber_stack ended{nullptr, 0}; /* the stack of the fiber that has just ended */
    ~worker() {
        for (auto &f : all_stacks) munmap(f.lo - page(), f.size + page());
    }
    static size_t page() { return (size_t)sysconf(_SC_PAGESIZE); }
    fiber_stack get_stack();
};
static thread_local std::unique_ptr<worker> tw;

#ifdef LT_EMU_ASAN
static const size_t FIBER_STACK = 256 << 10; /* AddressSanitizer's frames are larger */
#else
static const size_t FIBER_STACK = 64 << 10;
#endif

fiber_stack worker::get_stack() {
    if (!free_stacks.empty()) {
        fiber_stack f = free_stacks.back();
        free_stacks.pop_back();
        return f;
    }
    const size_t pg = page();
    char *m = (char *)mmap(nullptr, FIBER_STACK + pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        fprintf(stderr, "cuda-emu: cannot map a fiber stack: %s\n", strerror(errno));
        abort();
    }
    mprotect(m, pg, PROT_NONE);
    fiber_stack f{m + pg, FIBER_STACK};
    all_stacks.push_back(f);
    return f;
}

static void fiber_main(emu_thread *t);

/* thread i of block b: its coordinates, before it starts */
static void thread_setup(emu_block *b, emu_thread *t, int i) {
    const dim3 bl = b->bdim;
    t->ids.tid = {(unsigned)(i % bl.x), (unsigned)(i / bl.x % bl.y), (unsigned)(i / (bl.x * bl.y))};
    t->ids.bid = b->bid;
    t->ids.bdim = bl;
    t->ids.gdim = b->gdim;
    t->linear = i;
    t->lane = i % 32;
    t->warp = i / 32;
    t->block = b;
}

static void fiber_init(emu_thread *t) {
#if defined(__x86_64__)
    void **sp = (void **)(((uintptr_t)(t->stack.lo + t->stack.size)) & ~(uintptr_t)15);
    *--sp = nullptr;
    *--sp = (void *)lt_emu_trampoline;                        /* ret */
    *--sp = nullptr;                                          /* rbp */
    *--sp = nullptr;                                          /* rbx */
    *--sp = (void *)t;                                        /* r12: the argument */
    *--sp = (void *)fiber_main;                               /* r13: the entry */
    *--sp = nullptr;                                          /* r14 */
    *--sp = nullptr;                                          /* r15 */
    *--sp = (void *)(uintptr_t)(0x1f80u | (0x037full << 32)); /* mxcsr, x87 control word */
    t->sp = sp;
#else
    getcontext(&t->uc);
    t->uc.uc_stack.ss_sp = t->stack.lo;
    t->uc.uc_stack.ss_size = t->stack.size;
    t->uc.uc_link = nullptr;
    makecontext(&t->uc, (void (*)(void))fiber_main, 1, t);
#endif
}

/* scheduler -> thread t (started, or given a fiber now), until it waits or its fiber ends */
static void resume(worker *w, emu_thread *t) {
    if (t->state == emu_thread::NOT_STARTED) {
        t->stack = w->get_stack();
        fiber_init(t);
    }
    t->state = emu_thread::READY;
    w->cur = t;
    lt_emu_cur = &t->ids;
#ifdef LT_EMU_ASAN
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, t->stack.lo, t->stack.size);
#endif
#if defined(__x86_64__)
    lt_emu_swap(&w->sched_sp, t->sp);
#else
    swapcontext(&w->sched_uc, &t->uc);
#endif
#ifdef LT_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    w->cur = nullptr;
    lt_emu_cur = nullptr;
    if (w->ended.lo) { /* the fiber ended: its stack is free again */
        w->free_stacks.push_back(w->ended);
        w->ended = {nullptr, 0};
    }
}

/* thread t -> the scheduler; returns when the scheduler resumes t */
static void suspend(worker *w, emu_thread *t) {
#ifdef LT_EMU_ASAN
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, w->sched_bottom, w->sched_size);
#endif
#if defined(__x86_64__)
    lt_emu_swap(&t->sp, w->sched_sp);
#else
    swapcontext(&t->uc, &w->sched_uc);
#endif
#ifdef LT_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

/* The fiber of thread t ends: back to the scheduler for good. Its stack will carry another fiber, so
 * nothing may stay poisoned in AddressSanitizer's shadow: the kernels' frames returned (and cleaned up
 * after themselves), the two still open (fiber_main's, this one's) have no address-taken locals, and
 * what is left around them is cleared. */
__attribute__((noinline)) static void finish(worker *w, emu_thread *t) {
    w->ended = t->stack;
#ifdef LT_EMU_ASAN
    char *low = (char *)__builtin_frame_address(0) - 512;
    if (low < t->stack.lo) low = t->stack.lo;
    __asan_unpoison_memory_region(low, (size_t)(t->stack.lo + t->stack.size - low));
    __sanitizer_start_switch_fiber(nullptr, w->sched_bottom, w->sched_size);
#endif
#if defined(__x86_64__)
    lt_emu_swap(&t->sp, w->sched_sp);
#else
    swapcontext(&t->uc, &w->sched_uc);
#endif
}

/* A fiber runs its thread; when the thread ends without waiting, the same fiber goes on with the
 * block's next thread that has not started (no switch: a block of a kernel without barriers runs on
 * one fiber, thread after thread), until a thread waits or every thread has started. */
static void fiber_main(emu_thread *t) {
    worker *w = tw.get();
#ifdef LT_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &w->sched_bottom, &w->sched_size);
#endif
    emu_block *b = t->block;
    for (;;) {
        b->fn(b->ctx);
        t->state = emu_thread::DONE;
        if (b->next >= b->n || b->fault) break;
        emu_thread *u = &b->th[b->next];
        thread_setup(b, u, b->next++);
        u->stack = t->stack;
        u->state = emu_thread::READY;
        t = u;
        w->cur = t;
        lt_emu_cur = &t->ids;
    }
    finish(w, t);
    abort(); /* never resumed */
}

static emu_thread *self(void) {
    worker *w = tw.get();
    if (!w || !w->cur) {
        fprintf(stderr, "cuda-emu: a device function was called outside a kernel\n");
        abort();
    }
    return w->cur;
}

/* a fault found by the running thread itself: its block stops */
static void thread_fault(emu_thread *t, const char *what) {
    emu_block *b = t->block;
    if (!b->fault) {
        b->fault = true;
        b->faulty = t;
        snprintf(b->msg, sizeof b->msg, "%s", what);
    }
    suspend(tw.get(), t); /* (left READY: its fiber is abandoned with the block) */
    abort();
}

/* ================================================================================================ */
/* barriers, warp operations, shared memory (called from the kernels through cuda_emu.h)            */
/* ================================================================================================ */

void lt_emu_block_barrier(int is_or, int *pred) {
    emu_thread *t = self();
    t->state = emu_thread::WAIT_BLOCK;
    t->bar_or = is_or;
    t->pred = pred ? *pred : 0;
    suspend(tw.get(), t);
    if (pred) *pred = t->pred;
}

void lt_emu_warp_sync(unsigned mask) {
    emu_thread *t = self();
    t->state = emu_thread::WAIT_WARP;
    t->op = 0;
    t->mask = mask;
    t->arg = 0;
    t->width = 32;
    suspend(tw.get(), t);
}

uint64_t lt_emu_shfl(int kind, unsigned mask, uint64_t bits, int arg, int width) {
    emu_thread *t = self();
    t->state = emu_thread::WAIT_WARP;
    t->op = kind;
    t->mask = mask;
    t->arg = arg;
    t->width = width;
    t->in = bits;
    suspend(tw.get(), t);
    return t->out;
}

void *lt_emu_shared_alloc(const void *key, size_t bytes) {
    emu_thread *t = self();
    emu_block *b = t->block;
    for (const shared_var &v : b->shared)
        if (v.key == key) return v.ptr;
    b->static_size += bytes;
    if (b->dyn_size + b->static_size > b->smem_limit) {
        char m[160];
        snprintf(m, sizeof m, "static (%zu B) + dynamic (%zu B) shared memory exceed the %zu B a block may have",
                 b->static_size, b->dyn_size, b->smem_limit);
        thread_fault(t, m);
    }
    void *p = malloc(bytes ? bytes : 1);
    if (!p) abort();
    memset(p, 0xff, bytes); /* uninitialised shared memory: NaN bytes */
    b->shared.push_back({key, p});
    return p;
}

void *lt_emu_dynamic_shared_ptr(void) { return self()->block->dyn; }

/* ---- the scheduler of one block ------------------------------------------------------------------ */

static const char *op_name(int op) {
    switch (op) {
    case 0: return "__syncwarp";
    case LT_EMU_SHFL_XOR: return "__shfl_xor_sync";
    case LT_EMU_SHFL_DOWN: return "__shfl_down_sync";
    case LT_EMU_SHFL_UP: return "__shfl_up_sync";
    case LT_EMU_SHFL_IDX: return "__shfl_sync";
    }
    return "?";
}

/* The lanes [l0, l1) of a warp all wait or are done, some at a warp operation: complete it, or say why
 * it cannot be (returns false with b->msg set). */
static bool resolve_warp(emu_block *b, emu_thread *th, int l0, int l1) {
    emu_thread *first = nullptr;
    for (int i = l0; i < l1; i++)
        if (th[i].state == emu_thread::WAIT_WARP) {
            first = &th[i];
            break;
        }
    const unsigned mask = first->mask;
    for (int lane = 0; lane < 32; lane++) {
        if (!(mask >> lane & 1u)) continue;
        const int i = l0 + lane;
        const char *why = nullptr;
        if (i >= l1) why = "is not a thread of the block (a partial warp)";
        else if (th[i].state == emu_thread::DONE) why = "has exited";
        else if (th[i].state == emu_thread::WAIT_BLOCK) why = "waits at __syncthreads";
        else if (th[i].op != first->op || th[i].mask != mask) why = "waits at another warp operation";
        if (why) {
            snprintf(b->msg, sizeof b->msg, "%s (mask 0x%08x) in warp %d: lane %d %s", op_name(first->op), mask,
                     first->warp, lane, why);
            b->faulty = first;
            return false;
        }
    }
    for (int i = l0; i < l1; i++) { /* a waiting lane outside the mask of the first */
        if (th[i].state == emu_thread::WAIT_WARP && !(mask >> th[i].lane & 1u)) {
            snprintf(b->msg, sizeof b->msg, "warp %d: lanes wait at warp operations with different masks", first->warp);
            b->faulty = &th[i];
            return false;
        }
    }
    for (int lane = 0; lane < 32; lane++) {
        if (!(mask >> lane & 1u)) continue;
        emu_thread *t = &th[l0 + lane];
        if (first->op) {
            const int w = t->width, base = lane - lane % w;
            int src;
            switch (t->op) {
            case LT_EMU_SHFL_XOR: src = base + ((lane % w) ^ t->arg); break;
            case LT_EMU_SHFL_DOWN: src = lane % w + t->arg < w ? lane + t->arg : lane; break;
            case LT_EMU_SHFL_UP: src = lane % w - t->arg >= 0 ? lane - t->arg : lane; break;
            default: src = base + t->arg % w; break;
            }
            if (src < 0 || src >= 32 || !(mask >> src & 1u)) {
                snprintf(b->msg, sizeof b->msg, "%s in warp %d: lane %d reads lane %d, outside the mask 0x%08x",
                         op_name(t->op), t->warp, lane, src, mask);
                b->faulty = t;
                return false;
            }
            t->out = th[l0 + src].in;
        }
    }
    for (int lane = 0; lane < 32; lane++)
        if (mask >> lane & 1u) th[l0 + lane].state = emu_thread::READY;
    return true;
}

/* Runs every thread of block b to its end; false (b->msg set) on a fault of the kernel. First every
 * thread is started (a fiber goes on to the next thread when one ends); then, warp by warp, the
 * waiting lanes are resumed as their warp operations complete, and the block barrier opens when every
 * live thread waits at it. */
static bool run_block(worker *w, emu_block *b) {
    emu_thread *th = b->th;
    const int n = b->n, nwarps = (n + 31) / 32;
    while (b->next < n) {
        emu_thread *t = &th[b->next];
        thread_setup(b, t, b->next++);
        resume(w, t);
        if (b->fault) return false;
    }
    for (;;) {
        for (int wp = 0; wp < nwarps; wp++) {
            const int l0 = wp * 32, l1 = l0 + 32 < n ? l0 + 32 : n;
            for (;;) {
                bool warp_wait = false;
                for (int i = l0; i < l1; i++) {
                    if (th[i].state == emu_thread::READY) resume(w, &th[i]);
                    if (b->fault) return false;
                    warp_wait |= th[i].state == emu_thread::WAIT_WARP;
                }
                if (!warp_wait) break;
                if (!resolve_warp(b, th, l0, l1)) return false;
            }
        }
        /* every thread waits at the block barrier or is done */
        int live = 0, any = 0, kinds = 0;
        for (int i = 0; i < n; i++)
            if (th[i].state == emu_thread::WAIT_BLOCK) {
                live++;
                any |= th[i].pred != 0;
                kinds |= 1 << th[i].bar_or;
            }
        if (!live) return true;
        if (kinds == 3) {
            snprintf(b->msg, sizeof b->msg, "threads wait at __syncthreads and __syncthreads_or at once");
            return false;
        }
        for (int i = 0; i < n; i++)
            if (th[i].state == emu_thread::WAIT_BLOCK) {
                th[i].pred = any;
                th[i].state = emu_thread::READY;
            }
    }
}

/* ================================================================================================ */
/* launches                                                                                         */
/* ================================================================================================ */

static void log_launch(const char *name, int dev, dim3 g, dim3 bl, size_t smem, const long long *mnk, int ok,
                       const char *err) {
    if (!launch_log) return;
    lt_cuda_emu_launch r;
    memset(&r, 0, sizeof r);
    snprintf(r.name, sizeof r.name, "%s", name);
    r.device = dev;
    r.grid[0] = g.x, r.grid[1] = g.y, r.grid[2] = g.z;
    r.block[0] = bl.x, r.block[1] = bl.y, r.block[2] = bl.z;
    r.smem = smem;
    if (mnk) r.mnk[0] = mnk[0], r.mnk[1] = mnk[1], r.mnk[2] = mnk[2];
    r.ok = ok;
    snprintf(r.error, sizeof r.error, "%s", err ? err : "");
    launch_log->push_back(r);
}

static int max_dynamic_smem(int dev, const void *kernel) {
    std::lock_guard<std::mutex> g(func_mu);
    auto it = func_smem.find({dev, kernel});
    return it == func_smem.end() ? (int)devices[dev].smem_default : it->second;
}

void lt_emu_run(const char *name, const void *kernel, dim3 g, dim3 bl, size_t smem, cudaStream_t stream,
                void (*fn)(void *), void *ctx) {
    const int dev = cur_device;
    char why[160] = "";
    cudaError_t e = cudaSuccess;
    const lt_cuda_emu_device *d = &devices[dev];
    const unsigned long long nthreads = (unsigned long long)bl.x * bl.y * bl.z;
    if (stream && stream->device != dev) {
        e = cudaErrorInvalidResourceHandle;
        snprintf(why, sizeof why, "the stream belongs to device %d, the calling thread's current device is %d",
                 stream->device, dev);
    } else if ((e = sticky_of(dev)) != cudaSuccess) {
        snprintf(why, sizeof why, "the device has faulted earlier");
    } else if (!g.x || !g.y || !g.z || g.x > d->max_grid[0] || g.y > d->max_grid[1] || g.z > d->max_grid[2] || !bl.x ||
               !bl.y || !bl.z || bl.x > 1024 || bl.y > 1024 || bl.z > 64 ||
               nthreads > (unsigned long long)d->max_threads) {
        e = cudaErrorInvalidConfiguration;
        snprintf(why, sizeof why, "grid (%u,%u,%u) block (%u,%u,%u) outside the device's limits", g.x, g.y, g.z, bl.x,
                 bl.y, bl.z);
    } else if (smem > (size_t)max_dynamic_smem(dev, kernel) || smem > d->smem_optin) {
        e = cudaErrorInvalidValue;
        snprintf(why, sizeof why, "%zu B of dynamic shared memory: above %s (%d B)", smem,
                 smem > d->smem_optin ? "the device's opt-in limit" : "the kernel's limit (cudaFuncSetAttribute)",
                 smem > d->smem_optin ? (int)d->smem_optin : max_dynamic_smem(dev, kernel));
    }
    log_launch(name, dev, g, bl, smem, nullptr, e == cudaSuccess, why);
    if (e != cudaSuccess) {
        if (e != sticky_of(dev)) fprintf(stderr, "cuda-emu: launch of %s rejected: %s\n", name, why);
        set_error(e);
        return;
    }
    if (dry_run) return;

    if (!tw) tw.reset(new worker());
    worker *w = tw.get();
    if (w->block) {
        fprintf(stderr, "cuda-emu: %s launched from inside a kernel\n", name);
        abort();
    }
    const int n = (int)nthreads;
    if ((int)w->th.size() < n) w->th.resize(n);
    emu_block b;
    b.th = w->th.data();
    b.n = n;
    b.bdim = bl;
    b.gdim = g;
    b.fn = fn;
    b.ctx = ctx;
    b.dyn_size = smem;
    /* static + dynamic shared memory: 48 KiB, or the opt-in limit once the kernel was allowed more */
    b.smem_limit = (size_t)max_dynamic_smem(dev, kernel) > d->smem_default ? d->smem_optin : d->smem_default;
    w->block = &b;
    for (unsigned bz = 0; bz < g.z; bz++)
        for (unsigned by = 0; by < g.y; by++)
            for (unsigned bx = 0; bx < g.x; bx++) {
                b.bid = {bx, by, bz};
                b.dyn = nullptr;
                if (smem) { /* exactly the launch's size, NaN bytes: ASan sees a read past it or before a write */
                    b.dyn = malloc(smem);
                    if (!b.dyn) abort();
                    memset(b.dyn, 0xff, smem);
                }
                b.static_size = 0;
                b.shared.clear();
                b.fault = false;
                b.faulty = nullptr;
                b.next = 0;
                for (int i = 0; i < n; i++) b.th[i].state = emu_thread::NOT_STARTED;
                const bool ok = run_block(w, &b);
                for (shared_var &v : b.shared) free(v.ptr);
                free(b.dyn);
                if (!ok) {
                    for (int i = 0; i < n; i++) { /* abandoned fibers: their stacks are free again, clean */
                        emu_thread *t = &b.th[i];
                        if (t->state == emu_thread::NOT_STARTED || t->state == emu_thread::DONE) continue;
#ifdef LT_EMU_ASAN
                        __asan_unpoison_memory_region(t->stack.lo, t->stack.size);
#endif
                        w->free_stacks.push_back(t->stack);
                    }
                    w->block = nullptr;
                    const emu_thread *t = b.faulty;
                    fault(dev, cudaErrorLaunchFailure, "kernel %s, block (%u,%u,%u)%s%s: %s", name, bx, by, bz,
                          t ? ", thread " : "", t ? std::to_string(t->linear).c_str() : "", b.msg);
                    return;
                }
            }
    w->block = nullptr;
}

/* ================================================================================================ */
/* cuBLAS                                                                                           */
/* ================================================================================================ */

struct lt_emu_cublas {
    int device;
    cudaStream_t stream;
};

extern "C" cublasStatus_t cublasCreate(cublasHandle_t *h) {
    if (sticky_of(cur_device)) return CUBLAS_STATUS_NOT_INITIALIZED;
    *h = new lt_emu_cublas{cur_device, nullptr};
    return CUBLAS_STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasDestroy(cublasHandle_t h) {
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}
extern "C" cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m) {
    return h && (m == CUBLAS_DEFAULT_MATH || m == CUBLAS_TF32_TENSOR_OP_MATH) ? CUBLAS_STATUS_SUCCESS
                                                                              : CUBLAS_STATUS_INVALID_VALUE;
}
extern "C" cublasStatus_t cublasSetPointerMode(cublasHandle_t h, cublasPointerMode_t m) {
    return h && m == CUBLAS_POINTER_MODE_HOST ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
}
extern "C" const char *cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

static float load_elem(const void *p, cudaDataType t, size_t i) {
    if (t == CUDA_R_32F) return ((const float *)p)[i];
    uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16; /* bf16 */
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* C (m,n) = alpha op(A) op(B) + beta C, column-major, as cuBLAS defines it (beta == 0: C is not read).
 * Every check cuBLAS documents; then every operand range must lie in one device allocation (a GPU
 * would read or write beyond the tensor). Sums in fp32, k ascending. */
static cublasStatus_t gemm(const char *fname, cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, float alpha, const void *A, cudaDataType at, int lda, const void *B,
                           cudaDataType bt, int ldb, float beta, float *C, int ldc) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    const int dev = cur_device;
    const long long mnk[3] = {m, n, k};
    char why[160] = "";
    cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
    const int rows_a = ta == CUBLAS_OP_N ? m : k, cols_a = ta == CUBLAS_OP_N ? k : m;
    const int rows_b = tb == CUBLAS_OP_N ? k : n, cols_b = tb == CUBLAS_OP_N ? n : k;
    const size_t ea = at == CUDA_R_32F ? 4 : 2, eb = bt == CUDA_R_32F ? 4 : 2;
    if (h->device != dev || stream_device(h->stream) != dev) {
        st = CUBLAS_STATUS_EXECUTION_FAILED;
        set_error(cudaErrorInvalidResourceHandle);
        snprintf(why, sizeof why, "handle of device %d, stream of device %d, called with device %d current", h->device,
                 stream_device(h->stream), dev);
    } else if (sticky_of(dev)) {
        st = CUBLAS_STATUS_EXECUTION_FAILED;
        snprintf(why, sizeof why, "the device has faulted earlier");
    } else if (m < 0 || n < 0 || k < 0 || lda < (rows_a > 1 ? rows_a : 1) || ldb < (rows_b > 1 ? rows_b : 1) ||
               ldc < (m > 1 ? m : 1) || (ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) ||
               (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T)) {
        st = CUBLAS_STATUS_INVALID_VALUE;
        snprintf(why, sizeof why, "m %d n %d k %d lda %d ldb %d ldc %d", m, n, k, lda, ldb, ldc);
    } else if (m && n && !dry_run) {
        const size_t na = k ? ((size_t)(cols_a - 1) * lda + rows_a) * ea : 0;
        const size_t nb = k ? ((size_t)(cols_b - 1) * ldb + rows_b) * eb : 0;
        const size_t nc = ((size_t)(n - 1) * ldc + m) * 4;
        if ((na && !is_device_range(A, na)) || (nb && !is_device_range(B, nb)) || !is_device_range(C, nc)) {
            log_launch(fname, dev, dim3(), dim3(), 0, mnk, 0, "an operand reaches outside its allocation");
            fault(dev, cudaErrorIllegalAddress, "%s m %d n %d k %d lda %d ldb %d ldc %d: %s outside its allocation",
                  fname, m, n, k, lda, ldb, ldc,
                  na && !is_device_range(A, na)   ? "A"
                  : nb && !is_device_range(B, nb) ? "B"
                                                  : "C");
            return CUBLAS_STATUS_EXECUTION_FAILED;
        }
    }
    log_launch(fname, dev, dim3(), dim3(), 0, mnk, st == CUBLAS_STATUS_SUCCESS, why);
    if (st != CUBLAS_STATUS_SUCCESS) {
        if (st == CUBLAS_STATUS_INVALID_VALUE) fprintf(stderr, "cuda-emu: %s: invalid value: %s\n", fname, why);
        return st;
    }
    if (dry_run || !m || !n) return CUBLAS_STATUS_SUCCESS;
    /* op(B) column j, contiguous; op(A) row i, contiguous */
    std::vector<float> bcol((size_t)k * n), arow((size_t)k);
    for (int j = 0; j < n; j++)
        for (int p = 0; p < k; p++)
            bcol[(size_t)j * k + p] = load_elem(B, bt, tb == CUBLAS_OP_N ? (size_t)j * ldb + p : (size_t)p * ldb + j);
    for (int i = 0; i < m; i++) {
        for (int p = 0; p < k; p++)
            arow[p] = load_elem(A, at, ta == CUBLAS_OP_N ? (size_t)p * lda + i : (size_t)i * lda + p);
        for (int j = 0; j < n; j++) {
            const float *bc = &bcol[(size_t)j * k];
            float s = 0.0f;
            for (int p = 0; p < k; p++) s += arow[p] * bc[p];
            float *c = C + (size_t)j * ldc + i;
            *c = beta == 0.0f ? alpha * s : alpha * s + beta * *c;
        }
    }
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                      const float *alpha, const float *A, int lda, const float *B, int ldb,
                                      const float *beta, float *C, int ldc) {
    return gemm("cublasSgemm", h, ta, tb, m, n, k, *alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, *beta, C, ldc);
}

extern "C" cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                       int k, const void *alpha, const void *A, cudaDataType at, int lda, const void *B,
                                       cudaDataType bt, int ldb, const void *beta, void *C, cudaDataType ct, int ldc,
                                       cublasComputeType_t compute, cublasGemmAlgo_t algo) {
    (void)algo;
    if (!((at == CUDA_R_16BF && bt == CUDA_R_16BF) || (at == CUDA_R_32F && bt == CUDA_R_32F)) || ct != CUDA_R_32F ||
        compute != CUBLAS_COMPUTE_32F) {
        fprintf(stderr, "cuda-emu: cublasGemmEx: types A %d B %d C %d compute %d not emulated\n", (int)at, (int)bt,
                (int)ct, (int)compute);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    return gemm("cublasGemmEx", h, ta, tb, m, n, k, *(const float *)alpha, A, at, lda, B, bt, ldb, *(const float *)beta,
                (float *)C, ldc);
}

/* ================================================================================================ */
/* test controls (cuda_emu_control.h)                                                               */
/* ================================================================================================ */

extern "C" const lt_cuda_emu_device *lt_cuda_emu_device_info(int device) {
    return device >= 0 && device < LT_CUDA_EMU_DEVICES ? &devices[device] : nullptr;
}
extern "C" int lt_cuda_emu_set_device(int device) { return cudaSetDevice(device) == cudaSuccess ? 0 : -1; }
extern "C" int lt_cuda_emu_get_device(void) { return cur_device; }
extern "C" void lt_cuda_emu_set_dry_run(int on) { dry_run = on; }
static thread_local std::unique_ptr<std::vector<lt_cuda_emu_launch>> log_owner;
extern "C" void lt_cuda_emu_log_clear(void) {
    if (!log_owner) log_owner.reset(new std::vector<lt_cuda_emu_launch>());
    log_owner->clear();
    launch_log = log_owner.get();
}
extern "C" size_t lt_cuda_emu_log_count(void) { return launch_log ? launch_log->size() : 0; }
extern "C" const lt_cuda_emu_launch *lt_cuda_emu_log_get(size_t i) {
    return launch_log && i < launch_log->size() ? &(*launch_log)[i] : nullptr;
}
extern "C" void lt_cuda_emu_inject_fault(int device) {
    fault(device, cudaErrorIllegalAddress, "a fault injected by the test");
}
extern "C" void lt_cuda_emu_reset_device(int device) {
    dstate[device].sticky = cudaSuccess;
    last_error = cudaSuccess;
}
extern "C" size_t lt_cuda_emu_bytes_in_use(int device) { return dstate[device].in_use.load(); }

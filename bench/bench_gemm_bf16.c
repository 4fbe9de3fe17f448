/*
 * bench_gemm_bf16.c - GFLOP/s of the bf16-weight GEMM (cpu/gemm_bf16.c) against OpenBLAS sgemm, and
 * of the same kernel on an NF4 + double-quantized weight dequantized while its panels are packed
 * (gemm_q4_*, QLoRA with a bf16 compute dtype), in the same run, through the CPU backend's ops (so with
 * the threading libloratune uses: OpenBLAS single-threaded per call, split over our OpenMP threads).
 *
 *   build/bench_gemm_bf16 [threads (2)] [repeats (15, at most 256)] [N (1024)] [bench-s|bench-1b|bench-8b|moe-s]
 *   LT_CPU_ISA=avx512 build/bench_gemm_bf16 ...   the portable kernel on a CPU with AVX512_BF16
 *
 * Products of one decoder layer of the config (bench-s: hidden 512, intermediate 1376; bench-1b:
 * Llama-3.2-1B, 2048 / 8192, 32 / 8 heads; bench-8b: Llama-3-8B, 4096 / 14336, 32 / 8 heads; moe-s: its LM
 * head, vocab 32000, and one expert of 256, where N is a logits chunk's or an expert's rows), N tokens:
 *   forward  y = x W^T   q, k, v, o, gate, up, down
 *   backward dx = dy W   the same seven weights
 * Each line alternates bf16, 4-bit and sgemm runs and reports the fastest run of each (on a machine
 * shared with other jobs the fastest is the least disturbed), so background load hits all three; the
 * last line is the whole layer: its bf16 figure is the rate "the kernel reaches alone" that a training
 * step's GEMMs are measured against (docs/BENCHMARKS.md).
 * On a CPU with AVX512_BF16 the first line is the single-core issue rate of vdpbf16ps and of
 * vfmadd231ps on 512 bits (24 independent accumulators, so throughput, not latency): why the kernel
 * widens B and uses FMAs (cpu/gemm_bf16.c).
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/context.h"
#include "cpu/cpu_backend.h"
#include "cpu/cpu_kernels.h"
#include "cpu/gemm_bf16.h"
#include "formats/quant.h"

typedef struct shape {
    const char *name;
    int in, out, count;
} shape;
static const shape bench_s[] = {
    {"q,k,v,o 512->512", 512, 512, 4}, {"gate,up 512->1376", 512, 1376, 2}, {"down 1376->512", 1376, 512, 1}};
static const shape bench_1b[] = {{"q,o 2048->2048", 2048, 2048, 2},
                                 {"k,v 2048->512", 2048, 512, 2},
                                 {"gate,up 2048->8192", 2048, 8192, 2},
                                 {"down 8192->2048", 8192, 2048, 1}};
/* moe-s: the LM head (N = the logits chunk's rows) and one expert's gate or up and down (N ~ its 128 rows) */
static const shape moe_s[] = {{"lm head 512->32000", 512, 32000, 1},
                              {"expert gate,up 512->256", 512, 256, 2},
                              {"expert down 256->512", 256, 512, 1}};
static const shape bench_8b[] = {{"q,o 4096->4096", 4096, 4096, 2},
                                 {"k,v 4096->1024", 4096, 1024, 2},
                                 {"gate,up 4096->14336", 4096, 14336, 2},
                                 {"down 14336->4096", 14336, 4096, 1}};

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* G instructions per second of one 512-bit op on 24 independent accumulators, one core */
#define RATE_LOOP(op)                                                          \
    do {                                                                       \
        const long n = 20000000;                                               \
        double t0 = omp_get_wtime();                                           \
        for (long i = 0; i < n; i++) {                                         \
            _Pragma("GCC unroll 24") for (int j = 0; j < 24; j++) acc[j] = op; \
            __asm__ volatile("" : "+v"(x));                                    \
        }                                                                      \
        double t = omp_get_wtime() - t0;                                       \
        float s = 0;                                                           \
        for (int j = 0; j < 24; j++) s += _mm512_reduce_add_ps(acc[j]);        \
        keep = s; /* the sums are used: the loop stays */                      \
        rate = 24.0 * n / t / 1e9;                                             \
    } while (0)
__attribute__((target("avx512f,avx512bf16"))) static void isa_rates(void) {
    __m512 acc[24];
    __m512 x = _mm512_set1_ps(1e-9f), y = _mm512_set1_ps(1.0f);
    double rate;
    volatile float keep;
    for (int j = 0; j < 24; j++) acc[j] = _mm512_setzero_ps();
    RATE_LOOP(_mm512_dpbf16_ps(acc[j], (__m512bh)x, (__m512bh)y));
    const double dp = rate;
    RATE_LOOP(_mm512_fmadd_ps(x, y, acc[j]));
    printf("one core: vdpbf16ps %.2f G/s = %.0f GF/s, vfmadd231ps %.2f G/s = %.0f GF/s (fp32 FMAs / bf16 dot "
           "products: %.2fx the FLOPs)\n",
           dp, 64 * dp, rate, 32 * rate, 32 * rate / (64 * dp));
    (void)keep;
}
#endif

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double fastest(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp);
    return v[0];
}
static float *frand(size_t n, uint64_t seed) {
    float *p = aligned_alloc(64, (n * sizeof(float) + 63) & ~(size_t)63);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (float)((seed >> 40) * (1.0 / 16777216.0) - 0.5);
    }
    return p;
}

int main(int argc, char **argv) {
    const int threads = argc > 1 ? atoi(argv[1]) : 2;
    int reps = argc > 2 ? atoi(argv[2]) : 15;
    if (reps < 1 || reps > 256) reps = 15;
    const int N = argc > 3 ? atoi(argv[3]) : 1024;
    const char *cfg = argc > 4 ? argv[4] : "bench-s";
    const shape *shapes = bench_s;
    int ns = 3;
    if (!strcmp(cfg, "bench-1b")) shapes = bench_1b, ns = 4;
    else if (!strcmp(cfg, "bench-8b")) shapes = bench_8b, ns = 4;
    else if (!strcmp(cfg, "moe-s")) shapes = moe_s, ns = 3;
    else if (strcmp(cfg, "bench-s")) {
        fprintf(stderr, "bench_gemm_bf16: unknown config %s (bench-s, bench-1b, bench-8b, moe-s)\n", cfg);
        return 2;
    }
    lt_backend *be = NULL;
    char err[256];
    if (lt_cpu_backend_create(threads, &be, err, sizeof err) != LT_OK) {
        fprintf(stderr, "bench_gemm_bf16: %s\n", err);
        return 1;
    }
    const lt_backend_ops *o = be->ops;
    const lt_cpu_kernels *k = lt_cpu_kernels_get(LT_CPU_ISA_AUTO, err, sizeof err);
    printf("bench_gemm_bf16: %s, N=%d, %d threads, %d repeats, ISA %s (%s kernel)\n", cfg, N, threads, reps, k->isa,
           k->level == LT_CPU_ISA_AVX512_BF16 ? "AVX512_BF16" : "portable");
#if defined(__x86_64__) && defined(__GNUC__)
    if (k->level == LT_CPU_ISA_AVX512_BF16) isa_rates();
#endif
    printf("%-22s %-8s %10s %10s %10s %8s %8s\n", "shape", "product", "bf16 GF/s", "nf4 GF/s", "sgemm GF/s", "nf4/bf16",
           "bf16/f32");
    double layer_b = 0, layer_q = 0, layer_f = 0, layer_flops = 0;
    for (int s = 0; s < ns; s++) {
        const int in = shapes[s].in, out = shapes[s].out;
        float *W = frand((size_t)out * in, 1), *x = frand((size_t)N * in, 2), *y = frand((size_t)N * out, 3);
        float *dy = frand((size_t)N * out, 4), *dx = frand((size_t)N * in, 5);
        void *Wp = o->alloc(be, o->bf16_weight_bytes(be, out, in));
        o->bf16_weight_pack(be, Wp, W, out, in);
        lt_quant_params qp = {.size = sizeof qp, .format = LT_QUANT_NF4, .blocksize = 64, .double_quant = 1};
        const int64_t qshape[2] = {out, in};
        lt_qtensor *qt = NULL;
        lt_error qerr = {0};
        if (lt_qtensor_quantize_ex(W, qshape, 2, &qp, NULL, &qt, &qerr) != LT_OK) {
            fprintf(stderr, "bench_gemm_bf16: %s\n", qerr.msg);
            return 1;
        }
        const lt_qdesc q = lt_qtensor_desc(qt);
        for (int bwd = 0; bwd < 2; bwd++) {
            double tb[256], tq[256], tf[256];
            for (int r = -1; r < reps && r < 256; r++) { /* r = -1: warm-up */
                double t0 = omp_get_wtime();
                if (!bwd) o->gemm_bf16_forward(be, y, x, Wp, N, in, out);
                else o->gemm_bf16_backward(be, dx, dy, Wp, N, in, out, 0);
                double t1 = omp_get_wtime();
                if (!bwd) o->gemm_q4_forward(be, y, x, &q, N, in, out, NULL, 0);
                else o->gemm_q4_backward(be, dx, dy, &q, N, in, out, 0, NULL, 0);
                double t2 = omp_get_wtime();
                if (!bwd) o->gemm(be, 0, 1, N, out, in, 1.0f, x, in, W, in, 0.0f, y, out);
                else o->gemm(be, 0, 0, N, in, out, 1.0f, dy, out, W, in, 0.0f, dx, in);
                double t3 = omp_get_wtime();
                if (r >= 0) {
                    tb[r] = t1 - t0;
                    tq[r] = t2 - t1;
                    tf[r] = t3 - t2;
                }
            }
            const double flops = 2.0 * N * in * out, mb = fastest(tb, reps), mq = fastest(tq, reps),
                         mf = fastest(tf, reps);
            printf("%-22s %-8s %10.1f %10.1f %10.1f %7.2fx %7.2fx\n", shapes[s].name, bwd ? "backward" : "forward",
                   flops / mb / 1e9, flops / mq / 1e9, flops / mf / 1e9, mb / mq, mf / mb);
            layer_b += shapes[s].count * mb;
            layer_q += shapes[s].count * mq;
            layer_f += shapes[s].count * mf;
            layer_flops += shapes[s].count * flops;
        }
        lt_qtensor_free(qt);
        o->free(be, Wp);
        free(W);
        free(x);
        free(y);
        free(dy);
        free(dx);
    }
    printf("%-22s %-8s %10.1f %10.1f %10.1f %7.2fx %7.2fx\n", "one layer", "both", layer_flops / layer_b / 1e9,
           layer_flops / layer_q / 1e9, layer_flops / layer_f / 1e9, layer_b / layer_q, layer_f / layer_b);
    lt_backend_destroy(be);
    return 0;
}

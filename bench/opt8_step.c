/*
 * opt8_step.c - time of one optimizer update over N parameters with the CPU backend's ops
 * (docs/BENCHMARKS.md): fp32 AdamW (adamw_step), bitsandbytes' 8-bit AdamW (adamw8bit_step, the fast
 * kernel) and the scalar reference block (lt_ref_adamw8bit_step).
 *
 *   build/opt8_step [N_MILLIONS=58.1] [THREADS=1] [REPS=5]      (built with the library: bench/CMakeLists.txt)
 *
 * Prints the median time of REPS updates
 * after one warm-up update; state and gradients are random (the optimizer is past its first step).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "backend/codebook.h"
#include "cpu/cpu_kernels.h"
#include "cpu/ref_ops.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static uint64_t rng = 88172645463325252ull;
static float urand(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

int main(int argc, char **argv) {
    const size_t n = (size_t)((argc > 1 ? atof(argv[1]) : 58.1) * 1e6);
    const int threads = argc > 2 ? atoi(argv[2]) : 1, reps = argc > 3 ? atoi(argv[3]) : 5;
    char err[256];
    lt_backend *be = NULL;
    if (lt_cpu_backend_create_isa(threads, LT_CPU_ISA_AUTO, &be, err, sizeof err) != LT_OK) {
        fprintf(stderr, "backend: %s\n", err);
        return 1;
    }
    const size_t nb = (n + 255) / 256;
    float *p = malloc(n * 4), *g = malloc(n * 4), *m = malloc(n * 4), *v = malloc(n * 4);
    float *a1 = malloc(nb * 4), *a2 = malloc(nb * 4);
    uint8_t *c1 = malloc(n), *c2 = malloc(n);
    if (!p || !g || !m || !v || !a1 || !a2 || !c1 || !c2) return 1;
    for (size_t i = 0; i < n; i++) {
        p[i] = urand() * 0.05f, g[i] = urand() * 1e-3f, m[i] = g[i] * 0.1f, v[i] = g[i] * g[i] * 1e-3f;
        c1[i] = (uint8_t)(rng >> 20), c2[i] = (uint8_t)(rng >> 28);
    }
    for (size_t b = 0; b < nb; b++) a1[b] = 1e-3f, a2[b] = 1e-6f;
    const float *q1 = lt_quant_code8(), *q2 = lt_quant_code8u();
    const char *names[3] = {"fp32 AdamW (adamw_step)", "8-bit AdamW (adamw8bit_step)", "8-bit AdamW reference"};
    printf("%zu parameters, %d thread(s), ISA %s\n", n, threads, lt_cpu_kernels_get(LT_CPU_ISA_AUTO, NULL, 0)->isa);
    for (int k = 0; k < 3; k++) {
        double t[64];
        const int r = reps < 64 ? reps : 64;
        for (int i = -1; i < r; i++) {
            const double t0 = now();
            if (k == 0) be->ops->adamw_step(be, p, g, m, v, n, 1e-4f, 0.9f, 0.999f, 1e-8f, 0.5f, 0.0f);
            else if (k == 1)
                be->ops->adamw8bit_step(be, p, g, c1, c2, a1, a2, n, q1, q2, 0.9f, 0.999f, 1e-8f, -1e-4f, 1e-6f);
            else lt_ref_adamw8bit_step(p, g, c1, c2, a1, a2, n, q1, q2, 0.9f, 0.999f, 1e-8f, -1e-4f, 1e-6f);
            if (i >= 0) t[i] = now() - t0;
        }
        qsort(t, (size_t)r, sizeof *t, cmp);
        printf("%-32s %8.1f ms per update (median of %d), %.2f ns per parameter\n", names[k], 1e3 * t[r / 2], r,
               1e9 * t[r / 2] / (double)n);
    }
    be->ops->destroy(be);
    return 0;
}

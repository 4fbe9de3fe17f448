/*
 * simd.h - the fast CPU kernels, written once over GCC vector extensions and compiled once per
 * instruction set by cpu/cpu_isa.c through cpu/isa_each.h (no include guard: that is the point), which
 * sets LT_ISA (suffix of every name), LT_ISA_LEVEL and LT_W (floats per vector: 16, 8, 4). The
 * register blocking of the attention micro-kernels follows from LT_W (below).
 *
 * defines: the static kernels k_<name>_<LT_ISA> that cpu_isa.c's tables (lt_cpu_kernels) name.
 * The AVX512_BF16 copy is empty: those instructions change nothing here, and its table names the
 * AVX512 kernels.
 * Precision: sums over rows (norms, softmax denominators, sumsq) accumulate in double; exp is a
 * Cephes-style polynomial, within ~2 ulp of expf.
 */
#if LT_ISA_LEVEL != LT_ISA_AVX512_BF16

/* rows per register block of the score micro-kernel (x KB/W vectors of accumulators) (LT_RBA), rows per
 * register block of the accumulate micro-kernel (LT_RBB) and vectors per row of that block (LT_CBB) */
#if LT_W == 16
#define LT_RBA 8
#define LT_RBB 4
#define LT_CBB 4
#elif LT_W == 8
#define LT_RBA 2
#define LT_RBB 2
#define LT_CBB 4
#else
#define LT_RBA 2
#define LT_RBB 2
#define LT_CBB 2
#endif

#define LT_CAT2_(a, b) a##_##b
#define LT_CAT2(a, b) LT_CAT2_(a, b)
#define F(name) LT_CAT2(name, LT_ISA)
#define LT_AI static inline __attribute__((always_inline))

#define vf F(vf)
#define vi F(vi)
#define vd F(vd)
#define vq F(vq)
typedef float vf __attribute__((vector_size(LT_W * 4)));
typedef int32_t vi __attribute__((vector_size(LT_W * 4)));
typedef double vd __attribute__((vector_size(LT_W * 4)));   /* LT_W/2 doubles */
typedef uint64_t vq __attribute__((vector_size(LT_W * 8))); /* LT_W u64 lanes */

#define KB LT_ATT_KB
#define QT LT_ATT_QT
#define NVK (KB / LT_W) /* vectors per score-tile row */

/* ---- primitives ----------------------------------------------------------------------------------- */

LT_AI vf F(ld)(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
LT_AI void F(st)(float *p, vf v) { memcpy(p, &v, sizeof v); }
LT_AI vf F(set1)(float x) { return (vf){0} + x; }
/* m lanes are 0 or -1 (a vector comparison) */
LT_AI vf F(sel)(vi m, vf a, vf b) { return (vf)(((vi)a & m) | ((vi)b & ~m)); }

LT_AI vf F(vmax)(vf a, vf b) {
#if LT_W == 16
    return _mm512_max_ps(a, b);
#elif LT_W == 8
    return _mm256_max_ps(a, b);
#else
    return F(sel)(a > b, a, b);
#endif
}

LT_AI vf F(vsqrt)(vf a) {
#if LT_W == 16
    return _mm512_sqrt_ps(a);
#elif LT_W == 8
    return _mm256_sqrt_ps(a);
#else
    for (int i = 0; i < LT_W; i++) a[i] = sqrtf(a[i]);
    return a;
#endif
}

LT_AI float F(hsum)(vf v) {
#if LT_W == 16
    return _mm512_reduce_add_ps(v);
#elif LT_W == 8
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
#else
    float s = 0.0f;
    for (int i = 0; i < LT_W; i++) s += v[i];
    return s;
#endif
}

LT_AI float F(hmax)(vf v) {
#if LT_W == 16
    return _mm512_reduce_max_ps(v);
#elif LT_W == 8
    __m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_max_ps(a, _mm_movehl_ps(a, a));
    a = _mm_max_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
#else
    float m = v[0];
    for (int i = 1; i < LT_W; i++) m = v[i] > m ? v[i] : m;
    return m;
#endif
}

/* lo += x[0 .. W/2), hi += x[W/2 .. W) in double */
LT_AI void F(acc_d)(vd *lo, vd *hi, vf x) {
#if LT_W == 16
    *lo += _mm512_cvtps_pd(_mm512_castps512_ps256(x));
    *hi += _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
#elif LT_W == 8
    *lo += _mm256_cvtps_pd(_mm256_castps256_ps128(x));
    *hi += _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
#else
    for (int i = 0; i < LT_W / 2; i++) {
        (*lo)[i] += x[i];
        (*hi)[i] += x[i + LT_W / 2];
    }
#endif
}

LT_AI double F(hsum_d)(vd v) {
    double s = 0.0;
    for (int i = 0; i < LT_W / 2; i++) s += v[i];
    return s;
}

/* exp(x): Cephes expf range reduction and polynomial (within ~2 ulp of expf); NaN stays NaN.
 * AVX-512: vscalefps applies 2^n with correct overflow to +inf and gradual underflow to 0 (x is
 * clamped to [-150, 88.8] first, so exp(-inf) is exactly 0).
 * Otherwise: x < -87.34 gives 0, x > 88.38 gives +inf, 2^n built in the exponent bits. */
#if LT_W == 16
LT_AI vf F(vexp)(vf x) {
    x = _mm512_max_ps(_mm512_set1_ps(-150.0f), x); /* (lo, x): a NaN x is kept */
    x = _mm512_min_ps(_mm512_set1_ps(88.8f), x);
    vf fx = _mm512_roundscale_ps(x * 1.44269504088896341f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = x - fx * 0.693359375f;
    r = r + fx * 2.12194440e-4f;
    vf p = F(set1)(1.9875691500E-4f);
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    vf y = p * (r * r) + r + 1.0f;
    return _mm512_scalef_ps(y, fx);
}
#else
LT_AI vf F(vexp)(vf x) {
    const float hi = 88.3762626647949f, lo = -87.3365447504f;
    vi big = x > hi, small = x < lo;
    x = F(sel)(big, F(set1)(hi), x);
    x = F(sel)(small, F(set1)(lo), x);
    vf fx = x * 1.44269504088896341f + 12582912.0f; /* round to nearest via 1.5 * 2^23 */
    fx = fx - 12582912.0f;
    vf r = x - fx * 0.693359375f;
    r = r + fx * 2.12194440e-4f;
    vf p = F(set1)(1.9875691500E-4f);
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    vf y = p * (r * r) + r + 1.0f;
    vi n = __builtin_convertvector(fx, vi);
    vf pw = (vf)((n + 127) << 23);
    y = y * pw;
    y = F(sel)(small, F(set1)(0.0f), y);
    y = F(sel)(big, F(set1)(INFINITY), y);
    return y;
}
#endif

/* ---- elementwise ---------------------------------------------------------------------------------- */

/* y (n) += a x (n) */
static void F(k_axpy)(size_t n, float a, const float *x, float *y) {
    size_t i = 0;
    for (; i + LT_W <= n; i += LT_W) F(st)(y + i, F(ld)(y + i) + a * F(ld)(x + i));
    for (; i < n; i++) y[i] += a * x[i];
}

/* x (n) *= a */
static void F(k_scale)(size_t n, float a, float *x) {
    size_t i = 0;
    for (; i + LT_W <= n; i += LT_W) F(st)(x + i, F(ld)(x + i) * a);
    for (; i < n; i++) x[i] *= a;
}

/* sum of x (n) squared, in double */
static double F(k_sumsq)(size_t n, const float *x) {
    vd a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    size_t i = 0;
    for (; i + 2 * LT_W <= n; i += 2 * LT_W) {
        vf u = F(ld)(x + i), w = F(ld)(x + i + LT_W);
        F(acc_d)(&a0, &a1, u * u);
        F(acc_d)(&a2, &a3, w * w);
    }
    double s = F(hsum_d)((a0 + a1) + (a2 + a3));
    for (; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

/* 1 if every x (n) is finite (exponent bits not all ones) */
static int F(k_all_finite)(size_t n, const float *x) {
    vi bad = {0};
    size_t i = 0;
    for (; i + LT_W <= n; i += LT_W) bad |= (((vi)F(ld)(x + i) & 0x7f800000) == 0x7f800000);
    for (int l = 0; l < LT_W; l++)
        if (bad[l]) return 0;
    for (; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* ---- RMSNorm -------------------------------------------------------------------------------------- */

/* out (N,C), rstd (N), inp (N,C), weight (C); rows [n0, n1) */
static void F(k_rmsnorm_fwd)(float *out, float *rstd, const float *inp, const float *weight, int n0, int n1, int C,
                             float eps) {
    for (int n = n0; n < n1; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        vd a0 = {0}, a1 = {0};
        int c = 0;
        for (; c + LT_W <= C; c += LT_W) {
            vf u = F(ld)(x + c);
            F(acc_d)(&a0, &a1, u * u);
        }
        double ss = F(hsum_d)(a0 + a1);
        for (; c < C; c++) ss += (double)x[c] * x[c];
        float r = (float)(1.0 / sqrt(ss / C + (double)eps));
        rstd[n] = r;
        for (c = 0; c + LT_W <= C; c += LT_W) F(st)(o + c, F(ld)(x + c) * r * F(ld)(weight + c));
        for (; c < C; c++) o[c] = x[c] * r * weight[c];
    }
}

/* dinp (N,C) accumulates, dout, inp (N,C), weight (C), rstd (N); rows [n0, n1)
 *   dx_c += r w_c g_c - (r^3/C) x_c sum_i(g_i w_i x_i) */
static void F(k_rmsnorm_bwd)(float *dinp, const float *dout, const float *inp, const float *weight, const float *rstd,
                             int n0, int n1, int C) {
    for (int n = n0; n < n1; n++) {
        const float *x = inp + (size_t)n * C, *g = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        vd a0 = {0}, a1 = {0};
        int c = 0;
        for (; c + LT_W <= C; c += LT_W) F(acc_d)(&a0, &a1, F(ld)(g + c) * F(ld)(weight + c) * F(ld)(x + c));
        double dot = F(hsum_d)(a0 + a1);
        for (; c < C; c++) dot += (double)g[c] * weight[c] * x[c];
        double rd = rstd[n];
        float r = rstd[n], k = (float)(rd * rd * rd * dot / C);
        for (c = 0; c + LT_W <= C; c += LT_W)
            F(st)(dx + c, F(ld)(dx + c) + r * F(ld)(weight + c) * F(ld)(g + c) - k * F(ld)(x + c));
        for (; c < C; c++) dx[c] += r * weight[c] * g[c] - k * x[c];
    }
}

/* dweight (C) accumulates sum_n dout[n,c] inp[n,c] rstd[n] for columns [c0, c1), in double, rows in
 * order (deterministic whatever the thread count) */
#define LT_DW_BLOCK 64
static void F(k_rmsnorm_dw)(float *dweight, const float *dout, const float *inp, const float *rstd, int N, int C,
                            int c0, int c1) {
    for (int cb = c0; cb < c1; cb += LT_DW_BLOCK) {
        int nc = c1 - cb < LT_DW_BLOCK ? c1 - cb : LT_DW_BLOCK;
        double acc[LT_DW_BLOCK] = {0};
        for (int n = 0; n < N; n++) {
            const float *g = dout + (size_t)n * C + cb, *x = inp + (size_t)n * C + cb;
            double r = rstd[n];
            if (nc == LT_DW_BLOCK) {
                for (int c = 0; c < LT_DW_BLOCK; c++) acc[c] += (double)(g[c] * x[c]) * r;
            } else {
                for (int c = 0; c < nc; c++) acc[c] += (double)(g[c] * x[c]) * r;
            }
        }
        for (int c = 0; c < nc; c++) dweight[cb + c] += (float)acc[c];
    }
}

/* ---- RoPE ----------------------------------------------------------------------------------------- */

/* x (N, n_heads, head_dim) in place, rows [n0, n1); pos (N); inv_freq (rot_dim/2) */
#define LT_ROPE_CHUNK 64
static void F(k_rope)(float *x, const int32_t *pos, const float *inv_freq, int n0, int n1, int n_heads, int head_dim,
                      int rot_dim, int inverse) {
    int half = rot_dim / 2;
    float cs[LT_ROPE_CHUNK], sn[LT_ROPE_CHUNK];
    for (int n = n0; n < n1; n++) {
        for (int j0 = 0; j0 < half; j0 += LT_ROPE_CHUNK) {
            int nj = half - j0 < LT_ROPE_CHUNK ? half - j0 : LT_ROPE_CHUNK;
            for (int j = 0; j < nj; j++) {
                float ang = (float)pos[n] * inv_freq[j0 + j], c, s;
#ifdef __GLIBC__
                sincosf(ang, &s, &c); /* < 1 ulp, ~3x cheaper than cos + sin in double */
#else
                c = cosf(ang);
                s = sinf(ang);
#endif
                cs[j] = c;
                sn[j] = inverse ? -s : s;
            }
            for (int h = 0; h < n_heads; h++) {
                float *x1 = x + ((size_t)n * n_heads + h) * head_dim + j0, *x2 = x1 + half;
                int j = 0;
                for (; j + LT_W <= nj; j += LT_W) {
                    vf a = F(ld)(x1 + j), b = F(ld)(x2 + j), c = F(ld)(cs + j), s = F(ld)(sn + j);
                    F(st)(x1 + j, a * c - b * s);
                    F(st)(x2 + j, b * c + a * s);
                }
                for (; j < nj; j++) {
                    float a = x1[j], b = x2[j];
                    x1[j] = a * cs[j] - b * sn[j];
                    x2[j] = b * cs[j] + a * sn[j];
                }
            }
        }
    }
}

/* ---- SwiGLU --------------------------------------------------------------------------------------- */

/* out, gate, up (n): out = gate sigmoid(gate) up */
static void F(k_swiglu_fwd)(float *out, const float *gate, const float *up, size_t n) {
    size_t i = 0;
    for (; i + LT_W <= n; i += LT_W) {
        vf g = F(ld)(gate + i), u = F(ld)(up + i);
        vf sig = 1.0f / (1.0f + F(vexp)(-g));
        F(st)(out + i, g * sig * u);
    }
    for (; i < n; i++) {
        float g = gate[i], sig = 1.0f / (1.0f + expf(-g));
        out[i] = g * sig * up[i];
    }
}

/* dgate, dup, dout, gate, up (n); dgate/dup may alias gate/up (each element is loaded before it is
 * stored) */
static void F(k_swiglu_bwd)(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n) {
    size_t i = 0;
    for (; i + LT_W <= n; i += LT_W) {
        vf go = F(ld)(dout + i), g = F(ld)(gate + i), u = F(ld)(up + i);
        vf sig = 1.0f / (1.0f + F(vexp)(-g));
        vf dg = go * u * sig * (1.0f + g * (1.0f - sig));
        vf du = go * g * sig;
        F(st)(dgate + i, dg);
        F(st)(dup + i, du);
    }
    for (; i < n; i++) {
        float go = dout[i], g = gate[i], u = up[i];
        float sig = 1.0f / (1.0f + expf(-g));
        dgate[i] = go * u * sig * (1.0f + g * (1.0f - sig));
        dup[i] = go * g * sig;
    }
}

/* ---- cross-entropy -------------------------------------------------------------------------------- */

/* logits (V) of one row, loss (1), target; see backend.h */
static void F(k_ce_row)(float *x, float *loss, int32_t tgt, int V, float grad_scale) {
    if (tgt < 0 || tgt >= V) {
        *loss = 0.0f;
        if (grad_scale != 0.0f) memset(x, 0, (size_t)V * sizeof(float));
        return;
    }
    /* max */
    vf m0 = F(set1)(-INFINITY), m1 = m0;
    int c = 0;
    for (; c + 2 * LT_W <= V; c += 2 * LT_W) {
        m0 = F(vmax)(m0, F(ld)(x + c));
        m1 = F(vmax)(m1, F(ld)(x + c + LT_W));
    }
    float mx = F(hmax)(F(vmax)(m0, m1));
    for (; c < V; c++) mx = x[c] > mx ? x[c] : mx;
    float xt = x[tgt];
    /* sum of exp: in float over blocks of 512, the blocks in double; the exps are kept in logits when
     * a gradient is wanted */
    vd s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    c = 0;
    while (c + 2 * LT_W <= V) {
        int cend = V - c > 512 ? c + 512 : V;
        vf f0 = F(set1)(0.0f), f1 = f0;
        if (grad_scale != 0.0f) {
            for (; c + 2 * LT_W <= cend; c += 2 * LT_W) {
                vf e0 = F(vexp)(F(ld)(x + c) - mx), e1 = F(vexp)(F(ld)(x + c + LT_W) - mx);
                F(st)(x + c, e0);
                F(st)(x + c + LT_W, e1);
                f0 += e0;
                f1 += e1;
            }
        } else {
            for (; c + 2 * LT_W <= cend; c += 2 * LT_W) {
                f0 += F(vexp)(F(ld)(x + c) - mx);
                f1 += F(vexp)(F(ld)(x + c + LT_W) - mx);
            }
        }
        F(acc_d)(&s0, &s1, f0);
        F(acc_d)(&s2, &s3, f1);
    }
    double sum = F(hsum_d)((s0 + s1) + (s2 + s3));
    for (; c < V; c++) {
        float e = expf(x[c] - mx);
        if (grad_scale != 0.0f) x[c] = e;
        sum += e;
    }
    *loss = (float)((double)mx + log(sum) - (double)xt);
    if (grad_scale == 0.0f) return;
    float f = (float)((double)grad_scale / sum);
    for (c = 0; c + LT_W <= V; c += LT_W) F(st)(x + c, F(ld)(x + c) * f);
    for (; c < V; c++) x[c] *= f;
    x[tgt] -= grad_scale;
}

/* ---- dropout -------------------------------------------------------------------------------------- */

/* out, inp (n); element i uses counter offset + i (lt_hash_uniform, bit for bit) */
static void F(k_dropout)(float *out, const float *inp, size_t n, float p, uint64_t seed, uint64_t offset) {
    if (!(p < 1.0f)) {
        memset(out, 0, n * sizeof(float));
        return;
    }
    float ks = 1.0f / (1.0f - p);
    vq idx;
    for (int l = 0; l < LT_W; l++) idx[l] = offset + (uint64_t)l + 1;
    size_t i = 0;
    for (; i + LT_W <= n; i += LT_W) {
        vq z = seed + 0x9E3779B97F4A7C15ull * idx;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        vf u = __builtin_convertvector(__builtin_convertvector(z >> 40, vi), vf) * (1.0f / 16777216.0f);
        F(st)(out + i, F(sel)(u >= p, F(ld)(inp + i) * ks, F(set1)(0.0f)));
        idx += LT_W;
    }
    for (; i < n; i++) out[i] = lt_hash_uniform(seed, offset + i) >= p ? inp[i] * ks : 0.0f;
}

/* ---- AdamW ---------------------------------------------------------------------------------------- */

/* param, grad, m, v (n); the formula of backend.h */
static void F(k_adamw)(float *param, const float *grad, float *m, float *v, size_t n, float step_size, float beta1,
                       float beta2, float eps, float bc2_sqrt, float decay) {
    size_t i = 0;
    float keep = 1.0f - decay, c1 = 1.0f - beta1, c2 = 1.0f - beta2;
    for (; i + LT_W <= n; i += LT_W) {
        vf g = F(ld)(grad + i), p = F(ld)(param + i) * keep;
        vf mm = beta1 * F(ld)(m + i) + c1 * g;
        vf vv = beta2 * F(ld)(v + i) + c2 * g * g;
        p -= step_size * mm / (F(vsqrt)(vv) / bc2_sqrt + eps);
        F(st)(m + i, mm);
        F(st)(v + i, vv);
        F(st)(param + i, p);
    }
    for (; i < n; i++) {
        float g = grad[i];
        param[i] *= keep;
        m[i] = beta1 * m[i] + c1 * g;
        v[i] = beta2 * v[i] + c2 * g * g;
        param[i] -= step_size * m[i] / (sqrtf(v[i]) / bc2_sqrt + eps);
    }
}

/* ---- attention micro-kernels ---------------------------------------------------------------------- */

/* S (R, KB) = scale * A (R rows of HD, row stride lda) @ Bt (HD, KB); rows in blocks of RB. */
LT_AI void F(mm_s_block)(const int RB, float *S, const float *A, size_t lda, const float *Bt, int HD, float scale) {
    vf acc[LT_RBA][NVK];
#pragma GCC unroll 16
    for (int g = 0; g < RB; g++)
#pragma GCC unroll 16
        for (int u = 0; u < NVK; u++) acc[g][u] = F(set1)(0.0f);
    for (int d = 0; d < HD; d++) {
        vf b[NVK];
#pragma GCC unroll 16
        for (int u = 0; u < NVK; u++) b[u] = F(ld)(Bt + (size_t)d * KB + u * LT_W);
#pragma GCC unroll 16
        for (int g = 0; g < RB; g++) {
            vf a = F(set1)(A[(size_t)g * lda + d]);
#pragma GCC unroll 16
            for (int u = 0; u < NVK; u++) acc[g][u] += a * b[u];
        }
    }
#pragma GCC unroll 16
    for (int g = 0; g < RB; g++)
#pragma GCC unroll 16
        for (int u = 0; u < NVK; u++) F(st)(S + (size_t)g * KB + u * LT_W, acc[g][u] * scale);
}

static void F(mm_s)(float *S, const float *A, size_t lda, int R, const float *Bt, int HD, float scale) {
    int r = 0;
    for (; r + LT_RBA <= R; r += LT_RBA) F(mm_s_block)(LT_RBA, S + (size_t)r * KB, A + r * lda, lda, Bt, HD, scale);
    for (; r < R; r++) F(mm_s_block)(1, S + (size_t)r * KB, A + r * lda, lda, Bt, HD, scale);
}

/* C (R rows, stride ldc; columns [d0, d0 + NV*W)) += A (R, K) @ X (K rows, stride ldx), with
 * A[r][c] = A[r*ars + c*acs]. */
LT_AI void F(mm_acc_block)(const int RB, const int NV, float *C, size_t ldc, const float *A, size_t ars, size_t acs,
                           const float *X, size_t ldx, int K, int d0) {
    vf acc[LT_RBB][LT_CBB];
#pragma GCC unroll 16
    for (int g = 0; g < RB; g++)
#pragma GCC unroll 16
        for (int u = 0; u < NV; u++) acc[g][u] = F(ld)(C + g * ldc + d0 + u * LT_W);
    for (int c = 0; c < K; c++) {
        vf x[LT_CBB];
#pragma GCC unroll 16
        for (int u = 0; u < NV; u++) x[u] = F(ld)(X + c * ldx + d0 + u * LT_W);
#pragma GCC unroll 16
        for (int g = 0; g < RB; g++) {
            vf a = F(set1)(A[g * ars + c * acs]);
#pragma GCC unroll 16
            for (int u = 0; u < NV; u++) acc[g][u] += a * x[u];
        }
    }
#pragma GCC unroll 16
    for (int g = 0; g < RB; g++)
#pragma GCC unroll 16
        for (int u = 0; u < NV; u++) F(st)(C + g * ldc + d0 + u * LT_W, acc[g][u]);
}

LT_AI void F(mm_acc_rows)(const int RB, float *C, size_t ldc, const float *A, size_t ars, size_t acs, const float *X,
                          size_t ldx, int K, int HD) {
    int HDv = HD / LT_W * LT_W, d0 = 0;
    for (; d0 + LT_CBB * LT_W <= HDv; d0 += LT_CBB * LT_W)
        F(mm_acc_block)(RB, LT_CBB, C, ldc, A, ars, acs, X, ldx, K, d0);
    for (; d0 < HDv; d0 += LT_W) F(mm_acc_block)(RB, 1, C, ldc, A, ars, acs, X, ldx, K, d0);
    for (int d = HDv; d < HD; d++)
        for (int g = 0; g < RB; g++) {
            float s = C[g * ldc + d];
            for (int c = 0; c < K; c++) s += A[g * ars + c * acs] * X[c * ldx + d];
            C[g * ldc + d] = s;
        }
}

static void F(mm_acc)(float *C, size_t ldc, const float *A, size_t ars, size_t acs, const float *X, size_t ldx, int R,
                      int K, int HD) {
    int r = 0;
    for (; r + LT_RBB <= R; r += LT_RBB) F(mm_acc_rows)(LT_RBB, C + r * ldc, ldc, A + r * ars, ars, acs, X, ldx, K, HD);
    for (; r < R; r++) F(mm_acc_rows)(1, C + r * ldc, ldc, A + r * ars, ars, acs, X, ldx, K, HD);
}

/* Kt (HD, KB) = transpose of rows j0 .. j0+jn-1 of X (row stride ldx); columns jn.. zeroed */
static void F(transpose_tile)(float *Kt, const float *X, size_t ldx, int jn, int HD) {
    for (int jj = 0; jj < KB; jj++) {
        if (jj < jn) {
            const float *xr = X + (size_t)jj * ldx;
            for (int d = 0; d < HD; d++) Kt[(size_t)d * KB + jj] = xr[d];
        } else {
            for (int d = 0; d < HD; d++) Kt[(size_t)d * KB + jj] = 0.0f;
        }
    }
}

/* row (KB) entries outside [a, e] set to `fill` */
LT_AI void F(mask_row)(float *row, int a, int e, float fill) {
    for (int jj = 0; jj < a; jj++) row[jj] = fill;
    for (int jj = e + 1; jj < KB; jj++) row[jj] = fill;
}

/* ---- attention forward ---------------------------------------------------------------------------- */

/* out (B,T,NH,HD), lse (B,NH,T), q (B,T,NH,HD), k, v (B,T,NKV,HD), kv_start (B*T): queries
 * [t0, t1) of head (b, h). Flash-style: key tiles of KB with an online softmax; the output rows are
 * the accumulators. Stack: HD*KB + QT_FWD*KB floats. */
static void F(k_att_fwd_tile)(float *out, float *lse, const float *q, const float *k, const float *v,
                              const int32_t *kv_start, int T, int NH, int NKV, int HD, float scale, int b, int h,
                              int t0, int t1) {
    const int R = t1 - t0, kvh = h / (NH / NKV);
    const size_t sq = (size_t)NH * HD, skv = (size_t)NKV * HD;
    const float *qb = q + (((size_t)b * T + t0) * NH + h) * HD;
    float *ob = out + (((size_t)b * T + t0) * NH + h) * HD;
    const float *kb = k + ((size_t)b * T * NKV + kvh) * HD, *vb = v + ((size_t)b * T * NKV + kvh) * HD;
    const int32_t *ks = kv_start + (size_t)b * T;
    float Kt[HD * KB] __attribute__((aligned(64)));
    float S[LT_ATT_QT_FWD * KB] __attribute__((aligned(64)));
    float m[LT_ATT_QT_FWD];
    double l[LT_ATT_QT_FWD];
    int lo[LT_ATT_QT_FWD], jmin = t1;
    for (int i = 0; i < R; i++) {
        lo[i] = lt_att_kv_lo(ks, t0 + i);
        if (lo[i] < jmin) jmin = lo[i];
        m[i] = -INFINITY;
        l[i] = 0.0;
        memset(ob + i * sq, 0, (size_t)HD * sizeof(float));
    }
    for (int j0 = jmin; j0 < t1; j0 += KB) {
        int jn = t1 - j0 < KB ? t1 - j0 : KB;
        /* rows before j0 see none of these keys (causal): skip them */
        const int i1 = j0 > t0 ? j0 - t0 : 0, R1 = R - i1;
        F(transpose_tile)(Kt, kb + (size_t)j0 * skv, skv, jn, HD);
        F(mm_s)(S + (size_t)i1 * KB, qb + i1 * sq, sq, R1, Kt, HD, scale);
        for (int i = i1; i < R; i++) {
            float *s = S + (size_t)i * KB;
            int a = lo[i] > j0 ? lo[i] - j0 : 0, e = t0 + i - j0;
            if (e > jn - 1) e = jn - 1;
            if (a > e) { /* no key of this tile for this query */
                memset(s, 0, KB * sizeof(float));
                continue;
            }
            F(mask_row)(s, a, e, -INFINITY);
            vf vmx = F(ld)(s);
#pragma GCC unroll 16
            for (int u = 1; u < NVK; u++) vmx = F(vmax)(vmx, F(ld)(s + u * LT_W));
            float mt = F(hmax)(vmx);
            float mnew = mt > m[i] ? mt : m[i];
            float alpha = expf(m[i] - mnew);
            vf vm = F(set1)(mnew), ps = F(set1)(0.0f);
#pragma GCC unroll 16
            for (int u = 0; u < NVK; u++) {
                vf p = F(vexp)(F(ld)(s + u * LT_W) - vm);
                F(st)(s + u * LT_W, p);
                ps += p;
            }
            l[i] = l[i] * alpha + F(hsum)(ps);
            if (alpha != 1.0f) F(k_scale)((size_t)HD, alpha, ob + i * sq);
            m[i] = mnew;
        }
        F(mm_acc)(ob + i1 * sq, sq, S + (size_t)i1 * KB, KB, 1, vb + (size_t)j0 * skv, skv, R1, jn, HD);
    }
    for (int i = 0; i < R; i++) {
        F(k_scale)((size_t)HD, (float)(1.0 / l[i]), ob + i * sq);
        lse[((size_t)b * NH + h) * T + t0 + i] = (float)((double)m[i] + log(l[i]));
    }
}

/* ---- attention backward --------------------------------------------------------------------------- */

/* dq (B,T,NH,HD) rows of head (b,h) assigned; dk_h, dv_h: this head's (T, HD) key/value gradient,
 * row stride ld_kv, assigned; dout, q, out (B,T,NH,HD); k, v (B,T,NKV,HD); lse (B,NH,T).
 * FlashAttention-2 order: key tiles outside, query tiles inside; dk, dv of a key tile accumulate
 * over query tiles, dq rows accumulate over key tiles. ws: lt_cpu_att_item_floats(T, HD). */
static void F(k_att_bwd_head)(float *dq, float *dk_h, float *dv_h, size_t ld_kv, const float *dout, const float *q,
                              const float *k, const float *v, const float *out, const float *lse,
                              const int32_t *kv_start, int T, int NH, int NKV, int HD, float scale, int b, int h,
                              float *ws) {
    const int kvh = h / (NH / NKV);
    const size_t sq = (size_t)NH * HD, skv = (size_t)NKV * HD;
    const size_t base_q = ((size_t)b * T * NH + h) * HD, base_kv = ((size_t)b * T * NKV + kvh) * HD;
    const float *qh = q + base_q, *doh = dout + base_q, *oh = out + base_q;
    float *dqh = dq + base_q;
    const float *kh = k + base_kv, *vh = v + base_kv;
    const float *lseh = lse + ((size_t)b * NH + h) * T;
    const int32_t *ks = kv_start + (size_t)b * T;
    float *D = ws, *Kt = ws + LT_ATT_OFF_KT(T, HD), *Vt = ws + LT_ATT_OFF_VT(T, HD);
    float *P = ws + LT_ATT_OFF_P(T, HD), *dS = ws + LT_ATT_OFF_DS(T, HD);

    for (int t = 0; t < T; t++) {
        const float *a = doh + t * sq, *o = oh + t * sq;
        vf acc = F(set1)(0.0f);
        int d = 0;
        for (; d + LT_W <= HD; d += LT_W) acc += F(ld)(a + d) * F(ld)(o + d);
        float s = F(hsum)(acc);
        for (; d < HD; d++) s += a[d] * o[d];
        D[t] = s;
        memset(dqh + t * sq, 0, (size_t)HD * sizeof(float));
        memset(dk_h + t * ld_kv, 0, (size_t)HD * sizeof(float));
        memset(dv_h + t * ld_kv, 0, (size_t)HD * sizeof(float));
    }
    for (int j0 = 0; j0 < T; j0 += KB) {
        int jn = T - j0 < KB ? T - j0 : KB, jlast = j0 + jn - 1;
        int kt_ready = 0;
        for (int i0 = j0 / QT * QT; i0 < T; i0 += QT) {
            int R = T - i0 < QT ? T - i0 : QT;
            int any = 0;
            for (int i = 0; i < R && !any; i++) any = i0 + i >= j0 && lt_att_kv_lo(ks, i0 + i) <= jlast;
            if (!any) continue;
            if (!kt_ready) {
                F(transpose_tile)(Kt, kh + (size_t)j0 * skv, skv, jn, HD);
                F(transpose_tile)(Vt, vh + (size_t)j0 * skv, skv, jn, HD);
                kt_ready = 1;
            }
            F(mm_s)(P, qh + i0 * sq, sq, R, Kt, HD, scale);  /* scores */
            F(mm_s)(dS, doh + i0 * sq, sq, R, Vt, HD, 1.0f); /* dP = dout v^T */
            for (int i = 0; i < R; i++) {
                int t = i0 + i, lo = lt_att_kv_lo(ks, t);
                float *p = P + (size_t)i * KB, *ds = dS + (size_t)i * KB;
                int a = lo > j0 ? lo - j0 : 0, e = t - j0;
                if (e > jn - 1) e = jn - 1;
                if (a > e) {
                    memset(p, 0, KB * sizeof(float));
                    memset(ds, 0, KB * sizeof(float));
                    continue;
                }
                F(mask_row)(p, a, e, -INFINITY);
                vf vl = F(set1)(lseh[t]), vD = F(set1)(D[t]);
#pragma GCC unroll 16
                for (int u = 0; u < NVK; u++) {
                    vf pu = F(vexp)(F(ld)(p + u * LT_W) - vl);
                    F(st)(p + u * LT_W, pu);
                    F(st)(ds + u * LT_W, pu * (F(ld)(ds + u * LT_W) - vD) * scale);
                }
                /* a query that sees one key has a constant softmax: dS is exactly 0, while P (dP - D)
                 * would leave rounding noise that Adam turns into steps of ~lr on q/k LoRA weights */
                if (lo == t) memset(ds, 0, KB * sizeof(float));
            }
            /* dv (jn, HD) += P^T dout;  dk += dS^T q;  dq (R, HD) += dS k */
            F(mm_acc)(dv_h + j0 * ld_kv, ld_kv, P, 1, KB, doh + i0 * sq, sq, jn, R, HD);
            F(mm_acc)(dk_h + j0 * ld_kv, ld_kv, dS, 1, KB, qh + i0 * sq, sq, jn, R, HD);
            F(mm_acc)(dqh + i0 * sq, sq, dS, KB, 1, kh + (size_t)j0 * skv, skv, R, jn, HD);
        }
    }
}

/* ---- attention decode ----------------------------------------------------------------------------- */

/* out, q (B,NH,HD); kcache, vcache (B,S_cap,NKV,HD): head (b, h) of one new token against keys
 * 0..len-1, online softmax over tiles of KB keys (scores by dot products; the output row is the
 * accumulator). */
static void F(k_att_decode_head)(float *out, const float *q, const float *kcache, const float *vcache, int S_cap,
                                 int len, int NH, int NKV, int HD, float scale, int b, int h) {
    const int kvh = h / (NH / NKV);
    const size_t skv = (size_t)NKV * HD;
    const float *qh = q + ((size_t)b * NH + h) * HD;
    float *oh = out + ((size_t)b * NH + h) * HD;
    const float *kb = kcache + ((size_t)b * S_cap * NKV + kvh) * HD;
    const float *vb = vcache + ((size_t)b * S_cap * NKV + kvh) * HD;
    float s[KB];
    float m = -INFINITY;
    double l = 0.0;
    memset(oh, 0, (size_t)HD * sizeof(float));
    if (len <= 0) return;
    for (int j0 = 0; j0 < len; j0 += KB) {
        int jn = len - j0 < KB ? len - j0 : KB;
        float mt = -INFINITY;
        for (int jj = 0; jj < jn; jj++) {
            const float *kr = kb + (size_t)(j0 + jj) * skv;
            vf acc = F(set1)(0.0f);
            int d = 0;
            for (; d + LT_W <= HD; d += LT_W) acc += F(ld)(qh + d) * F(ld)(kr + d);
            float dot = F(hsum)(acc);
            for (; d < HD; d++) dot += qh[d] * kr[d];
            s[jj] = dot * scale;
            mt = s[jj] > mt ? s[jj] : mt;
        }
        float mnew = mt > m ? mt : m;
        float alpha = expf(m - mnew);
        double ps = 0.0;
        for (int jj = 0; jj < jn; jj++) {
            s[jj] = expf(s[jj] - mnew);
            ps += s[jj];
        }
        l = l * alpha + ps;
        if (alpha != 1.0f) F(k_scale)((size_t)HD, alpha, oh);
        m = mnew;
        F(mm_acc)(oh, 0, s, 0, 1, vb + (size_t)j0 * skv, skv, 1, jn, HD);
    }
    F(k_scale)((size_t)HD, (float)(1.0 / l), oh);
}

#undef vf
#undef vi
#undef vd
#undef vq
#undef KB
#undef QT
#undef NVK
#undef F
#undef LT_AI
#undef LT_CAT2
#undef LT_CAT2_
#undef LT_DW_BLOCK
#undef LT_ROPE_CHUNK
#undef LT_RBA
#undef LT_RBB
#undef LT_CBB

#endif /* LT_ISA_LEVEL != LT_ISA_AVX512_BF16 */

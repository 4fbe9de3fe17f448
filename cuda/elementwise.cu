/*
 * elementwise.cu - axpy, scale, sumsq, all_finite, embedding, SwiGLU forward/backward, dropout,
 *                  bias add/backward, GeGLU forward/backward, soft-capping forward/backward.
 *
 * One thread per element in grid-stride loops (memory-bound; vectorised loads can come later).
 * sumsq is a two-pass reduction in double whose order depends only on n: deterministic.
 */
#include "cuda/cuda_common.cuh"

#define EW_THREADS 256

/* ---- axpy, scale ------------------------------------------------------------------------------ */

/* y (n) += a * x (n) */
__global__ void axpy_kernel(size_t n, float a, const float *x, float *y) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] += a * x[i];
}

/* x (n) *= a */
__global__ void scale_kernel(size_t n, float a, float *x) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] *= a;
}

extern "C" void lt_cuda_axpy(lt_backend *be, size_t n, float a, const float *x, float *y) {
    lt_cuda_enter(be);
    if (!n) return;
    axpy_kernel<<<lt_grid_1d(n, EW_THREADS), EW_THREADS, 0, lt_cuda(be)->stream>>>(n, a, x, y);
    lt_cuda_check(be, "axpy");
}

extern "C" void lt_cuda_scale(lt_backend *be, size_t n, float a, float *x) {
    lt_cuda_enter(be);
    if (!n) return;
    scale_kernel<<<lt_grid_1d(n, EW_THREADS), EW_THREADS, 0, lt_cuda(be)->stream>>>(n, a, x);
    lt_cuda_check(be, "scale");
}

/* x (n,C): row i *= w[i]; grid-stride over all n*C elements */
__global__ void row_scale_kernel(float *x, const float *w, size_t total, int C) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        x[i] *= w[i / (size_t)C];
}

extern "C" void lt_cuda_row_scale(lt_backend *be, float *x, const float *w, int n, int C) {
    lt_cuda_enter(be);
    const size_t total = (size_t)n * C;
    if (!total) return;
    row_scale_kernel<<<lt_grid_1d(total, EW_THREADS), EW_THREADS, 0, lt_cuda(be)->stream>>>(x, w, total, C);
    lt_cuda_check(be, "row_scale");
}

/* ---- sumsq, all_finite ------------------------------------------------------------------------ */

/* x (n) -> part (gridDim.x): each block's share of sum x^2, in double */
__global__ void sumsq_partial_kernel(const float *x, size_t n, double *part) {
    double s = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s += (double)x[i] * (double)x[i];
    s = lt_block_sum(s);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

/* part (nb) -> *result = sum of part, one block, fixed order */
__global__ void sumsq_final_kernel(const double *part, int nb, double *result) {
    double s = 0.0;
    for (int i = threadIdx.x; i < nb; i += blockDim.x) s += part[i];
    s = lt_block_sum(s);
    if (threadIdx.x == 0) *result = s;
}

/* Synchronising; NaN if the device failed (the error is recorded for sync). */
extern "C" double lt_cuda_sumsq(lt_backend *be, size_t n, const float *x) {
    lt_cuda_impl *im = lt_cuda_enter(be);
    size_t nb = (n + (size_t)EW_THREADS * 8 - 1) / ((size_t)EW_THREADS * 8);
    if (nb < 1) nb = 1;
    if (nb > LT_CUDA_RED_BLOCKS) nb = LT_CUDA_RED_BLOCKS;
    double *result = im->red + LT_CUDA_RED_BLOCKS;
    lt_cuda_lock(be); /* the reduction buffer, until the result is read */
    sumsq_partial_kernel<<<(unsigned)nb, EW_THREADS, 0, im->stream>>>(x, n, im->red);
    sumsq_final_kernel<<<1, 1024, 0, im->stream>>>(im->red, (int)nb, result);
    double s = NAN;
    cudaError_t e = cudaGetLastError(); /* a failed launch must not return a stale result */
    if (e == cudaSuccess) e = cudaMemcpyAsync(&s, result, sizeof s, cudaMemcpyDeviceToHost, im->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(im->stream);
    lt_cuda_unlock(be);
    if (e != cudaSuccess) {
        lt_cuda_record(be, LT_ERR_BACKEND, "sumsq", (int)e);
        return NAN;
    }
    return s;
}

/* x (n): *flag = 1 if some x[i] is not finite (flag zeroed before the launch) */
__global__ void all_finite_kernel(const float *x, size_t n, int *flag) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        if (!isfinite(x[i])) *flag = 1;
}

/* Synchronising; 0 if the device failed (the error is recorded for sync). */
extern "C" int lt_cuda_all_finite(lt_backend *be, size_t n, const float *x) {
    lt_cuda_impl *im = lt_cuda_enter(be);
    if (!n) return 1;
    int bad = 1;
    lt_cuda_lock(be); /* the flag, until it is read */
    cudaError_t e = cudaMemsetAsync(im->flag, 0, sizeof(int), im->stream);
    if (e == cudaSuccess) {
        all_finite_kernel<<<lt_grid_1d(n, EW_THREADS), EW_THREADS, 0, im->stream>>>(x, n, im->flag);
        e = cudaGetLastError();
        if (e == cudaSuccess) e = cudaMemcpyAsync(&bad, im->flag, sizeof bad, cudaMemcpyDeviceToHost, im->stream);
    }
    if (e == cudaSuccess) e = cudaStreamSynchronize(im->stream);
    lt_cuda_unlock(be);
    if (e != cudaSuccess) {
        lt_cuda_record(be, LT_ERR_BACKEND, "all_finite", (int)e);
        return 0;
    }
    return bad == 0;
}

/* ---- embedding -------------------------------------------------------------------------------- */

/* out (N,C) = table (vocab,C) [ids (N)]; one block per row */
__global__ void embedding_forward_kernel(float *out, const int32_t *ids, const float *table, int C) {
    const size_t n = blockIdx.x;
    const float *src = table + (size_t)ids[n] * C;
    float *dst = out + n * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dst[c] = src[c];
}

extern "C" void lt_cuda_embedding_forward(lt_backend *be, float *out, const int32_t *ids, const float *table, int N,
                                          int C) {
    lt_cuda_enter(be);
    if (N <= 0 || C <= 0) return;
    embedding_forward_kernel<<<N, (C < EW_THREADS ? 32 * ((C + 31) / 32) : EW_THREADS), 0, lt_cuda(be)->stream>>>(
        out, ids, table, C);
    lt_cuda_check(be, "embedding_forward");
}

/* dst[idx[i]] (C) = src[i] (C); one block per row (rows are distinct: no two blocks write one place) */
__global__ void scatter_rows_kernel(float *dst, const int32_t *idx, const float *src, int C) {
    const size_t i = blockIdx.x;
    float *d = dst + (size_t)idx[i] * C;
    const float *s = src + i * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) d[c] = s[c];
}

extern "C" void lt_cuda_scatter_rows(lt_backend *be, float *dst, const int32_t *idx, const float *src, int n, int C) {
    lt_cuda_impl *im = lt_cuda_enter(be);
    if (n <= 0 || C <= 0) return;
    scatter_rows_kernel<<<n, (C < EW_THREADS ? 32 * ((C + 31) / 32) : EW_THREADS), 0, im->stream>>>(dst, idx, src, C);
    lt_cuda_check(be, "scatter_rows");
}

/* dtable (vocab,C) += dout (N,C) scattered by ids: one thread per column walks the tokens in order, so
 * the sums are deterministic (no atomics) and equal the reference's order */
__global__ void embedding_backward_kernel(float *dtable, const int32_t *ids, const float *dout, int N, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    for (int n = 0; n < N; n++) dtable[(size_t)ids[n] * C + c] += dout[(size_t)n * C + c];
}

extern "C" void lt_cuda_embedding_backward(lt_backend *be, float *dtable, const int32_t *ids, const float *dout, int N,
                                           int C) {
    lt_cuda_enter(be);
    if (N <= 0 || C <= 0) return;
    embedding_backward_kernel<<<(C + EW_THREADS - 1) / EW_THREADS, EW_THREADS, 0, lt_cuda(be)->stream>>>(dtable, ids,
                                                                                                         dout, N, C);
    lt_cuda_check(be, "embedding_backward");
}

/* ---- SwiGLU ----------------------------------------------------------------------------------- */

/* out, gate, up (n): out = silu(gate) up = gate sigmoid(gate) up */
__global__ void swiglu_forward_kernel(float *out, const float *gate, const float *up, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float g = gate[i];
        float sig = 1.0f / (1.0f + expf(-g));
        out[i] = g * sig * up[i];
    }
}

/* dgate, dup, dout, gate, up (n); dgate/dup may alias gate/up (each element is read before it is
 * written, by the same thread).  d silu(g)/dg = sig (1 + g (1 - sig)) */
__global__ void swiglu_backward_kernel(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                                       size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float g = gate[i], u = up[i], go = dout[i];
        float sig = 1.0f / (1.0f + expf(-g));
        dgate[i] = go * u * sig * (1.0f + g * (1.0f - sig));
        dup[i] = go * g * sig;
    }
}

extern "C" void lt_cuda_swiglu_forward(lt_backend *be, float *out, const float *gate, const float *up, size_t n) {
    lt_cuda_enter(be);
    if (!n) return;
    swiglu_forward_kernel<<<lt_grid_1d(n, EW_THREADS), EW_THREADS, 0, lt_cuda(be)->stream>>>(out, gate, up, n);
    lt_cuda_check(be, "swiglu_forward");
}

extern "C" void lt_cuda_swiglu_backward(lt_backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                                        const float *up, size_t n) {
    lt_cuda_enter(be);
    if (!n) return;
    swiglu_backward_kernel<<<lt_grid_1d(n, EW_THREADS), EW_THREADS, 0, lt_cuda(be)->stream>>>(dgate, dup, dout, gate,
                                                                                              up, n);
    lt_cuda_check(be, "swiglu_backward");
}

/* gpt-oss: out = (u + 1) g sigmoid(alpha g), g = min(gate, limit), u = clamp(up, -limit, limit) */
__global__ void swiglu_clamp_forward_kernel(float *out, const float *gate, const float *up, size_t n, float alpha,
                                            float limit) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float g = fminf(gate[i], limit), u = fminf(fmaxf(up[i], -limit), limit);
        out[i] = (u + 1.0f) * g / (1.0f + expf(-alpha * g));
    }
}

/* as swiglu_backward_kernel; a clamp passes the gradient inside its bounds (ends included) */
__global__ void swiglu_clamp_backward_kernel(float *dgate, float *dup, const float *dout, const float *gate,
                                             const float *up, size_t n, float alpha, float limit) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float g0 = gate[i], u0 = up[i], go = dout[i];
        const float g = fminf(g0, limit), u = fminf(fmaxf(u0, -limit), limit);
        const float sig = 1.0f / (1.0f + expf(-alpha * g));
        dgate[i] = g0 <= limit ? go * (u + 1.0f) * sig * (1.0f + alpha * g * (1.0f - sig)) : 0.0f;
        dup[i] = u0 >= -limit && u0 <= limit ? go * g * sig : 0.0f;
    }
}

extern "C" void lt_cuda_swiglu_clamp_forward(lt_backend *be, float *out, const float *gate, const float *up, size_t n,
                                             float alpha, float limit) {
    lt_cuda_enter(be);
    if (!n) return;
    swiglu_clamp_forward_kernel<<<lt_grid_1d(n, EW_THREADS), EW_THREADS, 0, lt_cuda(be)->stream>>>(out, gate, up, n,
                                                                                                   alpha, limit);
    lt_cuda_check(be, "swiglu_clamp_forward");
}

extern "C" void lt_cuda_swiglu_clamp_backward(lt_backend *be, float *dgate, float *dup, const float *dout,
                                              const float *gate, const float *up, size_t n, float alpha, float limit) {
    lt_cuda_enter(be);
    if (!n) return;
    swiglu_clamp_backward_kernel<<<lt_grid_1d(n, EW_THREADS), EW_THREADS, 0, lt_cuda(be)->stream>>>(
        dgate, dup, dout, gate, up, n, alpha, limit);
    lt_cuda_check(be, "swiglu_clamp_backward");
}

/* ---- dropout ---------------------------------------------------------------------------------- */

/* out, inp (n); out may alias inp. keep(i) = hash(seed, offset + i) >= p (bit-identical to the CPU);
 * keep_scale = 1/(1-p) computed once on the host exactly as the reference does. */
__global__ void dropout_kernel(float *out, const float *inp, size_t n, float p, float keep_scale, uint64_t seed,
                               uint64_t offset) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        bool keep = p < 1.0f && lt_hash_uniform(seed, offset + i) >= p;
        out[i] = keep ? inp[i] * keep_scale : 0.0f;
    }
}

extern "C" void lt_cuda_dropout(lt_backend *be, float *out, const float *inp, size_t n, float p, uint64_t seed,
                                uint64_t offset) {
    lt_cuda_enter(be);
    if (!n) return;
    float keep_scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    dropout_kernel<<<lt_grid_1d(n, EW_THREADS), EW_THREADS, 0, lt_cuda(be)->stream>>>(out, inp, n, p, keep_scale, seed,
                                                                                      offset);
    lt_cuda_check(be, "dropout");
}

/* ---- bias add --------------------------------------------------------------------------------- */

/* y (N,C) += b (C) */
__global__ void bias_add_kernel(float *y, const float *b, size_t n, int C) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] += b[i % (size_t)C];
}

/* db (C) += sum_i dy (N,C)[i, c]: one thread per column, rows summed in order (deterministic) */
__global__ void bias_backward_kernel(float *db, const float *dy, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double acc = 0;
    for (int i = 0; i < N; i++) acc += dy[(size_t)i * C + c];
    db[c] = (float)(db[c] + acc);
}

extern "C" void lt_cuda_bias_add(lt_backend *be, float *y, const float *b, int N, int C) {
    lt_cuda_enter(be);
    size_t n = (size_t)N * C;
    if (!n) return;
    bias_add_kernel<<<lt_grid_1d(n, EW_THREADS), EW_THREADS, 0, lt_cuda(be)->stream>>>(y, b, n, C);
    lt_cuda_check(be, "bias_add");
}

extern "C" void lt_cuda_bias_backward(lt_backend *be, float *db, const float *dy, int N, int C) {
    lt_cuda_enter(be);
    if (N <= 0 || C <= 0) return;
    bias_backward_kernel<<<(C + EW_THREADS - 1) / EW_THREADS, EW_THREADS, 0, lt_cuda(be)->stream>>>(db, dy, N, C);
    lt_cuda_check(be, "bias_backward");
}

/* ---- GeGLU (tanh GELU) ------------------------------------------------------------------------ */

#define GELU_K0 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_K1 0.044715f

/* out, gate, up (n): out = 0.5 g (1 + tanh(k0 (g + k1 g^3))) up */
__global__ void geglu_forward_kernel(float *out, const float *gate, const float *up, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float g = gate[i];
        float t = tanhf(GELU_K0 * (g + GELU_K1 * g * g * g));
        out[i] = 0.5f * g * (1.0f + t) * up[i];
    }
}

/* dgate, dup may alias gate, up (read before written by the same thread) */
__global__ void geglu_backward_kernel(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                                      size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float g = gate[i], u = up[i], go = dout[i];
        float t = tanhf(GELU_K0 * (g + GELU_K1 * g * g * g));
        float gelu = 0.5f * g * (1.0f + t);
        float dgelu = 0.5f * (1.0f + t) + 0.5f * g * (1.0f - t * t) * GELU_K0 * (1.0f + 3.0f * GELU_K1 * g * g);
        dgate[i] = go * u * dgelu;
        dup[i] = go * gelu;
    }
}

extern "C" void lt_cuda_geglu_forward(lt_backend *be, float *out, const float *gate, const float *up, size_t n) {
    lt_cuda_enter(be);
    if (!n) return;
    geglu_forward_kernel<<<lt_grid_1d(n, EW_THREADS), EW_THREADS, 0, lt_cuda(be)->stream>>>(out, gate, up, n);
    lt_cuda_check(be, "geglu_forward");
}

extern "C" void lt_cuda_geglu_backward(lt_backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                                       const float *up, size_t n) {
    lt_cuda_enter(be);
    if (!n) return;
    geglu_backward_kernel<<<lt_grid_1d(n, EW_THREADS), EW_THREADS, 0, lt_cuda(be)->stream>>>(dgate, dup, dout, gate, up,
                                                                                             n);
    lt_cuda_check(be, "geglu_backward");
}

/* ---- soft-capping ----------------------------------------------------------------------------- */

/* x (n) = cap tanh(x / cap) */
__global__ void softcap_forward_kernel(float *x, size_t n, float cap) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = cap * tanhf(x[i] / cap);
}

/* dx (n) *= 1 - (y / cap)^2 */
__global__ void softcap_backward_kernel(float *dx, const float *y, size_t n, float cap) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float t = y[i] / cap;
        dx[i] *= 1.0f - t * t;
    }
}

extern "C" void lt_cuda_softcap_forward(lt_backend *be, float *x, size_t n, float cap) {
    lt_cuda_enter(be);
    if (!n) return;
    softcap_forward_kernel<<<lt_grid_1d(n, EW_THREADS), EW_THREADS, 0, lt_cuda(be)->stream>>>(x, n, cap);
    lt_cuda_check(be, "softcap_forward");
}

extern "C" void lt_cuda_softcap_backward(lt_backend *be, float *dx, const float *y, size_t n, float cap) {
    lt_cuda_enter(be);
    if (!n) return;
    softcap_backward_kernel<<<lt_grid_1d(n, EW_THREADS), EW_THREADS, 0, lt_cuda(be)->stream>>>(dx, y, n, cap);
    lt_cuda_check(be, "softcap_backward");
}

/* ---- RoPE channel scale: x (N, n_heads, head_dim), channels < rot_dim of each head *= a ---------- */
__global__ void rope_scale_kernel(float *x, size_t rows, int head_dim, int rot_dim, float a) {
    size_t n = rows * (size_t)rot_dim;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[(i / rot_dim) * head_dim + i % rot_dim] *= a;
}

extern "C" void lt_cuda_rope_scale(lt_backend *be, float *x, int N, int n_heads, int head_dim, int rot_dim, float a) {
    lt_cuda_enter(be);
    size_t rows = (size_t)N * n_heads;
    if (!rows || rot_dim <= 0) return;
    rope_scale_kernel<<<lt_grid_1d(rows * rot_dim, EW_THREADS), EW_THREADS, 0, lt_cuda(be)->stream>>>(x, rows, head_dim,
                                                                                                      rot_dim, a);
    lt_cuda_check(be, "rope_scale");
}

/* ---- DoRA ------------------------------------------------------------------------------------- */

/* one block per row: n = ||w_r||, g = m / n, inv_n = 1 / n (double block sum: deterministic) */
__global__ void dora_norm_kernel(float *g, float *inv_n, const float *m, const float *w, int cols) {
    const float *wr = w + (size_t)blockIdx.x * cols;
    double ss = 0;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) ss += (double)wr[c] * wr[c];
    ss = lt_block_sum(ss);
    if (threadIdx.x == 0) {
        float n = (float)sqrt(ss);
        g[blockIdx.x] = m[blockIdx.x] / n;
        inv_n[blockIdx.x] = 1.0f / n;
    }
}

__global__ void mul_cols_kernel(float *y, const float *g, size_t n, int C) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] *= g[i % (size_t)C];
}

/* one thread per column, rows in order */
__global__ void col_dot_kernel(float *out, const float *a, const float *b, const float *w, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double acc = 0;
    for (int i = 0; i < N; i++) acc += (double)a[(size_t)i * C + c] * b[(size_t)i * C + c];
    out[c] = (float)(out[c] + w[c] * acc);
}

extern "C" void lt_cuda_dora_norm(lt_backend *be, float *g, float *inv_n, const float *m, const float *w, int rows,
                                  int cols) {
    lt_cuda_enter(be);
    if (rows <= 0 || cols <= 0) return;
    dora_norm_kernel<<<rows, EW_THREADS, 0, lt_cuda(be)->stream>>>(g, inv_n, m, w, cols);
    lt_cuda_check(be, "dora_norm");
}

extern "C" void lt_cuda_mul_cols(lt_backend *be, float *y, const float *g, int N, int C) {
    lt_cuda_enter(be);
    size_t n = (size_t)N * C;
    if (!n) return;
    mul_cols_kernel<<<lt_grid_1d(n, EW_THREADS), EW_THREADS, 0, lt_cuda(be)->stream>>>(y, g, n, C);
    lt_cuda_check(be, "mul_cols");
}

extern "C" void lt_cuda_col_dot(lt_backend *be, float *out, const float *a, const float *b, const float *w, int N,
                                int C) {
    lt_cuda_enter(be);
    if (N <= 0 || C <= 0) return;
    col_dot_kernel<<<(C + EW_THREADS - 1) / EW_THREADS, EW_THREADS, 0, lt_cuda(be)->stream>>>(out, a, b, w, N, C);
    lt_cuda_check(be, "col_dot");
}

/*
 * rope.cu - rotary position embedding (Hugging Face rotate_half pairing), in place.
 *
 *   x'[j]       = x[j] cos(p f_j) - x[j+d/2] sin(p f_j)
 *   x'[j+d/2]   = x[j+d/2] cos(p f_j) + x[j] sin(p f_j)        (j < d/2, d = rot_dim)
 * backward rotates the gradient by the opposite angle (the rotation is orthogonal).
 * The angle is (float)pos * inv_freq[j] in float as in the reference; sincosf (full range reduction,
 * no fast math) for its cosine and sine.
 */
#include "cuda/cuda_common.cuh"

/* x (N, n_heads, head_dim) in place, pos (N), inv_freq (half); dir +1 forward, -1 backward.
 * One thread per (n, j), j < half, looping over the heads (cos/sin computed once per pair). */
__global__ void rope_kernel(float *x, const int32_t *pos, const float *inv_freq, int N, int n_heads, int head_dim,
                            int half, float dir) {
    const size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * half) return;
    const size_t n = idx / half;
    const int j = (int)(idx % half);
    const float ang = (float)pos[n] * inv_freq[j];
    float s, c;
    sincosf(ang, &s, &c);
    s *= dir;
    float *xn = x + n * n_heads * head_dim;
    for (int h = 0; h < n_heads; h++) {
        float *xh = xn + (size_t)h * head_dim;
        const float x1 = xh[j], x2 = xh[j + half];
        xh[j] = x1 * c - x2 * s;
        xh[j + half] = x2 * c + x1 * s;
    }
}

static void rope(lt_backend *be, float *x, const int32_t *pos, const float *inv_freq, int N, int n_heads, int head_dim,
                 int rot_dim, float dir, const char *what) {
    const int half = rot_dim / 2;
    if (N <= 0 || n_heads <= 0 || half <= 0) return;
    if (rot_dim > head_dim) {
        lt_cuda_record(be, LT_ERR_INTERNAL, "rope: rot_dim > head_dim", 0);
        return;
    }
    const size_t total = (size_t)N * half;
    rope_kernel<<<(unsigned)((total + 255) / 256), 256, 0, lt_cuda(be)->stream>>>(x, pos, inv_freq, N, n_heads,
                                                                                  head_dim, half, dir);
    lt_cuda_check(be, what);
}

extern "C" void lt_cuda_rope_forward(lt_backend *be, float *x, const int32_t *pos, const float *inv_freq, int N,
                                     int n_heads, int head_dim, int rot_dim) {
    lt_cuda_enter(be);
    rope(be, x, pos, inv_freq, N, n_heads, head_dim, rot_dim, 1.0f, "rope_forward");
}

extern "C" void lt_cuda_rope_backward(lt_backend *be, float *dx, const int32_t *pos, const float *inv_freq, int N,
                                      int n_heads, int head_dim, int rot_dim) {
    lt_cuda_enter(be);
    rope(be, dx, pos, inv_freq, N, n_heads, head_dim, rot_dim, -1.0f, "rope_backward");
}

/*
 * attention.cu - causal grouped-query attention: forward (flash-style), backward, decode.
 *
 * Shapes (backend.h): q, out, dout, dq (B,T,NH,HD); k, v, dk, dv (B,T,NKV,HD); lse, D (B,NH,T);
 * kv_start (B*T): query t of a row attends to keys lo(t) .. t, lo(t) = kv_start clamped to [0, t]
 * (lt_att_lo, as ref_ops.h). Query head h uses kv head h / (NH/NKV). scale multiplies q.k.
 *
 * Math (the reference's, cpu/ref_ops.c):
 *   s_tj = scale q_t.k_j,  lse_t = log sum_j exp(s_tj),  p_tj = exp(s_tj - lse_t),  out_t = sum_j p_tj v_j
 *   D_t = dout_t.out_t,  ds_tj = p_tj (dout_t.v_j - D_t), except ds_tj = 0 exactly when query t sees
 *   a single key (lo(t) == t: its softmax is constant; backend.h forbids leaving rounding noise there)
 *   dv_j = sum_t p_tj dout_t,  dk_j = scale sum_t ds_tj q_t,  dq_t = scale sum_j ds_tj k_j
 *
 * Two kernel families:
 *  - tiled (head_dim <= 128, padded to HDP = 64 or 128 with zeros): 256 threads own a 64-row tile
 *    (queries, or keys for dk/dv) and stream tiles of the other side through shared memory; each
 *    thread computes a 4 x (columns) block of the score tile in registers. Forward: online softmax,
 *    O(T) memory, writes lse. Backward: recomputes p from q, k and lse; D = rowsum(dout*out) goes to
 *    the caller's scratch first; then one kernel per key tile accumulates dk, dv over every query head
 *    of its kv group and every query tile (no atomics), and one kernel per query tile accumulates dq.
 *    Causal block skipping: only tiles that some row of the block can see are visited.
 *  - row-wise (any head_dim, used above 128 or where the tiled kernels' shared memory does not fit):
 *    one warp per query (or key) row, vectors in shared memory, warp-reduced dot products. Slow but
 *    simple; decode always uses it (one block per (b, h), keys split over the warps).
 * Every sum has a fixed order, so results are deterministic (run to run, not across kernel choices).
 * Accumulation is in float; the reference sums in double, so agreement is to ~1e-5 relative.
 */
#include <limits.h>
#include <stdio.h>

#include "cuda/cuda_common.cuh"

#define ATT_TILE 64         /* rows a tiled block owns */
#define ATT_THREADS 256     /* 16 x 16: ty = tid / 16 owns rows ty*4 .. ty*4+3, tx = tid % 16 the columns tx + 16 c */
#define ATT_SMEM_SLACK 1024 /* static shared memory of the kernels, kept free of the opt-in limit */

/* Dynamic shared memory (floats) of the tiled kernels; rows are padded by one float against bank
 * conflicts. QC/KC: columns of the score tile per thread (the streamed tile has 16*QC rows). */
static constexpr size_t att_fwd_floats(int HDP) {
    return 2 * (size_t)ATT_TILE * (HDP + 1) + (size_t)ATT_TILE * (ATT_TILE + 1);
}
static constexpr size_t att_bwd_kv_floats(int HDP, int QC) {
    return 2 * (size_t)ATT_TILE * (HDP + 1) + 2 * (size_t)(16 * QC) * (HDP + 1) + 2 * (size_t)ATT_TILE * (16 * QC + 1);
}
static constexpr size_t att_bwd_q_floats(int HDP, int KC) {
    return 2 * (size_t)ATT_TILE * (HDP + 1) + 2 * (size_t)(16 * KC) * (HDP + 1) + (size_t)ATT_TILE * (16 * KC + 1);
}

/* Sum / max over the 16 lanes that share a row (lanes 0-15 and 16-31 of a warp are two groups). */
__device__ __forceinline__ float att_sum16(float v) {
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(LT_FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ float att_max16(float v) {
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(LT_FULL_MASK, v, o));
    return v;
}

/* dst (rows, HDP+1) in shared memory <- rows r0 .. r0+rows-1 of a (T, HD) slice whose row t starts at
 * src + t*stride; rows past T and channels past HD are zero. Whole block, coalesced along channels. */
template <int HDP>
__device__ __forceinline__ void att_load_tile(float *dst, int rows, const float *src, size_t stride, int r0, int T,
                                              int HD) {
    for (int idx = threadIdx.x; idx < rows * HDP; idx += blockDim.x) {
        const int r = idx / HDP, d = idx % HDP, t = r0 + r;
        dst[r * (HDP + 1) + d] = (t < T && d < HD) ? src[(size_t)t * stride + d] : 0.0f;
    }
}

/* ================================================================================================ */
/* forward                                                                                          */
/* ================================================================================================ */

/* out (B,T,NH,HD), lse (B,NH,T) <- q (B,T,NH,HD), k, v (B,T,NKV,HD), kv_start (B*T).
 * grid (ceil(T/64), NH, B), block 256: 64 queries of head h of row b against the 64-key tiles any of
 * them sees, with an online softmax (running max m and sum l per query).
 * Thread (ty, tx): queries ty*4+i (i < 4); keys tx+16jj (jj < 4) of the score tile; output channels
 * tx+16c (c < HDP/16).
 * smem: Qs (64, HDP+1); KVs (64, HDP+1) holds the key tile, then the value tile; Ps (64, 65). */
template <int HDP>
__global__ void __launch_bounds__(ATT_THREADS)
    att_fwd_kernel(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *kv_start,
                   int T, int NH, int NKV, int HD, float scale) {
    constexpr int LD = HDP + 1, NC = HDP / 16, LDP = ATT_TILE + 1;
    extern __shared__ float smem[];
    float *Qs = smem, *KVs = Qs + ATT_TILE * LD, *Ps = KVs + ATT_TILE * LD;
    __shared__ int s_kmin;
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int q0 = blockIdx.x * ATT_TILE, h = blockIdx.y, b = blockIdx.z;
    const int kvh = h / (NH / NKV);
    const size_t qstride = (size_t)NH * HD, kvstride = (size_t)NKV * HD;
    const float *qb = q + (size_t)b * T * qstride + (size_t)h * HD;
    const float *kb = k + (size_t)b * T * kvstride + (size_t)kvh * HD;
    const float *vb = v + (size_t)b * T * kvstride + (size_t)kvh * HD;
    const int32_t *ks = kv_start + (size_t)b * T;

    if (tid == 0) s_kmin = INT_MAX;
    att_load_tile<HDP>(Qs, ATT_TILE, qb, qstride, q0, T, HD);
    int trow[4], lo[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        trow[i] = q0 + ty * 4 + i;
        lo[i] = trow[i] < T ? lt_att_lo(ks, trow[i]) : 0;
    }
    __syncthreads();
    if (tid < ATT_TILE && q0 + tid < T) atomicMin(&s_kmin, lt_att_lo(ks, q0 + tid));
    __syncthreads();
    const int kfirst = (s_kmin / ATT_TILE) * ATT_TILE, klast = min(q0 + ATT_TILE - 1, T - 1);

    float m[4], l[4], acc[4][NC];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < NC; c++) acc[i][c] = 0.0f;
    }

    for (int k0 = kfirst; k0 <= klast; k0 += ATT_TILE) {
        /* scores of the tile: s[i][jj] = q_(ty*4+i) . k_(k0+tx+16jj) */
        att_load_tile<HDP>(KVs, ATT_TILE, kb, kvstride, k0, T, HD);
        __syncthreads();
        float s[4][4];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int jj = 0; jj < 4; jj++) s[i][jj] = 0.0f;
        for (int d = 0; d < HDP; d++) {
            float qv[4], kv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) qv[i] = Qs[(ty * 4 + i) * LD + d];
#pragma unroll
            for (int jj = 0; jj < 4; jj++) kv[jj] = KVs[(tx + 16 * jj) * LD + d];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int jj = 0; jj < 4; jj++) s[i][jj] += qv[i] * kv[jj];
        }
        /* mask, online softmax update, p to shared memory */
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float mt = -INFINITY;
#pragma unroll
            for (int jj = 0; jj < 4; jj++) {
                const int j = k0 + tx + 16 * jj;
                const bool ok = trow[i] < T && j >= lo[i] && j <= trow[i];
                s[i][jj] = ok ? s[i][jj] * scale : -INFINITY;
                mt = fmaxf(mt, s[i][jj]);
            }
            mt = att_max16(mt);
            const float mn = fmaxf(m[i], mt);
            float corr = 1.0f, rs = 0.0f, p[4];
#pragma unroll
            for (int jj = 0; jj < 4; jj++) p[jj] = 0.0f;
            if (mn != -INFINITY) { /* (uniform over the 16 lanes of the row) */
                corr = expf(m[i] - mn);
#pragma unroll
                for (int jj = 0; jj < 4; jj++) {
                    p[jj] = expf(s[i][jj] - mn);
                    rs += p[jj];
                }
            }
            rs = att_sum16(rs);
            l[i] = l[i] * corr + rs;
            m[i] = mn;
#pragma unroll
            for (int c = 0; c < NC; c++) acc[i][c] *= corr;
#pragma unroll
            for (int jj = 0; jj < 4; jj++) Ps[(ty * 4 + i) * LDP + tx + 16 * jj] = p[jj];
        }
        __syncthreads(); /* the key tile is no longer read; Ps complete */
        att_load_tile<HDP>(KVs, ATT_TILE, vb, kvstride, k0, T, HD);
        __syncthreads();
        /* acc[i][c] += sum_j p[i][j] v_j[tx+16c] */
        for (int j = 0; j < ATT_TILE; j++) {
            float pr[4];
#pragma unroll
            for (int i = 0; i < 4; i++) pr[i] = Ps[(ty * 4 + i) * LDP + j];
#pragma unroll
            for (int c = 0; c < NC; c++) {
                const float vv = KVs[j * LD + tx + 16 * c];
#pragma unroll
                for (int i = 0; i < 4; i++) acc[i][c] += pr[i] * vv;
            }
        }
        __syncthreads(); /* before the next tile overwrites KVs and Ps */
    }

#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (trow[i] >= T) continue;
        const float inv = 1.0f / l[i];
        float *o = out + ((size_t)b * T + trow[i]) * qstride + (size_t)h * HD;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const int d = tx + 16 * c;
            if (d < HD) o[d] = acc[i][c] * inv;
        }
        if (tx == 0) lse[((size_t)b * NH + h) * T + trow[i]] = m[i] + logf(l[i]);
    }
}

/* ---- row-wise kernels (any head_dim) ------------------------------------------------------------ */

/* One warp, one query: online softmax over keys j0 .. j1-1 (key j at kb + j*stride, its value at
 * vb + j*stride). qv (HD) is read, acc (HD) written: both in shared memory, lane owning channels
 * lane, lane+32, ... On return acc = sum_j exp(s_j - m) v_j, m the max score, l = sum_j exp(s_j - m)
 * (m = -inf, l = 0, acc = 0 for an empty range). */
__device__ void att_warp_row(const float *qv, float *acc, const float *kb, const float *vb, size_t stride, int j0,
                             int j1, int HD, float scale, float *m_out, float *l_out) {
    const int lane = threadIdx.x & 31;
    float m = -INFINITY, l = 0.0f;
    for (int d = lane; d < HD; d += 32) acc[d] = 0.0f;
    for (int j = j0; j < j1; j++) {
        const float *kj = kb + (size_t)j * stride, *vj = vb + (size_t)j * stride;
        float part = 0.0f;
        for (int d = lane; d < HD; d += 32) part += qv[d] * kj[d];
        const float s = lt_warp_sum(part) * scale;
        const float mn = fmaxf(m, s);
        const float corr = expf(m - mn), p = expf(s - mn);
        l = l * corr + p;
        for (int d = lane; d < HD; d += 32) acc[d] = acc[d] * corr + p * vj[d];
        m = mn;
    }
    *m_out = m;
    *l_out = l;
}

/* out, lse <- q, k, v as att_fwd_kernel. One warp per query row r = (b*T + t)*NH + h; grid
 * ceil(B*T*NH / W), block 32 W. smem: per warp qv (HD), acc (HD). */
__global__ void att_fwd_rowwise_kernel(float *out, float *lse, const float *q, const float *k, const float *v,
                                       const int32_t *kv_start, int B, int T, int NH, int NKV, int HD, float scale) {
    extern __shared__ float smem[];
    const int W = blockDim.x >> 5, w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const size_t r = (size_t)blockIdx.x * W + w;
    if (r >= (size_t)B * T * NH) return; /* whole warp; no block barrier below */
    const int h = (int)(r % NH), t = (int)((r / NH) % T), b = (int)(r / NH / T);
    const int kvh = h / (NH / NKV);
    float *qv = smem + (size_t)w * 2 * HD, *acc = qv + HD;
    for (int d = lane; d < HD; d += 32) qv[d] = q[r * HD + d];
    __syncwarp();
    const size_t kvstride = (size_t)NKV * HD;
    const float *kb = k + (size_t)b * T * kvstride + (size_t)kvh * HD;
    const float *vb = v + (size_t)b * T * kvstride + (size_t)kvh * HD;
    float m, l;
    att_warp_row(qv, acc, kb, vb, kvstride, lt_att_lo(kv_start + (size_t)b * T, t), t + 1, HD, scale, &m, &l);
    const float inv = 1.0f / l;
    for (int d = lane; d < HD; d += 32) out[r * HD + d] = acc[d] * inv;
    if (lane == 0) lse[((size_t)b * NH + h) * T + t] = m + logf(l);
}

/* ================================================================================================ */
/* backward                                                                                         */
/* ================================================================================================ */

/* D (B,NH,T) = rowsum(dout * out); one warp per query row r = (b*T + t)*NH + h. */
__global__ void att_bwd_D_kernel(float *D, const float *dout, const float *out, int B, int T, int NH, int HD) {
    const size_t r = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= (size_t)B * T * NH) return;
    const int lane = threadIdx.x & 31;
    float s = 0.0f;
    for (int d = lane; d < HD; d += 32) s += dout[r * HD + d] * out[r * HD + d];
    s = lt_warp_sum(s);
    if (lane == 0) {
        const int h = (int)(r % NH), t = (int)((r / NH) % T), b = (int)(r / NH / T);
        D[((size_t)b * NH + h) * T + t] = s;
    }
}

/* dk, dv (B,T,NKV,HD) ASSIGNED <- dout, q (B,T,NH,HD), k, v (B,T,NKV,HD), lse, D (B,NH,T).
 * grid (ceil(T/64), NKV, B), block 256: 64 keys of kv head kvh of row b; loops over the G query heads
 * of the group and over the query tiles (BQ = 16 QC queries) that can see these keys, so dk and dv
 * are complete sums written once (no atomics, fixed order).
 * Thread (ty, tx): keys ty*4+i; queries tx+16jj (jj < QC) of the transposed score tile; channels tx+16c.
 *   pT[j][t] = exp(scale q_t.k_j - lse_t) (0 where masked), dsT[j][t] = pT (dout_t.v_j - D_t)
 *   (dsT = 0 for a query that sees a single key)
 *   dv_j += sum_t pT dout_t,  dk_j += sum_t dsT q_t  (times scale at the end)
 * smem: Ks, Vs (64, HDP+1); Qs, dOs (BQ, HDP+1); Ps, dSs (64, BQ+1). */
template <int HDP, int QC>
__global__ void __launch_bounds__(ATT_THREADS)
    att_bwd_kv_kernel(float *dk, float *dv, const float *dout, const float *q, const float *k, const float *v,
                      const float *lse, const float *Dbuf, const int32_t *kv_start, int T, int NH, int NKV, int HD,
                      float scale) {
    constexpr int LD = HDP + 1, NC = HDP / 16, BQ = 16 * QC, LDP = BQ + 1;
    extern __shared__ float smem[];
    float *Ks = smem, *Vs = Ks + ATT_TILE * LD, *Qs = Vs + ATT_TILE * LD, *dOs = Qs + BQ * LD;
    float *Ps = dOs + BQ * LD, *dSs = Ps + ATT_TILE * LDP;
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int k0 = blockIdx.x * ATT_TILE, kvh = blockIdx.y, b = blockIdx.z;
    const int G = NH / NKV;
    const size_t qstride = (size_t)NH * HD, kvstride = (size_t)NKV * HD;
    const int32_t *ks = kv_start + (size_t)b * T;
    att_load_tile<HDP>(Ks, ATT_TILE, k + (size_t)b * T * kvstride + (size_t)kvh * HD, kvstride, k0, T, HD);
    att_load_tile<HDP>(Vs, ATT_TILE, v + (size_t)b * T * kvstride + (size_t)kvh * HD, kvstride, k0, T, HD);
    const int klast = min(k0 + ATT_TILE - 1, T - 1);
    int krow[4];
#pragma unroll
    for (int i = 0; i < 4; i++) krow[i] = k0 + ty * 4 + i;

    float accK[4][NC], accV[4][NC];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int c = 0; c < NC; c++) accK[i][c] = accV[i][c] = 0.0f;

    for (int g = 0; g < G; g++) {
        const int h = kvh * G + g;
        const float *qb = q + (size_t)b * T * qstride + (size_t)h * HD;
        const float *dob = dout + (size_t)b * T * qstride + (size_t)h * HD;
        const float *lseb = lse + ((size_t)b * NH + h) * T, *Db = Dbuf + ((size_t)b * NH + h) * T;
        for (int q0 = (k0 / BQ) * BQ; q0 < T; q0 += BQ) { /* queries before k0 see none of our keys */
            int tcol[QC], lo[QC];
            float lse_c[QC], D_c[QC];
            int sees = 0;
#pragma unroll
            for (int jj = 0; jj < QC; jj++) {
                const int t = q0 + tx + 16 * jj;
                tcol[jj] = t;
                lo[jj] = t < T ? lt_att_lo(ks, t) : INT_MAX;
                lse_c[jj] = t < T ? lseb[t] : 0.0f;
                D_c[jj] = t < T ? Db[t] : 0.0f;
                sees |= lo[jj] <= klast;
            }
            /* skip a tile none of whose queries sees our keys (packed sequences); uniform, and a barrier */
            if (!__syncthreads_or(sees)) continue;
            att_load_tile<HDP>(Qs, BQ, qb, qstride, q0, T, HD);
            att_load_tile<HDP>(dOs, BQ, dob, qstride, q0, T, HD);
            __syncthreads();
            /* st = k.q, dpt = v.dout for the thread's 4 keys x QC queries */
            float st[4][QC], dpt[4][QC];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int jj = 0; jj < QC; jj++) st[i][jj] = dpt[i][jj] = 0.0f;
            for (int d = 0; d < HDP; d++) {
                float kr[4], vr[4], qc[QC], oc[QC];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    kr[i] = Ks[(ty * 4 + i) * LD + d];
                    vr[i] = Vs[(ty * 4 + i) * LD + d];
                }
#pragma unroll
                for (int jj = 0; jj < QC; jj++) {
                    qc[jj] = Qs[(tx + 16 * jj) * LD + d];
                    oc[jj] = dOs[(tx + 16 * jj) * LD + d];
                }
#pragma unroll
                for (int i = 0; i < 4; i++)
#pragma unroll
                    for (int jj = 0; jj < QC; jj++) {
                        st[i][jj] += kr[i] * qc[jj];
                        dpt[i][jj] += vr[i] * oc[jj];
                    }
            }
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int jj = 0; jj < QC; jj++) {
                    const int j = krow[i], t = tcol[jj];
                    const bool ok = t < T && j <= t && j >= lo[jj];
                    const float p = ok ? expf(st[i][jj] * scale - lse_c[jj]) : 0.0f;
                    Ps[(ty * 4 + i) * LDP + tx + 16 * jj] = p;
                    dSs[(ty * 4 + i) * LDP + tx + 16 * jj] = lo[jj] == t ? 0.0f : p * (dpt[i][jj] - D_c[jj]);
                }
            __syncthreads();
            /* accV[i][c] += sum_t pT[i][t] dout_t[tx+16c], accK likewise with dsT and q */
            for (int t = 0; t < BQ; t++) {
                float pr[4], sr[4];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    pr[i] = Ps[(ty * 4 + i) * LDP + t];
                    sr[i] = dSs[(ty * 4 + i) * LDP + t];
                }
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    const float o = dOs[t * LD + tx + 16 * c], qq = Qs[t * LD + tx + 16 * c];
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        accV[i][c] += pr[i] * o;
                        accK[i][c] += sr[i] * qq;
                    }
                }
            }
            __syncthreads(); /* before the next tile overwrites Qs, dOs, Ps, dSs */
        }
    }

#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (krow[i] >= T) continue;
        const size_t o = ((size_t)b * T + krow[i]) * kvstride + (size_t)kvh * HD;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const int d = tx + 16 * c;
            if (d < HD) {
                dk[o + d] = scale * accK[i][c];
                dv[o + d] = accV[i][c];
            }
        }
    }
}

/* dq (B,T,NH,HD) ASSIGNED <- dout, q, k, v, lse, D as above.
 * grid (ceil(T/64), NH, B), block 256: 64 queries of head h of row b against the key tiles
 * (BK = 16 KC keys) they see.
 * Thread (ty, tx): queries ty*4+i; keys tx+16jj (jj < KC) of the score tile; channels tx+16c.
 *   ds[t][j] = p (dout_t.v_j - D_t) (0 for a query that sees a single key),  dq_t = scale sum_j ds[t][j] k_j
 * smem: Qs, dOs (64, HDP+1); Ks, Vs (BK, HDP+1); dSs (64, BK+1). */
template <int HDP, int KC>
__global__ void __launch_bounds__(ATT_THREADS)
    att_bwd_q_kernel(float *dq, const float *dout, const float *q, const float *k, const float *v, const float *lse,
                     const float *Dbuf, const int32_t *kv_start, int T, int NH, int NKV, int HD, float scale) {
    constexpr int LD = HDP + 1, NC = HDP / 16, BK = 16 * KC, LDS = BK + 1;
    extern __shared__ float smem[];
    float *Qs = smem, *dOs = Qs + ATT_TILE * LD, *Ks = dOs + ATT_TILE * LD, *Vs = Ks + BK * LD, *dSs = Vs + BK * LD;
    __shared__ int s_kmin;
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int q0 = blockIdx.x * ATT_TILE, h = blockIdx.y, b = blockIdx.z;
    const int kvh = h / (NH / NKV);
    const size_t qstride = (size_t)NH * HD, kvstride = (size_t)NKV * HD;
    const float *kb = k + (size_t)b * T * kvstride + (size_t)kvh * HD;
    const float *vb = v + (size_t)b * T * kvstride + (size_t)kvh * HD;
    const float *lseb = lse + ((size_t)b * NH + h) * T, *Db = Dbuf + ((size_t)b * NH + h) * T;
    const int32_t *ks = kv_start + (size_t)b * T;

    if (tid == 0) s_kmin = INT_MAX;
    att_load_tile<HDP>(Qs, ATT_TILE, q + (size_t)b * T * qstride + (size_t)h * HD, qstride, q0, T, HD);
    att_load_tile<HDP>(dOs, ATT_TILE, dout + (size_t)b * T * qstride + (size_t)h * HD, qstride, q0, T, HD);
    int trow[4], lo[4];
    float lse_r[4], D_r[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int t = q0 + ty * 4 + i;
        trow[i] = t;
        lo[i] = t < T ? lt_att_lo(ks, t) : 0;
        lse_r[i] = t < T ? lseb[t] : 0.0f;
        D_r[i] = t < T ? Db[t] : 0.0f;
    }
    __syncthreads();
    if (tid < ATT_TILE && q0 + tid < T) atomicMin(&s_kmin, lt_att_lo(ks, q0 + tid));
    __syncthreads();
    const int kfirst = (s_kmin / BK) * BK, klast = min(q0 + ATT_TILE - 1, T - 1);

    float acc[4][NC];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int c = 0; c < NC; c++) acc[i][c] = 0.0f;

    for (int k0 = kfirst; k0 <= klast; k0 += BK) {
        att_load_tile<HDP>(Ks, BK, kb, kvstride, k0, T, HD);
        att_load_tile<HDP>(Vs, BK, vb, kvstride, k0, T, HD);
        __syncthreads();
        float s[4][KC], dp[4][KC];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int jj = 0; jj < KC; jj++) s[i][jj] = dp[i][jj] = 0.0f;
        for (int d = 0; d < HDP; d++) {
            float qr[4], orow[4], kc[KC], vc[KC];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                qr[i] = Qs[(ty * 4 + i) * LD + d];
                orow[i] = dOs[(ty * 4 + i) * LD + d];
            }
#pragma unroll
            for (int jj = 0; jj < KC; jj++) {
                kc[jj] = Ks[(tx + 16 * jj) * LD + d];
                vc[jj] = Vs[(tx + 16 * jj) * LD + d];
            }
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int jj = 0; jj < KC; jj++) {
                    s[i][jj] += qr[i] * kc[jj];
                    dp[i][jj] += orow[i] * vc[jj];
                }
        }
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int jj = 0; jj < KC; jj++) {
                const int t = trow[i], j = k0 + tx + 16 * jj;
                const bool ok = t < T && j >= lo[i] && j <= t;
                const float p = ok ? expf(s[i][jj] * scale - lse_r[i]) : 0.0f;
                dSs[(ty * 4 + i) * LDS + tx + 16 * jj] = lo[i] == t ? 0.0f : p * (dp[i][jj] - D_r[i]);
            }
        __syncthreads();
        /* acc[i][c] += sum_j ds[i][j] k_j[tx+16c] */
        for (int j = 0; j < BK; j++) {
            float sr[4];
#pragma unroll
            for (int i = 0; i < 4; i++) sr[i] = dSs[(ty * 4 + i) * LDS + j];
#pragma unroll
            for (int c = 0; c < NC; c++) {
                const float kk = Ks[j * LD + tx + 16 * c];
#pragma unroll
                for (int i = 0; i < 4; i++) acc[i][c] += sr[i] * kk;
            }
        }
        __syncthreads(); /* before the next tile overwrites Ks, Vs, dSs */
    }

#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (trow[i] >= T) continue;
        float *o = dq + ((size_t)b * T + trow[i]) * qstride + (size_t)h * HD;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const int d = tx + 16 * c;
            if (d < HD) o[d] = scale * acc[i][c];
        }
    }
}

/* dq ASSIGNED, row-wise: one warp per query row r = (b*T + t)*NH + h; smem per warp qv, ov, acc (HD each). */
__global__ void att_bwd_q_rowwise_kernel(float *dq, const float *dout, const float *q, const float *k, const float *v,
                                         const float *lse, const float *Dbuf, const int32_t *kv_start, int B, int T,
                                         int NH, int NKV, int HD, float scale) {
    extern __shared__ float smem[];
    const int W = blockDim.x >> 5, w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const size_t r = (size_t)blockIdx.x * W + w;
    if (r >= (size_t)B * T * NH) return;
    const int h = (int)(r % NH), t = (int)((r / NH) % T), b = (int)(r / NH / T);
    const int kvh = h / (NH / NKV);
    float *qv = smem + (size_t)w * 3 * HD, *ov = qv + HD, *acc = ov + HD;
    for (int d = lane; d < HD; d += 32) {
        qv[d] = q[r * HD + d];
        ov[d] = dout[r * HD + d];
        acc[d] = 0.0f;
    }
    __syncwarp();
    const size_t kvstride = (size_t)NKV * HD;
    const float *kb = k + (size_t)b * T * kvstride + (size_t)kvh * HD;
    const float *vb = v + (size_t)b * T * kvstride + (size_t)kvh * HD;
    const float L = lse[((size_t)b * NH + h) * T + t], Dt = Dbuf[((size_t)b * NH + h) * T + t];
    const int lo = lt_att_lo(kv_start + (size_t)b * T, t);
    for (int j = lo; j <= t && lo < t; j++) { /* a single key (lo == t): dq = 0 exactly */
        const float *kj = kb + (size_t)j * kvstride, *vj = vb + (size_t)j * kvstride;
        float sq = 0.0f, sv = 0.0f;
        for (int d = lane; d < HD; d += 32) {
            sq += qv[d] * kj[d];
            sv += ov[d] * vj[d];
        }
        sq = lt_warp_sum(sq);
        sv = lt_warp_sum(sv);
        const float p = expf(sq * scale - L), ds = p * (sv - Dt);
        for (int d = lane; d < HD; d += 32) acc[d] += ds * kj[d];
    }
    for (int d = lane; d < HD; d += 32) dq[r * HD + d] = scale * acc[d];
}

/* dk, dv ASSIGNED, row-wise: one warp per key row r = (b*T + j)*NKV + kvh, summing over the heads of
 * its group and the queries t >= j that see it; smem per warp kv_, vv, acck, accv (HD each). */
__global__ void att_bwd_kv_rowwise_kernel(float *dk, float *dv, const float *dout, const float *q, const float *k,
                                          const float *v, const float *lse, const float *Dbuf, const int32_t *kv_start,
                                          int B, int T, int NH, int NKV, int HD, float scale) {
    extern __shared__ float smem[];
    const int W = blockDim.x >> 5, w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const size_t r = (size_t)blockIdx.x * W + w;
    if (r >= (size_t)B * T * NKV) return;
    const int kvh = (int)(r % NKV), j = (int)((r / NKV) % T), b = (int)(r / NKV / T);
    const int G = NH / NKV;
    float *kv_ = smem + (size_t)w * 4 * HD, *vv = kv_ + HD, *acck = vv + HD, *accv = acck + HD;
    for (int d = lane; d < HD; d += 32) {
        kv_[d] = k[r * HD + d];
        vv[d] = v[r * HD + d];
        acck[d] = accv[d] = 0.0f;
    }
    __syncwarp();
    const size_t qstride = (size_t)NH * HD;
    const int32_t *ks = kv_start + (size_t)b * T;
    for (int g = 0; g < G; g++) {
        const int h = kvh * G + g;
        const float *lseb = lse + ((size_t)b * NH + h) * T, *Db = Dbuf + ((size_t)b * NH + h) * T;
        for (int t = j; t < T; t++) {
            const int lo = lt_att_lo(ks, t);
            if (lo > j) continue;
            const float *qt = q + ((size_t)b * T + t) * qstride + (size_t)h * HD;
            const float *ot = dout + ((size_t)b * T + t) * qstride + (size_t)h * HD;
            float sq = 0.0f, sv = 0.0f;
            for (int d = lane; d < HD; d += 32) {
                sq += qt[d] * kv_[d];
                sv += ot[d] * vv[d];
            }
            sq = lt_warp_sum(sq);
            sv = lt_warp_sum(sv);
            const float p = expf(sq * scale - lseb[t]), ds = lo == t ? 0.0f : p * (sv - Db[t]);
            for (int d = lane; d < HD; d += 32) {
                accv[d] += p * ot[d];
                acck[d] += ds * qt[d];
            }
        }
    }
    for (int d = lane; d < HD; d += 32) {
        dk[r * HD + d] = scale * acck[d];
        dv[r * HD + d] = accv[d];
    }
}

/* ================================================================================================ */
/* decode                                                                                           */
/* ================================================================================================ */

/* out, q (B,NH,HD); kcache, vcache (B,S_cap,NKV,HD); row b: keys kv_start[b] .. kv_len[b]-1 (clamped
 * to the row). grid (NH, B), block 32 W. Warp w takes the keys [start + w chunk, start + (w+1) chunk)
 * (chunk = ceil(n/W), n keys); the W partial softmaxes are merged at the end. smem: qv (HD), acc (W, HD),
 * m (W), l (W). An empty range gives out = 0. */
__global__ void att_decode_kernel(float *out, const float *q, const float *kcache, const float *vcache,
                                  const int32_t *kv_start, const int32_t *kv_len, const float *sinks, int S_cap, int NH,
                                  int NKV, int HD, float scale) {
    extern __shared__ float smem[];
    const int W = blockDim.x >> 5, w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int h = blockIdx.x, b = blockIdx.y, kvh = h / (NH / NKV);
    const int len = min(kv_len[b], S_cap), start = max(0, kv_start[b]), n = max(0, len - start);
    float *qv = smem, *acc = qv + HD, *ms = acc + (size_t)W * HD, *ls = ms + W;
    const float *qh = q + ((size_t)b * NH + h) * HD;
    for (int d = threadIdx.x; d < HD; d += blockDim.x) qv[d] = qh[d];
    __syncthreads();
    const int chunk = (n + W - 1) / W;
    const int j0 = start + min(n, w * chunk), j1 = start + min(n, w * chunk + chunk);
    const size_t kvstride = (size_t)NKV * HD;
    const size_t base = (size_t)b * S_cap * kvstride + (size_t)kvh * HD;
    float m, l;
    att_warp_row(qv, acc + (size_t)w * HD, kcache + base, vcache + base, kvstride, j0, j1, HD, scale, &m, &l);
    if (lane == 0) {
        ms[w] = m;
        ls[w] = l;
    }
    __syncthreads();
    float M = -INFINITY;
    for (int x = 0; x < W; x++) M = fmaxf(M, ms[x]);
    float L = 0.0f;
    if (M != -INFINITY) {
        const float z = sinks ? sinks[h] : -INFINITY; /* gpt-oss: one more logit in the denominator */
        M = fmaxf(M, z);
        for (int x = 0; x < W; x++) L += ls[x] * expf(ms[x] - M);
        if (sinks) L += expf(z - M);
    }
    float *oh = out + ((size_t)b * NH + h) * HD;
    for (int d = threadIdx.x; d < HD; d += blockDim.x) {
        float o = 0.0f;
        if (M != -INFINITY) {
            for (int x = 0; x < W; x++) o += acc[(size_t)x * HD + d] * expf(ms[x] - M);
            o /= L;
        }
        oh[d] = o;
    }
}

/* ================================================================================================ */
/* attention sinks (gpt-oss; backend.h): a fix-up of the forward, the rest of the backward          */
/* ================================================================================================ */

/* out (B,T,NH,HD), lse (B,NH,T) in place: lse' = log(exp(lse) + exp(z_h)), out *= exp(lse - lse').
 * One thread per query row r = (b*T + t)*NH + h. */
__global__ void att_sink_fwd_kernel(float *out, float *lse, const float *sinks, int B, int T, int NH, int HD) {
    const size_t r = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= (size_t)B * T * NH) return;
    const int h = (int)(r % NH), t = (int)((r / NH) % T), b = (int)(r / ((size_t)NH * T));
    float *l = lse + ((size_t)b * NH + h) * T + t;
    const float z = sinks[h], mx = fmaxf(*l, z);
    const float l2 = mx + logf(expf(*l - mx) + expf(z - mx)), f = expf(*l - l2);
    for (int d = 0; d < HD; d++) out[r * HD + d] *= f;
    *l = l2;
}

/* w_t = exp(z_h - lse'_t) (dout_t . out'_t) of query row r, as in att_sink_fwd_kernel */
__device__ float att_sink_w(const float *dout, const float *out, const float *lse, const float *sinks, int b, int t,
                            int h, int T, int NH, int HD) {
    const size_t r = ((size_t)b * T + t) * NH + h;
    float D = 0.0f;
    for (int d = 0; d < HD; d++) D += dout[r * HD + d] * out[r * HD + d];
    return expf(sinks[h] - lse[((size_t)b * NH + h) * T + t]) * D;
}

/* dsinks[h] += -sum_{b,t} w_t: one block of 256 per head, a fixed-order tree (deterministic). */
__global__ void att_sink_dz_kernel(float *dsinks, const float *dout, const float *out, const float *lse,
                                   const float *sinks, int B, int T, int NH, int HD) {
    __shared__ float part[256];
    const int h = blockIdx.x;
    float s = 0.0f;
    for (int i = threadIdx.x; i < B * T; i += blockDim.x)
        s += att_sink_w(dout, out, lse, sinks, i / T, i % T, h, T, NH, HD);
    part[threadIdx.x] = s;
    __syncthreads();
    for (int w = 128; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) dsinks[h] -= part[0];
}

/* The single-key queries (lo(t) == t): ds = w_t, dq_t += scale w_t k_t, dk_t += scale w_t q_t. One thread
 * per (b, t, kv head): it owns dk_t of its kv head and dq_t of the heads of its group. */
__global__ void att_sink_single_kernel(float *dq, float *dk, const float *dout, const float *q, const float *k,
                                       const float *out, const float *lse, const float *sinks, const int32_t *kv_start,
                                       int B, int T, int NH, int NKV, int HD, float scale) {
    const size_t r = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= (size_t)B * T * NKV) return;
    const int g = (int)(r % NKV), t = (int)((r / NKV) % T), b = (int)(r / ((size_t)NKV * T));
    if (lt_att_lo(kv_start + (size_t)b * T, t) != t) return;
    const int G = NH / NKV;
    const float *kt = k + r * HD;
    float *dkt = dk + r * HD;
    for (int h = g * G; h < g * G + G; h++) {
        const float sw = scale * att_sink_w(dout, out, lse, sinks, b, t, h, T, NH, HD);
        const size_t qi = (((size_t)b * T + t) * NH + h) * HD;
        for (int d = 0; d < HD; d++) {
            dq[qi + d] += sw * kt[d];
            dkt[d] += sw * q[qi + d];
        }
    }
}

/* ================================================================================================ */
/* host side                                                                                        */
/* ================================================================================================ */

static bool att_fits(const lt_cuda_impl *im, size_t floats) {
    return floats * sizeof(float) + ATT_SMEM_SLACK <= im->smem_optin;
}

/* Raise the dynamic shared memory limit of every tiled kernel that fits this device. */
template <typename K>
static cudaError_t att_allow(const lt_cuda_impl *im, K kernel, size_t floats) {
    if (!att_fits(im, floats)) return cudaSuccess; /* never launched on this device */
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)(floats * sizeof(float)));
}

extern "C" cudaError_t lt_cuda_attention_setup(lt_backend *be) {
    const lt_cuda_impl *im = lt_cuda_enter(be);
    cudaError_t e;
    if ((e = att_allow(im, att_fwd_kernel<64>, att_fwd_floats(64))) != cudaSuccess) return e;
    if ((e = att_allow(im, att_fwd_kernel<128>, att_fwd_floats(128))) != cudaSuccess) return e;
    if ((e = att_allow(im, att_bwd_kv_kernel<64, 4>, att_bwd_kv_floats(64, 4))) != cudaSuccess) return e;
    if ((e = att_allow(im, att_bwd_kv_kernel<128, 2>, att_bwd_kv_floats(128, 2))) != cudaSuccess) return e;
    if ((e = att_allow(im, att_bwd_q_kernel<64, 4>, att_bwd_q_floats(64, 4))) != cudaSuccess) return e;
    if ((e = att_allow(im, att_bwd_q_kernel<128, 2>, att_bwd_q_floats(128, 2))) != cudaSuccess) return e;
    return cudaSuccess;
}

/* Shapes the kernels accept: empty problems are no-ops; NKV must divide NH (else LT_ERR_INTERNAL, as
 * the CPU backend); the grid's y and z limits bound NH and B. */

/* Warps per block of a row-wise kernel needing `vecs` vectors of HD floats per warp in 48 KiB of
 * shared memory (at most 8); 0 if even one warp does not fit. */
static int att_rowwise_warps(int HD, int vecs, int extra_floats_per_warp) {
    size_t per = ((size_t)vecs * HD + extra_floats_per_warp) * sizeof(float);
    size_t w = (48u * 1024u) / per;
    return (int)(w > 8 ? 8 : w);
}

extern "C" void lt_cuda_attention_forward(lt_backend *be, float *out, float *lse, const float *q, const float *k,
                                          const float *v, const int32_t *kv_start, int B, int T, int NH, int NKV,
                                          int HD, float scale) {
    lt_cuda_impl *im = lt_cuda_enter(be);
    if (!lt_cuda_att_args_ok(be, B, T, NH, NKV, HD, "attention_forward")) return;
    dim3 grid((unsigned)((T + ATT_TILE - 1) / ATT_TILE), (unsigned)NH, (unsigned)B);
    if (HD <= 64 && att_fits(im, att_fwd_floats(64))) {
        att_fwd_kernel<64><<<grid, ATT_THREADS, att_fwd_floats(64) * sizeof(float), im->stream>>>(
            out, lse, q, k, v, kv_start, T, NH, NKV, HD, scale);
    } else if (HD <= 128 && att_fits(im, att_fwd_floats(128))) {
        att_fwd_kernel<128><<<grid, ATT_THREADS, att_fwd_floats(128) * sizeof(float), im->stream>>>(
            out, lse, q, k, v, kv_start, T, NH, NKV, HD, scale);
    } else {
        const int W = att_rowwise_warps(HD, 2, 0);
        if (W == 0) {
            lt_cuda_record(be, LT_ERR_UNSUPPORTED, "attention_forward: head_dim too large", 0);
            return;
        }
        const size_t rows = (size_t)B * T * NH;
        att_fwd_rowwise_kernel<<<(unsigned)((rows + W - 1) / W), 32 * W, (size_t)W * 2 * HD * sizeof(float),
                                 im->stream>>>(out, lse, q, k, v, kv_start, B, T, NH, NKV, HD, scale);
    }
    lt_cuda_check(be, "attention_forward");
}

/* D (B,NH,T) for the backward pass. */
extern "C" size_t lt_cuda_attention_backward_scratch(lt_backend *be, int B, int T, int NH, int HD) {
    (void)be;
    (void)HD;
    if (B <= 0 || T <= 0 || NH <= 0) return 0;
    return (size_t)B * NH * T;
}

extern "C" void lt_cuda_attention_backward(lt_backend *be, float *dq, float *dk, float *dv, const float *dout,
                                           const float *q, const float *k, const float *v, const float *out,
                                           const float *lse, const int32_t *kv_start, int B, int T, int NH, int NKV,
                                           int HD, float scale, float *scratch) {
    lt_cuda_impl *im = lt_cuda_enter(be);
    if (!lt_cuda_att_args_ok(be, B, T, NH, NKV, HD, "attention_backward")) return;
    float *D = scratch;
    const size_t qrows = (size_t)B * T * NH;
    att_bwd_D_kernel<<<(unsigned)((qrows + 7) / 8), 256, 0, im->stream>>>(D, dout, out, B, T, NH, HD);
    const unsigned tiles = (unsigned)((T + ATT_TILE - 1) / ATT_TILE);
    dim3 grid_kv(tiles, (unsigned)NKV, (unsigned)B), grid_q(tiles, (unsigned)NH, (unsigned)B);
    if (HD <= 64 && att_fits(im, att_bwd_kv_floats(64, 4)) && att_fits(im, att_bwd_q_floats(64, 4))) {
        att_bwd_kv_kernel<64, 4><<<grid_kv, ATT_THREADS, att_bwd_kv_floats(64, 4) * sizeof(float), im->stream>>>(
            dk, dv, dout, q, k, v, lse, D, kv_start, T, NH, NKV, HD, scale);
        att_bwd_q_kernel<64, 4><<<grid_q, ATT_THREADS, att_bwd_q_floats(64, 4) * sizeof(float), im->stream>>>(
            dq, dout, q, k, v, lse, D, kv_start, T, NH, NKV, HD, scale);
    } else if (HD <= 128 && att_fits(im, att_bwd_kv_floats(128, 2)) && att_fits(im, att_bwd_q_floats(128, 2))) {
        att_bwd_kv_kernel<128, 2><<<grid_kv, ATT_THREADS, att_bwd_kv_floats(128, 2) * sizeof(float), im->stream>>>(
            dk, dv, dout, q, k, v, lse, D, kv_start, T, NH, NKV, HD, scale);
        att_bwd_q_kernel<128, 2><<<grid_q, ATT_THREADS, att_bwd_q_floats(128, 2) * sizeof(float), im->stream>>>(
            dq, dout, q, k, v, lse, D, kv_start, T, NH, NKV, HD, scale);
    } else {
        const int Wq = att_rowwise_warps(HD, 3, 0), Wkv = att_rowwise_warps(HD, 4, 0);
        if (Wkv == 0) {
            lt_cuda_record(be, LT_ERR_UNSUPPORTED, "attention_backward: head_dim too large", 0);
            return;
        }
        const size_t kvrows = (size_t)B * T * NKV;
        att_bwd_kv_rowwise_kernel<<<(unsigned)((kvrows + Wkv - 1) / Wkv), 32 * Wkv,
                                    (size_t)Wkv * 4 * HD * sizeof(float), im->stream>>>(
            dk, dv, dout, q, k, v, lse, D, kv_start, B, T, NH, NKV, HD, scale);
        att_bwd_q_rowwise_kernel<<<(unsigned)((qrows + Wq - 1) / Wq), 32 * Wq, (size_t)Wq * 3 * HD * sizeof(float),
                                   im->stream>>>(dq, dout, q, k, v, lse, D, kv_start, B, T, NH, NKV, HD, scale);
    }
    lt_cuda_check(be, "attention_backward");
}

/* attention_decode, with sinks (NH) in the denominators or NULL; `what` names the op in errors */
static void att_decode(lt_backend *be, float *out, const float *q, const float *kcache, const float *vcache,
                       const int32_t *kv_start, const int32_t *kv_len, const float *sinks, int B, int S_cap, int NH,
                       int NKV, int HD, float scale, const char *what) {
    lt_cuda_impl *im = lt_cuda_enter(be);
    if (!lt_cuda_att_args_ok(be, B, 1, NH, NKV, HD, what)) return;
    if (!lt_cuda_decode_ranges_ok(be, kv_start, kv_len, B, S_cap, what)) return;
    /* W warps: qv (HD) + W * (acc (HD) + m + l) floats in 48 KiB */
    int W = 8;
    while (W > 0 && ((size_t)HD + (size_t)W * (HD + 2)) * sizeof(float) > 48u * 1024u) W--;
    if (W == 0) {
        lt_cuda_record(be, LT_ERR_UNSUPPORTED, "attention decode: head_dim too large", 0);
        return;
    }
    const size_t smem = ((size_t)HD + (size_t)W * (HD + 2)) * sizeof(float);
    att_decode_kernel<<<dim3((unsigned)NH, (unsigned)B), 32 * W, smem, im->stream>>>(
        out, q, kcache, vcache, kv_start, kv_len, sinks, S_cap, NH, NKV, HD, scale);
    lt_cuda_check(be, what);
}

extern "C" void lt_cuda_attention_decode(lt_backend *be, float *out, const float *q, const float *kcache,
                                         const float *vcache, const int32_t *kv_start, const int32_t *kv_len, int B,
                                         int S_cap, int NH, int NKV, int HD, float scale) {
    att_decode(be, out, q, kcache, vcache, kv_start, kv_len, NULL, B, S_cap, NH, NKV, HD, scale, "attention_decode");
}

extern "C" void lt_cuda_attention_sink_decode(lt_backend *be, float *out, const float *q, const float *kcache,
                                              const float *vcache, const int32_t *kv_start, const int32_t *kv_len,
                                              const float *sinks, int B, int S_cap, int NH, int NKV, int HD,
                                              float scale) {
    att_decode(be, out, q, kcache, vcache, kv_start, kv_len, sinks, B, S_cap, NH, NKV, HD, scale,
               "attention_sink_decode");
}

extern "C" void lt_cuda_attention_sink_forward(lt_backend *be, float *out, float *lse, const float *sinks, int B, int T,
                                               int NH, int HD) {
    lt_cuda_impl *im = lt_cuda_enter(be);
    if (!lt_cuda_att_args_ok(be, B, T, NH, NH, HD, "attention_sink_forward")) return;
    const size_t rows = (size_t)B * T * NH;
    att_sink_fwd_kernel<<<lt_grid_1d(rows, 256), 256, 0, im->stream>>>(out, lse, sinks, B, T, NH, HD);
    lt_cuda_check(be, "attention_sink_forward");
}

extern "C" void lt_cuda_attention_sink_backward(lt_backend *be, float *dsinks, float *dq, float *dk, const float *dout,
                                                const float *q, const float *k, const float *out, const float *lse,
                                                const float *sinks, const int32_t *kv_start, int B, int T, int NH,
                                                int NKV, int HD, float scale) {
    lt_cuda_impl *im = lt_cuda_enter(be);
    if (!lt_cuda_att_args_ok(be, B, T, NH, NKV, HD, "attention_sink_backward")) return;
    if (dsinks) att_sink_dz_kernel<<<(unsigned)NH, 256, 0, im->stream>>>(dsinks, dout, out, lse, sinks, B, T, NH, HD);
    const size_t rows = (size_t)B * T * NKV;
    att_sink_single_kernel<<<lt_grid_1d(rows, 256), 256, 0, im->stream>>>(dq, dk, dout, q, k, out, lse, sinks, kv_start,
                                                                          B, T, NH, NKV, HD, scale);
    lt_cuda_check(be, "attention_sink_backward");
}

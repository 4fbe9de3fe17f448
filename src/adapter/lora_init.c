/*
 * lora_init.c - PiSSA and OLoRA initialisation: LoRA factors from a decomposition of the base weight.
 *
 * defines: lt_lora_decompose_init, lt_svd
 *
 * PEFT (tuners/lora/layer.py, pissa_init / olora_init), on each targeted module's weight W (out, in) in
 * fp32 (a fused Phi-3 module: the stacked weight of its projections), s = the adapter's scaling:
 *   PiSSA  W = U S Vh (torch.linalg.svd, reduced):  A = diag(sqrt(S_r / s)) Vh[:r],  B = U[:, :r] diag(sqrt(S_r / s))
 *   OLoRA  W = Q R    (torch.linalg.qr, reduced):   A = R[:r],                       B = Q[:, :r]
 * and the base becomes W - s B A. Here the base stays as it is (the model is shared); the adapter keeps
 * A0 = A, B0 = B frozen and every projection subtracts s (x A0^T) B0^T (decoder/decoder.c), which is the
 * same function. torch's CPU SVD and QR are LAPACK's gesdd and geqrf + orgqr; so are these (OpenBLAS
 * ships LAPACK), in float as PEFT's fp32. The QR signs are LAPACK's Householder convention on both sides;
 * singular vectors are defined up to a sign per pair (the product B A is not).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "adapter/adapter_impl.h"

/* LAPACK (Fortran ABI; the trailing size_t is the hidden length of a character argument) */
extern void sgesdd_(const char *jobz, const int *m, const int *n, float *a, const int *lda, float *s, float *u,
                    const int *ldu, float *vt, const int *ldvt, float *work, const int *lwork, int *iwork, int *info,
                    size_t jobz_len);
extern void sgeqrf_(const int *m, const int *n, float *a, const int *lda, float *tau, float *work, const int *lwork,
                    int *info);
extern void sorgqr_(const int *m, const int *n, const int *k, float *a, const int *lda, const float *tau, float *work,
                    const int *lwork, int *info);

/* The thin SVD of W (out, in) row-major: W = U diag(S) Vt with k = min(out, in), U (out, k) and Vt (k, in)
 * row-major, S descending. Row-major W is the column-major (in, out) matrix X = W^T; gesdd gives
 * X = Ux S VTx, so W = VTx^T S Ux^T: W's U is VTx read row-major as (out, k) and its Vt is Ux read
 * row-major as (k, in), with no transposition. */
lt_status lt_svd(const float *W, int out, int in, float *S, float *U, float *Vt, lt_error *err) {
    const int k = out < in ? out : in;
    float *X = malloc((size_t)out * in * sizeof *X), *work = NULL;
    int *iwork = malloc((size_t)8 * k * sizeof *iwork);
    lt_status st = LT_OK;
    if (!X || !iwork) {
        st = lt_fail(err, LT_ERR_NOMEM, "SVD: out of memory");
        goto out;
    }
    memcpy(X, W, (size_t)out * in * sizeof *X); /* gesdd overwrites its input */
    int info = 0, lwork = -1;
    float wq = 0;
    sgesdd_("S", &in, &out, X, &in, S, Vt, &in, U, &k, &wq, &lwork, iwork, &info, 1);
    lwork = (int)wq + 1;
    if (info == 0 && !(work = malloc((size_t)lwork * sizeof *work))) {
        st = lt_fail(err, LT_ERR_NOMEM, "SVD: out of memory");
        goto out;
    }
    if (info == 0) sgesdd_("S", &in, &out, X, &in, S, Vt, &in, U, &k, work, &lwork, iwork, &info, 1);
    if (info != 0)
        st = lt_fail(err, LT_ERR_NUMERIC, "the SVD of a (%d, %d) matrix failed (LAPACK info %d)", out, in, info);
out:
    free(X);
    free(iwork);
    free(work);
    return st;
}

/* PiSSA of W (out, in) row-major into A (r, in), B (out, r). */
static lt_status pissa(const float *W, int out, int in, int r, float s, float *A, float *B, lt_error *err) {
    const int k = out < in ? out : in;
    float *S = malloc((size_t)k * sizeof *S), *U = malloc((size_t)out * k * sizeof *U),
          *Vt = malloc((size_t)k * in * sizeof *Vt);
    lt_status st =
        !S || !U || !Vt ? lt_fail(err, LT_ERR_NOMEM, "PiSSA: out of memory") : lt_svd(W, out, in, S, U, Vt, err);
    if (st != LT_OK && err->status != LT_ERR_NOMEM) lt_fail_prefix(err, "PiSSA");
    for (int j = 0; j < r && st == LT_OK; j++) {
        const float g = sqrtf(S[j] / s); /* PEFT: Sr /= scaling, then sqrt */
        for (int p = 0; p < in; p++) A[(size_t)j * in + p] = g * Vt[(size_t)j * in + p];
        for (int i = 0; i < out; i++) B[(size_t)i * r + j] = U[(size_t)i * k + j] * g;
    }
    free(S);
    free(U);
    free(Vt);
    return st;
}

/* OLoRA of W (out, in) row-major: QR of the column-major copy C = W (lda = out). */
static lt_status olora(const float *W, int out, int in, int r, float *A, float *B, lt_error *err) {
    const int k = out < in ? out : in;
    float *C = malloc((size_t)out * in * sizeof *C), *tau = malloc((size_t)k * sizeof *tau), *work = NULL;
    lt_status st = LT_OK;
    if (!C || !tau) {
        st = lt_fail(err, LT_ERR_NOMEM, "OLoRA: out of memory");
        goto out;
    }
    for (int i = 0; i < out; i++)
        for (int j = 0; j < in; j++) C[i + (size_t)j * out] = W[(size_t)i * in + j];
    int info = 0, lwork = -1;
    float wq = 0, wq2 = 0;
    sgeqrf_(&out, &in, C, &out, tau, &wq, &lwork, &info);
    sorgqr_(&out, &k, &k, C, &out, tau, &wq2, &lwork, &info);
    lwork = (int)(wq > wq2 ? wq : wq2) + 1;
    if (!(work = malloc((size_t)lwork * sizeof *work))) {
        st = lt_fail(err, LT_ERR_NOMEM, "OLoRA: out of memory");
        goto out;
    }
    sgeqrf_(&out, &in, C, &out, tau, work, &lwork, &info);
    if (info != 0) {
        st = lt_fail(err, LT_ERR_NUMERIC, "OLoRA: the QR of a (%d, %d) weight failed (LAPACK info %d)", out, in, info);
        goto out;
    }
    for (int t = 0; t < r; t++) /* R: the upper triangle */
        for (int j = 0; j < in; j++) A[(size_t)t * in + j] = j >= t ? C[t + (size_t)j * out] : 0.0f;
    sorgqr_(&out, &k, &k, C, &out, tau, work, &lwork, &info);
    if (info != 0) {
        st = lt_fail(err, LT_ERR_NUMERIC, "OLoRA: forming Q of a (%d, %d) weight failed (LAPACK info %d)", out, in,
                     info);
        goto out;
    }
    for (int i = 0; i < out; i++)
        for (int t = 0; t < r; t++) B[(size_t)i * r + t] = C[i + (size_t)t * out];
out:
    free(C);
    free(tau);
    free(work);
    return st;
}

lt_status lt_lora_decompose_init(lt_adapter *a, lt_error *err) {
    lt_model *m = a->model;
    const lt_backend_ops *ops = m->be->ops;
    const int r = a->p.rank;
    const char *what = a->p.init == LT_INIT_PISSA ? "PiSSA" : "OLoRA";
    lt_module mods[P_COUNT];
    const int n_mods = lt_model_modules(&m->cfg, mods);
    lt_status st = LT_OK;
    for (int l = 0; l < m->cfg.num_hidden_layers && st == LT_OK; l++)
        for (int q = 0; q < n_mods && st == LT_OK; q++) {
            lt_lora *lo = lt_adapter_lora(a, l, (lt_proj)mods[q].first); /* fused: one shared A, stacked B */
            if (!lo) continue;
            int in, o;
            lt_module_dims(&m->cfg, &mods[q], &in, &o);
            if (r > (o < in ? o : in)) {
                return lt_fail(err, LT_ERR_ARGUMENT,
                               "adapter: %s needs r <= min(out, in), but r = %d and "
                               "layers.%d.%s.%s is (%d, %d)",
                               what, r, l, mods[q].parent, mods[q].name, o, in);
            }
            float *W = malloc((size_t)o * in * sizeof *W), *A = malloc((size_t)r * in * sizeof *A);
            float *B = malloc((size_t)o * r * sizeof *B);
            if (!W || !A || !B) {
                free(W);
                free(A);
                free(B);
                return lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", what);
            }
            size_t row = 0; /* a fused module's weight is its projections' weights stacked by rows */
            for (int p = mods[q].first; p < mods[q].first + mods[q].count && st == LT_OK; p++) {
                int pi, po;
                lt_proj_dims(&m->cfg, (lt_proj)p, &pi, &po);
                st = lt_weight_download(m, &m->layers[l].w[p], W + row * in, po, pi, err); /* dequantized */
                row += (size_t)po;
            }
            if (st == LT_OK)
                st = a->p.init == LT_INIT_PISSA ? pissa(W, o, in, r, a->scaling, A, B, err)
                                                : olora(W, o, in, r, A, B, err);
            if (st == LT_OK) {
                ops->upload(m->be, lo->A, A, (size_t)r * in * sizeof *A);
                ops->upload(m->be, lo->A0, A, (size_t)r * in * sizeof *A);
                ops->upload(m->be, lo->B, B, (size_t)o * r * sizeof *B); /* the module's B: its projections' blocks */
                ops->upload(m->be, lo->B0, B, (size_t)o * r * sizeof *B);
                st = ops->sync(m->be);
            }
            free(W);
            free(A);
            free(B);
        }
    return st;
}

/*
 * cuda_errors.c - the CUDA backend's error records, one per host thread: the first failure since the
 * thread's last sync wins and that thread's sync() reports it (cuda_impl.h). Every kernel file and
 * cuda_backend.c call these; they call nothing of the backend's, so the backend's files have no cycle.
 *
 * defines: lt_cuda_errors_init, lt_cuda_record, lt_cuda_check, lt_cuda_take_error,
 *          lt_cuda_error_message, lt_cuda_errors_release
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include <cuda_runtime.h>

#include "cuda/cuda_impl.h"

/* a thread that used the backend exits: its record goes */
static void slot_exit(void *p) {
    lt_cuda_errslot *s = p;
    lt_cuda_impl *im = s->im;
    pthread_mutex_lock(&im->lock);
    for (lt_cuda_errslot **pp = &im->slots; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    pthread_mutex_unlock(&im->lock);
    free(s);
}

int lt_cuda_errors_init(lt_cuda_impl *im) {
    im->err_key_made = pthread_key_create(&im->err_key, slot_exit) == 0;
    return im->err_key_made ? 0 : -1;
}

/* the calling thread's record, made at its first use (the shared fallback if that fails) */
static lt_cuda_errslot *slot(lt_cuda_impl *im) {
    if (!im->err_key_made) return &im->fallback;
    lt_cuda_errslot *s = pthread_getspecific(im->err_key);
    if (s) return s;
    s = calloc(1, sizeof *s);
    if (!s || pthread_setspecific(im->err_key, s) != 0) {
        free(s);
        return &im->fallback;
    }
    s->im = im;
    pthread_mutex_lock(&im->lock);
    s->next = im->slots;
    im->slots = s;
    pthread_mutex_unlock(&im->lock);
    return s;
}

void lt_cuda_record(lt_backend *be, lt_status st, const char *what, int cuda_err) {
    lt_cuda_impl *im = lt_cuda(be);
    lt_cuda_errslot *s = slot(im);
    if (s->first_error != LT_OK) return; /* an earlier error of this thread is pending */
    s->first_error = (int)st;
    if (cuda_err)
        snprintf(s->msg, sizeof s->msg, "cuda backend: %s: %s (%s)", what, cudaGetErrorString((cudaError_t)cuda_err),
                 cudaGetErrorName((cudaError_t)cuda_err));
    else snprintf(s->msg, sizeof s->msg, "cuda backend: %s", what);
    if (im->debug_print) fprintf(stderr, "libloratune: %s\n", s->msg);
}

void lt_cuda_check(lt_backend *be, const char *what) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) lt_cuda_record(be, LT_ERR_BACKEND, what, (int)e);
    if (lt_cuda(be)->debug_sync) {
        e = cudaStreamSynchronize(lt_cuda(be)->stream);
        if (e != cudaSuccess) lt_cuda_record(be, LT_ERR_BACKEND, what, (int)e);
    }
}

lt_status lt_cuda_take_error(lt_backend *be) {
    lt_cuda_errslot *s = slot(lt_cuda(be));
    const lt_status st = (lt_status)s->first_error;
    snprintf(s->reported, sizeof s->reported, "%s", st == LT_OK ? "" : s->msg);
    s->first_error = LT_OK;
    s->msg[0] = 0;
    return st;
}

const char *lt_cuda_error_message(lt_backend *be) { return slot(lt_cuda(be))->reported; }

void lt_cuda_errors_release(lt_cuda_impl *im) {
    if (!im->err_key_made) return;
    pthread_key_delete(im->err_key); /* no destructor runs for it any more */
    im->err_key_made = 0;
    for (lt_cuda_errslot *s = im->slots, *next; s; s = next) {
        next = s->next;
        free(s);
    }
    im->slots = NULL;
}

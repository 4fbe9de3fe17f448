/*
 * fuzz_gguf.c - the GGUF reader (formats/gguf.c lt_gguf_parse) on the input as a whole file held in
 * memory, then every metadata value and tensor it returns read back (lookups by key and name, the
 * tensor data converted to f32 where the type is one we convert), so that what the parser accepts is
 * also safe to use: every pointer it hands out must lie inside the buffer or its own copies.
 * Input: the bytes of a GGUF file.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "formats/gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* a copy of exactly the input's size, so that ASan sees any read past its end */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    lt_gguf_file *f = NULL;
    lt_error err = {0};
    if (lt_gguf_parse(buf, size, &f, &err) != LT_OK) {
        free(buf);
        return 0;
    }
    volatile uint64_t sink = 0;
    for (int64_t i = 0; i < f->n_kv; i++) {
        const lt_gguf_kv *kv = &f->kv[i];
        sink += strlen(kv->key) + (lt_gguf_find_kv(f, kv->key) == kv);
        if (kv->strs)
            for (uint64_t k = 0; k < kv->n; k++) sink += strlen(kv->strs[k]) + kv->str_lens[k];
        else if (kv->data && kv->n) sink += ((const uint8_t *)kv->data)[0];
    }
    for (int64_t i = 0; i < f->n_tensors; i++) {
        const lt_gguf_tensor *t = &f->tensors[i];
        sink += strlen(t->name) + (lt_gguf_find_tensor(f, t->name) == t);
        uint64_t n = 1;
        for (int d = 0; d < t->n_dims; d++) n *= (uint64_t)t->ne[d];
        /* convert at most the first 4096 elements (a whole number of Q8_0 blocks) that the data holds */
        uint64_t k = n < 4096 ? n : 4096;
        if (t->type == LT_GGML_Q8_0) k -= k % LT_Q8_0_BLOCK;
        if (k && lt_ggml_nbytes(t->type, k) && lt_ggml_nbytes(t->type, k) <= t->nbytes) {
            float *out = malloc(k * sizeof(float));
            if (out && lt_ggml_to_f32(t->type, t->data, out, k) == 0) sink += (uint64_t)(out[0] == out[0]);
            free(out);
        }
    }
    (void)sink;
    lt_gguf_file_free(f);
    free(buf);
    return 0;
}

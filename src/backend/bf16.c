/*
 * bf16.c - the packed bf16 weight layout (see bf16.h).
 */
#include "backend/bf16.h"

size_t lt_bf16w_elems(int out, int in) {
    if (out <= 0 || in <= 0) return 0;
    return (size_t)lt_bf16w_blocks(out) * (size_t)lt_bf16w_pairs(in) * 32;
}

void lt_bf16w_pack(uint16_t *dst, const float *W, int out, int in) {
    const int P = lt_bf16w_pairs(in), OB = lt_bf16w_blocks(out);
    for (int ob = 0; ob < OB; ob++)
        for (int p = 0; p < P; p++) {
            uint16_t *v = dst + ((size_t)ob * P + p) * 32;
            for (int r = 0; r < 16; r++)
                for (int e = 0; e < 2; e++) {
                    int o = ob * 16 + r, i = 2 * p + e;
                    v[r * 2 + e] = o < out && i < in ? lt_bf16_round(W[(size_t)o * in + i]) : 0;
                }
        }
}

float lt_bf16w_get(const uint16_t *Wp, int out, int in, int o, int i) {
    (void)out;
    return lt_bf16_to_f32(Wp[((size_t)(o / 16) * lt_bf16w_pairs(in) + i / 2) * 32 + (o % 16) * 2 + (i % 2)]);
}

/*
 * fuzz_tokenizer.c - lt_tokenizer_load on tokenizer.json + tokenizer_config.json, then encode a text,
 * decode the ids, and look tokens up.
 * Input: tokenizer.json | tokenizer_config.json | text, separated by FZ_SEP.
 */
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *const names[] = {"tokenizer.json", "tokenizer_config.json"};
    fz_part parts[FZ_MAX_PARTS];
    const int n = fz_split(data, size, parts, 3);
    fz_put_files(names, 2, parts, n);
    lt_tokenizer *tok = NULL;
    if (fz_note("lt_tokenizer_load", lt_tokenizer_load(fz_dir(), &tok), lt_last_error()) != LT_OK) return 0;
    const fz_part text = n > 2 ? parts[2] : (fz_part){(const uint8_t *)"Hello, world!", 13};
    for (int special = 0; special < 2; special++) {
        size_t n_ids = 0;
        if (lt_tokenizer_encode(tok, (const char *)text.p, text.n, special, NULL, 0, &n_ids) != LT_OK && n_ids == 0)
            continue;
        int32_t *ids = malloc((n_ids ? n_ids : 1) * sizeof *ids);
        if (lt_tokenizer_encode(tok, (const char *)text.p, text.n, special, ids, n_ids, &n_ids) == LT_OK) {
            size_t len = 0;
            if (lt_tokenizer_decode(tok, ids, n_ids, special, NULL, 0, &len) == LT_OK ||
                lt_tokenizer_last_error(tok)[0]) {
                char *s = malloc(len + 1);
                (void)lt_tokenizer_decode(tok, ids, n_ids, special, s, len + 1, &len);
                free(s);
            }
            for (size_t i = 0; i < n_ids && i < 8; i++) {
                const char *t = lt_tokenizer_id_to_token(tok, ids[i]);
                if (t) (void)lt_tokenizer_token_to_id(tok, t);
                (void)lt_tokenizer_is_special(tok, ids[i]);
            }
        }
        free(ids);
    }
    /* ids out of range are the caller's error, never a crash */
    const int32_t odd[4] = {-1, lt_tokenizer_vocab_size(tok), 0, INT32_MAX};
    size_t len = 0;
    (void)lt_tokenizer_decode(tok, odd, 4, 0, NULL, 0, &len);
    for (int w = 0; w < 4; w++) (void)lt_tokenizer_special_id(tok, (lt_special_token)w);
    lt_tokenizer_free(tok);
    return 0;
}

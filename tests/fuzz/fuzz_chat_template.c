/*
 * fuzz_chat_template.c - the chat template renderer through its public entry points
 * (lt_tokenizer_render_chat, lt_tokenizer_encode_chat): a fixed byte-level tokenizer.json, and a
 * tokenizer_config.json whose "chat_template" is the input's template.
 * Input: template | messages JSON | flags (bit 0 of the first byte: add_generation_prompt), separated by
 * FZ_SEP.
 */
#include <jansson.h>

#include "fuzz_util.h"

/* bytes as GPT-2's byte-level alphabet would map printable ASCII: enough to encode any rendering */
static char *tokenizer_json(void) {
    json_t *vocab = json_object();
    for (int b = 0; b < 256; b++) {
        char k[8];
        /* the ByteLevel alphabet: printable latin-1 bytes stand for themselves, the rest map to U+0100.. */
        int cp = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae) ? b : 0;
        if (!cp) {
            static int shift = 0;
            cp = 256 + shift++;
        }
        if (cp < 0x80) snprintf(k, sizeof k, "%c", cp);
        else if (cp < 0x800) snprintf(k, sizeof k, "%c%c", 0xc0 | (cp >> 6), 0x80 | (cp & 0x3f));
        json_object_set_new(vocab, k, json_integer(b));
    }
    json_t *root = json_pack("{s:{s:s, s:o, s:[]}, s:{s:s, s:b, s:b}, s:{s:s}, s:[{s:i, s:s, s:b}, {s:i, s:s, s:b}]}",
                             "model", "type", "BPE", "vocab", vocab, "merges", "pre_tokenizer", "type", "ByteLevel",
                             "add_prefix_space", 0, "use_regex", 1, "decoder", "type", "ByteLevel", "added_tokens",
                             "id", 256, "content", "<s>", "special", 1, "id", 257, "content", "</s>", "special", 1);
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return s;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    char *tj = tokenizer_json();
    const fz_part p = {(const uint8_t *)tj, strlen(tj)};
    fz_put("tokenizer.json", &p);
    free(tj);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_part parts[FZ_MAX_PARTS];
    const int n = fz_split(data, size, parts, 3);
    json_t *cfg = json_object();
    json_object_set_new(cfg, "chat_template", json_stringn((const char *)parts[0].p, parts[0].n));
    json_object_set_new(cfg, "bos_token", json_string("<s>"));
    json_object_set_new(cfg, "eos_token", json_string("</s>"));
    char *cs = json_dumps(cfg, JSON_COMPACT);
    json_decref(cfg);
    if (!cs) return 0; /* the template is not UTF-8: jansson cannot hold it */
    const fz_part cp = {(const uint8_t *)cs, strlen(cs)};
    fz_put("tokenizer_config.json", &cp);
    free(cs);
    lt_tokenizer *tok = NULL;
    if (lt_tokenizer_load(fz_dir(), &tok) != LT_OK) return 0;
    char *messages = n > 1 ? fz_str(&parts[1]) : NULL;
    const char *msgs = messages ? messages : "[{\"role\": \"user\", \"content\": \"Hi\"}]";
    const int gen = n > 2 && parts[2].n ? parts[2].p[0] & 1 : 0;
    const char *text;
    size_t len;
    if (fz_note("render", lt_tokenizer_render_chat(tok, msgs, gen, &text, &len), lt_tokenizer_last_error(tok)) ==
        LT_OK) {
        size_t n_ids = 0;
        (void)lt_tokenizer_encode_chat(tok, msgs, gen, NULL, NULL, 0, &n_ids);
        if (n_ids && n_ids < (1u << 20)) {
            int32_t *ids = malloc(n_ids * sizeof *ids), *mask = malloc(n_ids * sizeof *mask);
            (void)lt_tokenizer_encode_chat(tok, msgs, gen, ids, mask, n_ids, &n_ids);
            free(ids);
            free(mask);
        }
    }
    free(messages);
    lt_tokenizer_free(tok);
    return 0;
}

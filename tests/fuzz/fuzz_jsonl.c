/*
 * fuzz_jsonl.c - dataset rows: lt_tokenizer_encode_row on one JSONL row (text, prompt/completion,
 * messages through a ChatML template, preference and KTO rows) with a fixed tokenizer, the CLI's
 * pre-tokenized loader (dataset_load, src/cli/jsonl.c) on the same bytes as a file, and
 * lt_pack_sequences over the ids produced.
 * Input: JSONL text | 8 parameter bytes (max_len, flags, seq_len, pad id), separated by FZ_SEP.
 */
#include "cli/jsonl.h"
#include "fuzz_util.h"

static lt_tokenizer *tok;

static const char k_tokenizer[] =
    "{\"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"vocab\": {\"<unk>\": 0, \"a\": 1, \"b\": 2, "
    "\"ab\": 3, \" \": 4, \"c\": 5, \"abc\": 6, \"<0x0A>\": 7, \"<0x41>\": 8}, \"merges\": [\"a b\", \"ab c\"], "
    "\"unk_token\": \"<unk>\"}, \"added_tokens\": [{\"id\": 9, \"content\": \"<|im_start|>\", \"special\": true}, "
    "{\"id\": 10, \"content\": \"<|im_end|>\", \"special\": true}, {\"id\": 11, \"content\": \"</s>\", "
    "\"special\": true}]}";
static const char k_config[] =
    "{\"eos_token\": \"</s>\", \"chat_template\": \"{% for m in messages %}<|im_start|>{{ m['role'] }}\\n"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}"
    "{% else %}{{ m['content'] }}<|im_end|>{% endif %}\\n{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\\n{% endif %}\"}";

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const fz_part t = {(const uint8_t *)k_tokenizer, sizeof k_tokenizer - 1},
                  c = {(const uint8_t *)k_config, sizeof k_config - 1};
    fz_put("tokenizer.json", &t);
    fz_put("tokenizer_config.json", &c);
    if (lt_tokenizer_load(fz_dir(), &tok) != LT_OK) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_part parts[FZ_MAX_PARTS];
    const int np = fz_split(data, size, parts, 2);
    uint8_t prm[8] = {0, 0xff, 16, 0, 0, 0, 0, 0};
    if (np > 1) memcpy(prm, parts[1].p, parts[1].n < 8 ? parts[1].n : 8);
    /* the CLI's pre-tokenized loader reads the text as a file */
    fz_put("rows.jsonl", &parts[0]);
    char path[600], msg[256];
    snprintf(path, sizeof path, "%s/rows.jsonl", fz_dir());
    dataset ds = {0};
    if (dataset_load(path, &ds, msg, sizeof msg) == 0) {
        int32_t ids[4 * 32], lab[4 * 32];
        if (ds.n > 0) (void)dataset_batch(&ds, NULL, 0, 4, 32, ids, lab);
        dataset_free(&ds);
    }
    /* the library's row encoder, on the first line */
    char *row = fz_str(&parts[0]);
    char *nl = strchr(row, '\n');
    if (nl) *nl = 0;
    lt_text_params tp;
    lt_text_params_init(&tp, sizeof tp);
    tp.max_len = prm[0];
    tp.completion_only = prm[1] & 1;
    tp.assistant_only = (prm[1] >> 1) & 1;
    tp.add_special = (prm[1] >> 2) & 1;
    tp.add_eos = (prm[1] >> 3) & 1;
    size_t n = 0;
    if (fz_note("encode_row", lt_tokenizer_encode_row(tok, row, &tp, NULL, NULL, 0, &n),
                lt_tokenizer_last_error(tok)) == LT_OK &&
        n > 0 && n < (1u << 20)) {
        int32_t *ids = malloc(n * sizeof *ids), *lab = malloc(n * sizeof *lab);
        if (lt_tokenizer_encode_row(tok, row, &tp, ids, lab, n, &n) == LT_OK) {
            /* pack it as three sequences */
            int32_t lens[3] = {(int32_t)(n / 3), (int32_t)(n / 3), (int32_t)(n - 2 * (n / 3))};
            const int32_t seq = 1 + prm[2] % 64, pad = (int32_t)(prm[3] % 12);
            int32_t rows = 0;
            if (lt_pack_sequences(ids, (prm[1] & 16) ? NULL : lab, lens, 3, seq, pad, NULL, NULL, NULL, 0, &rows) ==
                    LT_OK &&
                rows > 0 && rows < 4096) {
                int32_t *o = malloc((size_t)rows * seq * 3 * sizeof *o);
                (void)lt_pack_sequences(ids, lab, lens, 3, seq, pad, o, o + (size_t)rows * seq,
                                        o + 2 * (size_t)rows * seq, rows, &rows);
                free(o);
            }
        }
        free(ids);
        free(lab);
    }
    free(row);
    return 0;
}

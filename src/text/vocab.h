/*
 * vocab.h - a tokenizer described the way GGUF stores it (tokenizer.ggml.*), for the GGUF export
 * (adapter/gguf_export.c). Defined in text/tokenizer.c, which owns the tokenizer's internals.
 * defines: lt_vocab_desc, lt_tok_vocab_describe, lt_vocab_desc_free
 */
#ifndef LT_VOCAB_H
#define LT_VOCAB_H

#include "core/core.h"
#include <stdint.h>

/* tokenizer.ggml.token_type values (llama.cpp's llama_token_type) */
enum {
    LT_TOKTYPE_NORMAL = 1,
    LT_TOKTYPE_UNKNOWN = 2,
    LT_TOKTYPE_CONTROL = 3,
    LT_TOKTYPE_USER_DEFINED = 4,
    LT_TOKTYPE_UNUSED = 5,
    LT_TOKTYPE_BYTE = 6
};

typedef struct lt_vocab_desc {
    char model[8];    /* tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece-style) */
    char pre[24];     /* tokenizer.ggml.pre: the pre-tokenizer name llama.cpp knows                 */
    int32_t n_tokens; /* 1 + the largest id                                                        */
    char **tokens;    /* n_tokens strings; holes in the id space are "[PAD<id>]" (UNUSED)          */
    int32_t *types;   /* n_tokens LT_TOKTYPE_*                                                     */
    float *scores;    /* "llama" only: n_tokens; -(rank of the merge that makes the token)         */
    int32_t n_merges; /* "gpt2" only: "a b" in rank order                                          */
    char **merges;
    int32_t bos, eos, pad, unk; /* named in tokenizer_config.json (-1: none)                             */
    int add_bos, add_eos;       /* what the post-processor adds (0 / 1)                                      */
    int add_space_prefix;       /* "llama": a "▁" is put before the text (Prepend or Metaspace "first")     */
    const char *chat_template;  /* tokenizer_config.json's, owned by the tokenizer (NULL: none)           */
} lt_vocab_desc;

struct lt_tokenizer;
/* Describe t for GGUF. LT_ERR_UNSUPPORTED (naming what) for a tokenizer llama.cpp would tokenize
 * differently: a pre-tokenizer regex it has no name for, normalizers other than NFC (byte-level) or the
 * SentencePiece Prepend/Replace pair, a byte-level pre-tokenizer that adds a prefix space. */
lt_status lt_tok_vocab_describe(const struct lt_tokenizer *t, lt_vocab_desc *out, lt_error *err);
void lt_vocab_desc_free(lt_vocab_desc *d);

#endif /* LT_VOCAB_H */

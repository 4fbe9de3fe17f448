/*
 * tokenizer.h - internals shared by tokenizer.c (Hugging Face tokenizer.json: BPE, byte-level and
 * SentencePiece-style), chat_template.c (a Jinja subset for chat_template strings) and text_rows.c
 * (JSONL rows -> ids + labels). Private to src/text/; not installed; not part of the ABI.
 */
#ifndef LT_TOKENIZER_H
#define LT_TOKENIZER_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "text/textbuf.h"

/* Bounds on a tokenizer.json, far beyond real ones (Gemma's 262144 ids; a few thousand added tokens):
 * token ids below 2^24 and dense (the largest id at most 4 x the tokens + 65536: a table per id is
 * allocated), at most 2^24 merges, at most 32767 added tokens (the matcher indexes them with int16). */
#define LT_TOK_MAX_IDS (1 << 24)
#define LT_TOK_MAX_ADDED 32767

struct lt_tokenizer;
/* Encode text[0..len) into ids (appended to out). add_special: post-processor BOS/EOS. */
lt_status lt_tok_encode_into(struct lt_tokenizer *t, const char *text, size_t len, int add_special, lt_ivec *out);
/* Token string of a special token named in tokenizer_config.json ("bos_token", ...); "" if none. */
const char *lt_tok_special_str(const struct lt_tokenizer *t, const char *name);
const char *lt_tok_chat_template(const struct lt_tokenizer *t);
lt_error *lt_tok_error(struct lt_tokenizer *t);
/* A text buffer owned by the handle (results returned by pointer; valid until the next call). */
lt_buf *lt_tok_text_buf(struct lt_tokenizer *t);
/* The text bytes a token stands for (see tokenizer.c); appended to out. */
lt_status lt_tok_token_bytes(const struct lt_tokenizer *t, int32_t id, lt_buf *out);
#endif /* LT_TOKENIZER_H */

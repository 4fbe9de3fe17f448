/*
 * textbuf.h - the growable byte string and int array of src/text/ and its UTF-8 helpers (defined in
 * tokenizer.c), shared by the tokenizer, the Jinja engine and the dataset rows.
 */
#ifndef LT_TEXTBUF_H
#define LT_TEXTBUF_H

#include <stddef.h>
#include <stdint.h>

/* A growable byte string and int array (used by the three files). */
typedef struct lt_buf {
    char *p;
    size_t n, cap;
} lt_buf;
typedef struct lt_ivec {
    int32_t *p;
    size_t n, cap;
} lt_ivec;

int lt_buf_put(lt_buf *b, const void *s, size_t n); /* 0, or -1 when out of memory */
int lt_buf_putc(lt_buf *b, char c);
int lt_buf_puts(lt_buf *b, const char *s);
int lt_ivec_push(lt_ivec *v, int32_t x);

/* 1 if s[0..n) is well-formed UTF-8; otherwise 0 and *bad = offset of the first bad byte. */
int lt_utf8_valid(const char *s, size_t n, size_t *bad);
/* Decode one code point at s (n bytes left, valid UTF-8); returns its byte length. */
int lt_utf8_next(const unsigned char *s, size_t n, uint32_t *cp);

#endif /* LT_TEXTBUF_H */

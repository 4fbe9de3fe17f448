/*
 * test_formats.c - the file-format layer: util helpers, safetensors reader/writer/sets, config.json.
 * Malformed files are built byte by byte in a temporary directory (mkdtemp).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <check.h>
#include <dirent.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "core/core.h"
#include "formats/config.h"
#include "formats/safetensors.h"

static char g_tmp[256];

/* A path inside the temp dir (rotating static buffers so a few can be live at once). */
static const char *tp(const char *name) {
    static char bufs[8][512];
    static int k;
    char *b = bufs[k++ % 8];
    snprintf(b, 512, "%s/%s", g_tmp, name);
    return b;
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot create %s", path);
    if (n) ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

static void write_text(const char *path, const char *text) { write_bytes(path, text, strlen(text)); }

/* 8-byte little-endian header length (given explicitly), header text, then data_len bytes of data. */
static void write_st_raw(const char *path, uint64_t hlen_field, const char *header, size_t data_len) {
    size_t hl = strlen(header);
    size_t total = 8 + hl + data_len;
    unsigned char *buf = calloc(total + 1, 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(hlen_field >> (8 * i));
    memcpy(buf + 8, header, hl);
    for (size_t i = 0; i < data_len; i++) buf[8 + hl + i] = (unsigned char)(i * 7 + 1);
    write_bytes(path, buf, total);
    free(buf);
}

static void write_st(const char *path, const char *header, size_t data_len) {
    write_st_raw(path, strlen(header), header, data_len);
}

/* Both reading modes must fail with `want`, and the message must name the file and `needle`. */
static void expect_open_fails(const char *path, lt_status want, const char *needle) {
    for (int mm = 0; mm <= 1; mm++) {
        lt_error err = {0};
        lt_st_file *f = (lt_st_file *)0x1;
        lt_status s = lt_st_open(path, mm, &f, &err);
        ck_assert_msg(s == want, "%s (mmap=%d): status %d, want %d: %s", path, mm, s, want, err.msg);
        ck_assert_ptr_null(f);
        ck_assert_int_eq(err.status, want);
        ck_assert_msg(strstr(err.msg, path) != NULL, "message does not name the file: %s", err.msg);
        if (needle) ck_assert_msg(strstr(err.msg, needle) != NULL, "message lacks '%s': %s", needle, err.msg);
    }
}

#define EXPECT_OK(call, errv)                                                            \
    do {                                                                                 \
        lt_status s_ = (call);                                                           \
        ck_assert_msg(s_ == LT_OK, "%s failed with %d: %s", #call, (int)s_, (errv).msg); \
    } while (0)

/* ================================================================================================ */
/* util                                                                                             */

START_TEST(test_dtypes) {
    static const char *names[] = {"BOOL", "U8",  "I8",  "I16", "U16", "F16",     "BF16",   "I32",
                                  "U32",  "F32", "F64", "I64", "U64", "F8_E5M2", "F8_E4M3"};
    static const size_t sizes[] = {1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8, 1, 1};
    ck_assert_int_eq(LT_DT_COUNT, 15);
    for (int i = 0; i < LT_DT_COUNT; i++) {
        lt_dtype dt;
        ck_assert_str_eq(lt_dtype_name((lt_dtype)i), names[i]);
        ck_assert_int_eq(lt_dtype_from_name(names[i], &dt), 0);
        ck_assert_int_eq(dt, i);
        ck_assert_uint_eq(lt_dtype_size((lt_dtype)i), sizes[i]);
    }
    lt_dtype dt;
    ck_assert_int_eq(lt_dtype_from_name("f32", &dt), -1);
    ck_assert_int_eq(lt_dtype_from_name("F4", &dt), -1);
    ck_assert_int_eq(lt_dtype_from_name(NULL, &dt), -1);
}
END_TEST

static uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float bitsf(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

START_TEST(test_f16) {
    ck_assert(lt_f16_to_f32(0x3c00) == 1.0f);
    ck_assert(lt_f16_to_f32(0xc000) == -2.0f);
    ck_assert(lt_f16_to_f32(0x7bff) == 65504.0f);
    ck_assert(lt_f16_to_f32(0x0400) == ldexpf(1.0f, -14)); /* smallest normal */
    ck_assert(lt_f16_to_f32(0x0001) == ldexpf(1.0f, -24)); /* smallest subnormal */
    ck_assert(lt_f16_to_f32(0x03ff) == 1023.0f * ldexpf(1.0f, -24));
    ck_assert(lt_f16_to_f32(0x8001) == -ldexpf(1.0f, -24));
    ck_assert(lt_f16_to_f32(0x0200) == ldexpf(1.0f, -15));
    ck_assert(lt_f16_to_f32(0x0000) == 0.0f && !signbit(lt_f16_to_f32(0x0000)));
    ck_assert(lt_f16_to_f32(0x8000) == 0.0f && signbit(lt_f16_to_f32(0x8000)));
    ck_assert(isinf(lt_f16_to_f32(0x7c00)) && lt_f16_to_f32(0x7c00) > 0);
    ck_assert(isinf(lt_f16_to_f32(0xfc00)) && lt_f16_to_f32(0xfc00) < 0);
    ck_assert(isnan(lt_f16_to_f32(0x7e00)));
    ck_assert(isnan(lt_f16_to_f32(0x7c01)));
    ck_assert(lt_f16_to_f32(0x3555) == 0.333251953125f);
    /* every finite half converts exactly: compare against ldexp arithmetic */
    for (uint32_t h = 0; h < 0x10000; h++) {
        uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
        if (e == 0x1f) continue;
        double v = e ? ldexp(1.0 + m / 1024.0, (int)e - 15) : ldexp((double)m, -24);
        if (h & 0x8000) v = -v;
        ck_assert_msg(lt_f16_to_f32((uint16_t)h) == (float)v, "half 0x%04x", h);
    }
}
END_TEST

START_TEST(test_bf16) {
    ck_assert_uint_eq(lt_f32_to_bf16(1.0f), 0x3f80);
    ck_assert_uint_eq(lt_f32_to_bf16(-2.0f), 0xc000);
    ck_assert_uint_eq(lt_f32_to_bf16(bitsf(0x3f808000)), 0x3f80); /* tie, even below */
    ck_assert_uint_eq(lt_f32_to_bf16(bitsf(0x3f818000)), 0x3f82); /* tie, odd below: up */
    ck_assert_uint_eq(lt_f32_to_bf16(bitsf(0x3f808001)), 0x3f81);
    ck_assert_uint_eq(lt_f32_to_bf16(bitsf(0x3f807fff)), 0x3f80);
    ck_assert_uint_eq(lt_f32_to_bf16(bitsf(0x7f7fffff)), 0x7f80); /* rounds to inf */
    ck_assert_uint_eq(lt_f32_to_bf16(INFINITY), 0x7f80);
    ck_assert_uint_eq(lt_f32_to_bf16(-INFINITY), 0xff80);
    ck_assert_uint_eq(lt_f32_to_bf16(bitsf(0x00000001)), 0x0000); /* tiny subnormal */
    ck_assert(isnan(lt_bf16_to_f32(lt_f32_to_bf16(NAN))));
    ck_assert(isnan(lt_bf16_to_f32(lt_f32_to_bf16(bitsf(0x7f800001))))); /* signalling NaN stays NaN */
    ck_assert(isnan(lt_bf16_to_f32(lt_f32_to_bf16(bitsf(0xffffffff)))));
    ck_assert(lt_bf16_to_f32(0x3f80) == 1.0f);
    ck_assert(lt_bf16_to_f32(0x4049) == bitsf(0x40490000));
    for (uint32_t h = 0; h < 0x10000; h++) { /* bf16 -> f32 -> bf16 is the identity for non-NaN */
        float f = lt_bf16_to_f32((uint16_t)h);
        if (isnan(f)) continue;
        ck_assert_uint_eq(lt_f32_to_bf16(f), h);
        ck_assert_uint_eq(fbits(f), h << 16);
    }
}
END_TEST

START_TEST(test_convert) {
    uint16_t h[4] = {0x3c00, 0x0001, 0xfc00, 0xc000};
    uint16_t b[3] = {0x3f80, 0xc000, 0x4049};
    float f[3] = {1.5f, -0.0f, 3e38f};
    float out[4];
    ck_assert_int_eq(lt_convert_to_f32(out, h, LT_DT_F16, 4), 0);
    ck_assert(out[0] == 1.0f && out[1] == ldexpf(1, -24) && isinf(out[2]) && out[2] < 0 && out[3] == -2.0f);
    ck_assert_int_eq(lt_convert_to_f32(out, b, LT_DT_BF16, 3), 0);
    ck_assert(out[0] == 1.0f && out[1] == -2.0f && out[2] == bitsf(0x40490000));
    ck_assert_int_eq(lt_convert_to_f32(out, f, LT_DT_F32, 3), 0);
    ck_assert(memcmp(out, f, sizeof f) == 0);
    /* unaligned source */
    unsigned char raw[9];
    memcpy(raw + 1, h, 8);
    ck_assert_int_eq(lt_convert_to_f32(out, raw + 1, LT_DT_F16, 4), 0);
    ck_assert(out[0] == 1.0f && out[3] == -2.0f);
    ck_assert_int_eq(lt_convert_to_f32(out, f, LT_DT_I32, 1), -1);
    ck_assert_int_eq(lt_convert_to_f32(out, f, LT_DT_F64, 1), -1);
}
END_TEST

START_TEST(test_errors_and_paths) {
    lt_error e;
    lt_error_clear(&e);
    ck_assert_int_eq(e.status, LT_OK);
    ck_assert_str_eq(e.msg, "");
    ck_assert_int_eq(lt_fail(&e, LT_ERR_SHAPE, "tensor %s bad", "x"), LT_ERR_SHAPE);
    ck_assert_str_eq(e.msg, "tensor x bad");
    ck_assert_int_eq(lt_fail_prefix(&e, "loading %s", "m"), LT_ERR_SHAPE);
    ck_assert_str_eq(e.msg, "loading m: tensor x bad");
    ck_assert_int_eq(lt_fail(NULL, LT_ERR_IO, "nothing"), LT_ERR_IO);
    char big[3000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    lt_fail(&e, LT_ERR_IO, "%s", big);
    ck_assert_uint_eq(strlen(e.msg), sizeof e.msg - 1);
    lt_fail_prefix(&e, "p");
    ck_assert_uint_eq(strlen(e.msg), sizeof e.msg - 1);
    ck_assert(strncmp(e.msg, "p: aaa", 6) == 0);
    ck_assert_ptr_nonnull(lt_thread_error());
    ck_assert_ptr_eq(lt_thread_error(), lt_thread_error());

    char buf[32];
    ck_assert_int_eq(lt_path_join(buf, sizeof buf, "a/b", "c"), 0);
    ck_assert_str_eq(buf, "a/b/c");
    ck_assert_int_eq(lt_path_join(buf, sizeof buf, "a/b/", "c"), 0);
    ck_assert_str_eq(buf, "a/b/c");
    ck_assert_int_eq(lt_path_join(buf, sizeof buf, "", "c"), 0);
    ck_assert_str_eq(buf, "c");
    ck_assert_int_eq(lt_path_join(buf, 8, "abcdef", "ghi"), -1);

    double t0 = lt_now_seconds();
    ck_assert(t0 > 0);
    ck_assert(lt_now_seconds() >= t0);
}
END_TEST

START_TEST(test_files) {
    lt_error err = {0};
    const char *deep = tp("mk/a/b/c");
    EXPECT_OK(lt_mkdir_p(deep, &err), err);
    EXPECT_OK(lt_mkdir_p(deep, &err), err); /* exists: fine */
    struct stat sb;
    ck_assert(stat(deep, &sb) == 0 && S_ISDIR(sb.st_mode));
    write_text(tp("mk/file"), "x");
    ck_assert_int_eq(lt_mkdir_p(tp("mk/file/sub"), &err), LT_ERR_IO);

    const char *p = tp("mk/atomic.txt");
    EXPECT_OK(lt_write_file_atomic(p, "hello", 5, &err), err);
    char *data = NULL;
    size_t n = 0;
    EXPECT_OK(lt_read_file(p, &data, &n, &err), err);
    ck_assert_uint_eq(n, 5);
    ck_assert_str_eq(data, "hello");
    free(data);
    EXPECT_OK(lt_write_file_atomic(p, "bye", 3, &err), err); /* replaces */
    EXPECT_OK(lt_read_file(p, &data, &n, &err), err);
    ck_assert_str_eq(data, "bye");
    free(data);
    EXPECT_OK(lt_write_file_atomic(tp("mk/empty"), NULL, 0, &err), err);
    EXPECT_OK(lt_read_file(tp("mk/empty"), &data, &n, &err), err);
    ck_assert_uint_eq(n, 0);
    ck_assert_str_eq(data, "");
    free(data);

    /* failures: a missing directory; a rename onto a directory (the temp file must go) */
    const char *bad = tp("mk/nodir/x.txt");
    ck_assert_int_eq(lt_write_file_atomic(bad, "x", 1, &err), LT_ERR_IO);
    ck_assert_msg(strstr(err.msg, bad) != NULL, "%s", err.msg);
    ck_assert_msg(strstr(err.msg, "No such file") != NULL, "%s", err.msg);
    const char *dirtarget = tp("mk/a");
    ck_assert_int_eq(lt_write_file_atomic(dirtarget, "x", 1, &err), LT_ERR_IO);
    ck_assert_msg(strstr(err.msg, dirtarget) != NULL && strstr(err.msg, "rename") != NULL, "%s", err.msg);
    DIR *d = opendir(tp("mk"));
    struct dirent *de;
    while ((de = readdir(d)) != NULL) ck_assert_msg(strstr(de->d_name, ".tmp.") == NULL, "left %s", de->d_name);
    closedir(d);

    ck_assert_int_eq(lt_read_file(tp("mk/none"), &data, &n, &err), LT_ERR_IO);
    ck_assert_ptr_null(data);
    ck_assert_int_eq(lt_read_file(tp("mk/a"), &data, &n, &err), LT_ERR_IO);
}
END_TEST

/* ================================================================================================ */
/* safetensors: writer -> reader                                                                   */

static void fill(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)((i * 131u + seed * 17u + (i >> 3)) & 0xff);
}

static int rank_of(lt_dtype dt) { /* the safetensors crate's Dtype order */
    static const lt_dtype order[] = {LT_DT_BOOL, LT_DT_U8,  LT_DT_I8,  LT_DT_F8_E5M2, LT_DT_F8_E4M3,
                                     LT_DT_I16,  LT_DT_U16, LT_DT_F16, LT_DT_BF16,    LT_DT_I32,
                                     LT_DT_U32,  LT_DT_F32, LT_DT_F64, LT_DT_I64,     LT_DT_U64};
    for (int i = 0; i < 15; i++)
        if (order[i] == dt) return i;
    return -1;
}

/* Begin offset of a tensor, read back from the header of a file. */
static long long header_begin(const char *path, const char *name) {
    FILE *f = fopen(path, "rb");
    unsigned char lb[8];
    ck_assert_uint_eq(fread(lb, 1, 8, f), 8);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | lb[i];
    char *h = malloc(n + 1);
    ck_assert_uint_eq(fread(h, 1, n, f), n);
    fclose(f);
    json_t *root = json_loadb(h, n, 0, NULL);
    free(h);
    ck_assert_ptr_nonnull(root);
    json_t *e = json_object_get(root, name);
    ck_assert_ptr_nonnull(e);
    long long b = (long long)json_integer_value(json_array_get(json_object_get(e, "data_offsets"), 0));
    json_decref(root);
    return b;
}

START_TEST(test_roundtrip_all_dtypes) {
    enum { NT = LT_DT_COUNT + 4 };
    lt_st_entry ent[NT];
    unsigned char *bufs[NT];
    char names[NT][32];
    memset(ent, 0, sizeof ent);
    for (int i = 0; i < LT_DT_COUNT; i++) {
        snprintf(names[i], sizeof names[i], "t.%02d.%s", (i * 7) % LT_DT_COUNT, lt_dtype_name((lt_dtype)i));
        ent[i].name = names[i];
        ent[i].dtype = (lt_dtype)i;
        ent[i].ndim = 2;
        ent[i].shape[0] = 3;
        ent[i].shape[1] = 5;
    }
    int k = LT_DT_COUNT;
    snprintf(names[k], 32, "scalar");
    ent[k] = (lt_st_entry){.name = names[k], .dtype = LT_DT_F32, .ndim = 0};
    k++;
    snprintf(names[k], 32, "empty.rows");
    ent[k] = (lt_st_entry){.name = names[k], .dtype = LT_DT_BF16, .ndim = 2, .shape = {0, 4}};
    k++;
    snprintf(names[k], 32, "empty.cols");
    ent[k] = (lt_st_entry){.name = names[k], .dtype = LT_DT_F64, .ndim = 3, .shape = {4, 0, 2}, .data = NULL};
    k++;
    snprintf(names[k], 32, "eight.dims");
    ent[k] = (lt_st_entry){.name = names[k], .dtype = LT_DT_I16, .ndim = 8, .shape = {1, 2, 1, 2, 1, 2, 1, 3}};
    k++;
    ck_assert_int_eq(k, NT);
    for (int i = 0; i < NT; i++) {
        int64_t numel = 1;
        for (int d = 0; d < ent[i].ndim; d++) numel *= ent[i].shape[d];
        size_t nb = (size_t)numel * lt_dtype_size(ent[i].dtype);
        bufs[i] = malloc(nb + 1);
        fill(bufs[i], nb, (unsigned)i);
        ent[i].data = nb ? bufs[i] : NULL;
    }
    const char *kv[] = {"creator", "libloratune test", "note", "\xc3\xa9t\xc3\xa9 \"quoted\"", NULL};
    lt_error err = {0};
    const char *path = tp("all.safetensors");
    EXPECT_OK(lt_st_write(path, ent, NT, kv, &err), err);

    for (int mm = 0; mm <= 1; mm++) {
        lt_st_file *f = NULL;
        EXPECT_OK(lt_st_open(path, mm, &f, &err), err);
        ck_assert_int_eq(lt_st_count(f), NT);
        ck_assert_str_eq(lt_st_path(f), path);
        ck_assert_str_eq(lt_st_metadata(f, "format"), "pt");
        ck_assert_str_eq(lt_st_metadata(f, "creator"), "libloratune test");
        ck_assert_str_eq(lt_st_metadata(f, "note"), "\xc3\xa9t\xc3\xa9 \"quoted\"");
        ck_assert_ptr_null(lt_st_metadata(f, "missing"));
        ck_assert_int_eq(lt_st_metadata_count(f), 3);
        const char *mk, *mv;
        ck_assert_int_eq(lt_st_metadata_at(f, 0, &mk, &mv), 0);
        ck_assert_int_eq(lt_st_metadata_at(f, 3, &mk, &mv), -1);
        for (int i = 0; i < NT; i++) {
            const lt_st_tensor *t = lt_st_find(f, ent[i].name);
            ck_assert_msg(t != NULL, "missing %s", ent[i].name);
            ck_assert_str_eq(t->name, ent[i].name);
            ck_assert_int_eq(t->dtype, ent[i].dtype);
            ck_assert_int_eq(t->ndim, ent[i].ndim);
            int64_t numel = 1;
            for (int d = 0; d < t->ndim; d++) {
                ck_assert_int_eq(t->shape[d], ent[i].shape[d]);
                numel *= t->shape[d];
            }
            ck_assert_int_eq(t->numel, numel);
            ck_assert_uint_eq(t->nbytes, (uint64_t)numel * lt_dtype_size(t->dtype));
            ck_assert_ptr_nonnull(t->data);
            ck_assert_uint_eq((uintptr_t)t->data % lt_dtype_size(t->dtype), 0);
            if (t->nbytes) ck_assert(memcmp(t->data, bufs[i], (size_t)t->nbytes) == 0);
        }
        ck_assert_int_eq(lt_st_find(f, "scalar")->numel, 1);
        ck_assert_int_eq(lt_st_find(f, "scalar")->ndim, 0);
        ck_assert_ptr_null(lt_st_find(f, "nope"));
        /* iteration is sorted by name */
        const lt_st_tensor *ts = lt_st_tensors(f);
        for (int i = 1; i < NT; i++) ck_assert(strcmp(ts[i - 1].name, ts[i].name) < 0);
        lt_st_close(f);
    }
    /* layout: dtype alignment descending (the crate's order), then name */
    for (int i = 0; i < NT; i++)
        for (int j = 0; j < NT; j++) {
            if (i == j) continue;
            int ri = rank_of(ent[i].dtype), rj = rank_of(ent[j].dtype);
            int before = ri > rj || (ri == rj && strcmp(ent[i].name, ent[j].name) < 0);
            long long bi = header_begin(path, ent[i].name), bj = header_begin(path, ent[j].name);
            if (before) ck_assert_msg(bi <= bj, "%s should precede %s", ent[i].name, ent[j].name);
        }
    /* the header length is a multiple of 8 */
    FILE *fp = fopen(path, "rb");
    unsigned char lb[8];
    ck_assert_uint_eq(fread(lb, 1, 8, fp), 8);
    fclose(fp);
    ck_assert_uint_eq(lb[0] % 8, 0);
    for (int i = 0; i < NT; i++) free(bufs[i]);
}
END_TEST

START_TEST(test_writer_exact_bytes) {
    /* same layout as the safetensors crate (test_serialization) plus the metadata */
    float v[6] = {0, 1, 2, 3, 4, 5};
    lt_st_entry e = {.name = "attn.0", .dtype = LT_DT_F32, .ndim = 3, .shape = {1, 2, 3}, .data = v};
    lt_error err = {0};
    const char *path = tp("exact.safetensors");
    EXPECT_OK(lt_st_write(path, &e, 1, NULL, &err), err);
    const char *hdr = "{\"__metadata__\":{\"format\":\"pt\"},\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],"
                      "\"data_offsets\":[0,24]}}";
    size_t hl = strlen(hdr), padded = (hl + 7) / 8 * 8;
    FILE *f = fopen(path, "rb");
    unsigned char got[512];
    size_t n = fread(got, 1, sizeof got, f);
    fclose(f);
    ck_assert_uint_eq(n, 8 + padded + 24);
    ck_assert_uint_eq(got[0], padded);
    for (int i = 1; i < 8; i++) ck_assert_uint_eq(got[i], 0);
    ck_assert(memcmp(got + 8, hdr, hl) == 0);
    for (size_t i = hl; i < padded; i++) ck_assert_uint_eq(got[8 + i], ' ');
    ck_assert(memcmp(got + 8 + padded, v, 24) == 0);

    /* "format" given by the caller is kept, not duplicated */
    const char *kv[] = {"format", "np", NULL};
    EXPECT_OK(lt_st_write(path, &e, 1, kv, &err), err);
    lt_st_file *sf = NULL;
    EXPECT_OK(lt_st_open(path, 1, &sf, &err), err);
    ck_assert_str_eq(lt_st_metadata(sf, "format"), "np");
    ck_assert_int_eq(lt_st_metadata_count(sf), 1);
    lt_st_close(sf);

    /* an empty file set */
    EXPECT_OK(lt_st_write(tp("none.safetensors"), NULL, 0, NULL, &err), err);
    EXPECT_OK(lt_st_open(tp("none.safetensors"), 0, &sf, &err), err);
    ck_assert_int_eq(lt_st_count(sf), 0);
    lt_st_close(sf);
}
END_TEST

START_TEST(test_writer_rejects) {
    float v[2] = {1, 2};
    lt_error err = {0};
    lt_st_entry dup[2] = {{.name = "a", .dtype = LT_DT_F32, .ndim = 1, .shape = {2}, .data = v},
                          {.name = "a", .dtype = LT_DT_F16, .ndim = 1, .shape = {2}, .data = v}};
    ck_assert_int_eq(lt_st_write(tp("w1.safetensors"), dup, 2, NULL, &err), LT_ERR_ARGUMENT);
    ck_assert_int_eq(lt_st_write_sharded(tp("w1dir"), dup, 2, 0, &err), LT_ERR_ARGUMENT);
    lt_st_entry neg = {.name = "n", .dtype = LT_DT_F32, .ndim = 1, .shape = {-1}, .data = v};
    ck_assert_int_eq(lt_st_write(tp("w2.safetensors"), &neg, 1, NULL, &err), LT_ERR_SHAPE);
    lt_st_entry nodata = {.name = "n", .dtype = LT_DT_F32, .ndim = 1, .shape = {2}, .data = NULL};
    ck_assert_int_eq(lt_st_write(tp("w3.safetensors"), &nodata, 1, NULL, &err), LT_ERR_ARGUMENT);
    lt_st_entry meta = {.name = "__metadata__", .dtype = LT_DT_F32, .ndim = 1, .shape = {2}, .data = v};
    ck_assert_int_eq(lt_st_write(tp("w4.safetensors"), &meta, 1, NULL, &err), LT_ERR_ARGUMENT);
    lt_st_entry ok = {.name = "n", .dtype = LT_DT_F32, .ndim = 1, .shape = {2}, .data = v};
    ck_assert_int_eq(lt_st_write(tp("no/such/dir/x.safetensors"), &ok, 1, NULL, &err), LT_ERR_IO);
    ck_assert_msg(strstr(err.msg, "no/such/dir/x.safetensors") != NULL, "%s", err.msg);
    for (int i = 1; i <= 4; i++) {
        char name[32];
        snprintf(name, sizeof name, "w%d.safetensors", i);
        ck_assert_int_eq(access(tp(name), F_OK), -1);
    }
}
END_TEST

START_TEST(test_reader_unaligned_header) {
    /* a header whose length is not a multiple of 8: data must still come back aligned and intact */
    const char *hdr = "{\"b\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]},"
                      "\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[16,28]},"
                      "\"c\":{\"dtype\":\"I16\",\"shape\":[1],\"data_offsets\":[28,30]},"
                      "\"d\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[30,34]}}";
    ck_assert_uint_ne(strlen(hdr) % 8, 0);
    const char *path = tp("unaligned.safetensors");
    write_st(path, hdr, 34);
    unsigned char expect[34];
    for (size_t i = 0; i < 34; i++) expect[i] = (unsigned char)(i * 7 + 1);
    for (int mm = 0; mm <= 1; mm++) {
        lt_error err = {0};
        lt_st_file *f = NULL;
        EXPECT_OK(lt_st_open(path, mm, &f, &err), err);
        ck_assert_int_eq(lt_st_metadata_count(f), 0);
        static const struct {
            const char *n;
            int off, len;
        } want[] = {{"a", 16, 12}, {"b", 0, 16}, {"c", 28, 2}, {"d", 30, 4}};
        for (int i = 0; i < 4; i++) {
            const lt_st_tensor *t = lt_st_find(f, want[i].n);
            ck_assert_ptr_nonnull(t);
            ck_assert_uint_eq((uintptr_t)t->data % lt_dtype_size(t->dtype), 0);
            ck_assert(memcmp(t->data, expect + want[i].off, (size_t)want[i].len) == 0);
        }
        lt_st_close(f);
    }
}
END_TEST

/* ================================================================================================ */
/* safetensors: malformed files                                                                    */

#define F32_A_0_16 "\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}"

START_TEST(test_bad_too_small) {
    write_bytes(tp("small.st"), "\x02\0\0\0\0", 5);
    expect_open_fails(tp("small.st"), LT_ERR_TRUNCATED, NULL);
    write_bytes(tp("zero.st"), "", 0);
    expect_open_fails(tp("zero.st"), LT_ERR_TRUNCATED, NULL);
}
END_TEST

START_TEST(test_bad_header_past_eof) {
    write_st_raw(tp("hdrlen.st"), 1000, "{" F32_A_0_16 "}", 16);
    expect_open_fails(tp("hdrlen.st"), LT_ERR_TRUNCATED, "1000");
    write_st_raw(tp("hdrhuge.st"), UINT64_MAX, "{}", 0);
    expect_open_fails(tp("hdrhuge.st"), LT_ERR_TRUNCATED, NULL);
}
END_TEST

START_TEST(test_bad_header_too_large) {
    /* a sparse file large enough to hold a 100,000,001-byte header */
    const char *path = tp("hdrbig.st");
    FILE *f = fopen(path, "wb");
    uint64_t n = 100000001ULL;
    unsigned char lb[8];
    for (int i = 0; i < 8; i++) lb[i] = (unsigned char)(n >> (8 * i));
    fwrite(lb, 1, 8, f);
    fputc('{', f);
    fclose(f);
    ck_assert_int_eq(truncate(path, (off_t)(8 + n)), 0);
    expect_open_fails(path, LT_ERR_FORMAT, "100000001");
}
END_TEST

START_TEST(test_bad_truncated_data) {
    write_st(tp("trunc.st"), "{" F32_A_0_16 "}", 8);
    expect_open_fails(tp("trunc.st"), LT_ERR_TRUNCATED, "'a'");
}
END_TEST

START_TEST(test_bad_trailing_bytes) {
    write_st(tp("trail.st"), "{" F32_A_0_16 "}", 20);
    expect_open_fails(tp("trail.st"), LT_ERR_FORMAT, "4 unexpected bytes");
    write_st(tp("trail0.st"), "{}", 1);
    expect_open_fails(tp("trail0.st"), LT_ERR_FORMAT, NULL);
}
END_TEST

START_TEST(test_bad_overlap) {
    write_st(tp("overlap.st"), "{" F32_A_0_16 ",\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 24);
    expect_open_fails(tp("overlap.st"), LT_ERR_FORMAT, "overlap");
    expect_open_fails(tp("overlap.st"), LT_ERR_FORMAT, "'b'");
    expect_open_fails(tp("overlap.st"), LT_ERR_FORMAT, "'a'");
    /* same offsets twice */
    write_st(tp("overlap2.st"), "{" F32_A_0_16 ",\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16);
    expect_open_fails(tp("overlap2.st"), LT_ERR_FORMAT, "overlap");
}
END_TEST

START_TEST(test_bad_hole) {
    write_st(tp("hole.st"),
             "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
             20);
    expect_open_fails(tp("hole.st"), LT_ERR_FORMAT, "hole");
    expect_open_fails(tp("hole.st"), LT_ERR_FORMAT, "'b'");
}
END_TEST

START_TEST(test_bad_first_not_zero) {
    write_st(tp("first.st"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12);
    expect_open_fails(tp("first.st"), LT_ERR_FORMAT, "'a'");
}
END_TEST

START_TEST(test_bad_byte_count) {
    write_st(tp("count.st"), "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", 16);
    expect_open_fails(tp("count.st"), LT_ERR_SHAPE, "'w'");
    write_st(tp("count2.st"), "{\"w\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[0,4]}}", 4);
    expect_open_fails(tp("count2.st"), LT_ERR_SHAPE, "'w'");
}
END_TEST

START_TEST(test_bad_dtype) {
    write_st(tp("dtype.st"), "{\"w\":{\"dtype\":\"Q4_K\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2);
    expect_open_fails(tp("dtype.st"), LT_ERR_DTYPE, "'w'");
    expect_open_fails(tp("dtype.st"), LT_ERR_DTYPE, "Q4_K");
    write_st(tp("dtype2.st"), "{\"w\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
    expect_open_fails(tp("dtype2.st"), LT_ERR_DTYPE, "f32");
}
END_TEST

START_TEST(test_bad_not_object) {
    write_st(tp("arr.st"), "[1, 2, 3]", 0);
    expect_open_fails(tp("arr.st"), LT_ERR_FORMAT, NULL);
    write_st(tp("num.st"), "42      ", 0);
    expect_open_fails(tp("num.st"), LT_ERR_FORMAT, NULL);
    write_st(tp("lead.st"), " {}", 0); /* must start with '{' */
    expect_open_fails(tp("lead.st"), LT_ERR_FORMAT, NULL);
    write_st(tp("entry.st"), "{\"a\": 5}", 0);
    expect_open_fails(tp("entry.st"), LT_ERR_FORMAT, "'a'");
    write_st(tp("meta.st"), "{\"__metadata__\":{\"format\":1}}", 0);
    expect_open_fails(tp("meta.st"), LT_ERR_FORMAT, "__metadata__");
    write_st(tp("nooff.st"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4);
    expect_open_fails(tp("nooff.st"), LT_ERR_FORMAT, "data_offsets");
    write_st(tp("off3.st"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 4);
    expect_open_fails(tp("off3.st"), LT_ERR_FORMAT, "'a'");
    write_st(tp("shapestr.st"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4);
    expect_open_fails(tp("shapestr.st"), LT_ERR_FORMAT, "'a'");
    write_st(tp("dup.st"), "{" F32_A_0_16 "," F32_A_0_16 "}", 16);
    expect_open_fails(tp("dup.st"), LT_ERR_FORMAT, NULL);
    write_st(tp("empty_hdr.st"), "", 0);
    expect_open_fails(tp("empty_hdr.st"), LT_ERR_FORMAT, NULL);
}
END_TEST

START_TEST(test_bad_json) {
    write_st(tp("json.st"), "{\"a\":{\"dtype\":\"F32\",", 4);
    expect_open_fails(tp("json.st"), LT_ERR_JSON, NULL);
    write_st(tp("json2.st"), "\xff\xfe garbage", 0);
    expect_open_fails(tp("json2.st"), LT_ERR_JSON, NULL);
}
END_TEST

START_TEST(test_bad_end_before_begin) {
    write_st(tp("endbegin.st"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8);
    expect_open_fails(tp("endbegin.st"), LT_ERR_FORMAT, "'a'");
}
END_TEST

START_TEST(test_bad_shape_overflow) {
    write_st(tp("overflow.st"),
             "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,0]}}", 0);
    expect_open_fails(tp("overflow.st"), LT_ERR_SHAPE, "'a'");
    /* numel fits but numel * 8 does not */
    write_st(tp("overflow2.st"),
             "{\"a\":{\"dtype\":\"F64\",\"shape\":[1152921504606846976, 4],\"data_offsets\":[0,0]}}", 0);
    expect_open_fails(tp("overflow2.st"), LT_ERR_SHAPE, "'a'");
    write_st(tp("negdim.st"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0);
    expect_open_fails(tp("negdim.st"), LT_ERR_SHAPE, "'a'");
    write_st(tp("ninedims.st"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1);
    expect_open_fails(tp("ninedims.st"), LT_ERR_SHAPE, "'a'");
}
END_TEST

START_TEST(test_zero_size_and_scalar_files) {
    /* hand-written: zero-size tensors sharing an offset, a scalar, and a BOOL */
    const char *hdr = "{\"z1\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
                      "\"z2\":{\"dtype\":\"F16\",\"shape\":[3,0],\"data_offsets\":[0,0]},"
                      "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
                      "\"z3\":{\"dtype\":\"I64\",\"shape\":[0,2],\"data_offsets\":[4,4]},"
                      "\"b\":{\"dtype\":\"BOOL\",\"shape\":[2],\"data_offsets\":[4,6]}}";
    write_st(tp("zs.st"), hdr, 6);
    for (int mm = 0; mm <= 1; mm++) {
        lt_error err = {0};
        lt_st_file *f = NULL;
        EXPECT_OK(lt_st_open(tp("zs.st"), mm, &f, &err), err);
        ck_assert_int_eq(lt_st_count(f), 5);
        ck_assert_int_eq(lt_st_find(f, "z2")->numel, 0);
        ck_assert_int_eq(lt_st_find(f, "z2")->ndim, 2);
        ck_assert_int_eq(lt_st_find(f, "s")->numel, 1);
        ck_assert_int_eq(lt_st_find(f, "s")->ndim, 0);
        ck_assert_uint_eq(lt_st_find(f, "b")->nbytes, 2);
        ck_assert_ptr_nonnull(lt_st_find(f, "z3")->data);
        lt_st_close(f);
    }
    /* only empty tensors: data buffer of 0 bytes */
    write_st(tp("zonly.st"), "{\"z\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[0,0]}}", 0);
    lt_error err = {0};
    lt_st_file *f = NULL;
    EXPECT_OK(lt_st_open(tp("zonly.st"), 1, &f, &err), err);
    lt_st_close(f);
    write_st(tp("empty.st"), "{}", 0);
    EXPECT_OK(lt_st_open(tp("empty.st"), 1, &f, &err), err);
    ck_assert_int_eq(lt_st_count(f), 0);
    lt_st_close(f);
    ck_assert_int_eq(lt_st_open(tp("does-not-exist.st"), 1, &f, &err), LT_ERR_IO);
    ck_assert_int_eq(lt_st_open(g_tmp, 1, &f, &err), LT_ERR_IO);
}
END_TEST

/* ================================================================================================ */
/* sharded writer and directory sets                                                               */

static const char *find_in_json_map(json_t *root, const char *obj, const char *key) {
    return json_string_value(json_object_get(json_object_get(root, obj), key));
}

START_TEST(test_sharded) {
    /* order a(64) b(64) big(400) c(64) d(64) e(64), limit 150: huggingface_hub gives
     * [big] [a b] [c d] [e] (a too-large tensor's shard is appended at once) */
    static const char *nm[] = {"a", "b", "big", "c", "d", "e"};
    static const int sizes[] = {16, 16, 100, 16, 16, 16};
    static const char *want_shard[] = {"model-00002-of-00004.safetensors", "model-00002-of-00004.safetensors",
                                       "model-00001-of-00004.safetensors", "model-00003-of-00004.safetensors",
                                       "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors"};
    lt_st_entry ent[6];
    float *bufs[6];
    for (int i = 0; i < 6; i++) {
        bufs[i] = malloc((size_t)sizes[i] * sizeof(float));
        for (int j = 0; j < sizes[i]; j++) bufs[i][j] = (float)(i * 1000 + j);
        ent[i] = (lt_st_entry){.name = nm[i], .dtype = LT_DT_F32, .ndim = 1, .shape = {sizes[i]}, .data = bufs[i]};
    }
    lt_error err = {0};
    char dir[512];
    snprintf(dir, sizeof dir, "%s", tp("sharded/out"));
    /* a stale single-file save is removed by a sharded save */
    EXPECT_OK(lt_mkdir_p(dir, &err), err);
    write_text(tp("sharded/out/model.safetensors"), "stale");
    write_text(tp("sharded/out/model-00001-of-00009.safetensors"), "stale");
    write_text(tp("sharded/out/keep.txt"), "user file");
    EXPECT_OK(lt_st_write_sharded(dir, ent, 6, 150, &err), err);
    ck_assert_int_eq(access(tp("sharded/out/model.safetensors"), F_OK), -1);
    ck_assert_int_eq(access(tp("sharded/out/model-00001-of-00009.safetensors"), F_OK), -1);
    ck_assert_int_eq(access(tp("sharded/out/keep.txt"), F_OK), 0);

    json_error_t je;
    json_t *idx = json_load_file(tp("sharded/out/model.safetensors.index.json"), 0, &je);
    ck_assert_msg(idx != NULL, "%s", je.text);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_size")),
                     (5 * 16 + 100) * 4);
    ck_assert_uint_eq(json_object_size(json_object_get(idx, "weight_map")), 6);
    for (int i = 0; i < 6; i++) ck_assert_str_eq(find_in_json_map(idx, "weight_map", nm[i]), want_shard[i]);
    json_decref(idx);

    for (int mm = 0; mm <= 1; mm++) {
        lt_st_set *set = NULL;
        EXPECT_OK(lt_st_set_open_dir(dir, mm, &set, &err), err);
        ck_assert_int_eq(lt_st_set_n_files(set), 4);
        ck_assert_int_eq(lt_st_set_count(set), 6);
        for (int i = 0; i < 6; i++) {
            const lt_st_tensor *t = lt_st_set_find(set, nm[i]);
            ck_assert_ptr_nonnull(t);
            ck_assert_int_eq(t->shape[0], sizes[i]);
            ck_assert(memcmp(t->data, bufs[i], (size_t)sizes[i] * 4) == 0);
            const char *fp = lt_st_path(lt_st_set_file_of(set, nm[i]));
            ck_assert_msg(strstr(fp, want_shard[i]) != NULL, "%s in %s", nm[i], fp);
            ck_assert_str_eq(lt_st_set_tensor_at(set, i)->name, nm[i]); /* names happen to be sorted */
            ck_assert_str_eq(lt_st_metadata(lt_st_set_file(set, i % 4), "format"), "pt");
        }
        ck_assert_ptr_null(lt_st_set_find(set, "zzz"));
        ck_assert_ptr_null(lt_st_set_tensor_at(set, 6));
        lt_st_set_close(set);
    }

    /* everything fits: model.safetensors only; the shards and the index of the last save go */
    EXPECT_OK(lt_st_write_sharded(dir, ent, 6, 0, &err), err);
    ck_assert_int_eq(access(tp("sharded/out/model.safetensors"), F_OK), 0);
    ck_assert_int_eq(access(tp("sharded/out/model.safetensors.index.json"), F_OK), -1);
    ck_assert_int_eq(access(tp("sharded/out/model-00001-of-00004.safetensors"), F_OK), -1);
    ck_assert_int_eq(access(tp("sharded/out/keep.txt"), F_OK), 0);
    lt_st_set *set = NULL;
    EXPECT_OK(lt_st_set_open_dir(dir, 1, &set, &err), err);
    ck_assert_int_eq(lt_st_set_n_files(set), 1);
    ck_assert_int_eq(lt_st_set_count(set), 6);
    ck_assert(memcmp(lt_st_set_find(set, "big")->data, bufs[2], 400) == 0);
    lt_st_set_close(set);

    /* exactly at the limit stays in one shard */
    EXPECT_OK(lt_st_write_sharded(tp("sharded/exact"), ent, 2, 128, &err), err);
    ck_assert_int_eq(access(tp("sharded/exact/model.safetensors"), F_OK), 0);
    for (int i = 0; i < 6; i++) free(bufs[i]);
}
END_TEST

/* Two small shards with known tensors, plus an index text. */
static void make_shards(const char *sub, const char *index_json) {
    char d[512];
    snprintf(d, sizeof d, "%s/%s", g_tmp, sub);
    lt_error err = {0};
    EXPECT_OK(lt_mkdir_p(d, &err), err);
    float v[2] = {1, 2};
    lt_st_entry a = {.name = "x.a", .dtype = LT_DT_F32, .ndim = 1, .shape = {2}, .data = v};
    lt_st_entry b = {.name = "x.b", .dtype = LT_DT_F32, .ndim = 1, .shape = {2}, .data = v};
    char p[600];
    snprintf(p, sizeof p, "%s/s1.safetensors", d);
    EXPECT_OK(lt_st_write(p, &a, 1, NULL, &err), err);
    snprintf(p, sizeof p, "%s/s2.safetensors", d);
    EXPECT_OK(lt_st_write(p, &b, 1, NULL, &err), err);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", d);
    write_text(p, index_json);
}

static void expect_set_fails(const char *sub, lt_status want, const char *needle) {
    char d[512];
    snprintf(d, sizeof d, "%s/%s", g_tmp, sub);
    for (int mm = 0; mm <= 1; mm++) {
        lt_error err = {0};
        lt_st_set *set = (lt_st_set *)0x1;
        lt_status s = lt_st_set_open_dir(d, mm, &set, &err);
        ck_assert_msg(s == want, "%s: status %d, want %d: %s", sub, s, want, err.msg);
        ck_assert_ptr_null(set);
        if (needle) ck_assert_msg(strstr(err.msg, needle) != NULL, "message lacks '%s': %s", needle, err.msg);
    }
}

START_TEST(test_index_ok) {
    make_shards("idx_ok", "{\"metadata\":{\"total_size\":16},\"weight_map\":{\"x.a\":\"s1.safetensors\","
                          "\"x.b\":\"s2.safetensors\"}}");
    lt_error err = {0};
    lt_st_set *set = NULL;
    EXPECT_OK(lt_st_set_open_dir(tp("idx_ok"), 1, &set, &err), err);
    ck_assert_int_eq(lt_st_set_n_files(set), 2);
    ck_assert_ptr_nonnull(lt_st_set_find(set, "x.a"));
    ck_assert_ptr_nonnull(lt_st_set_find(set, "x.b"));
    lt_st_set_close(set);
}
END_TEST

START_TEST(test_index_missing_shard) {
    make_shards("idx_noshard", "{\"weight_map\":{\"x.a\":\"s1.safetensors\",\"x.b\":\"s3.safetensors\"}}");
    expect_set_fails("idx_noshard", LT_ERR_MISSING, "s3.safetensors");
    expect_set_fails("idx_noshard", LT_ERR_MISSING, "x.b");
}
END_TEST

START_TEST(test_index_missing_tensor) {
    make_shards("idx_notensor", "{\"weight_map\":{\"x.a\":\"s1.safetensors\",\"x.b\":\"s2.safetensors\","
                                "\"x.c\":\"s2.safetensors\"}}");
    expect_set_fails("idx_notensor", LT_ERR_MISSING, "x.c");
    /* a tensor that exists, but in the other shard */
    make_shards("idx_wrong", "{\"weight_map\":{\"x.a\":\"s2.safetensors\",\"x.b\":\"s2.safetensors\"}}");
    expect_set_fails("idx_wrong", LT_ERR_MISSING, "x.a");
}
END_TEST

START_TEST(test_index_two_shards) {
    make_shards("idx_dup", "{\"weight_map\":{\"x.a\":\"s1.safetensors\",\"x.b\":\"s2.safetensors\"}}");
    /* put x.a into s2 as well */
    float v[2] = {3, 4};
    lt_st_entry e[2] = {{.name = "x.a", .dtype = LT_DT_F32, .ndim = 1, .shape = {2}, .data = v},
                        {.name = "x.b", .dtype = LT_DT_F32, .ndim = 1, .shape = {2}, .data = v}};
    lt_error err = {0};
    EXPECT_OK(lt_st_write(tp("idx_dup/s2.safetensors"), e, 2, NULL, &err), err);
    expect_set_fails("idx_dup", LT_ERR_FORMAT, "x.a");
}
END_TEST

START_TEST(test_index_bad) {
    make_shards("idx_json", "{\"weight_map\": ");
    expect_set_fails("idx_json", LT_ERR_JSON, NULL);
    make_shards("idx_nomap", "{\"metadata\":{}}");
    expect_set_fails("idx_nomap", LT_ERR_MISSING, "weight_map");
    make_shards("idx_type", "{\"weight_map\":{\"x.a\":1}}");
    expect_set_fails("idx_type", LT_ERR_JSON, "x.a");
    make_shards("idx_escape", "{\"weight_map\":{\"x.a\":\"../idx_ok/s1.safetensors\"}}");
    expect_set_fails("idx_escape", LT_ERR_FORMAT, "x.a");
    /* a corrupt shard reports the shard's own status */
    make_shards("idx_corrupt", "{\"weight_map\":{\"x.a\":\"s1.safetensors\"}}");
    write_bytes(tp("idx_corrupt/s1.safetensors"), "\x01\0\0", 3);
    expect_set_fails("idx_corrupt", LT_ERR_TRUNCATED, "s1.safetensors");
}
END_TEST

START_TEST(test_dir_without_weights) {
    lt_error err = {0};
    EXPECT_OK(lt_mkdir_p(tp("noweights"), &err), err);
    expect_set_fails("noweights", LT_ERR_MISSING, "model.safetensors");
    expect_set_fails("not-even-a-dir", LT_ERR_MISSING, NULL);
}
END_TEST

/* ================================================================================================ */
/* config.json                                                                                      */

static lt_status load_cfg_text(const char *name, const char *text, lt_model_config *cfg, lt_error *err) {
    write_text(tp(name), text);
    return lt_config_load(tp(name), cfg, err);
}

static void expect_cfg_fails(const char *name, const char *text, lt_status want, const char *needle) {
    lt_model_config cfg;
    lt_error err = {0};
    lt_status s = load_cfg_text(name, text, &cfg, &err);
    ck_assert_msg(s == want, "%s: status %d, want %d: %s", name, s, want, err.msg);
    ck_assert_msg(strstr(err.msg, tp(name)) != NULL, "message lacks the file: %s", err.msg);
    if (needle) ck_assert_msg(strstr(err.msg, needle) != NULL, "message lacks '%s': %s", needle, err.msg);
}

#define LLAMA31_BASE                                                                                        \
    "\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"vocab_size\":128256,"              \
    "\"hidden_size\":4096,\"intermediate_size\":14336,\"num_hidden_layers\":32,\"num_attention_heads\":32," \
    "\"num_key_value_heads\":8,\"max_position_embeddings\":131072,\"rms_norm_eps\":1e-05,"                  \
    "\"bos_token_id\":128000,\"eos_token_id\":[128001,128008,128009],\"torch_dtype\":\"bfloat16\","         \
    "\"tie_word_embeddings\":false,\"hidden_act\":\"silu\",\"attention_bias\":false,\"mlp_bias\":false"

/* Independent double-precision transcription of the llama3 rule (docs/spec/formats.md). */
static void llama3_ref(double theta, int dim, double factor, double lff, double hff, double orig, double *out) {
    const double pi = 3.14159265358979323846;
    double low_wav = orig / lff, high_wav = orig / hff;
    for (int i = 0; i < dim / 2; i++) {
        double inv = 1.0 / pow(theta, (2.0 * i) / dim);
        double wav = 2 * pi / inv;
        if (wav > low_wav) {
            out[i] = inv / factor;
        } else if (wav < high_wav) {
            out[i] = inv;
        } else {
            double s = (orig / wav - lff) / (hff - lff);
            out[i] = (1 - s) * inv / factor + s * inv;
        }
    }
}

static void check_llama3_values(const lt_model_config *cfg) {
    float inv[64];
    double ref[64];
    ck_assert_int_eq(lt_rope_inv_freq(cfg, NULL, 0), 64);
    ck_assert_int_eq(lt_rope_inv_freq(cfg, inv, 63), -1);
    ck_assert_int_eq(lt_rope_inv_freq(cfg, inv, 64), 64);
    llama3_ref(500000.0, 128, 8.0, 1.0, 4.0, 8192.0, ref);
    int n_low = 0, n_mid = 0, n_high = 0;
    for (int i = 0; i < 64; i++) {
        double rel = fabs(inv[i] - ref[i]) / ref[i];
        ck_assert_msg(rel <= 1e-6, "inv_freq[%d] = %.9g, reference %.9g (rel %.3g)", i, inv[i], ref[i], rel);
        double wav = 2 * 3.14159265358979323846 / (1.0 / pow(500000.0, (2.0 * i) / 128));
        if (wav < 8192.0 / 4) n_high++;
        else if (wav > 8192.0) n_low++;
        else n_mid++;
    }
    ck_assert(n_low > 0 && n_mid > 0 && n_high > 0); /* all three branches are exercised */
    ck_assert(inv[0] == 1.0f);
}

START_TEST(test_config_llama31_rope_scaling) {
    lt_model_config cfg;
    lt_error err = {0};
    EXPECT_OK(load_cfg_text("c_l31.json",
                            "{" LLAMA31_BASE ",\"rope_theta\":500000.0,\"rope_scaling\":{\"factor\":8.0,"
                            "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":"
                            "8192,\"rope_type\":\"llama3\"}}",
                            &cfg, &err),
              err);
    ck_assert_str_eq(cfg.architecture, "LlamaForCausalLM");
    ck_assert_int_eq(cfg.arch, LT_ARCH_LLAMA);
    ck_assert_str_eq(cfg.model_type, "llama");
    ck_assert_int_eq(cfg.vocab_size, 128256);
    ck_assert_int_eq(cfg.hidden_size, 4096);
    ck_assert_int_eq(cfg.intermediate_size, 14336);
    ck_assert_int_eq(cfg.num_hidden_layers, 32);
    ck_assert_int_eq(cfg.num_attention_heads, 32);
    ck_assert_int_eq(cfg.num_key_value_heads, 8);
    ck_assert_int_eq(cfg.head_dim, 128);
    ck_assert_int_eq(cfg.max_position_embeddings, 131072);
    ck_assert(cfg.rms_norm_eps == 1e-5);
    ck_assert(cfg.rope_theta == 500000.0);
    ck_assert_int_eq(cfg.bos_token_id, 128000);
    ck_assert_int_eq(cfg.eos_token_id, 128001);
    ck_assert_int_eq(cfg.n_eos, 3);
    ck_assert_int_eq(cfg.eos_token_ids[2], 128009);
    ck_assert_str_eq(cfg.torch_dtype, "bfloat16");
    ck_assert_int_eq(cfg.tie_word_embeddings, 0);
    ck_assert_int_eq(cfg.activation, LT_ACT_SILU);
    ck_assert_int_eq(cfg.rope_type, LT_ROPE_LLAMA3);
    ck_assert(cfg.rope_factor == 8.0 && cfg.rope_low_freq_factor == 1.0 && cfg.rope_high_freq_factor == 4.0);
    ck_assert_int_eq(cfg.rope_original_max_position_embeddings, 8192);
    ck_assert_int_eq(cfg.rot_dim, 128);
    ck_assert(cfg.partial_rotary_factor == 1.0);
    ck_assert_int_eq(cfg.qk_norm, 0);
    ck_assert(cfg.norm_offset == 0.0f && cfg.embed_scale == 1.0 && cfg.sliding_window == 0);
    check_llama3_values(&cfg);
}
END_TEST

START_TEST(test_config_rope_parameters) {
    /* the newer spelling, rope_theta inside the dict and none at top level */
    lt_model_config cfg;
    lt_error err = {0};
    EXPECT_OK(load_cfg_text("c_rp.json",
                            "{" LLAMA31_BASE ",\"rope_parameters\":{\"rope_type\":\"llama3\",\"rope_theta\":500000.0,"
                            "\"factor\":8.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
                            "\"original_max_position_embeddings\":8192}}",
                            &cfg, &err),
              err);
    ck_assert(cfg.rope_theta == 500000.0);
    ck_assert_int_eq(cfg.rope_type, LT_ROPE_LLAMA3);
    check_llama3_values(&cfg);
    /* legacy "type" spelling */
    EXPECT_OK(load_cfg_text("c_type.json",
                            "{" LLAMA31_BASE ",\"rope_theta\":500000,\"rope_scaling\":{\"type\":\"llama3\","
                            "\"factor\":8,\"low_freq_factor\":1,\"high_freq_factor\":4,"
                            "\"original_max_position_embeddings\":8192}}",
                            &cfg, &err),
              err);
    check_llama3_values(&cfg);
}
END_TEST

START_TEST(test_config_default_and_linear_rope) {
    lt_model_config cfg;
    lt_error err = {0};
    EXPECT_OK(load_cfg_text("c_min.json", "{\"architectures\":[\"LlamaForCausalLM\"]}", &cfg, &err), err);
    /* LlamaConfig defaults */
    ck_assert_int_eq(cfg.vocab_size, 32000);
    ck_assert_int_eq(cfg.hidden_size, 4096);
    ck_assert_int_eq(cfg.intermediate_size, 11008);
    ck_assert_int_eq(cfg.num_hidden_layers, 32);
    ck_assert_int_eq(cfg.num_attention_heads, 32);
    ck_assert_int_eq(cfg.num_key_value_heads, 32);
    ck_assert_int_eq(cfg.head_dim, 128);
    ck_assert_int_eq(cfg.max_position_embeddings, 2048);
    ck_assert(cfg.rms_norm_eps == 1e-6);
    ck_assert(cfg.rope_theta == 10000.0);
    ck_assert_int_eq(cfg.rope_type, LT_ROPE_DEFAULT);
    ck_assert_int_eq(cfg.bos_token_id, -1);
    ck_assert_int_eq(cfg.eos_token_id, -1);
    ck_assert_int_eq(cfg.n_eos, 0);
    ck_assert_str_eq(cfg.hidden_act, "silu");
    ck_assert_str_eq(cfg.torch_dtype, "");
    ck_assert_str_eq(cfg.model_type, "");
    float inv[64];
    ck_assert_int_eq(lt_rope_inv_freq(&cfg, inv, 64), 64);
    for (int i = 0; i < 64; i++) {
        double ref = 1.0 / pow(10000.0, (2.0 * i) / 128);
        ck_assert_msg(fabs(inv[i] - ref) / ref <= 1e-6, "inv[%d] %.9g vs %.9g", i, inv[i], ref);
        /* the float32 path: 1 / (float)pow(10000, (float)(2i) / 128) */
        float e = (float)(2 * i) / 128.0f;
        ck_assert(inv[i] == 1.0f / (float)pow(10000.0, (double)e));
    }

    /* linear, null values, explicit head_dim, partial rotary, eos as an int, "dtype" spelling */
    EXPECT_OK(load_cfg_text("c_lin.json",
                            "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":256,\"num_attention_heads\":4,"
                            "\"num_key_value_heads\":null,\"head_dim\":32,\"partial_rotary_factor\":0.5,"
                            "\"rope_scaling\":{\"type\":\"linear\",\"factor\":4.0},\"eos_token_id\":7,"
                            "\"bos_token_id\":null,\"dtype\":\"float32\",\"tie_word_embeddings\":true}",
                            &cfg, &err),
              err);
    ck_assert_int_eq(cfg.num_key_value_heads, 4);
    ck_assert_int_eq(cfg.head_dim, 32);
    ck_assert_int_eq(cfg.rot_dim, 16);
    ck_assert_int_eq(cfg.rope_type, LT_ROPE_LINEAR);
    ck_assert_int_eq(cfg.eos_token_id, 7);
    ck_assert_int_eq(cfg.n_eos, 1);
    ck_assert_int_eq(cfg.bos_token_id, -1);
    ck_assert_str_eq(cfg.torch_dtype, "float32");
    ck_assert_int_eq(cfg.tie_word_embeddings, 1);
    ck_assert_int_eq(lt_rope_inv_freq(&cfg, inv, 64), 8);
    for (int i = 0; i < 8; i++) {
        double ref = 1.0 / pow(10000.0, (2.0 * i) / 16) / 4.0;
        ck_assert_msg(fabs(inv[i] - ref) / ref <= 1e-6, "inv[%d] %.9g vs %.9g", i, inv[i], ref);
    }
    /* rope_type default / null */
    EXPECT_OK(load_cfg_text("c_def.json",
                            "{\"architectures\":[\"LlamaForCausalLM\"],\"rope_scaling\":{\"rope_type\":\"default\"},"
                            "\"rope_parameters\":null}",
                            &cfg, &err),
              err);
    ck_assert_int_eq(cfg.rope_type, LT_ROPE_DEFAULT);
}
END_TEST

START_TEST(test_config_errors) {
    expect_cfg_fails("e_json.json", "{\"architectures\":[\"LlamaForCausalLM\"],", LT_ERR_JSON, NULL);
    expect_cfg_fails("e_notobj.json", "[1,2]", LT_ERR_JSON, NULL);
    expect_cfg_fails("e_noarch.json", "{\"hidden_size\":4096}", LT_ERR_MISSING, "architectures");
    expect_cfg_fails("e_emptyarch.json", "{\"architectures\":[]}", LT_ERR_MISSING, "architectures");
    expect_cfg_fails("e_archtype.json", "{\"architectures\":\"LlamaForCausalLM\"}", LT_ERR_JSON, "architectures");
    expect_cfg_fails("e_arch.json", "{\"architectures\":[\"FalconForCausalLM\"]}", LT_ERR_ARCH, "FalconForCausalLM");
    expect_cfg_fails("e_arch2.json", "{\"architectures\":[\"GPT2LMHeadModel\"]}", LT_ERR_ARCH, "LlamaForCausalLM");
    expect_cfg_fails("e_type.json", "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":\"4096\"}", LT_ERR_JSON,
                     "hidden_size");
    expect_cfg_fails("e_type2.json", "{\"architectures\":[\"LlamaForCausalLM\"],\"num_hidden_layers\":2.5}",
                     LT_ERR_JSON, "num_hidden_layers");
    expect_cfg_fails("e_type3.json", "{\"architectures\":[\"LlamaForCausalLM\"],\"rms_norm_eps\":\"1e-5\"}",
                     LT_ERR_JSON, "rms_norm_eps");
    expect_cfg_fails("e_type4.json", "{\"architectures\":[\"LlamaForCausalLM\"],\"tie_word_embeddings\":1}",
                     LT_ERR_JSON, "tie_word_embeddings");
    expect_cfg_fails("e_type5.json", "{\"architectures\":[\"LlamaForCausalLM\"],\"eos_token_id\":\"2\"}", LT_ERR_JSON,
                     "eos_token_id");
    expect_cfg_fails("e_type6.json", "{\"architectures\":[\"LlamaForCausalLM\"],\"rope_scaling\":[1]}", LT_ERR_JSON,
                     "rope_scaling");
    expect_cfg_fails("e_kv.json",
                     "{\"architectures\":[\"LlamaForCausalLM\"],\"num_attention_heads\":32,\"num_key_value_heads\":5}",
                     LT_ERR_FORMAT, "num_key_value_heads");
    expect_cfg_fails("e_hd.json",
                     "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":100,\"num_attention_heads\":3}",
                     LT_ERR_FORMAT, "hidden_size");
    expect_cfg_fails("e_neg.json", "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":0}", LT_ERR_FORMAT,
                     "vocab_size");
    expect_cfg_fails("e_neg2.json", "{\"architectures\":[\"LlamaForCausalLM\"],\"intermediate_size\":-5}",
                     LT_ERR_FORMAT, "intermediate_size");
    expect_cfg_fails(
        "e_yarn.json",
        "{\"architectures\":[\"LlamaForCausalLM\"],\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}",
        LT_ERR_UNSUPPORTED, "yarn");
    expect_cfg_fails("e_dyn.json",
                     "{\"architectures\":[\"LlamaForCausalLM\"],\"rope_scaling\":{\"type\":\"dynamic\",\"factor\":4}}",
                     LT_ERR_UNSUPPORTED, "dynamic");
    expect_cfg_fails(
        "e_l3.json",
        "{\"architectures\":[\"LlamaForCausalLM\"],\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,"
        "\"high_freq_factor\":4,\"original_max_position_embeddings\":8192}}",
        LT_ERR_MISSING, "low_freq_factor");
    expect_cfg_fails(
        "e_l3b.json",
        "{\"architectures\":[\"LlamaForCausalLM\"],\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,"
        "\"low_freq_factor\":4,\"high_freq_factor\":4,\"original_max_position_embeddings\":8192}}",
        LT_ERR_FORMAT, "high_freq_factor");
    expect_cfg_fails("e_lin.json",
                     "{\"architectures\":[\"LlamaForCausalLM\"],\"rope_scaling\":{\"rope_type\":\"linear\"}}",
                     LT_ERR_MISSING, "factor");
    expect_cfg_fails("e_act.json", "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_act\":\"relu\"}",
                     LT_ERR_UNSUPPORTED, "relu");
    expect_cfg_fails("e_nested.json",
                     "{\"architectures\":[\"LlamaForCausalLM\"],\"rope_parameters\":{\"full_attention\":"
                     "{\"rope_type\":\"default\"}}}",
                     LT_ERR_UNSUPPORTED, "full_attention");
    expect_cfg_fails("e_prf.json", "{\"architectures\":[\"LlamaForCausalLM\"],\"partial_rotary_factor\":0}",
                     LT_ERR_FORMAT, "partial_rotary_factor");
    lt_model_config cfg;
    lt_error err = {0};
    ck_assert_int_eq(lt_config_load(tp("e_none.json"), &cfg, &err), LT_ERR_MISSING);
}
END_TEST

static void cfg_eq(const lt_model_config *a, const lt_model_config *b) {
    ck_assert_str_eq(a->architecture, b->architecture);
    ck_assert_int_eq(a->arch, b->arch);
    ck_assert_str_eq(a->model_type, b->model_type);
    ck_assert_int_eq(a->vocab_size, b->vocab_size);
    ck_assert_int_eq(a->hidden_size, b->hidden_size);
    ck_assert_int_eq(a->intermediate_size, b->intermediate_size);
    ck_assert_int_eq(a->num_hidden_layers, b->num_hidden_layers);
    ck_assert_int_eq(a->num_attention_heads, b->num_attention_heads);
    ck_assert_int_eq(a->num_key_value_heads, b->num_key_value_heads);
    ck_assert_int_eq(a->head_dim, b->head_dim);
    ck_assert_int_eq(a->max_position_embeddings, b->max_position_embeddings);
    ck_assert(a->rms_norm_eps == b->rms_norm_eps);
    ck_assert_int_eq(a->tie_word_embeddings, b->tie_word_embeddings);
    ck_assert_int_eq(a->attention_bias, b->attention_bias);
    ck_assert_int_eq(a->mlp_bias, b->mlp_bias);
    ck_assert_str_eq(a->hidden_act, b->hidden_act);
    ck_assert_int_eq(a->activation, b->activation);
    ck_assert_int_eq(a->bos_token_id, b->bos_token_id);
    ck_assert_int_eq(a->eos_token_id, b->eos_token_id);
    ck_assert_int_eq(a->n_eos, b->n_eos);
    for (int i = 0; i < a->n_eos; i++) ck_assert_int_eq(a->eos_token_ids[i], b->eos_token_ids[i]);
    ck_assert_str_eq(a->torch_dtype, b->torch_dtype);
    ck_assert(a->rope_theta == b->rope_theta);
    ck_assert(a->partial_rotary_factor == b->partial_rotary_factor);
    ck_assert_int_eq(a->rot_dim, b->rot_dim);
    ck_assert_int_eq(a->rope_type, b->rope_type);
    if (a->rope_type != LT_ROPE_DEFAULT) ck_assert(a->rope_factor == b->rope_factor);
    if (a->rope_type == LT_ROPE_LLAMA3) {
        ck_assert(a->rope_low_freq_factor == b->rope_low_freq_factor);
        ck_assert(a->rope_high_freq_factor == b->rope_high_freq_factor);
        ck_assert_int_eq(a->rope_original_max_position_embeddings, b->rope_original_max_position_embeddings);
    }
    ck_assert_int_eq(a->qk_norm, b->qk_norm);
    ck_assert(a->norm_offset == b->norm_offset);
    ck_assert_int_eq(a->sliding_window, b->sliding_window);
    ck_assert(a->embed_scale == b->embed_scale);
}

START_TEST(test_config_write_roundtrip) {
    lt_model_config a, b;
    lt_error err = {0};
    EXPECT_OK(load_cfg_text("w_src.json",
                            "{" LLAMA31_BASE ",\"rope_theta\":500000.0,\"rope_scaling\":{\"factor\":8.0,"
                            "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":"
                            "8192,\"rope_type\":\"llama3\"}}",
                            &a, &err),
              err);
    snprintf(a.torch_dtype, sizeof a.torch_dtype, "float32");
    EXPECT_OK(lt_config_write(&a, tp("w_out.json"), &err), err);
    EXPECT_OK(lt_config_load(tp("w_out.json"), &b, &err), err);
    cfg_eq(&a, &b);
    char *text = NULL;
    size_t n;
    EXPECT_OK(lt_read_file(tp("w_out.json"), &text, &n, &err), err);
    ck_assert_msg(strstr(text, "\"rms_norm_eps\": 1e-5") != NULL, "%s", text);
    ck_assert_msg(strstr(text, "\"rope_theta\": 500000.0") != NULL, "%s", text);
    ck_assert_msg(strstr(text, "\"torch_dtype\": \"float32\"") != NULL, "%s", text);
    free(text);

    /* default rope, one eos, tied */
    lt_config_init_llama(&a);
    a.vocab_size = 1000;
    a.hidden_size = 64;
    a.num_attention_heads = 4;
    a.num_key_value_heads = 2;
    a.head_dim = 16;
    a.rot_dim = 16;
    a.tie_word_embeddings = 1;
    a.eos_token_id = 2;
    a.n_eos = 1;
    a.eos_token_ids[0] = 2;
    a.bos_token_id = 1;
    EXPECT_OK(lt_config_validate(&a, "hand-made", &err), err);
    EXPECT_OK(lt_config_write(&a, tp("w_out2.json"), &err), err);
    EXPECT_OK(lt_config_load(tp("w_out2.json"), &b, &err), err);
    cfg_eq(&a, &b);
    ck_assert_int_eq(lt_config_write(&a, tp("nodir/c.json"), &err), LT_ERR_IO);
}
END_TEST

/* ================================================================================================ */

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static Suite *formats_suite(void) {
    Suite *s = suite_create("formats");
    TCase *u = tcase_create("util");
    tcase_add_test(u, test_dtypes);
    tcase_add_test(u, test_f16);
    tcase_add_test(u, test_bf16);
    tcase_add_test(u, test_convert);
    tcase_add_test(u, test_errors_and_paths);
    tcase_add_test(u, test_files);
    suite_add_tcase(s, u);

    TCase *st = tcase_create("safetensors");
    tcase_add_test(st, test_roundtrip_all_dtypes);
    tcase_add_test(st, test_writer_exact_bytes);
    tcase_add_test(st, test_writer_rejects);
    tcase_add_test(st, test_reader_unaligned_header);
    tcase_add_test(st, test_zero_size_and_scalar_files);
    tcase_add_test(st, test_bad_too_small);
    tcase_add_test(st, test_bad_header_past_eof);
    tcase_add_test(st, test_bad_header_too_large);
    tcase_add_test(st, test_bad_truncated_data);
    tcase_add_test(st, test_bad_trailing_bytes);
    tcase_add_test(st, test_bad_overlap);
    tcase_add_test(st, test_bad_hole);
    tcase_add_test(st, test_bad_first_not_zero);
    tcase_add_test(st, test_bad_byte_count);
    tcase_add_test(st, test_bad_dtype);
    tcase_add_test(st, test_bad_not_object);
    tcase_add_test(st, test_bad_json);
    tcase_add_test(st, test_bad_end_before_begin);
    tcase_add_test(st, test_bad_shape_overflow);
    suite_add_tcase(s, st);

    TCase *sh = tcase_create("sets");
    tcase_add_test(sh, test_sharded);
    tcase_add_test(sh, test_index_ok);
    tcase_add_test(sh, test_index_missing_shard);
    tcase_add_test(sh, test_index_missing_tensor);
    tcase_add_test(sh, test_index_two_shards);
    tcase_add_test(sh, test_index_bad);
    tcase_add_test(sh, test_dir_without_weights);
    suite_add_tcase(s, sh);

    TCase *c = tcase_create("config");
    tcase_add_test(c, test_config_llama31_rope_scaling);
    tcase_add_test(c, test_config_rope_parameters);
    tcase_add_test(c, test_config_default_and_linear_rope);
    tcase_add_test(c, test_config_errors);
    tcase_add_test(c, test_config_write_roundtrip);
    suite_add_tcase(s, c);
    return s;
}

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "%s/lt_formats_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    SRunner *sr = srunner_create(formats_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    nftw(g_tmp, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    return failed ? 1 : 0;
}

/*
 * test_stream.c - the streamed loader (model/load.c), the activation budget of gradient checkpointing.
 *
 * (a) Bit-identical weights: every tensor a model loads (f32 in place or copied, f32 from a bf16 file,
 *     the packed bf16 layout of a bf16 base, NF4 / FP4 with and without double quantization, a fused
 *     Phi-3 module, a sharded checkpoint, a pre-quantized bitsandbytes directory) equals what is
 *     computed independently from the checkpoint's whole tensor: the file's values, lt_bf16w_pack of
 *     them, lt_qtensor_quantize_ex of them (whose bytes test_quant checks against bitsandbytes). Each
 *     load streams through a 1000-float buffer (tensors cut at many places, blocks and 16-row groups
 *     across chunk ends) and through the default one. Tolerance: 0 (bytes).
 * (b) Malformed tensors met mid-stream (after earlier layers were loaded and quantized): a wrong dtype,
 *     a wrong shape, a NaN in a tensor being quantized, a bitsandbytes part of the wrong size, a
 *     truncated shard: a clear status naming the tensor, no model, nothing leaked (the ASan stage).
 * (c) Memory: the peak resident memory of loading a 236 MiB f32 checkpoint quantized to NF4 stays
 *     under the model's own size plus 32 MiB and the reader's buffers (24 MiB): the file's pages never
 *     stay resident; if they did, it would hold the whole file.
 * (d) Random models: deterministic for a seed, and quantized while they are made = quantizing the
 *     f32 model made with the same seed.
 * (e) The activation budget: keeping 0, 1 or all layers' activations gives the same loss and gradients
 *     bit for bit; the budget buys whole layers.
 * (f) The reader of a checkpoint's files (its thread reading ahead while the caller converts): every byte
 *     as mapped, buffered and with O_DIRECT, tensors starting and ending off the 4096-byte blocks, read
 *     in steps smaller and larger than its pieces, from the middle, two tensors in turn; a file cut short
 *     while it is read ahead gives LT_ERR_IO naming the file.
 * (g) A read error in the middle of a whole lt_model_load (the device fails, the file is intact): LT_ERR_IO
 *     naming the file, the tensor and the error, no model, nothing leaked (ASan), the reader's thread joined.
 *     The error comes from pread, wrapped in this executable alone (-Wl,--wrap=pread,--wrap=pread64:
 *     tests/CMakeLists.txt), which fails every read of a chosen file past a chosen byte.
 */
#include <sys/stat.h>

#include "core/context.h"
#include "decoder/decoder.h"
#include "formats/quant.h"
#include "formats/safetensors.h"
#include "loratune_experimental.h"
#include "test_util.h"

#define MODELS LT_TEST_DATA_DIR "/models"

/* (g)'s fault: reads of the file whose path ends with `name` that reach byte `from` fail with EIO. Check
 * runs each test in its own process, so a fault armed by one test stays in it. */
static struct {
    char name[64];
    uint64_t from;
    int hits;
} fault;
ssize_t __real_pread(int fd, void *buf, size_t n, off_t off);
ssize_t __real_pread64(int fd, void *buf, size_t n, off_t off);
static int read_fails(int fd, size_t n, off_t off) {
    if (!fault.name[0] || (uint64_t)off + n <= fault.from) return 0;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    const ssize_t k = readlink(link, path, sizeof path - 1);
    const size_t len = strlen(fault.name);
    if (k < (ssize_t)len || memcmp(path + k - len, fault.name, len)) return 0;
    __atomic_add_fetch(&fault.hits, 1, __ATOMIC_RELAXED); /* the reader's thread reads too */
    errno = EIO;
    return 1;
}
ssize_t __wrap_pread(int fd, void *buf, size_t n, off_t off) {
    return read_fails(fd, n, off) ? -1 : __real_pread(fd, buf, n, off);
}
ssize_t __wrap_pread64(int fd, void *buf, size_t n, off_t off) {
    return read_fails(fd, n, off) ? -1 : __real_pread64(fd, buf, n, off);
}
#define SMALL_CHUNK 1000

static lt_model *load_ex(lt_context *ctx, const char *dir, size_t chunk, lt_quant_format q, int dq, int base_dtype,
                         int use_mmap) {
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    mp.quantization = q;
    mp.double_quant = dq;
    mp.base_dtype = base_dtype;
    mp.use_mmap = use_mmap;
    lt_model *m = NULL;
    ck_assert_msg(lt_model_load_chunked(ctx, dir, &mp, chunk, &m) == LT_OK, "%s: %s", dir, lt_last_error());
    return m;
}

/* the f32 values of checkpoint tensor `name` (n of them) */
static float *file_values(const lt_st_set *set, const char *name, size_t *n) {
    const lt_st_tensor *t = lt_st_set_find(set, name);
    ck_assert_msg(t != NULL, "%s missing", name);
    float *v = malloc((size_t)t->numel * sizeof *v);
    ck_assert_int_eq(lt_convert_to_f32(v, t->data, t->dtype, (size_t)t->numel), 0);
    *n = (size_t)t->numel;
    return v;
}

/* W (rows x cols at f, row block `row0` of the file tensor) as the model must hold it */
static void expect_weight(const lt_model *m, const lt_weight *W, const float *f, int rows, int cols,
                          const lt_model_params *p, const char *what) {
    const size_t n = (size_t)rows * cols;
    if (W->format == LT_WEIGHT_F32) {
        ck_assert_msg(!memcmp(W->f32, f, n * 4), "%s: f32 values differ from the file", what);
    } else if (W->format == LT_WEIGHT_BF16) {
        uint16_t *pk = malloc(lt_bf16w_elems(rows, cols) * 2);
        lt_bf16w_pack(pk, f, rows, cols);
        ck_assert_msg(!memcmp(W->bf16, pk, lt_bf16w_elems(rows, cols) * 2), "%s: packed bf16 differs", what);
        free(pk);
    } else {
        lt_quant_params qp = {.size = sizeof qp,
                              .format = p->quantization,
                              .blocksize = p->quant_blocksize,
                              .double_quant = p->double_quant};
        const int64_t shape[2] = {rows, cols};
        lt_qtensor *q;
        lt_error err = {0};
        ck_assert_int_eq(lt_qtensor_quantize_ex(f, shape, 2, &qp, NULL, &q, &err), LT_OK);
        ck_assert_int_eq(W->q.format, (int)q->format);
        ck_assert_int_eq(W->double_quant, q->double_quant);
        ck_assert_msg(!memcmp(W->q.data, q->data, lt_qtensor_data_bytes(q)), "%s: codes differ", what);
        if (q->double_quant) {
            ck_assert_msg(!memcmp(W->q.qabsmax, q->qabsmax, (size_t)q->n_blocks), "%s: absmax codes differ", what);
            ck_assert_msg(!memcmp(W->q.absmax2, q->absmax2, (size_t)q->n_blocks2 * 4), "%s: nested absmax", what);
            ck_assert_msg(W->q.offset == q->offset, "%s: offset %.9g vs %.9g", what, W->q.offset, q->offset);
        } else {
            ck_assert_msg(!memcmp(W->q.absmax, q->absmax, (size_t)q->n_blocks * 4), "%s: absmax differs", what);
        }
        lt_qtensor_free(q);
    }
    (void)m;
}

/* every tensor of m against the checkpoint in dir */
static void expect_model(const lt_model *m, const char *dir, const lt_model_params *p) {
    lt_st_set *set;
    lt_error err = {0};
    ck_assert_int_eq(lt_st_set_open_dir(dir, 0, &set, &err), LT_OK);
    const lt_model_config *c = &m->cfg;
    const int V = (int)c->vocab_size, H = (int)c->hidden_size;
    size_t n;
    float *e = file_values(set, "model.embed_tokens.weight", &n);
    if (m->embed) ck_assert_msg(!memcmp(m->embed, e, n * 4), "embeddings differ");
    else {
        const lt_weight ew = {.format = LT_WEIGHT_BF16, .bf16 = m->embed_bf16};
        expect_weight(m, &ew, e, V, H, p, "embed_tokens (bf16)");
    }
    if (!c->tie_word_embeddings) {
        float *h = file_values(set, "lm_head.weight", &n);
        const lt_weight hw = lt_model_lm_head(m);
        expect_weight(m, &hw, h, V, H, p, "lm_head");
        free(h);
    }
    free(e);
    char name[256];
    for (int l = 0; l < c->num_hidden_layers; l++) {
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        float *nv = file_values(set, name, &n);
        ck_assert(!memcmp(m->layers[l].attn_norm_file, nv, n * 4));
        free(nv);
        lt_module mods[P_COUNT];
        const int nm = lt_model_modules(c, mods);
        for (int k = 0; k < nm; k++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.%s.weight", l, mods[k].parent, mods[k].name);
            float *w = file_values(set, name, &n), *wp = w;
            for (int q = mods[k].first; q < mods[k].first + mods[k].count; q++) {
                int in, out;
                lt_proj_dims(c, (lt_proj)q, &in, &out);
                char what[300];
                snprintf(what, sizeof what, "%s (%s)", name, lt_proj_names[q]);
                expect_weight(m, &m->layers[l].w[q], wp, out, in, p, what);
                wp += (size_t)out * in;
            }
            free(w);
        }
    }
    lt_st_set_close(set);
}

/* ---- (a) bit-identical weights ------------------------------------------------------------------- */

static const struct {
    const char *model;
    lt_quant_format q;
    int dq, base_dtype, use_mmap;
} cases[] = {
    {"llama-basic", LT_QUANT_NONE, 0, LT_BASE_F32, 1},   /* f32 used in place */
    {"llama-basic", LT_QUANT_NONE, 0, LT_BASE_F32, 0},   /* f32 copied */
    {"llama-bf16", LT_QUANT_NONE, 0, LT_BASE_F32, 1},    /* bf16 file -> f32 */
    {"llama-gqa", LT_QUANT_NONE, 0, LT_BASE_BF16, 1},    /* packed bf16, untied head */
    {"llama-tied", LT_QUANT_NONE, 0, LT_BASE_BF16, 1},   /* packed bf16, the head is the table */
    {"llama-gqa", LT_QUANT_NF4, 0, LT_BASE_F32, 1},      /* NF4 */
    {"llama-bf16", LT_QUANT_NF4, 1, LT_BASE_F32, 1},     /* NF4 + double quantization from bf16 */
    {"llama-basic", LT_QUANT_FP4, 1, LT_BASE_BF16, 1},   /* FP4 + DQ, computed in bf16 */
    {"llama-headdim", LT_QUANT_INT8, 0, LT_BASE_F32, 1}, /* int8 */
    {"llama-sharded", LT_QUANT_NF4, 1, LT_BASE_BF16, 1}, /* a sharded checkpoint */
    {"phi3", LT_QUANT_NF4, 1, LT_BASE_F32, 1},           /* fused qkv / gate_up: row blocks quantized apart */
    {"phi3", LT_QUANT_NONE, 0, LT_BASE_BF16, 1},         /* fused, packed */
};
#define N_CASES ((int)(sizeof cases / sizeof *cases))

START_TEST(test_bit_identical) {
    lt_context *ctx = tu_context();
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", MODELS, cases[_i].model);
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    mp.quantization = cases[_i].q;
    mp.double_quant = cases[_i].dq;
    mp.base_dtype = cases[_i].base_dtype;
    for (int pass = 0; pass < 2; pass++) {
        lt_model *m = load_ex(ctx, dir, pass ? SMALL_CHUNK : 0, cases[_i].q, cases[_i].dq, cases[_i].base_dtype,
                              cases[_i].use_mmap);
        expect_model(m, dir, &mp);
        /* the files stay open only while f32 weights point into them (the f32 norms of an f32 file) */
        if (!cases[_i].use_mmap || !strcmp(cases[_i].model, "llama-bf16")) ck_assert_ptr_null(m->st);
        lt_model_free(m);
    }
    lt_context_free(ctx);
}
END_TEST

/* a pre-quantized bitsandbytes directory (written by lt_model_save_quantized) loads its parts as they
 * are stored, through the small buffer too; and the same directory again gives the same bytes */
START_TEST(test_prequantized) {
    lt_context *ctx = tu_context();
    char dir[512], tmp[64], out[600];
    snprintf(dir, sizeof dir, "%s/llama-gqa", MODELS);
    tu_tempdir(tmp, sizeof tmp);
    lt_model *mq = load_ex(ctx, dir, 0, LT_QUANT_NF4, 1, LT_BASE_F32, 1);
    snprintf(out, sizeof out, "%s/bnb", tmp);
    ck_assert_int_eq(lt_model_save_quantized(mq, out), LT_OK);
    lt_model *mb = load_ex(ctx, out, SMALL_CHUNK, LT_QUANT_NONE, 0, LT_BASE_BF16, 1); /* stored NF4 stays NF4 */
    for (int l = 0; l < mq->cfg.num_hidden_layers; l++)
        for (int p = 0; p < P_COUNT; p++) {
            const lt_weight *a = &mq->layers[l].w[p], *b = &mb->layers[l].w[p];
            ck_assert_int_eq(b->format, LT_WEIGHT_QUANT);
            const int64_t nb = (a->q.rows * a->q.cols + 63) / 64;
            ck_assert(!memcmp(a->q.data, b->q.data, (size_t)(a->q.rows * a->q.cols + 1) / 2));
            ck_assert(!memcmp(a->q.qabsmax, b->q.qabsmax, (size_t)nb));
            ck_assert(!memcmp(a->q.absmax2, b->q.absmax2, (size_t)((nb + 255) / 256) * 4));
            ck_assert(a->q.offset == b->q.offset);
        }
    lt_model_free(mb);
    lt_model_free(mq);
    snprintf(out, sizeof out, "rm -rf %s", tmp);
    ck_assert_int_eq(system(out), 0);
    lt_context_free(ctx);
}
END_TEST

/* ---- (b) malformed tensors met mid-stream --------------------------------------------------------- */

/* dir/ = llama-basic's tensors in 3 shards, tensor `bad` replaced by (dt, shape, data) */
static void write_broken(const char *dir, const char *bad, lt_dtype dt, int ndim, const int64_t *shape,
                         const void *data) {
    char src[512];
    snprintf(src, sizeof src, "%s/llama-basic", MODELS);
    lt_st_set *set;
    lt_error err = {0};
    ck_assert_int_eq(lt_st_set_open_dir(src, 0, &set, &err), LT_OK);
    const int n = lt_st_set_count(set);
    lt_st_entry *e = calloc((size_t)n, sizeof *e);
    for (int i = 0; i < n; i++) {
        const lt_st_tensor *t = lt_st_set_tensor_at(set, i);
        e[i] = (lt_st_entry){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
        memcpy(e[i].shape, t->shape, sizeof t->shape);
        if (bad && !strcmp(t->name, bad)) {
            e[i].dtype = dt;
            e[i].ndim = ndim;
            memset(e[i].shape, 0, sizeof e[i].shape);
            memcpy(e[i].shape, shape, (size_t)ndim * sizeof *shape);
            e[i].data = data;
        }
    }
    ck_assert_msg(lt_st_write_sharded(dir, e, n, 200000, &err) == LT_OK, "%s", err.msg);
    free(e);
    lt_st_set_close(set);
    char s[700];
    snprintf(s, sizeof s, "cp %s/config.json %s/", src, dir);
    ck_assert_int_eq(system(s), 0);
}

static void expect_failure(const char *dir, lt_quant_format q, lt_status want, const char *needle) {
    lt_context *ctx = tu_context();
    for (int pass = 0; pass < 2; pass++) {
        lt_model_params mp;
        lt_model_params_init(&mp, sizeof mp);
        mp.quantization = q;
        mp.base_dtype = pass ? LT_BASE_BF16 : LT_BASE_F32;
        lt_model *m = (lt_model *)&mp; /* must be reset to NULL */
        lt_status st = lt_model_load_chunked(ctx, dir, &mp, SMALL_CHUNK, &m);
        ck_assert_msg(st == want, "status %d, want %d (%s)", st, want, lt_last_error());
        ck_assert_ptr_null(m);
        ck_assert_msg(strstr(lt_last_error(), needle), "message \"%s\" does not name %s", lt_last_error(), needle);
    }
    lt_context_free(ctx);
}

START_TEST(test_malformed_midstream) {
    char tmp[64], dir[256], cmd[1024];
    tu_tempdir(tmp, sizeof tmp);
    const char *late = "model.layers.1.mlp.down_proj.weight"; /* layer 1: after layer 0 was loaded */
    char src[512];
    snprintf(src, sizeof src, "%s/llama-basic", MODELS);
    lt_st_set *set;
    lt_error err = {0};
    ck_assert_int_eq(lt_st_set_open_dir(src, 0, &set, &err), LT_OK);
    const lt_st_tensor *t = lt_st_set_find(set, late);
    ck_assert_ptr_nonnull(t);
    const int64_t rows = t->shape[0], cols = t->shape[1];
    float *w = malloc((size_t)(rows * cols) * 4);
    memcpy(w, t->data, (size_t)(rows * cols) * 4);
    lt_st_set_close(set);

    /* a wrong dtype */
    snprintf(dir, sizeof dir, "%s/dtype", tmp);
    const int64_t shape[2] = {rows, cols};
    write_broken(dir, late, LT_DT_I32, 2, shape, w);
    expect_failure(dir, LT_QUANT_NF4, LT_ERR_DTYPE, late);
    /* a wrong shape */
    snprintf(dir, sizeof dir, "%s/shape", tmp);
    const int64_t flat[2] = {rows * cols / 2, 2};
    write_broken(dir, late, LT_DT_F32, 2, flat, w);
    expect_failure(dir, LT_QUANT_NF4, LT_ERR_SHAPE, late);
    /* a NaN in the last chunk of a tensor being quantized */
    snprintf(dir, sizeof dir, "%s/nan", tmp);
    w[rows * cols - 3] = NAN;
    write_broken(dir, late, LT_DT_F32, 2, shape, w);
    expect_failure(dir, LT_QUANT_NF4, LT_ERR_NUMERIC, late);
    /* a truncated last shard: refused when the directory is opened, before any tensor is read */
    snprintf(dir, sizeof dir, "%s/trunc", tmp);
    w[rows * cols - 3] = 0.5f;
    write_broken(dir, NULL, LT_DT_F32, 0, NULL, NULL);
    snprintf(cmd, sizeof cmd, "f=$(ls %s/model-*.safetensors | tail -1); truncate -s -100 $f", dir);
    ck_assert_int_eq(system(cmd), 0);
    expect_failure(dir, LT_QUANT_NF4, LT_ERR_TRUNCATED, "truncated");
    free(w);

    /* a bitsandbytes part of the wrong size in a late layer of a pre-quantized directory */
    lt_context *ctx = tu_context();
    lt_model *mq = load_ex(ctx, src, 0, LT_QUANT_NF4, 1, LT_BASE_F32, 1);
    snprintf(dir, sizeof dir, "%s/bnb", tmp);
    ck_assert_int_eq(lt_model_save_quantized(mq, dir), LT_OK);
    lt_model_free(mq);
    lt_context_free(ctx);
    ck_assert_int_eq(lt_st_set_open_dir(dir, 0, &set, &err), LT_OK);
    const int n = lt_st_set_count(set);
    lt_st_entry *e = calloc((size_t)n, sizeof *e);
    const char *part = "model.layers.1.mlp.up_proj.weight.absmax";
    for (int i = 0; i < n; i++) {
        const lt_st_tensor *ti = lt_st_set_tensor_at(set, i);
        e[i] = (lt_st_entry){.name = ti->name, .dtype = ti->dtype, .ndim = ti->ndim, .data = ti->data};
        memcpy(e[i].shape, ti->shape, sizeof ti->shape);
        if (!strcmp(ti->name, part)) e[i].shape[0] -= 1; /* one code short */
    }
    char dir2[256];
    snprintf(dir2, sizeof dir2, "%s/bnb2", tmp);
    ck_assert_int_eq(lt_st_write_sharded(dir2, e, n, 0, &err), LT_OK);
    free(e);
    lt_st_set_close(set);
    snprintf(cmd, sizeof cmd, "cp %s/config.json %s/", dir, dir2);
    ck_assert_int_eq(system(cmd), 0);
    expect_failure(dir2, LT_QUANT_NONE, LT_ERR_SHAPE, part);
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* ---- (c) memory ------------------------------------------------------------------------------------ */

/* the process's peak resident KiB since the last reset (VmHWM), and a reset of it */
static long vm_kib(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    ck_assert_ptr_nonnull(f);
    char line[256];
    long v = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, strlen(key))) v = atol(line + strlen(key));
    fclose(f);
    return v;
}
static int reset_peak(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return 0;
    int ok = fputs("5", f) >= 0;
    return fclose(f) == 0 && ok;
}

START_TEST(test_load_memory) {
    lt_context *ctx = tu_context();
    /* a 192 MiB f32 checkpoint: 48M parameters, 4 layers of 2048 x 5632 */
    static const char cfg[] =
        "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 1024,"
        " \"hidden_size\": 1024, \"intermediate_size\": 3584, \"num_hidden_layers\": 4,"
        " \"num_attention_heads\": 8, \"num_key_value_heads\": 8, \"tie_word_embeddings\": true}";
    char tmp[64], dir[128];
    tu_tempdir(tmp, sizeof tmp);
    snprintf(dir, sizeof dir, "%s/m", tmp);
    lt_model *m = NULL;
    ck_assert_int_eq(lt_model_create_random(ctx, cfg, 3, 0.02f, &m), LT_OK);
    ck_assert_int_eq(lt_model_save(m, dir), LT_OK);
    const double file_mib = (double)m->weight_bytes / 1048576.0;
    lt_model_free(m);
    m = NULL;
    if (!reset_peak()) {
        fprintf(stderr, "test_stream: cannot reset the peak RSS (/proc/self/clear_refs); skipped\n");
    } else {
        const long before = vm_kib("VmRSS:");
        lt_model_params mp;
        lt_model_params_init(&mp, sizeof mp);
        mp.quantization = LT_QUANT_NF4;
        ck_assert_int_eq(lt_model_load(ctx, dir, &mp, &m), LT_OK);
        const double peak = (vm_kib("VmHWM:") - before) / 1024.0, after = (vm_kib("VmRSS:") - before) / 1024.0;
        const double kept = (double)m->weight_bytes / 1048576.0;
        fprintf(stderr,
                "test_stream: NF4 load of a %.0f MiB f32 checkpoint: peak +%.1f MiB, after +%.1f MiB, model %.1f MiB\n",
                file_mib, peak, after, kept);
        const double reader = LT_ST_READ_SLOTS * (double)LT_ST_READ_PIECE / 1048576.0; /* its buffers: 24 MiB */
        ck_assert_msg(peak <= kept + 32.0 + reader,
                      "loading peaked at +%.1f MiB for a %.1f MiB model (file %.0f MiB, read buffers %.0f MiB)", peak,
                      kept, file_mib, reader);
        lt_model_free(m);
    }
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    ck_assert_int_eq(system(cmd), 0);
    lt_context_free(ctx);
}
END_TEST

/* ---- (f) the reader of a checkpoint's files (the pipeline) ---------------------------------------- */

/* every byte of tensor t read through r from byte off on, `step` bytes a call (the reader may give fewer),
 * equals the mapped file's */
static void read_through(lt_st_reader *r, const lt_st_tensor *t, uint64_t off, uint64_t step) {
    lt_error err = {0};
    while (off < t->nbytes) {
        const void *p;
        uint64_t n;
        const uint64_t len = t->nbytes - off < step ? t->nbytes - off : step;
        ck_assert_msg(lt_st_reader_get(r, t, off, len, &p, &n, &err) == LT_OK, "%s", err.msg);
        ck_assert_msg(p && n >= 1 && n <= len, "%s at %llu: %llu bytes of %llu", t->name, (unsigned long long)off,
                      (unsigned long long)n, (unsigned long long)len);
        ck_assert_msg(!memcmp(p, (const unsigned char *)t->data + off, (size_t)n), "%s: bytes at %llu differ", t->name,
                      (unsigned long long)off);
        off += n;
    }
}

START_TEST(test_reader) {
    /* a file whose tensors start and end off the 4096-byte blocks of O_DIRECT: "a" 4.9 MB, "b" 28 MB over
     * four 8 MiB pieces of the file (4.9-8, 8-16, 16-24, 24-32.9 MB), then two tensors of a few bytes ending
     * the file mid-block */
    char tmp[64], path[128], cmd[256];
    tu_tempdir(tmp, sizeof tmp);
    snprintf(path, sizeof path, "%s/model.safetensors", tmp);
    const int64_t na = 1234567, nb = 7000003;
    uint32_t *va = malloc((size_t)na * 4), *vb = malloc((size_t)nb * 4);
    for (int64_t i = 0; i < na; i++) va[i] = (uint32_t)i * 2654435761u;
    for (int64_t i = 0; i < nb; i++) vb[i] = (uint32_t)i * 40503u + 7u;
    const uint16_t vc[7] = {1, 2, 3, 4, 5, 6, 7};
    const uint8_t vd[3] = {9, 8, 7};
    lt_st_entry e[4] = {{.name = "a", .dtype = LT_DT_F32, .ndim = 1, .shape = {na}, .data = va},
                        {.name = "b", .dtype = LT_DT_F32, .ndim = 2, .shape = {nb, 1}, .data = vb},
                        {.name = "c", .dtype = LT_DT_BF16, .ndim = 1, .shape = {7}, .data = vc},
                        {.name = "d", .dtype = LT_DT_U8, .ndim = 1, .shape = {3}, .data = vd}};
    lt_error err = {0};
    ck_assert_msg(lt_st_write(path, e, 4, NULL, &err) == LT_OK, "%s", err.msg);
    free(va);
    free(vb);
    lt_st_set *set;
    ck_assert_int_eq(lt_st_set_open_dir(tmp, 1, &set, &err), LT_OK);
    const lt_st_tensor *a = lt_st_set_find(set, "a"), *b = lt_st_set_find(set, "b");
    const lt_st_tensor *c = lt_st_set_find(set, "c"), *d = lt_st_set_find(set, "d");
    for (int direct = 0; direct < 2; direct++) { /* buffered reads; O_DIRECT where the file system has it */
        lt_st_reader *r;
        ck_assert_int_eq(lt_st_reader_create(set, direct, &r, &err), LT_OK);
        const uint64_t steps[] = {4000000, 4096, ((uint64_t)8 << 20) + 12, 1000002, UINT64_MAX};
        for (size_t k = 0; k < sizeof steps / sizeof steps[0]; k++) {
            read_through(r, d, 0, steps[k]);
            read_through(r, b, 0, steps[k]);
            read_through(r, c, 0, steps[k]);
            read_through(r, a, 0, steps[k]);
            read_through(r, b, 12345678, steps[k]); /* from the middle of a piece */
        }
        for (uint64_t off = 0; off < b->nbytes; off += 3000000) { /* two tensors in turn: pieces reclaimed */
            read_through(r, a, off % a->nbytes, 777777);
            const void *p;
            uint64_t n;
            const uint64_t len = b->nbytes - off < 3000000 ? b->nbytes - off : 3000000;
            ck_assert_int_eq(lt_st_reader_get(r, b, off, len, &p, &n, &err), LT_OK);
            ck_assert(p && n >= 1 && !memcmp(p, (const unsigned char *)b->data + off, (size_t)n));
        }
        lt_st_reader_free(r);
    }
    /* the file cut short while it is read ahead: the thread's error is the caller's, naming the file; nothing
     * is leaked and the thread is joined (the ASan stage). The first get names b's first three pieces; the
     * fourth, past the cut, is named (and read by the thread) only after it. */
    lt_st_reader *r;
    ck_assert_int_eq(lt_st_reader_create(set, 1, &r, &err), LT_OK);
    const void *p;
    uint64_t n, off = 0;
    ck_assert_int_eq(lt_st_reader_get(r, b, 0, 4096, &p, &n, &err), LT_OK);
    snprintf(cmd, sizeof cmd, "truncate -s -%d %s", 8 << 20, path);
    ck_assert_int_eq(system(cmd), 0);
    lt_status st = LT_OK;
    while (off < b->nbytes && (st = lt_st_reader_get(r, b, off, b->nbytes - off, &p, &n, &err)) == LT_OK) off += n;
    ck_assert_msg(st == LT_ERR_IO, "reading a truncated file: status %d (%s)", st, err.msg);
    ck_assert_msg(strstr(err.msg, path) && strstr(err.msg, "ends before byte"), "message \"%s\"", err.msg);
    lt_st_reader_free(r);
    lt_st_set_close(set);
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* ---- (g) a read error in a whole load ------------------------------------------------------------------ */

START_TEST(test_read_error_in_load) {
    char tmp[64], dir[256], cmd[1024], src[512];
    tu_tempdir(tmp, sizeof tmp);
    snprintf(src, sizeof src, "%s/llama-basic", MODELS);
    snprintf(dir, sizeof dir, "%s/eio", tmp);
    write_broken(dir, NULL, LT_DT_F32, 0, NULL, NULL); /* shards of 200 KB, nothing broken */
    /* the last shard (late layers: earlier ones were loaded and quantized) fails past its middle */
    snprintf(cmd, sizeof cmd, "ls %s/model-*.safetensors | tail -1", dir);
    FILE *ls = popen(cmd, "r");
    char shard[512] = "";
    ck_assert_ptr_nonnull(fgets(shard, sizeof shard, ls));
    pclose(ls);
    shard[strcspn(shard, "\n")] = 0;
    struct stat sb;
    ck_assert_int_eq(stat(shard, &sb), 0);
    const char *base = strrchr(shard, '/') + 1;
    snprintf(fault.name, sizeof fault.name, "/%s", base);
    fault.from = (uint64_t)sb.st_size / 2;
    lt_context *ctx = tu_context();
    for (int pass = 0; pass < 2; pass++) { /* NF4 computed in f32, then in bf16; the default and a small chunk */
        lt_model_params mp;
        lt_model_params_init(&mp, sizeof mp);
        mp.quantization = LT_QUANT_NF4;
        mp.base_dtype = pass ? LT_BASE_BF16 : LT_BASE_F32;
        lt_model *m = (lt_model *)&mp; /* must be reset to NULL */
        fault.hits = 0;
        const lt_status st = lt_model_load_chunked(ctx, dir, &mp, pass ? SMALL_CHUNK : 0, &m);
        ck_assert_msg(st == LT_ERR_IO, "a read error: status %d (%s)", st, lt_last_error());
        ck_assert_ptr_null(m);
        ck_assert_int_gt(fault.hits, 0);
        const char *msg = lt_last_error();
        ck_assert_msg(strstr(msg, base) && strstr(msg, "tensor \"") && strstr(msg, strerror(EIO)),
                      "message \"%s\" does not name the file, the tensor and the error", msg);
    }
    /* disarmed, the same directory loads: the failure was the read's */
    fault.name[0] = 0;
    lt_model *m = load_ex(ctx, dir, 0, LT_QUANT_NF4, 1, LT_BASE_BF16, 1);
    lt_model_free(m);
    lt_context_free(ctx);
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* ---- (d) random models ------------------------------------------------------------------------------ */

START_TEST(test_random_models) {
    lt_context *ctx = tu_context();
    static const char cfg[] =
        "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 300,"
        " \"hidden_size\": 64, \"intermediate_size\": 192, \"num_hidden_layers\": 2,"
        " \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"tie_word_embeddings\": false}";
    lt_model *a, *b, *q;
    ck_assert_int_eq(lt_model_create_random(ctx, cfg, 7, 0.02f, &a), LT_OK);
    ck_assert_int_eq(lt_model_create_random(ctx, cfg, 7, 0.02f, &b), LT_OK);
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    mp.quantization = LT_QUANT_NF4;
    ck_assert_int_eq(lt_model_create_random_params(ctx, cfg, 7, 0.02f, &mp, &q), LT_OK);
    const size_t ne = (size_t)300 * 64;
    ck_assert(!memcmp(a->embed, b->embed, ne * 4));
    double ss = 0;
    for (size_t i = 0; i < ne; i++) ss += (double)a->embed[i] * a->embed[i];
    ck_assert_msg(fabs(sqrt(ss / ne) - 0.02) < 0.001, "std %.5f, want 0.02", sqrt(ss / ne));
    ck_assert(a->embed[0] != a->embed[1] && a->embed[1] != a->lm_head[1]);
    ck_assert_msg(!memcmp(a->embed, q->embed, ne * 4), "quantizing the projections changed the embeddings");
    for (int l = 0; l < 2; l++)
        for (int p = 0; p < P_COUNT; p++) {
            int in, out;
            lt_proj_dims(&a->cfg, (lt_proj)p, &in, &out);
            ck_assert(!memcmp(a->layers[l].w[p].f32, b->layers[l].w[p].f32, (size_t)in * out * 4));
            expect_weight(q, &q->layers[l].w[p], a->layers[l].w[p].f32, out, in, &mp, lt_proj_names[p]);
        }
    lt_model_free(a);
    lt_model_free(b);
    lt_model_free(q);
    lt_context_free(ctx);
}
END_TEST

/* ---- (e) the activation budget ---------------------------------------------------------------------- */

START_TEST(test_activation_budget) {
    lt_context *ctx = tu_context();
    char dir[512];
    snprintf(dir, sizeof dir, "%s/llama-gqa", MODELS);
    lt_model *m = load_ex(ctx, dir, 0, LT_QUANT_NONE, 0, LT_BASE_F32, 1);
    const int L = (int)m->cfg.num_hidden_layers, B = 2, T = 16, V = (int)m->cfg.vocab_size;
    ck_assert_int_ge(L, 2);
    char path[600];
    snprintf(path, sizeof path, "%s/lora/adapter", dir);
    lt_adapter *ad;
    ck_assert_int_eq(lt_adapter_load(m, path, &ad), LT_OK);
    int32_t ids[32];
    tu_fill_ids(ids, B * T, V, 9);
    lt_batch b;
    lt_batch_init(&b, sizeof b);
    b.n_rows = B;
    b.seq_len = T;
    b.input_ids = ids;
    const size_t per = lt_workspace_layer_bytes(m, B, T, ad->p.rank);
    float *g0 = NULL;
    double l0 = 0;
    size_t bytes0 = 0;
    const int keeps[] = {0, 1, L};
    for (int k = 0; k < 3; k++) {
        lt_workspace *ws;
        lt_error err = {0};
        ck_assert_int_eq(
            lt_workspace_create_train(m, B, T, ad->p.rank, 1, (int64_t)(keeps[k] * per + per / 2), &ws, &err), LT_OK);
        ck_assert_int_eq(ws->n_kept, keeps[k]);
        ck_assert_int_eq(ws->checkpointing, keeps[k] < L);
        if (k == 0) bytes0 = ws->block_bytes;
        else ck_assert_uint_eq(ws->block_bytes, bytes0 + (keeps[k] - (keeps[k] == L ? 1 : 0)) * per);
        int64_t nv;
        ck_assert_int_eq(lt_stage_batch(m, ws, &b, &nv, &err), LT_OK);
        m->be->ops->zero(m->be, ad->grads, ad->n_params * sizeof(float));
        double sum;
        ck_assert_int_eq(lt_forward_backward(m, ad, ws, NULL, 1.0f, &sum, NULL, &err), LT_OK);
        /* every product with a frozen weight was counted (lt_trainer_frozen_gemm_stats): each layer's 7
         * projections forward and backward, the recomputed layers' forward again, the LM head both ways */
        const uint64_t N = (uint64_t)B * T, H = m->cfg.hidden_size, I = m->cfg.intermediate_size;
        const uint64_t QD = (uint64_t)m->cfg.num_attention_heads * m->cfg.head_dim,
                       KD = (uint64_t)m->cfg.num_key_value_heads * m->cfg.head_dim;
        const uint64_t layer = N * H * (2 * QD + 2 * KD + 3 * I);
        const uint64_t want = (uint64_t)(2 * L + (L - keeps[k])) * layer + 2 * N * H * (uint64_t)V;
        ck_assert_msg(atomic_load(&ws->frozen_madds) == want, "keeping %d layers: %llu multiply-adds counted, not %llu",
                      keeps[k], (unsigned long long)atomic_load(&ws->frozen_madds), (unsigned long long)want);
        ck_assert_uint_gt(atomic_load(&ws->frozen_ns), 0);
        if (!g0) {
            g0 = malloc(ad->n_params * sizeof *g0);
            memcpy(g0, ad->grads, ad->n_params * sizeof *g0);
            l0 = sum;
        } else {
            ck_assert(sum == l0);
            ck_assert_msg(!memcmp(g0, ad->grads, ad->n_params * sizeof *g0), "keeping %d layers changed the gradients",
                          keeps[k]);
        }
        lt_workspace_free(ws);
    }
    free(g0);
    /* the trainer's parameter: negative is refused */
    lt_optimizer_params op;
    lt_optimizer_params_init(&op, sizeof op);
    lt_optimizer *opt;
    ck_assert_int_eq(lt_optimizer_create(ad, &op, &opt), LT_OK);
    lt_trainer_params tp;
    lt_trainer_params_init(&tp, sizeof tp);
    ck_assert_int_eq(tp.activation_memory, 0);
    tp.activation_memory = -1;
    lt_trainer *tr = NULL;
    ck_assert_int_eq(lt_trainer_create(m, ad, opt, &tp, &tr), LT_ERR_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(lt_last_error(), "activation_memory"));
    /* the trainer's count of its products with frozen weights: two steps (checkpointing every layer), the
     * second on a new batch shape (a new workspace: the first one's counts are kept) */
    tp.activation_memory = 0;
    ck_assert_int_eq(lt_trainer_create(m, ad, opt, &tp, &tr), LT_OK);
    double secs = -1, gflop = -1;
    ck_assert_int_eq(lt_trainer_frozen_gemm_stats(tr, &secs, &gflop), LT_OK);
    ck_assert(secs == 0 && gflop == 0);
    lt_step_result r = {.size = sizeof r};
    ck_assert_int_eq(lt_trainer_step(tr, &b, &r), LT_OK);
    b.seq_len = T / 2;
    ck_assert_int_eq(lt_trainer_step(tr, &b, &r), LT_OK);
    ck_assert_int_eq(lt_trainer_frozen_gemm_stats(tr, &secs, &gflop), LT_OK);
    const double H = (double)m->cfg.hidden_size, I = (double)m->cfg.intermediate_size,
                 QD = (double)m->cfg.num_attention_heads * m->cfg.head_dim,
                 KD = (double)m->cfg.num_key_value_heads * m->cfg.head_dim;
    const double per_token = 3.0 * L * H * (2 * QD + 2 * KD + 3 * I) + 2.0 * H * V; /* multiply-adds */
    ck_assert_double_eq_tol(gflop, 2.0 * per_token * (B * T + B * T / 2) * 1e-9, 1e-12);
    ck_assert(secs > 0);
    ck_assert_int_eq(lt_trainer_frozen_gemm_stats(NULL, &secs, &gflop), LT_ERR_ARGUMENT);
    lt_trainer_free(tr);
    lt_optimizer_free(opt);
    lt_adapter_free(ad);
    lt_model_free(m);
    lt_context_free(ctx);
}
END_TEST

static Suite *stream_suite(void) {
    Suite *s = suite_create("stream");
    TCase *a = tcase_create("loader");
    tcase_set_timeout(a, 600);
    tcase_add_loop_test(a, test_bit_identical, 0, N_CASES);
    tcase_add_test(a, test_prequantized);
    tcase_add_test(a, test_malformed_midstream);
    tcase_add_test(a, test_load_memory);
    tcase_add_test(a, test_random_models);
    tcase_add_test(a, test_reader);
    tcase_add_test(a, test_read_error_in_load);
    suite_add_tcase(s, a);
    TCase *b = tcase_create("budget");
    tcase_set_timeout(b, 600);
    tcase_add_test(b, test_activation_budget);
    suite_add_tcase(s, b);
    return s;
}

TU_MAIN(stream_suite)

/*
 * fuzz_model.c - lt_model_load on a Hugging Face model directory: config.json, model.safetensors,
 * or a sharded set (index + two shards); then info and one forward over whatever loaded.
 * Built twice (tests/fuzz/CMakeLists.txt): fuzz_model (seeds: f32 / bf16 / sharded models the library
 * saved) and, with FZ_BNB, fuzz_bnb (seeds: bitsandbytes NF4 / FP4 checkpoints it saved).
 * Input: config.json | model.safetensors | model.safetensors.index.json | shard 1 | shard 2, separated
 * by FZ_SEP, then a flags part whose first byte picks use_mmap (bit 0) and base_dtype bf16 (bit 1).
 */
#include "fuzz_util.h"

static lt_context *ctx;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    ctx = fz_context();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *const names[] = {"config.json", "model.safetensors", "model.safetensors.index.json",
                                        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
    fz_part parts[FZ_MAX_PARTS];
    const int n = fz_split(data, size, parts, 6);
    fz_put_files(names, 5, parts, n);
    const uint8_t flags = n > 5 && parts[5].n ? parts[5].p[0] : 1;
    lt_model_params mp;
    lt_model_params_init(&mp, sizeof mp);
    mp.use_mmap = flags & 1;
    mp.base_dtype = flags & 2 ? LT_BASE_BF16 : LT_BASE_F32;
    lt_model *m = NULL;
    if (fz_note("lt_model_load", lt_model_load(ctx, fz_dir(), &mp, &m), lt_last_error()) == LT_OK) {
        fz_forward(m, NULL);
        lt_model_free(m);
    }
    return 0;
}

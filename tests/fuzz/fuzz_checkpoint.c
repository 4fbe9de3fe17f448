/*
 * fuzz_checkpoint.c - lt_trainer_load_checkpoint on a checkpoint directory (trainer_state.json,
 * optimizer.bin, the adapter) into trainers made once over a fixed small Llama model: AdamW, 8-bit
 * AdamW (rank 8 puts the down_proj tensors past bitsandbytes' 4096-element threshold: 8-bit state) or
 * SGD, picked by the flags byte; then one training step from whatever loaded.
 * Input: trainer_state.json | optimizer.bin | adapter_config.json | adapter_model.safetensors | flags
 * (the first byte mod 3: the trainer), separated by FZ_SEP.
 */
#include "loratune_experimental.h"

#include "fuzz_util.h"

static lt_context *ctx;
static lt_model *model;
static lt_adapter *ad[3];
static lt_optimizer *opt[3];
static lt_trainer *tr[3];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    ctx = fz_context();
    if (lt_model_create_random(ctx, fz_model_config, 11, 0.05f, &model) != LT_OK) abort();
    static const lt_optimizer_kind kinds[3] = {LT_OPT_ADAMW, LT_OPT_ADAMW8BIT, LT_OPT_SGD};
    for (int k = 0; k < 3; k++) {
        lt_adapter_params ap;
        lt_adapter_params_init(&ap, sizeof ap);
        ap.rank = k == 1 ? 8 : 2;
        lt_optimizer_params op;
        lt_optimizer_params_init(&op, sizeof op);
        op.kind = kinds[k];
        if (lt_adapter_create(model, &ap, &ad[k]) != LT_OK || lt_optimizer_create(ad[k], &op, &opt[k]) != LT_OK ||
            lt_trainer_create(model, ad[k], opt[k], NULL, &tr[k]) != LT_OK)
            abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *const names[] = {"trainer_state.json", "optimizer.bin", "adapter_config.json",
                                        "adapter_model.safetensors"};
    fz_part parts[FZ_MAX_PARTS];
    const int n = fz_split(data, size, parts, 5);
    fz_put_files(names, 4, parts, n);
    lt_trainer *t = tr[n > 4 && parts[4].n ? parts[4].p[0] % 3 : 0];
    if (fz_note("load_checkpoint", lt_trainer_load_checkpoint(t, fz_dir()), lt_trainer_last_error(t)) == LT_OK) {
        int32_t ids[8] = {1, 5, 9, 13, 17, 21, 25, 29};
        lt_batch b;
        lt_batch_init(&b, sizeof b);
        b.n_rows = 1;
        b.seq_len = 8;
        b.input_ids = ids;
        b.labels = ids;
        lt_step_result r = {.size = sizeof r};
        (void)lt_trainer_step(t, &b, &r);
    }
    return 0;
}

/*
 * fuzz_adapter.c - lt_adapter_load on an adapter directory against a fixed small Llama model: a PEFT
 * adapter (adapter_config.json, adapter_model.safetensors, and our loratune_init.json for PiSSA /
 * OLoRA), or a saved full fine-tuning (config.json + model.safetensors); then one forward with it.
 * Input: adapter_config.json | adapter_model.safetensors | loratune_init.json | config.json |
 * model.safetensors, separated by FZ_SEP.
 */
#include "loratune_experimental.h"

#include "fuzz_util.h"

static lt_context *ctx;
static lt_model *model;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    ctx = fz_context();
    if (lt_model_create_random(ctx, fz_model_config, 11, 0.05f, &model) != LT_OK) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *const names[] = {"adapter_config.json", "adapter_model.safetensors", "loratune_init.json",
                                        "config.json", "model.safetensors"};
    fz_part parts[FZ_MAX_PARTS];
    const int n = fz_split(data, size, parts, 5);
    fz_put_files(names, 5, parts, n);
    lt_adapter *a = NULL;
    if (fz_note("lt_adapter_load", lt_adapter_load(model, fz_dir(), &a), lt_last_error()) == LT_OK) {
        fz_forward(model, a);
        lt_adapter_free(a);
    }
    return 0;
}

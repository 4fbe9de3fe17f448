/*
 * loratune - the command-line tool, libloratune's first host application.
 * It uses only the public API (include/loratune.h). Errors: one line on stderr, exit status 1
 * (2 for usage errors).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "loratune_experimental.h"

/* The library cannot choose OpenBLAS's kernels for its host (OpenBLAS reads OPENBLAS_CORETYPE when it loads);
 * the CLI is a program of its own, so it runs itself again with the core the library suggests (a pre-AVX2
 * core on an AVX2 CPU, OPENBLAS_CORETYPE unset: lt_openblas_coretype_hint). */
static void openblas_core_for_this_cpu(char **argv) {
    const char *want = lt_openblas_coretype_hint();
    if (!want || setenv("OPENBLAS_CORETYPE", want, 1) != 0) return;
    execv("/proc/self/exe", argv); /* returns only on failure: go on with the kernels OpenBLAS chose */
    unsetenv("OPENBLAS_CORETYPE");
}

static void usage(FILE *f) {
    fprintf(
        f,
        "usage: loratune COMMAND [options]\n"
        "commands:\n"
        "  info      --model DIR                         architecture, shapes, parameters\n"
        "  eval      --model DIR --data FILE.jsonl [--adapter DIR] [--batch N] [--json] [--threads N]\n"
        "            [--objective sft|dpo|ipo|kto|orpo --beta B]   (preference data: see train --objective dpo "
        "--help)\n"
        "            [--base-dtype f32|bf16]\n"
        "  eval --compare --model DIR --adapter DIR [--adapter-b DIR] [--data HELD-OUT.jsonl]\n"
        "            [--prompts FILE.jsonl] [--canaries FILE.jsonl] [--run TRAIN-OUT-DIR] [--report FILE.md] [--json]\n"
        "            base vs adapter (or two adapters): loss, per-row wins, expected answers, canary exposure\n"
        "  train     --model DIR --data FILE.jsonl --out DIR [options]   (loratune train --help)\n"
        "            --config DIR/training_args.json [--out DIR]   run a recorded training again\n"
        "  merge     --model DIR --adapter DIR --out DIR [--quant nf4|fp4|int8 [--no-double-quant]]\n"
        "  export    --format gguf|gguf-lora --model DIR [--adapter DIR] --out FILE.gguf\n"
        "            [--type f32|f16|bf16|q8_0] [--tokenizer DIR] [--name NAME] [--ollama [--base-gguf F]]\n"
        "            [--allow-approximate]   (gpt-oss's YaRN, which llama.cpp rounds: docs/API.md)\n"
        "  combine   --model DIR --adapters A,B,... --out DIR [--method cat|linear|ties|dare_linear|dare_ties|\n"
        "            magnitude_prune|slerp] [--weights W,...] [--density D] [--t T] [--rank R] [--seed S]\n"
        "            [--into-base] [--json]\n"
        "  extract   --base DIR --tuned DIR --out DIR [--rank R] [--targets ...] [--json]   LoRA from a full FT\n"
        "  quantize  --model DIR --out DIR [--format nf4|fp4] [--double-quant] [--blocksize N]\n"
        "  generate  --model DIR [--adapter DIR] --prompt TEXT | --messages FILE.json | --prompt-ids 1,2,3\n"
        "            [--stop S]... [--max-new-tokens N] [--temperature T --top-k K --top-p P --seed S] [--json]\n"
        "  chat      --model DIR [--adapter DIR] [--system TEXT]   talk to the model in its chat template\n"
        "  bench     --config bench-s [--threads N] [--json] [--base-dtype f32|bf16]\n"
        "  demo      [--out DIR] [--steps N]                fine-tune a small model end to end\n"
        "  tokenize  --tokenizer DIR --text-file F [--add-special]   one JSON array of ids per line\n"
        "  detokenize --tokenizer DIR --ids-file F [--skip-special]  one JSON string per line\n"
        "  render    --tokenizer DIR --messages FILE.json [--add-generation-prompt] [--ids]\n"
        "  data check --data FILE.jsonl [--eval FILE] [--tokenizer DIR] [--seq N]   dataset hygiene\n"
        "  version\n");
}

int main(int argc, char **argv) {
    openblas_core_for_this_cpu(argv);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("loratune %s\n", lt_version_string());
        return 0;
    }
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {
        {"info", cmd_info},
        {"eval", cmd_eval},
        {"train", cmd_train},
        {"merge", cmd_merge},
        {"generate", cmd_generate},
        {"quantize", cmd_quantize},
        {"chat", cmd_chat},
        {"bench", cmd_bench},
        {"demo", cmd_demo},
        {"tokenize", cmd_tokenize},
        {"detokenize", cmd_detokenize},
        {"render", cmd_render},
        {"data", cmd_data},
        {"export", cmd_export},
        {"combine", cmd_combine},
        {"extract", cmd_extract},
    };
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++)
        if (!strcmp(cmd, cmds[i].name)) return cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "loratune: unknown command \"%s\"\n", cmd);
    usage(stderr);
    return 2;
}

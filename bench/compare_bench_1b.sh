#!/usr/bin/env bash
# bench-1b side by side (the shapes of Llama-3.2-1B, random weights, batch 1 x SEQ, LoRA r16 on all 7
# projections, AdamW, gradient checkpointing on): `loratune bench` and transformers + peft on CPU torch,
# same machine, same thread count, run alternately (a round is ours bf16, ours QLoRA, ours bf16 with
# checkpointing, torch fp32, torch autocast(bf16), torch bf16 weights) so that background load hits them all. Prints each run's JSON,
# the load average before each run, and a summary of medians with the ratios the issue asks for.
#   bash bench/compare_bench_1b.sh [THREADS (2)] [REPEATS (2)] [SEQ (1024)] [STEPS (2)]
# Ours:
#   bf16 LoRA   --base-dtype bf16 --activation-memory $LT_ACT_MEM (default all: no layer is recomputed;
#               the memory a bf16 base saves pays for the activations; the summary checks the peak
#               against the fastest torch setting's)
#   QLoRA       --method qlora --base-dtype bf16 (NF4 + double quantization, computed in bf16,
#               checkpointing every layer: the memory figure)
#   bf16 LoRA, checkpointing every layer (bench-1b as defined): the QLoRA speed target compares QLoRA
#               with this run, the same work; QLoRA against the bf16 run without recomputation is printed too
# After each round, build/bench_gemm_bf16 gives the bf16 kernel's rate alone on one bench-1b layer (the
# denominator of the target "the step's GEMMs at >= 75% of the kernel's rate alone").
# Needs build/loratune and build/bench_gemm_bf16 (LT_BUILD=DIR for another build directory) and the reference venv
# (tests/ref-venv.sh, built on first use; LT_REF_VENV to override). About 8 minutes a round on an idle
# 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
repeats=${2:-2}
seq=${3:-1024}
steps=${4:-2}
act_mem=${LT_ACT_MEM:-all}
bin=${LT_BUILD:-build}/loratune
gemm_bench=${LT_BUILD:-build}/bench_gemm_bf16
py=$(bash tests/ref-venv.sh)
load() { cut -d' ' -f1-3 /proc/loadavg; }
ours() {
  echo "load average $(load): loratune bench $*" >&2
  "$bin" bench --config bench-1b --threads "$threads" --seq "$seq" --steps "$steps" --warmup 1 --json "$@" | tail -1
}
torch_() {
  echo "load average $(load): bench_torch.py $*" >&2
  "$py" bench/bench_torch.py --config bench-1b --threads "$threads" --seq "$seq" --steps "$steps" --warmup 1 "$@" \
    2>/dev/null | tail -1
}
names=("ours bf16 LoRA" "ours QLoRA nf4+dq (bf16)" "ours bf16 LoRA ckpt" "torch+peft fp32" "torch+peft autocast bf16" "torch+peft bf16 weights")
rows=()
kernel=()
for i in $(seq "$repeats"); do
  r=("$(ours --base-dtype bf16 --activation-memory "$act_mem")" "$(ours --method qlora --base-dtype bf16)"
     "$(ours --base-dtype bf16 --activation-memory 0)" "$(torch_)" "$(torch_ --precision autocast-bf16)" "$(torch_ --precision bf16-weights)")
  for k in 0 1 2 3 4 5; do printf '%-26s %s\n' "${names[$k]}:" "${r[$k]}"; done
  rows+=("${r[@]}")
  echo "load average $(load): bench_gemm_bf16 $threads 5 $seq bench-1b" >&2
  k=$("$gemm_bench" "$threads" 5 "$seq" bench-1b | awk '/^one layer/ {print $4}')
  echo "bf16 kernel alone, one layer: $k GFLOP/s"
  kernel+=("$k")
done
"$py" - "${kernel[*]}" "${rows[@]}" <<'PY'
import json, statistics, sys
kernel = statistics.median(float(x) for x in sys.argv[1].split())
rows = [json.loads(x) for x in sys.argv[2:]]
cols = [rows[k::6] for k in range(6)]
med = lambda rs, key: statistics.median(r[key] for r in rs)
t = [med(c, "tokens_per_s") for c in cols]
m = [med(c, "peak_rss_mb") for c in cols]
names = ["ours bf16", "ours qlora", "ours bf16 ckpt", "torch fp32", "torch autocast-bf16", "torch bf16-weights"]
print("summary (medians): " + "; ".join(f"{n} {x:.2f} tok/s ({y:.0f} MiB)" for n, x, y in zip(names, t, m)))
f = max(range(3, 6), key=lambda k: t[k])
print(f"fastest torch setting: {names[f]} ({t[f]:.2f} tok/s, {m[f]:.0f} MiB)")
print(f"ours bf16 / fastest torch: {t[0] / t[f]:.2f}x (target >= 1.3x), peak {m[0]:.0f} vs {m[f]:.0f} MiB "
      f"({'not above' if m[0] <= m[f] else 'ABOVE'} torch's)")
print(f"QLoRA / bf16 LoRA, both checkpointing: {t[1] / t[2]:.2f}x (target >= 0.85x); against bf16 without "
      f"recomputation {t[1] / t[0]:.2f}x")
print(f"QLoRA peak {m[1]:.0f} MiB = {m[1] / 1024:.2f} GiB "
      f"(target <= 2.0 GiB)")
g = [med(c, "frozen_gemm_gflop_per_s") for c in cols[:3]]
print(f"the step's frozen-weight GEMMs (recomputation not counted): bf16 {g[0]:.1f}, QLoRA {g[1]:.1f}, bf16 ckpt "
      f"{g[2]:.1f} GFLOP/s; the bf16 kernel alone {kernel:.1f}: bf16 at {100 * g[0] / kernel:.0f}% (target >= 75%)")
gi = [med(c, "gemm_gflop_per_s_in_gemm") for c in cols[:3]]
gs = [med(c, "gemm_time_share") for c in cols[:3]]
print(f"the same GEMMs timed inside the step (recomputation included) while they run: bf16 {gi[0]:.1f}, QLoRA "
      f"{gi[1]:.1f}, bf16 ckpt {gi[2]:.1f} GFLOP/s ({100 * gs[0]:.0f}%, {100 * gs[1]:.0f}%, {100 * gs[2]:.0f}% of the "
      f"step's time): bf16 at {100 * gi[0] / kernel:.0f}% of the kernel alone (target >= 75%)")
for n, c in zip(names[:2], cols[:2]):
    r = c[0]
    print(f"{n}: weights {r['weights_rss_mb']:.0f} MiB, adapter + optimizer state {r['adapter_state_rss_mb']:.0f} MiB, "
          f"step (activations, workspace) {r['step_rss_mb']:.0f} MiB, process {r['base_rss_mb']:.0f} MiB")
PY

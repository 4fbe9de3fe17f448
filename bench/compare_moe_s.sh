#!/usr/bin/env bash
# moe-s side by side: `loratune bench --config moe-s` (Qwen3-MoE, hidden 512, 8 layers, 32 experts of 256,
# top-4; LoRA r=16 on q,k,v,o and every expert) and the same step in transformers + peft (target_modules +
# target_parameters, CPU torch), same machine and thread count, run alternately so that background load hits
# them all. A round is:
#   ours f32               the f32 base
#   ours bf16 base         --base-dtype bf16: attention, experts, embedding and LM head frozen in bf16 (the
#                          AVX512_BF16 kernel where the CPU has it), LoRA and its gradients in f32
#   ours QLoRA             --method qlora --base-dtype bf16: NF4 + double quantization, multiplied in bf16
#                          (LT_MOE_QLORA=0 leaves it out)
#   torch+peft fp32, autocast-bf16, bf16-weights   (bench/bench_torch.py --precision ...)
# Prints each run's JSON with the load average before it, then the medians, the ratio of OUR fastest setting
# against THEIR fastest (wall and per CPU second) and the f32-against-fp32 ratio, with each peak RSS.
#   bash bench/compare_moe_s.sh [THREADS (2)] [REPEATS (3)] [STEPS (3)]
# Needs build/loratune (LT_BUILD=DIR for another build) and the reference venv (tests/ref-venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
repeats=${2:-3}
steps=${3:-3}
bin=${LT_BUILD:-build}/loratune
py=$(bash tests/ref-venv.sh)
load() { cut -d' ' -f1-3 /proc/loadavg; }
ours() {
  echo "load average $(load): loratune bench --config moe-s $*" >&2
  "$bin" bench --config moe-s --threads "$threads" --steps "$steps" --warmup 1 --json "$@" | tail -1
}
torch_() {
  echo "load average $(load): bench_torch.py --config moe-s $*" >&2
  "$py" bench/bench_torch.py --config moe-s --threads "$threads" --steps "$steps" --warmup 1 "$@" 2>/dev/null | tail -1
}
names=("ours f32" "ours bf16 base" "ours QLoRA nf4+dq (bf16)" "torch+peft fp32" "torch+peft autocast-bf16"
       "torch+peft bf16-weights")
n_ours=3
[ "${LT_MOE_QLORA:-1}" = 0 ] && { names=("${names[@]:0:2}" "${names[@]:3}"); n_ours=2; }
rows=()
for i in $(seq "$repeats"); do
  r=("$(ours)" "$(ours --base-dtype bf16)")
  [ "$n_ours" = 3 ] && r+=("$(ours --method qlora --base-dtype bf16)")
  r+=("$(torch_)" "$(torch_ --precision autocast-bf16)" "$(torch_ --precision bf16-weights)")
  for k in "${!r[@]}"; do printf '%-27s %s\n' "${names[$k]}:" "${r[$k]}"; done
  rows+=("${r[@]}")
done
"$py" - "$n_ours" "${names[@]}" -- "${rows[@]}" <<'PY'
import json, statistics, sys
n_ours = int(sys.argv[1]); sep = sys.argv.index("--")
names, rows = sys.argv[2:sep], [json.loads(x) for x in sys.argv[sep + 1:]]
cols = [rows[k::len(names)] for k in range(len(names))]
med = lambda rs, key: statistics.median(r[key] for r in rs)
t = [med(c, "tokens_per_s") for c in cols]
tc = [med(c, "tokens_per_cpu_s") for c in cols]
m = [med(c, "peak_rss_mb") for c in cols]
loss = [med(c, "loss") for c in cols]
for n, a, b, c, l in zip(names, t, tc, m, loss):
    print(f"median {n:27s} {a:8.1f} tok/s ({b:7.1f} per CPU s), peak RSS {c:6.0f} MiB, loss {l:.6f}")
o = max(range(n_ours), key=lambda k: t[k])
f = max(range(n_ours, len(names)), key=lambda k: t[k])
print(f"OUR fastest ({names[o]}) / THEIR fastest ({names[f]}): {t[o] / t[f]:.2f}x wall, {tc[o] / tc[f]:.2f}x per CPU "
      f"second; peak RSS {m[o]:.0f} vs {m[f]:.0f} MiB")
print(f"ours f32 / torch+peft fp32: {t[0] / t[n_ours]:.2f}x wall, {tc[0] / tc[n_ours]:.2f}x per CPU second; "
      f"peak RSS {m[0]:.0f} vs {m[n_ours]:.0f} MiB")
print(f"loss after the steps, bf16 base vs f32: {loss[1]:.6f} vs {loss[0]:.6f} "
      f"({abs(loss[1] - loss[0]) / abs(loss[0]):.2e} relative)")
PY

#!/usr/bin/env bash
# bench-s side by side: `loratune bench` and the same LoRA step in transformers + peft (CPU torch),
# same machine, same thread count, run alternately (ours, theirs, ours, theirs, ...) so that background
# load affects both. Prints each run's JSON and a summary with the ratio of the medians.
#   bash bench/compare_bench_s.sh [THREADS] [REPEATS] [MODE]
# MODE f32 (default): libloratune without and with gradient checkpointing vs torch + peft in fp32.
# MODE bf16: libloratune with f32 and with bf16 base weights (--base-dtype bf16, no checkpointing) vs
#   torch + peft in fp32, under torch.autocast(bfloat16), and with the base model in bf16.
# Needs build/loratune (LT_BUILD=DIR for another build directory) and the reference venv (tests/ref-venv.sh, built on first use; LT_REF_VENV to override).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
repeats=${2:-3}
mode=${3:-f32}
bin=${LT_BUILD:-build}/loratune
py=$(bash tests/ref-venv.sh)  # the reference venv of requirements.lock (built if missing)
ours() { "$bin" bench --config bench-s --threads "$threads" --steps 5 --warmup 2 --json "$@" | tail -1; }
torch_() { "$py" bench/bench_torch.py --threads "$threads" --steps 5 --warmup 2 "$@" 2>/dev/null | tail -1; }
if [ "$mode" = bf16 ]; then
  names=("libloratune f32 base" "libloratune bf16 base" "torch+peft fp32" "torch+peft autocast bf16" "torch+peft bf16 weights")
  rows=()
  for i in $(seq "$repeats"); do
    r=("$(ours)" "$(ours --base-dtype bf16)" "$(torch_)" "$(torch_ --precision autocast-bf16)" "$(torch_ --precision bf16-weights)")
    for k in 0 1 2 3 4; do printf '%-26s %s\n' "${names[$k]}:" "${r[$k]}"; done
    rows+=("${r[@]}")
  done
  "$py" - "${rows[@]}" <<'PY'
import json, statistics, sys
rows = [json.loads(x) for x in sys.argv[1:]]
cols = [rows[k::5] for k in range(5)]
med = lambda rs, key: statistics.median(r[key] for r in rs)
t = [med(c, "tokens_per_s") for c in cols]
m = [med(c, "peak_rss_mb") for c in cols]
names = ["libloratune f32", "libloratune bf16", "torch fp32", "torch autocast-bf16", "torch bf16-weights"]
print("summary (medians): " + "; ".join(f"{n} {x:.0f} tok/s ({y:.0f} MiB)" for n, x, y in zip(names, t, m)))
print(f"ratios: bf16/torch-fp32 {t[1]/t[2]:.2f}x, f32/torch-fp32 {t[0]/t[2]:.2f}x, bf16/torch-autocast {t[1]/t[3]:.2f}x, "
      f"bf16/torch-bf16-weights {t[1]/t[4]:.2f}x, bf16/f32 (ours) {t[1]/t[0]:.2f}x")
PY
  exit 0
fi
ours_=(); theirs=(); ours_ck=()
for i in $(seq "$repeats"); do
  o=$(ours)
  c=$(ours --checkpointing on)
  t=$(torch_)
  echo "libloratune:               $o"
  echo "libloratune (checkpoint.): $c"
  echo "torch + peft:              $t"
  ours_+=("$o"); ours_ck+=("$c"); theirs+=("$t")
done
"$py" - "${#ours_[@]}" "${ours_[@]}" "${ours_ck[@]}" "${theirs[@]}" <<'PY'
import json, statistics, sys
n = int(sys.argv[1]); rows = [json.loads(x) for x in sys.argv[2:]]
ours, ck, theirs = rows[:n], rows[n:2*n], rows[2*n:]
med = lambda rs, k: statistics.median(r[k] for r in rs)
o, c, t = med(ours, "tokens_per_s"), med(ck, "tokens_per_s"), med(theirs, "tokens_per_s")
print(f"summary: libloratune {o:.0f} tok/s (peak RSS {med(ours,'peak_rss_mb'):.0f} MiB), with gradient checkpointing "
      f"{c:.0f} tok/s ({med(ck,'peak_rss_mb'):.0f} MiB); torch+peft {t:.0f} tok/s ({med(theirs,'peak_rss_mb'):.0f} MiB); "
      f"ratio {o/t:.2f}x (checkpointing {c/t:.2f}x)")
PY

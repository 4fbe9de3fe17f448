#!/usr/bin/env bash
# moe-s side by side: `loratune bench --config moe-s` (Qwen3-MoE, hidden 512, 8 layers, 32 experts of 256,
# top-4; LoRA r=16 on q,k,v,o and every expert) and the same step in transformers + peft (target_modules +
# target_parameters, CPU torch), same machine and thread count, run alternately (ours, theirs, ...).
# Prints each run's JSON and the ratio of the medians.
#   bash bench/compare_moe_s.sh [THREADS] [REPEATS] [STEPS]
# Needs build/loratune (LT_BUILD=DIR for another build) and the reference venv (tests/ref-venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
repeats=${2:-3}
steps=${3:-3}
bin=${LT_BUILD:-build}/loratune
py=$(bash tests/ref-venv.sh)
ours=(); theirs=()
for i in $(seq "$repeats"); do
  o=$("$bin" bench --config moe-s --threads "$threads" --steps "$steps" --warmup 1 --json | tail -1)
  t=$("$py" bench/bench_torch.py --config moe-s --threads "$threads" --steps "$steps" --warmup 1 2>/dev/null | tail -1)
  echo "libloratune:  $o"
  echo "torch + peft: $t"
  ours+=("$o"); theirs+=("$t")
done
"$py" - "${#ours[@]}" "${ours[@]}" "${theirs[@]}" <<'PY'
import json, statistics, sys
n = int(sys.argv[1]); rows = [json.loads(x) for x in sys.argv[2:]]
ours, theirs = rows[:n], rows[n:]
med = lambda rs, k: statistics.median(r[k] for r in rs)
o, t = med(ours, "tokens_per_s"), med(theirs, "tokens_per_s")
oc, tc = med(ours, "tokens_per_cpu_s"), med(theirs, "tokens_per_cpu_s")
print(f"summary: libloratune {o:.1f} tok/s ({oc:.1f} per CPU s, peak RSS {med(ours, 'peak_rss_mb'):.0f} MiB); "
      f"torch+peft {t:.1f} tok/s ({tc:.1f} per CPU s, {med(theirs, 'peak_rss_mb'):.0f} MiB); "
      f"ratio {o / t:.2f}x wall, {oc / tc:.2f}x CPU time")
PY

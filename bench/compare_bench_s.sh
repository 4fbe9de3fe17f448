#!/usr/bin/env bash
# bench-s side by side: `loratune bench` and the same LoRA step in transformers + peft (CPU torch),
# same machine, same thread count, run alternately (ours, theirs, ours, theirs, ...) so that background
# load affects both. Prints each run's JSON and a summary with the ratio of the medians.
#   bash bench/compare_bench_s.sh [THREADS] [REPEATS]
# Needs build/loratune (LT_BUILD=DIR for another build directory) and the reference venv (tests/run.sh creates it; LT_REF_VENV to override).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
repeats=${2:-3}
bin=${LT_BUILD:-build}/loratune
py=${LT_REF_VENV:-$HOME/.cache/loratune/ref-venv}/bin/python
ours=(); theirs=(); ours_ck=()
for i in $(seq "$repeats"); do
  o=$("$bin" bench --config bench-s --threads "$threads" --steps 5 --warmup 2 --json | tail -1)
  c=$("$bin" bench --config bench-s --threads "$threads" --steps 5 --warmup 2 --checkpointing on --json | tail -1)
  t=$("$py" bench/bench_torch.py --threads "$threads" --steps 5 --warmup 2 2>/dev/null | tail -1)
  echo "libloratune:               $o"
  echo "libloratune (checkpoint.): $c"
  echo "torch + peft:              $t"
  ours+=("$o"); ours_ck+=("$c"); theirs+=("$t")
done
"$py" - "${#ours[@]}" "${ours[@]}" "${ours_ck[@]}" "${theirs[@]}" <<'PY'
import json, statistics, sys
n = int(sys.argv[1]); rows = [json.loads(x) for x in sys.argv[2:]]
ours, ck, theirs = rows[:n], rows[n:2*n], rows[2*n:]
med = lambda rs, k: statistics.median(r[k] for r in rs)
o, c, t = med(ours, "tokens_per_s"), med(ck, "tokens_per_s"), med(theirs, "tokens_per_s")
print(f"summary: libloratune {o:.0f} tok/s (peak RSS {med(ours,'peak_rss_mb'):.0f} MiB), with gradient checkpointing "
      f"{c:.0f} tok/s ({med(ck,'peak_rss_mb'):.0f} MiB); torch+peft {t:.0f} tok/s ({med(theirs,'peak_rss_mb'):.0f} MiB); "
      f"ratio {o/t:.2f}x (checkpointing {c/t:.2f}x)")
PY

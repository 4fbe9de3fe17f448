#!/usr/bin/env bash
# bench-s full fine-tuning side by side (issue 9 performance: ours >= 2x llama.cpp's CPU trainer in
# tokens/s at no more memory): `loratune bench --method full`, the same step in PyTorch
# (bench/bench_torch.py --method full: every parameter, torch.optim.AdamW, fp32) and llama.cpp's
# llama-finetune (bench/llamacpp_peer.sh), same machine, same thread count, run alternately
# (ours, torch, llama.cpp, llama.cpp + OpenBLAS, ours with 8-bit AdamW, ours, ...) so that background load affects all of them.
# llama.cpp runs in two builds of the same pinned source: the plain CPU build (ggml's own kernels) and
# the build with ggml's BLAS backend on Debian's OpenBLAS (LT_LLAMACPP_BLAS=1 in llamacpp_peer.sh), which
# runs the matmuls and the weight-gradient OUT_PRODs in sgemm and is 2-3x faster: the issue's target is
# held against the faster of the two.
# Prints each run's JSON line and a summary with the ratios of the medians (tokens/s and peak RSS).
#   bash bench/compare_full_ft.sh [THREADS] [REPEATS]
# Needs build/loratune (LT_BUILD=DIR for another build directory), the reference venv (tests/ref-venv.sh,
# built on first use; LT_REF_VENV to override). The first run builds llama.cpp (a benchmark-only peer, cached in
# ~/.cache/loratune/llama.cpp-<version>, see bench/llamacpp_peer.sh; ~15-25 min on 2 cores).
# LT_FULL_STEPS (default 5) timed steps after 2 warm-up steps for each peer; LT_LLAMACPP_SHAPE is passed
# through to the llama.cpp peer (c256, the default, or c1024-ub256).
# On a shared machine run it as `OMP_WAIT_POLICY=PASSIVE bash bench/compare_full_ft.sh 2 3`: all three use
# OpenMP, whose spinning threads collapse 2-5x when another process holds one of the cores.
# Not part of CI or tests/run.sh (too slow).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
repeats=${2:-3}
steps=${LT_FULL_STEPS:-5}
bin=${LT_BUILD:-build}/loratune
py=$(bash tests/ref-venv.sh)  # the reference venv of requirements.lock (built if missing)

ours() { "$bin" bench --config bench-s --method full --threads "$threads" --steps "$steps" --warmup 2 --json "$@" | tail -1; }
torch_() { "$py" bench/bench_torch.py --method full --threads "$threads" --steps "$steps" --warmup 2 2>/dev/null | tail -1; }
lcpp() { LT_LLAMACPP_WARMUP=2 LT_LLAMACPP_BLAS=$1 bash bench/llamacpp_peer.sh "$threads" "$steps" | tail -1; }

for b in 0 1; do LT_LLAMACPP_BLAS=$b bash bench/llamacpp_peer.sh build >/dev/null; done   # once, outside the timed loop
bash bench/llamacpp_peer.sh model >/dev/null
rows=()
for i in $(seq "$repeats"); do
  r=("$(ours)" "$(torch_)" "$(lcpp 0)" "$(lcpp 1)" "$(ours --optimizer adamw8bit)")
  echo "libloratune full FT:          ${r[0]}"
  echo "torch full FT:                ${r[1]}"
  echo "llama.cpp finetune:           ${r[2]}"
  echo "llama.cpp finetune, OpenBLAS: ${r[3]}"
  echo "libloratune, 8-bit AdamW:     ${r[4]}"
  rows+=("${r[@]}")
done
"$py" - "${rows[@]}" <<'PY'
import json, statistics, sys
rows = [json.loads(x) for x in sys.argv[1:]]
ours, torch_, lcpp, lblas, ours8 = rows[0::5], rows[1::5], rows[2::5], rows[3::5], rows[4::5]
def med(rs, k):
    v = [r[k] for r in rs if r.get(k) is not None]
    return statistics.median(v) if v else None
names = ["libloratune", "torch full FT", "llama.cpp finetune", "llama.cpp finetune + OpenBLAS", "libloratune 8-bit AdamW"]
cols = [ours, torch_, lcpp, lblas, ours8]
t = [med(c, "tokens_per_s") for c in cols]
m = [med(c, "peak_rss_mb") for c in cols]
c = [med(c, "tokens_per_cpu_s") for c in cols]
fmt = lambda x, f: "n/a" if x is None else format(x, f)
print("summary (medians): " + "; ".join(f"{n} {fmt(x, '.0f')} tok/s, {fmt(z, '.0f')} tok/CPU-s ({fmt(y, '.0f')} MiB)"
                                        for n, x, y, z in zip(names, t, m, c)))
l = lcpp[-1]
print(f"llama.cpp trains {l.get('trained_params')} parameters ({', '.join(l.get('trained', []))}); "
      f"untrained: {', '.join(l.get('untrained', [])) or 'none'}; {l.get('tokens_per_optimizer_step')} tokens per "
      f"optimizer step (ours and torch: 1024)")
ratio = lambda a, b: "n/a" if a is None or b is None else f"{a / b:.2f}x"
k = 3 if (t[3] or 0) >= (t[2] or 0) else 2    # the faster llama.cpp build is the one to beat
print(f"faster llama.cpp build: {names[k]}")
print(f"ratios: tokens/s ours/llama.cpp {ratio(t[0], t[k])} (issue 9 target >= 2x; against the plain build "
      f"{ratio(t[0], t[2])}), ours/torch {ratio(t[0], t[1])}, "
      f"torch/llama.cpp {ratio(t[1], t[k])}, llama.cpp OpenBLAS/plain {ratio(t[3], t[2])}; "
      f"peak RSS ours/llama.cpp {ratio(m[0], m[k])} (target <= 1), torch/llama.cpp {ratio(m[1], m[k])}")
print(f"8-bit AdamW: tokens/s ours8/llama.cpp {ratio(t[4], t[k])} (plain build {ratio(t[4], t[2])}), "
      f"peak RSS ours8/llama.cpp {ratio(m[4], m[k])}")
PY

#!/usr/bin/env bash
# run.sh - build the libFuzzer harnesses (clang, ASan + UBSan) and run each for a bounded time.
#
#   bash tests/fuzz/run.sh [--time SECONDS] [--jobs N] [HARNESS...]     (from anywhere)
#
# HARNESS: model bnb tokenizer chat_template adapter checkpoint jsonl gguf (default: all). Builds
# build-fuzz/ (CC=clang cmake -DLT_FUZZ=ON) when needed, writes the seed corpora with
# build-fuzz/tests/fuzz/make_seeds (files the library writes; the tokenizer goldens of
# build/testdata/tokenizers too when they exist), then runs each harness for SECONDS (default 10) on
# build-fuzz/corpus/<harness> (grown across runs) plus the seeds, N harnesses at a time (default 1).
# Any crash, sanitizer report, leak, timeout (-timeout=10 s per input) or out-of-memory (2 GiB) fails
# the run; the reproducer is build-fuzz/artifacts/<harness>-crash-*|leak-*|timeout-*|oom-*, and
# `build-fuzz/tests/fuzz/fuzz_<harness> FILE` replays it. Each harness's line gives its executions and
# seconds. docs/HARDENING.md has the long-run command and the recorded runs.
set -uo pipefail
cd "$(dirname "$0")/../.."
secs=10
jobs=1
names=()
while [ $# -gt 0 ]; do
  case "$1" in
    --time) secs=$2; shift ;;
    --jobs) jobs=$2; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) names+=("$1") ;;
  esac
  shift
done
[ ${#names[@]} -gt 0 ] || names=(model bnb tokenizer chat_template adapter checkpoint jsonl gguf)
b=build-fuzz
command -v clang >/dev/null || { echo "fuzz: clang not found (tools/install-deps.sh installs it)"; exit 1; }
if [ ! -f $b/CMakeCache.txt ]; then
  CC=clang cmake -S . -B $b -DCMAKE_BUILD_TYPE=Debug -DLT_FUZZ=ON -DLT_CUDA=OFF -DLT_TESTS=OFF -DLT_BENCH=OFF \
    >/tmp/lt-fuzz-configure.$$.log 2>&1 || { cat /tmp/lt-fuzz-configure.$$.log; echo "fuzz: configure failed"; exit 1; }
fi
targets=(make_seeds)
for n in "${names[@]}"; do targets+=("fuzz_$n"); done
cmake --build $b -j"$(nproc)" --target "${targets[@]}" >$b/build.log 2>&1 || { tail -40 $b/build.log; echo "fuzz: build failed"; exit 1; }
rm -rf $b/seeds
toks=build/testdata/tokenizers
$b/tests/fuzz/make_seeds $b/seeds $( [ -d $toks ] && echo $toks ) >/dev/null || { echo "fuzz: make_seeds failed"; exit 1; }
mkdir -p $b/artifacts
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

one() { # NAME: run one harness; prints its line, returns its status
  local n=$1 log=$b/artifacts/$n.log
  mkdir -p $b/corpus/$n
  local t0=$SECONDS
  $b/tests/fuzz/fuzz_$n -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix=$b/artifacts/$n- $b/corpus/$n $b/seeds/$n >"$log" 2>&1
  local rc=$?
  local execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ $rc -eq 0 ]; then
    printf '  PASS  fuzz_%-14s %8s executions in %4ds\n' "$n" "${execs:-?}" $((SECONDS - t0))
  else
    printf '  FAIL  fuzz_%-14s (status %d after %ds): %s\n' "$n" $rc $((SECONDS - t0)) \
      "$(grep -m1 -E 'ERROR|SUMMARY|Test unit written' "$log")"
    grep -E 'ERROR|SUMMARY|#[0-9]+ 0x|Test unit written' "$log" | head -30 | sed 's/^/        | /'
  fi
  return $rc
}

failed=0
running=0
pids=()
for n in "${names[@]}"; do
  one "$n" &
  pids+=($!)
  running=$((running + 1))
  if [ $running -ge "$jobs" ]; then
    wait -n || failed=1
    running=$((running - 1))
  fi
done
while [ $running -gt 0 ]; do
  wait -n || failed=1
  running=$((running - 1))
done
[ $failed -eq 0 ] && echo "fuzz: ${#names[@]} harnesses, no finding" || echo "fuzz: FINDINGS (see above)"
exit $failed

#!/usr/bin/env bash
# tsan.sh - the thread tests under ThreadSanitizer.
#
#   bash tests/tsan.sh            (from anywhere; after build/testdata exists: tests/run.sh makes it)
#
# Builds build-tsan/ (CC=clang, -fsanitize=thread, CMake option LT_TSAN) and runs
#   test_lora      case "threads":  two trainers training on one shared model at once, two threads
#                                   generating from one shared model at once, greedy generation
#   test_families  case "generate": generation (KV cache) of every model family, LoRA and DoRA
#   test_backend_ops case "threads": the kernels (sumsq, rmsnorm, attention, GEMMs, ...) called from
#                                   several threads at once, and on 1 and on 5 OpenMP threads, at sizes
#                                   that split the work over all five (CPU: the TSan build has no CUDA)
# the first two with a 2-thread CPU context, so the kernels' OpenMP teams run inside those threads. OpenMP is
# clang's libomp, with its Archer tool (OMP_TOOL_LIBRARIES=libarcher.so) which tells TSan about the
# runtime's own synchronisation (barriers, the ends of parallel regions): no suppression file is
# needed. ignore_noninstrumented_modules=1 keeps TSan out of libraries built without it (OpenBLAS
# with one thread, jansson, PCRE2): what it checks is every access of this library's own code.
# Any report fails the run (halt_on_error=1, exit code 66).
set -euo pipefail
cd "$(dirname "$0")/.."
b=build-tsan
command -v clang >/dev/null || { echo "tsan: clang not found (tools/install-deps.sh installs it)"; exit 1; }
archer=$(dirname "$(clang -print-file-name=libomp.so)")/libarcher.so
[ -f "$archer" ] || archer=$(ls /usr/lib/llvm-*/lib/libarcher.so 2>/dev/null | head -1)
[ -n "$archer" ] && [ -f "$archer" ] || { echo "tsan: libarcher.so not found (Debian: libomp-14-dev)"; exit 1; }
[ -d build/testdata/models ] || { echo "tsan: build/testdata is missing (tests/run.sh makes it)"; exit 1; }
if [ ! -f $b/CMakeCache.txt ]; then
  mkdir -p $b
  CC=clang cmake -S . -B $b -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLT_TSAN=ON -DLT_CUDA=OFF -DLT_TESTS=ON \
    -DLT_BENCH=OFF >$b/configure.log 2>&1 || { cat $b/configure.log; exit 1; }
else # again: the test list is a glob, and a target new since the last configure is unknown to make
  cmake $b >$b/configure.log 2>&1 || { cat $b/configure.log; exit 1; }
fi
cmake --build $b -j"$(nproc)" --target test_lora test_families test_backend_ops >$b/build.log 2>&1 || { tail -40 $b/build.log; exit 1; }
rm -rf $b/testdata && ln -s "$PWD/build/testdata" $b/testdata
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 ignore_noninstrumented_modules=1"
export OMP_TOOL_LIBRARIES=$archer
export LT_TEST_THREADS=2 CK_DEFAULT_TIMEOUT=600
status=0
CK_RUN_CASE=threads $b/tests/test_lora || status=1
CK_RUN_CASE=generate $b/tests/test_families || status=1
CK_RUN_CASE=threads $b/tests/test_backend_ops || status=1
[ $status -eq 0 ] && echo "tsan: no report" || echo "tsan: FAILED (a report above, or a test failure)"
exit $status

#!/usr/bin/env bash
# The CLI runs OpenBLAS's kernels for this CPU (src/cli/main.c): on a CPU with AVX2 + FMA, the core OpenBLAS
# reports in the loratune process is not a pre-AVX2 one, whatever OpenBLAS's own detection picked first; with
# OPENBLAS_CORETYPE set by the user, that core is kept.   bash tests/cli_openblas.sh [build/loratune]
set -euo pipefail
bin=${1:-build/loratune}
last_core() { OPENBLAS_VERBOSE=2 "$@" 2>&1 >/dev/null | sed -n 's/^Core: //p' | tail -1; }
core=$(last_core "$bin" version)
echo "OpenBLAS core in loratune: ${core:-unknown}"
if grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then
  case "$core" in
    Prescott|Core2|Penryn|Dunnington|Nehalem|Atom) echo "FAIL: pre-AVX2 OpenBLAS kernels ($core) on an AVX2 CPU"; exit 1 ;;
  esac
fi
kept=$(OPENBLAS_CORETYPE=Prescott last_core "$bin" version)
[ "$kept" = Prescott ] || { echo "FAIL: OPENBLAS_CORETYPE=Prescott was not kept (got $kept)"; exit 1; }
echo "ok: the user's OPENBLAS_CORETYPE is kept"

#!/usr/bin/env bash
# check-abi.sh - compare the public ABI of libloratune with the committed baseline (docs/ABI.md).
#
#   tools/check-abi.sh                 build a debug-info copy of the library and abidiff it against
#                                      docs/abi/libloratune.abi
#   tools/check-abi.sh --lib PATH      use PATH (a libloratune.so.0 WITH DWARF, e.g. -g) instead of building
#   tools/check-abi.sh --update        rewrite the baseline from the current tree (do this at a release)
#
# Needs abidw/abidiff (Debian: abigail-tools). The library is built with -g -O0, CUDA off, into
# $LT_ABI_BUILD_DIR (default build/abi): a Release build carries no DWARF, and without types abidiff
# could only compare symbol names. The ABI does not depend on the optimisation level or on CUDA.
#
# Only the stable header counts: the functions of include/loratune_experimental.h are suppressed
# (they carry no promise), and types not reachable from include/ are dropped (--drop-private-types).
#
# Exit status: 0 = no change, or only compatible changes (added functions, fields appended to a
# params struct); 1 = an incompatible change (abidiff bit 8, or a change the promise forbids: a
# field moved or retyped, an enumerator value changed, a function's parameters/return changed);
# 2 = the tool could not run.
set -euo pipefail
cd "$(dirname "$0")/.."

baseline=docs/abi/libloratune.abi
update=0
lib=
while [ $# -gt 0 ]; do
  case "$1" in
    --update) update=1 ;;
    --lib) lib=$2; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "check-abi: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

for t in abidw abidiff; do
  command -v $t >/dev/null || { echo "check-abi: $t not found (apt-get install abigail-tools)" >&2; exit 2; }
done

if [ -z "$lib" ]; then
  bdir=${LT_ABI_BUILD_DIR:-build/abi}
  mkdir -p "$(dirname "$bdir")"
  cmake -S . -B "$bdir" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_FLAGS_DEBUG="-g -O0" -DLT_CUDA=OFF -DLT_TESTS=OFF \
    -DLT_SANITIZE=OFF >"$bdir.log" 2>&1 || { cat "$bdir.log"; echo "check-abi: configure failed" >&2; exit 2; }
  cmake --build "$bdir" --target loratune -j"$(nproc)" >>"$bdir.log" 2>&1 || { cat "$bdir.log"; echo "check-abi: build failed" >&2; exit 2; }
  lib=$bdir/libloratune.so
fi
[ -f "$lib" ] || { echo "check-abi: $lib not found" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The experimental tier: suppress every function declared in loratune_experimental.h.
supp=$tmp/experimental.abignore
: >"$supp"
for fn in $(grep -ho 'LT_API[^;(]*\blt_[a-z0-9_]*[[:space:]]*(' include/loratune_experimental.h | grep -o 'lt_[a-z0-9_]*' | sort -u); do
  printf '[suppress_function]\n  symbol_name_regexp = ^%s$\n  drop = yes\n\n' "$fn" >>"$supp"
done

abidw_args=(--headers-dir include --drop-private-types --no-show-locs --no-corpus-path --suppressions "$supp")

if [ $update = 1 ]; then
  mkdir -p "$(dirname "$baseline")"
  abidw "${abidw_args[@]}" --out-file "$baseline" "$lib"
  echo "check-abi: wrote $baseline ($(grep -c '<elf-symbol ' "$baseline") symbols)"
  exit 0
fi

[ -f "$baseline" ] || { echo "check-abi: no baseline $baseline (run tools/check-abi.sh --update)" >&2; exit 2; }
abidw "${abidw_args[@]}" --out-file "$tmp/current.abi" "$lib"

set +e
abidiff --no-show-locs --no-corpus-path --suppressions "$supp" --harmless "$baseline" "$tmp/current.abi" >"$tmp/report.txt" 2>&1
rc=$?
set -e

if [ $((rc & 3)) -ne 0 ]; then
  cat "$tmp/report.txt"
  echo "check-abi: abidiff failed to run (exit $rc)" >&2
  exit 2
fi

# Changes the promise forbids even when abidiff only flags them as "a change" (bit 4): fields that move
# or change type, deleted fields, enumerators that change value or go away, changed parameters and
# return types of an existing function. Appending a field (a size change plus "data member insertion"
# at the end) and adding functions stay compatible.
forbidden=$(grep -E \
  -e "offset changed from" \
  -e "data members? deletions?" \
  -e "type of '[^']*' changed" \
  -e "from value '[^']*' to '" \
  -e "enumerators? deletions?" \
  -e "parameter [0-9]+ of type '[^']*' changed" \
  -e "parameter [0-9]+ of type '[^']*' was (added|removed)" \
  -e "type name changed from" \
  -e "Removed functions?:" -e "Removed variables?:" \
  "$tmp/report.txt" | grep -v "underlying type" | sort -u || true)

if [ $((rc & 8)) -ne 0 ] || [ -n "$forbidden" ]; then
  cat "$tmp/report.txt"
  [ -n "$forbidden" ] && { echo "check-abi: changes the ABI promise forbids:"; echo "$forbidden" | sed 's/^/  /'; }
  echo "check-abi: INCOMPATIBLE ABI change against $baseline (abidiff exit $rc)"
  exit 1
fi
if [ $((rc & 4)) -ne 0 ]; then
  cat "$tmp/report.txt"
  echo "check-abi: note: compatible ABI changes (additions) against $baseline; refresh the baseline at the next release"
  exit 0
fi
echo "check-abi: ABI unchanged against $baseline"

#!/usr/bin/env bash
# check-exports.sh - the shared library exports exactly the public API (docs/ABI.md).
#
#   tools/check-exports.sh [LIB]     (default build/libloratune.so)
#
# Checks, with nm -D --defined-only and readelf:
#  - every exported symbol is lt_* (besides the version node LORATUNE_0 that the version script defines),
#    and carries the LORATUNE_0 version;
#  - every function declared LT_API in include/loratune.h and include/loratune_experimental.h is exported;
#  - every exported lt_* symbol is declared in one of those headers (no internal lt_ helper leaks);
#  - the SONAME is libloratune.so.<major>.
set -euo pipefail
cd "$(dirname "$0")/.."
lib=${1:-build/libloratune.so}
[ -f "$lib" ] || { echo "check-exports: $lib not found" >&2; exit 2; }
command -v nm >/dev/null || { echo "check-exports: nm not found (binutils)" >&2; exit 2; }

fail=0
syms=$(nm -D --defined-only "$lib" | awk '{print $NF}')

bad=$(echo "$syms" | grep -v -E '^lt_[a-z0-9_]+@@?LORATUNE_[0-9]+$' | grep -v -x 'LORATUNE_[0-9]*' || true)
if [ -n "$bad" ]; then
  echo "check-exports: symbols outside the lt_* API (or without the LORATUNE_ version):"
  echo "$bad" | sed 's/^/  /'
  fail=1
fi

exported=$(echo "$syms" | grep -E '^lt_' | sed 's/@.*//' | sort -u)
declared=$(grep -ho 'LT_API[^;(]*\blt_[a-z0-9_]*[[:space:]]*(' include/loratune.h include/loratune_experimental.h |
           grep -o 'lt_[a-z0-9_]*[[:space:]]*($' | tr -d '( ' | sort -u)
missing=$(comm -13 <(echo "$exported") <(echo "$declared"))
extra=$(comm -23 <(echo "$exported") <(echo "$declared"))
if [ -n "$missing" ]; then echo "check-exports: declared but not exported:"; echo "$missing" | sed 's/^/  /'; fail=1; fi
if [ -n "$extra" ]; then echo "check-exports: exported but not declared in a public header:"; echo "$extra" | sed 's/^/  /'; fail=1; fi

major=$(sed -n 's/^#define LT_VERSION_MAJOR \([0-9]*\).*/\1/p' include/loratune.h)
soname=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
if [ "$soname" != "libloratune.so.$major" ]; then
  echo "check-exports: SONAME is '$soname', expected libloratune.so.$major"
  fail=1
fi

if [ $fail -ne 0 ]; then echo "check-exports: FAILED ($lib)"; exit 1; fi
echo "check-exports: $lib exports $(echo "$exported" | wc -l) lt_* symbols, all declared; SONAME $soname"

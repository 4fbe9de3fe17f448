#!/usr/bin/env bash
# Install the build and test dependencies on Debian/Ubuntu (idempotent; needs root or sudo).
set -euo pipefail
# clang, its sanitizer runtimes (libFuzzer, ASan, UBSan, TSan) and libomp with the Archer tool: the fuzz
# harnesses and the ThreadSanitizer build of tests/run.sh (docs/HARDENING.md)
# openmpi-bin + libopenmpi-dev: the MPI communicator and `mpirun -np N loratune train` (docs/DISTRIBUTED.md)
# tmux: the terminal test of `loratune chat` (tests/python/check_text_generation.py)
pkgs=(build-essential cmake pkg-config libopenblas-dev libjansson-dev libpcre2-dev libutf8proc-dev check libsubunit-dev python3 python3-venv openmpi-bin libopenmpi-dev tmux
      clang libclang-rt-14-dev libomp-14-dev)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null

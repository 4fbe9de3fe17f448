#!/usr/bin/env bash
# The README's main job: install the build dependencies, build libloratune, and run `loratune demo`
# (fine-tune a LoRA adapter on the CPU backend and show the result). Output goes to ./demo-out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
export PATH="/usr/local/cuda/bin:$PATH"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLT_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)" --target loratune_cli >/dev/null
exec ./build/loratune demo --out "${1:-demo-out}"

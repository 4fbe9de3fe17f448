#!/usr/bin/env bash
# tools/llamacpp.sh - the pinned llama.cpp, fetched and built once, shared by the benchmark peer
# (bench/llamacpp_peer.sh) and the GGUF tests (tests/python/crosscheck_gguf.py, the oracle of our GGUF files).
#
#   bash tools/llamacpp.sh src       fetch + unpack the sources; print the llama.cpp source directory
#   bash tools/llamacpp.sh oracle    build libllama (CPU only) and tests/llamacpp/oracle.c; print the binary
#   . tools/llamacpp.sh              from another script: the variables below and llamacpp_fetch
#
# Source: the llama.cpp tree vendored in the PyPI sdist of llama-cpp-python (pinned below, sha256-checked);
# PyPI is reachable from CI, GitHub is not. Everything is cached OUTSIDE the repository in
# ${LT_LLAMACPP_DIR:-~/.cache/loratune/llama.cpp-<version>}. The oracle build is the least llama.cpp needs
# to load a GGUF and run it: static, CPU backend only (no BLAS, no CUDA, no llamafile sgemm; OpenMP threads;
# GGML_NATIVE off so that a cache moved between machines still runs), -O1 (the oracle runs models of a few
# hundred thousand parameters: compile time is what counts; -O1 instead of -O3 and no llamafile took the CPU time
# of the build from 3m36s to 2m17s here), only the `llama` target and its ggml libraries; the oracle links them
# with the C++ runtime. Builds run under `nice -n 10` with -j$(nproc).
llamacpp_version=0.3.36           # llama-cpp-python sdist; the llama.cpp inside it is pinned by this
llamacpp_sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e  # of llama_cpp_python-0.3.36.tar.gz
llamacpp_dir=${LT_LLAMACPP_DIR:-$HOME/.cache/loratune/llama.cpp-$llamacpp_version}
llamacpp_src=$llamacpp_dir/llama_cpp_python-$llamacpp_version/vendor/llama.cpp
llamacpp_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

llamacpp_fetch() {
  [ -f "$llamacpp_src/CMakeLists.txt" ] && return 0
  mkdir -p "$llamacpp_dir"
  local sd=$llamacpp_dir/sdist tgz=$llamacpp_dir/sdist/llama_cpp_python-$llamacpp_version.tar.gz
  if [ ! -f "$tgz" ]; then
    mkdir -p "$sd"
    if [ -f "/tmp/lcpp/llama_cpp_python-$llamacpp_version.tar.gz" ]; then  # a copy fetched earlier on this machine
      cp "/tmp/lcpp/llama_cpp_python-$llamacpp_version.tar.gz" "$sd/"
    else
      # pip's own client (it prepares the sdist's metadata with scikit-build-core in an isolated environment:
      # about 25 s with the 77 MB download on the loaded development machine)
      local py; py=$(bash "$llamacpp_root/tests/ref-venv.sh")
      "$py" -m pip download -q --no-deps --no-binary :all: -d "$sd" "llama-cpp-python==$llamacpp_version" >&2
    fi
  fi
  echo "$llamacpp_sha256  $tgz" | sha256sum -c --quiet - >&2 || { echo "$tgz: not the pinned sdist" >&2; return 1; }
  tar xzf "$tgz" -C "$llamacpp_dir"
  [ -f "$llamacpp_src/CMakeLists.txt" ] || { echo "no vendor/llama.cpp in $tgz" >&2; return 1; }
}

llamacpp_oracle() {
  llamacpp_fetch || return 1
  local bld=$llamacpp_dir/build-oracle-o1 bin=$llamacpp_dir/build-oracle-o1/lt-llama-oracle
  local oracle_src=$llamacpp_root/tests/llamacpp/oracle.c
  local stamp; stamp=$(sha256sum "$oracle_src" | cut -c1-16)
  if [ -x "$bin" ] && [ "$(cat "$bin.stamp" 2>/dev/null)" = "$stamp" ]; then echo "$bin"; return 0; fi
  if [ ! -f "$bld/src/libllama.a" ]; then
    nice -n 10 cmake -S "$llamacpp_src" -B "$bld" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
      -DCMAKE_C_FLAGS_RELEASE="-O1 -DNDEBUG" -DCMAKE_CXX_FLAGS_RELEASE="-O1 -DNDEBUG" -DGGML_LLAMAFILE=OFF \
      -DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DGGML_BLAS=OFF -DGGML_OPENMP=ON \
      -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF \
      -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_COMMON=OFF >"$bld.cmake.log" 2>&1 ||
      { tail -30 "$bld.cmake.log" >&2; return 1; }
    nice -n 10 cmake --build "$bld" -j"$(nproc)" --target llama >"$bld.build.log" 2>&1 ||
      { tail -30 "$bld.build.log" >&2; return 1; }
  fi
  # libllama first, then ggml, ggml-cpu, ggml-base (each uses the next)
  nice -n 10 g++ -O2 -x c "$oracle_src" -x none -I"$llamacpp_src/include" -I"$llamacpp_src/ggml/include" \
    "$bld/src/libllama.a" "$bld/ggml/src/libggml.a" "$bld/ggml/src/libggml-cpu.a" "$bld/ggml/src/libggml-base.a" \
    -fopenmp -lpthread -lm -o "$bin.tmp" >&2 || { echo "building the oracle failed" >&2; return 1; }
  mv "$bin.tmp" "$bin"
  echo "$stamp" >"$bin.stamp"
  echo "$bin"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  case "${1:-}" in
    src) llamacpp_fetch; echo "$llamacpp_src" ;;
    oracle) llamacpp_oracle ;;
    *) echo "usage: bash tools/llamacpp.sh src|oracle" >&2; exit 2 ;;
  esac
fi

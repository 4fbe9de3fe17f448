#!/usr/bin/env bash
# The llama.cpp tree vendored in the PyPI sdist of llama-cpp-python, pinned by version and sha256, fetched
# once and unpacked OUTSIDE the repository into ${LT_LLAMACPP_DIR:-~/.cache/loratune/llama.cpp-<version>}.
# Prints the path of the llama.cpp tree. PyPI is reachable from CI, GitHub is not: that is why the sdist.
# Users: bench/llamacpp_peer.sh (the llama.cpp fine-tuning peer), tests/python/check_chat_templates.py
# (the chat templates of models/templates/). Needs the reference venv's pip (tests/ref-venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.3.36                       # llama-cpp-python sdist; llama.cpp inside it is pinned by this
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e   # of llama_cpp_python-0.3.36.tar.gz
dir=${LT_LLAMACPP_DIR:-$HOME/.cache/loratune/llama.cpp-$version}
src=$dir/llama_cpp_python-$version/vendor/llama.cpp
if [ ! -f "$src/examples/training/finetune.cpp" ] || [ ! -d "$src/models/templates" ]; then
  mkdir -p "$dir"
  sd=$dir/sdist
  tgz=$sd/llama_cpp_python-$version.tar.gz
  if [ ! -f "$tgz" ]; then
    mkdir -p "$sd"
    if [ -f "/tmp/lcpp/llama_cpp_python-$version.tar.gz" ]; then    # a copy fetched earlier on this machine
      cp "/tmp/lcpp/llama_cpp_python-$version.tar.gz" "$sd/"
    else
      py=$(bash tests/ref-venv.sh)
      "$py" -m pip download --quiet --no-deps --no-binary :all: -d "$sd" "llama-cpp-python==$version" >&2
    fi
  fi
  echo "$sha256  $tgz" | sha256sum -c --quiet - >&2 || { echo "$tgz: not the pinned sdist" >&2; exit 1; }
  tar xzf "$tgz" -C "$dir"
  [ -f "$src/examples/training/finetune.cpp" ] || { echo "no examples/training in $tgz" >&2; exit 1; }
fi
echo "$src"

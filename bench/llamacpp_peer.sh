#!/usr/bin/env bash
# The llama.cpp peer of full fine-tuning on bench-s (issue 9): llama.cpp's own CPU trainer
# (examples/training/finetune.cpp -> llama-finetune, ggml-opt) on the bench-s Llama shape in f32.
# A benchmark-only peer: not a dependency of libloratune, not built or run by CI or tests/run.sh.
#
#   bash bench/llamacpp_peer.sh [THREADS] [STEPS]     build once, make the model once, train, print one JSON line
#   bash bench/llamacpp_peer.sh build                 only fetch + build llama-finetune
#   bash bench/llamacpp_peer.sh model                 only write the bench-s HF directory and its f32 GGUF
#
# Source: the llama.cpp tree vendored in the PyPI sdist of llama-cpp-python (pinned below); PyPI is
# reachable here, GitHub is not. Source, build and model are cached OUTSIDE the repository in
# ${LT_LLAMACPP_DIR:-~/.cache/loratune/llama.cpp-<version>}. CPU only: GGML_NATIVE=ON, no CUDA, no BLAS
# (llama.cpp's default CPU build), no OpenSSL/curl. The build runs under `nice -n 10` with -j2.
#
# What it trains (finetune.cpp + src/llama-context.cpp + ggml/src/ggml-opt.cpp in this version, see
# docs/BENCHMARKS.md): llama_opt_param_filter_all marks every tensor of the model as a parameter, but
# llama_opt_init only makes the tensors that the training graph uses through a differentiable path
# trainable; the printed JSON states what the log reported. Optimizer: ggml-opt AdamW (default) with
# lr 1e-5 constant, weight decay 0, one optimizer step per context of n_ctx tokens
# (gradient accumulation over n_batch / n_ubatch micro-batches).
#
# The step shape as close to bench-s as llama-finetune's options allow: -c 256 (context), -b 1024
# -ub 256 would accumulate 4 x 256 tokens per optimizer step but llama-finetune asserts n_batch ==
# n_ctx (each datapoint is one context), so a step is -c 256 -b 256 -ub 256: 256 tokens per optimizer
# step, 4x more optimizer steps per token than bench-s (AdamW over 41.7M+ parameters per 256 tokens).
# The "tokens_per_s" counts training tokens only (the validation split is 0), timed by the wall clock
# between the first and last progress line of ggml-opt's own progress bar (model load excluded).
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.3.36                       # llama-cpp-python sdist; llama.cpp inside it is pinned by this
dir=${LT_LLAMACPP_DIR:-$HOME/.cache/loratune/llama.cpp-$version}
src=$dir/llama_cpp_python-$version/vendor/llama.cpp
bld=$dir/build
bin=$bld/bin/llama-finetune
py=${LT_REF_VENV:-$HOME/.cache/loratune/ref-venv}/bin/python
model_dir=$dir/bench-s-hf
gguf=$dir/bench-s-f32.gguf
text=$dir/bench-s-train.txt

fetch() {
  [ -f "$src/examples/training/finetune.cpp" ] && return 0
  mkdir -p "$dir"
  local sd=$dir/sdist tgz
  tgz=$(ls "$sd"/llama_cpp_python-$version.tar.gz 2>/dev/null || true)
  if [ -z "$tgz" ]; then
    if [ -f "/tmp/lcpp/llama_cpp_python-$version.tar.gz" ]; then    # a copy fetched earlier on this machine
      mkdir -p "$sd"; cp "/tmp/lcpp/llama_cpp_python-$version.tar.gz" "$sd/"
    else
      "$py" -m pip download --no-deps --no-binary :all: -d "$sd" "llama-cpp-python==$version"
    fi
    tgz=$sd/llama_cpp_python-$version.tar.gz
  fi
  tar xzf "$tgz" -C "$dir"
  [ -f "$src/examples/training/finetune.cpp" ] || { echo "no examples/training in $tgz" >&2; exit 1; }
}

build() {
  fetch
  [ -x "$bin" ] && return 0
  nice -n 10 cmake -S "$src" -B "$bld" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_BLAS=OFF -DGGML_OPENMP=ON -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_EXAMPLES=ON >"$dir/cmake.log" 2>&1 || { tail -30 "$dir/cmake.log" >&2; exit 1; }
  nice -n 10 cmake --build "$bld" -j2 --target llama-finetune >"$dir/build.log" 2>&1 || { tail -30 "$dir/build.log" >&2; exit 1; }
}

model() {
  fetch
  [ -f "$gguf" ] && return 0
  [ -f "$model_dir/tokenizer.json" ] || nice -n 10 "$py" bench/llamacpp_model.py model "$model_dir"
  ( cd "$src" && PYTHONPATH="$src/gguf-py" nice -n 10 "$py" convert_hf_to_gguf.py "$model_dir" --outtype f32 \
      --outfile "$gguf.tmp" ) >"$dir/convert.log" 2>&1 || { tail -30 "$dir/convert.log" >&2; exit 1; }
  mv "$gguf.tmp" "$gguf"
}

case "${1:-}" in
  build) build; echo "$bin"; exit 0 ;;
  model) model; echo "$gguf"; exit 0 ;;
esac

threads=${1:-2}
steps=${2:-5}
warmup=${LT_LLAMACPP_WARMUP:-2}
# LT_LLAMACPP_SHAPE: c256 (default) -c 256 -b 256 -ub 256: bench-s context, every matrix but the token
#   embeddings trained, 256 tokens per optimizer step;
# c1024-ub256: -c 1024 -b 1024 -ub 256: 1024 tokens per optimizer step (bench-s's step size) as 4
#   accumulated micro-batches of 256, but over a 1024-token context, and then llama.cpp gives K and V
#   no gradients (llama_context::opt_init: gradients cannot flow through the KV cache).
case "${LT_LLAMACPP_SHAPE:-c256}" in
  c256) ctx=256; ub=256 ;;
  c1024-ub256) ctx=1024; ub=256 ;;
  *) echo "LT_LLAMACPP_SHAPE must be c256 or c1024-ub256" >&2; exit 2 ;;
esac
build
model
# One datapoint per optimizer step: common_opt_dataset_init cuts contexts of n_ctx tokens at a stride of
# n_ctx/2, so warmup+steps datapoints need stride*(warmup+steps) + n_ctx tokens (+ stride/2 of slack);
# every word of the text is one token of the bench-s tokenizer.
ndata=$((warmup + steps))
words=$((ctx / 2 * ndata + ctx + ctx / 4))
[ -f "$text.$words" ] || "$py" bench/llamacpp_model.py text "$text.$words" "$words"
"$py" bench/llamacpp_run.py "$bin" "$gguf" "$text.$words" --threads "$threads" --ctx "$ctx" --ubatch "$ub" \
  --warmup "$warmup" --steps "$steps" --gguf-py "$src/gguf-py" --log "$dir/last-run.log"

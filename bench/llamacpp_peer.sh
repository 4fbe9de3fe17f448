#!/usr/bin/env bash
# The llama.cpp peer of full fine-tuning on bench-s (issue 9): llama.cpp's own CPU trainer
# (examples/training/finetune.cpp -> llama-finetune, ggml-opt) on the bench-s Llama shape in f32.
# A benchmark-only peer: not a dependency of libloratune, not built or run by CI or tests/run.sh.
#
#   bash bench/llamacpp_peer.sh [THREADS] [STEPS]     build once, make the model once, train, print one JSON line
#   bash bench/llamacpp_peer.sh build                 only fetch + build llama-finetune
#   bash bench/llamacpp_peer.sh model                 only write the bench-s HF directory and its f32 GGUF
#
# Source: the llama.cpp tree vendored in the PyPI sdist of llama-cpp-python, pinned and fetched by
# tools/llamacpp.sh (shared with the GGUF tests); PyPI is reachable here, GitHub is not. Source, build and
# model are cached OUTSIDE the repository in ${LT_LLAMACPP_DIR:-~/.cache/loratune/llama.cpp-<version>}. CPU only: GGML_NATIVE=ON, no CUDA, no BLAS
# (llama.cpp's default CPU build), no OpenSSL/curl. The build runs under `nice -n 10` with -j2.
#
# What it trains (measured: bench/llamacpp_run.py compares the saved model with the input tensor by
# tensor and prints "trained" / "untrained"): finetune.cpp passes llama_opt_param_filter_all, and
# llama_context::opt_init (src/llama-context.cpp) marks every f32 tensor of every layer plus output_norm
# and output (the LM head) as a parameter, except token_embd.weight ("FIXME", the embeddings stay
# frozen) and rope_freqs. K and V get gradients only when n_ubatch == n_ctx (then the attention reads
# the micro-batch's own K and V; otherwise they go through the KV cache, which gradients cannot cross,
# and llama.cpp warns "the K and V projections will not receive gradients"). With the default shape
# below that holds: 41,689,600 of bench-s's 58,073,600 parameters are trained (everything but the 16.4M
# embedding). Optimizer: ggml-opt's AdamW (beta1 0.9, beta2 0.999, eps 1e-8; here lr 1e-4, weight decay
# 0), f32 weights, gradients, gradient accumulators and moments, no gradient checkpointing.
#
# Step shape, as close to bench-s (4 x 256 tokens per optimizer step) as llama-finetune allows: it
# trains one sequence of n_ctx tokens per datapoint, caps n_batch at n_ctx and accumulates
# n_batch / n_ubatch micro-batches per optimizer step, so 1024 tokens per step needs -c 1024 -b 1024
# -ub 256, i.e. a 1024-token context and K, V frozen. LT_LLAMACPP_SHAPE picks:
#   c256 (default): -c 256 -b 256 -ub 256: bench-s's sequence length, K and V trained, but one optimizer
#     step per 256 tokens (4x as many AdamW updates per token as bench-s);
#   c1024-ub256: -c 1024 -b 1024 -ub 256: 1024 tokens per step; in this llama.cpp version it aborts at
#     the first accumulated step (GGML_ASSERT(sched->hash_set.size >= n_nodes + n_leafs) in
#     ggml-backend.cpp), kept so the next version can be tried.
# tokens_per_s counts training tokens only (validation split 0) from ggml-opt's own per-micro-batch
# progress lines, after warm-up steps (model load, tokenization and the final save excluded);
# peak_rss_mb is the child's ru_maxrss (what /usr/bin/time -v prints). See bench/llamacpp_run.py.
set -euo pipefail
cd "$(dirname "$0")/.."
# the pinned llama.cpp: fetched (sha256-checked) by the script the GGUF tests share (tools/llamacpp.sh)
. tools/llamacpp.sh
dir=$llamacpp_dir
src=$llamacpp_src
# LT_LLAMACPP_BLAS=1: a second build (build-blas) with ggml's BLAS backend on Debian's OpenBLAS, which
# takes the f32 MUL_MAT and OUT_PROD (the weight gradients) off the CPU backend; default: the plain CPU
# build (ggml's own kernels, llamafile sgemm for f32 matmuls). Measured here on one thread: the OpenBLAS
# build is ~2.3x faster (docs/BENCHMARKS.md); bench/compare_full_ft.sh runs both.
blas=${LT_LLAMACPP_BLAS:-0}
if [ "$blas" = 1 ]; then bld=$dir/build-blas; blas_flags=(-DGGML_BLAS=ON -DGGML_BLAS_VENDOR=OpenBLAS)
else bld=$dir/build; blas_flags=(-DGGML_BLAS=OFF); fi
bin=$bld/bin/llama-finetune
py=$(bash tests/ref-venv.sh)  # the reference venv of requirements.lock (built if missing)
model_dir=$dir/bench-s-hf
gguf=$dir/bench-s-f32.gguf
text=$dir/bench-s-train.txt

fetch() {
  llamacpp_fetch
  [ -f "$src/examples/training/finetune.cpp" ] || { echo "no examples/training in $src" >&2; exit 1; }
}

build() {
  fetch
  [ -x "$bin" ] && return 0
  nice -n 10 cmake -S "$src" -B "$bld" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON -DGGML_CUDA=OFF "${blas_flags[@]}" -DGGML_OPENMP=ON -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_EXAMPLES=ON >"$bld.cmake.log" 2>&1 || { tail -30 "$bld.cmake.log" >&2; exit 1; }
  nice -n 10 cmake --build "$bld" -j2 --target llama-finetune >"$bld.build.log" 2>&1 || { tail -30 "$bld.build.log" >&2; exit 1; }
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
# LT_LLAMACPP_SHAPE (see the header): c256 (default) or c1024-ub256; LT_LLAMACPP_WARMUP (default 2).
# LT_LLAMACPP_OPT=sgd: ggml-opt's SGD instead of AdamW (not the peer; shows what the AdamW update costs).
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
  --warmup "$warmup" --steps "$steps" --gguf-py "$src/gguf-py" --log "$dir/last-run.log" \
  --build "$([ "$blas" = 1 ] && echo blas-openblas || echo cpu)" --opt "${LT_LLAMACPP_OPT:-adamw}"

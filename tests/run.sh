#!/usr/bin/env bash
# Run every test of libloratune: build (Release and ASan+UBSan), generate the reference checkpoints and
# goldens with transformers/peft, run the Check suites, then the live cross-checks against PyTorch.
#   LT_REF_VENV   where the reference virtualenv lives (default ~/.cache/loratune/ref-venv-<lock hash>;
#                 see tests/ref-venv.sh)
#   LT_SKIP_ASAN  set to 1 to skip the sanitizer build
# With a CUDA device (nvidia-smi lists one) the model suites run a second time with LT_TEST_BACKEND=cuda.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
jobs=$(nproc)

# every phase is timed; a table of the times closes the run
times=()
lap_t=$SECONDS
lap() {  # NAME RESULT: record the seconds since the previous lap
  times+=("$(printf '%-6s %5ds  %s' "$2" $((SECONDS - lap_t)) "$1")")
  lap_t=$SECONDS
}

bash tools/install-deps.sh
lap "system packages (apt)" setup

# ---- reference stack (torch, transformers, peft, ...) in a virtualenv outside the repo ----
# built from tests/python/requirements.lock, rebuilt whenever the lock changes (tests/ref-venv.sh)
py=$(bash tests/ref-venv.sh)
echo "== reference python: $py"
lap "reference virtualenv" setup

# ---- build ----
echo "== build (Release, LT_CUDA=AUTO)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLT_CUDA=AUTO -DLT_TESTS=ON >/dev/null
cmake --build build -j"$jobs"
lap "build (Release)" setup

# ---- reference data ----
echo "== reference checkpoints and goldens (transformers, peft)"
rm -rf build/testdata/models && mkdir -p build/testdata
"$py" tests/python/make_models.py build/testdata/models >/dev/null
"$py" tests/python/make_lora_goldens.py build/testdata/models >/dev/null
"$py" tests/python/make_qlora_goldens.py build/testdata/models >/dev/null  # LoRA grads through bitsandbytes NF4 weights
"$py" tests/python/make_family_models.py build/testdata/models >/dev/null
"$py" tests/python/make_moe_models.py build/testdata/models >/dev/null  # Qwen3-MoE: routing, expert LoRA, aux loss
if [ -f tests/python/make_op_goldens.py ]; then "$py" tests/python/make_op_goldens.py build/testdata/ops >/dev/null; fi
"$py" tests/python/make_objective_goldens.py build/testdata/objectives >/dev/null
echo "== tokenizer, chat template and dataset-row goldens (tokenizers, transformers, jinja2)"
"$py" tests/python/make_tokenizer_goldens.py build/testdata/tokenizers >/dev/null
"$py" tests/python/make_quant_goldens.py build/testdata/quant >/dev/null  # bitsandbytes (CPU) quantization goldens
"$py" tests/python/make_optim8_goldens.py build/testdata/optim8 >/dev/null  # 8-bit AdamW (bitsandbytes kernel algorithm; checked against its CPU AdamW8bit)
lap "reference checkpoints and goldens" setup

failed=0
stages_ok=0; stages_bad=0
stage() {  # NAME CMD...: one counted stage
  local name=$1; shift
  lap_t=$SECONDS
  if "$@"; then stages_ok=$((stages_ok+1)); lap "$name" PASS; else stages_bad=$((stages_bad+1)); failed=1; lap "$name" FAIL; fi
  echo "-- ${times[-1]}"
}
echo "== Check suites (Release), the layout check and the add_subdirectory() host project"
stage "ctest (Release)" bash -c "cd build && LORATUNE_REF_PYTHON='$py' ctest --output-on-failure -j1 -LE cuda_emu"
# The CUDA backend's real kernels under CPU emulation (docs/CUDA.md): every slot, under ASan; and the
# plan of the one-command GPU run (tests/gpu.sh), whose own prerequisites are checked here.
echo "== the CUDA kernels under CPU emulation; tests/gpu.sh --dry-run"
stage "cuda emulation (test_backend_ops_cuda_emu)" bash -c "cd build && ctest --output-on-failure -L '^cuda_emu$'"
stage "tests/gpu.sh --dry-run" bash tests/gpu.sh --dry-run build/gpu-dry-run
stage "cli OpenBLAS core" bash tests/cli_openblas.sh build/loratune
# The model suites again on the CUDA backend where a device is (test_backend_ops runs every op on every
# backend by itself). Elsewhere they would skip: not run.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  echo "== model suites on the CUDA backend (LT_TEST_BACKEND=cuda)"
  stage "ctest (model suites, cuda)" bash -c "cd build && LT_TEST_BACKEND=cuda LORATUNE_REF_PYTHON='$py' ctest --output-on-failure -j1 \
    -R '^test_(lora|qlora|families|objectives|full|pissa|model|gemm_bf16|optim8)\$'"
fi

echo "== live cross-check of loratune tokenize/detokenize against tokenizers (random configurations and text)"
stage crosscheck_tokenize "$py" tests/python/crosscheck_tokenize.py --cli build/loratune --workdir build/crosscheck-tok --configs 12

echo "== live cross-checks against PyTorch on held-out models"
stage crosscheck_eval "$py" tests/python/crosscheck_eval.py --cli build/loratune --workdir build/crosscheck
stage check_bnb_checkpoint "$py" tests/python/check_bnb_checkpoint.py --cli build/loratune --workdir build/bnb-checkpoint
if [ -f tests/python/crosscheck_train.py ]; then
  stage crosscheck_train "$py" tests/python/crosscheck_train.py --cli build/loratune --workdir build/crosscheck-train
fi

echo "== PiSSA / OLoRA initialisation against PEFT (Llama, Qwen2, Phi-3 fused; init, 3 AdamW steps, conversion, resume)"
stage crosscheck_pissa "$py" tests/python/crosscheck_pissa.py --lib build/libloratune.so.0 --workdir build/crosscheck-pissa

echo "== preference objectives against PyTorch + TRL (DPO, IPO, KTO, ORPO; N-step DPO training)"
stage crosscheck_pref "$py" tests/python/crosscheck_pref.py --cli build/loratune --workdir build/crosscheck-pref
echo "== full fine-tuning against PyTorch (AdamW with HF's decay groups, clipping, accumulation; DPO; save/load)"
stage crosscheck_full "$py" tests/python/crosscheck_full.py --lib build/libloratune.so.0 --workdir build/crosscheck-full
echo "== data-parallel training: mpirun -np 2|3 loratune train against one process (SFT, ZeRO-1, DPO, KTO; checkpoints; faults)"
stage dist_mpi "$py" tests/python/check_dist_mpi.py --cli build/loratune --model build/testdata/models/llama-basic --workdir build/dist-mpi
echo "== GRPO step against PyTorch (TRL's loss on the library's own completions)"
stage crosscheck_grpo "$py" tests/python/crosscheck_grpo.py --lib build/libloratune.so.0

echo "== GGUF export against llama.cpp itself (pinned sdist, built here: tools/llamacpp.sh) and its converter"
# every family: llama.cpp's tokenization, logits and greedy generation (stopping at EOS) on our base, merged and
# adapter GGUF files; the converter's and the gguf package's bytes; the Ollama Modelfile
llamacpp_oracle=""
build_oracle() { llamacpp_oracle=$(bash tools/llamacpp.sh oracle) && llamacpp_src=$(bash tools/llamacpp.sh src); }
stage "llama.cpp oracle (fetch + build)" build_oracle
stage crosscheck_gguf bash -c "[ -n '$llamacpp_oracle' ] && '$py' tests/python/crosscheck_gguf.py --cli build/loratune \
  --lib build/libloratune.so.0 --oracle '$llamacpp_oracle' --llamacpp-src '${llamacpp_src:-}' --workdir build/crosscheck-gguf"
echo "== adapter arithmetic and LoRA extraction against PyTorch (mergekit's formulas on delta weights)"
stage crosscheck_combine "$py" tests/python/crosscheck_combine.py --cli build/loratune --lib build/libloratune.so.0 \
  --workdir build/crosscheck-combine

echo "== chat templates against transformers (llama.cpp's models/templates, TRL, mistral-common; depth and steps measured)"
stage check_chat_templates "$py" tests/python/check_chat_templates.py --lib build/libloratune.so.0 \
  --workdir build/chat-templates --measure build/tests/jinja_stats
echo "== generate --prompt/--messages and chat (tmux) against transformers' apply_chat_template + greedy generate"
stage check_text_generation "$py" tests/python/check_text_generation.py --cli build/loratune \
  --tokenizers build/testdata/tokenizers --workdir build/text-generation
echo "== eval --compare on the demo model (taught answers, canary exposure, PyTorch + PEFT losses), model card, train --config"
stage check_eval_compare "$py" tests/python/check_eval_compare.py --cli build/loratune --workdir build/eval-compare

if [ -f tests/bindings.sh ]; then
  echo "== bindings, packaging and ABI"
  stage bindings.sh bash tests/bindings.sh "$py"
fi

echo "== hardening: the libFuzzer harnesses briefly (ASan + UBSan; docs/HARDENING.md has the long runs)"
stage fuzz bash tests/fuzz/run.sh --time 10 --jobs 2
echo "== hardening: the thread and generation tests under ThreadSanitizer"
stage tsan bash tests/tsan.sh

if [ "${LT_SKIP_ASAN:-0}" != 1 ]; then
  echo "== Check suites under AddressSanitizer + UBSan"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DLT_SANITIZE=ON -DLT_CUDA=OFF -DLT_CUDA_EMU=OFF -DLT_TESTS=ON >/dev/null
  cmake --build build-asan -j"$jobs"
  lap "build (ASan+UBSan)" setup
  rm -rf build-asan/testdata && ln -s "$root/build/testdata" build-asan/testdata
  # the build checks (check_layout, host_project: label "build") ran in the Release stage
  # (the kill test, label kill, ran in the Release stage: it checks crash consistency, not memory)
  stage "ctest (ASan+UBSan)" bash -c "cd build-asan && ASAN_OPTIONS=detect_leaks=1 LORATUNE_REF_PYTHON='$py' ctest --output-on-failure -j1 -LE 'build|kill'"
fi

echo "== times"
printf '%s\n' "${times[@]}"
echo "total  $(printf '%5d' $SECONDS)s"
echo "stages: $stages_ok passed, $stages_bad failed"
[ $failed -eq 0 ]

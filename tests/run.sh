#!/usr/bin/env bash
# Run every test of libloratune: build (Release and ASan+UBSan), generate the reference checkpoints and
# goldens with transformers/peft, run the Check suites, then the live cross-checks against PyTorch.
#   LT_REF_VENV   where the reference virtualenv lives (default ~/.cache/loratune/ref-venv-<lock hash>;
#                 see tests/ref-venv.sh)
#   LT_SKIP_ASAN  set to 1 to skip the sanitizer build
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
stage "ctest (Release)" bash -c "cd build && LORATUNE_REF_PYTHON='$py' ctest --output-on-failure -j1"

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
echo "== GRPO step against PyTorch (TRL's loss on the library's own completions)"
stage crosscheck_grpo "$py" tests/python/crosscheck_grpo.py --lib build/libloratune.so.0

if [ -f tests/bindings.sh ]; then
  echo "== bindings, packaging and ABI"
  stage bindings.sh bash tests/bindings.sh "$py"
fi

if [ "${LT_SKIP_ASAN:-0}" != 1 ]; then
  echo "== Check suites under AddressSanitizer + UBSan"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DLT_SANITIZE=ON -DLT_CUDA=OFF -DLT_TESTS=ON >/dev/null
  cmake --build build-asan -j"$jobs"
  lap "build (ASan+UBSan)" setup
  rm -rf build-asan/testdata && ln -s "$root/build/testdata" build-asan/testdata
  # the build checks (check_layout, host_project: label "build") ran in the Release stage
  stage "ctest (ASan+UBSan)" bash -c "cd build-asan && ASAN_OPTIONS=detect_leaks=1 LORATUNE_REF_PYTHON='$py' ctest --output-on-failure -j1 -LE build"
fi

echo "== times"
printf '%s\n' "${times[@]}"
echo "total  $(printf '%5d' $SECONDS)s"
echo "stages: $stages_ok passed, $stages_bad failed"
[ $failed -eq 0 ]

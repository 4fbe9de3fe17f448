#!/usr/bin/env bash
# Run every test of libloratune: build (Release and ASan+UBSan), generate the reference checkpoints and
# goldens with transformers/peft, run the Check suites, then the live cross-checks against PyTorch.
#   LT_REF_VENV   where the reference virtualenv lives (default ~/.cache/loratune/ref-venv)
#   LT_SKIP_ASAN  set to 1 to skip the sanitizer build
# With a CUDA device (nvidia-smi lists one) the model suites run a second time with LT_TEST_BACKEND=cuda.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
jobs=$(nproc)

bash tools/install-deps.sh

# ---- reference stack (torch CPU, transformers, peft) in a virtualenv outside the repo ----
venv=${LT_REF_VENV:-$HOME/.cache/loratune/ref-venv}
if [ ! -x "$venv/bin/python" ]; then
  echo "== creating the reference virtualenv in $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
fi
# (re)install when a requirement is missing, e.g. after requirements.txt gained a package
if ! "$venv/bin/python" -c "import torch, transformers, peft, safetensors, trl, bitsandbytes, tokenizers, mistral_common, sentencepiece" 2>/dev/null; then
  echo "== installing the reference stack into $venv (tests/python/requirements.txt)"
  "$venv/bin/pip" install -q -r tests/python/requirements.txt
fi
py="$venv/bin/python"

# ---- build ----
echo "== build (Release, LT_CUDA=AUTO)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLT_CUDA=AUTO -DLT_TESTS=ON >/dev/null
cmake --build build -j"$jobs"

# ---- reference data ----
echo "== reference checkpoints and goldens (transformers, peft)"
rm -rf build/testdata/models && mkdir -p build/testdata
"$py" tests/python/make_models.py build/testdata/models >/dev/null
"$py" tests/python/make_lora_goldens.py build/testdata/models >/dev/null
"$py" tests/python/make_qlora_goldens.py build/testdata/models >/dev/null 2>&1  # LoRA grads through bitsandbytes NF4 weights
"$py" tests/python/make_family_models.py build/testdata/models >/dev/null
if [ -f tests/python/make_op_goldens.py ]; then "$py" tests/python/make_op_goldens.py build/testdata/ops >/dev/null; fi
"$py" tests/python/make_objective_goldens.py build/testdata/objectives >/dev/null
echo "== tokenizer, chat template and dataset-row goldens (tokenizers, transformers, jinja2)"
"$py" tests/python/make_tokenizer_goldens.py build/testdata/tokenizers >/dev/null
"$py" tests/python/make_quant_goldens.py build/testdata/quant >/dev/null 2>&1  # bitsandbytes (CPU) quantization goldens
"$py" tests/python/make_optim8_goldens.py build/testdata/optim8 >/dev/null 2>&1  # 8-bit AdamW (bitsandbytes kernel algorithm; checked against its CPU AdamW8bit)

failed=0
stages_ok=0; stages_bad=0
stage() { if "$@"; then stages_ok=$((stages_ok+1)); else stages_bad=$((stages_bad+1)); failed=1; fi; }
echo "== Check suites (Release)"
stage bash -c "cd build && LORATUNE_REF_PYTHON='$py' ctest --output-on-failure -j1"
# The model suites again on the CUDA backend where a device is (test_backend_ops runs every op on every
# backend by itself). Elsewhere they would skip: not run.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  echo "== model suites on the CUDA backend (LT_TEST_BACKEND=cuda)"
  stage bash -c "cd build && LT_TEST_BACKEND=cuda LORATUNE_REF_PYTHON='$py' ctest --output-on-failure -j1 \
    -R '^test_(lora|qlora|families|objectives|full|pissa|model|gemm_bf16|optim8)\$'"
fi

echo "== live cross-check of loratune tokenize/detokenize against tokenizers (random configurations and text)"
stage "$py" tests/python/crosscheck_tokenize.py --cli build/loratune --workdir build/crosscheck-tok --configs 12

echo "== live cross-checks against PyTorch on held-out models"
stage "$py" tests/python/crosscheck_eval.py --cli build/loratune --workdir build/crosscheck
stage "$py" tests/python/check_bnb_checkpoint.py --cli build/loratune --workdir build/bnb-checkpoint
if [ -f tests/python/crosscheck_train.py ]; then
  stage "$py" tests/python/crosscheck_train.py --cli build/loratune --workdir build/crosscheck-train
fi

echo "== PiSSA / OLoRA initialisation against PEFT (Llama, Qwen2, Phi-3 fused; init, 3 AdamW steps, conversion, resume)"
stage "$py" tests/python/crosscheck_pissa.py --lib build/libloratune.so.0 --workdir build/crosscheck-pissa

echo "== preference objectives against PyTorch + TRL (DPO, IPO, KTO, ORPO; N-step DPO training)"
stage "$py" tests/python/crosscheck_pref.py --cli build/loratune --workdir build/crosscheck-pref
echo "== full fine-tuning against PyTorch (AdamW with HF's decay groups, clipping, accumulation; DPO; save/load)"
stage "$py" tests/python/crosscheck_full.py --lib build/libloratune.so.0 --workdir build/crosscheck-full
echo "== GRPO step against PyTorch (TRL's loss on the library's own completions)"
stage "$py" tests/python/crosscheck_grpo.py --lib build/libloratune.so.0

if [ -f tests/bindings.sh ]; then
  echo "== bindings, packaging and ABI"
  stage bash tests/bindings.sh "$py"
fi

if [ "${LT_SKIP_ASAN:-0}" != 1 ]; then
  echo "== Check suites under AddressSanitizer + UBSan"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DLT_SANITIZE=ON -DLT_CUDA=OFF -DLT_TESTS=ON >/dev/null
  cmake --build build-asan -j"$jobs"
  rm -rf build-asan/testdata && ln -s "$root/build/testdata" build-asan/testdata
  stage bash -c "cd build-asan && ASAN_OPTIONS=detect_leaks=1 LORATUNE_REF_PYTHON='$py' ctest --output-on-failure -j1"
fi

echo "stages: $stages_ok passed, $stages_bad failed"
[ $failed -eq 0 ]

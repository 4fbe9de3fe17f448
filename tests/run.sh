#!/usr/bin/env bash
# Run every test of libloratune: build (Release and ASan+UBSan), generate the reference checkpoints and
# goldens with transformers/peft, run the Check suites, then the live cross-checks against PyTorch.
#   LT_REF_VENV   where the reference virtualenv lives (default ~/.cache/loratune/ref-venv)
#   LT_SKIP_ASAN  set to 1 to skip the sanitizer build
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
jobs=$(nproc)

bash tools/install-deps.sh

# ---- reference stack (torch CPU, transformers, peft) in a virtualenv outside the repo ----
venv=${LT_REF_VENV:-$HOME/.cache/loratune/ref-venv}
if ! "$venv/bin/python" -c "import torch, transformers, peft, safetensors" 2>/dev/null; then
  echo "== creating the reference virtualenv in $venv (torch, transformers, peft)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r tests/python/requirements.txt
fi
py="$venv/bin/python"

# ---- build ----
echo "== build (Release, LT_CUDA=AUTO)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLT_CUDA=AUTO -DLT_TESTS=ON >/dev/null
cmake --build build -j"$jobs"

# ---- reference data ----
echo "== reference checkpoints and goldens (transformers, peft)"
mkdir -p build/testdata
"$py" tests/python/make_models.py build/testdata/models >/dev/null
if [ -f tests/python/make_lora_goldens.py ]; then "$py" tests/python/make_lora_goldens.py build/testdata/models >/dev/null; fi

failed=0
echo "== Check suites (Release)"
(cd build && LORATUNE_REF_PYTHON="$py" ctest --output-on-failure -j1) || failed=1

echo "== live cross-checks against PyTorch on held-out models"
"$py" tests/python/crosscheck_eval.py --cli build/loratune --workdir build/crosscheck || failed=1
for s in tests/python/crosscheck_*.sh; do [ -f "$s" ] && { bash "$s" "$py" || failed=1; }; done

if [ -f tests/bindings.sh ]; then
  echo "== bindings, packaging and ABI"
  bash tests/bindings.sh "$py" || failed=1
fi

if [ "${LT_SKIP_ASAN:-0}" != 1 ]; then
  echo "== Check suites under AddressSanitizer + UBSan"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DLT_SANITIZE=ON -DLT_CUDA=OFF -DLT_TESTS=ON >/dev/null
  cmake --build build-asan -j"$jobs"
  rm -rf build-asan/testdata && ln -s "$root/build/testdata" build-asan/testdata
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1 LORATUNE_REF_PYTHON="$py" ctest --output-on-failure -j1) || failed=1
fi

if [ $failed -ne 0 ]; then echo "tests: FAILED"; exit 1; fi
echo "tests: all passed"

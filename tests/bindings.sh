#!/usr/bin/env bash
# bindings.sh - language bindings, packaging and ABI checks of libloratune.
#
#   bash tests/bindings.sh [PYTHON]        from the repository root, after build/ exists
#
# PYTHON is the reference virtualenv's interpreter (it has numpy; default python3). Installs what it
# needs with apt-get when missing (abigail-tools, python3-pytest, doxygen, and cargo when there is no
# cargo at all), then:
#   exports      only lt_* symbols are exported, SONAME libloratune.so.MAJOR   (tools/check-exports.sh)
#   install      cmake --install into a temp prefix: headers, .so.0, .a, loratune.pc, CMake package
#   examples     examples/c and examples/cpp built against that prefix with pkg-config and with CMake, and run
#   python       pytest of bindings/python with PYTHON (numpy), on build/libloratune.so.0 (LORATUNE_LIBRARY)
#   pip          `pip install --no-index ./bindings/python` into a fresh venv; its tests again (no numpy)
#   rust         cargo test --offline of loratune-sys and loratune, and the Rust example
#   guides       the complete program of each docs/guide-*.md (C, C++, Python, Rust) builds and runs
#   abi          abidiff against docs/abi/libloratune.abi   (tools/check-abi.sh)
#   docs         Doxygen API reference into build/docs      (optional: skipped when doxygen is missing)
# Prints `bindings: N passed, M failed` and exits non-zero on any failure.
#   LT_BUILD_DIR   the build to test (default build)
#   LT_KEEP_TMP=1  keep the temporary directory (logs, prefix, venv)
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PY=${1:-python3}
build=${LT_BUILD_DIR:-build}
case "$build" in /*) ;; *) build=$root/$build ;; esac

tmp=$(mktemp -d /tmp/loratune-bindings.XXXXXX)
if [ "${LT_KEEP_TMP:-0}" = 1 ]; then echo "bindings: keeping $tmp"; else trap 'rm -rf "$tmp"' EXIT; fi
mkdir -p "$tmp/logs"
passed=0
failed=0
failures=()
t_start=$(date +%s)

# run NAME CMD...: one counted check; its output goes to a log that is shown when it fails.
run() {
  local name=$1; shift
  local log="$tmp/logs/$name.log" t0=$(date +%s)
  if "$@" >"$log" 2>&1; then
    passed=$((passed + 1))
    printf '  PASS  %-28s (%ds)\n' "$name" $(($(date +%s) - t0))
    grep -h '^check-abi: note\|^note:' "$log" | sed 's/^/        /' || true
  else
    failed=$((failed + 1))
    failures+=("$name")
    printf '  FAIL  %-28s (%ds)\n' "$name" $(($(date +%s) - t0))
    tail -n 60 "$log" | sed 's/^/        | /'
  fi
}
note() { echo "  note: $*"; }

# ---- tools ------------------------------------------------------------------------------------------
need=()
dpkg -s abigail-tools >/dev/null 2>&1 || need+=(abigail-tools)
dpkg -s python3-pytest >/dev/null 2>&1 || need+=(python3-pytest)
dpkg -s doxygen >/dev/null 2>&1 || need+=(doxygen)
command -v cargo >/dev/null 2>&1 || dpkg -s cargo >/dev/null 2>&1 || need+=(cargo)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >"$tmp/logs/apt.log" 2>&1 ||
      { note "apt-get install ${need[*]} failed:"; tail -5 "$tmp/logs/apt.log"; }
  else
    note "not root: cannot install ${need[*]}"
  fi
fi
export PATH="$PATH:/usr/bin"  # Debian's cargo, when that is the one there is

if [ ! -e "$build/libloratune.so" ]; then
  echo "bindings: $build/libloratune.so not found (build the library first)"
  echo "bindings: 0 passed, 1 failed"
  exit 1
fi
lib="$build/libloratune.so.0"

# ---- a reference model ------------------------------------------------------------------------------
# llama-basic from tests/python/make_models.py (transformers; with goldens), or a random model made
# through the Python binding's experimental API when the reference stack is not there.
models=$tmp/models
model=$models/llama-basic
echo "== test model"
if timeout 300 "$PY" tests/python/make_models.py "$models" --only llama-basic >"$tmp/logs/models.log" 2>&1 &&
   [ -f "$model/config.json" ]; then
  echo "  llama-basic from tests/python/make_models.py"
else
  note "make_models.py failed (see below); using a random model instead"
  tail -3 "$tmp/logs/models.log"
  model=$models/random
  LORATUNE_LIBRARY=$lib PYTHONPATH=bindings/python "$PY" -c "
import sys, loratune as lt
with lt.Context(backend='cpu') as c, lt.experimental.create_random_model(c, lt.experimental.TINY_LLAMA, seed=1) as m:
    lt.experimental.save_model(m, sys.argv[1])" "$model" || echo "bindings: cannot make a test model"
fi

# ---- exports and ABI ----------------------------------------------------------------------------------
echo "== exported symbols and ABI"
run exports bash tools/check-exports.sh "$build/libloratune.so"
if command -v abidiff >/dev/null 2>&1; then
  run abi env LT_ABI_BUILD_DIR="$build/abi" bash tools/check-abi.sh
else
  failed=$((failed + 1)); failures+=(abi); echo "  FAIL  abi (abidiff not installed: apt-get install abigail-tools)"
fi

# ---- install ----------------------------------------------------------------------------------------
echo "== install"
prefix=$tmp/prefix
check_install() {
  cmake --install "$build" --prefix "$prefix" || return 1
  local pc; pc=$(find "$prefix" -name loratune.pc | head -1)
  [ -n "$pc" ] || { echo "no loratune.pc installed"; return 1; }
  local libdir; libdir=$(dirname "$(dirname "$pc")")
  echo "$libdir" >"$tmp/libdir"
  local ok=0
  for f in "$prefix/include/loratune.h" "$libdir/libloratune.so.0" "$libdir/libloratune.so" "$libdir/libloratune.a" \
           "$libdir/cmake/loratune/loratuneConfig.cmake" "$libdir/cmake/loratune/loratuneConfigVersion.cmake"; do
    if [ -e "$f" ]; then echo "ok: ${f#$prefix/}"; else echo "MISSING: ${f#$prefix/}"; ok=1; fi
  done
  local soname; soname=$(readelf -d "$libdir/libloratune.so.0" | sed -n 's/.*soname: \[\(.*\)\]/\1/p')
  echo "SONAME $soname"
  [ "$soname" = libloratune.so.0 ] || ok=1
  return $ok
}
run install check_install
libdir=$(cat "$tmp/libdir" 2>/dev/null || echo "$prefix/lib")

# The installed loratune.pc must describe the prefix it was installed into.
check_pc_prefix() {
  local got; got=$(PKG_CONFIG_PATH="$libdir/pkgconfig" pkg-config --variable=libdir loratune)
  echo "pkg-config --variable=libdir loratune: $got (installed into $libdir)"
  [ "$(readlink -f "$got" 2>/dev/null)" = "$(readlink -f "$libdir")" ] || {
    echo "loratune.pc points at the configure-time prefix, not the install prefix"
    echo "(fix: prefix=\${pcfiledir}/../.. in pkgconfig/loratune.pc.in)"
    return 1
  }
}
run pkgconfig-prefix check_pc_prefix

# ---- C and C++ examples against the installed tree ----------------------------------------------------
echo "== examples (C, C++) against the installed library"
export PKG_CONFIG_PATH="$libdir/pkgconfig"
# --define-variable keeps the examples independent of the pkgconfig-prefix check above
pcfg="pkg-config --define-variable=prefix=$prefix"
cp -r examples "$tmp/examples"
run_example() {  # EXE NAME
  "$1" "$model" "$tmp/out/$2" || return 1
  [ -f "$tmp/out/$2/adapter_model.safetensors" ] || { echo "no adapter written"; return 1; }
}
ex_make() {  # DIR TARGET EXE NAME
  make -s -C "$tmp/examples/$1" ${2:+"$2"} PKG_CONFIG="$pcfg" && run_example "$tmp/examples/$1/$3" "$4"
}
ex_cmake() {  # DIR NAME
  cmake -S "$tmp/examples/$1" -B "$tmp/ex-$1" -DCMAKE_PREFIX_PATH="$prefix" && cmake --build "$tmp/ex-$1" &&
    run_example "$tmp/ex-$1/finetune" "$2"
}
mkdir -p "$tmp/out"
run c-pkgconfig ex_make c "" finetune c-pkgconfig
run cpp-pkgconfig ex_make cpp "" finetune cpp-pkgconfig
run c-cmake ex_cmake c c-cmake
run c-grpo-toy "$tmp/examples/c/grpo_toy" - 20   # GRPO example: learns its toy task (exit 0) or fails
run cpp-cmake ex_cmake cpp cpp-cmake
if nm "$libdir/libloratune.a" 2>/dev/null | grep ' U cuda' >/dev/null; then  # (no -q: pipefail)
  note "static example skipped: this libloratune.a has the CUDA backend, whose libraries loratune.pc does not list"
else
  static_example() {
    ex_make c static finetune-static c-static || return 1
    if ldd "$tmp/examples/c/finetune-static" | grep libloratune; then echo "linked the shared library"; return 1; fi
  }
  run c-static-pkgconfig static_example
fi

# ---- Python -------------------------------------------------------------------------------------------
echo "== Python binding"
export PYTHONDONTWRITEBYTECODE=1
# pytest: the interpreter's own, else Debian's (python3-pytest, pure Python) appended to its path
pytest_in() {  # PYTHON ARGS...
  local py=$1; shift
  "$py" -c "
import sys
try:
    import pytest
except ImportError:
    sys.path.append('/usr/lib/python3/dist-packages')
    import pytest
sys.exit(pytest.main(sys.argv[1:]))" -q -p no:cacheprovider -rxs "$@"
}
export LORATUNE_TEST_MODEL=$model
tree_pytest() (
  export LORATUNE_LIBRARY="$lib" PYTHONPATH="$root/bindings/python"
  pytest_in "$PY" bindings/python/tests
)
run python-pytest tree_pytest
run python-example env LORATUNE_LIBRARY="$lib" PYTHONPATH="$root/bindings/python" \
  "$PY" bindings/python/examples/finetune.py "$model" "$tmp/out/python"

pip_install() (
  "$PY" -m venv "$tmp/venv" && "$tmp/venv/bin/python" -m pip install --no-index --disable-pip-version-check \
    --no-cache-dir -q "$root/bindings/python" || return 1
  cd "$tmp" || return 1  # import the installed package, not the tree
  LORATUNE_LIBRARY="$lib" "$tmp/venv/bin/python" -c "
import loratune, ctypes
assert loratune.__file__.startswith('$tmp/venv'), loratune.__file__
c = ctypes.CDLL('$lib'); c.lt_version_string.restype = ctypes.c_char_p
assert loratune.library_version() == c.lt_version_string().decode()
print('installed', loratune.__version__, 'library', loratune.library_version())"
)
run pip-install-offline pip_install
installed_pytest() (
  cd "$tmp" && LORATUNE_LIBRARY="$lib" LORATUNE_INCLUDE_DIR="$root/include" \
    pytest_in "$tmp/venv/bin/python" "$root/bindings/python/tests"
)
# the installed package (no numpy in this venv: the pure-Python paths)
[ -x "$tmp/venv/bin/python" ] && run python-pytest-installed installed_pytest

# ---- Rust ---------------------------------------------------------------------------------------------
echo "== Rust crates"
if command -v cargo >/dev/null 2>&1; then
  echo "  $(cargo --version)"
  cargo_in_tree() (
    cd bindings/rust || exit 1
    export LORATUNE_LIB_DIR="$build" LD_LIBRARY_PATH="$build${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
      CARGO_TARGET_DIR="$build/cargo" LORATUNE_INCLUDE_DIR="$root/include"
    rm -f Cargo.lock  # not committed; a newer cargo's lock file would stop an older cargo
    cargo "$@"
  )
  run rust-cargo-test cargo_in_tree test --offline
  rust_example() {
    cargo_in_tree run --offline -q --example finetune -- "$model" "$tmp/out/rust" &&
      [ -f "$tmp/out/rust/adapter_model.safetensors" ]
  }
  run rust-example rust_example
  rm -f bindings/rust/Cargo.lock
else
  failed=$((failed + 1)); failures+=(rust); echo "  FAIL  rust (no cargo: apt-get install cargo)"
fi

# ---- guides: the complete program of each docs/guide-*.md builds and runs ---------------------------
echo "== guide programs (docs/guide-*.md)"
guide_block() {  # FILE LANG: the first LANG block after "## A complete fine-tuning program"
  awk -v lang="$2" '/^## A complete fine-tuning program/{s=1} s && $0=="```"lang {f=1; next} f && /^```/ {exit} f' "$1"
}
guide_c() (
  d=$tmp/guide-c; mkdir -p "$d"; guide_block docs/guide-c.md c >"$d/finetune.c"
  cc -std=c11 -Wall -Wextra -Werror $($pcfg --cflags loratune) "$d/finetune.c" -o "$d/finetune" \
    $($pcfg --libs loratune) -Wl,-rpath,"$libdir" && run_example "$d/finetune" guide-c
)
guide_cpp() (
  d=$tmp/guide-cpp; mkdir -p "$d"; guide_block docs/guide-cpp.md cpp >"$d/finetune.cpp"
  c++ -std=c++17 -Wall -Wextra -Werror $($pcfg --cflags loratune) "$d/finetune.cpp" -o "$d/finetune" \
    $($pcfg --libs loratune) -Wl,-rpath,"$libdir" && run_example "$d/finetune" guide-cpp
)
guide_python() (
  d=$tmp/guide-python; mkdir -p "$d"; guide_block docs/guide-python.md python >"$d/finetune.py"
  LORATUNE_LIBRARY="$lib" PYTHONPATH="$root/bindings/python" "$PY" "$d/finetune.py" "$model" "$tmp/out/guide-python" &&
    [ -f "$tmp/out/guide-python/adapter_model.safetensors" ]
)
guide_rust() (
  d=$tmp/guide-rust; mkdir -p "$d/src"; guide_block docs/guide-rust.md rust >"$d/src/main.rs"
  printf '[package]\nname = "guide-rust"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nloratune = { path = "%s" }\n[workspace]\n' \
    "$root/bindings/rust/loratune" >"$d/Cargo.toml"
  cd "$d" && LORATUNE_LIB_DIR="$build" LD_LIBRARY_PATH="$build${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    CARGO_TARGET_DIR="$build/cargo" cargo run --offline -q -- "$model" "$tmp/out/guide-rust" &&
    [ -f "$tmp/out/guide-rust/adapter_model.safetensors" ]
)
run guide-c guide_c
run guide-cpp guide_cpp
run guide-python guide_python
command -v cargo >/dev/null 2>&1 && run guide-rust guide_rust

# ---- docs (optional) ---------------------------------------------------------------------------------
echo "== API reference (Doxygen)"
if command -v doxygen >/dev/null 2>&1; then
  mkdir -p "$build/docs"
  lt_version=$(sed -n 's/^#define LT_VERSION_STRING "\(.*\)"/\1/p' include/loratune.h)
  if (sed "s|^OUTPUT_DIRECTORY .*|OUTPUT_DIRECTORY = $build/docs|" docs/Doxyfile | LORATUNE_VERSION=$lt_version doxygen - >"$tmp/logs/doxygen.log" 2>&1); then
    echo "  docs: $build/docs/html/index.html ($(grep -c 'warning' "$tmp/logs/doxygen.log") warnings)"
  else
    note "doxygen failed (not counted):"; tail -5 "$tmp/logs/doxygen.log"
  fi
else
  note "doxygen not installed; API reference not generated"
fi

echo "== done in $(($(date +%s) - t_start))s"
[ ${#failures[@]} -gt 0 ] && echo "failed: ${failures[*]}"
echo "bindings: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

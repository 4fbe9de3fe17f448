#!/usr/bin/env bash
# ref-venv.sh - the reference virtualenv of tests/python (torch, transformers, peft, trl, bitsandbytes,
# tokenizers, mistral-common: the oracles), built from tests/python/requirements.lock and tied to it.
#
#   py=$(bash tests/ref-venv.sh)    prints the venv's python on stdout; builds the venv first if needed
#
#   LT_REF_VENV   the venv's directory (default ~/.cache/loratune/ref-venv-<first 12 hex of sha256(lock)>)
#
# The venv is used only when its marker file, .loratune-ref-venv, names the sha256 of the current lock.
# The marker says "building" while pip runs and gets the hash last, so a venv from another lock, or one
# whose install was cut short, is rebuilt rather than used. Only a directory carrying that marker (or an
# empty one) is ever deleted or built into; any other is refused. Messages go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
lock=$PWD/tests/python/requirements.lock
hash=$(sha256sum "$lock" | cut -d' ' -f1)
venv=${LT_REF_VENV:-$HOME/.cache/loratune/ref-venv-${hash:0:12}}
case "$venv" in /*) ;; *) venv=$PWD/$venv ;; esac
marker=$venv/.loratune-ref-venv
built="built from requirements.lock sha256 $hash"
say() { echo "ref-venv: $*" >&2; }

# One build at a time in a parent directory: checkouts on one machine share ~/.cache/loratune.
mkdir -p "$(dirname "$venv")"
exec 9<"$(dirname "$venv")"
flock -n 9 || { say "waiting for another build in $(dirname "$venv")"; flock 9; }

if [ -x "$venv/bin/python" ] && [ "$(cat "$marker" 2>/dev/null)" = "$built" ]; then
  echo "$venv/bin/python"
  exit 0
fi
if [ -e "$venv" ] || [ -L "$venv" ]; then
  if [ -f "$marker" ] && [ ! -L "$venv" ]; then
    case "$(cat "$marker")" in
      building*) say "the last build of $venv was cut short: rebuilding it" ;;
      *)         say "$venv was built from another requirements.lock: rebuilding it" ;;
    esac
    rm -rf "$venv"
  elif [ -d "$venv" ] && [ ! -L "$venv" ] && [ -z "$(ls -A "$venv")" ]; then
    :  # an empty directory: build into it
  else
    say "$venv exists but was not made by tests/ref-venv.sh (no .loratune-ref-venv marker): not touching it."
    say "Set LT_REF_VENV to a new or empty directory, or remove that one yourself."
    exit 1
  fi
fi

pyver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$pyver" = 3.11 ] ||
  say "note: the lock is resolved for CPython 3.11 and python3 is $pyver; pip may lack a wheel for a pin"
say "building $venv from tests/python/requirements.lock (about 3.2 GB of wheels; torch from PyPI brings CUDA's)"
t0=$SECONDS
mkdir -p "$venv"
echo "building from requirements.lock sha256 $hash" >"$marker"  # ours from now on, not yet usable
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --no-input --disable-pip-version-check \
  --require-hashes --only-binary :all: -r "$lock" >&2
PYTHONPATH=tests/python "$venv/bin/python" -c "import offline_env, torch, transformers, peft, safetensors, trl, bitsandbytes, tokenizers, mistral_common, sentencepiece, jinja2"
echo "$built" >"$marker.new" && mv "$marker.new" "$marker"
say "built in $((SECONDS - t0)) s"

# Venvs of earlier locks stay (another checkout may still use one); say how to reclaim the space.
others=$(for m in "$(dirname "$venv")"/ref-venv-*/.loratune-ref-venv; do
  [ -f "$m" ] && [ "$(dirname "$m")" != "$venv" ] && dirname "$m"; done || true)
[ -z "$others" ] || say "note: venvs of other locks remain (about 6 GB each; rm -rf when unused): $(echo $others)"
echo "$venv/bin/python"

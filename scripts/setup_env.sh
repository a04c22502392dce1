#!/usr/bin/env bash
# Create (or update) the project's virtual environment and install everything it needs.
# Location: $X2VLM_VENV if set, else .venv in the repository. Prints the venv path last.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${X2VLM_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
export DS_BUILD_OPS=0          # DeepSpeed: no CUDA op builds at install time (CPU machines)
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch and torchvision must be a matching pair; install them first, together.
"$venv/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1" \
  || "$venv/bin/pip" install -q "torch>=2.4,<=2.14.1" "torchvision>=0.19,<=0.29.1"
"$venv/bin/pip" install -q -r "$root/requirements-dev.txt"
echo "$venv"

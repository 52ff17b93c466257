#!/usr/bin/env bash
# Creates the Python reference environment (torch, diffusers, transformers from PyPI, ~5 GB)
# used only to regenerate golden files. CI never needs it: the golden files are committed.
# Usage: tools/golden/setup.sh [VENV_DIR]   (default: $PIXART_REF_VENV or ../pixart-ref-venv)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-${PIXART_REF_VENV:-$here/../../../pixart-ref-venv}}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q -r "$here/requirements.txt"
echo "reference venv ready: $venv (run tools/golden/*.py with $venv/bin/python)"

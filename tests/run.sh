#!/usr/bin/env bash
# The whole test suite in one command, on a fresh machine or beside a ComfyUI workspace.
#
#   bash tests/run.sh [pytest args]
#
# 1. If a ComfyUI workspace with a Python environment is found (COMFYUI_PATH, an enclosing
#    custom_nodes/ folder, or ~/comfy/ComfyUI), the suite runs in that environment, so the
#    integration tier exercises the real ComfyUI.
# 2. Otherwise it creates .venv with the CPU build of torch (pip install torch==2.13.0; an
#    unpinned torch would download gigabytes) and runs the host-free tier; integration tests
#    skip with one reason.
# Lint (ruff) runs first either way.
set -euo pipefail
PACK="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$PACK"

find_comfyui() {
    if [[ -n "${COMFYUI_PATH:-}" && -f "${COMFYUI_PATH}/comfy/sd.py" ]]; then echo "$COMFYUI_PATH"; return; fi
    local dir="$PACK"
    while [[ "$dir" != "/" ]]; do
        if [[ "$(basename "$dir")" == "custom_nodes" && -f "$(dirname "$dir")/comfy/sd.py" ]]; then dirname "$dir"; return; fi
        dir="$(dirname "$dir")"
    done
    if [[ -f "$HOME/comfy/ComfyUI/comfy/sd.py" ]]; then echo "$HOME/comfy/ComfyUI"; fi
}

find_python() {  # a Python environment that can run ComfyUI
    local root="$1" cand
    for cand in "${COMFYUI_PYTHON:-}" "$(dirname "$root")/venv/bin/python" "$root/venv/bin/python" "$root/.venv/bin/python"; do
        if [[ -n "$cand" && -x "$cand" ]] && "$cand" -c "import torch, safetensors, transformers, einops" 2>/dev/null; then
            echo "$cand"; return
        fi
    done
}

COMFY="$(find_comfyui || true)"
PY=""
if [[ -n "$COMFY" ]]; then PY="$(find_python "$COMFY" || true)"; fi

if [[ -n "$PY" ]]; then
    echo "tests/run.sh: ComfyUI at $COMFY, Python $PY"
    export COMFYUI_PATH="$COMFY"
    "$PY" -c "import pytest, ruff" 2>/dev/null || "$PY" -m pip install -q pytest ruff
else
    echo "tests/run.sh: no ComfyUI workspace with a Python environment found; running the host-free tier"
    if [[ ! -x .venv/bin/python ]]; then
        python3 -m venv .venv
    fi
    PY=.venv/bin/python
    if ! "$PY" -c "import torch, safetensors, numpy, pytest, ruff" 2>/dev/null; then
        "$PY" -m pip install -q --upgrade pip
        "$PY" -m pip install -q torch==2.13.0
        "$PY" -m pip install -q -r requirements.txt "pytest>=8" "ruff>=0.6"
    fi
fi

"$PY" -m ruff check .
exec "$PY" -m pytest "$@"

#!/usr/bin/env bash
# The GPU round in one script: full-size DTI Train step figures on a bare GPU machine (PyTorch,
# einops, transformers, safetensors, sentencepiece and scipy installed; no network).
#
#   bash benchmarks/gpu_round.sh prepare   # here (ComfyUI workspace + network): fills .gpu_bundle/
#   bash benchmarks/gpu_round.sh run       # on the GPU machine, with .gpu_bundle/ carried along
#   bash benchmarks/gpu_round.sh dry-run   # here: the same path with tiny shapes on the CPU
#
# The bundle (ignored by git, ~30 MB) carries what the pack imports from ComfyUI (comfy/, comfy_api/,
# comfy_extras/, comfy_execution/, app/, utils/, the top-level modules, and ComfyUI_ExtraModels for
# SANA) as one tarball, wheels of the pure-Python or abi3 packages ComfyUI imports on this path
# (torchsde, trampoline, psutil, pydantic, timm, protobuf for transformers' SentencePiece
# conversion, …, plus Pillow and pydantic-core for CPython
# 3.10-3.13), and import stand-ins for torchvision and av, which ComfyUI imports at load time but
# this path never calls (used only where the real package is missing).
#
# Prints, for full-size random SDXL: 1024² batch 1 with and without gradient checkpointing, 768²
# batch 4; Flux.1 dev + T5-XXL 1024² batch 1 with and without checkpointing; SANA 1.6B + Gemma-2-2B
# shapes; SDXL with the text encoder on the CPU and the UNet on the GPU; SD3.5 Large 1024² batch 1
# with checkpointing: s/step, it/s, peak GPU memory, overhead ratio, backward ÷ forward, and how
# ComfyUI loaded the models. Goals: SDXL 1024² b1 ≥ 3 it/s and ≤ 10 GiB with checkpointing; 768² b4
# ≤ 0.5 s/step; SANA ≤ 24 GiB; Flux 1024² b1 with checkpointing ≤ 24 GiB; overhead ≤ 1.10. Whatever
# would start after 400 s is skipped (printed as such), so the round ends inside its 480 s timeout.
set -euo pipefail
PACK="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="$PACK/.gpu_bundle"
MODE="${1:-run}"
PY="${PYTHON:-python3}"

PURE_WHEELS=(torchsde trampoline psutil pydantic pydantic-settings python-dotenv annotated-types typing-inspection
             timm protobuf)
BINARY_WHEELS=(pillow pydantic-core)
PYTHONS=(3.10 3.11 3.12 3.13)

prepare() {
    local comfy="${COMFYUI_PATH:-$HOME/comfy/ComfyUI}"
    [[ -f "$comfy/comfy/sd.py" ]] || { echo "no ComfyUI at $comfy (set COMFYUI_PATH)"; exit 1; }
    rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/wheels" "$BUNDLE/stubs"
    local parts=(comfy comfy_api comfy_extras comfy_execution app utils comfy_api_nodes
                 nodes.py folder_paths.py node_helpers.py latent_preview.py comfyui_version.py execution.py
                 server.py protocol.py hook_breaker_ac10a0.py new_updater.py cuda_malloc.py main.py)
    [[ -d "$comfy/custom_nodes/ComfyUI_ExtraModels" ]] && parts+=(custom_nodes/ComfyUI_ExtraModels)
    local present=()
    for p in "${parts[@]}"; do [[ -e "$comfy/$p" ]] && present+=("$p"); done
    tar -C "$comfy" --exclude=__pycache__ --exclude=.git --exclude='*.pyc' -czf "$BUNDLE/comfyui.tar.gz" "${present[@]}"
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$BUNDLE/wheels" "${PURE_WHEELS[@]}"
    for v in "${PYTHONS[@]}"; do
        "$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
            --python-version "$v" --implementation cp -d "$BUNDLE/wheels" "${BINARY_WHEELS[@]}"
    done
    # Import stand-ins: any attribute is a placeholder class; calling into them fails loudly.
    for mod in torchvision av; do
        mkdir -p "$BUNDLE/stubs/$mod/$mod"
        cp "$PACK/benchmarks/import_stand_in.py" "$BUNDLE/stubs/$mod/$mod/__init__.py"
    done
    du -sh "$BUNDLE"
}

run_round() {  # $1: extra arguments for benchmarks/train_step.py
    [[ -f "$BUNDLE/comfyui.tar.gz" ]] || { echo "no bundle: run 'bash benchmarks/gpu_round.sh prepare' first"; exit 1; }
    local work
    work="$(mktemp -d)"
    tar -C "$work" -xzf "$BUNDLE/comfyui.tar.gz"
    mkdir -p "$work/site"
    local missing=()
    for spec in torchsde:torchsde trampoline:trampoline psutil:psutil pydantic:pydantic pydantic_settings:pydantic-settings \
                dotenv:python-dotenv PIL:pillow timm:timm google.protobuf:protobuf; do
        "$PY" -c "import ${spec%%:*}" 2>/dev/null || missing+=("${spec##*:}")
    done
    if (( ${#missing[@]} )); then
        echo "installing from the bundle: ${missing[*]}"
        "$PY" -m pip install -q --no-deps --no-index --find-links "$BUNDLE/wheels" --target "$work/site" "${missing[@]}"
    fi
    local path="$work/site"
    "$PY" -c "import torchvision" 2>/dev/null || path="$path:$BUNDLE/stubs/torchvision"
    "$PY" -c "import av" 2>/dev/null || path="$path:$BUNDLE/stubs/av"
    echo "# ComfyUI from the bundle, unpacked in $work; $("$PY" -V 2>&1)"
    cd "$PACK"
    COMFYUI_PATH="$work" PYTHONPATH="$path${PYTHONPATH:+:$PYTHONPATH}" timeout 480 \
        "$PY" benchmarks/train_step.py --round $1
}

case "$MODE" in
    prepare) prepare ;;
    run) nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
         run_round "--steps 10 --warmup 3 --threads 8 --budget-s 400" ;;
    dry-run) run_round "--tiny --steps 2 --warmup 1" ;;
    *) echo "usage: bash benchmarks/gpu_round.sh prepare|run|dry-run"; exit 2 ;;
esac

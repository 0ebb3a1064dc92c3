"""Loading and unloading through ComfyUI's model manager."""

from __future__ import annotations

import comfy.model_management


def release(patcher) -> None:
    """Unload one model (e.g. the VAE after encoding the training images) and nothing else."""
    if patcher is None:  # a VAE from another pack, not managed by ComfyUI's model manager
        return
    mm = comfy.model_management
    for i in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[i]
        if loaded.model is patcher:
            loaded.model_unload()
            mm.current_loaded_models.pop(i)

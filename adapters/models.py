"""Loading and unloading through ComfyUI's model manager."""

from __future__ import annotations

from dataclasses import dataclass

import comfy.model_management
import torch

from ..dti import memory as dti_memory


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


def training_memory_estimate(family: str, resolution: int, batch: int, checkpointing: bool, compute_dtype: torch.dtype,
                             down: int = 8) -> int:
    """Bytes a training step needs beside the weights, to hand to ComfyUI as the memory it requires.

    resolution² image pixels are (resolution / down)² latent pixels (down: the VAE's downscale);
    dti.memory holds the family's activation cost per latent pixel and per prompt (derived there).
    """
    latent_pixels = max(1, resolution // down) ** 2
    return dti_memory.activation_bytes(family, latent_pixels, batch, checkpointing, compute_dtype.itemsize)


def load_for_training(patchers: list, memory_required: int) -> None:
    """Load the models through ComfyUI's manager, leaving ``memory_required`` bytes free for the step.

    With memory_required as the minimum too, ComfyUI's budget for weights on the device is
    free memory − (memory_required + its reserve): what fits is loaded, the other layers stay on the
    offload device and are cast per forward (lowvram). A device with room loads everything. (Forcing
    a full load turns "does not fit" into an out-of-memory error.)
    """
    mm = comfy.model_management
    device = patchers[0].load_device
    if not mm.is_device_cpu(device):
        # A MODEL already fully loaded (by sampling) would stay so: load_models_gpu first drops the
        # entry of the model being cloned from its table, then can free only *other* models, and
        # partially_load never shrinks a full load. Asking ComfyUI to free the room while that entry
        # is still listed lets it partially unload the UNet itself (free_memory → partially_unload).
        # The text encoders are kept (they are needed too) and what they still have to load is counted.
        text = [p for p in patchers[1:] if p.load_device == device]
        to_load = sum(p.model_size() - p.loaded_size() for p in text)
        keep = [lm for lm in mm.current_loaded_models if any(lm.model is p for p in text)]
        room = max(mm.minimum_inference_memory(), memory_required + mm.extra_reserved_memory())
        mm.free_memory(room + to_load, device, keep_loaded=keep)
    mm.load_models_gpu(patchers, memory_required=memory_required, minimum_memory_required=memory_required)


@dataclass(frozen=True)
class LoadState:
    """How ComfyUI loaded one model: bytes resident on its load device, of its total, and cast layers."""

    label: str
    device: str
    resident: int
    total: int
    cast_layers: int  # layers whose weights stay on the offload device and are cast for each forward
    offload: str = "the offload device"

    @property
    def full(self) -> bool:
        return self.cast_layers == 0 and self.resident >= self.total

    def describe(self) -> str:
        mib = 1024 * 1024
        if self.full:
            return f"{self.label} fully loaded ({self.total / mib:.0f} MB on {self.device})"
        return (f"{self.label} partially loaded ({self.resident / mib:.0f} of {self.total / mib:.0f} MB on "
                f"{self.device}; {self.cast_layers} layers cast from {self.offload} each step)")


def load_state(patcher, label: str) -> LoadState:
    """Read ComfyUI's own bookkeeping for a loaded ModelPatcher (model_loaded_weight_memory, model_lowvram)."""
    model = patcher.model
    lowvram = bool(getattr(model, "model_lowvram", False))
    cast = sum(1 for m in model.modules() if getattr(m, "comfy_cast_weights", False)
               and hasattr(m, "prev_comfy_cast_weights")) if lowvram else 0
    return LoadState(label, str(patcher.load_device), int(patcher.loaded_size()), int(patcher.model_size()), cast,
                     offload=str(patcher.offload_device))


def describe_load(patcher, text_patchers: list, memory_required: int) -> str:
    """One summary line: how the denoiser and the text encoder(s) were loaded, and the memory asked for."""
    parts = [load_state(patcher, "model").describe()]
    parts += [load_state(p, "text encoder").describe() for p in text_patchers]
    return f"{'; '.join(parts)}; {memory_required / 2**20:.0f} MB requested for the step's activations"

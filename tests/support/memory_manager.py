"""Steering ComfyUI's own memory manager on a machine whose only device is the CPU, for tests.

On a CPU load device ComfyUI never loads partially: load_models_gpu() treats a CPU device as
VRAMState.DISABLED and loads every weight. ``vram_device`` makes each load_models_gpu() call see the
CPU as a device with VRAM (is_device_cpu answers False and get_free_memory answers ``free``, for the
duration of that call only, and vram_state is the requested state), so ComfyUI's real lowvram path
runs: the budget from memory_required, ModelPatcher.load(lowvram_model_memory=…), comfy_cast_weights
and LowVramPatch on the layers it does not keep, cast_bias_weight on every forward. What a CPU cannot
show is the copy itself: "offloaded" and "loaded" weights live in the same RAM.

``free_after_load`` additionally lets ComfyUI free part of the denoiser right after loading, the
way free_memory() does when another model needs room (LoadedModel.model_unload(memory_to_free)):
a partial load with a budget, which tiny models cannot get from load_models_gpu() because its
budget is never below 128 MB.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch


@dataclass
class LoadLog:
    calls: list[dict] = field(default_factory=list)  # keyword arguments of each load_models_gpu call
    budgets: list[tuple[object, float]] = field(default_factory=list)  # (patcher, lowvram_model_memory) per model_load
    frees: list[int] = field(default_factory=list)  # memory_required of each free_memory call


@contextlib.contextmanager
def vram_device(model, state=None, free: int | None = None, free_after_load: float | None = None,
                capacity: int | None = None) -> Iterator[LoadLog]:
    """Steer the loads of ``model`` (a MODEL patcher, or its clones); other loads (the VAE) run as usual.

    ``free``: what get_free_memory answers. ``capacity``: a device of that size instead, whose free
    memory is capacity minus the weights ComfyUI lists as loaded, for the whole block (the pack's own
    free_memory() call included).
    """
    import comfy.model_management as mm

    real_load, real_model_load, real_free = mm.load_models_gpu, mm.LoadedModel.model_load, mm.free_memory
    log = LoadLog()

    resident: dict[int, object] = {}  # every model seen on the device, by the module holding the weights

    def track(patchers) -> None:
        for p in [*patchers, *(lm.model for lm in mm.current_loaded_models)]:
            if p is not None:
                resident[id(p.model)] = p.model

    def device_free(dev=None, torch_free_too=False):
        if free is not None:
            value = free
        else:
            # Weights stay on a GPU when ComfyUI drops a model's entry (load_models_gpu detaches clones
            # without unpatching), so count what each model holds, listed or not.
            track([])
            value = capacity - sum(m.model_loaded_weight_memory for m in resident.values())
        return (value, value) if torch_free_too else value

    @contextlib.contextmanager
    def steered():
        saved = mm.vram_state, mm.is_device_cpu, mm.get_free_memory
        try:
            if state is not None:
                mm.vram_state = state
                mm.is_device_cpu = lambda device: False
            if free is not None or capacity is not None:
                mm.get_free_memory = device_free
            yield
        finally:
            mm.vram_state, mm.is_device_cpu, mm.get_free_memory = saved

    def free_memory(memory_required, device, keep_loaded=[]):  # noqa: B006 (ComfyUI's signature)
        log.frees.append(memory_required)
        with steered():
            return real_free(memory_required, device, keep_loaded)

    def model_load(self, lowvram_model_memory=0, force_patch_weights=False):
        log.budgets.append((self.model, lowvram_model_memory))
        return real_model_load(self, lowvram_model_memory, force_patch_weights)

    def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        if not any(m.is_clone(model) for m in models):
            return real_load(models, memory_required=memory_required, force_patch_weights=force_patch_weights,
                             minimum_memory_required=minimum_memory_required, force_full_load=force_full_load)
        track(models)
        log.calls.append({"models": list(models), "memory_required": memory_required,
                          "minimum_memory_required": minimum_memory_required, "force_full_load": force_full_load})
        if state == mm.VRAMState.NO_VRAM:
            # Under --novram nothing is ever fully loaded, but the test's earlier stock sampling loaded
            # the model fully on the CPU, and partially_load never shrinks a full load: unload it first.
            for i in range(len(mm.current_loaded_models) - 1, -1, -1):
                if mm.current_loaded_models[i].model.is_clone(model):
                    mm.current_loaded_models.pop(i).model_unload()
        with steered():
            real_load(models, memory_required=memory_required, force_patch_weights=force_patch_weights,
                      minimum_memory_required=minimum_memory_required, force_full_load=force_full_load)
        if free_after_load is not None:
            unet = next(lm for lm in mm.current_loaded_models if lm.model.is_clone(model))
            unet.model_unload(memory_to_free=int(unet.model_loaded_memory() * free_after_load))

    mm.load_models_gpu, mm.LoadedModel.model_load, mm.free_memory = load_models_gpu, model_load, free_memory
    saved_is_cpu = mm.is_device_cpu
    if capacity is not None:
        # The pack asks ComfyUI to free room on non-CPU devices (adapters/models.py): let it see a GPU
        # too. Only here: is_device_cpu also picks bf16 for fp16 models (should_use_bf16).
        mm.is_device_cpu = lambda device: False
    try:
        yield log
    finally:
        mm.load_models_gpu, mm.LoadedModel.model_load, mm.free_memory = real_load, real_model_load, real_free
        mm.is_device_cpu = saved_is_cpu


def loaded_models() -> list[tuple[int, object, int, bool]]:
    """ComfyUI's loaded-model table: (id, patcher, bytes loaded, lowvram) per entry, in a stable order."""
    import comfy.model_management as mm

    gc.collect()  # clones dropped by a finished run hand their entry back to their parent
    rows = [(id(lm.model), lm.model, int(lm.model.loaded_size()), bool(lm.model.model.model_lowvram))
            for lm in mm.current_loaded_models if lm.model is not None]
    return sorted(rows, key=lambda r: r[0])


def cast_layers(patcher) -> int:
    """Layers ComfyUI left off the device: comfy_cast_weights set by its lowvram loading."""
    return sum(1 for m in patcher.model.modules() if hasattr(m, "prev_comfy_cast_weights") and m.comfy_cast_weights)


def castable_layers(patcher) -> int:
    return sum(1 for m in patcher.model.modules()
               if hasattr(m, "comfy_cast_weights") and any(True for _ in m.parameters(recurse=False)))


def stock_sample(model, clip) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIPTextEncode + KSampler as a workflow runs them: (positive conditioning, sampled latent)."""
    import nodes

    with torch.inference_mode():
        (pos,) = nodes.CLIPTextEncode().encode(clip, "a photo of a dog")
        (neg,) = nodes.CLIPTextEncode().encode(clip, "blurry")
        (out,) = nodes.common_ksampler(model, 5, 3, 4.0, "euler", "normal", pos, neg, {"samples": torch.zeros(1, 4, 8, 8)})
    return pos[0][0].clone(), out["samples"].clone()

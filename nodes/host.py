"""What the nodes need from ComfyUI beyond the model objects: folders, memory, autograd, progress."""

from __future__ import annotations

import contextlib
import logging
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import comfy.clip_model
import comfy.model_management
import comfy.utils
import folder_paths
import torch

log = logging.getLogger("ComfyUI-DTI")


def embeddings_folder() -> Path:
    """Where concepts are written: the first (default) embeddings folder."""
    return Path(folder_paths.get_folder_paths("embeddings")[0])


def checkpoints_folder() -> Path:
    return Path(folder_paths.get_output_directory()) / "dti_checkpoints"


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


def make_autograd_ready(module: torch.nn.Module) -> int:
    """Swap inference-mode weights for ordinary tensors with the same values.

    Loader nodes run under torch.inference_mode(), and autograd refuses to save inference tensors
    for backward, so no gradient could pass through these layers. ``p.data = …`` is not allowed on
    inference tensors; replacing the Parameter object is. Values are unchanged, so the model keeps
    working for everyone else; the swap is redone each run because a reload brings new tensors.
    """
    swapped = 0
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and p.is_inference():
                sub._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
                swapped += 1
        for name, b in list(sub._buffers.items()):
            if b is not None and b.is_inference():
                sub._buffers[name] = b.clone()
                swapped += 1
    return swapped


def _clip_layer_out_of_place(self, x, mask=None, optimized_attention=None):
    # Same as comfy.clip_model.CLIPLayer.forward without the in-place `x +=`, which destroys the
    # LayerNorm input autograd saved and makes backward fail.
    x = x + self.self_attn(self.layer_norm1(x), mask, optimized_attention)
    return x + self.mlp(self.layer_norm2(x))


@contextlib.contextmanager
def out_of_place_clip_layers(module: torch.nn.Module) -> Iterator[int]:
    """Temporarily give every CLIPLayer in the module an out-of-place forward; restored on exit."""
    patched = []
    try:
        for sub in module.modules():
            if isinstance(sub, comfy.clip_model.CLIPLayer) and "forward" not in sub.__dict__:
                sub.forward = types.MethodType(_clip_layer_out_of_place, sub)
                patched.append(sub)
        yield len(patched)
    finally:
        for sub in patched:
            del sub.forward


def check_interrupted() -> None:
    comfy.model_management.throw_exception_if_processing_interrupted()


class Progress:
    """ComfyUI progress bar plus a live-chart message for the pack's web extension."""

    def __init__(self, total: int, node_id: str | None, preview_every_s: float = 1.0) -> None:
        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        self.total = total
        self.node_id = node_id
        self.preview_every_s = preview_every_s
        self._last_preview = 0.0

    def update(self, step: int, preview_factory=None, data: dict[str, Any] | None = None) -> None:
        preview = None
        now = time.monotonic()
        if preview_factory is not None and (now - self._last_preview >= self.preview_every_s or step >= self.total):
            self._last_preview = now
            preview = ("JPEG", preview_factory(), 640)
        self.bar.update_absolute(step, self.total, preview)
        if data is not None:
            send_to_web("dti.train.progress", {"node": self.node_id, "step": step, "total": self.total, **data})


def send_to_web(event: str, data: dict[str, Any]) -> None:
    """A message for the front end, when a server is running (not in library use or tests)."""
    try:
        import server

        instance = getattr(server.PromptServer, "instance", None)
    except ImportError:
        instance = None
    if instance is not None and getattr(instance, "client_id", None) is not None:
        instance.send_sync(event, data, instance.client_id)

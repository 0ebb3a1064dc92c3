"""What ComfyUI's models need, temporarily, to be trained through: autograd-ready weights,
out-of-place residuals (CLIP, T5, Flux/Chroma blocks), gradient checkpointing. Every patch is undone on exit."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import comfy.clip_model
import comfy.ldm.chroma.layers
import comfy.ldm.flux.layers
import comfy.ldm.modules.diffusionmodules.mmdit
import comfy.text_encoders.t5
import torch
import torch.utils.checkpoint

# Blocks that add their residual in place (`x += f(norm(x))`, `x.addcmul_(…)`) after a norm saved x
# for backward, and the norms concerned. Cloning each norm's input lets autograd keep its own copy,
# so the in-place add no longer destroys it; every entry is needed (the tests drop each in turn).
IN_PLACE_RESIDUALS: dict[type, tuple[str, ...]] = {
    comfy.text_encoders.t5.T5LayerSelfAttention: ("layer_norm",),
    comfy.text_encoders.t5.T5LayerFF: ("layer_norm",),
    comfy.ldm.flux.layers.DoubleStreamBlock: ("txt_norm1", "txt_norm2"),
    comfy.ldm.flux.layers.SingleStreamBlock: ("pre_norm",),
    comfy.ldm.chroma.layers.DoubleStreamBlock: ("img_norm1", "img_norm2", "txt_norm1", "txt_norm2"),
    comfy.ldm.chroma.layers.SingleStreamBlock: ("pre_norm",),
    comfy.ldm.modules.diffusionmodules.mmdit.ContextProcessorBlock: ("norm1", "norm2"),
}


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


def _clone_input(_module, args):
    return (args[0].clone(), *args[1:])


@contextlib.contextmanager
def norm_input_clones(module: torch.nn.Module, table: dict[type, tuple[str, ...]] | None = None) -> Iterator[int]:
    """Clone the input of every norm listed in ``table`` (default IN_PLACE_RESIDUALS) inside the
    module for the duration, so in-place residual adds leave autograd's saved tensors alone.

    A forward pre-hook rather than a rewritten forward: ComfyUI's block code runs unchanged (its
    patches, options and fp16 clamps included). Costs one activation copy per listed norm.
    """
    table = IN_PLACE_RESIDUALS if table is None else table
    handles = []
    try:
        for sub in module.modules():
            for name in table.get(type(sub), ()):
                handles.append(getattr(sub, name).register_forward_pre_hook(_clone_input))
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def out_of_place_residuals(module: torch.nn.Module) -> Iterator[int]:
    """Every in-place residual the pack knows made safe for backward: CLIP layers and the blocks
    of IN_PLACE_RESIDUALS (T5, Flux, Chroma, MMDiT's context processor); undone on exit."""
    with out_of_place_clip_layers(module) as n_clip, norm_input_clones(module) as n_norms:
        yield n_clip + n_norms


def checkpoint_blocks(diffusion_model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules gradient checkpointing recomputes: the model's blocks, with containers opened.

    A container's own forward is not always called: ComfyUI's UNet runs each TimestepEmbedSequential
    through forward_timestep_embed(), which calls the layers inside one by one, so wrapping the
    container would checkpoint nothing. Its layers (ResBlock, SpatialTransformer, Downsample, …) are
    always called through their own forward, so those are the units.
    """
    blocks: list[torch.nn.Module] = []

    def visit(module: torch.nn.Module) -> None:
        if isinstance(module, (torch.nn.ModuleList, torch.nn.Sequential)):
            for child in module:
                visit(child)
        elif any(p.numel() for p in module.parameters()) and "forward" not in module.__dict__:
            blocks.append(module)

    for child in diffusion_model.children():
        visit(child)
    return blocks


def _checkpointed(forward):
    def run(*args, **kwargs):
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def _on_copies(forward):
    """Flux's and Chroma's blocks add residuals into their own inputs (x += …), which recomputation
    needs unchanged: the block works on copies made inside the recomputed region (same values, and
    not kept — only the originals are saved for backward)."""

    def run(*args, **kwargs):
        return forward(*map(_copy_if_tensor, args), **{k: _copy_if_tensor(v) for k, v in kwargs.items()})

    return run


def _copy_if_tensor(value):
    # every tensor input, not only those with gradient: Chroma's first block also writes into the
    # image stream, which carries no gradient yet
    return value.clone() if torch.is_tensor(value) and value.is_floating_point() else value


@contextlib.contextmanager
def gradient_checkpointing(diffusion_model: torch.nn.Module, enabled: bool) -> Iterator[int]:
    """Recompute each block (see checkpoint_blocks) in backward instead of storing its activations; undone on exit."""
    if not enabled:
        yield 0
        return
    blocks = checkpoint_blocks(diffusion_model)
    try:
        for block in blocks:
            run = block.forward
            if type(block) in IN_PLACE_RESIDUALS:
                run = _on_copies(run)
            block.forward = _checkpointed(run)
        yield len(blocks)
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)

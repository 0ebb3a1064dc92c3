"""Keep ComfyUI's per-call weight casts out of the autograd graph while training.

ComfyUI casts a layer's weight on every call when it is stored in another dtype or on another
device than the input (`comfy.ops` manual cast: fp8/bf16 storage, `--bf16-unet`, lowvram partial
loads) or when patches are applied on the fly (`weight_function`/`bias_function`: LoRA on a
partially loaded model, weight wrappers). In training, autograd saves the freshly cast weight as an
operand of the matmul/conv, so every layer's cast copy stays alive until backward and the storage
saving is lost (DESIGN §4a: full-size SDXL with bf16 storage ran out of 24 GiB on the CPU).

`recast_in_backward` runs each casting Linear/Conv layer's stock op under a saved-tensors hook
that stores a small recipe in place of the cast weight — the layer, the compute dtype and device,
and the view's geometry — and re-runs ComfyUI's own `cast_bias_weight` (patches included) when
backward needs the weight. The op and its backward are torch's own, so gradients are bit-identical
to keeping the copy; every other saved tensor goes to the enclosing hooks (gradient
checkpointing's), untouched.

Covered: `comfy.ops` Linear, Conv1d, Conv2d and Conv3d with ComfyUI's stock cast forward (plain
and manual_cast ops). Left stock on purpose: GroupNorm, LayerNorm and RMSNorm (their cast weights
are vectors, a few hundred KB for a whole UNet); Embedding (a token lookup saves only the ids, and
DTI splices its rows after the lookup); ConvTranspose (decoders only, not in the training graph);
layer classes that override the cast forward (fp8 matmul ops, scaled-fp8 ops, other packs' ops),
whose forward computes something else from the cast weight.
"""

from __future__ import annotations

import contextlib
import logging
import types
from collections.abc import Callable, Iterator

import comfy.ops
import torch

log = logging.getLogger("ComfyUI-DTI")

_Op = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _linear(module, x, weight, bias):
    return torch.nn.functional.linear(x, weight, bias)


def _conv(module, x, weight, bias):
    return module._conv_forward(x, weight, bias)


def _stock_ops() -> list[tuple[type, _Op]]:
    ops = comfy.ops.disable_weight_init  # manual_cast's layers inherit these forwards
    return [(ops.Linear, _linear), (ops.Conv1d, _conv), (ops.Conv2d, _conv), (ops.Conv3d, _conv)]


def covered_op(module: torch.nn.Module) -> _Op | None:
    """The op a layer applies to its cast weight, when it is one this module covers exactly."""
    for cls, op in _stock_ops():
        if isinstance(module, cls) and type(module).forward_comfy_cast_weights is cls.forward_comfy_cast_weights:
            return op
    return None


class _Recast:
    """What is saved instead of a cast weight (or bias): how to make it again."""

    __slots__ = ("module", "role", "dtype", "device", "size", "stride", "offset", "numel")

    def __init__(self, module, role: str, dtype, device, saved: torch.Tensor, numel: int) -> None:
        self.module, self.role, self.dtype, self.device = module, role, dtype, device
        self.size, self.stride, self.offset = saved.size(), saved.stride(), saved.storage_offset()
        self.numel = numel

    def tensor(self) -> torch.Tensor:
        with torch.no_grad():
            weight, bias = comfy.ops.cast_bias_weight(self.module, dtype=self.dtype, device=self.device, bias_dtype=self.dtype)
        source = weight if self.role == "weight" else bias
        if source is None or source.numel() != self.numel:
            raise RuntimeError(
                f"the {self.role} of {type(self.module).__name__} changed between forward and backward "
                f"(now {None if source is None else tuple(source.shape)}); keep the model's weights and patches "
                "fixed while a training step runs"
            )
        return source.as_strided(self.size, self.stride, self.offset)


class _Kept:
    __slots__ = ("value",)

    def __init__(self, value) -> None:
        self.value = value


def _outer_hooks():
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top(False) if top is not None else None


def _can_hook() -> bool:
    enabled = getattr(torch._C._autograd, "_saved_tensors_hooks_is_enabled", None)
    return hasattr(torch._C._autograd, "_top_saved_tensors_default_hooks") and (enabled is None or enabled())


def _recast_hooks(module, dtype, device, copies: dict[str, torch.Tensor]) -> torch.autograd.graph.saved_tensors_hooks:
    """Hooks that replace saved views of ``copies`` by a recipe; the rest go to the enclosing hooks."""
    # Identify copies by storage, never keep them: the closures must not hold the tensors alive.
    keys = {(t.untyped_storage().data_ptr(), t.dtype, t.device): (role, t.numel()) for role, t in copies.items()}
    outer = _outer_hooks()

    def pack(t: torch.Tensor):
        hit = keys.get((t.untyped_storage().data_ptr(), t.dtype, t.device)) if t.layout == torch.strided else None
        if hit is not None:
            return _Recast(module, hit[0], dtype, device, t, hit[1])
        return _Kept(outer[0](t) if outer is not None else t)

    def unpack(packed):
        if isinstance(packed, _Recast):
            return packed.tensor()
        return outer[1](packed.value) if outer is not None else packed.value

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


def _recasting_forward(self, input, *args, _op: _Op, _original, **kwargs):
    if args or kwargs or not (torch.is_grad_enabled() and input.requires_grad):
        return _original(input, *args, **kwargs)  # sampling, or nothing to differentiate: stock path
    weight, bias = comfy.ops.cast_bias_weight(self, input)  # exactly the stock forward's cast
    copies = {role: t for role, t, own in (("weight", weight, self.weight), ("bias", bias, self.bias))
              if t is not None and t is not own}
    # No copy (storage already matches): autograd saves the parameter itself, nothing to gain.
    # A copy that requires grad (trainable patches): its graph must stay; leave it to autograd.
    if not copies or any(t.requires_grad for t in copies.values()) or not _can_hook():
        return _op(self, input, weight, bias)
    with _recast_hooks(self, input.dtype, input.device, copies):
        return _op(self, input, weight, bias)


@contextlib.contextmanager
def recast_in_backward(*modules: torch.nn.Module) -> Iterator[int]:
    """While open, covered `comfy.ops` layers in ``modules`` keep no cast weight for backward.

    Engages per call, only when a gradient is being recorded through the layer and ComfyUI's cast
    made a new tensor; otherwise the layer runs exactly its stock forward. Yields the number of
    layers covered; their instance attributes are restored on exit.
    """
    patched: list[torch.nn.Module] = []
    try:
        for module in modules:
            for sub in module.modules():
                op = covered_op(sub)
                if op is None or "forward_comfy_cast_weights" in sub.__dict__:
                    continue
                original = sub.forward_comfy_cast_weights

                def forward(self, input, *args, _op=op, _original=original, **kwargs):
                    return _recasting_forward(self, input, *args, _op=_op, _original=_original, **kwargs)

                sub.forward_comfy_cast_weights = types.MethodType(forward, sub)
                patched.append(sub)
        log.debug("ComfyUI-DTI: %d layers re-cast their weights in backward", len(patched))
        yield len(patched)
    finally:
        for sub in patched:
            sub.__dict__.pop("forward_comfy_cast_weights", None)

"""What the nodes need from a text encoder, whatever object the user connected.

ComfyUI's CLIP (SD1.x, SDXL, Lumina 2's Gemma) and ComfyUI_ExtraModels' GEMMA dict (SANA) differ in
every detail; the nodes and the training session only talk to this small surface.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from .clip_text import PLACEHOLDER, ClipTextSide, encode_conditioning
from .families import Family, UnsupportedModelError, detect_clip_family


class ClipEncoder:
    """A comfy.sd.CLIP of a known family."""

    def __init__(self, clip) -> None:
        self.clip = clip
        self.family: Family = detect_clip_family(clip)

    @property
    def prompt_wrapper(self) -> str:
        return self.family.prompt_wrapper

    def _sub(self, key: str):
        attr = next(s.attr for s in self.family.encoders if s.key == key)
        return getattr(self.clip.cond_stage_model, attr)

    def table(self, key: str) -> torch.Tensor:
        """The raw token-embedding table: the space concept rows live in."""
        return self._sub(key).transformer.get_input_embeddings().weight

    def decode(self, key: str, ids: list[int]) -> list[str]:
        attr = next(s.attr for s in self.family.encoders if s.key == key)
        inv = getattr(getattr(self.clip.tokenizer, attr), "inv_vocab", {})
        return [inv.get(int(i), f"<{int(i)}>") for i in ids]

    def position_probe(self, key: str) -> tuple[torch.Tensor, torch.nn.Module] | None:
        """(additive position table, first LayerNorm) for CLIP encoders; None for rotary ones."""
        text_model = getattr(self._sub(key).transformer, "text_model", None)
        if text_model is None or not hasattr(text_model, "embeddings"):
            return None
        return text_model.embeddings.position_embedding.weight, text_model.encoder.layers[0].layer_norm1

    def text_side(self, name: str) -> ClipTextSide:
        return ClipTextSide(self.clip, self.family, name, self.prompt_wrapper)

    def conditioning(self, name: str, prompt: str, vectors: dict[str, torch.Tensor]) -> list:
        return encode_conditioning(self.clip, self.family, name, prompt, vectors, self.prompt_wrapper)

    @property
    def patchers(self) -> list[Any]:
        """ComfyUI patchers to load with the MODEL before training."""
        return [self.clip.patcher]

    @property
    def modules(self) -> list[torch.nn.Module]:
        return [self.clip.cond_stage_model]

    @property
    def device(self) -> torch.device:
        return self.clip.patcher.load_device

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """Temporary changes the encoder needs for backward; all undone on exit."""
        from .host import out_of_place_clip_layers

        with out_of_place_clip_layers(self.clip.cond_stage_model):
            yield


def text_encoder(obj) -> ClipEncoder:
    """The adapter for a CLIP socket's value (ComfyUI CLIP, or ExtraModels' GEMMA for SANA)."""
    if obj is None:
        raise UnsupportedModelError(
            "no text encoder connected: if the CLIP comes from a checkpoint loader, that checkpoint has no text "
            "encoder; load one with a CLIP loader node (or ExtraModels' Gemma Loader for SANA)"
        )
    if isinstance(obj, dict) and {"tokenizer", "text_encoder"} <= set(obj):
        from .sana import SanaGemmaEncoder

        return SanaGemmaEncoder(obj)
    return ClipEncoder(obj)


__all__ = ["PLACEHOLDER", "ClipEncoder", "text_encoder"]

"""What the nodes and the training session need from a text encoder, whatever object the user connected.

ComfyUI's CLIP (SD1.x, SDXL, Lumina 2's Gemma) and ComfyUI_ExtraModels' GEMMA dict (SANA) differ in
every detail; both adapters implement ``TextEncoder`` and nothing else is asked of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

import torch

from ..dti.errors import UnsupportedModelError
from ..dti.trainer import TextSide
from .autograd import out_of_place_residuals
from .clip_text import ClipTextSide, encode_conditioning, token_table
from .families import HostFamily, detect_clip_family


class OpenTextSide(TextSide, Protocol):
    """A TextSide used as a context manager: what it hooks into the encoder exists only while open."""

    def __enter__(self) -> OpenTextSide: ...

    def __exit__(self, *exc: object) -> None: ...


class TextEncoder(Protocol):
    """The text-encoder seam: one adapter per kind of host object."""

    family: HostFamily

    def table(self, key: str) -> torch.Tensor:
        """The raw token-embedding table of an encoder: the space concept rows live in."""

    def decode(self, key: str, ids: list[int]) -> list[str]:
        """Token strings for ids, for reports."""

    def position_probe(self, key: str) -> tuple[torch.Tensor, torch.nn.Module] | None:
        """(additive position table, first LayerNorm), or None where positions are not additive."""

    def text_side(self, name: str) -> OpenTextSide:
        """The trainer's TextSide for a concept called ``name``; use it in a ``with`` block."""

    def conditioning(self, name: str, prompt: str, vectors: dict[str, torch.Tensor]) -> list:
        """CONDITIONING for a prompt with the concept's rows, exactly as the stock encode would give it."""

    def plain_conditioning(self, prompt: str) -> list:
        """CONDITIONING for a prompt without the concept, as the stock text-encode node gives it."""

    @property
    def patchers(self) -> list[Any]:
        """ComfyUI patchers to load with the MODEL before training (none for models ComfyUI does not manage)."""

    @property
    def modules(self) -> list[torch.nn.Module]:
        """Modules whose weights autograd must be able to use."""

    @property
    def device(self) -> torch.device: ...

    def training(self) -> contextlib.AbstractContextManager[None]:
        """Temporary changes the encoder needs for backward; all undone on exit."""


class ClipEncoder:
    """A comfy.sd.CLIP of a known family."""

    def __init__(self, clip) -> None:
        self.clip = clip
        self.family: HostFamily = detect_clip_family(clip)

    def _sub(self, key: str):
        return getattr(self.clip.cond_stage_model, self.family.attr(key))

    def table(self, key: str) -> torch.Tensor:
        return token_table(self._sub(key), self.family.encoder(key))

    def decode(self, key: str, ids: list[int]) -> list[str]:
        inv = getattr(getattr(self.clip.tokenizer, self.family.tokenizer_attr(key)), "inv_vocab", {})
        return [inv.get(int(i), f"<{int(i)}>") for i in ids]

    def position_probe(self, key: str) -> tuple[torch.Tensor, torch.nn.Module] | None:
        text_model = getattr(self._sub(key).transformer, "text_model", None)
        if text_model is None or not hasattr(text_model, "embeddings"):
            return None  # rotary positions (Gemma) or relative position biases in attention (T5)
        return text_model.embeddings.position_embedding.weight, text_model.encoder.layers[0].layer_norm1

    def text_side(self, name: str) -> ClipTextSide:
        return ClipTextSide(self.clip, self.family, name)

    def conditioning(self, name: str, prompt: str, vectors: dict[str, torch.Tensor]) -> list:
        return encode_conditioning(self.clip, self.family, name, prompt, vectors)

    def plain_conditioning(self, prompt: str) -> list:
        # What CLIPTextEncode does.
        return self.clip.encode_from_tokens_scheduled(self.clip.tokenize(prompt))

    @property
    def patchers(self) -> list[Any]:
        return [self.clip.patcher]

    @property
    def modules(self) -> list[torch.nn.Module]:
        return [self.clip.cond_stage_model]

    @property
    def device(self) -> torch.device:
        return self.clip.patcher.load_device

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        with out_of_place_residuals(self.clip.cond_stage_model):
            yield


def text_encoder(obj) -> TextEncoder:
    """The adapter for a CLIP socket's value (ComfyUI CLIP, or ExtraModels' GEMMA dict for SANA)."""
    if obj is None:
        raise UnsupportedModelError(
            "no text encoder connected: if the CLIP comes from a checkpoint loader, that checkpoint has no text "
            "encoder; load one with a CLIP loader node (or ExtraModels' Gemma Loader for SANA)"
        )
    if isinstance(obj, dict) and {"tokenizer", "text_encoder"} <= set(obj):
        from .sana import SanaGemmaEncoder

        return SanaGemmaEncoder(obj)
    return ClipEncoder(obj)

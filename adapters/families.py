"""Which row of the family table (dti/families.py) a ComfyUI object belongs to.

Only host facts live here: the ComfyUI classes of each family, the attribute under which each
encoder sits on ComfyUI's CLIP, and the text ComfyUI wraps prompts in. Everything else — keys,
widths, encoder identities, labels, defaults — comes from the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import comfy.model_base
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.text_encoders.flux
import comfy.text_encoders.lumina2
import comfy.text_encoders.pixart_t5
import comfy.text_encoders.sd3_clip

from ..dti.errors import UnsupportedModelError
from ..dti.families import FAMILIES, Family, supported_text
from ..dti.templates import PLACEHOLDER


@dataclass(frozen=True, eq=False)  # compared and hashed as the family row; the host maps hold dicts
class HostFamily(Family):
    """A family row plus what ComfyUI adds: where its encoders sit and how its prompts are wrapped."""

    attrs: dict[str, str] = field(default_factory=dict)  # encoder key → attribute of cond_stage_model and tokenizer
    prompt_wrapper: str = PLACEHOLDER  # text around every prompt, training and use alike
    # encoder key → attribute of clip.tokenizer, where it differs from ``attrs`` (Chroma's T5
    # sits on the model as "t5xxl" but on its SD1Tokenizer-style tokenizer as "clip_t5xxl")
    tokenizer_attrs: dict[str, str] | None = None
    clip_match: Callable[[Any], bool] = field(default=lambda model: False)  # is this cond_stage_model ours?
    model_match: Callable[[Any], bool] = field(default=lambda base: False)  # is this BaseModel ours?
    clip_loader_hint: str = ""  # how to load every encoder the family needs, for the error when one is missing

    @classmethod
    def of(cls, row: Family, attrs: dict[str, str], **host: Any) -> HostFamily:
        return cls(**{f.name: getattr(row, f.name) for f in fields(Family)}, attrs=attrs, **host)

    def attr(self, key: str) -> str:
        return self.attrs[key]

    def tokenizer_attr(self, key: str) -> str:
        return (self.tokenizer_attrs or self.attrs).get(key, self.attrs[key])


def _lumina2_system_prompt() -> str:
    """ComfyUI's default Lumina 2 system prompt (CLIPTextEncodeLumina2's first choice)."""
    try:
        from comfy_extras.nodes_lumina2 import CLIPTextEncodeLumina2

        system = next(iter(CLIPTextEncodeLumina2.SYSTEM_PROMPT.values()))
    except (ImportError, AttributeError, StopIteration):
        system = ("You are an assistant designed to generate superior images with the superior degree of image-text "
                  "alignment based on textual prompts or user prompts.")
    return f"{system} <Prompt Start> {{}}"


def _sd1_clip(model) -> bool:
    # Lumina 2's Gemma and Chroma's T5 stacks are SD1ClipModel subclasses too; SD1.x's holds CLIP-L
    return isinstance(model, comfy.sd1_clip.SD1ClipModel) and getattr(model, "clip", None) == "clip_l"


def _lumina2_clip(model) -> bool:
    return isinstance(model, comfy.text_encoders.lumina2.LuminaModel) and getattr(model, "clip", None) == "gemma2_2b"


HOST_FAMILIES: dict[str, HostFamily] = {f.name: f for f in (
    HostFamily.of(FAMILIES["sdxl"], {"clip_l": "clip_l", "clip_g": "clip_g"},
                  clip_match=lambda m: isinstance(m, comfy.sdxl_clip.SDXLClipModel),
                  model_match=lambda b: isinstance(b, comfy.model_base.SDXL)),
    # SD1.x has no model subclass of its own (and SD2.x, also a BaseModel, has no CLIP-L)
    HostFamily.of(FAMILIES["sd1"], {"clip_l": "clip_l"}, clip_match=_sd1_clip,
                  model_match=lambda b: type(b) is comfy.model_base.BaseModel),
    HostFamily.of(FAMILIES["lumina2"], {"gemma": "gemma2_2b"}, prompt_wrapper=_lumina2_system_prompt(),
                  clip_match=_lumina2_clip, model_match=lambda b: isinstance(b, comfy.model_base.Lumina2)),
    # An HF Gemma2 in ExtraModels' GEMMA dict (text_encoder() picks its adapter); its model class cannot be imported here
    HostFamily.of(FAMILIES["sana"], {"gemma": "text_encoder"}, clip_match=lambda m: False,
                  model_match=lambda b: type(b).__name__ == "EXM_Sana_Model"),
    # dev, schnell, Fill; Chroma subclasses Flux with another text encoder
    HostFamily.of(FAMILIES["flux"], {"clip_l": "clip_l", "t5xxl": "t5xxl"},
                  clip_match=lambda m: isinstance(m, comfy.text_encoders.flux.FluxClipModel),
                  model_match=lambda b: type(b) is comfy.model_base.Flux),
    HostFamily.of(FAMILIES["sd3"], {"clip_l": "clip_l", "clip_g": "clip_g", "t5xxl": "t5xxl"},
                  clip_match=lambda m: isinstance(m, comfy.text_encoders.sd3_clip.SD3ClipModel),
                  model_match=lambda b: isinstance(b, comfy.model_base.SD3),
                  clip_loader_hint="load CLIP-L, CLIP-G and T5-XXL together with TripleCLIPLoader (or a checkpoint that "
                                   "includes them)"),
    # The T5-only CLIP that CLIPLoader gives for type "chroma"; Chroma Radiance works in pixel space: not covered
    HostFamily.of(FAMILIES["chroma"], {"t5xxl": "t5xxl"}, tokenizer_attrs={"t5xxl": "clip_t5xxl"},
                  clip_match=lambda m: isinstance(m, comfy.text_encoders.pixart_t5.PixArtT5XXL),
                  model_match=lambda b: type(b) is comfy.model_base.Chroma),
)}


def detect_clip_family(clip) -> HostFamily:
    """The family of a comfy.sd.CLIP, by the class of its text-encoder stack."""
    model = getattr(clip, "cond_stage_model", None)
    for family in HOST_FAMILIES.values():
        if family.clip_match(model):
            # DualCLIPLoader / CLIPLoader set-ups leave encoders out (None); a concept needs all of them.
            missing = [family.attr(k) for k in family.encoder_keys if getattr(model, family.attr(k), None) is None]
            if missing:
                raise UnsupportedModelError(
                    f"this {family.short} CLIP lacks {', '.join(missing)}; DTI trains {family.short} concepts for all of "
                    f"{', '.join(e.label for e in family.encoders)} — {family.clip_loader_hint or 'load all of them'}"
                )
            return family
    name = type(model).__name__ if model is not None else type(clip).__name__
    known = sorted({a for f in HOST_FAMILIES.values() for a in f.attrs.values()} | {"clip_h", "llama"})
    parts = [k for k in known if getattr(model, k, None) is not None]
    raise UnsupportedModelError(
        f"this CLIP ({name}, encoders: {', '.join(parts) or 'unknown'}) is not a family DTI can train; "
        f"supported: {supported_text()}"
    )


def check_model_matches(model_patcher, family: HostFamily) -> None:
    """Refuse a MODEL whose conditioning does not come from this text family."""
    base = getattr(model_patcher, "model", None)
    if base is None or not hasattr(base, "diffusion_model"):
        raise UnsupportedModelError(f"expected a ComfyUI MODEL, got {type(model_patcher).__name__}")
    if not family.model_match(base):
        raise UnsupportedModelError(
            f"the MODEL is a {type(base).__name__} but the CLIP is {family.label}; connect the MODEL and CLIP "
            "of the same checkpoint"
        )

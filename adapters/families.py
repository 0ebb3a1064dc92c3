"""Which row of the family table (dti/families.py) a ComfyUI object belongs to.

Only host facts live here: the ComfyUI classes of each family, the attribute under which each
encoder sits on ComfyUI's CLIP, and the text ComfyUI wraps prompts in. Everything else — keys,
widths, encoder identities, labels, defaults — comes from the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

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


@dataclass(frozen=True)
class HostFamily(Family):
    """A family row plus what ComfyUI adds: where its encoders sit and how its prompts are wrapped."""

    attrs: dict[str, str] = field(default_factory=dict)  # encoder key → attribute of cond_stage_model and tokenizer
    prompt_wrapper: str = PLACEHOLDER  # text around every prompt, training and use alike
    # encoder key → attribute of clip.tokenizer, where it differs from ``attrs`` (Chroma's T5
    # sits on the model as "t5xxl" but on its SD1Tokenizer-style tokenizer as "clip_t5xxl")
    tokenizer_attrs: dict[str, str] | None = None

    @classmethod
    def of(cls, row: Family, attrs: dict[str, str], prompt_wrapper: str = PLACEHOLDER,
           tokenizer_attrs: dict[str, str] | None = None) -> HostFamily:
        return cls(**{f.name: getattr(row, f.name) for f in fields(Family)}, attrs=attrs, prompt_wrapper=prompt_wrapper,
                   tokenizer_attrs=tokenizer_attrs)

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


HOST_FAMILIES: dict[str, HostFamily] = {
    "sdxl": HostFamily.of(FAMILIES["sdxl"], {"clip_l": "clip_l", "clip_g": "clip_g"}),
    "sd1": HostFamily.of(FAMILIES["sd1"], {"clip_l": "clip_l"}),
    "lumina2": HostFamily.of(FAMILIES["lumina2"], {"gemma": "gemma2_2b"}, prompt_wrapper=_lumina2_system_prompt()),
    "sana": HostFamily.of(FAMILIES["sana"], {"gemma": "text_encoder"}),  # an HF Gemma2 in ExtraModels' GEMMA dict
    "flux": HostFamily.of(FAMILIES["flux"], {"clip_l": "clip_l", "t5xxl": "t5xxl"}),
    "sd3": HostFamily.of(FAMILIES["sd3"], {"clip_l": "clip_l", "clip_g": "clip_g", "t5xxl": "t5xxl"}),
    "chroma": HostFamily.of(FAMILIES["chroma"], {"t5xxl": "t5xxl"}, tokenizer_attrs={"t5xxl": "clip_t5xxl"}),
}


def detect_clip_family(clip) -> HostFamily:
    """The family of a comfy.sd.CLIP, by the class of its text-encoder stack."""
    model = getattr(clip, "cond_stage_model", None)
    if isinstance(model, comfy.sdxl_clip.SDXLClipModel):
        return HOST_FAMILIES["sdxl"]
    if isinstance(model, comfy.text_encoders.lumina2.LuminaModel) and getattr(model, "clip", None) == "gemma2_2b":
        return HOST_FAMILIES["lumina2"]
    if isinstance(model, comfy.sd1_clip.SD1ClipModel) and getattr(model, "clip", None) == "clip_l":
        return HOST_FAMILIES["sd1"]
    if isinstance(model, comfy.text_encoders.flux.FluxClipModel):
        return HOST_FAMILIES["flux"]
    if isinstance(model, comfy.text_encoders.sd3_clip.SD3ClipModel):
        # DualCLIPLoader / CLIPLoader setups leave encoders out (None); a concept needs all three.
        missing = [k for k in ("clip_l", "clip_g", "t5xxl") if getattr(model, k, None) is None]
        if missing:
            raise UnsupportedModelError(
                f"this SD3 CLIP lacks {', '.join(missing)}; DTI trains SD3.5 concepts for all three encoders — load "
                "CLIP-L, CLIP-G and T5-XXL together with TripleCLIPLoader (or a checkpoint that includes them)"
            )
        return HOST_FAMILIES["sd3"]
    if isinstance(model, comfy.text_encoders.pixart_t5.PixArtT5XXL):
        return HOST_FAMILIES["chroma"]  # the T5-only CLIP that CLIPLoader gives for type "chroma" (and "pixart")
    name = type(model).__name__ if model is not None else type(clip).__name__
    parts = [k for k in ("clip_l", "clip_g", "clip_h", "t5xxl", "gemma2_2b", "llama") if getattr(model, k, None) is not None]
    raise UnsupportedModelError(
        f"this CLIP ({name}, encoders: {', '.join(parts) or 'unknown'}) is not a family DTI can train; "
        f"supported: {supported_text()}"
    )


def _is_model_of(base, family: HostFamily) -> bool:
    if family.name == "sd1":
        return type(base) is comfy.model_base.BaseModel  # SD1.x has no subclass of its own; SD2.x has no CLIP-L
    if family.name == "sdxl":
        return isinstance(base, comfy.model_base.SDXL)
    if family.name == "lumina2":
        return isinstance(base, comfy.model_base.Lumina2)
    if family.name == "sana":
        return type(base).__name__ == "EXM_Sana_Model"  # ComfyUI_ExtraModels' SANA (no class to import here)
    if family.name == "flux":
        return type(base) is comfy.model_base.Flux  # dev, schnell, Fill; Chroma subclasses Flux with another encoder
    if family.name == "sd3":
        return isinstance(base, comfy.model_base.SD3)
    if family.name == "chroma":
        return type(base) is comfy.model_base.Chroma  # Chroma Radiance works in pixel space: not covered
    return False


def check_model_matches(model_patcher, family: HostFamily) -> None:
    """Refuse a MODEL whose conditioning does not come from this text family."""
    base = getattr(model_patcher, "model", None)
    if base is None or not hasattr(base, "diffusion_model"):
        raise UnsupportedModelError(f"expected a ComfyUI MODEL, got {type(model_patcher).__name__}")
    if not _is_model_of(base, family):
        raise UnsupportedModelError(
            f"the MODEL is a {type(base).__name__} but the CLIP is {family.label}; connect the MODEL and CLIP "
            "of the same checkpoint"
        )

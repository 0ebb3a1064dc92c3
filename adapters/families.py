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
import comfy.text_encoders.lumina2

from ..dti.errors import UnsupportedModelError
from ..dti.families import FAMILIES, Family, supported_text
from ..dti.templates import PLACEHOLDER


@dataclass(frozen=True)
class HostFamily(Family):
    """A family row plus what ComfyUI adds: where its encoders sit and how its prompts are wrapped."""

    attrs: dict[str, str] = field(default_factory=dict)  # encoder key → attribute of cond_stage_model and tokenizer
    prompt_wrapper: str = PLACEHOLDER  # text around every prompt, training and use alike

    @classmethod
    def of(cls, row: Family, attrs: dict[str, str], prompt_wrapper: str = PLACEHOLDER) -> HostFamily:
        return cls(**{f.name: getattr(row, f.name) for f in fields(Family)}, attrs=attrs, prompt_wrapper=prompt_wrapper)

    def attr(self, key: str) -> str:
        return self.attrs[key]


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

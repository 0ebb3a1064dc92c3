"""Model families the pack trains and encodes for, as rows of a table.

Supporting another CLIP/Gemma family means adding a row: which sub-encoders carry a learned
vector, where their tokenizers live, how their outputs combine, and the training defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import comfy.model_base
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.text_encoders.lumina2


class UnsupportedModelError(ValueError):
    """A CLIP or MODEL this pack cannot train or encode for; the message lists what it supports."""


@dataclass(frozen=True)
class SubEncoder:
    key: str  # our encoder key, also the file key family (clip_l, clip_g, gemma)
    attr: str  # attribute of clip.cond_stage_model and clip.tokenizer (clip_l, clip_g, gemma2_2b)
    encoder_id: str  # what space the rows live in; a file for another id is refused


@dataclass(frozen=True)
class TrainDefaults:
    resolution: int
    batch_size: int
    grad_accum: int
    steps: int
    lr: float  # effective angle per step
    kappa: float


@dataclass(frozen=True)
class Family:
    name: str
    label: str
    encoders: tuple[SubEncoder, ...]
    combine: str  # "concat": features side by side, pooled from the last (SDXL); "single"
    defaults: TrainDefaults
    model_classes: tuple[type, ...]  # comfy.model_base classes this text family conditions
    # Text around every prompt, training and use alike ("{}" is the user's prompt).
    prompt_wrapper: str = "{}"
    # The model reads one caption length for a whole batch: batch only identical prompts.
    identical_prompt_batches: bool = False
    # Stock prompts load `embedding:name` for this encoder (ComfyUI never does for Gemma).
    stock_embedding_prompts: bool = True


def _lumina2_system_prompt() -> str:
    """ComfyUI's default Lumina 2 system prompt (CLIPTextEncodeLumina2's first choice)."""
    try:
        from comfy_extras.nodes_lumina2 import CLIPTextEncodeLumina2

        system = next(iter(CLIPTextEncodeLumina2.SYSTEM_PROMPT.values()))
    except (ImportError, AttributeError, StopIteration):
        system = ("You are an assistant designed to generate superior images with the superior degree of image-text "
                  "alignment based on textual prompts or user prompts.")
    return f"{system} <Prompt Start> {{}}"


CLIP_L = SubEncoder("clip_l", "clip_l", "clip-l")
CLIP_G = SubEncoder("clip_g", "clip_g", "clip-g")
GEMMA_LUMINA = SubEncoder("gemma", "gemma2_2b", "gemma-2-2b")
GEMMA_SANA = SubEncoder("gemma", "text_encoder", "gemma-2-2b-it")  # an HF Gemma2 in ExtraModels' GEMMA dict

# Reference defaults (§1): SDXL 768², batch 4, 400 steps, η 0.01×4, κ 1e-4.
SDXL_DEFAULTS = TrainDefaults(resolution=768, batch_size=4, grad_accum=1, steps=400, lr=0.04, kappa=1e-4)
SD1_DEFAULTS = TrainDefaults(resolution=512, batch_size=4, grad_accum=1, steps=400, lr=0.04, kappa=1e-4)
# SANA's reference defaults, used for Gemma-2 flow models: batch 2 × 2 accumulation, κ 5e-5.
GEMMA_DEFAULTS = TrainDefaults(resolution=1024, batch_size=2, grad_accum=2, steps=500, lr=0.04, kappa=5e-5)

FAMILIES: dict[str, Family] = {
    "sdxl": Family("sdxl", "SDXL (CLIP-L + CLIP-G)", (CLIP_L, CLIP_G), "concat", SDXL_DEFAULTS, (comfy.model_base.SDXL,)),
    "sd1": Family("sd1", "SD1.x (CLIP-L)", (CLIP_L,), "single", SD1_DEFAULTS, (comfy.model_base.BaseModel,)),
    "lumina2": Family("lumina2", "Lumina 2 (Gemma-2-2B)", (GEMMA_LUMINA,), "single", GEMMA_DEFAULTS, (comfy.model_base.Lumina2,),
                      prompt_wrapper=_lumina2_system_prompt(), stock_embedding_prompts=False),
    "sana": Family("sana", "SANA (Gemma-2-2B-it)", (GEMMA_SANA,), "single", GEMMA_DEFAULTS, (),
                   identical_prompt_batches=True, stock_embedding_prompts=False),
}

SUPPORTED = "SDXL (CLIP-L + CLIP-G), SD1.x (CLIP-L), Lumina 2 (Gemma-2-2B) and SANA (through ComfyUI_ExtraModels)"


def detect_clip_family(clip) -> Family:
    """The family of a comfy.sd.CLIP, by the class of its text-encoder stack."""
    if clip is None:
        raise UnsupportedModelError(
            "no CLIP connected: if it comes from a checkpoint loader, that checkpoint has no text encoder; "
            "load one with a CLIP loader node"
        )
    model = getattr(clip, "cond_stage_model", None)
    if isinstance(model, comfy.sdxl_clip.SDXLClipModel):
        return FAMILIES["sdxl"]
    if isinstance(model, comfy.text_encoders.lumina2.LuminaModel) and getattr(model, "clip", None) == "gemma2_2b":
        return FAMILIES["lumina2"]
    if isinstance(model, comfy.sd1_clip.SD1ClipModel) and getattr(model, "clip", None) == "clip_l":
        return FAMILIES["sd1"]
    name = type(model).__name__ if model is not None else type(clip).__name__
    parts = [k for k in ("clip_l", "clip_g", "clip_h", "t5xxl", "gemma2_2b", "llama") if hasattr(model, k)]
    raise UnsupportedModelError(
        f"this CLIP ({name}, encoders: {', '.join(parts) or 'unknown'}) is not a family DTI can train; supported: {SUPPORTED}"
    )


def check_model_matches(model_patcher, family: Family) -> None:
    """Refuse a MODEL whose conditioning does not come from this text family."""
    base = getattr(model_patcher, "model", None)
    if base is None or not hasattr(base, "diffusion_model"):
        raise UnsupportedModelError(f"expected a ComfyUI MODEL, got {type(model_patcher).__name__}")
    if family.name == "sd1":
        ok = type(base) is comfy.model_base.BaseModel  # SD1.x has no subclass of its own; SD2.x has no CLIP-L
    elif family.name == "sana":
        ok = type(base).__name__ == "EXM_Sana_Model"  # ComfyUI_ExtraModels' SANA (no class to import here)
    else:
        ok = isinstance(base, family.model_classes)
    if not ok:
        raise UnsupportedModelError(
            f"the MODEL is a {type(base).__name__} but the CLIP is {family.label}; connect the MODEL and CLIP "
            "of the same checkpoint"
        )

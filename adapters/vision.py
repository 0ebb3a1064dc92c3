"""The paper's concept metrics from ComfyUI's CLIP_VISION models (comfy/clip_vision.py).

Image similarity: mean pairwise cosine of image embeddings, generated × reference (CLIP-I with a
CLIP vision model, DINO with DINOv2). Text alignment (CLIP-T): mean cosine of each generated image
with its prompt, where a text tower shares the image tower's embedding space.

Images go through ComfyUI's own ``encode_image`` (resize the short side to the model's size with
antialiased bicubic, center crop, round to 8-bit levels, normalize with the model's mean/std).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..dti.errors import InputError, UnsupportedModelError
from .images import lines_per_image

# Models ComfyUI's CLIPVisionLoader builds (comfy/clip_vision.py IMAGE_ENCODERS), by model_type.
KINDS = {"clip_vision_model": "CLIP", "siglip_vision_model": "SigLIP", "dinov2": "DINOv2"}


@dataclass(frozen=True)
class VisionModel:
    kind: str  # "CLIP", "SigLIP" or "DINOv2"
    width: int  # width of image_embeds
    image_size: int

    @property
    def image_metric(self) -> str:
        return "DINO" if self.kind == "DINOv2" else f"{self.kind}-I"


def describe(clip_vision) -> VisionModel:
    model = getattr(clip_vision, "model", None)
    if model is None or not hasattr(clip_vision, "encode_image"):
        raise UnsupportedModelError(f"expected a CLIP_VISION from ComfyUI's Load CLIP Vision node, got {type(clip_vision).__name__}")
    if hasattr(model, "vision_model"):
        kind = "SigLIP" if getattr(clip_vision, "return_all_hidden_states", False) else "CLIP"
        projection = getattr(model, "visual_projection", None)
        width = projection.weight.shape[0] if isinstance(projection, torch.nn.Module) else model.vision_model.post_layernorm.weight.shape[0]
    else:
        kind = "DINOv2"
        width = model.layernorm.weight.shape[0]
    return VisionModel(kind, int(width), int(getattr(clip_vision, "image_size", 224)))


def image_embeds(clip_vision, images: list[torch.Tensor]) -> torch.Tensor:
    """(N, D) fp32 image embeddings, one image at a time (sizes may differ), through encode_image."""
    rows = []
    for image in images:
        batch = image if image.ndim == 4 else image.unsqueeze(0)
        rows.append(clip_vision.encode_image(batch[..., :3], crop=True)["image_embeds"].float())
    return torch.cat(rows)


def mean_pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over every (i, j) of cos(a_i, b_j): the reference's similarity matrix, averaged."""
    a = torch.nn.functional.normalize(a.double(), dim=-1)
    b = torch.nn.functional.normalize(b.double(), dim=-1)
    return float((a @ b.T).mean())


def mean_paired_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean of cos(a_i, b_i): each generated image with its own prompt (the reference's "diag")."""
    a = torch.nn.functional.normalize(a.double(), dim=-1)
    b = torch.nn.functional.normalize(b.double(), dim=-1)
    return float((a * b).sum(-1).mean())


def text_pairing(vision: VisionModel, clip) -> str | None:
    """Why CLIP-T cannot be computed for this vision model and text encoder, or None when it can.

    Only towers trained together share an embedding space. The pack's text encoders that have one
    are SDXL's CLIP-G (OpenCLIP ViT-bigG/14: its projected pooled output, which ComfyUI loads and
    SDXL uses) with the bigG vision tower's projected image embeds. CLIP-L as loaded from SD1/SDXL
    checkpoints has no text projection (the checkpoints never contain it; ComfyUI leaves the layer
    unloaded and returns the unprojected pooled output), so it is not in ViT-L's image space.
    """
    if vision.kind == "DINOv2":
        return "DINOv2 has no text tower: it measures image similarity only (DINO); use a CLIP vision model for CLIP-T"
    if vision.kind == "SigLIP":
        return ("ComfyUI has no SigLIP text encoder to pair with this SigLIP vision model; CLIP-T needs SDXL's CLIP with "
                "the CLIP ViT-bigG vision model")
    sub = getattr(getattr(clip, "cond_stage_model", None), "clip_g", None)
    if sub is None:
        return ("this text encoder has no CLIP-G: CLIP-T pairs SDXL's CLIP-G with the CLIP ViT-bigG vision model. CLIP-L from "
                "SD1/SDXL checkpoints is not usable: they carry no CLIP-L text projection, so its pooled output is not in "
                "ViT-L's image-embedding space")
    text_width = int(sub.transformer.text_projection.weight.shape[0])
    if text_width != vision.width:
        return (f"the vision model's image embeds are {vision.width} wide but SDXL's CLIP-G text embeds are {text_width}: "
                "CLIP-T pairs CLIP-G with the CLIP ViT-bigG vision model (1280) only; ViT-L (768) and ViT-H (1024) belong "
                "to other text towers")
    return None


def text_embeds(clip, prompts: list[str]) -> torch.Tensor:
    """(N, D) CLIP-G projected pooled outputs of plain prompts (SDXL's pooled_output, as CLIPTextEncode gives it)."""
    rows = []
    for prompt in prompts:
        pooled = clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True)[1]
        rows.append(pooled.float().reshape(1, -1))
    return torch.cat(rows)


def split_prompts(text: str, n_images: int) -> list[str]:
    """One prompt per generated image (by line), or one line for all."""
    return lines_per_image(text, n_images, "prompt", "generated images", "give one line per image or a single line for all",
                           InputError)


@dataclass
class Scores:
    image_metric: str
    image_similarity: float
    text_alignment: float  # NaN when not computed
    n_generated: int
    n_reference: int
    text_note: str = ""

    def table(self) -> str:
        rows = ["| metric | value | over |", "|---|---|---|",
                f"| {self.image_metric} (image similarity) | {self.image_similarity:.4f} | "
                f"{self.n_generated} generated × {self.n_reference} reference |"]
        if self.text_note:
            rows.append(f"| CLIP-T (text alignment) | — | {self.text_note} |")
        else:
            rows.append(f"| CLIP-T (text alignment) | {self.text_alignment:.4f} | {self.n_generated} image/prompt pairs "
                        f"(CLIPScore = 100 × {self.text_alignment:.4f}) |")
        return "\n".join(rows)

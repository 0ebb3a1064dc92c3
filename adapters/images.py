"""Training images → latents, encoded once by the user's VAE (and once more mirrored, for flips)."""

from __future__ import annotations

import comfy.utils
import torch

from ..dti.errors import InputError, TrainingError
from ..dti.trainer import LatentExample
from .models import release


def flatten_images(images: list[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    """IMAGE batches (one tensor, or a list of them from list outputs) → list of [H, W, C] images."""
    batches = images if isinstance(images, (list, tuple)) else [images]
    out = []
    for b in batches:
        if b is None:
            continue
        if b.ndim == 3:
            b = b.unsqueeze(0)
        if b.ndim != 4:
            raise TrainingError(f"expected IMAGE batches shaped [B, H, W, C], got {tuple(b.shape)}")
        out.extend(b[i] for i in range(b.shape[0]))
    if not out:
        raise TrainingError("the image batch is empty: connect at least one training image")
    bad = [i for i, img in enumerate(out) if not bool(torch.isfinite(img).all())]
    if bad:
        raise InputError(
            f"training image(s) {bad[:10]} of {len(out)} contain NaN or infinite pixel values; fix the node that made "
            "them (images are 0–1 floats) or leave them out"
        )
    return out


def _resize_short_side(img: torch.Tensor, short: int) -> torch.Tensor:
    h, w = img.shape[:2]
    scale = short / min(h, w)
    nh, nw = max(short, round(h * scale)), max(short, round(w * scale))
    nh, nw = nh - nh % 8, nw - nw % 8
    chw = img.permute(2, 0, 1).unsqueeze(0)
    out = comfy.utils.common_upscale(chw, nw, nh, "bicubic" if scale > 1 else "area", "disabled")
    return out[0].permute(1, 2, 0).clamp(0, 1)


def prepare_examples(
    images: list[torch.Tensor],
    vae,
    model_patcher,
    resolution: int,
    mode: str,
    flip: bool,
    captions: list[str | None],
) -> tuple[list[LatentExample], tuple[int, int], int]:
    """Latent examples, the crop size in latent units, and the VAE's downscale factor."""
    if vae is None:
        raise TrainingError("no VAE connected: DTI Train encodes the images with the checkpoint's VAE")
    down = latent_downscale(vae)
    if mode == "keep size":
        sizes = {tuple(img.shape[:2]) for img in images}
        if len(sizes) > 1:
            listed = ", ".join(f"{w}×{h}" for h, w in sorted(sizes))
            raise TrainingError(
                f"the training images have different sizes ({listed}) and resize is 'keep size'; set resize to "
                "'resize and crop' so each image is scaled to the training resolution, or resize them beforehand "
                "(e.g. with ImageScale)"
            )
        h, w = next(iter(sizes))
        if h < down or w < down:
            raise TrainingError(f"images of {w}×{h} are smaller than one latent pixel ({down}×{down})")
        prepared = [img[: h - h % down, : w - w % down] for img in images]
        crop = ((h - h % down) // down, (w - w % down) // down)
    else:
        if resolution % down:
            raise TrainingError(f"resolution {resolution} must be a multiple of {down} (the VAE's downscale factor)")
        prepared = [_resize_short_side(img, resolution) for img in images]
        crop = (resolution // down, resolution // down)

    examples = []
    with torch.no_grad():
        for img, original, caption in zip(prepared, images, captions):
            pixels = img[..., :3].unsqueeze(0)
            lat = model_patcher.model.process_latent_in(vae.encode(pixels).float())
            flipped = None
            if flip:
                flipped = model_patcher.model.process_latent_in(vae.encode(torch.flip(pixels, dims=[2])).float())
                flipped = flipped[0].detach().clone()
            examples.append(LatentExample(latent=lat[0].detach().clone(), original_size=tuple(original.shape[:2]),
                                          flipped=flipped, caption=caption))
    release(getattr(vae, "patcher", None))  # the VAE is not needed again during training
    return examples, crop, down


def latent_downscale(vae) -> int:
    """Pixels per latent pixel of a VAE (8 where a third-party VAE does not say, or says it per axis)."""
    ratio = getattr(vae, "downscale_ratio", 8)
    return ratio if isinstance(ratio, int) else 8


def lines_per_image(text: str, n_images: int, what: str, images: str, remedy: str, error: type[Exception],
                    allow_none: bool = False) -> list[str]:
    """Non-empty lines of ``text``: one for all images (repeated), one per image, or (with ``allow_none``)
    none at all ([]); any other count raises ``error`` naming both counts and the remedy."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if len(lines) == 1:
        return lines * n_images
    if len(lines) != n_images and (lines or not allow_none):
        raise error(f"got {len(lines)} {what} lines for {n_images} {images}; {remedy}")
    return lines


def split_captions(text: str, n_images: int) -> list[str | None]:
    """One caption for all images, one per image (by line), or none (templates)."""
    lines = lines_per_image(text, n_images, "caption", "images", "give one line per image, a single line for all of them, "
                            "or leave captions empty to use the templates", TrainingError, allow_none=True)
    return lines or [None] * n_images

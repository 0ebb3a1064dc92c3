"""A full-size SD1.5 checkpoint with random weights, in the stock single-file layout, cached on disk.

UNet and CLIP-L come from fullsize.py (ComfyUI's classes, meta device, fan-in scaled values; token
rows of norm ≈ 0.4 with a few all-zero rows); the VAE is ComfyUI's SD AutoencoderKL with the same
fill. ComfyUI's own BaseModel.state_dict_for_saving lays the file out (model.diffusion_model.*,
cond_stage_model.*, first_stage_model.*), in fp16, so CheckpointLoaderSimple detects and loads it
as it would a downloaded SD1.5. Built once (≈ 1.1 B parameters, 2.1 GB) and reused from
DTI_FULLSIZE_CACHE (default ~/.cache/comfyui-dti/fullsize/), never inside the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

SD15_FILE = "dti_random_sd15_fp16.safetensors"
SD_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
          "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def cache_dir() -> Path:
    path = Path(os.environ.get("DTI_FULLSIZE_CACHE", Path.home() / ".cache" / "comfyui-dti" / "fullsize"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def sd15_checkpoint(seed: int = 0) -> Path:
    """The cached checkpoint's path, building it first if needed (about a minute on 2 cores)."""
    path = cache_dir() / SD15_FILE
    if path.is_file():
        return path
    import comfy.ldm.models.autoencoder
    import comfy.utils
    from fullsize import build_sd15_clip, build_sd15_unet, fill_random_

    with torch.inference_mode():
        unet = build_sd15_unet(torch.float16, seed=seed)
        clip = build_sd15_clip(torch.float16, seed=seed + 1)
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=dict(SD_VAE), embed_dim=4).to(torch.float16)
        fill_random_(vae, seed + 2)
        sd = unet.model.state_dict_for_saving(clip.get_sd(), vae.state_dict())
        sd = {k: v.to(torch.float16).contiguous() if torch.is_floating_point(v) else v.contiguous() for k, v in sd.items()}
    partial = path.with_suffix(".partial")
    comfy.utils.save_torch_file(sd, str(partial))
    partial.replace(path)  # a half-written file is never taken for the checkpoint
    return path

"""Tiny random-weight models built through ComfyUI's own classes, and a ComfyUI locator.

No weights can be downloaded in tests, and ComfyUI's layers do not initialise themselves, so every
builder loads a random state dict whose matrices are scaled by fan-in (std = 1/√fan_in), norm
scales at 1 and biases at 0. With a flat N(0, 0.02) a 32-wide model barely listens to its
conditioning and the token gradient falls below the optimizer's epsilon; random jitter on the
1-D parameters made the token direction noticeably worse conditioned.

Callers build under torch.inference_mode() to get what loader nodes hand to other nodes.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import torch

PACK_ROOT = Path(__file__).resolve().parents[2]

CLIP_L = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3}
CLIP_G = {"hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 2, "num_hidden_layers": 3}


def find_comfyui() -> Path | None:
    """COMFYUI_PATH, else an enclosing custom_nodes/ layout, else ~/comfy/ComfyUI."""
    env = os.environ.get("COMFYUI_PATH")
    if env and (Path(env) / "comfy" / "sd.py").is_file():
        return Path(env).resolve()
    for parent in PACK_ROOT.parents:
        if parent.name == "custom_nodes" and (parent.parent / "comfy" / "sd.py").is_file():
            return parent.parent
    home = Path.home() / "comfy" / "ComfyUI"
    if (home / "comfy" / "sd.py").is_file():
        return home
    return None


def import_comfy(root: Path, cpu: bool = True) -> None:
    """Make ComfyUI importable as a library, in CPU mode unless told otherwise (must precede
    comfy.model_management, which reads the flag once)."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    # main.py imports ComfyUI's utils package before nodes.py puts comfy/ first on sys.path, where
    # comfy/utils.py would shadow it; a library user must do the same.
    import comfy.cli_args
    import utils.extra_config  # noqa: F401

    comfy.cli_args.args.cpu = cpu
    comfy.cli_args.args.disable_all_custom_nodes = False


def random_state_dict(module: torch.nn.Module, seed: int, table_std: float = 0.02) -> dict[str, torch.Tensor]:
    """Fan-in scaled random weights for every parameter and float buffer of the module."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, t in list(module.state_dict().items()):
        if not torch.is_floating_point(t):
            sd[name] = t.clone()
            continue
        shape = tuple(t.shape)
        leaf = name.rsplit(".", 1)[-1]
        if "position_embedding" in name or "token_embedding" in name or "embed_tokens" in name:
            w = torch.randn(shape, generator=g) * table_std
        elif len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            w = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        elif leaf == "weight":  # norm layers: identity scale, as a fresh network starts
            w = torch.ones(shape)
        elif leaf == "bias":
            w = torch.zeros(shape)
        else:
            w = torch.randn(shape, generator=g) * 0.02
        sd[name] = w.to(t.dtype)
    return sd


# ---------------------------------------------------------------------------------------------
# SDXL / SD1.x


def sdxl_unet_config(width_l: int = 32, width_g: int = 48, channels: int = 32) -> dict:
    return {
        "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": channels,
        "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [0, 1],
        "transformer_depth_output": [0, 0, 1, 1], "transformer_depth_middle": 1,
        "context_dim": width_l + width_g, "adm_in_channels": width_g + 6 * 256, "num_classes": "sequential",
        "use_linear_in_transformer": True, "use_temporal_attention": False, "use_spatial_transformer": True,
        "legacy": False,
    }


def sd1_unet_config(width_l: int = 32, channels: int = 32) -> dict:
    return {
        "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": channels,
        "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [0, 1],
        "transformer_depth_output": [0, 0, 1, 1], "transformer_depth_middle": 1,
        "context_dim": width_l, "adm_in_channels": None, "use_linear_in_transformer": False,
        "use_temporal_attention": False, "use_spatial_transformer": True, "legacy": False,
    }


def build_model(family: str = "sdxl", seed: int = 0, dtype: torch.dtype = torch.float32, **kw):
    """A ModelPatcher around a tiny SDXL or SD1.5 UNet with random fan-in weights."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    if family == "sdxl":
        config = comfy.supported_models.SDXL(sdxl_unet_config(**kw))
    elif family == "sd1":
        config = comfy.supported_models.SD15(sd1_unet_config(**kw))
    else:
        raise ValueError(family)
    config.set_inference_dtype(dtype, None)
    model = config.get_model({})
    model.load_model_weights(random_state_dict(model.diffusion_model, seed), "")
    load = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=load, offload_device=comfy.model_management.unet_offload_device())


def build_clip(family: str = "sdxl", seed: int = 1, embedding_directory: str | None = None, layers: int = 3,
               width_l: int = 32, width_g: int = 48):
    """comfy.sd.CLIP with tiny CLIP-L (+ CLIP-G for SDXL) over the real CLIP tokenizer."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.sdxl_clip
    from comfy.supported_models_base import ClipTarget

    cfg_l = {**CLIP_L, "num_hidden_layers": layers, "hidden_size": width_l, "intermediate_size": 2 * width_l}
    cfg_g = {**CLIP_G, "num_hidden_layers": layers, "hidden_size": width_g, "intermediate_size": 2 * width_g}
    if family == "sdxl":
        target = ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
        options = {"clip_l_model_config": cfg_l, "clip_g_model_config": cfg_g}
    elif family == "sd1":
        target = ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
        options = {"clip_l_model_config": cfg_l}
    else:
        raise ValueError(family)
    clip = comfy.sd.CLIP(target=target, embedding_directory=embedding_directory, model_options=options)
    clip.load_sd(random_state_dict(clip.cond_stage_model, seed), full_model=True)
    return clip


def build_vae(seed: int = 2):
    """A real 8×-downscaling TAESD VAE (2.4 M parameters) with random weights."""
    import comfy.sd
    import comfy.taesd.taesd

    shapes = comfy.taesd.taesd.TAESD(latent_channels=4)
    sd = {}
    for name, t in random_state_dict(shapes, seed).items():
        if name.startswith(("taesd_encoder.", "taesd_decoder.")):
            sd[name] = t
        elif name.startswith(("encoder.", "decoder.")):
            sd["taesd_" + name] = t
    sd["vae_scale"], sd["vae_shift"] = torch.tensor(1.0), torch.tensor(0.0)
    return comfy.sd.VAE(sd=sd)


def random_images(n: int = 4, size: int = 128, seed: int = 3) -> torch.Tensor:
    """IMAGE batch [B, H, W, C] in 0..1 with some structure (smooth blobs, not white noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 16, size // 16, generator=g)
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return img.clamp(0, 1).permute(0, 2, 3, 1).contiguous()


# ---------------------------------------------------------------------------------------------
# Full-size shapes (for GPU benchmarks): real architectures, random weights made on the device


def full_sdxl_unet_config() -> dict:
    return {
        "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
        "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 2, 2, 10, 10],
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "transformer_depth_middle": 10,
        "context_dim": 2048, "adm_in_channels": 2816, "num_classes": "sequential",
        "use_linear_in_transformer": True, "use_temporal_attention": False, "use_spatial_transformer": True,
        "legacy": False,
    }


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int = 0, table_std: float = 0.02) -> torch.nn.Module:
    """Fill a module's floating tensors in place, on their own device (fan-in scaled, as above)."""
    g = None
    for name, t in module.state_dict(keep_vars=True).items():
        if not torch.is_floating_point(t):
            continue
        if g is None or g.device != t.device:
            g = torch.Generator(device=t.device).manual_seed(seed)
        leaf = name.rsplit(".", 1)[-1]
        if "position_embedding" in name or "token_embedding" in name or "embed_tokens" in name:
            t.normal_(0, table_std, generator=g)
        elif t.ndim >= 2:
            t.normal_(0, 1 / math.sqrt(math.prod(t.shape[1:])), generator=g)
        elif leaf == "weight":
            t.fill_(1.0)
        else:
            t.zero_()
    return module


def build_full_sdxl(device: str = "cuda", dtype: torch.dtype = torch.float16):
    """(ModelPatcher, CLIP) with SDXL's real shapes (UNet 2.6 B, CLIP-L 12 + CLIP-G 32 layers), random weights."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    import comfy.sdxl_clip
    import comfy.supported_models
    from comfy.supported_models_base import ClipTarget

    config = comfy.supported_models.SDXL(full_sdxl_unet_config())
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=device)
    model.diffusion_model.to(device=device, dtype=dtype)
    randomize_(model.diffusion_model)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device(device),
                                               offload_device=comfy.model_management.unet_offload_device())
    clip = comfy.sd.CLIP(target=ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel),
                         model_options={"initial_device": torch.device(device)})
    randomize_(clip.cond_stage_model, seed=1)
    return patcher, clip

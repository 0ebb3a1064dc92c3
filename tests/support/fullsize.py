"""Full-size SD1.5 (UNet 859.5 M, CLIP-L 123.7 M) with random weights, built through ComfyUI's classes.

Layers are made on the meta device and then given real storage in the requested dtype, so a build
takes seconds and never holds a second copy of the weights. Fill: matrices N(0, 1/fan_in), norm
scales 1, biases 0; CLIP-L's token table has rows of norm ≈ 0.4 (as in the released model) with a
few all-zero rows, so "mean norm of the non-zero rows" is really exercised. Used by the full-size
tier and by benchmarks/cast_memory.py.
"""

from __future__ import annotations

import math

import torch

SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
TOKEN_ROW_NORM = 0.4
ZERO_TOKEN_ROWS = (49400, 49401, 49402)  # a few rows with no vector, as trimmed vocabularies have


@torch.no_grad()
def fill_random_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fan-in scaled random values for every floating tensor, written in place in its own dtype."""
    g = torch.Generator().manual_seed(seed)
    for name, t in module.state_dict(keep_vars=True).items():
        if not torch.is_floating_point(t):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if "token_embedding" in name:
            values = torch.randn(t.shape, generator=g) * (TOKEN_ROW_NORM / math.sqrt(t.shape[-1]))
            values[list(ZERO_TOKEN_ROWS)] = 0
        elif "position_embedding" in name:
            values = torch.randn(t.shape, generator=g) * 0.01
        elif t.ndim >= 2:
            values = torch.randn(t.shape, generator=g) / math.sqrt(math.prod(t.shape[1:]))
        elif leaf == "weight":
            values = torch.ones(t.shape)
        else:
            values = torch.zeros(t.shape)
        t.copy_(values)  # one tensor at a time: the fp32 scratch is at most one layer
    return module


def build_sd15_unet(storage: torch.dtype = torch.float32, compute: torch.dtype | None = None, seed: int = 0):
    """A ModelPatcher around the full SD1.5 UNet storing ``storage``, computing in ``compute``
    (ComfyUI's manual cast when they differ, as `--bf16-unet` / fp8 checkpoints get)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SD15(dict(SD15_UNET))
    config.set_inference_dtype(storage, compute)
    model = config.get_model({}, device=torch.device("meta"))
    model.diffusion_model.to_empty(device=torch.device("cpu"))
    fill_random_(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def build_sd15_clip(storage: torch.dtype = torch.float32, seed: int = 1, embedding_directory: str | None = None):
    """comfy.sd.CLIP with the full SD1 CLIP-L (12 layers, width 768, vocabulary 49408)."""
    import comfy.sd
    import comfy.sd1_clip
    from comfy.supported_models_base import ClipTarget

    clip = comfy.sd.CLIP(target=ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel),
                         embedding_directory=embedding_directory,
                         model_options={"dtype": storage, "initial_device": torch.device("meta")})
    clip.cond_stage_model.to_empty(device=torch.device("cpu"))
    fill_random_(clip.cond_stage_model, seed)
    return clip


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

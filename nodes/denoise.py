"""DenoiseSide over a ComfyUI MODEL: the model's own noise schedule, conditioning and target.

The model is called directly (a Guider assumes fixed conditioning), through BaseModel.extra_conds
→ process_cond → apply_model, with the patcher's transformer_options so other nodes' patches
apply. apply_model returns the denoised x₀; the loss compares (x_t − x̂₀)/σ with (x_t − x₀)/σ,
which is ε-MSE for ε-prediction models (SD1.x, SDXL) and the flow target ε − x₀ for CONST models.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import comfy.conds
import comfy.model_base
import comfy.model_sampling
import torch
import torch.utils.checkpoint

from ..dti.trainer import Batch, TrainingError
from .clip_text import TextCond

SUPPORTED_TYPES = (comfy.model_base.ModelType.EPS, comfy.model_base.ModelType.V_PREDICTION, comfy.model_base.ModelType.FLOW)


class ModelDenoiseSide:
    def __init__(self, patcher, device: torch.device, extra_cond_kwargs: dict | None = None) -> None:
        self.patcher = patcher
        self.base = patcher.model
        self.model_type = self.base.model_type
        if self.model_type not in SUPPORTED_TYPES:
            raise TrainingError(
                f"this model predicts {self.model_type.name}; DTI Train supports ε-prediction, v-prediction and "
                "flow-matching models"
            )
        self.sampling = patcher.get_model_object("model_sampling")
        self.device = device
        self.transformer_options = dict(patcher.model_options.get("transformer_options", {}))
        self.extra_cond_kwargs = dict(extra_cond_kwargs or {})

    def sample_sigmas(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Uniform timesteps over the model's own schedule (already shifted for flow models)."""
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        # percent_to_sigma maps 0 and 1 to sentinel values (σ_max+ / 0); keep strictly inside.
        u = u.clamp(1e-4, 1 - 1e-4)
        return torch.tensor([float(self.sampling.percent_to_sigma(float(x))) for x in u], dtype=torch.float32)

    def _model_kwargs(self, batch: Batch, cond: TextCond, x_t: torch.Tensor) -> dict:
        """extra_conds per sample (each image has its own size and crop), concatenated on the batch."""
        per_key: dict[str, list] = {}
        th, tw = batch.target_size
        for i in range(x_t.shape[0]):
            (oh, ow), (top, left) = batch.original_sizes[i], batch.crops[i]
            kw = dict(
                cross_attn=cond.cross_attn[i : i + 1],
                pooled_output=None if cond.pooled is None else cond.pooled[i : i + 1],
                width=ow, height=oh, crop_w=left, crop_h=top, target_width=tw, target_height=th,
                device=self.device, noise=x_t[i : i + 1], seed=0, **self.extra_cond_kwargs,
            )
            if cond.attention_mask is not None:
                kw["attention_mask"] = cond.attention_mask[i : i + 1]
            for k, c in self.base.extra_conds(**kw).items():
                per_key.setdefault(k, []).append(c)
        out = {}
        for k, conds in per_key.items():
            if isinstance(conds[0], comfy.conds.CONDConstant):
                values = {repr(c.cond) for c in conds}
                if len(values) > 1:
                    raise TrainingError(f"conditioning constant {k!r} differs across the batch ({values}); use batch size 1")
                out[k] = conds[0].cond
            else:
                out[k] = torch.cat([c.process_cond(batch_size=1, area=None).cond for c in conds]).to(self.device)
        return out

    def loss(self, batch: Batch, cond: TextCond, generator: torch.Generator) -> torch.Tensor:
        x0 = batch.latents.to(self.device, torch.float32)
        n = x0.shape[0]
        sigma = self.sample_sigmas(n, generator).to(self.device)
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        # noise_scaling mutates its noise argument for ε models, hence the clone.
        x_t = self.sampling.noise_scaling(sigma, noise.clone(), x0)
        kwargs = self._model_kwargs(batch, cond, x_t)
        denoised = self.base.apply_model(x_t, sigma, transformer_options=self.transformer_options, **kwargs).float()
        s = sigma.view(-1, *([1] * (x0.ndim - 1)))
        pred = (x_t - denoised) / s
        target = (x_t - x0) / s
        err = (pred - target) ** 2
        if self.model_type == comfy.model_base.ModelType.V_PREDICTION:
            # With σ_data = 1, a v-prediction error e_v shows up in ε space as e_v/√(σ²+1); weighting
            # by σ²+1 turns this ε-space MSE back into the model's native v-MSE.
            err = err * (s * s + 1)
        return err.mean()


@contextlib.contextmanager
def gradient_checkpointing(diffusion_model: torch.nn.Module, enabled: bool) -> Iterator[int]:
    """Recompute each top-level block in backward instead of storing its activations; undone on exit."""
    if not enabled:
        yield 0
        return
    blocks = []
    for child in diffusion_model.children():
        groups = child if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)) else [child]
        for block in groups:
            if any(p.numel() for p in block.parameters()) and "forward" not in block.__dict__:
                blocks.append(block)
    try:
        for block in blocks:
            original = block.forward

            def checkpointed(*args, _f=original, **kwargs):
                return torch.utils.checkpoint.checkpoint(_f, *args, use_reentrant=False, **kwargs)

            block.forward = checkpointed
        yield len(blocks)
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)

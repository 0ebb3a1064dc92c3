"""DenoiseSide over a ComfyUI MODEL: the model's own noise schedule, conditioning and target.

The model is called directly (a Guider assumes fixed conditioning), through BaseModel.extra_conds
→ process_cond → apply_model, with the patcher's transformer_options so other nodes' patches
apply. apply_model returns the denoised x₀; the loss compares (x_t − x̂₀)/σ with (x_t − x₀)/σ,
which is ε-MSE for ε-prediction models (SD1.x, SDXL) and the flow target ε − x₀ for CONST models
(FLOW: SD3's ModelSamplingDiscreteFlow, Flux.1 schnell; FLUX: Flux.1 dev's and Chroma's
ModelSamplingFlux — both CONST, with the model's own shift in percent_to_sigma).
"""

from __future__ import annotations

import comfy.conds
import comfy.model_base
import torch

from ..dti.errors import TrainingError
from ..dti.trainer import Batch
from .clip_text import TextCond

SUPPORTED_TYPES = (comfy.model_base.ModelType.EPS, comfy.model_base.ModelType.V_PREDICTION, comfy.model_base.ModelType.FLOW,
                   comfy.model_base.ModelType.FLUX)


class ModelDenoiseSide:
    def __init__(self, patcher, device: torch.device, identical_prompt_batches: bool = False,
                 guidance: float | None = None) -> None:
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
        self.identical_prompt_batches = identical_prompt_batches
        self.guidance = guidance  # distilled-guidance input (Flux.1 dev); None: the model's own default

    def sample_sigmas(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Uniform timesteps over the model's own schedule (already shifted for flow models)."""
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        # percent_to_sigma maps 0 and 1 to sentinel values (σ_max+ / 0); keep strictly inside.
        u = u.clamp(1e-4, 1 - 1e-4)
        return torch.tensor([float(self.sampling.percent_to_sigma(float(x))) for x in u], dtype=torch.float32)

    def _extra_conds(self, batch: Batch, cond: TextCond, x_t: torch.Tensor, rows: slice) -> dict:
        """extra_conds for the samples in ``rows`` (which share the first one's size and crop), as
        sampling would build them."""
        first = rows.start or 0
        (oh, ow), (top, left) = batch.original_sizes[first], batch.crops[first]
        th, tw = batch.target_size
        cross = cond.cross_attn[rows]
        kw = dict(
            pooled_output=None if cond.pooled is None else cond.pooled[rows],
            width=ow, height=oh, crop_w=left, crop_h=top, target_width=tw, target_height=th,
            device=self.device, noise=x_t[rows], seed=0,
        )
        if self.guidance is not None:
            kw["guidance"] = self.guidance
        if cond.lengths is not None:
            # Zero-padded to batch the text encoder (joint-attention model): back to its own length.
            cross = cross[:, : cond.lengths[first]]
        if cond.attention_mask is not None:
            # Prompts of different lengths were padded at the end to batch the encoder; give a
            # sample back its own length, exactly what encoding it alone produces.
            length = max(1, int(cond.attention_mask[rows].sum(-1).max()))
            cross = cross[:, :length]
            kw["attention_mask"] = cond.attention_mask[rows, :length]
        return self.base.extra_conds(cross_attn=cross, **kw)

    def _whole_batch(self, batch: Batch, cond: TextCond, x_t: torch.Tensor) -> dict | None:
        """One extra_conds call for the batch when every sample has the same size, crop and caption
        length (the usual case: one resolution, centred crops); None when they differ."""
        if cond.attention_mask is not None or (self.identical_prompt_batches and len(set(batch.prompts)) > 1):
            return None
        if cond.lengths is not None and len(set(cond.lengths)) > 1:
            return None
        if len(set(batch.original_sizes)) > 1 or len(set(batch.crops)) > 1:
            return None
        n = x_t.shape[0]
        out = {}
        for k, c in self._extra_conds(batch, cond, x_t, slice(None)).items():
            out[k] = c.cond if isinstance(c, comfy.conds.CONDConstant) else c.process_cond(batch_size=n, area=None).cond.to(self.device)
        return out

    def _model_groups(self, batch: Batch, cond: TextCond, x_t: torch.Tensor) -> list[tuple[list[int], dict]]:
        """Samples whose conditioning can share one forward, with their concatenated model kwargs."""
        whole = self._whole_batch(batch, cond, x_t)
        if whole is not None:
            return [(list(range(x_t.shape[0])), whole)]
        per_sample = [self._extra_conds(batch, cond, x_t, slice(i, i + 1)) for i in range(x_t.shape[0])]
        groups: dict[tuple, list[int]] = {}
        for i, conds in enumerate(per_sample):
            signature = tuple(
                (k, repr(c.cond) if isinstance(c, comfy.conds.CONDConstant) else tuple(c.cond.shape[1:]))
                for k, c in sorted(conds.items())
            )
            if self.identical_prompt_batches:
                signature += (batch.prompts[i],)
            groups.setdefault(signature, []).append(i)
        out = []
        for indices in groups.values():
            kwargs = {}
            for k, c in per_sample[indices[0]].items():
                if isinstance(c, comfy.conds.CONDConstant):
                    kwargs[k] = c.cond
                else:
                    kwargs[k] = torch.cat([per_sample[i][k].process_cond(batch_size=1, area=None).cond for i in indices])
                    kwargs[k] = kwargs[k].to(self.device)
            out.append((indices, kwargs))
        return out

    def loss(self, batch: Batch, cond: TextCond, generator: torch.Generator) -> torch.Tensor:
        x0 = batch.latents.to(self.device, torch.float32)
        n = x0.shape[0]
        sigma = self.sample_sigmas(n, generator).to(self.device)
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        # noise_scaling mutates its noise argument for ε models, hence the clone.
        x_t = self.sampling.noise_scaling(sigma, noise.clone(), x0)
        denoised = self.denoise(batch, cond, x_t, sigma)
        s = sigma.view(-1, *([1] * (x0.ndim - 1)))
        pred = (x_t - denoised) / s
        target = (x_t - x0) / s
        err = (pred - target) ** 2
        if self.model_type == comfy.model_base.ModelType.V_PREDICTION:
            # With σ_data = 1, a v-prediction error e_v shows up in ε space as e_v/√(σ²+1); weighting
            # by σ²+1 turns this ε-space MSE back into the model's native v-MSE.
            err = err * (s * s + 1)
        return err.mean()

    def denoise(self, batch: Batch, cond: TextCond, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x̂₀ for the batch: one model call per group of samples with compatible conditioning."""
        groups = self._model_groups(batch, cond, x_t)
        if len(groups) == 1:
            return self.base.apply_model(x_t, sigma, transformer_options=self.transformer_options, **groups[0][1]).float()
        parts, order = [], []
        for indices, kwargs in groups:
            idx = torch.tensor(indices, device=x_t.device)
            parts.append(self.base.apply_model(x_t[idx], sigma[idx], transformer_options=self.transformer_options, **kwargs).float())
            order.extend(indices)
        inverse = torch.empty(len(order), dtype=torch.long, device=x_t.device)
        inverse[torch.tensor(order, device=x_t.device)] = torch.arange(len(order), device=x_t.device)
        return torch.cat(parts)[inverse]

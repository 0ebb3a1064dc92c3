"""Sample frames while a concept trains: the current vectors rendered through ComfyUI's own sampler.

A frame is exactly what EmptyLatentImage → KSampler → VAEDecode give for the concept's prompt with
the same settings (negative: the empty prompt), on the user's MODEL — the original patcher, not
the training clone — and VAE; no second model is loaded. Rendering must never change the training:
it runs without autograd, restores every random generator it touches, and the caller reloads the
training clone afterwards (ComfyUI's loader swaps the clone out to sample with the original).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import comfy.model_management
import comfy.sample
import comfy.samplers
import torch

from ..dti.errors import InputError
from ..dti.settings import TrainSettings
from .images import latent_downscale
from .text_encoder import TextEncoder


def check_sampler(sampler: str, scheduler: str) -> None:
    """InputError for sampler or scheduler names this ComfyUI does not have."""
    if sampler not in comfy.samplers.KSampler.SAMPLERS:
        raise InputError(f"unknown preview_sampler {sampler!r}; choose one of {', '.join(comfy.samplers.KSampler.SAMPLERS)}")
    if scheduler not in comfy.samplers.KSampler.SCHEDULERS:
        raise InputError(f"unknown preview_scheduler {scheduler!r}; choose one of {', '.join(comfy.samplers.KSampler.SCHEDULERS)}")


def empty_latent(model, vae, width: int, height: int) -> torch.Tensor:
    """What EmptyLatentImage (or the family's empty-latent node) gives, after KSampler's channel fix."""
    down = latent_downscale(vae)
    channels = model.get_model_object("latent_format").latent_channels
    return torch.zeros([1, channels, height // down, width // down], device=comfy.model_management.intermediate_device())


def sample_frame(model, vae, positive: list, negative: list, s: TrainSettings) -> torch.Tensor:
    """One IMAGE [1, H, W, 3]: KSampler's noise and sampling (common_ksampler) then VAEDecode."""
    latent = comfy.sample.fix_empty_latent_channels(model, empty_latent(model, vae, s.preview_width, s.preview_height))
    noise = comfy.sample.prepare_noise(latent, s.preview_seed, None)
    samples = comfy.sample.sample(model, noise, s.preview_steps, s.preview_cfg, s.preview_sampler, s.preview_scheduler,
                                  positive, negative, latent, denoise=1.0, disable_pbar=True, seed=s.preview_seed)
    images = vae.decode(samples)
    if images.ndim == 5:  # video VAEs: frames into the batch, as VAEDecode does
        images = images.reshape(-1, *images.shape[-3:])
    return images[:1].float().cpu()


@dataclass
class Frame:
    step: int
    image: torch.Tensor  # [1, H, W, 3]


@dataclass
class Previews:
    """Frames every ``settings.preview_every`` steps (and at the last step) of one training run."""

    model: object  # the user's MODEL patcher
    vae: object
    encoder: TextEncoder
    settings: TrainSettings  # resolved
    prompt: str  # DTI Train's prompt, used when preview_prompt is empty
    before: Callable[[], None] = lambda: None  # undo what the training clone changed on the shared model
    after: Callable[[], None] = lambda: None  # put the training clone back in place
    frames: list[Frame] = field(default_factory=list)
    seconds: float = 0.0
    _negative: list | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.preview_every > 0

    @property
    def text(self) -> str:
        return self.settings.preview_prompt.strip() or self.prompt

    def due(self, step: int) -> bool:
        every = self.settings.preview_every
        return every > 0 and (step % every == 0 or step == self.settings.steps)

    def render(self, vectors: dict[str, torch.Tensor], step: int) -> Frame:
        """A frame of the concept's current vectors; no training state (RNG, autograd, weights) changes."""
        started = time.perf_counter()
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                self.before()
                if self._negative is None:
                    self._negative = self.encoder.plain_conditioning("")
                positive = self.encoder.conditioning(self.settings.name, self.text, vectors)
                image = sample_frame(self.model, self.vae, positive, self._negative, self.settings)
        finally:
            self.after()
        frame = Frame(step, image)
        self.frames.append(frame)
        self.seconds += time.perf_counter() - started
        return frame

    def strip(self) -> torch.Tensor:
        """Every frame as one IMAGE batch (frames of one run share a size); 1×1 black when there are none."""
        if not self.frames:
            return torch.zeros(1, 1, 1, 3)
        return torch.cat([f.image for f in self.frames])

"""A DTI training run on the MODEL, CLIP and VAE the user already loaded.

Everything temporary is undone in `finally`: the MODEL is trained through a clone of its patcher,
CLIP layers get an out-of-place forward only for the run, gradient checkpointing is unwrapped, and
the encoder's layer options are reset. Weights are never written.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import comfy.model_management
import torch

from ..dti import checkpoint as ckpt
from ..dti import formats
from ..dti.concept import Concept
from ..dti.errors import InputError, TrainingError
from ..dti.settings import PRECISIONS, TrainSettings
from ..dti.templates import TEMPLATES
from ..dti.trainer import BatchSampler, Trainer, TrainResult
from .autograd import gradient_checkpointing, make_autograd_ready
from .clip_text import weights_hash
from .denoise import ModelDenoiseSide
from .families import HostFamily, check_model_matches
from .folders import checkpoints_folder, embeddings_folder
from .images import flatten_images, prepare_examples, split_captions
from .models import describe_load, load_for_training, training_memory_estimate
from .plots import training_plot
from .progress import Progress, check_interrupted
from .text_encoder import TextEncoder, text_encoder

log = logging.getLogger("ComfyUI-DTI")

@dataclass
class SessionResult:
    concept: Concept
    result: TrainResult
    family: HostFamily
    settings: TrainSettings  # resolved: every family default filled in
    saved_path: Path | None
    checkpoints: list[Path] = field(default_factory=list)
    summary: str = ""
    plot: Any = None  # PIL image


def compute_dtype(precision: str, patcher) -> torch.dtype | None:
    """The UNet compute dtype for training: fp16 gradients underflow, so never train in fp16."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return torch.float32
    current = _manual_cast_dtype(patcher) or patcher.model.get_dtype()
    if precision == "as loaded" or current != torch.float16:
        return None
    device = patcher.load_device
    return torch.bfloat16 if comfy.model_management.should_use_bf16(device, prioritize_performance=False) else torch.float32


def _manual_cast_dtype(patcher) -> torch.dtype | None:
    """The compute dtype this patcher's model runs with once loaded.

    Not simply model.manual_cast_dtype: clones share the model, and a previous run's clone leaves
    its compute-dtype object patch applied until ComfyUI's next load undoes it (from the backup the
    clones share), so the attribute can still hold that run's value.
    """
    if "manual_cast_dtype" in patcher.object_patches:
        return patcher.object_patches["manual_cast_dtype"]
    return patcher.object_patches_backup.get("manual_cast_dtype", patcher.model.manual_cast_dtype)


def resolve_settings(settings: TrainSettings, family: HostFamily) -> TrainSettings:
    """The settings with the family's defaults filled in, checked (InputError names the setting)."""
    resolved = settings.resolve(family.defaults)
    resolved.check()
    formats.safe_name(resolved.name)
    if resolved.resume and not Path(resolved.resume).is_file():
        raise InputError(f"resume checkpoint {resolved.resume} does not exist; pick one from the list or 'none'")
    return resolved


def train_concept(
    model,
    clip,
    vae,
    images,
    settings: TrainSettings,
    node_id: str | None = None,
    on_step: Callable[[Trainer, Any], None] | None = None,
) -> SessionResult:
    """Train a concept on the user's MODEL, text encoder and VAE; ``settings`` may hold family defaults."""
    encoder = text_encoder(clip)
    family = encoder.family
    check_model_matches(model, family)
    s = resolve_settings(settings, family)

    with torch.inference_mode(False), torch.enable_grad():
        # Read inside: tensors created under the executor's inference mode could not be updated in place.
        resume_state = ckpt.load_checkpoint(s.resume) if s.resume else None
        imgs = flatten_images(images)
        captions = split_captions(s.captions, len(imgs))
        examples, crop, down = prepare_examples(imgs, vae, model, s.resolution, s.resize, s.flip, captions)
        with (
            training_models(model, encoder, s.precision, s.gradient_checkpointing,
                            (s.resolution, s.batch_size, down)) as patcher,
            encoder.text_side(s.name) as text,
        ):
            denoise = ModelDenoiseSide(patcher, patcher.load_device, identical_prompt_batches=family.identical_prompt_batches)
            sampler = BatchSampler(examples, s.batch_size, crop, down, TEMPLATES[s.templates],
                                   random_crop=s.random_crop, flip=s.flip, seed=s.seed)
            trainer = Trainer(text, denoise, sampler, s, device=encoder.device, family=family.row)
            if resume_state is not None:
                trainer.load_state_dict(resume_state)
            return _run(trainer, family, s, node_id, on_step, text, patcher.dti_load)


@contextlib.contextmanager
def training_models(model, encoder: TextEncoder, precision: str = "auto", checkpointing: bool = False,
                    step_shape: tuple[int, int, int] = (0, 1, 8)) -> Iterator[Any]:
    """A clone of the MODEL's patcher, loaded with the text encoder and ready for autograd; undone on exit.

    ``step_shape`` (resolution, batch, VAE downscale) sizes the memory the step needs beside the
    weights; ComfyUI loads what fits and casts the rest per layer. Call inside
    torch.inference_mode(False). Yields the patcher to train through; ``patcher.dti_load`` says how
    the models were loaded.
    """
    patcher = model.clone()
    dtype = compute_dtype(precision, patcher)
    if dtype is not None:
        patcher.set_model_compute_dtype(dtype)
    resolution, batch, down = step_shape
    step_dtype = patcher.model.manual_cast_dtype or patcher.model.get_dtype()
    required = training_memory_estimate(encoder.family.row.name, resolution, batch, checkpointing, step_dtype, down)
    load_for_training([patcher, *encoder.patchers], required)
    patcher.dti_load = describe_load(patcher, encoder.patchers, required)
    make_autograd_ready(patcher.model)
    for module in encoder.modules:
        make_autograd_ready(module)
    with encoder.training(), gradient_checkpointing(patcher.model.diffusion_model, checkpointing):
        yield patcher


def _checkpoint_path(name: str, step: int, tag: str = "step") -> Path:
    return checkpoints_folder() / formats.safe_name(name) / f"{tag}_{step:06d}.safetensors"


def _finish_concept(trainer: Trainer, text) -> Concept:
    concept = trainer.concept()
    for key, enc in concept.encoders.items():
        enc.weights_hash = weights_hash(text.vocabulary(key))
    return concept


def _run(trainer: Trainer, family: HostFamily, settings: TrainSettings, node_id, on_step, text, load_note: str = "") -> SessionResult:
    m_star = {k: i.m_star for k, i in trainer.inits.items()}
    title = f"DTI Train - {settings.name} ({settings.method}, {family.label})"
    progress = Progress(settings.steps, node_id)
    checkpoints: list[Path] = []
    first_step = trainer.step

    def step_callback(t: Trainer, record) -> None:
        if on_step is not None:
            on_step(t, record)
        progress.update(
            t.step,
            preview_factory=lambda: training_plot(t.history, m_star, title),
            data={"loss": record.loss, "norms": record.norms, "m_star": m_star, "skipped": record.skipped},
        )
        check_interrupted()

    def checkpoint_callback(t: Trainer) -> None:
        checkpoints.append(ckpt.save_checkpoint(t.state_dict(), _checkpoint_path(settings.name, t.step)))

    started = time.perf_counter()
    try:
        result = trainer.run(on_step=step_callback, on_checkpoint=checkpoint_callback)
    except BaseException as exc:
        if trainer.step > first_step:
            kept = _keep_partial(trainer, settings, text, exc)
            if isinstance(exc, TrainingError):
                raise TrainingError(f"{exc} Saved what was learned so far: {kept}") from exc
        raise
    concept = _finish_concept(trainer, text)
    result.concept = concept
    saved = formats.save_concept(concept, embeddings_folder(), settings.name, settings.on_exists) if settings.save else None
    plot = training_plot(result.history, m_star, title)
    summary = _summary(result, family, settings, m_star, saved, checkpoints, time.perf_counter() - started, trainer.step - first_step,
                       load_note)
    log.info("ComfyUI-DTI: %s", summary.replace("\n", " | "))
    return SessionResult(concept, result, family, settings, saved, checkpoints, summary, plot)


def _keep_partial(trainer: Trainer, settings: TrainSettings, text, exc: BaseException) -> str:
    """Write the last good vectors (a resumable checkpoint, and the concept if saving is on)."""
    kept = []
    try:
        path = ckpt.save_checkpoint(trainer.state_dict(), _checkpoint_path(settings.name, trainer.step, "interrupted"))
        kept.append(f"checkpoint {path}")
        if settings.save:
            concept = _finish_concept(trainer, text)
            concept.info["stopped_by"] = type(exc).__name__
            kept.append(f"concept {formats.save_concept(concept, embeddings_folder(), settings.name, 'increment')}")
    except Exception as save_error:  # keep the original error visible; report the saving failure beside it
        log.error("ComfyUI-DTI: could not keep the partial result: %s", save_error)
    text_kept = "; ".join(kept) or "nothing (saving failed, see the log)"
    log.warning("ComfyUI-DTI: training stopped at step %d (%s); kept %s", trainer.step, type(exc).__name__, text_kept)
    return text_kept


def _summary(result: TrainResult, family: HostFamily, req: TrainSettings, m_star: dict[str, float], saved: Path | None,
             checkpoints: list[Path], seconds: float, steps_run: int, load_note: str = "") -> str:
    losses = [r.loss for r in result.history if not r.skipped and math.isfinite(r.loss)]
    head = [f"{req.name}: {req.method} on {family.label}, {len(result.history)} steps "
            f"({steps_run} this run, {seconds:.1f} s, {seconds / max(steps_run, 1):.3f} s/step)"]
    if losses:
        k = max(1, len(losses) // 10)
        head.append(f"loss: first {sum(losses[:k]) / k:.4g} → last {sum(losses[-k:]) / k:.4g} (mean of {k} steps)")
    for key, enc in result.concept.encoders.items():
        norms = ", ".join(f"{float(n):.4g}" for n in enc.norms)
        head.append(f"{key}: m* = {m_star[key]:.4g}, row norms [{norms}]")
    skipped = sum(r.skipped for r in result.history)
    if skipped:
        head.append(f"{skipped} step(s) skipped for NaN/inf loss")
    head.extend(result.notes)
    if load_note:
        head.append(f"loaded: {load_note}")
    if saved is not None and family.stock_embedding_prompts:
        head.append(f"saved {saved} — use it as embedding:{saved.stem} in any prompt")
        head.append("note: CLIPTextEncode caches by prompt text, so prompts already encoded with an older file of the same "
                    "name keep the old vectors until their text changes")
    elif saved is not None:
        head.append(f"saved {saved} — use it with DTI Load Embedding ({family.label} prompts ignore embedding:name)")
    if checkpoints:
        head.append(f"checkpoints: {', '.join(str(p) for p in checkpoints)}")
    return "\n".join(head)

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
from ..dti.trainer import TEMPLATES, BatchSampler, TrainConfig, Trainer, TrainingError, TrainResult
from . import host
from .cast_backward import recast_in_backward
from .clip_text import weights_hash
from .denoise import ModelDenoiseSide, gradient_checkpointing
from .families import Family, check_model_matches
from .images import flatten_images, prepare_examples, split_captions
from .plots import training_plot
from .text_encoders import text_encoder

log = logging.getLogger("ComfyUI-DTI")

PRECISIONS = ("auto", "bf16", "fp32", "as loaded")


@dataclass
class TrainRequest:
    name: str
    initializer: str
    method: str = "dti"
    steps: int = 400
    lr: float = 0.04
    kappa: float = 1e-4
    beta: float = 0.0
    magnitude: str | float = "mean"
    batch_size: int = 4
    grad_accum: int = 1
    resolution: int = 768
    resize: str = "resize and crop"
    random_crop: bool = False
    flip: bool = False
    seed: int = 42
    templates: str = "object"
    captions: str = ""
    n_vectors: int | None = None
    precision: str = "auto"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 0
    resume: str | None = None
    save: bool = True
    on_exists: str = "increment"


@dataclass
class SessionResult:
    concept: Concept
    result: TrainResult
    family: Family
    saved_path: Path | None
    checkpoints: list[Path] = field(default_factory=list)
    summary: str = ""
    plot: Any = None  # PIL image


def compute_dtype(precision: str, patcher) -> torch.dtype | None:
    """The UNet compute dtype for training: fp16 gradients underflow, so never train in fp16."""
    if precision not in PRECISIONS:
        raise TrainingError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return torch.float32
    current = patcher.model.manual_cast_dtype or patcher.model.get_dtype()
    if precision == "as loaded" or current != torch.float16:
        return None
    device = patcher.load_device
    return torch.bfloat16 if comfy.model_management.should_use_bf16(device, prioritize_performance=False) else torch.float32


def train_concept(
    model,
    clip,
    vae,
    images,
    request: TrainRequest,
    node_id: str | None = None,
    on_step: Callable[[Trainer, Any], None] | None = None,
) -> SessionResult:
    encoder = text_encoder(clip)
    family = encoder.family
    check_model_matches(model, family)
    formats.safe_name(request.name)
    if request.templates not in TEMPLATES:
        raise TrainingError(f"unknown template set {request.templates!r}; use one of {sorted(TEMPLATES)}")
    if request.resume and not Path(request.resume).is_file():
        raise TrainingError(f"resume checkpoint {request.resume} does not exist")

    with torch.inference_mode(False), torch.enable_grad():
        # Read inside: tensors created under the executor's inference mode could not be updated in place.
        resume_state = ckpt.load_checkpoint(request.resume) if request.resume else None
        imgs = flatten_images(images)
        captions = split_captions(request.captions, len(imgs))
        examples, crop, down = prepare_examples(
            imgs, vae, model, request.resolution, request.resize, request.flip, captions
        )
        with (
            training_models(model, encoder, request.precision, request.gradient_checkpointing) as patcher,
            encoder.text_side(request.name) as text,
        ):
            denoise = ModelDenoiseSide(patcher, patcher.load_device, identical_prompt_batches=family.identical_prompt_batches)
            sampler = BatchSampler(examples, request.batch_size, crop, down, TEMPLATES[request.templates],
                                   random_crop=request.random_crop, flip=request.flip, seed=request.seed)
            config = TrainConfig(
                method=request.method, steps=request.steps, lr=request.lr, kappa=request.kappa, beta=request.beta,
                magnitude=request.magnitude, grad_accum=request.grad_accum, seed=request.seed,
                n_vectors=request.n_vectors, checkpoint_every=request.checkpoint_every,
            )
            trainer = Trainer(text, denoise, sampler, config, name=request.name, initializer=request.initializer,
                              device=encoder.device, family=family.name,
                              encoder_ids={s.key: s.encoder_id for s in family.encoders})
            text.bind_rows({k: int(p.shape[0]) for k, p in trainer.params.items()})
            text.prepare(sampler.templates[0] if all(c is None for c in captions) else captions[0])  # fail early
            if resume_state is not None:
                trainer.load_state_dict(resume_state)
            return _run(trainer, family, request, node_id, on_step, text)


@contextlib.contextmanager
def training_models(model, clip, precision: str = "auto", checkpointing: bool = False) -> Iterator[Any]:
    """A clone of the MODEL's patcher, loaded with the text encoder and ready for autograd; undone on exit.

    ``clip`` is the CLIP socket's value or its adapter. Call inside torch.inference_mode(False).
    Yields the patcher to train through.
    """
    encoder = clip if hasattr(clip, "text_side") else text_encoder(clip)
    patcher = model.clone()
    dtype = compute_dtype(precision, patcher)
    if dtype is not None:
        patcher.set_model_compute_dtype(dtype)
    comfy.model_management.load_models_gpu([patcher, *encoder.patchers], force_full_load=True)
    host.make_autograd_ready(patcher.model)
    for module in encoder.modules:
        host.make_autograd_ready(module)
    with (
        encoder.training(),
        gradient_checkpointing(patcher.model.diffusion_model, checkpointing),
        recast_in_backward(patcher.model.diffusion_model, *encoder.modules),
    ):
        yield patcher


def _checkpoint_path(name: str, step: int, tag: str = "step") -> Path:
    return host.checkpoints_folder() / formats.safe_name(name) / f"{tag}_{step:06d}.safetensors"


def _finish_concept(trainer: Trainer, text) -> Concept:
    concept = trainer.concept()
    for key, enc in concept.encoders.items():
        enc.weights_hash = weights_hash(text.vocabulary(key))
    return concept


def _run(trainer: Trainer, family: Family, request: TrainRequest, node_id, on_step, text) -> SessionResult:
    m_star = {k: i.m_star for k, i in trainer.inits.items()}
    title = f"DTI Train - {request.name} ({request.method}, {family.label})"
    progress = host.Progress(trainer.config.steps, node_id)
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
        host.check_interrupted()

    def checkpoint_callback(t: Trainer) -> None:
        checkpoints.append(ckpt.save_checkpoint(t.state_dict(), _checkpoint_path(request.name, t.step)))

    started = time.perf_counter()
    try:
        result = trainer.run(on_step=step_callback, on_checkpoint=checkpoint_callback)
    except BaseException as exc:
        if trainer.step > first_step:
            kept = _keep_partial(trainer, request, text, exc)
            if isinstance(exc, TrainingError):
                raise TrainingError(f"{exc} Saved what was learned so far: {kept}") from exc
        raise
    concept = _finish_concept(trainer, text)
    result.concept = concept
    saved = formats.save_concept(concept, host.embeddings_folder(), request.name, request.on_exists) if request.save else None
    plot = training_plot(result.history, m_star, title)
    summary = _summary(result, family, request, m_star, saved, checkpoints, time.perf_counter() - started, trainer.step - first_step)
    log.info("ComfyUI-DTI: %s", summary.replace("\n", " | "))
    return SessionResult(concept, result, family, saved, checkpoints, summary, plot)


def _keep_partial(trainer: Trainer, request: TrainRequest, text, exc: BaseException) -> str:
    """Write the last good vectors (a resumable checkpoint, and the concept if saving is on)."""
    kept = []
    try:
        path = ckpt.save_checkpoint(trainer.state_dict(), _checkpoint_path(request.name, trainer.step, "interrupted"))
        kept.append(f"checkpoint {path}")
        if request.save:
            concept = _finish_concept(trainer, text)
            concept.info["stopped_by"] = type(exc).__name__
            kept.append(f"concept {formats.save_concept(concept, host.embeddings_folder(), request.name, 'increment')}")
    except Exception as save_error:  # keep the original error visible; report the saving failure beside it
        log.error("ComfyUI-DTI: could not keep the partial result: %s", save_error)
    text_kept = "; ".join(kept) or "nothing (saving failed, see the log)"
    log.warning("ComfyUI-DTI: training stopped at step %d (%s); kept %s", trainer.step, type(exc).__name__, text_kept)
    return text_kept


def _summary(result: TrainResult, family: Family, req: TrainRequest, m_star: dict[str, float], saved: Path | None,
             checkpoints: list[Path], seconds: float, steps_run: int) -> str:
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
    if saved is not None and family.stock_embedding_prompts:
        head.append(f"saved {saved} — use it as embedding:{saved.stem} in any prompt")
        head.append("note: CLIPTextEncode caches by prompt text, so prompts already encoded with an older file of the same "
                    "name keep the old vectors until their text changes")
    elif saved is not None:
        head.append(f"saved {saved} — use it with DTI Load Embedding ({family.label} prompts ignore embedding:name)")
    if checkpoints:
        head.append(f"checkpoints: {', '.join(str(p) for p in checkpoints)}")
    return "\n".join(head)

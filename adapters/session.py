"""A DTI training run on the MODEL, CLIP and VAE the user already loaded.

Order: settings resolved against the family row and checked, then a preflight of everything that
could fail after training (folders, names, initializer, prompt), then images → latents, then the
models are loaded through ComfyUI's memory manager with room for the step's activations, then the
loop (previews sampled between steps when asked), then the save — which, if it fails, keeps the
vectors elsewhere and says where.

Everything temporary is undone in `finally`: the MODEL is trained through a clone of its patcher,
in-place residuals get out-of-place treatment only for the run, cast weight copies are re-cast in
backward instead of kept, gradient checkpointing is unwrapped, and the encoder's layer options are
reset. Weights are never written.
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
from ..dti.errors import DTIError, InputError, SaveError
from ..dti.settings import PRECISIONS, TrainSettings
from ..dti.templates import TEMPLATES
from ..dti.trainer import BatchSampler, Trainer, TrainResult, initializer_rows
from .autograd import gradient_checkpointing, make_autograd_ready, norm_input_clones
from .cast_backward import recast_in_backward
from .clip_text import weights_hash
from .denoise import ModelDenoiseSide
from .families import HostFamily, check_model_matches
from .folders import checkpoints_folder, embeddings_folder, unsaved_folder
from .images import flatten_images, prepare_examples, split_captions
from .models import describe_load, load_for_training, release, training_memory_estimate
from .plots import training_plot, with_frame
from .preview import Previews, check_sampler
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
    previews: Previews | None = None  # the frames sampled while training (None when previews are off)
    encoder: TextEncoder | None = None  # the text-encoder adapter the run used, to encode with the result


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
    resolved = settings.resolve(family.defaults, family.preview)
    resolved.check()
    formats.safe_name(resolved.name)
    if resolved.resume and not Path(resolved.resume).is_file():
        raise InputError(f"resume checkpoint {resolved.resume} does not exist; pick one from the list or 'none'")
    if resolved.preview_every:
        check_sampler(resolved.preview_sampler, resolved.preview_scheduler)
    return resolved


def train_concept(
    model,
    clip,
    vae,
    images,
    settings: TrainSettings,
    node_id: str | None = None,
    on_step: Callable[[Trainer, Any], None] | None = None,
    prompt: str | None = None,
) -> SessionResult:
    """Train a concept on the user's MODEL, text encoder and VAE; ``settings`` may hold family defaults.

    ``prompt`` is the prompt the caller encodes with the result: checked before training, like
    everything else that can be known before the first step; previews sample it when the settings
    give no preview prompt.
    """
    encoder = text_encoder(clip)
    family = encoder.family
    check_model_matches(model, family)
    s = resolve_settings(settings, family)
    imgs = flatten_images(images)
    captions = split_captions(s.captions, len(imgs))
    preflight(encoder, s, prompt)

    with torch.inference_mode(False), torch.enable_grad():
        # Read inside: tensors created under the executor's inference mode could not be updated in place.
        resume_state = ckpt.load_checkpoint(s.resume) if s.resume else None
        examples, crop, down = prepare_examples(imgs, vae, model, s.resolution, s.resize, s.flip, captions)
        with (
            training_models(model, encoder, s.precision, s.gradient_checkpointing,
                            (s.resolution, s.batch_size, down)) as patcher,
            encoder.text_side(s.name) as text,
        ):
            denoise = ModelDenoiseSide(patcher, patcher.load_device, identical_prompt_batches=family.identical_prompt_batches,
                                       guidance=family.guidance)
            sampler = BatchSampler(examples, s.batch_size, crop, down, TEMPLATES[s.templates],
                                   random_crop=s.random_crop, flip=s.flip, seed=s.seed)
            trainer = Trainer(text, denoise, sampler, s, device=encoder.device, family=family)
            if resume_state is not None:
                trainer.load_state_dict(resume_state)
            previews = None
            if s.preview_every:
                previews = Previews(model, vae, encoder, s, prompt or "a photo of {}",
                                    before=lambda: _restore_object_patches(patcher),
                                    after=lambda: _reload_after_preview(patcher, encoder, vae))
            session = _run(trainer, family, s, node_id, on_step, text, previews, patcher.dti_load)
            session.encoder = encoder
            return session


def preflight(encoder: TextEncoder, s: TrainSettings, prompt: str | None) -> None:
    """Everything that would otherwise fail after training, checked before any image is encoded:
    the folders the run writes to, if_exists = error, the initializer's sub-token count and the prompt."""
    if s.save:
        formats.check_writable(embeddings_folder(), f"concept {s.name!r}")
        formats.save_path_for(embeddings_folder(), s.name, s.on_exists)  # if_exists = error with an existing file
    if s.checkpoint_every:
        formats.check_writable(checkpoints_folder(), "training checkpoints")
    with encoder.text_side(s.name) as text:
        _rows, n = initializer_rows(text, s)
        if prompt is not None:
            text.bind_rows({key: n for key in text.encoder_keys()})
            text.prepare(prompt)  # MissingPlaceholderError for a prompt without the concept


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
    patcher.dti_required = training_memory_estimate(encoder.family.name, resolution, batch, checkpointing, step_dtype, down)
    _load_for_training(patcher, encoder)
    patcher.dti_load = describe_load(patcher, encoder.patchers, patcher.dti_required)
    with (
        encoder.training(),
        norm_input_clones(patcher.model.diffusion_model),  # Flux/Chroma blocks add residuals in place
        gradient_checkpointing(patcher.model.diffusion_model, checkpointing),
        # ComfyUI's cast copies of weights (bf16/fp8 storage, lowvram, LoRA) are re-cast in backward, not kept
        recast_in_backward(patcher.model.diffusion_model, *encoder.modules),
    ):
        yield patcher


def _load_for_training(patcher, encoder: TextEncoder) -> None:
    """Load the clone and the text encoder with room for the step (patcher.dti_required bytes beside the
    weights: ComfyUI keeps what fits and casts the rest per layer), ready for autograd."""
    load_for_training([patcher, *encoder.patchers], patcher.dti_required)
    make_autograd_ready(patcher.model)
    for module in encoder.modules:
        make_autograd_ready(module)


def _restore_object_patches(patcher) -> None:
    """Give the shared model back the attributes the training clone patched (e.g. its compute dtype),
    so that a preview samples the MODEL as the user loaded it; the clone re-applies them on reload."""
    patcher.unpatch_model(unpatch_weights=False)


def _reload_after_preview(patcher, encoder: TextEncoder, vae) -> None:
    """Sampling loaded the user's MODEL (which swaps the clone out) and the VAE: put training back as it was."""
    release(getattr(vae, "patcher", None))
    _load_for_training(patcher, encoder)


def _checkpoint_path(name: str, step: int, tag: str = "step") -> Path:
    return checkpoints_folder() / formats.safe_name(name) / f"{tag}_{step:06d}.safetensors"


def _finish_concept(trainer: Trainer, text, concept: Concept | None = None) -> Concept:
    """The trainer's concept (``concept`` when the caller has it already) with its vocabularies' fingerprints."""
    concept = trainer.concept() if concept is None else concept
    for key, enc in concept.encoders.items():
        enc.weights_hash = weights_hash(text.vocabulary(key))
    return concept


def _run(trainer: Trainer, family: HostFamily, settings: TrainSettings, node_id, on_step, text,
         previews: Previews | None = None, load_note: str = "") -> SessionResult:
    m_star = {k: i.m_star for k, i in trainer.inits.items()}
    title = f"DTI Train - {settings.name} ({settings.method}, {family.label})"
    progress = Progress(settings.steps, node_id)
    checkpoints: list[Path] = []
    first_step = trainer.step

    def step_callback(t: Trainer, record) -> None:
        if on_step is not None:
            on_step(t, record)
        frame = None
        if previews is not None and previews.due(t.step):
            frame = previews.render(t.concept().vectors(), t.step)
        latest = previews.frames[-1] if previews is not None and previews.frames else None
        progress.update(
            t.step,
            preview_factory=lambda: with_frame(training_plot(t.history, m_star, title), latest and latest.image,
                                               f"step {latest.step}" if latest else ""),
            data={"loss": record.loss, "norms": record.norms, "m_star": m_star, "skipped": record.skipped},
            force_preview=frame is not None,
        )
        if frame is not None:
            progress.send_frame(frame.step, frame.image)
        check_interrupted()

    def checkpoint_callback(t: Trainer) -> None:
        checkpoints.append(ckpt.save_checkpoint(t.state_dict(), _checkpoint_path(settings.name, t.step)))

    started = time.perf_counter()
    try:
        result = trainer.run(on_step=step_callback, on_checkpoint=checkpoint_callback)
    except BaseException as exc:
        if trainer.step > first_step:
            destinations = [embeddings_folder(), unsaved_folder()] if settings.save else []
            kept = _keep_vectors(trainer, settings, text, "interrupted", type(exc).__name__, destinations)
            if isinstance(exc, DTIError):  # the pack's own errors say what was kept; others pass unchanged
                exc.args = (f"{exc} Saved what was learned so far: {kept}", *exc.args[1:])
        raise
    concept = _finish_concept(trainer, text, result.concept)
    saved = None
    if settings.save:
        try:
            saved = formats.save_concept(concept, embeddings_folder(), settings.name, settings.on_exists)
        except (OSError, DTIError) as exc:
            kept = _keep_vectors(trainer, settings, text, "unsaved", None, [unsaved_folder()])
            raise SaveError(f"{exc} The trained vectors were kept: {kept}. Once the folder is fixed, copy the concept file "
                            "into the embeddings folder, or resume from the checkpoint with steps set to the steps done") from exc
    plot = training_plot(result.history, m_star, title)
    summary = _summary(result, family, settings, m_star, saved, checkpoints, time.perf_counter() - started, trainer.step - first_step,
                       load_note)
    if previews is not None:
        summary += (f"\npreviews: {len(previews.frames)} frame(s) at steps {', '.join(str(f.step) for f in previews.frames)}, "
                    f"{previews.seconds:.1f} s of sampling")
    log.info("ComfyUI-DTI: %s", summary.replace("\n", " | "))
    return SessionResult(concept, result, family, settings, saved, checkpoints, summary, plot, previews)


def _keep_vectors(trainer: Trainer, settings: TrainSettings, text, tag: str, stopped_by: str | None,
                  destinations: list[Path]) -> str:
    """Write the last good vectors wherever they can go; say where, for the user's message.

    Always a resumable checkpoint; the concept file to the first of ``destinations`` that takes it
    (and to the unsaved folder when nothing else could be written at all).
    """
    kept, failed = [], []
    try:
        kept.append(f"checkpoint {ckpt.save_checkpoint(trainer.state_dict(), _checkpoint_path(settings.name, trainer.step, tag))}")
    except (OSError, DTIError) as e:
        failed.append(str(e))
    if not kept and not destinations:
        destinations = [unsaved_folder()]
    concept = _finish_concept(trainer, text)
    if stopped_by:
        concept.info["stopped_by"] = stopped_by
    for folder in destinations:
        try:
            kept.append(f"concept {formats.save_concept(concept, folder, settings.name, 'increment')}")
            break
        except (OSError, DTIError) as e:
            failed.append(str(e))
    for problem in failed:  # keep the original error visible; report each saving failure beside it
        log.error("ComfyUI-DTI: could not keep the vectors: %s", problem)
    text_kept = "; ".join(kept) or f"nothing — {' / '.join(failed)}"
    log.warning("ComfyUI-DTI: step %d of %s; kept %s", trainer.step, settings.name, text_kept)
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

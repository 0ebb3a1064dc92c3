"""One training loop for every method (dti, ti, ti_rescaled, crossinit), over two small protocols.

The loop never sees a host: a TextSide turns prompts plus the current concept rows into
conditioning (with gradient) and exposes each encoder's vocabulary; a DenoiseSide turns latents
plus that conditioning into the model's native denoising loss. Everything else — sampling images,
templates, crops and flips, accumulation, the optimizer, NaN handling, checkpoints — lives here.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from . import magnitude, sphere
from .concept import Concept, EncoderConcept
from .errors import InputError, TrainingDiverged, TrainingError
from .families import Family
from .optim import build_optimizer
from .settings import MAX_VECTORS, TrainSettings
from .templates import OBJECT_TEMPLATES

# --------------------------------------------------------------------------------------------
# Protocols the host adapters implement
# --------------------------------------------------------------------------------------------


class TextSide(Protocol):
    """Prompts + concept rows → conditioning with gradient, for one concept name."""

    def encoder_keys(self) -> list[str]:
        """Encoders that receive a learned vector, e.g. ["clip_l", "clip_g"]."""

    def bind_rows(self, n_rows: dict[str, int]) -> None:
        """Fix how many rows per encoder the concept has (prompts are laid out for that many)."""

    def prepare(self, prompt: str) -> Any:
        """Tokenize a prompt once (cached); raises MissingPlaceholderError if it never mentions the concept."""

    def vocabulary(self, key: str) -> torch.Tensor:
        """The raw token-embedding table (vocab, width) of that encoder, in the space rows are spliced into."""

    def initializer_rows(self, key: str, words: str) -> torch.Tensor:
        """Raw vocabulary rows of the words' sub-tokens, tokenized without special tokens: (k, width)."""

    def initializer_hidden(self, key: str, words: str) -> torch.Tensor:
        """The encoder's last hidden state at the words' sub-token positions (CrossInit): (k, width)."""

    def encode(self, prompts: list[str], rows: dict[str, torch.Tensor]) -> Any:
        """Conditioning for a batch of prompts; each prompt holds the placeholder "{}" where rows go."""

    def close(self) -> None:
        """Undo whatever the side changed on the encoder (layer options, hooks)."""


class DenoiseSide(Protocol):
    def loss(self, batch: Batch, cond: Any, generator: torch.Generator) -> torch.Tensor:
        """Mean native denoising loss of the batch under the conditioning (a scalar with gradient)."""


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class LatentExample:
    """One training image, encoded once: (C, h, w) latents, optionally also of the mirrored image."""

    latent: torch.Tensor
    original_size: tuple[int, int]  # (height, width) in pixels of the image before resizing
    flipped: torch.Tensor | None = None
    caption: str | None = None  # with "{}" where the concept goes; None → templates


@dataclass
class Batch:
    latents: torch.Tensor  # (B, C, h, w)
    prompts: list[str]
    original_sizes: list[tuple[int, int]]
    crops: list[tuple[int, int]]  # (top, left) in pixels
    target_size: tuple[int, int]  # (height, width) in pixels


class BatchSampler:
    """Epoch-shuffled images, a random template (or the image's caption), a crop and an optional flip."""

    def __init__(
        self,
        examples: list[LatentExample],
        batch_size: int,
        crop_size: tuple[int, int],
        downscale: int,
        templates: tuple[str, ...] = OBJECT_TEMPLATES,
        random_crop: bool = False,
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        if not examples:
            raise TrainingError("no training images: connect an IMAGE batch with at least one image")
        if batch_size < 1:
            raise TrainingError(f"batch size must be ≥ 1, got {batch_size}")
        for i, ex in enumerate(examples):
            h, w = ex.latent.shape[-2:]
            if h < crop_size[0] or w < crop_size[1]:
                raise TrainingError(
                    f"image {i} encodes to {h}×{w} latents, smaller than the {crop_size[0]}×{crop_size[1]} "
                    "crop; resize the images to the training resolution first"
                )
            if flip and ex.flipped is None:
                raise TrainingError("flip is on but an example has no mirrored latent")
        self.examples = examples
        self.batch_size = batch_size
        self.crop_size = crop_size
        self.downscale = downscale
        self.templates = templates
        self.random_crop = random_crop
        self.flip = flip
        self.rng = random.Random(seed)
        self._order: list[int] = []

    def state(self) -> dict[str, Any]:
        return {"rng": repr(self.rng.getstate()), "order": list(self._order)}

    def load_state(self, state: dict[str, Any]) -> None:
        import ast

        self.rng.setstate(_to_tuple(ast.literal_eval(state["rng"])))
        self._order = list(state["order"])

    def prompts(self) -> list[str]:
        """Every distinct prompt a batch can hold (captions where given, templates otherwise)."""
        out = [ex.caption for ex in self.examples if ex.caption is not None]
        if len(out) < len(self.examples):
            out.extend(self.templates)
        return list(dict.fromkeys(out))

    def _next_index(self) -> int:
        if not self._order:
            self._order = list(range(len(self.examples)))
            self.rng.shuffle(self._order)
        return self._order.pop()

    def next(self) -> Batch:
        latents, prompts, sizes, crops = [], [], [], []
        ch, cw = self.crop_size
        for _ in range(self.batch_size):
            ex = self.examples[self._next_index()]
            lat = ex.latent
            if self.flip and self.rng.random() < 0.5:
                lat = ex.flipped
            h, w = lat.shape[-2:]
            if self.random_crop:
                top, left = self.rng.randint(0, h - ch), self.rng.randint(0, w - cw)
            else:
                top, left = (h - ch) // 2, (w - cw) // 2
            latents.append(lat[..., top : top + ch, left : left + cw])
            crops.append((top * self.downscale, left * self.downscale))
            sizes.append(ex.original_size)
            prompts.append(ex.caption if ex.caption is not None else self.rng.choice(self.templates))
        return Batch(
            latents=torch.stack(latents),
            prompts=prompts,
            original_sizes=sizes,
            crops=crops,
            target_size=(ch * self.downscale, cw * self.downscale),
        )


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(i) for i in x) if isinstance(x, (list, tuple)) else x


# --------------------------------------------------------------------------------------------
# Configuration and state
# --------------------------------------------------------------------------------------------


# Not settings: fixed by the method (CrossInit's pull weight) and by how forgiving the loop is.
CROSSINIT_LAMBDA = 1e-5
NAN_PATIENCE = 5


@dataclass
class EncoderInit:
    key: str
    m_star: float
    stats: magnitude.NormStats
    mu: torch.Tensor  # (n, d) unit rows: the prior mean and DTI's start
    start: torch.Tensor  # (n, d) the trainable tensor's first value (unit rows for dti)
    anchor: torch.Tensor | None = None  # CrossInit's pull target
    note: str = ""


def initializer_rows(text: TextSide, settings: TrainSettings) -> tuple[dict[str, torch.Tensor], int]:
    """The initializer's vocabulary rows per encoder and the number of vectors to train.

    The rule: one vector per sub-token, at most MAX_VECTORS sub-tokens per encoder (refused above,
    naming the count); ``vectors`` may ask for more (rows repeat) but never fewer. Cheap — a
    tokenizer and a table lookup — so the session calls it before any image is encoded.
    """
    words = settings.initializer.strip()  # TrainSettings.check refused an empty one
    raw: dict[str, torch.Tensor] = {}
    for key in text.encoder_keys():
        rows = text.initializer_rows(key, words).detach().to(torch.float32).cpu()
        if rows.ndim != 2 or rows.shape[0] == 0:
            raise InputError(f"the initializer {words!r} tokenizes to nothing for {key}; use an ordinary word the encoder knows")
        if rows.shape[0] > MAX_VECTORS:
            raise InputError(
                f"the initializer {words[:60]!r}{'…' if len(words) > 60 else ''} has {rows.shape[0]} sub-tokens for {key}; "
                f"at most {MAX_VECTORS} (one vector each): use one to a few words close to the concept"
            )
        if bool((torch.linalg.vector_norm(rows, dim=-1) == 0).any()):
            raise InputError(f"the initializer {words!r} maps to an all-zero {key} row (a padding token); pick another word")
        raw[key] = rows
    n_tokens = max(r.shape[0] for r in raw.values())
    n = settings.n_vectors or n_tokens
    if n < n_tokens:
        raise InputError(
            f"the initializer {words!r} has {n_tokens} sub-tokens but only {n} vector(s) were asked for; "
            "use a shorter initializer or set vectors to -1 (one per sub-token)"
        )
    return raw, n


def initialize(text: TextSide, settings: TrainSettings) -> dict[str, EncoderInit]:
    """μ, m* and the first value of the trainable tensor, per encoder."""
    words = settings.initializer.strip()
    raw, n = initializer_rows(text, settings)
    out = {}
    for key, rows in raw.items():
        note = ""
        if rows.shape[0] < n:
            # More vectors than sub-tokens: repeat the sub-token rows cyclically.
            idx = torch.arange(n) % rows.shape[0]
            note = f"{key}: {n} vectors from {rows.shape[0]} sub-token(s) of {words!r}, rows repeated cyclically"
            rows = rows[idx]
        stats = magnitude.norm_stats(text.vocabulary(key))
        m_star = magnitude.target_norm(stats, settings.m_star_policy)
        mu = sphere.normalize(rows.double()).float()
        anchor = None
        if settings.method == "dti":
            start = mu.clone()
        elif settings.method == "crossinit":
            hidden = text.initializer_hidden(key, words).detach().to(torch.float32).cpu()
            if hidden.shape[0] < n:
                hidden = hidden[torch.arange(n) % hidden.shape[0]]
            start, anchor = hidden[:n].clone(), hidden[:n].clone()
        else:
            start = rows.clone()
        out[key] = EncoderInit(key=key, m_star=m_star, stats=stats, mu=mu, start=start, anchor=anchor, note=note)
    return out


@dataclass
class StepRecord:
    step: int
    loss: float
    norms: dict[str, float]  # mean row norm per encoder
    skipped: bool = False


@dataclass
class TrainResult:
    concept: Concept
    history: list[StepRecord]
    seconds: float
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


class Trainer:
    """Owns the trainable tensors and the optimizer; ``run`` advances them step by step.

    The last good rows are always available through ``concept()``, also after an exception
    (interruption, NaN), so the caller can save them.
    """

    def __init__(
        self,
        text: TextSide,
        denoise: DenoiseSide,
        sampler: BatchSampler,
        settings: TrainSettings,
        device: torch.device | str = "cpu",
        family: Family | None = None,
        nan_patience: int = NAN_PATIENCE,
    ) -> None:
        settings.check()
        self.text, self.denoise, self.sampler, self.settings = text, denoise, sampler, settings
        self.family = family
        self.nan_patience = nan_patience
        self.device = torch.device(device)
        self.inits = initialize(text, settings)
        self.params: dict[str, torch.Tensor] = {
            k: init.start.to(self.device, torch.float32).clone().requires_grad_(True) for k, init in self.inits.items()
        }
        text.bind_rows({k: int(p.shape[0]) for k, p in self.params.items()})
        for prompt in sampler.prompts():  # a prompt without the concept fails here, before any step
            text.prepare(prompt)
        groups = [{"params": [self.params[k]], "mu": self.inits[k].mu.to(self.device)} for k in self.params]
        self.optimizer = build_optimizer(settings.method, groups, lr=settings.lr, kappa=settings.kappa, beta=settings.beta)
        self.generator = torch.Generator(device="cpu").manual_seed(settings.seed)
        self.step = 0
        self.history: list[StepRecord] = []
        self._last_good = {k: p.detach().clone() for k, p in self.params.items()}
        self._nan_streak = 0
        self.notes = [i.note for i in self.inits.values() if i.note]
        # CrossInit's pull targets, on the device once rather than every micro-batch
        self._anchors = {k: i.anchor.to(self.device) for k, i in self.inits.items() if i.anchor is not None}

    # -- rows ---------------------------------------------------------------------------------

    def rows(self) -> dict[str, torch.Tensor]:
        """The rows spliced into the encoders: m*·v for dti, the raw vectors otherwise."""
        if self.settings.method == "dti":
            return {k: self.inits[k].m_star * p for k, p in self.params.items()}
        return dict(self.params)

    def concept(self) -> Concept:
        """The last good state as a Concept (ti_rescaled: rows moved to m*)."""
        method = self.settings.method
        encoders = {}
        for key, value in self._last_good.items():
            init = self.inits[key]
            encoder_id = self.family.encoder(key).encoder_id if self.family is not None else None
            common = dict(mu=init.mu.clone(), encoder_id=encoder_id)
            if method == "dti":
                v = sphere.normalize(value.double().cpu()).float()
                enc = EncoderConcept(directions=v, norms=torch.full((v.shape[0],), init.m_star), m_star=init.m_star, **common)
            else:
                enc = EncoderConcept.from_vectors(value.cpu(), **common)
                enc.m_star = init.m_star if method == "ti_rescaled" else None
                if method == "ti_rescaled":
                    enc = enc.rescaled(init.m_star)
            encoders[key] = enc
        info = self.settings.as_info()
        info.update(crossinit_lambda=CROSSINIT_LAMBDA, initializer=self.settings.initializer, steps_done=self.step,
                    m_star={k: i.m_star for k, i in self.inits.items()})
        family = self.family.name if self.family is not None else None
        return Concept(name=self.settings.name, encoders=encoders, method=method, family=family, info=info)

    # -- evaluation ----------------------------------------------------------------------------

    def eval_loss(self, batch: Batch, seed: int, repeats: int = 1) -> float:
        """Loss of the current rows on a fixed batch with fixed noise and timesteps (no gradient)."""
        total = 0.0
        with torch.no_grad():
            for r in range(repeats):
                gen = torch.Generator(device="cpu").manual_seed(seed + r)
                cond = self.text.encode(batch.prompts, {k: v.detach() for k, v in self.rows().items()})
                total += float(self.denoise.loss(batch, cond, gen))
        return total / repeats

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "name": self.settings.name,
            "initializer": self.settings.initializer,
            "config": self._checkpoint_config(),
            "params": {k: v.detach().cpu().clone() for k, v in self._last_good.items()},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "sampler": self.sampler.state(),
            "history": [[r.step, r.loss, r.norms, r.skipped] for r in self.history],
        }

    def _checkpoint_config(self) -> dict[str, Any]:
        """The settings a checkpoint records (and a resumed run must share: method and magnitude)."""
        return self.settings.as_info()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("config", {})
        mine = self._checkpoint_config()
        for field_name in ("method", "magnitude"):
            if saved.get(field_name) != mine[field_name]:
                raise TrainingError(
                    f"checkpoint was trained with {field_name}={saved.get(field_name)!r}, this run uses "
                    f"{mine[field_name]!r}; match the settings or start fresh"
                )
        params = state["params"]
        if set(params) != set(self.params):
            raise TrainingError(f"checkpoint holds encoders {sorted(params)}, this model has {sorted(self.params)}")
        with torch.no_grad():
            for k, p in self.params.items():
                if params[k].shape != p.shape:
                    raise TrainingError(
                        f"checkpoint {k} rows are {tuple(params[k].shape)}, this run expects {tuple(p.shape)} "
                        "(different initializer or number of vectors)"
                    )
                p.copy_(params[k].to(p.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.sampler.load_state(state["sampler"])
        self.step = int(state["step"])
        self.history = [StepRecord(int(s), float(loss), dict(n), bool(sk)) for s, loss, n, sk in state.get("history", [])]
        self._last_good = {k: p.detach().clone() for k, p in self.params.items()}

    # -- the loop ------------------------------------------------------------------------------

    def _norms(self) -> dict[str, float]:
        return {k: float(torch.linalg.vector_norm(r.detach(), dim=-1).mean()) for k, r in self.rows().items()}

    def train_step(self) -> StepRecord:
        cfg = self.settings
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        finite = True
        for _ in range(cfg.grad_accum):
            batch = self.sampler.next()
            rows = self.rows()
            cond = self.text.encode(batch.prompts, rows)
            loss = self.denoise.loss(batch, cond, self.generator)
            if cfg.method == "crossinit":
                pull = sum(
                    torch.nn.functional.mse_loss(self.params[k], self._anchors[k]) for k in self.params
                )
                loss = loss + CROSSINIT_LAMBDA * pull
            if not bool(torch.isfinite(loss)):
                finite = False
                break
            (loss / cfg.grad_accum).backward()
            total += float(loss.detach()) / cfg.grad_accum
        if finite:
            finite = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in self.params.values())
        self.step += 1
        if not finite:
            return self._skip(total)
        self.optimizer.step()
        if not all(bool(torch.isfinite(p).all()) for p in self.params.values()):
            return self._skip(total)
        self._nan_streak = 0
        self._last_good = {k: p.detach().clone() for k, p in self.params.items()}
        record = StepRecord(self.step, total, self._norms())
        self.history.append(record)
        return record

    def _skip(self, loss: float) -> StepRecord:
        """Undo a step whose loss or gradient was not finite; give up after nan_patience in a row."""
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self._last_good[k])
        self.optimizer.zero_grad(set_to_none=True)
        self._nan_streak += 1
        record = StepRecord(self.step, float("nan"), self._norms(), skipped=True)
        self.history.append(record)
        if self._nan_streak >= self.nan_patience:
            raise TrainingDiverged(
                f"loss or gradient was NaN/inf for {self._nan_streak} steps in a row (last at step {self.step}); "
                "the last good vectors were kept. Lower the learning rate, train in fp32/bf16 instead of fp16, "
                "or check the images"
            )
        return record

    def run(
        self,
        on_step: Callable[[Trainer, StepRecord], None] | None = None,
        on_checkpoint: Callable[[Trainer], None] | None = None,
    ) -> TrainResult:
        started = time.perf_counter()
        while self.step < self.settings.steps:
            record = self.train_step()
            if on_step is not None:
                on_step(self, record)
            every = self.settings.checkpoint_every
            if on_checkpoint is not None and every > 0 and self.step % every == 0 and self.step < self.settings.steps:
                on_checkpoint(self)
        return TrainResult(self.concept(), list(self.history), time.perf_counter() - started, list(self.notes))

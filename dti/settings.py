"""The one settings object of a training run, from the node's inputs to the trainer.

Every field is set by a node input (DTI Train or DTI Train Options). Numbers whose best value
depends on the model family or the initializer take ``DEFAULT`` (-1), resolved by ``resolve``
against the family's row in ``families.py`` — the only "use the default" convention in the pack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import InputError
from .families import PreviewDefaults, TrainDefaults
from .optim import METHODS, TI_ADAMW_LR
from .templates import TEMPLATES

DEFAULT = -1  # "the family's default" (or, for vectors, "one per initializer sub-token")

# Choices of the string settings; node combos are built from these.
MAGNITUDES = ("mean", "median", "min", "max", "custom")
RESIZE_MODES = ("resize and crop", "keep size")
PRECISIONS = ("auto", "bf16", "fp32", "as loaded")
ON_EXISTS = ("increment", "overwrite", "error")
TEMPLATE_SETS = tuple(TEMPLATES)
MAX_VECTORS = 16  # vectors per encoder, and sub-tokens an initializer may have
MAX_CHECKPOINTS = 100  # checkpoints one run may write (steps / checkpoint_every)


@dataclass(frozen=True)
class TrainSettings:
    name: str = "my_concept"
    initializer: str = "dog"
    method: str = "dti"
    steps: int = DEFAULT
    lr: float = DEFAULT  # dti: the angle (radians) each row turns per step; AdamW methods: the AdamW rate
    kappa: float = DEFAULT  # vMF prior concentration; 0 disables the prior
    beta: float = 0.0  # 0: normalized step of exactly lr; > 0: EMA of the squared gradient norm
    magnitude: str = "mean"  # m* policy (MAGNITUDES)
    magnitude_value: float = 0.4  # m* when magnitude is "custom"
    batch_size: int = DEFAULT
    grad_accum: int = DEFAULT
    resolution: int = DEFAULT
    resize: str = RESIZE_MODES[0]
    random_crop: bool = False
    flip: bool = False
    seed: int = 42
    templates: str = "object"
    captions: str = ""
    vectors: int = DEFAULT  # DEFAULT: one per initializer sub-token
    precision: str = "auto"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 0  # 0: never
    resume: str | None = None  # path of a checkpoint to continue from
    save: bool = True
    on_exists: str = "increment"
    # Previews: every N steps the current vectors are sampled with these settings (0 = off).
    # Empty strings and DEFAULT mean the family's preview defaults (families.py PreviewDefaults);
    # an empty prompt means DTI Train's own prompt.
    preview_every: int = 0
    preview_prompt: str = ""
    preview_steps: int = DEFAULT
    preview_cfg: float = DEFAULT
    preview_sampler: str = ""
    preview_scheduler: str = ""
    preview_width: int = DEFAULT
    preview_height: int = DEFAULT
    preview_seed: int = 0

    def resolve(self, defaults: TrainDefaults, preview: PreviewDefaults | None = None) -> TrainSettings:
        """Every DEFAULT replaced by the family's value (vectors stays DEFAULT: the initializer decides)."""
        adamw = self.method != "dti"
        pick = {
            "steps": defaults.steps,
            "lr": TI_ADAMW_LR if adamw else defaults.lr,
            "kappa": defaults.kappa,
            "batch_size": defaults.batch_size,
            "grad_accum": defaults.grad_accum,
            "resolution": defaults.resolution,
        }
        out = replace(self, **{k: v for k, v in pick.items() if getattr(self, k) == DEFAULT})
        return out.resolve_preview(preview) if preview is not None else out

    def resolve_preview(self, preview: PreviewDefaults) -> TrainSettings:
        """The preview settings with the family's preview defaults filled in."""
        pick = {"preview_steps": preview.steps, "preview_cfg": preview.cfg, "preview_width": preview.size,
                "preview_height": preview.size}
        out = {k: v for k, v in pick.items() if getattr(self, k) == DEFAULT}
        if not self.preview_sampler:
            out["preview_sampler"] = preview.sampler
        if not self.preview_scheduler:
            out["preview_scheduler"] = preview.scheduler
        return replace(self, **out)

    @property
    def m_star_policy(self) -> str | float:
        """What magnitude.target_norm takes: a statistic's name or the custom norm."""
        return self.magnitude_value if self.magnitude == "custom" else self.magnitude

    @property
    def n_vectors(self) -> int | None:
        return None if self.vectors == DEFAULT else self.vectors

    def check(self) -> None:
        """InputError naming the setting for any value that cannot work. Call on resolved settings."""
        _choice("method", self.method, METHODS)
        _choice("magnitude", self.magnitude, MAGNITUDES)
        _choice("resize", self.resize, RESIZE_MODES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("if_exists", self.on_exists, ON_EXISTS)
        _choice("templates", self.templates, TEMPLATE_SETS)
        if not self.initializer.strip():
            raise InputError("initializer is empty: give a word close to the concept, e.g. 'dog' or 'painting'")
        for key, what in (("steps", "steps"), ("batch_size", "batch size"), ("grad_accum", "gradient accumulation"),
                          ("resolution", "resolution")):
            if getattr(self, key) < 1:
                raise InputError(f"{what} ({key}) must be ≥ 1, or -1 for the family default; got {getattr(self, key)}")
        if not (self.lr > 0) or not math.isfinite(self.lr):
            raise InputError(f"learning rate (learning_rate) must be a positive number, or -1 for the family default; got {self.lr}")
        if self.method == "dti" and self.lr > math.pi / 2:
            raise InputError(f"learning_rate {self.lr} is an angle per step in radians for dti; values above π/2 make no sense")
        if self.kappa < 0 or not math.isfinite(self.kappa):
            raise InputError(f"kappa must be ≥ 0 (or -1 for the family default), got {self.kappa}")
        if not (0.0 <= self.beta < 1.0):
            raise InputError(f"beta must lie in [0, 1), got {self.beta}")
        if self.magnitude == "custom" and not (self.magnitude_value > 0 and math.isfinite(self.magnitude_value)):
            raise InputError(f"magnitude_value must be a positive norm, got {self.magnitude_value}")
        if self.vectors != DEFAULT and not (1 <= self.vectors <= MAX_VECTORS):
            raise InputError(f"vectors must be 1–{MAX_VECTORS} (or -1 for one per initializer sub-token), got {self.vectors}")
        if self.checkpoint_every < 0:
            raise InputError(f"checkpoint_every must be ≥ 0 (0 = never), got {self.checkpoint_every}")
        if self.checkpoint_every and self.steps // self.checkpoint_every > MAX_CHECKPOINTS:
            raise InputError(
                f"checkpoint_every {self.checkpoint_every} with {self.steps} steps would write {self.steps // self.checkpoint_every} "
                f"checkpoints; at most {MAX_CHECKPOINTS}: set checkpoint_every to {-(-self.steps // MAX_CHECKPOINTS)} or more"
            )
        self.check_preview()

    def check_preview(self) -> None:
        """InputError for preview settings that cannot work (sampler names are checked by the host)."""
        if self.preview_every < 0:
            raise InputError(f"preview_every must be ≥ 0 (0 = no previews), got {self.preview_every}")
        if self.preview_every == 0:
            return
        if self.preview_steps < 1:
            raise InputError(f"preview_steps must be ≥ 1, or -1 for the family default; got {self.preview_steps}")
        if not (self.preview_cfg >= 0) or not math.isfinite(self.preview_cfg):
            raise InputError(f"preview_cfg must be ≥ 0, or -1 for the family default; got {self.preview_cfg}")
        for key in ("preview_width", "preview_height"):
            if getattr(self, key) < 16:
                raise InputError(f"{key} must be at least 16 pixels, or -1 for the family default; got {getattr(self, key)}")

    def as_info(self) -> dict[str, Any]:
        """What a saved concept records about how it was trained (format version 1's keys)."""
        return {"method": self.method, "steps": self.steps, "lr": self.lr, "kappa": self.kappa, "beta": self.beta,
                "magnitude": self.m_star_policy, "grad_accum": self.grad_accum, "seed": self.seed,
                "n_vectors": self.n_vectors}


def _choice(name: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        raise InputError(f"unknown {name} {value!r}; choose one of {', '.join(options)}")


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(TrainSettings))

"""The Concept record: what a learned (or loaded) embedding is, per text encoder.

A row is stored as direction × norm. For a DTI concept every row of an encoder has norm m*; an
ordinary TI embedding loaded from disk keeps its own per-row norms until it is rescaled.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from . import sphere
from .errors import ConceptError
from .families import ENCODER_KEYS, describe_width

# Re-exported for callers that only need the concept record.
__all__ = ["ENCODER_KEYS", "Concept", "EncoderConcept", "describe_width"]


@dataclass
class EncoderConcept:
    """One encoder's rows: unit directions (n, d), per-row norms (n,), the prior mean μ (n, d)."""

    directions: torch.Tensor
    norms: torch.Tensor
    mu: torch.Tensor | None = None
    m_star: float | None = None  # the encoder's target norm, when the rows were trained/rescaled to it
    encoder_id: str | None = None  # e.g. "clip-l", "gemma-2-2b-it": a different id is another space
    weights_hash: str | None = None
    # The rows exactly as read from a file: direction × norm rounds in the last bit, and a loaded
    # embedding must encode bit for bit like the same file in a stock prompt.
    exact: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.directions = self.directions.detach().to(torch.float32).cpu()
        if self.directions.ndim == 1:
            self.directions = self.directions.unsqueeze(0)
        if self.directions.ndim != 2 or self.directions.shape[0] == 0:
            raise ConceptError(f"directions must be (n_vectors, width) with n ≥ 1, got {tuple(self.directions.shape)}")
        self.norms = torch.as_tensor(self.norms, dtype=torch.float32).detach().cpu().reshape(-1)
        if self.norms.numel() == 1 and self.directions.shape[0] > 1:
            self.norms = self.norms.expand(self.directions.shape[0]).clone()
        if self.norms.numel() != self.directions.shape[0]:
            raise ConceptError(f"{self.directions.shape[0]} directions but {self.norms.numel()} norms")
        if not bool(torch.isfinite(self.directions).all()) or not bool(torch.isfinite(self.norms).all()):
            raise ConceptError("concept rows contain NaN or infinite values")
        ok, reason = sphere.check_unit(self.directions, atol=1e-4)
        if not ok:
            raise ConceptError(f"concept directions must be unit rows: {reason}")
        if self.mu is not None:
            self.mu = self.mu.detach().to(torch.float32).cpu().reshape(self.directions.shape)
        if self.exact is not None:
            self.exact = self.exact.detach().to(torch.float32).cpu().reshape(self.directions.shape)

    @classmethod
    def from_vectors(cls, vectors: torch.Tensor, **kwargs: Any) -> EncoderConcept:
        vectors = vectors.detach().to(torch.float32).cpu()
        if vectors.ndim == 1:
            vectors = vectors.unsqueeze(0)
        norms = torch.linalg.vector_norm(vectors, dim=-1)
        if bool((norms <= 0).any()):
            rows = torch.nonzero(norms <= 0).flatten().tolist()
            raise ConceptError(f"row(s) {rows} of the {vectors.shape[0]} vector(s) are all zeros and have no direction; "
                               "use an embedding whose rows are all non-zero")
        return cls(directions=vectors / norms[:, None], norms=norms, exact=vectors.clone(), **kwargs)

    @property
    def width(self) -> int:
        return int(self.directions.shape[1])

    @property
    def n_vectors(self) -> int:
        return int(self.directions.shape[0])

    def vectors(self) -> torch.Tensor:
        """The rows e = norm · v, fp32, shape (n, d) (bit-exact file rows for a loaded embedding)."""
        if self.exact is not None:
            return self.exact.clone()
        return self.norms[:, None] * self.directions

    def rescaled(self, m_star: float) -> EncoderConcept:
        """Every row moved to norm m* (the paper's "TI-rescaled" when applied to a TI embedding)."""
        if not (m_star > 0):
            raise ConceptError(f"target norm must be positive, got {m_star!r}")
        return replace(self, norms=torch.full_like(self.norms, float(m_star)), m_star=float(m_star), exact=None)


@dataclass
class Concept:
    """A named concept over one or more encoders, plus how it was made."""

    name: str
    encoders: dict[str, EncoderConcept]
    method: str = "dti"  # dti | ti | ti_rescaled | crossinit | imported | slerp | mean
    family: str | None = None  # sd1 | sdxl | lumina2 | sana
    info: dict[str, Any] = field(default_factory=dict)  # κ, η, steps, initializer, seed, …

    def __post_init__(self) -> None:
        if not self.encoders:
            raise ConceptError("a concept needs at least one encoder's rows")
        unknown = [k for k in self.encoders if k not in ENCODER_KEYS]
        if unknown:
            raise ConceptError(f"unknown encoder keys {unknown}; known: {', '.join(ENCODER_KEYS)}")

    @property
    def n_vectors(self) -> int:
        return max(e.n_vectors for e in self.encoders.values())

    def vectors(self) -> dict[str, torch.Tensor]:
        return {k: e.vectors() for k, e in self.encoders.items()}

    def describe(self) -> str:
        parts = []
        for key, enc in self.encoders.items():
            norms = ", ".join(f"{float(n):.4g}" for n in enc.norms[:4])
            more = "…" if enc.n_vectors > 4 else ""
            target = f", m* {enc.m_star:.4g}" if enc.m_star is not None else ""
            parts.append(f"{key}: {enc.n_vectors}×{enc.width}, norms [{norms}{more}]{target}")
        fam = f" [{self.family}]" if self.family else ""
        return f"{self.name} ({self.method}){fam} — " + "; ".join(parts)

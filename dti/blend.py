"""Blending concepts: slerp of directions at interpolated norm, lerp for contrast, weighted means."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch

from . import sphere
from .concept import Concept, EncoderConcept
from .errors import BlendError, ConceptError

MODES = ("slerp", "lerp")
MAX_T_VALUES = 64  # one conditioning (one image in the batch) per t value
MAX_CONCEPTS = 4  # the node has four concept inputs; weights give one number per concept


def check_compatible(concepts: Sequence[Concept]) -> list[str]:
    """The shared encoder keys, or BlendError naming what differs (encoders, row counts, widths, spaces)."""
    if len(concepts) == 0:
        raise BlendError("no concepts to blend: connect at least two")
    keys = list(concepts[0].encoders)
    for c in concepts[1:]:
        if set(c.encoders) != set(keys):
            raise BlendError(
                f"{concepts[0].name!r} has encoders {sorted(keys)} but {c.name!r} has {sorted(c.encoders)}; "
                "blend concepts made for the same model family"
            )
    for key in keys:
        encs = [c.encoders[key] for c in concepts]
        first = encs[0]
        for c, e in zip(concepts[1:], encs[1:]):
            if e.width != first.width:
                raise BlendError(f"{key}: {concepts[0].name!r} rows are {first.width} wide, {c.name!r} rows {e.width}")
            if e.n_vectors != first.n_vectors:
                raise BlendError(
                    f"{key}: {concepts[0].name!r} has {first.n_vectors} vector(s), {c.name!r} has {e.n_vectors}; "
                    "interpolation pairs rows, so both need the same number (train with the same vectors setting)"
                )
            if first.encoder_id and e.encoder_id and first.encoder_id != e.encoder_id:
                raise BlendError(
                    f"{key}: {concepts[0].name!r} lives in the {first.encoder_id} space, {c.name!r} in {e.encoder_id}; "
                    "they are different encoders and cannot be blended"
                )
    return keys


def _common_m_star(encs: Sequence[EncoderConcept], weights: Sequence[float]) -> float | None:
    if any(e.m_star is None for e in encs):
        return None
    return float(sum(w * e.m_star for w, e in zip(weights, encs)))


def interpolate(a: Concept, b: Concept, t: float, mode: str = "slerp", name: str | None = None) -> Concept:
    """Concept at t between a (t=0) and b (t=1).

    slerp: each row's direction moves along the great circle at constant angular speed while its
    norm moves linearly between the two norms (so two DTI concepts at the same m* stay there).
    lerp: the plain straight line between the stored vectors, which shrinks the norm mid-way.
    """
    if mode not in MODES:
        raise BlendError(f"unknown mode {mode!r}; use one of {MODES}")
    t = float(t)
    if not (0.0 <= t <= 1.0):
        raise BlendError(f"t must lie in [0, 1], got {t}")
    keys = check_compatible([a, b])
    encoders = {}
    for key in keys:
        ea, eb = a.encoders[key], b.encoders[key]
        if t in (0.0, 1.0):  # endpoints are the concepts themselves, bit for bit
            encoders[key] = replace(ea if t == 0.0 else eb)
            continue
        if mode == "slerp":
            try:
                d = sphere.slerp(ea.directions.double(), eb.directions.double(), t).float()
            except ValueError as e:
                raise BlendError(f"{key}: {e}") from e
            norms = (1 - t) * ea.norms + t * eb.norms
            enc = EncoderConcept(directions=d, norms=norms, m_star=_common_m_star([ea, eb], [1 - t, t]))
        else:
            vec = (1 - t) * ea.vectors() + t * eb.vectors()
            try:
                enc = EncoderConcept.from_vectors(vec)
            except ConceptError as e:  # opposite rows meet at zero half-way
                raise BlendError(f"{key}: lerp at t={t:g} reaches the origin ({e}); use slerp, or another t") from e
        enc.encoder_id = ea.encoder_id or eb.encoder_id
        encoders[key] = enc
    return Concept(
        name=name or f"{a.name}-{b.name}-{t:g}",
        encoders=encoders,
        method=mode,
        family=a.family or b.family,
        info={"blend": mode, "t": t, "from": [a.name, b.name]},
    )


def weighted_mean(concepts: Sequence[Concept], weights: Sequence[float] | None = None, name: str | None = None) -> Concept:
    """Weighted Fréchet mean of the directions (per encoder and row), weighted mean of the norms."""
    keys = check_compatible(concepts)
    n = len(concepts)
    w = torch.tensor([1.0] * n if weights is None else [float(x) for x in weights], dtype=torch.float64)
    if w.numel() != n:
        raise BlendError(f"{n} concepts but {w.numel()} weights; give one weight per concept")
    if bool((w < 0).any()) or float(w.sum()) <= 0:
        raise BlendError(f"weights must be ≥ 0 with a positive sum, got {w.tolist()}")
    w = w / w.sum()
    encoders = {}
    for key in keys:
        encs = [c.encoders[key] for c in concepts]
        points = torch.stack([e.directions.double() for e in encs])
        try:
            d = sphere.spherical_mean(points, w).float()
        except ValueError as e:
            raise BlendError(f"{key}: {e}") from e
        norms = sum(float(wi) * e.norms for wi, e in zip(w, encs))
        enc = EncoderConcept(directions=d, norms=norms, m_star=_common_m_star(encs, w.tolist()))
        enc.encoder_id = encs[0].encoder_id
        encoders[key] = enc
    return Concept(
        name=name or "mean-" + "-".join(c.name for c in concepts),
        encoders=encoders,
        method="mean",
        family=concepts[0].family,
        info={"blend": "mean", "weights": w.tolist(), "from": [c.name for c in concepts]},
    )


def _numbers(text: str, error: str) -> list[float]:
    """A comma- (or semicolon-) separated list of numbers, or BlendError(error)."""
    try:
        return [float(x) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise BlendError(error) from None


def parse_weights(text: str) -> list[float] | None:
    """'1, 1, 2' → [1.0, 1.0, 2.0]; empty → None (equal weights)."""
    text = (text or "").strip()
    if not text:
        return None
    values = _numbers(text, f"weights {text!r} must be numbers separated by commas, e.g. 1, 1, 2")
    if len(values) > MAX_CONCEPTS:
        raise BlendError(f"weights {text!r} gives {len(values)} numbers; at most {MAX_CONCEPTS} (one per concept input)")
    bad = [v for v in values if not (math.isfinite(v) and v >= 0)]
    if bad:
        raise BlendError(f"weights must be finite numbers ≥ 0; got {bad}")
    return values


def parse_t_values(text: str) -> list[float]:
    """'0, 0.25, 0.5' or '0:1:5' (start:stop:count) → floats in [0, 1]."""
    text = (text or "").strip()
    if not text:
        return []
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise BlendError(f"range {text!r} must be start:stop:count, e.g. 0:1:5")
        try:
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise BlendError(f"range {text!r} must be start:stop:count with numbers, e.g. 0:1:5") from None
        if not (1 <= count <= MAX_T_VALUES):
            raise BlendError(f"range {text!r}: count is {count}; it must be 1–{MAX_T_VALUES} (one image per t value)")
        values = [start + (stop - start) * i / max(count - 1, 1) for i in range(count)]
    else:
        values = _numbers(text, f"t values {text!r} must be numbers separated by commas, e.g. 0, 0.5, 1")
        if len(values) > MAX_T_VALUES:
            raise BlendError(f"{len(values)} t values; at most {MAX_T_VALUES} (one image per t value)")
    bad = [v for v in values if not (0.0 <= v <= 1.0)]
    if bad:
        raise BlendError(f"t values must lie in [0, 1]; got {bad}")
    return values

"""A CLIP's vocabularies as the using nodes need them: tables, cached norm statistics, decoding,
and whether a concept fits this CLIP at all."""

from __future__ import annotations

import collections

import torch

from ..dti import formats, magnitude
from ..dti.concept import Concept
from ..dti.errors import ConceptMismatchError
from ..dti.families import describe_width, guess_family

_STATS: collections.OrderedDict = collections.OrderedDict()


def stats(t: torch.Tensor) -> tuple[magnitude.NormStats, torch.Tensor]:
    """Norm statistics and row norms of a table, cached while the same weights stay loaded."""
    key = (t.data_ptr(), tuple(t.shape), t.dtype, t.device.type)
    if key not in _STATS:
        norms = magnitude.row_norms(t)
        _STATS[key] = (magnitude.norm_stats(t, norms), norms)
        while len(_STATS) > 6:
            _STATS.popitem(last=False)
    _STATS.move_to_end(key)
    return _STATS[key]


def width_map(encoder) -> dict[int, str]:
    """This encoder's sub-encoders by width, for files that only say how wide their vectors are."""
    return {int(encoder.table(s.key).shape[1]): s.key for s in encoder.family.encoders}


def load_for(path, encoder):
    """formats.load_embedding against this encoder, with a mismatch error naming both widths and the family."""
    family = encoder.family
    try:
        return formats.load_embedding(path, widths=width_map(encoder))
    except formats.UnknownWidthError as e:
        listed = ", ".join(f"{k} {w} wide" for w, k in sorted(e.known.items()))
        raise ConceptMismatchError(
            f"{e.path.name}: its vectors are {e.width} wide — {describe_width(e.width)} — but this CLIP is {family.label} "
            f"({listed}). The file belongs to another model family; load an embedding made for {family.label}"
        ) from e


def fit(concept: Concept, encoder, source: str | None = None) -> tuple[Concept, list[str]]:
    """The concept restricted to this encoder's sub-encoders, or ConceptMismatchError; plus notes for the user."""
    family = encoder.family
    what = source or f"concept {concept.name!r}"
    notes = []
    missing = [s.key for s in family.encoders if s.key not in concept.encoders]
    if missing:
        made_for = guess_family(set(concept.encoders), concept.family)
        have = ", ".join(f"{k} ({e.width} wide)" for k, e in concept.encoders.items())
        raise ConceptMismatchError(
            f"{what} has {have} — rows for {made_for} — but this CLIP is {family.label} and needs "
            f"{', '.join(s.key for s in family.encoders)}; missing {', '.join(missing)}. Use a concept trained for {family.label}"
        )
    encoders = {}
    for sub in family.encoders:
        enc = concept.encoders[sub.key]
        width = int(encoder.table(sub.key).shape[1])
        if enc.width != width:
            raise ConceptMismatchError(
                f"{what}: its {sub.key} rows are {enc.width} wide — that is {describe_width(enc.width)} — but this CLIP's "
                f"{sub.key} ({family.label}) is {width} wide. The file belongs to another model; load a {family.label} embedding"
            )
        if enc.encoder_id and enc.encoder_id != sub.encoder_id:
            raise ConceptMismatchError(
                f"{what} was trained on {enc.encoder_id}, but this CLIP's {sub.key} is {sub.encoder_id}; the two "
                "encoders have different embedding spaces, so the vectors would mean something else. Retrain it for this model"
            )
        encoders[sub.key] = enc
    extra = sorted(set(concept.encoders) - set(encoders))
    if extra:
        notes.append(f"{what}: using {', '.join(encoders)} only; {', '.join(extra)} rows are not used by {family.label}")
    fitted = Concept(name=concept.name, encoders=encoders, method=concept.method, family=concept.family, info=concept.info)
    return fitted, notes


def rescale_to_m_star(concept: Concept, encoder, policy: str | float = "mean") -> Concept:
    """Every row moved to its encoder's m* (direction kept): the paper's TI-rescaled."""
    encoders = {}
    for key, enc in concept.encoders.items():
        s, _norms = stats(encoder.table(key))
        encoders[key] = enc.rescaled(magnitude.target_norm(s, policy))
    info = dict(concept.info, rescaled_from=concept.method)
    return Concept(name=concept.name, encoders=encoders, method="ti_rescaled", family=concept.family, info=info)

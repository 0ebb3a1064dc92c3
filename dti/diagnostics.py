"""Positional attenuation: how much position signal survives the first LayerNorm.

A CLIP-style encoder adds a learned position row p_i to every token vector and normalizes,
LN(e + p_i). When ‖e‖ ≫ ‖p_i‖ the normalized output barely depends on i: the token has lost its
position. The probe measures that the way a linear probe would, but without training one: a
nearest-centroid classifier fitted on vocabulary tokens (centroid c_i = mean over tokens w of
LN(w + p_i)) is asked for the position of LN(e + p_i); its accuracy over all positions is the
score. Vocabulary-norm rows score high, inflated TI rows drop toward chance (1 / positions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttenuationReport:
    probe_accuracy: float  # position recovered from LN(e + p_i), averaged over rows of e
    vocab_accuracy: float  # the same probe on held-out vocabulary rows
    signal_ratio: float  # position-dependent energy of LN(e + p) relative to vocabulary rows
    chance: float
    positions: int

    def summary(self) -> str:
        return (
            f"position probe accuracy {self.probe_accuracy:.2f} (vocabulary tokens: {self.vocab_accuracy:.2f}, "
            f"chance {self.chance:.2f}); position signal after LayerNorm at {self.signal_ratio:.2f}× a "
            "vocabulary token's"
        )


def _layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def _position_outputs(
    rows: torch.Tensor, positions: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """LN(rows[j] + positions[i]) for all j, i → (n_rows, n_positions, d)."""
    return _layer_norm(rows[:, None, :] + positions[None, :, :], weight, bias, eps)


def positional_attenuation(
    vectors: torch.Tensor,
    positions: torch.Tensor,
    vocab_sample: torch.Tensor,
    ln_weight: torch.Tensor | None = None,
    ln_bias: torch.Tensor | None = None,
    ln_eps: float = 1e-5,
    holdout: int = 64,
) -> AttenuationReport:
    """Probe how well position survives LN(e + p) for each row of ``vectors``.

    vectors: (n, d) embeddings to probe. positions: (P, d) the encoder's additive position table.
    vocab_sample: (m, d) vocabulary rows; the first m − holdout fit the centroids, the rest give
    the vocabulary baseline. ln_*: the first LayerNorm's parameters (the one that sees e + p).
    """
    f = torch.float64
    vectors = vectors.detach().to(f).reshape(-1, positions.shape[-1])
    positions = positions.detach().to(f)
    vocab_sample = vocab_sample.detach().to(f)
    w = None if ln_weight is None else ln_weight.detach().to(f)
    b = None if ln_bias is None else ln_bias.detach().to(f)
    holdout = max(1, min(holdout, vocab_sample.shape[0] // 4))
    fit, held = vocab_sample[:-holdout], vocab_sample[-holdout:]
    if fit.shape[0] < 1:
        raise ValueError("positional_attenuation needs a larger vocabulary sample (at least 8 rows)")
    n_pos = positions.shape[0]

    # Chunked: (rows, P, d) in float64 for a whole sample would take hundreds of MB.
    centroids = torch.zeros_like(positions)
    for start in range(0, fit.shape[0], 32):
        centroids += _position_outputs(fit[start : start + 32], positions, w, b, ln_eps).sum(dim=0)
    centroids /= fit.shape[0]  # (P, d)
    c_sq = (centroids * centroids).sum(-1)

    def accuracy(rows: torch.Tensor) -> float:
        out = _position_outputs(rows, positions, w, b, ln_eps)  # (n, P, d)
        # Squared distance to each centroid, up to the per-output constant ‖x‖².
        score = 2 * out @ centroids.T - c_sq  # (n, P, P)
        pred = score.argmax(dim=-1)
        target = torch.arange(n_pos).expand_as(pred)
        return float((pred == target).double().mean())

    def signal(rows: torch.Tensor) -> float:
        out = _position_outputs(rows, positions, w, b, ln_eps)
        centered = out - out.mean(dim=1, keepdim=True)
        return float((centered * centered).sum(-1).mean())

    vocab_signal = signal(held)
    return AttenuationReport(
        probe_accuracy=accuracy(vectors),
        vocab_accuracy=accuracy(held),
        signal_ratio=signal(vectors) / vocab_signal if vocab_signal > 0 else float("nan"),
        chance=1.0 / n_pos,
        positions=n_pos,
    )

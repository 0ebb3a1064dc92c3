"""Where a token vector's norm sits against its encoder's vocabulary.

DTI fixes every learned row at m*, a statistic of the encoder's own token-embedding norms (mean
by default), computed from the loaded weights rather than hard-coded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .errors import UnsupportedModelError

POLICIES = ("mean", "median", "min", "max")
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


@dataclass(frozen=True)
class NormStats:
    """Row-norm statistics of a token-embedding table (zero rows excluded: they are padding)."""

    count: int
    mean: float
    median: float
    min: float
    max: float
    std: float
    percentiles: dict[int, float] = field(default_factory=dict)
    # A sorted sample of the norms, enough for percentiles and histograms of any later vector.
    sorted_norms: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("sorted_norms", None)
        return d


def row_norms(table: torch.Tensor, chunk_rows: int = 16384) -> torch.Tensor:
    """L2 norms of the rows in fp32, on the CPU.

    Half-precision tables are converted chunk by chunk into one reused fp32 buffer: a fresh
    conversion per chunk spends most of its time faulting in new pages.
    """
    out = torch.empty(table.shape[0], dtype=torch.float32)
    buf = None
    for start in range(0, table.shape[0], chunk_rows):
        block = table[start : start + chunk_rows].detach()
        if block.dtype != torch.float32:
            if buf is None or buf.shape[0] < block.shape[0]:
                buf = torch.empty(block.shape, dtype=torch.float32, device=block.device)
            block = buf[: block.shape[0]].copy_(block)
        out[start : start + block.shape[0]] = torch.linalg.vector_norm(block, dim=-1).cpu()
    return out


def _require_rows(live: int) -> None:
    if live == 0:
        raise UnsupportedModelError("the token-embedding table has no non-zero rows; load the text encoder's weights (is it a "
                                    "placeholder or an unloaded model?)")


def norm_stats(table: torch.Tensor, norms: torch.Tensor | None = None) -> NormStats:
    """Statistics of the table's non-zero row norms (pass ``norms`` from row_norms to reuse them)."""
    if table.ndim != 2:
        raise ValueError(f"a token-embedding table must be 2-D (vocab, width), got shape {tuple(table.shape)}")
    norms = row_norms(table) if norms is None else norms.detach().float().cpu()
    norms = norms[norms > 0]
    _require_rows(int(norms.numel()))
    sorted_norms, _ = torch.sort(norms.double())
    pct = {p: float(torch.quantile(sorted_norms, p / 100.0)) for p in PERCENTILES}
    return NormStats(
        count=int(norms.numel()),
        mean=float(sorted_norms.mean()),
        median=float(torch.quantile(sorted_norms, 0.5)),
        min=float(sorted_norms[0]),
        max=float(sorted_norms[-1]),
        std=float(sorted_norms.std()) if norms.numel() > 1 else 0.0,
        percentiles=pct,
        sorted_norms=sorted_norms.float(),
    )


def target_norm(stats: NormStats, policy: str | float) -> float:
    """m* for a policy name (mean, median, min, max) or an explicit positive float."""
    if isinstance(policy, (int, float)) and not isinstance(policy, bool):
        value = float(policy)
    else:
        text = str(policy).strip().lower()
        if text in POLICIES:
            return float(getattr(stats, text))
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"unknown magnitude policy {policy!r}: use one of {', '.join(POLICIES)} or a positive number"
            ) from None
    if not (value > 0) or value != value or value == float("inf"):
        raise ValueError(f"magnitude must be a positive finite number, got {value!r}")
    return value


def percentile_of(stats: NormStats, norm: float) -> float:
    """Percentage of vocabulary rows whose norm is below ``norm`` (0–100)."""
    s = stats.sorted_norms
    if s is None or s.numel() == 0:
        raise ValueError("these NormStats carry no norm sample; compute them with norm_stats()")
    below = torch.searchsorted(s, torch.tensor([norm], dtype=s.dtype), right=False)
    return 100.0 * float(below) / s.numel()


@dataclass(frozen=True)
class NormVerdict:
    norm: float
    percentile: float
    ratio_to_mean: float
    in_distribution: bool
    reason: str


def verdict(stats: NormStats, norm: float, low_pct: float = 0.5, high_pct: float = 99.5) -> NormVerdict:
    """In/out-of-distribution call for a norm, with the reason in words.

    A row is in distribution when its norm lies between the low and high percentiles of the
    vocabulary; TI vectors typically sit far above the maximum (≈20 vs ≈0.4 for CLIP).
    """
    pct = percentile_of(stats, norm)
    ratio = norm / stats.mean
    lo = float(torch.quantile(stats.sorted_norms.double(), low_pct / 100.0))
    hi = float(torch.quantile(stats.sorted_norms.double(), high_pct / 100.0))
    if norm > hi:
        reason = (
            f"norm {norm:.4g} is {ratio:.1f}× the vocabulary mean {stats.mean:.4g} and above the "
            f"{high_pct:g}th percentile ({hi:.4g}): out of distribution (too large). After the first "
            "LayerNorm such a token drowns the positional signal and dominates attention."
        )
        return NormVerdict(norm, pct, ratio, False, reason)
    if norm < lo:
        reason = (
            f"norm {norm:.4g} is below the {low_pct:g}th percentile of the vocabulary ({lo:.4g}): out of "
            "distribution (too small); the token is barely heard."
        )
        return NormVerdict(norm, pct, ratio, False, reason)
    reason = (
        f"norm {norm:.4g} sits at the {pct:.1f}th percentile of the vocabulary (mean {stats.mean:.4g}, "
        f"range {stats.min:.4g}–{stats.max:.4g}): in distribution."
    )
    return NormVerdict(norm, pct, ratio, True, reason)


def nearest_tokens(
    table: torch.Tensor,
    queries: torch.Tensor,
    k: int = 10,
    metric: str = "cosine",
    chunk_rows: int = 32768,
    norms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k vocabulary rows nearest to each query row.

    Returns (scores, indices), each (n_queries, k): cosine similarity (descending) for "cosine",
    Euclidean distance (ascending) for "euclidean". The table is scanned in chunks in its own
    dtype (a bf16 copy of a 256000 × 2304 table would cost more than the search), keeping a pool
    of candidates per query that is then rescored exactly in fp32. ``norms`` may pass
    precomputed row norms (row_norms(table)) to skip that pass.
    """
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    if queries.ndim == 1:
        queries = queries.unsqueeze(0)
    if queries.shape[-1] != table.shape[-1]:
        raise ValueError(
            f"query width {queries.shape[-1]} does not match the vocabulary width {table.shape[-1]}"
        )
    vocab = table.shape[0]
    if norms is None:
        norms = row_norms(table, chunk_rows)
    norms = norms.to(device=table.device, dtype=torch.float32)
    live = int((norms > 0).sum())
    _require_rows(live)
    k = max(1, min(int(k), live))
    pool = min(vocab, 4 * k + 32)
    q = queries.detach().to(device=table.device, dtype=torch.float32)
    q_unit = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(1e-12)
    scan_dtype = table.dtype if table.dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float32
    probe = (q_unit if metric == "cosine" else q).to(scan_dtype)
    q_sq = (q * q).sum(-1, keepdim=True)

    def score(dots: torch.Tensor, b_norm: torch.Tensor) -> torch.Tensor:
        s = dots / b_norm.clamp_min(1e-12) if metric == "cosine" else -(q_sq - 2 * dots + b_norm * b_norm)  # larger is better
        # All-zero rows (padding, unused ids) are no tokens: excluded as the norm statistics exclude them.
        return s.masked_fill(b_norm == 0, float("-inf"))

    cand_s, cand_i = None, None
    for start in range(0, vocab, chunk_rows):
        block = table[start : start + chunk_rows].detach()
        dots = torch.nn.functional.linear(probe, block.to(scan_dtype)).float()
        s_blk = score(dots, norms[start : start + block.shape[0]])
        s_top, i_top = torch.topk(s_blk, min(pool, s_blk.shape[1]), dim=-1)
        i_top = i_top + start
        if cand_s is None:
            cand_s, cand_i = s_top, i_top
        else:
            merged_s, merged_i = torch.cat([cand_s, s_top], -1), torch.cat([cand_i, i_top], -1)
            cand_s, pos = torch.topk(merged_s, min(pool, merged_s.shape[1]), dim=-1)
            cand_i = torch.gather(merged_i, -1, pos)

    # Exact fp32 rescoring of the pool.
    rows = table[cand_i.reshape(-1)].detach().to(torch.float32).reshape(*cand_i.shape, -1)
    exact_dots = ((q_unit if metric == "cosine" else q).unsqueeze(1) * rows).sum(-1)
    exact = score(exact_dots, torch.linalg.vector_norm(rows, dim=-1))
    best, pos = torch.topk(exact, k, dim=-1)
    idx = torch.gather(cand_i, -1, pos)
    if metric == "euclidean":
        best = (-best).clamp_min(0).sqrt()
    return best.cpu(), idx.cpu()

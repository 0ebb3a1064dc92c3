"""Geometry of the unit sphere, row-wise.

Every function treats the last dimension as the sphere and broadcasts over the leading ones, so a
concept matrix of shape (n_vectors, d) is n points on S^(d-1) at once.
"""

from __future__ import annotations

import torch

# Tolerances keyed by dtype: what counts as "zero" or "unit" differs by orders of magnitude
# between half precision and float64.
EPS: dict[torch.dtype, float] = {
    torch.float16: 1e-3,
    torch.bfloat16: 1e-2,
    torch.float32: 1e-6,
    torch.float64: 1e-12,
}

# Below this angle (radians) slerp's sin(θ) denominator loses precision; normalized lerp is exact
# to second order there.
SMALL_ANGLE: dict[torch.dtype, float] = {
    torch.float16: 1e-2,
    torch.bfloat16: 3e-2,
    torch.float32: 1e-4,
    torch.float64: 1e-7,
}

# Angles closer than this to π have no unique shortest geodesic.
ANTIPODAL_MARGIN = 1e-4


def eps_for(dtype: torch.dtype) -> float:
    return EPS.get(dtype, 1e-6)


def inner(x: torch.Tensor, u: torch.Tensor, keepdim: bool = True) -> torch.Tensor:
    return (x * u).sum(dim=-1, keepdim=keepdim)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Project rows onto the sphere (x / ‖x‖). Zero rows raise: they have no direction."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    if bool((norm <= eps_for(x.dtype) * 1e-3).any()):
        rows = torch.nonzero(norm.squeeze(-1) <= eps_for(x.dtype) * 1e-3).flatten().tolist()
        raise ValueError(f"cannot normalize a zero vector (rows {rows[:8]}): it has no direction")
    return x / norm


def project_tangent(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Component of u tangent to the sphere at x: u − ⟨u, x⟩ x (x must be unit)."""
    return u - inner(u, x) * x


def retract(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Projective retraction: move along u in the ambient space, then renormalize."""
    return normalize(x + u)


def expmap(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Exact geodesic step from x along tangent vector u (falls back to retraction for tiny ‖u‖)."""
    norm_u = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    exact = x * torch.cos(norm_u) + u * torch.sin(norm_u) / norm_u.clamp_min(eps_for(u.dtype))
    small = norm_u <= SMALL_ANGLE.get(u.dtype, 1e-4)
    if bool(small.any()):
        return torch.where(small, retract(x, u), exact)
    return exact


def angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Geodesic distance between unit rows, in radians, shape (...,).

    atan2(‖a×b‖, a·b) instead of acos(a·b): acos has an infinite slope at ±1, so nearly equal or
    nearly opposite rows would lose half their significant digits.
    """
    dot = inner(a, b, keepdim=False)
    cross = torch.linalg.vector_norm(b - inner(a, b) * a, dim=-1)
    return torch.atan2(cross, dot.clamp(-1.0, 1.0))


def logmap(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Tangent vector at x pointing to y with length equal to their geodesic distance."""
    theta = angle(x, y).unsqueeze(-1)
    direction = project_tangent(x, y)
    norm = torch.linalg.vector_norm(direction, dim=-1, keepdim=True)
    return torch.where(norm > 0, direction * theta / norm.clamp_min(torch.finfo(x.dtype).tiny), direction)


def check_unit(x: torch.Tensor, atol: float | None = None) -> tuple[bool, str | None]:
    """(ok, reason): whether every row has norm 1, and if not which row is off and by how much."""
    atol = eps_for(x.dtype) * 10 if atol is None else atol
    dev = (torch.linalg.vector_norm(x.double(), dim=-1) - 1.0).abs().reshape(-1)
    if dev.numel() == 0:
        return True, None
    worst = int(torch.argmax(dev))
    if float(dev[worst]) > atol:
        return False, f"‖v‖ differs from 1 by {float(dev[worst]):.3g} on row {worst} (tolerance {atol:.1g})"
    return True, None


def assert_unit(x: torch.Tensor, atol: float | None = None) -> None:
    ok, reason = check_unit(x, atol)
    if not ok:
        raise ValueError(f"not on the unit sphere: {reason}")


def _check_antipodal(theta: torch.Tensor, what: str) -> None:
    bad = theta >= torch.pi - ANTIPODAL_MARGIN
    if bool(bad.any()):
        rows = torch.nonzero(bad.reshape(-1)).flatten().tolist()
        raise ValueError(
            f"{what}: rows {rows[:8]} are antipodal (angle ≈ π), so there is no unique great circle "
            "between them. Pick a different pair, or nudge one of them."
        )


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherical linear interpolation between unit rows a and b.

    slerp(a, b; t) = sin((1−t)θ)/sin θ · a + sin(tθ)/sin θ · b. Endpoints are returned exactly,
    rows closer than SMALL_ANGLE use normalized lerp, antipodal rows raise ValueError.
    """
    a, b = torch.broadcast_tensors(a, b)
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    if t.ndim > 0:
        t = t.unsqueeze(-1)
    theta = angle(a, b)
    _check_antipodal(theta, "slerp")
    theta = theta.unsqueeze(-1)
    sin_theta = torch.sin(theta)
    small = theta <= SMALL_ANGLE.get(a.dtype, 1e-4)
    safe_sin = torch.where(small, torch.ones_like(sin_theta), sin_theta)
    wa = torch.sin((1.0 - t) * theta) / safe_sin
    wb = torch.sin(t * theta) / safe_sin
    out = wa * a + wb * b
    if bool(small.any()):
        nlerp = (1.0 - t) * a + t * b
        nlerp = nlerp / torch.linalg.vector_norm(nlerp, dim=-1, keepdim=True)
        out = torch.where(small, nlerp, out)
    # Exact endpoints: t = 0 and t = 1 return the inputs bit for bit.
    out = torch.where(t == 0, a, torch.where(t == 1, b, out))
    return out


def spherical_mean(
    points: torch.Tensor,
    weights: torch.Tensor | None = None,
    max_iter: int = 100,
    tol: float | None = None,
) -> torch.Tensor:
    """Weighted Fréchet (Karcher) mean of unit rows.

    points: (N, ..., d) — N concepts, each with the same trailing shape. weights: (N,), summing to
    anything positive. Iterates x ← exp_x(Σ w_i log_x(p_i)) from the normalized weighted average.
    For N = 2 this equals slerp(p0, p1; w1 / (w0 + w1)).
    """
    if points.shape[0] == 0:
        raise ValueError("spherical_mean needs at least one point")
    n = points.shape[0]
    if weights is None:
        weights = torch.full((n,), 1.0 / n, dtype=points.dtype, device=points.device)
    weights = torch.as_tensor(weights, dtype=points.dtype, device=points.device).reshape(-1)
    if weights.numel() != n:
        raise ValueError(f"spherical_mean: {n} points but {weights.numel()} weights")
    if bool((weights < 0).any()) or float(weights.sum()) <= 0:
        raise ValueError(f"spherical_mean: weights must be non-negative with a positive sum, got {weights.tolist()}")
    weights = weights / weights.sum()
    w = weights.reshape((n,) + (1,) * (points.ndim - 1))
    tol = tol if tol is not None else eps_for(points.dtype) * 10
    avg = (w * points).sum(dim=0)
    if bool((torch.linalg.vector_norm(avg, dim=-1) <= eps_for(points.dtype) * 1e3).any()):
        raise ValueError(
            "spherical_mean: the weighted points cancel out (e.g. two antipodal concepts with equal "
            "weight), so their mean direction is undefined. Change the weights or the concepts."
        )
    x = normalize(avg)
    for _ in range(max_iter):
        step = (w * logmap(x.unsqueeze(0).expand_as(points), points)).sum(dim=0)
        x = expmap(x, step)
        if float(torch.linalg.vector_norm(step, dim=-1).max()) <= tol:
            break
    return x

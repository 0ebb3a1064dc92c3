"""Sphere math against float64 references and the properties slerp must have."""

import math

import pytest
import torch

from dti import sphere

SEEDS = [1, 2, 3, 4, 5]


def unit(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=dtype)
    return x / x.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("seed", SEEDS)
def test_projection_is_tangent_and_idempotent(seed):
    x = unit(4, 16, seed=seed)
    u = torch.randn(4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 10))
    t = sphere.project_tangent(x, u)
    assert torch.allclose((t * x).sum(-1), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(sphere.project_tangent(x, t), t, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_retraction_lands_on_sphere_and_batch_equals_loop(seed):
    x = unit(5, 8, seed=seed)
    u = sphere.project_tangent(x, torch.randn(5, 8, dtype=torch.float64) * 0.3)
    y = sphere.retract(x, u)
    assert torch.allclose(y.norm(dim=-1), torch.ones(5, dtype=torch.float64), atol=1e-12)
    loop = torch.stack([sphere.retract(x[i], u[i]) for i in range(5)])
    assert torch.allclose(loop, y, atol=1e-14)


@pytest.mark.parametrize("seed", SEEDS)
def test_angle_matches_float64_acos_and_exp_log_roundtrip(seed):
    a, b = unit(6, 12, seed=seed), unit(6, 12, seed=seed + 100)
    ref = torch.acos((a * b).sum(-1).clamp(-1, 1))
    assert torch.allclose(sphere.angle(a, b), ref, atol=1e-10)
    v = sphere.logmap(a, b)
    assert torch.allclose(v.norm(dim=-1), ref, atol=1e-10)  # dist == tangent norm
    assert torch.allclose(sphere.expmap(a, v), b, atol=1e-10)


def test_angle_is_accurate_for_nearly_equal_rows_where_acos_is_not():
    a = unit(1, 64, seed=3)
    delta = 1e-6
    perp = sphere.project_tangent(a, unit(1, 64, seed=4))
    perp = perp / perp.norm()
    b = math.cos(delta) * a + math.sin(delta) * perp
    assert sphere.angle(a.float(), b.float()).item() == pytest.approx(delta, rel=1e-2)


@pytest.mark.parametrize("seed", SEEDS)
def test_slerp_endpoints_exact_norm_constant_speed(seed):
    a, b = unit(3, 32, seed=seed), unit(3, 32, seed=seed + 7)
    assert torch.equal(sphere.slerp(a, b, 0.0), a)
    assert torch.equal(sphere.slerp(a, b, 1.0), b)
    theta = sphere.angle(a, b)
    ts = torch.linspace(0, 1, 11, dtype=torch.float64)
    pts = [sphere.slerp(a, b, float(t)) for t in ts]
    for t, p in zip(ts, pts):
        assert torch.allclose(p.norm(dim=-1), torch.ones(3, dtype=torch.float64), atol=1e-12)
        # constant angular speed: angle from a grows linearly in t
        assert torch.allclose(sphere.angle(a, p), t * theta, atol=1e-10)
    steps = torch.stack([sphere.angle(pts[i], pts[i + 1]) for i in range(10)])
    assert torch.allclose(steps, (theta / 10).expand_as(steps), atol=1e-10)


def test_lerp_dips_in_norm_where_slerp_does_not():
    a, b = unit(1, 32, seed=11), unit(1, 32, seed=12)
    mid_lerp = 0.5 * a + 0.5 * b
    mid_slerp = sphere.slerp(a, b, 0.5)
    theta = sphere.angle(a, b)
    # ‖(a+b)/2‖ = cos(θ/2) < 1 for unit a ≠ b
    assert mid_lerp.norm().item() == pytest.approx(math.cos(theta.item() / 2), rel=1e-10)
    assert mid_lerp.norm().item() < 0.99
    assert mid_slerp.norm().item() == pytest.approx(1.0, abs=1e-12)


def test_slerp_small_angle_falls_back_without_nan():
    a = unit(2, 16, seed=5)
    b = sphere.normalize(a + 1e-9 * unit(2, 16, seed=6))
    out = sphere.slerp(a, b, 0.3)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, a, atol=1e-8)
    same = sphere.slerp(a.float(), a.float(), 0.5)
    assert torch.isfinite(same).all() and torch.allclose(same, a.float(), atol=1e-6)


def test_slerp_antipodal_rows_raise_with_reason():
    a = unit(2, 8, seed=1)
    b = a.clone()
    b[1] = -a[1]
    with pytest.raises(ValueError, match=r"rows \[1\] are antipodal"):
        sphere.slerp(a, b, 0.5)


@pytest.mark.parametrize("seed", SEEDS)
def test_spherical_mean_of_two_equals_slerp_at_weight_ratio(seed):
    a, b = unit(2, 24, seed=seed), unit(2, 24, seed=seed + 50)
    w = torch.tensor([0.3, 0.7], dtype=torch.float64)
    mean = sphere.spherical_mean(torch.stack([a, b]), w, max_iter=200, tol=1e-14)
    assert torch.allclose(mean, sphere.slerp(a, b, 0.7), atol=1e-9)


def test_spherical_mean_minimizes_weighted_squared_geodesic_distance():
    pts = unit(4, 1, 10, seed=9) * 0.2 + unit(1, 1, 10, seed=10)  # a cluster
    pts = sphere.normalize(pts)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    mean = sphere.spherical_mean(pts, w, max_iter=200, tol=1e-14)

    def cost(x):
        return float((w[:, None] * sphere.angle(x.expand_as(pts), pts) ** 2).sum())

    best = cost(mean)
    for s in range(20):
        nudged = sphere.expmap(mean, sphere.project_tangent(mean, 1e-3 * unit(1, 10, seed=100 + s)))
        assert cost(nudged) >= best - 1e-12
    # the first-order condition: the weighted log-maps cancel
    grad = (w[:, None, None] * sphere.logmap(mean.expand_as(pts), pts)).sum(0)
    assert grad.norm() < 1e-9


def test_spherical_mean_bad_inputs():
    a = unit(1, 4, seed=1)
    with pytest.raises(ValueError, match="at least one point"):
        sphere.spherical_mean(torch.empty(0, 1, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="2 points but 3 weights"):
        sphere.spherical_mean(torch.stack([a, a]), torch.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        sphere.spherical_mean(torch.stack([a, a]), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="cancel out"):
        sphere.spherical_mean(torch.stack([a, -a]), torch.tensor([1.0, 1.0]))


def test_check_unit_explains_which_row():
    x = unit(3, 5, seed=2)
    x[2] *= 1.001
    ok, reason = sphere.check_unit(x)
    assert not ok and "row 2" in reason and "1e-03" in reason.replace("0.001", "1e-03")
    with pytest.raises(ValueError, match="row 2"):
        sphere.assert_unit(x)
    with pytest.raises(ValueError, match="zero vector"):
        sphere.normalize(torch.zeros(2, 3))

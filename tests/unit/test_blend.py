"""Concept blending: slerp at fixed norm, lerp's dip, weighted means, and the errors."""

import math

import pytest
import torch

from dti import sphere
from dti.blend import BlendError, interpolate, parse_t_values, weighted_mean
from dti.concept import Concept, EncoderConcept


def concept(name, seed, m=(0.39, 0.45), n=2, ids=("clip-l", "clip-g")):
    g = torch.Generator().manual_seed(seed)
    encs = {}
    for (key, width), m_star, eid in zip((("clip_l", 16), ("clip_g", 24)), m, ids):
        v = torch.randn(n, width, generator=g)
        encs[key] = EncoderConcept(directions=v / v.norm(dim=-1, keepdim=True), norms=torch.full((n,), m_star),
                                   m_star=m_star, encoder_id=eid)
    return Concept(name=name, encoders=encs, family="sdxl")


def test_slerp_endpoints_norm_and_constant_speed():
    a, b = concept("a", 1), concept("b", 2)
    assert torch.equal(interpolate(a, b, 0.0).encoders["clip_l"].directions, a.encoders["clip_l"].directions)
    assert torch.allclose(interpolate(a, b, 1.0).encoders["clip_g"].vectors(), b.encoders["clip_g"].vectors(), atol=1e-6)
    angles = []
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        c = interpolate(a, b, t)
        for key, m in (("clip_l", 0.39), ("clip_g", 0.45)):
            assert torch.allclose(c.encoders[key].vectors().norm(dim=-1), torch.full((2,), m), rtol=1e-6)
            assert c.encoders[key].m_star == pytest.approx(m)
        angles.append(sphere.angle(a.encoders["clip_l"].directions.double(), c.encoders["clip_l"].directions.double()))
    total = angles[-1]
    for i, ang in enumerate(angles):
        assert torch.allclose(ang, total * i / 4, atol=1e-5)


def test_lerp_dips_in_norm_for_contrast():
    a, b = concept("a", 1), concept("b", 2)
    mid = interpolate(a, b, 0.5, mode="lerp")
    theta = sphere.angle(a.encoders["clip_l"].directions.double(), b.encoders["clip_l"].directions.double())
    expected = 0.39 * torch.cos(theta / 2)
    assert torch.allclose(mid.encoders["clip_l"].norms.double(), expected, rtol=1e-5)
    assert float(mid.encoders["clip_l"].norms.max()) < 0.39 * 0.99


def test_different_m_star_is_interpolated_linearly():
    a, b = concept("a", 1, m=(0.3, 0.4)), concept("b", 2, m=(0.5, 0.6))
    c = interpolate(a, b, 0.25)
    assert c.encoders["clip_l"].m_star == pytest.approx(0.35)
    assert torch.allclose(c.encoders["clip_g"].norms, torch.full((2,), 0.45), rtol=1e-6)


def test_weighted_mean_of_two_equals_slerp_and_of_one_is_identity():
    a, b = concept("a", 1), concept("b", 2)
    m = weighted_mean([a, b], [1, 3])
    s = interpolate(a, b, 0.75)
    for key in ("clip_l", "clip_g"):
        assert torch.allclose(m.encoders[key].directions, s.encoders[key].directions, atol=1e-5)
    single = weighted_mean([a])
    assert torch.allclose(single.encoders["clip_l"].directions, a.encoders["clip_l"].directions, atol=1e-6)
    three = weighted_mean([a, b, concept("c", 3)], [1, 1, 1])
    assert three.method == "mean" and math.isclose(three.encoders["clip_l"].m_star, 0.39, rel_tol=1e-6)


def test_incompatible_concepts_raise_clear_errors():
    a = concept("a", 1)
    with pytest.raises(BlendError, match=r"has 2 vector\(s\), .b. has 1"):
        interpolate(a, concept("b", 2, n=1), 0.5)
    gemma = Concept(name="g", encoders={"gemma": EncoderConcept.from_vectors(torch.randn(2, 8))})
    with pytest.raises(BlendError, match="same model family"):
        interpolate(a, gemma, 0.5)
    with pytest.raises(BlendError, match="different encoders"):
        interpolate(a, concept("b", 2, ids=("clip-l", "other")), 0.5)
    with pytest.raises(BlendError, match=r"t must lie in \[0, 1\]"):
        interpolate(a, concept("b", 2), 1.5)
    anti = concept("b", 2)
    anti.encoders["clip_l"] = EncoderConcept(directions=-a.encoders["clip_l"].directions, norms=torch.full((2,), 0.39), m_star=0.39)
    with pytest.raises(BlendError, match="antipodal"):
        interpolate(a, anti, 0.5)
    with pytest.raises(BlendError, match="no concepts"):
        weighted_mean([])
    with pytest.raises(BlendError, match="2 concepts but 3 weights"):
        weighted_mean([a, concept("b", 2)], [1, 2, 3])
    with pytest.raises(BlendError, match="unknown mode"):
        interpolate(a, concept("b", 2), 0.5, mode="cubic")


def test_parse_t_values():
    assert parse_t_values("") == []
    assert parse_t_values("0, 0.5,1") == [0.0, 0.5, 1.0]
    assert parse_t_values("0:1:5") == [0.0, 0.25, 0.5, 0.75, 1.0]
    with pytest.raises(BlendError, match=r"\[1.5\]"):
        parse_t_values("0, 1.5")
    with pytest.raises(BlendError, match="numbers separated by commas"):
        parse_t_values("zero, one")
    with pytest.raises(BlendError, match="start:stop:count"):
        parse_t_values("0:1")


def test_endpoints_keep_loaded_rows_bit_for_bit():
    raw = torch.randn(2, 16) * 3
    a = Concept(name="a", encoders={"clip_l": EncoderConcept.from_vectors(raw)})
    b = Concept(name="b", encoders={"clip_l": EncoderConcept.from_vectors(torch.randn(2, 16))})
    assert torch.equal(interpolate(a, b, 0.0).encoders["clip_l"].vectors(), raw)
    assert torch.equal(interpolate(a, b, 0.0, mode="lerp").encoders["clip_l"].vectors(), raw)

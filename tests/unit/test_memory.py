"""The activation-memory estimate handed to the host's memory manager: how it scales, and the table's families."""

import pytest

from dti.families import FAMILIES
from dti.memory import ACTIVATION_COSTS, activation_bytes


def test_every_family_has_a_cost_and_checkpointing_keeps_less():
    assert set(ACTIVATION_COSTS) == set(FAMILIES)
    for cost in ACTIVATION_COSTS.values():
        assert 0 < cost.per_latent_pixel_checkpointed < cost.per_latent_pixel / 3


def test_denoiser_part_scales_with_pixels_batch_and_compute_width():
    text_only = activation_bytes("sdxl", 0, 1, False)
    one = activation_bytes("sdxl", 128 * 128, 1, False) - text_only
    assert activation_bytes("sdxl", 2 * 128 * 128, 1, False) - text_only == pytest.approx(2 * one, rel=1e-9)
    assert activation_bytes("sdxl", 128 * 128, 1, False, compute_bytes=4) - text_only == pytest.approx(2 * one, rel=1e-9)
    assert activation_bytes("sdxl", 128 * 128, 3, False) == pytest.approx(3 * activation_bytes("sdxl", 128 * 128, 1, False), rel=1e-9)


def test_sdxl_at_1024_matches_the_measured_figures():
    # benchmarks/activation_memory.py: ~400 kB per latent pixel (6.3 GiB at 1024²), ~65 kB checkpointed
    assert 6.5 < activation_bytes("sdxl", 128 * 128, 1, False) / 2**30 < 9
    assert 1.0 < activation_bytes("sdxl", 128 * 128, 1, True) / 2**30 < 2


def test_an_unknown_family_gets_the_largest_cost():
    largest = max(ACTIVATION_COSTS.values(), key=lambda c: c.per_latent_pixel)
    assert activation_bytes("future", 64 * 64, 1, False) >= 1.25 * largest.per_latent_pixel * 64 * 64

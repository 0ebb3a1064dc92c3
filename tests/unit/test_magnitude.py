"""Vocabulary norm statistics, m* policies, verdicts, nearest tokens and the positional probe."""

import numpy as np
import pytest
import torch

from dti import diagnostics, magnitude


def table(seed=0, vocab=1000, width=32, zero_rows=(0, 5)):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(vocab, width, generator=g) * torch.rand(vocab, 1, generator=g)
    t[list(zero_rows)] = 0
    return t


def test_stats_exclude_zero_rows_and_match_numpy():
    t = table()
    s = magnitude.norm_stats(t)
    ref = np.linalg.norm(t.double().numpy(), axis=1)
    ref = ref[ref > 0]
    assert s.count == 998
    assert s.mean == pytest.approx(ref.mean(), rel=1e-6)
    assert s.median == pytest.approx(np.median(ref), rel=1e-6)
    assert s.min == pytest.approx(ref.min(), rel=1e-6)
    assert s.max == pytest.approx(ref.max(), rel=1e-6)
    assert s.std == pytest.approx(ref.std(ddof=1), rel=1e-5)
    assert s.percentiles[95] == pytest.approx(np.percentile(ref, 95), rel=1e-5)


def test_stats_of_half_precision_tables():
    t = table(seed=1).to(torch.bfloat16)
    s = magnitude.norm_stats(t)
    ref = torch.linalg.vector_norm(t.float(), dim=-1)
    assert s.mean == pytest.approx(float(ref[ref > 0].mean()), rel=1e-5)


def test_target_norm_policies_and_floats():
    s = magnitude.norm_stats(table())
    assert magnitude.target_norm(s, "mean") == s.mean
    assert magnitude.target_norm(s, "MEDIAN") == s.median
    assert magnitude.target_norm(s, "min") == s.min
    assert magnitude.target_norm(s, "max") == s.max
    assert magnitude.target_norm(s, 0.42) == 0.42
    assert magnitude.target_norm(s, "0.5") == 0.5
    with pytest.raises(ValueError, match="unknown magnitude policy 'average'"):
        magnitude.target_norm(s, "average")
    with pytest.raises(ValueError, match="positive finite"):
        magnitude.target_norm(s, -1.0)
    with pytest.raises(ValueError, match="positive finite"):
        magnitude.target_norm(s, float("nan"))


def test_verdict_in_and_out_of_distribution():
    s = magnitude.norm_stats(table())
    inside = magnitude.verdict(s, s.mean)
    assert inside.in_distribution and "in distribution" in inside.reason
    assert 30 < inside.percentile < 70
    big = magnitude.verdict(s, s.mean * 50)
    assert not big.in_distribution and big.percentile == 100.0 and "too large" in big.reason
    assert big.ratio_to_mean == pytest.approx(50)
    small = magnitude.verdict(s, s.min / 10)
    assert not small.in_distribution and "too small" in small.reason


def test_empty_table_and_bad_shapes():
    with pytest.raises(ValueError, match="no non-zero rows"):
        magnitude.norm_stats(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="must be 2-D"):
        magnitude.norm_stats(torch.zeros(5))


def brute_force(t, q, k, metric):
    t, q = t.double(), q.double()
    if metric == "cosine":
        s = (q / q.norm(dim=-1, keepdim=True)) @ (t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)).T
        return torch.topk(s, k, dim=-1)
    d = torch.cdist(q, t)
    v, i = torch.topk(-d, k, dim=-1)
    return -v, i


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_nearest_tokens_match_brute_force_across_chunks(metric):
    t = table(seed=3, vocab=5000, width=24)
    q = torch.randn(3, 24, generator=torch.Generator().manual_seed(4))
    scores, idx = magnitude.nearest_tokens(t, q, k=7, metric=metric, chunk_rows=333)
    ref_s, ref_i = brute_force(t, q, 7, metric)
    assert torch.equal(idx, ref_i)
    assert torch.allclose(scores.double(), ref_s, atol=1e-4)


def test_cosine_and_euclidean_neighbours_differ_for_an_inflated_vector():
    # Token 10's direction at a huge norm: cosine still finds token 10, but Euclidean distance
    # prefers a large-norm token that only roughly points the same way (cosine 0.6) — the paper's
    # point about semantic vs. metric neighbours of inflated TI vectors.
    t = table(seed=5, vocab=500, width=16)
    d10 = t[10] / t[10].norm()
    other = t[77] - (t[77] @ d10) * d10
    other = other / other.norm()
    t[77] = 35 * (0.6 * d10 + 0.8 * other)
    q = d10 * 40
    _, cos_idx = magnitude.nearest_tokens(t, q, k=1, metric="cosine")
    _, euc_idx = magnitude.nearest_tokens(t, q, k=1, metric="euclidean")
    assert cos_idx.item() == 10
    assert euc_idx.item() == 77


def test_nearest_tokens_width_mismatch():
    with pytest.raises(ValueError, match="query width 8 does not match the vocabulary width 16"):
        magnitude.nearest_tokens(torch.randn(10, 16), torch.randn(8))


def test_nearest_tokens_in_bf16_tables_are_rescored_exactly():
    t = table(seed=8, vocab=3000, width=40).to(torch.bfloat16)
    q = torch.randn(2, 40, generator=torch.Generator().manual_seed(9))
    for metric in ("cosine", "euclidean"):
        scores, idx = magnitude.nearest_tokens(t, q, k=5, metric=metric, chunk_rows=700)
        ref_s, ref_i = brute_force(t.float(), q, 5, metric)
        assert torch.equal(idx, ref_i)
        assert torch.allclose(scores.double(), ref_s, atol=1e-5)


def test_positional_probe_falls_with_norm():
    g = torch.Generator().manual_seed(0)
    d, n_pos = 64, 16
    positions = torch.randn(n_pos, d, generator=g) * 0.1
    vocab = torch.randn(400, d, generator=g) * 0.4 / d**0.5 * 2
    v = torch.randn(1, d, generator=g)
    v = v / v.norm()
    m = float(vocab.norm(dim=-1).mean())
    accs = []
    for mult in (0.5, 1, 2, 4, 8, 16, 64):
        rep = diagnostics.positional_attenuation(v * m * mult, positions, vocab)
        accs.append(rep.probe_accuracy)
    assert accs[0] >= 0.9 and accs[1] >= 0.9
    assert accs[-1] <= 0.25
    assert all(a >= b - 1e-9 for a, b in zip(accs, accs[1:])), accs
    rep = diagnostics.positional_attenuation(v * m * 32, positions, vocab)
    assert rep.signal_ratio < 0.05 and rep.vocab_accuracy >= 0.9
    assert "position probe accuracy" in rep.summary()

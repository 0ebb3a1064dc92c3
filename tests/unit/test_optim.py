"""RiemannianSGD against Algorithm 1 computed by hand, plus its invariants and torch.optim manners."""

import pytest
import torch

from dti.optim import TI_ADAMW_LR, RiemannianSGD, build_optimizer


def unit(*shape, seed=0, dtype=torch.float32):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (x / x.norm(dim=-1, keepdim=True)).to(dtype)


def algorithm1_step(v, grad, mu, lr, kappa, beta, eps, h_prev, t):
    """One step of DTI's Algorithm 1, in float64, written out without the sphere module."""
    v, grad, mu = v.double(), grad.double(), mu.double()
    out, hs = [], []
    for i in range(v.shape[0]):
        g = grad[i] - kappa * mu[i]
        g = g - torch.dot(g, v[i]) * v[i]
        h = torch.dot(g, g)
        if beta > 0:
            h_ema = beta * h_prev[i] + (1 - beta) * h
            hs.append(h_ema)
            h_hat = h_ema / (1 - beta**t)
        else:
            hs.append(h)
            h_hat = h
        g = g / (torch.sqrt(h_hat) + eps)
        w = v[i] - lr * g
        out.append(w / torch.linalg.norm(w))
    return torch.stack(out), torch.stack(hs)


@pytest.mark.parametrize("beta", [0.0, 0.9])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_steps_match_algorithm1_by_hand(beta, seed):
    n, d = 3, 17
    v0 = unit(n, d, seed=seed)
    mu = unit(n, d, seed=seed + 1)
    p = v0.clone().requires_grad_(True)
    opt = RiemannianSGD([{"params": [p], "mu": mu}], lr=0.05, kappa=0.3, beta=beta, eps=1e-8)
    ref_v, ref_h = v0.double(), torch.zeros(n, dtype=torch.float64)
    for t in range(1, 4):
        grad = torch.randn(n, d, generator=torch.Generator().manual_seed(seed * 10 + t))
        p.grad = grad.clone()
        opt.step()
        ref_v, ref_h = algorithm1_step(ref_v, grad, mu, 0.05, 0.3, beta, 1e-8, ref_h, t)
        rel = (p.detach().double() - ref_v).norm() / ref_v.norm()
        assert rel <= 1e-6, f"step {t}: relative error {rel:.2e}"
        # the caller's gradient is not modified in place
        assert torch.equal(p.grad, grad)


def test_each_row_turns_by_lr_radians_when_beta_is_zero():
    v0 = unit(4, 32, seed=7)
    p = v0.clone().requires_grad_(True)
    opt = RiemannianSGD([p], lr=0.04)
    p.grad = torch.randn(4, 32, generator=torch.Generator().manual_seed(1)) * 1e3
    opt.step()
    ang = torch.atan(torch.tensor(0.04))  # retraction of a tangent step of length η turns by atan(η)
    cos = (p.detach() * v0).sum(-1)
    assert torch.allclose(cos, torch.cos(ang).expand(4), atol=1e-6)


def test_thousand_steps_keep_every_row_on_the_sphere():
    p = unit(5, 64, seed=3).requires_grad_(True)
    mu = unit(5, 64, seed=4)
    opt = RiemannianSGD([{"params": [p], "mu": mu}], lr=0.1, kappa=0.5, beta=0.5)
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for _ in range(1000):
        p.grad = torch.randn(5, 64, generator=g) * 10
        opt.step()
        worst = max(worst, float((p.detach().double().norm(dim=-1) - 1).abs().max()))
    assert worst <= 1e-6


def test_prior_alone_pulls_direction_to_mu():
    p = unit(2, 16, seed=5).requires_grad_(True)
    mu = unit(2, 16, seed=6)
    opt = RiemannianSGD([{"params": [p], "mu": mu}], lr=0.05, kappa=1e-4)
    start = float((p.detach() * mu).sum(-1).min())
    for _ in range(200):
        p.grad = torch.zeros_like(p)
        opt.step()
    cos = (p.detach() * mu).sum(-1)
    assert start < 0.5
    assert float(cos.min()) > 0.998  # within one step (≈0.05 rad) of μ, where normalized steps oscillate


def test_zero_gradient_without_prior_is_a_zero_step():
    v0 = unit(2, 8, seed=1)
    p = v0.clone().requires_grad_(True)
    opt = RiemannianSGD([p], lr=0.1)
    p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(p.detach(), v0, atol=1e-7)


def test_state_is_fp32_for_bf16_params_and_identity_is_kept():
    p = unit(2, 8, seed=1).to(torch.bfloat16).requires_grad_(True)
    ident = id(p)
    opt = RiemannianSGD([p], lr=0.1, beta=0.9)
    p.grad = torch.randn(2, 8).to(torch.bfloat16)
    opt.step()
    assert opt.state[p]["h"].dtype == torch.float32
    assert id(opt.param_groups[0]["params"][0]) == ident


def test_state_dict_roundtrip_continues_identically():
    def make():
        p = unit(3, 10, seed=2).requires_grad_(True)
        return p, RiemannianSGD([{"params": [p], "mu": unit(3, 10, seed=3)}], lr=0.05, kappa=0.1, beta=0.9)

    g = [torch.randn(3, 10, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    p1, o1 = make()
    for i in range(6):
        p1.grad = g[i].clone()
        o1.step()
    p2, o2 = make()
    for i in range(3):
        p2.grad = g[i].clone()
        o2.step()
    saved_p, saved_opt = p2.detach().clone(), o2.state_dict()
    p3, o3 = make()
    with torch.no_grad():
        p3.copy_(saved_p)
    o3.load_state_dict(saved_opt)
    for i in range(3, 6):
        p3.grad = g[i].clone()
        o3.step()
    assert torch.allclose(p3.detach(), p1.detach(), atol=1e-7)
    assert o3.state[p3]["step"] == 6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=-1.0), "learning rate"),
        (dict(lr=0.1, kappa=-1.0), "kappa"),
        (dict(lr=0.1, beta=1.0), "beta"),
        (dict(lr=0.1, eps=0.0), "eps"),
        (dict(lr=0.1, kappa=1.0), "needs a prior mean"),
        (dict(lr=0.1, stabilize=0), "stabilize"),
    ],
)
def test_bad_hyperparameters_name_the_value(kwargs, match):
    p = unit(2, 4, seed=1).requires_grad_(True)
    with pytest.raises(ValueError, match=match):
        RiemannianSGD([p], **kwargs)


def test_rejects_non_unit_rows_and_mismatched_mu():
    with pytest.raises(ValueError, match="unit rows"):
        RiemannianSGD([torch.ones(2, 4, requires_grad=True)], lr=0.1)
    p = unit(2, 4, seed=1).requires_grad_(True)
    with pytest.raises(ValueError, match="mu has shape"):
        RiemannianSGD([{"params": [p], "mu": unit(3, 4)}], lr=0.1, kappa=0.1)


def test_factory_switches_by_method_name():
    p = unit(2, 4, seed=1).requires_grad_(True)
    dti = build_optimizer("dti", [{"params": [p], "mu": unit(2, 4, seed=2)}], lr=0.04, kappa=1e-4)
    assert isinstance(dti, RiemannianSGD)
    q = torch.randn(2, 4, requires_grad=True)
    ti = build_optimizer("ti", [{"params": [q]}], lr=TI_ADAMW_LR)
    assert isinstance(ti, torch.optim.AdamW)
    assert ti.param_groups[0]["weight_decay"] == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="unknown method 'sgd'"):
        build_optimizer("sgd", [{"params": [q]}], lr=0.1)

"""Riemannian SGD on the unit sphere with a von Mises–Fisher prior (DTI, Algorithm 1).

Each parameter is a matrix whose rows are unit directions. Per row and per step:

    g  = ∂L/∂v − κ μ                 vMF prior −κ μᵀv has the constant Euclidean gradient −κ μ
    g ← g − ⟨g, v⟩ v                 tangent projection
    g ← g / (√ĥ + eps)               ĥ = ‖g‖² (β = 0) or the bias-corrected EMA of ‖g‖² (β > 0)
    v ← (v − η g) / ‖v − η g‖        retraction

so with β = 0 every row turns by ≈ η radians per step, whatever the loss scale.

The ValueErrors here are programming errors: the settings reach the optimizer only after
TrainSettings.check has refused every user value that would trigger them (as InputError).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from . import sphere

# Reference settings of the baselines (AdamW on the raw vector), as the paper's runs used them:
# lr 5e-3 scaled by batch 4, weight decay 1e-2, torch's default betas/eps.
TI_ADAMW_LR = 5e-3 * 4
TI_ADAMW_WEIGHT_DECAY = 1e-2

METHODS = ("dti", "ti", "ti_rescaled", "crossinit")


class RiemannianSGD(Optimizer):
    """Riemannian SGD over parameters whose rows live on the unit sphere.

    Args:
        params: parameters or parameter groups. A group may carry its own ``mu``, ``kappa``, ``lr``,
            ``beta`` and ``eps``.
        lr: step size η; with gradient normalization this is the angle (radians) each row turns.
        kappa: concentration κ of the vMF prior toward ``mu`` (0 disables the prior).
        mu: prior mean, a tensor shaped like the parameter (unit rows). Required when κ > 0.
        beta: EMA decay for ĥ; 0 normalizes every step's gradient to unit length.
        eps: added to √ĥ, so a zero gradient stays a zero step.
        stabilize: re-project rows onto the sphere every N steps (None: only the retraction).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        kappa: float = 0.0,
        mu: torch.Tensor | None = None,
        beta: float = 0.0,
        eps: float = 1e-8,
        stabilize: int | None = None,
    ) -> None:
        _check_hparams(lr=lr, kappa=kappa, beta=beta, eps=eps)
        if stabilize is not None and stabilize < 1:
            raise ValueError(f"stabilize must be None or a positive step count, got {stabilize!r}")
        defaults = dict(lr=lr, kappa=kappa, mu=mu, beta=beta, eps=eps, stabilize=stabilize)
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_hparams(lr=group["lr"], kappa=group["kappa"], beta=group["beta"], eps=group["eps"])
            for p in group["params"]:
                atol = max(1e-4, 10 * sphere.eps_for(p.dtype))  # bf16 rows are unit only to ~1e-2
                ok, reason = sphere.check_unit(p.detach(), atol=atol)
                if not ok:
                    raise ValueError(f"RiemannianSGD parameters must have unit rows: {reason}")
                if group["kappa"] > 0 and group["mu"] is None:
                    raise ValueError("RiemannianSGD: kappa > 0 needs a prior mean mu for every parameter group")
                if group["mu"] is not None and group["mu"].shape != p.shape:
                    raise ValueError(
                        f"RiemannianSGD: mu has shape {tuple(group['mu'].shape)} but the parameter has "
                        f"shape {tuple(p.shape)}; give each parameter its own group with a matching mu"
                    )

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("RiemannianSGD does not support sparse gradients; use a dense embedding")
                self._step_param(p, group)
        return loss

    def _step_param(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if len(state) == 0:
            state["step"] = 0
            # fp32 whatever the parameter's dtype: bf16 EMAs of squared norms lose the small ones.
            state["h"] = torch.zeros(p.shape[:-1] + (1,), dtype=torch.float32, device=p.device)
        state["step"] += 1
        t = state["step"]

        v = p.detach().float()
        g = p.grad.detach().float()  # a copy: the caller's .grad is left as autograd wrote it
        if group["kappa"] > 0:
            g = g - group["kappa"] * group["mu"].to(device=g.device, dtype=torch.float32)
        g = sphere.project_tangent(v, g)

        h = sphere.inner(g, g)
        beta = group["beta"]
        if beta > 0:
            state["h"].mul_(beta).add_(h, alpha=1.0 - beta)
            h_hat = state["h"] / (1.0 - beta**t)
        else:
            state["h"].copy_(h)
            h_hat = h
        g = g / (h_hat.sqrt() + group["eps"])

        v = v - group["lr"] * g
        v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
        stabilize = group["stabilize"]
        if stabilize is not None and t % stabilize == 0:
            v = sphere.normalize(v.double()).float()
        p.copy_(v.to(p.dtype))


def _check_hparams(lr: float, kappa: float, beta: float, eps: float) -> None:
    if not (lr >= 0.0):
        raise ValueError(f"invalid learning rate (angle per step) lr={lr!r}: must be >= 0")
    if not (kappa >= 0.0):
        raise ValueError(f"invalid kappa={kappa!r}: the vMF concentration must be >= 0")
    if not (0.0 <= beta < 1.0):
        raise ValueError(f"invalid beta={beta!r}: must be in [0, 1)")
    if not (eps > 0.0):
        raise ValueError(f"invalid eps={eps!r}: must be > 0")


def build_optimizer(
    method: str,
    groups: list[dict[str, Any]],
    lr: float,
    kappa: float = 0.0,
    beta: float = 0.0,
    weight_decay: float = TI_ADAMW_WEIGHT_DECAY,
) -> Optimizer:
    """The optimizer a method trains with.

    groups: one dict per encoder with ``params`` (a single tensor list) and, for ``dti``, ``mu``.
    ``dti`` → RiemannianSGD over unit directions; ``ti``, ``ti_rescaled`` and ``crossinit`` → AdamW
    over the full vectors (the reference baselines; rescaling and the CrossInit pull are applied by
    the trainer, not the optimizer).
    """
    if method == "dti":
        return RiemannianSGD(
            [{"params": g["params"], "mu": g.get("mu")} for g in groups], lr=lr, kappa=kappa, beta=beta
        )
    if method in ("ti", "ti_rescaled", "crossinit"):
        return torch.optim.AdamW([{"params": g["params"]} for g in groups], lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")  # settings.check refuses it first

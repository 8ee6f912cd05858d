"""Balancing each auxiliary task's gradient on the shared torso against PPO's.

Multi-headed models share a torso between tasks, and a summed loss lets one task dominate it:
its gradient may be much larger than PPO's, or point against it. Every method here is a rule on
two flat vectors of the torso's parameters:

- ``g_main``: PPO's gradient, after PPO's own clip (what PPO's step applies);
- ``g_aux``: one task's gradient, its loss already multiplied by its configured weight;

and returns what is added to the torso's gradient for that task. PPO's own gradient is never
changed, and each task's head parameters are not touched (they are clipped on their own).

========  =====================================================================================
method    rule (``aux.balance.method``)
========  =====================================================================================
none      ``g_aux`` as is: the configured weights alone decide.
norm      ``g_aux * min(1, relax * |g_main| / |g_aux|)``: no task's torso gradient is larger
          than ``relax`` times PPO's (MetaBalance, He et al. 2022, WWW, arXiv 2203.06801; its
          "reduce only the larger aux gradients" strategy, on the current minibatch's norms).
cosine    ``g_aux`` where ``cos(g_main, g_aux) > 0``, else 0; with ``cosine_weighted`` scaled by
          ``max(cos, 0)`` (Du et al. 2018, "Adapting auxiliary losses using gradient
          similarity", arXiv 1812.02224).
pcgrad    ``g_aux - min(0, g_aux . g_main) / |g_main|^2 * g_main``: the component that
          conflicts with PPO's direction is removed (Yu et al. 2020, "Gradient surgery for
          multi-task learning", NeurIPS); with one main task only the aux gradient is projected.
olaux     ``s_k * g_aux`` with a per-task multiplier ``s_k`` learned online: every
          ``olaux_every`` updates, ``s_k += olaux_lr * sum over those updates of mean
          cos(g_main, g_aux_k)``, clipped to ``[0, olaux_max]`` (Lin et al. 2019, "Adaptive
          auxiliary task weighting for reinforcement learning", NeurIPS: to first order the
          gradient of the main loss after N steps w.r.t. an aux weight is minus the sum of
          ``g_main . g_aux`` over those steps; the dot product is normalised to a cosine here,
          so the step size does not depend on the scale of either gradient).
========  =====================================================================================

Which to pick: ``norm`` (the default) when a head's gradient may dwarf PPO's (e.g. a new head
or an untuned weight); ``cosine`` or ``pcgrad`` when heads are suspected to pull against the
policy; ``olaux`` to let the run find the weights; ``none`` to reproduce a fixed-weight sum.
Every method is computed on the device, without a host sync.
"""

from __future__ import annotations

from typing import Any

import torch

from auxrl.config import BalanceConfig

EPS = 1e-12


def balance_none(g_main: torch.Tensor, g_aux: torch.Tensor) -> torch.Tensor:
    """The task's gradient unchanged."""
    return g_aux


def balance_norm(g_main: torch.Tensor, g_aux: torch.Tensor, relax: float = 1.0) -> torch.Tensor:
    """Shrink ``g_aux`` to at most ``relax * |g_main|`` (never enlarge it)."""
    scale = (relax * g_main.norm() / g_aux.norm().clamp(min=EPS)).clamp(max=1.0)
    return g_aux * scale


def balance_cosine(g_main: torch.Tensor, g_aux: torch.Tensor, weighted: bool = False) -> torch.Tensor:
    """Keep ``g_aux`` only if it agrees with ``g_main`` (or scale it by ``max(cos, 0)``)."""
    cos = cosine(g_main, g_aux)
    scale = cos.clamp(min=0.0) if weighted else (cos > 0).to(g_aux.dtype)
    return g_aux * scale


def balance_pcgrad(g_main: torch.Tensor, g_aux: torch.Tensor) -> torch.Tensor:
    """Remove the part of ``g_aux`` along ``-g_main`` when the two conflict (dot < 0)."""
    dot = torch.dot(g_main, g_aux)
    coef = dot.clamp(max=0.0) / g_main.square().sum().clamp(min=EPS)
    return g_aux - coef * g_main


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a, b), 0 when either is zero."""
    return torch.dot(a, b) / (a.norm() * b.norm()).clamp(min=EPS)


def olaux_step(scale: torch.Tensor, summed_cosine: torch.Tensor, lr: float, max_scale: float) -> torch.Tensor:
    """One OL-AUX step of a task's multiplier: up when its gradient helped PPO's, down when not."""
    return (scale + lr * summed_cosine).clamp(0.0, max_scale)


class Balancer:
    """Applies ``aux.balance`` to the torso gradients of every task, minibatch by minibatch.

    ``__call__(g_main, g_aux)`` returns the balanced gradients and, per task, the factor the
    balancer multiplied by (``|balanced| / |g_aux|``, logged as ``aux/<task>/scale``). Only
    ``olaux`` has state (its multipliers and their running sums); it is saved in checkpoints.
    """

    def __init__(self, cfg: BalanceConfig) -> None:
        self.cfg = cfg
        self.olaux_scale: dict[str, torch.Tensor] = {}  # task -> multiplier s_k
        self._cos_sum: dict[str, torch.Tensor] = {}  # sum of per-update mean cosines, this window
        self._update_cos: dict[str, list[torch.Tensor]] = {}  # cosines of the current update
        self._updates = 0  # updates in the current window

    def __call__(
        self, g_main: torch.Tensor, g_aux: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        out, scales = {}, {}
        method = self.cfg.method
        for name, g in g_aux.items():
            if method == "none":
                b = balance_none(g_main, g)
            elif method == "norm":
                b = balance_norm(g_main, g, self.cfg.relax)
            elif method == "cosine":
                b = balance_cosine(g_main, g, self.cfg.cosine_weighted)
            elif method == "pcgrad":
                b = balance_pcgrad(g_main, g)
            elif method == "olaux":
                s = self.olaux_scale.setdefault(name, torch.ones((), device=g.device))
                self._update_cos.setdefault(name, []).append(cosine(g_main, g))
                b = g * s.to(g.device)
            else:  # pragma: no cover - the config's Literal type rules this out
                raise ValueError(f"aux.balance.method: unknown method {method!r}")
            out[name] = b
            scales[name] = (
                b.norm() / g.norm().clamp(min=EPS) if b is not g else torch.ones((), device=g.device)
            )
        return out, scales

    def end_update(self) -> None:
        """Called once per PPO update (after its minibatches); steps the OL-AUX multipliers."""
        if self.cfg.method != "olaux":
            return
        for name, cosines in self._update_cos.items():
            mean = torch.stack(cosines).mean()
            self._cos_sum[name] = self._cos_sum.get(name, torch.zeros_like(mean)) + mean
        self._update_cos = {}
        self._updates += 1
        if self._updates >= self.cfg.olaux_every:
            for name, summed in self._cos_sum.items():
                s = self.olaux_scale[name]
                self.olaux_scale[name] = olaux_step(
                    s, summed.to(s.device), self.cfg.olaux_lr, self.cfg.olaux_max
                )
            self._cos_sum, self._updates = {}, 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "olaux_scale": {k: float(v) for k, v in self.olaux_scale.items()},
            "cos_sum": {k: float(v) for k, v in self._cos_sum.items()},
            "updates": self._updates,
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.olaux_scale = {k: torch.tensor(v, device=device) for k, v in state["olaux_scale"].items()}
        self._cos_sum = {k: torch.tensor(v, device=device) for k, v in state["cos_sum"].items()}
        self._updates = int(state["updates"])
        self._update_cos = {}

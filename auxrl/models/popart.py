"""PopArt: a value layer whose targets are normalised per task, with its outputs preserved.

van Hasselt et al. 2016 ("Learning values across many orders of magnitude") and Hessel et al.
2019 ("Multi-task deep reinforcement learning with PopArt"): one set of weights on many Atari
games, where a game with large rewards would otherwise dominate the shared torso's gradient.

Per task ``i`` the layer predicts a *normalised* value ``n_i(x) = w_i . h(x) + b_i``; the value is
``V_i(x) = sigma_i n_i(x) + mu_i``. ``mu_i`` and ``nu_i`` are exponential moving averages (step
``beta``) of the first and second moments of task ``i``'s value targets, ``sigma_i =
sqrt(nu_i - mu_i^2)`` (at least ``min_sigma``). *ART* updates the statistics from a batch of
targets; *POP* rescales ``w_i, b_i`` in the same step so that every unnormalised output stays as it
was: ``w_i' = w_i sigma_i / sigma_i'`` and ``b_i' = (sigma_i b_i + mu_i - mu_i') / sigma_i'``. The
value loss is taken on the normalised scale, ``(n_i(x) - (G - mu_i) / sigma_i)^2``, so every task's
gradient on the shared torso has a comparable size whatever its reward scale.

Everything stays on the device (per-task sums with ``index_add_``, no host sync).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from auxrl.models.torsos import layer_init


class PopArt(nn.Module):
    """``num_tasks`` value outputs on ``in_features``, each normalised by its own statistics.

    :param beta: step of the moving averages of the targets' moments (the paper's 3e-4 for
        IMPALA's many small updates; larger suits PPO's fewer, larger batches).
    :param min_sigma: lower bound of the scale (a task whose targets are all alike).
    """

    def __init__(
        self, in_features: int, num_tasks: int = 1, beta: float = 3e-4, min_sigma: float = 1e-4
    ) -> None:
        super().__init__()
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"PopArt beta must be in (0, 1], got {beta}")
        self.linear = layer_init(nn.Linear(in_features, num_tasks), std=1.0)
        self.beta, self.min_sigma = beta, min_sigma
        self.register_buffer("mu", torch.zeros(num_tasks))
        self.register_buffer("nu", torch.ones(num_tasks))  # second moment: sigma starts at 1
        # Moment estimates start from the first batch (debiased as Adam does: 1 - (1-beta)^k).
        self.register_buffer("updates", torch.zeros(num_tasks))

    @property
    def num_tasks(self) -> int:
        return self.mu.shape[0]

    @property
    def sigma(self) -> torch.Tensor:
        return (self.nu - self.mu**2).clamp(min=self.min_sigma**2).sqrt()

    def forward(self, features: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised values ``[B]`` of each sample's task (``task`` ``[B]`` long; None: task 0)."""
        out = self.linear(features)  # [B, T]
        if task is None:
            return out[:, 0]
        return out.gather(1, task.long().unsqueeze(1)).squeeze(1)

    def unnormalize(self, normalized: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """``sigma_i n + mu_i``: values on the scale of the returns."""
        mu, sigma = self._stats(task, normalized)
        return normalized * sigma + mu

    def normalize(self, targets: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """``(G - mu_i) / sigma_i``: targets on the scale of the layer's outputs."""
        mu, sigma = self._stats(task, targets)
        return (targets - mu) / sigma

    def value(self, features: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised values ``[B]``."""
        return self.unnormalize(self(features, task), task)

    @torch.no_grad()
    def update(
        self,
        targets: torch.Tensor,
        task: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        reduce: Callable[[list[torch.Tensor]], object] | None = None,
    ) -> None:
        """ART then POP: move each task's statistics towards the moments of its ``targets``
        (where ``mask``), then rescale the layer so that no unnormalised output changes. A task
        without targets in the batch keeps its statistics. ``reduce``: averages the per-task sums
        over processes in place (several ranks: the same statistics everywhere)."""
        targets = targets.detach().float().flatten()
        task = torch.zeros_like(targets, dtype=torch.long) if task is None else task.flatten().long()
        weight = torch.ones_like(targets) if mask is None else mask.flatten().float()
        count = torch.zeros_like(self.mu).index_add_(0, task, weight)
        first = torch.zeros_like(self.mu).index_add_(0, task, weight * targets)
        second = torch.zeros_like(self.mu).index_add_(0, task, weight * targets**2)
        if reduce is not None:
            reduce([count, first, second])
        seen = count > 0
        mean, square = first / count.clamp(min=1.0), second / count.clamp(min=1.0)
        # The k-th update's step, debiased: the first batch sets the statistics outright.
        self.updates += seen.float()
        # (in float64: 1 - (1 - beta)^k loses beta's digits in float32 when beta is small)
        decay = (1.0 - self.beta) ** self.updates.double().clamp(min=1.0)
        step = torch.where(seen, (self.beta / (1.0 - decay)).float(), 0.0)
        old_mu, old_sigma = self.mu.clone(), self.sigma
        self.mu.lerp_(mean, step)
        self.nu.lerp_(square, step)
        new_sigma = self.sigma
        # POP: sigma' (w' h + b') + mu' == sigma (w h + b) + mu for every h.
        self.linear.weight.mul_((old_sigma / new_sigma).unsqueeze(1))
        self.linear.bias.copy_((old_sigma * self.linear.bias + old_mu - self.mu) / new_sigma)

    def _stats(self, task: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = self.sigma
        if task is None:
            return self.mu[0], sigma[0]
        index = task.long()
        return self.mu[index], sigma[index]

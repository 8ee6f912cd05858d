"""Device-resident replay of recent experience, for auxiliary tasks.

A time-major ring buffer ``[capacity, num_envs]`` of uint8 frames (or the env's dtype), actions,
rewards and done flags. Whole rollouts are appended with one copy per update (not per step), and
each env's column is a contiguous stream of its steps, so any window of consecutive stored steps
is a real piece of that env's trajectory (episode boundaries are in its flags). Sampling draws
(start, env) pairs on the device, optionally skewed toward windows that end with a reward.
"""

from __future__ import annotations

import torch

from auxrl.ppo.rollout import RolloutStorage
from auxrl.tasks.base import Sequences


class Replay:
    def __init__(self, capacity: int, storage: RolloutStorage) -> None:
        """``capacity``: steps kept per env (at least one rollout)."""
        self.capacity = max(capacity, storage.num_steps)
        self.num_envs = storage.num_envs
        self.device = storage.device
        sn = (self.capacity, self.num_envs)

        def like(t: torch.Tensor) -> torch.Tensor:
            return torch.zeros(sn + tuple(t.shape[2:]), dtype=t.dtype, device=self.device)

        self.obs = like(storage.obs)
        self.actions = like(storage.actions)
        self.rewards = like(storage.rewards)
        self.terminated = like(storage.terminated)
        self.truncated = like(storage.truncated)
        self.valid = like(storage.valid)
        self.next_obs = torch.zeros_like(storage.next_obs)  # obs after the newest stored step
        self.head = 0  # next physical row to write
        self.size = 0  # rows filled

    def add(self, storage: RolloutStorage) -> None:
        """Append one rollout (``storage.num_steps`` steps of every env)."""
        t = storage.num_steps
        rows = (self.head + torch.arange(t, device=self.device)) % self.capacity
        for name in ("obs", "actions", "rewards", "terminated", "truncated", "valid"):
            getattr(self, name)[rows] = getattr(storage, name)
        self.next_obs.copy_(storage.next_obs)
        self.head = (self.head + t) % self.capacity
        self.size = min(self.size + t, self.capacity)

    def _rows(self, logical: torch.Tensor) -> torch.Tensor:
        """Logical index (0 = oldest stored step) -> physical row."""
        return (self.head - self.size + logical) % self.capacity

    def sample(
        self,
        batch_size: int,
        length: int,
        *,
        recent: int | None = None,
        rewarding_fraction: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Sequences:
        """``batch_size`` windows of ``length`` transitions (plus the observation after them).

        ``recent``: only draw from the newest ``recent`` steps (e.g. the current rollout).
        ``rewarding_fraction``: draw that share of windows from those whose last reward is
        non-zero, when any exist (UNREAL's skewed sampling for reward prediction).
        """
        size = self.size if recent is None else min(recent, self.size)
        first = self.size - size  # logical index of the oldest usable step
        # A window starting at logical i uses steps i..i+L-1 and obs i..i+L; obs i+L exists for
        # i+L <= size (the last one is next_obs).
        num_starts = size - length + 1
        if num_starts <= 0:
            raise ValueError(
                f"The replay holds {size} steps per env, fewer than the {length} an auxiliary "
                f"task needs per sample. Raise aux.replay_size or ppo.num_steps."
            )
        if rewarding_fraction is None:
            flat = torch.randint(
                num_starts * self.num_envs, (batch_size,), device=self.device, generator=generator
            )
        else:
            end_rows = self._rows(first + length - 1 + torch.arange(num_starts, device=self.device))
            rewarding = (self.rewards[end_rows] != 0) & self.valid[end_rows]  # [starts, envs]
            n_rew = rewarding.sum()
            n_zero = rewarding.numel() - n_rew
            p = float(rewarding_fraction)
            # Per-candidate probability: p shared by rewarding windows, 1-p by the others;
            # uniform when one of the two groups is empty. Decided on the device (no host sync).
            skewed = torch.where(rewarding, p / n_rew.clamp(min=1), (1 - p) / n_zero.clamp(min=1))
            both = (n_rew > 0) & (n_zero > 0)
            weights = torch.where(both, skewed, torch.ones_like(skewed)).flatten()
            flat = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
        start, env = flat // self.num_envs, flat % self.num_envs
        steps = first + start.unsqueeze(1) + torch.arange(length + 1, device=self.device)  # [B, L+1]
        rows = self._rows(steps)
        envs = env.unsqueeze(1)
        obs = self.obs[rows, envs]
        # The observation after the newest step is not in the ring: take it from next_obs
        # (a select, not a data-dependent branch, so sampling never waits on the device).
        past_end = (steps == self.size).reshape(steps.shape + (1,) * (obs.dim() - 2))
        obs = torch.where(past_end, self.next_obs[envs], obs)
        tr, te = rows[:, :-1], envs
        return Sequences(
            obs=obs,
            actions=self.actions[tr, te],
            rewards=self.rewards[tr, te],
            terminated=self.terminated[tr, te],
            truncated=self.truncated[tr, te],
            valid=self.valid[tr, te],
        )

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
from auxrl.tasks.base import Pairs, Sequences, in_episode


class Replay:
    def __init__(self, capacity: int, storage: RolloutStorage) -> None:
        """``capacity``: steps kept per env (at least one rollout)."""
        self.capacity = max(capacity, storage.num_steps)
        # One spare row: after each add it holds the observation after the newest step, so a
        # window reaching past the newest step reads it like any other row (no copy, no select).
        self.rows = self.capacity + 1
        self.num_envs = storage.num_envs
        self.device = storage.device
        sn = (self.rows, self.num_envs)

        def like(t: torch.Tensor) -> torch.Tensor:
            return torch.zeros(sn + tuple(t.shape[2:]), dtype=t.dtype, device=self.device)

        self.obs = like(storage.obs)
        self.actions = like(storage.actions)
        self.rewards = like(storage.rewards)
        self.terminated = like(storage.terminated)
        self.truncated = like(storage.truncated)
        self.valid = like(storage.valid)
        self.labels = like(storage.labels) if storage.labels is not None else None  # env.labels
        self.head = 0  # next physical row to write (holds the obs after the newest step)
        self.size = 0  # steps stored

    def add(self, storage: RolloutStorage) -> None:
        """Append one rollout (``storage.num_steps`` steps of every env)."""
        t = storage.num_steps
        rows = (self.head + torch.arange(t, device=self.device)) % self.rows
        for name in ("obs", "actions", "rewards", "terminated", "truncated", "valid"):
            getattr(self, name)[rows] = getattr(storage, name)
        if self.labels is not None:
            self.labels[rows] = storage.labels
        self.head = (self.head + t) % self.rows
        # The next rollout's first obs is this next_obs, and it will be written to this row.
        self.obs[self.head] = storage.next_obs
        if self.labels is not None:
            self.labels[self.head] = storage.next_labels
        self.size = min(self.size + t, self.capacity)

    def stored(self, name: str) -> torch.Tensor:
        """Every stored step of ``rewards``, ``terminated``, ... oldest first: ``[size, num_envs]``."""
        return getattr(self, name)[self._rows(torch.arange(self.size, device=self.device))]

    def _rows(self, logical: torch.Tensor) -> torch.Tensor:
        """Logical index (0 = oldest stored step, ``size`` = the obs after the newest) -> row."""
        return (self.head - self.size + logical) % self.rows

    def draw(
        self,
        count: int,
        length: int,
        *,
        recent: int | None = None,
        rewarding_fraction: float | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` window starts: (logical step of the first transition, env), each ``[count]``.

        ``recent``: only draw from the newest ``recent`` steps (e.g. the current rollout).
        ``rewarding_fraction``: draw that share of windows from those whose last reward is
        non-zero, when any exist (UNREAL's skewed sampling for reward prediction). Everything
        is decided on the device, without a host sync.
        """
        size = self.size if recent is None else min(recent, self.size)
        first = self.size - size  # logical index of the oldest usable step
        # A window starting at logical i uses steps i..i+L-1 and obs i..i+L (obs `size` is the
        # spare row), so i + L <= size.
        num_starts = size - length + 1
        if num_starts <= 0:
            raise ValueError(
                f"The replay holds {size} steps per env, fewer than the {length} an auxiliary "
                f"task needs per sample. Raise aux.replay_size or ppo.num_steps."
            )
        dev = self.device
        if rewarding_fraction is None:
            flat = torch.randint(num_starts * self.num_envs, (count,), device=dev, generator=generator)
        else:
            end_rows = self._rows(first + length - 1 + torch.arange(num_starts, device=dev))
            rewarding = ((self.rewards[end_rows] != 0) & self.valid[end_rows]).flatten()  # [starts*envs]
            # Candidates sorted rewarding-first: a rewarding draw is a uniform index below n_rew,
            # a zero-reward draw one at or above it (no multinomial over every candidate).
            order = torch.argsort(rewarding.to(torch.uint8), descending=True, stable=True)
            n_rew = rewarding.sum()
            n_zero = rewarding.numel() - n_rew
            wants_rew = torch.rand(count, device=dev, generator=generator) < rewarding_fraction
            pick_rew = (wants_rew & (n_rew > 0)) | (n_zero == 0)  # uniform when a group is empty
            u = torch.rand(count, device=dev, generator=generator)
            in_rew = torch.minimum((u * n_rew).long(), (n_rew - 1).clamp(min=0))
            in_zero = n_rew + torch.minimum((u * n_zero).long(), (n_zero - 1).clamp(min=0))
            flat = order[torch.where(pick_rew, in_rew, in_zero)]
        return first + flat // self.num_envs, flat % self.num_envs

    def gather(self, start: torch.Tensor, env: torch.Tensor, length: int) -> Sequences:
        """The windows of :meth:`draw`: ``length`` transitions and ``length + 1`` observations."""
        steps = start.unsqueeze(1) + torch.arange(length + 1, device=self.device)  # [B, L+1]
        rows = self._rows(steps)
        envs = env.unsqueeze(1)
        tr = rows[:, :-1]
        return Sequences(
            obs=self.obs[rows, envs],
            actions=self.actions[tr, envs],
            rewards=self.rewards[tr, envs],
            terminated=self.terminated[tr, envs],
            truncated=self.truncated[tr, envs],
            valid=self.valid[tr, envs],
            labels=self.labels[rows, envs] if self.labels is not None else None,
        )

    def gather_pairs(self, start: torch.Tensor, env: torch.Tensor, gap: torch.Tensor, span: int) -> Pairs:
        """The observations at ``start`` and ``start + gap`` (``gap <= span``; windows drawn with
        :meth:`draw` for length ``span``): two frames per sample, plus the flags between them."""
        envs = env.unsqueeze(1)
        flags = self._rows(start.unsqueeze(1) + torch.arange(span, device=self.device))  # [B, span]
        inside = in_episode(
            self.valid[flags, envs], self.terminated[flags, envs], self.truncated[flags, envs]
        )
        rows = torch.stack([self._rows(start), self._rows(start + gap)], 1)  # [B, 2]
        return Pairs(
            obs=self.obs[rows, envs],
            gap=gap,
            same_episode=inside.gather(1, (gap - 1).unsqueeze(1)).squeeze(1),
            labels=self.labels[rows, envs] if self.labels is not None else None,
        )

    def sample(
        self,
        batch_size: int,
        length: int,
        *,
        recent: int | None = None,
        rewarding_fraction: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Sequences:
        """``batch_size`` windows of ``length`` transitions (plus the observation after them)."""
        start, env = self.draw(
            batch_size, length, recent=recent, rewarding_fraction=rewarding_fraction, generator=generator
        )
        return self.gather(start, env, length)

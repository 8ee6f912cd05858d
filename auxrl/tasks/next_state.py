"""Latent next-state prediction (SPR, Schwarzer et al. 2021, arXiv 2007.05929), no augmentation.

A transition model rolls the online features ``z_0 = encode(obs_0)`` forward with the actions
taken, and a predictor maps each ``z_k`` to a guess of the features that a slowly moving (EMA)
copy of the torso gives for ``obs_k``. The loss is the cosine distance between the two. Targets
from an EMA copy, with no gradient, plus the extra predictor are what keeps this from collapsing
to constant features (as in BYOL); predicting in feature space rather than pixels lets the torso
keep only what the actions make predictable.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import nn

from auxrl.config import ConfigError
from auxrl.models.torsos import layer_init
from auxrl.tasks.base import (
    AuxOutput,
    AuxTask,
    Encoder,
    Needs,
    Sequences,
    TaskContext,
    TaskMismatch,
)


@dataclass
class NextStateConfig:
    horizon: int = 1  # K: steps predicted ahead from z_0 (SPR uses 5)
    ema_tau: float = 0.01  # target <- (1 - tau) * target + tau * online, after every update
    hidden: int = 256

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ConfigError("next_state: horizon must be >= 1.")
        if not 0.0 <= self.ema_tau <= 1.0:
            raise ConfigError("next_state: ema_tau must be in [0, 1].")
        if self.hidden < 1:
            raise ConfigError("next_state: hidden must be >= 1.")


class NextStatePrediction(AuxTask):
    """Predict EMA-torso features of the next ``horizon`` observations from z_0 and the actions."""

    name = "next_state"
    description = "SPR-style latent forward model: predict EMA-torso features of next observations"
    Config = NextStateConfig
    default_weight = 1.0

    cfg: NextStateConfig
    target_torso: nn.Module
    _online: nn.Module

    def __init__(self, cfg: NextStateConfig, ctx: TaskContext) -> None:
        super().__init__(cfg, ctx)
        self.check(ctx)
        self.needs = Needs(sequence_length=cfg.horizon, replay=True)
        # The online torso belongs to the agent: keep a plain reference (not a submodule), so it
        # is neither in this task's state_dict nor in its parameters twice.
        object.__setattr__(self, "_online", ctx.torso)
        self.target_torso = copy.deepcopy(ctx.torso).requires_grad_(False)
        space = ctx.action_space
        self.discrete = isinstance(space, gym.spaces.Discrete)
        # Discrete: one-hot of n; Box (checked): the flattened action vector.
        self.action_dim = (
            int(space.n) if isinstance(space, gym.spaces.Discrete) else math.prod(space.shape or ())
        )
        dim = ctx.feature_dim
        self.transition = nn.Sequential(
            layer_init(nn.Linear(dim + self.action_dim, cfg.hidden)),
            nn.ReLU(),
            layer_init(nn.Linear(cfg.hidden, dim)),
        )
        self.predictor = nn.Sequential(
            layer_init(nn.Linear(dim, dim)), nn.ReLU(), layer_init(nn.Linear(dim, dim))
        )

    @classmethod
    def check(cls, ctx: TaskContext) -> None:
        if not isinstance(ctx.action_space, (gym.spaces.Discrete, gym.spaces.Box)):
            raise TaskMismatch(
                f"aux task {cls.name!r} feeds actions to its transition model as one-hot "
                f"(Discrete) or raw vectors (Box), but this env's action space is "
                f"{ctx.action_space}. Disable it (aux.tasks.{cls.name}.enabled=false)."
            )

    def _action_inputs(self, actions: torch.Tensor) -> torch.Tensor:
        """[B, K, *action_shape] -> [B, K, action_dim] float."""
        if self.discrete:
            return F.one_hot(actions.long(), self.action_dim).float()
        return actions.float().flatten(2)

    def loss(self, seq: Sequences, encode: Encoder) -> AuxOutput:
        batch, horizon = seq.actions.shape[:2]
        with torch.no_grad():
            targets = self.target_torso(seq.obs[:, 1:].flatten(0, 1)).reshape(batch, horizon, -1)
        actions = self._action_inputs(seq.actions)
        z = encode(seq.obs[:, 0])
        predictions = []
        for k in range(horizon):
            z = self.transition(torch.cat([z, actions[:, k]], dim=-1))  # z_{k+1}
            predictions.append(self.predictor(z))
        p = F.normalize(torch.stack(predictions, 1).float(), dim=-1)  # [B, K, F], fp32 under autocast
        t = F.normalize(targets.float(), dim=-1)
        # Prediction k + 1 targets obs[:, k + 1], which is in obs[:, 0]'s episode iff
        # in_episode[:, k].
        mask = seq.in_episode.float()
        count = mask.sum().clamp(min=1.0)
        distance = (p - t).square().sum(-1)  # = 2 - 2 cos
        cosine = (p * t).sum(-1).detach()
        return AuxOutput((distance * mask).sum() / count, {"cosine": (cosine * mask).sum() / count})

    @torch.no_grad()
    def ema_update(self, tau: float) -> None:
        """Move the target torso a fraction ``tau`` toward the online torso."""
        target = list(self.target_torso.parameters())
        online = [p.detach() for p in self._online.parameters()]
        torch._foreach_lerp_(target, online, tau)
        for t_buf, o_buf in zip(self.target_torso.buffers(), self._online.buffers(), strict=True):
            t_buf.copy_(o_buf)  # e.g. normalisation statistics: follow the online torso

    def after_update(self) -> None:
        self.ema_update(self.cfg.ema_tau)

    def on_torso_loaded(self) -> None:
        self.ema_update(1.0)  # start the target from the loaded torso, not the random one

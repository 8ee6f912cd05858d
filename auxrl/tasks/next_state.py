"""Latent next-state prediction (SPR, Schwarzer et al. 2021, arXiv 2007.05929), no augmentation.

A transition model rolls the online features ``z_0 = encode(obs_0)`` forward with the actions
taken; each ``z_k`` goes through a linear projection and a predictor, and is compared with the
projection of ``obs_k``'s features by a slowly moving (EMA) copy of torso and projection. The
loss is the cosine distance between the two. Targets from an EMA copy, with no gradient, plus the
extra predictor are what keeps this from collapsing to constant features (as in BYOL); the
projection matters too: torso features end in a ReLU, so any two of them already have a high
cosine, and the projection gives the loss signed directions to tell states apart. Targets are
centred on their batch mean (see ``loss``) for the same reason. Predicting in
feature space rather than pixels lets the torso keep only what the actions make predictable.
``target_similarity`` (the mean cosine between the uncentred targets of different samples) is
logged to watch for collapse: a rise toward 1 over training means the EMA torso's features of
different states are converging.
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
    projection_dim: int = 256

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ConfigError("next_state: horizon must be >= 1.")
        if not 0.0 <= self.ema_tau <= 1.0:
            raise ConfigError("next_state: ema_tau must be in [0, 1].")
        if self.hidden < 1 or self.projection_dim < 1:
            raise ConfigError("next_state: hidden and projection_dim must be >= 1.")


class NextStatePrediction(AuxTask):
    """Predict EMA-torso features of the next ``horizon`` observations from z_0 and the actions."""

    name = "next_state"
    description = "SPR-style latent forward model: predict EMA-torso features of next observations"
    Config = NextStateConfig
    default_weight = 0.1

    cfg: NextStateConfig
    target_torso: nn.Module
    target_projection: nn.Module
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
        proj = cfg.projection_dim
        self.projection = layer_init(nn.Linear(dim, proj))
        self.target_projection = copy.deepcopy(self.projection).requires_grad_(False)
        self.predictor = nn.Sequential(
            layer_init(nn.Linear(proj, proj)), nn.ReLU(), layer_init(nn.Linear(proj, proj))
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
            targets = self.target_projection(self.target_torso(seq.obs[:, 1:].flatten(0, 1)))
            targets = targets.reshape(batch, horizon, -1)
        actions = self._action_inputs(seq.actions)
        z = encode(seq.obs[:, 0])
        predictions = []
        for k in range(horizon):
            z = self.transition(torch.cat([z, actions[:, k]], dim=-1))  # z_{k+1}
            predictions.append(self.predictor(self.projection(z)))
        p = F.normalize(torch.stack(predictions, 1).float(), dim=-1)  # [B, K, P], fp32 under autocast
        # Centre the targets on their batch mean before normalising: Atari frames share most of
        # their pixels, so raw target features of different states have cosine ~0.99 (measured
        # on Breakout at init) and predicting their mean direction would already score ~0.99.
        # Centred, only what tells states apart is left to predict, and collapsed (constant)
        # targets centre to zero, which no prediction matches, so collapse earns nothing.
        targets = targets.float()
        t = F.normalize(targets - targets.mean(dim=(0, 1), keepdim=True), dim=-1)
        # Prediction k + 1 targets obs[:, k + 1], which is in obs[:, 0]'s episode iff
        # in_episode[:, k].
        mask = seq.in_episode.float()
        count = mask.sum().clamp(min=1.0)
        distance = (p - t).square().sum(-1)  # = 2 - 2 cos
        cosine = (p * t).sum(-1).detach()
        first = F.normalize(targets[:, 0], dim=-1)  # uncentred, one per sample: mean off-diagonal
        similarity = ((first @ first.T).sum() - batch) / max(batch * batch - batch, 1)
        metrics = {"cosine": (cosine * mask).sum() / count, "target_similarity": similarity}
        return AuxOutput((distance * mask).sum() / count, metrics)

    @torch.no_grad()
    def ema_update(self, tau: float) -> None:
        """Move the target torso and projection a fraction ``tau`` toward the online ones."""
        target = [*self.target_torso.parameters(), *self.target_projection.parameters()]
        online = [p.detach() for p in (*self._online.parameters(), *self.projection.parameters())]
        torch._foreach_lerp_(target, online, tau)
        for t_buf, o_buf in zip(self.target_torso.buffers(), self._online.buffers(), strict=True):
            t_buf.copy_(o_buf)  # e.g. normalisation statistics: follow the online torso

    def after_update(self) -> None:
        self.ema_update(self.cfg.ema_tau)

    def on_torso_loaded(self) -> None:
        self.ema_update(1.0)  # start the target from the loaded torso, not the random one

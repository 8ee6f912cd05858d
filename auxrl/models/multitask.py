"""Heads of a multi-task agent (``env.tasks``): a policy head per task, a value output per task.

One torso reads every game; each game keeps its own action set and its own value scale. A sample
carries its task's index (``task``, ``[B]`` long) and is read by that task's heads only, so a
task's heads get gradients from its own samples alone (the gather below routes them).
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import torch
from torch import nn
from torch.distributions import Categorical

from auxrl.models.heads import VALIDATE, CategoricalPolicy
from auxrl.models.popart import PopArt
from auxrl.models.torsos import layer_init
from auxrl.perf import float32


def task_name(env_id: str) -> str:
    """A task's name in logs and heads: ``ALE/Pong-v5`` -> ``Pong``, ``CartPole-v1`` -> ``CartPole``."""
    base = env_id.rsplit("/", 1)[-1]
    stem, _, version = base.rpartition("-v")
    return stem if stem and version.isdigit() else base


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task of a multi-task model: its name, env id and action space."""

    name: str
    env_id: str
    action_space: gym.Space


def popart_enabled(popart: bool | None, num_tasks: int) -> bool:
    """``model.popart``; by default on for several tasks."""
    return popart if popart is not None else num_tasks > 1


class TaskPolicies(nn.Module):
    """A categorical policy head per task over that task's own actions.

    The distribution of a batch has ``max_actions`` entries per row; a row's entries beyond its
    task's action count get probability 0 (logits at the float32 minimum, so entropy and
    log-probs stay finite), so a task never samples another task's actions.
    """

    task_aware = True

    def __init__(self, feature_dim: int, tasks: list[TaskSpec]) -> None:
        super().__init__()
        for t in tasks:
            if not isinstance(t.action_space, gym.spaces.Discrete):
                raise ValueError(
                    f"env.tasks: {t.env_id} has actions {t.action_space}; multi-task training takes "
                    f"Discrete action spaces (e.g. Atari games)."
                )
        self.heads = nn.ModuleDict(
            {t.name: CategoricalPolicy(feature_dim, int(t.action_space.n)) for t in tasks}
        )
        self.max_actions = max(int(t.action_space.n) for t in tasks)

    def forward(self, features: torch.Tensor, task: torch.Tensor) -> Categorical:
        low = torch.finfo(torch.float32).min
        logits = []
        for head in self.heads.values():
            own = float32(head.logits, features)  # [B, n_i]
            pad = self.max_actions - own.shape[1]
            logits.append(nn.functional.pad(own, (0, pad), value=low) if pad else own)
        stacked = torch.stack(logits)  # [T, B, A]
        index = task.long().view(1, -1, 1).expand(1, -1, self.max_actions)
        return Categorical(logits=stacked.gather(0, index).squeeze(0), validate_args=VALIDATE)

    sample = staticmethod(CategoricalPolicy.sample)
    log_prob = staticmethod(CategoricalPolicy.log_prob)
    entropy = staticmethod(CategoricalPolicy.entropy)
    mode = staticmethod(CategoricalPolicy.mode)


class TaskValueHead(nn.Module):
    """A value output per task on the shared features, with PopArt (``model.popart``) or plain.

    ``forward`` gives values on the scale of the returns (acting, GAE); the PPO loss works on
    :meth:`normalized` outputs against :meth:`normalize`-d targets (identity without PopArt).
    """

    task_aware = True
    reads_observation = False

    def __init__(self, feature_dim: int, num_tasks: int, popart: bool, beta: float = 0.01) -> None:
        super().__init__()
        self.popart = PopArt(feature_dim, num_tasks, beta=beta) if popart else None
        self.v = None if popart else layer_init(nn.Linear(feature_dim, num_tasks), std=1.0)

    def normalized(self, features: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        layer = self.popart.linear if self.popart is not None else self.v
        out = float32(layer, features)  # [B, T]
        return out.gather(1, task.long().unsqueeze(1)).squeeze(1)

    def forward(self, features: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        n = self.normalized(features, task)
        return n if self.popart is None else self.popart.unnormalize(n, task)

    def normalize(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        return x if self.popart is None else self.popart.normalize(x, task)

    def scale(self, task: torch.Tensor) -> torch.Tensor:
        """Each sample's task's sigma (1 without PopArt): advantages are divided by it, as
        PopArt's policy gradient is taken on the normalised scale."""
        if self.popart is None:
            return torch.ones_like(task, dtype=torch.float32)
        return self.popart.sigma[task.long()]
